//! Export of metrics and logs: aggregation of events into per-service
//! series, OTLP encoding, gRPC and HTTP transports with retries, the
//! on-disk spool, local OTLP/JSON files, self-telemetry, and the
//! `/metrics` + `/healthz` endpoint.
//!
//! ```text
//! submit(&Event) ─try_send─▶ [events] ─▶ main loop: Aggregator + event logs (rate-limited)
//! log(LogRecord) ─try_send─▶ [logs]   ─▶      │ every `interval`: metrics request, logs request
//!                                             ▼
//!                          files mode: FileSink (OTLP/JSON lines, rotated)
//!                          OTLP mode:  [batches] ─▶ sender ─▶ Transport (gRPC | HTTP)
//!                                                     │ retryable failure, or backlog: Spool (disk)
//!                                                     └ drains the spool oldest first, backoff + jitter
//! ```
//!
//! Built on opentelemetry-proto and tonic rather than the OpenTelemetry
//! SDK: the SDK's exporters own their retries and buffer in memory only;
//! custos must write encoded batches to disk, replay them after a restart
//! oldest first, and count every partial success and permanent failure.

mod aggregate;
mod encode;
mod files;
mod http;
mod logs;
mod record;
mod sink;
mod spool;
pub mod stats;
mod transport;

pub use aggregate::{Aggregator, CONNECT_BOUNDS, CONN_DURATION_BOUNDS, OTHER_SYSCALL};
pub use encode::{to_otlp_json, ServiceIdentity};
pub use files::{FileSink, FileSinkError};
pub use http::Health;
pub use logs::{event_log, RateLimiter};
pub use record::{AttrValue, HostInfo, LogRecord, Severity};
pub use sink::ExportSink;

pub use spool::{Batch, BatchKind, Spool, SpoolError};
pub use stats::{AgentStats, StatsSnapshot};
pub use transport::{Backoff, Outcome, Transport};

use crate::config::{ExporterConfig, LoadedConfig, OtlpConfig, Selector};
use custos_event::Event;
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Log records waiting for export are flushed at this count even before
/// the interval ends, which bounds their memory.
const MAX_LOG_BATCH: usize = 512;
/// Capacity of the queue of `log()` records.
const LOG_QUEUE: usize = 4096;
/// Encoded batches waiting for the sender.
const BATCH_QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exporter configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Files(#[from] FileSinkError),
}

/// Starts exporters.
pub struct Exporter;

/// Timings of the retry loop; the defaults suit production, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { initial_backoff: Duration::from_millis(500), max_backoff: Duration::from_secs(30) }
    }
}

impl Exporter {
    /// Starts the exporter's tasks and the HTTP endpoint on `agent.listen`.
    /// Must be called from within a Tokio runtime.
    pub fn start(
        cfg: &LoadedConfig,
        host: HostInfo,
        stats: Arc<AgentStats>,
    ) -> Result<ExporterHandle, ExportError> {
        Self::start_with(cfg, host, stats, RetryPolicy::default())
    }

    /// [`Exporter::start`] with explicit retry timings.
    pub fn start_with(
        cfg: &LoadedConfig,
        host: HostInfo,
        stats: Arc<AgentStats>,
        retry: RetryPolicy,
    ) -> Result<ExporterHandle, ExportError> {
        let ex = &cfg.raw.exporter;
        let health = Arc::new(Health::default());
        let listen = &cfg.raw.agent.listen.value;
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| ExportError::Config(format!("`agent.listen` is not an address:port: `{listen}`")))?;
        let shared = Arc::new(Shared::default());
        let (settings, settings_rx) = tokio::sync::watch::channel(Arc::new(ex.clone()));

