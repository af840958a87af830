//! `custos runbook validate|test|graph` and `custos audit verify`.

use super::engine::{Engine, EngineOptions, FakeClock};
use super::model::{load_file, load_paths, Trigger};
use crate::audit::{AuditKind, AuditLog};
use crate::service_manager::{ServiceError, ServiceManager, ServiceStatus};
use custos_event::Event;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum RunbookCommand {
    /// Check runbook files (default: the configured runbooks directory); report every problem with file, line and column.
    Validate { paths: Vec<PathBuf> },
    /// Replay an event through a runbook and print what would happen at each firing, doing nothing.
    Test {
        runbook: PathBuf,
        /// The event, as custos-event JSON (one object).
        #[arg(long)]
        event: PathBuf,
        /// How many firings to show (each after the cooldown of the one before).
        #[arg(long, default_value_t = 3)]
        times: u32,
    },
    /// Print a runbook as a Mermaid flowchart.
    Graph { runbook: PathBuf },
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain and its anchor, segment by segment; report the first broken record of each.
    Verify {
        /// Audit directory (default: <state_dir>/audit).
        dir: Option<PathBuf>,
    },
    /// Close the current chain (usually a broken one) as a sealed segment and start a new one. The agent must be stopped.
    Seal {
        /// Audit directory (default: <state_dir>/audit).
        dir: Option<PathBuf>,
        /// Why, recorded in the seal and the new chain's first record.
        #[arg(long)]
        reason: Option<String>,
    },
}

impl AuditCommand {
    /// The audit directory the command works on.
    pub fn dir(&self, default_dir: &Path) -> PathBuf {
        match self {
            AuditCommand::Verify { dir } | AuditCommand::Seal { dir, .. } => {
                dir.clone().unwrap_or_else(|| default_dir.to_path_buf())
            }
        }
    }
}

/// Runs a `runbook` subcommand; `default_dir` is the configured runbooks
/// dir, `host` the configuration runbooks are checked against and the
/// service manager's view of units.
pub fn run_runbook(
    cmd: RunbookCommand,
    default_dir: &Path,
    host: Option<(&crate::config::LoadedConfig, &crate::service_manager::UnitLookup)>,
) -> anyhow::Result<ExitCode> {
    match cmd {
        RunbookCommand::Validate { paths } => {
            let paths = if paths.is_empty() { vec![default_dir.to_path_buf()] } else { paths };
            let mut report = load_paths(&paths);
            let mut unreachable = None;
            if let Some((c, units)) = host {
                super::model::check_against(&mut report, c, units);
                unreachable = units.unreachable();
            }
            for rb in &report.runbooks {
                let line = format!(
                    "{}: ok (runbook {}, service {}, {} steps)",
                    rb.source,
                    rb.name,
                    rb.service,
                    rb.steps.len()
                );
                println!("{}", crate::terminal::printable(&line));
            }
            for e in &report.errors {
                eprintln!("{}", crate::terminal::printable(&e.to_string()));
            }
            if let Some(why) = unreachable {
                eprintln!("note: services were not checked against the service manager: {why}");
            }
            Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        RunbookCommand::Graph { runbook } => match load_file(&runbook) {
            Ok(rb) => {
                print!("{}", super::graph::mermaid(&rb));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        RunbookCommand::Test { runbook, event, times } => {
            let rb = match load_file(&runbook) {
                Ok(rb) => rb,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let text = std::fs::read_to_string(&event)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", event.display()))?;
            let ev: Event = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a custos event: {e}", event.display()))?;
            print!("{}", simulate(rb, ev, times)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Refuses every call: `runbook test` must never touch a service.
struct NoServiceManager;

impl ServiceManager for NoServiceManager {
    fn name(&self) -> &'static str {
        "none"
    }
    fn status(&self, unit: &str) -> Result<ServiceStatus, ServiceError> {
        Err(ServiceError::Unavailable(format!("runbook test does not query {unit}")))
    }
    fn start(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("runbook test does not start {unit}")))
    }
    fn stop(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("runbook test does not stop {unit}")))
    }
    fn restart(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("runbook test does not restart {unit}")))
    }
    fn reset_failed(&self, unit: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("runbook test does not reset {unit}")))
    }
    fn kill(&self, unit: &str, _signal: i32) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable(format!("runbook test does not signal {unit}")))
    }
}

