//! The runbook engine: matches inputs (attributed events, anomalies, metric
//! values, health and service state) against runbooks, asks `decide.rs`
//! which step of the ladder to run (or why not: cooldown, breaker, busy),
//! runs it through the `ServiceManager` or as a command/webhook, verifies
//! the service healed, and writes every step to the audit log and the
//! state to disk.
//!
//! Matching happens on the caller's thread and is cheap; actions run on a
//! thread per execution (at most one per service at a time) so that a 30 s
//! verification never holds up the event pipeline.

use super::actions;
use super::decide::{self, decide, refires, State, Verdict};
use super::model::{Action, Runbook, Step};
use super::state::{ActionSummary, RunbookState, StateStore, LAST_ACTIONS};
use super::template::Context;
use super::trigger::{evaluate, interested, Input, TriggerState};
use crate::audit::{AuditEntry, AuditKind, AuditLog};
use crate::service_manager::{ActiveState, ServiceManager, ServiceStatus};
use custos_detect::Anomaly;
use custos_event::{Event, EventBody, EventKind};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Time for the engine: the system clock, or a fake one in tests.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
    fn sleep(&self, d: Duration);
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock that only moves when told to; `sleep` advances it.
pub struct FakeClock {
    now: Mutex<SystemTime>,
}

impl FakeClock {
    pub fn new(start: SystemTime) -> Self {
        FakeClock { now: Mutex::new(start) }
    }
    pub fn advance(&self, d: Duration) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
}

/// What the engine knows about a managed service.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// The service manager's name for it (`api.service`).
    pub unit: String,
    /// Whether it has a health probe (then healthy also means passing it).
    pub has_probe: bool,
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where `runbooks.json` (ladder, cooldowns, breaker) is kept.
    pub state_dir: PathBuf,
    /// Decide and audit, change nothing (overrides every runbook).
    pub dry_run: bool,
    /// Managed services by name; a runbook's service not listed here maps
    /// to `<name>.service` without a probe.
    pub services: HashMap<String, ServiceInfo>,
    /// How often verification polls the service.
    pub verify_poll: Duration,
    /// Run actions on the caller's thread (tests, `runbook test`).
    pub inline: bool,
}

impl EngineOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            state_dir: state_dir.into(),
            dry_run: false,
            services: HashMap::new(),
            verify_poll: Duration::from_millis(100),
            inline: false,
        }
    }
}

/// A loaded runbook with its live state, for `custos status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunbookStatus {
    pub name: String,
    pub service: String,
    pub source: String,
    pub dry_run: bool,
    pub steps: usize,
    /// The step (1-based) the next firing would run.
    pub next_step: usize,
    pub cooldown_until: Option<SystemTime>,
    pub breaker_open: bool,
    pub last_actions: Vec<ActionSummary>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] super::state::StateError),
}

struct Rules {
    runbooks: Vec<Arc<Runbook>>,
    triggers: Vec<Mutex<TriggerState>>,
    by_service: HashMap<String, Vec<usize>>,
}

impl Rules {
    fn new(runbooks: Vec<Runbook>) -> Self {
        let mut by_service: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, rb) in runbooks.iter().enumerate() {
            by_service.entry(rb.service.clone()).or_default().push(i);
        }
        Rules {
            triggers: runbooks.iter().map(|r| Mutex::new(TriggerState::new(&r.trigger))).collect(),
            runbooks: runbooks.into_iter().map(Arc::new).collect(),
            by_service,
        }
    }
}

struct Health {
    healthy: bool,
    at: SystemTime,
}

