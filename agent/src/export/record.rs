//! Platform-neutral values the exporter accepts besides events: log records
//! (anomalies, runbook actions, event logs) and the host's identity.

use std::path::Path;
use std::time::SystemTime;

/// A typed attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    StrArray(Vec<String>),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(i64::from(v))
    }
}
impl From<u16> for AttrValue {
    fn from(v: u16) -> Self {
        AttrValue::Int(i64::from(v))
    }
}
impl From<i32> for AttrValue {
    fn from(v: i32) -> Self {
        AttrValue::Int(i64::from(v))
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}
impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        AttrValue::StrArray(v)
    }
}

/// OTLP log severities (the `SeverityNumber` ranges' first values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Severity {
    /// The OTLP `SeverityNumber`.
    pub fn number(self) -> i32 {
        match self {
            Severity::Trace => 1,
            Severity::Debug => 5,
            Severity::Info => 9,
            Severity::Warn => 13,
            Severity::Error => 17,
            Severity::Fatal => 21,
        }
    }
    /// The OTLP `severity_text`.
    pub fn text(self) -> &'static str {
        match self {
            Severity::Trace => "TRACE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// One log record to export: an event log, an anomaly, a runbook action.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// The OTLP `event.name`, e.g. `custos.process.exit`, `custos.anomaly`,
    /// `custos.runbook.action`.
    pub event_name: String,
    pub severity: Severity,
    /// The managed service it is about; `None` for the agent itself.
    pub service: Option<String>,
    pub time: SystemTime,
    /// A human sentence.
    pub body: String,
    pub attributes: Vec<(String, AttrValue)>,
}

impl LogRecord {
    pub fn new(
        event_name: impl Into<String>,
        severity: Severity,
        service: Option<String>,
        body: impl Into<String>,
    ) -> Self {
        LogRecord {
            event_name: event_name.into(),
            severity,
            service,
            time: SystemTime::now(),
            body: body.into(),
            attributes: Vec::new(),
        }
    }

    /// Adds an attribute (builder style).
    pub fn attr(mut self, key: impl Into<String>, value: impl Into<AttrValue>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }
}

/// Who and where the agent is: the host part of every resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub host_name: String,
    /// `/etc/machine-id` on Linux (the MachineGuid on Windows); empty when unknown.
    pub host_id: String,
    /// `linux`, `windows`, ... as the semconv `os.type`.
    pub os_type: String,
    pub agent_version: String,
}

impl HostInfo {
    /// Reads the host's identity from the running system.
    pub fn detect() -> Self {
        let host_name = read_trimmed(Path::new("/proc/sys/kernel/hostname"))
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_else(|| "unknown".to_string());
        let host_id = read_trimmed(Path::new("/etc/machine-id"))
            .or_else(|| read_trimmed(Path::new("/var/lib/dbus/machine-id")))
            .unwrap_or_default();
        HostInfo {
            host_name,
            host_id,
            os_type: std::env::consts::OS.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
