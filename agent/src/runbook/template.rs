//! `{{ event.exit_code }}`-style templates. A template renders into exactly
//! one string (one argv element, one header, one JSON string): values are
//! substituted as text and never interpreted by a shell. Variables are
//! checked when the runbook loads; only `event.*` and `service.*` exist.

use std::collections::BTreeSet;
use std::fmt;

/// A variable a template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    ServiceName,
    ServiceUnit,
    /// A field of the triggering event (or of the anomaly, metric, health
    /// or state change that fired), e.g. `exit_code`, `comm`, `dport`.
    Event(String),
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::ServiceName => f.write_str("service.name"),
            Var::ServiceUnit => f.write_str("service.unit"),
            Var::Event(name) => write!(f, "event.{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
    source: String,
}

/// What a template renders from.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub service_name: String,
    pub service_unit: String,
    /// The event's fields, flattened (`kind`, `exit_code`, `comm`...).
    pub event: serde_json::Map<String, serde_json::Value>,
}

impl Template {
    /// Parses `text`; `event_fields` are the event variables allowed here.
    /// The error names the offending variable.
    pub fn parse(text: &str, event_fields: &BTreeSet<&'static str>) -> Result<Template, String> {
        let mut segs = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segs.push(Seg::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| format!("unclosed `{{{{` in template `{text}`"))?;
            let name = after[..end].trim();
            segs.push(Seg::Var(parse_var(name, event_fields)?));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("`}}}}` without `{{{{` in template `{text}`"));
        }
        if !rest.is_empty() {
            segs.push(Seg::Lit(rest.to_string()));
        }
        Ok(Template { segs, source: text.to_string() })
    }

    /// A template without variables.
    pub fn literal(text: &str) -> Template {
        Template { segs: vec![Seg::Lit(text.to_string())], source: text.to_string() }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders into one string. A field the event does not carry renders
    /// as the empty string.
    pub fn render(&self, ctx: &Context) -> String {
        let mut out = String::new();
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.push_str(s),
                Seg::Var(Var::ServiceName) => out.push_str(&ctx.service_name),
                Seg::Var(Var::ServiceUnit) => out.push_str(&ctx.service_unit),
                Seg::Var(Var::Event(name)) => match ctx.event.get(name) {
                    None | Some(serde_json::Value::Null) => {}
                    Some(serde_json::Value::String(s)) => out.push_str(s),
                    Some(serde_json::Value::Array(items)) => {
                        let parts: Vec<String> = items
                            .iter()
                            .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                            .collect();
                        out.push_str(&parts.join(" "));
                    }
                    Some(v) => out.push_str(&v.to_string()),
                },
            }
        }
        out
    }
}

/// What a value substituted into an `exec` argument may be. A process
/// names itself (`comm`), its executable and its arguments: a value that
/// becomes an option (`-la`, `--output=/etc/x`) or leaves the directory a
/// path was meant to stay in (`../y`) is refused unless the step says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArgPolicy {
    /// `exec.allow_option_values`: a value may start an argument with `-`.
    pub options: bool,
    /// `exec.allow_path_values`: a value may hold `/`, or be `.` or `..`,
    /// inside an argument that is a path.
    pub paths: bool,
}

impl Template {
    /// Renders one `exec` argument under `policy`: like [`Template::render`],
    /// but a value that would turn the argument into an option, or, in an
    /// argument written as a path (its text has a `/`), one with a path
    /// separator or a `.`/`..` name, is an error naming the variable and the
    /// value. A NUL byte is refused everywhere (it would cut the argument).
    pub fn render_arg(&self, ctx: &Context, policy: ArgPolicy) -> Result<String, String> {
        let is_path = self.segs.iter().any(|s| matches!(s, Seg::Lit(l) if l.contains('/')));
        let mut out = String::new();
        for seg in &self.segs {
            let Seg::Var(var) = seg else {
                if let Seg::Lit(l) = seg {
                    out.push_str(l);
                }
                continue;
            };
            let value = Template { segs: vec![seg.clone()], source: String::new() }.render(ctx);
            let refuse = |why: &str| {
                Err(format!("`{{{{ {var} }}}}` is {value:?}, which {why} in `{}`: refused", self.source))
            };
            if value.contains('\0') {
                return refuse("holds a NUL byte");
            }
            if out.is_empty() && value.starts_with('-') && !policy.options {
                return refuse(
                    "would become an option (set `allow_option_values: true` on the step if that is meant)",
                );
            }
            if is_path && !policy.paths {
                if value.contains('/') || value.contains('\\') {
                    return refuse(
                        "holds a path separator (set `allow_path_values: true` on the step if that is meant)",
                    );
                }
                if value == "." || value == ".." {
                    return refuse("would leave the directory (set `allow_path_values: true` on the step if that is meant)");
                }
            }
            out.push_str(&value);
        }
        Ok(out)
    }
}