struct Inner {
    sm: Arc<dyn ServiceManager>,
    audit: Arc<AuditLog>,
    clock: Arc<dyn Clock>,
    opts: EngineOptions,
    rules: RwLock<Rules>,
    store: StateStore,
    state: Mutex<BTreeMap<String, RunbookState>>,
    busy: Mutex<HashSet<String>>,
    health: Mutex<HashMap<String, Health>>,
    /// Managed services by name (replaced by a reload); starts as
    /// `opts.services`.
    services: RwLock<HashMap<String, ServiceInfo>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The runbook engine. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// One execution to run.
struct Job {
    runbook: Arc<Runbook>,
    key: String,
    step: Step,
    /// 0-based ladder index, or `None` for the breaker's escalation.
    index: Option<usize>,
    ctx: Context,
    dry_run: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Builds an engine, restoring ladder, cooldown and breaker state from
    /// the state dir.
    pub fn new(
        runbooks: Vec<Runbook>,
        sm: Arc<dyn ServiceManager>,
        audit: Arc<AuditLog>,
        clock: Arc<dyn Clock>,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let store = StateStore::new(&opts.state_dir);
        let state = store.load()?;
        let engine = Engine {
            inner: Arc::new(Inner {
                sm,
                audit,
                clock,
                rules: RwLock::new(Rules::new(runbooks)),
                store,
                state: Mutex::new(state),
                busy: Mutex::new(HashSet::new()),
                health: Mutex::new(HashMap::new()),
                workers: Mutex::new(Vec::new()),
                services: RwLock::new(opts.services.clone()),
                opts,
            }),
        };
        let names: Vec<String> = engine.rules().runbooks.iter().map(|r| r.name.clone()).collect();
        engine.audit(
            AuditKind::Lifecycle,
            None,
            format!("Runbook engine started with {} runbooks.", names.len()),
            json!({ "runbooks": names, "dry_run": engine.inner.opts.dry_run }),
            engine.inner.opts.dry_run,
        );
        Ok(engine)
    }

    fn rules(&self) -> std::sync::RwLockReadGuard<'_, Rules> {
        self.inner.rules.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the runbooks (SIGHUP) and, when given, the managed services
    /// (which unit a runbook's `restart` acts on, which services have a
    /// probe) in one step, keeping ladder, cooldown and breaker state of
    /// runbooks that keep their name. Matching windows restart.
    pub fn reload(&self, runbooks: Vec<Runbook>, services: Option<HashMap<String, ServiceInfo>>) {
        let names: Vec<String> = runbooks.iter().map(|r| r.name.clone()).collect();
        {
            // Both locks are held for the swap, so no event is handled with
            // the new runbooks and the old services or the other way round.
            let mut rules = self.inner.rules.write().unwrap_or_else(|e| e.into_inner());
            let mut current = self.inner.services.write().unwrap_or_else(|e| e.into_inner());
            *rules = Rules::new(runbooks);
            if let Some(services) = services {
                *current = services;
            }
        }
        self.audit(
            AuditKind::Lifecycle,
            None,
            format!("Runbooks reloaded: {} loaded.", names.len()),
            json!({ "runbooks": names }),
            self.inner.opts.dry_run,
        );
    }

    /// The service manager the engine acts through.
    pub fn service_manager(&self) -> Arc<dyn ServiceManager> {
        self.inner.sm.clone()
    }

    /// An attributed event (its `service` set); others are ignored.
    pub fn on_event(&self, event: &Event) {
        let Some(service) = event.service.as_deref() else { return };
        let kind = event.kind();
        let rules = self.rules();
        let Some(idx) = rules.by_service.get(service) else { return };
        let mut fields: Option<Map<String, Value>> = None;
        for &i in idx {
            let rb = &rules.runbooks[i];
            let probe = Input::Event { kind, fields: &Map::new() };
            if !interested(&rb.trigger, &probe) {
                continue;
            }
            let f = fields.get_or_insert_with(|| event_fields(event));
            self.evaluate_one(&rules, i, &Input::Event { kind, fields: f }, || f.clone());
        }
    }

