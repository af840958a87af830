//! `custos run`: the agent. Starts the sensor and the pipeline with every
//! consumer, and stops them in order.

use crate::attribution::Attributor;
use crate::config::LoadedConfig;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::run::{host_view, start_sensor, Source, SummaryPrinter};
use std::sync::Arc;
use std::time::Duration;

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
    let plan = service.until_stop(pipeline_task, stop_tx, started.task).await;
    let finished = plan.finish().await?;
    tracing::info!(
        events = stats.events_attributed.load(std::sync::atomic::Ordering::Relaxed),
        lost_kernel = finished.loss.kernel,
        lost_channel = finished.loss.channel,
        "Agent stopped."
    );
    Ok(())
}