fn parse_var(name: &str, event_fields: &BTreeSet<&'static str>) -> Result<Var, String> {
    match name.split_once('.') {
        Some(("service", "name")) => Ok(Var::ServiceName),
        Some(("service", "unit")) => Ok(Var::ServiceUnit),
        Some(("service", other)) => {
            Err(format!("unknown template variable `service.{other}`: expected `service.name` or `service.unit`"))
        }
        Some(("event", field)) if event_fields.contains(field) => Ok(Var::Event(field.to_string())),
        Some(("event", field)) => Err(format!(
            "unknown template variable `event.{field}`: this trigger's events have {}",
            event_fields.iter().map(|f| format!("`event.{f}`")).collect::<Vec<_>>().join(", ")
        )),
        _ => Err(format!(
            "unknown template variable `{name}`: templates may use `service.name`, `service.unit` and `event.<field>`"
        )),
    }
}

/// A JSON value whose strings (and object keys' values) are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    Str(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
    Other(serde_json::Value),
}

impl JsonTemplate {
    pub fn parse(v: &serde_json::Value, event_fields: &BTreeSet<&'static str>) -> Result<Self, String> {
        Ok(match v {
            serde_json::Value::String(s) => JsonTemplate::Str(Template::parse(s, event_fields)?),
            serde_json::Value::Array(items) => JsonTemplate::Array(
                items.iter().map(|i| JsonTemplate::parse(i, event_fields)).collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(map) => JsonTemplate::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), JsonTemplate::parse(v, event_fields)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => JsonTemplate::Other(other.clone()),
        })
    }

    pub fn render(&self, ctx: &Context) -> serde_json::Value {
        match self {
            JsonTemplate::Str(t) => serde_json::Value::String(t.render(ctx)),
            JsonTemplate::Array(items) => {
                serde_json::Value::Array(items.iter().map(|i| i.render(ctx)).collect())
            }
            JsonTemplate::Object(fields) => {
                serde_json::Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.render(ctx))).collect())
            }
            JsonTemplate::Other(v) => v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> BTreeSet<&'static str> {
        ["exit_code", "comm", "argv"].into_iter().collect()
    }

    #[test]
    fn renders_service_and_event_fields_into_one_string() {
        let t =
            Template::parse("{{ service.name }}/{{event.exit_code}} by {{ event.comm }}", &fields()).unwrap();
        let mut ctx =
            Context { service_name: "api".into(), service_unit: "api.service".into(), ..Default::default() };
        ctx.event.insert("exit_code".into(), 3.into());
        ctx.event.insert("comm".into(), "x; touch /tmp/pwned".into());
        assert_eq!(t.render(&ctx), "api/3 by x; touch /tmp/pwned");
    }

    #[test]
    fn unknown_variables_are_errors() {
        let e = Template::parse("{{ event.nope }}", &fields()).unwrap_err();
        assert!(e.contains("unknown template variable `event.nope`"), "{e}");
        assert!(e.contains("`event.exit_code`"), "{e}");
        assert!(Template::parse("{{ env.HOME }}", &fields()).is_err());
        assert!(Template::parse("{{ service.pid }}", &fields()).is_err());
        assert!(Template::parse("{{ service.name", &fields()).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn missing_fields_render_empty_and_arrays_join() {
        let t = Template::parse("[{{ event.exit_code }}] {{ event.argv }}", &fields()).unwrap();
        let mut ctx = Context::default();
        ctx.event.insert("argv".into(), serde_json::json!(["a", "b"]));
        assert_eq!(t.render(&ctx), "[] a b");
    }

    #[test]
    fn argv_values_cannot_become_options_or_leave_a_directory() {
        let f = fields();
        let mut ctx = Context::default();
        let arg = |t: &str, ctx: &Context, p: ArgPolicy| Template::parse(t, &f).unwrap().render_arg(ctx, p);
        ctx.event.insert("comm".into(), "-la".into());
        let e = arg("{{ event.comm }}", &ctx, ArgPolicy::default()).unwrap_err();
        assert!(e.contains("\"-la\"") && e.contains("would become an option"), "{e}");
        assert_eq!(arg("--name={{ event.comm }}", &ctx, ArgPolicy::default()).unwrap(), "--name=-la");
        assert_eq!(arg("{{ event.comm }}", &ctx, ArgPolicy { options: true, paths: false }).unwrap(), "-la");
        ctx.event.insert("comm".into(), "../y/pwn".into());
        let e = arg("/tmp/x/{{ event.comm }}", &ctx, ArgPolicy::default()).unwrap_err();
        assert!(e.contains("path separator"), "{e}");
        ctx.event.insert("comm".into(), "..".into());
        assert!(arg("/tmp/x/{{ event.comm }}", &ctx, ArgPolicy::default())
            .unwrap_err()
            .contains("leave the directory"));
        assert_eq!(
            arg("/tmp/x/{{ event.comm }}", &ctx, ArgPolicy { options: false, paths: true }).unwrap(),
            "/tmp/x/.."
        );
        // Not a path: a slash in a value is just text.
        ctx.event.insert("comm".into(), "a/b".into());
        assert_eq!(arg("name {{ event.comm }}", &ctx, ArgPolicy::default()).unwrap(), "name a/b");
        ctx.event.insert("comm".into(), "api".into());
        assert_eq!(
            arg("/var/log/{{ event.comm }}.log", &ctx, ArgPolicy::default()).unwrap(),
            "/var/log/api.log"
        );
    }
}
