//! `custos run` speaks the systemd notification protocol and serves its
//! control socket, checked without systemd: the test binds the
//! `NOTIFY_SOCKET` itself and reads what the agent sends (no privileges).

#![cfg(unix)]

use custos_tests::custos_bin;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Two events a minute apart, replayed at recorded speed: the agent runs
/// for a minute unless stopped.
const RECORDING: &str = r#"{"kind":"process_start","ts":"2024-01-01T00:00:00Z","service":"api","pid":10,"comm":"api","ppid":1,"exe":"/usr/bin/api","argv":["/usr/bin/api"]}
{"kind":"process_exit","ts":"2024-01-01T00:01:00Z","service":"api","pid":10,"comm":"api","exit_code":0,"lifetime_ns":5}
"#;

struct Agent {
    child: Child,
    notify: UnixDatagram,
    socket: std::path::PathBuf,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(extra_env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let rec = dir.path().join("rec.jsonl");
        std::fs::write(&rec, RECORDING).unwrap();
        let config = dir.path().join("custos.yaml");
        std::fs::write(&config, format!("agent: {{ state_dir: {} }}\n", dir.path().join("state").display()))
            .unwrap();
        let socket = dir.path().join("control.sock");
        let mut cmd = Command::new(custos_bin());
        cmd.args(["run", "--summary", "never", "--replay-speed", "1", "--replay"])
            .arg(&rec)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("WATCHDOG_PID")
            .env_remove("CUSTOS_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn custos run");
        Agent { child, notify, socket, config, _dir: dir }
    }

    /// Waits for a datagram containing `needle`; returns it.
    fn expect(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no notification containing {needle:?} within {timeout:?}");
            self.notify.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.contains(needle) {
                    return msg;
                }
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(custos_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill with a pid of our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "custos did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_watchdog_status_reload_and_stop_are_announced() {
    let mut agent = Agent::start(&[]);
    let ready = agent.expect("READY=1", Duration::from_secs(20));
    assert!(ready.contains("STATUS=running:"), "{ready}");
    agent.expect("WATCHDOG=1", Duration::from_secs(10));

    let s = agent.status();
    assert_eq!(s["state"], "running");
    assert_eq!(s["pid"], agent.child.id());
    assert_eq!(s["config_path"], agent.config.display().to_string());

    // A valid reload, then an invalid one that is rejected.
    std::fs::write(&agent.config, "detection: { sensitivity: high }\n").unwrap();
    agent.signal(libc::SIGHUP);
    let reloading = agent.expect("RELOADING=1", Duration::from_secs(10));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    agent.expect("READY=1", Duration::from_secs(10));
    assert_eq!(agent.status()["last_reload"]["ok"], true);
    std::fs::write(&agent.config, "detection: { sensitivity: extreme }\n").unwrap();
    agent.signal(libc::SIGHUP);
    agent.expect("RELOADING=1", Duration::from_secs(10));
    agent.expect("READY=1", Duration::from_secs(10));
    let s = agent.status();
    assert_eq!(s["last_reload"]["ok"], false);
    let err = s["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains(&format!("{}:1:", agent.config.display())), "{err}");
    assert_eq!(s["state"], "running");

    agent.signal(libc::SIGTERM);
    agent.expect("STOPPING=1", Duration::from_secs(10));
    let status = wait_exit(&mut agent.child, Duration::from_secs(30));
    assert!(status.success(), "custos exited with {status}");
    assert!(!agent.socket.exists(), "control socket left behind");
    let out = Command::new(custos_bin()).args(["status", "--socket"]).arg(&agent.socket).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("custos is not running"));
}

/// Two agents on one state dir would act on the same services and break
/// the audit chain; the second refuses to start and names the first.
#[test]
fn a_second_agent_on_the_same_state_dir_refuses_to_start() {
    let agent = Agent::start(&[]);
    agent.expect("READY=1", Duration::from_secs(20));
    let other_socket = agent.socket.with_file_name("second.sock");
    let mut second = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--replay", "/dev/null", "--config"])
        .arg(&agent.config)
        .arg("--socket")
        .arg(&other_socket)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CUSTOS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second agent");
    let status = wait_exit(&mut second, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the second agent ran: {err}");
    assert!(err.contains(&format!("pid {}", agent.child.id())), "the holder is named: {err}");
    assert!(!other_socket.exists(), "it refused before opening anything");
    // The first one is unaffected.
    assert_eq!(agent.status()["state"], "running");
}

#[test]
fn a_stalled_pipeline_stops_the_keep_alives() {
    let agent = Agent::start(&[("CUSTOS_TEST_STALL_AFTER", "1")]);
    agent.expect("READY=1", Duration::from_secs(20));
    // Past the stall (1s) plus one watchdog interval (0.5s) and a margin,
    // drain what was sent before; then nothing more may come.
    std::thread::sleep(Duration::from_secs(3));
    agent.notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while agent.notify.recv(&mut buf).is_ok() {}
    agent.notify.set_nonblocking(false).unwrap();
    agent.notify.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match agent.notify.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(!msg.contains("WATCHDOG=1"), "keep-alive sent by a stalled pipeline: {msg}");
            }
            Err(_) => break,
        }
    }
    // The agent is alive all the same: only its pipeline is stuck.
    assert_eq!(agent.status()["state"], "running");
}

