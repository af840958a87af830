//! The platform seam for acting on services: systemd over D-Bus on Linux,
//! the Service Control Manager on Windows, a fake in tests.
//!
//! Calls are blocking (both D-Bus and the SCM are request/response and the
//! runbook engine runs one action per service at a time); async callers use
//! `tokio::task::spawn_blocking`. `unit` is the platform's name for the
//! service: a systemd unit (`api.service`) or a Windows service name (`Api`).

use std::fmt;
use std::time::{Duration, SystemTime};

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

/// What a job of the service manager is, by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Stop,
    /// systemd `restart`/`try-restart`.
    Restart,
    /// systemd `start` (and a restart past its stop half: systemd turns a
    /// restart job into a start job once the unit is down).
    Start,
    Reload,
    /// A job that neither stops nor starts (`verify-active`, `nop`).
    Other,
    /// Its type could not be read (gone before custos asked).
    Unknown,
}

impl JobKind {
    /// systemd's `JobType` names.
    pub fn from_systemd(job_type: &str) -> JobKind {
        match job_type {
            "stop" => JobKind::Stop,
            "restart" | "try-restart" => JobKind::Restart,
            "start" | "reload-or-start" | "verify-active" => JobKind::Start,
            "reload" | "try-reload" => JobKind::Reload,
            _ => JobKind::Other,
        }
    }
}

/// A job the service manager ran (or runs) on a unit, as custos saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerJob {
    pub id: u64,
    /// Its type, as the manager answered while the job still existed.
    pub kind: JobKind,
    /// When custos learnt of the job: after the manager created it, by a
    /// D-Bus hop, and before the manager acted on it (systemd announces a
    /// job before running it).
    pub seen: SystemTime,
    /// When the unit went down under this job, if the first change the job
    /// made was taking it down (the stop, or a restart's stop half): only
    /// then can the job have ended a process. A start job whose unit dies
    /// while activating has none.
    pub stopping: Option<SystemTime>,
    /// The unit came up again under the job after going down: a restart,
    /// whatever type systemd reports by now.
    pub restarted: bool,
    /// The unit's state changed under the job at least once.
    pub changed: bool,
    /// When custos learnt that it ended.
    pub ended: Option<SystemTime>,
}

impl ManagerJob {
    /// The cause of the exits this job brings about, if it brings any.
    pub fn cause(&self) -> Option<custos_event::ExitCause> {
        use custos_event::ExitCause;
        self.stopping?;
        match self.kind {
            JobKind::Reload | JobKind::Other => None,
            JobKind::Restart | JobKind::Start => Some(ExitCause::RestartRequested),
            JobKind::Stop | JobKind::Unknown if self.restarted => Some(ExitCause::RestartRequested),
            JobKind::Stop | JobKind::Unknown => Some(ExitCause::StopRequested),
        }
    }
}

/// How much later than the exit it caused a job may be seen: the D-Bus
/// hop and the watcher's queue, generously.
pub const JOB_SEEN_SLACK: Duration = Duration::from_secs(1);

/// Why a process of `unit` exited, from the jobs the manager ran on it:
/// requested when a job had taken the unit down (a stop, or a restart's
/// stop half) when the process exited, and for restarts only if the
/// process predates the job (the restart's new process crashing is a
/// crash). A fault (SIGSEGV, SIGABRT, an OOM kill) is never requested.
/// `started` is the process's start, when known.
pub fn exit_cause(
    jobs: &[ManagerJob],
    exit: &custos_event::ProcessExit,
    started: Option<SystemTime>,
    exited: SystemTime,
) -> custos_event::ExitCause {
    use custos_event::ExitCause;
    if exit.is_fault() {
        return ExitCause::Unrequested;
    }
    for job in jobs.iter().rev() {
        let Some(cause) = job.cause() else { continue };
        // The job existed when the process exited ...
        if job.seen > exited + JOB_SEEN_SLACK {
            continue;
        }
        // ... and had not ended (its end is seen late, never early) ...
        if job.ended.is_some_and(|end| end < exited) {
            continue;
        }
        // ... and for a restart, the process was one it stopped.
        if cause == ExitCause::RestartRequested && started.is_some_and(|s| s >= job.seen) {
            continue;
        }
        return cause;
    }
    ExitCause::Unrequested
}

