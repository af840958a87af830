//! Anomaly detection: streaming, one bounded state per series, no I/O.
//!
//! Per point, four statistics each become a z-score against their own
//! running distribution: nearest-neighbour novelty of a multi-resolution
//! context (with time-of-day and time-of-week values) against a bounded set
//! of remembered prototypes, departure from the daily profile, level shift
//! and spread change. Together they give a tail probability; the score in
//! [0, 1] says how many points that unusual the series' history so far is
//! expected to hold ([`series::score_of_rarity`]), so one threshold means
//! the same on every series. Warm-up, episode hysteresis and a
//! threshold-free gate make one episode one alarm.
//! The method, its evidence on NAB (scores and what was tried) and the
//! agent API are in `README.md` next to this crate's manifest.
//!
//! The crate is a library of pure functions and state machines: callers
//! hand in values and bytes and get values and bytes back. Files, sockets,
//! processes and the async runtime belong to the agent (`tests/no_io.rs`
//! keeps it so), which is what lets the detector be tested and evaluated
//! anywhere and keeps it from blocking the pipeline that feeds it.

pub mod anomaly;
pub mod bank;
pub mod catalogue;
pub mod nab;
pub mod series;
pub mod synthetic;

pub use anomaly::{Anomaly, Forecast, Severity};
pub use bank::{BankConfig, DetectorBank, MetricOverride, SeriesState, Signals};
pub use catalogue::{derive, SeriesSpec, ServiceCounters, SERIES};
pub use series::{rarity_of_score, score_of_rarity, Observation, Params, SeriesDetector};

use serde::{Deserialize, Serialize};

/// One knob for how readily anomalies are reported. The YAML form
/// (`detection.sensitivity`) and the `CUSTOS_SENSITIVITY` and `custos
/// detect --sensitivity` spellings are the lowercase names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    Low,
    #[default]
    Medium,
    High,
}

impl Sensitivity {
    /// The name as written in configuration, case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Sensitivity::Low),
            "medium" => Some(Sensitivity::Medium),
            "high" => Some(Sensitivity::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Low => "low",
            Sensitivity::Medium => "medium",
            Sensitivity::High => "high",
        }
    }
}

impl Sensitivity {
    /// The rarity at which a series alarms: how many points as unusual its
    /// history so far is expected to hold. Low: one in a million such
    /// histories; medium: one in ten thousand; high: one in a hundred.
    /// Calibrated thresholds: the same on every series, whatever its scale,
    /// noise or length (the score is [`score_of_rarity`] of the rarity).
    pub fn alarm_rarity(self) -> f64 {
        match self {
            Sensitivity::Low => 1e-6,
            Sensitivity::Medium => 1e-4,
            Sensitivity::High => 1e-2,
        }
    }
}

/// The tunables a sensitivity stands for.
pub fn params_for(s: Sensitivity) -> Params {
    Params { alarm_score: score_of_rarity(s.alarm_rarity()), ..Params::default() }
}

#[cfg(test)]
mod tests;
