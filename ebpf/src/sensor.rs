//! The running sensor: loads the embedded BPF object with aya, attaches the
//! programs the options ask for, and streams decoded events into a tokio
//! channel without ever blocking on it.

use crate::decode::{self, Clock, DecodeOptions};
use crate::sizing::{self, LatencyTiming};
use crate::stats::{self, StatsDiffer};
use crate::wire::{self, Config, SysKey, SysRow, SysVal};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::BtfTracePoint;
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
unsafe impl aya::Pod for SysRow {}

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
    /// Time the calls that start in 1/N of the time, in short windows at
    /// random times, for the latency histograms (see
    /// [`LatencyTiming::for_sample`]); every call is still counted, with its
    /// errors. 1 times every call, at about twice the cost per syscall on the
    /// observed services; 0 is taken as 1.
    pub syscall_latency_sample: u32,
    /// Size of the kernel ring buffer; rounded up to a power of two of at
    /// least one page.
    pub ring_buffer_bytes: u32,
    /// Arguments kept per exec (the kernel copies at most 4 KiB of them).
    pub argv_max_args: u32,
    pub scope: Scope,
}

/// Default of [`SensorOptions::syscall_latency_sample`]: a 62.5 ms window
/// every second, so a service making 1,000 calls of a kind per second still
/// has about 600 timed calls per 10-second interval for its p99, and the
/// per-syscall cost is that of counting alone the rest of the time (see
/// README, Performance).
pub const DEFAULT_SYSCALL_LATENCY_SAMPLE: u32 = 16;

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

/// Which managed cgroup counts its syscalls in which row of the kernel's
/// `syscall_rows` array; cgroups beyond the rows count in the hash.
struct Slots {
    by_cgroup: HashMap<u64, u32>,
    /// Rows of cgroups no longer managed, read once more (their last
    /// interval's calls) before they are free.
    retiring: HashMap<u64, u32>,
    free: Vec<u32>,
}

impl Slots {
    fn new(rows: u32) -> Slots {
        Slots { by_cgroup: HashMap::new(), retiring: HashMap::new(), free: (0..rows).rev().collect() }
    }
}

struct Shared {
    config: Mutex<Array<MapData, Config>>,
    /// Value: the cgroup's row in `syscall_rows` + 1, 0 for none.
    managed_cgroups: Mutex<BpfHashMap<MapData, u64, u32>>,
    slots: Mutex<Slots>,
    /// None when syscall statistics are off.
    syscall_rows: Option<Mutex<PerCpuArray<MapData, SysRow>>>,
    /// Possible CPUs: the number of values of every per-CPU map entry.
    cpus: usize,
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
    fn update_config(&self, change: impl FnOnce(&mut Config)) -> Result<(), SensorError> {
        let mut config = lock(&self.config);
        let mut c = config.get(&0, 0).map_err(map_err("config"))?;
        change(&mut c);
        config.set(0, c, 0).map_err(map_err("config"))
    }

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
    // Owns the programs and their links: dropping it (and ending the tasks,
    // which the dropped `stop` does) detaches them.
    _bpf: Arc<Mutex<Ebpf>>,
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
        tasks.push(tokio::spawn(mark_losses(shared.clone(), tx.clone(), stop_rx.clone())));
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

    /// Reports processes in cgroup `id` (a cgroup v2 id, see
    /// [`crate::cgroup_id_of_path`]) under [`Scope::Managed`].
    pub fn manage_cgroup(&self, id: u64) -> Result<(), SensorError> {
        let slot1 = self.slot_for(id);
        lock(&self.shared.managed_cgroups).insert(id, slot1, 0).map_err(map_err("managed_cgroups"))?;
        self.scope_changed()
    }

    /// The cgroup's row of syscall counts + 1, zeroed when newly taken (a
    /// row is reused after its cgroup left); 0 when no row is free.
    fn slot_for(&self, id: u64) -> u32 {
        let Some(rows) = &self.shared.syscall_rows else { return 0 };
        let mut slots = lock(&self.shared.slots);
        if let Some(slot) = slots.by_cgroup.get(&id) {
            return slot + 1;
        }
        // Managed again before its last reading: its totals go on.
        if let Some(slot) = slots.retiring.remove(&id) {
            slots.by_cgroup.insert(id, slot);
            return slot + 1;
        }
        let Some(slot) = slots.free.pop() else { return 0 };
        let zeroed = {
            let mut rows = lock(rows);
            (0..wire::SYSCALL_NRS).all(|nr| {
                PerCpuValues::try_from(vec![SysRow::default(); self.shared.cpus])
                    .is_ok_and(|zeros| rows.set(slot * wire::SYSCALL_NRS + nr, zeros, 0).is_ok())
            })
        };
        if !zeroed {
            warn!(cgroup_id = id, "Cannot clear a row of syscall counts; the cgroup counts in the hash.");
            slots.free.push(slot);
            return 0;
        }
        slots.by_cgroup.insert(id, slot);
        slot + 1
    }

    /// Switches between reporting every process and only managed ones (a
    /// reload that adds the first service or removes the last).
    pub fn set_scope(&self, scope: Scope) -> Result<(), SensorError> {
        self.update_config(|c| {
            c.mode = scope.mode();
            new_scope_generation(c);
        })
    }

