//! The runbook engine: matches inputs (attributed events, anomalies, metric
//! values, health and service state) against runbooks, asks `decide.rs`
//! what the incident does next (a step, or why not: held, breaker,
//! exhausted, paused), runs the step through the `ServiceManager` or as a
//! command/webhook, verifies the service healed, goes on to the next step
//! at once when it did not, and writes every decision to the audit log and
//! the state to disk.
//!
//! Before an exit is matched, the engine asks the service manager's jobs
//! whether someone asked for it (`exit_cause`): a deploy's SIGTERM is not
//! a crash. Matching happens on the caller's thread and is cheap; steps
//! run on a thread per incident (one per service at a time) so that a
//! 30 s verification never holds up the event pipeline.

use super::actions;
use super::decide::{self, Health, Hold, Settlement, StepOutcome, Suppression, Verdict};
use super::model::{Action, Runbook, Step};
use super::state::{
    ActionSummary, ExitRecord, Pause, Phase, RunbookState, Saved, ServiceRecord, StateStore, LAST_ACTIONS,
};
use super::template::Context;
use super::trigger::{evaluate, holds, interested, would_match_unrequested, Input, TriggerState};
use crate::audit::{AuditEntry, AuditKind, AuditLog};
use crate::export::AgentStats;
use crate::service_manager::{exit_cause, ActiveState, ManagerJobs, ServiceManager, ServiceStatus};
use custos_detect::Anomaly;
use custos_event::{Event, EventBody, EventKind, ExitCause, ProcessExit};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
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
#[derive(Clone)]
pub struct EngineOptions {
    /// Where `runbooks.json` (ladder, cooldowns, breaker, pauses) is kept.
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
    /// The agent's counters: firings, actions, failures, held and
    /// suppressed firings, breaker openings.
    pub stats: Arc<AgentStats>,
    /// The service manager's jobs, which tell a stop or restart someone
    /// asked for from a crash; without them every exit is unrequested.
    pub jobs: Option<Arc<dyn ManagerJobs>>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("state_dir", &self.state_dir)
            .field("dry_run", &self.dry_run)
            .field("services", &self.services)
            .field("verify_poll", &self.verify_poll)
            .field("inline", &self.inline)
            .field("jobs", &self.jobs.is_some())
            .finish()
    }
}

impl EngineOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            state_dir: state_dir.into(),
            dry_run: false,
            services: HashMap::new(),
            verify_poll: Duration::from_millis(100),
            inline: false,
            stats: Arc::new(AgentStats::default()),
            jobs: None,
        }
    }
}

/// How long an exit waits for the service manager's job signals to catch
/// up with the kernel's event before it is judged unrequested.
const SYNC_TIMEOUT: Duration = Duration::from_millis(500);

/// A suppression repeated within this long is counted into the next
/// record instead of written again.
const QUIET_REPEAT: Duration = Duration::from_secs(600);

/// What a runbook did since the agent started, for `custos status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub firings: u64,
    pub actions: u64,
    pub failures: u64,
    pub not_healed: u64,
    pub held: u64,
    pub suppressions: u64,
    pub breaker_openings: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.firings += o.firings;
        self.actions += o.actions;
        self.failures += o.failures;
        self.not_healed += o.not_healed;
        self.held += o.held;
        self.suppressions += o.suppressions;
        self.breaker_openings += o.breaker_openings;
    }
}

/// Where a running step is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Waiting for the step's `delay`.
    Waiting {
        until: SystemTime,
    },
    Acting,
    /// Waiting (at most until `until`) for the service to be healthy.
    Verifying {
        until: SystemTime,
    },
}

/// A step in progress, for `custos status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    pub runbook: String,
    /// 0-based ladder index; `None` for the escalation.
    pub step: Option<usize>,
    pub steps: usize,
    pub action: String,
    pub stage: Stage,
    pub since: SystemTime,
    /// The service's last state seen while verifying.
    pub last: String,
}

impl Progress {
    /// `step 2 of 4 (restart)` or `escalation (webhook)`.
    pub fn label(&self) -> String {
        step_label(self.step, self.steps, &self.action)
    }
}

/// `step 2 of 4 (restart)`, or `escalation (webhook)` for `None`.
pub fn step_label(step: Option<usize>, steps: usize, action: &str) -> String {
    match step {
        Some(i) => format!("step {} of {steps} ({action})", i + 1),
        None => format!("escalation ({action})"),
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
    /// The step (1-based) the next incident runs.
    pub next_step: usize,
    /// That step's action (`restart`, `webhook`).
    pub next_action: String,
    /// `idle`, `running`, `open`, `healed`, `exhausted`.
    pub phase: String,
    pub cooldown_until: Option<SystemTime>,
    pub breaker_open: bool,
    pub paused: bool,
    /// A firing held until the step running or the cooldown ends.
    pub held: bool,
    pub in_progress: Option<Progress>,
    pub counts: Counts,
    pub last_actions: Vec<ActionSummary>,
}

/// A service as the engine sees it, for `custos status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceView {
    pub name: String,
    pub paused: Option<Pause>,
    pub stopped_on_request: bool,
    pub last_exit: Option<ExitRecord>,
    pub in_progress: Option<Progress>,
}

/// One past action of any runbook, for `custos status --actions N`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub runbook: String,
    pub service: String,
    pub steps: usize,
    pub action: ActionSummary,
}

/// A runbook file that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub source: String,
    pub error: String,
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

struct HealthSeen {
    healthy: bool,
    at: SystemTime,
}

/// The poller's last view of a service (not persisted).
#[derive(Debug, Default)]
struct Observed {
    main_pid: Option<u32>,
    /// When a poll last saw it up (active, starting, stopping).
    up_at: Option<SystemTime>,
}

/// The quiet audit's memory per runbook: the last suppression written,
/// and how often it repeated since without a record.
#[derive(Debug)]
struct Quiet {
    reason: &'static str,
    written: SystemTime,
    repeats: u64,
}

