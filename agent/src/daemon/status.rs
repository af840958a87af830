//! What `custos status` shows: a snapshot the running agent fills on request.
//!
//! The daemon fills the agent-level fields (version, pid, uptime, state, last
//! reload); the pipeline and its modules fill the rest through a
//! [`StatusProvider`]. All fields have defaults so that a newer `custos
//! status` reads an older agent's answer and the other way round.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Life-cycle state of the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    #[default]
    Starting,
    Running,
    Reloading,
    Stopping,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Running => "running",
            AgentState::Reloading => "reloading",
            AgentState::Stopping => "stopping",
        }
    }
}

/// Everything `custos status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusSnapshot {
    pub version: String,
    pub pid: u32,
    /// Seconds since the Unix epoch when the agent started.
    pub started_at: u64,
    pub uptime_secs: u64,
    pub state: AgentState,
    /// The configuration file in use; `None` for the embedded default.
    pub config_path: Option<String>,
    pub services: Vec<ServiceHealth>,
    /// Events per second over the last rate window.
    pub events_per_sec: f64,
    pub events_total: u64,
    pub drops: Drops,
    pub exporter: ExporterStatus,
    pub runbooks: Vec<RunbookStatus>,
    /// Runbook files not loaded at start, and why.
    pub skipped_runbooks: Vec<SkippedRunbook>,
    /// Every runbook's counts since the agent started.
    pub runbook_counts: RunbookCounts,
    /// Most recent first.
    pub last_actions: Vec<ActionRecord>,
    pub last_reload: Option<ReloadRecord>,
    /// No `services:`: every service on the host is managed (`services`
    /// lists those seen so far).
    pub manage_everything: bool,
    /// Every detector series and where it is in learning what is normal.
    pub detection: Vec<SeriesLearning>,
}

/// One detector series' learning state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesLearning {
    pub service: String,
    pub metric: String,
    /// Points learned so far.
    pub points: u64,
    /// Points it learns before it may alarm (warming up until then).
    pub alarm_warmup: u64,
    /// The anomaly score of its last point.
    pub score: f64,
}

/// One managed service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceHealth {
    pub name: String,
    /// The unit or Windows service, when the service is one.
    pub unit: Option<String>,
    /// The service manager's state (`active`, `failed`...), when known.
    pub state: Option<String>,
    /// Health verdict: `None` when no probe is configured.
    pub healthy: Option<bool>,
    /// Why it is unhealthy, or the last probe's result.
    pub detail: Option<String>,
    /// Its last process exit (of the main process, or a failure).
    pub last_exit: Option<ExitStatus>,
    /// In maintenance: runbooks decide and audit, and act on nothing.
    pub paused: bool,
    /// When the pause ends (seconds since the Unix epoch); `None` while
    /// paused: until `custos resume`.
    pub paused_until: Option<u64>,
    /// Down because a stop was asked of the service manager.
    pub stopped_on_request: bool,
    /// The runbook step running for it, and where it is.
    pub in_progress: Option<String>,
}

/// A process exit, for status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitStatus {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<String>,
    /// `unrequested`, `stop_requested`, `restart_requested`.
    pub cause: Option<String>,
}

impl ExitStatus {
    /// `code 3, unrequested` / `SIGTERM, stop_requested`.
    pub fn describe(&self) -> String {
        let how = match (&self.signal, self.code) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => format!("code {c}"),
            (None, None) => "exited".into(),
        };
        match &self.cause {
            Some(c) => format!("{how}, {c}"),
            None => how,
        }
    }
}

/// Events lost, by where they were lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Drops {
    /// Ring buffer reservations that failed in the kernel.
    pub kernel: u64,
    /// Full channels in user space.
    pub user: u64,
    /// Telemetry the exporter gave up on (spool full).
    pub exporter: u64,
}

/// Where telemetry goes and how that is going.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExporterStatus {
    /// `connected`, `retrying`, `spooling`, `files`, `off`...
    pub state: String,
    pub endpoint: Option<String>,
    pub spool_bytes: u64,
    pub last_error: Option<String>,
}

