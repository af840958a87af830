//! The audit log: every runbook firing, decision, action, outcome,
//! verification and suppression, as append-only JSON lines in the state
//! directory. Each record carries the SHA-256 of the previous record's line,
//! so editing, removing or reordering records breaks the chain and
//! `custos audit verify` finds the first broken one; the anchor beside the
//! log (`anchor.rs`) names the last record, so a cut tail is found too.
//! Files rotate by size and the chain continues across them (`audit.N.jsonl`
//! in the order of N, then `audit.jsonl`, the current one); retention
//! deletes the oldest beyond a total size or an age, and the anchor's base
//! says where the kept part of the chain starts.
//!
//! One writer: the agent holds the state directory's lock. A record a crash
//! or a full disk tore is set aside at the next open and the chain goes on
//! from the last whole record. A chain found cut at open (its anchor names
//! a record the log no longer holds) is sealed as a segment of its own
//! (`verify.rs`) and a new chain starts, so that the evidence stays and the
//! agent goes on recording.
mod anchor;
mod verify;

pub use anchor::{Anchor, ANCHOR_FILE};
pub use verify::{
    seal, sealed_segments, verify, verify_all, ChainBreak, ChainSummary, Seal, SealedBy, Segment,
};

use crate::fsutil::WriteFailures;
use anchor::AnchorFile;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

/// The hash a chain starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const CURRENT: &str = "audit.jsonl";
/// Default rotation size.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Default budget of the whole log (rotated files and the current one).
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// The current file's tail read at open to find the chain's head.
const HEAD_WINDOW: u64 = 64 * 1024 * 1024;

/// How large the log may grow and how long records are kept. Sealed
/// segments are the operator's to keep or delete and are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The current file is rotated at this size.
    pub max_file_bytes: u64,
    /// Beyond this total, the oldest rotated files are deleted.
    pub max_total_bytes: u64,
    /// Rotated files last written longer ago than this are deleted.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_age: None,
        }
    }
}

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
    /// A failed write left a partial line that could not be cut off: the
    /// next record starts on a new line (the partial one is set aside at
    /// the next open).
    needs_newline: bool,
    /// Records written since the anchor last named one.
    dirty: bool,
    closed: bool,
}

/// What the writer and the anchoring thread share.
struct Shared {
    dir: PathBuf,
    inner: Mutex<Inner>,
    wake: Condvar,
    anchor: Mutex<AnchorFile>,
    failures: WriteFailures,
}

/// Records are anchored in groups: a record's line is written at once,
/// then within this delay its file is synced and the anchor names the
/// newest record. A sync per record would add two disk flushes to every
/// step of a heal; the anchor only ever names records already durable, so
/// it may lag the log but never lead it.
const ANCHOR_DELAY: Duration = Duration::from_millis(50);

/// The append-only, hash-chained audit log.
pub struct AuditLog {
    retention: Retention,
    shared: Arc<Shared>,
    subscribers: Mutex<Vec<SyncSender<AuditRecord>>>,
    dropped: AtomicU64,
    anchoring: Option<std::thread::JoinHandle<()>>,
}

/// The last whole record of a chain, as found at open.
struct Head {
    seq: u64,
    hash: String,
    /// The `prev` it carries.
    prev: String,
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, continuing the chain found there,
    /// with `max_file_bytes` files and the default retention otherwise.
    pub fn open(dir: &Path, max_file_bytes: u64) -> Result<Self, AuditError> {
        Self::open_with(dir, Retention { max_file_bytes, ..Retention::default() })
    }

