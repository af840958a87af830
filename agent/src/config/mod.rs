//! The agent's configuration: one YAML file, `CUSTOS_*` environment
//! overrides over it, command-line flags over both.
//!
//! Unknown keys are errors. Structural errors (bad YAML, unknown key, wrong
//! type) stop parsing at the first one, with its line and column; every
//! semantic problem after that (a service with two selectors, a relative
//! state dir, an invalid endpoint...) is collected, so one `custos validate`
//! shows them all.

mod units;

pub use units::{ByteSize, HumanDuration};
// The detector owns what a sensitivity means; configuration only reads it.
pub use custos_detect::Sensitivity;

use custos_detect::catalogue;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the configuration file is looked for when none is given.
#[cfg(not(windows))]
pub const DEFAULT_CONFIG_PATH: &str = "/etc/custos/custos.yaml";
#[cfg(windows)]
pub const DEFAULT_CONFIG_PATH: &str = r"C:\ProgramData\custos\custos.yaml";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub exporter: ExporterConfig,
    pub services: Vec<ServiceEntry>,
    pub sensors: SensorsConfig,
    pub detection: DetectionConfig,
    pub runbooks: RunbooksConfig,
    pub agent: AgentConfig,
}

/// Where telemetry goes. Without `otlp`, OTLP/JSON files in the state dir.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExporterConfig {
    pub otlp: Option<OtlpConfig>,
    pub spool: SpoolConfig,
    pub files: FilesConfig,
    /// How often metrics are exported and pending logs flushed.
    pub interval: HumanDuration,
    /// Syscalls with their own series per service; the rest are folded into
    /// `other` so that cardinality stays bounded.
    pub syscall_top_n: usize,
    /// Event log records (process start/exit, signals, OOM kills, failed
    /// connects) kept per service per window; the rest are counted as
    /// suppressed.
    pub log_rate_limit: LogRateLimit,
    /// Capacity of the queue of events waiting for aggregation; when it is
    /// full, events are dropped and counted.
    pub queue_capacity: usize,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            otlp: None,
            spool: SpoolConfig::default(),
            files: FilesConfig::default(),
            interval: HumanDuration::secs(10),
            syscall_top_n: 16,
            log_rate_limit: LogRateLimit::default(),
            queue_capacity: 65_536,
        }
    }
}

/// At most `max` event log records per service per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogRateLimit {
    pub max: u32,
    pub per: HumanDuration,
}

impl Default for LogRateLimit {
    fn default() -> Self {
        LogRateLimit { max: 100, per: HumanDuration::secs(60) }
    }
}

/// Payload compression on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// One extra header sent with every export request. Exactly one of
/// `value`, `env` (an environment variable holding the value) or `file` (a
/// file holding it, trailing newline removed). Values are never logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConfig {
    pub name: Spanned<String>,
    pub value: Option<Spanned<String>>,
    pub env: Option<Spanned<String>>,
    pub file: Option<Spanned<PathBuf>>,
}

/// TLS towards the collector (`https://` endpoints).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<Spanned<PathBuf>>,
}

/// OTLP wire protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// An OTLP collector endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    pub endpoint: Spanned<String>,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    #[serde(default)]
    pub compression: Compression,
    /// Deadline of one export request.
    #[serde(default = "default_otlp_timeout")]
    pub timeout: HumanDuration,
    #[serde(default)]
    pub headers: Vec<HeaderConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
}

impl OtlpConfig {
    /// An endpoint with every other setting at its default.
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        OtlpConfig {
            endpoint: unspanned(endpoint.into()),
            protocol,
            compression: Compression::default(),
            timeout: default_otlp_timeout(),
            headers: Vec::new(),
            tls: TlsConfig::default(),
        }
    }
}

fn default_otlp_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

/// The on-disk spool that holds telemetry while the collector is away.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Default: `<state_dir>/spool`.
    pub dir: Option<PathBuf>,
    pub max_bytes: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { dir: None, max_bytes: ByteSize::mib(512) }
    }
}