/// A loaded runbook and where it is on its escalation ladder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunbookStatus {
    pub name: String,
    pub service: String,
    /// Steps already taken in the current escalation (0: none).
    pub ladder_position: u32,
    pub ladder_steps: u32,
    /// `armed`, `cooldown`, `circuit_open`, `dry_run`, `paused`,
    /// `running`, `exhausted`...
    pub state: String,
    /// The action of the step the next incident runs (`restart`).
    pub next_action: String,
    /// The step running and where it is (`step 2 of 4 (restart): verifying
    /// until ...`).
    pub in_progress: Option<String>,
    /// A firing is held until the step running or the cooldown ends.
    pub held: bool,
    pub counts: RunbookCounts,
}

/// What runbooks did since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunbookCounts {
    pub firings: u64,
    pub actions: u64,
    pub failures: u64,
    pub not_healed: u64,
    pub held: u64,
    pub suppressions: u64,
    pub breaker_openings: u64,
}

impl RunbookCounts {
    fn describe(&self) -> String {
        format!(
            "fired {}, acted {}, failed {}, not healed {}, held {}, suppressed {}, breaker opened {}",
            self.firings,
            self.actions,
            self.failures,
            self.not_healed,
            self.held,
            self.suppressions,
            self.breaker_openings
        )
    }
}

/// A runbook file that was not loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkippedRunbook {
    pub source: String,
    pub error: String,
}

/// One action a runbook took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActionRecord {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub runbook: String,
    pub service: String,
    pub action: String,
    /// `ok`, `failed: ...`, `dry_run`, `skipped: ...`.
    pub outcome: String,
}

/// The outcome of the last reload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadRecord {
    pub at: u64,
    pub ok: bool,
    pub error: Option<String>,
    /// What it could not apply at once (settings that need a restart).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Fills the pipeline's part of a status snapshot. Called on the control
/// socket's task for every `custos status`: keep it quick (read atomics and
/// small locked summaries; no I/O).
pub trait StatusProvider: Send + Sync + 'static {
    fn fill(&self, snapshot: &mut StatusSnapshot);
}

