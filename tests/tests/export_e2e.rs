//! The real `custos run` binary exporting to the test receiver: a `kill -9`
//! with batches in the spool loses none of them.

use custos_tests::custos_bin;
use custos_tests::otlp::{str_attr, OtlpReceiver};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn failed_connect(pid: u32, ts: &str) -> String {
    format!(
        r#"{{"kind":"tcp_connect","ts":"{ts}","service":"api","pid":{pid},"family":"ipv4","saddr":"127.0.0.1","sport":1,"daddr":"127.0.0.2","dport":9,"result":"ECONNREFUSED"}}"#
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "batch")).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_non_empty_spool_then_restart_delivers_everything() {
    let mut rx = OtlpReceiver::start().await.unwrap();
    rx.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("custos.yaml");
    write(
        &cfg,
        &format!(
            "agent:\n  state_dir: {}\n  listen: \"127.0.0.1:0\"\nservices:\n  - name: api\n    systemd_unit: api.service\nexporter:\n  interval: 200ms\n  log_rate_limit: {{ max: 100000, per: 1m }}\n  otlp: {{ endpoint: \"{}\", protocol: grpc, timeout: 1s }}\n",
            dir.path().display(),
            rx.grpc_endpoint()
        ),
    );
    // 20 failed connects now, then one event an hour later: paced replay
    // keeps the agent running with the collector away.
    let mut rec = String::new();
    for i in 0..20 {
        rec.push_str(&failed_connect(1000 + i, "2026-11-20T10:00:00Z"));
        rec.push('\n');
    }
    rec.push_str(&failed_connect(5000, "2026-11-20T11:00:00Z"));
    rec.push('\n');
    let rec_path = dir.path().join("first.jsonl");
    write(&rec_path, &rec);

    let mut agent = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--replay-speed", "1", "--config"])
        .arg(&cfg)
        .arg("--replay")
        .arg(&rec_path)
        .env("CUSTOS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let spool = dir.path().join("spool");
    let deadline = Instant::now() + Duration::from_secs(20);
    while spool_files(&spool) < 2 {
        if Instant::now() > deadline || agent.try_wait().unwrap().is_some() {
            let _ = agent.kill();
            let out = agent.wait_with_output().unwrap();
            panic!("no spooled batches; agent stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // kill -9: no flush, no goodbye.
    agent.kill().unwrap();
    agent.wait().unwrap();
    let spooled = spool_files(&spool);
    assert!(spooled >= 2, "spool kept {spooled} batches");
    // The collector returns; the agent starts again (with nothing new to
    // replay) and sends the spool before it exits.
    rx.restart().await.unwrap();
    let empty = dir.path().join("empty.jsonl");
    write(&empty, "");
    let out = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--config"])
        .arg(&cfg)
        .arg("--replay")
        .arg(&empty)
        .env("CUSTOS_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pids = rx.recorder.pids_of("api", "custos.tcp.connect");
    assert_eq!(pids, (1000..1020).collect::<Vec<_>>(), "every log record from before the kill arrived");
    assert_eq!(spool_files(&spool), 0, "the spool was drained");
    // Metrics spooled before the kill arrived too, with the counts of the first run.
    assert_eq!(
        rx.recorder.latest_int("api", "custos.tcp.connects", &[("error.type", "ECONNREFUSED")]),
        Some(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_spools_what_the_agent_holds_within_its_budget() {
    let mut rx = OtlpReceiver::start().await.unwrap();
    rx.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("custos.yaml");
    // An hour-long interval: nothing leaves before SIGTERM, so whatever
    // arrives later was flushed by the shutdown.
    write(
        &cfg,
        &format!(
            "agent:\n  state_dir: {}\n  listen: \"127.0.0.1:0\"\nexporter:\n  interval: 1h\n  log_rate_limit: {{ max: 100000, per: 1m }}\n  otlp: {{ endpoint: \"{}\", protocol: http, timeout: 1s }}\n",
            dir.path().display(),
            rx.http_endpoint()
        ),
    );
    let mut rec = String::new();
    for i in 0..10 {
        rec.push_str(&failed_connect(2000 + i, "2026-11-20T10:00:00Z"));
        rec.push('\n');
    }
    // A paced replay keeps the agent alive until its next event (2 s on);
    // `run` waits for the replay task after a stop, so keep the gap short.
    rec.push_str(&failed_connect(5000, "2026-11-20T10:00:02Z"));
    rec.push('\n');
    let rec_path = dir.path().join("rec.jsonl");
    write(&rec_path, &rec);
    let agent = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--replay-speed", "1", "--config"])
        .arg(&cfg)
        .arg("--replay")
        .arg(&rec_path)
        .env("CUSTOS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the first ten events through the pipeline.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = agent.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let out = agent.wait_with_output().unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(12), "stopped within the 10 s export budget (took {took:?})");
    assert!(spool_files(&dir.path().join("spool")) >= 2, "metrics and logs were spooled");

    rx.restart().await.unwrap();
    let empty = dir.path().join("empty.jsonl");
    write(&empty, "");
    let out = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--config"])
        .arg(&cfg)
        .arg("--replay")
        .arg(&empty)
        .env("CUSTOS_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pids: Vec<u32> = rx
        .recorder
        .log_records()
        .iter()
        .filter(|(_, l)| l.event_name == "custos.tcp.connect")
        .filter_map(|(_, l)| str_attr(&l.attributes, "process.pid")?.parse().ok())
        .collect();
    pids.sort();
    pids.dedup();
    assert!(pids.starts_with(&(2000..2010).collect::<Vec<_>>()), "{pids:?}");
}

/// `custos reload` with a new collector (another endpoint and protocol)
/// takes effect at once: what was spooled while the old one was away and
/// what comes after go to the new one. A key that needs a restart is named
/// in the reload's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_export_and_the_spool_to_a_new_collector() {
    let mut old = OtlpReceiver::start().await.unwrap();
    old.stop().await;
    let new = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("custos.yaml");
    let socket = dir.path().join("control.sock");
    let config = |endpoint: &str, protocol: &str, queue: u32| {
        format!(
            "agent:\n  state_dir: {}\n  listen: \"127.0.0.1:0\"\nservices:\n  - name: api\n    exe: /usr/bin/api\nexporter:\n  interval: 200ms\n  queue_capacity: {queue}\n  log_rate_limit: {{ max: 100000, per: 1m }}\n  otlp: {{ endpoint: \"{endpoint}\", protocol: {protocol}, timeout: 1s }}\n",
            dir.path().display()
        )
    };
    write(&cfg, &config(&old.grpc_endpoint(), "grpc", 65536));
    let mut rec = String::new();
    for i in 0..20 {
        rec.push_str(&failed_connect(1000 + i, "2026-11-20T10:00:00Z"));
        rec.push('\n');
    }
    rec.push_str(&failed_connect(5000, "2026-11-20T11:00:00Z"));
    rec.push('\n');
    let rec_path = dir.path().join("rec.jsonl");
    write(&rec_path, &rec);
    let mut agent = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--replay-speed", "1", "--config"])
        .arg(&cfg)
        .arg("--replay")
        .arg(&rec_path)
        .env("CUSTOS_LOG", "warn")
        .env("CUSTOS_CONTROL_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let spool = dir.path().join("spool");
    let deadline = Instant::now() + Duration::from_secs(20);
    while spool_files(&spool) < 2 {
        if Instant::now() > deadline || agent.try_wait().unwrap().is_some() {
            let _ = agent.kill();
            let out = agent.wait_with_output().unwrap();
            panic!("no spooled batches; agent stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(&cfg, &config(&new.http_endpoint(), "http", 1024));
    let reload =
        Command::new(custos_bin()).args(["reload"]).env("CUSTOS_CONTROL_SOCKET", &socket).output().unwrap();
    let said = String::from_utf8_lossy(&reload.stdout).to_string();
    assert!(reload.status.success(), "{said}{}", String::from_utf8_lossy(&reload.stderr));
    assert!(
        said.contains("`exporter.queue_capacity` changed: it takes effect when the agent restarts"),
        "{said}"
    );
    assert!(!said.contains("exporter.otlp"), "the collector's settings apply at once: {said}");
    let recorder = new.recorder.clone();
    recorder
        .wait_for(Duration::from_secs(20), "the spooled connects at the new collector", |r| {
            r.pids_of("api", "custos.tcp.connect").len() >= 20
        })
        .await;
    assert_eq!(recorder.pids_of("api", "custos.tcp.connect"), (1000..1020).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool_files(&spool) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spool_files(&spool), 0, "the spool was drained to the new collector");
    assert!(old.recorder.requests().is_empty());
    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
