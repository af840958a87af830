//! The wiring: every subsystem is built here from its own configuration
//! section and connected to the others, and nothing below imports this
//! module.
//!
//! - [`run`]: `custos run`, the agent, and its stop in order.
//! - [`watch`]: `custos watch`, the live event stream, and the terminal
//!   printers both commands use.
//! - [`service_link`]: the link between the agent and its service manager and
//!   operators (notifications, control socket, `custos status` providers).
//! - [`reload`]: one ordered reload, applied whole or not at all.
//! - [`runbooks`]: the runbook engine's sink, its findings and audit export.
//! - [`detection`]: detection (the counters fold's totals → series →
//!   detectors).
//! - [`watchers`]: health probes and the service state poller.

pub mod detection;
pub mod reload;
pub mod run;
pub mod runbooks;
pub mod service_link;
pub mod watch;
pub mod watchers;
#[cfg(any(windows, custos_windows_typecheck))]
pub mod windows_host;
