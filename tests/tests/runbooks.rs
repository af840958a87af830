//! The example runbooks in runbooks/: each one loads, and `runbook test`
//! shows the behaviour it documents. Also: unsafe file permissions are
//! refused without stopping the other runbooks.

use custos::runbook::cli::simulate;
use custos::runbook::{load_file, load_paths};
use custos_event::Event;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    // The alert webhooks take their token from the agent's environment,
    // checked when a runbook loads: set as an installation would.
    std::env::set_var("CUSTOS_ALERT_TOKEN", "Bearer test-token");
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn example(name: &str) -> PathBuf {
    let p = repo().join("runbooks").join(name);
    // A checkout with a group-writable umask would be refused (rightly);
    // the examples are meant to be installed go-w.
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    if mode & 0o022 != 0 {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !0o022)).unwrap();
    }
    p
}

fn event(name: &str) -> Event {
    let text = std::fs::read_to_string(repo().join("runbooks/events").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn run(runbook: &str, ev: &str, times: u32) -> String {
    let rb = load_file(&example(runbook)).unwrap_or_else(|e| panic!("{e}"));
    simulate(rb, event(ev), times).unwrap()
}

#[test]
fn every_example_runbook_validates() {
    for name in [
        "crash-loop.yaml",
        "oom.yaml",
        "dependency-connect-failures.yaml",
        "health-check-failing.yaml",
        "anomaly.yaml",
    ] {
        example(name);
    }
    let report = load_paths(&[repo().join("runbooks")]);
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(report.runbooks.len(), 5);
}

#[test]
fn crash_loop_climbs_the_ladder_to_an_alert() {
    let out = run("crash-loop.yaml", "crash.json", 5);
    let steps: Vec<&str> =
        out.lines().filter(|l| l.contains("decision") && l.contains("running step")).collect();
    assert_eq!(steps.len(), 5, "{out}");
    assert!(steps[0].contains("step 1 of 4 (restart)"), "{out}");
    assert!(steps[1].contains("step 2 of 4 (restart)"), "{out}");
    assert!(steps[2].contains("step 3 of 4 (exec)"), "{out}");
    assert!(steps[3].contains("step 4 of 4 (webhook): POST"), "{out}");
    assert!(steps[4].contains("step 4 of 4"), "{out}");
    assert!(out.contains(r#""argv":["/usr/bin/journalctl","--unit","api.service","#), "{out}");
    assert!(
        out.contains(r#""severity":"P1""#)
            && out.contains("api keeps crashing (last exit code 1, signal , unrequested)"),
        "{out}"
    );
}

#[test]
fn crash_loop_ignores_exits_someone_asked_for() {
    for cause in ["stop_requested", "restart_requested"] {
        let mut ev = event("crash.json");
        if let custos_event::EventBody::ProcessExit(x) = &mut ev.body {
            x.exit_code = None;
            x.signal = Some(custos_event::Signal(15));
            x.exit_cause = serde_json::from_value(serde_json::json!(cause)).unwrap();
        }
        let rb = load_file(&example("crash-loop.yaml")).unwrap();
        let out = simulate(rb, ev, 2).unwrap();
        assert!(out.contains("did not fire") && !out.contains("running step"), "{cause}: {out}");
    }
}

#[test]
fn oom_restarts_then_alerts() {
    let out = run("oom.yaml", "oom.json", 2);
    assert!(out.contains("step 1 of 2 (restart)"), "{out}");
    assert!(out.contains("step 2 of 2 (webhook): POST"), "{out}");
    assert!(out.contains("was killed for lack of memory again (pid 4242)"), "{out}");
}

#[test]
fn dependency_failures_need_five_refusals_and_run_diagnostics_unprivileged() {
    let out = run("dependency-connect-failures.yaml", "db-refused.json", 2);
    assert!(out.contains(r#""argv":["/usr/bin/getent","hosts","127.0.0.1"]"#), "{out}");
    assert!(out.contains(r#""run_as":"nobody""#), "{out}");
    assert!(out.contains("cannot connect to 127.0.0.1:5432 (ECONNREFUSED)"), "{out}");
    // A connect to another port never fires.
    let rb = load_file(&example("dependency-connect-failures.yaml")).unwrap();
    let mut ev = event("db-refused.json");
    if let custos_event::EventBody::TcpConnect(c) = &mut ev.body {
        c.endpoints.dport = 6379;
    }
    assert!(simulate(rb, ev, 1).unwrap().contains("did not fire"));
}

#[test]
fn health_and_anomaly_runbooks_do_not_fire_on_plain_events() {
    // These trigger on the probe's thresholded state and on detector
    // signals, which `runbook test` does not synthesize from an event.
    let out = run("health-check-failing.yaml", "health-failed.json", 1);
    assert!(out.contains("not on events") && out.contains("did not fire"), "{out}");
    let out = run("anomaly.yaml", "crash.json", 1);
    assert!(out.contains("did not fire"), "{out}");
}

#[test]
fn health_and_anomaly_runbooks_act_on_their_signals() {
    use custos::audit::{AuditKind, AuditLog};
    use custos::runbook::{Engine, EngineOptions, FakeClock};
    use custos_detect::{Anomaly, Severity};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit"), 1 << 20).unwrap());
    let rx = audit.subscribe(1000);
    let clock = Arc::new(FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let mut opts = EngineOptions::new(dir.path());
    opts.dry_run = true;
    opts.inline = true;
    let rbs = vec![
        load_file(&example("health-check-failing.yaml")).unwrap(),
        load_file(&example("anomaly.yaml")).unwrap(),
    ];
    let sm = Arc::new(NoSm);
    let engine = Engine::new(rbs, sm, audit, clock.clone(), opts).unwrap();
    engine.on_health("api", false, Some(&event("health-failed.json")));
    engine.on_anomaly(&Anomaly {
        service: "api".into(),
        metric: "custos.tcp.connect.error_ratio".into(),
        ts: SystemTime::now(),
        value: 40.0,
        expected_low: 0.0,
        expected_high: 2.0,
        score: 0.97,
        severity: Severity::Critical,
    });
    let actions: Vec<String> =
        rx.try_iter().filter(|r| r.kind == AuditKind::Action).map(|r| r.details.to_string()).collect();
    assert!(actions.iter().any(|a| a.contains(r#""signal":"SIGHUP""#)), "{actions:?}");
    assert!(
        actions.iter().any(|a| a.contains("custos.tcp.connect.error_ratio at 40.0, expected 0.0..2.0")),
        "{actions:?}"
    );
    // Still failing after the cooldown: the ladder climbs to a restart.
    clock.advance(Duration::from_secs(61));
    engine.on_health("api", false, Some(&event("health-failed.json")));
    assert!(engine.status()[0].next_step == 3, "{:?}", engine.status()[0]);
}

struct NoSm;
impl custos::service_manager::ServiceManager for NoSm {
    fn name(&self) -> &'static str {
        "none"
    }
    fn status(
        &self,
        u: &str,
    ) -> Result<custos::service_manager::ServiceStatus, custos::service_manager::ServiceError> {
        Err(custos::service_manager::ServiceError::NotFound(u.into()))
    }
    fn start(&self, _: &str) -> Result<(), custos::service_manager::ServiceError> {
        panic!("dry run must not start")
    }
    fn stop(&self, _: &str) -> Result<(), custos::service_manager::ServiceError> {
        panic!("dry run must not stop")
    }
    fn restart(&self, _: &str) -> Result<(), custos::service_manager::ServiceError> {
        panic!("dry run must not restart")
    }
    fn reset_failed(&self, _: &str) -> Result<(), custos::service_manager::ServiceError> {
        panic!("dry run must not reset")
    }
    fn kill(&self, _: &str, _: i32) -> Result<(), custos::service_manager::ServiceError> {
        panic!("dry run must not signal")
    }
}

#[test]
fn writable_or_foreign_runbooks_are_refused_and_others_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let good = "name: good\nservice: api\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n";
    for (name, text, mode) in [
        ("a-good.yaml", good, 0o644),
        ("b-world.yaml", &good.replace("good", "world"), 0o666),
        ("c-group.yaml", &good.replace("good", "group"), 0o664),
        (
            "d-broken.yaml",
            "name: broken\nservice: api\ntrigger: { event: nope }\nsteps: [ { restart: {} } ]\n",
            0o644,
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let report = load_paths(&[dir.path().to_path_buf()]);
    let names: Vec<&str> = report.runbooks.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["good"]);
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].contains("b-world.yaml") && errors[0].contains("group- or world-writable"),
        "{errors:#?}"
    );
    assert!(errors[1].contains("c-group.yaml") && errors[1].contains("mode 664"), "{errors:#?}");
    assert!(
        errors[2].contains("d-broken.yaml:3:") && errors[2].contains("unknown event `nope`"),
        "{errors:#?}"
    );

    // Owned by someone else (only checkable as root, where chown works).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let p = dir.path().join("a-good.yaml");
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = load_file(&p).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
    }
}

/// A local user's runbook: `exec` as root.
const EVIL: &str = "name: evil\nservice: api\ntrigger: { event: process_exit }\nsteps:\n  - exec: { argv: [\"/usr/bin/touch\", \"/tmp/pwned\"], run_as: root }\n";
const ROOTS: &str =
    "name: roots\nservice: api\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n";

fn chown(p: &Path, uid: u32) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, uid) }, 0, "chown {}", p.display());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A user who can write to the runbooks directory (mode 0777, as found)
/// flips a symlink between his own runbook and a root-owned one while the
/// agent reloads: his runbook is never loaded, because the directory itself
/// is refused, and so is a link into a directory he owns.
#[test]
fn a_symlink_flipped_by_a_local_user_is_never_loaded() {
    if !is_root() {
        eprintln!(
            "skipped: a_symlink_flipped_by_a_local_user_is_never_loaded: needs root to play the other user"
        );
        return;
    }
    const NOBODY: u32 = 65534;
    let root = tempfile::tempdir().unwrap();
    // The user's own directory, and a root-owned runbook elsewhere.
    let user_dir = root.path().join("home");
    std::fs::create_dir(&user_dir).unwrap();
    let evil = user_dir.join("evil.yaml");
    std::fs::write(&evil, EVIL).unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o644)).unwrap();
    chown(&evil, NOBODY);
    chown(&user_dir, NOBODY);
    let safe_dir = root.path().join("safe");
    std::fs::create_dir(&safe_dir).unwrap();
    let roots = safe_dir.join("roots.yaml");
    std::fs::write(&roots, ROOTS).unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o644)).unwrap();

    for case in ["world-writable runbooks directory", "link into the user's directory"] {
        let runbooks = root.path().join(format!("runbooks-{}", case.len()));
        std::fs::create_dir(&runbooks).unwrap();
        let (link, targets) = if case.starts_with("world") {
            std::fs::set_permissions(&runbooks, std::fs::Permissions::from_mode(0o777)).unwrap();
            (runbooks.join("rb.yaml"), [evil.clone(), roots.clone()])
        } else {
            // The agent's directory is fine; the link (made by root) points
            // into the user's directory, where the user flips his own link.
            std::fs::set_permissions(&runbooks, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::symlink(user_dir.join("current.yaml"), runbooks.join("rb.yaml")).unwrap();
            (user_dir.join("current.yaml"), [evil.clone(), roots.clone()])
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (stop, link) = (stop.clone(), link.clone());
            std::thread::spawn(move || {
                let tmp = link.with_extension("tmp");
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(&targets[i % 2], &tmp).unwrap();
                    chown(&tmp, NOBODY);
                    std::fs::rename(&tmp, &link).unwrap();
                    i += 1;
                }
                i
            })
        };
        let mut loaded_roots = 0;
        for _ in 0..1000 {
            let report = load_paths(std::slice::from_ref(&runbooks));
            assert!(
                report.runbooks.iter().all(|r| r.name != "evil"),
                "{case}: the user's runbook was loaded"
            );
            loaded_roots += report.runbooks.len();
            assert!(!report.errors.is_empty(), "{case}: nothing was refused");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flips = flipper.join().unwrap();
        assert!(flips > 100, "{case}: the link flipped only {flips} times");
        assert_eq!(loaded_roots, 0, "{case}: what the user controls is refused whichever way it points");
    }
}

#[test]
fn a_world_writable_runbooks_directory_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rb.yaml");
    std::fs::write(&p, ROOTS).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let report = load_paths(&[dir.path().to_path_buf()]);
    assert!(report.runbooks.is_empty());
    let e = report.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(e.contains("runbooks directory refused") && e.contains("world-writable (mode 777)"), "{e}");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(load_paths(&[dir.path().to_path_buf()]).runbooks.len(), 1);
}

#[test]
fn a_fifo_and_dev_zero_named_yaml_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("a-fifo.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("b-zero.yaml")).unwrap();
    let good = dir.path().join("c-good.yaml");
    std::fs::write(&good, ROOTS).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let t = std::time::Instant::now();
    let report = load_paths(&[dir.path().to_path_buf()]);
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "took {:?}", t.elapsed());
    assert_eq!(report.runbooks.len(), 1, "the good one still loads");
    let e = report.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(e.contains("a-fifo.yaml") && e.contains("a FIFO"), "{e}");
    assert!(e.contains("b-zero.yaml") && e.contains("a device"), "{e}");
}
