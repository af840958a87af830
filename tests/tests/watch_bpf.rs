//! `custos watch` on the real kernel sensor, as a user runs it.
#![cfg(target_os = "linux")]

use custos_tests::{custos_bin, gate};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn watch_json_reports_a_marked_process_and_its_failed_connect() {
    if !gate("watch_json_reports_a_marked_process", custos_ebpf::availability()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("custos.yaml");
    std::fs::write(&cfg, format!("agent: {{ state_dir: {} }}\n", dir.path().display())).unwrap();
    let mut watch = Command::new(custos_bin())
        .args(["watch", "--json", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give the programs time to attach, then act until seen (attach time
    // varies; repeating the marker is harmless).
    let marker = format!("custos-marker-{}", std::process::id());
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut saw_start, mut saw_exit, mut saw_refused) = (None, false, false);
    while Instant::now() < deadline && !(saw_start.is_some() && saw_exit && saw_refused) {
        let child = Command::new("/bin/sh").args(["-c", "exit 3", &marker]).spawn().unwrap().wait().unwrap();
        assert_eq!(child.code(), Some(3));
        let _ = std::net::TcpStream::connect(("127.0.0.1", closed_port));
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let argv_has_marker =
                v["argv"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(marker.as_str())));
            if v["kind"] == "process_start" && argv_has_marker {
                saw_start = v["pid"].as_u64();
                assert!(v["exe"].as_str().is_some_and(|e| e.ends_with("sh")), "{line}");
            }
            if v["kind"] == "process_exit" && saw_start.is_some() && v["pid"].as_u64() == saw_start {
                assert_eq!(v["exit_code"], 3, "{line}");
                saw_exit = true;
            }
            if v["kind"] == "tcp_connect" && v["dport"] == closed_port && v["pid"] == std::process::id() {
                assert_eq!(v["result"], "ECONNREFUSED", "{line}");
                saw_refused = true;
            }
        }
    }
    // SIGINT: watch prints its loss counters and exits cleanly.
    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(watch.id() as i32, libc::SIGINT) };
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lost: kernel"), "{stderr}");
    assert!(
        saw_start.is_some() && saw_exit && saw_refused,
        "start {saw_start:?} exit {saw_exit} refused {saw_refused}"
    );
    let _ = std::io::stdout().flush();
}
