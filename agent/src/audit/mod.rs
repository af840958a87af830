//! The audit log: every runbook firing, decision, action, outcome,
//! verification and suppression, as append-only JSON lines in the state
//! directory. Each record carries the SHA-256 of the previous record's line,
//! so editing, removing or reordering records breaks the chain and
//! `custos audit verify` finds the first broken one. Files rotate by size;
//! the chain continues across files (`audit.1.jsonl` is the oldest,
//! `audit.jsonl` the current one).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::SystemTime;

/// The hash a chain starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const CURRENT: &str = "audit.jsonl";
/// Default rotation size.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A trigger fired.
    Firing,
    /// The engine chose what to do (step n, or nothing and why).
    Decision,
    /// An action started.
    Action,
    /// An action finished (ok or error, output).
    Outcome,
    /// The service was checked after an action: healed or not.
    Verification,
    /// A firing was not acted on (cooldown, breaker, busy, dry-run).
    Suppression,
    /// The circuit breaker opened or closed.
    Breaker,
    /// The engine loaded or reloaded runbooks.
    Lifecycle,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Firing => "firing",
            AuditKind::Decision => "decision",
            AuditKind::Action => "action",
            AuditKind::Outcome => "outcome",
            AuditKind::Verification => "verification",
            AuditKind::Suppression => "suppression",
            AuditKind::Breaker => "breaker",
            AuditKind::Lifecycle => "lifecycle",
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, continuing across rotated files.
    pub seq: u64,
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    pub kind: AuditKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runbook: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// A sentence for humans.
    pub message: String,
    /// Structured details (the event, the step, the output...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    pub dry_run: bool,
    /// SHA-256 (hex) of the previous record's line, or `GENESIS`.
    pub prev: String,
}

