//! The running sensor: loads the embedded BPF object with aya, attaches the
//! programs the options ask for, and streams decoded events into a tokio
//! channel without ever blocking on it.

use crate::decode::{self, Clock, DecodeOptions};
use crate::stats::{self, StatsDiffer};
use crate::wire::{self, Config, SysKey, SysVal};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use custos_event::{Event, EventBody, Loss, LossCounters, LossStage};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/custos.bpf.o"));

// SAFETY: plain #[repr(C)] integer structs with explicit padding (wire.rs).
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for SysKey {}
unsafe impl aya::Pod for SysVal {}

/// Which processes the kernel reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every process visible from the agent's pid namespace.
    #[default]
    Everything,
    /// Only processes in a managed cgroup ([`EbpfSensor::manage_cgroup`]) or
    /// tracked by pid ([`EbpfSensor::track_pid`], inherited by children).
    Managed,
}

impl Scope {
    fn mode(self) -> u32 {
        match self {
            Scope::Everything => wire::MODE_EVERYTHING,
            Scope::Managed => wire::MODE_MANAGED,
        }
    }
}

/// What the sensor observes and how.
#[derive(Debug, Clone)]
pub struct SensorOptions {
    /// Process start, exit, fatal signals and OOM kills.
    pub process: bool,
    /// TCP connect, accept, close and listen.
    pub tcp: bool,
    /// Per-cgroup syscall statistics, aggregated in the kernel.
    pub syscalls: bool,
    /// How often the syscall statistics are read and emitted.
    pub syscall_interval: Duration,
    /// Time one syscall in this many (at random, per CPU) for the latency
    /// histogram; every call is still counted, with its errors. 1 times every
    /// call, at about twice the cost per syscall (two clock reads); 0 is
    /// taken as 1. The histogram then holds the timed calls only.
    pub syscall_latency_sample: u32,
    /// Size of the kernel ring buffer; rounded up to a power of two of at
    /// least one page.
    pub ring_buffer_bytes: u32,
    /// Arguments kept per exec (the kernel copies at most 4 KiB of them).
    pub argv_max_args: u32,
    pub scope: Scope,
}

/// Default of [`SensorOptions::syscall_latency_sample`]: at 1 in 16, a
/// service making 1,000 calls of a kind per second still has 600 timed calls
/// per minute for its p99, and the per-syscall cost is near that of counting
/// alone (see README, Performance).
pub const DEFAULT_SYSCALL_LATENCY_SAMPLE: u32 = 16;

/// The random draw below which a call is timed, for 1 in `sample`.
pub fn sample_threshold(sample: u32) -> u32 {
    match sample {
        0 | 1 => u32::MAX,
        n => ((1u64 << 32) / n as u64) as u32,
    }
}

