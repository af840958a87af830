//! The platform seam for acting on services: systemd over D-Bus on Linux,
//! the Service Control Manager on Windows, a fake in tests.
//!
//! Calls are blocking (both D-Bus and the SCM are request/response and the
//! runbook engine runs one action per service at a time); async callers use
//! `tokio::task::spawn_blocking`. `unit` is the platform's name for the
//! service: a systemd unit (`api.service`) or a Windows service name (`Api`).

use std::fmt;

/// Coarse state of a service, common to systemd and the SCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActiveState {
    Active,
    /// Starting (systemd `activating`, SCM `START_PENDING`).
    Activating,
    /// Stopping (systemd `deactivating`, SCM `STOP_PENDING`).
    Deactivating,
    Inactive,
    Failed,
    /// Known to the manager but in a state it does not map (reloading...).
    Other,
}

impl ActiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Other => "other",
        }
    }
}

/// What the service manager says about one service now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    pub state: ActiveState,
    /// The manager's finer state (systemd `SubState`, e.g. `auto-restart`).
    pub sub_state: String,
    pub main_pid: Option<u32>,
    /// Cgroup path relative to the cgroup v2 root (`/system.slice/api.service`).
    pub cgroup: Option<String>,
    /// True while the manager itself is restarting the service (systemd
    /// `Restart=` in `auto-restart`, SCM recovery pending): custos must not
    /// restart it on top.
    pub manager_restarting: bool,
    /// Restarts the manager has done on its own, when it counts them.
    pub manager_restarts: Option<u32>,
}

/// Why a service manager call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service `{0}` is not known to the service manager")]
    NotFound(String),
    #[error("not permitted to {action} `{unit}`: {detail}")]
    PermissionDenied { action: &'static str, unit: String, detail: String },
    #[error("{action} `{unit}` did not finish within {waited_ms} ms")]
    Timeout { action: &'static str, unit: String, waited_ms: u64 },
    #[error("the service manager is not reachable: {0}")]
    Unavailable(String),
    #[error("{action} `{unit}` failed: {detail}")]
    Failed { action: &'static str, unit: String, detail: String },
}

/// Acting on services through the platform's service manager.
pub trait ServiceManager: Send + Sync + 'static {
    /// A short name for logs and audit records (`systemd`, `scm`, `fake`).
    fn name(&self) -> &'static str;
    fn status(&self, unit: &str) -> Result<ServiceStatus, ServiceError>;
    fn start(&self, unit: &str) -> Result<(), ServiceError>;
    fn stop(&self, unit: &str) -> Result<(), ServiceError>;
    /// Stops (waiting, bounded) then starts.
    fn restart(&self, unit: &str) -> Result<(), ServiceError>;
    /// Clears a failed state and start-limit counters (systemd); no-op where
    /// the manager has none.
    fn reset_failed(&self, unit: &str) -> Result<(), ServiceError>;
    /// Sends `signal` to the main process (on Windows only termination).
    fn kill(&self, unit: &str, signal: i32) -> Result<(), ServiceError>;
}

impl fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.state.as_str(), self.sub_state)?;
        if let Some(pid) = self.main_pid {
            write!(f, " pid {pid}")?;
        }
        Ok(())
    }
}

/// Whether the service manager knows a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    Yes,
    /// systemd `LoadState=not-found`, SCM: no such service.
    No,
    /// The manager could not be asked (not reachable, not permitted).
    CannotTell(String),
}

/// Asks the service manager whether units exist, once per unit, for the
/// checks of `validate` and `reload`. Once the manager proves unreachable
/// it is not asked again (each attempt could wait for a timeout).
pub struct UnitLookup {
    manager: std::sync::Arc<dyn ServiceManager>,
    answers: std::sync::Mutex<std::collections::HashMap<String, Known>>,
    unreachable: std::sync::Mutex<Option<String>>,
}

