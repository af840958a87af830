//! The agent's own logs: to journald over its native protocol (structured
//! fields, priorities) when stderr is the journal stream systemd gave us,
//! else to stderr as text or JSON lines. The level can change on reload.

use crate::config::LogFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr(LogFormat),
}

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level `{level}`: {detail}")]
    Level { level: String, detail: String },
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// True when stderr is the stream named by `JOURNAL_STREAM` (`dev:ino`),
/// which systemd sets for services whose output goes to the journal. A
/// child that inherited the variable but not the descriptor sees no match.
pub fn stderr_is_journal() -> bool {
    #[cfg(unix)]
    {
        let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
        let Some((dev, ino)) = parse_journal_stream(&v) else { return false };
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: fd 2 is queried into a valid, writable stat buffer.
        if unsafe { libc::fstat(2, &mut st) } != 0 {
            return false;
        }
        // st_dev/st_ino widths differ between Unix platforms.
        #[allow(clippy::unnecessary_cast)]
        let same = st.st_dev as u64 == dev && st.st_ino as u64 == ino;
        same
    }
    #[cfg(not(unix))]
    {
        false
    }
}

#[cfg(unix)]
fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Chooses the target: journald under systemd (unless `format` was asked
/// for explicitly on the command line), else stderr in `format`.
pub fn choose_target(format: LogFormat, format_forced: bool, journal: bool) -> LogTarget {
    if journal && !format_forced {
        LogTarget::Journald
    } else {
        LogTarget::Stderr(format)
    }
}

/// Changes the level of the installed logger (on reload).
#[derive(Clone)]
pub struct LoggingHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    pub target: LogTarget,
}

impl LoggingHandle {
    pub fn set_level(&self, level: &str) -> Result<(), LoggingError> {
        let f = parse_filter(level)?;
        self.filter.reload(f).map_err(|_| LoggingError::AlreadyInstalled)
    }
}

fn parse_filter(level: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::try_new(level)
        .map_err(|e| LoggingError::Level { level: level.to_string(), detail: e.to_string() })
}

/// A log output a platform adds beside the main one (the Windows Event Log).
pub type PlatformLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global logger. `format_forced`: `--log-format` was given,
/// which wins over journald (e.g. to read JSON from `journalctl -o cat`).
/// `platform` gets every record the main output gets, at the same level.
pub fn init(
    level: &str,
    format: LogFormat,
    format_forced: bool,
    platform: Option<PlatformLayer>,
) -> Result<LoggingHandle, LoggingError> {
    let (filter, handle) = reload::Layer::new(parse_filter(level)?);
    let mut target = choose_target(format, format_forced, stderr_is_journal());
    let output: Box<dyn Layer<Registry> + Send + Sync> = match target {
        #[cfg(target_os = "linux")]
        LogTarget::Journald => match tracing_journald::layer() {
            // Fields arrive as CUSTOS_<NAME> (CUSTOS_ERROR, CUSTOS_SERVICE...):
            // `journalctl -u custos CUSTOS_SERVICE=api` filters on them.
            Ok(l) => {
                Box::new(l.with_syslog_identifier("custos".into()).with_field_prefix(Some("CUSTOS".into())))
            }
            Err(e) => {
                eprintln!("custos: journald socket unavailable ({e}); logging to stderr");
                target = LogTarget::Stderr(format);
                stderr_layer(format)
            }
        },
        #[cfg(not(target_os = "linux"))]
        LogTarget::Journald => {
            target = LogTarget::Stderr(format);
            stderr_layer(format)
        }
        LogTarget::Stderr(f) => stderr_layer(f),
    };
    // The filter is the output's own (per-layer), which is the form that
    // a reload handle over a boxed layer can change later.
    let outputs: Vec<PlatformLayer> = std::iter::once(output).chain(platform).collect();
    tracing_subscriber::registry()
        .with(outputs.with_filter(filter))
        .try_init()
        .map_err(|_| LoggingError::AlreadyInstalled)?;
    Ok(LoggingHandle { filter: handle, target })
}

fn stderr_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(std::io::stderr),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parsing() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream(" 8:1\n"), Some((8, 1)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:b"), None);
    }

    #[test]
    fn target_choice() {
        assert_eq!(choose_target(LogFormat::Text, false, true), LogTarget::Journald);
        assert_eq!(choose_target(LogFormat::Json, true, true), LogTarget::Stderr(LogFormat::Json));
        assert_eq!(choose_target(LogFormat::Json, false, false), LogTarget::Stderr(LogFormat::Json));
    }

    #[cfg(unix)]
    #[test]
    fn journal_stream_must_match_stderr() {
        // Whatever stderr is in the test run, a made-up dev:ino does not match it.
        std::env::set_var("JOURNAL_STREAM", "0:1");
        assert!(!stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!stderr_is_journal());
    }

    #[test]
    fn bad_level_is_reported() {
        assert!(matches!(parse_filter("info,=x=y"), Err(LoggingError::Level { .. })));
    }
}
