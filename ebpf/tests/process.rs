//! Process events from the real BPF programs: exec (argv, exe), exit codes,
//! deaths by signal, fatal signals. Needs root; see common::bpf_available.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::Scope;
use custos_event::{EventBody, EventKind, Signal};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_argv_and_exe_and_exit_code() {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(options(Scope::Everything));
    let mark = marker("exit3");
    let mut child = Command::new("/bin/sh").args(["-c", "exit 3", &mark]).spawn().unwrap();
    let pid = child.id();
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| e.pid == pid && matches!(e.kind(), EventKind::ProcessStart | EventKind::ProcessExit),
        |seen| seen.iter().any(|e| e.kind() == EventKind::ProcessExit),
    )
    .await;
    assert_eq!(child.wait().unwrap().code(), Some(3));

    let start = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::ProcessStart(s) => Some(s),
            _ => None,
        })
        .expect("a process_start for the child");
    assert_eq!(start.argv, ["/bin/sh", "-c", "exit 3", mark.as_str()]);
    assert_eq!(start.exe, "/bin/sh");
    assert!(!start.argv_truncated);
    assert_eq!(start.ppid, std::process::id());
    // SAFETY: getuid has no preconditions.
    assert_eq!(start.uid, unsafe { libc::getuid() });

    let exit = events.iter().find(|e| e.kind() == EventKind::ProcessExit).unwrap();
    assert_eq!(exit.comm, "sh");
    assert_eq!(exit.tid, pid);
    let EventBody::ProcessExit(x) = &exit.body else { unreachable!() };
    assert_eq!(x.exit_code, Some(3));
    assert_eq!(x.signal, None);
    assert!(x.lifetime_ns > 0 && x.lifetime_ns < WAIT.as_nanos() as u64, "lifetime {}", x.lifetime_ns);
    assert_eq!(x.ppid, std::process::id());
    // Timestamps are wall time.
    let age = std::time::SystemTime::now().duration_since(exit.ts).expect("event time is in the past");
    assert!(age < WAIT, "event is {age:?} old");
    assert_eq!(sensor.loss().total(), 0);
    sensor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_argv_is_truncated_and_flagged() {
    if !bpf_available() {
        return;
    }
    let mut opts = options(Scope::Everything);
    opts.argv_max_args = 4;
    let (sensor, mut rx) = start(opts);
    let mark = marker("argv");
    let many: Vec<String> = (0..10).map(|i| format!("arg{i}")).collect();
    let long = "x".repeat(5000);
    let mut a = Command::new("/bin/true").arg(&mark).args(&many).spawn().unwrap();
    let mut b = Command::new("/bin/true").arg(&mark).arg(&long).spawn().unwrap();
    let (pa, pb) = (a.id(), b.id());
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| (e.pid == pa || e.pid == pb) && e.kind() == EventKind::ProcessStart,
        |seen| seen.len() == 2,
    )
    .await;
    a.wait().unwrap();
    b.wait().unwrap();
    for e in events {
        let EventBody::ProcessStart(s) = e.body else { unreachable!() };
        assert!(s.argv_truncated, "{s:?}");
        assert_eq!(s.argv[1], mark);
        if e.pid == pa {
            assert_eq!(s.argv, ["/bin/true", mark.as_str(), "arg0", "arg1"]);
        } else {
            // The kernel copies 4 KiB of arguments: the long one is cut.
            assert_eq!(s.argv.len(), 3);
            assert!(s.argv[2].len() < long.len() && s.argv[2].chars().all(|c| c == 'x'));
        }
    }
    sensor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_by_signal_and_fatal_signal_events() {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(options(Scope::Everything));
    let mark = marker("segv");
    // The shell sends itself SIGSEGV (default action: core dump); core dumps
    // are off in the child so core_dumped is false, the signal is what counts.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "kill -SEGV $$", &mark]);
    no_core_dumps(&mut cmd);
    let mut segv = cmd.spawn().unwrap();
    let segv_pid = segv.id();

    // A process killed by us: the sender is this test process.
    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let sleeper_pid = sleeper.id();
    // A handled signal is not fatal: sh traps SIGUSR1 and exits 0 later.
    let mut trapper = Command::new("/bin/sh")
        .args(["-c", "trap 'exit 0' USR1; kill -USR1 $$; exit 5", &marker("trap")])
        .spawn()
        .unwrap();
    let trapper_pid = trapper.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: kill on a child pid we own.
    assert_eq!(unsafe { libc::kill(sleeper_pid as i32, libc::SIGTERM) }, 0);

    let pids = [segv_pid, sleeper_pid, trapper_pid];
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| pids.contains(&e.pid) && matches!(e.kind(), EventKind::ProcessExit | EventKind::Signal),
        |seen| seen.iter().filter(|e| e.kind() == EventKind::ProcessExit).count() == 3,
    )
    .await;
    assert!(segv.wait().unwrap().code().is_none());
    assert!(sleeper.wait().unwrap().code().is_none());
    assert_eq!(trapper.wait().unwrap().code(), Some(0));

    let exit_of = |pid: u32| {
        events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::ProcessExit(x) if e.pid == pid => Some(x.clone()),
                _ => None,
            })
            .unwrap()
    };
    let x = exit_of(segv_pid);
    assert_eq!((x.signal, x.exit_code), (Some(Signal(libc::SIGSEGV)), None));
    let x = exit_of(sleeper_pid);
    assert_eq!(x.signal, Some(Signal(libc::SIGTERM)));
    assert_eq!(exit_of(trapper_pid).exit_code, Some(0));

    let signal_of = |pid: u32| {
        events.iter().find_map(|e| match &e.body {
            EventBody::Signal(s) if e.pid == pid => Some(s.clone()),
            _ => None,
        })
    };
    let s = signal_of(segv_pid).expect("a fatal signal event for the SIGSEGV");
    assert_eq!(s.signal, Signal(libc::SIGSEGV));
    assert_eq!(s.sender_pid, segv_pid, "the shell signalled itself");
    assert_eq!(s.code, Some(0), "SI_USER");
    let s = signal_of(sleeper_pid).expect("a fatal signal event for the SIGTERM");
    assert_eq!((s.signal, s.sender_pid), (Signal(libc::SIGTERM), std::process::id()));
    assert!(signal_of(trapper_pid).is_none(), "a trapped SIGUSR1 is not fatal: {events:#?}");
    sensor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_segmentation_fault_is_reported() {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(options(Scope::Everything));
    // A child that faults for real (kernel-sent SIGSEGV, si_code SEGV_MAPERR):
    // dereference address 8 in a forked child, without exec.
    let mut cmd = Command::new("/bin/true");
    no_core_dumps(&mut cmd);
    // SAFETY: the closure runs in the forked child and crashes it on purpose
    // before exec; nothing is shared with the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let p = std::hint::black_box(8usize) as *const u8;
            let _ = std::ptr::read_volatile(p);
            Ok(())
        });
    }
    // Spawn reports the crash as an error (the child died before exec), but
    // the process existed and died by SIGSEGV; find it through the events.
    let _ = cmd.spawn();
    let me = std::process::id();
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| match &e.body {
            EventBody::ProcessExit(x) => x.ppid == me && x.signal == Some(Signal(libc::SIGSEGV)),
            EventBody::Signal(s) => s.signal == Signal(libc::SIGSEGV) && s.sender_pid == 0,
            _ => false,
        },
        |seen| seen.iter().any(|e| e.kind() == EventKind::ProcessExit),
    )
    .await;
    let exit = events.iter().find(|e| e.kind() == EventKind::ProcessExit).unwrap();
    let sig = events.iter().find(|e| e.kind() == EventKind::Signal && e.pid == exit.pid);
    let sig = sig.expect("a fatal SIGSEGV event for the crashed child");
    let EventBody::Signal(s) = &sig.body else { unreachable!() };
    assert_eq!(s.code, Some(1), "SEGV_MAPERR: sent by the kernel on a fault");
    sensor.shutdown().await;
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let err = custos_ebpf::EbpfSensor::start(options(Scope::Everything), tx).err().expect("an error");
    assert!(matches!(err, custos_ebpf::SensorError::NoRuntime), "{err}");
}
