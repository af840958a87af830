//! Linux: systemd over D-Bus (the `ServiceManager`), `custos install` as a
//! systemd unit, and the host as /proc and the cgroup tree show it.
//! (sd_notify and the journald stream check are Unix protocols kept in
//! `daemon`, where they fall back to no-ops elsewhere.)

pub mod install;
pub mod procfs;
pub mod systemd;