        let (sink, sender_task) = match &ex.otlp {
            Some(otlp) => {
                let transport = Transport::new(otlp)?;
                let spool = Spool::open(&cfg.spool_dir(), ex.spool.max_bytes.0, stats.clone())?;
                if !spool.is_empty() {
                    tracing::info!(
                        batches = spool.len(),
                        bytes = spool.bytes(),
                        dir = %spool.dir().display(),
                        "Spool holds batches from a previous run: sending them first."
                    );
                }
                let (tx, rx) = mpsc::channel(BATCH_QUEUE);
                let sender = Sender::new(transport, spool, stats.clone(), shared.clone(), otlp, retry);
                let task = health.faults.spawn("exporter sender", sender.run(rx, settings_rx.clone()));
                (Sink::Otlp(tx), Some(task))
            }
            None => {
                let sink =
                    FileSink::new(&cfg.files_dir(), ex.files.max_file_bytes.0, *ex.files.max_files as usize)?;
                (Sink::Files(Box::new(sink)), None)
            }
        };

        // Telemetry matters more than the local endpoint: a taken port is
        // reported, not fatal.
        let (http_addr, http_task) =
            match http::serve(addr, stats.clone(), health.clone(), host.agent_version.clone()) {
                Ok((a, t)) => (Some(a), Some(t)),
                Err(e) => {
                    tracing::error!(
                        listen = %listen,
                        error = %e,
                        "Cannot serve /metrics and /healthz (agent.listen); exporting without them."
                    );
                    (None, None)
                }
            };

        let mut identities = BTreeMap::new();
        for s in &cfg.services {
            let id = match &s.selector {
                Selector::SystemdUnit(u) => ServiceIdentity::SystemdUnit(u.clone()),
                Selector::WindowsService(w) => ServiceIdentity::WindowsService(w.clone()),
                Selector::Exe(_) | Selector::Cgroup(_) => ServiceIdentity::None,
            };
            identities.insert(s.name.clone(), id);
        }
        let mut aggregator = Aggregator::new(SystemTime::now(), *ex.syscall_top_n);
        for (name, id) in &identities {
            aggregator.declare(name, id.clone());
        }
        let (events_tx, events_rx) = mpsc::channel(*ex.queue_capacity);
        let (logs_tx, logs_rx) = mpsc::channel(LOG_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let scores = AnomalyScores::default();
        let main = MainLoop {
            scores: scores.clone(),
            aggregator,
            limiter: RateLimiter::new(*ex.log_rate_limit.max, ex.log_rate_limit.per.0),
            identities,
            host,
            stats: stats.clone(),
            pending_logs: Vec::new(),
            sink,
            interval: ex.interval.0,
        };
        health.exporter_running.store(true, Ordering::Relaxed);
        let main_task = health
            .faults
            .spawn("exporter", main.run(events_rx, logs_rx, stop_rx, settings_rx, health.clone()));
        Ok(ExporterHandle {
            health,
            settings,
            scores,
            events: events_tx,
            logs: logs_tx,
            stats,
            shared,
            stop: Some(stop_tx),
            main_task,
            sender_task,
            http_task,
            http_addr,
        })
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Set by `shutdown`: every send must finish (or spool) before it.
    deadline: Mutex<Option<Instant>>,
}

impl Shared {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The latest anomaly score of each (service, metric) series, written by
/// detection every interval and read by the exporter at every flush as the
/// `custos.anomaly.score` gauge. A board rather than a queue: only the latest
/// value matters, and neither side waits on the other for long.
pub type AnomalyScores = Arc<Mutex<BTreeMap<(String, String), f64>>>;

/// Sends log records to the exporter without blocking.
#[derive(Clone)]
pub struct LogSender {
    logs: mpsc::Sender<LogRecord>,
    stats: Arc<AgentStats>,
}

impl LogSender {
    /// Queues a record for the next flush; a full queue drops and counts
    /// (`logs_dropped`).
    pub fn send(&self, record: LogRecord) {
        if self.logs.try_send(record).is_err() {
            AgentStats::add(&self.stats.logs_dropped, 1);
        }
    }
}

/// The running exporter. Dropping it without [`ExporterHandle::shutdown`]
/// stops its tasks at once, as a crash would: what is in memory is lost,
/// what is in the spool stays for the next start.
pub struct ExporterHandle {
    health: Arc<Health>,
    /// The settings a reload changes while the exporter runs.
    settings: tokio::sync::watch::Sender<Arc<ExporterConfig>>,
    scores: AnomalyScores,
    events: mpsc::Sender<Event>,
    logs: mpsc::Sender<LogRecord>,
    stats: Arc<AgentStats>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    main_task: JoinHandle<()>,
    sender_task: Option<JoinHandle<()>>,
    http_task: Option<JoinHandle<()>>,
    http_addr: Option<SocketAddr>,
}

impl ExporterHandle {
    /// Hands an attributed event to the exporter. Never blocks: when the
    /// queue is full the event is dropped and counted
    /// (`events_dropped_exporter`). Counts `events_in`.
    pub fn submit(&self, ev: &Event) {
        self.submit_owned(ev.clone());
    }