impl UnitLookup {
    pub fn new(manager: std::sync::Arc<dyn ServiceManager>) -> Self {
        UnitLookup { manager, answers: Default::default(), unreachable: Default::default() }
    }

    /// The manager's name (`systemd`, `scm`) for messages.
    pub fn manager(&self) -> &'static str {
        self.manager.name()
    }

    pub fn exists(&self, unit: &str) -> Known {
        if let Some(why) = self.unreachable.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Known::CannotTell(why);
        }
        if let Some(k) = self.answers.lock().unwrap_or_else(|p| p.into_inner()).get(unit) {
            return k.clone();
        }
        let known = match self.manager.status(unit) {
            Ok(_) => Known::Yes,
            Err(ServiceError::NotFound(_)) => Known::No,
            Err(e) => {
                if matches!(e, ServiceError::Unavailable(_)) {
                    *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
                Known::CannotTell(e.to_string())
            }
        };
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).insert(unit.to_string(), known.clone());
        known
    }

    /// Why the manager could not be asked, if it could not.
    pub fn unreachable(&self) -> Option<String> {
        self.unreachable.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How often the service manager is asked for the state of each service
/// (the `service_down` trigger, `custos status`). A D-Bus round trip per
/// service: cheap.
pub const STATE_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Called with each polled state: `(service name, status)`.
pub type StateObserver = Box<dyn Fn(&str, &ServiceStatus) + Send>;

/// Polls the service manager for each service's state on a thread of its
/// own (the calls block) and hands every answer to the observer. A service
/// the manager cannot report on is logged once, until it can again. Stops
/// on drop.
pub struct StatePoller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StatePoller {
    /// `services` are `(name, unit)` pairs. `None` when there is nothing to
    /// poll or the thread could not start (logged).
    pub fn start(
        manager: std::sync::Arc<dyn ServiceManager>,
        services: Vec<(String, String)>,
        observer: StateObserver,
    ) -> Option<StatePoller> {
        use std::sync::atomic::{AtomicBool, Ordering};
        if services.is_empty() {
            return None;
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new().name("service-state".into()).spawn(move || {
            let mut reported = std::collections::HashSet::new();
            while !stopped.load(Ordering::Relaxed) {
                for (name, unit) in &services {
                    match manager.status(unit) {
                        Ok(status) => {
                            reported.remove(name);
                            observer(name, &status);
                        }
                        Err(e) => {
                            if reported.insert(name.clone()) {
                                tracing::warn!(service = %name, unit = %unit, error = %e, "Cannot read the service's state: `service_down` triggers will not fire for it.");
                            }
                        }
                    }
                }
                let started = std::time::Instant::now();
                while !stopped.load(Ordering::Relaxed) && started.elapsed() < STATE_POLL {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        });
        match spawned {
            Ok(_) => Some(StatePoller { stop }),
            Err(e) => {
                tracing::error!(error = %e, "Service state poller could not start.");
                None
            }
        }
    }
}

impl Drop for StatePoller {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A service manager that knows a fixed set of units (tests of the checks).
#[cfg(test)]
pub struct KnownUnits(pub Vec<&'static str>);

#[cfg(test)]
impl ServiceManager for KnownUnits {
    fn name(&self) -> &'static str {
        "systemd"
    }
    fn status(&self, unit: &str) -> Result<ServiceStatus, ServiceError> {
        if !self.0.contains(&unit) {
            return Err(ServiceError::NotFound(unit.into()));
        }
        Ok(ServiceStatus {
            state: ActiveState::Active,
            sub_state: "running".into(),
            main_pid: None,
            cgroup: None,
            manager_restarting: false,
            manager_restarts: None,
        })
    }
    fn start(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("a test does not start {unit}")))
    }
    fn stop(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("a test does not stop {unit}")))
    }
    fn restart(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("a test does not restart {unit}")))
    }
    fn reset_failed(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("a test does not reset {unit}")))
    }
    fn kill(&self, unit: &str, _signal: i32) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("a test does not signal {unit}")))
    }
}
