//! Turns ring buffer records (see [`crate::wire`]) into [`Event`]s. Pure code:
//! no I/O, tested with records built in memory.

use crate::wire::{self, Hdr};
use custos_event::{
    Closer, ConnectResult, Event, EventBody, Family, FatalSignal, Listen, OomKill, ProcessExit, ProcessStart,
    Signal, TcpClose, TcpConnect, TcpEndpoints,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts the kernel's boot-time clock (`bpf_ktime_get_boot_ns`) to wall
/// time with an offset measured once when the sensor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock ns since the Unix epoch minus boot-time ns, at one instant.
    pub wall_minus_boot_ns: i128,
}

impl Clock {
    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (boot_ns as i128 + self.wall_minus_boot_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as i128) as u64)
    }
}

/// Options that shape decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Arguments kept per exec; more are cut and `argv_truncated` is set.
    pub argv_max_args: u32,
}

/// Why a record could not be decoded (a kernel/user-space mismatch: counted
/// and logged, never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
}

pub fn decode(bytes: &[u8], clock: &Clock, opts: &DecodeOptions) -> Result<Event, DecodeError> {
    let hdr: Hdr = wire::read(bytes).ok_or(DecodeError::Short { kind: 0, len: bytes.len() })?;
    let short = || DecodeError::Short { kind: hdr.kind, len: bytes.len() };
    let body = match hdr.kind {
        wire::EV_EXEC => {
            let e: wire::ExecFixed = wire::read(bytes).ok_or_else(short)?;
            let fixed = std::mem::size_of::<wire::ExecFixed>();
            let args_len = (e.args_len as usize).min(wire::ARGS_LEN);
            let args = bytes.get(fixed..fixed + args_len).ok_or_else(short)?;
            let (argv, cut) = split_args(args, opts.argv_max_args as usize);
            let flen = (e.filename_len as usize).min(wire::FILENAME_LEN);
            EventBody::ProcessStart(ProcessStart {
                ppid: e.ppid,
                uid: e.uid,
                gid: e.gid,
                exe: wire::c_str(&e.filename[..flen]),
                argv,
                argv_truncated: cut || e.flags & wire::EXEC_ARGS_TRUNCATED != 0,
            })
        }
        wire::EV_EXIT => {
            let e: wire::Exit = wire::read(bytes).ok_or_else(short)?;
            let (exit_code, signal, core_dumped) = wait_status(e.exit_status);
            EventBody::ProcessExit(ProcessExit {
                exit_code,
                signal,
                core_dumped,
                lifetime_ns: e.lifetime_ns,
                ppid: e.ppid,
                oom_killed: false,
                exit_cause: None,
            })
        }
        wire::EV_SIGNAL => {
            let e: wire::Signal = wire::read(bytes).ok_or_else(short)?;
            EventBody::Signal(FatalSignal {
                signal: Signal(e.sig as i32),
                sender_pid: e.sender_pid,
                code: Some(e.code),
            })
        }
        wire::EV_OOM => {
            let e: wire::Oom = wire::read(bytes).ok_or_else(short)?;
            EventBody::OomKill(OomKill {
                rss_bytes: (e.rss_bytes > 0).then_some(e.rss_bytes),
                memcg: e.memcg != 0,
            })
        }
        wire::EV_CONNECT | wire::EV_ACCEPT | wire::EV_CLOSE | wire::EV_LISTEN => {
            let e: wire::Tcp = wire::read(bytes).ok_or_else(short)?;
            let endpoints = endpoints(&e)?;
            match hdr.kind {
                wire::EV_CONNECT => EventBody::TcpConnect(TcpConnect {
                    endpoints,
                    result: if e.err == 0 { ConnectResult::Ok } else { ConnectResult::Err(e.err) },
                    latency_ns: e.latency_ns,
                }),
                wire::EV_ACCEPT => EventBody::TcpAccept(endpoints),
                wire::EV_CLOSE => EventBody::TcpClose(TcpClose {
                    endpoints,
                    bytes_sent: e.bytes_sent,
                    bytes_received: e.bytes_received,
                    retransmits: e.retransmits,
                    duration_ns: e.latency_ns,
                    inbound: e.flags & wire::TCP_INBOUND != 0,
                    closed_by: if e.flags & wire::TCP_CLOSED_BY_LOCAL != 0 {
                        Some(Closer::Local)
                    } else if e.flags & wire::TCP_CLOSED_BY_PEER != 0 {
                        Some(Closer::Peer)
                    } else {
                        None
                    },
                }),
                _ => EventBody::Listen(Listen {
                    family: endpoints.family,
                    saddr: endpoints.saddr,
                    sport: endpoints.sport,
                }),
            }
        }
        k => return Err(DecodeError::UnknownKind(k)),
    };
    let mut event = Event::new(clock.wall(hdr.ts_boot_ns), body);
    event.pid = hdr.pid;
    event.tid = hdr.tid;
    event.comm = wire::c_str(&hdr.comm);
    event.cgroup_id = hdr.cgroup_id;
    Ok(event)
}

