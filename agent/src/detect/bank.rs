//! The agent's side of detection: one detector per (service, metric), the
//! default series derived from a service's counters, forecasts toward
//! thresholds, and snapshots so a restart keeps what was learned. No I/O:
//! the caller stores the snapshot bytes.

use super::series::{Params, SeriesDetector};
use crate::anomaly::{Anomaly, Forecast};
use crate::config::{DetectionConfig, Sensitivity};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// A series watched by default on every managed service, and how its value
/// per interval is derived from cumulative counters (see [`derive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesSpec {
    pub metric: &'static str,
    pub unit: &'static str,
    pub derivation: &'static str,
}

/// Exit rate, crash rate, connect error ratio, connect latency, accept rate,
/// syscall error ratio, syscall latency, bytes rate.
pub const DEFAULT_SERIES: &[SeriesSpec] = &[
    SeriesSpec { metric: "custos.process.exits", unit: "1/s", derivation: "Δexits / Δt" },
    SeriesSpec {
        metric: "custos.process.crashes",
        unit: "1/s",
        derivation: "Δ(exits with nonzero code, fatal signal or OOM kill) / Δt",
    },
    SeriesSpec {
        metric: "custos.tcp.connect.error_ratio",
        unit: "1",
        derivation: "Δconnect errors / Δconnects (0 when no connects)",
    },
    SeriesSpec {
        metric: "custos.tcp.connect.duration",
        unit: "s",
        derivation: "Δ(sum of connect latencies) / Δconnects (no point when no connects)",
    },
    SeriesSpec { metric: "custos.tcp.accepts", unit: "1/s", derivation: "Δaccepts / Δt" },
    SeriesSpec {
        metric: "custos.syscall.error_ratio",
        unit: "1",
        derivation: "Δsyscall errors / Δsyscalls (0 when no syscalls)",
    },
    SeriesSpec {
        metric: "custos.syscall.duration",
        unit: "s",
        derivation: "Δ(sum of syscall latencies) / Δsyscalls (no point when no syscalls)",
    },
    SeriesSpec { metric: "custos.tcp.bytes", unit: "By/s", derivation: "Δ(bytes sent + received) / Δt" },
];

/// True for a metric name of [`DEFAULT_SERIES`].
pub fn is_known_metric(name: &str) -> bool {
    DEFAULT_SERIES.iter().any(|s| s.metric == name)
}

/// A service's cumulative counters at one instant, as the aggregator keeps
/// them (monotonic; a decrease is taken as a restart of the counter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceCounters {
    pub exits: u64,
    pub crashes: u64,
    pub connects: u64,
    pub connect_errors: u64,
    /// Sum of connect latencies, in seconds.
    pub connect_seconds: f64,
    pub accepts: u64,
    pub syscalls: u64,
    pub syscall_errors: u64,
    /// Sum of syscall latencies, in seconds.
    pub syscall_seconds: f64,
    pub bytes: u64,
}

/// The value of each default series over the interval between two counter
/// readings `secs` apart. A metric without a meaningful value for the
/// interval (a mean latency over zero connects) is left out: that is a gap,
/// not a zero.
pub fn derive(prev: &ServiceCounters, cur: &ServiceCounters, secs: f64) -> Vec<(&'static str, f64)> {
    if secs <= 0.0 || !secs.is_finite() {
        return Vec::new();
    }
    let d = |a: u64, b: u64| if b >= a { (b - a) as f64 } else { b as f64 };
    let df = |a: f64, b: f64| if b >= a { b - a } else { b };
    let exits = d(prev.exits, cur.exits);
    let crashes = d(prev.crashes, cur.crashes);
    let connects = d(prev.connects, cur.connects);
    let cerr = d(prev.connect_errors, cur.connect_errors);
    let syscalls = d(prev.syscalls, cur.syscalls);
    let serr = d(prev.syscall_errors, cur.syscall_errors);
    let ratio = |num: f64, den: f64| if den > 0.0 { (num / den).min(1.0) } else { 0.0 };
    let mut out = vec![
        ("custos.process.exits", exits / secs),
        ("custos.process.crashes", crashes / secs),
        ("custos.tcp.connect.error_ratio", ratio(cerr, connects)),
    ];
    if connects > 0.0 {
        out.push(("custos.tcp.connect.duration", df(prev.connect_seconds, cur.connect_seconds) / connects));
    }
    out.push(("custos.tcp.accepts", d(prev.accepts, cur.accepts) / secs));
    out.push(("custos.syscall.error_ratio", ratio(serr, syscalls)));
    if syscalls > 0.0 {
        out.push(("custos.syscall.duration", df(prev.syscall_seconds, cur.syscall_seconds) / syscalls));
    }
    out.push(("custos.tcp.bytes", d(prev.bytes, cur.bytes) / secs));
    out
}

