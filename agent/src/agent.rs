//! `custos run`: the agent. Starts the sensor and the pipeline with every
//! consumer, and stops them in order.

use crate::attribution::Attributor;
use crate::config::LoadedConfig;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::run::{host_view, start_sensor, stop_on_signals, Source, SummaryPrinter};
use std::sync::Arc;
use std::time::Duration;

/// Options of `custos run` beyond the configuration.
pub struct RunOptions {
    pub source: Source,
    /// Print the per-service table this often (None: never).
    pub summary: Option<Duration>,
}

/// Runs the agent until SIGTERM/SIGINT, or until a recording is exhausted.
pub async fn run(config: LoadedConfig, opts: RunOptions) -> anyhow::Result<()> {
    let started = start_sensor(&opts.source, &config).await?;
    let stats = Arc::new(PipelineStats::default());
    let attributor = Attributor::new(&config, host_view(&opts.source));
    let mut pipeline = Pipeline::new(attributor, started.control, stats.clone());
    if let Some(every) = opts.summary {
        let services = pipeline.configured_services();
        pipeline.add_sink(Box::new(SummaryPrinter::new(every, &services)));
    }
    tracing::info!(
        services = config.services.len(),
        everything = config.manages_everything(),
        "Agent started."
    );
    let stop = stop_on_signals();
    let finished = tokio::spawn(pipeline.run(started.rx, stop)).await?;
    match started.task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        events = stats.events_attributed.load(std::sync::atomic::Ordering::Relaxed),
        lost_kernel = finished.loss.kernel,
        lost_channel = finished.loss.channel,
        "Agent stopped."
    );
    Ok(())
}
