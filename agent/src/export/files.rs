//! Local OTLP/JSON files: the embedded default when no collector endpoint
//! is configured. One export request per line, one file series per signal
//! (`metrics-<ms>.jsonl`, `logs-<ms>.jsonl`), rotated by size, the oldest
//! beyond `max_files` deleted. The collector's `otlpjsonfile` receiver reads
//! them as they are, so every line must be whole: a write cut short (a full
//! disk) is cut off again before the next one, and a partial last line a
//! crash left is set aside at start. Files are 0600 (they hold every
//! process's argv).

use super::spool::BatchKind;
use crate::fsutil::WriteFailures;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write OTLP/JSON file {}: {source}", path.display())]
pub struct FileSinkError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

#[derive(Debug)]
struct Series {
    prefix: &'static str,
    current: Option<(PathBuf, File, u64)>,
    /// Number in the newest file name used or found, so that names keep
    /// increasing even when files rotate within a millisecond, after pruning
    /// freed older names, or when the clock steps back.
    last: Option<u64>,
}

/// Rotating JSON-lines files for metrics and logs.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
    metrics: Series,
    logs: Series,
    failures: WriteFailures,
}

impl FileSink {
    pub fn new(dir: &Path, max_file_bytes: u64, max_files: usize) -> Result<Self, FileSinkError> {
        crate::fsutil::create_private_dir(dir)
            .map_err(|source| FileSinkError { path: dir.to_path_buf(), source })?;
        for prefix in ["metrics", "logs"] {
            let newest = newest_number(dir, prefix);
            if newest == 0 {
                continue;
            }
            let path = dir.join(format!("{prefix}-{newest:015}.jsonl"));
            match crate::fsutil::repair_torn_line(&path) {
                Ok(Some(aside)) => {
                    tracing::warn!(file = %path.display(), set_aside = %aside.display(), "Set aside a partial last line of an OTLP/JSON file (a write a crash cut short).")
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "Could not check an OTLP/JSON file for a partial last line.")
                }
            }
        }
        Ok(FileSink {
            dir: dir.to_path_buf(),
            max_file_bytes,
            max_files: max_files.max(1),
            metrics: Series { prefix: "metrics", current: None, last: None },
            logs: Series { prefix: "logs", current: None, last: None },
            failures: WriteFailures::default(),
        })
    }

    /// Writes that failed; the first of each kind of error since the last
    /// success is logged by [`FileSink::write_logged`].
    pub fn failures(&self) -> u64 {
        self.failures.count()
    }

    /// [`FileSink::write`], logging a failure once per kind of error (a
    /// full disk fails every batch alike) until a write succeeds again.
    pub fn write_logged(&mut self, kind: BatchKind, line: &str) -> Result<(), FileSinkError> {
        match self.write(kind, line) {
            Ok(()) => {
                if self.failures.succeeded() {
                    tracing::info!(dir = %self.dir.display(), failed = self.failures.count(), "Local OTLP/JSON telemetry is written again.");
                }
                Ok(())
            }
            Err(e) => {
                if self.failures.record(&e.source) {
                    tracing::error!(error = %e, "Could not write local OTLP/JSON telemetry (reported once per kind of error; counted in export_failures).");
                }
                Err(e)
            }
        }
    }

    /// Appends one request line (without newline) and syncs it to disk.
    pub fn write(&mut self, kind: BatchKind, line: &str) -> Result<(), FileSinkError> {
        let (dir, max_file_bytes, max_files) = (self.dir.clone(), self.max_file_bytes, self.max_files);
        let series = match kind {
            BatchKind::Metrics => &mut self.metrics,
            BatchKind::Logs => &mut self.logs,
        };
        let needs_new = match &series.current {
            None => true,
            Some((_, _, size)) => *size > 0 && size + line.len() as u64 + 1 > max_file_bytes,
        };
        if needs_new {
            let last = *series.last.get_or_insert_with(|| newest_number(&dir, series.prefix));
            let (path, n) = new_file_name(&dir, series.prefix, last);
            series.last = Some(n);
            let f = crate::fsutil::open_private_append(&path)
                .map_err(|source| FileSinkError { path: path.clone(), source })?;
            series.current = Some((path, f, 0));
            prune(&dir, series.prefix, max_files);
        }
        let Some((path, f, size)) = series.current.as_mut() else { return Ok(()) };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if let Err(source) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            // A partial line would make the rest of the file unreadable to
            // the collector: cut it off, or failing that start a new file.
            let err = FileSinkError { path: path.clone(), source };
            if f.set_len(*size).is_err() {
                series.current = None;
            }
            return Err(err);
        }
        *size += line.len() as u64 + 1;
        Ok(())
    }
}

fn file_number(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_prefix('-')?.strip_suffix(".jsonl")?.parse().ok()
}

fn newest_number(dir: &Path, prefix: &str) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten().filter_map(|e| file_number(e.file_name().to_str()?, prefix)).max().unwrap_or(0)
}

/// A new file name after `after`: the current millisecond, or the next
/// number when that is not later. Names sort by time.
fn new_file_name(dir: &Path, prefix: &str, after: u64) -> (PathBuf, u64) {
    let ms = custos_event::unix_nanos(std::time::SystemTime::now()) / 1_000_000;
    let mut n = ms.max(after + 1);
    loop {
        let p = dir.join(format!("{prefix}-{n:015}.jsonl"));
        if !p.exists() {
            return (p, n);
        }
        n += 1;
    }
}

fn prune(dir: &Path, prefix: &str, keep: usize) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")) && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    while files.len() > keep {
        let old = files.remove(0);
        if let Err(e) = fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "Could not delete a rotated OTLP/JSON file.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileSink::new(dir.path(), 100, 2).unwrap();
        for i in 0..10 {
            s.write(BatchKind::Metrics, &format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(40))).unwrap();
        }
        s.write(BatchKind::Logs, "{}").unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let metrics: Vec<_> = names.iter().filter(|n| n.starts_with("metrics-")).collect();
        assert_eq!(metrics.len(), 2, "{names:?}");
        assert_eq!(names.iter().filter(|n| n.starts_with("logs-")).count(), 1);
        let last = fs::read_to_string(dir.path().join(metrics[1])).unwrap();
        assert!(last.ends_with("\"n\":9,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n"), "{last}");
        for l in last.lines() {
            assert!(l.len() < 100);
        }
    }

    #[test]
    fn a_partial_last_line_left_by_a_crash_is_set_aside_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileSink::new(dir.path(), 1 << 20, 4).unwrap();
        s.write(BatchKind::Logs, "{\"resourceLogs\":[]}").unwrap();
        drop(s);
        let file = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"{\"resourceLo").unwrap();
        let mut s = FileSink::new(dir.path(), 1 << 20, 4).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "{\"resourceLogs\":[]}\n", "only whole lines stay");
        s.write(BatchKind::Logs, "{}").unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().any(|n| n.contains(".torn-")), "{names:?}");
        for n in names.iter().filter(|n| n.ends_with(".jsonl")) {
            for line in fs::read_to_string(dir.path().join(n)).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
    }
}
