//! Wiring the runbook engine into `custos run`: a pipeline sink feeding it
//! attributed events, a task forwarding the detector's anomalies and the
//! per-service metric series, and audit records exported as OTLP logs.
//! Health probes (`health::start_probes`) and the service state poller
//! (`service_manager::StatePoller`) run apart since they exist without
//! runbooks too; the agent feeds their results to the engine.

use super::detection::Finding;
use crate::audit::{AuditKind, AuditLog, AuditRecord};
use crate::config::LoadedConfig;
use crate::export::{AgentStats, AttrValue, LogRecord, LogSender, Severity};
use crate::pipeline::{EventSink, Tick};
use crate::runbook::engine::{Engine, EngineOptions, ServiceInfo, SystemClock};
use custos_event::Event;
use std::collections::HashMap;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

/// What the engine's input thread takes, in order.
enum EngineInput {
    Event(Event),
    Finding(Finding),
    /// Everything queued before it has been handled: answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// How many events and findings may wait for the engine. Matching an event
/// is quick; what is slow (audit appends, state saves with fsync) happens
/// on the engine's input thread, never on the pipeline task.
const ENGINE_QUEUE: usize = 8192;

/// The pipeline sink: every attributed event goes to the engine's input
/// thread; when its queue is full the event is dropped and counted
/// (`runbook_inputs_dropped`), the pipeline never waits.
pub struct RunbookSink {
    engine: Engine,
    input: SyncSender<EngineInput>,
    stats: Arc<AgentStats>,
}

impl EventSink for RunbookSink {
    fn on_event(&mut self, event: &Event) {
        if self.input.try_send(EngineInput::Event(event.clone())).is_err() {
            AgentStats::add(&self.stats.runbook_inputs_dropped, 1);
        }
    }
    fn on_finish(&mut self, _tick: &Tick) {
        // What is queued is handled, then running actions finish (bounded
        // by their timeouts) before exit.
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.input.send(EngineInput::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
        self.engine.wait_idle();
    }
}

/// A running engine and what feeds it.
pub struct Runbooks {
    pub engine: Engine,
    pub audit: Arc<AuditLog>,
    input: SyncSender<EngineInput>,
}

impl Runbooks {
    pub fn sink(&self, stats: Arc<AgentStats>) -> RunbookSink {
        RunbookSink { engine: self.engine.clone(), input: self.input.clone(), stats }
    }

    /// Forwards the detector's anomalies and series values to the engine's
    /// input thread (dropped and counted as `findings_dropped` when its
    /// queue is full).
    pub fn forward_findings(
        &self,
        mut rx: tokio::sync::mpsc::Receiver<Finding>,
        stats: Arc<AgentStats>,
    ) -> tokio::task::JoinHandle<()> {
        let input = self.input.clone();
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                match input.try_send(EngineInput::Finding(f)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => AgentStats::add(&stats.findings_dropped, 1),
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        })
    }