/// Local OTLP/JSON files, used when no collector endpoint is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Default: `<state_dir>/otlp`.
    pub dir: Option<PathBuf>,
    /// Size at which a file is rotated.
    pub max_file_bytes: ByteSize,
    /// Rotated files kept; the oldest beyond this are deleted.
    pub max_files: u32,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig { dir: None, max_file_bytes: ByteSize::mib(64), max_files: 8 }
    }
}

/// One entry of `services:`: a managed service, or a discovery rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceEntry {
    pub name: Option<Spanned<String>>,
    pub systemd_unit: Option<Spanned<String>>,
    pub windows_service: Option<Spanned<String>>,
    /// An absolute executable path, or a pattern with `*` matched against the
    /// path (when it contains `/`) or else the executable's name.
    pub exe: Option<Spanned<String>>,
    /// A cgroup v2 path relative to the cgroup2 root (`/custos-bench`,
    /// `/kubepods.slice/...`): for services that systemd does not run.
    pub cgroup: Option<Spanned<String>>,
    pub discover: Option<Spanned<Discover>>,
    pub health: Option<HealthConfig>,
}

/// What `discover:` manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Discover {
    /// Every systemd service, named after its unit.
    Systemd,
    /// Every Windows service, named after its service name.
    Windows,
}

/// How a managed service is recognized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    SystemdUnit(String),
    WindowsService(String),
    Exe(String),
    Cgroup(String),
}

/// A managed service after validation.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub selector: Selector,
    pub health: Option<HealthConfig>,
}

/// Health probes of a service. Exactly one of `http`, `tcp`, `command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// URL to GET; healthy on the expected status (default: any 2xx).
    pub http: Option<Spanned<String>>,
    /// `host:port` to connect to.
    pub tcp: Option<Spanned<String>>,
    /// Command to run, argv form, no shell; healthy on exit code 0.
    pub command: Option<Spanned<Vec<String>>>,
    #[serde(default = "default_probe_every")]
    pub every: HumanDuration,
    #[serde(default = "default_probe_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive failures before the service counts as unhealthy.
    #[serde(default = "default_probe_failures")]
    pub failures: u32,
    /// HTTP only: the status that counts as healthy (default: any 2xx).
    pub expect_status: Option<u16>,
    /// HTTP only: a substring the body must contain.
    pub body_contains: Option<String>,
}

fn default_probe_every() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_probe_timeout() -> HumanDuration {
    HumanDuration::secs(2)
}
fn default_probe_failures() -> u32 {
    3
}

/// Default of `sensors.syscall_latency_sample` (the eBPF sensor's own
/// default, repeated here because the config is cross-platform).
pub const DEFAULT_SYSCALL_LATENCY_SAMPLE: u32 = 16;
/// Beyond this, too few calls are timed for a p99 in an interval.
pub const MAX_SYSCALL_LATENCY_SAMPLE: u32 = 65_536;

/// Which sensors run and how they are sized.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorsConfig {
    pub process: bool,
    pub tcp: bool,
    /// Per-cgroup syscall statistics aggregated in the kernel.
    pub syscalls: bool,
    /// How often syscall statistics are read out of the kernel.
    pub syscall_interval: HumanDuration,
    /// Time the calls that start in 1/N of the time (short windows at
    /// random times) for the latency percentiles; every call is still
    /// counted, errors too. 1 times every call, at about twice the cost per
    /// syscall on the observed services.
    pub syscall_latency_sample: Spanned<u32>,
    /// Size of the kernel ring buffer (a power of two, at least 4KiB).
    pub ring_buffer: ByteSize,
    /// Capacity of the channel between the sensor and the pipeline.
    pub channel_capacity: usize,
    /// Arguments kept per process start; more are cut and flagged.
    pub argv_max_args: u32,
}

impl Default for SensorsConfig {
    fn default() -> Self {
        SensorsConfig {
            process: true,
            tcp: true,
            syscalls: true,
            syscall_interval: HumanDuration::secs(10),
            syscall_latency_sample: unspanned(DEFAULT_SYSCALL_LATENCY_SAMPLE),
            ring_buffer: ByteSize::mib(8),
            channel_capacity: 65_536,
            argv_max_args: 32,
        }
    }
}

