//! Anomaly detection in the running agent: reads each service's totals from
//! the counters fold ([`crate::counters`]), turns them into the per-service
//! series once per interval (`custos_detect::derive`), feeds those to the
//! detector bank and to the runbook engine's metric triggers, and hands what
//! the detectors find to the exporter (log records) and to the runbook
//! engine (signals). The detector itself (`custos_detect`) does no I/O;
//! this is where its state is snapshotted to and restored from the state
//! dir.

use crate::counters::{CountersConsumer, Totals};
use crate::daemon::status::SeriesLearning;
use crate::export::{AgentStats, AnomalyScores, AttrValue, LogRecord, LogSender, Severity as LogSeverity};
use crate::pipeline::Tick;
use custos_detect::{Anomaly, DetectorBank, Forecast, ServiceCounters};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// How often each service's series get a point: the detector's warm-up
/// and seasonal profiles are sized for 10 s points.
pub const DETECTION_INTERVAL: Duration = Duration::from_secs(10);

/// How often the detector state is written to the state dir (and at stop).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(300);

/// File name of the detector snapshot in the state dir.
pub const SNAPSHOT_FILE: &str = "detector.snapshot";

/// What detection hands to the runbook engine. Forecasts are not among
/// them: no trigger takes them, so they go to the exporter (log records) only.
#[derive(Debug, Clone)]
pub enum Finding {
    Anomaly(Anomaly),
    /// The value of one per-service series over the last interval (metric
    /// triggers of runbooks).
    Metric {
        service: String,
        metric: &'static str,
        value: f64,
        ts: SystemTime,
    },
}

/// Runs the detectors on what the counters fold counted.
pub struct Detection {
    /// `None` when detection is off but runbooks still want the series.
    bank: Option<DetectorBank>,
    /// Counters at the previous point, to derive the interval's values.
    previous: HashMap<String, (SystemTime, ServiceCounters)>,
    last_point: Option<SystemTime>,
    last_snapshot: Option<SystemTime>,
    snapshot_path: PathBuf,
    logs: Option<LogSender>,
    findings: Option<mpsc::Sender<Finding>>,
    scores: Option<AnomalyScores>,
    stats: Option<std::sync::Arc<AgentStats>>,
    learning: Option<LearningBoard>,
    /// Findings dropped because the runbook engine's queue was full.
    pub findings_dropped: u64,
    /// Whole anomalies found since start (for status and self-telemetry).
    pub anomalies: u64,
}

impl Detection {
    /// A sink over `bank`, restoring its state from `state_dir` when a
    /// snapshot is there. A snapshot that cannot be read is set aside
    /// (renamed `.corrupt`) with a warning: learning restarts, the agent runs.
    pub fn new(
        bank: Option<DetectorBank>,
        state_dir: &std::path::Path,
        logs: Option<LogSender>,
        findings: Option<mpsc::Sender<Finding>>,
    ) -> Self {
        let snapshot_path = state_dir.join(SNAPSHOT_FILE);
        let mut bank = bank;
        if let Some(bank) = bank.as_mut() {
            restore(bank, &snapshot_path);
        }
        Detection {
            bank,
            previous: HashMap::new(),
            last_point: None,
            last_snapshot: None,
            snapshot_path,
            logs,
            findings,
            scores: None,
            stats: None,
            learning: None,
            findings_dropped: 0,
            anomalies: 0,
        }
    }

    /// Publishes every series' score on `board` after each interval (the
    /// exporter's `custos.anomaly.score` gauge) and counts anomalies in
    /// `stats`.
    pub fn with_exporter(mut self, board: AnomalyScores, stats: std::sync::Arc<AgentStats>) -> Self {
        self.scores = Some(board);
        self.stats = Some(stats);
        self
    }

    /// Publishes every series' learning state on `board` after each
    /// interval, for `custos status` ([`LearningBoard`] is its provider).
    pub fn with_status(mut self, board: LearningBoard) -> Self {
        self.learning = Some(board);
        self
    }

    /// The detector bank, when detection is on.
    pub fn bank(&self) -> Option<&DetectorBank> {
        self.bank.as_ref()
    }