impl Default for SensorOptions {
    fn default() -> Self {
        SensorOptions {
            process: true,
            tcp: true,
            syscalls: true,
            syscall_interval: Duration::from_secs(10),
            syscall_latency_sample: DEFAULT_SYSCALL_LATENCY_SAMPLE,
            ring_buffer_bytes: 8 << 20,
            argv_max_args: 64,
            scope: Scope::Everything,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("the eBPF sensor cannot run here: {0}")]
    Unavailable(String),
    #[error("cannot load the BPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("cannot load or attach BPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("the sensor must be started inside a tokio runtime")]
    NoRuntime,
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> SensorError {
    move |e| SensorError::Map { map, source: Box::new(e) }
}

fn prog_err(program: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> SensorError {
    move |e| SensorError::Program { program, source: Box::new(e) }
}

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

/// Mounts tracefs at /sys/kernel/tracing when it is not mounted anywhere
/// (the syscall tracepoints that see accept() are found through it).
fn ensure_tracefs() -> Result<(), SensorError> {
    let mounted = |p: &str| std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false);
    if mounted("/sys/kernel/tracing") || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(SensorError::Io {
            what: "cannot mount tracefs at /sys/kernel/tracing".to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    debug!("Mounted tracefs at /sys/kernel/tracing.");
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

struct Shared {
    config: Mutex<Array<MapData, Config>>,
    managed_cgroups: Mutex<BpfHashMap<MapData, u64, u8>>,
    tracked_pids: Mutex<BpfHashMap<MapData, u32, u8>>,
    ringbuf_drops: PerCpuArray<MapData, u64>,
    channel_drops: AtomicU64,
    events_seen: AtomicU64,
    decode_errors: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a map handle, which is
    // still usable: recover instead of propagating the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn kernel_drops(&self) -> u64 {
        match self.ringbuf_drops.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(e) => {
                warn!(error = %e, "Cannot read the ring buffer drop counter.");
                0
            }
        }
    }
}

/// The Linux eBPF sensor. Dropping it detaches everything; prefer
/// [`EbpfSensor::shutdown`], which also waits for the reader tasks.
pub struct EbpfSensor {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    // Owns the programs and their links: dropping it detaches them.
    _bpf: Ebpf,
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

        let mut bpf = EbpfLoader::new()
            .override_global("cfg_pidns_dev", &pidns_dev, true)
            .override_global("cfg_pidns_ino", &pidns_ino, true)
            .override_global("cfg_wakeup_bytes", &wakeup_bytes(ring_bytes), true)
            .override_global("cfg_syscall_sample", &opts.syscall_latency_sample.max(1), true)
            .override_global("cfg_syscall_sample_below", &sample_threshold(opts.syscall_latency_sample), true)
            .map_max_entries("events", ring_bytes)
            // The task storage of in-flight syscalls is only used in the
            // kernel; aya has no user-space type for it.
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
            ensure_tracefs()?;
            attach_tp(&mut bpf, "handle_accept4_exit", "syscalls", "sys_exit_accept4")?;
            attach_tp(&mut bpf, "handle_accept_exit", "syscalls", "sys_exit_accept")?;
        }
        if opts.syscalls {
            attach_btf(&mut bpf, &btf, "handle_sys_enter", "sys_enter")?;
            attach_btf(&mut bpf, &btf, "handle_sys_exit", "sys_exit")?;
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
        tasks.push(tokio::spawn(mark_losses(shared.clone(), tx.clone(), stop_rx.clone())));
        if opts.syscalls {
            tasks.push(tokio::spawn(read_syscall_stats(
                syscall_stats,
                shared.clone(),
                tx,
                opts.syscall_interval.max(Duration::from_millis(10)),
                stop_rx,
            )));
        }
        Ok(EbpfSensor { shared, stop, tasks, _bpf: bpf })
    }

    /// Reports processes in cgroup `id` (a cgroup v2 id, see
    /// [`crate::cgroup_id_of_path`]) under [`Scope::Managed`].
    pub fn manage_cgroup(&self, id: u64) -> Result<(), SensorError> {
        lock(&self.shared.managed_cgroups).insert(id, 1, 0).map_err(map_err("managed_cgroups"))?;
        self.scope_changed()
    }

    /// Switches between reporting every process and only managed ones (a
    /// reload that adds the first service or removes the last).
    pub fn set_scope(&self, scope: Scope) -> Result<(), SensorError> {
        self.update_config(|c| {
            c.mode = scope.mode();
            c.scope_gen = c.scope_gen.wrapping_add(1);
        })
    }

    /// Invalidates the kernel's per-CPU caches of scope decisions.
    fn scope_changed(&self) -> Result<(), SensorError> {
        self.update_config(|c| c.scope_gen = c.scope_gen.wrapping_add(1))
    }

    /// Stops reporting cgroup `id`; absent ids are not an error.
    pub fn unmanage_cgroup(&self, id: u64) -> Result<(), SensorError> {
        match lock(&self.shared.managed_cgroups).remove(&id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => self.scope_changed(),
            Err(e) => Err(map_err("managed_cgroups")(e)),
        }
    }

    /// Reports process `pid` (in the agent's pid namespace) and, from now on,
    /// the processes it forks, under [`Scope::Managed`]. The kernel forgets
    /// it when it exits.
    pub fn track_pid(&self, pid: u32) -> Result<(), SensorError> {
        lock(&self.shared.tracked_pids).insert(pid, 1, 0).map_err(map_err("tracked_pids"))?;
        self.update_config(|c| c.any_tracked = 1)
    }

    fn update_config(&self, change: impl FnOnce(&mut Config)) -> Result<(), SensorError> {
        let mut config = lock(&self.shared.config);
        let mut c = config.get(&0, 0).map_err(map_err("config"))?;
        change(&mut c);
        config.set(0, c, 0).map_err(map_err("config"))
    }

    /// Stops tracking `pid` (its already-tracked children stay tracked).
    pub fn untrack_pid(&self, pid: u32) -> Result<(), SensorError> {
        match lock(&self.shared.tracked_pids).remove(&pid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("tracked_pids")(e)),
        }
    }

    /// With `true`, every exec is reported even out of scope, so that user
    /// space can match executable patterns and then [`track_pid`]. Exits and
    /// everything else of such processes stay filtered until they are
    /// tracked; attribution, which knows what it manages, drops the rest.
    ///
    /// [`track_pid`]: EbpfSensor::track_pid
    pub fn emit_all_execs(&self, on: bool) -> Result<(), SensorError> {
        self.update_config(|c| c.emit_all_execs = on as u32)
    }

    /// Events lost so far: kernel ring buffer reservations that failed and
    /// events dropped because the channel was full.
    pub fn loss(&self) -> LossCounters {
        LossCounters {
            kernel: self.shared.kernel_drops(),
            channel: self.shared.channel_drops.load(Ordering::Relaxed),
            platform: 0,
        }
    }

    /// Records read from the kernel so far (before any channel drop).
    pub fn events_seen(&self) -> u64 {
        self.shared.events_seen.load(Ordering::Relaxed)
    }

    /// Records that could not be decoded (a kernel/user-space mismatch).
    pub fn decode_errors(&self) -> u64 {
        self.shared.decode_errors.load(Ordering::Relaxed)
    }

    /// Stops the reader tasks, waits for them, and detaches the programs.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn take<T>(bpf: &mut Ebpf, name: &'static str) -> Result<T, SensorError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.take_map(name).ok_or(SensorError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn attach_btf(bpf: &mut Ebpf, btf: &Btf, program: &'static str, tracepoint: &str) -> Result<(), SensorError> {
    let p: &mut BtfTracePoint = bpf
        .program_mut(program)
        .ok_or_else(|| prog_err(program)(aya::programs::ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(prog_err(program))?;
    p.load(tracepoint, btf).map_err(prog_err(program))?;
    p.attach().map_err(prog_err(program))?;
    Ok(())
}

fn attach_tp(bpf: &mut Ebpf, program: &'static str, category: &str, name: &str) -> Result<(), SensorError> {
    let p: &mut TracePoint = bpf
        .program_mut(program)
        .ok_or_else(|| prog_err(program)(aya::programs::ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(prog_err(program))?;
    p.load().map_err(prog_err(program))?;
    p.attach(category, name).map_err(prog_err(program))?;
    Ok(())
}

/// Sends without blocking; on a full channel counts the drop (a loss
/// marker follows from [`mark_losses`]). False when the receiver is gone.
fn send(shared: &Shared, tx: &mpsc::Sender<Event>, event: Event) -> bool {
    match tx.try_send(event) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            shared.channel_drops.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// How long the reader lets records gather after a drain: the bound on the
/// extra latency it adds, in exchange for one wake-up per batch.
const BATCH_DELAY: Duration = Duration::from_millis(2);

/// How often the reader looks at the ring without being woken: the bound on
/// the latency of a record at low rates, where the kernel does not wake it.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Pending bytes at which the kernel wakes the reader: a sixteenth of the
/// ring, so that bursts are read long before the ring fills.
fn wakeup_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 16)
}

struct Reader {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Event>,
    clock: Clock,
    decode: DecodeOptions,
    /// Pids chosen by the OOM killer whose exit has not been seen yet, so
    /// that the exit can say `oom_killed`.
    oom_victims: HashSet<u32>,
}

impl Reader {
    /// Hands over every record in the ring; false when the receiver is gone.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> bool {
        while let Some(item) = rb.next() {
            if !self.handle(&item) {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut ring: AsyncFd<RingBuf<MapData>>, mut stop: watch::Receiver<bool>) {
        // The kernel wakes the reader only once records pile up
        // (cfg_wakeup_bytes); below that, this poll picks them up.
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    // What is in the ring at shutdown is delivered, not lost.
                    self.drain(ring.get_mut());
                    break;
                }
                _ = poll.tick() => {
                    if !self.drain(ring.get_mut()) {
                        return;
                    }
                }
                guard = ring.readable_mut() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => {
                            warn!(error = %e, "Ring buffer poll failed; the sensor stops reading.");
                            break;
                        }
                    };
                    // Clear before draining: a record committed after the
                    // drain wakes us again instead of waiting for the next one.
                    guard.clear_ready();
                    let rb = guard.get_inner_mut();
                    let mut drained = 0usize;
                    while let Some(item) = rb.next() {
                        drained += 1;
                        if !self.handle(&item) {
                            return;
                        }
                    }
                    // Under a stream of events, waking once per event costs
                    // more than handling it: let a batch gather (the ring
                    // buffer holds far more than arrives in a millisecond).
                    if drained > 0 {
                        tokio::time::sleep(BATCH_DELAY).await;
                    }
                }
            }
        }
    }

