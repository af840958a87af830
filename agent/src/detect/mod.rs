//! Anomaly detection: streaming, one bounded state per series, no I/O
//! (except the command-line edge in [`cli`]).
//!
//! Per point, four statistics each become a z-score against their own
//! running distribution: nearest-neighbour novelty of a multi-resolution
//! context (with time-of-day and time-of-week values) against a bounded set
//! of remembered prototypes, departure from the daily profile, level shift
//! and spread change. The largest gives the score in [0, 1]; warm-up,
//! episode hysteresis and a threshold-free gate make one episode one alarm.
//! The method, its evidence on NAB (scores and what was tried) and the
//! agent API are in `README.md` next to this file.

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
