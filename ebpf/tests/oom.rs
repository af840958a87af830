//! An OOM kill in a memory-limited cgroup: the oom_kill event (marked as the
//! cgroup's, with the victim's resident memory), the fatal SIGKILL from the
//! kernel, and the exit marked oom_killed.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::Scope;
use custos_event::{EventBody, EventKind, Signal};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A memory cgroup limited to `limit` bytes: cgroup v2 when the memory
/// controller is there, else the v1 memory hierarchy. Removed on drop.
struct MemoryCgroup {
    path: PathBuf,
}

impl MemoryCgroup {
    fn new(limit: u64) -> Result<MemoryCgroup, String> {
        let v2 = custos_ebpf::cgroup2_mount().map_err(|e| e.to_string())?;
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        let name = format!("custos-test-oom-{}", std::process::id());
        let (path, limit_file) = if controllers.split_whitespace().any(|c| c == "memory") {
            (v2.join(&name), "memory.max")
        } else if PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            (PathBuf::from("/sys/fs/cgroup/memory").join(&name), "memory.limit_in_bytes")
        } else {
            return Err("no memory cgroup controller (v1 or v2)".to_string());
        };
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        let cg = MemoryCgroup { path };
        std::fs::write(cg.path.join(limit_file), limit.to_string())
            .map_err(|e| format!("set {limit_file}: {e}"))?;
        Ok(cg)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const LIMIT: u64 = 32 << 20;
const ALLOC: usize = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_in_a_limited_cgroup() {
    if !bpf_available() {
        return;
    }
    let cg = match MemoryCgroup::new(LIMIT) {
        Ok(cg) => cg,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let (sensor, mut rx) = start(options(Scope::Everything));
    let procs = std::ffi::CString::new(cg.path.join("cgroup.procs").as_os_str().as_encoded_bytes()).unwrap();
    let mut cmd = Command::new("/bin/true");
    no_core_dumps(&mut cmd);
    // SAFETY: raw syscalls only in the forked child: join the cgroup, then
    // touch far more anonymous memory than it allows.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs)?;
            let p = libc::mmap(
                std::ptr::null_mut(),
                ALLOC,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let p = p.cast::<u8>();
            for off in (0..ALLOC).step_by(4096) {
                std::ptr::write_volatile(p.add(off), 1);
            }
            Ok(())
        });
    }
    // The child dies before exec, so spawn itself reports an error.
    let _ = cmd.spawn();
    let me = std::process::id();
    let events = collect_until(
        &mut rx,
        Duration::from_secs(20),
        |e| match &e.body {
            EventBody::OomKill(_) => true,
            EventBody::ProcessExit(x) => x.ppid == me && x.signal == Some(Signal(libc::SIGKILL)),
            EventBody::Signal(s) => s.signal == Signal(libc::SIGKILL) && s.sender_pid == 0,
            _ => false,
        },
        |seen| seen.iter().any(|e| e.kind() == EventKind::ProcessExit),
    )
    .await;
    let exit = events.iter().find(|e| e.kind() == EventKind::ProcessExit).unwrap();
    let EventBody::ProcessExit(x) = &exit.body else { unreachable!() };
    assert!(x.oom_killed, "the exit follows an oom_kill of the same pid: {events:#?}");
    let oom = events.iter().find(|e| e.kind() == EventKind::OomKill && e.pid == exit.pid);
    let EventBody::OomKill(o) = &oom.expect("an oom_kill of the exiting pid").body else { unreachable!() };
    assert!(o.memcg, "the kill was the cgroup's limit, not the host's: {o:?}");
    // Resident at the kill: the anonymous memory touched up to the limit,
    // plus what the child shares with the test process since the fork.
    let rss = o.rss_bytes.expect("the victim's resident memory");
    assert!((LIMIT / 2..ALLOC as u64).contains(&rss), "rss {rss} bytes, limit {LIMIT}: {o:?}");
    let kill = events.iter().find(|e| e.kind() == EventKind::Signal && e.pid == exit.pid);
    let EventBody::Signal(s) = &kill.expect("the OOM killer's SIGKILL").body else { unreachable!() };
    assert_eq!(s.code, Some(0x80), "SI_KERNEL");
    sensor.shutdown().await;
}
