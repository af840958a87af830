//! Kernel-side scoping: with Scope::Managed only processes in managed
//! cgroups or tracked pids (and their descendants) are reported.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::Scope;
use custos_event::{EventBody, EventKind};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn argv_has(e: &custos_event::Event, mark: &str) -> bool {
    matches!(&e.body, EventBody::ProcessStart(s) if s.argv.iter().any(|a| a == mark))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_managed_cgroup_is_reported() {
    if !bpf_available() {
        return;
    }
    let cg = TestCgroup::new("managed");
    let (sensor, mut rx) = start(options(Scope::Managed));
    sensor.manage_cgroup(cg.id).unwrap();

    // Outside first, then inside: once the inside one's exit is in, the
    // outside one would have been reported long before if it leaked.
    let out_mark = marker("outside");
    let mut outside = Command::new("/bin/sh").args(["-c", "exit 4", &out_mark]).spawn().unwrap();
    let out_pid = outside.id();
    assert_eq!(outside.wait().unwrap().code(), Some(4));

    let in_mark = marker("inside");
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 5", &in_mark]);
    cg.enter_on_spawn(&mut cmd);
    let mut inside = cmd.spawn().unwrap();
    let in_pid = inside.id();
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| e.pid == in_pid || e.pid == out_pid || argv_has(e, &out_mark),
        |seen| seen.iter().any(|e| e.pid == in_pid && e.kind() == EventKind::ProcessExit),
    )
    .await;
    assert_eq!(inside.wait().unwrap().code(), Some(5));
    assert!(events.iter().all(|e| e.pid == in_pid), "the unmanaged process leaked: {events:#?}");
    assert!(events.iter().all(|e| e.cgroup_id == cg.id));
    assert!(events.iter().any(|e| argv_has(e, &in_mark)));

    // Unmanaged again: nothing more from that cgroup.
    sensor.unmanage_cgroup(cg.id).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 6", &in_mark]);
    cg.enter_on_spawn(&mut cmd);
    let mut again = cmd.spawn().unwrap();
    let again_pid = again.id();
    again.wait().unwrap();
    let late = collect_for(&mut rx, Duration::from_millis(500), |e| e.pid == again_pid).await;
    assert!(late.is_empty(), "{late:#?}");
    sensor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_pids_pass_to_children_in_the_kernel() {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(options(Scope::Managed));
    // A shell that waits for a go signal on stdin, then forks a grandchild.
    let mark = marker("grandchild");
    let mut parent = Command::new("/bin/sh")
        .args(["-c", &format!("read go; /bin/sh -c 'exit 7' {mark}; exit 0")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let parent_pid = parent.id();
    sensor.track_pid(parent_pid).unwrap();
    use std::io::Write;
    parent.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| {
            argv_has(e, &mark)
                || e.pid == parent_pid
                || matches!(&e.body, EventBody::ProcessExit(x) if x.exit_code == Some(7))
        },
        |seen| seen.iter().any(|e| e.pid == parent_pid && e.kind() == EventKind::ProcessExit),
    )
    .await;
    parent.wait().unwrap();
    let child =
        events.iter().find(|e| argv_has(e, &mark)).expect("the grandchild's exec, tracked by inheritance");
    let EventBody::ProcessStart(s) = &child.body else { unreachable!() };
    assert_eq!(s.ppid, parent_pid);
    let child_exit = events.iter().find(|e| e.pid == child.pid && e.kind() == EventKind::ProcessExit);
    let EventBody::ProcessExit(x) = &child_exit.expect("the grandchild's exit").body else { unreachable!() };
    assert_eq!(x.exit_code, Some(7));
    sensor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exec_can_be_asked_for_without_the_rest() {
    if !bpf_available() {
        return;
    }
    let mut opts = options(Scope::Managed);
    opts.syscalls = false;
    let (sensor, mut rx) = start(opts);
    sensor.emit_all_execs(true).unwrap();
    let mark = marker("all-execs");
    let mut child = Command::new("/bin/sh").args(["-c", "exit 0", &mark]).spawn().unwrap();
    let pid = child.id();
    let events = collect_until(&mut rx, WAIT, |e| e.pid == pid, |seen| !seen.is_empty()).await;
    child.wait().unwrap();
    assert_eq!(events[0].kind(), EventKind::ProcessStart);
    assert_eq!(events[0].service, None, "attribution is the agent's job");
    // Only the exec: the exit of an unmanaged process is not reported.
    let more = collect_for(&mut rx, Duration::from_millis(500), |e| e.pid == pid).await;
    assert!(more.is_empty(), "{more:#?}");
    sensor.shutdown().await;
}
