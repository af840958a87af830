//! Benchmark of the eBPF sensor (issue 2, performance parts 1 and 3):
//! completeness (an exec storm and a loopback connect storm inside a managed
//! cgroup, events expected vs captured, every loss counted) and the cost of
//! a syscall for an unmanaged and a managed process against no sensor at all,
//! measured in the same run.
//!
//! Run as root:
//!   cargo run --release -p custos-ebpf --example sensor_bench -- [--execs N] [--connects N]
//!       [--shells K] [--ring-bytes B] [--channel N] [--syscalls N] [--rounds R]
//!       [--no-syscall-stats]

// The cgroup helper of the privileged tests (created fresh, joined by
// spawned children, removed on drop).
#[path = "../tests/common/mod.rs"]
mod common;

use common::TestCgroup;
use custos_ebpf::{EbpfSensor, Scope, SensorOptions};
use custos_event::{Event, EventKind};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const PAYLOAD: usize = 100;

struct Args {
    execs: u32,
    connects: u32,
    shells: u32,
    ring_bytes: u32,
    channel: usize,
    syscalls: u64,
    rounds: u32,
    syscall_stats: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        execs: 5000,
        connects: 20000,
        shells: 2,
        ring_bytes: 8 << 20,
        channel: 16384,
        syscalls: 2_000_000,
        rounds: 7,
        syscall_stats: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--execs" => a.execs = value()?.parse().map_err(|e| format!("--execs: {e}"))?,
            "--connects" => a.connects = value()?.parse().map_err(|e| format!("--connects: {e}"))?,
            "--shells" => a.shells = value()?.parse().map_err(|e| format!("--shells: {e}"))?,
            "--ring-bytes" => a.ring_bytes = value()?.parse().map_err(|e| format!("--ring-bytes: {e}"))?,
            "--channel" => a.channel = value()?.parse().map_err(|e| format!("--channel: {e}"))?,
            "--syscalls" => a.syscalls = value()?.parse().map_err(|e| format!("--syscalls: {e}"))?,
            "--no-syscall-stats" => a.syscall_stats = false,
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// The connect storm, run in a child process inside the managed cgroup:
/// `n` loopback connections, each sending and echoing PAYLOAD bytes.
fn connect_storm_child(n: u32) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; PAYLOAD];
        for _ in 0..n {
            let (mut s, _) = listener.accept().expect("accept");
            s.read_exact(&mut buf).expect("server read");
            s.write_all(&buf).expect("server write");
        }
    });
    let mut buf = [0u8; PAYLOAD];
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&buf.clone()).expect("client write");
        c.read_exact(&mut buf).expect("client read");
    }
    server.join().unwrap();
}

/// The syscall loop, run in a child: `n` getppid() calls, prints ns per call.
fn syscall_loop_child(n: u64) {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getppid has no arguments and no preconditions.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    println!("{}", start.elapsed().as_nanos() as f64 / n as f64);
}

/// Ns per getppid() in one child, in `cg` when given.
fn syscall_cost(args: &Args, cg: Option<&TestCgroup>) -> f64 {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("CUSTOS_BENCH_SYSCALL_CHILD", args.syscalls.to_string());
    if let Some(cg) = cg {
        cg.enter_on_spawn(&mut cmd);
    }
    let out = cmd.output().expect("run the syscall loop");
    String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().expect("ns per call")
}

/// Minimum and median of some measurements.
fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

/// CPU seconds (user + system) this process has used so far: the sensor's
/// reader and decoder; the workloads run in child processes.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_row(cpu_secs: f64, events: u64) {
    println!(
        "  agent-side CPU: {:.3} s for {events} events = {:.1} ms per 1000 events (BPF time is charged to the observed processes)",
        cpu_secs,
        cpu_secs * 1e6 / events.max(1) as f64
    );
}

/// Counts events by kind for one cgroup until nothing arrives for `quiet`.
async fn drain(
    rx: &mut mpsc::Receiver<Event>,
    cgroup: u64,
    quiet: Duration,
    counts: &mut BTreeMap<EventKind, u64>,
) {
    while let Ok(Some(e)) = tokio::time::timeout(quiet, rx.recv()).await {
        if e.cgroup_id == cgroup {
            *counts.entry(e.kind()).or_default() += 1;
        }
    }
}

