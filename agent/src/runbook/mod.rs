//! Self-healing runbooks: YAML files saying what to do when a service
//! misbehaves, matched against events, anomalies, metrics, health and
//! service state, acted on through the `ServiceManager`, audited.

pub mod actions;
pub mod cli;
pub mod decide;
pub mod engine;
pub mod graph;
pub mod model;
pub mod state;
pub mod template;
pub mod trigger;

pub use engine::{Clock, Engine, EngineOptions, FakeClock, RunbookStatus, ServiceInfo, SystemClock};
pub use model::{load_file, load_paths, parse, LoadReport, Runbook};

#[cfg(test)]
mod tests;
