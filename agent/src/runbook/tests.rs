//! Engine tests with a fake clock and a fake service manager.

use super::engine::{Clock, Engine, EngineOptions, FakeClock, ServiceInfo};
use super::model::{parse, Runbook};
use crate::audit::{AuditKind, AuditLog, AuditRecord};
use crate::service_manager::{ActiveState, ServiceError, ServiceManager, ServiceStatus};
use custos_detect::{Anomaly, Severity};
use custos_event::{Event, EventBody, ProcessExit, Signal};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Records calls; `heals` decides whether a restart leaves the unit active.
pub struct FakeSm {
    pub calls: Mutex<Vec<String>>,
    pub state: Mutex<ActiveState>,
    pub heals: Mutex<bool>,
    pub sub_state: Mutex<String>,
}

impl FakeSm {
    fn new() -> Arc<Self> {
        Arc::new(FakeSm {
            calls: Mutex::new(vec![]),
            state: Mutex::new(ActiveState::Failed),
            heals: Mutex::new(true),
            sub_state: Mutex::new("failed".into()),
        })
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn act(&self, what: &str, unit: &str) -> Result<(), ServiceError> {
        self.calls.lock().unwrap().push(format!("{what} {unit}"));
        if what == "restart" || what == "start" {
            *self.state.lock().unwrap() =
                if *self.heals.lock().unwrap() { ActiveState::Active } else { ActiveState::Failed };
        }
        Ok(())
    }
}

impl ServiceManager for FakeSm {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn status(&self, _unit: &str) -> Result<ServiceStatus, ServiceError> {
        let sub = self.sub_state.lock().unwrap().clone();
        Ok(ServiceStatus {
            state: *self.state.lock().unwrap(),
            manager_restarting: sub == "auto-restart",
            sub_state: sub,
            main_pid: Some(42),
            cgroup: None,
            manager_restarts: None,
        })
    }
    fn start(&self, unit: &str) -> Result<(), ServiceError> {
        self.act("start", unit)
    }
    fn stop(&self, unit: &str) -> Result<(), ServiceError> {
        self.act("stop", unit)
    }
    fn restart(&self, unit: &str) -> Result<(), ServiceError> {
        self.act("restart", unit)
    }
    fn reset_failed(&self, unit: &str) -> Result<(), ServiceError> {
        self.act("reset-failed", unit)
    }
    fn kill(&self, unit: &str, signal: i32) -> Result<(), ServiceError> {
        self.act(&format!("kill{signal}"), unit)
    }
}

struct Rig {
    engine: Engine,
    sm: Arc<FakeSm>,
    clock: Arc<FakeClock>,
    rx: Receiver<AuditRecord>,
    dir: tempfile::TempDir,
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn rb(text: &str) -> Runbook {
    parse(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn rig_in(dir: tempfile::TempDir, runbooks: Vec<Runbook>, dry_run: bool, clock: Arc<FakeClock>) -> Rig {
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit"), 1 << 20).unwrap());
    let rx = audit.subscribe(10_000);
    let sm = FakeSm::new();
    let mut opts = EngineOptions::new(dir.path());
    opts.inline = true;
    opts.dry_run = dry_run;
    opts.services.insert("api".into(), ServiceInfo { unit: "api.service".into(), has_probe: false });
    let engine = Engine::new(runbooks, sm.clone(), audit, clock.clone(), opts).unwrap();
    Rig { engine, sm, clock, rx, dir }
}

fn rig(runbooks: Vec<Runbook>) -> Rig {
    rig_in(tempfile::tempdir().unwrap(), runbooks, false, Arc::new(FakeClock::new(t0())))
}

impl Rig {
    fn records(&self) -> Vec<AuditRecord> {
        self.rx.try_iter().filter(|r| r.kind != AuditKind::Lifecycle).collect()
    }
    fn exit(&self, code: Option<i32>, signal: Option<i32>) {
        let mut e = Event::new(
            self.clock.now(),
            EventBody::ProcessExit(ProcessExit {
                exit_code: code,
                signal: signal.map(Signal),
                ..Default::default()
            }),
        );
        e.service = Some("api".into());
        e.comm = "api".into();
        self.engine.on_event(&e);
    }
}

const LADDER: &str = r#"
name: api-crash
service: api
trigger:
  event: process_exit
  where: { exit_code: { ne: 0 } }
steps:
  - restart: {}
  - restart: { delay: 10s }
    verify: { healthy_within: 30s }
  - log: { message: "{{ service.name }} exited {{ event.exit_code }}" }
cooldown: 1m
"#;

fn kinds(rs: &[AuditRecord]) -> Vec<&'static str> {
    rs.iter().map(|r| r.kind.as_str()).collect()
}

#[test]
fn ladder_runs_step_n_on_firing_n_and_repeats_the_last() {
    let r = rig(vec![rb(LADDER)]);
    for _ in 0..4 {
        r.exit(Some(1), None);
        r.clock.advance(Duration::from_secs(120));
    }
    let decisions: Vec<String> =
        r.records().into_iter().filter(|x| x.kind == AuditKind::Decision).map(|x| x.message).collect();
    assert_eq!(decisions.len(), 4, "{decisions:?}");
    assert!(decisions[0].starts_with("Running step 1 of 3: restart"), "{decisions:?}");
    assert!(decisions[1].starts_with("Running step 2 of 3"));
    assert!(decisions[2].starts_with("Running step 3 of 3: log"));
    assert!(decisions[3].starts_with("Running step 3 of 3"));
    // Failed before each restart: reset-failed, then restart.
    assert_eq!(r.sm.calls().iter().filter(|c| c.starts_with("restart")).count(), 2);
}

#[test]
fn clean_exits_do_not_match_and_cooldown_suppresses() {
    let r = rig(vec![rb(LADDER)]);
    r.exit(Some(0), None);
    assert!(r.records().is_empty());
    r.exit(Some(2), None);
    r.clock.advance(Duration::from_secs(10));
    r.exit(Some(2), None);
    let rs = r.records();
    assert_eq!(kinds(&rs), ["firing", "decision", "action", "outcome", "firing", "suppression"]);
    assert!(rs[5].message.contains("cooling down"));
}

#[test]
fn log_action_renders_templates_and_verify_records_healed_and_not() {
    let r = rig(vec![rb(LADDER)]);
    r.exit(Some(3), None);
    r.clock.advance(Duration::from_secs(120));
    *r.sm.heals.lock().unwrap() = false;
    r.exit(Some(3), None);
    r.clock.advance(Duration::from_secs(120));
    r.exit(Some(7), None);
    let rs = r.records();
    let v: Vec<&AuditRecord> = rs.iter().filter(|x| x.kind == AuditKind::Verification).collect();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].details["healed"], false, "{:?}", v[0]);
    let log = rs.iter().find(|x| x.kind == AuditKind::Outcome && x.details["step"] == "step 3").unwrap();
    assert_eq!(log.details["result"]["message"], "api exited 7");

