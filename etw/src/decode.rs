//! Pure decoding of ETW [`Record`]s into custos events.
//!
//! The decoder keeps a little state, bounded: start times of live processes
//! (for `lifetime_ns` of exits) and open TCP connections (to sum the bytes
//! and retransmits that Kernel-Network reports per segment into the
//! `tcp_close` event). A record that lacks a field custos needs, or carries
//! one of the wrong type or shape, is counted and skipped: never a panic.

use crate::cmdline::split_command_line;
use crate::providers::{self, net_event, process_opcode};
use crate::record::{filetime_to_system, Record, Value};
use crate::winerr;
use custos_event::{
    ConnectResult, Event, EventBody, Family, ProcessExit, ProcessStart, TcpClose, TcpConnect, TcpEndpoints,
};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

/// Bounds of the decoder's state.
#[derive(Debug, Clone, Copy)]
pub struct DecoderConfig {
    /// Arguments kept per process start; more are cut and flagged.
    pub argv_max_args: usize,
    /// Live processes remembered for exit lifetimes.
    pub max_processes: usize,
    /// Open connections remembered for byte counts, and connects in
    /// progress remembered for their latency (each).
    pub max_connections: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig { argv_max_args: 32, max_processes: 65_536, max_connections: 65_536 }
    }
}

/// What decoding did, cumulatively. Monotonic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Records that produced an event or updated state.
    pub decoded: u64,
    /// Records of events custos does not use.
    pub ignored: u64,
    /// Records missing a needed field, or with a field too short.
    pub truncated: u64,
    /// Records with a field of the wrong type or an impossible value.
    pub malformed: u64,
    /// Failed connects whose NTSTATUS has no errno name (reported as EIO).
    pub unmapped_status: u64,
    /// Connections or processes forgotten because the tables were full.
    pub evicted: u64,
}

/// A process seen by the session's rundown: it existed before custos looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingProcess {
    pub pid: u32,
    pub ppid: u32,
    pub image: String,
}

/// The result of decoding one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Event(Box<Event>),
    /// A process from the start-of-session rundown (for scoping, no event).
    Existing(ExistingProcess),
    /// The record only updated the decoder's state (bytes of a connection).
    Updated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Truncated,
    Malformed,
    Unused,
}

type Res<T> = Result<T, Problem>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    pid: u32,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
}

#[derive(Debug, Clone, Default)]
struct Conn {
    since: Option<SystemTime>,
    inbound: bool,
    bytes_sent: u64,
    bytes_received: u64,
    retransmits: u32,
    seq: u64,
}

#[derive(Debug, Clone)]
struct Proc {
    start: SystemTime,
    ppid: u32,
    comm: String,
    seq: u64,
}

/// Turns records into events; see the module documentation.
#[derive(Debug, Default)]
pub struct Decoder {
    config: DecoderConfig,
    stats: DecodeStats,
    procs: HashMap<u32, Proc>,
    proc_order: VecDeque<(u32, u64)>,
    conns: HashMap<ConnKey, Conn>,
    conn_order: VecDeque<(ConnKey, u64)>,
    /// Connects requested (TCPIP 1002) and not yet established or failed,
    /// by endpoints (the request carries no pid), with their start.
    connecting: HashMap<Endpoints, (SystemTime, u64)>,
    connecting_order: VecDeque<(Endpoints, u64)>,
    seq: u64,
}

/// `(local address, local port, remote address, remote port)`.
type Endpoints = (IpAddr, u16, IpAddr, u16);

