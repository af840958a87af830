//! `custos run`: the agent. Starts the sensor and the pipeline with every
//! consumer, and stops them in order.

use crate::attribution::Attributor;
use crate::config::LoadedConfig;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::run::{host_view, start_sensor, Source, SummaryPrinter};
use std::sync::Arc;
use std::time::Duration;

/// How long `custos run` gives the exporter to send or spool what it holds
/// when stopping.
const EXPORT_SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);

/// Options of `custos run` beyond the configuration.
pub struct RunOptions {
    pub source: Source,
    /// Print the per-service table this often (None: never).
    pub summary: Option<Duration>,
    /// Service integration: control socket path, and the logger whose level
    /// follows reloads.
    pub daemon: crate::daemon::run_support::DaemonRunOptions,
}

/// Runs the agent until SIGTERM/SIGINT, or until a recording is exhausted.
pub async fn run(config: LoadedConfig, opts: RunOptions) -> anyhow::Result<()> {
    // Service integration first, so that an early SIGTERM is not lost.
    let service = crate::daemon::run_support::ServiceLink::start(&config, opts.daemon)?;
    let started = start_sensor(&opts.source, &config).await?;
    let stats = Arc::new(PipelineStats::default());
    let attributor = Attributor::new(&config, host_view(&opts.source));
    let mut pipeline = Pipeline::new(attributor, started.control, stats.clone());
    let agent_stats = Arc::new(crate::export::AgentStats::default());
    let exporter = crate::export::Exporter::start(&config, crate::export::HostInfo::detect(), agent_stats)?;
    pipeline.add_sink(Box::new(exporter.sink()));
    service.add_exporter_status(&config, exporter.stats().clone());
    let runbooks = crate::runbook::sink::start(&config)?;
    if let Some(rb) = &runbooks {
        pipeline.add_sink(Box::new(rb.sink()));
        rb.export_audit(exporter.log_sender());
        service.attach_runbooks(rb.engine.clone());
    }
    // The per-service series feed the detectors and the runbooks' metric
    // triggers; anomalies and series values reach the engine through a
    // bounded channel.
    if config.raw.detection.enabled || runbooks.is_some() {
        let bank = config
            .raw
            .detection
            .enabled
            .then(|| crate::detect::DetectorBank::from_config(&config.raw.detection));
        let findings = runbooks.as_ref().map(|rb| {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            rb.forward_findings(rx);
            tx
        });
        let sink = crate::detection::DetectionSink::new(
            bank,
            &config.raw.agent.state_dir,
            Some(exporter.log_sender()),
            findings,
        )
        .with_exporter(exporter.anomaly_scores(), exporter.stats().clone());
        pipeline.add_sink(Box::new(sink));
    }
    // Health probes run with or without runbooks: their results are events
    // (exported, summarized) and, through the engine, triggers.
    let probes = crate::health::start_probes(
        &config,
        runbooks.as_ref().map(|rb| rb.engine.clone()),
        pipeline.side_input(1024),
    );
    if let Some(every) = opts.summary {
        let services = pipeline.configured_services();
        pipeline.add_sink(Box::new(SummaryPrinter::new(every, &services)));
    }
    service.add_sinks(&mut pipeline);
    tracing::info!(
        services = config.services.len(),
        everything = config.manages_everything(),
        "Agent started."
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let pipeline_task = tokio::spawn(pipeline.run(started.rx, stop));
    service.ready(&stats);
    let stopping = service.until_stop(pipeline_task, stop_tx, started.task).await;
    // After the drain: flushes what the exporter holds, or spools it, within the budget.
    let stopping = stopping.then("flush or spool telemetry", EXPORT_SHUTDOWN_BUDGET, async move {
        exporter.shutdown(EXPORT_SHUTDOWN_BUDGET).await;
        Ok(())
    });
    let finished = stopping.finish().await?;
    probes.stop();
    tracing::info!(
        events = stats.events_attributed.load(std::sync::atomic::Ordering::Relaxed),
        lost_kernel = finished.loss.kernel,
        lost_channel = finished.loss.channel,
        "Agent stopped."
    );
    Ok(())
}