/// Splits the kernel's NUL-separated argument area into at most `max` args;
/// true when arguments were dropped.
pub fn split_args(area: &[u8], max: usize) -> (Vec<String>, bool) {
    // The area ends with the last argument's NUL; a missing final NUL means
    // the kernel cut the last argument.
    let area = area.strip_suffix(&[0]).unwrap_or(area);
    if area.is_empty() {
        return (Vec::new(), false);
    }
    let mut argv = Vec::new();
    let mut cut = false;
    for arg in area.split(|&b| b == 0) {
        if argv.len() == max {
            cut = true;
            break;
        }
        argv.push(String::from_utf8_lossy(arg).into_owned());
    }
    (argv, cut)
}

/// Splits a wait(2) status into (exit code, terminating signal, core dumped).
pub fn wait_status(status: i32) -> (Option<i32>, Option<Signal>, bool) {
    let sig = status & 0x7f;
    if sig == 0 {
        (Some((status >> 8) & 0xff), None, false)
    } else {
        (None, Some(Signal(sig)), status & 0x80 != 0)
    }
}

fn endpoints(e: &wire::Tcp) -> Result<TcpEndpoints, DecodeError> {
    let (family, saddr, daddr) = match e.family {
        wire::AF_INET => (Family::Ipv4, IpAddr::V4(v4(&e.saddr)), IpAddr::V4(v4(&e.daddr))),
        wire::AF_INET6 => {
            let s = Ipv6Addr::from(e.saddr);
            let d = Ipv6Addr::from(e.daddr);
            // An IPv6 socket talking IPv4 (v4-mapped addresses on both ends,
            // or a mapped peer on a wildcard socket) carries IPv4 traffic:
            // report it as such so both stacks aggregate the same way.
            match (s.to_ipv4_mapped(), d.to_ipv4_mapped()) {
                (Some(s4), Some(d4)) => (Family::Ipv4, IpAddr::V4(s4), IpAddr::V4(d4)),
                (None, Some(d4)) if s.is_unspecified() => {
                    (Family::Ipv4, IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(d4))
                }
                _ => (Family::Ipv6, IpAddr::V6(s), IpAddr::V6(d)),
            }
        }
        f => return Err(DecodeError::UnknownFamily(f)),
    };
    Ok(TcpEndpoints { family, saddr, sport: e.sport, daddr, dport: e.dport })
}

