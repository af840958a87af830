//! What a person sees on the terminal: one readable line per event for
//! `custos watch`, and the periodic per-service table of `custos run`, made
//! from what the counters fold ([`crate::counters`]) hands it.

use crate::counters::{Activity, CountersConsumer, Delta};
use crate::terminal::printable;
use custos_event::{Event, EventBody, LossCounters};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// One readable line for an event, like execsnoop/tcplife print. What a
/// process chose (its name, executable path, arguments) is escaped
/// ([`printable`]): it reaches a terminal.
pub fn event_line(e: &Event) -> String {
    let ts = humantime::format_rfc3339_millis(e.ts).to_string();
    let time = ts.get(11..23).unwrap_or(&ts);
    let service = printable(e.service.as_deref().unwrap_or("-"));
    let comm = printable(&e.comm);
    let mut line = format!("{time} {service:<16.16} {:>7} {comm:<15.15} {:<13}", e.pid, e.kind().as_str());
    let detail = match &e.body {
        EventBody::ProcessStart(s) => {
            let exe = if s.exe.is_empty() { "?".into() } else { printable(&s.exe) };
            let mut d = format!("ppid={} uid={} {exe}", s.ppid, s.uid);
            if !s.argv.is_empty() {
                let argv: Vec<_> = s.argv.iter().map(|a| printable(a)).collect();
                let _ = write!(d, " [{}]", argv.join(" "));
            }
            if s.argv_truncated {
                d.push_str(" (argv truncated)");
            }
            d
        }
        EventBody::ProcessExit(x) => {
            let how = match (x.signal, x.exit_code) {
                (Some(sig), _) => {
                    format!("killed by {sig}{}", if x.core_dumped { " (core dumped)" } else { "" })
                }
                (None, Some(c)) => format!("code={c}"),
                (None, None) => "code=?".into(),
            };
            let oom = if x.oom_killed { " oom-killed" } else { "" };
            format!("{how}{oom} after {}", fmt_ns(x.lifetime_ns))
        }
        EventBody::Signal(s) => format!("{} from pid {}", s.signal, s.sender_pid),
        EventBody::OomKill(o) => match o.rss_bytes {
            Some(b) => format!("rss={}KiB{}", b / 1024, if o.memcg { " (cgroup limit)" } else { "" }),
            None => String::new(),
        },
        EventBody::TcpConnect(c) => format!(
            "{} -> {} {} in {}",
            addr(c.endpoints.saddr, c.endpoints.sport),
            addr(c.endpoints.daddr, c.endpoints.dport),
            c.result.name(),
            fmt_ns(c.latency_ns)
        ),
        EventBody::TcpAccept(t) => format!("{} <- {}", addr(t.saddr, t.sport), addr(t.daddr, t.dport)),
        EventBody::TcpClose(c) => format!(
            "{} {} {} tx={}B rx={}B retrans={} after {}",
            addr(c.endpoints.saddr, c.endpoints.sport),
            if c.inbound { "<-" } else { "->" },
            addr(c.endpoints.daddr, c.endpoints.dport),
            c.bytes_sent,
            c.bytes_received,
            c.retransmits,
            fmt_ns(c.duration_ns)
        ),
        EventBody::Listen(l) => addr(l.saddr, l.sport),
        EventBody::SyscallStats(s) => {
            let mut top: Vec<_> = s.syscalls.iter().collect();
            top.sort_by_key(|c| std::cmp::Reverse(c.count));
            let parts: Vec<String> = top
                .iter()
                .take(5)
                .map(|c| format!("{}={} err={} p99={}", c.name, c.count, c.errors, fmt_ns(c.p99_ns)))
                .collect();
            format!("cgroup={} {}", e.cgroup_id, parts.join(" "))
        }
        EventBody::HealthProbe(h) => {
            format!(
                "{} {} in {} {}",
                h.probe,
                if h.ok { "ok" } else { "FAILED" },
                fmt_ns(h.latency_ns),
                printable(&h.detail)
            )
        }
        EventBody::Loss(l) => format!("{} events lost ({:?})", l.lost, l.stage),
    };
    line.push(' ');
    line.push_str(&detail);
    line
}

fn addr(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// A short human duration: `850ns`, `12.3µs`, `4.1ms`, `2.0s`, `3m05s`.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        1_000_000_000..120_000_000_000 => format!("{:.1}s", ns as f64 / 1e9),
        _ => {
            let s = ns / 1_000_000_000;
            format!("{}m{:02}s", s / 60, s % 60)
        }
    }
}

/// Whether a service did nothing worth a row in this interval.
fn is_quiet(a: &Activity) -> bool {
    let c = &a.counts;
    activity(a) == 0
        && c.failed_exits + c.signals + c.oom_kills + c.connect_errors + c.bytes + c.health_failures == 0
}

