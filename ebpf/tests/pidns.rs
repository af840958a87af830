//! PIDs are reported as the agent's own PID namespace sees them: this test
//! re-runs itself as the "agent" inside a fresh PID namespace (as when custos
//! runs in a container or next to a sandboxed systemd).
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::Scope;
use custos_event::{EventBody, EventKind};
use std::process::Command;
use std::time::Duration;

const INNER: &str = "CUSTOS_TEST_PIDNS_INNER";
const NAME: &str = "pids_are_those_of_the_agents_namespace";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_are_those_of_the_agents_namespace() {
    if std::env::var_os(INNER).is_some() {
        return inner().await;
    }
    if !bpf_available() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(exe)
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env(INNER, "1")
        .output()
        .expect("run unshare");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the agent in its own pid namespace failed:\n{text}");
    assert!(text.contains("pidns-ok"), "{text}");
}

async fn inner() {
    // In the new namespace this process has a small pid (unshare --fork
    // makes it pid 1).
    let me = std::process::id();
    assert!(me < 10, "not in a fresh pid namespace: pid {me}");
    let (sensor, mut rx) = start(options(Scope::Everything));
    let mark = marker("pidns");
    let mut child = Command::new("/bin/sh").args(["-c", "exit 3", &mark]).spawn().unwrap();
    let pid = child.id();
    let events = collect_until(
        &mut rx,
        Duration::from_secs(10),
        |e| e.pid == pid,
        |seen| seen.iter().any(|e| e.kind() == EventKind::ProcessExit),
    )
    .await;
    child.wait().unwrap();
    let start = events.iter().find(|e| e.kind() == EventKind::ProcessStart).expect("the child's start");
    let EventBody::ProcessStart(s) = &start.body else { unreachable!() };
    assert!(s.argv.contains(&mark));
    assert_eq!(s.ppid, me, "the parent as this namespace sees it");
    assert_eq!(start.tid, pid);
    sensor.shutdown().await;
    println!("pidns-ok");
}
