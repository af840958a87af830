//! Platform modules: the code that talks to one operating system's service
//! manager, installer, logging and sensor, Linux and Windows side by side.
//! Everything above reaches them through the functions here, the
//! `ServiceManager` trait and the sensor's `start`.
//!
//! `windows` is declared on every platform: its pure parts (SCM recovery
//! encoding, status reporting rules, the install plan, Event Log message
//! formatting) are tested everywhere, while its FFI submodules are gated
//! `#[cfg(any(windows, custos_windows_typecheck))]` inside it. `linux` is
//! gated at module level.

#[cfg(target_os = "linux")]
pub mod linux;
pub mod windows;

use crate::service_manager::{ManagerJobs, ServiceManager};
#[cfg(not(any(windows, custos_windows_typecheck)))]
use crate::service_manager::{ServiceError, ServiceStatus};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Environment variable naming a D-Bus address for systemd (another
/// namespace's bus in tests; default: the system bus, else the private socket).
pub const SYSTEMD_BUS_ENV: &str = "CUSTOS_SYSTEMD_BUS";

/// A service manager that is not there: actions fail, and say why, in the audit log.
#[cfg(not(any(windows, custos_windows_typecheck)))]
struct Unavailable(String);

#[cfg(not(any(windows, custos_windows_typecheck)))]
impl ServiceManager for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }
    fn status(&self, _: &str) -> Result<ServiceStatus, ServiceError> {
        Err(ServiceError::Unavailable(self.0.clone()))
    }
    fn start(&self, _: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(self.0.clone()))
    }
    fn stop(&self, _: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(self.0.clone()))
    }
    fn restart(&self, _: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(self.0.clone()))
    }
    fn reset_failed(&self, _: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(self.0.clone()))
    }
    fn kill(&self, _: &str, _: i32) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(self.0.clone()))
    }
}

/// The platform's service manager, or one whose calls fail saying why.
pub fn service_manager() -> Arc<dyn ServiceManager> {
    // The type-check build (`custos_windows_typecheck`, on Linux) takes the
    // Windows branch so that it is checked; it is never run.
    #[cfg(all(target_os = "linux", not(custos_windows_typecheck)))]
    {
        use linux::systemd::Systemd;
        let sm = match std::env::var(SYSTEMD_BUS_ENV) {
            Ok(addr) => Systemd::connect_bus(&addr),
            Err(_) => Systemd::connect(),
        };
        match sm {
            Ok(sm) => Arc::new(sm),
            Err(e) => {
                tracing::warn!(error = %e, "systemd is not reachable: runbook service actions will fail.");
                Arc::new(Unavailable(e.to_string()))
            }
        }
    }
    #[cfg(any(windows, custos_windows_typecheck))]
    {
        Arc::new(windows::scm::ScmServiceManager::default())
    }
    #[cfg(not(any(target_os = "linux", windows, custos_windows_typecheck)))]
    {
        Arc::new(Unavailable("no service manager for this platform".into()))
    }
}

/// What tells the runbook engine that a stop or restart was asked of the
/// service manager: systemd's job signals (on the bus of
/// [`SYSTEMD_BUS_ENV`] when set), or the SCM's states. `None`, logged, when
/// the platform has neither: every exit then counts as unrequested.
pub fn manager_jobs(manager: &Arc<dyn ServiceManager>) -> Option<Arc<dyn ManagerJobs>> {
    #[cfg(all(target_os = "linux", not(custos_windows_typecheck)))]
    {
        let _ = manager;
        let address = std::env::var(SYSTEMD_BUS_ENV).ok();
        match linux::systemd::JobWatcher::start(address.as_deref()) {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot follow systemd's jobs: stops and restarts asked of systemd will look like crashes.");
                None
            }
        }
    }
    #[cfg(any(windows, custos_windows_typecheck))]
    {
        Some(Arc::new(crate::service_manager::StateJobs::new(manager.clone())))
    }
    #[cfg(not(any(target_os = "linux", windows, custos_windows_typecheck)))]
    {
        let _ = manager;
        None
    }
}

/// `custos install`: the platform's installer (a systemd unit, a Windows service).
pub fn install(
    config: Option<PathBuf>,
    dry_run: bool,
    prefix: Option<&Path>,
    unit_dir: Option<&Path>,
) -> Result<ExitCode, String> {
    #[cfg(target_os = "linux")]
    {
        linux::install::cli_install(config, dry_run, prefix, unit_dir)
    }
    #[cfg(windows)]
    {
        let _ = (prefix, unit_dir);
        windows::install::cli_install(config, dry_run)
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = (config, dry_run, prefix, unit_dir);
        Err("custos install supports Linux (systemd) and Windows only".into())
    }
}

/// `custos uninstall`: the platform's uninstaller.
pub fn uninstall(
    purge: bool,
    dry_run: bool,
    prefix: Option<&Path>,
    unit_dir: Option<&Path>,
) -> Result<ExitCode, String> {
    #[cfg(target_os = "linux")]
    {
        linux::install::cli_uninstall(purge, dry_run, prefix, unit_dir)
    }
    #[cfg(windows)]
    {
        let _ = (prefix, unit_dir);
        windows::install::cli_uninstall(purge, dry_run)
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = (purge, dry_run, prefix, unit_dir);
        Err("custos uninstall supports Linux (systemd) and Windows only".into())
    }
}