    fn observe_all(&mut self, totals: &Totals, now: SystemTime) {
        for (service, counts) in &totals.services {
            let c = counts.detector();
            let Some((t0, c0)) = self.previous.insert(service.clone(), (now, c)) else { continue };
            let secs = now.duration_since(t0).unwrap_or_default().as_secs_f64();
            for (metric, value) in custos_detect::derive(&c0, &c, secs) {
                if let Some(bank) = self.bank.as_mut() {
                    let signal = bank.observe_signals(service, metric, now, value);
                    if let Some(a) = signal.anomaly {
                        self.anomalies += 1;
                        if let Some(stats) = &self.stats {
                            AgentStats::add(&stats.anomalies, 1);
                        }
                        self.report_anomaly(&a);
                        self.send(Finding::Anomaly(a));
                    }
                    if let Some(f) = signal.forecast {
                        self.report_forecast(&f);
                    }
                }
                self.send(Finding::Metric { service: service.clone(), metric, value, ts: now });
            }
        }
        if let (Some(board), Some(bank)) = (&self.scores, &self.bank) {
            let mut board = board.lock().unwrap_or_else(|p| p.into_inner());
            board.clear();
            for (service, metric, score) in bank.scores() {
                board.insert((service.to_string(), metric.to_string()), score);
            }
        }
        if let (Some(board), Some(bank)) = (&self.learning, &self.bank) {
            let states = bank
                .series_states()
                .into_iter()
                .map(|s| SeriesLearning {
                    service: s.service.to_string(),
                    metric: s.metric.to_string(),
                    points: s.points,
                    alarm_warmup: s.alarm_warmup,
                    score: s.score,
                })
                .collect();
            *board.0.lock().unwrap_or_else(|p| p.into_inner()) = states;
        }
    }

    fn send(&mut self, finding: Finding) {
        if let Some(tx) = &self.findings {
            if tx.try_send(finding).is_err() {
                self.findings_dropped += 1;
                if let Some(stats) = &self.stats {
                    AgentStats::add(&stats.findings_dropped, 1);
                }
            }
        }
    }

    fn report_anomaly(&self, a: &Anomaly) {
        tracing::warn!(service = %a.service, metric = %a.metric, value = a.value, expected_low = a.expected_low, expected_high = a.expected_high, score = a.score, severity = a.severity.as_str(), "Anomaly detected.");
        if let Some(logs) = &self.logs {
            let mut r = LogRecord::new(
                "custos.anomaly",
                match a.severity {
                    custos_detect::Severity::Low | custos_detect::Severity::Medium => LogSeverity::Warn,
                    custos_detect::Severity::High | custos_detect::Severity::Critical => LogSeverity::Error,
                },
                Some(a.service.clone()),
                format!(
                    "{} of {} is {:.4}, outside the expected {:.4}..{:.4}",
                    a.metric, a.service, a.value, a.expected_low, a.expected_high
                ),
            );
            r.time = a.ts;
            r.attributes = vec![
                ("custos.anomaly.metric".into(), AttrValue::Str(a.metric.clone())),
                ("custos.anomaly.value".into(), AttrValue::Float(a.value)),
                ("custos.anomaly.expected_low".into(), AttrValue::Float(a.expected_low)),
                ("custos.anomaly.expected_high".into(), AttrValue::Float(a.expected_high)),
                ("custos.anomaly.score".into(), AttrValue::Float(a.score)),
                ("custos.anomaly.severity".into(), AttrValue::Str(a.severity.as_str().into())),
            ];
            logs.send(r);
        }
    }

    fn report_forecast(&self, f: &Forecast) {
        tracing::warn!(service = %f.service, metric = %f.metric, threshold = f.threshold, eta_secs = f.eta_secs, "Forecast: a threshold will be crossed soon.");
        if let Some(logs) = &self.logs {
            let mut r = LogRecord::new(
                "custos.forecast",
                LogSeverity::Warn,
                Some(f.service.clone()),
                format!(
                    "{} of {} is forecast to cross {} in {:.0}s",
                    f.metric, f.service, f.threshold, f.eta_secs
                ),
            );
            r.time = f.ts;
            r.attributes = vec![
                ("custos.forecast.metric".into(), AttrValue::Str(f.metric.clone())),
                ("custos.forecast.threshold".into(), AttrValue::Float(f.threshold)),
                ("custos.forecast.eta_seconds".into(), AttrValue::Float(f.eta_secs)),
            ];
            logs.send(r);
        }
    }

