//! The normalized event vocabulary of custos.
//!
//! Every sensor (eBPF on Linux, ETW on Windows, replay everywhere) turns its
//! platform's records into [`Event`] values; everything downstream
//! (attribution, aggregation, export, detection, runbooks) only ever sees
//! these. This crate is pure data: no I/O, no async runtime, no platform code.
//!
//! The JSON shape (one flat object per event, `kind` first) is the format of
//! `custos watch --json` and of the replay sensor, so it is a public contract:
//! keys are absent when they do not apply, and unknown keys are ignored when
//! reading so that newer recordings still replay.

mod errno;
mod signal;

pub use errno::{errno_from_name, errno_name};
pub use signal::{signal_from_name, signal_name, Signal};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One observation about one process, normalized across platforms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened, with the fields specific to that kind.
    #[serde(flatten)]
    pub body: EventBody,
    /// Wall-clock time of the observation.
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    /// The managed service this event was attributed to; `None` before
    /// attribution or when the process belongs to no managed service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Process id as seen from the agent's own PID namespace (0 when the
    /// event is not about one process, e.g. syscall statistics).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub pid: u32,
    /// Thread id, same namespace rules as `pid`.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub tid: u32,
    /// Command name (the kernel's 16-byte `comm` on Linux, the image base
    /// name on Windows).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
    /// Cgroup v2 id of the process (Linux); 0 when unknown or not applicable.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cgroup_id: u64,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

impl Event {
    /// A new event of `body` at `ts`, not yet attributed to a process.
    pub fn new(ts: SystemTime, body: EventBody) -> Self {
        Event { body, ts, service: None, pid: 0, tid: 0, comm: String::new(), cgroup_id: 0 }
    }

    /// The stable name of this event's kind, as in the `kind` JSON key.
    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    /// Parses one line of `custos watch --json` output.
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// One line of `custos watch --json` output, without the newline.
    pub fn to_json_line(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The kinds of events, by their stable `kind` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ProcessStart,
    ProcessExit,
    Signal,
    OomKill,
    TcpConnect,
    TcpAccept,
    TcpClose,
    Listen,
    SyscallStats,
    HealthProbe,
    Loss,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::ProcessStart,
        EventKind::ProcessExit,
        EventKind::Signal,
        EventKind::OomKill,
        EventKind::TcpConnect,
        EventKind::TcpAccept,
        EventKind::TcpClose,
        EventKind::Listen,
        EventKind::SyscallStats,
        EventKind::HealthProbe,
        EventKind::Loss,
    ];

    /// The `kind` string, e.g. `process_exit`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ProcessStart => "process_start",
            EventKind::ProcessExit => "process_exit",
            EventKind::Signal => "signal",
            EventKind::OomKill => "oom_kill",
            EventKind::TcpConnect => "tcp_connect",
            EventKind::TcpAccept => "tcp_accept",
            EventKind::TcpClose => "tcp_close",
            EventKind::Listen => "listen",
            EventKind::SyscallStats => "syscall_stats",
            EventKind::HealthProbe => "health_probe",
            EventKind::Loss => "loss",
        }
    }

    /// Parses a `kind` string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    ProcessStart(ProcessStart),
    ProcessExit(ProcessExit),
    Signal(FatalSignal),
    OomKill(OomKill),
    TcpConnect(TcpConnect),
    TcpAccept(TcpEndpoints),
    TcpClose(TcpClose),
    Listen(Listen),
    SyscallStats(SyscallStats),
    HealthProbe(HealthProbe),
    Loss(Loss),
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::ProcessStart(_) => EventKind::ProcessStart,
            EventBody::ProcessExit(_) => EventKind::ProcessExit,
            EventBody::Signal(_) => EventKind::Signal,
            EventBody::OomKill(_) => EventKind::OomKill,
            EventBody::TcpConnect(_) => EventKind::TcpConnect,
            EventBody::TcpAccept(_) => EventKind::TcpAccept,
            EventBody::TcpClose(_) => EventKind::TcpClose,
            EventBody::Listen(_) => EventKind::Listen,
            EventBody::SyscallStats(_) => EventKind::SyscallStats,
            EventBody::HealthProbe(_) => EventKind::HealthProbe,
            EventBody::Loss(_) => EventKind::Loss,
        }
    }
}

