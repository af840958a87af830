//! What a runbook is once validated: its trigger, its ladder of steps and
//! their actions, and the event fields triggers and templates may use. The
//! engine, the CLI and the graphs read only this; the YAML's own shape is
//! private to `parse.rs`.

use crate::runbook::template::{JsonTemplate, Template};
use crate::yaml::Location;
use custos_detect::Severity;
use custos_event::EventKind;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// A validated runbook.
#[derive(Debug, Clone)]
pub struct Runbook {
    pub name: String,
    /// The managed service's name (as in the configuration's `services:`).
    pub service: String,
    pub description: Option<String>,
    /// The file it was read from (or a label).
    pub source: String,
    pub dry_run: bool,
    pub trigger: Trigger,
    pub steps: Vec<Step>,
    /// Quiet (no firing, healed or the incident left) for this long sends
    /// the ladder back to step 1.
    pub reset_after: Duration,
    /// After a step that could not show whether the service healed (no
    /// verification), the next firing waits this long; it is held, not
    /// dropped.
    pub cooldown: Duration,
    /// The circuit breaker: at most this many actions per window.
    pub max_actions: MaxActions,
    /// Run once when the circuit breaker opens.
    pub escalate: Option<Step>,
    /// Where parts of it are written, for the checks against the
    /// configuration and the host (`check.rs`).
    pub places: Places,
}

/// Places in a runbook's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Places {
    /// The `service:` value.
    pub service: Location,
    /// The first `health:` trigger, if there is one.
    pub health: Option<Location>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxActions {
    pub count: u32,
    pub per: Duration,
}

/// When a runbook fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Events of `kind` whose fields meet every condition; `count` of them
    /// within `within` (a crash loop) when `count > 1`.
    Event {
        kind: EventKind,
        conditions: Vec<FieldCondition>,
        count: u32,
        within: Option<Duration>,
    },
    /// A metric above and/or below a value, continuously for `held`.
    Metric {
        name: String,
        above: Option<f64>,
        below: Option<f64>,
        held: Duration,
    },
    /// An anomaly at or above a severity (on one metric, or any).
    Anomaly {
        min: Severity,
        metric: Option<String>,
    },
    /// The service's health probe reports it unhealthy.
    HealthFailing,
    /// The service is inactive or failed, and its manager is not restarting it.
    ServiceDown,
    All(Vec<Trigger>),
    Any(Vec<Trigger>),
}

/// One `where:` condition on an event field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    pub field: String,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(serde_json::Value),
    Ne(serde_json::Value),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    In(Vec<serde_json::Value>),
}

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    pub delay: Duration,
    pub verify: Option<Verify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verify {
    pub healthy_within: Duration,
    /// Healthy means observed healthy continuously for this long.
    pub stable_for: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Restart,
    Start,
    Stop,
    Signal(i32),
    Exec(ExecAction),
    Webhook(WebhookAction),
    Log(Template),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Signal(_) => "signal",
            Action::Exec(_) => "exec",
            Action::Webhook(_) => "webhook",
            Action::Log(_) => "log",
        }
    }

    /// A one-line description for `runbook test`, graphs and audit records.
    pub fn describe(&self) -> String {
        match self {
            Action::Restart | Action::Start | Action::Stop => format!("{} the service", self.name()),
            Action::Signal(s) => format!(
                "send {} to the main process",
                custos_event::signal_name(*s).map(str::to_string).unwrap_or_else(|| format!("signal {s}"))
            ),
            Action::Exec(e) => format!(
                "exec [{}] as {}",
                e.argv.iter().map(|a| format!("{:?}", a.source())).collect::<Vec<_>>().join(", "),
                e.run_as
            ),
            Action::Webhook(w) => format!("{} {}", w.method, w.url),
            Action::Log(m) => format!("log {:?}", m.source()),
        }
    }
}

/// Default user for `exec` when `run_as` is not given: unprivileged.
pub use crate::command::DEFAULT_RUN_AS;
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// When a runbook does not say: quiet for an hour is a new start.
pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(3600);
/// When a runbook does not say: ten actions an hour on one service is
/// more than any ladder should need; past that custos stops and escalates.
pub const DEFAULT_MAX_ACTIONS: MaxActions = MaxActions { count: 10, per: Duration::from_secs(3600) };

#[derive(Debug, Clone, PartialEq)]
pub struct ExecAction {
    pub argv: Vec<Template>,
    pub timeout: Duration,
    pub env: Vec<(String, Template)>,
    pub cwd: Option<PathBuf>,
    pub run_as: String,
    /// What values substituted into `argv` may be.
    pub policy: crate::runbook::template::ArgPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAction {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, HeaderValue)>,
    pub body: Option<JsonTemplate>,
    pub timeout: Duration,
    pub retries: u32,
}

/// A header value; secrets come from the environment or a file at send
/// time and never appear in audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Literal(String),
    Env(String),
    File(PathBuf),
}