    fn scope_changed(&self) -> Result<(), SensorError> {
        self.update_config(new_scope_generation)
    }

    /// Stops reporting cgroup `id`; absent ids are not an error.
    pub fn unmanage_cgroup(&self, id: u64) -> Result<(), SensorError> {
        match lock(&self.shared.managed_cgroups).remove(&id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                let mut slots = lock(&self.shared.slots);
                if let Some(slot) = slots.by_cgroup.remove(&id) {
                    slots.retiring.insert(id, slot);
                }
                drop(slots);
                self.scope_changed()
            }
            Err(e) => Err(map_err("managed_cgroups")(e)),
        }
    }

    /// Reports process `pid` (in the agent's pid namespace) and, from now on,
    /// the processes it forks, under [`Scope::Managed`]. The kernel forgets
    /// it when it exits.
    pub fn track_pid(&self, pid: u32) -> Result<(), SensorError> {
        lock(&self.shared.tracked_pids).insert(pid, 1, 0).map_err(map_err("tracked_pids"))?;
        // A new generation: threads of the process decided before it was
        // tracked decide again.
        self.update_config(|c| {
            c.any_tracked = 1;
            new_scope_generation(c);
        })
    }

    fn update_config(&self, change: impl FnOnce(&mut Config)) -> Result<(), SensorError> {
        self.shared.update_config(change)
    }

    /// Stops tracking `pid` (its already-tracked children stay tracked).
    pub fn untrack_pid(&self, pid: u32) -> Result<(), SensorError> {
        match lock(&self.shared.tracked_pids).remove(&pid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => self.scope_changed(),
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

fn btf_program<'a>(bpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut BtfTracePoint, SensorError> {
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

/// Starts a new scope generation: the kernel's per-CPU caches and per-thread
/// records of scope decisions are then made again.
fn new_scope_generation(c: &mut Config) {
    c.scope_gen = c.scope_gen.wrapping_add(1);
}

/// The kernel's page size, for the OOM victim's resident memory (counted in
/// pages in the kernel).
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
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
                add_row_counts(&shared, &mut snapshot);
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

/// Adds the counts of slotted cgroups (kept in the per-CPU rows, not in the
/// hash, which holds only their latency histograms) to a reading of the hash.
fn add_row_counts(shared: &Shared, snapshot: &mut HashMap<SysKey, SysVal>) {
    let Some(rows) = &shared.syscall_rows else { return };
    let (slotted, retired): (Vec<(u64, u32)>, Vec<u64>) = {
        let slots = lock(&shared.slots);
        let slotted = slots.by_cgroup.iter().chain(&slots.retiring).map(|(c, s)| (*c, *s)).collect();
        (slotted, slots.retiring.keys().copied().collect())
    };
    {
        let rows = lock(rows);
        for &(cgroup_id, slot) in &slotted {
            for nr in 0..wire::SYSCALL_NRS {
                let Ok(per_cpu) = rows.get(&(slot * wire::SYSCALL_NRS + nr), 0) else { continue };
                let (count, errors) = per_cpu.iter().fold((0, 0), |(c, e), r| (c + r.count, e + r.errors));
                if count > 0 {
                    let v = snapshot.entry(SysKey { cgroup_id, nr, _pad0: 0 }).or_default();
                    v.count += count;
                    v.errors += errors;
                }
            }
        }
    }
    // Read for the last time: free for another cgroup (unless managed again
    // in between, which took the row back).
    let mut slots = lock(&shared.slots);
    for id in retired {
        if let Some(slot) = slots.retiring.remove(&id) {
            slots.free.push(slot);
        }
    }
}

/// Attaches the sys_enter program (which marks calls to be timed) for one
/// window in every period, at a random place in each, until stopped. A
/// failure to attach is logged once; counting goes on without latencies.
///
/// The window's link is a descriptor: a child the agent forks during a
/// window holds it (keeping the window open) until the child execs, which
/// the agent's children do at once.
async fn time_syscalls(
    bpf: Arc<Mutex<Ebpf>>,
    window: Duration,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    const PROGRAM: &str = "handle_sys_enter";
    let mut rng = XorShift::seeded();
    let mut warned = false;
    loop {
        let before = LatencyTiming::offset(window, period, rng.next());
        let after = period.saturating_sub(before + window);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(before) => {}
        }
        let link = {
            let mut bpf = lock(&bpf);
            btf_program(&mut bpf, PROGRAM).and_then(|p| p.attach().map_err(prog_err(PROGRAM)))
        };
        let link = match link {
            Ok(link) => Some(link),
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    warn!(error = %e, "Cannot time syscalls; they are still counted.");
                }
                None
            }
        };
        let stopped = tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(window) => false,
        };
        if let Some(link) = link {
            let mut bpf = lock(&bpf);
            if let Err(e) =
                btf_program(&mut bpf, PROGRAM).and_then(|p| p.detach(link).map_err(prog_err(PROGRAM)))
            {
                warn!(error = %e, "Cannot end a syscall timing window.");
            }
        }
        if stopped {
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(after) => {}
        }
    }
}

/// Small non-cryptographic generator for window placement (xorshift64*),
/// seeded from the standard library's per-process random keys.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

// The agent keeps the sensor in async tasks and shares it between them.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<EbpfSensor>();
};