fn row(name: &str, expected: u64, captured: u64) {
    let pct = if expected == 0 { 100.0 } else { captured as f64 * 100.0 / expected as f64 };
    println!("  {name:<14} expected {expected:>7}  captured {captured:>7}  ({pct:6.2}%)");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Some(n) = std::env::var("CUSTOS_BENCH_CONNECT_CHILD").ok().and_then(|v| v.parse().ok()) {
        connect_storm_child(n);
        return;
    }
    if let Some(n) = std::env::var("CUSTOS_BENCH_SYSCALL_CHILD").ok().and_then(|v| v.parse().ok()) {
        syscall_loop_child(n);
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(reason) = custos_ebpf::availability() {
        eprintln!("error: {reason}");
        std::process::exit(1);
    }
    let cg = TestCgroup::new("bench");
    let cgroup_id = cg.id;

    let (tx, mut rx) = mpsc::channel(args.channel);
    let opts = SensorOptions {
        scope: Scope::Managed,
        ring_buffer_bytes: args.ring_bytes,
        syscalls: args.syscall_stats,
        ..SensorOptions::default()
    };
    let sensor = EbpfSensor::start(opts, tx).expect("start the sensor");
    sensor.manage_cgroup(cgroup_id).unwrap();
    println!(
        "custos sensor completeness: ring buffer {} KiB, channel {} events, scope = one managed cgroup",
        args.ring_bytes / 1024,
        args.channel
    );

    // Exec storm: K shells in the cgroup, each running /bin/true in a loop.
    let per_shell = args.execs.div_ceil(args.shells.max(1));
    let cpu_before = own_cpu_secs();
    let started = Instant::now();
    let mut shells = Vec::new();
    for _ in 0..args.shells.max(1) {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &format!("i=0; while [ $i -lt {per_shell} ]; do /bin/true; i=$((i+1)); done")]);
        cg.enter_on_spawn(&mut cmd);
        shells.push(cmd.spawn().expect("spawn a shell"));
    }
    let mut counts = BTreeMap::new();
    let collect = async {
        let mut c = BTreeMap::new();
        drain(&mut rx, cgroup_id, Duration::from_secs(2), &mut c).await;
        c
    };
    let waiter = tokio::task::spawn_blocking(move || {
        for mut s in shells {
            s.wait().unwrap();
        }
        Instant::now()
    });
    let (c, done) = tokio::join!(collect, waiter);
    counts.extend(c);
    let exec_secs = (done.unwrap() - started).as_secs_f64();
    let execs = (per_shell * args.shells.max(1)) as u64 + args.shells.max(1) as u64;
    let loss = sensor.loss();
    println!(
        "\nexec storm: {} execs of /bin/true from {} shells in {:.2} s ({:.0} execs/s)",
        per_shell * args.shells.max(1),
        args.shells.max(1),
        exec_secs,
        (per_shell * args.shells.max(1)) as f64 / exec_secs
    );
    row("process_start", execs, *counts.get(&EventKind::ProcessStart).unwrap_or(&0));
    row("process_exit", execs, *counts.get(&EventKind::ProcessExit).unwrap_or(&0));
    cpu_row(own_cpu_secs() - cpu_before, counts.values().sum());
    println!("  losses: kernel {} channel {}", loss.kernel, loss.channel);

    // Connect storm in a child in the cgroup.
    let before = sensor.loss();
    let cpu_before = own_cpu_secs();
    let started = Instant::now();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("CUSTOS_BENCH_CONNECT_CHILD", args.connects.to_string());
    cg.enter_on_spawn(&mut cmd);
    let mut child = cmd.spawn().expect("spawn the connect storm");
    let waiter = tokio::task::spawn_blocking(move || {
        let ok = child.wait().unwrap().success();
        (ok, Instant::now())
    });
    let collect = async {
        let mut c = BTreeMap::new();
        drain(&mut rx, cgroup_id, Duration::from_secs(2), &mut c).await;
        c
    };
    let (c, w) = tokio::join!(collect, waiter);
    let (ok, done) = w.unwrap();
    assert!(ok, "the connect storm child failed");
    let secs = (done - started).as_secs_f64();
    let n = args.connects as u64;
    println!("\nconnect storm: {n} loopback connections in {secs:.2} s ({:.0} conn/s)", n as f64 / secs);
    row("listen", 1, *c.get(&EventKind::Listen).unwrap_or(&0));
    row("tcp_connect", n, *c.get(&EventKind::TcpConnect).unwrap_or(&0));
    row("tcp_accept", n, *c.get(&EventKind::TcpAccept).unwrap_or(&0));
    row("tcp_close", 2 * n, *c.get(&EventKind::TcpClose).unwrap_or(&0));
    cpu_row(own_cpu_secs() - cpu_before, c.values().sum());
    let after = sensor.loss();
    println!("  losses: kernel {} channel {}", after.kernel - before.kernel, after.channel - before.channel);
    println!(
        "\nrecords read from the kernel: {}; decode errors: {}",
        sensor.events_seen(),
        sensor.decode_errors()
    );

    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "memory of this process (sensor + bench): peak RSS {}, RSS now {}",
        field("VmHWM:"),
        field("VmRSS:")
    );
    sensor.shutdown().await;

    // Syscall cost: rounds alternate between no sensor at all and a sensor
    // attached (unmanaged, then managed child), so that load from elsewhere
    // on the machine hits every condition alike. The minimum is the cost
    // with the least interference; the median shows the spread.
    let (mut bare, mut unmanaged, mut managed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        bare.push(syscall_cost(&args, None));
        let (tx, _rx) = mpsc::channel(args.channel);
        let opts =
            SensorOptions { scope: Scope::Managed, syscalls: args.syscall_stats, ..SensorOptions::default() };
        let sensor = EbpfSensor::start(opts, tx).expect("start the sensor");
        sensor.manage_cgroup(cgroup_id).unwrap();
        unmanaged.push(syscall_cost(&args, None));
        managed.push(syscall_cost(&args, Some(&cg)));
        sensor.shutdown().await;
    }
    let (bare_min, bare_med) = min_median(bare);
    println!(
        "\nsyscall cost (getppid, {} alternating rounds of {} calls, syscall statistics {}):",
        args.rounds.max(1),
        args.syscalls,
        if args.syscall_stats { "on" } else { "off" }
    );
    println!("  {:<20} {:>9} {:>7} {:>11} {:>7}", "", "min ns", "ratio", "median ns", "ratio");
    println!("  {:<20} {bare_min:>9.1} {:>7.2} {bare_med:>11.1} {:>7.2}", "no sensor", 1.0, 1.0);
    for (name, v) in [("unmanaged process", unmanaged), ("managed process", managed)] {
        let (min, med) = min_median(v);
        println!("  {name:<20} {min:>9.1} {:>7.2} {med:>11.1} {:>7.2}", min / bare_min, med / bare_med);
    }
}
