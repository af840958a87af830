//! The agent's configuration: one YAML file, `CUSTOS_*` environment
//! overrides over it, command-line flags over both.
//!
//! Unknown keys are errors. Structural errors (bad YAML, unknown key, wrong
//! type) stop parsing at the first one, with its line and column; every
//! semantic problem after that (a service with two selectors, a relative
//! state dir, an invalid endpoint...) is collected, so one `custos validate`
//! shows them all.
//!
//! `schema.rs` is the file's shape, `validate.rs` the semantic checks,
//! `load.rs` reading files and `env.rs` the overrides. The detection
//! settings are here, apart from the schema: they are read into the
//! detector crate's `BankConfig`, and the detector owns their meaning.

mod env;
mod host;
mod load;
mod schema;
mod secret;
mod units;
mod validate;

pub use crate::yaml::{LocatedError as ConfigError, LocatedErrors as ConfigErrors};
pub use env::{apply_env, ENV_OVERRIDES};
pub use host::check_units;
pub use load::{load, parse, read_trusted_text, MAX_CONFIG_BYTES};
pub use schema::*;
pub use secret::{read_secret, SecretSource};
pub use units::{ByteSize, HumanDuration};
pub use validate::{normalize_unit, LoadedConfig, Selector, ServiceSpec};
// The detector owns what a sensitivity means; configuration only reads it.
pub use custos_detect::Sensitivity;

use crate::yaml::{Problems, Spanned};
use custos_detect::catalogue;
use serde::Deserialize;

/// Anomaly detection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    pub enabled: bool,
    pub sensitivity: Sensitivity,
    /// Metrics watched on every service (default: every series of
    /// `custos_detect::catalogue::SERIES`).
    pub series: Option<Vec<Spanned<String>>>,
    /// Per-metric settings over the defaults.
    pub overrides: Vec<MetricOverride>,
    /// How far ahead a forecast toward a threshold fires.
    pub forecast_horizon: Spanned<HumanDuration>,
    /// At most this many series are kept (about 10 KiB each).
    pub max_series: Spanned<usize>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        // The detector's defaults, so that a bank made from an empty
        // `detection:` section is the bank `DetectorBank::new` makes.
        let d = custos_detect::BankConfig::default();
        DetectionConfig {
            enabled: true,
            sensitivity: d.sensitivity,
            series: None,
            overrides: Vec::new(),
            forecast_horizon: Spanned::unlocated(HumanDuration(d.forecast_horizon)),
            max_series: Spanned::unlocated(d.max_series),
        }
    }
}

impl DetectionConfig {
    /// What the detector bank is set up from: these settings without their
    /// YAML locations.
    pub fn bank_config(&self) -> custos_detect::BankConfig {
        custos_detect::BankConfig {
            sensitivity: self.sensitivity,
            series: self.series.as_ref().map(|v| v.iter().map(|s| s.value.clone()).collect()),
            overrides: self
                .overrides
                .iter()
                .map(|o| custos_detect::MetricOverride {
                    metric: o.metric.value.clone(),
                    enabled: o.enabled,
                    sensitivity: o.sensitivity,
                    warmup: o.warmup,
                    threshold: o.threshold,
                })
                .collect(),
            forecast_horizon: self.forecast_horizon.0,
            max_series: *self.max_series,
        }
    }
}

/// Settings for one metric, over `detection:`'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricOverride {
    /// A series of `custos_detect::catalogue::SERIES`, e.g. `custos.tcp.connect.duration`.
    pub metric: Spanned<String>,
    pub enabled: Option<bool>,
    pub sensitivity: Option<Sensitivity>,
    /// Points learned before the first alarm.
    pub warmup: Option<u32>,
    /// Forecast when the series heads above this value.
    pub threshold: Option<f64>,
}

fn validate_detection(d: &DetectionConfig, p: &mut Problems<'_>) {
    for m in d.series.iter().flatten() {
        if !catalogue::is_known(&m.value) {
            p.at(
                m.referenced,
                format!(
                    "unknown metric `{}` in `detection.series`: expected one of {}",
                    m.value,
                    catalogue::known_names()
                ),
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    for o in &d.overrides {
        if !catalogue::is_known(&o.metric.value) {
            p.at(
                o.metric.referenced,
                format!(
                    "unknown metric `{}` in `detection.overrides`: expected one of {}",
                    o.metric.value,
                    catalogue::known_names()
                ),
            );
        } else if !seen.insert(o.metric.value.clone()) {
            p.at(o.metric.referenced, format!("metric `{}` has more than one override", o.metric.value));
        }
        if o.threshold.is_some_and(|t| !t.is_finite()) {
            p.at(o.metric.referenced, format!("`threshold` of `{}` must be a finite number", o.metric.value));
        }
    }
    p.within("detection.max_series", &d.max_series, 1, 1_000_000);
    p.within(
        "detection.forecast_horizon",
        &d.forecast_horizon,
        HumanDuration::default(),
        HumanDuration::secs(30 * 24 * 3600),
    );
    for o in &d.overrides {
        if o.warmup.is_some_and(|w| w > 1_000_000) {
            p.at(
                o.metric.referenced,
                format!("`warmup` of `{}` expects 0 to 1000000 points", o.metric.value),
            );
        }
    }
}

#[cfg(test)]
mod tests;