/// A process began executing a new program (exec), or was first seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStart {
    #[serde(default)]
    pub ppid: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Absolute path of the executable, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exe: String,
    /// Arguments, argv[0] first, bounded by the sensor.
    #[serde(default)]
    pub argv: Vec<String>,
    /// True when the sensor cut `argv` (too many arguments or too long).
    #[serde(default, skip_serializing_if = "is_false")]
    pub argv_truncated: bool,
}

/// A process (thread group) ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessExit {
    /// Exit status when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that terminated it, when it was killed by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub core_dumped: bool,
    /// Time from the process's start to its exit.
    #[serde(default)]
    pub lifetime_ns: u64,
    /// Parent pid at exit, when known.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ppid: u32,
    /// True when the OOM killer chose this process (an `oom_kill` event for
    /// the same pid preceded the exit); set by the sensor or attribution.
    #[serde(default, skip_serializing_if = "is_false")]
    pub oom_killed: bool,
    /// Whether someone asked the service manager for this exit (a stop or
    /// a restart of the process's unit) or nobody did; set by the runbook
    /// engine, which asks the service manager, and absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_cause: Option<ExitCause>,
}

impl ProcessExit {
    /// Whether the process died of a fault (SIGSEGV, SIGABRT, SIGBUS...)
    /// or the OOM killer: a crash, whatever the service manager was asked
    /// at the time.
    pub fn is_fault(&self) -> bool {
        self.oom_killed || self.signal.is_some_and(|s| FAULT_SIGNALS.contains(&s.0))
    }

    /// The class of this exit, as used by metrics (`exit.class`) and runbooks.
    pub fn class(&self) -> ExitClass {
        if self.oom_killed {
            return ExitClass::Oom;
        }
        match (self.signal, self.exit_code) {
            (Some(_), _) => ExitClass::Signal,
            (None, Some(0)) | (None, None) => ExitClass::Clean,
            (None, Some(_)) => ExitClass::Error,
        }
    }
}

/// Signals only a fault sends: the process crashed whoever was stopping it.
const FAULT_SIGNALS: [i32; 7] = [4, 5, 6, 7, 8, 11, 31];

/// Why a process exited, as far as the service manager knows: a stop or
/// restart asked of it (by an operator's `systemctl`, another tool, or
/// custos itself), or nothing asked of it (a crash, or the process ending
/// by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCause {
    /// Nobody asked the service manager to stop or restart the unit.
    Unrequested,
    /// A stop of the unit was asked for (`systemctl stop`, SCM stop).
    StopRequested,
    /// A restart of the unit was asked for (`systemctl restart`, a deploy).
    RestartRequested,
}

impl ExitCause {
    pub const ALL: [ExitCause; 3] =
        [ExitCause::Unrequested, ExitCause::StopRequested, ExitCause::RestartRequested];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Unrequested => "unrequested",
            ExitCause::StopRequested => "stop_requested",
            ExitCause::RestartRequested => "restart_requested",
        }
    }

    /// Whether an operator's (or a tool's) request caused the exit.
    pub fn requested(self) -> bool {
        self != ExitCause::Unrequested
    }
}

/// How a process ended, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitClass {
    /// Exit code 0.
    Clean,
    /// Non-zero exit code.
    Error,
    /// Killed by a signal.
    Signal,
    /// Killed by the OOM killer (set by attribution when an OOM kill of the
    /// same pid preceded the exit).
    Oom,
}

impl ExitClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitClass::Clean => "clean",
            ExitClass::Error => "error",
            ExitClass::Signal => "signal",
            ExitClass::Oom => "oom",
        }
    }
}

/// A fatal signal was delivered (one whose default action terminates the
/// process and which the process did not handle). `pid` is the victim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FatalSignal {
    pub signal: Signal,
    /// Pid of the sender (0 when the kernel generated it, e.g. SIGSEGV).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub sender_pid: u32,
    /// Signal code (`si_code`), e.g. SI_USER, SI_KERNEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
}

/// The kernel's OOM killer chose a victim. `pid` is the victim.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OomKill {
    /// Resident memory of the victim when it was killed, in bytes, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Whether the kill was constrained to a memory cgroup (a service limit)
    /// rather than the whole host running out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub memcg: bool,
}

/// Address family of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// The two ends of a TCP connection, from the observed process's side:
/// `saddr:sport` is local, `daddr:dport` is the peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpEndpoints {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// The outcome of a TCP connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectResult {
    Ok,
    /// Failed with this errno (positive, Linux numbering; Windows sensors
    /// map WSA errors onto the same names).
    Err(i32),
}