pub(super) const COMMON_FIELDS: &[&str] = &["kind", "service", "pid", "tid", "comm", "cgroup_id", "ts"];

/// The fields `where:` and templates may use for an event kind.
pub fn event_fields(kind: EventKind) -> &'static [&'static str] {
    match kind {
        EventKind::ProcessStart => &["ppid", "uid", "gid", "exe", "argv", "argv_truncated"],
        EventKind::ProcessExit => &[
            "exit_code",
            "signal",
            "core_dumped",
            "lifetime_ns",
            "ppid",
            "oom_killed",
            "exit_class",
            "exit_cause",
        ],
        EventKind::Signal => &["signal", "sender_pid", "code"],
        EventKind::OomKill => &["rss_bytes", "memcg"],
        EventKind::TcpConnect => &["family", "saddr", "sport", "daddr", "dport", "result", "latency_ns"],
        EventKind::TcpAccept => &["family", "saddr", "sport", "daddr", "dport"],
        EventKind::TcpClose => &[
            "family",
            "saddr",
            "sport",
            "daddr",
            "dport",
            "bytes_sent",
            "bytes_received",
            "retransmits",
            "duration_ns",
            "inbound",
            "closed_by",
        ],
        EventKind::Listen => &["family", "saddr", "sport"],
        EventKind::SyscallStats => &["interval_ns", "syscalls"],
        EventKind::HealthProbe => &["probe", "ok", "latency_ns", "detail"],
        EventKind::Loss => &["stage", "lost"],
    }
}

/// Fields of the synthetic events non-event triggers render from.
pub const ANOMALY_FIELDS: &[&str] =
    &["kind", "metric", "value", "severity", "score", "expected_low", "expected_high", "ts"];
pub const METRIC_FIELDS: &[&str] = &["kind", "metric", "value", "ts"];
pub const HEALTH_FIELDS: &[&str] = &["kind", "probe", "ok", "detail", "latency_ns", "ts"];
pub const STATE_FIELDS: &[&str] = &["kind", "state", "sub_state", "ts"];

impl Trigger {
    /// Every field a template may reference under this trigger: the union
    /// over its leaves (a field absent from the firing event renders empty).
    pub fn template_fields(&self) -> BTreeSet<&'static str> {
        let mut out = BTreeSet::new();
        self.collect_fields(&mut out);
        out
    }

    fn collect_fields(&self, out: &mut BTreeSet<&'static str>) {
        match self {
            Trigger::Event { kind, .. } => {
                out.extend(COMMON_FIELDS);
                out.extend(event_fields(*kind));
            }
            Trigger::Metric { .. } => out.extend(METRIC_FIELDS),
            Trigger::Anomaly { .. } => out.extend(ANOMALY_FIELDS),
            Trigger::HealthFailing => out.extend(HEALTH_FIELDS),
            Trigger::ServiceDown => out.extend(STATE_FIELDS),
            Trigger::All(ts) | Trigger::Any(ts) => ts.iter().for_each(|t| t.collect_fields(out)),
        }
    }

    /// One line for `runbook test` and graphs.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Event { kind, conditions, count, within } => {
                let mut s = kind.as_str().to_string();
                if !conditions.is_empty() {
                    let c: Vec<String> = conditions.iter().map(|c| format!("{} {}", c.field, c.op)).collect();
                    s.push_str(&format!(" where {}", c.join(" and ")));
                }
                if *count > 1 {
                    s.push_str(&format!(" ×{count}"));
                    if let Some(w) = within {
                        s.push_str(&format!(" within {}", humantime::format_duration(*w)));
                    }
                }
                s
            }
            Trigger::Metric { name, above, below, held } => {
                let mut s = name.clone();
                if let Some(a) = above {
                    s.push_str(&format!(" > {a}"));
                }
                if let Some(b) = below {
                    s.push_str(&format!(" < {b}"));
                }
                format!("{s} for {}", humantime::format_duration(*held))
            }
            Trigger::Anomaly { min, metric } => {
                format!(
                    "anomaly ≥ {}{}",
                    min.as_str(),
                    metric.as_ref().map(|m| format!(" on {m}")).unwrap_or_default()
                )
            }
            Trigger::HealthFailing => "health probe failing".into(),
            Trigger::ServiceDown => "service down".into(),
            Trigger::All(ts) => {
                format!("all({})", ts.iter().map(Trigger::describe).collect::<Vec<_>>().join("; "))
            }
            Trigger::Any(ts) => {
                format!("any({})", ts.iter().map(Trigger::describe).collect::<Vec<_>>().join("; "))
            }
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Eq(v) => write!(f, "= {v}"),
            Op::Ne(v) => write!(f, "≠ {v}"),
            Op::Gt(v) => write!(f, "> {v}"),
            Op::Ge(v) => write!(f, "≥ {v}"),
            Op::Lt(v) => write!(f, "< {v}"),
            Op::Le(v) => write!(f, "≤ {v}"),
            Op::In(vs) => write!(f, "in {}", serde_json::Value::Array(vs.clone())),
        }
    }
}