/// Anomaly detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    pub enabled: bool,
    pub sensitivity: Sensitivity,
    /// Metrics watched on every service (default: every series of
    /// `custos_detect::catalogue::SERIES`).
    pub series: Option<Vec<Spanned<String>>>,
    /// Per-metric settings over the defaults.
    pub overrides: Vec<MetricOverride>,
    /// How far ahead a forecast toward a threshold fires.
    pub forecast_horizon: HumanDuration,
    /// At most this many series are kept (about 10 KiB each).
    pub max_series: usize,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        // The detector's defaults, so that a bank made from an empty
        // `detection:` section is the bank `DetectorBank::new` makes.
        let d = custos_detect::BankConfig::default();
        DetectionConfig {
            enabled: true,
            sensitivity: d.sensitivity,
            series: None,
            overrides: Vec::new(),
            forecast_horizon: HumanDuration(d.forecast_horizon),
            max_series: d.max_series,
        }
    }
}

impl DetectionConfig {
    /// What the detector bank is set up from: these settings without their
    /// YAML locations.
    pub fn bank_config(&self) -> custos_detect::BankConfig {
        custos_detect::BankConfig {
            sensitivity: self.sensitivity,
            series: self.series.as_ref().map(|v| v.iter().map(|s| s.value.clone()).collect()),
            overrides: self
                .overrides
                .iter()
                .map(|o| custos_detect::MetricOverride {
                    metric: o.metric.value.clone(),
                    enabled: o.enabled,
                    sensitivity: o.sensitivity,
                    warmup: o.warmup,
                    threshold: o.threshold,
                })
                .collect(),
            forecast_horizon: self.forecast_horizon.0,
            max_series: self.max_series,
        }
    }
}

/// Settings for one metric, over `detection:`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricOverride {
    /// A series of `custos_detect::catalogue::SERIES`, e.g. `custos.tcp.connect.duration`.
    pub metric: Spanned<String>,
    pub enabled: Option<bool>,
    pub sensitivity: Option<Sensitivity>,
    /// Points learned before the first alarm.
    pub warmup: Option<u32>,
    /// Forecast when the series heads above this value.
    pub threshold: Option<f64>,
}

/// Where runbooks are and whether they act.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunbooksConfig {
    pub dir: PathBuf,
    /// Decide and audit, but change nothing on the host.
    pub dry_run: bool,
}

impl Default for RunbooksConfig {
    fn default() -> Self {
        RunbooksConfig { dir: default_config_dir().join("runbooks"), dry_run: false }
    }
}

/// The agent itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`); loopback by default.
    pub listen: Spanned<String>,
    pub log_level: Spanned<String>,
    pub log_format: LogFormat,
    /// How custos runs as a Windows service (used by `custos install` there).
    pub windows: WindowsAgentConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: default_state_dir(),
            listen: unspanned("127.0.0.1:9464".to_string()),
            log_level: unspanned("info".to_string()),
            log_format: LogFormat::Text,
            windows: WindowsAgentConfig::default(),
        }
    }
}

/// custos as a Windows service: its name in the SCM, what the SCM does when
/// custos fails, and the name of its ETW sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsAgentConfig {
    /// Name of the custos service in the SCM (and of its Event Log source).
    pub service_name: Spanned<String>,
    /// SCM recovery actions: failure n runs action n, failures after the
    /// last run the last one (like `sc failure`).
    pub recovery: Spanned<Vec<RecoveryAction>>,
    /// The failure count is reset after this long without a failure.
    pub reset_after: HumanDuration,
    /// Also recover when custos stops with an error, not only when it crashes.
    pub recover_on_error_exit: bool,
    /// Base name of the ETW sessions (`<name>` and `<name>-kernel`).
    pub etw_session: Spanned<String>,
}

impl Default for WindowsAgentConfig {
    fn default() -> Self {
        WindowsAgentConfig {
            service_name: unspanned("custos".to_string()),
            recovery: unspanned(vec![
                RecoveryAction::Restart(HumanDuration::secs(60)),
                RecoveryAction::Restart(HumanDuration::secs(60)),
                RecoveryAction::None,
            ]),
            reset_after: HumanDuration::secs(24 * 3600),
            recover_on_error_exit: true,
            etw_session: unspanned("custos-sensor".to_string()),
        }
    }
}