/// Everything the engine's decisions read and write, under one lock:
/// decisions are quick, and one lock keeps the state, what runs and the
/// pauses consistent with each other.
#[derive(Default)]
struct Book {
    saved: Saved,
    /// The step running for each service.
    running: HashMap<String, Progress>,
    quiet: HashMap<String, Quiet>,
    counts: HashMap<String, Counts>,
    observed: HashMap<String, Observed>,
    /// The latest firing's fields per runbook key (a level refiring on a
    /// tick renders its templates from them).
    last_fields: HashMap<String, Map<String, Value>>,
    skipped: Vec<Skipped>,
}

impl Book {
    fn paused(&self, service: &str, now: SystemTime) -> bool {
        self.saved.services.get(service).and_then(|r| r.paused.as_ref()).is_some_and(|p| p.holds(now))
    }

    /// Another runbook than `name` runs a step for `service`.
    fn busy_other(&self, service: &str, name: &str) -> bool {
        self.running.get(service).is_some_and(|p| p.runbook != name)
    }
}

struct Inner {
    sm: Arc<dyn ServiceManager>,
    audit: Arc<AuditLog>,
    clock: Arc<dyn Clock>,
    opts: EngineOptions,
    rules: RwLock<Rules>,
    store: StateStore,
    book: Mutex<Book>,
    health: Mutex<HashMap<String, HealthSeen>>,
    /// Managed services by name (replaced by a reload); starts as
    /// `opts.services`.
    services: RwLock<HashMap<String, ServiceInfo>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Every job the manager announced before this is known (a sync sent then).
    synced_through: Mutex<Option<SystemTime>>,
    /// The jobs could not be synced once: said once in the log.
    sync_failed_logged: std::sync::atomic::AtomicBool,
}

/// The runbook engine. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// One step to run.
struct Job {
    runbook: Arc<Runbook>,
    key: String,
    step: Step,
    /// 0-based ladder index, or `None` for the escalation.
    index: Option<usize>,
    ctx: Context,
    dry_run: bool,
}