impl Decoder {
    pub fn new(config: DecoderConfig) -> Self {
        Decoder { config, ..Decoder::default() }
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Decodes one record; `None` when it was skipped (and counted).
    pub fn decode(&mut self, rec: &Record) -> Option<Decoded> {
        let result = if rec.provider == providers::PROCESS_CLASS {
            self.process(rec)
        } else if rec.provider == providers::KERNEL_NETWORK {
            self.network(rec)
        } else if rec.provider == providers::TCPIP && rec.event_id == providers::TCPIP_CONNECT_FAILURE {
            self.connect_failure(rec)
        } else if rec.provider == providers::TCPIP && rec.event_id == providers::TCPIP_REQUEST_CONNECT {
            self.connect_request(rec)
        } else {
            Err(Problem::Unused)
        };
        match result {
            Ok(d) => {
                self.stats.decoded += 1;
                Some(d)
            }
            Err(Problem::Unused) => {
                self.stats.ignored += 1;
                None
            }
            Err(Problem::Truncated) => {
                self.stats.truncated += 1;
                None
            }
            Err(Problem::Malformed) => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    fn process(&mut self, rec: &Record) -> Res<Decoded> {
        if !matches!(rec.opcode, process_opcode::START | process_opcode::END | process_opcode::DC_START) {
            return Err(Problem::Unused);
        }
        let ts = timestamp(rec)?;
        let pid = u32_field(rec, "ProcessId")?;
        let ppid = opt(u32_field(rec, "ParentId"))?.unwrap_or(0);
        let image = opt(str_field(rec, "ImageFileName"))?.unwrap_or_default();
        match rec.opcode {
            process_opcode::START | process_opcode::DC_START => {
                let cmdline = opt(str_field(rec, "CommandLine"))?.unwrap_or_default();
                let (argv, argv_truncated) = split_command_line(cmdline, self.config.argv_max_args.max(1));
                let exe = match argv.first() {
                    Some(a0) if is_absolute_windows_path(a0) => a0.clone(),
                    _ => image.to_string(),
                };
                let comm = base_name(if exe.is_empty() { image } else { &exe }).to_string();
                self.remember_process(pid, Proc { start: ts, ppid, comm: comm.clone(), seq: 0 });
                if rec.opcode == process_opcode::DC_START {
                    return Ok(Decoded::Existing(ExistingProcess { pid, ppid, image: exe }));
                }
                let body =
                    EventBody::ProcessStart(ProcessStart { ppid, uid: 0, gid: 0, exe, argv, argv_truncated });
                Ok(Decoded::Event(Box::new(event(ts, body, pid, rec.tid, comm))))
            }
            process_opcode::END => {
                let code = match rec.props.get("ExitStatus") {
                    None => return Err(Problem::Truncated),
                    // The kernel logs the NTSTATUS/exit code as a 32-bit value;
                    // its sign is the C runtime's view of it.
                    Some(Value::I32(v)) => *v,
                    Some(Value::U32(v)) => *v as i32,
                    Some(_) => return Err(Problem::Malformed),
                };
                let known = self.procs.remove(&pid);
                let (lifetime_ns, comm, ppid) = match known {
                    Some(p) => (
                        ts.duration_since(p.start).map(|d| d.as_nanos() as u64).unwrap_or(0),
                        p.comm,
                        if ppid != 0 { ppid } else { p.ppid },
                    ),
                    None => (0, base_name(image).to_string(), ppid),
                };
                let body = EventBody::ProcessExit(ProcessExit {
                    exit_code: Some(code),
                    signal: None,
                    core_dumped: false,
                    lifetime_ns,
                    ppid,
                    oom_killed: false,
                    exit_cause: None,
                });
                Ok(Decoded::Event(Box::new(event(ts, body, pid, rec.tid, comm))))
            }
            _ => Err(Problem::Unused),
        }
    }

    fn network(&mut self, rec: &Record) -> Res<Decoded> {
        let (id, family) = match rec.event_id {
            id @ net_event::SEND..=net_event::ACCEPT => (id, Family::Ipv4),
            id if id >= net_event::V6_OFFSET
                && (net_event::SEND..=net_event::ACCEPT).contains(&(id - net_event::V6_OFFSET)) =>
            {
                (id - net_event::V6_OFFSET, Family::Ipv6)
            }
            _ => return Err(Problem::Unused),
        };
        let ts = timestamp(rec)?;
        let pid = u32_field(rec, "PID")?;
        let size = u32_field(rec, "size")?;
        let (saddr, daddr) = match family {
            Family::Ipv4 => (ipv4_field(rec, "saddr")?, ipv4_field(rec, "daddr")?),
            Family::Ipv6 => (ipv6_field(rec, "saddr")?, ipv6_field(rec, "daddr")?),
        };
        let sport = port_field(rec, "sport")?;
        let dport = port_field(rec, "dport")?;
        let key = ConnKey { pid, saddr, sport, daddr, dport };
        let endpoints = TcpEndpoints { family, saddr, sport, daddr, dport };
        match id {
            net_event::CONNECT | net_event::ACCEPT => {
                let inbound = id == net_event::ACCEPT;
                self.open_connection(key, Conn { since: Some(ts), inbound, ..Conn::default() });
                let body = if inbound {
                    EventBody::TcpAccept(endpoints)
                } else {
                    // Kernel-Network reports the connect once established; its
                    // start is the TCPIP request with the same endpoints (0
                    // when that was not seen).
                    let latency_ns = self.connect_latency((saddr, sport, daddr, dport), ts);
                    EventBody::TcpConnect(TcpConnect { endpoints, result: ConnectResult::Ok, latency_ns })
                };
                Ok(Decoded::Event(Box::new(event(ts, body, pid, 0, String::new()))))
            }
            net_event::SEND | net_event::RECV | net_event::RETRANSMIT => {
                let add = |c: &mut Conn| match id {
                    net_event::SEND => c.bytes_sent += u64::from(size),
                    net_event::RECV => c.bytes_received += u64::from(size),
                    _ => c.retransmits = c.retransmits.saturating_add(1),
                };
                match self.conns.get_mut(&key) {
                    Some(c) => add(c),
                    None => {
                        // Established before the session started.
                        let mut c = Conn::default();
                        add(&mut c);
                        self.open_connection(key, c);
                    }
                }
                Ok(Decoded::Updated)
            }
            _ => {
                let c = self.conns.remove(&key).unwrap_or_default();
                let duration_ns =
                    c.since.and_then(|s| ts.duration_since(s).ok()).map(|d| d.as_nanos() as u64).unwrap_or(0);
                let body = EventBody::TcpClose(TcpClose {
                    endpoints,
                    bytes_sent: c.bytes_sent,
                    bytes_received: c.bytes_received,
                    retransmits: c.retransmits,
                    duration_ns,
                    inbound: c.inbound,
                    closed_by: None,
                });
                Ok(Decoded::Event(Box::new(event(ts, body, pid, 0, String::new()))))
            }
        }
    }

    fn connect_failure(&mut self, rec: &Record) -> Res<Decoded> {
        let ts = timestamp(rec)?;
        let pid = u32_field(rec, "ProcessId")?;
        let status = u32_field(rec, "Status")?;
        let (sfam, saddr, sport) = sockaddr(bytes_field(rec, "LocalAddress")?)?;
        let (dfam, daddr, dport) = sockaddr(bytes_field(rec, "RemoteAddress")?)?;
        if sfam != dfam {
            return Err(Problem::Malformed);
        }
        let (result, mapped) = winerr::connect_result(status);
        if !mapped {
            self.stats.unmapped_status += 1;
        }
        let latency_ns = self.connect_latency((saddr, sport, daddr, dport), ts);
        let body = EventBody::TcpConnect(TcpConnect {
            endpoints: TcpEndpoints { family: dfam, saddr, sport, daddr, dport },
            result,
            latency_ns,
        });
        Ok(Decoded::Event(Box::new(event(ts, body, pid, 0, String::new()))))
    }

    fn connect_request(&mut self, rec: &Record) -> Res<Decoded> {
        let ts = timestamp(rec)?;
        let (sfam, saddr, sport) = sockaddr(bytes_field(rec, "LocalAddress")?)?;
        let (dfam, daddr, dport) = sockaddr(bytes_field(rec, "RemoteAddress")?)?;
        if sfam != dfam {
            return Err(Problem::Malformed);
        }
        let seq = self.next_seq();
        let key = (saddr, sport, daddr, dport);
        self.connecting.insert(key, (ts, seq));
        self.connecting_order.push_back((key, seq));
        while self.connecting.len() > self.config.max_connections {
            let Some((old, seq)) = self.connecting_order.pop_front() else { break };
            if self.connecting.get(&old).is_some_and(|(_, s)| *s == seq) {
                self.connecting.remove(&old);
                self.stats.evicted += 1;
            }
        }
        if self.connecting_order.len() > 2 * self.config.max_connections.max(1) {
            let connecting = &self.connecting;
            self.connecting_order.retain(|(k, seq)| connecting.get(k).is_some_and(|(_, s)| s == seq));
        }
        Ok(Decoded::Updated)
    }

    /// Time since the connect with these endpoints was requested, and
    /// forgets the request; 0 when it was not seen.
    fn connect_latency(&mut self, endpoints: Endpoints, now: SystemTime) -> u64 {
        self.connecting
            .remove(&endpoints)
            .and_then(|(start, _)| now.duration_since(start).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn remember_process(&mut self, pid: u32, mut p: Proc) {
        p.seq = self.next_seq();
        self.proc_order.push_back((pid, p.seq));
        self.procs.insert(pid, p);
        while self.procs.len() > self.config.max_processes {
            let Some((old, seq)) = self.proc_order.pop_front() else { break };
            if self.procs.get(&old).is_some_and(|p| p.seq == seq) {
                self.procs.remove(&old);
                self.stats.evicted += 1;
            }
        }
        // Entries of exited processes linger in the order queue; keep it bounded.
        if self.proc_order.len() > 2 * self.config.max_processes.max(1) {
            let procs = &self.procs;
            self.proc_order.retain(|(pid, seq)| procs.get(pid).is_some_and(|p| p.seq == *seq));
        }
    }

    fn open_connection(&mut self, key: ConnKey, mut c: Conn) {
        c.seq = self.next_seq();
        self.conn_order.push_back((key, c.seq));
        self.conns.insert(key, c);
        while self.conns.len() > self.config.max_connections {
            let Some((old, seq)) = self.conn_order.pop_front() else { break };
            if self.conns.get(&old).is_some_and(|c| c.seq == seq) {
                self.conns.remove(&old);
                self.stats.evicted += 1;
            }
        }
        if self.conn_order.len() > 2 * self.config.max_connections.max(1) {
            let conns = &self.conns;
            self.conn_order.retain(|(k, seq)| conns.get(k).is_some_and(|c| c.seq == *seq));
        }
    }
}

fn event(ts: SystemTime, body: EventBody, pid: u32, tid: u32, comm: String) -> Event {
    let mut e = Event::new(ts, body);
    e.pid = pid;
    e.tid = tid;
    e.comm = comm;
    e
}

fn timestamp(rec: &Record) -> Res<SystemTime> {
    filetime_to_system(rec.filetime).ok_or(Problem::Malformed)
}

/// A missing optional field is fine; a present one of the wrong type is not.
fn opt<T>(r: Res<T>) -> Res<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Problem::Truncated) => Ok(None),
        Err(e) => Err(e),
    }
}

fn u32_field(rec: &Record, name: &str) -> Res<u32> {
    match rec.props.get(name) {
        None => Err(Problem::Truncated),
        Some(Value::U32(v)) => Ok(*v),
        Some(Value::U16(v)) => Ok((*v).into()),
        Some(Value::U8(v)) => Ok((*v).into()),
        Some(_) => Err(Problem::Malformed),
    }
}

fn str_field<'r>(rec: &'r Record, name: &str) -> Res<&'r str> {
    match rec.props.get(name) {
        None => Err(Problem::Truncated),
        Some(Value::Str(s)) => Ok(s),
        Some(_) => Err(Problem::Malformed),
    }
}