    /// [`ExporterHandle::submit`] without the copy.
    pub fn submit_owned(&self, ev: Event) {
        AgentStats::add(&self.stats.events_in, 1);
        if self.events.try_send(ev).is_err() {
            AgentStats::add(&self.stats.events_dropped_exporter, 1);
        }
    }

    /// Exports a log record (anomaly, runbook action) with the next flush.
    /// Never blocks; a full queue drops and counts (`logs_dropped`).
    pub fn log(&self, record: LogRecord) {
        self.log_sender().send(record);
    }

    /// The board detection publishes anomaly scores on.
    pub fn anomaly_scores(&self) -> AnomalyScores {
        self.scores.clone()
    }

    /// A cloneable handle for modules that produce log records (detection,
    /// runbooks, audit) from their own tasks.
    pub fn log_sender(&self) -> LogSender {
        LogSender { logs: self.logs.clone(), stats: self.stats.clone() }
    }

    /// The address `/metrics` and `/healthz` are served on (`None` when
    /// `agent.listen` could not be bound).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn stats(&self) -> &Arc<AgentStats> {
        &self.stats
    }

    /// The agent's internal task faults: the exporter's own, and whatever
    /// else reports into it (`/healthz` shows the first).
    pub fn faults(&self) -> crate::daemon::Faults {
        self.health.faults.clone()
    }

    /// A handle that applies reloaded exporter settings.
    pub fn reconfigurer(&self) -> ExporterReconfigurer {
        ExporterReconfigurer { settings: self.settings.clone() }
    }