    /// Opens (creating) the log in `dir` under `retention`: sets aside a
    /// torn tail, continues the chain from its last whole record, and seals
    /// a chain whose anchor names records it no longer holds.
    pub fn open_with(dir: &Path, retention: Retention) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io { dir: dir.display().to_string(), source };
        crate::fsutil::create_private_dir(dir).map_err(io)?;
        let anchor = match anchor::read(dir) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "Audit anchor unreadable: sealing the chain it anchored.");
                let reason = format!("the anchor is unreadable ({e})");
                return Self::reopen_sealed(dir, retention, &reason);
            }
        };
        let head = find_head(dir).map_err(io)?;
        let cut = match (&anchor, &head) {
            (None, _) => None,
            (Some(a), None) if a.seq == 0 => None,
            (Some(a), None) => Some(format!("its anchor names record {} but the log holds no record", a.seq)),
            (Some(a), Some(h)) => {
                let same = a.seq == h.seq && a.hash == h.hash;
                // The record after the anchored one was written, its
                // anchor update was not (a crash in between, a full disk).
                let one_ahead = a.seq + 1 == h.seq && a.hash == h.prev;
                if same || one_ahead || a.seq + 1 < h.seq {
                    None
                } else if a.seq > h.seq {
                    Some(format!(
                        "the log ends at record {} but its anchor names record {}: records were cut from its tail",
                        h.seq, a.seq
                    ))
                } else {
                    Some(format!(
                        "record {} does not hash to what its anchor says: the log was rewritten",
                        h.seq
                    ))
                }
            }
        };
        if let Some(reason) = cut {
            tracing::error!(dir = %dir.display(), reason, "Audit chain found cut: sealed it as a segment of its own and started a new chain (custos audit verify reports it).");
            return Self::reopen_sealed(dir, retention, &reason);
        }
        let (seq, prev) = head.as_ref().map(|h| (h.seq, h.hash.clone())).unwrap_or((0, GENESIS.to_string()));
        let start = match anchor {
            Some(mut a) => {
                a.seq = seq;
                a.hash = prev.clone();
                a
            }
            None => {
                let mut a = Anchor::empty();
                if let Some(h) = &head {
                    // A log an older custos wrote: anchored from here on.
                    let (base_seq, base_prev) = first_record(dir).map_err(io)?.unwrap_or((1, GENESIS.into()));
                    tracing::warn!(dir = %dir.display(), seq = h.seq, "The audit log had no anchor; anchored it at its last record.");
                    a = Anchor { generation: 0, seq, hash: prev.clone(), base_seq, base_prev };
                }
                a
            }
        };
        let anchor = AnchorFile::open(dir, start).map_err(io)?;
        let path = dir.join(CURRENT);
        let file = crate::fsutil::open_private_append(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                size,
                prev,
                seq,
                needs_newline: false,
                dirty: false,
                closed: false,
            }),
            wake: Condvar::new(),
            anchor: Mutex::new(anchor),
            failures: WriteFailures::default(),
        });
        let s = shared.clone();
        let anchoring = std::thread::Builder::new()
            .name("audit-anchor".into())
            .spawn(move || s.anchor_loop())
            .map_err(io)?;
        Ok(AuditLog {
            retention: Retention { max_file_bytes: retention.max_file_bytes.max(1024), ..retention },
            shared,
            subscribers: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            anchoring: Some(anchoring),
        })
    }

    /// Seals what `dir` holds as a segment (by the agent, unacknowledged),
    /// opens a new chain and records why as its first record.
    fn reopen_sealed(dir: &Path, retention: Retention, reason: &str) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io { dir: dir.display().to_string(), source };
        let sealed = seal(dir, SealedBy::Agent, reason).map_err(io)?;
        let log = Self::open_with(dir, retention)?;
        log.record_seal(&sealed, reason, SealedBy::Agent)?;
        Ok(log)
    }

    /// The first record of a new chain after a seal: where the old one went
    /// and why.
    pub fn record_seal(&self, sealed: &Path, reason: &str, by: SealedBy) -> Result<AuditRecord, AuditError> {
        let name = sealed.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.append(
            AuditEntry {
                kind: AuditKind::Lifecycle,
                runbook: String::new(),
                service: String::new(),
                message: format!("Sealed the previous chain as {name} ({reason}); a new chain starts here."),
                details: serde_json::json!({ "sealed": name, "reason": reason, "by": by }),
                dry_run: false,
            },
            SystemTime::now(),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Makes every record written so far durable and anchored now (the
    /// anchoring thread does it within `ANCHOR_DELAY` anyway).
    pub fn flush(&self) {
        self.shared.anchor_now();
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

    /// Records that could not be written (a full disk...).
    pub fn write_failures(&self) -> u64 {
        self.shared.failures.count()
    }

    /// Appends one record; it is durable and anchored within
    /// `ANCHOR_DELAY`. A failure is logged once per kind of error until a
    /// write succeeds again (a full disk fails every record alike) and
    /// counted.
    pub fn append(&self, entry: AuditEntry, ts: SystemTime) -> Result<AuditRecord, AuditError> {
        let dir = &self.shared.dir;
        let io = |source| AuditError::Io { dir: dir.display().to_string(), source };
        let mut inner = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.append_locked(&mut inner, entry, ts);
        if result.is_ok() {
            inner.dirty = true;
            self.shared.wake.notify_one();
        }
        drop(inner);
        let failures = &self.shared.failures;
        let record = match result {
            Ok(r) => {
                if failures.succeeded() {
                    tracing::info!(dir = %dir.display(), failed = failures.count(), "Audit log writable again.");
                }
                r
            }
            Err(e) => {
                if failures.record(&e) {
                    tracing::error!(dir = %dir.display(), error = %e, "Audit records cannot be written (reported once per kind of error; counted as custos_audit_write_failures).");
                }
                return Err(io(e));
            }
        };
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

    fn append_locked(
        &self,
        inner: &mut Inner,
        entry: AuditEntry,
        ts: SystemTime,
    ) -> std::io::Result<AuditRecord> {
        if inner.size >= self.retention.max_file_bytes {
            self.rotate(inner)?;
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
        let mut buf = Vec::with_capacity(line.len() + 2);
        if inner.needs_newline {
            buf.push(b'\n');
        }
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if let Err(e) = inner.file.write_all(&buf) {
            // Cut what part of the line made it, so that the next record
            // starts where this one did; failing that, on a new line.
            match inner.file.set_len(inner.size) {
                Ok(()) => inner.needs_newline = false,
                Err(_) => inner.needs_newline = true,
            }
            return Err(e);
        }
        inner.needs_newline = false;
        inner.size += buf.len() as u64;
        let hash = hash_line(&line);
        inner.seq = record.seq;
        inner.prev = hash;
        Ok(record)
    }

    fn rotate(&self, inner: &mut Inner) -> std::io::Result<()> {
        inner.file.sync_all()?;
        let dir = &self.shared.dir;
        let next = rotated_files(dir)?.last().map(|(n, _)| n + 1).unwrap_or(1);
        std::fs::rename(dir.join(CURRENT), dir.join(format!("audit.{next}.jsonl")))?;
        inner.file = crate::fsutil::open_private_append(&dir.join(CURRENT))?;
        inner.size = 0;
        crate::fsutil::sync_dir(dir)?;
        self.expire(inner)
    }

    /// Deletes the oldest rotated files beyond the retention's size and
    /// age; the anchor's base moves first, so that a crash in between
    /// leaves files verify skips, never a chain that seems to lack its start.
    fn expire(&self, inner: &mut Inner) -> std::io::Result<()> {
        let dir = &self.shared.dir;
        let mut rotated = Vec::new();
        for (_, path) in rotated_files(dir)? {
            let md = std::fs::metadata(&path)?;
            rotated.push((path, md.len(), md.modified().ok()));
        }
        let mut total: u64 = rotated.iter().map(|(_, len, _)| len).sum::<u64>() + inner.size;
        let now = SystemTime::now();
        let mut expired = 0;
        for (_, len, modified) in &rotated {
            let too_old = match (self.retention.max_age, modified) {
                (Some(age), Some(m)) => now.duration_since(*m).unwrap_or_default() > age,
                _ => false,
            };
            if total <= self.retention.max_total_bytes && !too_old {
                break;
            }
            total -= len;
            expired += 1;
        }
        if expired == 0 {
            return Ok(());
        }
        let base = match rotated.get(expired) {
            Some((path, _, _)) => first_record_of(path)?,
            None => None,
        };
        let base = base.unwrap_or_else(|| (inner.seq + 1, inner.prev.clone()));
        // Every record so far is durable: the rotated file was synced
        // before its rename and the current one is empty.
        let (seq, hash) = (inner.seq, inner.prev.clone());
        self.shared.anchor.lock().unwrap_or_else(|e| e.into_inner()).update(seq, &hash, Some(base))?;
        inner.dirty = false;
        for (path, _, _) in &rotated[..expired] {
            std::fs::remove_file(path)?;
        }
        tracing::info!(files = expired, dir = %dir.display(), "Deleted the oldest audit files (audit retention).");
        crate::fsutil::sync_dir(dir)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.anchoring.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// The anchoring thread: waits for records, lets a burst gather, then
    /// anchors the newest; on close, anchors what is left and ends.
    fn anchor_loop(&self) {
        loop {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            while !g.dirty && !g.closed {
                g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            let closed = g.closed;
            drop(g);
            if !closed {
                std::thread::sleep(ANCHOR_DELAY);
            }
            self.anchor_now();
            if closed {
                return;
            }
        }
    }

    /// Syncs the current file (what it holds is every record not yet
    /// anchored: rotated files were synced when rotated), then anchors the
    /// newest record.
    fn anchor_now(&self) {
        let (file, seq, hash) = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if !g.dirty {
                return;
            }
            g.dirty = false;
            (g.file.try_clone(), g.seq, g.prev.clone())
        };
        let anchored = file
            .and_then(|f| f.sync_data())
            .and_then(|()| self.anchor.lock().unwrap_or_else(|e| e.into_inner()).update(seq, &hash, None));
        if let Err(e) = anchored {
            // Tried again with the next record; until then the anchor lags.
            self.inner.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
            if self.failures.record(&e) {
                tracing::error!(dir = %self.dir.display(), error = %e, "Audit anchor cannot be written (reported once per kind of error).");
            }
        }
    }
}

/// Whole lines, each with its offset in the file, and the bytes after the
/// last newline.
type Lines = (Vec<(u64, Vec<u8>)>, Vec<u8>);

/// Reads `path`'s lines from `start` (the beginning of a line) to its end.
fn lines_from(path: &Path, start: u64) -> std::io::Result<Lines> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let mut lines = Vec::new();
    let mut at = 0;
    while let Some(i) = bytes[at..].iter().position(|&b| b == b'\n') {
        lines.push((start + at as u64, bytes[at..at + i].to_vec()));
        at += i + 1;
    }
    Ok((lines, bytes[at..].to_vec()))
}

/// A record's line, if it is one.
fn parse_record(line: &[u8]) -> Option<(AuditRecord, &str)> {
    let text = std::str::from_utf8(line).ok()?;
    serde_json::from_str::<AuditRecord>(text).ok().map(|r| (r, text))
}

/// Finds the chain's last whole record: in the current file, whose torn or
/// unreadable tail (lines after the last record that is whole) is set
/// aside first, else in the newest rotated file that has one.
fn find_head(dir: &Path) -> std::io::Result<Option<Head>> {
    let current = dir.join(CURRENT);
    if let Ok(md) = std::fs::metadata(&current) {
        let len = md.len();
        // From the start of a line: the file's start, or after a newline.
        let mut start = len.saturating_sub(HEAD_WINDOW);
        if start > 0 {
            let mut f = File::open(&current)?;
            f.seek(SeekFrom::Start(start))?;
            let mut skip = Vec::new();
            std::io::BufRead::read_until(
                &mut std::io::BufReader::new(f).take(len - start),
                b'\n',
                &mut skip,
            )?;
            start += skip.len() as u64;
        }
        let (lines, torn) = lines_from(&current, start)?;
        let mut keep = len;
        let mut head = None;
        for (offset, line) in lines.iter().rev() {
            if let Some((r, text)) = parse_record(line) {
                head = Some(Head { seq: r.seq, hash: hash_line(text), prev: r.prev });
                keep = offset + line.len() as u64 + 1;
                break;
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                keep = *offset;
            }
        }
        if head.is_none() && lines.iter().all(|(_, l)| l.iter().all(u8::is_ascii_whitespace)) {
            keep = start + lines.iter().map(|(_, l)| l.len() as u64 + 1).sum::<u64>();
        }
        if keep < len {
            let aside = crate::fsutil::set_aside_tail(&current, keep)?;
            tracing::warn!(
                file = %current.display(),
                bytes = len - keep,
                torn = !torn.is_empty(),
                set_aside = %aside.map(|p| p.display().to_string()).unwrap_or_default(),
                "Set aside the end of the audit log that is no whole record (a write cut short by a crash or a full disk); the chain goes on from the last whole record."
            );
        }
        if head.is_some() {
            return Ok(head);
        }
    }
    for (_, path) in rotated_files(dir)?.iter().rev() {
        let (lines, _) = lines_from(path, 0)?;
        if let Some((r, text)) = lines.iter().rev().find_map(|(_, l)| parse_record(l)) {
            return Ok(Some(Head { seq: r.seq, hash: hash_line(text), prev: r.prev }));
        }
    }
    Ok(None)
}

/// The first record of a file, as `(seq, prev)`.
fn first_record_of(path: &Path) -> std::io::Result<Option<(u64, String)>> {
    let (lines, _) = lines_from(path, 0)?;
    Ok(lines.iter().find_map(|(_, l)| parse_record(l)).map(|(r, _)| (r.seq, r.prev)))
}

/// The first record of the chain in `dir`.
fn first_record(dir: &Path) -> std::io::Result<Option<(u64, String)>> {
    for f in chain_files(dir)? {
        if let Some(r) = first_record_of(&f)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// SHA-256 of one line (without its newline), hex.
pub fn hash_line(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// The rotated files of `dir` with their numbers, oldest first.
fn rotated_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
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
    Ok(rotated.into_iter().map(|n| (n, dir.join(format!("audit.{n}.jsonl")))).collect())
}

/// The chain's files, oldest first: `audit.N.jsonl` by N, then `audit.jsonl`.
pub fn chain_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated_files(dir)?.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(CURRENT);
    if current.exists() {
        files.push(current);
    }
    Ok(files)
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

    fn log_with(dir: &Path, n: usize) -> AuditLog {
        let log = AuditLog::open(dir, 1 << 20).unwrap();
        for i in 0..n {
            log.append(entry(&format!("record {i}")), SystemTime::now()).unwrap();
        }
        log
    }

    #[test]
    fn verify_fails_on_no_log_an_emptied_log_and_a_cut_tail() {
        let dir = tempfile::tempdir().unwrap();
        let e = verify(&dir.path().join("absent")).unwrap_err();
        assert!(e.reason.contains("does not exist"), "{e}");
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("no audit log in this directory"), "{e}");
        assert!(verify_all(&dir.path().join("absent")).is_err());

        drop(log_with(dir.path(), 5));
        let path = dir.path().join(CURRENT);
        let text = std::fs::read_to_string(&path).unwrap();
        // The last record cut: the anchor still names it.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n", lines[..4].join("\n"))).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("truncated") && e.reason.contains("record 5"), "{e}");
        // Emptied.
        std::fs::write(&path, "").unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("truncated") && e.reason.contains("no record"), "{e}");
        // Rewritten from the third record on, consistently: the anchor's
        // record no longer matches.
        std::fs::write(&path, &text).unwrap();
        assert_eq!(verify(dir.path()).unwrap().records, 5);
        // No anchor at all: a cut tail could not be told.
        std::fs::remove_file(dir.path().join(ANCHOR_FILE)).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("no anchor"), "{e}");
    }

    #[test]
    fn an_empty_chain_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        drop(AuditLog::open(dir.path(), 1 << 20).unwrap());
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
    }

    #[test]
    fn a_torn_last_line_is_set_aside_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        drop(log_with(dir.path(), 3));
        let path = dir.path().join(CURRENT);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        // A full disk cut the fourth record short.
        f.write_all(b"{\"seq\":4,\"ts\":\"2024-01-").unwrap();
        drop(f);
        // Before the agent starts again: the torn line is no record, the rest verifies.
        let s = verify(dir.path()).unwrap();
        assert_eq!((s.records, s.torn_bytes > 0), (3, true));
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        let r = log.append(entry("after the crash"), SystemTime::now()).unwrap();
        assert_eq!(r.seq, 4, "the chain goes on from the last whole record");
        let s = verify(dir.path()).unwrap();
        assert_eq!((s.records, s.torn_bytes, s.set_aside.len()), (4, 0, 1), "{s:?}");
        let aside = std::fs::read(&s.set_aside[0]).unwrap();
        assert!(aside.starts_with(b"{\"seq\":4"), "the torn text is kept");
        assert!(verify_all(dir.path()).unwrap().iter().all(|s| !s.fails()));
    }

    #[test]
    fn an_invalid_byte_in_the_log_does_not_stop_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        drop(log_with(dir.path(), 3));
        let path = dir.path().join(CURRENT);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 10;
        bytes[at] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        // The last record is damaged: set aside; the anchor names it, so the
        // old chain is sealed as cut and a new one starts.
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        log.append(entry("after"), SystemTime::now()).unwrap();
        let segments = verify_all(dir.path()).unwrap();
        assert_eq!(segments.len(), 2, "{segments:?}");
        assert_eq!(segments[0].seal.as_ref().unwrap().by, SealedBy::Agent);
        assert!(segments[0].fails(), "an unacknowledged cut fails verify: {segments:?}");
        assert!(!segments[1].fails(), "{segments:?}");
        drop(log);
        // The operator seals: the cut is acknowledged, verify passes.
        let sealed = seal(dir.path(), SealedBy::Operator, "seen").unwrap();
        AuditLog::open(dir.path(), 1 << 20)
            .unwrap()
            .record_seal(&sealed, "seen", SealedBy::Operator)
            .unwrap();
        let segments = verify_all(dir.path()).unwrap();
        assert_eq!(segments.len(), 3);
        assert!(segments.iter().all(|s| !s.fails()), "{segments:?}");
        assert!(segments[0].result.is_err(), "the break is still reported");
    }

    #[test]
    fn a_broken_chain_is_sealed_and_a_new_one_verifies() {
        let dir = tempfile::tempdir().unwrap();
        drop(log_with(dir.path(), 5));
        let path = dir.path().join(CURRENT);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("record 1", "record X", 1)).unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        log.append(entry("more"), SystemTime::now()).unwrap();
        drop(log);
        assert!(verify(dir.path()).unwrap_err().reason.contains("hash chain broken"));
        assert!(verify_all(dir.path()).unwrap().iter().any(Segment::fails), "appending does not heal it");
        let sealed = seal(dir.path(), SealedBy::Operator, "record 3 edited").unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        let first = log.record_seal(&sealed, "record 3 edited", SealedBy::Operator).unwrap();
        assert_eq!((first.seq, first.prev.as_str()), (1, GENESIS));
        log.append(entry("new chain"), SystemTime::now()).unwrap();
        let segments = verify_all(dir.path()).unwrap();
        assert_eq!(segments.len(), 2);
        assert!(segments[0].result.is_err() && segments[0].seal.as_ref().unwrap().acknowledged);
        assert_eq!(segments[1].result.as_ref().unwrap().records, 2);
        assert!(segments.iter().all(|s| !s.fails()));
    }

    #[test]
    fn retention_bounds_the_log_and_the_rest_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_file_bytes: 2048, max_total_bytes: 8192, max_age: None };
        let log = AuditLog::open_with(dir.path(), retention).unwrap();
        for i in 0..300 {
            log.append(entry(&format!("record {i}")), SystemTime::now()).unwrap();
        }
        drop(log);
        let total: u64 =
            chain_files(dir.path()).unwrap().iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        assert!(total <= 8192 + 2048, "{total} bytes kept");
        let s = verify(dir.path()).unwrap();
        assert!(s.first_seq > 1 && s.last_seq == 300, "{s:?}");
        // Reopened, the chain and its base hold.
        let log = AuditLog::open_with(dir.path(), retention).unwrap();
        assert_eq!(log.append(entry("again"), SystemTime::now()).unwrap().seq, 301);
        assert!(verify(dir.path()).is_ok());
        // An age limit deletes what is older, whatever the size.
        drop(log);
        let aged =
            Retention { max_age: Some(Duration::from_millis(1)), max_total_bytes: u64::MAX, ..retention };
        std::thread::sleep(Duration::from_millis(20));
        let log = AuditLog::open_with(dir.path(), aged).unwrap();
        for i in 0..40 {
            log.append(entry(&format!("late {i}")), SystemTime::now()).unwrap();
        }
        assert!(rotated_files(dir.path()).unwrap().len() <= 1);
        assert!(verify(dir.path()).is_ok());
    }
}
