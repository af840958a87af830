//! Runbook engine benchmarks (numbers, not assertions):
//!
//! 1. Rule matching: cost of `Engine::on_event` per event with 100 loaded
//!    runbooks on the event's service (none firing), against the same event
//!    for a service without runbooks and against serializing the event
//!    alone (the fields every match reads) — all in this run.
//! 2. Crash to restart: a real unit in the systemd sandbox exits; the exit
//!    is observed through a pidfd on its process (the moment the kernel
//!    reaps it, as the BPF sensor's exit event would be), fed to the engine
//!    as a process_exit event, and the time until the engine's restart
//!    request reaches systemd (`ServiceManager::restart` entered, the D-Bus
//!    RestartUnit call) and until systemd's job is done is measured, p50
//!    and p99 over `CRASHES` crashes (default 120).
//!
//! Run: `cargo run --release -p custos-tests --example runbook_bench`

use custos::audit::AuditLog;
use custos::platform::linux::systemd::Systemd;
use custos::runbook::{parse, Engine, EngineOptions, ServiceInfo, SystemClock};
use custos::service_manager::{ServiceError, ServiceManager, ServiceStatus};
use custos_event::{Event, EventBody, ProcessExit};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

fn main() {
    matching();
    crash_to_restart();
}

struct NullSm;
impl ServiceManager for NullSm {
    fn name(&self) -> &'static str {
        "null"
    }
    fn status(&self, u: &str) -> Result<ServiceStatus, ServiceError> {
        Err(ServiceError::NotFound(u.into()))
    }
    fn start(&self, _: &str) -> Result<(), ServiceError> {
        Ok(())
    }
    fn stop(&self, _: &str) -> Result<(), ServiceError> {
        Ok(())
    }
    fn restart(&self, _: &str) -> Result<(), ServiceError> {
        Ok(())
    }
    fn reset_failed(&self, _: &str) -> Result<(), ServiceError> {
        Ok(())
    }
    fn kill(&self, _: &str, _: i32) -> Result<(), ServiceError> {
        Ok(())
    }
}

fn hundred_runbooks() -> Vec<custos::runbook::Runbook> {
    (0..100)
        .map(|i| {
            let trigger = match i % 5 {
                0 => format!("{{ event: process_exit, where: {{ exit_code: {} }} }}", 100 + i),
                1 => format!("{{ event: process_exit, where: {{ signal: SIGSEGV, comm: worker{i} }}, count: 3, within: 5m }}"),
                2 => format!("{{ event: tcp_connect, where: {{ dport: {}, result: ECONNREFUSED }} }}", 1000 + i),
                3 => "{ anomaly: { severity: high } }".to_string(),
                _ => format!("{{ any: [ {{ metric: custos.process.crashes, above: {i}, for: 1m }}, {{ event: process_exit, where: {{ exit_code: {{ gt: 200 }} }} }} ] }}"),
            };
            let text = format!("name: rb{i}\nservice: api\ntrigger: {trigger}\nsteps: [ {{ restart: {{}} }} ]\n");
            parse(&text, &format!("rb{i}.yaml")).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn exit_event(service: &str) -> Event {
    let mut e = Event::new(
        SystemTime::now(),
        EventBody::ProcessExit(ProcessExit {
            exit_code: Some(1),
            lifetime_ns: 5_000_000,
            ..Default::default()
        }),
    );
    e.service = Some(service.into());
    e.pid = 4242;
    e.comm = "api".into();
    e
}

fn per_event(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn matching() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit"), 1 << 24).unwrap());
    let mut opts = EngineOptions::new(dir.path());
    opts.inline = true;
    let engine =
        Engine::new(hundred_runbooks(), Arc::new(NullSm), audit, Arc::new(SystemClock), opts).unwrap();
    let n = 200_000;
    let api = exit_event("api");
    let other = exit_event("other");
    let with = per_event(n, || engine.on_event(&api));
    let without = per_event(n, || engine.on_event(&other));
    let serialize = per_event(n, || {
        std::hint::black_box(custos::runbook::engine::event_fields(&api));
    });
    println!("rule matching, 100 runbooks on the service, process_exit event, none firing:");
    println!("  on_event, service with 100 runbooks:  {with:>8.0} ns/event");
    println!("  on_event, service without runbooks:   {without:>8.0} ns/event");
    println!("  event_fields alone (JSON view):       {serialize:>8.0} ns/event");
    println!(
        "  ratio 100 runbooks / no runbooks: {:.1}x; per runbook: {:.1} ns",
        with / without.max(1.0),
        (with - without) / 100.0
    );
}

/// Records when restart requests reach it, then forwards to systemd.
struct Timed {
    inner: Systemd,
    calls: Mutex<Vec<(Instant, Instant)>>,
}

impl ServiceManager for Timed {
    fn name(&self) -> &'static str {
        "systemd"
    }
    fn status(&self, u: &str) -> Result<ServiceStatus, ServiceError> {
        self.inner.status(u)
    }
    fn start(&self, u: &str) -> Result<(), ServiceError> {
        self.inner.start(u)
    }
    fn stop(&self, u: &str) -> Result<(), ServiceError> {
        self.inner.stop(u)
    }
    fn restart(&self, u: &str) -> Result<(), ServiceError> {
        let asked = Instant::now();
        let r = self.inner.restart(u);
        self.calls.lock().unwrap().push((asked, Instant::now()));
        r
    }
    fn reset_failed(&self, u: &str) -> Result<(), ServiceError> {
        self.inner.reset_failed(u)
    }
    fn kill(&self, u: &str, s: i32) -> Result<(), ServiceError> {
        self.inner.kill(u, s)
    }
}

fn main_pid(cgroup_procs: &str, previous: Option<i32>) -> Option<i32> {
    let text = std::fs::read_to_string(cgroup_procs).ok()?;
    text.lines().filter_map(|l| l.trim().parse().ok()).find(|p| Some(*p) != previous)
}

/// Blocks until `pid` exits; `None` if it was already gone.
fn wait_exit(pid: i32) -> Option<Instant> {
    // SAFETY: pidfd_open takes a pid and flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return None;
    }
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 30_000) };
    let t = Instant::now();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    Some(t)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn crash_to_restart() {
    if let Err(reason) = custos_tests::systemd::systemd_available() {
        println!("crash to restart: skipped: {reason}");
        return;
    }
    let crashes: usize = std::env::var("CRASHES").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let sd = custos_tests::systemd::SystemdSandbox::start().unwrap();
    // One process that lives 100 ms and exits with 1.
    sd.write_unit(
        "bench.service",
        "[Service]\nExecStart=/usr/bin/python3 -c 'import time,sys; time.sleep(0.1); sys.exit(1)'\n",
    )
    .unwrap();
    // The baseline decides on the exit as it comes; the intent check first
    // asks systemd's jobs whether the exit was asked for, which for a crash
    // means waiting for the ping that brings the job signals up to date.
    let (base_req, base_done) = crash_loop(&sd, crashes, None);
    let watcher =
        custos::platform::linux::systemd::JobWatcher::start(Some(&sd.system_bus_address())).unwrap();
    let (intent_req, intent_done) = crash_loop(&sd, crashes, Some(Arc::new(watcher)));
    println!("crash to restart, {crashes} crashes each:");
    for (what, base, intent) in [
        ("exit -> restart request to systemd", base_req, intent_req),
        ("exit -> restart job done", base_done, intent_done),
    ] {
        println!(
            "  {what:<36} without the intent check p50 {:.2} ms p99 {:.2} ms; with it p50 {:.2} ms ({:.2}x) p99 {:.2} ms ({:.2}x)",
            base.0,
            base.1,
            intent.0,
            intent.0 / base.0,
            intent.1,
            intent.1 / base.1
        );
    }
}