    /// False when the receiver is gone.
    fn handle(&mut self, record: &[u8]) -> bool {
        self.shared.events_seen.fetch_add(1, Ordering::Relaxed);
        let decoded = match decode::decode(record, &self.clock, &self.decode) {
            Ok(d) => d,
            Err(e) => {
                let n = self.shared.decode_errors.fetch_add(1, Ordering::Relaxed);
                if n < 10 {
                    warn!(error = %e, "Undecodable record from the kernel.");
                }
                return true;
            }
        };
        let mut event = decoded.event;
        match &mut event.body {
            EventBody::OomKill(_) => {
                // Bounded: victims whose exit is never seen (out of scope,
                // lost) must not accumulate.
                if self.oom_victims.len() >= 4096 {
                    self.oom_victims.clear();
                }
                self.oom_victims.insert(event.pid);
            }
            EventBody::ProcessExit(exit) => exit.oom_killed = self.oom_victims.remove(&event.pid),
            _ => {}
        }
        if let EventBody::ProcessStart(start) = &mut event.body {
            // The kernel gives the path as passed to execve; a relative one
            // is resolved through /proc while the process still exists.
            if !start.exe.starts_with('/') {
                if let Ok(p) = std::fs::read_link(format!("/proc/{}/exe", event.pid)) {
                    start.exe = p.to_string_lossy().into_owned();
                }
            }
        }
        send(&self.shared, &self.tx, event)
    }
}