/// One SCM recovery action: `{ restart: 60s }` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryAction {
    /// Restart custos after this delay.
    Restart(HumanDuration),
    /// Leave it stopped.
    None,
}

/// How the agent's own log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}

/// `/etc/custos` (or `%ProgramData%\custos`).
pub fn default_config_dir() -> PathBuf {
    Path::new(DEFAULT_CONFIG_PATH).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `/var/lib/custos` (or `%ProgramData%\custos\state`).
pub fn default_state_dir() -> PathBuf {
    if cfg!(windows) {
        default_config_dir().join("state")
    } else {
        PathBuf::from("/var/lib/custos")
    }
}

/// One problem in a configuration source, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `environment` / `command line`.
    pub source: String,
    /// 1-based; 0 when unknown (environment, flags).
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.source, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.source, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors with the source they belong to.
struct Problems<'a> {
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    fn at(&mut self, loc: serde_saphyr::Location, message: impl Into<String>) {
        self.errors.push(ConfigError {
            source: self.source.to_string(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
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

/// Parses and validates configuration text. `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<LoadedConfig, ConfigErrors> {
    let raw: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| ConfigErrors(vec![yaml_error(&e, source)]))?
    };
    validate(raw, source)
}

fn yaml_error(e: &serde_saphyr::Error, source: &str) -> ConfigError {
    let loc = e.location().unwrap_or(serde_saphyr::Location::UNKNOWN);
    // The library's Display repeats the location and may quote a snippet over
    // several lines; the first line holds the message itself.
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid configuration").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // Drop the library's own `line N column M: ` prefix: ours says it.
    let first = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => first,
    };
    let message = first.split(" at line ").next().unwrap_or(first).trim_end_matches([',', '.']).to_string();
    ConfigError { source: source.to_string(), line: loc.line(), column: loc.column(), message }
}

fn validate(raw: Config, source: &str) -> Result<LoadedConfig, ConfigErrors> {
    let mut p = Problems { source, errors: Vec::new() };
    let mut services = Vec::new();
    let mut discover = Vec::new();
    let mut names = std::collections::HashMap::<String, serde_saphyr::Location>::new();

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
            let loc = selectors.first().map(|(_, v)| v.referenced).unwrap_or(serde_saphyr::Location::UNKNOWN);
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
        services.push(ServiceSpec { name: name.value.clone(), selector, health: entry.health.clone() });
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
    if ex.interval.0 < std::time::Duration::from_millis(100) {
        p.at(
            serde_saphyr::Location::UNKNOWN,
            format!("`exporter.interval` must be at least 100ms, found {}", ex.interval),
        );
    }
    if ex.log_rate_limit.per.0.is_zero() {
        p.at(serde_saphyr::Location::UNKNOWN, "`exporter.log_rate_limit.per` must be longer than 0s");
    }
    if ex.queue_capacity == 0 {
        p.at(serde_saphyr::Location::UNKNOWN, "`exporter.queue_capacity` must be at least 1");
    }
    if ex.spool.max_bytes.0 < 64 * 1024 {
        p.at(
            serde_saphyr::Location::UNKNOWN,
            format!(
                "`exporter.spool.max_bytes` must be at least 64KiB, found {} bytes",
                ex.spool.max_bytes.0
            ),
        );
    }
    if ex.files.max_files == 0 {
        p.at(serde_saphyr::Location::UNKNOWN, "`exporter.files.max_files` must be at least 1");
    }
    if !raw.agent.state_dir.is_absolute() {
        p.at(serde_saphyr::Location::UNKNOWN, "`agent.state_dir` must be an absolute path");
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
    if tracing_subscriber::EnvFilter::try_new(&raw.agent.log_level.value).is_err() {
        p.at(
            raw.agent.log_level.referenced,
            format!(
                "`agent.log_level` expects error, warn, info, debug or trace, found `{}`",
                raw.agent.log_level.value
            ),
        );
    }
    let rb = raw.sensors.ring_buffer.0;
    if rb < 4096 || !rb.is_power_of_two() {
        p.at(
            serde_saphyr::Location::UNKNOWN,
            format!("`sensors.ring_buffer` must be a power of two of at least 4KiB, found {rb} bytes"),
        );
    }
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
    if raw.sensors.channel_capacity == 0 {
        p.at(serde_saphyr::Location::UNKNOWN, "`sensors.channel_capacity` must be at least 1");
    }

    validate_detection(&raw.detection, &mut p);

    if p.errors.is_empty() {
        Ok(LoadedConfig { raw, services, discover, path: None })
    } else {
        Err(ConfigErrors(p.errors))
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
            serde_saphyr::Location::UNKNOWN,
            format!(
                "`agent.windows.reset_after` ({}) exceeds the SCM's limit of about 136 years",
                w.reset_after
            ),
        );
    }
}

fn validate_otlp(otlp: &OtlpConfig, p: &mut Problems<'_>) {
    if otlp.timeout.0.is_zero() {
        p.at(serde_saphyr::Location::UNKNOWN, "`exporter.otlp.timeout` must be longer than 0s");
    }
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

fn validate_detection(d: &DetectionConfig, p: &mut Problems<'_>) {
    for m in d.series.iter().flatten() {
        if !catalogue::is_known(&m.value) {
            p.at(
                m.referenced,
                format!(
                    "unknown metric `{}` in `detection.series`: expected one of {}",
                    m.value,
                    catalogue::known_names()
                ),
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    for o in &d.overrides {
        if !catalogue::is_known(&o.metric.value) {
            p.at(
                o.metric.referenced,
                format!(
                    "unknown metric `{}` in `detection.overrides`: expected one of {}",
                    o.metric.value,
                    catalogue::known_names()
                ),
            );
        } else if !seen.insert(o.metric.value.clone()) {
            p.at(o.metric.referenced, format!("metric `{}` has more than one override", o.metric.value));
        }
        if o.threshold.is_some_and(|t| !t.is_finite()) {
            p.at(o.metric.referenced, format!("`threshold` of `{}` must be a finite number", o.metric.value));
        }
    }
    if d.max_series == 0 {
        p.at(serde_saphyr::Location::UNKNOWN, "`detection.max_series` must be at least 1");
    }
}

fn validate_health(h: &HealthConfig, p: &mut Problems<'_>) {
    let kinds = [
        h.http.as_ref().map(|s| s.referenced),
        h.tcp.as_ref().map(|s| s.referenced),
        h.command.as_ref().map(|s| s.referenced),
    ];
    let set: Vec<_> = kinds.iter().flatten().collect();
    if set.is_empty() {
        p.at(serde_saphyr::Location::UNKNOWN, "`health` needs one of `http`, `tcp` or `command`");
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
    if h.timeout.0 > h.every.0 {
        p.at(
            serde_saphyr::Location::UNKNOWN,
            format!("`health.timeout` ({}) must not exceed `health.every` ({})", h.timeout, h.every),
        );
    }
    if h.failures == 0 {
        p.at(serde_saphyr::Location::UNKNOWN, "`health.failures` must be at least 1");
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

/// Refuses a file that could let someone other than root (or the agent's
/// own user) make the agent run a command: group- or world-writable, or
/// owned by another user.
#[cfg(unix)]
pub fn check_file_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = md.mode();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != 0 && md.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}, not by root: refusing it because custos runs its commands as root (chown root {})",
            path.display(),
            md.uid(),
            path.display()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is group- or world-writable (mode {:o}): refusing it because custos runs its commands as root (chmod go-w {})",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_file_permissions(_path: &Path) -> Result<(), String> {
    // Windows: files under %ProgramData% inherit an ACL writable by
    // administrators only; the installer sets it.
    Ok(())
}

/// Reads the configuration: the given file, else the default path when it
/// exists, else the embedded default. Then applies `CUSTOS_*` overrides.
pub fn load(path: Option<&Path>) -> Result<LoadedConfig, ConfigErrors> {
    let chosen = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    let mut loaded = match &chosen {
        Some(p) => {
            let source = p.display().to_string();
            let one = |message: String| {
                ConfigErrors(vec![ConfigError { source: source.clone(), line: 0, column: 0, message }])
            };
            let text =
                std::fs::read_to_string(p).map_err(|e| one(format!("cannot read the configuration: {e}")))?;
            check_file_permissions(p).map_err(one)?;
            let mut c = parse(&text, &source)?;
            c.path = Some(p.clone());
            c
        }
        None => parse("", "embedded default")?,
    };
    apply_env(&mut loaded, std::env::vars())?;
    Ok(loaded)
}

/// The environment variables that override the file, with what they set.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CUSTOS_OTLP_ENDPOINT", "exporter.otlp.endpoint"),
    ("CUSTOS_OTLP_PROTOCOL", "exporter.otlp.protocol (grpc or http)"),
    ("CUSTOS_STATE_DIR", "agent.state_dir"),
    ("CUSTOS_LISTEN", "agent.listen"),
    ("CUSTOS_LOG_LEVEL", "agent.log_level"),
    ("CUSTOS_LOG_FORMAT", "agent.log_format (text or json)"),
    ("CUSTOS_RUNBOOKS_DIR", "runbooks.dir"),
    ("CUSTOS_DRY_RUN", "runbooks.dry_run (true or false)"),
    ("CUSTOS_SENSITIVITY", "detection.sensitivity (low, medium or high)"),
];

/// Applies `CUSTOS_*` overrides from `vars`, then validates again.
pub fn apply_env(
    loaded: &mut LoadedConfig,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let mut err = |var: &str, msg: String| {
        errors.push(ConfigError { source: format!("environment {var}"), line: 0, column: 0, message: msg })
    };
    let c = &mut loaded.raw;
    for (k, v) in vars {
        match k.as_str() {
            "CUSTOS_OTLP_ENDPOINT" => {
                let protocol = c.exporter.otlp.as_ref().map(|o| o.protocol).unwrap_or_default();
                match c.exporter.otlp.as_mut() {
                    Some(o) => o.endpoint = unspanned(v),
                    None => c.exporter.otlp = Some(OtlpConfig::new(v, protocol)),
                }
            }
            "CUSTOS_OTLP_PROTOCOL" => match (v.as_str(), c.exporter.otlp.as_mut()) {
                ("grpc", Some(o)) => o.protocol = OtlpProtocol::Grpc,
                ("http", Some(o)) => o.protocol = OtlpProtocol::Http,
                (_, None) => err(&k, "is set but no OTLP endpoint is configured".into()),
                _ => err(&k, format!("expected `grpc` or `http`, found `{v}`")),
            },
            "CUSTOS_STATE_DIR" => c.agent.state_dir = PathBuf::from(v),
            "CUSTOS_LISTEN" => c.agent.listen = unspanned(v),
            "CUSTOS_LOG_LEVEL" => c.agent.log_level = unspanned(v),
            "CUSTOS_LOG_FORMAT" => match v.as_str() {
                "text" => c.agent.log_format = LogFormat::Text,
                "json" => c.agent.log_format = LogFormat::Json,
                _ => err(&k, format!("expected `text` or `json`, found `{v}`")),
            },
            "CUSTOS_RUNBOOKS_DIR" => c.runbooks.dir = PathBuf::from(v),
            "CUSTOS_DRY_RUN" => match v.as_str() {
                "1" | "true" | "yes" => c.runbooks.dry_run = true,
                "0" | "false" | "no" => c.runbooks.dry_run = false,
                _ => err(&k, format!("expected `true` or `false`, found `{v}`")),
            },
            "CUSTOS_SENSITIVITY" => match Sensitivity::parse(&v) {
                Some(s) => c.detection.sensitivity = s,
                None => err(&k, format!("expected `low`, `medium` or `high`, found `{v}`")),
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let path = loaded.path.take();
    let source = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "embedded default".into());
    *loaded = validate(loaded.raw.clone(), &source)?;
    loaded.path = path;
    Ok(())
}

#[cfg(test)]
mod tests;