impl<F: Fn(&mut StatusSnapshot) + Send + Sync + 'static> StatusProvider for F {
    fn fill(&self, snapshot: &mut StatusSnapshot) {
        self(snapshot)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn fmt_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

impl StatusSnapshot {
    /// The one-line summary sent as systemd `STATUS=`.
    pub fn summary_line(&self) -> String {
        let mut s = format!(
            "{}: {}, {:.0} events/s, drops {} kernel {} user, exporter {}",
            self.state.as_str(),
            self.services_count(),
            self.events_per_sec,
            self.drops.kernel,
            self.drops.user,
            if self.exporter.state.is_empty() { "unknown" } else { &self.exporter.state },
        );
        if self.exporter.spool_bytes > 0 {
            let _ = write!(s, " (spool {})", fmt_bytes(self.exporter.spool_bytes));
        }
        s
    }

    /// `3 services`, or `all services (3 seen)` when every service is managed.
    fn services_count(&self) -> String {
        if self.manage_everything {
            format!("all services ({} seen)", self.services.len())
        } else {
            format!("{} services", self.services.len())
        }
    }

    /// The human-readable `custos status`.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let up = humantime::format_duration(Duration::from_secs(self.uptime_secs));
        let _ = writeln!(o, "custos {} (pid {}): {}", self.version, self.pid, self.state.as_str());
        let _ = writeln!(o, "  started    {} (up {up})", fmt_time(self.started_at));
        let _ = writeln!(o, "  config     {}", self.config_path.as_deref().unwrap_or("embedded default"));
        if let Some(r) = &self.last_reload {
            match (&r.ok, &r.error) {
                (true, _) => {
                    let _ = writeln!(o, "  reload     ok at {}", fmt_time(r.at));
                    for n in &r.notes {
                        let _ = writeln!(o, "             {n}");
                    }
                }
                (false, e) => {
                    let _ = writeln!(
                        o,
                        "  reload     REJECTED at {}: {} (previous configuration kept)",
                        fmt_time(r.at),
                        e.as_deref().unwrap_or("unknown error").replace('\n', "; ")
                    );
                }
            }
        }
        let _ = writeln!(o, "  events     {:.1}/s ({} total)", self.events_per_sec, self.events_total);
        let _ = writeln!(
            o,
            "  drops      kernel {}, user {}, exporter {}",
            self.drops.kernel, self.drops.user, self.drops.exporter
        );
        let e = &self.exporter;
        let _ = write!(o, "  exporter   {}", if e.state.is_empty() { "unknown" } else { &e.state });
        if let Some(ep) = &e.endpoint {
            let _ = write!(o, " -> {ep}");
        }
        let _ = write!(o, ", spool {}", fmt_bytes(e.spool_bytes));
        if let Some(err) = &e.last_error {
            let _ = write!(o, ", last error: {err}");
        }
        o.push('\n');

        if self.manage_everything {
            let _ = writeln!(
                o,
                "\nServices (every service on the host is managed; {} seen):",
                self.services.len()
            );
        } else {
            let _ = writeln!(o, "\nServices ({}):", self.services.len());
        }
        if self.services.is_empty() {
            o.push_str("  (none)\n");
        }
        for s in &self.services {
            let health = match s.healthy {
                Some(true) => "healthy",
                Some(false) => "UNHEALTHY",
                None => "no probe",
            };
            let _ = write!(o, "  {:<20} {:<18} {:<9}", s.name, s.state.as_deref().unwrap_or("-"), health);
            if let Some(u) = &s.unit {
                let _ = write!(o, "  [{u}]");
            }
            if let Some(d) = &s.detail {
                let _ = write!(o, "  {d}");
            }
            o.push('\n');
            if s.paused {
                let until = s.paused_until.map(fmt_time).unwrap_or_else(|| "`custos resume`".into());
                let _ = writeln!(
                    o,
                    "  {:<20} PAUSED until {until}: runbooks decide and audit, act on nothing",
                    ""
                );
            }
            if s.stopped_on_request {
                let _ = writeln!(o, "  {:<20} stopped on request: service_down leaves it so", "");
            }
            if let Some(e) = &s.last_exit {
                let _ = writeln!(
                    o,
                    "  {:<20} last exit {} (pid {}) at {}",
                    "",
                    e.describe(),
                    e.pid,
                    fmt_time(e.at)
                );
            }
            if let Some(p) = &s.in_progress {
                let _ = writeln!(o, "  {:<20} now: {p}", "");
            }
        }

        let _ = writeln!(o, "\nRunbooks ({}):", self.runbooks.len());
        if self.runbooks.is_empty() {
            o.push_str("  (none)\n");
        }
        for r in &self.runbooks {
            let _ = write!(
                o,
                "  {:<24} service {:<16} step {}/{}  {}",
                r.name,
                r.service,
                r.ladder_position,
                r.ladder_steps,
                if r.state.is_empty() { "armed" } else { &r.state }
            );
            if !r.next_action.is_empty() {
                let _ = write!(o, "  next: {}", r.next_action);
            }
            if r.held {
                o.push_str("  (a firing is held)");
            }
            o.push('\n');
            if let Some(p) = &r.in_progress {
                let _ = writeln!(o, "  {:<24} now: {p}", "");
            }
            if r.counts != RunbookCounts::default() {
                let _ = writeln!(o, "  {:<24} {}", "", r.counts.describe());
            }
        }
        if !self.skipped_runbooks.is_empty() {
            let _ = writeln!(o, "\nRunbooks skipped at start ({}):", self.skipped_runbooks.len());
            for k in &self.skipped_runbooks {
                let _ = writeln!(o, "  {}", k.error.replace('\n', "; "));
            }
        }
        if !self.runbooks.is_empty() {
            let _ = writeln!(o, "\nRunbook totals: {}", self.runbook_counts.describe());
        }

        let learning = self.detection.iter().filter(|d| d.points <= d.alarm_warmup).count();
        let _ = writeln!(o, "\nDetection ({} series, {learning} warming up):", self.detection.len());
        if self.detection.is_empty() {
            o.push_str("  (none)\n");
        }
        for d in &self.detection {
            let state = if d.points <= d.alarm_warmup {
                format!("warming up, {}/{} points", d.points, d.alarm_warmup)
            } else {
                format!("watching, {} points, score {:.2}", d.points, d.score)
            };
            let _ = writeln!(o, "  {:<20} {:<32} {state}", d.service, d.metric);
        }

        let _ = writeln!(o, "\nLast actions ({}):", self.last_actions.len());
        if self.last_actions.is_empty() {
            o.push_str("  (none)\n");
        }
        for a in &self.last_actions {
            let _ = writeln!(
                o,
                "  {}  {:<16} {:<24} {:<12} {}",
                fmt_time(a.at),
                a.service,
                a.runbook,
                a.action,
                a.outcome
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusSnapshot {
        StatusSnapshot {
            version: "0.1.0".into(),
            pid: 4242,
            started_at: 1_700_000_000,
            uptime_secs: 3725,
            state: AgentState::Running,
            config_path: Some("/etc/custos/custos.yaml".into()),
            services: vec![
                ServiceHealth {
                    name: "api".into(),
                    unit: Some("api.service".into()),
                    state: Some("active".into()),
                    healthy: Some(true),
                    detail: None,
                    last_exit: Some(ExitStatus {
                        at: 1_700_002_500,
                        pid: 77,
                        code: None,
                        signal: Some("SIGTERM".into()),
                        cause: Some("restart_requested".into()),
                    }),
                    paused: true,
                    paused_until: Some(1_700_005_000),
                    stopped_on_request: false,
                    in_progress: Some("step 2 of 4 (restart) of api-crash-loop: verifying until x".into()),
                },
                ServiceHealth {
                    name: "db".into(),
                    unit: Some("db.service".into()),
                    state: Some("failed".into()),
                    healthy: Some(false),
                    detail: Some("http 503".into()),
                    ..Default::default()
                },
            ],
            events_per_sec: 12.5,
            events_total: 9000,
            drops: Drops { kernel: 3, user: 1, exporter: 0 },
            exporter: ExporterStatus {
                state: "spooling".into(),
                endpoint: Some("http://127.0.0.1:4317".into()),
                spool_bytes: 3 * 1024 * 1024,
                last_error: Some("connection refused".into()),
            },
            runbooks: vec![RunbookStatus {
                name: "api-crash-loop".into(),
                service: "api".into(),
                ladder_position: 2,
                ladder_steps: 4,
                state: "cooldown".into(),
                next_action: "exec".into(),
                in_progress: None,
                held: true,
                counts: RunbookCounts { firings: 5, actions: 2, suppressions: 3, ..Default::default() },
            }],
            skipped_runbooks: vec![SkippedRunbook {
                source: "/etc/custos/runbooks/bad.yaml".into(),
                error: "/etc/custos/runbooks/bad.yaml:3:1: unknown field `stpes`".into(),
            }],
            runbook_counts: RunbookCounts { firings: 5, actions: 2, suppressions: 3, ..Default::default() },
            manage_everything: false,
            last_actions: vec![ActionRecord {
                at: 1_700_003_000,
                runbook: "api-crash-loop".into(),
                service: "api".into(),
                action: "restart".into(),
                outcome: "ok".into(),
            }],
            last_reload: Some(ReloadRecord {
                at: 1_700_002_000,
                ok: false,
                error: Some("/etc/custos/custos.yaml:3:5: unknown field `bogus`".into()),
                notes: vec![],
            }),
            detection: vec![
                SeriesLearning {
                    service: "api".into(),
                    metric: "custos.process.crashes".into(),
                    points: 1500,
                    alarm_warmup: 720,
                    score: 0.0625,
                },
                SeriesLearning {
                    service: "db".into(),
                    metric: "custos.tcp.connect.duration".into(),
                    points: 42,
                    alarm_warmup: 720,
                    score: 0.0,
                },
            ],
        }
    }

    #[test]
    fn renders_every_section() {
        let t = sample().render_text();
        assert!(t.starts_with("custos 0.1.0 (pid 4242): running\n"), "{t}");
        assert!(t.contains("up 1h 2m 5s"), "{t}");
        assert!(t.contains("config     /etc/custos/custos.yaml"), "{t}");
        assert!(
            t.contains("REJECTED at 2023-11-14T22:46:40Z: /etc/custos/custos.yaml:3:5: unknown field"),
            "{t}"
        );
        assert!(t.contains("events     12.5/s (9000 total)"), "{t}");
        assert!(t.contains("drops      kernel 3, user 1, exporter 0"), "{t}");
        assert!(
            t.contains(
                "exporter   spooling -> http://127.0.0.1:4317, spool 3.0 MiB, last error: connection refused"
            ),
            "{t}"
        );
        assert!(
            t.contains("db                   failed             UNHEALTHY  [db.service]  http 503"),
            "{t}"
        );
        assert!(
            t.contains("api-crash-loop           service api              step 2/4  cooldown  next: exec  (a firing is held)"),
            "{t}"
        );
        assert!(
            t.contains("fired 5, acted 2, failed 0, not healed 0, held 0, suppressed 3, breaker opened 0"),
            "{t}"
        );
        assert!(
            t.contains("PAUSED until 2023-11-14T23:36:40Z: runbooks decide and audit, act on nothing"),
            "{t}"
        );
        assert!(t.contains("last exit SIGTERM, restart_requested (pid 77) at 2023-11-14T22:55:00Z"), "{t}");
        assert!(t.contains("now: step 2 of 4 (restart) of api-crash-loop: verifying"), "{t}");
        assert!(
            t.contains("Runbooks skipped at start (1):\n  /etc/custos/runbooks/bad.yaml:3:1: unknown field"),
            "{t}"
        );
        assert!(t.contains("2023-11-14T23:03:20Z  api"), "{t}");
        assert!(t.contains("Detection (2 series, 1 warming up):"), "{t}");
        assert!(
            t.contains(
                "api                  custos.process.crashes           watching, 1500 points, score 0.06"
            ),
            "{t}"
        );
        assert!(
            t.contains("db                   custos.tcp.connect.duration      warming up, 42/720 points"),
            "{t}"
        );
    }

    #[test]
    fn manage_everything_counts_the_services_seen() {
        let mut s = sample();
        s.manage_everything = true;
        assert!(s.summary_line().starts_with("running: all services (2 seen),"), "{}", s.summary_line());
        assert!(s.render_text().contains("Services (every service on the host is managed; 2 seen):"));
    }

    #[test]
    fn renders_an_empty_agent() {
        let t = StatusSnapshot { version: "0.1.0".into(), ..Default::default() }.render_text();
        assert!(t.contains("Services (0):\n  (none)"), "{t}");
        assert!(t.contains("Runbooks (0):\n  (none)"), "{t}");
        assert!(t.contains("Detection (0 series, 0 warming up):\n  (none)"), "{t}");
        assert!(t.contains("exporter   unknown"), "{t}");
    }

    #[test]
    fn summary_line_is_one_short_line() {
        let s = sample().summary_line();
        assert_eq!(
            s,
            "running: 2 services, 12 events/s, drops 3 kernel 1 user, exporter spooling (spool 3.0 MiB)"
        );
    }

    #[test]
    fn json_round_trips_and_tolerates_missing_fields() {
        let s = sample();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StatusSnapshot>(&j).unwrap(), s);
        let partial: StatusSnapshot = serde_json::from_str(r#"{"version":"9","state":"stopping"}"#).unwrap();
        assert_eq!(partial.state, AgentState::Stopping);
        assert!(partial.services.is_empty());
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
