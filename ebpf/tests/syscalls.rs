//! Syscall statistics aggregated in the kernel: a child in its own managed
//! cgroup makes a known number of calls.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::{Scope, SensorOptions};
use custos_event::{Event, EventBody, SyscallStat};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const GETPPID_CALLS: u64 = 1000;
const BAD_READS: u64 = 250;

/// Runs /bin/true in `cg` after GETPPID_CALLS getppid calls and BAD_READS
/// failing reads, and waits for it.
fn run_child(cg: &TestCgroup) {
    let procs = cg.procs();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: only raw syscalls in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs)?;
            for _ in 0..GETPPID_CALLS {
                libc::syscall(libc::SYS_getppid);
            }
            let mut b = [0u8; 1];
            for _ in 0..BAD_READS {
                libc::syscall(libc::SYS_read, -1i64, b.as_mut_ptr(), 1usize);
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap().wait().unwrap();
}

/// Sums every interval's statistics for `cgroup_id` until they stop
/// changing, checking each event on the way.
async fn collect(
    rx: &mut mpsc::Receiver<Event>,
    cgroup_id: u64,
    sample: u32,
) -> HashMap<String, SyscallStat> {
    let mut totals: HashMap<String, SyscallStat> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(800) {
        let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await else { continue };
        let EventBody::SyscallStats(s) = e.body else { continue };
        if e.cgroup_id != cgroup_id {
            continue;
        }
        // Nominally 200 ms; the real length is reported.
        assert!((150_000_000..2_000_000_000).contains(&s.interval_ns), "{}", s.interval_ns);
        for st in s.syscalls {
            let t = totals.entry(st.name.clone()).or_default();
            t.count += st.count;
            t.errors += st.errors;
            t.p50_ns = st.p50_ns;
            t.p99_ns = st.p99_ns;
            assert!(st.p50_ns <= st.p99_ns);
            let timed = st.latency_log2.iter().sum::<u64>();
            // A total's latency_log2 collects each interval's timed count.
            t.latency_log2.push(timed);
            // Calls are counted on entry; exit and exit_group never return,
            // so they have no latency.
            if sample == 1 && !matches!(st.name.as_str(), "exit" | "exit_group") {
                assert_eq!(timed, st.count, "{st:?}");
            } else {
                assert!(timed <= st.count, "{st:?}");
            }
        }
        quiet_since = Instant::now();
    }
    totals
}

/// Totals per syscall name of one child ([`run_child`]) in a managed cgroup,
/// with one call in `sample` timed.
async fn child_syscall_totals(sample: u32) -> HashMap<String, SyscallStat> {
    let cg = TestCgroup::new(&format!("syscalls-{sample}"));
    let (sensor, mut rx) = start(SensorOptions { syscall_latency_sample: sample, ..options(Scope::Managed) });
    sensor.manage_cgroup(cg.id).unwrap();
    // Let the first reading (the baseline) pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    run_child(&cg);
    let totals = collect(&mut rx, cg.id, sample).await;
    sensor.shutdown().await;
    totals
}

/// Unmanaging a cgroup stops its counting for the processes that run in it
/// afterwards. (The per-CPU scope cache is not pinned down by this: a new
/// process runs in its parent's cgroup first, which replaces the cached
/// answer anyway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_cgroup_is_no_longer_counted() {
    if !bpf_available() {
        return;
    }
    let cg = TestCgroup::new("syscalls-unmanage");
    let (sensor, mut rx) = start(SensorOptions { syscall_latency_sample: 1, ..options(Scope::Managed) });
    sensor.manage_cgroup(cg.id).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    run_child(&cg);
    sensor.unmanage_cgroup(cg.id).unwrap();
    run_child(&cg);
    let totals = collect(&mut rx, cg.id, 1).await;
    let getppid = totals.get("getppid").unwrap_or_else(|| panic!("no getppid in {totals:#?}"));
    assert_eq!(getppid.count, GETPPID_CALLS, "{totals:#?}");
    sensor.shutdown().await;
}

fn timed(st: &SyscallStat) -> u64 {
    st.latency_log2.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_calls_and_errors_per_cgroup() {
    if !bpf_available() {
        return;
    }
    let totals = child_syscall_totals(1).await;
    let getppid = totals.get("getppid").unwrap_or_else(|| panic!("no getppid in {totals:#?}"));
    assert_eq!((getppid.count, getppid.errors), (GETPPID_CALLS, 0));
    assert!(getppid.p50_ns > 0);
    let read = totals.get("read").unwrap_or_else(|| panic!("no read in {totals:#?}"));
    // /bin/true's dynamic loader reads too, successfully.
    assert!(read.count >= BAD_READS, "{read:?}");
    assert_eq!(read.errors, BAD_READS);
    assert!(totals.contains_key("execve"), "{totals:#?}");
    assert_eq!(timed(getppid), GETPPID_CALLS);
    assert_eq!(totals.get("exit_group").map(|s| (s.count, timed(s))), Some((1, 0)), "{totals:#?}");
}

/// With 1 call in 8 timed, counts and errors stay exact and about an eighth
/// of the calls land in the histogram, drawn at random (so not all or none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_latency_keeps_exact_counts() {
    if !bpf_available() {
        return;
    }
    let totals = child_syscall_totals(8).await;
    let getppid = totals.get("getppid").unwrap_or_else(|| panic!("no getppid in {totals:#?}"));
    assert_eq!((getppid.count, getppid.errors), (GETPPID_CALLS, 0));
    // Binomial(1000, 1/8): mean 125, standard deviation 10.5; the bounds are
    // six deviations away.
    let n = timed(getppid);
    assert!((60..=190).contains(&n), "{n} of {GETPPID_CALLS} getppid calls timed");
    assert!(getppid.p50_ns > 0);
    let read = totals.get("read").unwrap_or_else(|| panic!("no read in {totals:#?}"));
    assert_eq!(read.errors, BAD_READS);
    let n = timed(read);
    assert!(n > 0 && n < read.count, "{n} of {} reads timed", read.count);
}
