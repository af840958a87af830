//! What the engine remembers across agent restarts, per runbook: ladder
//! position, cooldown, circuit breaker and the last actions. Written
//! atomically (temporary file, fsync, rename, fsync of the directory) on
//! every change, so a crash leaves either the old or the new state.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Largest state file read: a few KiB per runbook.
const MAX_STATE_BYTES: u64 = 64 * 1024 * 1024;

/// How many past actions `custos status` shows per runbook.
pub const LAST_ACTIONS: usize = 10;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunbookState {
    /// Index of the step the next firing runs (clamped to the last step).
    pub position: usize,
    pub last_fire: Option<SystemTime>,
    pub cooldown_until: Option<SystemTime>,
    /// When actions ran, within the breaker window.
    pub action_times: VecDeque<SystemTime>,
    pub breaker_open: bool,
    pub last_actions: VecDeque<ActionSummary>,
}

/// One past action for `custos status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSummary {
    pub ts: SystemTime,
    pub step: usize,
    pub action: String,
    pub ok: bool,
    /// `Some(true)` healed, `Some(false)` not healed, `None` not verified.
    pub healed: Option<bool>,
    pub dry_run: bool,
    pub detail: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    runbooks: BTreeMap<String, RunbookState>,
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
    pub fn load(&self) -> Result<BTreeMap<String, RunbookState>, StateError> {
        let shown = self.path.display().to_string();
        let bytes = match crate::fsutil::read_bounded(&self.path, MAX_STATE_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput) =>
            {
                return self.set_aside(&e.to_string())
            }
            Err(e) => return Err(StateError::Read { path: shown, detail: e.to_string() }),
        };
        match serde_json::from_slice::<File>(&bytes) {
            Ok(f) => Ok(f.runbooks),
            Err(e) => self.set_aside(&e.to_string()),
        }
    }

    fn set_aside(&self, why: &str) -> Result<BTreeMap<String, RunbookState>, StateError> {
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
        Ok(BTreeMap::new())
    }

    pub fn save(&self, runbooks: &BTreeMap<String, RunbookState>) -> Result<(), StateError> {
        let err = |source| StateError::Write { path: self.path.display().to_string(), source };
        let body =
            serde_json::to_vec_pretty(&File { version: 1, runbooks: runbooks.clone() }).unwrap_or_default();
        crate::fsutil::write_atomic(&self.path, &[&body], None).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_state_file_is_set_aside_and_the_rest_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(store.load().unwrap().is_empty());
        assert!(!store.path().exists());
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(aside.len() == 1 && aside[0].starts_with("runbooks.json.corrupt-"), "{aside:?}");
        assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap(), b"{not json", "kept as it was");
        let mut m = BTreeMap::new();
        m.insert("rb".to_string(), RunbookState { position: 2, ..Default::default() });
        store.save(&m).unwrap();
        assert_eq!(store.load().unwrap(), m);
    }
}
