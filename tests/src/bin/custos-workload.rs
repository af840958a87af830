//! Reproducible workloads for custos's benchmarks and privileged tests:
//! exec and connect storms or fixed rates, and a syscall loop, optionally
//! inside a given cgroup. Prints one JSON object with what it did.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: custos-workload [--cgroup DIR] (exec|connect) (--count N | --rate PER_SEC --duration SECS)
       custos-workload [--cgroup DIR] syscalls --count N";

struct Args {
    cgroup: Option<String>,
    mode: String,
    count: Option<u64>,
    rate: Option<f64>,
    duration: Option<f64>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args { cgroup: None, mode: String::new(), count: None, rate: None, duration: None };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--cgroup" => a.cgroup = Some(value("--cgroup")?),
            "--count" => a.count = Some(value("--count")?.parse().map_err(|e| format!("--count: {e}"))?),
            "--rate" => a.rate = Some(value("--rate")?.parse().map_err(|e| format!("--rate: {e}"))?),
            "--duration" => {
                a.duration = Some(value("--duration")?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "exec" | "connect" | "syscalls" if a.mode.is_empty() => a.mode = arg,
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if a.mode.is_empty() {
        return Err("a mode is needed: exec, connect or syscalls".into());
    }
    if a.count.is_none() && (a.rate.is_none() || a.duration.is_none()) {
        return Err("give --count N, or --rate and --duration".into());
    }
    Ok(a)
}

/// Paces iterations: either `count` as fast as possible, or `rate` per
/// second for `duration` seconds.
struct Pacer {
    start: Instant,
    interval: Option<Duration>,
    limit: u64,
    done: u64,
}

impl Pacer {
    fn new(a: &Args) -> Self {
        match (a.count, a.rate, a.duration) {
            (Some(n), _, _) => Pacer { start: Instant::now(), interval: None, limit: n, done: 0 },
            (None, Some(r), Some(d)) => Pacer {
                start: Instant::now(),
                interval: Some(Duration::from_secs_f64(1.0 / r)),
                limit: (r * d).round() as u64,
                done: 0,
            },
            _ => unreachable!("checked by parse"),
        }
    }

    fn next(&mut self) -> bool {
        if self.done >= self.limit {
            return false;
        }
        if let Some(iv) = self.interval {
            let due = self.start + iv * self.done as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.done += 1;
        true
    }
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("custos-workload: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(cg) = &a.cgroup {
        // Children inherit the cgroup, so joining it first puts the whole
        // workload inside.
        if let Err(e) = std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()) {
            eprintln!("custos-workload: cannot join cgroup {cg}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let started = Instant::now();
    let mut pacer = Pacer::new(&a);
    let (ok, failed) = match a.mode.as_str() {
        "exec" => exec_loop(&mut pacer),
        "connect" => connect_loop(&mut pacer),
        _ => syscall_loop(&mut pacer),
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{}\",\"ok\":{ok},\"failed\":{failed},\"seconds\":{secs:.6},\"per_second\":{:.1}}}",
        a.mode,
        ok as f64 / secs.max(1e-9)
    );
    ExitCode::SUCCESS
}

fn exec_loop(p: &mut Pacer) -> (u64, u64) {
    // Children are reaped by another thread so that the spawn rate is not
    // capped by each child's lifetime.
    let (tx, rx) = std::sync::mpsc::channel::<std::process::Child>();
    let reaper = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u64, 0u64);
        for mut child in rx {
            match child.wait() {
                Ok(s) if s.success() => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    });
    let mut spawn_failed = 0;
    while p.next() {
        match Command::new("/bin/true").stdin(Stdio::null()).stdout(Stdio::null()).spawn() {
            Ok(child) => {
                let _ = tx.send(child);
            }
            Err(_) => spawn_failed += 1,
        }
    }
    drop(tx);
    let (ok, failed) = reaper.join().unwrap_or((0, 0));
    (ok, failed + spawn_failed)
}

fn connect_loop(p: &mut Pacer) -> (u64, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let addr = listener.local_addr().expect("listener address");
    let server = std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 16];
            // One byte each way, so closes carry byte counts.
            if c.read(&mut buf).unwrap_or(0) == 0 {
                // The sentinel connection (no payload) ends the server.
                return;
            }
            let _ = c.write_all(b"k");
        }
    });
    let (mut ok, mut failed) = (0, 0);
    while p.next() {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                let _ = s.write_all(b"p");
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
                ok += 1;
            }
            Err(_) => failed += 1,
        }
    }
    drop(TcpStream::connect(addr));
    let _ = server.join();
    (ok, failed)
}

fn syscall_loop(p: &mut Pacer) -> (u64, u64) {
    let mut n = 0;
    while p.next() {
        // getppid: the cheapest real syscall, so the loop measures the cost
        // that tracing adds per syscall.
        std::hint::black_box(std::os::unix::process::parent_id());
        n += 1;
    }
    (n, 0)
}
