//! Engine tests with a fake clock, a fake service manager and fake
//! service manager jobs.

use super::engine::{Clock, Engine, EngineOptions, FakeClock, ServiceInfo};
use super::model::{parse, Runbook};
use crate::audit::{AuditKind, AuditLog, AuditRecord};
use crate::export::AgentStats;
use crate::service_manager::{
    ActiveState, JobKind, ManagerJob, ManagerJobs, ServiceError, ServiceManager, ServiceStatus,
};
use custos_detect::{Anomaly, Severity};
use custos_event::{Event, EventBody, ExitCause, ProcessExit, Signal};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Records calls; `heals` decides whether a restart leaves the unit active.
pub struct FakeSm {
    pub calls: Mutex<Vec<String>>,
    pub state: Mutex<ActiveState>,
    pub heals: Mutex<bool>,
    pub sub_state: Mutex<String>,
    pub pid: Mutex<u32>,
}

impl FakeSm {
    fn new() -> Arc<Self> {
        Arc::new(FakeSm {
            calls: Mutex::new(vec![]),
            state: Mutex::new(ActiveState::Failed),
            heals: Mutex::new(true),
            sub_state: Mutex::new("failed".into()),
            pid: Mutex::new(42),
        })
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn restarts(&self) -> usize {
        self.calls().iter().filter(|c| c.starts_with("restart") || c.starts_with("start")).count()
    }
    fn act(&self, what: &str, unit: &str) -> Result<(), ServiceError> {
        self.calls.lock().unwrap().push(format!("{what} {unit}"));
        if what == "restart" || what == "start" {
            *self.pid.lock().unwrap() += 1;
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
            main_pid: Some(*self.pid.lock().unwrap()),
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

/// Jobs that become known only at a sync, as systemd's signals may reach
/// custos after the kernel's exit event.
#[derive(Default)]
struct FakeJobs {
    known: Mutex<Vec<ManagerJob>>,
    announced: Mutex<Vec<ManagerJob>>,
    syncs: Mutex<u32>,
    now: Mutex<Option<SystemTime>>,
}

impl FakeJobs {
    /// A stop (or restart) that took the unit down at `at`, announced but
    /// not yet seen by custos.
    fn announce(&self, kind: JobKind, at: SystemTime, ended: Option<SystemTime>) {
        self.announced.lock().unwrap().push(ManagerJob {
            id: 1,
            kind,
            seen: at,
            stopping: Some(at),
            restarted: kind == JobKind::Restart,
            changed: true,
            ended,
        });
    }
    fn syncs(&self) -> u32 {
        *self.syncs.lock().unwrap()
    }
}

impl ManagerJobs for FakeJobs {
    fn jobs(&self, _unit: &str) -> Vec<ManagerJob> {
        self.known.lock().unwrap().clone()
    }
    fn sync(&self, _timeout: Duration) -> Option<SystemTime> {
        *self.syncs.lock().unwrap() += 1;
        let mut a = self.announced.lock().unwrap();
        self.known.lock().unwrap().append(&mut a);
        *self.now.lock().unwrap()
    }
}

struct Rig {
    engine: Engine,
    sm: Arc<FakeSm>,
    jobs: Arc<FakeJobs>,
    stats: Arc<AgentStats>,
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
    let jobs = Arc::new(FakeJobs::default());
    let stats = Arc::new(AgentStats::default());
    let mut opts = EngineOptions::new(dir.path());
    opts.inline = true;
    opts.dry_run = dry_run;
    opts.stats = stats.clone();
    opts.jobs = Some(jobs.clone());
    opts.services.insert("api".into(), ServiceInfo { unit: "api.service".into(), has_probe: false });
    let engine = Engine::new(runbooks, sm.clone(), audit, clock.clone(), opts).unwrap();
    Rig { engine, sm, jobs, stats, clock, rx, dir }
}

fn rig(runbooks: Vec<Runbook>) -> Rig {
    rig_in(tempfile::tempdir().unwrap(), runbooks, false, Arc::new(FakeClock::new(t0())))
}

impl Rig {
    fn records(&self) -> Vec<AuditRecord> {
        self.rx.try_iter().filter(|r| r.kind != AuditKind::Lifecycle).collect()
    }
    fn messages(&self, kind: AuditKind) -> Vec<String> {
        self.records().into_iter().filter(|x| x.kind == kind).map(|x| x.message).collect()
    }
    fn exit_as(&self, code: Option<i32>, signal: Option<i32>, cause: Option<ExitCause>) {
        let mut e = Event::new(
            self.clock.now(),
            EventBody::ProcessExit(ProcessExit {
                exit_code: code,
                signal: signal.map(Signal),
                lifetime_ns: 60_000_000_000,
                exit_cause: cause,
                ..Default::default()
            }),
        );
        e.service = Some("api".into());
        e.comm = "api".into();
        e.pid = 4242;
        self.engine.on_event(&e);
    }
    fn exit(&self, code: Option<i32>, signal: Option<i32>) {
        self.exit_as(code, signal, None)
    }
    fn after(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
        self.engine.tick();
    }
    fn state(&self, state: ActiveState) {
        *self.sm.state.lock().unwrap() = state;
        let status = self.sm.status("api.service").unwrap();
        self.engine.on_service_state("api", &status);
    }
}

/// restart (verified), restart after 10 s (verified), log.
const LADDER: &str = r#"
name: api-crash
service: api
trigger:
  event: process_exit
  where: { exit_class: { in: [error, signal] } }
steps:
  - restart: {}
    verify: { healthy_within: 5s }
  - restart: { delay: 10s }
    verify: { healthy_within: 30s }
  - log: { message: "{{ service.name }} exited {{ event.exit_code }} ({{ event.exit_cause }})" }
cooldown: 1m
reset_after: 1h
"#;

fn kinds(rs: &[AuditRecord]) -> Vec<&'static str> {
    rs.iter().map(|r| r.kind.as_str()).collect()
}

#[test]
fn a_ladder_that_does_not_heal_runs_to_its_end_at_once_and_verification_ends_when_the_unit_fails() {
    let r = rig(vec![rb(LADDER)]);
    *r.sm.heals.lock().unwrap() = false;
    r.exit(Some(1), None);
    // One firing: both restarts and the log ran, no new firing needed.
    assert_eq!(r.sm.restarts(), 2, "{:?}", r.sm.calls());
    let rs = r.records();
    let decisions: Vec<&str> =
        rs.iter().filter(|x| x.kind == AuditKind::Decision).map(|x| x.message.as_str()).collect();
    assert_eq!(decisions.len(), 4, "{decisions:#?}");
    assert!(decisions[0].starts_with(r#"Trigger fired (process_exit where exit_class in ["error","signal"]): running step 1 of 3 (restart)"#));
    assert!(decisions[1].starts_with("not healed, at once: running step 2 of 3 (restart)"), "{decisions:?}");
    assert!(decisions[2].starts_with("not healed, at once: running step 3 of 3 (log)"), "{decisions:?}");
    assert!(
        decisions[3].starts_with("ladder exhausted: all 3 steps ran and api did not heal"),
        "{decisions:?}"
    );
    // The unit was failed at the first poll: not healed at once, not after 5 s.
    let v: Vec<&AuditRecord> = rs.iter().filter(|x| x.kind == AuditKind::Verification).collect();
    assert_eq!(v.len(), 2);
    assert!(v.iter().all(|v| v.details["healed"] == false && v.details["waited_ms"] == 0), "{v:?}");
    // The only wait was step 2's delay.
    assert_eq!(r.clock.now(), t0() + Duration::from_secs(10));
    let log = rs.iter().find(|x| x.kind == AuditKind::Outcome && x.details["step"] == 3).unwrap();
    assert_eq!(log.details["result"]["message"], "api exited 1 (unrequested)");
    // Exhausted: more crashes run nothing, and say so once.
    r.exit(Some(1), None);
    r.exit(Some(1), None);
    let rs = r.records();
    assert_eq!(kinds(&rs), ["suppression"], "{rs:#?}");
    assert_eq!(rs[0].details["reason"], "ladder_exhausted");
    assert_eq!(r.sm.restarts(), 2);
    let st = &r.engine.status()[0];
    assert_eq!((st.phase.as_str(), st.counts.firings, st.counts.suppressions), ("exhausted", 3, 2));
    assert_eq!((st.counts.actions, st.counts.not_healed), (3, 2));
    let s = r.stats.snapshot();
    assert_eq!(
        (s.runbook_firings, s.runbook_actions, s.runbook_not_healed, s.runbook_suppressions),
        (3, 3, 2, 2)
    );
    // Quiet for reset_after: back to step 1; the next crash restarts again.
    r.after(3600);
    assert!(r.messages(AuditKind::Decision).iter().any(|m| m.starts_with("Ladder reset")));
    assert_eq!(r.engine.status()[0].next_step, 1);
    r.exit(Some(1), None);
    assert_eq!(r.sm.restarts(), 4);
}

#[test]
fn a_healed_incident_acts_at_once_on_the_next_failure() {
    let r = rig(vec![rb(LADDER)]);
    r.exit(Some(3), None);
    let v = r.records().into_iter().find(|x| x.kind == AuditKind::Verification).unwrap();
    assert_eq!(v.details["healed"], true, "{v:?}");
    assert_eq!(r.engine.status()[0].phase, "healed");
    // 6 s later, within the cooldown: step 2 runs, nothing swallows it.
    r.after(6);
    r.exit(Some(3), None);
    assert_eq!(r.sm.restarts(), 2);
    let st = &r.engine.status()[0];
    assert_eq!((st.next_step, st.last_actions.last().unwrap().healed), (3, Some(true)));
}

#[test]
fn clean_and_requested_exits_do_not_match_a_crash_trigger() {
    let r = rig(vec![rb(LADDER)]);
    r.exit(Some(0), None);
    r.exit_as(None, Some(15), Some(ExitCause::StopRequested));
    r.exit_as(Some(143), None, Some(ExitCause::RestartRequested));
    assert!(r.records().is_empty());
    assert_eq!(r.sm.restarts(), 0);
    // A condition that names the cause gets what it names.
    let r = rig(vec![rb(
        "name: stops\nservice: api\ntrigger: { event: process_exit, where: { exit_cause: stop_requested } }\nsteps: [ { log: { message: \"stopped\" } } ]\n",
    )]);
    r.exit_as(None, Some(15), Some(ExitCause::StopRequested));
    r.exit(Some(1), None);
    assert_eq!(r.engine.status()[0].counts.firings, 1);
}

#[test]
fn a_stop_announced_after_the_exit_still_explains_it_and_a_segfault_never_waits() {
    let r = rig(vec![rb(LADDER)]);
    // The exiting process is the unit's main process, as the poller saw it.
    *r.sm.pid.lock().unwrap() = 4242;
    r.state(ActiveState::Active);
    // systemd's signal for the stop reaches custos after the kernel's exit.
    r.jobs.announce(JobKind::Stop, r.clock.now(), None);
    *r.jobs.now.lock().unwrap() = Some(r.clock.now() + Duration::from_millis(1));
    r.exit(Some(143), None);
    assert_eq!((r.jobs.syncs(), r.sm.restarts()), (1, 0));
    assert!(r.records().is_empty());
    let svc = r.engine.services_status().into_iter().find(|s| s.name == "api").unwrap();
    assert_eq!(svc.last_exit.unwrap().cause, Some(ExitCause::StopRequested));
    // A second exit from before the sync needs no other sync.
    r.exit(Some(143), None);
    assert_eq!(r.jobs.syncs(), 1);
    // A SIGSEGV is a crash whatever is under way, without asking.
    r.exit(None, Some(11));
    assert_eq!((r.jobs.syncs(), r.sm.restarts()), (1, 1));
}

#[test]
fn an_exit_nobody_asked_for_fires_after_the_jobs_are_brought_up_to_date() {
    let r = rig(vec![rb(LADDER)]);
    *r.jobs.now.lock().unwrap() = Some(r.clock.now() + Duration::from_millis(1));
    // A kill -9 with no job: unrequested.
    r.exit(None, Some(9));
    assert_eq!((r.jobs.syncs(), r.sm.restarts()), (1, 1));
    let rs = r.records();
    assert_eq!(rs[0].details["event"]["exit_cause"], "unrequested", "{:?}", rs[0]);
}

#[test]
fn a_no_op_does_not_count_toward_the_breaker() {
    let r = rig(vec![rb(
        "name: api-crash\nservice: api\ntrigger: { event: process_exit, where: { signal: SIGSEGV } }\nsteps: [ { restart: {} } ]\ncooldown: 0s\nmax_actions: { count: 3, per: 1h }\n",
    )]);
    *r.sm.sub_state.lock().unwrap() = "auto-restart".into();
    for _ in 0..10 {
        r.exit(None, Some(11));
        r.after(1);
    }
    assert_eq!(r.sm.restarts(), 0);
    let rs = r.records();
    assert!(rs.iter().all(|x| x.kind != AuditKind::Breaker), "{rs:#?}");
    assert_eq!(rs.iter().filter(|x| x.details["result"]["skipped"] == "manager_restarting").count(), 10);
    assert_eq!(r.stats.snapshot().runbook_actions, 0);
    assert!(!r.engine.status()[0].breaker_open);
}

#[test]
fn breaker_opens_escalates_once_then_suppresses_quietly_and_closes_later() {
    let r = rig(vec![rb(r#"
name: api-crash
service: api
trigger: { event: process_exit, where: { signal: SIGSEGV } }
steps: [ { restart: {} } ]
cooldown: 0s
max_actions: { count: 2, per: 1h }
escalate: { log: { message: "giving up on {{ service.name }}" } }
"#)]);
    for _ in 0..6 {
        r.exit(None, Some(11));
        r.after(60);
    }
    let rs = r.records();
    let breaker: Vec<&AuditRecord> = rs.iter().filter(|x| x.kind == AuditKind::Breaker).collect();
    assert_eq!(breaker.len(), 1, "{rs:#?}");
    assert!(
        breaker[0].message.contains("circuit breaker open: 2 actions within 1h"),
        "{}",
        breaker[0].message
    );
    assert!(rs
        .iter()
        .any(|x| x.kind == AuditKind::Outcome && x.details["result"]["message"] == "giving up on api"));
    // Three more firings while open: one record, the rest counted.
    let sup: Vec<&AuditRecord> = rs.iter().filter(|x| x.kind == AuditKind::Suppression).collect();
    assert_eq!(sup.len(), 1, "{sup:#?}");
    assert_eq!(sup[0].details["reason"], "breaker_open");
    assert_eq!(r.sm.restarts(), 2);
    assert_eq!(r.stats.snapshot().runbook_breaker_openings, 1);
    assert!(r.engine.status()[0].breaker_open);
    r.after(3600);
    r.exit(None, Some(11));
    let rs = r.records();
    assert!(rs.iter().any(|x| x.kind == AuditKind::Breaker && x.message.contains("closed")));
    // The record after the quiet ones says how many it folded.
    let next = rs.iter().find(|x| x.kind == AuditKind::Decision).unwrap();
    assert_eq!(next.details["repeats_before"]["count"], 2, "{next:?}");
    assert_eq!(r.sm.restarts(), 3);
}

#[test]
fn dry_run_decides_and_audits_but_changes_nothing() {
    let r = rig_in(tempfile::tempdir().unwrap(), vec![rb(LADDER)], true, Arc::new(FakeClock::new(t0())));
    r.exit(Some(1), None);
    let rs = r.records();
    assert!(r.sm.calls().is_empty(), "{:?}", r.sm.calls());
    assert!(rs.iter().all(|x| x.dry_run));
    // The service stays failed: the dry run walks the whole ladder.
    let would: Vec<&str> =
        rs.iter().filter(|x| x.kind == AuditKind::Action).map(|x| x.message.as_str()).collect();
    assert_eq!(would.len(), 3, "{would:?}");
    assert!(would[0].starts_with("Dry run, step 1 of 3 (restart): would restart"), "{would:?}");
    assert_eq!(r.stats.snapshot().runbook_actions, 0, "nothing performed");
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
    r.after(120);
    r.exit(Some(1), None);
    let Rig { engine, dir, .. } = r;
    drop(engine);
    clock.advance(Duration::from_secs(120));
    let r = rig_in(dir, vec![rb(LADDER)], false, clock.clone());
    assert_eq!(r.engine.status()[0].next_step, 3);
    r.exit(Some(1), None);
    assert!(r.messages(AuditKind::Decision).iter().any(|m| m.contains("running step 3 of 3")));
    assert!(crate::audit::verify(&r.dir.path().join("audit")).is_ok());
}

#[test]
fn a_pause_decides_and_audits_acts_on_nothing_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(t0()));
    let r = rig_in(dir, vec![rb(LADDER)], false, clock.clone());
    assert!(r.engine.pause("nope", None).unwrap_err().contains("known: api"));
    let p = r.engine.pause("api", Some(Duration::from_secs(1800))).unwrap();
    assert_eq!(p.until, Some(t0() + Duration::from_secs(1800)));
    let Rig { engine, dir, rx, .. } = r;
    let lifecycle: Vec<AuditRecord> = rx.try_iter().filter(|x| x.kind == AuditKind::Lifecycle).collect();
    assert!(
        lifecycle.iter().any(|x| x.message.starts_with("Maintenance: api paused until")),
        "{lifecycle:?}"
    );
    drop(engine);
    let r = rig_in(dir, vec![rb(LADDER)], false, clock.clone());
    assert!(r.engine.status()[0].paused);
    r.exit(Some(1), None);
    r.exit(Some(1), None);
    let rs = r.records();
    assert_eq!(kinds(&rs), ["suppression"]);
    assert!(rs[0].message.contains("api is paused; would run step 1 of 3 (restart)"), "{}", rs[0].message);
    assert_eq!(r.sm.restarts(), 0);
    // The pause ends by itself, audited; then crashes are acted on.
    r.after(1800);
    let ended: Vec<String> =
        r.rx.try_iter().filter(|x| x.kind == AuditKind::Lifecycle).map(|x| x.message).collect();
    assert!(ended.iter().any(|m| m.contains("Maintenance of api ended")), "{ended:?}");
    r.exit(Some(1), None);
    assert_eq!(r.sm.restarts(), 1);
    // Resume ends a pause early.
    r.engine.pause("api", None).unwrap();
    assert!(r.engine.status()[0].paused);
    assert!(r.engine.resume("api").unwrap());
    assert!(!r.engine.resume("api").unwrap());
    assert!(!r.engine.status()[0].paused);
}

#[test]
fn service_down_acts_on_failed_units_and_on_inactive_ones_nobody_stopped() {
    let r = rig(vec![rb(
        "name: keep-up\nservice: api\ntrigger: { service_down: true }\nsteps: [ { start: {}, verify: { healthy_within: 5s } } ]\ncooldown: 0s\n",
    )]);
    // Inactive when custos starts: someone custos did not see stopped it.
    r.state(ActiveState::Inactive);
    assert_eq!(r.sm.restarts(), 0);
    // Up, then stopped with a stop job: stays stopped.
    r.state(ActiveState::Active);
    r.jobs.announce(JobKind::Stop, r.clock.now(), Some(r.clock.now()));
    r.after(5);
    r.state(ActiveState::Inactive);
    r.after(5);
    r.state(ActiveState::Inactive);
    assert_eq!(r.sm.restarts(), 0, "{:?}", r.sm.calls());
    assert!(r.engine.services_status()[0].stopped_on_request);
    // Started by the operator, then it dies by itself (inactive, no job).
    r.state(ActiveState::Active);
    assert!(!r.engine.services_status()[0].stopped_on_request);
    r.jobs.known.lock().unwrap().clear();
    r.after(5);
    r.state(ActiveState::Inactive);
    assert_eq!(r.sm.restarts(), 1, "{:?}", r.sm.calls());
    // Killed: failed, started again.
    r.after(60);
    r.state(ActiveState::Failed);
    assert_eq!(r.sm.restarts(), 2, "{:?}", r.sm.calls());
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
        r.after(200);
    }
    assert!(r.records().is_empty(), "3 crashes over 10 minutes are not a loop");
    r.exit(None, Some(11));
    r.after(30);
    r.exit(Some(1), None);
    assert_eq!(kinds(&r.records())[..2], ["decision", "action"]);
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
fn history_spans_every_runbook_beyond_ten_actions() {
    let r = rig(vec![rb(
        "name: a\nservice: api\ntrigger: { event: process_exit, where: { signal: SIGSEGV } }\nsteps: [ { restart: {} } ]\ncooldown: 0s\nmax_actions: { count: 100, per: 1h }\n",
    )]);
    for _ in 0..15 {
        r.exit(None, Some(11));
        r.after(1);
    }
    let h = r.engine.history(12);
    assert_eq!(h.len(), 12);
    assert!(h.windows(2).all(|w| w[0].action.ts >= w[1].action.ts), "newest first");
    assert_eq!(r.engine.history(100).len(), 15);
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
    *r.sm.state.lock().unwrap() = ActiveState::Active;
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

#[test]
fn a_level_that_still_holds_climbs_the_ladder_after_the_cooldown() {
    let r = rig(vec![rb(r#"
name: unhealthy
service: api
trigger: { health: failing }
steps:
  - signal: { signal: SIGHUP }
  - log: { message: "still unhealthy" }
cooldown: 1m
"#)]);
    *r.sm.state.lock().unwrap() = ActiveState::Active;
    r.engine.on_health("api", false, None);
    assert_eq!(r.sm.calls(), ["kill1 api.service"]);
    // Still failing: nothing within the cooldown, step 2 once it is over.
    r.after(30);
    r.engine.on_health("api", false, None);
    assert!(r.records().iter().all(|x| x.kind != AuditKind::Outcome || x.details["step"] != 2));
    r.after(31);
    let rs = r.records();
    assert!(
        rs.iter()
            .any(|x| x.kind == AuditKind::Outcome && x.details["result"]["message"] == "still unhealthy"),
        "{rs:#?}"
    );
    // Still failing after the last step: exhausted, not repeated.
    r.after(61);
    r.after(61);
    assert_eq!(r.engine.status()[0].phase, "exhausted");
    assert_eq!(r.sm.calls(), ["kill1 api.service"]);
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