    /// Writes the snapshot atomically (temporary file, fsync, rename) on a
    /// blocking thread so the pipeline does not wait for the disk.
    fn snapshot(&self, wait: bool) {
        let Some(bank) = &self.bank else { return };
        let bytes = bank.snapshot();
        let path = self.snapshot_path.clone();
        let write = move || {
            if let Err(e) = crate::fsutil::write_atomic(&path, &[&bytes], None) {
                tracing::warn!(path = %path.display(), error = %e, "Could not save the detector state.");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !wait => {
                rt.spawn_blocking(write);
            }
            _ => write(),
        }
    }
}

/// Every series' learning state, written by the detection sink after each
/// interval and read by `custos status`.
#[derive(Debug, Clone, Default)]
pub struct LearningBoard(std::sync::Arc<std::sync::Mutex<Vec<SeriesLearning>>>);

impl crate::daemon::StatusProvider for LearningBoard {
    fn fill(&self, s: &mut crate::daemon::StatusSnapshot) {
        s.detection = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    }
}

/// Restores `bank` from the snapshot at `path` when there is one. A snapshot
/// that cannot be read is set aside (renamed `.corrupt`) with a warning:
/// learning restarts, the agent runs.
fn restore(bank: &mut DetectorBank, path: &std::path::Path) {
    match std::fs::read(path) {
        Ok(bytes) => match bank.restore(&bytes) {
            Ok(()) => {
                tracing::info!(path = %path.display(), series = bank.len(), "Restored the detector state.")
            }
            Err(e) => {
                let aside = path.with_extension("snapshot.corrupt");
                let _ = std::fs::rename(path, &aside);
                tracing::warn!(path = %path.display(), error = %e, moved_to = %aside.display(), "Could not restore the detector state; learning starts over.");
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Could not read the detector state; learning starts over.")
        }
    }
}

impl CountersConsumer for Detection {
    fn on_services(&mut self, _configured: &[String], removed: &[String]) {
        for service in removed {
            self.previous.remove(service);
            let freed = self.bank.as_mut().map(|b| b.remove_service(service)).unwrap_or(0);
            tracing::info!(service = %service, series = freed, "Freed the detector state of a removed service.");
        }
    }

    fn on_tick(&mut self, totals: &Totals, tick: &Tick) {
        let due = self
            .last_point
            .is_none_or(|last| tick.now.duration_since(last).unwrap_or_default() >= DETECTION_INTERVAL);
        if due {
            self.last_point = Some(tick.now);
            self.observe_all(totals, tick.now);
        }
        let last_snapshot = *self.last_snapshot.get_or_insert(tick.now);
        if tick.now.duration_since(last_snapshot).unwrap_or_default() >= SNAPSHOT_EVERY {
            self.last_snapshot = Some(tick.now);
            self.snapshot(false);
        }
    }

    fn on_finish(&mut self, _totals: &Totals, _tick: &Tick) {
        self.snapshot(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sensitivity;
    use crate::counters::CountersSink;
    use crate::pipeline::EventSink;
    use custos_event::{Event, EventBody};
    use custos_event::{LossCounters, ProcessExit};
    use std::time::UNIX_EPOCH;

    fn crash(service: &str, t: SystemTime) -> Event {
        let mut e =
            Event::new(t, EventBody::ProcessExit(ProcessExit { exit_code: Some(1), ..Default::default() }));
        e.service = Some(service.into());
        e
    }

    /// The fold over detection with a detector bank of `sensitivity`.
    fn detecting(
        sensitivity: Sensitivity,
        state_dir: &std::path::Path,
        findings: Option<mpsc::Sender<Finding>>,
    ) -> CountersSink<Detection> {
        CountersSink::new(Detection::new(Some(DetectorBank::new(sensitivity)), state_dir, None, findings))
    }

    #[test]
    fn snapshot_survives_a_restart_and_a_corrupt_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = detecting(Sensitivity::Medium, dir.path(), None);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..50u64 {
            let now = t0 + DETECTION_INTERVAL * i as u32;
            sink.on_event(&crash("api", now));
            sink.on_tick(&Tick { now, loss: LossCounters::default() });
        }
        let learned = sink.consumer().bank().unwrap().len();
        assert!(learned > 0, "series were created");
        sink.on_finish(&Tick { now: t0, loss: LossCounters::default() });
        let restored = Detection::new(Some(DetectorBank::new(Sensitivity::Medium)), dir.path(), None, None);
        assert_eq!(restored.bank().unwrap().len(), learned);
        assert_eq!(
            restored.bank().unwrap().snapshot(),
            sink.consumer().bank().unwrap().snapshot(),
            "same state after restore"
        );

        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"garbage").unwrap();
        let fresh = Detection::new(Some(DetectorBank::new(Sensitivity::Medium)), dir.path(), None, None);
        assert_eq!(fresh.bank().unwrap().len(), 0);
        assert!(dir.path().join("detector.snapshot.corrupt").exists());
    }

    #[test]
    fn status_shows_each_series_learning_state() {
        use crate::daemon::{StatusProvider, StatusSnapshot};
        let dir = tempfile::tempdir().unwrap();
        let board = LearningBoard::default();
        let mut sink = CountersSink::new(
            Detection::new(Some(DetectorBank::new(Sensitivity::Medium)), dir.path(), None, None)
                .with_status(board.clone()),
        );
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..30u64 {
            let now = t0 + DETECTION_INTERVAL * i as u32;
            sink.on_event(&crash("api", now));
            sink.on_tick(&Tick { now, loss: LossCounters::default() });
        }
        let mut s = StatusSnapshot::default();
        board.fill(&mut s);
        let crashes = s
            .detection
            .iter()
            .find(|d| d.service == "api" && d.metric == "custos.process.crashes")
            .unwrap_or_else(|| panic!("{:?}", s.detection));
        // 30 ticks, the first sets the counters' baseline: 29 points.
        assert_eq!((crashes.points, crashes.alarm_warmup), (29, 720));
        assert!(s.render_text().contains("warming up, 29/720 points"), "{}", s.render_text());
    }

    #[test]
    fn a_reload_that_removes_a_service_frees_its_series() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink =
            detecting(Sensitivity::Medium, dir.path(), None).with_configured(&["api".into(), "db".into()]);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..5u64 {
            let now = t0 + DETECTION_INTERVAL * i as u32;
            for s in ["api", "db", "discovered"] {
                sink.on_event(&crash(s, now));
            }
            sink.on_tick(&Tick { now, loss: LossCounters::default() });
        }
        let of = |sink: &CountersSink<Detection>, svc: &str| {
            sink.consumer().bank().unwrap().scores().filter(|(s, _, _)| *s == svc).count()
        };
        assert!(of(&sink, "db") > 0 && of(&sink, "api") > 0 && of(&sink, "discovered") > 0);
        sink.on_services(&["api".into()]);
        assert_eq!(of(&sink, "db"), 0, "the removed service's series are freed");
        assert!(of(&sink, "api") > 0, "the kept one's stay");
        assert!(of(&sink, "discovered") > 0, "services that were never configured are not touched");
    }

    #[test]
    fn without_detection_the_series_still_feed_metric_triggers() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let mut sink = CountersSink::new(Detection::new(None, dir.path(), None, Some(tx)));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        sink.on_tick(&Tick { now: t0, loss: LossCounters::default() });
        for _ in 0..5 {
            sink.on_event(&crash("api", t0));
        }
        let t1 = t0 + DETECTION_INTERVAL;
        sink.on_tick(&Tick { now: t1, loss: LossCounters::default() });
        let t2 = t1 + DETECTION_INTERVAL;
        for _ in 0..20 {
            sink.on_event(&crash("api", t1));
        }
        sink.on_tick(&Tick { now: t2, loss: LossCounters::default() });
        let mut crashes = Vec::new();
        while let Ok(f) = rx.try_recv() {
            if let Finding::Metric { metric: "custos.process.crashes", value, service, .. } = f {
                assert_eq!(service, "api");
                crashes.push(value);
            }
        }
        assert_eq!(crashes, vec![2.0], "20 crashes in 10 s, after the first point set the baseline");
        sink.on_finish(&Tick { now: t2, loss: LossCounters::default() });
        assert!(!dir.path().join(SNAPSHOT_FILE).exists(), "no detector, no snapshot");
    }

