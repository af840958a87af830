//! Semantic checks: what the YAML's shape cannot say (one selector per
//! service, absolute paths, valid endpoints, bounded sizes...). Every
//! problem is collected with its place, so one `custos validate` shows
//! them all; the result is a [`LoadedConfig`].

use super::schema::{
    Config, Discover, HealthConfig, OtlpConfig, RecoveryAction, WindowsAgentConfig,
    MAX_SYSCALL_LATENCY_SAMPLE,
};
use super::{ByteSize, HumanDuration};
use crate::yaml::{LocatedErrors, Location, Problems, Spanned};
use std::path::PathBuf;

/// How a managed service is recognized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    SystemdUnit(String),
    WindowsService(String),
    Exe(String),
    Cgroup(String),
}

/// A managed service after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub selector: Selector,
    pub health: Option<HealthConfig>,
}

impl ServiceSpec {
    /// The systemd unit or Windows service this service is selected by.
    pub fn selected_unit(&self) -> Option<&str> {
        match &self.selector {
            Selector::SystemdUnit(u) | Selector::WindowsService(u) => Some(u),
            Selector::Exe(_) | Selector::Cgroup(_) => None,
        }
    }

    /// The unit service actions and state queries go to: the selected one,
    /// else the one its name suggests (for `exe:` and `cgroup:` selectors).
    pub fn action_unit(&self) -> String {
        self.selected_unit().map(str::to_string).unwrap_or_else(|| normalize_unit(&self.name))
    }
}

/// A configuration that passed validation, with what it was read from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub raw: Config,
    /// Managed services with a single selector each.
    pub services: Vec<ServiceSpec>,
    /// Discovery rules (`discover: systemd`).
    pub discover: Vec<Discover>,
    /// The file read, or `None` for the embedded default.
    pub path: Option<PathBuf>,
}

impl LoadedConfig {
    /// True when no `services:` were configured: then custos manages every
    /// process on the host, each named after its unit, cgroup or executable.
    pub fn manages_everything(&self) -> bool {
        self.services.is_empty() && self.discover.is_empty()
    }

    /// Where the local spool lives.
    pub fn spool_dir(&self) -> PathBuf {
        self.raw.exporter.spool.dir.clone().unwrap_or_else(|| self.raw.agent.state_dir.join("spool"))
    }

    /// Where local OTLP/JSON files are written.
    pub fn files_dir(&self) -> PathBuf {
        self.raw.exporter.files.dir.clone().unwrap_or_else(|| self.raw.agent.state_dir.join("otlp"))
    }
}

