//! Exporter benchmark (not a test): throughput to a loopback OTLP receiver
//! against a baseline that sends pre-aggregated requests straight through
//! tonic, exporter CPU per 10k events, and RSS during a collector outage
//! while the spool grows.
//!
//!   cargo run --release -p custos-tests --example export_bench -- \
//!       [--events 200000] [--outage-secs 10] [--rate 5000]

use custos::config;
use custos::export::{AgentStats, Exporter, HostInfo, RetryPolicy};
use custos_event::Event;
use custos_tests::otlp::OtlpReceiver;
use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_client::LogsServiceClient, ExportLogsServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXPORTER_THREAD: &str = "custos-exp";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of this process's threads named `name`.
fn thread_cpu(name: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    for t in rd.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(name) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesized comm: state is field 3; utime 14, stime 15.
        if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total as f64 / tick
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn event(i: u64) -> Event {
    let svc = i % 20;
    let pid = 10_000 + (i % 5000);
    let conn = r#""family":"ipv4","saddr":"10.0.0.1","sport":40000,"daddr":"10.0.0.2","dport":5432"#;
    let json = match i % 5 {
        0 => format!(
            r#"{{"kind":"process_start","ts":"2026-11-20T10:00:00Z","service":"svc{svc}","pid":{pid},"ppid":1,"exe":"/usr/bin/svc","argv":["/usr/bin/svc","--flag"]}}"#
        ),
        1 => format!(
            r#"{{"kind":"tcp_connect","ts":"2026-11-20T10:00:00Z","service":"svc{svc}","pid":{pid},{conn},"result":"ok","latency_ns":{}}}"#,
            100_000 + i % 1_000_000
        ),
        2 => format!(
            r#"{{"kind":"tcp_connect","ts":"2026-11-20T10:00:00Z","service":"svc{svc}","pid":{pid},{conn},"result":"ECONNREFUSED","latency_ns":50000}}"#
        ),
        3 => format!(
            r#"{{"kind":"tcp_close","ts":"2026-11-20T10:00:00Z","service":"svc{svc}","pid":{pid},{conn},"bytes_sent":1000,"bytes_received":2000,"duration_ns":1000000}}"#
        ),
        _ => format!(
            r#"{{"kind":"process_exit","ts":"2026-11-20T10:00:00Z","service":"svc{svc}","pid":{pid},"exit_code":1,"lifetime_ns":1000}}"#
        ),
    };
    Event::from_json_line(&json).expect("valid event")
}

fn exporter_config(state: &std::path::Path, endpoint: &str, queue: u64) -> config::LoadedConfig {
    let text = format!(
        "agent:\n  state_dir: {}\n  listen: \"127.0.0.1:0\"\nexporter:\n  interval: 100ms\n  queue_capacity: {queue}\n  log_rate_limit: {{ max: 1000000000, per: 1m }}\n  spool: {{ max_bytes: 4GiB }}\n  otlp: {{ endpoint: \"{endpoint}\", protocol: grpc, timeout: 5s }}\n",
        state.display()
    );
    config::parse(&text, "bench").expect("bench config")
}

fn log_request(n: usize, offset: usize) -> ExportLogsServiceRequest {
    let kv = |k: &str, v: String| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v)) }),
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", "svc0".into()), kv("host.name", "h".into())],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: (0..n)
                    .map(|i| LogRecord {
                        time_unix_nano: 1,
                        severity_number: 13,
                        event_name: "custos.tcp.connect".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("record {}", offset + i))),
                        }),
                        attributes: vec![
                            kv("error.type", "ECONNREFUSED".into()),
                            kv("network.peer.address", "10.0.0.2".into()),
                        ],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn main() {
    let events = arg("--events", 200_000);
    let outage_secs = arg("--outage-secs", 10);
    let rate = arg("--rate", 5_000);

    // The receiver has its own runtime so that the exporter's CPU can be
    // told apart by thread name.
    let recv_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("receiver")
        .enable_all()
        .build()
        .unwrap();
    let exp_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(EXPORTER_THREAD)
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .unwrap();
    let mut rx = recv_rt.block_on(OtlpReceiver::start()).unwrap();
    let endpoint = rx.grpc_endpoint();
    let host = HostInfo::detect();

    // 1. Outage: collector down, steady event rate, the spool grows.
    // First, before the throughput phase allocates its prebuilt events.
    recv_rt.block_on(rx.stop());
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = exporter_config(dir2.path(), &endpoint, 65_536);
    let stats2 = Arc::new(AgentStats::default());
    let h2 = exp_rt
        .block_on(async { Exporter::start_with(&cfg2, host.clone(), stats2.clone(), RetryPolicy::default()) })
        .unwrap();
    let rss_start = rss_kib();
    let mut rss_peak = rss_start;
    let mut samples = Vec::new();
    let t = Instant::now();
    let mut i = 0u64;
    let period = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut next = Instant::now();
    while t.elapsed() < Duration::from_secs(outage_secs) {
        for _ in 0..per_tick {
            h2.submit_owned(event(i));
            i += 1;
        }
        next += period;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let r = rss_kib();
        rss_peak = rss_peak.max(r);
        if i % (rate * (outage_secs / 10).max(1)) < per_tick {
            samples.push((t.elapsed().as_secs(), r, stats2.snapshot().spool_bytes));
        }
    }
    let s2 = stats2.snapshot();
    println!("outage: {outage_secs}s at {rate} events/s, collector down");
    for (sec, r, sb) in &samples {
        println!("  t={sec:>4}s  rss {r:>8} KiB  spool {:>10} KiB", sb / 1024);
    }
    println!(
        "  rss start {rss_start} KiB, peak {rss_peak} KiB (peak/start {:.2})",
        rss_peak as f64 / rss_start.max(1) as f64
    );
    println!(
        "  spool {} batches, {} KiB; dropped at submit {}",
        s2.spool_batches,
        s2.spool_bytes / 1024,
        s2.events_dropped_exporter
    );
    exp_rt.block_on(h2.shutdown(Duration::from_secs(2)));
    recv_rt.block_on(rx.restart()).unwrap();

    // Prebuilt events: parsing JSON is not the exporter's cost.
    let evs: Vec<Event> = (0..events).map(event).collect();
    let log_events = evs.iter().filter(|e| custos::export::event_log(e).is_some()).count() as u64;

    // 2. Throughput through the exporter: every event queued at once (a
    // queue big enough that none is dropped), timed until the receiver has
    // every log record.
    let dir = tempfile::tempdir().unwrap();
    let cfg = exporter_config(dir.path(), &endpoint, events);
    let stats = Arc::new(AgentStats::default());
    let h = exp_rt
        .block_on(async { Exporter::start_with(&cfg, host.clone(), stats.clone(), RetryPolicy::default()) })
        .unwrap();
    let cpu0 = thread_cpu(EXPORTER_THREAD);
    let t0 = Instant::now();
    for e in &evs {
        h.submit(e);
    }
    let rec = rx.recorder.clone();
    let want = log_events;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (rec.log_record_count() as u64) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu(EXPORTER_THREAD) - cpu0;
    exp_rt.block_on(h.shutdown(Duration::from_secs(10)));
    let s = stats.snapshot();
    let received_logs = rec.log_record_count() as u64;
    let exporter_rate = received_logs as f64 / elapsed;
    println!("exporter: {events} events ({log_events} become log records) in {elapsed:.2}s");
    println!("  events/s                 {:>12.0}", events as f64 / elapsed);
    println!("  log records/s received   {:>12.0}", exporter_rate);
    println!("  dropped at submit        {:>12}", s.events_dropped_exporter);
    println!(
        "  exporter CPU             {:>12.3} s  ({:.1} ms per 10k events)",
        cpu,
        cpu * 1000.0 * 10_000.0 / events as f64
    );

    // Baselines: the same number of log records, pre-built, sent straight
    // through tonic in batches of 512 (no aggregation, no record building,
    // no spool), without and with gzip (the exporter's default).
    let n = received_logs as usize;
    for gzip in [false, true] {
        let batches: Vec<ExportLogsServiceRequest> =
            (0..n.div_ceil(512)).map(|b| log_request(512.min(n - b * 512), b * 512)).collect();
        let base_before = rec.log_record_count();
        let tb = Instant::now();
        exp_rt.block_on(async {
            let mut c = LogsServiceClient::connect(endpoint.clone()).await.unwrap();
            if gzip {
                c = c.send_compressed(tonic::codec::CompressionEncoding::Gzip);
            }
            for b in batches {
                c.export(b).await.unwrap();
            }
        });
        let base = tb.elapsed().as_secs_f64();
        let base_rate = (rec.log_record_count() - base_before) as f64 / base;
        let label = if gzip { "with gzip" } else { "no compression" };
        println!("baseline (raw tonic, prebuilt requests, {label}): {base_rate:.0} log records/s");
        println!("  exporter / baseline      {:>12.2}", exporter_rate / base_rate);
    }

    // 3. The production default: event logs rate-limited per service (100
    // per minute), so almost every event only updates metrics.
    let dir3 = tempfile::tempdir().unwrap();
    let mut cfg3 = exporter_config(dir3.path(), &endpoint, events);
    cfg3.raw.exporter.log_rate_limit = config::LogRateLimit::default();
    let stats3 = Arc::new(AgentStats::default());
    let h3 = exp_rt
        .block_on(async { Exporter::start_with(&cfg3, host.clone(), stats3.clone(), RetryPolicy::default()) })
        .unwrap();
    let cpu0 = thread_cpu(EXPORTER_THREAD);
    let t3 = Instant::now();
    for e in &evs {
        h3.submit(e);
    }
    exp_rt.block_on(h3.shutdown(Duration::from_secs(10)));
    let el3 = t3.elapsed().as_secs_f64();
    let cpu3 = thread_cpu(EXPORTER_THREAD) - cpu0;
    let s3 = stats3.snapshot();
    println!(
        "default log rate limit: {events} events in {el3:.2}s ({:.0} events/s), {} log records suppressed",
        events as f64 / el3,
        s3.logs_suppressed
    );
    println!(
        "  exporter CPU             {:>12.3} s  ({:.1} ms per 10k events)",
        cpu3,
        cpu3 * 1000.0 * 10_000.0 / events as f64
    );
    println!("  vs all events logged     {:>12.2}x the CPU per event", cpu3 / cpu.max(1e-9));
}
