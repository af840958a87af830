//! Loading and attaching: the embedded object, its maps sized to the host,
//! the programs the options ask for, and the tasks that read from them.

use super::ring::Reader;
use super::syscalls::{read_syscall_stats, Slots};
use super::timing::time_syscalls;
use super::{map_err, prog_err, warn_losses, EbpfSensor, Scope, SensorError, SensorOptions, Shared};
use crate::decode::{Clock, DecodeOptions};
use crate::sizing::{self, LatencyTiming};
use crate::wire::{self, Config, SysKey, SysRow, SysVal};
use aya::maps::{Array, MapData, PerCpuHashMap, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use custos_event::Event;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/custos.bpf.o"));

// SAFETY: plain #[repr(C)] integer structs with explicit padding (wire.rs).
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for SysKey {}
unsafe impl aya::Pod for SysVal {}
unsafe impl aya::Pod for SysRow {}

/// Whether BPF can run here: root, kernel BTF, and a working bpf() syscall.
/// The error says what is missing (tests print it as their skip reason).
pub fn availability() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".to_string());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing; CONFIG_DEBUG_INFO_BTF)".to_string()
        );
    }
    // Create and close a one-entry array map: the smallest proof that the
    // bpf() syscall works (it is absent, or blocked by seccomp, in many
    // containers).
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4; // key_size
    attr[2] = 4; // value_size
    attr[3] = 1; // max_entries
                 // SAFETY: BPF_MAP_CREATE (0) reads a bpf_attr of the given size from a
                 // valid, zero-initialized buffer.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), std::mem::size_of_val(&attr) as u32) };
    if fd < 0 {
        return Err(format!("the bpf() syscall failed: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by the kernel and is owned here.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Offset from the kernel's boot clock to wall time, measured now.
fn boot_clock() -> Clock {
    let wall = clock_ns(libc::CLOCK_REALTIME);
    let boot = clock_ns(libc::CLOCK_BOOTTIME);
    Clock { wall_minus_boot_ns: wall - boot }
}

impl EbpfSensor {
    /// Loads and attaches the BPF programs and spawns the reader tasks on the
    /// current tokio runtime. Events go to `tx`; when it is full they are
    /// dropped and counted (see [`EbpfSensor::loss`]).
    pub fn start(opts: SensorOptions, tx: mpsc::Sender<Event>) -> Result<EbpfSensor, SensorError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SensorError::NoRuntime);
        }
        availability().map_err(SensorError::Unavailable)?;
        let (pidns_dev, pidns_ino) = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata("/proc/self/ns/pid").map_err(|source| SensorError::Io {
                what: "cannot stat /proc/self/ns/pid".to_string(),
                source,
            })?;
            (m.dev(), m.ino())
        };
        let ring_bytes = opts.ring_buffer_bytes.max(4096).checked_next_power_of_two().unwrap_or(1 << 31);
        // Per-CPU maps are allocated once per possible CPU: sized to a
        // budget, so that a large host does not pay hundreds of MiB.
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, source)| SensorError::Io { what: format!("cannot read {what}"), source })?;
        let rows = sizing::syscall_rows(cpus as u32);

        let mut bpf = EbpfLoader::new()
            .override_global("cfg_pidns_dev", &pidns_dev, true)
            .override_global("cfg_pidns_ino", &pidns_ino, true)
            .override_global("cfg_wakeup_bytes", &wakeup_bytes(ring_bytes), true)
            .override_global("cfg_sys_count", &u32::from(opts.syscalls), true)
            .override_global("cfg_sys_accept", &u32::from(opts.tcp), true)
            .override_global("cfg_page_size", &page_size(), true)
            .map_max_entries("events", ring_bytes)
            .map_max_entries("syscall_rows", rows * wire::SYSCALL_NRS)
            .map_max_entries("syscall_stats", sizing::syscall_hash_entries(cpus as u32))
            // The per-thread task storage (scope decisions, timed calls) is
            // only used in the kernel; aya has no user-space type for it.
            .allow_unsupported_maps()
            .load(BPF_OBJECT)
            .map_err(|e| SensorError::Load(Box::new(e)))?;

        // The loader above parsed (and dropped) its own copy of the kernel
        // BTF for CO-RE; one more is needed to load the BTF tracepoints.
        // Parsed one after the other, the two never coexist in memory.
        let btf = Btf::from_sys_fs()
            .map_err(|e| SensorError::Unavailable(format!("cannot read kernel BTF: {e}")))?;
        let mut config: Array<MapData, Config> = take(&mut bpf, "config")?;
        let mode = opts.scope.mode();
        config
            .set(0, Config { mode, process_events: opts.process as u32, ..Config::default() }, 0)
            .map_err(map_err("config"))?;
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            managed_cgroups: Mutex::new(take(&mut bpf, "managed_cgroups")?),
            // Without syscall statistics no cgroup takes a row.
            slots: Mutex::new(Slots::new(if opts.syscalls { rows } else { 0 })),
            syscall_rows: if opts.syscalls {
                Some(Mutex::new(take(&mut bpf, "syscall_rows")?))
            } else {
                None
            },
            cpus,
            tracked_pids: Mutex::new(take(&mut bpf, "tracked_pids")?),
            ringbuf_drops: take(&mut bpf, "ringbuf_drops")?,
            channel_drops: AtomicU64::new(0),
            events_seen: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
        });
        let ring: RingBuf<MapData> = take(&mut bpf, "events")?;
        let syscall_stats: PerCpuHashMap<MapData, SysKey, SysVal> = take(&mut bpf, "syscall_stats")?;

        // Exec, exit and fork also maintain the tracked pids, so they run
        // whenever pids may be tracked, even if process events are not wanted.
        if opts.process || opts.scope == Scope::Managed {
            attach_btf(&mut bpf, &btf, "handle_exec", "sched_process_exec")?;
            attach_btf(&mut bpf, &btf, "handle_fork", "sched_process_fork")?;
            attach_btf(&mut bpf, &btf, "handle_exit", "sched_process_exit")?;
        }
        if opts.process {
            attach_btf(&mut bpf, &btf, "handle_signal_generate", "signal_generate")?;
            attach_btf(&mut bpf, &btf, "handle_mark_victim", "mark_victim")?;
        }
        if opts.tcp {
            attach_btf(&mut bpf, &btf, "handle_sock_state", "inet_sock_set_state")?;
        }
        // One program on every syscall's return: it counts (syscall
        // statistics) and sees accept() return (TCP).
        if opts.syscalls || opts.tcp {
            attach_btf(&mut bpf, &btf, "handle_sys_exit", "sys_exit")?;
        }
        let interval = opts.syscall_interval.max(Duration::from_millis(10));
        let timing = LatencyTiming::for_sample(opts.syscall_latency_sample, interval);
        if opts.syscalls {
            // Threads keep their scope decision until they move to another
            // cgroup (or a new scope generation starts).
            attach_btf(&mut bpf, &btf, "handle_cgroup_attach", "cgroup_attach_task")?;
            // Loaded now (its BTF is at hand), attached now only when every
            // call is timed; else by the timing task, window by window.
            let enter = btf_program(&mut bpf, "handle_sys_enter")?;
            enter.load("sys_enter", &btf).map_err(prog_err("handle_sys_enter"))?;
            if timing == LatencyTiming::Always {
                enter.attach().map_err(prog_err("handle_sys_enter"))?;
            }
        }

        // Parsing the kernel's BTF for relocations takes tens of MiB that
        // are free again now; hand them back to the system rather than
        // keeping them in the allocator for the agent's lifetime.
        drop(btf);
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe {
            libc::malloc_trim(0);
        }

        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // for as long as the RingBuf lives, i.e. as long as this AsyncFd.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }.map_err(|e| {
                SensorError::Io {
                    what: "cannot register the ring buffer with tokio".to_string(),
                    source: e.into(),
                }
            })?;
        let bpf = Arc::new(Mutex::new(bpf));
        let (stop, stop_rx) = watch::channel(false);
        let clock = boot_clock();
        let mut tasks = Vec::new();
        let reader = Reader {
            shared: shared.clone(),
            tx: tx.clone(),
            clock,
            decode: DecodeOptions { argv_max_args: opts.argv_max_args },
            oom_victims: HashSet::new(),
        };
        tasks.push(tokio::spawn(reader.run(ring, stop_rx.clone())));
        tasks.push(tokio::spawn(warn_losses(shared.clone(), stop_rx.clone())));
        if opts.syscalls {
            if let LatencyTiming::Windows { window, period } = timing {
                tasks.push(tokio::spawn(time_syscalls(bpf.clone(), window, period, stop_rx.clone())));
            }
            tasks.push(tokio::spawn(read_syscall_stats(
                syscall_stats,
                shared.clone(),
                tx,
                interval,
                stop_rx,
            )));
        }
        Ok(EbpfSensor { shared, stop, tasks, _bpf: bpf })
    }
}

fn take<T>(bpf: &mut Ebpf, name: &'static str) -> Result<T, SensorError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.take_map(name).ok_or(SensorError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

pub(super) fn btf_program<'a>(
    bpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut BtfTracePoint, SensorError> {
    bpf.program_mut(program)
        .ok_or_else(|| prog_err(program)(aya::programs::ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(prog_err(program))
}

fn attach_btf(bpf: &mut Ebpf, btf: &Btf, program: &'static str, tracepoint: &str) -> Result<(), SensorError> {
    let p = btf_program(bpf, program)?;
    p.load(tracepoint, btf).map_err(prog_err(program))?;
    p.attach().map_err(prog_err(program))?;
    Ok(())
}

/// Pending bytes at which the kernel wakes the reader: a sixteenth of the
/// ring, so that bursts are read long before the ring fills.
fn wakeup_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 16)
}

/// The kernel's page size, for the OOM victim's resident memory (counted in
/// pages in the kernel).
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}