/// Crashes `bench.service` `crashes` times under a restart runbook and
/// returns (p50, p99) in ms of exit to restart request and to restart done.
fn crash_loop(
    sd: &custos_tests::systemd::SystemdSandbox,
    crashes: usize,
    jobs: Option<Arc<dyn custos::service_manager::ManagerJobs>>,
) -> ((f64, f64), (f64, f64)) {
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit"), 1 << 26).unwrap());
    let sm = Arc::new(Timed {
        inner: Systemd::connect_bus(&sd.system_bus_address()).unwrap(),
        calls: Mutex::new(vec![]),
    });
    let mut opts = EngineOptions::new(dir.path());
    opts.jobs = jobs;
    opts.services.insert("bench".into(), ServiceInfo { unit: "bench.service".into(), has_probe: false });
    let rb = parse(
        "name: bench\nservice: bench\ntrigger: { event: process_exit, where: { exit_code: { ne: 0 } } }\nsteps: [ { restart: {} } ]\ncooldown: 0s\nmax_actions: { count: 100000, per: 1h }\n",
        "bench.yaml",
    )
    .unwrap();
    let engine = Engine::new(vec![rb], sm.clone(), audit, Arc::new(SystemClock), opts).unwrap();
    let procs = "/sys/fs/cgroup/unified/system.slice/bench.service/cgroup.procs";
    let procs = if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        procs.to_string()
    } else {
        "/sys/fs/cgroup/system.slice/bench.service/cgroup.procs".to_string()
    };
    let _ = sd.systemctl(&["reset-failed", "bench.service"]);
    sd.systemctl(&["start", "bench.service"]).unwrap();
    let (mut to_request, mut to_done) = (Vec::new(), Vec::new());
    let mut missed = 0;
    let mut previous = None;
    while to_request.len() < crashes {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(p) = main_pid(&procs, previous) {
                break p;
            }
            assert!(Instant::now() < deadline, "bench.service has no process in {procs}");
            std::thread::sleep(Duration::from_millis(1));
        };
        previous = Some(pid);
        let Some(exited) = wait_exit(pid) else {
            missed += 1;
            engine.on_event(&exit_event("bench"));
            engine.wait_idle();
            continue;
        };
        let before = sm.calls.lock().unwrap().len();
        engine.on_event(&exit_event("bench"));
        engine.wait_idle();
        let calls = sm.calls.lock().unwrap();
        if let Some((asked, done)) = calls.get(before) {
            to_request.push(asked.duration_since(exited).as_secs_f64() * 1e3);
            to_done.push(done.duration_since(exited).as_secs_f64() * 1e3);
        }
    }
    if missed > 0 {
        println!("  ({missed} exits missed by the pidfd and not measured)");
    }
    let _ = sd.systemctl(&["stop", "bench.service"]);
    (
        (pct(&mut to_request, 0.5), pct(&mut to_request, 0.99)),
        (pct(&mut to_done, 0.5), pct(&mut to_done, 0.99)),
    )
}