/// The service manager's jobs per unit, as a platform's watcher learns of
/// them: the runbook engine reads it to tell an operator's stop from a
/// crash, and `service_down` to leave a stopped service stopped.
pub trait ManagerJobs: Send + Sync + 'static {
    /// The jobs seen recently on `unit`, oldest first.
    fn jobs(&self, unit: &str) -> Vec<ManagerJob>;
    /// Waits (at most `timeout`) until every job the manager announced
    /// before this call is in [`jobs`](Self::jobs), and returns the time up
    /// to which that holds; `None` when the watcher cannot tell (not
    /// connected, no answer in time).
    fn sync(&self, timeout: Duration) -> Option<SystemTime>;
}

/// How many jobs per unit a [`JobLog`] keeps, and for how long after they end.
const JOBS_PER_UNIT: usize = 32;
const JOB_MEMORY: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct UnitJobs {
    jobs: std::collections::VecDeque<ManagerJob>,
    /// The unit's last `ActiveState`, as signalled.
    state: Option<String>,
}

/// The jobs of each unit, fed by a platform watcher in the order the
/// manager sent its signals (systemd: `JobNew`, the unit's `ActiveState`
/// changes, `JobRemoved`). Bounded: per unit the last [`JOBS_PER_UNIT`],
/// and ended jobs for ten minutes.
#[derive(Debug, Default)]
pub struct JobLog {
    units: std::sync::Mutex<std::collections::HashMap<String, UnitJobs>>,
}

