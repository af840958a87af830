//! Linux sensor of custos: BPF programs written in C (bpf/), compiled by
//! build.rs with clang, loaded with aya from bytes embedded in the binary.
//!
//! The decoding of kernel records ([`decode`]), the syscall statistics
//! ([`stats`]) and the cgroup helpers are plain code tested everywhere; the
//! sensor itself ([`EbpfSensor`]) is Linux-only.

pub mod decode;
pub mod stats;
pub mod syscall_names;
pub mod wire;

#[cfg(unix)]
mod cgroup;
#[cfg(unix)]
pub use cgroup::{cgroup2_mount, cgroup2_mount_in, cgroup_id_of_path};

#[cfg(target_os = "linux")]
mod sensor;
#[cfg(target_os = "linux")]
pub use sensor::{
    availability, is_out_of_scope_exec, EbpfSensor, Scope, SensorError, SensorOptions, OUT_OF_SCOPE,
};