    *r.sm.heals.lock().unwrap() = true;
    let r2 = rig(vec![rb(LADDER)]);
    r2.exit(Some(1), None);
    r2.clock.advance(Duration::from_secs(120));
    r2.exit(Some(1), None);
    let v = r2.records().into_iter().find(|x| x.kind == AuditKind::Verification).unwrap();
    assert_eq!(v.details["healed"], true, "{v:?}");
    let st = &r2.engine.status()[0];
    assert_eq!(st.next_step, 3);
    assert_eq!(st.last_actions.last().unwrap().healed, Some(true));
}

#[test]
fn count_within_window_detects_crash_loops_only() {
    let r = rig(vec![rb(r#"
name: loop
service: api
trigger: { event: process_exit, where: { exit_class: { in: [error, signal] } }, count: 3, within: 5m }
steps: [ { restart: {} } ]
"#)]);
    for _ in 0..3 {
        r.exit(Some(1), None);
        r.clock.advance(Duration::from_secs(200));
    }
    assert!(r.records().is_empty(), "3 crashes over 10 minutes are not a loop");
    r.exit(None, Some(11));
    r.clock.advance(Duration::from_secs(30));
    r.exit(Some(1), None);
    assert_eq!(kinds(&r.records())[..2], ["firing", "decision"]);
}

#[test]
fn breaker_opens_escalates_once_then_suppresses_and_closes_later() {
    let r = rig(vec![rb(r#"
name: api-crash
service: api
trigger: { event: process_exit, where: { signal: SIGSEGV } }
steps: [ { restart: {} } ]
cooldown: 0s
max_actions: { count: 2, per: 1h }
escalate: { log: { message: "giving up on {{ service.name }}" } }
"#)]);
    for _ in 0..4 {
        r.exit(None, Some(11));
        r.clock.advance(Duration::from_secs(60));
    }
    let rs = r.records();
    let breaker: Vec<&AuditRecord> = rs.iter().filter(|x| x.kind == AuditKind::Breaker).collect();
    assert_eq!(breaker.len(), 1);
    assert!(breaker[0].message.contains("Circuit breaker open"));
    assert!(rs
        .iter()
        .any(|x| x.kind == AuditKind::Outcome && x.details["result"]["message"] == "giving up on api"));
    assert!(rs.iter().any(|x| x.kind == AuditKind::Suppression && x.details["reason"] == "breaker_open"));
    assert_eq!(r.sm.calls().iter().filter(|c| c.starts_with("restart")).count(), 2);
    assert!(r.engine.status()[0].breaker_open);
    r.clock.advance(Duration::from_secs(3600));
    r.exit(None, Some(11));
    let rs = r.records();
    assert!(rs.iter().any(|x| x.kind == AuditKind::Breaker && x.message.contains("closed")));
    assert_eq!(r.sm.calls().iter().filter(|c| c.starts_with("restart")).count(), 3);
}

#[test]
fn dry_run_decides_and_audits_but_changes_nothing() {
    let r = rig_in(tempfile::tempdir().unwrap(), vec![rb(LADDER)], true, Arc::new(FakeClock::new(t0())));
    r.exit(Some(1), None);
    let rs = r.records();
    assert!(r.sm.calls().is_empty(), "{:?}", r.sm.calls());
    assert!(rs.iter().all(|x| x.dry_run));
    assert!(rs
        .iter()
        .any(|x| x.kind == AuditKind::Action && x.message.starts_with("Dry run, step 1: would restart")));
    // Per-runbook dry-run too.
    let r = rig(vec![rb(&format!("{LADDER}dry_run: true\n"))]);
    r.exit(Some(1), None);
    assert!(r.sm.calls().is_empty());
}

#[test]
fn state_survives_an_engine_restart_mid_ladder() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(t0()));
    let r = rig_in(dir, vec![rb(LADDER)], false, clock.clone());
    r.exit(Some(1), None);
    clock.advance(Duration::from_secs(120));
    r.exit(Some(1), None);
    let Rig { engine, dir, .. } = r;
    drop(engine);
    clock.advance(Duration::from_secs(120));
    let r = rig_in(dir, vec![rb(LADDER)], false, clock.clone());
    assert_eq!(r.engine.status()[0].next_step, 3);
    r.exit(Some(1), None);
    assert!(r.records().iter().any(|x| x.message.starts_with("Running step 3 of 3")));
    // Cooldown survives too.
    clock.advance(Duration::from_secs(5));
    let Rig { engine, dir, .. } = r;
    drop(engine);
    let r = rig_in(dir, vec![rb(LADDER)], false, clock);
    r.exit(Some(1), None);
    assert!(r.records().iter().any(|x| x.kind == AuditKind::Suppression));
    assert!(crate::audit::verify(&r.dir.path().join("audit")).is_ok());
}

#[test]
fn reset_after_a_quiet_period_returns_to_step_one() {
    let r = rig(vec![rb(&format!("{LADDER}reset_after: 1h\n"))]);
    r.exit(Some(1), None);
    r.clock.advance(Duration::from_secs(120));
    r.exit(Some(1), None);
    r.clock.advance(Duration::from_secs(7200));
    r.exit(Some(1), None);
    let msgs: Vec<String> =
        r.records().into_iter().filter(|x| x.kind == AuditKind::Decision).map(|x| x.message).collect();
    assert!(msgs.iter().any(|m| m.starts_with("Ladder reset")), "{msgs:?}");
    assert!(msgs.last().unwrap().starts_with("Running step 1 of 3"), "{msgs:?}");
}

#[test]
fn systemd_restarting_is_not_fought() {
    let r = rig(vec![rb(LADDER)]);
    *r.sm.sub_state.lock().unwrap() = "auto-restart".into();
    r.exit(Some(1), None);
    assert!(r.sm.calls().is_empty());
    assert!(r
        .records()
        .iter()
        .any(|x| x.kind == AuditKind::Outcome && x.details["result"]["skipped"] == "manager_restarting"));
}

#[test]
fn metric_held_anomaly_and_combinations() {
    let r = rig(vec![
        rb(r#"
name: conn-errors
service: api
trigger: { metric: custos.tcp.connect.error_ratio, above: 5, for: 1m }
steps: [ { log: { message: "{{ event.metric }}={{ event.value }}" } } ]
"#),
        rb(r#"
name: anomalous-and-unhealthy
service: api
trigger:
  all:
    - anomaly: { severity: high }
    - health: failing
steps: [ { log: { message: "{{ event.severity }}" } } ]
"#),
    ]);
    let e = &r.engine;
    e.on_metric("api", "custos.tcp.connect.error_ratio", 9.0, r.clock.now());
    r.clock.advance(Duration::from_secs(30));
    e.on_metric("api", "custos.tcp.connect.error_ratio", 2.0, r.clock.now());
    r.clock.advance(Duration::from_secs(30));
    e.on_metric("api", "custos.tcp.connect.error_ratio", 9.0, r.clock.now());
    r.clock.advance(Duration::from_secs(30));
    e.on_metric("api", "custos.tcp.connect.error_ratio", 9.0, r.clock.now());
    assert!(r.records().is_empty(), "not held for a minute yet");
    r.clock.advance(Duration::from_secs(31));
    e.on_metric("api", "custos.tcp.connect.error_ratio", 9.0, r.clock.now());
    let rs = r.records();
    assert!(
        rs.iter().any(|x| x.details["result"]["message"] == "custos.tcp.connect.error_ratio=9.0"),
        "{rs:?}"
    );

    let anomaly = |sev| Anomaly {
        service: "api".into(),
        metric: "custos.process.exits".into(),
        ts: r.clock.now(),
        value: 10.0,
        expected_low: 0.0,
        expected_high: 1.0,
        score: 0.9,
        severity: sev,
    };
    e.on_anomaly(&anomaly(Severity::Critical));
    assert!(r.records().is_empty(), "healthy: `all` does not hold");
    e.on_health("api", false, None);
    e.on_anomaly(&anomaly(Severity::Medium));
    assert!(r.records().is_empty(), "below the severity");
    e.on_anomaly(&anomaly(Severity::Critical));
    assert!(r.records().iter().any(|x| x.details["result"]["message"] == "critical"));
}

#[cfg(unix)]
#[test]
fn exec_receives_event_fields_as_single_literal_arguments() {
    let r = rig(vec![rb(r#"
name: diag
service: api
trigger: { event: process_exit }
steps: [ { exec: { argv: ["/bin/echo", "{{ event.comm }}", "{{ service.unit }}"], run_as: root } } ]
"#)]);
    let mut e = Event::new(
        r.clock.now(),
        EventBody::ProcessExit(ProcessExit { exit_code: Some(1), ..Default::default() }),
    );
    e.service = Some("api".into());
    e.comm = "x; touch /tmp/custos-pwned-unit $(id)".into();
    r.engine.on_event(&e);
    let out = r.records().into_iter().find(|x| x.kind == AuditKind::Outcome).unwrap();
    assert_eq!(out.details["result"]["stdout"], "x; touch /tmp/custos-pwned-unit $(id) api.service\n");
    assert!(!std::path::Path::new("/tmp/custos-pwned-unit").exists());
}

/// A process named `-la` would give `ls` an option; one named `../y/pwn`
/// would write outside `/tmp/x`: the step fails instead of running.
#[cfg(unix)]
#[test]
fn templated_argv_refuses_options_and_paths_from_event_values() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("x");
    std::fs::create_dir(&inside).unwrap();
    let fire = |argv: &str, comm: &str| {
        let r = rig(vec![rb(&format!(
            "name: diag\nservice: api\ntrigger: {{ event: process_exit }}\nsteps:\n  - exec: {{ argv: {argv}, run_as: root }}\n"
        ))]);
        let mut e = Event::new(
            r.clock.now(),
            EventBody::ProcessExit(ProcessExit { exit_code: Some(1), ..Default::default() }),
        );
        e.service = Some("api".into());
        e.comm = comm.into();
        r.engine.on_event(&e);
        r.records().into_iter().find(|x| x.kind == AuditKind::Outcome).unwrap()
    };
    let out = fire(r#"["/bin/ls", "{{ event.comm }}"]"#, "-la");
    assert_eq!(out.details["ok"], false, "{out:?}");
    assert!(out.message.contains("would become an option"), "{out:?}");
    let touch = format!(r#"["/usr/bin/touch", "{}/{{{{ event.comm }}}}"]"#, inside.display());
    let out = fire(&touch, "../pwn");
    assert_eq!(out.details["ok"], false, "{out:?}");
    assert!(out.message.contains("path separator"), "{out:?}");
    assert!(!dir.path().join("pwn").exists(), "a file was written outside {}", inside.display());
    // A plain name is fine.
    assert_eq!(fire(&touch, "api").details["ok"], true);
    assert!(inside.join("api").exists());
}

#[test]
fn reload_keeps_ladder_state() {
    let r = rig(vec![rb(LADDER)]);
    r.exit(Some(1), None);
    r.engine.reload(vec![rb(LADDER)], None);
    assert_eq!(r.engine.status()[0].next_step, 2);
}
