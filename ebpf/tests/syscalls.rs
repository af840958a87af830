//! Syscall statistics aggregated in the kernel: a child in its own managed
//! cgroup makes a known number of calls.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::Scope;
use custos_event::{EventBody, SyscallStat};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const GETPPID_CALLS: u64 = 1000;
const BAD_READS: u64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_calls_and_errors_per_cgroup() {
    if !bpf_available() {
        return;
    }
    let cg = TestCgroup::new("syscalls");
    let (sensor, mut rx) = start(options(Scope::Managed));
    sensor.manage_cgroup(cg.id).unwrap();
    // Let the first reading (the baseline) pass.
    tokio::time::sleep(Duration::from_millis(300)).await;

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
    let mut child = cmd.spawn().unwrap();
    child.wait().unwrap();

    // Sum every interval's statistics for the cgroup until they stop changing.
    let mut totals: HashMap<String, SyscallStat> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(800) {
        let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await else { continue };
        let EventBody::SyscallStats(s) = e.body else { continue };
        if e.cgroup_id != cg.id {
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
            assert_eq!(st.latency_log2.iter().sum::<u64>(), st.count);
        }
        quiet_since = Instant::now();
    }
    let getppid = totals.get("getppid").unwrap_or_else(|| panic!("no getppid in {totals:#?}"));
    assert_eq!((getppid.count, getppid.errors), (GETPPID_CALLS, 0));
    assert!(getppid.p50_ns > 0);
    let read = totals.get("read").unwrap_or_else(|| panic!("no read in {totals:#?}"));
    // /bin/true's dynamic loader reads too, successfully.
    assert!(read.count >= BAD_READS, "{read:?}");
    assert_eq!(read.errors, BAD_READS);
    assert!(totals.contains_key("execve"), "{totals:#?}");
    sensor.shutdown().await;
}
