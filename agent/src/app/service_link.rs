//! `custos run` as a service: the glue between the agent's pipeline
//! (`run.rs`) and the daemon parts, so that `run` only calls `start`,
//! `add_sinks`, `ready`, `until_stop` and `finish`.

use super::reload::{load_reloaded, Reloaded};
use crate::config::LoadedConfig;
use crate::daemon::live::LiveStatus;
use crate::daemon::logging::LoggingHandle;
use crate::daemon::reload::Reloader;
use crate::daemon::shutdown::{ShutdownPlan, StepOutcome, STOP_BUDGET};
use crate::daemon::watchdog::StallSink;
use crate::daemon::{Daemon, DaemonError, DaemonOptions};
use crate::pipeline::{Finished, Pipeline, PipelineStats};
use crate::sensor::SensorError;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the sensor may take to end once the pipeline stopped taking
/// its events.
const SENSOR_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What `custos run` passes to the service integration.
#[derive(Default)]
pub struct DaemonRunOptions {
    /// Control socket path (`--socket`, `CUSTOS_CONTROL_SOCKET`, default).
    pub control_socket: Option<PathBuf>,
    /// The installed logger, so that a reload can change the level; `None`
    /// when the level is pinned (`CUSTOS_LOG`) or logging is not ours.
    pub logging: Option<LoggingHandle>,
    /// Becomes true when the platform's service manager asks the agent to
    /// stop without a signal (the Windows SCM).
    pub external_stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Errors at the end of `custos run`.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error("the pipeline task failed: {0}")]
    Pipeline(String),
    #[error("stop incomplete: {0}")]
    Incomplete(String),
    #[error("an internal task failed ({0}); stopped so that the service manager restarts the agent")]
    Fault(String),
}

/// The running agent's link to its service manager and operators.
pub struct ServiceLink {
    daemon: Daemon,
    live: LiveStatus,
    reloader: Arc<Reloader<Reloaded>>,
    logging: Option<LoggingHandle>,
}

impl ServiceLink {
    /// Signals, control socket, reload. Call before the slow start-up.
    pub fn start(config: &LoadedConfig, opts: DaemonRunOptions) -> Result<ServiceLink, DaemonError> {
        let daemon = Daemon::start(DaemonOptions {
            control_socket: opts.control_socket,
            external_stop: opts.external_stop,
            ..DaemonOptions::default()
        })?;
        let live = LiveStatus::new(config);
        daemon.add_status_provider(Arc::new(live.clone()));
        let path = config.path.clone();
        let initial = Reloaded { config: config.clone(), runbooks: None };
        let started = config.clone();
        let reloader = Arc::new(
            Reloader::new(initial, Arc::new(move || load_reloaded(path.as_deref())), daemon.notifier())
                .with_notes(Arc::new(move |_, new| super::reload::restart_notes(&started, new))),
        );
        daemon.set_reloader(reloader.clone());
        Ok(ServiceLink { daemon, live, reloader, logging: opts.logging })
    }

    /// The live figures of `custos status`, for the modules that report
    /// service state and health.
    pub fn live(&self) -> &LiveStatus {
        &self.live
    }

    /// The daemon, for modules that add status providers.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Every successful reload; modules that can apply a new configuration
    /// at run time subscribe here.
    pub fn config_updates(&self) -> watch::Receiver<Arc<Reloaded>> {
        self.reloader.subscribe()
    }

    /// The logger whose level follows reloads (`None` when pinned).
    pub fn logging(&self) -> Option<LoggingHandle> {
        self.logging.clone()
    }

    /// `custos status` shows the runbooks' incidents, counts and last
    /// actions and each service's pause and last exit; `custos pause`,
    /// `resume` and `status --actions` reach the engine.
    pub fn attach_runbooks(&self, engine: crate::runbook::Engine) {
        self.daemon.add_status_provider(Arc::new(RunbookStatusProvider(engine.clone())));
        self.daemon.set_maintenance(Arc::new(EngineMaintenance(engine)));
    }

    /// The stall test hook, when armed. (Status is fed by the counters
    /// fold, through [`live`](Self::live).)
    pub fn add_sinks(&self, pipeline: &mut Pipeline) {
        if let Some(stall) = StallSink::from_env() {
            pipeline.add_sink(Box::new(stall));
        }
    }

    /// The pipeline runs (sensors attached, consumers started): READY=1,
    /// and the watchdog on the pipeline's heartbeat.
    pub fn ready(&self, stats: &Arc<PipelineStats>) {
        let s = stats.clone();
        self.daemon.ready(Arc::new(move || s.heartbeat.load(Ordering::Relaxed)));
    }

