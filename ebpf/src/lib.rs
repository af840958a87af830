//! Linux sensor of custos: BPF programs written in C (bpf/), compiled by
//! build.rs with clang, loaded with aya from bytes embedded in the binary.
//!
//! The decoding of kernel records ([`decode`]), the syscall statistics
//! ([`stats`]), the sizing of maps and timing windows ([`sizing`]) and the
//! cgroup helpers are plain code tested everywhere; the sensor itself
//! ([`EbpfSensor`]) is Linux-only, in `src/sensor/`: `mod.rs` (options,
//! errors, the scope controls, the loss counters), `load.rs` (loading the
//! object and attaching the programs), `ring.rs` (the `AsyncFd<RingBuf>`
//! reader), `syscalls.rs` (syscall count rows and their periodic reading),
//! `timing.rs` (the timing windows).
//!
//! The sensor never marks loss in the stream: it counts what the kernel
//! could not reserve and what the full channel dropped
//! ([`EbpfSensor::loss`]), and the consumer (the agent's pipeline) marks
//! each gap once from those counters.
//!
//! # Kernel side
//!
//! One CO-RE object, bpf/custos.bpf.c (the license, the ring buffer and the
//! configuration shared by all), which includes one topic file per hook
//! family: bpf/scope.h (managed cgroups, tracked pids, the scope decision
//! kept in task storage), bpf/process.h (exec, fork, exit, signals, OOM),
//! bpf/tcp.h (socket states, accept) and bpf/syscalls.h (syscall statistics,
//! timing). A hand-written header lists the few kernel fields it reads
//! (bpf/include/custos_core.h) and one wire header
//! (bpf/include/custos_wire.h) is mirrored by [`wire`]. Hooks, all BTF
//! tracepoints: no kprobes or fentry/fexit (refused on kernels without
//! kprobes or under lockdown), no tracefs:
//!
//! | event | hook |
//! |---|---|
//! | process start | `tp_btf/sched_process_exec` (argv from `mm->arg_start..arg_end`, 4 KiB) |
//! | process exit | `tp_btf/sched_process_exit`, last thread only (`group_dead`) |
//! | descendants of tracked pids | `tp_btf/sched_process_fork` |
//! | fatal signal | `tp_btf/signal_generate`, default action terminates, handler `SIG_DFL` |
//! | OOM kill | `tp_btf/mark_victim` |
//! | connect, close, listen | `tp_btf/inet_sock_set_state`, owner remembered by socket in process context |
//! | accept | `tp_btf/sys_exit` when the call is accept or accept4 (the same program as the syscall counts) |
//! | syscall statistics | `tp_btf/sys_exit` (count and errors, in a per-CPU row per managed cgroup, else a per-CPU hash per (cgroup, syscall)); `tp_btf/sys_enter` only during timing windows ([`sizing::LatencyTiming`]) for the latency histograms; `tp_btf/cgroup_attach_task` clears a moved thread's scope decision |
//!
//! Scope is decided first in every program, so unmanaged processes never
//! touch the ring buffer.
//!
//! # Use
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use custos_ebpf::{cgroup2_mount, cgroup_id_of_path, EbpfSensor, Scope, SensorOptions};
//! let (tx, mut rx) = tokio::sync::mpsc::channel(16384);
//! let sensor = EbpfSensor::start(SensorOptions { scope: Scope::Managed, ..Default::default() }, tx)?;
//! let unit = cgroup2_mount()?.join("system.slice/nginx.service");
//! sensor.manage_cgroup(cgroup_id_of_path(&unit)?)?;
//! while let Some(event) = rx.recv().await {
//!     println!("{}", event.to_json_line());
//! }
//! println!("lost: {:?}", sensor.loss());
//! sensor.shutdown().await;
//! # Ok(()) }
//! ```

pub mod decode;
pub mod sizing;
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
    availability, EbpfSensor, Scope, SensorError, SensorOptions, DEFAULT_SYSCALL_LATENCY_SAMPLE,
};