#[test]
fn without_notify_socket_nothing_is_required() {
    // Plain foreground run: no NOTIFY_SOCKET, still stops cleanly on SIGINT.
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    std::fs::write(&rec, RECORDING).unwrap();
    let mut child = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--replay-speed", "1", "--replay"])
        .arg(&rec)
        .arg("--socket")
        .arg(dir.path().join("c.sock"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CUSTOS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.path().join("c.sock");
    let start = Instant::now();
    while !Path::new(&sock).exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "control socket never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exports_every_event_seen_before_the_stop() {
    use custos_tests::otlp::OtlpReceiver;
    let rx = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("custos.yaml");
    // An hour-long interval: nothing leaves before the stop, so what arrives
    // was flushed by the stop itself.
    std::fs::write(
        &cfg,
        format!(
            "agent:\n  state_dir: {}\n  listen: \"127.0.0.1:0\"\nexporter:\n  interval: 1h\n  log_rate_limit: {{ max: 100000, per: 1m }}\n  otlp: {{ endpoint: \"{}\", protocol: grpc, timeout: 2s }}\n",
            dir.path().display(),
            rx.grpc_endpoint()
        ),
    )
    .unwrap();
    // 15 events now, then one a minute later that the stop must not wait for.
    let connect = |pid: u32, ts: &str| {
        format!(
            r#"{{"kind":"tcp_connect","ts":"{ts}","service":"api","pid":{pid},"family":"ipv4","saddr":"127.0.0.1","sport":1,"daddr":"127.0.0.2","dport":9,"result":"ECONNREFUSED"}}"#
        )
    };
    let mut rec: String = (0..15).map(|i| connect(3000 + i, "2026-11-20T10:00:00Z") + "\n").collect();
    rec.push_str(&(connect(9999, "2026-11-20T10:01:00Z") + "\n"));
    let rec_path = dir.path().join("rec.jsonl");
    std::fs::write(&rec_path, rec).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let socket = dir.path().join("c.sock");
    let mut child = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--replay-speed", "1", "--replay"])
        .arg(&rec_path)
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("CUSTOS_LOG", "warn")
        .env_remove("CUSTOS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4096];
        notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 within 20s");
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                break;
            }
        }
        // Until the 15 events went through the pipeline.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(custos_bin())
                .args(["status", "--json", "--socket"])
                .arg(&socket)
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if v["events_total"].as_u64().unwrap_or(0) >= 15 {
                break;
            }
            assert!(Instant::now() < deadline, "the events never reached the pipeline");
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        wait_exit(&mut child, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(status.success(), "custos exited with {status}");
    let pids = rx.recorder.pids_of("api", "custos.tcp.connect");
    assert_eq!(pids, (3000..3015).collect::<Vec<_>>(), "events seen before the stop were not all exported");
}
