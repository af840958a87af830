//! Wiring the runbook engine into `custos run`: a pipeline sink feeding it
//! attributed events, a task forwarding the detector's anomalies and the
//! per-service metric series, and audit records exported as OTLP logs.
//! Health probes (`health::start_probes`) and the service state poller
//! (`service_manager::StatePoller`) run apart since they exist without
//! runbooks too; the agent feeds their results to the engine.

use super::engine::{Engine, EngineOptions, ServiceInfo, SystemClock};
use crate::audit::{AuditKind, AuditLog, AuditRecord};
use crate::config::{LoadedConfig, Selector};
use crate::detection::Finding;
use crate::export::{AttrValue, LogRecord, LogSender, Severity};
use crate::pipeline::{EventSink, Tick};
use crate::service_manager::ServiceManager;
#[cfg(not(any(windows, custos_windows_typecheck)))]
use crate::service_manager::{ServiceError, ServiceStatus};
use custos_event::Event;
use std::collections::HashMap;
use std::sync::Arc;

/// Environment variable naming a D-Bus address for systemd (another
/// namespace's bus in tests; default: the system bus, else the private socket).
pub const SYSTEMD_BUS_ENV: &str = "CUSTOS_SYSTEMD_BUS";

/// The pipeline sink: every attributed event goes to the engine.
pub struct RunbookSink {
    engine: Engine,
}

impl EventSink for RunbookSink {
    fn on_event(&mut self, event: &Event) {
        self.engine.on_event(event);
    }
    fn on_finish(&mut self, _tick: &Tick) {
        // Running actions finish (bounded by their timeouts) before exit.
        self.engine.wait_idle();
    }
}

/// A running engine and what feeds it.
pub struct Runbooks {
    pub engine: Engine,
    pub audit: Arc<AuditLog>,
}

impl Runbooks {
    pub fn sink(&self) -> RunbookSink {
        RunbookSink { engine: self.engine.clone() }
    }

    /// Forwards the detector's anomalies to the engine.
    pub fn forward_findings(
        &self,
        mut rx: tokio::sync::mpsc::Receiver<Finding>,
    ) -> tokio::task::JoinHandle<()> {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                match f {
                    Finding::Anomaly(a) => engine.on_anomaly(&a),
                    Finding::Metric { service, metric, value, ts } => {
                        engine.on_metric(&service, metric, value, ts)
                    }
                    // Forecasts are exported as log records; no trigger
                    // takes them yet.
                    Finding::Forecast(_) => {}
                }
            }
        })
    }

    /// Exports every audit record from now on as an OTLP log record
    /// (`custos.runbook.<kind>`).
    pub fn export_audit(&self, logs: LogSender) {
        let rx = self.audit.subscribe(4096);
        let spawned = std::thread::Builder::new().name("audit-export".into()).spawn(move || {
            for r in rx {
                logs.send(audit_log_record(&r));
            }
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
        use crate::platform::linux::systemd::Systemd;
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
        Arc::new(crate::platform::windows::scm::ScmServiceManager::default())
    }
    #[cfg(not(any(target_os = "linux", windows, custos_windows_typecheck)))]
    {
        Arc::new(Unavailable("no service manager for this platform".into()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Engine(#[from] super::engine::EngineError),
}

/// The engine's view of the configured services: the unit each one's
/// actions go to (guessed from the name for services selected by
/// executable or cgroup) and whether it has a probe.
pub fn service_infos(config: &LoadedConfig) -> HashMap<String, ServiceInfo> {
    let mut services = HashMap::new();
    for s in &config.services {
        let unit = match &s.selector {
            Selector::SystemdUnit(u) => u.clone(),
            Selector::WindowsService(n) => n.clone(),
            Selector::Exe(_) | Selector::Cgroup(_) => crate::config::normalize_unit(&s.name),
        };
        services.insert(s.name.clone(), ServiceInfo { unit, has_probe: s.health.is_some() });
    }
    services
}

/// Starts the engine from the configuration: runbooks from `runbooks.dir`
/// (bad files are logged and skipped), audit and state in `agent.state_dir`,
/// health probe threads for services with `health:`. `None` when the
/// runbooks directory does not exist.
pub fn start(config: &LoadedConfig) -> Result<Option<Runbooks>, StartError> {
    let dir = &config.raw.runbooks.dir;
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "No runbooks directory: self-healing is off.");
        return Ok(None);
    }
    let report = super::load_paths(std::slice::from_ref(dir));
    for e in &report.errors {
        tracing::error!(error = %e, "Runbook skipped.");
    }
    let state_dir = &config.raw.agent.state_dir;
    let audit = Arc::new(AuditLog::open(&state_dir.join("audit"), crate::audit::DEFAULT_MAX_FILE_BYTES)?);
    let services = service_infos(config);
    let mut opts = EngineOptions::new(state_dir);
    opts.dry_run = config.raw.runbooks.dry_run;
    opts.services = services;
    let count = report.runbooks.len();
    let engine = Engine::new(report.runbooks, service_manager(), audit.clone(), Arc::new(SystemClock), opts)?;
    tracing::info!(
        runbooks = count,
        errors = report.errors.len(),
        dry_run = config.raw.runbooks.dry_run,
        "Runbooks loaded."
    );
    Ok(Some(Runbooks { engine, audit }))
}