    /// An anomaly from the detector.
    pub fn on_anomaly(&self, a: &Anomaly) {
        let rules = self.rules();
        let Some(idx) = rules.by_service.get(&a.service) else { return };
        for &i in idx {
            self.evaluate_one(&rules, i, &Input::Anomaly(a), || {
                let mut m = Map::new();
                m.insert("kind".into(), "anomaly".into());
                m.insert("metric".into(), a.metric.clone().into());
                m.insert("value".into(), json!(a.value));
                m.insert("severity".into(), a.severity.as_str().into());
                m.insert("score".into(), json!(a.score));
                m.insert("expected_low".into(), json!(a.expected_low));
                m.insert("expected_high".into(), json!(a.expected_high));
                m.insert("ts".into(), rfc3339(a.ts).into());
                m
            });
        }
    }

    /// A metric value of a service.
    pub fn on_metric(&self, service: &str, name: &str, value: f64, ts: SystemTime) {
        let rules = self.rules();
        let Some(idx) = rules.by_service.get(service) else { return };
        for &i in idx {
            self.evaluate_one(&rules, i, &Input::Metric { name, value }, || {
                let mut m = Map::new();
                m.insert("kind".into(), "metric".into());
                m.insert("metric".into(), name.into());
                m.insert("value".into(), json!(value));
                m.insert("ts".into(), rfc3339(ts).into());
                m
            });
        }
    }

    /// The health of a service as judged by its probe after its threshold of
    /// consecutive failures; `probe_event` is the latest probe result.
    pub fn on_health(&self, service: &str, healthy: bool, probe_event: Option<&Event>) {
        let now = self.inner.clock.now();
        lock(&self.inner.health).insert(service.to_string(), Health { healthy, at: now });
        let rules = self.rules();
        let Some(idx) = rules.by_service.get(service) else { return };
        for &i in idx {
            self.evaluate_one(&rules, i, &Input::Health { healthy }, || {
                let mut m = probe_event.map(event_fields).unwrap_or_default();
                m.insert("kind".into(), "health_probe".into());
                m.entry("ok").or_insert(healthy.into());
                m
            });
        }
    }

    /// The service manager's view of a service changed (or was polled).
    pub fn on_service_state(&self, service: &str, status: &ServiceStatus) {
        let rules = self.rules();
        let Some(idx) = rules.by_service.get(service) else { return };
        let input = Input::State { state: status.state, manager_restarting: status.manager_restarting };
        for &i in idx {
            self.evaluate_one(&rules, i, &input, || {
                let mut m = Map::new();
                m.insert("kind".into(), "service_state".into());
                m.insert("state".into(), status.state.as_str().into());
                m.insert("sub_state".into(), status.sub_state.clone().into());
                m
            });
        }
    }

    fn evaluate_one(
        &self,
        rules: &Rules,
        i: usize,
        input: &Input<'_>,
        fields: impl FnOnce() -> Map<String, Value>,
    ) {
        let rb = &rules.runbooks[i];
        if !interested(&rb.trigger, input) {
            return;
        }
        let now = self.inner.clock.now();
        let eval = evaluate(&rb.trigger, &mut lock(&rules.triggers[i]), input, now);
        let fire = if eval.edge {
            true
        } else if eval.active && !has_instant(&rb.trigger) {
            // A level that stays true (health still failing after a
            // restart) fires again once the cooldown is over, so the
            // ladder climbs; silently skipped while busy or cooling down.
            let key = self.key(rb);
            // One lock at a time: `fire` takes busy, then state.
            let busy = lock(&self.inner.busy).contains(&rb.service);
            refires(&State { saved: lock(&self.inner.state).get(&key), busy }, now)
        } else {
            false
        };
        if fire {
            let ctx = self.context(rb, fields());
            self.fire(rb.clone(), ctx, now);
        }
    }

    fn dry_run(&self, rb: &Runbook) -> bool {
        decide::dry_run(rb, self.inner.opts.dry_run)
    }

    fn key(&self, rb: &Runbook) -> String {
        decide::state_key(rb, self.dry_run(rb))
    }

    fn unit(&self, service: &str) -> ServiceInfo {
        self.inner
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
            .unwrap_or_else(|| ServiceInfo { unit: crate::config::normalize_unit(service), has_probe: false })
    }

