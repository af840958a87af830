//! Syscall statistics aggregated in the kernel: a child in its own managed
//! cgroup makes a known number of calls.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::{EbpfSensor, Scope, SensorOptions};
use custos_event::{Event, EventBody, SyscallStat};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const GETPPID_CALLS: u64 = 1000;
const BAD_READS: u64 = 250;

/// Runs /bin/true in `cg` after GETPPID_CALLS getppid calls and BAD_READS
/// failing reads, and waits for it. The forked child makes calls in the
/// test's cgroup (out of scope, a decision the kernel keeps per thread)
/// before it moves into `cg` without exec'ing: its calls there are counted
/// only if the move clears that decision.
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
async fn collect(rx: &mut mpsc::Receiver<Event>, cgroup_id: u64) -> HashMap<String, SyscallStat> {
    let mut totals: HashMap<String, SyscallStat> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(800) {
        let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await else { continue };
        let EventBody::SyscallStats(s) = e.body else { continue };
        if e.cgroup_id != cgroup_id {
            continue;
        }
        // Nominally 200 ms; the real length is reported (shorter after a
        // late tick on a loaded machine, never zero or seconds).
        assert!((1..2_000_000_000).contains(&s.interval_ns), "{}", s.interval_ns);
        for st in s.syscalls {
            let t = totals.entry(st.name.clone()).or_default();
            t.count += st.count;
            t.errors += st.errors;
            // The highest of the intervals: non-zero once any call was timed.
            t.p50_ns = t.p50_ns.max(st.p50_ns);
            t.p99_ns = t.p99_ns.max(st.p99_ns);
            assert!(st.p50_ns <= st.p99_ns);
            let timed = st.latency_log2.iter().sum::<u64>();
            // A total's latency_log2 collects each interval's timed count.
            t.latency_log2.push(timed);
        }
        quiet_since = Instant::now();
    }
    // Calls are counted when they return and timed when they also started
    // in scope (the child's write to cgroup.procs did not). Counts and
    // histograms are read one after the other, so a call can fall in
    // neighbouring intervals of the two: compare the totals.
    for (name, t) in &totals {
        assert!(t.latency_log2.iter().sum::<u64>() <= t.count, "{name}: {t:?}");
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
    let totals = collect(&mut rx, cg.id).await;
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
    let totals = collect(&mut rx, cg.id).await;
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
    assert_eq!(timed(totals.get("read").unwrap()), read.count);
    // Counted when they return: exit_group never does.
    assert!(!totals.contains_key("exit_group"), "{totals:#?}");
}

/// With `syscall_latency_sample: 4`, calls are timed a quarter of the time
/// (in windows at random times): counts and errors stay exact, and of calls
/// spread evenly over two seconds about a quarter land in the histogram, not
/// all or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_latency_keeps_exact_counts() {
    if !bpf_available() {
        return;
    }
    const SPREAD_CALLS: u64 = 2000;
    let cg = TestCgroup::new("syscalls-windows");
    let (sensor, mut rx) = start(SensorOptions { syscall_latency_sample: 4, ..options(Scope::Managed) });
    sensor.manage_cgroup(cg.id).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let procs = cg.procs();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: only raw syscalls in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            // A fork holds the parent's descriptors, the timing window's
            // BPF link among them: a window open at the fork would stay
            // open until the child execs. This child runs for seconds
            // before it does, so it lets them go first.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            join_cgroup(&procs)?;
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
            for _ in 0..SPREAD_CALLS {
                libc::syscall(libc::SYS_getppid);
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            let mut b = [0u8; 1];
            for _ in 0..BAD_READS {
                libc::syscall(libc::SYS_read, -1i64, b.as_mut_ptr(), 1usize);
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap().wait().unwrap();
    let totals = collect(&mut rx, cg.id).await;
    sensor.shutdown().await;
    let getppid = totals.get("getppid").unwrap_or_else(|| panic!("no getppid in {totals:#?}"));
    assert_eq!((getppid.count, getppid.errors), (SPREAD_CALLS, 0));
    // 250 ms windows, one per second, over 2+ seconds: at least one whole
    // window (12.5%) and at most three (37.5%) fall in the run.
    let n = timed(getppid);
    assert!((SPREAD_CALLS / 20..=SPREAD_CALLS / 2).contains(&n), "{n} of {SPREAD_CALLS} getppid calls timed");
    assert!(getppid.p50_ns > 0);
    let read = totals.get("read").unwrap_or_else(|| panic!("no read in {totals:#?}"));
    assert_eq!(read.errors, BAD_READS);
}

/// Managed cgroups count their calls in a per-CPU array row each; when every
/// row is taken, further cgroups count in the hash, and a row left by an
/// unmanaged cgroup is zeroed before another takes it. The counts stay
/// exact on every path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_past_the_rows_and_on_row_reuse() {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(SensorOptions { syscall_latency_sample: 1, ..options(Scope::Managed) });
    let rows = custos_ebpf::sizing::syscall_rows(aya::util::nr_cpus().unwrap() as u32);
    // Manages `cg`, runs the child there and checks that every getppid call
    // was counted and timed, and every failed read counted.
    async fn exact_in(sensor: &EbpfSensor, rx: &mut mpsc::Receiver<Event>, cg: &TestCgroup, place: &str) {
        sensor.manage_cgroup(cg.id).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_child(cg);
        let totals = collect(rx, cg.id).await;
        let getppid = totals.get("getppid").map(|s| (s.count, timed(s)));
        assert_eq!(getppid, Some((GETPPID_CALLS, GETPPID_CALLS)), "{place}: {totals:#?}");
        assert_eq!(totals.get("read").map(|r| r.errors), Some(BAD_READS), "{place}: {totals:#?}");
    }
    // Cgroup ids no process lives in take every row but the last, which the
    // first cgroup takes.
    for i in 1..u64::from(rows) {
        sensor.manage_cgroup(u64::MAX - i).unwrap();
    }
    let last = TestCgroup::new("syscalls-last-row");
    exact_in(&sensor, &mut rx, &last, "in the last row").await;
    // No row left: the hash.
    let hashed = TestCgroup::new("syscalls-hashed");
    exact_in(&sensor, &mut rx, &hashed, "in the hash").await;
    // The last row, freed after its last reading, is taken by a new cgroup
    // and starts from zero.
    sensor.unmanage_cgroup(last.id).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reused = TestCgroup::new("syscalls-reused-row");
    exact_in(&sensor, &mut rx, &reused, "in a reused row").await;
    sensor.shutdown().await;
}
