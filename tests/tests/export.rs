//! The exporter against an in-process OTLP receiver: what users see in
//! their collector, and that nothing is lost through outages and crashes.

use custos::config::{self, LoadedConfig};
use custos::export::{AgentStats, Exporter, ExporterHandle, HostInfo, LogRecord, RetryPolicy, Severity};
use custos_event::Event;
use custos_tests::otlp::{str_attr, OtlpReceiver, Reply};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn host() -> HostInfo {
    HostInfo {
        host_name: "testhost".into(),
        host_id: "0123456789abcdef".into(),
        os_type: "linux".into(),
        agent_version: "9.9.9".into(),
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy { initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(400) }
}

fn load(state: &Path, exporter_yaml: &str) -> LoadedConfig {
    let text = format!(
        "agent:\n  state_dir: {}\n  listen: \"127.0.0.1:0\"\nservices:\n  - name: api\n    systemd_unit: api.service\nexporter:\n{exporter_yaml}",
        state.display()
    );
    config::parse(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn otlp_yaml(endpoint: &str, protocol: &str, extra: &str) -> String {
    format!(
        "  interval: 150ms\n  otlp:\n    endpoint: \"{endpoint}\"\n    protocol: {protocol}\n    timeout: 2s\n{extra}"
    )
}

fn start(cfg: &LoadedConfig) -> (ExporterHandle, Arc<AgentStats>) {
    let stats = Arc::new(AgentStats::default());
    let h = Exporter::start_with(cfg, host(), stats.clone(), fast_retry()).expect("exporter starts");
    (h, stats)
}

fn ev(json: &str) -> Event {
    Event::from_json_line(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// A crash-looping `api`: a main process with a worker, connects, a
/// segfault, a failed exit, a restart, syscall statistics.
fn known_stream() -> Vec<Event> {
    let ts = "2026-11-20T10:00:00Z";
    let conn = r#""family":"ipv4","saddr":"10.0.0.1","sport":40000,"daddr":"10.0.0.2","dport":5432"#;
    [
        format!(r#"{{"kind":"process_start","ts":"{ts}","service":"api","pid":100,"comm":"api","ppid":1,"uid":33,"exe":"/usr/bin/api","argv":["/usr/bin/api","--port","8080"]}}"#),
        format!(r#"{{"kind":"process_start","ts":"{ts}","service":"api","pid":101,"comm":"worker","ppid":100,"exe":"/usr/bin/api","argv":["worker"]}}"#),
        format!(r#"{{"kind":"tcp_connect","ts":"{ts}","service":"api","pid":101,{conn},"result":"ok","latency_ns":2000000}}"#),
        format!(r#"{{"kind":"tcp_connect","ts":"{ts}","service":"api","pid":101,{conn},"result":"ECONNREFUSED","latency_ns":300000}}"#),
        format!(r#"{{"kind":"tcp_accept","ts":"{ts}","service":"api","pid":100,{conn}}}"#),
        format!(r#"{{"kind":"tcp_close","ts":"{ts}","service":"api","pid":101,{conn},"bytes_sent":1000,"bytes_received":5000,"retransmits":3,"duration_ns":1500000000}}"#),
        format!(r#"{{"kind":"syscall_stats","ts":"{ts}","service":"api","interval_ns":10000000000,"syscalls":[{{"name":"read","count":100,"errors":2,"latency_log2":[0,0,0,0,0,0,0,0,0,0,100]}},{{"name":"write","count":50,"latency_log2":[0,0,0,0,0,0,0,0,0,0,0,50]}},{{"name":"openat","count":7,"errors":7}},{{"name":"close","count":3}}]}}"#),
        format!(r#"{{"kind":"signal","ts":"{ts}","service":"api","pid":101,"signal":"SIGSEGV"}}"#),
        format!(r#"{{"kind":"process_exit","ts":"{ts}","service":"api","pid":101,"comm":"worker","signal":"SIGSEGV","core_dumped":true,"lifetime_ns":5000000000}}"#),
        format!(r#"{{"kind":"process_exit","ts":"{ts}","service":"api","pid":100,"comm":"api","exit_code":1,"lifetime_ns":6000000000}}"#),
        format!(r#"{{"kind":"process_start","ts":"{ts}","service":"api","pid":200,"comm":"api","ppid":1,"exe":"/usr/bin/api","argv":["/usr/bin/api"]}}"#),
        format!(r#"{{"kind":"oom_kill","ts":"{ts}","service":"api","pid":200,"memcg":true,"rss_bytes":104857600}}"#),
    ]
    .iter()
    .map(|j| ev(j))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_of_a_known_stream_has_semconv_metrics_logs_and_resource() {
    let rx = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer from-a-file\n").unwrap();
    std::env::set_var("CUSTOS_TEST_TENANT", "tenant-7");
    let headers = format!(
        "    headers:\n      - {{ name: authorization, file: {} }}\n      - {{ name: x-tenant, env: CUSTOS_TEST_TENANT }}\n",
        token.display()
    );
    let mut cfg = load(dir.path(), &otlp_yaml(&rx.grpc_endpoint(), "grpc", &headers));
    cfg.raw.exporter.syscall_top_n.value = 2;
    let (h, stats) = start(&cfg);
    for e in known_stream() {
        h.submit(&e);
    }
    h.shutdown(Duration::from_secs(5)).await;
    let r = &rx.recorder;

    let m = |name: &str, attrs: &[(&str, &str)]| r.latest_int("api", name, attrs);
    assert_eq!(m("custos.process.starts", &[]), Some(3));
    assert_eq!(m("custos.process.exits", &[("custos.exit.class", "signal")]), Some(1));
    assert_eq!(m("custos.process.exits", &[("custos.exit.class", "error")]), Some(1));
    assert_eq!(m("custos.process.exits", &[("custos.exit.class", "clean")]), Some(0));
    assert_eq!(m("custos.process.running", &[]), Some(1));
    assert_eq!(m("custos.service.restarts", &[]), Some(1), "main process 100 exited and 200 replaced it");
    assert_eq!(m("custos.process.oom_kills", &[]), Some(1));
    assert_eq!(m("custos.process.fatal_signals", &[("custos.signal.name", "SIGSEGV")]), Some(1));
    assert_eq!(m("custos.tcp.connects", &[("error.type", "ECONNREFUSED")]), Some(1));
    assert_eq!(m("custos.tcp.accepts", &[]), Some(1));
    assert_eq!(m("custos.tcp.io", &[("network.io.direction", "transmit")]), Some(1000));
    assert_eq!(m("custos.tcp.io", &[("network.io.direction", "receive")]), Some(5000));
    assert_eq!(m("custos.tcp.retransmits", &[]), Some(3));
    assert_eq!(m("custos.tcp.connections.active", &[]), Some(1), "2 opened, 1 closed");
    // Top 2 syscalls by volume keep their series; the rest fold into `other`.
    assert_eq!(m("custos.syscall.count", &[("custos.syscall.name", "read")]), Some(100));
    assert_eq!(m("custos.syscall.count", &[("custos.syscall.name", "write")]), Some(50));
    assert_eq!(m("custos.syscall.count", &[("custos.syscall.name", "other")]), Some(10));
    assert_eq!(m("custos.syscall.errors", &[("custos.syscall.name", "other")]), Some(7));
    assert_eq!(m("custos.syscall.count", &[("custos.syscall.name", "openat")]), None);
    let lat =
        r.latest_histogram("api", "custos.tcp.connect.duration", &[("error.type", "ECONNREFUSED")]).unwrap();
    assert_eq!(lat.count, 1);
    assert!((lat.sum.unwrap() - 0.0003).abs() < 1e-9);
    let ok = r.latest_histogram("api", "custos.tcp.connect.duration", &[]).unwrap();
    assert_eq!(ok.bucket_counts.iter().sum::<u64>(), ok.count);
    let dur = r.latest_histogram(
        "api",
        "custos.tcp.connection.duration",
        &[("custos.connection.direction", "outbound")],
    );
    assert_eq!(dur.unwrap().count, 1);
    let sys =
        r.latest_histogram("api", "custos.syscall.duration", &[("custos.syscall.name", "read")]).unwrap();
    assert_eq!((sys.count, sys.bucket_counts[10]), (100, 100));

    // Units, temporality and the resource.
    let req = r.metrics().pop().unwrap();
    let api = req
        .resource_metrics
        .iter()
        .find(|rm| {
            str_attr(&rm.resource.as_ref().unwrap().attributes, "service.name").as_deref() == Some("api")
        })
        .unwrap();
    let res = &api.resource.as_ref().unwrap().attributes;
    assert_eq!(str_attr(res, "service.instance.id").as_deref(), Some("0123456789abcdef/api"));
    assert_eq!(str_attr(res, "host.name").as_deref(), Some("testhost"));
    assert_eq!(str_attr(res, "host.id").as_deref(), Some("0123456789abcdef"));
    assert_eq!(str_attr(res, "os.type").as_deref(), Some("linux"));
    assert_eq!(str_attr(res, "custos.agent.version").as_deref(), Some("9.9.9"));
    assert_eq!(str_attr(res, "systemd.unit.name").as_deref(), Some("api.service"));
    let metrics = &api.scope_metrics[0].metrics;
    let unit = |n: &str| metrics.iter().find(|m| m.name == n).map(|m| m.unit.clone()).unwrap();
    assert_eq!(unit("custos.tcp.connect.duration"), "s");
    assert_eq!(unit("custos.tcp.io"), "By");
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    for m in metrics {
        match &m.data {
            Some(Data::Sum(s)) => assert_eq!(s.aggregation_temporality, 2, "{} cumulative", m.name),
            Some(Data::Histogram(h)) => assert_eq!(h.aggregation_temporality, 2, "{} cumulative", m.name),
            _ => {}
        }
    }
    // Self-telemetry goes out as the `custos` service.
    assert_eq!(r.latest_int("custos", "custos.agent.events_in", &[]).map(|v| v >= 11), Some(true));

    // Logs for the crash.
    let logs = r.log_records();
    let exit = logs
        .iter()
        .find(|(_, l)| {
            l.event_name == "custos.process.exit"
                && str_attr(&l.attributes, "process.pid").as_deref() == Some("101")
        })
        .expect("exit log of the worker");
    assert_eq!(exit.0, "api");
    assert_eq!(exit.1.severity_number, 17);
    assert_eq!(exit.1.severity_text, "ERROR");
    assert_eq!(str_attr(&exit.1.attributes, "event.name").as_deref(), Some("custos.process.exit"));
    assert_eq!(str_attr(&exit.1.attributes, "custos.exit.class").as_deref(), Some("signal"));
    assert_eq!(str_attr(&exit.1.attributes, "custos.signal.name").as_deref(), Some("SIGSEGV"));
    let code =
        logs.iter().find(|(_, l)| str_attr(&l.attributes, "process.exit.code").as_deref() == Some("1"));
    assert_eq!(code.unwrap().1.severity_text, "WARN");
    let start = logs.iter().find(|(_, l)| l.event_name == "custos.process.start").unwrap();
    assert_eq!(
        str_attr(&start.1.attributes, "process.command_args").as_deref(),
        Some("/usr/bin/api --port 8080")
    );
    assert_eq!(str_attr(&start.1.attributes, "process.executable.path").as_deref(), Some("/usr/bin/api"));
    let refused = logs.iter().find(|(_, l)| l.event_name == "custos.tcp.connect").unwrap();
    assert_eq!(str_attr(&refused.1.attributes, "error.type").as_deref(), Some("ECONNREFUSED"));
    assert_eq!(str_attr(&refused.1.attributes, "server.port").as_deref(), Some("5432"));
    assert_eq!(str_attr(&refused.1.attributes, "network.peer.address").as_deref(), Some("10.0.0.2"));
    assert!(logs
        .iter()
        .any(|(_, l)| l.event_name == "custos.process.oom_kill" && l.severity_text == "ERROR"));
    assert!(logs.iter().any(|(_, l)| l.event_name == "custos.process.signal"));

    // Headers (from a file and from the environment) and gzip on the wire.
    let reqs = r.requests();
    assert!(!reqs.is_empty());
    for q in &reqs {
        let hv = |k: &str| q.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(hv("authorization").as_deref(), Some("Bearer from-a-file"));
        assert_eq!(hv("x-tenant").as_deref(), Some("tenant-7"));
        assert_eq!(q.encoding.as_deref(), Some("gzip"), "{q:?}");
    }
    let s = stats.snapshot();
    assert_eq!(s.events_dropped_exporter, 0);
    assert_eq!(s.export_failures, 0);
    assert!(s.records_exported > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_with_gzip_headers_and_runbook_logs() {
    let rx = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(
        dir.path(),
        &otlp_yaml(&rx.http_endpoint(), "http", "    headers:\n      - { name: x-api-key, value: k123 }\n"),
    );
    let (h, _stats) = start(&cfg);
    for e in known_stream() {
        h.submit(&e);
    }
    h.log(
        LogRecord::new("custos.runbook.action", Severity::Warn, Some("api".into()), "Restarted api.service.")
            .attr("custos.runbook.name", "api-crash-loop")
            .attr("custos.action", "restart"),
    );
    h.shutdown(Duration::from_secs(5)).await;
    let r = &rx.recorder;
    assert_eq!(r.latest_int("api", "custos.process.starts", &[]), Some(3));
    let logs = r.log_records();
    let action = logs.iter().find(|(_, l)| l.event_name == "custos.runbook.action").expect("runbook log");
    assert_eq!(action.0, "api");
    assert_eq!(str_attr(&action.1.attributes, "custos.runbook.name").as_deref(), Some("api-crash-loop"));
    for q in r.requests() {
        assert_eq!(q.transport, "http");
        assert_eq!(q.encoding.as_deref(), Some("gzip"));
        assert!(q.headers.contains(&("x-api-key".into(), "k123".into())), "{q:?}");
        assert!(q.headers.contains(&("content-type".into(), "application/x-protobuf".into())), "{q:?}");
    }
}

fn failed_connect(i: u32) -> Event {
    ev(&format!(
        r#"{{"kind":"tcp_connect","ts":"2026-11-20T10:00:00Z","service":"api","pid":{},"family":"ipv4","saddr":"127.0.0.1","sport":1,"daddr":"127.0.0.2","dport":9,"result":"ECONNREFUSED"}}"#,
        1000 + i
    ))
}

/// The pids of every failed-connect log record received.
fn connect_pids(rx: &OtlpReceiver) -> Vec<u32> {
    rx.recorder
        .log_records()
        .iter()
        .filter(|(_, l)| l.event_name == "custos.tcp.connect")
        .filter_map(|(_, l)| str_attr(&l.attributes, "process.pid")?.parse().ok())
        .collect()
}

fn no_rate_limit() -> &'static str {
    "  log_rate_limit: { max: 100000, per: 1m }\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_for_seconds_then_back_receives_every_batch() {
    for protocol in ["grpc", "http"] {
        let mut rx = OtlpReceiver::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ep = if protocol == "grpc" { rx.grpc_endpoint() } else { rx.http_endpoint() };
        let cfg = load(dir.path(), &format!("{}{}", otlp_yaml(&ep, protocol, ""), no_rate_limit()));
        let (h, stats) = start(&cfg);
        const N: u32 = 300;
        for i in 0..N / 3 {
            h.submit(&failed_connect(i));
        }
        rx.recorder.wait_for(WAIT, "first third", |r| !r.logs().is_empty()).await;
        rx.stop().await;
        // The collector is away for 2 s while events keep coming.
        for i in N / 3..2 * N / 3 {
            h.submit(&failed_connect(i));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stats.snapshot().spool_writes > 0, "{protocol}: batches were spooled during the outage");
        rx.restart().await.unwrap();
        for i in 2 * N / 3..N {
            h.submit(&failed_connect(i));
        }
        rx.recorder
            .wait_for(WAIT, "every record after the outage", |_| connect_pids(&rx).len() >= N as usize)
            .await;
        h.shutdown(Duration::from_secs(5)).await;
        let mut pids = connect_pids(&rx);
        let total = pids.len();
        pids.sort();
        pids.dedup();
        assert_eq!(pids, (1000..1000 + N).collect::<Vec<_>>(), "{protocol}: every record arrived");
        // At-least-once: a batch whose answer was lost may come twice, no more.
        assert!(total <= N as usize + 2 * 512, "{protocol}: {total} records for {N}");
        let s = stats.snapshot();
        assert!(s.export_retries > 0, "{protocol}: {s:?}");
        assert_eq!(s.spool_batches, 0, "{protocol}: spool drained: {s:?}");
        assert_eq!(s.spool_dropped, 0);
        // Metrics kept their cumulative counts through the outage.
        assert_eq!(
            rx.recorder.latest_int("api", "custos.tcp.connects", &[("error.type", "ECONNREFUSED")]),
            Some(N as i64)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_and_throttling_are_retried_until_ok() {
    for (protocol, script) in [
        ("grpc", vec![Reply::Unavailable, Reply::Throttle(Duration::from_millis(300)), Reply::Unavailable]),
        ("http", vec![Reply::Unavailable, Reply::Throttle(Duration::from_secs(1))]),
    ] {
        let rx = OtlpReceiver::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ep = if protocol == "grpc" { rx.grpc_endpoint() } else { rx.http_endpoint() };
        let cfg = load(dir.path(), &otlp_yaml(&ep, protocol, ""));
        let failures = script.len();
        rx.recorder.script(script);
        let (h, stats) = start(&cfg);
        h.submit(&failed_connect(1));
        rx.recorder.wait_for(WAIT, "the log after retries", |r| !r.logs().is_empty()).await;
        let s = stats.snapshot();
        assert!(s.export_retries >= failures as u64, "{protocol}: {s:?}");
        assert_eq!(s.export_failures, 0, "{protocol}: retryable answers are not failures");
        let replies: Vec<String> =
            rx.recorder.requests().iter().take(failures).map(|q| q.reply.clone()).collect();
        assert!(replies[0].contains("Unavailable"), "{replies:?}");
        assert!(replies[1].contains("Throttle"), "{replies:?}");
        h.shutdown(Duration::from_secs(3)).await;
        assert_eq!(connect_pids(&rx), vec![1001], "{protocol}: delivered once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_and_permanent_errors_are_counted_not_retried() {
    let rx = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(dir.path(), &otlp_yaml(&rx.grpc_endpoint(), "grpc", ""));
    rx.recorder.script([Reply::BadRequest, Reply::Partial { rejected: 3, message: "too old".into() }]);
    let (h, stats) = start(&cfg);
    rx.recorder.wait_for(WAIT, "three requests", |r| r.requests().len() >= 3).await;
    h.shutdown(Duration::from_secs(3)).await;
    let s = stats.snapshot();
    assert_eq!(s.export_failures, 1, "{s:?}");
    assert_eq!(s.records_rejected, 3, "{s:?}");
    assert_eq!(s.export_retries, 0, "a permanent error is not retried: {s:?}");
    assert_eq!(s.spool_writes, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_survives_a_crash_and_the_next_exporter_sends_it() {
    let mut rx = OtlpReceiver::start().await.unwrap();
    rx.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(dir.path(), &format!("{}{}", otlp_yaml(&rx.grpc_endpoint(), "grpc", ""), no_rate_limit()));
    let (h, stats) = start(&cfg);
    for i in 0..50 {
        h.submit(&failed_connect(i));
    }
    let deadline = std::time::Instant::now() + WAIT;
    while stats.snapshot().spool_batches < 2 {
        assert!(std::time::Instant::now() < deadline, "nothing spooled: {:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A crash: no shutdown, tasks die, memory is gone, the spool stays.
    drop(h);
    let spooled = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
    assert!(spooled >= 2, "{spooled} spool files");

    rx.restart().await.unwrap();
    let (h2, stats2) = start(&cfg);
    assert!(stats2.snapshot().spool_batches >= 2, "the new exporter found the spool");
    rx.recorder.wait_for(WAIT, "spooled logs", |_| connect_pids(&rx).len() >= 50).await;
    h2.shutdown(Duration::from_secs(3)).await;
    let mut pids = connect_pids(&rx);
    pids.sort();
    pids.dedup();
    assert_eq!(pids, (1000..1050).collect::<Vec<_>>());
    assert_eq!(stats2.snapshot().spool_batches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_drops_the_oldest_and_counts_it() {
    let mut rx = OtlpReceiver::start().await.unwrap();
    rx.stop().await;
    let dir = tempfile::tempdir().unwrap();
    // Many declared services make each metrics batch a few KiB.
    let mut services = String::from("services:\n");
    for i in 0..40 {
        services.push_str(&format!("  - name: svc{i}\n    exe: /usr/bin/svc{i}\n"));
    }
    let text = format!(
        "agent:\n  state_dir: {}\n  listen: \"127.0.0.1:0\"\n{services}exporter:\n{}  spool: {{ max_bytes: 64KiB }}\n",
        dir.path().display(),
        otlp_yaml(&rx.grpc_endpoint(), "grpc", "").replace("150ms", "100ms"),
    );
    let cfg = config::parse(&text, "t.yaml").unwrap();
    let (h, stats) = start(&cfg);
    let deadline = std::time::Instant::now() + WAIT;
    while stats.snapshot().spool_dropped < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = stats.snapshot();
    assert!(s.spool_bytes <= 64 * 1024, "{s:?}");
    rx.restart().await.unwrap();
    rx.recorder.wait_for(WAIT, "the spool drained", |r| r.metrics().len() >= 2).await;
    h.shutdown(Duration::from_secs(3)).await;
    // What arrived is the newest part, oldest first.
    let times: Vec<u64> = rx
        .recorder
        .metrics()
        .iter()
        .map(|m| m.resource_metrics[0].scope_metrics[0].metrics[0].data.as_ref().map(first_time).unwrap_or(0))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order: {times:?}");
    let produced = s.spool_writes;
    assert!((rx.recorder.metrics().len() as u64) < produced + 5, "the dropped ones never arrive");
}

fn first_time(d: &opentelemetry_proto::tonic::metrics::v1::metric::Data) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    match d {
        Data::Sum(s) => s.data_points[0].time_unix_nano,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_spool_file_is_skipped_and_the_rest_is_sent() {
    let mut rx = OtlpReceiver::start().await.unwrap();
    rx.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(dir.path(), &format!("{}{}", otlp_yaml(&rx.grpc_endpoint(), "grpc", ""), no_rate_limit()));
    let (h, stats) = start(&cfg);
    // Three log batches, one per pid, each spooled.
    for i in 0..3 {
        h.submit(&failed_connect(i));
        let want = i as u64 + 1;
        let deadline = std::time::Instant::now() + WAIT;
        while stats.snapshot().spool_writes < 2 * want {
            assert!(std::time::Instant::now() < deadline, "{:?}", stats.snapshot());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(h);
    let spool = dir.path().join("spool");
    let mut files: Vec<_> = std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // Damage one batch in the middle: flip its last byte.
    let victim = &files[files.len() / 2];
    let mut data = std::fs::read(victim).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x55;
    std::fs::write(victim, data).unwrap();

    rx.restart().await.unwrap();
    let (h2, stats2) = start(&cfg);
    let deadline = std::time::Instant::now() + WAIT;
    while stats2.snapshot().spool_batches > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", stats2.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h2.shutdown(Duration::from_secs(3)).await;
    assert_eq!(stats2.snapshot().spool_corrupt, 1);
    assert!(victim.with_extension("corrupt").exists(), "the damaged file is kept aside");
    let received = rx.recorder.requests().len();
    assert!(received >= files.len() - 1, "{received} requests for {} spooled, one corrupt", files.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_endpoint_writes_otlp_json_lines_to_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(dir.path(), "  interval: 100ms\n");
    let (h, stats) = start(&cfg);
    for e in known_stream() {
        h.submit(&e);
    }
    h.shutdown(Duration::from_secs(3)).await;
    let files_dir = dir.path().join("otlp");
    let mut metrics_lines = Vec::new();
    let mut logs_lines = Vec::new();
    for e in std::fs::read_dir(&files_dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if name.starts_with("metrics-") {
            metrics_lines.extend(lines);
        } else if name.starts_with("logs-") {
            logs_lines.extend(lines);
        }
    }
    assert!(!metrics_lines.is_empty() && !logs_lines.is_empty());
    let last: serde_json::Value = serde_json::from_str(metrics_lines.last().unwrap()).unwrap();
    let rms = last["resourceMetrics"].as_array().unwrap();
    let api = rms
        .iter()
        .find(|rm| {
            rm["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["value"]["stringValue"] == "api")
        })
        .unwrap();
    let starts = api["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "custos.process.starts")
        .unwrap();
    assert_eq!(starts["sum"]["dataPoints"][0]["asInt"], "3", "int64 as a string: {starts}");
    assert_eq!(starts["sum"]["aggregationTemporality"], 2);
    assert!(starts["sum"]["dataPoints"][0]["timeUnixNano"].is_string());
    let all_logs = logs_lines.join("\n");
    assert!(all_logs.contains("\"eventName\":\"custos.process.exit\""), "{all_logs}");
    assert!(all_logs.contains("\"resourceLogs\""));
    assert!(!all_logs.contains("traceId") && !all_logs.contains("null"), "{all_logs}");
    assert!(all_logs.contains("\"severityNumber\":17"), "{all_logs}");
    assert_eq!(stats.snapshot().export_failures, 0);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_are_served_on_agent_listen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(dir.path(), "  interval: 100ms\n");
    let (h, stats) = start(&cfg);
    for e in known_stream() {
        h.submit(&e);
    }
    AgentStats::add(&stats.events_dropped_kernel, 4);
    let addr = h.http_addr().expect("listening");
    assert!(addr.ip().is_loopback());
    let m = http_get(addr, "/metrics").await;
    assert!(m.starts_with("HTTP/1.0 200") || m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("custos_events_in_total 12\n"), "{m}");
    assert!(m.contains("custos_events_dropped_kernel_total 4\n"), "{m}");
    assert!(m.contains("# TYPE custos_spool_bytes gauge"), "{m}");
    let hz = http_get(addr, "/healthz").await;
    assert!(hz.contains(" 200 ") && hz.contains("\"status\":\"ok\""), "{hz}");
    assert!(http_get(addr, "/nope").await.contains(" 404 "));
    h.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_cannot_flood_logs() {
    let rx = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(
        dir.path(),
        &format!("{}  log_rate_limit: {{ max: 5, per: 1m }}\n", otlp_yaml(&rx.grpc_endpoint(), "grpc", "")),
    );
    let (h, stats) = start(&cfg);
    for i in 0..50 {
        h.submit(&ev(&format!(
            r#"{{"kind":"process_exit","ts":"2026-11-20T10:00:00Z","service":"api","pid":{},"exit_code":2}}"#,
            500 + i
        )));
    }
    h.shutdown(Duration::from_secs(3)).await;
    let logs = rx.recorder.log_records();
    let exits = logs.iter().filter(|(_, l)| l.event_name == "custos.process.exit").count();
    assert_eq!(exits, 5);
    let sup =
        logs.iter().find(|(_, l)| l.event_name == "custos.logs.suppressed").expect("a suppression summary");
    assert_eq!(str_attr(&sup.1.attributes, "custos.suppressed.count").as_deref(), Some("45"));
    assert_eq!(stats.snapshot().logs_suppressed, 45);
    assert_eq!(rx.recorder.latest_int("api", "custos.logs.suppressed", &[]), Some(45));
    assert_eq!(
        rx.recorder.latest_int("api", "custos.process.exits", &[("custos.exit.class", "error")]),
        Some(50)
    );
}

#[test]
fn queue_full_drops_and_counts_without_blocking() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = load(dir.path(), "  interval: 1h\n");
        cfg.raw.exporter.queue_capacity.value = 10;
        let (h, stats) = start(&cfg);
        // On a current-thread runtime the exporter cannot run while we
        // submit: the queue fills and the rest is dropped, at once.
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            h.submit(&failed_connect(1));
        }
        assert!(t.elapsed() < Duration::from_secs(1));
        let s = stats.snapshot();
        assert_eq!((s.events_in, s.events_dropped_exporter), (1000, 990));
        h.shutdown(Duration::from_secs(2)).await;
    });
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with the openssl command line tool.
fn make_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=custos test CA",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    for who in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={who}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_over_mutual_tls_with_a_given_ca() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let read = |f: &str| std::fs::read(pki.path().join(f)).unwrap();
    let rx = OtlpReceiver::start_tls(custos_tests::otlp::ServerTls {
        cert_pem: read("server.pem"),
        key_pem: read("server.key"),
        client_ca_pem: Some(read("ca.pem")),
    })
    .await
    .unwrap();
    let p = |f: &str| pki.path().join(f).display().to_string();

    // With the CA and a client certificate: delivered.
    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "    tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let cfg = load(dir.path(), &otlp_yaml(&rx.grpc_tls_endpoint(), "grpc", &tls));
    let (h, stats) = start(&cfg);
    h.submit(&failed_connect(7));
    rx.recorder.wait_for(WAIT, "the log over mTLS", |_| connect_pids(&rx) == vec![1007]).await;
    h.shutdown(Duration::from_secs(3)).await;
    assert_eq!(stats.snapshot().export_failures, 0);

    // Without a client certificate the server refuses: nothing arrives,
    // the batch is kept and retried.
    let dir = tempfile::tempdir().unwrap();
    let tls = format!("    tls: {{ ca_file: {} }}\n", p("ca.pem"));
    let cfg = load(dir.path(), &otlp_yaml(&rx.grpc_tls_endpoint(), "grpc", &tls));
    let (h, stats) = start(&cfg);
    h.submit(&failed_connect(8));
    let deadline = std::time::Instant::now() + WAIT;
    while stats.snapshot().export_retries == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stats.snapshot().spool_writes > 0);
    h.shutdown(Duration::from_secs(2)).await;
    assert_eq!(connect_pids(&rx), vec![1007], "nothing came through without a client certificate");
    // The TLS rejection reaches the client as a gRPC status made from a
    // transport error (Unknown): not the collector's verdict on the data,
    // so nothing may be dropped as permanently rejected.
    assert_eq!(stats.snapshot().export_failures, 0, "{:?}", stats.snapshot());

    // OTLP/HTTP over the same mutual TLS.
    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "    tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let cfg = load(dir.path(), &otlp_yaml(&rx.http_tls_endpoint(), "http", &tls));
    let (h, stats) = start(&cfg);
    h.submit(&failed_connect(9));
    rx.recorder.wait_for(WAIT, "the log over HTTPS", |_| connect_pids(&rx).contains(&1009)).await;
    h.shutdown(Duration::from_secs(3)).await;
    assert_eq!(stats.snapshot().export_failures, 0);
    assert!(rx.recorder.requests().iter().any(|q| q.transport == "http"));
}
