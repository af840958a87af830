//! The configuration file's shape: what each key is, its type and its
//! default. Unknown keys are errors (`deny_unknown_fields`) so that a typo
//! is reported instead of silently ignored; values whose semantic checks
//! must point at a line are `Spanned`.

use super::{ByteSize, DetectionConfig, HumanDuration};
use crate::yaml::{Argv, Spanned};
use serde::{Deserialize, Serialize};
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExporterConfig {
    pub otlp: Option<OtlpConfig>,
    pub spool: SpoolConfig,
    pub files: FilesConfig,
    /// How often metrics are exported and pending logs flushed.
    pub interval: Spanned<HumanDuration>,
    /// Syscalls with their own series per service; the rest are folded into
    /// `other` so that cardinality stays bounded.
    pub syscall_top_n: Spanned<usize>,
    /// Event log records (process start/exit, signals, OOM kills, failed
    /// connects) kept per service per window; the rest are counted as
    /// suppressed.
    pub log_rate_limit: LogRateLimit,
    /// Capacity of the queue of events waiting for aggregation; when it is
    /// full, events are dropped and counted.
    pub queue_capacity: Spanned<usize>,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            otlp: None,
            spool: SpoolConfig::default(),
            files: FilesConfig::default(),
            interval: Spanned::unlocated(HumanDuration::secs(10)),
            syscall_top_n: Spanned::unlocated(16),
            log_rate_limit: LogRateLimit::default(),
            queue_capacity: Spanned::unlocated(65_536),
        }
    }
}

/// At most `max` event log records per service per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogRateLimit {
    pub max: Spanned<u32>,
    pub per: Spanned<HumanDuration>,
}

impl Default for LogRateLimit {
    fn default() -> Self {
        LogRateLimit { max: Spanned::unlocated(100), per: Spanned::unlocated(HumanDuration::secs(60)) }
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConfig {
    pub name: Spanned<String>,
    pub value: Option<Spanned<String>>,
    pub env: Option<Spanned<String>>,
    pub file: Option<Spanned<PathBuf>>,
}

/// TLS towards the collector (`https://` endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    pub endpoint: Spanned<String>,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    #[serde(default)]
    pub compression: Compression,
    /// Deadline of one export request.
    #[serde(default = "default_otlp_timeout")]
    pub timeout: Spanned<HumanDuration>,
    #[serde(default)]
    pub headers: Vec<HeaderConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
}

impl OtlpConfig {
    /// An endpoint with every other setting at its default.
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        OtlpConfig {
            endpoint: Spanned::unlocated(endpoint.into()),
            protocol,
            compression: Compression::default(),
            timeout: default_otlp_timeout(),
            headers: Vec::new(),
            tls: TlsConfig::default(),
        }
    }
}

fn default_otlp_timeout() -> Spanned<HumanDuration> {
    Spanned::unlocated(HumanDuration::secs(10))
}

/// The on-disk spool that holds telemetry while the collector is away.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Default: `<state_dir>/spool`.
    pub dir: Option<PathBuf>,
    pub max_bytes: Spanned<ByteSize>,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { dir: None, max_bytes: Spanned::unlocated(ByteSize::mib(512)) }
    }
}

/// Local OTLP/JSON files, used when no collector endpoint is configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Default: `<state_dir>/otlp`.
    pub dir: Option<PathBuf>,
    /// Size at which a file is rotated.
    pub max_file_bytes: Spanned<ByteSize>,
    /// Rotated files kept; the oldest beyond this are deleted.
    pub max_files: Spanned<u32>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            dir: None,
            max_file_bytes: Spanned::unlocated(ByteSize::mib(64)),
            max_files: Spanned::unlocated(8),
        }
    }
}

/// One entry of `services:`: a managed service, or a discovery rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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
    pub health: Option<Spanned<HealthConfig>>,
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

/// Health probes of a service. Exactly one of `http`, `tcp`, `command`.
/// Compared by value: a reload restarts the probes when any field differs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// URL to GET; healthy on the expected status (default: any 2xx).
    pub http: Option<Spanned<String>>,
    /// `host:port` to connect to.
    pub tcp: Option<Spanned<String>>,
    /// Command to run, argv form, no shell; healthy on exit code 0.
    pub command: Option<Spanned<Argv<String>>>,
    #[serde(default = "default_probe_every")]
    pub every: Spanned<HumanDuration>,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Spanned<HumanDuration>,
    /// Consecutive failures before the service counts as unhealthy.
    #[serde(default = "default_probe_failures")]
    pub failures: Spanned<u32>,
    /// HTTP only: the status that counts as healthy (default: any 2xx).
    pub expect_status: Option<Spanned<u16>>,
    /// HTTP only: a substring the body must contain.
    pub body_contains: Option<String>,
}

fn default_probe_every() -> Spanned<HumanDuration> {
    Spanned::unlocated(HumanDuration::secs(10))
}
fn default_probe_timeout() -> Spanned<HumanDuration> {
    Spanned::unlocated(HumanDuration::secs(2))
}
fn default_probe_failures() -> Spanned<u32> {
    Spanned::unlocated(3)
}

