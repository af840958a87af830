//! Evaluating triggers against a stream of inputs. Each trigger leaf is
//! either instantaneous (an event, an anomaly: true at the moment it
//! arrives) or a level (a metric held over a value, a failing health probe,
//! the service down: true for a while). A runbook fires on an edge: an
//! instantaneous match, or a level becoming true.

use super::model::{FieldCondition, Op, Trigger};
use custos_detect::Anomaly;
use custos_event::EventKind;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// One input to the engine, already attributed to a service.
pub enum Input<'a> {
    /// An event and its fields as JSON (computed once per event).
    Event {
        kind: EventKind,
        fields: &'a serde_json::Map<String, serde_json::Value>,
    },
    Anomaly(&'a Anomaly),
    Metric {
        name: &'a str,
        value: f64,
    },
    /// The service's health as judged by its probe (after its consecutive
    /// failure threshold).
    Health {
        healthy: bool,
    },
    /// The service manager's view of the service: `down` when it failed,
    /// or is inactive without anyone having asked for that, and its
    /// manager is not restarting it.
    State {
        down: bool,
    },
}

/// Matching state mirroring a trigger's tree.
#[derive(Debug, Clone)]
pub enum TriggerState {
    Event { times: VecDeque<SystemTime> },
    Metric { since: Option<SystemTime>, active: bool },
    Instant,
    Level { active: bool },
    Group(Vec<TriggerState>),
}

/// The result of evaluating after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Eval {
    /// The trigger holds now.
    pub active: bool,
    /// It became true with this input (fire).
    pub edge: bool,
}

impl TriggerState {
    pub fn new(t: &Trigger) -> Self {
        match t {
            Trigger::Event { .. } => TriggerState::Event { times: VecDeque::new() },
            Trigger::Metric { .. } => TriggerState::Metric { since: None, active: false },
            Trigger::Anomaly { .. } => TriggerState::Instant,
            Trigger::HealthFailing | Trigger::ServiceDown => TriggerState::Level { active: false },
            Trigger::All(ts) | Trigger::Any(ts) => {
                TriggerState::Group(ts.iter().map(TriggerState::new).collect())
            }
        }
    }
}

/// Does `t` care about this kind of input at all (cheap pre-filter)?
pub fn interested(t: &Trigger, input: &Input<'_>) -> bool {
    match (t, input) {
        (Trigger::Event { kind, .. }, Input::Event { kind: k, .. }) => kind == k,
        (Trigger::Metric { name, .. }, Input::Metric { name: n, .. }) => name == n,
        (Trigger::Anomaly { .. }, Input::Anomaly(_)) => true,
        (Trigger::HealthFailing, Input::Health { .. }) => true,
        (Trigger::ServiceDown, Input::State { .. }) => true,
        (Trigger::All(ts) | Trigger::Any(ts), i) => ts.iter().any(|t| interested(t, i)),
        _ => false,
    }
}

/// Updates `st` with `input` at `now` and says whether the trigger fires.
pub fn evaluate(t: &Trigger, st: &mut TriggerState, input: &Input<'_>, now: SystemTime) -> Eval {
    match (t, st) {
        (Trigger::Event { kind, conditions, count, within }, TriggerState::Event { times }) => {
            let Input::Event { kind: k, fields } = input else { return Eval::default() };
            if kind != k || !conditions.iter().all(|c| condition_holds(c, fields)) {
                return Eval::default();
            }
            if !cause_allowed(*kind, conditions, fields) {
                return Eval::default();
            }
            if *count <= 1 {
                return Eval { active: true, edge: true };
            }
            times.push_back(now);
            if let Some(w) = within {
                while times.front().is_some_and(|t| now.duration_since(*t).unwrap_or_default() > *w) {
                    times.pop_front();
                }
            }
            // Bounded memory: only the last `count` matter.
            while times.len() > *count as usize {
                times.pop_front();
            }
            if times.len() >= *count as usize {
                // The next firing needs a fresh run of `count` events.
                times.clear();
                Eval { active: true, edge: true }
            } else {
                Eval::default()
            }
        }
        (Trigger::Metric { name, above, below, held }, TriggerState::Metric { since, active }) => {
            let Input::Metric { name: n, value } = input else {
                return Eval { active: *active, edge: false };
            };
            if name != n {
                return Eval { active: *active, edge: false };
            }
            let out_of_range = above.is_some_and(|a| *value > a) || below.is_some_and(|b| *value < b);
            if !out_of_range {
                *since = None;
                *active = false;
                return Eval::default();
            }
            let start = *since.get_or_insert(now);
            let now_active = now.duration_since(start).unwrap_or(Duration::ZERO) >= *held;
            let edge = now_active && !*active;
            *active = now_active;
            Eval { active: now_active, edge }
        }
        (Trigger::Anomaly { min, metric }, TriggerState::Instant) => {
            let Input::Anomaly(a) = input else { return Eval::default() };
            let hit = a.severity >= *min && metric.as_ref().is_none_or(|m| *m == a.metric);
            Eval { active: hit, edge: hit }
        }
        (Trigger::HealthFailing, TriggerState::Level { active }) => level(active, input, |i| match i {
            Input::Health { healthy } => Some(!healthy),
            _ => None,
        }),
        (Trigger::ServiceDown, TriggerState::Level { active }) => level(active, input, |i| match i {
            Input::State { down } => Some(*down),
            _ => None,
        }),
        (Trigger::All(ts), TriggerState::Group(sts)) => {
            let evals: Vec<Eval> =
                ts.iter().zip(sts.iter_mut()).map(|(t, s)| evaluate(t, s, input, now)).collect();
            let active = evals.iter().all(|e| e.active);
            Eval { active, edge: active && evals.iter().any(|e| e.edge) }
        }
        (Trigger::Any(ts), TriggerState::Group(sts)) => {
            let evals: Vec<Eval> =
                ts.iter().zip(sts.iter_mut()).map(|(t, s)| evaluate(t, s, input, now)).collect();
            Eval { active: evals.iter().any(|e| e.active), edge: evals.iter().any(|e| e.edge) }
        }
        // A state built from another trigger (cannot happen: states are
        // rebuilt with their runbook on reload).
        _ => Eval::default(),
    }
}

