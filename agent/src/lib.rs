//! custos: the agent's platform-neutral core and its platform modules.
//!
//! See ARCHITECTURE.md at the repository root for the code map.

pub mod agent;
pub mod attribution;
pub mod audit;
pub mod config;
pub mod daemon;
pub mod detect_cli;
pub mod detection;
pub mod export;
pub mod health;
pub mod pipeline;
pub mod platform;
pub mod platform_sensor;
#[cfg(target_os = "linux")]
pub mod procfs;
pub mod run;
pub mod runbook;
pub mod sensor;
pub mod service_manager;
pub mod summary;