    /// Waits for SIGTERM/SIGINT, or for the pipeline to end by itself (a
    /// recording was exhausted), and returns the stop to carry out.
    pub async fn until_stop(
        self,
        mut pipeline: JoinHandle<Finished>,
        stop_tx: watch::Sender<bool>,
        sensor: Option<JoinHandle<Result<(), SensorError>>>,
        faults: crate::daemon::Faults,
    ) -> Stopping {
        let mut fault = None;
        let early = tokio::select! {
            _ = self.daemon.stop_requested() => None,
            r = &mut pipeline => Some(r),
            f = faults.wait() => {
                fault = Some(f);
                None
            }
        };
        Stopping { link: self, pipeline, early, stop_tx, sensor, then: Vec::new(), fault }
    }

    /// `custos status` shows the exporter's state from its counters.
    pub fn add_exporter_status(&self, config: &LoadedConfig, stats: Arc<crate::export::AgentStats>) {
        let endpoint = config.raw.exporter.otlp.as_ref().map(|o| o.endpoint.value.clone());
        let files = config.files_dir().display().to_string();
        self.daemon.add_status_provider(Arc::new(ExporterStatusProvider { stats, endpoint, files }));
    }
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn counts(c: crate::runbook::engine::Counts) -> crate::daemon::status::RunbookCounts {
    crate::daemon::status::RunbookCounts {
        firings: c.firings,
        actions: c.actions,
        failures: c.failures,
        not_healed: c.not_healed,
        held: c.held,
        suppressions: c.suppressions,
        breaker_openings: c.breaker_openings,
    }
}

/// `step 2 of 4 (restart): verifying until 12:00:03Z (last: activating (start))`.
fn progress(p: &crate::runbook::engine::Progress) -> String {
    use crate::runbook::engine::Stage;
    let at = |t| humantime::format_rfc3339_seconds(t);
    let stage = match &p.stage {
        Stage::Waiting { until } => format!("waiting for its delay until {}", at(*until)),
        Stage::Acting => "acting".to_string(),
        Stage::Verifying { until } => format!("verifying until {}", at(*until)),
    };
    let mut s = format!("{} of {}: {stage}", p.label(), p.runbook);
    if !p.last.is_empty() {
        s.push_str(&format!(" (last: {})", p.last));
    }
    s
}

/// One past action as status shows it.
fn action_record(
    runbook: &str,
    service: &str,
    steps: usize,
    a: &crate::runbook::state::ActionSummary,
) -> crate::daemon::status::ActionRecord {
    let outcome = match (a.dry_run, a.ok, a.healed) {
        (true, _, _) => "dry_run".to_string(),
        (false, false, _) => format!("failed: {}", a.detail),
        (false, true, Some(true)) => "ok, healed".into(),
        (false, true, Some(false)) => "ok, not healed".into(),
        (false, true, None) if a.detail.contains("not acting on top") => format!("skipped: {}", a.detail),
        (false, true, None) => "ok".into(),
    };
    let step = (a.step > 0).then(|| a.step - 1);
    crate::daemon::status::ActionRecord {
        at: secs(a.ts),
        runbook: runbook.to_string(),
        service: service.to_string(),
        action: crate::runbook::engine::step_label(step, steps, &a.action),
        outcome,
    }
}

/// The runbooks' part of the status, from the engine.
struct RunbookStatusProvider(crate::runbook::Engine);

impl crate::daemon::StatusProvider for RunbookStatusProvider {
    fn fill(&self, s: &mut crate::daemon::StatusSnapshot) {
        let now = std::time::SystemTime::now();
        for r in self.0.status() {
            let state = if r.paused {
                "paused"
            } else if r.in_progress.is_some() {
                "running"
            } else if r.breaker_open {
                "circuit_open"
            } else if r.phase == "exhausted" {
                "exhausted"
            } else if r.cooldown_until.is_some_and(|t| t > now) {
                "cooldown"
            } else if r.dry_run {
                "dry_run"
            } else {
                "armed"
            };
            s.runbooks.push(crate::daemon::status::RunbookStatus {
                name: r.name.clone(),
                service: r.service.clone(),
                ladder_position: r.next_step.saturating_sub(1) as u32,
                ladder_steps: r.steps as u32,
                state: state.into(),
                next_action: r.next_action.clone(),
                in_progress: r.in_progress.as_ref().map(progress),
                held: r.held,
                counts: counts(r.counts),
            });
        }
        s.runbook_counts = counts(self.0.totals());
        s.last_actions = history(&self.0, 10);
        s.skipped_runbooks = self
            .0
            .skipped()
            .into_iter()
            .map(|k| crate::daemon::status::SkippedRunbook { source: k.source, error: k.error })
            .collect();
        for v in self.0.services_status() {
            let i = match s.services.iter().position(|x| x.name == v.name) {
                Some(i) => i,
                None => {
                    s.services.push(crate::daemon::status::ServiceHealth {
                        name: v.name.clone(),
                        ..Default::default()
                    });
                    s.services.len() - 1
                }
            };
            let h = &mut s.services[i];
            h.paused = v.paused.is_some();
            h.paused_until = v.paused.as_ref().and_then(|p| p.until).map(secs);
            h.stopped_on_request = v.stopped_on_request;
            h.in_progress = v.in_progress.as_ref().map(progress);
            h.last_exit = v.last_exit.map(|e| crate::daemon::status::ExitStatus {
                at: secs(e.at),
                pid: e.pid,
                code: e.code,
                signal: e.signal,
                cause: e.cause.map(|c| c.as_str().to_string()),
            });
        }
    }
}

/// The last `limit` actions of the host, newest first.
fn history(engine: &crate::runbook::Engine, limit: usize) -> Vec<crate::daemon::status::ActionRecord> {
    engine.history(limit).iter().map(|h| action_record(&h.runbook, &h.service, h.steps, &h.action)).collect()
}

/// `custos pause`, `resume` and `status --actions`, on the engine.
struct EngineMaintenance(crate::runbook::Engine);

impl crate::daemon::Maintenance for EngineMaintenance {
    fn pause(&self, service: &str, duration: Option<std::time::Duration>) -> Result<Option<u64>, String> {
        self.0.pause(service, duration).map(|p| p.until.map(secs))
    }
    fn resume(&self, service: &str) -> Result<bool, String> {
        self.0.resume(service)
    }
    fn actions(&self, limit: usize) -> Vec<crate::daemon::status::ActionRecord> {
        history(&self.0, limit)
    }
}

/// The exporter's part of the status, read from its counters.
struct ExporterStatusProvider {
    stats: Arc<crate::export::AgentStats>,
    endpoint: Option<String>,
    files: String,
}

impl crate::daemon::StatusProvider for ExporterStatusProvider {
    fn fill(&self, s: &mut crate::daemon::StatusSnapshot) {
        let st = self.stats.snapshot();
        s.exporter.spool_bytes = st.spool_bytes;
        s.drops.exporter = st.events_dropped_exporter + st.logs_dropped;
        s.exporter.endpoint =
            Some(self.endpoint.clone().unwrap_or_else(|| format!("files in {}", self.files)));
        s.exporter.state = exporter_state(&st, self.endpoint.is_some()).to_string();
        if st.export_failures > 0 {
            s.exporter.last_error = Some(format!("{} batches rejected by the collector", st.export_failures));
        }
    }
}

/// A one-word exporter state from its counters.
fn exporter_state(st: &crate::export::StatsSnapshot, otlp: bool) -> &'static str {
    match (otlp, st.spool_batches > 0, st.batches_exported > 0) {
        (_, true, _) => "spooling",
        (true, false, true) => "connected",
        (false, false, true) => "writing files",
        (_, false, false) => "starting",
    }
}

