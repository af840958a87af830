//! Where events come from: the platform's kernel sensor, or a recording.
//!
//! The replay sensor reads `custos watch --json` output back, so that every
//! stage after the sensor runs without privileges, on any OS, deterministically.

use custos_event::Event;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// How fast a recording is played back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the pipeline takes them.
    AsFast,
    /// Keeping the recorded gaps between events, divided by `speed`.
    Recorded { speed: f64 },
}

/// Why a sensor could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("cannot read the recording {path}: {source}")]
    ReplayOpen { path: PathBuf, source: std::io::Error },
    #[error("reading the recording {path} failed at line {line}: {source}")]
    ReplayRead { path: PathBuf, line: u64, source: std::io::Error },
    /// The platform's kernel sensor (eBPF, ETW) could not start; the
    /// message says why and what to do.
    #[error("the kernel sensor could not start: {0}")]
    Kernel(String),
}

/// Counters of a replay.
#[derive(Debug, Default)]
pub struct ReplayStats {
    pub read: AtomicU64,
    /// Lines that were not valid events (each logged with its line number).
    pub invalid: AtomicU64,
}

/// Plays a recording into `tx`. Lines that do not parse are skipped with a
/// warning that names the line; everything valid is delivered (a replay waits
/// for room in the channel rather than dropping: it is not a kernel reader).
/// Returns when the file is exhausted or the receiver is gone.
pub async fn replay(
    path: PathBuf,
    pace: Pace,
    tx: mpsc::Sender<Event>,
    stats: Arc<ReplayStats>,
) -> Result<(), SensorError> {
    let file = std::fs::File::open(&path)
        .map_err(|source| SensorError::ReplayOpen { path: path.clone(), source })?;
    let (line_tx, mut line_rx) = mpsc::channel::<(u64, std::io::Result<String>)>(1024);
    // File reads are blocking; a dedicated thread keeps them off the runtime.
    let reader = tokio::task::spawn_blocking(move || {
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let failed = line.is_err();
            if line_tx.blocking_send((i as u64 + 1, line)).is_err() || failed {
                break;
            }
        }
    });
    let mut previous: Option<SystemTime> = None;
    while let Some((lineno, line)) = line_rx.recv().await {
        let line =
            line.map_err(|source| SensorError::ReplayRead { path: path.clone(), line: lineno, source })?;
        if line.trim().is_empty() {
            continue;
        }
        let event = match Event::from_json_line(&line) {
            Ok(e) => e,
            Err(e) => {
                stats.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %path.display(), line = lineno, error = %e, "Skipped a recording line that is not an event.");
                continue;
            }
        };
        if let Pace::Recorded { speed } = pace {
            if let Some(prev) = previous {
                let gap = event.ts.duration_since(prev).unwrap_or_default();
                let wait = gap.div_f64(speed.max(1e-6)).min(Duration::from_secs(60));
                if !wait.is_zero() {
                    // A stopped pipeline closes the channel: stop waiting then.
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tx.closed() => break,
                    }
                }
            }
            previous = Some(event.ts);
        }
        stats.read.fetch_add(1, Ordering::Relaxed);
        if tx.send(event).await.is_err() {
            break;
        }
    }
    drop(line_rx);
    let _ = reader.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn replays_valid_lines_and_counts_invalid_ones() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            r#"{{"kind":"process_start","ts":"2024-01-01T00:00:00Z","pid":1,"exe":"/bin/a","argv":["a"]}}"#
        )
        .unwrap();
        writeln!(f, "not json").unwrap();
        writeln!(f).unwrap();
        writeln!(
            f,
            r#"{{"kind":"process_exit","ts":"2024-01-01T00:00:01Z","pid":1,"exit_code":3,"lifetime_ns":5}}"#
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let stats = Arc::new(ReplayStats::default());
        let task = tokio::spawn(replay(f.path().to_path_buf(), Pace::AsFast, tx, stats.clone()));
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e);
        }
        task.await.unwrap().unwrap();
        assert_eq!(got.len(), 2, "a channel of 1 still delivers everything");
        assert_eq!(got[1].pid, 1);
        assert_eq!(stats.invalid.load(Ordering::Relaxed), 1);
        assert_eq!(stats.read.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_paced_replay_ends_when_the_pipeline_stops() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, r#"{{"kind":"process_start","ts":"2024-01-01T00:00:00Z","pid":1}}"#).unwrap();
        writeln!(f, r#"{{"kind":"process_start","ts":"2024-01-01T00:00:50Z","pid":2}}"#).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(replay(
            f.path().to_path_buf(),
            Pace::Recorded { speed: 1.0 },
            tx,
            Default::default(),
        ));
        assert_eq!(rx.recv().await.unwrap().pid, 1);
        drop(rx);
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(ended.is_ok(), "the replay stops waiting out a 50 s gap once nobody listens");
    }

    #[tokio::test]
    async fn missing_recording_is_a_clear_error() {
        let (tx, _rx) = mpsc::channel(1);
        let e = replay("/nonexistent.jsonl".into(), Pace::AsFast, tx, Default::default()).await.unwrap_err();
        assert!(e.to_string().starts_with("cannot read the recording /nonexistent.jsonl"), "{e}");
    }
}