/// Default of `sensors.syscall_latency_sample` (the eBPF sensor's own
/// default, repeated here because the config is cross-platform).
pub const DEFAULT_SYSCALL_LATENCY_SAMPLE: u32 = 16;
/// Beyond this, too few calls are timed for a p99 in an interval.
pub const MAX_SYSCALL_LATENCY_SAMPLE: u32 = 65_536;

/// Which sensors run and how they are sized.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorsConfig {
    pub process: bool,
    pub tcp: bool,
    /// Per-cgroup syscall statistics aggregated in the kernel.
    pub syscalls: bool,
    /// How often syscall statistics are read out of the kernel.
    pub syscall_interval: Spanned<HumanDuration>,
    /// Time the calls that start in 1/N of the time (short windows at
    /// random times) for the latency percentiles; every call is still
    /// counted, errors too. 1 times every call, at about twice the cost per
    /// syscall on the observed services.
    pub syscall_latency_sample: Spanned<u32>,
    /// Size of the kernel ring buffer (a power of two, at least 4KiB).
    pub ring_buffer: Spanned<ByteSize>,
    /// Capacity of the channel between the sensor and the pipeline.
    pub channel_capacity: Spanned<usize>,
    /// Arguments kept per process start; more are cut and flagged.
    pub argv_max_args: Spanned<u32>,
}

impl Default for SensorsConfig {
    fn default() -> Self {
        SensorsConfig {
            process: true,
            tcp: true,
            syscalls: true,
            syscall_interval: Spanned::unlocated(HumanDuration::secs(10)),
            syscall_latency_sample: Spanned::unlocated(DEFAULT_SYSCALL_LATENCY_SAMPLE),
            ring_buffer: Spanned::unlocated(ByteSize::mib(8)),
            channel_capacity: Spanned::unlocated(65_536),
            argv_max_args: Spanned::unlocated(32),
        }
    }
}

/// Where runbooks are and whether they act.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunbooksConfig {
    pub dir: PathBuf,
    /// Decide and audit, but change nothing on the host.
    pub dry_run: bool,
    /// The audit log's size and retention (`<state_dir>/audit`).
    pub audit: AuditConfig,
}

impl Default for RunbooksConfig {
    fn default() -> Self {
        RunbooksConfig {
            dir: default_config_dir().join("runbooks"),
            dry_run: false,
            audit: AuditConfig::default(),
        }
    }
}

/// How much audit log is kept: its own budget, apart from the spool's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Size at which the current file is rotated.
    pub max_file_bytes: Spanned<ByteSize>,
    /// The whole log; beyond it the oldest rotated files are deleted.
    pub max_bytes: Spanned<ByteSize>,
    /// Rotated files older than this are deleted (`0`: kept until `max_bytes`).
    pub max_age: Spanned<HumanDuration>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_file_bytes: Spanned::unlocated(ByteSize::mib(16)),
            max_bytes: Spanned::unlocated(ByteSize::mib(256)),
            max_age: Spanned::unlocated(HumanDuration::default()),
        }
    }
}

impl AuditConfig {
    /// The audit log's retention.
    pub fn retention(&self) -> crate::audit::Retention {
        crate::audit::Retention {
            max_file_bytes: self.max_file_bytes.0,
            max_total_bytes: self.max_bytes.0,
            max_age: (!self.max_age.0.is_zero()).then_some(self.max_age.0),
        }
    }
}

/// The agent itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub state_dir: Spanned<PathBuf>,
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
            state_dir: Spanned::unlocated(default_state_dir()),
            listen: Spanned::unlocated("127.0.0.1:9464".to_string()),
            log_level: Spanned::unlocated("info".to_string()),
            log_format: LogFormat::Text,
            windows: WindowsAgentConfig::default(),
        }
    }
}

/// custos as a Windows service: its name in the SCM, what the SCM does when
/// custos fails, and the name of its ETW sessions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsAgentConfig {
    /// Name of the custos service in the SCM (and of its Event Log source).
    pub service_name: Spanned<String>,
    /// SCM recovery actions: failure n runs action n, failures after the
    /// last run the last one (like `sc failure`).
    pub recovery: Spanned<Vec<RecoveryAction>>,
    /// The failure count is reset after this long without a failure.
    pub reset_after: Spanned<HumanDuration>,
    /// Also recover when custos stops with an error, not only when it crashes.
    pub recover_on_error_exit: bool,
    /// Base name of the ETW sessions (`<name>` and `<name>-kernel`).
    pub etw_session: Spanned<String>,
}

impl Default for WindowsAgentConfig {
    fn default() -> Self {
        WindowsAgentConfig {
            service_name: Spanned::unlocated("custos".to_string()),
            recovery: Spanned::unlocated(vec![
                RecoveryAction::Restart(HumanDuration::secs(60)),
                RecoveryAction::Restart(HumanDuration::secs(60)),
                RecoveryAction::None,
            ]),
            reset_after: Spanned::unlocated(HumanDuration::secs(24 * 3600)),
            recover_on_error_exit: true,
            etw_session: Spanned::unlocated("custos-sensor".to_string()),
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