/// How busy a service was: what the rows are sorted by.
fn activity(a: &Activity) -> u64 {
    let c = &a.counts;
    c.starts + c.exits + c.connects + c.accepts + a.syscalls.values().map(|c| c.0).sum::<u64>()
}

/// The live per-service table of `custos run`.
#[derive(Debug, Default)]
pub struct Summary {
    /// Each service's activity in this interval, added up from the
    /// counters fold's deltas.
    services: BTreeMap<String, Activity>,
    /// Always listed, even when quiet; other services only in the
    /// intervals they did something (a host managed whole has a row per
    /// command ever run otherwise).
    configured: BTreeSet<String>,
    events: u64,
    since: Option<SystemTime>,
}

/// Rows shown at most: the busiest services; the rest are counted.
const MAX_ROWS: usize = 20;

impl Summary {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a configured service appear even before it has events.
    pub fn ensure(&mut self, service: &str) {
        self.configured.insert(service.to_string());
        self.services.entry(service.to_string()).or_default();
    }

    /// The configured services after a reload: the ones removed are listed
    /// only while they still have something to show.
    pub fn set_configured(&mut self, services: &[String]) {
        self.configured.clear();
        for s in services {
            self.ensure(s);
        }
    }

    /// Adds what the counters fold counted since its previous publish.
    pub fn add(&mut self, d: &Delta) {
        // Gap markers count as events in the rate, as they always have.
        self.events += d.events + d.markers;
        for (name, a) in &d.services {
            match self.services.get_mut(name) {
                Some(s) => s.add(a),
                None => {
                    self.services.insert(name.clone(), a.clone());
                }
            }
        }
    }

    /// Renders the table for the interval ending `now` and starts a new one.
    pub fn render_and_reset(&mut self, now: SystemTime, loss: LossCounters) -> String {
        let elapsed = self.since.and_then(|s| now.duration_since(s).ok()).unwrap_or(Duration::from_secs(1));
        let rate = self.events as f64 / elapsed.as_secs_f64().max(1e-3);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "── custos {}  {:.0} events/s  lost: kernel {} channel {} platform {} ──",
            humantime::format_rfc3339_seconds(now),
            rate,
            loss.kernel,
            loss.channel,
            loss.platform
        );
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:>6} {:>5} {:>8} {:>6} {:>7} {:>9}  TOP SYSCALLS (errors)",
            "SERVICE", "STARTS", "EXITS", "FAIL", "CONNECTS", "CFAIL", "ACCEPTS", "BYTES"
        );
        let mut rows: Vec<(&String, &Activity)> =
            self.services.iter().filter(|(n, a)| !is_quiet(a) || self.configured.contains(*n)).collect();
        rows.sort_by(|a, b| activity(b.1).cmp(&activity(a.1)).then(a.0.cmp(b.0)));
        for (name, a) in rows.iter().take(MAX_ROWS) {
            let c = &a.counts;
            let mut sys: Vec<(&String, &(u64, u64))> = a.syscalls.iter().collect();
            sys.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
            let top: Vec<String> = sys
                .iter()
                .take(3)
                .map(|(n, (count, err))| {
                    if *err > 0 {
                        format!("{n} {count} ({:.1}%)", *err as f64 * 100.0 / (*count).max(1) as f64)
                    } else {
                        format!("{n} {count}")
                    }
                })
                .collect();
            let mut flags = String::new();
            if c.oom_kills > 0 {
                let _ = write!(flags, " OOM×{}", c.oom_kills);
            }
            if c.signals > 0 {
                let _ = write!(flags, " SIG×{}", c.signals);
            }
            if c.health_failures > 0 {
                let _ = write!(flags, " UNHEALTHY×{}", c.health_failures);
            }
            let _ = writeln!(
                out,
                "{:<24.24} {:>6} {:>6} {:>5} {:>8} {:>6} {:>7} {:>9}  {}{}",
                // Named after `comm` when nothing better is known.
                printable(name),
                c.starts,
                c.exits,
                c.failed_exits,
                c.connects,
                c.connect_errors,
                c.accepts,
                human_bytes(c.bytes),
                top.join(", "),
                flags
            );
        }
        if rows.len() > MAX_ROWS {
            let _ = writeln!(out, "… and {} quieter services", rows.len() - MAX_ROWS);
        }
        if rows.is_empty() {
            let _ = writeln!(out, "(no activity from managed services in this interval)");
        }
        let configured = &self.configured;
        self.services.retain(|n, _| configured.contains(n));
        for a in self.services.values_mut() {
            *a = Activity::default();
        }
        self.events = 0;
        self.since = Some(now);
        out
    }
}

