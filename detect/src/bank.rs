//! The agent's side of detection: one detector per (service, metric),
//! forecasts toward thresholds, and snapshots so a restart keeps what was
//! learned. No I/O: the caller stores the snapshot bytes. Which series exist
//! and how they are derived is the catalogue's ([`crate::catalogue`]).

use crate::anomaly::{Anomaly, Forecast};
use crate::catalogue::ServiceCounters;
use crate::series::{Params, SeriesDetector};
use crate::{params_for, Sensitivity};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

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

/// One series' learning state (for `custos status`).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesState<'a> {
    pub service: &'a str,
    pub metric: &'a str,
    /// Points learned so far.
    pub points: u64,
    /// Points to learn before the first alarm.
    pub alarm_warmup: u64,
    /// The anomaly score of the last point.
    pub score: f64,
}

impl SeriesState<'_> {
    /// Still learning what is normal: no alarm yet, whatever the score.
    pub fn warming_up(&self) -> bool {
        self.points <= self.alarm_warmup
    }
}

/// What a bank is set up from: the agent's `detection:` section, as plain
/// values, so that the detector does not depend on how configuration is
/// read.
#[derive(Debug, Clone, PartialEq)]
pub struct BankConfig {
    pub sensitivity: Sensitivity,
    /// Metrics watched on every service; `None`: every metric observed.
    pub series: Option<Vec<String>>,
    /// Per-metric settings over the defaults.
    pub overrides: Vec<MetricOverride>,
    /// How far ahead a forecast toward a threshold fires.
    pub forecast_horizon: Duration,
    /// At most this many series are kept (about 10 KiB each).
    pub max_series: usize,
}

impl Default for BankConfig {
    fn default() -> Self {
        BankConfig {
            sensitivity: Sensitivity::Medium,
            series: None,
            overrides: Vec::new(),
            forecast_horizon: Duration::from_secs(30 * 60),
            max_series: DetectorBank::DEFAULT_MAX_SERIES,
        }
    }
}

/// Settings for one metric, over the bank's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricOverride {
    pub metric: String,
    /// `None`: enabled.
    pub enabled: Option<bool>,
    /// `None`: the bank's sensitivity.
    pub sensitivity: Option<Sensitivity>,
    /// Points learned before the first alarm.
    pub warmup: Option<u32>,
    /// Forecast when the series heads above this value.
    pub threshold: Option<f64>,
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
/// 3: a series' tunables are no longer saved (they always came from the
/// configuration on restore) and the novelty is not smoothed; scores are
/// rarities over the history.
pub const SNAPSHOT_FORMAT: u32 = 3;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    series: Vec<(String, String, SeriesEntry)>,
    /// Counters of a per-service fold the bank once kept (the detection sink
    /// keeps its own). Always written empty and ignored on restore; kept in
    /// the layout so that a snapshot's first bytes (format, series, this)
    /// read the same in every version.
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
        DetectorBank::from_config(&BankConfig { sensitivity, ..BankConfig::default() })
    }

    /// A bank set up from `c`.
    pub fn from_config(c: &BankConfig) -> Self {
        let mut per_metric = HashMap::new();
        for o in &c.overrides {
            let mut params = params_for(o.sensitivity.unwrap_or(c.sensitivity));
            if let Some(w) = o.warmup {
                params.warmup = w;
            }
            per_metric.insert(
                o.metric.clone(),
                MetricSettings { enabled: o.enabled.unwrap_or(true), params, threshold: o.threshold },
            );
        }
        DetectorBank {
            default: MetricSettings { enabled: true, params: params_for(c.sensitivity), threshold: None },
            per_metric,
            watched: c.series.clone(),
            horizon: c.forecast_horizon,
            max_series: c.max_series,
            series: HashMap::new(),
        }
    }

    /// The settings that apply to `metric`.
    pub fn settings(&self, metric: &str) -> &MetricSettings {
        self.per_metric.get(metric).unwrap_or(&self.default)
    }

    /// Whether `metric` is watched at all.
    pub fn watches(&self, metric: &str) -> bool {
        self.settings(metric).enabled && self.watched.as_ref().is_none_or(|w| w.iter().any(|m| m == metric))
    }

    /// Learns one point and returns an anomaly when an episode starts.
    pub fn observe(&mut self, service: &str, metric: &str, ts: SystemTime, value: f64) -> Option<Anomaly> {
        self.observe_signals(service, metric, ts, value).anomaly
    }

    /// Learns one point and returns every signal it gives. A new series
    /// beyond `max_series` is not kept: it gives no signals.
    pub fn observe_signals(&mut self, service: &str, metric: &str, ts: SystemTime, value: f64) -> Signals {
        if !self.watches(metric) {
            return Signals::default();
        }
        let key = (service.to_string(), metric.to_string());
        let settings = self.per_metric.get(metric).unwrap_or(&self.default);
        let threshold = settings.threshold;
        if !self.series.contains_key(&key) {
            if self.series.len() >= self.max_series {
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

    /// The current anomaly score of a series, for `custos.anomaly.score`.
    pub fn score(&self, service: &str, metric: &str) -> Option<f64> {
        self.series.get(&(service.to_string(), metric.to_string())).map(|e| e.detector.last_score())
    }

    /// Every series and its current score.
    pub fn scores(&self) -> impl Iterator<Item = (&str, &str, f64)> {
        self.series.iter().map(|((s, m), e)| (s.as_str(), m.as_str(), e.detector.last_score()))
    }

    /// Every series' learning state, ordered by service and metric.
    pub fn series_states(&self) -> Vec<SeriesState<'_>> {
        let mut out: Vec<SeriesState<'_>> = self
            .series
            .iter()
            .map(|((s, m), e)| SeriesState {
                service: s,
                metric: m,
                points: e.detector.points(),
                alarm_warmup: e.detector.alarm_warmup(),
                score: e.detector.last_score(),
            })
            .collect();
        out.sort_by(|a, b| (a.service, a.metric).cmp(&(b.service, b.metric)));
        out
    }

    /// Forgets a service that is no longer managed, so that its series stop
    /// counting toward `max_series`; returns how many series were freed.
    pub fn remove_service(&mut self, service: &str) -> usize {
        self.retain_services(|s| s != service)
    }

    /// Forgets every service for which `keep` is false (after a reload,
    /// `keep` answers "is it still configured?"); returns how many series
    /// were freed. A service that comes back starts learning afresh.
    pub fn retain_services(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let before = self.series.len();
        self.series.retain(|(s, _), _| keep(s));
        before - self.series.len()
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
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
        postcard::to_allocvec(&Snapshot { format: SNAPSHOT_FORMAT, series, counters: Vec::new() })
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
        Ok(())
    }
}
