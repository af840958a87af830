//! `custos run`: the agent. Builds every part from its own configuration
//! section, connects them, and stops them in order:
//!
//! ```text
//! service link (signals, control socket, reload)
//! sensor ─▶ pipeline (attribution) ─▶ exporter
//!                                   ├▶ runbook engine ◀─ findings ────────┐
//!                                   └▶ counters fold ─▶ detection ──────────┘
//!                                                     ├▶ terminal summary (optional)
//!                                                     └▶ status
//! watchers (probes, state poller) ─▶ side input, engine, status
//! ```

use super::reload::{apply_reloads, ReloadTargets};
use super::service_link::{DaemonRunOptions, ServiceLink};
use super::watch::SummaryPrinter;
use super::watchers::ServiceWatchers;
use crate::attribution::Attributor;
use crate::config::LoadedConfig;
use crate::counters::{CountersConsumer, CountersSink};
use crate::pipeline::{Pipeline, PipelineStats};
use crate::sensor::{host_view, Source};
use std::sync::Arc;
use std::time::Duration;

/// How long `custos run` gives the exporter to send or spool what it holds
/// when stopping.
const EXPORT_SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);

/// Options of `custos run` beyond the configuration.
pub struct RunOptions {
    pub source: Source,
    /// With a recording: let runbooks act on this host. Without it a replay
    /// decides and audits as dry-run, whatever the configuration says: a
    /// recorded crash must not restart the live unit of the same name.
    pub act: bool,
    /// Print the per-service table this often (None: never).
    pub summary: Option<Duration>,
    /// Service integration: control socket path, and the logger whose level
    /// follows reloads.
    pub daemon: DaemonRunOptions,
}

/// Runs the agent until SIGTERM/SIGINT, or until a recording is exhausted.
pub async fn run(config: LoadedConfig, opts: RunOptions) -> anyhow::Result<()> {
    // One agent per state dir, before anything else is opened or bound.
    let _lock = crate::daemon::lock::acquire(&config.raw.agent.state_dir)?;
    let descriptors = crate::daemon::raise_descriptor_limit();
    tracing::debug!(descriptors, "Open descriptor limit.");
    // The state directory holds command output and every process's argv.
    if let Ok(Some(was)) = crate::fsutil::make_private(&config.raw.agent.state_dir) {
        tracing::info!(dir = %config.raw.agent.state_dir.display(), mode = format!("{was:o}"), "Made the state directory private (0700).");
    }
    // Service integration first, so that an early SIGTERM is not lost.
    let service = ServiceLink::start(&config, opts.daemon)?;
    let started = crate::sensor::start(&opts.source, &config).await?;
    let stats = Arc::new(PipelineStats::default());
    let attributor = Attributor::new(&config, host_view(&opts.source));
    let mut pipeline = Pipeline::new(attributor, started.control, stats.clone());
    let agent_stats = Arc::new(crate::export::AgentStats::default());
    let exporter = crate::export::Exporter::start(&config, crate::export::HostInfo::detect(), agent_stats)?;
    pipeline.add_sink(Box::new(exporter.sink()));
    service.add_exporter_status(&config, exporter.stats().clone());
    // A unit the service manager does not know may be installed later:
    // said loudly, not fatal (`validate` and `reload` refuse it).
    if matches!(opts.source, Source::Kernel) {
        let units = crate::service_manager::UnitLookup::new(crate::platform::service_manager());
        for e in crate::config::check_units(&config, &units) {
            tracing::error!(error = %e, "Configured unit not found; its service is watched once it exists.");
        }
    }
    let replay_dry_run = matches!(opts.source, Source::Replay { .. }) && !opts.act;
    if replay_dry_run {
        tracing::info!("Replaying a recording: runbooks decide and audit as dry-run and change nothing on this host (--act to let them act).");
    }
    let faults = exporter.faults();
    let runbooks = super::runbooks::start(&config, exporter.stats().clone(), replay_dry_run, faults.clone())?;
    if let Some(rb) = &runbooks {
        pipeline.add_sink(Box::new(rb.sink(exporter.stats().clone())));
        rb.export_audit(exporter.log_sender(), exporter.stats().clone());
        service.attach_runbooks(rb.engine.clone());
    }
    // Detection, the terminal table and status read one fold of the events
    // into per-service counters, in this order at each tick.
    let mut counted: Vec<Box<dyn CountersConsumer>> = Vec::new();
    // The per-service series feed the detectors and the runbooks' metric
    // triggers; anomalies and series values reach the engine through a
    // bounded channel.
    if config.raw.detection.enabled || runbooks.is_some() {
        let bank = config
            .raw
            .detection
            .enabled
            .then(|| custos_detect::DetectorBank::from_config(&config.raw.detection.bank_config()));
        let findings = runbooks.as_ref().map(|rb| {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            rb.forward_findings(rx, exporter.stats().clone());
            tx
        });
        let detection = super::detection::Detection::new(
            bank,
            &config.raw.agent.state_dir,
            Some(exporter.log_sender()),
            findings,
        )
        .with_exporter(exporter.anomaly_scores(), exporter.stats().clone());
        let learning = super::detection::LearningBoard::default();
        service.daemon().add_status_provider(Arc::new(learning.clone()));
        counted.push(Box::new(detection.with_status(learning)));
    }
    // Health probes and the service state poller run with or without
    // runbooks; a reload that changes the services replaces them.
    let engine = runbooks.as_ref().map(|rb| rb.engine.clone());
    let watchers = Arc::new(std::sync::Mutex::new(Some(ServiceWatchers::start(
        &config,
        engine.clone(),
        service.live().clone(),
        pipeline.side_input(1024),
    ))));
    apply_reloads(
        &config,
        service.config_updates(),
        ReloadTargets {
            live: service.live().clone(),
            pipeline: pipeline.reconfigure_input(),
            engine,
            watchers: watchers.clone(),
            logging: service.logging(),
            exporter: Some(exporter.reconfigurer()),
        },
    );
    let services = pipeline.configured_services();
    if let Some(every) = opts.summary {
        counted.push(Box::new(SummaryPrinter::new(every, &services)));
    }
    counted.push(service.live().consumer());
    pipeline.add_sink(Box::new(CountersSink::new(counted).with_configured(&services)));
    service.add_sinks(&mut pipeline);
    tracing::info!(
        services = config.services.len(),
        everything = config.manages_everything(),
        "Agent started."
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let pipeline_task = tokio::spawn(pipeline.run(started.rx, stop));
    service.ready(&stats);
    let stopping = service.until_stop(pipeline_task, stop_tx, started.task, faults).await;
    // After the drain: flushes what the exporter holds, or spools it, within the budget.
    let stopping = stopping.then("flush or spool telemetry", EXPORT_SHUTDOWN_BUDGET, async move {
        exporter.shutdown(EXPORT_SHUTDOWN_BUDGET).await;
        Ok(())
    });
    let finished = stopping.finish().await?;
    drop(watchers.lock().ok().and_then(|mut w| w.take()));
    tracing::info!(
        events = stats.events_attributed.load(std::sync::atomic::Ordering::Relaxed),
        lost_kernel = finished.loss.kernel,
        lost_channel = finished.loss.channel,
        "Agent stopped."
    );
    Ok(())
}
