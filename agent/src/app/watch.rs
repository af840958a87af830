//! `custos watch` (the live event stream), and the terminal printers that
//! `custos run` shares: both start a sensor and the pipeline; they differ in
//! their sinks.

use crate::attribution::Attributor;
use crate::config::LoadedConfig;
use crate::counters::{CountersConsumer, Delta, Totals};
use crate::pipeline::{EventSink, Pipeline, PipelineStats, Tick};
use crate::sensor::{host_view, Source};
use crate::summary::{event_line, Summary};
use custos_event::{Event, LossCounters};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// A watch channel that becomes true on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub fn stop_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        let _ = tx.send(true);
        // A second signal while draining means "now".
        wait_for_stop_signal().await;
        tracing::warn!("Second stop signal: exiting without draining.");
        std::process::exit(130);
    });
    rx
}

#[cfg(unix)]
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the process still dies by default actions.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(not(unix))]
async fn wait_for_stop_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `custos watch` output.
pub struct WatchPrinter {
    out: std::io::BufWriter<std::io::Stdout>,
    json: bool,
    service: Option<String>,
    broken: bool,
}

impl WatchPrinter {
    pub fn new(json: bool, service: Option<String>) -> Self {
        WatchPrinter {
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            json,
            service,
            broken: false,
        }
    }
}

impl EventSink for WatchPrinter {
    fn on_event(&mut self, e: &Event) {
        // Gap markers concern every service, so a filtered stream shows them too.
        let other_service = e.kind() != custos_event::EventKind::Loss
            && self.service.as_ref().is_some_and(|s| e.service.as_ref() != Some(s));
        if self.broken || other_service {
            return;
        }
        let line = if self.json { e.to_json_line() } else { event_line(e) };
        if writeln!(self.out, "{line}").is_err() {
            // The reader went away (`| head`): stop writing, keep draining.
            self.broken = true;
        }
    }
    fn flush(&mut self) {
        if !self.broken && self.out.flush().is_err() {
            self.broken = true;
        }
    }
}

/// The periodic per-service table on the terminal.
pub struct SummaryPrinter {
    summary: Summary,
    every: Duration,
    last: Option<SystemTime>,
}

impl SummaryPrinter {
    pub fn new(every: Duration, services: &[String]) -> Self {
        let mut summary = Summary::new();
        for s in services {
            summary.ensure(s);
        }
        SummaryPrinter { summary, every, last: None }
    }

    fn print(&mut self, now: SystemTime, loss: LossCounters) {
        let table = self.summary.render_and_reset(now, loss);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{table}");
        let _ = out.flush();
    }
}

/// Fed by the counters fold: adds each delta to the table, prints it every
/// `every` and once more at the end.
impl CountersConsumer for SummaryPrinter {
    fn wants_syscalls(&self) -> bool {
        self.summary.wants_syscalls()
    }
    fn on_delta(&mut self, delta: &Delta) {
        self.summary.add(delta);
    }
    fn on_services(&mut self, configured: &[String], _removed: &[String]) {
        self.summary.set_configured(configured);
    }
    fn on_finish(&mut self, _totals: &Totals, tick: &Tick) {
        self.print(tick.now, tick.loss);
    }
    fn on_tick(&mut self, _totals: &Totals, tick: &Tick) {
        let last = *self.last.get_or_insert(tick.now);
        if tick.now.duration_since(last).unwrap_or_default() >= self.every {
            self.last = Some(tick.now);
            self.print(tick.now, tick.loss);
        }
    }
}

/// Options of `custos watch`.
pub struct WatchOptions {
    pub source: Source,
    pub json: bool,
    pub service: Option<String>,
}

/// Streams events until stopped; prints the loss counters at exit.
pub async fn watch(config: LoadedConfig, opts: WatchOptions) -> anyhow::Result<LossCounters> {
    let started = crate::sensor::start(&opts.source, &config).await?;
    let stats = Arc::new(PipelineStats::default());
    let attributor = Attributor::new(&config, host_view(&opts.source));
    let mut pipeline =
        Pipeline::new(attributor, started.control, stats.clone()).with_tick(Duration::from_millis(250));
    pipeline.add_sink(Box::new(WatchPrinter::new(opts.json, opts.service)));
    let stop = stop_on_signals();
    let pipeline_task = tokio::spawn(pipeline.run(started.rx, stop));
    let loss = pipeline_task.await?.loss;
    if let Some(task) = started.task {
        task.await??;
    }
    let invalid =
        started.replay_stats.map(|s| s.invalid.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0);
    eprintln!(
        "custos watch: {} events, lost: kernel {} channel {} platform {}{}",
        stats.events_attributed.load(std::sync::atomic::Ordering::Relaxed),
        loss.kernel,
        loss.channel,
        loss.platform,
        if invalid > 0 { format!(", {invalid} invalid recording lines skipped") } else { String::new() }
    );
    Ok(loss)
}