/// Feeds `event` through the runbook in dry-run with a fake clock until it
/// has fired `times` times (each firing after the previous cooldown), and
/// returns the audit trail as text: what custos would do, step by step.
pub fn simulate(rb: super::model::Runbook, mut event: Event, times: u32) -> anyhow::Result<String> {
    let dir = tempfile_dir()?;
    let audit = Arc::new(AuditLog::open(&dir.join("audit"), crate::audit::DEFAULT_MAX_FILE_BYTES)?);
    let rx = audit.subscribe(100_000);
    let clock = Arc::new(FakeClock::new(event.ts));
    let mut opts = EngineOptions::new(&dir);
    opts.dry_run = true;
    opts.inline = true;
    let service = rb.service.clone();
    event.service = Some(service.clone());
    let per_firing = match &rb.trigger {
        Trigger::Event { count, .. } => (*count).max(1),
        _ => 1,
    };
    let gap =
        rb.cooldown + rb.steps.iter().map(|s| s.delay).max().unwrap_or_default() + Duration::from_secs(1);
    let uses_events = matches!(rb.trigger, Trigger::Event { .. })
        || matches!(&rb.trigger, Trigger::All(_) | Trigger::Any(_));
    let engine =
        Engine::new(vec![rb.clone()], Arc::new(NoServiceManager), audit.clone(), clock.clone(), opts)?;
    let mut out = String::new();
    if !uses_events {
        out.push_str(&format!(
            "note: runbook {} triggers on {}, not on events; the event is fed anyway\n",
            rb.name,
            rb.trigger.describe()
        ));
    }
    for firing in 1..=times {
        out.push_str(&format!("firing {firing}:\n"));
        for _ in 0..per_firing {
            event.ts = clock_now(&clock);
            engine.on_event(&event);
            clock.advance(Duration::from_secs(1));
        }
        engine.wait_idle();
        let mut any = false;
        while let Ok(r) = rx.try_recv() {
            if r.kind == AuditKind::Lifecycle {
                continue;
            }
            any = true;
            out.push_str(&format!("  {:<12} {}\n", r.kind.as_str(), r.message));
            if r.kind == AuditKind::Action {
                if let Some(w) = r.details.get("would") {
                    out.push_str(&format!("  {:<12} {}\n", "", w));
                }
            }
        }
        if !any {
            out.push_str("  (the trigger did not fire)\n");
        }
        clock.advance(gap);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn clock_now(c: &FakeClock) -> std::time::SystemTime {
    use super::engine::Clock;
    c.now()
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("custos-runbook-test-{}-{n}", std::process::id()));
    // A leftover from a crashed run with a reused pid must not leak state in.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One segment's line in `custos audit verify`.
fn segment_line(s: &crate::audit::Segment) -> String {
    let what = match &s.seal {
        None => "current chain".to_string(),
        Some(seal) => format!(
            "sealed {} by {}{} ({})",
            humantime::format_rfc3339_seconds(seal.sealed_at),
            match seal.by {
                crate::audit::SealedBy::Operator => "custos audit seal",
                crate::audit::SealedBy::Agent => "the agent",
            },
            if seal.acknowledged { "" } else { ", not yet acknowledged by custos audit seal" },
            seal.reason
        ),
    };
    match &s.result {
        Ok(c) => {
            let mut line = format!(
                "{}: ok, {what}: records {} to {} in {} files, anchored at {}",
                s.dir.display(),
                c.first_seq,
                c.last_seq,
                c.files,
                c.anchored_seq
            );
            if c.torn_bytes > 0 {
                line.push_str(&format!("; {} bytes of an unfinished last line are no record", c.torn_bytes));
            }
            if !c.set_aside.is_empty() {
                line.push_str(&format!("; {} torn writes set aside", c.set_aside.len()));
            }
            line
        }
        Err(b) => format!("{}: BROKEN, {what}: {b}", s.dir.display()),
    }
}

/// `custos audit verify` and `custos audit seal`. `seal` needs the state
/// directory's lock, which the caller holds.
pub fn run_audit(cmd: AuditCommand, default_dir: &Path) -> anyhow::Result<ExitCode> {
    let dir = cmd.dir(default_dir);
    match cmd {
        AuditCommand::Verify { .. } => match crate::audit::verify_all(&dir) {
            Ok(segments) => {
                let failed = segments.iter().filter(|s| s.fails()).count();
                for s in &segments {
                    if s.fails() {
                        eprintln!("{}", crate::terminal::printable(&segment_line(s)));
                    } else {
                        println!("{}", crate::terminal::printable(&segment_line(s)));
                    }
                }
                if failed > 0 {
                    eprintln!("custos: {failed} broken segment(s); after investigating, `custos audit seal` closes the chain and starts a new one");
                }
                Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            Err(b) => {
                eprintln!("{b}");
                Ok(ExitCode::FAILURE)
            }
        },
        AuditCommand::Seal { reason, .. } => {
            if !dir.is_dir() {
                anyhow::bail!("{}: no audit log to seal", dir.display());
            }
            let state = match crate::audit::verify(&dir) {
                Ok(c) => format!("intact, records {} to {}", c.first_seq, c.last_seq),
                Err(b) => format!("broken: {b}"),
            };
            let reason = match reason {
                Some(r) => format!("{r}; the chain was {state}"),
                None => format!("the chain was {state}"),
            };
            let sealed = crate::audit::seal(&dir, crate::audit::SealedBy::Operator, &reason)?;
            let log = AuditLog::open(&dir, crate::audit::DEFAULT_MAX_FILE_BYTES)?;
            log.record_seal(&sealed, &reason, crate::audit::SealedBy::Operator)?;
            drop(log);
            println!("{}: sealed ({reason}); a new chain starts in {}", sealed.display(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