    /// Exports every audit record from now on as an OTLP log record
    /// (`custos.runbook.<kind>`), and the records the export could not keep
    /// up with as `audit_export_dropped`; and the records that could not be
    /// written as `audit_write_failures`.
    pub fn export_audit(&self, logs: LogSender, stats: Arc<AgentStats>) {
        let rx = self.audit.subscribe(4096);
        let audit = self.audit.clone();
        let spawned = std::thread::Builder::new().name("audit-export".into()).spawn(move || loop {
            match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(r) => logs.send(audit_log_record(&r)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            AgentStats::set(&stats.audit_export_dropped, audit.dropped());
            AgentStats::set(&stats.audit_write_failures, audit.write_failures());
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Audit export thread could not start.");
        }
    }
}

/// An audit record as an OTLP log record.
pub fn audit_log_record(r: &AuditRecord) -> LogRecord {
    let severity = match r.kind {
        AuditKind::Breaker => Severity::Error,
        AuditKind::Verification if r.details["healed"] == false => Severity::Warn,
        AuditKind::Outcome if r.details["ok"] == false => Severity::Warn,
        AuditKind::Firing | AuditKind::Decision | AuditKind::Action | AuditKind::Outcome => Severity::Info,
        _ => Severity::Info,
    };
    let service = (!r.service.is_empty()).then(|| r.service.clone());
    let mut rec =
        LogRecord::new(format!("custos.runbook.{}", r.kind.as_str()), severity, service, r.message.clone());
    rec.time = r.ts;
    rec.attributes.push(("custos.runbook.name".into(), AttrValue::from(r.runbook.clone())));
    rec.attributes.push(("custos.audit.seq".into(), AttrValue::from(r.seq as i64)));
    rec.attributes.push(("custos.runbook.dry_run".into(), AttrValue::from(r.dry_run)));
    if !r.details.is_null() {
        rec.attributes.push(("custos.runbook.details".into(), AttrValue::from(r.details.to_string())));
    }
    rec
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Engine(#[from] crate::runbook::engine::EngineError),
    #[error("cannot start the runbook input thread: {0}")]
    Thread(std::io::Error),
}

/// The engine's view of the configured services: the unit each one's
/// actions go to (guessed from the name for services selected by
/// executable or cgroup) and whether it has a probe.
pub fn service_infos(config: &LoadedConfig) -> HashMap<String, ServiceInfo> {
    let mut services = HashMap::new();
    for s in &config.services {
        services.insert(s.name.clone(), ServiceInfo { unit: s.action_unit(), has_probe: s.health.is_some() });
    }
    services
}

/// How often the engine's timers are looked at (held firings, cooldowns,
/// pauses, ladder resets).
const TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts the engine from the configuration: runbooks from `runbooks.dir`
/// (bad files are logged, skipped, and shown by status), audit and state in
/// `agent.state_dir`, the service manager's job watcher (what tells a stop
/// asked of it from a crash). `None` when the runbooks directory does not
/// exist. `dry_run` forces dry-run over the configuration (a replay without
/// `--act`); a panic of the engine's input thread is reported to `faults`.
pub fn start(
    config: &LoadedConfig,
    stats: Arc<AgentStats>,
    dry_run: bool,
    faults: crate::daemon::Faults,
) -> Result<Option<Runbooks>, StartError> {
    let dir = &config.raw.runbooks.dir;
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "No runbooks directory: self-healing is off.");
        return Ok(None);
    }
    let manager = crate::platform::service_manager();
    let mut report = crate::runbook::load_paths(std::slice::from_ref(dir));
    crate::runbook::model::check_against(
        &mut report,
        config,
        &crate::service_manager::UnitLookup::new(manager.clone()),
    );
    for e in &report.errors {
        tracing::error!(error = %e, "Runbook skipped.");
    }
    let state_dir = &config.raw.agent.state_dir;
    let audit =
        Arc::new(AuditLog::open_with(&state_dir.join("audit"), config.raw.runbooks.audit.retention())?);
    let services = service_infos(config);
    let mut opts = EngineOptions::new(state_dir.to_path_buf());
    opts.dry_run = config.raw.runbooks.dry_run || dry_run;
    opts.services = services;
    opts.stats = stats;
    opts.jobs = crate::platform::manager_jobs(&manager);
    let count = report.runbooks.len();
    let opts_dry_run = opts.dry_run;
    let engine = Engine::new(report.runbooks, manager, audit.clone(), Arc::new(SystemClock), opts)?;
    engine.set_skipped(
        report
            .errors
            .iter()
            .map(|e| crate::runbook::engine::Skipped { source: e.source.clone(), error: e.to_string() })
            .collect(),
    );
    tracing::info!(
        runbooks = count,
        errors = report.errors.len(),
        dry_run = opts_dry_run,
        "Runbooks loaded."
    );
    let (input, queue) = std::sync::mpsc::sync_channel(ENGINE_QUEUE);
    let e = engine.clone();
    std::thread::Builder::new()
        .name("runbook-input".into())
        .spawn(move || {
            let mut ticked = std::time::Instant::now();
            loop {
                let next = match queue.recv_timeout(TICK) {
                    Ok(i) => Some(i),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                };
                // A panic here would leave self-healing silently off: it is
                // a fault that stops the agent (its state is saved after
                // every decision), so that it starts again whole.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    match next {
                        Some(EngineInput::Event(ev)) => e.on_event(&ev),
                        Some(EngineInput::Finding(Finding::Anomaly(a))) => e.on_anomaly(&a),
                        Some(EngineInput::Finding(Finding::Metric { service, metric, value, ts })) => {
                            e.on_metric(&service, metric, value, ts)
                        }
                        Some(EngineInput::Flush(ack)) => {
                            let _ = ack.send(());
                        }
                        None => {}
                    }
                    if ticked.elapsed() >= TICK {
                        ticked = std::time::Instant::now();
                        e.tick();
                    }
                }));
                if let Err(p) = handled {
                    faults.report("runbook engine", crate::daemon::fault::panic_message(p));
                    return;
                }
            }
        })
        .map_err(StartError::Thread)?;
    Ok(Some(Runbooks { engine, audit, input }))
}