pub(super) fn validate(raw: Config, source: &str) -> Result<LoadedConfig, LocatedErrors> {
    let mut p = Problems::new(source);
    let mut services = Vec::new();
    let mut discover = Vec::new();
    let mut names = std::collections::HashMap::<String, Location>::new();

    for entry in &raw.services {
        let selectors: Vec<(&str, &Spanned<String>)> = [
            ("systemd_unit", entry.systemd_unit.as_ref()),
            ("windows_service", entry.windows_service.as_ref()),
            ("exe", entry.exe.as_ref()),
            ("cgroup", entry.cgroup.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();

        if let Some(d) = &entry.discover {
            if let Some((k, v)) = selectors.first() {
                p.at(
                    v.referenced,
                    format!(
                        "`discover` cannot be combined with `{k}`: a discovery rule selects many services"
                    ),
                );
            }
            if let Some(n) = &entry.name {
                p.at(
                    n.referenced,
                    "`discover` entries take no `name`: discovered services are named after their unit",
                );
            }
            discover.push(d.value);
            continue;
        }
        let Some(name) = &entry.name else {
            let loc = selectors.first().map(|(_, v)| v.referenced).unwrap_or(Location::UNKNOWN);
            p.at(loc, "a service needs a `name` (or use `discover: systemd`)");
            continue;
        };
        if name.value.trim().is_empty() {
            p.at(name.referenced, "service `name` must not be empty");
        }
        if let Some(first) = names.insert(name.value.clone(), name.referenced) {
            p.at(
                name.referenced,
                format!("service `{}` is defined twice (first at line {})", name.value, first.line()),
            );
        }
        let selector = match selectors.as_slice() {
            [] => {
                p.at(
                    name.referenced,
                    format!(
                        "service `{}` needs one of `systemd_unit`, `windows_service`, `exe` or `cgroup`",
                        name.value
                    ),
                );
                continue;
            }
            [(k, v)] => match *k {
                "systemd_unit" => Selector::SystemdUnit(normalize_unit(&v.value)),
                "windows_service" => Selector::WindowsService(v.value.clone()),
                "cgroup" => {
                    if !v.value.starts_with('/') {
                        p.at(v.referenced, format!("`cgroup` expects a path from the cgroup2 root such as `/system.slice/x.scope`, found `{}`", v.value));
                    }
                    Selector::Cgroup(v.value.trim_end_matches('/').to_string())
                }
                _ => {
                    if v.value.trim().is_empty() {
                        p.at(v.referenced, "`exe` must not be empty");
                    }
                    Selector::Exe(v.value.clone())
                }
            },
            [_, (k2, v2), ..] => {
                p.at(
                    v2.referenced,
                    format!("service `{}` has more than one selector (`{k2}` too): use one", name.value),
                );
                continue;
            }
        };
        if let Some(h) = &entry.health {
            validate_health(h, &mut p);
        }
        services.push(ServiceSpec {
            name: name.value.clone(),
            selector,
            health: entry.health.as_ref().map(|h| h.value.clone()),
        });
    }

    if let Some(otlp) = &raw.exporter.otlp {
        let ep = &otlp.endpoint.value;
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            p.at(
                otlp.endpoint.referenced,
                format!("expected an endpoint URL such as `http://127.0.0.1:4317`, found `{ep}`"),
            );
        }
        validate_otlp(otlp, &mut p);
    }
    let ex = &raw.exporter;
    let d = HumanDuration::millis;
    let secs = HumanDuration::secs;
    p.within("exporter.interval", &ex.interval, d(100), secs(3600));
    p.within("exporter.syscall_top_n", &ex.syscall_top_n, 0, 512);
    p.within("exporter.log_rate_limit.max", &ex.log_rate_limit.max, 0, 1_000_000);
    p.within("exporter.log_rate_limit.per", &ex.log_rate_limit.per, secs(1), secs(24 * 3600));
    p.within("exporter.queue_capacity", &ex.queue_capacity, 1, MAX_QUEUE);
    p.within("exporter.spool.max_bytes", &ex.spool.max_bytes, ByteSize(64 << 10), ByteSize(1 << 40));
    p.within("exporter.files.max_file_bytes", &ex.files.max_file_bytes, ByteSize(4 << 10), ByteSize(4 << 30));
    p.within("exporter.files.max_files", &ex.files.max_files, 1, 10_000);
    let state_dir = &raw.agent.state_dir;
    if !state_dir.value.is_absolute() {
        p.at(
            state_dir.referenced,
            format!("`agent.state_dir` expects an absolute path, found `{}`", state_dir.value.display()),
        );
    }
    if raw.agent.listen.value.parse::<std::net::SocketAddr>().is_err() {
        p.at(
            raw.agent.listen.referenced,
            format!(
                "`agent.listen` expects `address:port` such as `127.0.0.1:9464`, found `{}`",
                raw.agent.listen.value
            ),
        );
    }
    if let Err(e) = check_log_level(&raw.agent.log_level.value) {
        p.at(raw.agent.log_level.referenced, e);
    }
    let s = &raw.sensors;
    let rb = s.ring_buffer.0;
    if !rb.is_power_of_two() {
        p.at(
            s.ring_buffer.referenced,
            format!("`sensors.ring_buffer` must be a power of two such as 8MiB, found {rb} bytes"),
        );
    }
    // The kernel's own ceiling is far above what a ring buffer needs: the
    // memory is pinned kernel memory, so the limit is the sane one.
    p.within("sensors.ring_buffer", &s.ring_buffer, ByteSize(4 << 10), ByteSize(MAX_RING_BUFFER));
    p.within("sensors.syscall_interval", &s.syscall_interval, d(100), secs(3600));
    p.within("sensors.channel_capacity", &s.channel_capacity, 1, MAX_QUEUE);
    p.within("sensors.argv_max_args", &s.argv_max_args, 1, 1024);
    let sample = &raw.sensors.syscall_latency_sample;
    if !(1..=MAX_SYSCALL_LATENCY_SAMPLE).contains(&sample.value) {
        p.at(
            sample.referenced,
            format!(
                "`sensors.syscall_latency_sample` expects 1 (time every syscall) to {MAX_SYSCALL_LATENCY_SAMPLE}, found {}",
                sample.value
            ),
        );
    }
    validate_windows(&raw.agent.windows, &mut p);
    let audit = &raw.runbooks.audit;
    p.within("runbooks.audit.max_file_bytes", &audit.max_file_bytes, ByteSize(64 << 10), ByteSize(1 << 30));
    p.within("runbooks.audit.max_bytes", &audit.max_bytes, audit.max_file_bytes.value, ByteSize(1 << 40));
    p.within("runbooks.audit.max_age", &audit.max_age, HumanDuration::default(), secs(100 * 365 * 24 * 3600));

    super::validate_detection(&raw.detection, &mut p);

    p.finish(LoadedConfig { raw, services, discover, path: None })
}

/// Largest event queue: about 200 bytes an event, so 256 MiB at most.
const MAX_QUEUE: usize = 1 << 20;
/// Largest kernel ring buffer: pinned kernel memory.
const MAX_RING_BUFFER: u64 = 1 << 30;

/// The levels `agent.log_level` takes, alone or per target
/// (`info,custos::export=debug`). A filter that parses is not enough: an
/// unknown word is a target name to tracing, and `inof` would silence
/// every log line.
fn check_log_level(value: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let bad = value.split(',').map(str::trim).find(|d| {
        let level = d.rsplit_once('=').map(|(_, l)| l).unwrap_or(d);
        !LEVELS.contains(&level.to_ascii_lowercase().as_str())
    });
    match bad {
        None if tracing_subscriber::EnvFilter::try_new(value).is_ok() => Ok(()),
        _ => Err(format!(
            "`agent.log_level` expects error, warn, info, debug, trace or off (or `target=level` pairs such as `info,custos::export=debug`), found `{value}`"
        )),
    }
}

/// Longest SCM delay: the SCM takes milliseconds in a `u32`.
const SCM_MAX_DELAY_MS: u128 = u32::MAX as u128;

fn validate_windows(w: &WindowsAgentConfig, p: &mut Problems<'_>) {
    for (key, name) in [("service_name", &w.service_name), ("etw_session", &w.etw_session)] {
        let v = &name.value;
        // The SCM refuses `/` and `\` in service names; ETW names are
        // limited to 1024 characters, service names to 256.
        if v.is_empty() || v.len() > 256 || v.contains(['/', '\\']) || v.chars().any(char::is_control) {
            p.at(
                name.referenced,
                format!("`agent.windows.{key}` expects 1 to 256 characters without `/` or `\\`, found `{v}`"),
            );
        }
    }
    for (i, a) in w.recovery.value.iter().enumerate() {
        if let RecoveryAction::Restart(d) = a {
            if d.0.as_millis() > SCM_MAX_DELAY_MS {
                p.at(
                    w.recovery.referenced,
                    format!("`agent.windows.recovery[{i}]`: restart delay {d} exceeds the SCM's limit of about 49 days"),
                );
            }
        }
    }
    if w.reset_after.0.as_secs() >= u64::from(u32::MAX) {
        p.at(
            w.reset_after.referenced,
            format!(
                "`agent.windows.reset_after` ({}) exceeds the SCM's limit of about 136 years",
                w.reset_after
            ),
        );
    }
}

fn validate_otlp(otlp: &OtlpConfig, p: &mut Problems<'_>) {
    p.within("exporter.otlp.timeout", &otlp.timeout, HumanDuration::millis(1), HumanDuration::secs(300));
    for h in &otlp.headers {
        let name = &h.name.value;
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
        if !valid_name {
            p.at(
                h.name.referenced,
                format!("expected an HTTP header name such as `authorization`, found `{name}`"),
            );
        }
        let sources = [
            h.value.as_ref().map(|v| v.referenced),
            h.env.as_ref().map(|v| v.referenced),
            h.file.as_ref().map(|v| v.referenced),
        ];
        let set: Vec<_> = sources.iter().flatten().collect();
        match set.as_slice() {
            [] => p.at(h.name.referenced, format!("header `{name}` needs one of `value`, `env` or `file`")),
            [_] => {}
            [_, second, ..] => {
                p.at(**second, format!("header `{name}` takes one of `value`, `env` or `file`, not several"))
            }
        }
    }
    let tls = &otlp.tls;
    match (&tls.cert_file, &tls.key_file) {
        (Some(c), None) => p.at(c.referenced, "`tls.cert_file` needs `tls.key_file` (the client key)"),
        (None, Some(k)) => {
            p.at(k.referenced, "`tls.key_file` needs `tls.cert_file` (the client certificate)")
        }
        _ => {}
    }
    let any_tls = tls.ca_file.is_some() || tls.cert_file.is_some();
    if any_tls && otlp.endpoint.value.starts_with("http://") {
        p.at(
            otlp.endpoint.referenced,
            "`tls` is set but the endpoint is `http://`: use an `https://` endpoint for TLS",
        );
    }
}

fn validate_health(health: &Spanned<HealthConfig>, p: &mut Problems<'_>) {
    let h = &health.value;
    let kinds = [
        h.http.as_ref().map(|s| s.referenced),
        h.tcp.as_ref().map(|s| s.referenced),
        h.command.as_ref().map(|s| s.referenced),
    ];
    let set: Vec<_> = kinds.iter().flatten().collect();
    if set.is_empty() {
        p.at(health.referenced, "`health` needs one of `http`, `tcp` or `command`");
    } else if set.len() > 1 {
        p.at(*set[1], "`health` takes one probe: `http`, `tcp` or `command`");
    }
    if let Some(u) = &h.http {
        if !(u.value.starts_with("http://") || u.value.starts_with("https://")) {
            p.at(
                u.referenced,
                format!(
                    "`health.http` expects a URL such as `http://127.0.0.1:8080/healthz`, found `{}`",
                    u.value
                ),
            );
        }
    }
    if let Some(t) = &h.tcp {
        if t.value.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
            p.at(t.referenced, format!("`health.tcp` expects `host:port`, found `{}`", t.value));
        }
    }
    if let Some(c) = &h.command {
        if c.value.first().is_none_or(|a| a.is_empty()) {
            p.at(
                c.referenced,
                "`health.command` expects a non-empty argv list such as [\"/usr/bin/check\", \"--quick\"]",
            );
        }
    }
    p.within("health.every", &h.every, HumanDuration::millis(100), HumanDuration::secs(24 * 3600));
    p.within("health.timeout", &h.timeout, HumanDuration::millis(1), HumanDuration::secs(300));
    if h.timeout.value > h.every.value {
        // Where the one written is: a default has no place.
        let at =
            if h.timeout.referenced == Location::UNKNOWN { h.every.referenced } else { h.timeout.referenced };
        p.at(at, format!("`health.timeout` ({}) must not exceed `health.every` ({})", h.timeout, h.every));
    }
    p.within("health.failures", &h.failures, 1, 1000);
    if let Some(s) = &h.expect_status {
        p.within("health.expect_status", s, 100, 599);
    }
}

/// `api` → `api.service`; names with a unit suffix are kept.
pub fn normalize_unit(unit: &str) -> String {
    let known = [".service", ".scope", ".slice", ".socket", ".timer", ".mount"];
    if known.iter().any(|s| unit.ends_with(s)) {
        unit.to_string()
    } else {
        format!("{unit}.service")
    }
}