/// The table reads the per-syscall breakdown; printing is the caller's.
impl CountersConsumer for Summary {
    fn wants_syscalls(&self) -> bool {
        true
    }
    fn on_delta(&mut self, delta: &Delta) {
        self.add(delta);
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b}B"),
        1024..1_048_576 => format!("{:.1}K", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}M", b as f64 / 1_048_576.0),
        _ => format!("{:.1}G", b as f64 / 1_073_741_824.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Fold;
    use custos_event::*;
    use std::time::UNIX_EPOCH;

    /// One event through the counters fold into the table, as in `custos run`.
    fn record(s: &mut Summary, e: &Event) {
        let mut fold = Fold::new(s.wants_syscalls());
        fold.record(e);
        fold.publish(s);
    }

    fn ev(service: &str, body: EventBody) -> Event {
        let mut e = Event::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000), body);
        e.service = Some(service.into());
        e.pid = 42;
        e.comm = "api".into();
        e
    }

    fn connect(ok: bool) -> EventBody {
        EventBody::TcpConnect(TcpConnect {
            endpoints: TcpEndpoints {
                family: Family::Ipv4,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 5000,
                daddr: "127.0.0.1".parse().unwrap(),
                dport: 80,
            },
            result: if ok { ConnectResult::Ok } else { ConnectResult::Err(111) },
            latency_ns: 25_000,
        })
    }

    #[test]
    fn table_counts_per_service() {
        let mut s = Summary::new();
        s.ensure("idle");
        record(&mut s, &ev("api", EventBody::ProcessStart(ProcessStart::default())));
        record(
            &mut s,
            &ev("api", EventBody::ProcessExit(ProcessExit { exit_code: Some(3), ..Default::default() })),
        );
        record(&mut s, &ev("api", connect(true)));
        record(&mut s, &ev("api", connect(false)));
        record(
            &mut s,
            &ev(
                "api",
                EventBody::SyscallStats(SyscallStats {
                    interval_ns: 1,
                    syscalls: vec![SyscallStat {
                        name: "read".into(),
                        count: 200,
                        errors: 50,
                        ..Default::default()
                    }],
                }),
            ),
        );
        let t = s.render_and_reset(
            UNIX_EPOCH + Duration::from_secs(1_700_000_005),
            LossCounters { kernel: 2, ..Default::default() },
        );
        let api = t.lines().find(|l| l.starts_with("api ")).expect(&t);
        let cols: Vec<&str> = api.split_whitespace().collect();
        assert_eq!(&cols[1..7], ["1", "1", "1", "2", "1", "0"], "{api}");
        assert!(api.contains("read 200 (25.0%)"), "{api}");
        assert!(t.contains("lost: kernel 2"), "{t}");
        assert!(t.lines().any(|l| l.starts_with("idle ")), "configured services are listed: {t}");
        let again =
            s.render_and_reset(UNIX_EPOCH + Duration::from_secs(1_700_000_010), LossCounters::default());
        assert!(
            !again.lines().any(|l| l.starts_with("api ")),
            "a quiet unconfigured service is not listed: {again}"
        );
        assert!(again.lines().any(|l| l.starts_with("idle ")), "a quiet configured one is: {again}");
        record(&mut s, &ev("api", connect(true)));
        let third =
            s.render_and_reset(UNIX_EPOCH + Duration::from_secs(1_700_000_015), LossCounters::default());
        let api = third.lines().find(|l| l.starts_with("api ")).expect(&third);
        assert_eq!(api.split_whitespace().nth(4), Some("1"), "counts are per interval: {api}");
        // A reload that drops `idle` and adds `db`.
        s.set_configured(&["db".to_string()]);
        let fourth =
            s.render_and_reset(UNIX_EPOCH + Duration::from_secs(1_700_000_020), LossCounters::default());
        assert!(fourth.lines().any(|l| l.starts_with("db ")), "{fourth}");
        assert!(!fourth.lines().any(|l| l.starts_with("idle ")), "{fourth}");
    }

    #[test]
    fn lines_are_readable() {
        let l = event_line(&ev("api", connect(false)));
        assert!(l.contains("127.0.0.1:5000 -> 127.0.0.1:80 ECONNREFUSED in 25.0µs"), "{l}");
        let l = event_line(&ev(
            "api",
            EventBody::ProcessExit(ProcessExit {
                signal: Some(Signal(11)),
                core_dumped: true,
                lifetime_ns: 2_000_000_000,
                ..Default::default()
            }),
        ));
        assert!(l.contains("killed by SIGSEGV (core dumped) after 2.0s"), "{l}");
        assert_eq!(fmt_ns(185_000_000_000), "3m05s");
    }
}