/// Linear trend (Holt's double exponential smoothing, time-aware) used to
/// forecast when a series will cross a threshold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    level: f64,
    /// Change per second.
    slope: f64,
    last_ts: f64,
    /// Variance of the per-step slopes the smoothed slope averages.
    slope_var: f64,
    n: u32,
    /// True after a forecast fired, until the approach is over.
    fired: bool,
}

impl Trend {
    const LEVEL_WEIGHT: f64 = 0.3;
    const SLOPE_WEIGHT: f64 = 0.1;
    /// Points before a trend is trusted.
    const MIN_POINTS: u32 = 16;
    /// Standard errors the slope must clear to count as a trend.
    const SIGNIFICANCE: f64 = 3.0;

    fn update(&mut self, ts: f64, x: f64) {
        if self.n == 0 {
            self.level = x;
            self.last_ts = ts;
            self.n = 1;
            return;
        }
        let dt = ts - self.last_ts;
        if dt <= 0.0 {
            // Same instant (or late): refine the level only.
            self.level += Self::LEVEL_WEIGHT * (x - self.level);
            return;
        }
        let predicted = self.level + self.slope * dt;
        let level = Self::LEVEL_WEIGHT * x + (1.0 - Self::LEVEL_WEIGHT) * predicted;
        let observed_slope = (level - self.level) / dt;
        if self.n == 1 {
            self.slope = observed_slope;
        } else {
            let e = observed_slope - self.slope;
            self.slope += Self::SLOPE_WEIGHT * e;
            self.slope_var = (1.0 - Self::SLOPE_WEIGHT) * (self.slope_var + Self::SLOPE_WEIGHT * e * e);
        }
        self.level = level;
        self.last_ts = ts;
        self.n = self.n.saturating_add(1);
    }

    /// Seconds until the trend reaches `threshold` from below, if it is heading there.
    pub fn eta(&self, threshold: f64) -> Option<f64> {
        // The smoothed slope's standard error, for per-step slopes of
        // variance v averaged with weight w: sqrt(v w / (2 - w)). Noise
        // around a flat level must not look like a trend toward the threshold.
        let w = Self::SLOPE_WEIGHT;
        let se = (self.slope_var * w / (2.0 - w)).sqrt();
        if self.n < Self::MIN_POINTS || self.level >= threshold || self.slope <= Self::SIGNIFICANCE * se {
            return None;
        }
        Some((threshold - self.level) / self.slope)
    }
}

/// One observation's signals for the runbook engine and exporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    pub anomaly: Option<Anomaly>,
    pub forecast: Option<Forecast>,
    /// The series' anomaly score now (for `custos.anomaly.score`).
    pub score: f64,
}

/// Per-metric settings resolved from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSettings {
    pub enabled: bool,
    pub params: Params,
    /// Forecast toward this value (crossing from below), if set.
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeriesEntry {
    detector: SeriesDetector,
    trend: Trend,
}

/// Why a snapshot could not be restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot format {found} is not the supported format {SNAPSHOT_FORMAT}")]
    Format { found: u32 },
    #[error("corrupt detector snapshot: {0}")]
    Corrupt(#[from] postcard::Error),
}

/// Version of the snapshot encoding; bumped when state layout changes.
/// 2: context vectors are relative to their newest value (13 dimensions)
/// and each series keeps its known ceiling and floor; a format-1 memory
/// holds absolute 14-dimensional contexts and is refused.
pub const SNAPSHOT_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    series: Vec<(String, String, SeriesEntry)>,
    counters: Vec<(String, f64, ServiceCounters)>,
}

