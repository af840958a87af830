//! custos as a well-behaved system service: systemd notifications and
//! watchdog, reload on SIGHUP, graceful stop under a budget, logging to
//! journald, and the local control socket behind `custos status` (the
//! installers are in `platform`).
//!
//! The agent's `run` pipeline drives it:
//!
//! ```text
//! let logging = daemon::logging::init(level, format, forced)?;     // first
//! let daemon = daemon::Daemon::start(DaemonOptions::default())?;   // signals, control socket
//! let reloader = Arc::new(Reloader::new(config, loader, daemon.notifier()));
//! daemon.set_reloader(reloader.clone());                           // SIGHUP and `custos reload`
//! daemon.add_status_provider(provider);                            // each module fills its part
//! ... attach sensors, start the exporter, spawn the pipeline ...
//! daemon.ready(liveness);                                          // READY=1, watchdog on liveness
//! daemon.stop_requested().await;                                   // SIGTERM/SIGINT
//! daemon.stopping();                                               // STOPPING=1
//! let report = ShutdownPlan::new(STOP_BUDGET).step(..)...run().await;
//! ```

pub mod cli;
pub mod control;
pub mod fault;
pub mod live;
pub mod lock;
pub mod logging;
pub mod notify;
pub mod reload;
pub mod shutdown;
pub mod status;
pub mod watchdog;

pub use control::{ControlHandler, Request, Response};
pub use fault::Faults;
pub use live::LiveStatus;
pub use notify::{Notifier, NotifyState};
pub use reload::{Loader, Reloader};
pub use shutdown::{ShutdownPlan, ShutdownReport, StepOutcome, STOP_BUDGET, STOP_MARGIN};
pub use status::{AgentState, StatusProvider, StatusSnapshot};

pub use watchdog::{Liveness, StallSink};

use status::{unix_now, ReloadRecord};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Descriptors the agent asks for: the spool, the audit log, the BPF maps,
/// D-Bus, probes and the capped listeners fit well inside, with room for a
/// burst (systemd's default soft limit of 1024 is close to what a busy
/// agent holds).
pub const DESCRIPTOR_BUDGET: u64 = 65_536;

/// Raises the soft limit on open descriptors to [`DESCRIPTOR_BUDGET`]
/// (never above the hard limit, never lowering it) and returns the limit
/// in effect. The listeners are capped well below it, so that no local
/// user can exhaust it through them.
#[cfg(unix)]
// `rlim_t` is u64 on Linux, not on every Unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_descriptor_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let want = DESCRIPTOR_BUDGET.min(lim.rlim_max as u64);
    if (lim.rlim_cur as u64) < want {
        let raised = libc::rlimit { rlim_cur: want as libc::rlim_t, rlim_max: lim.rlim_max };
        // SAFETY: as above; lowering nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return want;
        }
    }
    lim.rlim_cur as u64
}

/// Windows has no per-process descriptor limit of this kind.
#[cfg(not(unix))]
pub fn raise_descriptor_limit() -> u64 {
    0
}

/// `WatchdogSec=` written into the unit: keep-alives go every half of it.
pub const WATCHDOG_SEC: Duration = Duration::from_secs(30);

/// What the control socket asks of the runbook engine: maintenance pauses
/// (`custos pause`, `custos resume`) and the host's action history
/// (`custos status --actions N`). Implemented in the wiring; without it
/// the requests are answered with an error (no runbooks).
pub trait Maintenance: Send + Sync + 'static {
    /// Returns when the pause ends (seconds since the Unix epoch), `None`
    /// for "until resumed".
    fn pause(&self, service: &str, duration: Option<Duration>) -> Result<Option<u64>, String>;
    /// Whether the service was paused.
    fn resume(&self, service: &str) -> Result<bool, String>;
    fn actions(&self, limit: usize) -> Vec<status::ActionRecord>;
}

/// Something that can reload; implemented by [`Reloader`].
pub trait Reload: Send + Sync + 'static {
    /// `Ok` carries what the reload could not apply at once.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + '_>>;
    fn last(&self) -> Option<ReloadRecord>;
}

impl<T: Send + Sync + 'static> Reload for Reloader<T> {
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + '_>> {
        Box::pin(Reloader::reload(self))
    }
    fn last(&self) -> Option<ReloadRecord> {
        Reloader::last(self)
    }
}

/// Why the agent is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Terminate,
    Interrupt,
}