fn bytes_field<'r>(rec: &'r Record, name: &str) -> Res<&'r [u8]> {
    match rec.props.get(name) {
        None => Err(Problem::Truncated),
        Some(Value::Bytes(b)) => Ok(b),
        Some(_) => Err(Problem::Malformed),
    }
}

/// Kernel-Network ports are `win:Port`: network byte order in a `u16` that
/// was read little-endian.
fn port_field(rec: &Record, name: &str) -> Res<u16> {
    match rec.props.get(name) {
        None => Err(Problem::Truncated),
        Some(Value::U16(v)) => Ok(u16::from_be_bytes(v.to_le_bytes())),
        Some(_) => Err(Problem::Malformed),
    }
}

/// Kernel-Network IPv4 addresses are `win:IPv4`: the four address bytes in
/// network order, read as a little-endian `u32`.
fn ipv4_field(rec: &Record, name: &str) -> Res<IpAddr> {
    match rec.props.get(name) {
        None => Err(Problem::Truncated),
        Some(Value::U32(v)) => Ok(IpAddr::V4(Ipv4Addr::from(v.to_le_bytes()))),
        Some(_) => Err(Problem::Malformed),
    }
}

fn ipv6_field(rec: &Record, name: &str) -> Res<IpAddr> {
    let b = bytes_field(rec, name)?;
    match <[u8; 16]>::try_from(b) {
        Ok(a) => Ok(IpAddr::V6(Ipv6Addr::from(a))),
        Err(_) if b.len() < 16 => Err(Problem::Truncated),
        Err(_) => Err(Problem::Malformed),
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 23;

/// A Windows `SOCKADDR_IN` / `SOCKADDR_IN6` as Microsoft-Windows-TCPIP logs it.
fn sockaddr(b: &[u8]) -> Res<(Family, IpAddr, u16)> {
    let fam = b.get(0..2).ok_or(Problem::Truncated)?;
    let port_at = |b: &[u8]| b.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]])).ok_or(Problem::Truncated);
    match u16::from_le_bytes([fam[0], fam[1]]) {
        AF_INET => {
            let a: [u8; 4] =
                b.get(4..8).ok_or(Problem::Truncated)?.try_into().map_err(|_| Problem::Truncated)?;
            Ok((Family::Ipv4, IpAddr::V4(Ipv4Addr::from(a)), port_at(b)?))
        }
        AF_INET6 => {
            let a: [u8; 16] =
                b.get(8..24).ok_or(Problem::Truncated)?.try_into().map_err(|_| Problem::Truncated)?;
            Ok((Family::Ipv6, IpAddr::V6(Ipv6Addr::from(a)), port_at(b)?))
        }
        _ => Err(Problem::Malformed),
    }
}

/// `C:\...`, `\\server\share\...` or `\\?\...`.
fn is_absolute_windows_path(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with(r"\\") || (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\')
}

/// The file name of a Windows or Unix path.
pub fn base_name(path: &str) -> &str {
    path.rsplit(['\\', '/']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests;