/// What a decision answers.
enum Origin {
    /// A firing with these fields.
    Firing(Map<String, Value>),
    /// The end of a step, whose template context carries over.
    StepEnd(Context),
    /// Time passing (held firings, cooldowns, levels that still hold).
    Tick,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An audit record to write once the lock is released.
struct Note {
    kind: AuditKind,
    message: String,
    details: Value,
}

impl Engine {
    /// Builds an engine, restoring ladder, cooldown, breaker and pause
    /// state from the state dir.
    pub fn new(
        runbooks: Vec<Runbook>,
        sm: Arc<dyn ServiceManager>,
        audit: Arc<AuditLog>,
        clock: Arc<dyn Clock>,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let store = StateStore::new(&opts.state_dir);
        let mut saved = store.load()?;
        let now = clock.now();
        // A step that was running when the agent stopped did not finish:
        // its incident is open, and the next firing goes on from there.
        for st in saved.runbooks.values_mut() {
            if matches!(st.phase, Phase::Running { .. }) {
                st.phase = Phase::Open { since: now };
            }
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                sm,
                audit,
                clock,
                rules: RwLock::new(Rules::new(runbooks)),
                store,
                book: Mutex::new(Book { saved, ..Book::default() }),
                health: Mutex::new(HashMap::new()),
                workers: Mutex::new(Vec::new()),
                services: RwLock::new(opts.services.clone()),
                synced_through: Mutex::new(None),
                sync_failed_logged: std::sync::atomic::AtomicBool::new(false),
                opts,
            }),
        };
        let names: Vec<String> = engine.rules().runbooks.iter().map(|r| r.name.clone()).collect();
        let paused: Vec<String> = lock(&engine.inner.book)
            .saved
            .services
            .iter()
            .filter(|(_, r)| r.paused.as_ref().is_some_and(|p| p.holds(now)))
            .map(|(n, _)| n.clone())
            .collect();
        engine.audit(
            AuditKind::Lifecycle,
            None,
            format!("Runbook engine started with {} runbooks.", names.len()),
            json!({ "runbooks": names, "dry_run": engine.inner.opts.dry_run, "paused": paused }),
            engine.inner.opts.dry_run,
        );
        Ok(engine)
    }

    fn rules(&self) -> std::sync::RwLockReadGuard<'_, Rules> {
        self.inner.rules.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the runbooks (SIGHUP) and, when given, the managed services
    /// (which unit a runbook's `restart` acts on, which services have a
    /// probe) in one step, keeping the state of runbooks that keep their
    /// name. Matching windows restart. A reload applies only when every
    /// runbook is valid, so nothing is skipped any more.
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
        lock(&self.inner.book).skipped.clear();
        self.audit(
            AuditKind::Lifecycle,
            None,
            format!("Runbooks reloaded: {} loaded.", names.len()),
            json!({ "runbooks": names }),
            self.inner.opts.dry_run,
        );
    }

    /// The runbook files skipped at start, and why (shown by status).
    pub fn set_skipped(&self, skipped: Vec<Skipped>) {
        lock(&self.inner.book).skipped = skipped;
    }

    pub fn skipped(&self) -> Vec<Skipped> {
        lock(&self.inner.book).skipped.clone()
    }

    /// The service manager the engine acts through.
    pub fn service_manager(&self) -> Arc<dyn ServiceManager> {
        self.inner.sm.clone()
    }

    /// An attributed event (its `service` set); others are ignored. An exit
    /// gets its `exit_cause` first, when a runbook could fire on it or it
    /// is the service's main process.
    pub fn on_event(&self, event: &Event) {
        let Some(service) = event.service.as_deref() else { return };
        let kind = event.kind();
        let rules = self.rules();
        let idx = rules.by_service.get(service);
        let mut fields: Option<Map<String, Value>> = None;
        if let EventBody::ProcessExit(exit) = &event.body {
            let main = {
                let book = lock(&self.inner.book);
                book.observed.get(service).and_then(|o| o.main_pid).is_some_and(|p| p == event.pid)
            };
            // The fields (a JSON view of the event) only for services with
            // runbooks: an exit of another service costs a lock, no more.
            let f = idx.map(|_| &mut *fields.insert(event_fields(event)));
            let cause = match exit.exit_cause {
                Some(c) => Some(c),
                None => {
                    let matters = f.as_deref().is_some_and(|f| {
                        idx.into_iter()
                            .flatten()
                            .any(|&i| would_match_unrequested(&rules.runbooks[i].trigger, f))
                    });
                    (matters || main).then(|| self.exit_cause_of(service, event, exit, true))
                }
            };
            if let (Some(c), Some(f)) = (cause, f) {
                f.insert(super::trigger::EXIT_CAUSE.into(), c.as_str().into());
            }
            if let Some(c) = cause {
                if c.requested() {
                    tracing::debug!(
                        service,
                        pid = event.pid,
                        cause = c.as_str(),
                        "Exit asked for: not a failure."
                    );
                }
            }
            if main || matches!(exit.class(), custos_event::ExitClass::Signal | custos_event::ExitClass::Oom)
            {
                let cause = cause.unwrap_or_else(|| self.exit_cause_of(service, event, exit, false));
                self.record_exit(service, event, exit, cause);
            }
        }
        let Some(idx) = idx else { return };
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

    /// Why the exit of a process of `service` happened: asked of the service
    /// manager, or not. When the jobs known do not explain it and `wait`,
    /// waits (bounded) until every job the manager announced up to now is
    /// known: the stop that sent the SIGTERM may be announced after the
    /// kernel reported the exit.
    fn exit_cause_of(&self, service: &str, event: &Event, exit: &ProcessExit, wait: bool) -> ExitCause {
        let Some(jobs) = &self.inner.opts.jobs else { return ExitCause::Unrequested };
        if exit.is_fault() {
            return ExitCause::Unrequested;
        }
        let unit = self.unit(service).unit;
        let started = (exit.lifetime_ns > 0)
            .then(|| event.ts.checked_sub(Duration::from_nanos(exit.lifetime_ns)))
            .flatten();
        let cause = exit_cause(&jobs.jobs(&unit), exit, started, event.ts);
        if cause.requested() || !wait {
            return cause;
        }
        if lock(&self.inner.synced_through).is_some_and(|t| t > event.ts) {
            return cause;
        }
        match jobs.sync(SYNC_TIMEOUT) {
            Some(through) => {
                let mut s = lock(&self.inner.synced_through);
                *s = Some(s.map_or(through, |t| t.max(through)));
                drop(s);
                exit_cause(&jobs.jobs(&unit), exit, started, event.ts)
            }
            None => {
                if !self.inner.sync_failed_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(service, "The service manager's jobs could not be brought up to date: an exit is judged on what is known.");
                }
                cause
            }
        }
    }

    fn record_exit(&self, service: &str, event: &Event, exit: &ProcessExit, cause: ExitCause) {
        let record = ExitRecord {
            at: event.ts,
            pid: event.pid,
            code: exit.exit_code,
            signal: exit.signal.map(|s| s.to_string()),
            cause: Some(cause),
        };
        // Saved with the next change that must be (an exit is shown, not
        // relied on): no fsync per exit.
        let snapshot = {
            let mut book = lock(&self.inner.book);
            let rec = book.saved.services.entry(service.to_string()).or_default();
            rec.last_exit = Some(record);
            (cause == ExitCause::StopRequested && !std::mem::replace(&mut rec.stopped_on_request, true))
                .then(|| book.saved.clone())
        };
        if let Some(s) = snapshot {
            self.save(&s);
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
        lock(&self.inner.health).insert(service.to_string(), HealthSeen { healthy, at: now });
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
    /// The service is down when it failed, or when it went inactive while
    /// custos watched and nobody had asked for the stop; a unit found
    /// inactive at start-up was stopped by someone custos did not see.
    pub fn on_service_state(&self, service: &str, status: &ServiceStatus) {
        let now = self.inner.clock.now();
        let up = matches!(
            status.state,
            ActiveState::Active | ActiveState::Activating | ActiveState::Deactivating | ActiveState::Other
        );
        let inactive = status.state == ActiveState::Inactive && !status.manager_restarting;
        let (seen_up, stopped_before) = {
            let book = lock(&self.inner.book);
            (
                book.observed.get(service).and_then(|o| o.up_at),
                book.saved.services.get(service).is_some_and(|r| r.stopped_on_request),
            )
        };
        // Went inactive since a poll saw it up: did someone ask for that?
        let stopped_now = inactive && !stopped_before && seen_up.is_some() && self.stop_requested(service);
        let snapshot = {
            let mut book = lock(&self.inner.book);
            let obs = book.observed.entry(service.to_string()).or_default();
            if status.main_pid.is_some() {
                obs.main_pid = status.main_pid;
            }
            if up {
                obs.up_at = Some(now);
            }
            let rec = book.saved.services.entry(service.to_string()).or_default();
            let before = rec.stopped_on_request;
            if status.state == ActiveState::Active {
                rec.stopped_on_request = false;
            } else if stopped_now {
                rec.stopped_on_request = true;
            }
            (rec.stopped_on_request != before).then(|| book.saved.clone())
        };
        if let Some(s) = snapshot {
            self.save(&s);
        }
        let stopped = stopped_before || stopped_now;
        let down = match status.state {
            ActiveState::Failed => !status.manager_restarting,
            ActiveState::Inactive => inactive && seen_up.is_some() && !stopped,
            _ => false,
        };
        let rules = self.rules();
        let Some(idx) = rules.by_service.get(service) else { return };
        let input = Input::State { down };
        for &i in idx {
            self.evaluate_one(&rules, i, &input, || {
                let mut m = Map::new();
                m.insert("kind".into(), "service_state".into());
                m.insert("state".into(), status.state.as_str().into());
                m.insert("sub_state".into(), status.sub_state.clone().into());
                m.insert("ts".into(), rfc3339(now).into());
                m
            });
        }
    }

    /// Whether the last job that took `service`'s unit down was a stop
    /// someone asked for (after bringing the jobs up to date).
    fn stop_requested(&self, service: &str) -> bool {
        let Some(jobs) = &self.inner.opts.jobs else { return false };
        let unit = self.unit(service).unit;
        let _ = jobs.sync(SYNC_TIMEOUT);
        jobs.jobs(&unit).iter().rev().find_map(|j| j.cause()) == Some(ExitCause::StopRequested)
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
        let (eval, level) = {
            let mut ts = lock(&rules.triggers[i]);
            let eval = evaluate(&rb.trigger, &mut ts, input, now);
            (eval, holds(&rb.trigger, &ts))
        };
        let fire = eval.edge || (level && self.refires(rb, now));
        if fire {
            self.decide(rb, Origin::Firing(fields()), level, None);
        }
    }

    /// Whether a level that still holds fires again now (see `decide::refires`).
    fn refires(&self, rb: &Runbook, now: SystemTime) -> bool {
        let key = self.key(rb);
        let book = lock(&self.inner.book);
        let cx = decide::Context {
            now,
            paused: book.paused(&rb.service, now),
            service_busy: book.busy_other(&rb.service, &rb.name),
            level_active: true,
        };
        let default = RunbookState::default();
        decide::refires(rb, book.saved.runbooks.get(&key).unwrap_or(&default), &cx)
    }

    /// Time passes: pauses end, ladders reset, held firings and levels
    /// that still hold are acted on. The agent calls this about once a
    /// second; tests with a fake clock call it when they move the clock.
    pub fn tick(&self) {
        let now = self.inner.clock.now();
        self.end_expired_pauses(now);
        let rules = self.rules();
        for (i, rb) in rules.runbooks.iter().enumerate() {
            let level = holds(&rb.trigger, &lock(&rules.triggers[i]));
            self.decide(rb, Origin::Tick, level, None);
        }
    }

    /// Decides for `rb` what `origin` asks, applies the decision to the
    /// state and audits it; starts the step it runs, or, at the end of a
    /// step (`worker`), hands the next step back to the worker.
    fn decide(
        &self,
        rb: &Arc<Runbook>,
        origin: Origin,
        level: bool,
        worker: Option<StepOutcome>,
    ) -> Option<Job> {
        let key = self.key(rb);
        let dry = self.dry_run(rb);
        let now = self.inner.clock.now();
        let mut book = lock(&self.inner.book);
        let cx = decide::Context {
            now,
            paused: book.paused(&rb.service, now),
            service_busy: book.busy_other(&rb.service, &rb.name),
            level_active: level,
        };
        let old = book.saved.runbooks.get(&key).cloned();
        let d = match (&origin, &worker) {
            (Origin::Firing(fields), _) => decide::fire(rb, old.as_ref(), fields, &cx),
            (Origin::StepEnd(_), Some(outcome)) => decide::step_ended(rb, old.as_ref(), outcome, &cx),
            _ => decide::tick(rb, old.as_ref(), &cx),
        };
        let changed = old.as_ref() != Some(&d.next);
        if matches!(d.verdict, Verdict::Nothing) && !changed && d.ladder_reset.is_none() {
            return None;
        }
        // The fields a step renders its templates from: the firing's, the
        // held firing's it acts on, else those of the step before.
        let held_event = old.as_ref().and_then(|o| o.pending.as_ref()).map(|p| p.event.clone());
        let event = match &origin {
            Origin::Firing(f) => {
                book.last_fields.insert(key.clone(), f.clone());
                Some(f.clone())
            }
            Origin::StepEnd(ctx) if d.folded == 0 => Some(ctx.event.clone()),
            _ => held_event.or_else(|| book.last_fields.get(&key).cloned()),
        };
        let firing = matches!(origin, Origin::Firing(_));
        let mut notes = Vec::new();
        let counts = book.counts.entry(rb.name.clone()).or_default();
        if firing {
            counts.firings += 1;
            AgentStats::add(&self.inner.opts.stats.runbook_firings, 1);
        }
        let trigger = rb.trigger.describe();
        let fired = |what: String| if firing { format!("Trigger fired ({trigger}): {what}") } else { what };
        let fold = |mut details: Value| {
            if d.folded > 0 {
                details["held_firings"] = json!(d.folded);
            }
            if let (Some(e), true) = (&event, firing) {
                details["event"] = Value::Object(e.clone());
            }
            details
        };
        if let Some(reset) = d.ladder_reset {
            notes.push(Note {
                kind: AuditKind::Decision,
                message: format!(
                    "Ladder reset: {} quiet for {}; the next incident starts at step 1.",
                    rb.service,
                    humantime::format_duration(reset)
                ),
                details: json!({ "reason": "reset_after", "reset_after_secs": reset.as_secs() }),
            });
        }
        if d.breaker_closed {
            notes.push(Note {
                kind: AuditKind::Breaker,
                message: "Circuit breaker closed: the action window has room again.".into(),
                details: json!({ "state": "closed" }),
            });
        }
        let steps = rb.steps.len();
        let mut job = None;
        let mut suppression: Option<&'static str> = None;
        match &d.verdict {
            Verdict::Run { index, step } => {
                let why = match (&origin, index) {
                    (Origin::StepEnd(_), _) => "not healed, at once: ",
                    (Origin::Tick, _) if d.folded > 0 => "acting on the held firing: ",
                    (Origin::Tick, _) => "still failing: ",
                    _ => "",
                };
                notes.push(Note {
                    kind: AuditKind::Decision,
                    message: fired(format!(
                        "{why}running {}: {}.",
                        step_label(*index, steps, step.action.name()),
                        step.action.describe()
                    )),
                    details: fold(json!({
                        "step": index.map(|i| i + 1),
                        "steps": steps,
                        "action": step.action.name(),
                        "delay_ms": step.delay.as_millis() as u64,
                    })),
                });
                job = Some((*index, step.clone()));
            }
            Verdict::OpenBreaker { max, escalate } => {
                counts.breaker_openings += 1;
                AgentStats::add(&self.inner.opts.stats.runbook_breaker_openings, 1);
                notes.push(Note {
                    kind: AuditKind::Breaker,
                    message: fired(format!(
                        "circuit breaker open: {} actions within {}; custos stops acting on {}{}.",
                        max.count,
                        humantime::format_duration(max.per),
                        rb.service,
                        if escalate.is_some() { " and escalates" } else { "" }
                    )),
                    details: fold(json!({ "state": "open", "count": max.count, "per_secs": max.per.as_secs() })),
                });
                job = escalate.clone().map(|s| (None, s));
            }
            Verdict::LadderExhausted { escalate } => {
                let then = match escalate {
                    Some(s) => format!("escalating: {}", s.action.describe()),
                    None => format!(
                        "nothing more runs until it has been quiet for {}",
                        humantime::format_duration(rb.reset_after)
                    ),
                };
                notes.push(Note {
                    kind: AuditKind::Decision,
                    message: fired(format!(
                        "ladder exhausted: all {steps} steps ran and {} did not heal; {then}.",
                        rb.service
                    )),
                    details: fold(json!({ "reason": "ladder_exhausted", "escalate": escalate.as_ref().map(|s| s.action.name()) })),
                });
                job = escalate.clone().map(|s| (None, s));
            }
            Verdict::Held(h) => {
                counts.held += 1;
                AgentStats::add(&self.inner.opts.stats.runbook_firings_held, 1);
                suppression = Some(h.reason());
                let message = match h {
                    Hold::Busy => format!("held: a step runs for {}; looked at when it ends.", rb.service),
                    Hold::CoolingDown { until } => {
                        format!("held until {} (the cooldown after a step that showed nothing).", rfc3339(*until))
                    }
                };
                notes.push(Note {
                    kind: AuditKind::Suppression,
                    message: fired(message),
                    details: fold(json!({ "reason": h.reason(), "held": true })),
                });
            }
            Verdict::Suppressed(s) => {
                counts.suppressions += 1;
                AgentStats::add(&self.inner.opts.stats.runbook_suppressions, 1);
                suppression = Some(s.reason());
                let message = match s {
                    Suppression::BreakerOpen => {
                        format!("not acting: the circuit breaker is open for {}.", rb.service)
                    }
                    Suppression::Exhausted => format!(
                        "not acting: the ladder is exhausted; it resets once {} has been quiet for {}.",
                        rb.service,
                        humantime::format_duration(rb.reset_after)
                    ),
                    Suppression::Paused { would } => format!(
                        "not acting: {} is paused{}.",
                        rb.service,
                        match would {
                            Some(i) => format!(
                                "; would run {}",
                                step_label(Some(*i), steps, rb.steps[*i].action.name())
                            ),
                            None => String::new(),
                        }
                    ),
                };
                let mut details = json!({ "reason": s.reason() });
                if let Suppression::Paused { would: Some(i) } = s {
                    details["would_run_step"] = json!(i + 1);
                }
                notes.push(Note { kind: AuditKind::Suppression, message: fired(message), details: fold(details) });
            }
            Verdict::Settled(Settlement::Open { cooldown_until }) => notes.push(Note {
                kind: AuditKind::Decision,
                message: format!(
                    "No verification showed {} healed, and it is not down: the next firing runs step {} of {steps}, not before {}.",
                    rb.service,
                    (d.next.position + 1).min(steps),
                    rfc3339(*cooldown_until)
                ),
                details: json!({ "reason": "unverified", "cooldown_until": rfc3339(*cooldown_until) }),
            }),
            Verdict::Settled(Settlement::Exhausted) => notes.push(Note {
                kind: AuditKind::Decision,
                message: format!(
                    "Incident exhausted: nothing more runs for {} until it has been quiet for {}.",
                    rb.service,
                    humantime::format_duration(rb.reset_after)
                ),
                details: json!({ "reason": "ladder_exhausted" }),
            }),
            Verdict::Settled(Settlement::Healed | Settlement::BreakerOpen) | Verdict::Nothing => {}
        }
        // Quiet audit: a suppression that repeats is counted into the next
        // record instead of written again.
        let repeat = book.quiet.get(&key).is_some_and(|q| {
            Some(q.reason) == suppression && now.duration_since(q.written).unwrap_or_default() < QUIET_REPEAT
        });
        if repeat {
            if let Some(q) = book.quiet.get_mut(&key) {
                q.repeats += 1;
            }
            notes.retain(|n| !matches!(n.kind, AuditKind::Suppression));
        } else if !notes.is_empty() || suppression.is_some() {
            if let Some(q) = book.quiet.remove(&key).filter(|q| q.repeats > 0) {
                if let Some(n) = notes.first_mut() {
                    n.details["repeats_before"] = json!({ "reason": q.reason, "count": q.repeats });
                }
            }
            if let Some(reason) = suppression {
                book.quiet.insert(key.clone(), Quiet { reason, written: now, repeats: 0 });
            }
        }
        let written = notes;
        book.saved.runbooks.insert(key.clone(), d.next.clone());
        let ctx = self.context(rb, event.unwrap_or_default());
        let next_job = job.map(|(index, step)| {
            book.running.insert(
                rb.service.clone(),
                Progress {
                    runbook: rb.name.clone(),
                    step: index,
                    steps,
                    action: step.action.name().to_string(),
                    stage: Stage::Acting,
                    since: now,
                    last: String::new(),
                },
            );
            Job { runbook: rb.clone(), key: key.clone(), step, index, ctx, dry_run: dry }
        });
        if worker.is_some() && next_job.is_none() {
            book.running.remove(&rb.service);
        }
        let snapshot = changed.then(|| book.saved.clone());
        drop(book);
        if let Some(s) = snapshot {
            self.save(&s);
        }
        for n in written {
            self.audit(n.kind, Some(rb), n.message, n.details, dry);
        }
        match (next_job, worker) {
            (Some(job), Some(_)) => Some(job),
            (Some(job), None) => {
                self.run(job);
                None
            }
            (None, _) => None,
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
        self.audit_service(
            kind,
            rb.map(|r| r.name.as_str()),
            rb.map(|r| r.service.as_str()),
            message,
            details,
            dry_run,
        )
    }

    fn audit_service(
        &self,
        kind: AuditKind,
        runbook: Option<&str>,
        service: Option<&str>,
        message: String,
        details: Value,
        dry_run: bool,
    ) {
        let entry = AuditEntry {
            kind,
            runbook: runbook.unwrap_or_default().to_string(),
            service: service.unwrap_or_default().to_string(),
            message,
            details,
            dry_run,
        };
        // The audit log reports its own failures, once per kind of error
        // (a full disk fails every record alike), and counts them.
        let _ = self.inner.audit.append(entry, self.inner.clock.now());
    }

    fn save(&self, saved: &Saved) {
        if let Err(e) = self.inner.store.save(saved) {
            tracing::error!(error = %e, "Runbook state could not be saved.");
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
                Err(e) => {
                    tracing::error!(error = %e, "Runbook worker thread could not start.");
                    lock(&self.inner.book).running.clear();
                }
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

    /// Runs an incident's steps, one after the other as long as they do
    /// not heal, then looks at what was held for the service meanwhile.
    fn execute(&self, mut job: Job) {
        let service = job.runbook.service.clone();
        loop {
            let outcome = self.run_step(&job);
            let level = {
                let rules = self.rules();
                rules.runbooks.iter().position(|r| r.name == job.runbook.name).is_some_and(|i| {
                    let mut ts = lock(&rules.triggers[i]);
                    if outcome.health == Health::Healed {
                        // The verification is newer than the inputs that
                        // made the trigger hold: a failure from now on is
                        // a new one.
                        *ts = TriggerState::new(&rules.runbooks[i].trigger);
                    }
                    holds(&rules.runbooks[i].trigger, &ts)
                })
            };
            let rb = job.runbook.clone();
            match self.decide(&rb, Origin::StepEnd(job.ctx.clone()), level, Some(outcome)) {
                Some(next) => job = next,
                None => break,
            }
        }
        // Firings held while the service was busy (this runbook's and its
        // neighbours') are looked at now.
        let rules = self.rules();
        if let Some(idx) = rules.by_service.get(&service) {
            for &i in idx {
                let level = holds(&rules.runbooks[i].trigger, &lock(&rules.triggers[i]));
                self.decide(&rules.runbooks[i], Origin::Tick, level, None);
            }
        }
    }

    fn set_stage(&self, service: &str, stage: Stage, last: Option<String>) {
        if let Some(p) = lock(&self.inner.book).running.get_mut(service) {
            p.stage = stage;
            if let Some(l) = last {
                p.last = l;
            }
        }
    }

    /// One step: its delay, its action (or what it would do), its
    /// verification; recorded in the runbook's last actions.
    fn run_step(&self, job: &Job) -> StepOutcome {
        let rb = &job.runbook;
        let clock = &self.inner.clock;
        let label = step_label(job.index, rb.steps.len(), job.step.action.name());
        if !job.step.delay.is_zero() {
            self.set_stage(&rb.service, Stage::Waiting { until: clock.now() + job.step.delay }, None);
            clock.sleep(job.step.delay);
        }
        self.set_stage(&rb.service, Stage::Acting, None);
        let action_time = clock.now();
        let rendered = self.render(&job.step.action, &job.ctx);
        let step_no = job.index.map(|i| i + 1);
        let (performed, ok, detail) = if job.dry_run {
            self.audit(
                AuditKind::Action,
                Some(rb),
                format!("Dry run, {label}: would {}.", job.step.action.describe()),
                json!({ "step": step_no, "action": job.step.action.name(), "would": rendered }),
                true,
            );
            (true, true, "dry run".to_string())
        } else {
            self.audit(
                AuditKind::Action,
                Some(rb),
                format!("{label}: {}.", job.step.action.describe()),
                json!({ "step": step_no, "action": job.step.action.name(), "request": rendered }),
                false,
            );
            let (performed, ok, detail, result) = self.perform(rb, &job.step.action, &job.ctx);
            let stats = &self.inner.opts.stats;
            {
                let mut book = lock(&self.inner.book);
                let c = book.counts.entry(rb.name.clone()).or_default();
                if performed {
                    c.actions += 1;
                    AgentStats::add(&stats.runbook_actions, 1);
                }
                if !ok {
                    c.failures += 1;
                    AgentStats::add(&stats.runbook_action_failures, 1);
                }
            }
            self.audit(
                AuditKind::Outcome,
                Some(rb),
                format!("{label} {}: {detail}.", if ok { "succeeded" } else { "failed" }),
                json!({ "step": step_no, "ok": ok, "performed": performed, "result": result }),
                false,
            );
            (performed, ok, detail)
        };
        let acted_at = clock.now();
        let health = match job.step.verify {
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
                Health::Unverified { failing: self.failing_now(&rb.service) }
            }
            Some(v) if ok => {
                self.set_stage(&rb.service, Stage::Verifying { until: clock.now() + v.healthy_within }, None);
                let (healed, last) = self.verify(rb, v, action_time);
                if !healed {
                    let mut book = lock(&self.inner.book);
                    book.counts.entry(rb.name.clone()).or_default().not_healed += 1;
                    AgentStats::add(&self.inner.opts.stats.runbook_not_healed, 1);
                }
                let waited = clock.now().duration_since(action_time).unwrap_or_default();
                self.audit(
                    AuditKind::Verification,
                    Some(rb),
                    if healed {
                        format!("Healed: {} healthy after {}.", rb.service, fmt_ms(waited))
                    } else {
                        format!("Not healed: {} after {} ({last}).", rb.service, fmt_ms(waited))
                    },
                    json!({
                        "healed": healed,
                        "last_state": last,
                        "waited_ms": waited.as_millis() as u64,
                        "healthy_within_ms": v.healthy_within.as_millis() as u64,
                    }),
                    false,
                );
                if healed {
                    Health::Healed
                } else {
                    Health::NotHealed
                }
            }
            Some(_) => Health::NotHealed,
            None => Health::Unverified { failing: self.failing_now(&rb.service) },
        };
        let healed = match health {
            Health::Healed => Some(true),
            Health::NotHealed if job.step.verify.is_some() && !job.dry_run => Some(false),
            _ => None,
        };
        {
            let mut book = lock(&self.inner.book);
            let st = book.saved.runbooks.entry(job.key.clone()).or_default();
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
        }
        StepOutcome { step: job.index, performed, ok, health, acted_at }
    }

    /// Whether the service is down or failed right now (after a step with
    /// no verification): failed, or inactive without a stop asked for, and
    /// its manager not restarting it.
    fn failing_now(&self, service: &str) -> bool {
        let unit = self.unit(service).unit;
        match self.inner.sm.status(&unit) {
            Ok(s) if s.manager_restarting => false,
            Ok(s) if s.state == ActiveState::Failed => true,
            Ok(s) if s.state == ActiveState::Inactive => !self.stop_requested(service),
            _ => false,
        }
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

    /// Does the action; returns (performed, ok, one-line detail,
    /// structured result). Not performed: systemd is already restarting
    /// the unit, and custos does not act on top.
    fn perform(&self, rb: &Runbook, action: &Action, ctx: &Context) -> (bool, bool, String, Value) {
        let sm = &self.inner.sm;
        let unit = ctx.service_unit.as_str();
        let service_result = |r: Result<(), crate::service_manager::ServiceError>, what: &str| match r {
            Ok(()) => (true, true, format!("{what} {unit} done"), json!({ "manager": sm.name() })),
            Err(e) => (true, false, e.to_string(), json!({ "manager": sm.name(), "error": e.to_string() })),
        };
        match action {
            Action::Restart | Action::Start => {
                let status = sm.status(unit);
                if let Ok(s) = &status {
                    if s.manager_restarting {
                        return (
                            false,
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
                        (true, out.success(), detail, serde_json::to_value(&out).unwrap_or_default())
                    }
                    Err(err) => (true, false, err.clone(), json!({ "error": err })),
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
                (true, out.success(), detail, serde_json::to_value(&out).unwrap_or_default())
            }
            Action::Log(m) => {
                let text = m.render(ctx);
                tracing::warn!(runbook = %rb.name, service = %rb.service, message = %text, "Runbook log action.");
                (true, true, text.clone(), json!({ "message": text }))
            }
        }
    }

    /// Waits (bounded) for the service to be healthy: active, not being
    /// restarted by its manager, its main PID stable, and its probe (if
    /// any) passing since the action, continuously for `stable_for`. Ends
    /// as soon as the answer is known: a unit that failed, is down, or
    /// exited after it came up is not healed, at once.
    fn verify(&self, rb: &Runbook, v: super::model::Verify, since: SystemTime) -> (bool, String) {
        let info = self.unit(&rb.service);
        let clock = &self.inner.clock;
        let deadline = clock.now() + v.healthy_within;
        let mut stable_since: Option<SystemTime> = None;
        // The main PID the unit came up with, once it did.
        let mut came_up: Option<Option<u32>> = None;
        let mut last: String;
        loop {
            let now = clock.now();
            match self.inner.sm.status(&info.unit) {
                Ok(s) => {
                    last = s.to_string();
                    let up = s.state == ActiveState::Active && !s.manager_restarting;
                    if let Some(pid) = came_up {
                        if !up || s.main_pid != pid {
                            return (false, format!("{last}: it exited after coming up"));
                        }
                    }
                    if s.state == ActiveState::Failed
                        || (s.state == ActiveState::Inactive && !s.manager_restarting)
                    {
                        return (false, last);
                    }
                    if up {
                        came_up.get_or_insert(s.main_pid);
                        if let Some(pid) = s.main_pid {
                            lock(&self.inner.book).observed.entry(rb.service.clone()).or_default().main_pid =
                                Some(pid);
                        }
                    }
                    let probe_ok = !info.has_probe
                        || lock(&self.inner.health)
                            .get(&rb.service)
                            .is_some_and(|h| h.healthy && h.at >= since);
                    if info.has_probe && !probe_ok {
                        last.push_str(", health probe not passing");
                    }
                    if up && probe_ok {
                        let start = *stable_since.get_or_insert(now);
                        if now.duration_since(start).unwrap_or_default() >= v.stable_for {
                            return (true, last);
                        }
                    } else {
                        stable_since = None;
                    }
                }
                Err(e) => {
                    last = e.to_string();
                    stable_since = None;
                }
            }
            if now >= deadline {
                return (false, last);
            }
            self.set_stage(&rb.service, Stage::Verifying { until: deadline }, Some(last.clone()));
            clock.sleep(self.inner.opts.verify_poll);
        }
    }

    /// Maintenance: `service`'s runbooks go on deciding and auditing, and
    /// act on nothing, for `duration` (or until [`resume`](Self::resume)).
    /// Persisted in the state dir and audited.
    pub fn pause(&self, service: &str, duration: Option<Duration>) -> Result<Pause, String> {
        self.known_service(service)?;
        let now = self.inner.clock.now();
        let pause = Pause { since: now, until: duration.map(|d| now + d) };
        let snapshot = {
            let mut book = lock(&self.inner.book);
            book.saved.services.entry(service.to_string()).or_default().paused = Some(pause.clone());
            book.saved.clone()
        };
        self.save(&snapshot);
        let until = match pause.until {
            Some(u) => {
                format!("until {} ({})", rfc3339(u), humantime::format_duration(duration.unwrap_or_default()))
            }
            None => "until `custos resume`".to_string(),
        };
        tracing::info!(service, until = %until, "Service paused: runbooks decide and audit, and act on nothing.");
        self.audit_service(
            AuditKind::Lifecycle,
            None,
            Some(service),
            format!(
                "Maintenance: {service} paused {until}; its runbooks decide and audit, and act on nothing."
            ),
            json!({ "maintenance": "paused", "until": pause.until.map(rfc3339), "by": "custos pause" }),
            false,
        );
        Ok(pause)
    }

    /// Ends `service`'s pause; `false` when it was not paused.
    pub fn resume(&self, service: &str) -> Result<bool, String> {
        self.known_service(service)?;
        let now = self.inner.clock.now();
        let (was, snapshot) = {
            let mut book = lock(&self.inner.book);
            let was = book.saved.services.get_mut(service).and_then(|r| r.paused.take());
            (was, book.saved.clone())
        };
        let Some(was) = was else { return Ok(false) };
        self.save(&snapshot);
        let held = now.duration_since(was.since).unwrap_or_default();
        tracing::info!(service, "Service resumed: runbooks act again.");
        self.audit_service(
            AuditKind::Lifecycle,
            None,
            Some(service),
            format!(
                "Maintenance of {service} ended by `custos resume` after {}; its runbooks act again.",
                fmt_secs(held)
            ),
            json!({ "maintenance": "resumed", "by": "custos resume" }),
            false,
        );
        self.tick();
        Ok(true)
    }

    fn end_expired_pauses(&self, now: SystemTime) {
        let (ended, snapshot) = {
            let mut book = lock(&self.inner.book);
            let mut ended = Vec::new();
            for (name, rec) in book.saved.services.iter_mut() {
                if rec.paused.as_ref().is_some_and(|p| !p.holds(now)) {
                    rec.paused = None;
                    ended.push(name.clone());
                }
            }
            let snapshot = (!ended.is_empty()).then(|| book.saved.clone());
            (ended, snapshot)
        };
        if let Some(s) = snapshot {
            self.save(&s);
        }
        for service in ended {
            tracing::info!(service = %service, "Service pause over: runbooks act again.");
            self.audit_service(
                AuditKind::Lifecycle,
                None,
                Some(&service),
                format!("Maintenance of {service} ended: its pause is over; its runbooks act again."),
                json!({ "maintenance": "expired" }),
                false,
            );
        }
    }

    fn known_service(&self, service: &str) -> Result<(), String> {
        let rules = self.rules();
        let services = self.inner.services.read().unwrap_or_else(|e| e.into_inner());
        if rules.by_service.contains_key(service) || services.contains_key(service) {
            return Ok(());
        }
        let mut known: Vec<&String> = services.keys().chain(rules.by_service.keys()).collect();
        known.sort();
        known.dedup();
        Err(format!(
            "no managed service or runbook service named `{service}` (known: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            }
        ))
    }

    /// Loaded runbooks with their incident, counts and last actions.
    pub fn status(&self) -> Vec<RunbookStatus> {
        let rules = self.rules();
        let now = self.inner.clock.now();
        let book = lock(&self.inner.book);
        rules
            .runbooks
            .iter()
            .map(|rb| {
                let st = book.saved.runbooks.get(&self.key(rb)).cloned().unwrap_or_default();
                let next = st.position.min(rb.steps.len() - 1);
                RunbookStatus {
                    name: rb.name.clone(),
                    service: rb.service.clone(),
                    source: rb.source.clone(),
                    dry_run: self.dry_run(rb),
                    steps: rb.steps.len(),
                    next_step: next + 1,
                    next_action: rb.steps[next].action.name().to_string(),
                    phase: st.phase.name().to_string(),
                    cooldown_until: st.cooldown_until.filter(|u| *u > now),
                    breaker_open: st.breaker_open,
                    paused: book.paused(&rb.service, now),
                    held: st.pending.is_some(),
                    in_progress: book.running.get(&rb.service).filter(|p| p.runbook == rb.name).cloned(),
                    counts: book.counts.get(&rb.name).copied().unwrap_or_default(),
                    last_actions: st.last_actions.into_iter().collect(),
                }
            })
            .collect()
    }

    /// The services the engine knows something about: pauses, stops on
    /// request, last exits, steps in progress.
    pub fn services_status(&self) -> Vec<ServiceView> {
        let now = self.inner.clock.now();
        let book = lock(&self.inner.book);
        let mut names: Vec<&String> = book.saved.services.keys().chain(book.running.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let rec = book.saved.services.get(name).cloned().unwrap_or_else(ServiceRecord::default);
                ServiceView {
                    name: name.clone(),
                    paused: rec.paused.filter(|p| p.holds(now)),
                    stopped_on_request: rec.stopped_on_request,
                    last_exit: rec.last_exit,
                    in_progress: book.running.get(name).cloned(),
                }
            })
            .collect()
    }

    /// The last `limit` actions of every runbook, newest first.
    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        let rules = self.rules();
        let book = lock(&self.inner.book);
        let mut out: Vec<HistoryEntry> = rules
            .runbooks
            .iter()
            .flat_map(|rb| {
                let st = book.saved.runbooks.get(&self.key(rb));
                st.into_iter().flat_map(|s| s.last_actions.iter()).map(move |a| HistoryEntry {
                    runbook: rb.name.clone(),
                    service: rb.service.clone(),
                    steps: rb.steps.len(),
                    action: a.clone(),
                })
            })
            .collect();
        out.sort_by_key(|h| std::cmp::Reverse(h.action.ts));
        out.truncate(limit);
        out
    }

    /// Every runbook's counts added up.
    pub fn totals(&self) -> Counts {
        let book = lock(&self.inner.book);
        let mut total = Counts::default();
        for c in book.counts.values() {
            total.add(c);
        }
        total
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

fn fmt_ms(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

fn fmt_secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