/// How the daemon part starts.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The control socket; `None`: `--socket`/`CUSTOS_CONTROL_SOCKET`/default.
    pub control_socket: Option<PathBuf>,
    /// Serve the control socket at all (tests of the pipeline may not want it).
    pub control: bool,
    /// Fail when the control socket cannot be bound (else: warn and go on).
    pub control_required: bool,
    /// How often `STATUS=` is refreshed.
    pub status_every: Duration,
    /// A stop requested by something other than a signal: the Windows
    /// Service Control Manager's Stop, Shutdown and Preshutdown controls.
    pub external_stop: Option<watch::Receiver<bool>>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            control_socket: None,
            control: true,
            control_required: false,
            status_every: Duration::from_secs(5),
            external_stop: None,
        }
    }
}

/// Errors starting the daemon part.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on the control socket {path}: {source}")]
    ControlSocket { path: PathBuf, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

struct Shared {
    started: Instant,
    started_at: u64,
    state: Mutex<AgentState>,
    providers: Mutex<Vec<Arc<dyn StatusProvider>>>,
    reloader: Mutex<Option<Arc<dyn Reload>>>,
    maintenance: Mutex<Option<Arc<dyn Maintenance>>>,
    notifier: Notifier,
}

impl Shared {
    fn set_state(&self, s: AgentState) {
        if let Ok(mut g) = self.state.lock() {
            *g = s;
        }
    }

    fn state(&self) -> AgentState {
        self.state.lock().map(|g| *g).unwrap_or_default()
    }

    fn snapshot(&self) -> StatusSnapshot {
        let mut s = StatusSnapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: self.started_at,
            uptime_secs: self.started.elapsed().as_secs(),
            state: self.state(),
            ..Default::default()
        };
        let providers = self.providers.lock().map(|g| g.clone()).unwrap_or_default();
        for p in providers {
            p.fill(&mut s);
        }
        // The daemon owns these, whatever the provider wrote.
        s.state = self.state();
        s.last_reload = self.reloader.lock().ok().and_then(|g| g.clone()).and_then(|r| r.last());
        s
    }

    async fn reload(&self) -> Result<Vec<String>, String> {
        let reloader = self.reloader.lock().ok().and_then(|g| g.clone());
        let Some(r) = reloader else {
            return Err("the agent is not ready to reload yet".into());
        };
        let before = self.state();
        if before == AgentState::Stopping {
            return Err("the agent is stopping".into());
        }
        self.set_state(AgentState::Reloading);
        let result = r.reload().await;
        // A stop that arrived meanwhile wins.
        if self.state() == AgentState::Reloading {
            self.set_state(before);
        }
        result
    }
}

struct Handler(Arc<Shared>);

impl ControlHandler for Handler {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Ping => Response::Pong { version: env!("CARGO_PKG_VERSION").to_string() },
            Request::Status => Response::Status { status: Box::new(self.0.snapshot()) },
            Request::Reload => match self.0.reload().await {
                Ok(notes) => Response::Reloaded { ok: true, error: None, notes },
                Err(e) => Response::Reloaded { ok: false, error: Some(e), notes: vec![] },
            },
            Request::Pause { .. } | Request::Resume { .. } | Request::Actions { .. } => {
                let m = self.0.maintenance.lock().ok().and_then(|g| g.clone());
                let Some(m) = m else {
                    return Response::Error {
                        error: "self-healing is off in this agent (no runbooks directory)".into(),
                    };
                };
                // Pauses write the state file and the audit log: off the
                // control socket's task.
                tokio::task::spawn_blocking(move || maintain(&*m, request))
                    .await
                    .unwrap_or_else(|e| Response::Error { error: e.to_string() })
            }
        }
    }
}

fn maintain(m: &dyn Maintenance, request: Request) -> Response {
    let result = match request {
        Request::Pause { service, for_secs } => m
            .pause(&service, for_secs.map(Duration::from_secs))
            .map(|until| Response::Paused { service, until }),
        Request::Resume { service } => {
            m.resume(&service).map(|was_paused| Response::Resumed { service, was_paused })
        }
        Request::Actions { limit } => Ok(Response::Actions { actions: m.actions(limit) }),
        other => Err(format!("not a maintenance request: {other:?}")),
    };
    result.unwrap_or_else(|error| Response::Error { error })
}

/// The running daemon part of the agent. Dropping it stops its tasks and
/// removes the control socket.
pub struct Daemon {
    shared: Arc<Shared>,
    stop_rx: watch::Receiver<Option<StopReason>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    control_path: Option<PathBuf>,
}

