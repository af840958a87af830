//! What the engine remembers across agent restarts, per runbook: ladder
//! position, cooldown, circuit breaker and the last actions. Written
//! atomically (temporary file, fsync, rename, fsync of the directory) on
//! every change, so a crash leaves either the old or the new state.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

    /// Reads the saved state; a missing file is an empty state.
    pub fn load(&self) -> Result<BTreeMap<String, RunbookState>, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<File>(&bytes).map(|f| f.runbooks).map_err(|e| {
                StateError::Read { path: self.path.display().to_string(), detail: e.to_string() }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(StateError::Read { path: self.path.display().to_string(), detail: e.to_string() }),
        }
    }

    pub fn save(&self, runbooks: &BTreeMap<String, RunbookState>) -> Result<(), StateError> {
        let err = |source| StateError::Write { path: self.path.display().to_string(), source };
        let body =
            serde_json::to_vec_pretty(&File { version: 1, runbooks: runbooks.clone() }).unwrap_or_default();
        crate::fsutil::write_atomic(&self.path, &[&body], None).map_err(err)?;
        Ok(())
    }
}
