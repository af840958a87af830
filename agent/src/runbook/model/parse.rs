//! YAML text to a [`Runbook`]: the file as written (private serde structs
//! with `deny_unknown_fields`), then the semantic checks, every problem
//! collected with its line and column.

use super::shape::*;
use crate::config::HumanDuration;
use crate::runbook::template::{JsonTemplate, Template};
use crate::yaml::{Argv, LocatedErrors, Problems, Spanned};
use custos_detect::{catalogue, Severity};
use custos_event::EventKind;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunbook {
    name: Spanned<String>,
    service: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    dry_run: bool,
    trigger: Spanned<RawTrigger>,
    steps: Spanned<Vec<Spanned<RawStep>>>,
    #[serde(default)]
    reset_after: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    cooldown: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    max_actions: Option<Spanned<RawMaxActions>>,
    /// What to do once when the circuit breaker opens (usually a webhook).
    #[serde(default)]
    escalate: Option<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaxActions {
    count: Spanned<u32>,
    per: Spanned<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTrigger {
    event: Option<Spanned<String>>,
    #[serde(rename = "where")]
    conditions: BTreeMap<String, Spanned<serde_json::Value>>,
    count: Option<Spanned<u32>>,
    within: Option<Spanned<HumanDuration>>,
    metric: Option<Spanned<String>>,
    above: Option<f64>,
    below: Option<f64>,
    #[serde(rename = "for")]
    held_for: Option<Spanned<HumanDuration>>,
    anomaly: Option<Spanned<RawAnomaly>>,
    health: Option<Spanned<String>>,
    service_down: Option<Spanned<bool>>,
    all: Option<Spanned<Vec<Spanned<RawTrigger>>>>,
    any: Option<Spanned<Vec<Spanned<RawTrigger>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    severity: Spanned<String>,
    #[serde(default)]
    metric: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStep {
    restart: Option<Spanned<RawServiceAction>>,
    start: Option<Spanned<RawServiceAction>>,
    stop: Option<Spanned<RawServiceAction>>,
    signal: Option<Spanned<RawSignal>>,
    exec: Option<Spanned<RawExec>>,
    webhook: Option<Spanned<RawWebhook>>,
    log: Option<Spanned<RawLog>>,
    verify: Option<RawVerify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServiceAction {
    delay: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    signal: Spanned<String>,
    #[serde(default)]
    delay: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    argv: Spanned<Argv<Spanned<String>>>,
    #[serde(default)]
    timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    cwd: Option<Spanned<String>>,
    #[serde(default)]
    run_as: Option<Spanned<String>>,
    #[serde(default)]
    delay: Option<Spanned<HumanDuration>>,
    /// A value substituted into an argument may start it with `-`.
    #[serde(default)]
    allow_option_values: bool,
    /// A value substituted into a path may hold `/` or be `..`.
    #[serde(default)]
    allow_path_values: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    #[serde(default)]
    method: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<RawHeader>>,
    #[serde(default)]
    body: Option<Spanned<serde_json::Value>>,
    /// `alert`: a generic JSON alert (severity, service, runbook, summary...).
    #[serde(default)]
    preset: Option<Spanned<String>>,
    #[serde(default)]
    severity: Option<Spanned<String>>,
    #[serde(default)]
    summary: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    retries: Option<Spanned<u32>>,
    #[serde(default)]
    delay: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawHeader {
    Literal(String),
    Source(RawHeaderSource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderSource {
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    message: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    healthy_within: Spanned<HumanDuration>,
    #[serde(default)]
    stable_for: Option<Spanned<HumanDuration>>,
}

fn secs(n: u64) -> HumanDuration {
    HumanDuration::secs(n)
}

fn days(n: u64) -> HumanDuration {
    HumanDuration::secs(n * 24 * 3600)
}

/// Parses and validates one runbook's text. `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Runbook, LocatedErrors> {
    let raw: RawRunbook = crate::yaml::from_str(text, source)?;
    let mut p = Problems::new(source);
    match compile(raw, source, &mut p) {
        Some(rb) => p.finish(rb),
        // Whatever did not compile has said why.
        None => Err(p.into_errors()),
    }
}

fn compile(raw: RawRunbook, source: &str, p: &mut Problems<'_>) -> Option<Runbook> {
    if raw.name.value.trim().is_empty() {
        p.at(raw.name.referenced, "`name` must not be empty");
    }
    if raw.service.value.trim().is_empty() {
        p.at(raw.service.referenced, "`service` must not be empty");
    }
    if let Some(c) = &raw.cooldown {
        p.within("cooldown", c, HumanDuration::default(), days(30));
    }
    if let Some(r) = &raw.reset_after {
        p.within("reset_after", r, secs(1), days(365));
    }
    let trigger = compile_trigger(&raw.trigger, p);
    let fields = trigger.as_ref().map(Trigger::template_fields).unwrap_or_default();
    if raw.steps.value.is_empty() {
        p.at(raw.steps.referenced, "`steps` needs at least one step");
    }
    let steps: Vec<Option<Step>> =
        raw.steps.value.iter().map(|s| compile_step(s, &fields, &raw.name.value, p)).collect();
    let escalate = raw.escalate.as_ref().map(|s| compile_step(s, &fields, &raw.name.value, p));
    let max_actions = raw.max_actions.as_ref().map(|m| {
        p.within("max_actions.count", &m.value.count, 1, 10_000);
        p.within("max_actions.per", &m.value.per, secs(1), days(30));
        MaxActions { count: *m.value.count, per: m.value.per.0 }
    });
    let trigger = trigger?;
    let steps: Option<Vec<Step>> = steps.into_iter().collect();
    let escalate = match escalate {
        Some(None) => return None,
        Some(Some(s)) => Some(s),
        None => None,
    };
    Some(Runbook {
        name: raw.name.value,
        service: raw.service.value,
        description: raw.description,
        source: source.to_string(),
        dry_run: raw.dry_run,
        trigger,
        steps: steps?,
        reset_after: raw.reset_after.map(|d| d.0).unwrap_or(DEFAULT_RESET_AFTER),
        cooldown: raw.cooldown.map(|d| d.0).unwrap_or(DEFAULT_COOLDOWN),
        max_actions: max_actions.unwrap_or(DEFAULT_MAX_ACTIONS),
        escalate,
        places: Places { service: raw.service.referenced, health: health_place(&raw.trigger) },
    })
}

/// Where the first `health:` trigger is written, nested ones included.
fn health_place(t: &Spanned<RawTrigger>) -> Option<crate::yaml::Location> {
    let r = &t.value;
    if let Some(h) = &r.health {
        return Some(h.referenced);
    }
    r.all.iter().chain(&r.any).flat_map(|l| &l.value).find_map(health_place)
}

fn compile_trigger(t: &Spanned<RawTrigger>, p: &mut Problems<'_>) -> Option<Trigger> {
    let loc = t.referenced;
    let r = &t.value;
    let kinds: Vec<&str> = [
        r.event.as_ref().map(|_| "event"),
        r.metric.as_ref().map(|_| "metric"),
        r.anomaly.as_ref().map(|_| "anomaly"),
        r.health.as_ref().map(|_| "health"),
        r.service_down.as_ref().map(|_| "service_down"),
        r.all.as_ref().map(|_| "all"),
        r.any.as_ref().map(|_| "any"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if kinds.len() != 1 {
        p.at(
            loc,
            format!(
                "a trigger needs exactly one of `event`, `metric`, `anomaly`, `health`, `service_down`, `all`, `any`{}",
                if kinds.is_empty() { String::new() } else { format!(", found {}", kinds.join(" and ")) }
            ),
        );
        return None;
    }
    let stray = |p: &mut Problems<'_>, key: &str, present: bool, owner: &str| {
        if present {
            p.at(loc, format!("`{key}` belongs to `{owner}` triggers"));
        }
    };
    if r.event.is_none() {
        stray(p, "where", !r.conditions.is_empty(), "event");
        stray(p, "count", r.count.is_some(), "event");
        stray(p, "within", r.within.is_some(), "event");
    }
    if r.metric.is_none() {
        stray(p, "above", r.above.is_some(), "metric");
        stray(p, "below", r.below.is_some(), "metric");
        stray(p, "for", r.held_for.is_some(), "metric");
    }
    if let Some(ev) = &r.event {
        let Some(kind) = EventKind::parse(&ev.value) else {
            p.at(
                ev.referenced,
                format!(
                    "unknown event `{}`: expected one of {}",
                    ev.value,
                    EventKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
            return None;
        };
        let mut conditions = Vec::new();
        for (field, cond) in &r.conditions {
            if !COMMON_FIELDS.contains(&field.as_str()) && !event_fields(kind).contains(&field.as_str()) {
                p.at(
                    cond.referenced,
                    format!(
                        "`{kind}` events have no field `{field}`: expected one of {}",
                        COMMON_FIELDS
                            .iter()
                            .chain(event_fields(kind))
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            }
            match compile_condition(field, &cond.value) {
                Ok(ops) => {
                    conditions.extend(ops.into_iter().map(|op| FieldCondition { field: field.clone(), op }))
                }
                Err(e) => p.at(cond.referenced, e),
            }
        }
        let count = r.count.as_ref().map(|c| c.value).unwrap_or(1);
        if let Some(c) = &r.count {
            p.within("count", c, 1, 10_000);
        }
        if let Some(w) = &r.within {
            p.within("within", w, secs(1), days(30));
        }
        if count > 1 && r.within.is_none() {
            p.at(
                r.count.as_ref().map(|c| c.referenced).unwrap_or(loc),
                "`count` above 1 needs `within` (e.g. `within: 5m`)",
            );
        }
        return Some(Trigger::Event { kind, conditions, count, within: r.within.map(|d| d.0) });
    }
    if let Some(m) = &r.metric {
        if let Some(h) = &r.held_for {
            p.within("for", h, HumanDuration::default(), days(30));
        }
        if r.above.is_none() && r.below.is_none() {
            p.at(m.referenced, "a `metric` trigger needs `above` or `below`");
        }
        check_metric_name(m, p);
        return Some(Trigger::Metric {
            name: m.value.clone(),
            above: r.above,
            below: r.below,
            held: r.held_for.map(|d| d.0).unwrap_or_default(),
        });
    }
    if let Some(a) = &r.anomaly {
        let Some(min) = Severity::parse(&a.value.severity.value) else {
            p.at(
                a.value.severity.referenced,
                format!(
                    "unknown severity `{}`: expected low, medium, high or critical",
                    a.value.severity.value
                ),
            );
            return None;
        };
        if let Some(m) = &a.value.metric {
            check_metric_name(m, p);
        }
        return Some(Trigger::Anomaly { min, metric: a.value.metric.as_ref().map(|m| m.value.clone()) });
    }
    if let Some(h) = &r.health {
        if h.value != "failing" {
            p.at(h.referenced, format!("`health` expects `failing`, found `{}`", h.value));
        }
        return Some(Trigger::HealthFailing);
    }
    if let Some(d) = &r.service_down {
        if !d.value {
            p.at(d.referenced, "`service_down` expects `true`");
        }
        return Some(Trigger::ServiceDown);
    }
    let (list, all) = match (&r.all, &r.any) {
        (Some(l), _) => (l, true),
        (_, Some(l)) => (l, false),
        _ => return None,
    };
    if list.value.is_empty() {
        p.at(list.referenced, "`all`/`any` needs at least one trigger");
    }
    let children: Vec<Option<Trigger>> = list.value.iter().map(|c| compile_trigger(c, p)).collect();
    let children: Vec<Trigger> = children.into_iter().collect::<Option<_>>()?;
    Some(if all { Trigger::All(children) } else { Trigger::Any(children) })
}

fn compile_condition(field: &str, v: &serde_json::Value) -> Result<Vec<Op>, String> {
    let scalar = |v: &serde_json::Value| -> Result<serde_json::Value, String> { normalize_scalar(field, v) };
    let number = |op: &str, v: &serde_json::Value| -> Result<f64, String> {
        v.as_f64().ok_or_else(|| format!("`{field}: {{ {op}: ... }}` expects a number, found {v}"))
    };
    match v {
        serde_json::Value::Object(map) => {
            if map.is_empty() {
                return Err(format!("`{field}` needs a condition such as `{{ ne: 0 }}`"));
            }
            map.iter()
                .map(|(op, v)| {
                    Ok(match op.as_str() {
                        "eq" => Op::Eq(scalar(v)?),
                        "ne" => Op::Ne(scalar(v)?),
                        "gt" => Op::Gt(number(op, v)?),
                        "ge" => Op::Ge(number(op, v)?),
                        "lt" => Op::Lt(number(op, v)?),
                        "le" => Op::Le(number(op, v)?),
                        "in" => Op::In(
                            v.as_array()
                                .ok_or_else(|| format!("`{field}: {{ in: ... }}` expects a list"))?
                                .iter()
                                .map(scalar)
                                .collect::<Result<_, _>>()?,
                        ),
                        other => {
                            return Err(format!(
                            "unknown condition `{other}` on `{field}`: expected eq, ne, gt, ge, lt, le or in"
                        ))
                        }
                    })
                })
                .collect()
        }
        serde_json::Value::Array(_) => {
            Err(format!("`{field}` expects a value or a condition such as `{{ in: [...] }}`"))
        }
        v => Ok(vec![Op::Eq(scalar(v)?)]),
    }
}

/// Puts a condition's value in the form events serialize to: signals by
/// name (`11` and `segv` become `SIGSEGV`), connect results by errno name.
fn normalize_scalar(field: &str, v: &serde_json::Value) -> Result<serde_json::Value, String> {
    match field {
        "signal" => {
            let n = match v {
                serde_json::Value::Number(n) => n.as_i64().map(|n| n as i32),
                serde_json::Value::String(s) => custos_event::signal_from_name(s),
                _ => None,
            };
            n.and_then(|n| custos_event::signal_name(n).map(|s| serde_json::Value::String(s.into())))
                .ok_or_else(|| format!("`signal` expects a signal name such as SIGSEGV, found {v}"))
        }
        "result" => {
            let s = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            custos_event::ConnectResult::parse(&s).map(|r| serde_json::Value::String(r.name())).ok_or_else(
                || format!("`result` expects `ok` or an errno name such as ECONNREFUSED, found {v}"),
            )
        }
        "exit_class" => {
            const CLASSES: [custos_event::ExitClass; 4] = [
                custos_event::ExitClass::Clean,
                custos_event::ExitClass::Error,
                custos_event::ExitClass::Signal,
                custos_event::ExitClass::Oom,
            ];
            match v.as_str().and_then(|s| CLASSES.iter().find(|c| c.as_str() == s)) {
                Some(c) => Ok(serde_json::Value::String(c.as_str().into())),
                None => Err(format!(
                    "`exit_class` expects one of {}, found {v}: no exit is of that class, so the condition would never hold",
                    CLASSES.map(|c| c.as_str()).join(", ")
                )),
            }
        }
        "family" => match v.as_str() {
            Some("ipv4" | "ipv6") => Ok(v.clone()),
            _ => Err(format!("`family` expects ipv4 or ipv6, found {v}")),
        },
        _ => Ok(v.clone()),
    }
}

fn compile_step(
    s: &Spanned<RawStep>,
    fields: &BTreeSet<&'static str>,
    runbook: &str,
    p: &mut Problems<'_>,
) -> Option<Step> {
    let r = &s.value;
    let set: Vec<&str> = [
        r.restart.as_ref().map(|_| "restart"),
        r.start.as_ref().map(|_| "start"),
        r.stop.as_ref().map(|_| "stop"),
        r.signal.as_ref().map(|_| "signal"),
        r.exec.as_ref().map(|_| "exec"),
        r.webhook.as_ref().map(|_| "webhook"),
        r.log.as_ref().map(|_| "log"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if set.len() != 1 {
        p.at(
            s.referenced,
            format!(
                "a step needs exactly one of `restart`, `start`, `stop`, `signal`, `exec`, `webhook`, `log`{}",
                if set.is_empty() { String::new() } else { format!(", found {}", set.join(" and ")) }
            ),
        );
        return None;
    }
    let tpl = |p: &mut Problems<'_>, s: &Spanned<String>| -> Option<Template> {
        Template::parse(&s.value, fields).map_err(|e| p.at(s.referenced, e)).ok()
    };
    let (action, delay) = if let Some(a) = &r.restart {
        (Action::Restart, a.value.delay)
    } else if let Some(a) = &r.start {
        (Action::Start, a.value.delay)
    } else if let Some(a) = &r.stop {
        (Action::Stop, a.value.delay)
    } else if let Some(a) = &r.signal {
        let Some(n) = custos_event::signal_from_name(&a.value.signal.value) else {
            p.at(
                a.value.signal.referenced,
                format!("unknown signal `{}`: expected a name such as SIGTERM", a.value.signal.value),
            );
            return None;
        };
        (Action::Signal(n), a.value.delay)
    } else if let Some(e) = &r.exec {
        let e_ = &e.value;
        if let Some(t) = &e_.timeout {
            p.within("exec.timeout", t, HumanDuration::millis(1), secs(3600));
        }
        if e_.argv.value.is_empty() {
            p.at(e_.argv.referenced, "`exec.argv` needs at least the program");
        }
        let argv: Vec<Option<Template>> = e_.argv.value.iter().map(|a| tpl(p, a)).collect();
        if let Some(first) = e_.argv.value.first() {
            if !first.value.starts_with('/') {
                p.at(
                    first.referenced,
                    format!(
                        "`exec.argv[0]` must be an absolute path (no PATH lookup), found `{}`",
                        first.value
                    ),
                );
            }
        }
        let env: Vec<Option<(String, Template)>> =
            e_.env.iter().map(|(k, v)| tpl(p, v).map(|t| (k.clone(), t))).collect();
        let cwd = e_.cwd.as_ref().and_then(|c| {
            if c.value.starts_with('/') {
                Some(PathBuf::from(&c.value))
            } else {
                p.at(c.referenced, format!("`exec.cwd` must be an absolute path, found `{}`", c.value));
                None
            }
        });
        let run_as =
            e_.run_as.as_ref().map(|r| r.value.clone()).unwrap_or_else(|| DEFAULT_RUN_AS.to_string());
        (
            Action::Exec(ExecAction {
                argv: argv.into_iter().collect::<Option<_>>()?,
                timeout: e_.timeout.map(|d| d.0).unwrap_or(DEFAULT_EXEC_TIMEOUT),
                env: env.into_iter().collect::<Option<_>>()?,
                cwd,
                run_as,
                policy: crate::runbook::template::ArgPolicy {
                    options: e_.allow_option_values,
                    paths: e_.allow_path_values,
                },
            }),
            e_.delay,
        )
    } else if let Some(w) = &r.webhook {
        (Action::Webhook(compile_webhook(&w.value, fields, runbook, p)?), w.value.delay)
    } else if let Some(l) = &r.log {
        (Action::Log(tpl(p, &l.value.message)?), None)
    } else {
        return None;
    };
    if let Some(d) = &delay {
        p.within("delay", d, HumanDuration::default(), secs(3600));
    }
    if let Some(v) = &r.verify {
        p.within("verify.healthy_within", &v.healthy_within, HumanDuration::millis(100), secs(3600));
        if let Some(st) = &v.stable_for {
            p.within("verify.stable_for", st, HumanDuration::default(), v.healthy_within.value);
        }
    }
    let verify = r.verify.as_ref().map(|v| Verify {
        healthy_within: v.healthy_within.0,
        stable_for: v.stable_for.map(|d| d.0).unwrap_or(Duration::from_secs(1)).min(v.healthy_within.0),
    });
    Some(Step { action, delay: delay.map(|d| d.0).unwrap_or_default(), verify })
}

fn compile_webhook(
    w: &RawWebhook,
    fields: &BTreeSet<&'static str>,
    runbook: &str,
    p: &mut Problems<'_>,
) -> Option<WebhookAction> {
    let url = &w.url;
    if let Some(t) = &w.timeout {
        p.within("webhook.timeout", t, HumanDuration::millis(1), HumanDuration::secs(300));
    }
    if let Some(r) = &w.retries {
        p.within("webhook.retries", r, 0, 10);
    }
    if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
        p.at(
            url.referenced,
            format!("`webhook.url` expects an http:// or https:// URL, found `{}`", url.value),
        );
    }
    let method = w.method.as_ref().map(|m| m.value.to_ascii_uppercase()).unwrap_or_else(|| "POST".into());
    if !["POST", "PUT", "PATCH", "GET"].contains(&method.as_str()) {
        p.at(
            w.method.as_ref().map(|m| m.referenced).unwrap_or(url.referenced),
            format!("`webhook.method` expects POST, PUT, PATCH or GET, found `{method}`"),
        );
    }
    let mut headers = Vec::new();
    for (name, h) in &w.headers {
        let v = match &h.value {
            RawHeader::Literal(s) => HeaderValue::Literal(s.clone()),
            RawHeader::Source(RawHeaderSource { env: Some(e), file: None }) => HeaderValue::Env(e.clone()),
            RawHeader::Source(RawHeaderSource { env: None, file: Some(f) }) if f.starts_with('/') => {
                HeaderValue::File(PathBuf::from(f))
            }
            _ => {
                p.at(
                    h.referenced,
                    format!(
                        "header `{name}` expects a string, `{{ env: VAR }}` or `{{ file: /absolute/path }}`"
                    ),
                );
                continue;
            }
        };
        // Checked now, so that `validate` and `reload` find a variable missing
        // from the agent's environment, not the first alert that needed it.
        let source = match &v {
            HeaderValue::Literal(_) => None,
            HeaderValue::Env(var) => Some(crate::config::SecretSource::Env(var)),
            HeaderValue::File(f) => Some(crate::config::SecretSource::File(f)),
        };
        if let Some(Err(e)) = source.map(crate::config::read_secret) {
            p.at(h.referenced, format!("header `{name}`: {e}"));
        }
        headers.push((name.clone(), v));
    }
    let body = match (&w.preset, &w.body) {
        (Some(pr), None) => {
            if pr.value != "alert" {
                p.at(pr.referenced, format!("unknown webhook preset `{}`: expected `alert`", pr.value));
                return None;
            }
            let severity = w.severity.as_ref().map(|s| s.value.clone()).unwrap_or_else(|| "P1".into());
            if !["P0", "P1", "P2"].contains(&severity.as_str()) {
                p.at(
                    w.severity.as_ref().map(|s| s.referenced).unwrap_or(pr.referenced),
                    format!("`severity` expects P0, P1 or P2, found `{severity}`"),
                );
            }
            let summary = w.summary.as_ref().map(|s| s.value.clone()).unwrap_or_else(|| {
                format!("runbook {runbook}: {{{{ service.name }}}} needs attention ({{{{ event.kind }}}})")
            });
            let v = serde_json::json!({
                "severity": severity,
                "service": "{{ service.name }}",
                "unit": "{{ service.unit }}",
                "runbook": runbook.replace("{{", "{ {"),
                "summary": summary,
                "event": "{{ event.kind }}",
                "source": "custos",
            });
            let mut fields = fields.clone();
            fields.insert("kind");
            match JsonTemplate::parse(&v, &fields) {
                Ok(t) => Some(t),
                Err(e) => {
                    p.at(w.summary.as_ref().map(|s| s.referenced).unwrap_or(pr.referenced), e);
                    return None;
                }
            }
        }
        (None, Some(b)) => match JsonTemplate::parse(&b.value, fields) {
            Ok(t) => Some(t),
            Err(e) => {
                p.at(b.referenced, e);
                return None;
            }
        },
        (Some(pr), Some(_)) => {
            p.at(pr.referenced, "`webhook` takes `preset` or `body`, not both");
            return None;
        }
        (None, None) => {
            if w.severity.is_some() || w.summary.is_some() {
                p.at(url.referenced, "`severity` and `summary` belong to `preset: alert`");
            }
            None
        }
    };
    Some(WebhookAction {
        url: url.value.clone(),
        method,
        headers,
        body,
        timeout: w.timeout.map(|d| d.0).unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
        retries: w.retries.map(|r| r.value).unwrap_or(2),
    })
}

/// Metric and anomaly triggers name one of the series the agent computes
/// per service (the detector's series); any other name would never fire.
fn check_metric_name(m: &Spanned<String>, p: &mut Problems<'_>) {
    if !catalogue::is_known(&m.value) {
        p.at(
            m.referenced,
            format!("unknown metric `{}`: expected one of {}", m.value, catalogue::known_names()),
        );
    }
}
