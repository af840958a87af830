//! Runbooks acting on real units of a real systemd (the sandbox), through
//! the D-Bus ServiceManager on systemd's private socket. The engine is fed
//! the process_exit events a sensor would produce (built from what systemd
//! reports about the exit).

use custos::audit::{AuditKind, AuditLog, AuditRecord};
use custos::platform::linux::systemd::Systemd;
use custos::runbook::{load_file, Engine, EngineOptions, ServiceInfo, SystemClock};
use custos::service_manager::{ActiveState, ServiceError, ServiceManager};
use custos_event::{Event, EventBody, ProcessExit};
use custos_tests::systemd::{sandbox_or_skip, SystemdSandbox};
use custos_tests::webhook;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

struct Rig {
    engine: Engine,
    audit: Receiver<AuditRecord>,
}

fn engine(sd: &SystemdSandbox, state: &Path, runbook_yaml: &str, dry_run: bool) -> Rig {
    let file = state.join("runbook.yaml");
    std::fs::write(&file, runbook_yaml).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let rb = load_file(&file).unwrap_or_else(|e| panic!("{e}"));
    let sm =
        Systemd::connect_bus(&sd.system_bus_address()).unwrap().with_job_timeout(Duration::from_secs(20));
    let audit = Arc::new(AuditLog::open(&state.join("audit"), 1 << 20).unwrap());
    let rx = audit.subscribe(10_000);
    let mut opts = EngineOptions::new(state);
    opts.dry_run = dry_run;
    for name in ["crashy", "dead", "auto"] {
        opts.services.insert(name.into(), ServiceInfo { unit: format!("{name}.service"), has_probe: false });
    }
    let engine = Engine::new(vec![rb], Arc::new(sm), audit, Arc::new(SystemClock), opts).unwrap();
    Rig { engine, audit: rx }
}