/// Turns growth of the loss counters into `loss` events in the stream, so
/// that a consumer sees every gap. A marker that does not fit in the channel
/// is not a loss: it is retried, covering all losses since the last one.
async fn mark_losses(shared: Arc<Shared>, tx: mpsc::Sender<Event>, mut stop: watch::Receiver<bool>) {
    // Both counters are fresh with this sensor: start from zero, not from a
    // first reading that could come after the first losses.
    let mut marked = [0u64; 2];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let now = [shared.kernel_drops(), shared.channel_drops.load(Ordering::Relaxed)];
                for (i, stage) in [LossStage::Kernel, LossStage::Channel].into_iter().enumerate() {
                    if now[i] <= marked[i] {
                        continue;
                    }
                    let lost = now[i] - marked[i];
                    let marker = Event::new(SystemTime::now(), EventBody::Loss(Loss { stage, lost }));
                    match tx.try_send(marker) {
                        Ok(()) => {
                            warn!(stage = ?stage, lost, "Events were lost.");
                            marked[i] = now[i];
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        }
    }
}

async fn read_syscall_stats(
    map: PerCpuHashMap<MapData, SysKey, SysVal>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Event>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut differ = StatsDiffer::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut last_read = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let mut snapshot = HashMap::new();
                for entry in map.iter() {
                    match entry {
                        Ok((key, per_cpu)) => {
                            snapshot.insert(key, stats::sum_cpus(per_cpu.iter()));
                        }
                        // Entries can vanish (LRU) while iterating.
                        Err(e) => debug!(error = %e, "Skipped a syscall statistics entry."),
                    }
                }
                // The real length of the interval: ticks can be late.
                let now = Instant::now();
                let elapsed = now - std::mem::replace(&mut last_read, now);
                let events = differ.diff(snapshot, elapsed, SystemTime::now());
                // The first reading is the baseline: counts from before the
                // interval started are not reported.
                if std::mem::take(&mut first) {
                    continue;
                }
                for e in events {
                    if !send(&shared, &tx, e) {
                        return;
                    }
                }
            }
        }
    }
}

// The agent keeps the sensor in async tasks and shares it between them.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<EbpfSensor>();
};
