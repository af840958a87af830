//! What the engine remembers across agent restarts: per runbook its
//! incident (ladder position, phase, held firing, cooldown, breaker, last
//! actions), and per service its maintenance pause, whether it was stopped
//! on request, and its last exit. Written atomically (temporary file,
//! fsync, rename, fsync of the directory) on every change, so a crash
//! leaves either the old or the new state. Files of earlier versions read
//! as they are: every new field has a default.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How many past actions are kept per runbook (`custos status --actions N`
/// reads them; the audit log keeps everything).
pub const LAST_ACTIONS: usize = 100;

/// Largest state file read: a few KiB per runbook and service.
const MAX_STATE_BYTES: u64 = 64 * 1024 * 1024;

/// Where a runbook's incident stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// No incident: the next firing starts one at the ladder's position.
    #[default]
    Idle,
    /// A step runs (its delay, action and verification). `step` is the
    /// 0-based ladder index, `None` for the escalation.
    Running { step: Option<usize>, since: SystemTime },
    /// The last step did not show whether the service healed (it had no
    /// verification) and the service looked up: the next firing runs the
    /// next step once the cooldown is over.
    Open { since: SystemTime },
    /// A verification found the service healthy.
    Healed { at: SystemTime },
    /// Every step ran and the service did not heal; the escalation, if
    /// any, ran. Nothing runs until the ladder resets.
    Exhausted { at: SystemTime },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Running { .. } => "running",
            Phase::Open { .. } => "open",
            Phase::Healed { .. } => "healed",
            Phase::Exhausted { .. } => "exhausted",
        }
    }

    /// When the phase began (`None` for idle).
    pub fn since(&self) -> Option<SystemTime> {
        match self {
            Phase::Idle => None,
            Phase::Running { since, .. } | Phase::Open { since } => Some(*since),
            Phase::Healed { at } | Phase::Exhausted { at } => Some(*at),
        }
    }
}

/// A firing kept to be acted on later: when the step running ends, or
/// when the cooldown is over. Later firings fold into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub first: SystemTime,
    pub last: SystemTime,
    /// Firings folded into this one.
    pub count: u32,
    /// The latest firing's fields, for templates.
    pub event: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunbookState {
    /// Index of the ladder step the incident runs next.
    pub position: usize,
    pub phase: Phase,
    pub last_fire: Option<SystemTime>,
    /// After a step that showed nothing (no verification), the next
    /// firing is held until then.
    pub cooldown_until: Option<SystemTime>,
    /// When custos performed actions, within the breaker's window.
    pub action_times: VecDeque<SystemTime>,
    pub breaker_open: bool,
    pub pending: Option<Pending>,
    pub last_actions: VecDeque<ActionSummary>,
}

/// One past action for `custos status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSummary {
    pub ts: SystemTime,
    /// 1-based ladder step; 0 for the escalation.
    pub step: usize,
    pub action: String,
    pub ok: bool,
    /// `Some(true)` healed, `Some(false)` not healed, `None` not verified.
    pub healed: Option<bool>,
    pub dry_run: bool,
    pub detail: String,
}

/// A maintenance pause: runbooks of the service decide and audit, and
/// act on nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub since: SystemTime,
    /// `None`: until `custos resume`.
    pub until: Option<SystemTime>,
}

impl Pause {
    pub fn holds(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

/// A process exit of the service, for `custos status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub at: SystemTime,
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub cause: Option<custos_event::ExitCause>,
}

/// What the engine keeps per service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceRecord {
    pub paused: Option<Pause>,
    /// The unit is down because a stop was asked of the service manager
    /// (`service_down` leaves it so).
    pub stopped_on_request: bool,
    pub last_exit: Option<ExitRecord>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    runbooks: BTreeMap<String, RunbookState>,
    #[serde(default)]
    services: BTreeMap<String, ServiceRecord>,
}

/// Everything the state file holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saved {
    pub runbooks: BTreeMap<String, RunbookState>,
    pub services: BTreeMap<String, ServiceRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write runbook state {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("runbook state {path} is unreadable: {detail}")]
    Read { path: String, detail: String },
}