    fn context(&self, rb: &Runbook, event: Map<String, Value>) -> Context {
        Context { service_name: rb.service.clone(), service_unit: self.unit(&rb.service).unit, event }
    }

    fn audit(&self, kind: AuditKind, rb: Option<&Runbook>, message: String, details: Value, dry_run: bool) {
        let entry = AuditEntry {
            kind,
            runbook: rb.map(|r| r.name.clone()).unwrap_or_default(),
            service: rb.map(|r| r.service.clone()).unwrap_or_default(),
            message,
            details,
            dry_run,
        };
        // The audit log reports its own failures, once per kind of error
        // (a full disk fails every record alike), and counts them.
        let _ = self.inner.audit.append(entry, self.inner.clock.now());
    }

    fn save(&self, state: &BTreeMap<String, RunbookState>) {
        if let Err(e) = self.inner.store.save(state) {
            tracing::error!(error = %e, "Runbook state could not be saved.");
        }
    }

    fn fire(&self, rb: Arc<Runbook>, ctx: Context, now: SystemTime) {
        let dry = self.dry_run(&rb);
        let key = self.key(&rb);
        self.audit(
            AuditKind::Firing,
            Some(&rb),
            format!("Trigger fired: {}.", rb.trigger.describe()),
            json!({ "event": ctx.event }),
            dry,
        );
        // Busy is held until the job is registered, so that two firings
        // for one service never both run.
        let mut busy = lock(&self.inner.busy);
        let mut states = lock(&self.inner.state);
        let d = decide(&rb, &State { saved: states.get(&key), busy: busy.contains(&rb.service) }, now);
        if let Some(next) = d.next {
            states.insert(key.clone(), next);
        }
        let snapshot = d.verdict.saves().then(|| states.clone());
        drop(states);
        if let Some(reset) = d.ladder_reset {
            self.audit(
                AuditKind::Decision,
                Some(&rb),
                format!("Ladder reset: no firing for {}.", humantime::format_duration(reset)),
                json!({ "reason": "reset_after" }),
                dry,
            );
        }
        if d.breaker_closed {
            self.audit(
                AuditKind::Breaker,
                Some(&rb),
                "Circuit breaker closed: the action window has room again.".into(),
                json!({ "state": "closed" }),
                dry,
            );
        }
        if let Some(snapshot) = snapshot {
            self.save(&snapshot);
        }
        match d.verdict {
            Verdict::Busy => self.audit(
                AuditKind::Suppression,
                Some(&rb),
                format!("Not acting: an execution for service {} is in progress.", rb.service),
                json!({ "reason": "busy" }),
                dry,
            ),
            Verdict::CoolingDown { until } => self.audit(
                AuditKind::Suppression,
                Some(&rb),
                format!("Not acting: cooling down until {}.", rfc3339(until)),
                json!({ "reason": "cooldown", "until": rfc3339(until) }),
                dry,
            ),
            Verdict::BreakerOpen => self.audit(
                AuditKind::Suppression,
                Some(&rb),
                "Not acting: the circuit breaker is open.".into(),
                json!({ "reason": "breaker_open" }),
                dry,
            ),
            Verdict::OpenBreaker { max, escalate } => {
                self.audit(
                    AuditKind::Breaker,
                    Some(&rb),
                    format!(
                        "Circuit breaker open: {} actions within {}; custos stops acting on {} and escalates.",
                        max.count,
                        humantime::format_duration(max.per),
                        rb.service
                    ),
                    json!({ "state": "open", "count": max.count, "per_secs": max.per.as_secs() }),
                    dry,
                );
                if let Some(step) = escalate {
                    busy.insert(rb.service.clone());
                    drop(busy);
                    self.run(Job { runbook: rb, key, step, index: None, ctx, dry_run: dry });
                }
            }
            Verdict::Run { index, step } => {
                self.audit(
                    AuditKind::Decision,
                    Some(&rb),
                    format!("Running step {} of {}: {}.", index + 1, rb.steps.len(), step.action.describe()),
                    json!({ "step": index + 1, "action": step.action.name(), "delay_ms": step.delay.as_millis() as u64 }),
                    dry,
                );
                busy.insert(rb.service.clone());
                drop(busy);
                self.run(Job { runbook: rb, key, step, index: Some(index), ctx, dry_run: dry });
            }
        }
    }