fn level(active: &mut bool, input: &Input<'_>, f: impl Fn(&Input<'_>) -> Option<bool>) -> Eval {
    match f(input) {
        Some(now_active) => {
            let edge = now_active && !*active;
            *active = now_active;
            Eval { active: now_active, edge }
        }
        None => Eval { active: *active, edge: false },
    }
}

/// The field that says whether an exit was asked for.
pub const EXIT_CAUSE: &str = "exit_cause";

/// Whether an event may fire a trigger as far as its exit cause goes: a
/// `process_exit` trigger that says nothing of `exit_cause` is about
/// failures, so exits someone asked for (a stop, a restart) do not match
/// it; one that names `exit_cause` gets what it names.
fn cause_allowed(
    kind: EventKind,
    conditions: &[FieldCondition],
    fields: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    if kind != EventKind::ProcessExit || conditions.iter().any(|c| c.field == EXIT_CAUSE) {
        return true;
    }
    fields
        .get(EXIT_CAUSE)
        .and_then(|v| v.as_str())
        .is_none_or(|c| c == custos_event::ExitCause::Unrequested.as_str())
}

/// Whether `fields` (an exit whose cause is not known yet) would fire a
/// `process_exit` leaf of `t` if nobody had asked for the exit: then it is
/// worth asking the service manager.
pub fn would_match_unrequested(t: &Trigger, fields: &serde_json::Map<String, serde_json::Value>) -> bool {
    match t {
        Trigger::Event { kind: EventKind::ProcessExit, conditions, .. } => {
            conditions.iter().filter(|c| c.field != EXIT_CAUSE).all(|c| condition_holds(c, fields))
        }
        Trigger::All(ts) | Trigger::Any(ts) => ts.iter().any(|t| would_match_unrequested(t, fields)),
        _ => false,
    }
}

/// Whether `t` is a level that holds now, as far as its state knows (a
/// failing probe, the service down, a metric held over its bound); an
/// event or anomaly never holds between inputs.
pub fn holds(t: &Trigger, st: &TriggerState) -> bool {
    match (t, st) {
        (Trigger::HealthFailing | Trigger::ServiceDown, TriggerState::Level { active }) => *active,
        (Trigger::Metric { .. }, TriggerState::Metric { active, .. }) => *active,
        (Trigger::All(ts), TriggerState::Group(sts)) => ts.iter().zip(sts).all(|(t, s)| holds(t, s)),
        (Trigger::Any(ts), TriggerState::Group(sts)) => ts.iter().zip(sts).any(|(t, s)| holds(t, s)),
        _ => false,
    }
}

/// Whether an event's field meets a condition. A missing field meets none.
pub fn condition_holds(c: &FieldCondition, fields: &serde_json::Map<String, serde_json::Value>) -> bool {
    let Some(v) = fields.get(&c.field) else { return false };
    if v.is_null() {
        return false;
    }
    match &c.op {
        Op::Eq(want) => values_equal(v, want),
        Op::Ne(want) => !values_equal(v, want),
        Op::Gt(n) => v.as_f64().is_some_and(|x| x > *n),
        Op::Ge(n) => v.as_f64().is_some_and(|x| x >= *n),
        Op::Lt(n) => v.as_f64().is_some_and(|x| x < *n),
        Op::Le(n) => v.as_f64().is_some_and(|x| x <= *n),
        Op::In(list) => list.iter().any(|w| values_equal(v, w)),
    }
}

fn values_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => x.as_f64() == y.as_f64(),
        (serde_json::Value::String(x), serde_json::Value::String(y)) => x == y,
        // `dport: "5432"` written as a string still matches the number.
        (serde_json::Value::Number(x), serde_json::Value::String(y))
        | (serde_json::Value::String(y), serde_json::Value::Number(x)) => {
            y.parse::<f64>().ok().is_some_and(|y| x.as_f64() == Some(y))
        }
        _ => a == b,
    }
}
