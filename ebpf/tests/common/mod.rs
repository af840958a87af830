//! Shared helpers of the privileged sensor tests.
#![allow(dead_code)]

use custos_ebpf::{availability, EbpfSensor, Scope, SensorOptions};
use custos_event::Event;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// False (after printing why) when BPF cannot run here; panics instead under
/// CUSTOS_REQUIRE_BPF=1 so that CI cannot silently skip.
pub fn bpf_available() -> bool {
    match availability() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("CUSTOS_REQUIRE_BPF").as_deref() == Ok("1") {
                panic!("BPF is required (CUSTOS_REQUIRE_BPF=1) but unavailable: {reason}");
            }
            println!("skipped: {reason}");
            false
        }
    }
}

pub fn options(scope: Scope) -> SensorOptions {
    SensorOptions { scope, syscall_interval: Duration::from_millis(200), ..SensorOptions::default() }
}

pub fn start(opts: SensorOptions) -> (EbpfSensor, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(65536);
    let sensor = EbpfSensor::start(opts, tx).expect("the sensor starts");
    (sensor, rx)
}

/// Collects events that `keep` accepts until `done` says the wanted ones are
/// in, or panics after `timeout` showing what was seen.
pub async fn collect_until(
    rx: &mut mpsc::Receiver<Event>,
    timeout: Duration,
    keep: impl Fn(&Event) -> bool,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut kept = Vec::new();
    while !done(&kept) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) if keep(&e) => kept.push(e),
            Ok(Some(_)) => {}
            Ok(None) => panic!("sensor channel closed; seen: {kept:#?}"),
            Err(_) => panic!("timed out after {timeout:?} waiting for events; seen: {kept:#?}"),
        }
    }
    kept
}

/// Keeps reading for `quiet` and returns what `keep` accepts.
pub async fn collect_for(
    rx: &mut mpsc::Receiver<Event>,
    quiet: Duration,
    keep: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + quiet;
    let mut kept = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) if keep(&e) => kept.push(e),
            Ok(Some(_)) => {}
            _ => return kept,
        }
    }
}

/// A unique marker argument for this test run.
pub fn marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("custos-marker-{name}-{}-{nanos}", std::process::id())
}

/// A fresh cgroup v2 directory, removed on drop (after its processes exit).
pub struct TestCgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let root = custos_ebpf::cgroup2_mount().expect("a cgroup2 mount");
        let path = root.join(format!("custos-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let id = custos_ebpf::cgroup_id_of_path(&path).unwrap();
        TestCgroup { path, id }
    }

    /// The cgroup.procs file as a C string, for use after fork.
    pub fn procs(&self) -> std::ffi::CString {
        std::ffi::CString::new(self.path.join("cgroup.procs").as_os_str().as_encoded_bytes()).unwrap()
    }

    /// Makes `cmd`'s child join this cgroup before it executes.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        let procs = self.procs();
        // SAFETY: the closure only makes async-signal-safe calls
        // (open/write/close) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || join_cgroup(&procs));
        }
    }
}

/// Writes "0" (meaning: the writing process) into a cgroup.procs file.
pub fn join_cgroup(procs: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: plain libc calls on a valid C string and a static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The kernel refuses while a (zombie) process is still inside: retry briefly.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Disables core dumps in the child (a crash must not litter the cwd).
pub fn no_core_dumps(cmd: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
