//! The running sensor: loads the embedded BPF object with aya, attaches the
//! programs the options ask for, and streams decoded events into a tokio
//! channel without ever blocking on it.
//!
//! This module holds the public face (options, errors, [`EbpfSensor`] and
//! its scope controls) and what the tasks share; the seams are modules:
//!
//! - `load`: loading the object, sizing its maps, attaching the programs,
//!   spawning the tasks ([`EbpfSensor::start`], [`availability`]).
//! - `ring`: the `AsyncFd<RingBuf>` reader and what it does per record.
//! - `syscalls`: the per-cgroup rows of syscall counts and the periodic
//!   reading of the statistics into `syscall_stats` events.
//! - `timing`: the windows in which syscalls are timed.

mod load;
mod ring;
mod syscalls;
mod timing;

pub use load::availability;

use crate::wire::{self, Config, SysRow};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::Ebpf;
use custos_event::{Event, LossCounters, LossStage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use syscalls::Slots;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;

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
    /// [`crate::sizing::LatencyTiming::for_sample`]); every call is still
    /// counted, with its errors. 1 times every call, at about twice the cost
    /// per syscall on the observed services; 0 is taken as 1.
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
    /// Reports processes in cgroup `id` (a cgroup v2 id, see
    /// [`crate::cgroup_id_of_path`]) under [`Scope::Managed`].
    pub fn manage_cgroup(&self, id: u64) -> Result<(), SensorError> {
        let slot1 = self.slot_for(id);
        lock(&self.shared.managed_cgroups).insert(id, slot1, 0).map_err(map_err("managed_cgroups"))?;
        self.scope_changed()
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
                lock(&self.shared.slots).retire(id);
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
    /// events dropped because the channel was full. These counters are the
    /// only record of loss the sensor keeps: it puts no `loss` events into
    /// the channel, the consumer (the agent's pipeline) marks the gaps.
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

/// Sends without blocking; on a full channel counts the drop (the pipeline
/// marks the gap from [`EbpfSensor::loss`]). False when the receiver is gone.
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

/// Starts a new scope generation: the kernel's per-CPU caches and per-thread
/// records of scope decisions are then made again.
fn new_scope_generation(c: &mut Config) {
    c.scope_gen = c.scope_gen.wrapping_add(1);
}

/// Logs growth of the loss counters, once per stage and check. The sensor
/// only counts: the pipeline reads [`EbpfSensor::loss`] and marks each gap
/// in the stream itself, so a `loss` event from here would mark it twice.
async fn warn_losses(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // Both counters are fresh with this sensor: start from zero, not from a
    // first reading that could come after the first losses.
    let mut warned = [0u64; 2];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let now = [shared.kernel_drops(), shared.channel_drops.load(Ordering::Relaxed)];
                for (i, stage) in [LossStage::Kernel, LossStage::Channel].into_iter().enumerate() {
                    if now[i] > warned[i] {
                        warn!(stage = ?stage, lost = now[i] - warned[i], "Events were lost.");
                        warned[i] = now[i];
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
