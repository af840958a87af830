//! Anomaly detection: streaming, one bounded state per series, no I/O
//! (except the command-line edge in [`cli`]).

pub mod bank;
pub mod cli;
pub mod csv;
pub mod nab;
pub mod series;

pub use bank::{derive, DetectorBank, ServiceCounters, Signals, DEFAULT_SERIES};
pub use series::{Observation, Params, SeriesDetector};

use crate::config::Sensitivity;

/// The tunables a sensitivity stands for.
pub fn params_for(s: Sensitivity) -> Params {
    let base = Params::default();
    match s {
        Sensitivity::Low => Params { alarm_score: 0.9, ..base },
        Sensitivity::Medium => Params { alarm_score: 0.75, ..base },
        Sensitivity::High => Params { alarm_score: 0.5, ..base },
    }
}

#[cfg(test)]
mod tests;