impl JobLog {
    fn units(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, UnitJobs>> {
        self.units.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job was created; `kind` as far as known yet.
    pub fn job_new(&self, unit: &str, id: u64, kind: JobKind, seen: SystemTime) {
        let mut units = self.units();
        let u = units.entry(unit.to_string()).or_default();
        u.jobs.retain(|j| j.ended.is_none_or(|e| seen.duration_since(e).unwrap_or_default() < JOB_MEMORY));
        if u.jobs.iter().any(|j| j.id == id) {
            return;
        }
        u.jobs.push_back(ManagerJob {
            id,
            kind,
            seen,
            stopping: None,
            restarted: false,
            changed: false,
            ended: None,
        });
        while u.jobs.len() > JOBS_PER_UNIT {
            u.jobs.pop_front();
        }
    }

    /// The manager said what type a job is.
    pub fn job_kind(&self, unit: &str, id: u64, kind: JobKind) {
        if let Some(j) = self.units().get_mut(unit).and_then(|u| u.jobs.iter_mut().find(|j| j.id == id)) {
            j.kind = kind;
        }
    }

    /// The unit's `ActiveState` as the manager signalled it (also when it
    /// did not change). A change under a running job tells what the job
    /// does: taking the unit down first is a stop (or a restart's stop
    /// half), and bringing it up after that makes it a restart.
    pub fn unit_state(&self, unit: &str, state: &str, at: SystemTime) {
        let mut units = self.units();
        let u = units.entry(unit.to_string()).or_default();
        // The first state signalled is where the unit is, not a change.
        let Some(before) = u.state.replace(state.to_string()) else { return };
        if before == state {
            return;
        }
        let down = matches!(state, "deactivating" | "inactive" | "failed");
        for j in u.jobs.iter_mut().filter(|j| j.ended.is_none()) {
            if !j.changed {
                // The job's first change: taking the unit down is a stop;
                // anything else is a start or a reload, which stops
                // nothing even if the unit dies later.
                j.changed = true;
                if down {
                    j.stopping = Some(at);
                }
            } else if j.stopping.is_some() && !down {
                j.restarted = true;
            }
        }
    }

    /// A job ended (whatever its result).
    pub fn job_removed(&self, unit: &str, id: u64, at: SystemTime) {
        if let Some(j) = self.units().get_mut(unit).and_then(|u| u.jobs.iter_mut().find(|j| j.id == id)) {
            j.ended = Some(at);
        }
    }

    pub fn jobs(&self, unit: &str) -> Vec<ManagerJob> {
        self.units().get(unit).map(|u| u.jobs.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Jobs read from the service's state at the moment they are asked for,
/// for service managers that announce none (the Windows SCM): a service
/// that is stopping (`STOP_PENDING`), or that reported its own clean stop
/// (`STOPPED` with no error; a service process that just dies is marked
/// stopped with `ERROR_PROCESS_ABORTED` by the SCM), was asked to stop.
/// The state is current whenever it is read, so [`ManagerJobs::sync`] has
/// nothing to wait for.
pub struct StateJobs {
    manager: std::sync::Arc<dyn ServiceManager>,
}

impl StateJobs {
    pub fn new(manager: std::sync::Arc<dyn ServiceManager>) -> StateJobs {
        StateJobs { manager }
    }
}

/// The stop a state shows, if any (see [`StateJobs`]); `now` ends a
/// finished stop.
pub fn stop_in_state(status: &ServiceStatus, now: SystemTime) -> Option<ManagerJob> {
    let ended = match status.state {
        ActiveState::Deactivating => None,
        ActiveState::Inactive => Some(now),
        _ => return None,
    };
    // Under way since before anything it could explain.
    Some(ManagerJob {
        id: 0,
        kind: JobKind::Stop,
        seen: SystemTime::UNIX_EPOCH,
        stopping: Some(SystemTime::UNIX_EPOCH),
        restarted: false,
        changed: true,
        ended,
    })
}

impl ManagerJobs for StateJobs {
    fn jobs(&self, unit: &str) -> Vec<ManagerJob> {
        let now = SystemTime::now();
        self.manager.status(unit).ok().and_then(|s| stop_in_state(&s, now)).into_iter().collect()
    }

    fn sync(&self, _timeout: Duration) -> Option<SystemTime> {
        Some(SystemTime::now())
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

#[cfg(test)]
mod tests {
    use super::*;
    use custos_event::{ExitCause, ProcessExit, Signal};

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    /// A job that took its unit down at `seen` + 1 ms.
    fn job(kind: JobKind, seen: u64, ended: Option<u64>) -> ManagerJob {
        ManagerJob {
            id: seen,
            kind,
            seen: t(seen),
            stopping: Some(t(seen + 1)),
            restarted: false,
            changed: true,
            ended: ended.map(t),
        }
    }

    fn term() -> ProcessExit {
        ProcessExit { signal: Some(Signal(15)), ..Default::default() }
    }

    #[test]
    fn a_stop_under_way_explains_the_exit_a_fault_never() {
        let stop = [job(JobKind::Stop, 5_000, Some(5_050))];
        // SIGTERM at +10 ms of a process that started long before.
        assert_eq!(exit_cause(&stop, &term(), Some(t(0)), t(5_010)), ExitCause::StopRequested);
        // Seen a little after the exit (the signal raced the kernel event).
        assert_eq!(exit_cause(&stop, &term(), Some(t(0)), t(4_990)), ExitCause::StopRequested);
        // Long before the job, or after it ended: nothing asked for it.
        assert_eq!(exit_cause(&stop, &term(), Some(t(0)), t(3_000)), ExitCause::Unrequested);
        assert_eq!(exit_cause(&stop, &term(), Some(t(0)), t(5_060)), ExitCause::Unrequested);
        // kill -9 is a crash unless a stop is under way; SIGSEGV always is.
        let kill = ProcessExit { signal: Some(Signal(9)), ..Default::default() };
        assert_eq!(exit_cause(&[], &kill, Some(t(0)), t(5_010)), ExitCause::Unrequested);
        let segv = ProcessExit { signal: Some(Signal(11)), ..Default::default() };
        assert_eq!(exit_cause(&stop, &segv, Some(t(0)), t(5_010)), ExitCause::Unrequested);
        let oom = ProcessExit { oom_killed: true, signal: Some(Signal(9)), ..Default::default() };
        assert_eq!(exit_cause(&stop, &oom, Some(t(0)), t(5_010)), ExitCause::Unrequested);
        // A stop explains the exits of processes it started itself (ExecStop=).
        assert_eq!(exit_cause(&stop, &term(), Some(t(5_005)), t(5_010)), ExitCause::StopRequested);
    }

    #[test]
    fn a_restart_explains_the_processes_it_stopped_not_the_new_one_crashing() {
        for kind in [JobKind::Restart, JobKind::Start] {
            let restart = [job(kind, 1_000, Some(1_100))];
            let old = ProcessExit { exit_code: Some(143), ..Default::default() };
            assert_eq!(exit_cause(&restart, &old, Some(t(0)), t(1_010)), ExitCause::RestartRequested);
            // The new process, started at +30 ms, dies at +31 ms: a crash.
            let new = ProcessExit { exit_code: Some(1), ..Default::default() };
            assert_eq!(exit_cause(&restart, &new, Some(t(1_030)), t(1_031)), ExitCause::Unrequested);
        }
        // A reload is no stop: a crash during it is a crash.
        let reload = [job(JobKind::Reload, 1_000, None)];
        assert_eq!(exit_cause(&reload, &term(), Some(t(0)), t(1_010)), ExitCause::Unrequested);
        // The latest job that explains the exit wins.
        let both = [job(JobKind::Stop, 500, Some(600)), job(JobKind::Restart, 1_000, None)];
        assert_eq!(exit_cause(&both, &term(), Some(t(0)), t(1_010)), ExitCause::RestartRequested);
    }

    #[test]
    fn the_job_log_learns_what_a_job_does_from_the_units_state() {
        let log = JobLog::default();
        let cause = |unit: &str| log.jobs(unit).last().and_then(ManagerJob::cause);
        // A stop: the unit goes down under it.
        log.unit_state("a.service", "active", t(0));
        log.job_new("a.service", 1, JobKind::Unknown, t(10));
        log.unit_state("a.service", "active", t(11)); // the Job property changed, not the state
        assert_eq!(cause("a.service"), None, "nothing stopped yet");
        log.unit_state("a.service", "deactivating", t(12));
        assert_eq!(cause("a.service"), Some(ExitCause::StopRequested));
        log.unit_state("a.service", "inactive", t(13));
        log.job_removed("a.service", 1, t(14));
        log.job_removed("a.service", 99, t(14));
        let j = &log.jobs("a.service")[0];
        assert_eq!((j.stopping, j.ended, j.restarted), (Some(t(12)), Some(t(14)), false));

        // A restart whose type was read too late (already `start`): down, then up.
        log.job_new("a.service", 2, JobKind::Start, t(20));
        log.unit_state("a.service", "activating", t(21));
        assert_eq!(cause("a.service"), None, "from inactive, a start stops nothing");
        log.unit_state("a.service", "active", t(22));
        log.job_removed("a.service", 2, t(23));
        log.job_new("a.service", 3, JobKind::Unknown, t(30));
        log.unit_state("a.service", "deactivating", t(31));
        log.unit_state("a.service", "activating", t(32));
        assert_eq!(cause("a.service"), Some(ExitCause::RestartRequested));

        // A start whose unit dies while activating stopped nothing.
        log.job_removed("a.service", 3, t(33));
        log.unit_state("a.service", "inactive", t(40));
        log.job_new("a.service", 4, JobKind::Start, t(41));
        log.unit_state("a.service", "activating", t(42));
        log.unit_state("a.service", "failed", t(43));
        assert_eq!(cause("a.service"), None);
        // A reload stops nothing either.
        log.job_new("b.service", 5, JobKind::Reload, t(50));
        log.unit_state("b.service", "reloading", t(51));
        log.unit_state("b.service", "deactivating", t(52));
        assert_eq!(cause("b.service"), None);

        assert!(log.jobs("c.service").is_empty());
        for i in 0..100 {
            log.job_new("c.service", 100 + i, JobKind::Start, t(60 + i));
        }
        assert_eq!(log.jobs("c.service").len(), JOBS_PER_UNIT);
        // Ended jobs are forgotten after ten minutes.
        log.job_new("a.service", 6, JobKind::Start, t(100) + JOB_MEMORY);
        assert_eq!(log.jobs("a.service").iter().map(|j| j.id).collect::<Vec<_>>(), [4, 6]);
    }

    #[test]
    fn a_stopping_or_cleanly_stopped_service_was_asked_to_stop() {
        let status = |state| ServiceStatus {
            state,
            sub_state: String::new(),
            main_pid: None,
            cgroup: None,
            manager_restarting: false,
            manager_restarts: None,
        };
        let now = t(5_000);
        let stopping = stop_in_state(&status(ActiveState::Deactivating), now).unwrap();
        assert_eq!((stopping.kind, stopping.ended), (JobKind::Stop, None));
        assert_eq!(exit_cause(&[stopping], &term(), Some(t(0)), t(4_000)), ExitCause::StopRequested);
        let stopped = stop_in_state(&status(ActiveState::Inactive), now).unwrap();
        assert_eq!(exit_cause(&[stopped], &term(), Some(t(0)), t(4_000)), ExitCause::StopRequested);
        // Failed (the SCM's "terminated unexpectedly") or running: no stop.
        for s in [ActiveState::Failed, ActiveState::Active, ActiveState::Activating] {
            assert_eq!(stop_in_state(&status(s), now), None, "{s:?}");
        }
    }

    #[test]
    fn systemd_job_types() {
        let kinds: Vec<JobKind> =
            ["stop", "restart", "try-restart", "start", "reload-or-start", "reload", "nop"]
                .into_iter()
                .map(JobKind::from_systemd)
                .collect();
        use JobKind::*;
        assert_eq!(kinds, [Stop, Restart, Restart, Start, Start, Reload, Other]);
        // A stop job that never took its unit down causes nothing.
        let mut j = job(Stop, 0, None);
        j.stopping = None;
        assert_eq!(j.cause(), None);
    }
}