impl Daemon {
    /// Installs SIGTERM/SIGINT/SIGHUP handlers, binds the control socket,
    /// and starts the watchdog (when systemd asked for one) and `STATUS=`
    /// tasks. Call inside the tokio runtime, before the slow start-up work,
    /// so that an early SIGTERM is not lost.
    pub fn start(opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let notifier = Notifier::from_env();
        let shared = Arc::new(Shared {
            started: Instant::now(),
            started_at: unix_now(),
            state: Mutex::new(AgentState::Starting),
            providers: Mutex::new(Vec::new()),
            reloader: Mutex::new(None),
            maintenance: Mutex::new(None),
            notifier: notifier.clone(),
        });
        let (stop_tx, stop_rx) = watch::channel(None);
        let mut tasks = Vec::new();
        if let Some(mut external) = opts.external_stop.clone() {
            let tx = stop_tx.clone();
            tasks.push(tokio::spawn(async move {
                while !*external.borrow_and_update() {
                    if external.changed().await.is_err() {
                        return;
                    }
                }
                tracing::info!("Stop requested by the service manager.");
                let _ = tx.send(Some(StopReason::Terminate));
            }));
        }

        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
            let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
            let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
            tasks.push(tokio::spawn(async move {
                loop {
                    let reason = tokio::select! {
                        _ = term.recv() => StopReason::Terminate,
                        _ = int.recv() => StopReason::Interrupt,
                    };
                    if stop_tx.borrow().is_some() {
                        // A second signal while draining means "now".
                        tracing::warn!(?reason, "Second stop signal: exiting without draining.");
                        std::process::exit(130);
                    } else {
                        tracing::info!(?reason, "Stop requested.");
                        let _ = stop_tx.send(Some(reason));
                    }
                }
            }));
            let s = shared.clone();
            tasks.push(tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration.");
                    if let Err(e) = s.reload().await {
                        tracing::debug!(error = %e, "Reload on SIGHUP did not apply.");
                    }
                }
            }));
        }
        #[cfg(not(unix))]
        {
            tasks.push(tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    let _ = stop_tx.send(Some(StopReason::Interrupt));
                }
            }));
        }

        let mut control_path = None;
        #[cfg(unix)]
        if opts.control {
            let path = control::socket_path(opts.control_socket.as_deref());
            match control::ControlServer::bind(&path) {
                Ok(server) => {
                    tracing::debug!(path = %path.display(), "Control socket listening.");
                    tasks.push(tokio::spawn(server.serve(Arc::new(Handler(shared.clone())))));
                    control_path = Some(path);
                }
                Err(source) if opts.control_required => {
                    return Err(DaemonError::ControlSocket { path, source });
                }
                Err(e) => {
                    // A foreground run without root, or a second agent:
                    // everything works but `custos status`.
                    tracing::warn!(path = %path.display(), error = %e, "No control socket; `custos status` will not reach this agent.");
                }
            }
        }

        if notifier.is_enabled() {
            let s = shared.clone();
            let every = opts.status_every;
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    ticker.tick().await;
                    if s.state() == AgentState::Running {
                        let line = s.snapshot().summary_line();
                        s.notifier.notify_logged(&[NotifyState::Status(line)]);
                    }
                }
            }));
        }

        Ok(Daemon { shared, stop_rx, tasks: Mutex::new(tasks), control_path })
    }

    /// For the pipeline's own announcements and for [`Reloader::new`].
    pub fn notifier(&self) -> Notifier {
        self.shared.notifier.clone()
    }

    pub fn control_socket(&self) -> Option<&std::path::Path> {
        self.control_path.as_deref()
    }

    /// Adds a module's part of the status; providers fill in the order added.
    pub fn add_status_provider(&self, p: Arc<dyn StatusProvider>) {
        if let Ok(mut g) = self.shared.providers.lock() {
            g.push(p);
        }
    }

    /// Enables `custos pause`, `resume` and `status --actions`.
    pub fn set_maintenance(&self, m: Arc<dyn Maintenance>) {
        if let Ok(mut g) = self.shared.maintenance.lock() {
            *g = Some(m);
        }
    }

    /// Enables reloads (SIGHUP and control-socket `reload`); before this a
    /// reload request is answered with an error and nothing changes.
    pub fn set_reloader(&self, r: Arc<dyn Reload>) {
        if let Ok(mut g) = self.shared.reloader.lock() {
            *g = Some(r);
        }
    }

    /// Sensors are attached and the exporter runs: `READY=1`. When systemd
    /// asked for a watchdog, keep-alives start now and follow `liveness`
    /// (the pipeline's heartbeat): they stop when it stops moving.
    pub fn ready(&self, liveness: Arc<dyn Liveness>) {
        self.shared.set_state(AgentState::Running);
        if self.shared.notifier.is_enabled() {
            if let Some(interval) = watchdog::interval_from_env() {
                tracing::info!(interval_ms = interval.as_millis() as u64, "Watchdog keep-alives enabled.");
                let task =
                    tokio::spawn(watchdog::run_watchdog(self.shared.notifier.clone(), liveness, interval));
                if let Ok(mut g) = self.tasks.lock() {
                    g.push(task);
                }
            }
        }
        let line = self.shared.snapshot().summary_line();
        self.shared.notifier.notify_logged(&[NotifyState::Ready, NotifyState::Status(line)]);
        tracing::info!(pid = std::process::id(), "Agent ready.");
    }

    /// Resolves when SIGTERM or SIGINT arrived (at once if one already did).
    pub async fn stop_requested(&self) -> StopReason {
        let mut rx = self.stop_rx.clone();
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                return r;
            }
            if rx.changed().await.is_err() {
                // The signal task is gone: only at teardown.
                return StopReason::Terminate;
            }
        }
    }

    /// `STOPPING=1`: call when shutdown begins.
    pub fn stopping(&self) {
        self.shared.set_state(AgentState::Stopping);
        self.shared.notifier.notify_logged(&[NotifyState::Stopping, NotifyState::Status("stopping".into())]);
    }

    /// The snapshot `custos status` would show now.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.shared.snapshot()
    }

    /// Triggers a reload as SIGHUP would; `Ok` says what needs a restart.
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        self.shared.reload().await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(g) = self.tasks.lock() {
            for t in g.iter() {
                t.abort();
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_manager_stop_is_a_stop_request() {
        let (tx, rx) = watch::channel(false);
        let daemon = Daemon::start(DaemonOptions {
            control: false,
            external_stop: Some(rx),
            ..DaemonOptions::default()
        })
        .unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(200), daemon.stop_requested()).await;
        assert!(pending.is_err(), "no stop before the manager asks");
        tx.send(true).unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), daemon.stop_requested()).await;
        assert_eq!(reason.ok(), Some(StopReason::Terminate));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_reload_through_the_control_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let daemon = Daemon::start(DaemonOptions {
            control_socket: Some(sock.clone()),
            control: true,
            control_required: true,
            status_every: Duration::from_secs(60),
            external_stop: None,
        })
        .unwrap();
        daemon.add_status_provider(Arc::new(|s: &mut StatusSnapshot| {
            s.events_per_sec = 3.0;
            s.state = AgentState::Stopping; // ignored: the daemon owns the state
        }));
        let flip = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = flip.clone();
        let reloader = Arc::new(Reloader::new(
            0u32,
            Arc::new(move || {
                if f.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(1)
                } else {
                    Err("c.yaml:2:1: bad".to_string())
                }
            }),
            daemon.notifier(),
        ));
        let p = sock.clone();
        let before_ready = tokio::task::spawn_blocking(move || {
            control::request(&p, &Request::Reload, Duration::from_secs(5)).unwrap()
        })
        .await
        .unwrap();
        assert!(matches!(before_ready, Response::Reloaded { ok: false, .. }));
        daemon.set_reloader(reloader.clone());
        daemon.ready(Arc::new(std::sync::atomic::AtomicU64::new(0)));

        let p = sock.clone();
        let (ok, status) = tokio::task::spawn_blocking(move || {
            let t = Duration::from_secs(5);
            (
                control::request(&p, &Request::Reload, t).unwrap(),
                control::request(&p, &Request::Status, t).unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(ok, Response::Reloaded { ok: true, error: None, notes: vec![] });
        assert_eq!(*reloader.current(), 1);
        let Response::Status { status } = status else { panic!("{status:?}") };
        assert_eq!(status.state, AgentState::Running);
        assert_eq!(status.events_per_sec, 3.0);
        assert_eq!(status.pid, std::process::id());
        assert!(status.last_reload.unwrap().ok);

        flip.store(false, std::sync::atomic::Ordering::SeqCst);
        let err = daemon.reload().await.unwrap_err();
        assert_eq!(err, "c.yaml:2:1: bad");
        assert_eq!(daemon.snapshot().state, AgentState::Running, "state restored after a failed reload");
        daemon.stopping();
        assert_eq!(daemon.snapshot().state, AgentState::Stopping);
        drop(daemon);
        assert!(
            !sock.exists()
                || tokio::time::timeout(Duration::from_secs(2), async {
                    while sock.exists() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .is_ok()
        );
    }
}