/// A record before it is chained.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub kind: AuditKind,
    pub runbook: String,
    pub service: String,
    pub message: String,
    pub details: serde_json::Value,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot write the audit log in {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

struct Inner {
    file: File,
    size: u64,
    prev: String,
    seq: u64,
}

/// The append-only, hash-chained audit log.
pub struct AuditLog {
    dir: PathBuf,
    max_file_bytes: u64,
    inner: Mutex<Inner>,
    subscribers: Mutex<Vec<SyncSender<AuditRecord>>>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, continuing the chain found there.
    pub fn open(dir: &Path, max_file_bytes: u64) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io { dir: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let files = chain_files(dir).map_err(io)?;
        let (mut prev, mut seq) = (GENESIS.to_string(), 0);
        // The last complete line of the newest non-empty file holds the chain's head.
        for f in files.iter().rev() {
            if let Some(line) = last_line(f).map_err(io)? {
                prev = hash_line(&line);
                seq = serde_json::from_str::<AuditRecord>(&line).map(|r| r.seq).unwrap_or(0);
                break;
            }
        }
        let path = dir.join(CURRENT);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            max_file_bytes: max_file_bytes.max(1024),
            inner: Mutex::new(Inner { file, size, prev, seq }),
            subscribers: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A bounded feed of every record appended from now on (for the OTLP
    /// log exporter). A slow subscriber loses records, counted in `dropped()`;
    /// the file itself never does.
    pub fn subscribe(&self, capacity: usize) -> Receiver<AuditRecord> {
        let (tx, rx) = sync_channel(capacity.max(1));
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Records not delivered to slow subscribers.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends one record and flushes it to the file.
    pub fn append(&self, entry: AuditEntry, ts: SystemTime) -> Result<AuditRecord, AuditError> {
        let io = |source| AuditError::Io { dir: self.dir.display().to_string(), source };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.size >= self.max_file_bytes {
            self.rotate(&mut inner).map_err(io)?;
        }
        let record = AuditRecord {
            seq: inner.seq + 1,
            ts,
            kind: entry.kind,
            runbook: entry.runbook,
            service: entry.service,
            message: entry.message,
            details: entry.details,
            dry_run: entry.dry_run,
            prev: inner.prev.clone(),
        };
        let line = serde_json::to_string(&record).unwrap_or_default();
        let mut buf = line.clone().into_bytes();
        buf.push(b'\n');
        inner.file.write_all(&buf).map_err(io)?;
        inner.file.flush().map_err(io)?;
        inner.size += buf.len() as u64;
        inner.prev = hash_line(&line);
        inner.seq = record.seq;
        drop(inner);
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|tx| match tx.try_send(record.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        Ok(record)
    }

    fn rotate(&self, inner: &mut Inner) -> std::io::Result<()> {
        inner.file.sync_all()?;
        let next = chain_files(&self.dir)?.len(); // rotated files + current
        std::fs::rename(self.dir.join(CURRENT), self.dir.join(format!("audit.{next}.jsonl")))?;
        inner.file = OpenOptions::new().create(true).append(true).open(self.dir.join(CURRENT))?;
        inner.size = 0;
        Ok(())
    }
}

/// SHA-256 of one line (without its newline), hex.
pub fn hash_line(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// The chain's files, oldest first: `audit.1.jsonl`, `audit.2.jsonl`..., `audit.jsonl`.
pub fn chain_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut rotated = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix("audit.").and_then(|s| s.strip_suffix(".jsonl")) {
            if let Ok(n) = n.parse::<u64>() {
                rotated.push(n);
            }
        }
    }
    rotated.sort_unstable();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|n| dir.join(format!("audit.{n}.jsonl"))).collect();
    let current = dir.join(CURRENT);
    if current.exists() {
        files.push(current);
    }
    Ok(files)
}

fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut last = None;
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    Ok(last)
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "record {seq}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// A verified chain's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub files: usize,
    pub records: u64,
}

/// Checks the chain in `dir`: every record parses, its `prev` is the hash of
/// the line before it (across files) and `seq` increases by one.
pub fn verify(dir: &Path) -> Result<ChainSummary, ChainBreak> {
    let files = chain_files(dir).map_err(|e| ChainBreak {
        file: dir.to_path_buf(),
        line: 0,
        seq: None,
        reason: format!("cannot list the audit directory: {e}"),
    })?;
    let mut prev = GENESIS.to_string();
    let mut expected_seq = None::<u64>;
    let mut records = 0;
    for file in &files {
        let f = File::open(file).map_err(|e| ChainBreak {
            file: file.clone(),
            line: 0,
            seq: None,
            reason: format!("cannot open: {e}"),
        })?;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let brk = |seq, reason: String| ChainBreak { file: file.clone(), line: i + 1, seq, reason };
            let line = line.map_err(|e| brk(None, format!("cannot read: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let rec: AuditRecord =
                serde_json::from_str(&line).map_err(|e| brk(None, format!("not an audit record: {e}")))?;
            if rec.prev != prev {
                return Err(brk(
                    Some(rec.seq),
                    format!(
                        "hash chain broken: prev is {} but the previous record hashes to {prev}",
                        rec.prev
                    ),
                ));
            }
            if let Some(want) = expected_seq {
                if rec.seq != want {
                    return Err(brk(Some(rec.seq), format!("sequence jumps: expected record {want}")));
                }
            }
            expected_seq = Some(rec.seq + 1);
            prev = hash_line(&line);
            records += 1;
        }
    }
    Ok(ChainSummary { files: files.len(), records })
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_nanos(*t).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(msg: &str) -> AuditEntry {
        AuditEntry {
            kind: AuditKind::Action,
            runbook: "rb".into(),
            service: "api".into(),
            message: msg.into(),
            details: serde_json::json!({"n": msg}),
            dry_run: false,
        }
    }

    #[test]
    fn chain_verifies_across_rotation_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 1024).unwrap();
        for i in 0..40 {
            log.append(entry(&format!("record {i}")), SystemTime::now()).unwrap();
        }
        drop(log);
        let log = AuditLog::open(dir.path(), 1024).unwrap();
        let r = log.append(entry("after reopen"), SystemTime::now()).unwrap();
        assert_eq!(r.seq, 41);
        let s = verify(dir.path()).unwrap();
        assert_eq!(s.records, 41);
        assert!(s.files > 2, "rotation happened: {} files", s.files);
    }

    #[test]
    fn tampering_is_found_at_the_first_broken_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            log.append(entry(&format!("record {i}")), SystemTime::now()).unwrap();
        }
        let path = dir.path().join(CURRENT);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("record 2", "record X", 1)).unwrap();
        let brk = verify(dir.path()).unwrap_err();
        // Record 3 is intact but no longer chains to the edited record 3's predecessor.
        assert_eq!(brk.line, 4, "{brk}");
        assert_eq!(brk.seq, Some(4));
        // Deleting a line breaks it too.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert_eq!(verify(dir.path()).unwrap_err().line, 2);
    }

    #[test]
    fn subscribers_receive_records_and_slow_ones_drop() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        let rx = log.subscribe(2);
        for i in 0..3 {
            log.append(entry(&format!("r{i}")), SystemTime::now()).unwrap();
        }
        assert_eq!(rx.try_recv().unwrap().message, "r0");
        assert_eq!(log.dropped(), 1);
    }
}