    /// Flushes what is held (queued events are aggregated, then metrics
    /// and logs exported) and sends it, or spools what cannot be sent,
    /// within `budget`.
    pub async fn shutdown(mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        *self.shared.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let tdeadline = tokio::time::Instant::from_std(deadline);
        if tokio::time::timeout_at(tdeadline, &mut self.main_task).await.is_err() {
            tracing::warn!(?budget, "Exporter did not flush within its shutdown budget.");
            return;
        }
        if let Some(t) = self.sender_task.as_mut() {
            if tokio::time::timeout_at(tdeadline, t).await.is_err() {
                tracing::warn!(
                    ?budget,
                    "Exporter did not send or spool everything within its shutdown budget."
                );
            }
        }
    }
}

impl Drop for ExporterHandle {
    fn drop(&mut self) {
        self.main_task.abort();
        if let Some(t) = &self.sender_task {
            t.abort();
        }
        if let Some(t) = &self.http_task {
            t.abort();
        }
    }
}

/// Applies a reload's exporter settings to the running exporter: the
/// collector's endpoint, protocol, compression, timeout, headers and TLS
/// (the sender switches transport between two sends; what is queued or
/// spooled goes to the new collector), the spool's budget, the export
/// interval and the event log rate limit. Keys it cannot apply while
/// running are named by [`restart_keys`].
#[derive(Clone)]
pub struct ExporterReconfigurer {
    settings: tokio::sync::watch::Sender<Arc<ExporterConfig>>,
}

impl ExporterReconfigurer {
    pub fn apply(&self, new: &ExporterConfig) {
        self.settings.send_if_modified(|cur| {
            let changed = **cur != *new;
            if changed {
                *cur = Arc::new(new.clone());
            }
            changed
        });
    }
}

/// The exporter keys whose change between `old` and `new` takes effect only
/// when the agent restarts, by name.
pub fn restart_keys(old: &ExporterConfig, new: &ExporterConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.otlp.is_some() != new.otlp.is_some() {
        keys.push("exporter.otlp (switching between a collector and local files)");
    }
    if old.spool.dir != new.spool.dir {
        keys.push("exporter.spool.dir");
    }
    if old.files != new.files {
        keys.push("exporter.files");
    }
    if old.queue_capacity != new.queue_capacity {
        keys.push("exporter.queue_capacity");
    }
    if old.syscall_top_n != new.syscall_top_n {
        keys.push("exporter.syscall_top_n");
    }
    keys
}

enum Sink {
    Otlp(mpsc::Sender<Batch>),
    Files(Box<FileSink>),
}

struct MainLoop {
    scores: AnomalyScores,
    aggregator: Aggregator,
    limiter: RateLimiter,
    identities: BTreeMap<String, ServiceIdentity>,
    host: HostInfo,
    stats: Arc<AgentStats>,
    pending_logs: Vec<LogRecord>,
    sink: Sink,
    interval: Duration,
}

impl MainLoop {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut logs: mpsc::Receiver<LogRecord>,
        mut stop: oneshot::Receiver<()>,
        mut settings: tokio::sync::watch::Receiver<Arc<ExporterConfig>>,
        health: Arc<Health>,
    ) {
        let ticker_for = |every: Duration| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut ticker = ticker_for(self.interval);
        settings.borrow_and_update();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(&ev).await,
                    None => break,
                },
                Some(rec) = logs.recv() => self.push_log(rec).await,
                _ = ticker.tick() => self.flush().await,
                Ok(()) = settings.changed() => {
                    let new = settings.borrow_and_update().clone();
                    self.limiter.set_limits(*new.log_rate_limit.max, new.log_rate_limit.per.0);
                    if new.interval.0 != self.interval {
                        self.interval = new.interval.0;
                        ticker = ticker_for(self.interval);
                        tracing::info!(interval = ?self.interval, "Export interval changed.");
                    }
                }
                _ = &mut stop => break,
            }
        }
        // Shutdown: whatever was queued before the stop is still exported.
        while let Ok(ev) = events.try_recv() {
            self.on_event(&ev).await;
        }
        while let Ok(rec) = logs.try_recv() {
            self.push_log(rec).await;
        }
        self.flush_at(Instant::now() + self.limiter.window()).await;
        health.exporter_running.store(false, Ordering::Relaxed);
        // Dropping the sink closes the sender's queue: it finishes and stops.
    }

    async fn on_event(&mut self, ev: &Event) {
        self.aggregator.observe(ev);
        if let Some(rec) = event_log(ev) {
            let service = rec.service.clone().unwrap_or_default();
            let mut summaries = Vec::new();
            let admitted = self.limiter.admit(&service, Instant::now(), &mut summaries);
            for s in summaries {
                self.push_log(s).await;
            }
            if admitted {
                self.push_log(rec).await;
            } else {
                AgentStats::add(&self.stats.logs_suppressed, 1);
                self.aggregator.count_suppressed(&service, 1);
            }
        }
    }

    async fn push_log(&mut self, rec: LogRecord) {
        self.pending_logs.push(rec);
        if self.pending_logs.len() >= MAX_LOG_BATCH {
            self.flush_logs().await;
        }
    }

    async fn flush(&mut self) {
        self.flush_at(Instant::now()).await;
    }

    /// Flushes as if the clock read `limits_now` for the rate limiter
    /// (shutdown passes a time past every window so that suppressed
    /// counts are reported before exit).
    async fn flush_at(&mut self, limits_now: Instant) {
        let mut summaries = Vec::new();
        self.limiter.expire(limits_now, &mut summaries);
        self.pending_logs.extend(summaries);
        let now = SystemTime::now();
        let snap = self.stats.snapshot();
        {
            let board = self.scores.lock().unwrap_or_else(|p| p.into_inner());
            for ((service, metric), score) in board.iter() {
                self.aggregator.set_anomaly_score(service, metric, *score);
            }
        }
        let req = self.aggregator.collect(&self.host, now, Some(&snap));
        let records = encode::metric_points(&req);
        match &mut self.sink {
            Sink::Otlp(_) => {
                let payload = req.encode_to_vec();
                self.emit(Batch { kind: BatchKind::Metrics, records, payload }, None).await;
            }
            Sink::Files(_) => {
                let line = to_otlp_json(&req);
                self.emit(Batch { kind: BatchKind::Metrics, records, payload: Vec::new() }, Some(line)).await;
            }
        }
        self.flush_logs().await;
    }

    async fn flush_logs(&mut self) {
        if self.pending_logs.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.pending_logs);
        let req = logs::logs_request(records, &self.host, &self.identities, SystemTime::now());
        let n = encode::log_records(&req);
        match &self.sink {
            Sink::Otlp(_) => {
                let payload = req.encode_to_vec();
                self.emit(Batch { kind: BatchKind::Logs, records: n, payload }, None).await;
            }
            Sink::Files(_) => {
                let line = to_otlp_json(&req);
                self.emit(Batch { kind: BatchKind::Logs, records: n, payload: Vec::new() }, Some(line)).await;
            }
        }
    }

    async fn emit(&mut self, batch: Batch, json: Option<Result<String, serde_json::Error>>) {
        match &mut self.sink {
            Sink::Otlp(tx) => {
                // The sender spools instead of sending while the collector
                // is away, so this wait is short.
                if tx.send(batch).await.is_err() {
                    tracing::error!("Exporter's sender stopped: a batch was lost.");
                    AgentStats::add(&self.stats.export_failures, 1);
                }
            }
            Sink::Files(sink) => {
                let line = match json {
                    Some(Ok(l)) => l,
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "Could not encode a batch as OTLP/JSON.");
                        AgentStats::add(&self.stats.export_failures, 1);
                        return;
                    }
                    None => return,
                };
                match sink.write_logged(batch.kind, &line) {
                    Ok(()) => {
                        AgentStats::add(&self.stats.batches_exported, 1);
                        AgentStats::add(&self.stats.records_exported, batch.records);
                    }
                    Err(_) => AgentStats::add(&self.stats.export_failures, 1),
                }
            }
        }
    }
}