impl ConnectResult {
    pub fn is_ok(self) -> bool {
        matches!(self, ConnectResult::Ok)
    }
    /// `ok`, or the errno name such as `ECONNREFUSED` (`E123` when unnamed).
    pub fn name(self) -> String {
        match self {
            ConnectResult::Ok => "ok".to_string(),
            ConnectResult::Err(e) => errno_name(e).map(str::to_string).unwrap_or_else(|| format!("E{e}")),
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("ok") {
            return Some(ConnectResult::Ok);
        }
        if let Some(n) = errno_from_name(s) {
            return Some(ConnectResult::Err(n));
        }
        s.strip_prefix('E').and_then(|n| n.parse().ok()).map(ConnectResult::Err)
    }
}

impl Serialize for ConnectResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for ConnectResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ConnectResult::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected `ok` or an errno name such as ECONNREFUSED, found `{s}`"
            ))
        })
    }
}

/// An outbound TCP connect finished (established or failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpConnect {
    #[serde(flatten)]
    pub endpoints: TcpEndpoints,
    pub result: ConnectResult,
    /// From the connect call (SYN sent) to established or failed.
    #[serde(default)]
    pub latency_ns: u64,
}

/// Which side closed a connection first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Closer {
    Local,
    Peer,
}

/// A TCP connection that was established ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpClose {
    #[serde(flatten)]
    pub endpoints: TcpEndpoints,
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
    #[serde(default)]
    pub retransmits: u32,
    /// From established to closed.
    #[serde(default)]
    pub duration_ns: u64,
    /// True when this side accepted the connection (it was inbound).
    #[serde(default, skip_serializing_if = "is_false")]
    pub inbound: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<Closer>,
}

/// A socket started listening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listen {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
}

/// Per-syscall statistics of one cgroup over one interval, aggregated in the
/// kernel. `cgroup_id` of the event says whose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyscallStats {
    /// Length of the interval these counts cover.
    #[serde(default)]
    pub interval_ns: u64,
    pub syscalls: Vec<SyscallStat>,
}

/// Number of log2 latency buckets kept per syscall: bucket `i` counts calls
/// that took `[2^i, 2^(i+1))` ns (bucket 0 also takes 0 ns); the last bucket
/// is open-ended (about 2 s and more).
pub const LATENCY_BUCKETS: usize = 32;

/// Statistics of one syscall over an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyscallStat {
    pub name: String,
    pub count: u64,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub p50_ns: u64,
    #[serde(default)]
    pub p99_ns: u64,
    /// Log2 latency histogram (see [`LATENCY_BUCKETS`]); trailing zero
    /// buckets may be omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_log2: Vec<u64>,
}

impl SyscallStat {
    /// Quantile `q` in (0, 1] of a log2 histogram, interpolated linearly
    /// inside the bucket that holds it.
    pub fn quantile_from_log2(buckets: &[u64], q: f64) -> u64 {
        let total: u64 = buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &n) in buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if seen + n >= rank {
                let lo = if i == 0 { 0.0 } else { (1u64 << i) as f64 };
                let hi = (1u64 << (i + 1).min(63)) as f64;
                let frac = (rank - seen) as f64 / n as f64;
                return (lo + (hi - lo) * frac) as u64;
            }
            seen += n;
        }
        0
    }
}

/// The result of one health probe of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthProbe {
    pub probe: String,
    pub ok: bool,
    #[serde(default)]
    pub latency_ns: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Where events were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossStage {
    /// The kernel could not reserve ring buffer space.
    Kernel,
    /// A user-space channel between pipeline stages was full.
    Channel,
    /// The platform's tracing facility reported lost events (ETW).
    Platform,
}

/// A marker that events were lost, so that silence and loss are never
/// confused: emitted into the stream at the point of the gap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    pub stage: LossStage,
    pub lost: u64,
}

/// Counters of lost events at every stage, monotonically increasing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossCounters {
    /// Ring buffer reservations that failed in the kernel.
    pub kernel: u64,
    /// Events dropped because a user-space channel was full.
    pub channel: u64,
    /// Events the platform reported lost (ETW buffers).
    pub platform: u64,
}

impl LossCounters {
    pub fn total(&self) -> u64 {
        self.kernel + self.channel + self.platform
    }
}

/// Nanoseconds since the Unix epoch of `t` (0 before it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The wall time `ns` nanoseconds after the Unix epoch.
pub fn from_unix_nanos(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 timestamp `{s}`: {e}")))
    }
}
