//! What the detector hands to the runbook engine (and the exporter): the
//! interface between detection and healing. Kept apart from the detector's
//! state (`series`, `bank`) so that the engine depends on these few types
//! only and either side can change its internals freely.

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// How far from normal an anomaly is. Ordered: `Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// One anomaly episode starting (the detector's hysteresis makes one
/// episode one `Anomaly`, not one per point).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub service: String,
    /// The series, e.g. `custos.tcp.connect.error_ratio`.
    pub metric: String,
    pub ts: SystemTime,
    pub value: f64,
    /// The range the detector expected the value in.
    pub expected_low: f64,
    pub expected_high: f64,
    /// Anomaly score in [0, 1].
    pub score: f64,
    pub severity: Severity,
}

/// A forecast that a series will cross a runbook threshold soon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub service: String,
    pub metric: String,
    pub ts: SystemTime,
    pub threshold: f64,
    /// Predicted time until the threshold is crossed.
    pub eta_secs: f64,
}