/// Detectors for every (service, metric) the agent watches.
#[derive(Debug, Clone)]
pub struct DetectorBank {
    default: MetricSettings,
    per_metric: HashMap<String, MetricSettings>,
    /// Metrics watched; `None`: every metric observed.
    watched: Option<Vec<String>>,
    horizon: Duration,
    max_series: usize,
    series: HashMap<(String, String), SeriesEntry>,
    /// Last counters per service and when they were read (seconds).
    counters: HashMap<String, (f64, ServiceCounters)>,
    /// Thresholds set at run time (from runbooks), over configured ones.
    thresholds: HashMap<(String, String), f64>,
    rejected: u64,
}

fn secs(ts: SystemTime) -> f64 {
    match ts.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

impl DetectorBank {
    /// Default for how many series one agent keeps (about 10 KiB each).
    pub const DEFAULT_MAX_SERIES: usize = 4096;

    /// A bank with one sensitivity for every metric and no thresholds.
    pub fn new(sensitivity: Sensitivity) -> Self {
        DetectorBank {
            default: MetricSettings {
                enabled: true,
                params: super::params_for(sensitivity),
                threshold: None,
            },
            per_metric: HashMap::new(),
            watched: None,
            horizon: Duration::from_secs(30 * 60),
            max_series: Self::DEFAULT_MAX_SERIES,
            series: HashMap::new(),
            counters: HashMap::new(),
            thresholds: HashMap::new(),
            rejected: 0,
        }
    }

    /// A bank set up from the `detection:` section.
    pub fn from_config(c: &DetectionConfig) -> Self {
        let mut b = DetectorBank::new(c.sensitivity);
        b.horizon = c.forecast_horizon.0;
        b.max_series = c.max_series;
        b.watched = c.series.as_ref().map(|v| v.iter().map(|s| s.value.clone()).collect());
        for o in &c.overrides {
            let mut params = super::params_for(o.sensitivity.unwrap_or(c.sensitivity));
            if let Some(w) = o.warmup {
                params.warmup = w;
            }
            b.per_metric.insert(
                o.metric.value.clone(),
                MetricSettings { enabled: o.enabled.unwrap_or(true), params, threshold: o.threshold },
            );
        }
        b
    }

    /// The settings that apply to `metric`.
    pub fn settings(&self, metric: &str) -> &MetricSettings {
        self.per_metric.get(metric).unwrap_or(&self.default)
    }

    /// Whether `metric` is watched at all.
    pub fn watches(&self, metric: &str) -> bool {
        self.settings(metric).enabled && self.watched.as_ref().is_none_or(|w| w.iter().any(|m| m == metric))
    }

    /// Sets (or clears) the threshold a runbook acts on, for forecasts.
    pub fn set_threshold(&mut self, service: &str, metric: &str, threshold: Option<f64>) {
        let k = (service.to_string(), metric.to_string());
        match threshold {
            Some(t) => self.thresholds.insert(k, t),
            None => self.thresholds.remove(&k),
        };
    }

    /// Learns one point and returns an anomaly when an episode starts.
    pub fn observe(&mut self, service: &str, metric: &str, ts: SystemTime, value: f64) -> Option<Anomaly> {
        self.observe_signals(service, metric, ts, value).anomaly
    }

    /// Learns one point and returns every signal it gives.
    pub fn observe_signals(&mut self, service: &str, metric: &str, ts: SystemTime, value: f64) -> Signals {
        if !self.watches(metric) {
            return Signals::default();
        }
        let key = (service.to_string(), metric.to_string());
        let settings = self.per_metric.get(metric).unwrap_or(&self.default);
        let threshold = self.thresholds.get(&key).copied().or(settings.threshold);
        if !self.series.contains_key(&key) {
            if self.series.len() >= self.max_series {
                self.rejected += 1;
                return Signals::default();
            }
            let entry = SeriesEntry {
                detector: SeriesDetector::new(settings.params.clone()),
                trend: Trend::default(),
            };
            self.series.insert(key.clone(), entry);
        }
        let entry = self.series.get_mut(&key).expect("inserted above");
        let t = secs(ts);
        let obs = entry.detector.observe(t, value);
        let anomaly = obs.alarm.then(|| Anomaly {
            service: service.to_string(),
            metric: metric.to_string(),
            ts,
            value,
            expected_low: obs.expected_low,
            expected_high: obs.expected_high,
            score: obs.score,
            severity: obs.severity,
        });
        let mut forecast = None;
        if value.is_finite() {
            entry.trend.update(t, value);
            if let Some(th) = threshold {
                match entry.trend.eta(th) {
                    Some(eta) if eta <= self.horizon.as_secs_f64() && !entry.trend.fired => {
                        entry.trend.fired = true;
                        forecast = Some(Forecast {
                            service: service.to_string(),
                            metric: metric.to_string(),
                            ts,
                            threshold: th,
                            eta_secs: eta,
                        });
                    }
                    // The approach is over (heading away, far off, or crossed
                    // and back): the next one may fire again.
                    Some(eta) if eta > 2.0 * self.horizon.as_secs_f64() => entry.trend.fired = false,
                    None if value < th && entry.trend.slope <= 0.0 => entry.trend.fired = false,
                    _ => {}
                }
            }
        }
        Signals { anomaly, forecast, score: obs.score }
    }

    /// Derives the default series from a service's counters (the first call
    /// per service only records them) and observes each watched one.
    pub fn observe_counters(
        &mut self,
        service: &str,
        ts: SystemTime,
        counters: &ServiceCounters,
    ) -> Vec<Signals> {
        let t = secs(ts);
        let prev = self.counters.insert(service.to_string(), (t, *counters));
        let Some((t0, c0)) = prev else { return Vec::new() };
        derive(&c0, counters, t - t0)
            .into_iter()
            .map(|(metric, v)| self.observe_signals(service, metric, ts, v))
            .filter(|s| s.anomaly.is_some() || s.forecast.is_some())
            .collect()
    }

    /// The current anomaly score of a series, for `custos.anomaly.score`.
    pub fn score(&self, service: &str, metric: &str) -> Option<f64> {
        self.series.get(&(service.to_string(), metric.to_string())).map(|e| e.detector.last_score())
    }

    /// Every series and its current score.
    pub fn scores(&self) -> impl Iterator<Item = (&str, &str, f64)> {
        self.series.iter().map(|((s, m), e)| (s.as_str(), m.as_str(), e.detector.last_score()))
    }

    /// Forgets a service (it is no longer managed).
    pub fn remove_service(&mut self, service: &str) {
        self.series.retain(|(s, _), _| s != service);
        self.counters.remove(service);
        self.thresholds.retain(|(s, _), _| s != service);
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Series refused because `max_series` was reached.
    pub fn rejected_series(&self) -> u64 {
        self.rejected
    }

    /// Bytes of detector state held.
    pub fn state_bytes(&self) -> usize {
        self.series
            .iter()
            .map(|((s, m), e)| s.len() + m.len() + e.detector.state_bytes() + std::mem::size_of::<Trend>())
            .sum()
    }

    /// What was learned, as bytes for the state dir.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut series: Vec<_> =
            self.series.iter().map(|((s, m), e)| (s.clone(), m.clone(), e.clone())).collect();
        series.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut counters: Vec<_> = self.counters.iter().map(|(s, (t, c))| (s.clone(), *t, *c)).collect();
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        postcard::to_allocvec(&Snapshot { format: SNAPSHOT_FORMAT, series, counters })
            .expect("serializing plain data to memory cannot fail")
    }

    /// Restores what a [`snapshot`](Self::snapshot) saved. Tunables come from
    /// this bank's configuration, not from the snapshot, so a changed
    /// sensitivity applies at once without forgetting.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let snap: Snapshot = postcard::from_bytes(bytes)?;
        if snap.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format { found: snap.format });
        }
        self.series.clear();
        for (s, m, mut e) in snap.series.into_iter().take(self.max_series) {
            e.detector.set_params(self.settings(&m).params.clone());
            self.series.insert((s, m), e);
        }
        self.counters = snap.counters.into_iter().map(|(s, t, c)| (s, (t, c))).collect();
        Ok(())
    }
}
