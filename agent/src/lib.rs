//! custos: the agent's platform-neutral core and its platform modules.
//!
//! See ARCHITECTURE.md at the repository root for the code map.

pub mod anomaly;
pub mod config;
pub mod daemon;
pub mod service_manager;
