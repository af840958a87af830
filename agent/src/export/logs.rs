//! Event log records (process start/exit, fatal signals, OOM kills, failed
//! connects, failed probes, loss) and the per-service rate limit on them.

use super::encode::{any, kv, resource, scope, ServiceIdentity};
use super::record::{AttrValue, HostInfo, LogRecord, Severity};
use custos_event::{Event, EventBody, ExitClass, TcpEndpoints};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord as ProtoLogRecord, ResourceLogs, ScopeLogs};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

fn endpoint_attrs(r: LogRecord, e: &TcpEndpoints) -> LogRecord {
    r.attr("network.transport", "tcp")
        .attr("network.type", e.family.as_str())
        .attr("network.local.address", e.saddr.to_string())
        .attr("network.local.port", e.sport)
        .attr("network.peer.address", e.daddr.to_string())
        .attr("network.peer.port", e.dport)
}

fn process_attrs(r: LogRecord, ev: &Event) -> LogRecord {
    let mut r = r.attr("process.pid", ev.pid);
    if !ev.comm.is_empty() {
        r = r.attr("process.executable.name", ev.comm.as_str());
    }
    if ev.cgroup_id != 0 {
        r = r.attr("custos.cgroup.id", ev.cgroup_id);
    }
    r
}

/// The log record an event is worth, if any. Successful connects, accepts,
/// closes and syscall statistics are metrics only.
pub fn event_log(ev: &Event) -> Option<LogRecord> {
    let service = ev.service.clone();
    let who =
        if ev.comm.is_empty() { format!("pid {}", ev.pid) } else { format!("{} (pid {})", ev.comm, ev.pid) };
    let rec = match &ev.body {
        EventBody::ProcessStart(p) => {
            let mut r =
                LogRecord::new("custos.process.start", Severity::Info, service, format!("{who} started."))
                    .attr("process.parent_pid", p.ppid)
                    .attr("process.user.id", p.uid)
                    .attr("process.creation.time", humantime::format_rfc3339_nanos(ev.ts).to_string());
            if !p.exe.is_empty() {
                r = r.attr("process.executable.path", p.exe.as_str());
            }
            if !p.argv.is_empty() {
                r = r.attr("process.command_args", p.argv.clone());
            }
            if p.argv_truncated {
                r = r.attr("custos.process.command_args_truncated", true);
            }
            r
        }
        EventBody::ProcessExit(x) => {
            let class = x.class();
            let (severity, how) = match class {
                ExitClass::Clean => (Severity::Info, "exited cleanly".to_string()),
                ExitClass::Error => {
                    (Severity::Warn, format!("exited with code {}", x.exit_code.unwrap_or(-1)))
                }
                ExitClass::Signal => (
                    Severity::Error,
                    format!("was killed by {}", x.signal.map(|s| s.to_string()).unwrap_or_default()),
                ),
                ExitClass::Oom => (Severity::Error, "was killed by the OOM killer".to_string()),
            };
            let mut r = LogRecord::new("custos.process.exit", severity, service, format!("{who} {how}."))
                .attr("custos.exit.class", class.as_str())
                .attr("process.exit.time", humantime::format_rfc3339_nanos(ev.ts).to_string())
                .attr("custos.process.lifetime", x.lifetime_ns as f64 / 1e9);
            if let Some(c) = x.exit_code {
                r = r.attr("process.exit.code", c);
            }
            if let Some(s) = x.signal {
                r = r.attr("custos.signal.name", s.to_string());
            }
            if let Some(c) = x.exit_cause {
                r = r.attr("custos.exit.cause", c.as_str());
            }
            if x.core_dumped {
                r = r.attr("custos.process.core_dumped", true);
            }
            if x.ppid != 0 {
                r = r.attr("process.parent_pid", x.ppid);
            }
            r
        }
        EventBody::Signal(s) => {
            let mut r = LogRecord::new(
                "custos.process.signal",
                Severity::Warn,
                service,
                format!("{who} received fatal signal {}.", s.signal),
            )
            .attr("custos.signal.name", s.signal.to_string());
            if s.sender_pid != 0 {
                r = r.attr("custos.signal.sender_pid", s.sender_pid);
            }
            if let Some(c) = s.code {
                r = r.attr("custos.signal.code", c);
            }
            r
        }
        EventBody::OomKill(o) => {
            let mut r = LogRecord::new(
                "custos.process.oom_kill",
                Severity::Error,
                service,
                format!("The OOM killer killed {who}."),
            )
            .attr("custos.oom.memcg", o.memcg);
            if let Some(rss) = o.rss_bytes {
                r = r.attr("custos.oom.rss_bytes", rss);
            }
            r
        }
        EventBody::TcpConnect(c) if !c.result.is_ok() => {
            let r = LogRecord::new(
                "custos.tcp.connect",
                Severity::Warn,
                service,
                format!(
                    "{who} failed to connect to {}:{}: {}.",
                    c.endpoints.daddr,
                    c.endpoints.dport,
                    c.result.name()
                ),
            )
            .attr("error.type", c.result.name())
            .attr("server.address", c.endpoints.daddr.to_string())
            .attr("server.port", c.endpoints.dport)
            .attr("custos.tcp.connect.duration", c.latency_ns as f64 / 1e9);
            endpoint_attrs(r, &c.endpoints)
        }
        EventBody::HealthProbe(h) if !h.ok => {
            return Some(
                LogRecord::new(
                    "custos.health.probe",
                    Severity::Warn,
                    service,
                    format!("Health probe {} failed: {}.", h.probe, h.detail),
                )
                .attr("custos.probe.name", h.probe.as_str())
                .attr("custos.probe.detail", h.detail.as_str())
                .with_time(ev.ts),
            )
        }
        EventBody::Loss(l) => {
            return Some(
                LogRecord::new(
                    "custos.events.lost",
                    Severity::Warn,
                    service,
                    format!("{} events were lost ({:?} stage): a gap, not silence.", l.lost, l.stage),
                )
                .attr("custos.loss.stage", format!("{:?}", l.stage).to_lowercase())
                .attr("custos.loss.count", l.lost)
                .with_time(ev.ts),
            )
        }
        _ => return None,
    };
    Some(process_attrs(rec, ev).with_time(ev.ts))
}