fn v4(b: &[u8; 16]) -> Ipv4Addr {
    // The kernel stores IPv4 addresses in network order.
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_event::EventKind;

    const CLOCK: Clock = Clock { wall_minus_boot_ns: 1_700_000_000_000_000_000 };
    const OPTS: DecodeOptions = DecodeOptions { argv_max_args: 3 };

    fn hdr(kind: u32) -> Hdr {
        let mut comm = [0u8; wire::COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        Hdr { kind, pid: 42, tid: 43, _pad0: 0, ts_boot_ns: 5_000, cgroup_id: 77, comm }
    }

    fn exec_record(args: &[u8], flags: u32) -> Vec<u8> {
        let mut filename = [0u8; wire::FILENAME_LEN];
        filename[..13].copy_from_slice(b"/usr/bin/curl");
        let e = wire::ExecFixed {
            hdr: hdr(wire::EV_EXEC),
            ppid: 1,
            uid: 1000,
            gid: 100,
            flags,
            filename_len: 13,
            args_len: args.len() as u32,
            filename,
        };
        let mut v = wire::bytes_of(&e).to_vec();
        v.extend_from_slice(args);
        v
    }

    #[test]
    fn exec_with_arguments() {
        let d = decode(&exec_record(b"curl\0-s\0http://x\0", 0), &CLOCK, &OPTS).unwrap();
        let e = d;
        assert_eq!((e.pid, e.tid, e.cgroup_id, e.comm.as_str()), (42, 43, 77, "curl"));
        assert_eq!(custos_event::unix_nanos(e.ts), 1_700_000_000_000_005_000);
        let EventBody::ProcessStart(p) = e.body else { panic!("wrong kind {:?}", e.kind()) };
        assert_eq!(p.exe, "/usr/bin/curl");
        assert_eq!(p.argv, ["curl", "-s", "http://x"]);
        assert!(!p.argv_truncated);
        assert_eq!((p.ppid, p.uid, p.gid), (1, 1000, 100));
    }

    #[test]
    fn exec_truncation_by_count_and_by_kernel() {
        let d = decode(&exec_record(b"a\0b\0c\0d\0", 0), &CLOCK, &OPTS).unwrap();
        let EventBody::ProcessStart(p) = d.body else { panic!() };
        assert_eq!(p.argv, ["a", "b", "c"]);
        assert!(p.argv_truncated);

        let d = decode(&exec_record(b"a\0bb", wire::EXEC_ARGS_TRUNCATED), &CLOCK, &OPTS).unwrap();
        let EventBody::ProcessStart(p) = d.body else { panic!() };
        assert_eq!(p.argv, ["a", "bb"]);
        assert!(p.argv_truncated);
    }

    #[test]
    fn exec_with_empty_argv_and_short_record() {
        let d = decode(&exec_record(b"", 0), &CLOCK, &OPTS).unwrap();
        let EventBody::ProcessStart(p) = d.body else { panic!() };
        assert!(p.argv.is_empty());
        let mut rec = exec_record(b"abc\0", 0);
        rec.truncate(rec.len() - 2);
        assert!(matches!(decode(&rec, &CLOCK, &OPTS), Err(DecodeError::Short { kind: 1, .. })));
        assert!(matches!(decode(&[1, 2], &CLOCK, &OPTS), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(wait_status(3 << 8), (Some(3), None, false));
        assert_eq!(wait_status(0), (Some(0), None, false));
        assert_eq!(wait_status(11), (None, Some(Signal(11)), false));
        assert_eq!(wait_status(11 | 0x80), (None, Some(Signal(11)), true));
        let e = wire::Exit { hdr: hdr(wire::EV_EXIT), ppid: 7, exit_status: 3 << 8, lifetime_ns: 99 };
        let d = decode(wire::bytes_of(&e), &CLOCK, &OPTS).unwrap();
        let EventBody::ProcessExit(x) = d.body else { panic!() };
        assert_eq!((x.exit_code, x.signal, x.lifetime_ns, x.ppid), (Some(3), None, 99, 7));
    }

    fn tcp(kind: u32, family: u16, saddr: [u8; 16], daddr: [u8; 16]) -> wire::Tcp {
        wire::Tcp {
            hdr: hdr(kind),
            family,
            sport: 40000,
            dport: 80,
            saddr,
            daddr,
            latency_ns: 1234,
            ..Default::default()
        }
    }

    fn v4bytes(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn tcp_records() {
        let mut t = tcp(wire::EV_CONNECT, wire::AF_INET, v4bytes([127, 0, 0, 1]), v4bytes([10, 1, 2, 3]));
        t.err = 111;
        let d = decode(wire::bytes_of(&t), &CLOCK, &OPTS).unwrap();
        let EventBody::TcpConnect(c) = d.body else { panic!() };
        assert_eq!(c.result.name(), "ECONNREFUSED");
        assert_eq!(c.endpoints.daddr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((c.endpoints.sport, c.endpoints.dport, c.latency_ns), (40000, 80, 1234));

        let mut t =
            tcp(wire::EV_CLOSE, wire::AF_INET6, Ipv6Addr::LOCALHOST.octets(), Ipv6Addr::LOCALHOST.octets());
        t.flags = wire::TCP_INBOUND | wire::TCP_CLOSED_BY_PEER;
        t.bytes_sent = 10;
        t.bytes_received = 20;
        t.retransmits = 2;
        let d = decode(wire::bytes_of(&t), &CLOCK, &OPTS).unwrap();
        let EventBody::TcpClose(c) = d.body else { panic!() };
        assert_eq!(c.endpoints.family, Family::Ipv6);
        assert_eq!((c.bytes_sent, c.bytes_received, c.retransmits, c.duration_ns), (10, 20, 2, 1234));
        assert!(c.inbound);
        assert_eq!(c.closed_by, Some(Closer::Peer));
    }

    #[test]
    fn v4_mapped_is_reported_as_ipv4() {
        let mapped = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        let t = tcp(wire::EV_ACCEPT, wire::AF_INET6, mapped, mapped);
        let d = decode(wire::bytes_of(&t), &CLOCK, &OPTS).unwrap();
        let EventBody::TcpAccept(e) = d.body else { panic!() };
        assert_eq!(e.family, Family::Ipv4);
        assert_eq!(e.saddr, IpAddr::V4(Ipv4Addr::LOCALHOST));

        let t = tcp(wire::EV_LISTEN, wire::AF_INET6, [0; 16], [0; 16]);
        let d = decode(wire::bytes_of(&t), &CLOCK, &OPTS).unwrap();
        assert_eq!(d.kind(), EventKind::Listen);
        let t = tcp(wire::EV_LISTEN, 99, [0; 16], [0; 16]);
        assert_eq!(decode(wire::bytes_of(&t), &CLOCK, &OPTS), Err(DecodeError::UnknownFamily(99)));
    }

    #[test]
    fn signal_and_oom_and_unknown() {
        let s = wire::Signal { hdr: hdr(wire::EV_SIGNAL), sig: 11, sender_pid: 0, code: 1, _pad0: 0 };
        let d = decode(wire::bytes_of(&s), &CLOCK, &OPTS).unwrap();
        let EventBody::Signal(f) = d.body else { panic!() };
        assert_eq!((f.signal.name(), f.sender_pid, f.code), ("SIGSEGV".to_string(), 0, Some(1)));
        let o = wire::Oom { hdr: hdr(wire::EV_OOM), rss_bytes: 5 << 20, memcg: 1, _pad0: 0 };
        let d = decode(wire::bytes_of(&o), &CLOCK, &OPTS).unwrap();
        assert_eq!(d.body, EventBody::OomKill(OomKill { rss_bytes: Some(5 << 20), memcg: true }));
        // 0: the kernel's layout of the counters was not recognised.
        let o = wire::Oom { hdr: hdr(wire::EV_OOM), rss_bytes: 0, memcg: 0, _pad0: 0 };
        let d = decode(wire::bytes_of(&o), &CLOCK, &OPTS).unwrap();
        assert_eq!(d.body, EventBody::OomKill(OomKill { rss_bytes: None, memcg: false }));
        let h = hdr(99);
        assert_eq!(decode(wire::bytes_of(&h), &CLOCK, &OPTS), Err(DecodeError::UnknownKind(99)));
    }
}
