//! Linux: systemd over D-Bus.

pub mod systemd;