impl LogRecord {
    /// Sets the record's time (builder style).
    pub fn with_time(mut self, t: SystemTime) -> Self {
        self.time = t;
        self
    }
}

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u32,
    suppressed: u64,
}

/// At most `max` records per service per `per`; the rest are counted, and
/// a `custos.logs.suppressed` record says how many when the window ends.
#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    per: Duration,
    windows: HashMap<String, Window>,
}

impl RateLimiter {
    pub fn new(max: u32, per: Duration) -> Self {
        RateLimiter { max, per, windows: HashMap::new() }
    }

    /// New limits (a reload); windows already open keep their counts.
    pub fn set_limits(&mut self, max: u32, per: Duration) {
        self.max = max;
        self.per = per;
    }

    /// The length of a window.
    pub fn window(&self) -> Duration {
        self.per
    }

    /// Whether a record of `service` may pass now. `summaries` receives the
    /// summary of a window that just ended with suppressed records.
    pub fn admit(&mut self, service: &str, now: Instant, summaries: &mut Vec<LogRecord>) -> bool {
        let per = self.per;
        let w = self.windows.entry(service.to_string()).or_insert_with(|| Window {
            started: now,
            used: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= per {
            if w.suppressed > 0 {
                summaries.push(suppressed_record(service, w.suppressed, per));
            }
            *w = Window { started: now, used: 0, suppressed: 0 };
        }
        if w.used < self.max {
            w.used += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// Summaries of windows that ended with suppressed records; idle
    /// windows are forgotten so that memory follows active services.
    pub fn expire(&mut self, now: Instant, summaries: &mut Vec<LogRecord>) {
        let per = self.per;
        self.windows.retain(|service, w| {
            if now.duration_since(w.started) < per {
                return true;
            }
            if w.suppressed > 0 {
                summaries.push(suppressed_record(service, w.suppressed, per));
            }
            false
        });
    }
}

fn suppressed_record(service: &str, n: u64, per: Duration) -> LogRecord {
    LogRecord::new(
        "custos.logs.suppressed",
        Severity::Warn,
        Some(service.to_string()),
        format!(
            "{n} event log records were suppressed by the rate limit in the last {}.",
            humantime::format_duration(per)
        ),
    )
    .attr("custos.suppressed.count", n)
}

fn to_proto(r: LogRecord, observed: u64) -> ProtoLogRecord {
    let mut attributes = Vec::with_capacity(r.attributes.len() + 1);
    // `event.name` as an attribute too: backends and collector processors
    // that predate the LogRecord field still see it.
    attributes.push(kv("event.name", r.event_name.as_str()));
    attributes.extend(r.attributes.into_iter().map(|(k, v)| kv(k, v)));
    ProtoLogRecord {
        time_unix_nano: custos_event::unix_nanos(r.time),
        observed_time_unix_nano: observed,
        severity_number: r.severity.number(),
        severity_text: r.severity.text().to_string(),
        body: Some(any(AttrValue::Str(r.body))),
        attributes,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: Vec::new(),
        span_id: Vec::new(),
        event_name: r.event_name,
    }
}

/// One export request holding `records`, grouped by service resource.
pub fn logs_request(
    records: Vec<LogRecord>,
    host: &HostInfo,
    identities: &BTreeMap<String, ServiceIdentity>,
    now: SystemTime,
) -> ExportLogsServiceRequest {
    let observed = custos_event::unix_nanos(now);
    let mut by_service: BTreeMap<String, Vec<ProtoLogRecord>> = BTreeMap::new();
    for r in records {
        let service = r.service.clone().unwrap_or_else(|| "custos".to_string());
        by_service.entry(service).or_default().push(to_proto(r, observed));
    }
    let resource_logs = by_service
        .into_iter()
        .map(|(service, log_records)| {
            let identity = identities.get(&service).cloned().unwrap_or(ServiceIdentity::None);
            ResourceLogs {
                resource: Some(resource(host, &service, &identity)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope(&host.agent_version)),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_log_says_whether_it_was_asked_for() {
        let exit = |cause| {
            Event::new(
                SystemTime::UNIX_EPOCH,
                EventBody::ProcessExit(custos_event::ProcessExit {
                    signal: Some(custos_event::Signal(15)),
                    exit_cause: cause,
                    ..Default::default()
                }),
            )
        };
        let cause_of = |e: &Event| {
            event_log(e)
                .unwrap()
                .attributes
                .iter()
                .find(|(k, _)| k == "custos.exit.cause")
                .map(|(_, v)| format!("{v:?}"))
        };
        let asked = cause_of(&exit(Some(custos_event::ExitCause::StopRequested))).unwrap();
        assert!(asked.contains("stop_requested"), "{asked}");
        assert_eq!(cause_of(&exit(None)), None);
    }

    #[test]
    fn rate_limit_suppresses_and_summarizes() {
        let mut rl = RateLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut sums = Vec::new();
        assert!(rl.admit("api", t0, &mut sums));
        assert!(rl.admit("api", t0, &mut sums));
        assert!(!rl.admit("api", t0, &mut sums));
        assert!(!rl.admit("api", t0, &mut sums));
        assert!(rl.admit("db", t0, &mut sums), "limits are per service");
        assert!(sums.is_empty());
        rl.expire(t0 + Duration::from_secs(11), &mut sums);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].event_name, "custos.logs.suppressed");
        assert_eq!(sums[0].service.as_deref(), Some("api"));
        assert!(sums[0].attributes.contains(&("custos.suppressed.count".into(), AttrValue::Int(2))));
        assert!(rl.admit("api", t0 + Duration::from_secs(11), &mut sums));
    }
}