    fn run(&self, job: Job) {
        if self.inner.opts.inline {
            self.execute(job);
        } else {
            let me = self.clone();
            let h = std::thread::Builder::new()
                .name(format!("runbook-{}", job.runbook.name))
                .spawn(move || me.execute(job));
            match h {
                Ok(h) => {
                    let mut w = lock(&self.inner.workers);
                    w.retain(|h| !h.is_finished());
                    w.push(h);
                }
                Err(e) => tracing::error!(error = %e, "Runbook worker thread could not start."),
            }
        }
    }

    /// Waits until no action is running (tests, `runbook test`, shutdown).
    pub fn wait_idle(&self) {
        loop {
            let handles: Vec<JoinHandle<()>> = lock(&self.inner.workers).drain(..).collect();
            if handles.is_empty() {
                return;
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }

    fn execute(&self, job: Job) {
        let rb = &job.runbook;
        let step_label = job.index.map(|i| format!("step {}", i + 1)).unwrap_or_else(|| "escalation".into());
        if !job.step.delay.is_zero() {
            self.inner.clock.sleep(job.step.delay);
        }
        let action_time = self.inner.clock.now();
        let (ok, detail, details) = if job.dry_run {
            let rendered = self.render(&job.step.action, &job.ctx);
            self.audit(
                AuditKind::Action,
                Some(rb),
                format!("Dry run, {step_label}: would {}.", job.step.action.describe()),
                json!({ "step": step_label, "action": job.step.action.name(), "would": rendered }),
                true,
            );
            (true, "dry run".to_string(), Value::Null)
        } else {
            let rendered = self.render(&job.step.action, &job.ctx);
            self.audit(
                AuditKind::Action,
                Some(rb),
                format!("{step_label}: {}.", job.step.action.describe()),
                json!({ "step": step_label, "action": job.step.action.name(), "request": rendered }),
                false,
            );
            let (ok, detail, details) = self.perform(rb, &job.step.action, &job.ctx);
            self.audit(
                AuditKind::Outcome,
                Some(rb),
                format!("{step_label} {}: {detail}.", if ok { "succeeded" } else { "failed" }),
                json!({ "step": step_label, "ok": ok, "result": details }),
                false,
            );
            (ok, detail, details)
        };
        let _ = details;
        let healed = match job.step.verify {
            Some(v) if job.dry_run => {
                self.audit(
                    AuditKind::Verification,
                    Some(rb),
                    format!(
                        "Dry run: would wait up to {} for {} to be healthy.",
                        humantime::format_duration(v.healthy_within),
                        rb.service
                    ),
                    json!({ "healthy_within_ms": v.healthy_within.as_millis() as u64 }),
                    true,
                );
                None
            }
            Some(v) => {
                let (healed, last) = self.verify(rb, v, action_time);
                self.audit(
                    AuditKind::Verification,
                    Some(rb),
                    if healed {
                        format!("Healed: {} healthy within {}.", rb.service, humantime::format_duration(v.healthy_within))
                    } else {
                        format!(
                            "Not healed: {} not healthy within {} (last: {last}).",
                            rb.service,
                            humantime::format_duration(v.healthy_within)
                        )
                    },
                    json!({ "healed": healed, "last_state": last, "healthy_within_ms": v.healthy_within.as_millis() as u64 }),
                    false,
                );
                Some(healed)
            }
            None => None,
        };
        {
            let mut states = lock(&self.inner.state);
            let st = states.entry(job.key.clone()).or_default();
            st.last_actions.push_back(ActionSummary {
                ts: action_time,
                step: job.index.map(|i| i + 1).unwrap_or(0),
                action: job.step.action.name().to_string(),
                ok,
                healed,
                dry_run: job.dry_run,
                detail,
            });
            while st.last_actions.len() > LAST_ACTIONS {
                st.last_actions.pop_front();
            }
            let snapshot = states.clone();
            drop(states);
            self.save(&snapshot);
        }
        lock(&self.inner.busy).remove(&rb.service);
    }

    /// What an action will do with templates rendered (for audit records).
    fn render(&self, action: &Action, ctx: &Context) -> Value {
        match action {
            Action::Exec(e) => json!({
                "argv": e.argv.iter().map(|a| a.render(ctx)).collect::<Vec<_>>(),
                "env": e.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                "cwd": e.cwd,
                "run_as": e.run_as,
                "timeout_ms": e.timeout.as_millis() as u64,
            }),
            Action::Webhook(w) => json!({
                "method": w.method,
                "url": w.url,
                "headers": w.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                "body": w.body.as_ref().map(|b| b.render(ctx)),
            }),
            Action::Log(m) => json!({ "message": m.render(ctx) }),
            Action::Signal(s) => json!({ "unit": ctx.service_unit, "signal": custos_event::signal_name(*s) }),
            _ => json!({ "unit": ctx.service_unit }),
        }
    }

    /// Does the action; returns (ok, one-line detail, structured result).
    fn perform(&self, rb: &Runbook, action: &Action, ctx: &Context) -> (bool, String, Value) {
        let sm = &self.inner.sm;
        let unit = ctx.service_unit.as_str();
        let service_result = |r: Result<(), crate::service_manager::ServiceError>, what: &str| match r {
            Ok(()) => (true, format!("{what} {unit} done"), json!({ "manager": sm.name() })),
            Err(e) => (false, e.to_string(), json!({ "manager": sm.name(), "error": e.to_string() })),
        };
        match action {
            Action::Restart | Action::Start => {
                let status = sm.status(unit);
                if let Ok(s) = &status {
                    if s.manager_restarting {
                        return (
                            true,
                            format!(
                                "{} is already restarting {unit} ({}); not acting on top",
                                sm.name(),
                                s.sub_state
                            ),
                            json!({ "skipped": "manager_restarting", "sub_state": s.sub_state }),
                        );
                    }
                    if s.state == ActiveState::Failed {
                        // Clears the start limit so the start is not refused.
                        let _ = sm.reset_failed(unit);
                    }
                }
                if matches!(action, Action::Restart) {
                    service_result(sm.restart(unit), "restart")
                } else {
                    service_result(sm.start(unit), "start")
                }
            }
            Action::Stop => service_result(sm.stop(unit), "stop"),
            Action::Signal(s) => service_result(sm.kill(unit, *s), "signal"),
            Action::Exec(e) => {
                // Values a process chose cannot become options or paths
                // elsewhere unless the step allows it (template.rs).
                let argv: Result<Vec<String>, String> =
                    e.argv.iter().map(|a| a.render_arg(ctx, e.policy)).collect();
                let env: Vec<(String, String)> =
                    e.env.iter().map(|(k, v)| (k.clone(), v.render(ctx))).collect();
                match argv.and_then(|argv| {
                    crate::command::run_exec(&argv, &env, e.cwd.as_deref(), &e.run_as, e.timeout)
                }) {
                    Ok(out) => {
                        let detail = if out.timed_out {
                            format!("timed out after {} ms", out.duration_ms)
                        } else if let Some(c) = out.exit_code {
                            format!("exited with code {c}")
                        } else {
                            format!("killed by signal {}", out.signal.unwrap_or(0))
                        };
                        (out.success(), detail, serde_json::to_value(&out).unwrap_or_default())
                    }
                    Err(err) => (false, err.clone(), json!({ "error": err })),
                }
            }
            Action::Webhook(w) => {
                let body = w.body.as_ref().map(|b| b.render(ctx));
                let clock = self.inner.clock.clone();
                let out = actions::send_webhook(w, body.as_ref(), &|d| clock.sleep(d));
                let detail = match (&out.status, &out.error) {
                    (Some(s), _) => format!("HTTP {s} after {} attempts", out.attempts),
                    (None, Some(e)) => format!("{e} after {} attempts", out.attempts),
                    _ => "no attempt".into(),
                };
                (out.success(), detail, serde_json::to_value(&out).unwrap_or_default())
            }
            Action::Log(m) => {
                let text = m.render(ctx);
                tracing::warn!(runbook = %rb.name, service = %rb.service, message = %text, "Runbook log action.");
                (true, text.clone(), json!({ "message": text }))
            }
        }
    }

    /// Waits (bounded) for the service to be healthy: active, not being
    /// restarted by its manager, its main PID stable, and its probe (if
    /// any) passing since the action, continuously for `stable_for`.
    fn verify(&self, rb: &Runbook, v: super::model::Verify, since: SystemTime) -> (bool, String) {
        let info = self.unit(&rb.service);
        let clock = &self.inner.clock;
        let deadline = clock.now() + v.healthy_within;
        let mut stable_since: Option<(SystemTime, Option<u32>)> = None;
        let mut last: String;
        loop {
            let now = clock.now();
            let healthy = match self.inner.sm.status(&info.unit) {
                Ok(s) => {
                    last = s.to_string();
                    let probe_ok = !info.has_probe
                        || lock(&self.inner.health)
                            .get(&rb.service)
                            .is_some_and(|h| h.healthy && h.at >= since);
                    if info.has_probe && !probe_ok {
                        last.push_str(", health probe not passing");
                    }
                    (s.state == ActiveState::Active && !s.manager_restarting && probe_ok)
                        .then_some(s.main_pid)
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            };
            match healthy {
                Some(pid) => {
                    let (start, seen_pid) = *stable_since.get_or_insert((now, pid));
                    if seen_pid != pid {
                        stable_since = Some((now, pid));
                    } else if now.duration_since(start).unwrap_or_default() >= v.stable_for {
                        return (true, last);
                    }
                }
                None => stable_since = None,
            }
            if now >= deadline {
                return (false, last);
            }
            clock.sleep(self.inner.opts.verify_poll);
        }
    }

    /// Loaded runbooks with their ladder position and last actions.
    pub fn status(&self) -> Vec<RunbookStatus> {
        let rules = self.rules();
        let states = lock(&self.inner.state);
        rules
            .runbooks
            .iter()
            .map(|rb| {
                let st = states.get(&self.key(rb)).cloned().unwrap_or_default();
                RunbookStatus {
                    name: rb.name.clone(),
                    service: rb.service.clone(),
                    source: rb.source.clone(),
                    dry_run: self.dry_run(rb),
                    steps: rb.steps.len(),
                    next_step: st.position.min(rb.steps.len() - 1) + 1,
                    cooldown_until: st.cooldown_until,
                    breaker_open: st.breaker_open,
                    last_actions: st.last_actions.into_iter().collect(),
                }
            })
            .collect()
    }
}

fn has_instant(t: &super::model::Trigger) -> bool {
    use super::model::Trigger;
    match t {
        Trigger::Event { .. } | Trigger::Anomaly { .. } => true,
        Trigger::Metric { .. } | Trigger::HealthFailing | Trigger::ServiceDown => false,
        Trigger::All(ts) | Trigger::Any(ts) => ts.iter().any(has_instant),
    }
}

/// An event's fields as matched and templated: its JSON form flattened,
/// plus `exit_class` for process exits.
pub fn event_fields(e: &Event) -> Map<String, Value> {
    let mut m = match serde_json::to_value(e) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if let EventBody::ProcessExit(x) = &e.body {
        m.insert("exit_class".into(), x.class().as_str().into());
    }
    if e.kind() == EventKind::ProcessExit {
        m.entry("exit_code").or_insert(Value::Null);
    }
    m
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
