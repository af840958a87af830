//! Local OTLP/JSON files: the embedded default when no collector endpoint
//! is configured. One export request per line, one file series per signal
//! (`metrics-<ms>.jsonl`, `logs-<ms>.jsonl`), rotated by size, the oldest
//! beyond `max_files` deleted. The collector's `otlpjsonfile` receiver reads
//! them as they are.

use super::spool::BatchKind;
use std::fs::{self, File, OpenOptions};
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
}

impl FileSink {
    pub fn new(dir: &Path, max_file_bytes: u64, max_files: usize) -> Result<Self, FileSinkError> {
        fs::create_dir_all(dir).map_err(|source| FileSinkError { path: dir.to_path_buf(), source })?;
        Ok(FileSink {
            dir: dir.to_path_buf(),
            max_file_bytes,
            max_files: max_files.max(1),
            metrics: Series { prefix: "metrics", current: None, last: None },
            logs: Series { prefix: "logs", current: None, last: None },
        })
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
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| FileSinkError { path: path.clone(), source })?;
            series.current = Some((path, f, 0));
            prune(&dir, series.prefix, max_files);
        }
        let Some((path, f, size)) = series.current.as_mut() else { return Ok(()) };
        let res = (|| {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_data()
        })();
        res.map_err(|source| FileSinkError { path: path.clone(), source })?;
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
}
