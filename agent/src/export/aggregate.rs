//! Per-service metric series from events, exported with cumulative
//! temporality.
//!
//! Every series starts at the aggregator's creation (`start_time`) and only
//! grows, so a collector that misses a batch loses resolution, never counts.
//! Cardinality is bounded: attribute values come from small closed sets
//! (exit classes, errno names, signal names) except syscalls, which are
//! capped at `syscall_top_n` series per service plus `other`.

use super::encode::{kv, resource, scope, ServiceIdentity};
use super::record::HostInfo;
use super::stats::{StatKind, StatsSnapshot};
use custos_event::{Event, EventBody, ExitClass, LATENCY_BUCKETS};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

/// Bounds (seconds) of the TCP connect latency histogram.
pub const CONNECT_BOUNDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bounds (seconds) of the TCP connection duration histogram.
pub const CONN_DURATION_BOUNDS: &[f64] =
    &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Services tracked at most; events of further services are counted in
/// `custos.aggregator.services_over_limit` instead of creating series.
pub const MAX_SERVICES: usize = 4096;
/// Name of the series that takes syscalls beyond the top N.
pub const OTHER_SYSCALL: &str = "other";

#[derive(Debug, Clone, Default)]
struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn new(bounds: &[f64]) -> Self {
        Hist {
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
    fn record(&mut self, bounds: &[f64], v: f64) {
        // Explicit-bounds buckets are (b[i-1], b[i]]: the first bound >= v.
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

#[derive(Debug, Clone)]
struct SyscallSeries {
    count: u64,
    errors: u64,
    buckets: [u64; LATENCY_BUCKETS],
}

impl Default for SyscallSeries {
    fn default() -> Self {
        SyscallSeries { count: 0, errors: 0, buckets: [0; LATENCY_BUCKETS] }
    }
}

#[derive(Debug, Default)]
struct ServiceAgg {
    identity: Option<ServiceIdentity>,
    /// Latest anomaly score per detected metric.
    anomaly_scores: BTreeMap<String, f64>,
    starts: u64,
    exits: [u64; 4],
    running: HashSet<u32>,
    main_pid: Option<u32>,
    main_exited: bool,
    restarts: u64,
    signals: BTreeMap<String, u64>,
    oom_kills: u64,
    /// By `error.type` ("" for success).
    connects: BTreeMap<String, u64>,
    connect_latency: BTreeMap<String, Hist>,
    accepts: u64,
    active: i64,
    bytes_sent: u64,
    bytes_received: u64,
    retransmits: u64,
    /// By direction (`inbound`, `outbound`).
    conn_duration: BTreeMap<&'static str, Hist>,
    syscalls: BTreeMap<String, SyscallSeries>,
    syscall_other: Option<SyscallSeries>,
    /// By (probe, ok).
    health: BTreeMap<(String, bool), u64>,
    /// By loss stage.
    lost: BTreeMap<&'static str, u64>,
    logs_suppressed: u64,
}

fn exit_index(c: ExitClass) -> usize {
    match c {
        ExitClass::Clean => 0,
        ExitClass::Error => 1,
        ExitClass::Signal => 2,
        ExitClass::Oom => 3,
    }
}
const EXIT_CLASSES: [ExitClass; 4] = [ExitClass::Clean, ExitClass::Error, ExitClass::Signal, ExitClass::Oom];

/// Turns attributed events into per-service cumulative metrics.
#[derive(Debug)]
pub struct Aggregator {
    start_time: SystemTime,
    syscall_top_n: usize,
    services: BTreeMap<String, ServiceAgg>,
    over_limit: u64,
}

impl Aggregator {
    pub fn new(start_time: SystemTime, syscall_top_n: usize) -> Self {
        Aggregator { start_time, syscall_top_n, services: BTreeMap::new(), over_limit: 0 }
    }

    /// Declares a configured service so that it is exported (with zeros)
    /// before its first event, with its platform identity on the resource.
    pub fn declare(&mut self, service: &str, identity: ServiceIdentity) {
        self.services.entry(service.to_string()).or_default().identity = Some(identity);
    }

    /// Number of services with series.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Records the latest anomaly score of one of `service`'s series.
    pub fn set_anomaly_score(&mut self, service: &str, metric: &str, score: f64) {
        if let Some(s) = self.service_mut(service) {
            s.anomaly_scores.insert(metric.to_string(), score);
        }
    }

    /// Counts records the log rate limit suppressed for `service`.
    pub fn count_suppressed(&mut self, service: &str, n: u64) {
        if let Some(s) = self.service_mut(service) {
            s.logs_suppressed += n;
        }
    }

    fn service_mut(&mut self, service: &str) -> Option<&mut ServiceAgg> {
        if !self.services.contains_key(service) {
            if self.services.len() >= MAX_SERVICES {
                self.over_limit += 1;
                return None;
            }
            self.services.insert(service.to_string(), ServiceAgg::default());
        }
        self.services.get_mut(service)
    }

    /// Folds one event into its service's series. Events without a service
    /// are not aggregated.
    pub fn observe(&mut self, ev: &Event) {
        let Some(service) = ev.service.as_deref() else { return };
        let top_n = self.syscall_top_n;
        let Some(s) = self.service_mut(service) else { return };
        match &ev.body {
            EventBody::ProcessStart(p) => {
                s.starts += 1;
                // The main process is one whose parent is not in the service
                // (the service manager started it). A new main process after
                // the previous one exited is a restart.
                let is_root = !s.running.contains(&p.ppid);
                let known = s.running.contains(&ev.pid);
                s.running.insert(ev.pid);
                if is_root && !known && s.main_pid != Some(ev.pid) {
                    if s.main_pid.is_some() && s.main_exited {
                        s.restarts += 1;
                    }
                    if s.main_pid.is_none() || s.main_exited {
                        s.main_pid = Some(ev.pid);
                        s.main_exited = false;
                    }
                }
            }
            EventBody::ProcessExit(x) => {
                s.exits[exit_index(x.class())] += 1;
                s.running.remove(&ev.pid);
                if s.main_pid == Some(ev.pid) {
                    s.main_exited = true;
                }
            }
            EventBody::Signal(sig) => {
                *s.signals.entry(sig.signal.to_string()).or_default() += 1;
            }
            EventBody::OomKill(_) => s.oom_kills += 1,
            EventBody::TcpConnect(c) => {
                let key = if c.result.is_ok() { String::new() } else { c.result.name() };
                *s.connects.entry(key.clone()).or_default() += 1;
                s.connect_latency
                    .entry(key)
                    .or_insert_with(|| Hist::new(CONNECT_BOUNDS))
                    .record(CONNECT_BOUNDS, c.latency_ns as f64 / 1e9);
                if c.result.is_ok() {
                    s.active += 1;
                }
            }
            EventBody::TcpAccept(_) => {
                s.accepts += 1;
                s.active += 1;
            }
            EventBody::TcpClose(c) => {
                s.bytes_sent += c.bytes_sent;
                s.bytes_received += c.bytes_received;
                s.retransmits += u64::from(c.retransmits);
                // Connections that predate the agent close without having
                // been counted as opened: never go below zero.
                s.active = (s.active - 1).max(0);
                let dir = if c.inbound { "inbound" } else { "outbound" };
                s.conn_duration
                    .entry(dir)
                    .or_insert_with(|| Hist::new(CONN_DURATION_BOUNDS))
                    .record(CONN_DURATION_BOUNDS, c.duration_ns as f64 / 1e9);
            }
            EventBody::SyscallStats(st) => {
                // The heaviest syscalls of the interval take free series
                // first; once a syscall has its own series it keeps it, so
                // every cumulative series stays monotonic.
                let mut order: Vec<_> = st.syscalls.iter().collect();
                order.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
                for sc in order {
                    let own = s.syscalls.contains_key(&sc.name) || s.syscalls.len() < top_n;
                    let series = if own && sc.name != OTHER_SYSCALL {
                        s.syscalls.entry(sc.name.clone()).or_default()
                    } else {
                        s.syscall_other.get_or_insert_with(SyscallSeries::default)
                    };
                    series.count += sc.count;
                    series.errors += sc.errors;
                    for (i, n) in sc.latency_log2.iter().take(LATENCY_BUCKETS).enumerate() {
                        series.buckets[i] += n;
                    }
                }
            }
            EventBody::HealthProbe(h) => {
                *s.health.entry((h.probe.clone(), h.ok)).or_default() += 1;
            }
            EventBody::Loss(l) => {
                let stage = match l.stage {
                    custos_event::LossStage::Kernel => "kernel",
                    custos_event::LossStage::Channel => "channel",
                    custos_event::LossStage::Platform => "platform",
                };
                *s.lost.entry(stage).or_default() += l.lost;
            }
            EventBody::Listen(_) => {}
        }
    }

    /// The cumulative state of every service, plus the agent's own
    /// statistics as the `custos` service, as one export request.
    pub fn collect(
        &self,
        host: &HostInfo,
        now: SystemTime,
        agent: Option<&StatsSnapshot>,
    ) -> ExportMetricsServiceRequest {
        let start = custos_event::unix_nanos(self.start_time);
        let t = custos_event::unix_nanos(now);
        let mut resource_metrics = Vec::with_capacity(self.services.len() + 1);
        for (name, s) in &self.services {
            let identity = s.identity.clone().unwrap_or(ServiceIdentity::None);
            let metrics = service_metrics(s, start, t);
            resource_metrics.push(ResourceMetrics {
                resource: Some(resource(host, name, &identity)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope(&host.agent_version)),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
        }
        if let Some(snap) = agent {
            let mut metrics = Vec::new();
            for e in snap.entries() {
                let p = vec![int_point(vec![], start, t, e.value)];
                let name = format!("custos.agent.{}", e.name);
                metrics.push(match e.kind {
                    StatKind::Counter => sum_metric(&name, e.help, e.unit, p, true),
                    StatKind::Gauge => gauge_metric(&name, e.help, e.unit, p),
                });
            }
            metrics.push(sum_metric(
                "custos.agent.services_over_limit",
                "Events of services beyond the tracked-services limit.",
                "{event}",
                vec![int_point(vec![], start, t, self.over_limit)],
                true,
            ));
            resource_metrics.push(ResourceMetrics {
                resource: Some(resource(host, "custos", &ServiceIdentity::None)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope(&host.agent_version)),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
        }
        ExportMetricsServiceRequest { resource_metrics }
    }
}

fn int_point(attributes: Vec<KeyValue>, start: u64, t: u64, v: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: t,
        value: Some(number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX))),
        exemplars: Vec::new(),
        flags: 0,
    }
}

fn sum_metric(
    name: &str,
    desc: &str,
    unit: &str,
    data_points: Vec<NumberDataPoint>,
    monotonic: bool,
) -> Metric {
    Metric {
        name: name.to_string(),
        description: desc.to_string(),
        unit: unit.to_string(),
        metadata: Vec::new(),
        data: Some(Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: monotonic,
        })),
    }
}

fn gauge_metric(name: &str, desc: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        description: desc.to_string(),
        unit: unit.to_string(),
        metadata: Vec::new(),
        data: Some(Data::Gauge(Gauge { data_points })),
    }
}

fn hist_metric(name: &str, desc: &str, unit: &str, data_points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        description: desc.to_string(),
        unit: unit.to_string(),
        metadata: Vec::new(),
        data: Some(Data::Histogram(Histogram {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
    }
}

fn hist_point(attributes: Vec<KeyValue>, start: u64, t: u64, bounds: &[f64], h: &Hist) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: t,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts: h.counts.clone(),
        explicit_bounds: bounds.to_vec(),
        exemplars: Vec::new(),
        flags: 0,
        min: (h.count > 0).then_some(h.min),
        max: (h.count > 0).then_some(h.max),
    }
}

/// Bounds in seconds of the kernel's log2 nanosecond buckets: bucket `i`
/// holds `[2^i, 2^(i+1))` ns, so its upper bound is `2^(i+1)` ns.
fn log2_bounds() -> Vec<f64> {
    (1..LATENCY_BUCKETS).map(|i| (1u64 << i) as f64 / 1e9).collect()
}

fn service_metrics(s: &ServiceAgg, start: u64, t: u64) -> Vec<Metric> {
    let mut m = Vec::with_capacity(24);
    if !s.anomaly_scores.is_empty() {
        let points = s
            .anomaly_scores
            .iter()
            .map(|(metric, score)| NumberDataPoint {
                attributes: vec![kv("custos.anomaly.metric", metric.as_str())],
                start_time_unix_nano: start,
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsDouble(*score)),
                exemplars: Vec::new(),
                flags: 0,
            })
            .collect();
        m.push(gauge_metric(
            "custos.anomaly.score",
            "How anomalous each detected series of the service is now, from 0 (normal) to 1.",
            "1",
            points,
        ));
    }
    m.push(sum_metric(
        "custos.process.starts",
        "Processes started (exec) in the service.",
        "{process}",
        vec![int_point(vec![], start, t, s.starts)],
        true,
    ));
    m.push(sum_metric(
        "custos.process.exits",
        "Processes of the service that ended, by exit class.",
        "{process}",
        EXIT_CLASSES
            .iter()
            .map(|c| int_point(vec![kv("custos.exit.class", c.as_str())], start, t, s.exits[exit_index(*c)]))
            .collect(),
        true,
    ));
    m.push(sum_metric(
        "custos.process.running",
        "Processes of the service currently running (as seen since the agent started).",
        "{process}",
        vec![int_point(vec![], start, t, s.running.len() as u64)],
        false,
    ));
    m.push(sum_metric(
        "custos.service.restarts",
        "Restarts of the service's main process.",
        "{restart}",
        vec![int_point(vec![], start, t, s.restarts)],
        true,
    ));
    m.push(sum_metric(
        "custos.process.oom_kills",
        "Processes of the service killed by the OOM killer.",
        "{process}",
        vec![int_point(vec![], start, t, s.oom_kills)],
        true,
    ));
    if !s.signals.is_empty() {
        m.push(sum_metric(
            "custos.process.fatal_signals",
            "Fatal signals delivered to processes of the service.",
            "{signal}",
            s.signals
                .iter()
                .map(|(sig, n)| int_point(vec![kv("custos.signal.name", sig.as_str())], start, t, *n))
                .collect(),
            true,
        ));
    }
    let err_attrs = |e: &str| if e.is_empty() { vec![] } else { vec![kv("error.type", e)] };
    if !s.connects.is_empty() {
        m.push(sum_metric(
            "custos.tcp.connects",
            "Outbound TCP connects; failed ones carry error.type (the errno name).",
            "{connection}",
            s.connects.iter().map(|(e, n)| int_point(err_attrs(e), start, t, *n)).collect(),
            true,
        ));
        m.push(hist_metric(
            "custos.tcp.connect.duration",
            "Time from SYN to established or failed.",
            "s",
            s.connect_latency
                .iter()
                .map(|(e, h)| hist_point(err_attrs(e), start, t, CONNECT_BOUNDS, h))
                .collect(),
        ));
    }
    m.push(sum_metric(
        "custos.tcp.accepts",
        "Inbound TCP connections accepted.",
        "{connection}",
        vec![int_point(vec![], start, t, s.accepts)],
        true,
    ));
    m.push(sum_metric(
        "custos.tcp.connections.active",
        "Established TCP connections (opened since the agent started and not yet closed).",
        "{connection}",
        vec![int_point(vec![], start, t, s.active.max(0) as u64)],
        false,
    ));
    m.push(sum_metric(
        "custos.tcp.io",
        "Bytes carried by closed TCP connections, by direction.",
        "By",
        vec![
            int_point(vec![kv("network.io.direction", "transmit")], start, t, s.bytes_sent),
            int_point(vec![kv("network.io.direction", "receive")], start, t, s.bytes_received),
        ],
        true,
    ));
    m.push(sum_metric(
        "custos.tcp.retransmits",
        "TCP segments retransmitted on closed connections.",
        "{segment}",
        vec![int_point(vec![], start, t, s.retransmits)],
        true,
    ));
    if !s.conn_duration.is_empty() {
        m.push(hist_metric(
            "custos.tcp.connection.duration",
            "Lifetime of TCP connections, from established to closed.",
            "s",
            s.conn_duration
                .iter()
                .map(|(d, h)| {
                    hist_point(vec![kv("custos.connection.direction", *d)], start, t, CONN_DURATION_BOUNDS, h)
                })
                .collect(),
        ));
    }
    let syscalls: Vec<(&str, &SyscallSeries)> = s
        .syscalls
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(s.syscall_other.as_ref().map(|o| (OTHER_SYSCALL, o)))
        .collect();
    if !syscalls.is_empty() {
        let name = |n: &str| vec![kv("custos.syscall.name", n)];
        m.push(sum_metric(
            "custos.syscall.count",
            "System calls made by the service, per syscall (top N, the rest as `other`).",
            "{call}",
            syscalls.iter().map(|(n, v)| int_point(name(n), start, t, v.count)).collect(),
            true,
        ));
        m.push(sum_metric(
            "custos.syscall.errors",
            "System calls that returned an error.",
            "{call}",
            syscalls.iter().map(|(n, v)| int_point(name(n), start, t, v.errors)).collect(),
            true,
        ));
        let bounds = log2_bounds();
        m.push(hist_metric(
            "custos.syscall.duration",
            "Latency of system calls, from the kernel's log2 buckets (no exact sum is measured).",
            "s",
            syscalls
                .iter()
                .map(|(n, v)| HistogramDataPoint {
                    attributes: name(n),
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    count: v.buckets.iter().sum(),
                    sum: None,
                    bucket_counts: v.buckets.to_vec(),
                    explicit_bounds: bounds.clone(),
                    exemplars: Vec::new(),
                    flags: 0,
                    min: None,
                    max: None,
                })
                .collect(),
        ));
    }
    if !s.health.is_empty() {
        m.push(sum_metric(
            "custos.health.checks",
            "Health probe results.",
            "{check}",
            s.health
                .iter()
                .map(|((p, ok), n)| {
                    int_point(
                        vec![
                            kv("custos.probe.name", p.as_str()),
                            kv("custos.probe.result", if *ok { "ok" } else { "fail" }),
                        ],
                        start,
                        t,
                        *n,
                    )
                })
                .collect(),
            true,
        ));
    }
    if !s.lost.is_empty() {
        m.push(sum_metric(
            "custos.events.lost",
            "Events of the service lost before aggregation, by stage.",
            "{event}",
            s.lost
                .iter()
                .map(|(st, n)| int_point(vec![kv("custos.loss.stage", *st)], start, t, *n))
                .collect(),
            true,
        ));
    }
    m.push(sum_metric(
        "custos.logs.suppressed",
        "Event log records of the service suppressed by the rate limit.",
        "{record}",
        vec![int_point(vec![], start, t, s.logs_suppressed)],
        true,
    ));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_event::{SyscallStat, SyscallStats};

    fn stats_event(calls: &[(&str, u64)]) -> Event {
        let mut e = Event::new(
            SystemTime::now(),
            EventBody::SyscallStats(SyscallStats {
                interval_ns: 1,
                syscalls: calls
                    .iter()
                    .map(|(n, c)| SyscallStat { name: n.to_string(), count: *c, ..Default::default() })
                    .collect(),
            }),
        );
        e.service = Some("api".into());
        e
    }

    fn count(a: &Aggregator, name: &str) -> Option<u64> {
        a.services["api"].syscalls.get(name).map(|s| s.count)
    }

    #[test]
    fn anomaly_scores_are_a_gauge_per_series() {
        let mut a = Aggregator::new(SystemTime::now(), 2);
        a.set_anomaly_score("api", "custos.process.crashes", 0.25);
        a.set_anomaly_score("api", "custos.tcp.accepts", 0.9);
        a.set_anomaly_score("api", "custos.process.crashes", 0.5);
        let host = HostInfo {
            host_name: "h".into(),
            host_id: "id".into(),
            os_type: "linux".into(),
            agent_version: "0".into(),
        };
        let req = a.collect(&host, SystemTime::now(), None);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let m = metrics.iter().find(|m| m.name == "custos.anomaly.score").expect("gauge exported");
        let Some(Data::Gauge(g)) = &m.data else { panic!("not a gauge: {m:?}") };
        let points: Vec<(String, f64)> = g
            .data_points
            .iter()
            .map(|p| {
                let attr = p.attributes[0].value.as_ref().and_then(|v| v.value.as_ref());
                let name = match attr {
                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                        s.clone()
                    }
                    other => panic!("{other:?}"),
                };
                let v = match p.value {
                    Some(number_data_point::Value::AsDouble(v)) => v,
                    other => panic!("{other:?}"),
                };
                (name, v)
            })
            .collect();
        assert_eq!(
            points,
            vec![("custos.process.crashes".to_string(), 0.5), ("custos.tcp.accepts".to_string(), 0.9)]
        );
    }

    #[test]
    fn syscall_series_are_capped_and_sticky() {
        let mut a = Aggregator::new(SystemTime::now(), 2);
        a.observe(&stats_event(&[("read", 10), ("write", 50), ("futex", 5)]));
        assert_eq!((count(&a, "write"), count(&a, "read"), count(&a, "futex")), (Some(50), Some(10), None));
        assert_eq!(a.services["api"].syscall_other.as_ref().map(|o| o.count), Some(5));
        // futex becomes the heaviest, but read and write keep their series
        // so that every cumulative series stays monotonic.
        a.observe(&stats_event(&[("futex", 1000), ("read", 1)]));
        assert_eq!(count(&a, "read"), Some(11));
        assert_eq!(a.services["api"].syscall_other.as_ref().map(|o| o.count), Some(1005));
    }

    #[test]
    fn events_without_service_and_beyond_the_service_cap_make_no_series() {
        let mut a = Aggregator::new(SystemTime::now(), 2);
        let mut e = stats_event(&[("read", 1)]);
        e.service = None;
        a.observe(&e);
        assert_eq!(a.service_count(), 0);
        for i in 0..MAX_SERVICES + 10 {
            let mut e = stats_event(&[("read", 1)]);
            e.service = Some(format!("s{i}"));
            a.observe(&e);
        }
        assert_eq!(a.service_count(), MAX_SERVICES);
        assert_eq!(a.over_limit, 10);
    }
}