/// The stop, once asked for.
pub struct Stopping {
    link: ServiceLink,
    pipeline: JoinHandle<Finished>,
    early: Option<Result<Finished, tokio::task::JoinError>>,
    stop_tx: watch::Sender<bool>,
    /// A replay's feeding task; kernel sensors have none (they stop when
    /// the pipeline drops their control).
    sensor: Option<JoinHandle<Result<(), SensorError>>>,
    then: Vec<(String, std::time::Duration, StepFuture)>,
    /// The internal task whose death stops the agent, if that is why.
    fault: Option<String>,
}

type StepFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

impl Stopping {
    /// A step to run after the drain and the sensor, in the order added,
    /// limited to `limit` (and to what is left of the stop budget): flush
    /// or spool telemetry, persist detector and runbook state.
    pub fn then<F>(mut self, name: &str, limit: std::time::Duration, fut: F) -> Stopping
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.then.push((name.to_string(), limit, Box::pin(fut)));
        self
    }

    /// STOPPING=1, then within [`STOP_BUDGET`]: the pipeline stops taking
    /// from the sensor and drains what it already has (sinks flush on
    /// finish), then the sensor task ends. Steps that persist state
    /// (exporter spool, detector, runbooks) go after these.
    pub async fn finish(self) -> Result<Finished, StopError> {
        self.link.daemon.stopping();
        let _ = self.stop_tx.send(true);
        let finished = Arc::new(Mutex::new(None));
        let sensor_error = Arc::new(Mutex::new(None));
        let (f, se) = (finished.clone(), sensor_error.clone());
        let pipeline = self.pipeline;
        let early = self.early;
        let fault = self.fault;
        let sensor = self.sensor;
        let mut plan = ShutdownPlan::new(STOP_BUDGET)
            .step("drain the pipeline", async move {
                let r = match early {
                    Some(r) => r,
                    None => pipeline.await,
                };
                let done = r.map_err(|e| e.to_string())?;
                if let Ok(mut g) = f.lock() {
                    *g = Some(done);
                }
                Ok(())
            })
            .step("stop the sensor", async move {
                // The pipeline has closed the channel, so the sensor can
                // deliver nothing more; waiting is only to hear its error.
                // A sensor that does not notice (a replay asleep until its
                // next recorded event) is cancelled after a grace period.
                let Some(mut sensor) = sensor else { return Ok(()) };
                let joined = match tokio::time::timeout(SENSOR_GRACE, &mut sensor).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(
                            grace_ms = SENSOR_GRACE.as_millis() as u64,
                            "Sensor did not notice the stop; cancelled it."
                        );
                        sensor.abort();
                        match sensor.await {
                            Err(e) if e.is_cancelled() => Ok(Ok(())),
                            other => other,
                        }
                    }
                };
                match joined {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        let msg = e.to_string();
                        if let Ok(mut g) = se.lock() {
                            *g = Some(e);
                        }
                        Err(msg)
                    }
                    Err(e) => Err(e.to_string()),
                }
            });
        for (name, limit, fut) in self.then {
            plan = plan.step_within(name, limit, fut);
        }
        let report = plan.run().await;
        if let Some(f) = fault {
            return Err(StopError::Fault(f));
        }
        if let Some(e) = sensor_error.lock().ok().and_then(|mut g| g.take()) {
            return Err(StopError::Sensor(e));
        }
        let unfinished: Vec<String> = report
            .steps
            .iter()
            .filter(|(_, o, _)| *o != StepOutcome::Done)
            .map(|(n, o, _)| format!("{n}: {o:?}"))
            .collect();
        let done = finished.lock().ok().and_then(|mut g| g.take());
        match done {
            Some(f) if unfinished.is_empty() => Ok(f),
            Some(_) => Err(StopError::Incomplete(unfinished.join(", "))),
            None => Err(StopError::Pipeline(unfinished.join(", "))),
        }
    }
}

