//! custos: the agent's platform-neutral core and its platform modules.
//!
//! [`app`] wires the subsystems together (`custos run`, `custos watch`, the
//! reload); nothing below it imports it. See ARCHITECTURE.md at the
//! repository root for the code map and the invariants.

pub mod app;
pub mod attribution;
pub mod audit;
pub mod command;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod detect_cli;
pub mod export;
pub mod fsutil;
pub mod health;
pub mod pipeline;
pub mod platform;
pub mod runbook;
pub mod sensor;
pub mod service_manager;
pub mod summary;
pub mod terminal;
pub mod yaml;