/// The runbook state file (`<state_dir>/runbooks.json`).
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> Self {
        StateStore { path: state_dir.join("runbooks.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the saved state; a missing file is an empty state. A file
    /// that is not runbook state (truncated, edited, not JSON) is set aside
    /// as `runbooks.json.corrupt-<unix ms>` with a clear error and the
    /// engine starts afresh: one bad file must not keep self-healing off.
    /// A file that cannot be read now (permissions, I/O) is an error: it
    /// may be fine, and saving over it would lose it.
    pub fn load(&self) -> Result<Saved, StateError> {
        let shown = self.path.display().to_string();
        let bytes = match crate::fsutil::read_bounded(&self.path, MAX_STATE_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput) =>
            {
                return self.set_aside(&e.to_string())
            }
            Err(e) => return Err(StateError::Read { path: shown, detail: e.to_string() }),
        };
        match serde_json::from_slice::<File>(&bytes) {
            Ok(f) => Ok(Saved { runbooks: f.runbooks, services: f.services }),
            Err(e) => self.set_aside(&e.to_string()),
        }
    }

    fn set_aside(&self, why: &str) -> Result<Saved, StateError> {
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let aside = self.path.with_extension(format!("json.corrupt-{ms}"));
        std::fs::rename(&self.path, &aside).map_err(|e| StateError::Read {
            path: self.path.display().to_string(),
            detail: format!("{why}; and it could not be set aside: {e}"),
        })?;
        tracing::error!(
            file = %self.path.display(),
            set_aside = %aside.display(),
            error = why,
            "Runbook state is corrupt: set it aside; runbooks start from their first step with no cooldown or breaker."
        );
        Ok(Saved::default())
    }

    pub fn save(&self, saved: &Saved) -> Result<(), StateError> {
        let err = |source| StateError::Write { path: self.path.display().to_string(), source };
        let file = File { version: 1, runbooks: saved.runbooks.clone(), services: saved.services.clone() };
        let body = serde_json::to_vec_pretty(&file).unwrap_or_default();
        crate::fsutil::write_atomic(&self.path, &[&body], None).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_of_the_previous_version_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("runbooks.json"),
            r#"{"version":1,"runbooks":{"api-crash":{"position":2,"last_fire":{"secs_since_epoch":1700000000,"nanos_since_epoch":0},"cooldown_until":null,"action_times":[],"breaker_open":false,"last_actions":[]}}}"#,
        )
        .unwrap();
        let saved = StateStore::new(dir.path()).load().unwrap();
        let st = &saved.runbooks["api-crash"];
        assert_eq!((st.position, &st.phase, &st.pending), (2, &Phase::Idle, &None));
        assert!(saved.services.is_empty());
    }

    #[test]
    fn round_trips_with_phases_pauses_and_exits() {
        let dir = tempfile::tempdir().unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut saved = Saved::default();
        saved.runbooks.insert(
            "a".into(),
            RunbookState { phase: Phase::Running { step: None, since: t }, ..Default::default() },
        );
        saved.services.insert(
            "api".into(),
            ServiceRecord {
                paused: Some(Pause { since: t, until: None }),
                stopped_on_request: true,
                last_exit: Some(ExitRecord {
                    at: t,
                    pid: 7,
                    code: None,
                    signal: Some("SIGTERM".into()),
                    cause: Some(custos_event::ExitCause::StopRequested),
                }),
            },
        );
        let store = StateStore::new(dir.path());
        store.save(&saved).unwrap();
        assert_eq!(store.load().unwrap(), saved);
    }

    #[test]
    fn a_corrupt_state_file_is_set_aside_and_the_rest_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{not json").unwrap();
        assert_eq!(store.load().unwrap(), Saved::default());
        assert!(!store.path().exists());
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(aside.len() == 1 && aside[0].starts_with("runbooks.json.corrupt-"), "{aside:?}");
        assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap(), b"{not json", "kept as it was");
        let mut m = Saved::default();
        m.runbooks.insert("rb".to_string(), RunbookState { position: 2, ..Default::default() });
        store.save(&m).unwrap();
        assert_eq!(store.load().unwrap(), m);
    }
}