fn wait_state(sd: &SystemdSandbox, unit: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = sd.property(unit, "ActiveState").unwrap_or_default();
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "{unit} never became {want} (is {s})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_sub_state(sd: &SystemdSandbox, unit: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sd.property(unit, "SubState").unwrap_or_default() != want {
        assert!(Instant::now() < deadline, "{unit} never reached sub-state {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The exit event a sensor would have produced for the unit's last run.
fn exit_event(sd: &SystemdSandbox, service: &str, comm: &str) -> Event {
    let unit = format!("{service}.service");
    let code: i32 = sd.property(&unit, "ExecMainStatus").unwrap().parse().unwrap();
    let pid: u32 = sd.property(&unit, "ExecMainPID").unwrap().parse().unwrap();
    let mut e = Event::new(
        SystemTime::now(),
        EventBody::ProcessExit(ProcessExit { exit_code: Some(code), ..Default::default() }),
    );
    e.service = Some(service.into());
    e.pid = pid;
    e.comm = comm.into();
    e
}

fn invocation(sd: &SystemdSandbox, unit: &str) -> String {
    sd.property(unit, "InvocationID").unwrap()
}

fn drain(rx: &Receiver<AuditRecord>) -> Vec<AuditRecord> {
    rx.try_iter().filter(|r| r.kind != AuditKind::Lifecycle).collect()
}

const CRASHY: &str = "[Service]\nExecStart=/bin/sh -c 'sleep 1; exit 3'\n";

#[test]
fn systemd_jobs_are_followed_and_sync_waits_for_their_signals() {
    use custos::platform::linux::systemd::JobWatcher;
    use custos::service_manager::ManagerJobs;
    use custos_event::ExitCause;
    let Some(sd) = sandbox_or_skip("systemd_jobs_are_followed_and_sync_waits_for_their_signals") else {
        return;
    };
    sd.write_unit("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
    let jobs = JobWatcher::start(Some(&sd.system_bus_address())).unwrap();
    let before = SystemTime::now();
    sd.systemctl(&["start", "sleeper.service"]).unwrap();
    sd.systemctl(&["restart", "sleeper.service"]).unwrap();
    sd.systemctl(&["stop", "sleeper.service"]).unwrap();
    // After a sync, every job systemd announced before it is known, ended.
    let through = jobs.sync(Duration::from_secs(5)).expect("systemd answered the ping");
    assert!(through >= before);
    let seen = jobs.jobs("sleeper.service");
    // What each job did to the unit, whatever type systemd still reported
    // when asked (these jobs last a few milliseconds).
    let causes: Vec<Option<ExitCause>> = seen.iter().map(|j| j.cause()).collect();
    assert_eq!(causes, [None, Some(ExitCause::RestartRequested), Some(ExitCause::StopRequested)], "{seen:?}");
    assert!(seen.iter().all(|j| j.ended.is_some() && j.seen >= before), "{seen:?}");
    assert!(jobs.jobs("other.service").is_empty());
}

#[test]
fn systemd_service_manager_reports_units() {
    let Some(sd) = sandbox_or_skip("systemd_service_manager_reports_units") else { return };
    sd.write_unit("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
    let sm = Systemd::connect_bus(&sd.system_bus_address()).unwrap();
    assert!(matches!(sm.status("nope.service"), Err(ServiceError::NotFound(_))));
    assert_eq!(sm.status("sleeper.service").unwrap().state, ActiveState::Inactive);
    sm.start("sleeper.service").unwrap();
    let s = sm.status("sleeper.service").unwrap();
    assert_eq!(s.state, ActiveState::Active, "{s:?}");
    assert_eq!(s.cgroup.as_deref(), Some("/system.slice/sleeper.service"));
    let pid = s.main_pid.expect("main pid");
    sm.restart("sleeper.service").unwrap();
    let s2 = sm.status("sleeper.service").unwrap();
    assert_ne!(s2.main_pid, Some(pid), "restart gave a new process");
    sm.kill("sleeper.service", libc::SIGKILL).unwrap();
    wait_state(&sd, "sleeper.service", "failed");
    sm.reset_failed("sleeper.service").unwrap();
    assert_eq!(sm.status("sleeper.service").unwrap().state, ActiveState::Inactive);
    sm.start("sleeper.service").unwrap();
    sm.stop("sleeper.service").unwrap();
    assert_eq!(sm.status("sleeper.service").unwrap().state, ActiveState::Inactive);
}

/// Set inside the sandbox when this test binary re-runs itself there.
const INNER: &str = "CUSTOS_TEST_INSIDE_SANDBOX";

#[test]
fn private_socket_fallback_is_bounded_without_a_bus() {
    if std::env::var_os(INNER).is_some() {
        // Inside the sandbox, with the system bus pointed nowhere: `connect`
        // falls back to systemd's private socket, and answers within a
        // bounded time either way. zbus 5.19 cannot parse systemd 252's
        // replies there (their sender is `org.freedesktop.systemd1`, not a
        // unique name, and zbus's reader panics on it): until that is fixed
        // the fallback fails with a clear error instead of hanging.
        let started = std::time::Instant::now();
        let sm = Systemd::connect();
        assert!(started.elapsed() < Duration::from_secs(15), "connect took {:?}", started.elapsed());
        match sm {
            Ok(sm) => {
                sm.start("sleeper.service").unwrap();
                let s = sm.status("sleeper.service").unwrap();
                assert_eq!(s.state, ActiveState::Active, "{s:?}");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("private socket") && e.contains("/run/systemd/private"), "{e}");
            }
        }
        println!("inner ok");
        return;
    }
    let Some(sd) = sandbox_or_skip("private_socket_fallback_is_bounded_without_a_bus") else { return };
    sd.write_unit("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = sd
        .exec(&[
            "timeout",
            "60",
            "env",
            &format!("{INNER}=1"),
            "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent/bus",
            exe.to_str().unwrap(),
            "--exact",
            "private_socket_fallback_is_bounded_without_a_bus",
            "--nocapture",
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("inner ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crashing_unit_is_restarted_then_escalates_to_exec_and_webhook_across_an_agent_restart() {
    let Some(sd) = sandbox_or_skip("crashing_unit_is_restarted_then_escalates") else { return };
    let recv = webhook::start(200).unwrap();
    let state = tempfile::tempdir().unwrap();
    let secret = state.path().join("token");
    std::fs::write(&secret, "Bearer s3cret\n").unwrap();
    let yaml = format!(
        r#"
name: crashy-loop
service: crashy
trigger: {{ event: process_exit, where: {{ exit_code: {{ ne: 0 }} }} }}
steps:
  - restart: {{}}
    verify: {{ healthy_within: 5s, stable_for: 300ms }}
  - exec: {{ argv: ["/usr/bin/printf", "%s|%s", "{{{{ event.comm }}}}", "{{{{ service.unit }}}}"], timeout: 5s }}
  - webhook:
      url: "{}/hook"
      preset: alert
      severity: P0
      summary: "{{{{ service.name }}}} exited {{{{ event.exit_code }}}}"
      headers: {{ Authorization: {{ file: {} }} }}
cooldown: 0s
"#,
        recv.url,
        secret.display()
    );
    sd.write_unit("crashy.service", CRASHY).unwrap();
    sd.systemctl(&["start", "crashy.service"]).unwrap();
    wait_state(&sd, "crashy.service", "failed");

    // Firing 1: restart, verified healed (it runs for a second each time).
    let rig = engine(&sd, state.path(), &yaml, false);
    let before = invocation(&sd, "crashy.service");
    rig.engine.on_event(&exit_event(&sd, "crashy", "sh"));
    rig.engine.wait_idle();
    assert_ne!(invocation(&sd, "crashy.service"), before, "the unit was restarted");
    let rs = drain(&rig.audit);
    let v = rs.iter().find(|r| r.kind == AuditKind::Verification).expect("verification record");
    assert_eq!(v.details["healed"], true, "{v:?}");

    // The agent restarts mid-ladder: firing 2 runs step 2 with the state
    // kept, and since the unit stays failed after it, step 3 at once.
    drop(rig);
    wait_state(&sd, "crashy.service", "failed");
    let rig = engine(&sd, state.path(), &yaml, false);
    assert_eq!(rig.engine.status()[0].next_step, 2);
    let injection = "x; touch /tmp/custos-pwned $(id)";
    rig.engine.on_event(&exit_event(&sd, "crashy", injection));
    rig.engine.wait_idle();
    let rs = drain(&rig.audit);
    let outcomes: Vec<&AuditRecord> = rs.iter().filter(|r| r.kind == AuditKind::Outcome).collect();
    assert_eq!(outcomes.len(), 2, "{rs:#?}");
    let out = outcomes[0];
    assert_eq!(out.details["ok"], true, "{out:?}");
    assert_eq!(out.details["result"]["stdout"], format!("{injection}|crashy.service"), "{out:?}");
    assert!(!Path::new("/tmp/custos-pwned").exists(), "a shell ran the event's text");
    assert_eq!(
        sd.property("crashy.service", "ActiveState").unwrap(),
        "failed",
        "exec did not touch the unit"
    );

    // Step 3: the webhook, with the secret header and the rendered alert.
    let got = recv.requests.recv_timeout(Duration::from_secs(10)).expect("webhook received");
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/hook");
    assert_eq!(got.headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
    let body = got.json();
    assert_eq!(body["severity"], "P0");
    assert_eq!(body["summary"], format!("crashy exited 3"));
    assert_eq!(outcomes[1].details["ok"], true, "{:?}", outcomes[1]);
    assert!(!serde_json::to_string(&rs).unwrap().contains("s3cret"), "secrets stay out of the audit log");

    // The ladder is climbed and the unit still dead: a further crash runs
    // nothing, and says why.
    rig.engine.on_event(&exit_event(&sd, "crashy", "sh"));
    rig.engine.wait_idle();
    let rs = drain(&rig.audit);
    assert!(rs.iter().all(|r| r.kind != AuditKind::Outcome), "{rs:#?}");
    assert!(rs.iter().any(|r| r.details["reason"] == "ladder_exhausted"), "{rs:#?}");
    assert!(recv.requests.recv_timeout(Duration::from_millis(300)).is_err(), "paged once");
    custos::audit::verify(&state.path().join("audit")).unwrap();
}

#[test]
fn not_healed_is_recorded_and_systemd_restart_is_not_fought() {
    let Some(sd) = sandbox_or_skip("not_healed_is_recorded_and_systemd_restart_is_not_fought") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    sd.write_unit("dead.service", "[Service]\nExecStart=/bin/false\n").unwrap();
    let _ = sd.systemctl(&["start", "dead.service"]);
    wait_state(&sd, "dead.service", "failed");
    let rig = engine(
        &sd,
        state.path(),
        "name: dead\nservice: dead\ntrigger: { event: process_exit }\nsteps: [ { restart: {}, verify: { healthy_within: 2s } } ]\ncooldown: 0s\n",
        false,
    );
    rig.engine.on_event(&exit_event(&sd, "dead", "false"));
    rig.engine.wait_idle();
    let rs = drain(&rig.audit);
    let v = rs.iter().find(|r| r.kind == AuditKind::Verification).expect("verification");
    assert_eq!(v.details["healed"], false, "{v:?}");
    assert!(v.message.starts_with("Not healed"), "{}", v.message);
    assert_eq!(rig.engine.status()[0].last_actions.last().unwrap().healed, Some(false));

    // Restart=always is waiting to restart it: custos stays out of the way.
    let state = tempfile::tempdir().unwrap();
    sd.write_unit(
        "auto.service",
        "[Service]\nExecStart=/bin/sh -c 'exit 1'\nRestart=always\nRestartSec=30s\n",
    )
    .unwrap();
    sd.systemctl(&["start", "auto.service"]).unwrap();
    wait_sub_state(&sd, "auto.service", "auto-restart");
    let before = invocation(&sd, "auto.service");
    let rig = engine(
        &sd,
        state.path(),
        "name: auto\nservice: auto\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n",
        false,
    );
    rig.engine.on_event(&exit_event(&sd, "auto", "sh"));
    rig.engine.wait_idle();
    let rs = drain(&rig.audit);
    let out = rs.iter().find(|r| r.kind == AuditKind::Outcome).unwrap();
    assert_eq!(out.details["result"]["skipped"], "manager_restarting", "{out:?}");
    assert_eq!(invocation(&sd, "auto.service"), before);
    assert_eq!(sd.property("auto.service", "SubState").unwrap(), "auto-restart");
}

#[test]
fn dry_run_cooldown_and_breaker_hold_on_a_real_unit() {
    let Some(sd) = sandbox_or_skip("dry_run_cooldown_and_breaker_hold_on_a_real_unit") else { return };
    sd.write_unit("crashy.service", CRASHY).unwrap();
    sd.systemctl(&["start", "crashy.service"]).unwrap();
    wait_state(&sd, "crashy.service", "failed");
    let restart_only =
        "name: crashy\nservice: crashy\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n";

    // Dry run: decided and audited, nothing changes.
    let state = tempfile::tempdir().unwrap();
    let rig = engine(&sd, state.path(), restart_only, true);
    let before = invocation(&sd, "crashy.service");
    rig.engine.on_event(&exit_event(&sd, "crashy", "sh"));
    rig.engine.wait_idle();
    let rs = drain(&rig.audit);
    assert!(
        rs.iter().any(|r| r.kind == AuditKind::Action && r.dry_run && r.message.contains("would restart")),
        "{rs:?}"
    );
    assert_eq!(invocation(&sd, "crashy.service"), before);
    assert_eq!(sd.property("crashy.service", "ActiveState").unwrap(), "failed");

    // Cooldown: the second crash within it is suppressed.
    let state = tempfile::tempdir().unwrap();
    let rig = engine(&sd, state.path(), &format!("{restart_only}cooldown: 1h\n"), false);
    rig.engine.on_event(&exit_event(&sd, "crashy", "sh"));
    rig.engine.wait_idle();
    let after_first = invocation(&sd, "crashy.service");
    assert_ne!(after_first, before);
    wait_state(&sd, "crashy.service", "failed");
    rig.engine.on_event(&exit_event(&sd, "crashy", "sh"));
    rig.engine.wait_idle();
    assert_eq!(invocation(&sd, "crashy.service"), after_first);
    assert!(drain(&rig.audit)
        .iter()
        .any(|r| r.kind == AuditKind::Suppression && r.details["reason"] == "cooldown"));

    // Breaker: two actions per hour, then one escalation and silence.
    let recv = webhook::start(200).unwrap();
    let state = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{restart_only}cooldown: 0s\nmax_actions: {{ count: 2, per: 1h }}\nescalate: {{ webhook: {{ url: \"{}/esc\", preset: alert, severity: P0 }} }}\n",
        recv.url
    );
    let rig = engine(&sd, state.path(), &yaml, false);
    let mut invocations = vec![invocation(&sd, "crashy.service")];
    for _ in 0..4 {
        wait_state(&sd, "crashy.service", "failed");
        rig.engine.on_event(&exit_event(&sd, "crashy", "sh"));
        rig.engine.wait_idle();
        invocations.push(invocation(&sd, "crashy.service"));
    }
    invocations.dedup();
    assert_eq!(invocations.len(), 3, "exactly two restarts: {invocations:?}");
    let esc = recv.requests.recv_timeout(Duration::from_secs(10)).expect("escalation webhook");
    assert_eq!(esc.path, "/esc");
    assert_eq!(esc.json()["severity"], "P0");
    assert!(recv.requests.recv_timeout(Duration::from_millis(300)).is_err(), "escalated once");
    let rs = drain(&rig.audit);
    assert_eq!(rs.iter().filter(|r| r.kind == AuditKind::Breaker).count(), 1);
    assert!(rs.iter().any(|r| r.kind == AuditKind::Suppression && r.details["reason"] == "breaker_open"));
    assert!(rig.engine.status()[0].breaker_open);
}

#[test]
fn a_restart_left_to_systemd_does_not_count_toward_the_breaker() {
    let Some(sd) = sandbox_or_skip("a_restart_left_to_systemd_does_not_count_toward_the_breaker") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    sd.write_unit(
        "auto.service",
        "[Service]\nExecStart=/bin/sh -c 'exit 1'\nRestart=always\nRestartSec=30s\n",
    )
    .unwrap();
    sd.systemctl(&["start", "auto.service"]).unwrap();
    wait_sub_state(&sd, "auto.service", "auto-restart");
    let before = invocation(&sd, "auto.service");
    let rig = engine(
        &sd,
        state.path(),
        "name: auto\nservice: auto\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\ncooldown: 0s\nmax_actions: { count: 3, per: 1h }\nescalate: { log: { message: \"giving up\" } }\n",
        false,
    );
    // Ten crashes while systemd is already restarting the unit: ten
    // decisions to stay out of its way, none of them an action.
    for _ in 0..10 {
        rig.engine.on_event(&exit_event(&sd, "auto", "sh"));
        rig.engine.wait_idle();
    }
    let rs = drain(&rig.audit);
    let skipped = rs.iter().filter(|r| r.details["result"]["skipped"] == "manager_restarting").count();
    assert_eq!(skipped, 10, "{rs:#?}");
    assert!(rs.iter().all(|r| r.kind != AuditKind::Breaker), "{rs:#?}");
    assert!(!rig.engine.status()[0].breaker_open);
    assert_eq!(invocation(&sd, "auto.service"), before);
}