/// The logger of `custos run`, and on Windows the handle that turns on its
/// Event Log output once the SCM is known to have started the agent.
pub struct RunLogging {
    /// `None` when the level is pinned (`CUSTOS_LOG`): reloads leave it.
    pub handle: Option<LoggingHandle>,
    #[cfg(any(windows, custos_windows_typecheck))]
    pub event_log:
        crate::platform::windows::eventlog::Deferred<crate::platform::windows::eventlog::EventSource>,
}

/// Installs the logger for `custos run`: journald under systemd, else
/// stderr in the configured format; `--log-format` wins over both. On
/// Windows the Event Log layer is installed too, silent until armed.
/// `CUSTOS_LOG` (a filter) pins the level, which reloads then leave alone.
pub fn init_logging(
    config: &LoadedConfig,
    format_flag: Option<&str>,
) -> Result<RunLogging, crate::daemon::logging::LoggingError> {
    use crate::config::LogFormat;
    let format = match format_flag {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => config.raw.agent.log_format,
    };
    let pinned = std::env::var("CUSTOS_LOG").ok().filter(|v| !v.is_empty());
    let level = pinned.clone().unwrap_or_else(|| config.raw.agent.log_level.value.clone());
    #[cfg(any(windows, custos_windows_typecheck))]
    let (platform, event_log) = {
        let (layer, deferred) = crate::platform::windows::eventlog::service_layer();
        (Some(Box::new(layer) as crate::daemon::logging::PlatformLayer), deferred)
    };
    #[cfg(not(any(windows, custos_windows_typecheck)))]
    let platform = None;
    let handle = crate::daemon::logging::init(&level, format, format_flag.is_some(), platform)?;
    Ok(RunLogging {
        handle: if pinned.is_some() { None } else { Some(handle) },
        #[cfg(any(windows, custos_windows_typecheck))]
        event_log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::{StatusProvider, StatusSnapshot};
    use crate::export::AgentStats;

    #[test]
    fn exporter_state_follows_the_counters() {
        let stats = Arc::new(AgentStats::default());
        let p = ExporterStatusProvider {
            stats: stats.clone(),
            endpoint: Some("http://127.0.0.1:4317".into()),
            files: "/x".into(),
        };
        let fill = || {
            let mut s = StatusSnapshot::default();
            p.fill(&mut s);
            s
        };
        assert_eq!(fill().exporter.state, "starting");
        AgentStats::add(&stats.batches_exported, 1);
        assert_eq!(fill().exporter.state, "connected");
        AgentStats::set(&stats.spool_batches, 2);
        AgentStats::set(&stats.spool_bytes, 4096);
        AgentStats::add(&stats.events_dropped_exporter, 3);
        let s = fill();
        assert_eq!(
            (s.exporter.state.as_str(), s.exporter.spool_bytes, s.drops.exporter),
            ("spooling", 4096, 3)
        );
        assert_eq!(s.exporter.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
    }
}