/// The I/O error kind behind a spool error, for reporting once per kind.
fn io_kind(e: &SpoolError) -> Option<std::io::ErrorKind> {
    match e {
        SpoolError::Dir { source, .. }
        | SpoolError::Write { source, .. }
        | SpoolError::Read { source, .. } => Some(source.kind()),
        SpoolError::Corrupt { .. } => None,
    }
}

/// Sends batches, spools them while the collector is away, and drains the
/// spool oldest first when it returns.
struct Sender {
    transport: Transport,
    /// The settings `transport` was made from.
    otlp: Option<OtlpConfig>,
    spool: Arc<Mutex<Spool>>,
    stats: Arc<AgentStats>,
    shared: Arc<Shared>,
    timeout: Duration,
    backoff: Backoff,
    reported: HashSet<String>,
}

impl Sender {
    fn new(
        transport: Transport,
        spool: Spool,
        stats: Arc<AgentStats>,
        shared: Arc<Shared>,
        cfg: &OtlpConfig,
        retry: RetryPolicy,
    ) -> Self {
        Sender {
            transport,
            otlp: Some(cfg.clone()),
            spool: Arc::new(Mutex::new(spool)),
            stats,
            shared,
            timeout: cfg.timeout.0,
            backoff: Backoff::new(retry.initial_backoff, retry.max_backoff),
            reported: HashSet::new(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        mut settings: tokio::sync::watch::Receiver<Arc<ExporterConfig>>,
    ) {
        // `Some(t)`: the spool has batches (or the collector failed) and
        // the next attempt from the spool is due at `t`. `None`: healthy,
        // batches go straight out.
        let mut next_try = if self.spool_len().await > 0 { Some(tokio::time::Instant::now()) } else { None };
        settings.borrow_and_update();
        loop {
            let due = next_try.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                Ok(()) = settings.changed() => {
                    let new = settings.borrow_and_update().clone();
                    if self.reconfigure(&new) && next_try.is_some() {
                        // A new collector: try it now rather than at the
                        // old one's backoff.
                        next_try = Some(tokio::time::Instant::now());
                    }
                }
                m = rx.recv() => match m {
                    Some(batch) => {
                        if next_try.is_some() {
                            self.spool_push(batch).await;
                            continue;
                        }
                        match self.attempt(&batch).await {
                            Outcome::Ok { rejected, message } => self.accepted(&batch, rejected, &message),
                            Outcome::Retryable { after, reason } => {
                                self.spool_push(batch).await;
                                next_try = Some(self.retry_later(after, &reason));
                            }
                            Outcome::Permanent { kind, reason } => self.permanent(&batch, &kind, &reason),
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(due), if next_try.is_some() => {
                    next_try = self.drain_one().await;
                }
            }
        }
        // Shutdown: keep draining the spool while the collector answers
        // and the budget lasts (attempts refuse to start too close to the
        // deadline). A collector that is failing (we are backing off) is
        // not waited for: the spool keeps the rest for the next start.
        while let (Some(t), Some(_)) = (next_try, self.shared.deadline()) {
            if t > tokio::time::Instant::now() {
                break;
            }
            next_try = self.drain_one().await;
        }
    }

    /// Applies reloaded settings between two sends; true when the
    /// collector (transport) changed. Nothing queued or spooled is touched:
    /// it goes to the new collector.
    fn reconfigure(&mut self, new: &ExporterConfig) -> bool {
        self.spool.lock().unwrap_or_else(|p| p.into_inner()).set_max_bytes(new.spool.max_bytes.0);
        let Some(otlp) = &new.otlp else { return false };
        if self.otlp.as_ref() == Some(otlp) {
            return false;
        }
        match Transport::new(otlp) {
            Ok(t) => {
                self.transport = t;
                self.timeout = otlp.timeout.0;
                self.otlp = Some(otlp.clone());
                self.backoff.reset();
                self.reported.clear();
                tracing::info!(endpoint = %otlp.endpoint.value, protocol = ?otlp.protocol, "Exporting to the reloaded collector settings; queued and spooled telemetry follows.");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "Kept the previous collector settings: the reloaded ones cannot be used.");
                false
            }
        }
    }

    /// Sends the oldest spooled batch; returns when to try next.
    async fn drain_one(&mut self) -> Option<tokio::time::Instant> {
        let spool = self.spool.clone();
        let oldest =
            tokio::task::spawn_blocking(move || spool.lock().unwrap_or_else(|p| p.into_inner()).oldest())
                .await
                .ok()
                .flatten();
        let now = tokio::time::Instant::now();
        let (seq, batch) = match oldest {
            None => {
                self.backoff.reset();
                return None;
            }
            Some(Err(e)) if e.is_transient() => {
                // Kept in the spool: read again after a pause, never lost.
                let wait = self.backoff.next(None);
                if self.reported.insert(format!("spool-read:{:?}", io_kind(&e))) {
                    tracing::error!(error = %e, ?wait, "Cannot read the spool now; its batches are kept and read again (reported once per kind of error).");
                }
                return Some(now + wait);
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "Skipped a spool file; sending the rest.");
                return Some(now);
            }
            Some(Ok(x)) => x,
        };
        match self.attempt(&batch).await {
            Outcome::Ok { rejected, message } => {
                self.accepted(&batch, rejected, &message);
                self.spool_remove(seq).await;
                self.backoff.reset();
                Some(now)
            }
            Outcome::Retryable { after, reason } => Some(self.retry_later(after, &reason)),
            Outcome::Permanent { kind, reason } => {
                self.permanent(&batch, &kind, &reason);
                self.spool_remove(seq).await;
                Some(now)
            }
        }
    }

    async fn attempt(&mut self, batch: &Batch) -> Outcome {
        let mut timeout = self.timeout;
        if let Some(d) = self.shared.deadline() {
            // Shutting down: leave time to spool if the send fails.
            let left = d.saturating_duration_since(Instant::now()) / 2;
            if left < Duration::from_millis(50) {
                return Outcome::Retryable { after: None, reason: "shutting down".into() };
            }
            timeout = timeout.min(left);
        }
        self.transport.send(batch, timeout).await
    }

    fn retry_later(&mut self, after: Option<Duration>, reason: &str) -> tokio::time::Instant {
        AgentStats::add(&self.stats.export_retries, 1);
        let wait = self.backoff.next(after);
        if self.reported.insert(format!("retry:{reason}")) {
            tracing::warn!(reason, ?wait, "Collector unavailable: spooling telemetry and retrying.");
        } else {
            tracing::debug!(reason, ?wait, "Export failed; will retry.");
        }
        if self.reported.len() > 256 {
            self.reported.clear();
        }
        tokio::time::Instant::now() + wait
    }

    fn accepted(&mut self, batch: &Batch, rejected: u64, message: &str) {
        AgentStats::add(&self.stats.batches_exported, 1);
        AgentStats::add(&self.stats.records_exported, batch.records.saturating_sub(rejected));
        if rejected > 0 || !message.is_empty() {
            AgentStats::add(&self.stats.records_rejected, rejected);
            if self.reported.insert(format!("partial:{message}")) {
                tracing::warn!(
                    rejected,
                    message,
                    kind = batch.kind.as_str(),
                    "Collector accepted a batch in part."
                );
            }
        }
    }

    fn permanent(&mut self, batch: &Batch, kind: &str, reason: &str) {
        AgentStats::add(&self.stats.export_failures, 1);
        if self.reported.insert(format!("permanent:{kind}")) {
            tracing::error!(
                kind,
                reason,
                batch = batch.kind.as_str(),
                "Collector rejected a batch for good: dropped it (reported once per kind)."
            );
        }
    }

    async fn spool_len(&self) -> usize {
        self.spool.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn spool_push(&mut self, batch: Batch) {
        let spool = self.spool.clone();
        let res =
            tokio::task::spawn_blocking(move || spool.lock().unwrap_or_else(|p| p.into_inner()).push(&batch))
                .await;
        match res {
            Ok(Ok(_)) => {
                self.reported.retain(|k| !k.starts_with("spool-write:"));
            }
            Ok(Err(e)) => {
                if self.reported.insert(format!("spool-write:{:?}", io_kind(&e))) {
                    tracing::error!(error = %e, "Could not spool a batch: it is lost (reported once per kind of error until the spool is writable again; counted in export_failures).");
                }
                AgentStats::add(&self.stats.export_failures, 1);
            }
            Err(e) => tracing::error!(error = %e, "Spool task failed."),
        }
    }

    async fn spool_remove(&self, seq: u64) {
        let spool = self.spool.clone();
        let _ =
            tokio::task::spawn_blocking(move || spool.lock().unwrap_or_else(|p| p.into_inner()).remove(seq))
                .await;
    }
}