    #[test]
    fn a_crash_burst_becomes_a_finding_for_the_runbooks() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(100_000);
        let mut sink = detecting(Sensitivity::High, dir.path(), Some(tx));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // A quiet week-long-enough history with an occasional exit, then a
        // burst of crashes in one interval.
        for i in 0..1500u64 {
            let now = t0 + DETECTION_INTERVAL * i as u32;
            if i % 97 == 0 {
                sink.on_event(&crash("api", now));
            }
            if i == 1400 {
                for _ in 0..200 {
                    sink.on_event(&crash("api", now));
                }
            }
            sink.on_tick(&Tick { now, loss: LossCounters::default() });
        }
        let mut found = Vec::new();
        while let Ok(f) = rx.try_recv() {
            found.push(f);
        }
        let crash_rates = found
            .iter()
            .filter(|f| matches!(f, Finding::Metric { metric: "custos.process.crashes", .. }))
            .count();
        assert!(crash_rates > 0, "the series values reach the runbooks too");
        let crash_anomaly = |f: &Finding| {
            matches!(f, Finding::Anomaly(a) if a.service == "api"
                && (a.metric.contains("crash") || a.metric.contains("exits")))
        };
        assert!(found.iter().any(crash_anomaly), "{found:?}");
        assert!(sink.consumer().anomalies >= 1);
    }
}
