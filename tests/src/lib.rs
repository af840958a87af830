//! Harnesses for custos's end-to-end tests: locating the built binary,
//! privileged-test gating, an OTLP receiver, a systemd sandbox.

pub mod systemd;
pub mod webhook;
