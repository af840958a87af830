//! Checking the chain, and sealing it. `custos audit verify` walks every
//! record: it parses, its `prev` is the hash of the line before it (across
//! files), `seq` goes up by one, the first kept record is the anchor's base
//! and the last is at least the anchor's head. An empty log, a directory
//! with no log, a gap and a cut tail all fail.
//!
//! A broken chain stays broken whatever is appended after it; `custos audit
//! seal` closes it as a segment (`sealed-N/`, with a `seal.json` saying
//! when, by whom and why) and a new chain starts whose first record names
//! it. Verify reports each segment. A segment the operator sealed is
//! acknowledged: its break is reported, not failed on. One the agent sealed
//! by itself (it found its chain cut at start) fails verify until the
//! operator seals.

use super::{anchor, chain_files, hash_line, AuditRecord, ANCHOR_FILE, CURRENT};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub file: PathBuf,
    /// 1-based line in `file`; 0 when the problem is the whole log.
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.file.display())?;
        if self.line > 0 {
            write!(f, "{}:", self.line)?;
        }
        f.write_str(" ")?;
        if let Some(seq) = self.seq {
            write!(f, "record {seq}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub files: usize,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The record the anchor names.
    pub anchored_seq: u64,
    /// Bytes after the last newline that are no record: a write in
    /// progress, or one a crash cut short (set aside at the agent's next
    /// start).
    pub torn_bytes: usize,
    /// Files holding what was set aside (torn writes).
    pub set_aside: Vec<PathBuf>,
}

/// Who sealed a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealedBy {
    /// `custos audit seal`.
    Operator,
    /// The agent, finding its chain cut at start.
    Agent,
}

/// A sealed segment's `seal.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seal {
    #[serde(with = "super::rfc3339")]
    pub sealed_at: SystemTime,
    pub by: SealedBy,
    pub reason: String,
    /// An operator sealed after it: its break was seen.
    pub acknowledged: bool,
}

const SEAL_FILE: &str = "seal.json";
const SEALED_PREFIX: &str = "sealed-";

/// One segment's verification.
#[derive(Debug, Clone)]
pub struct Segment {
    pub dir: PathBuf,
    /// `None` for the live segment.
    pub seal: Option<Seal>,
    pub result: Result<ChainSummary, ChainBreak>,
}

impl Segment {
    /// A break nobody has acknowledged: the live chain's, or one the agent
    /// sealed by itself.
    pub fn fails(&self) -> bool {
        self.result.is_err() && self.seal.as_ref().is_none_or(|s| !s.acknowledged)
    }
}

/// The sealed segments of `dir`, oldest first.
pub fn sealed_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(n) = name.to_string_lossy().strip_prefix(SEALED_PREFIX).and_then(|n| n.parse().ok()) {
            if entry.file_type()?.is_dir() {
                found.push((n, entry.path()));
            }
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn read_seal(dir: &Path) -> Option<Seal> {
    let text = std::fs::read_to_string(dir.join(SEAL_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Verifies every segment in `dir`: the sealed ones oldest first, then the
/// live one. Fails outright only when `dir` holds no audit log at all.
pub fn verify_all(dir: &Path) -> Result<Vec<Segment>, ChainBreak> {
    let whole = |reason: String| ChainBreak { file: dir.to_path_buf(), line: 0, seq: None, reason };
    if !dir.is_dir() {
        return Err(whole("no audit log: the directory does not exist".into()));
    }
    let sealed = sealed_segments(dir).map_err(|e| whole(format!("cannot list the audit directory: {e}")))?;
    let mut segments = Vec::new();
    for (_, path) in sealed {
        let seal = read_seal(&path).unwrap_or(Seal {
            sealed_at: SystemTime::UNIX_EPOCH,
            by: SealedBy::Agent,
            reason: format!("{SEAL_FILE} is missing or unreadable"),
            acknowledged: false,
        });
        segments.push(Segment { result: verify(&path), dir: path, seal: Some(seal) });
    }
    let live = verify(dir);
    // A directory holding sealed segments only, just sealed: its live chain
    // has not started yet, which is no break.
    let just_sealed = !segments.is_empty() && chain_files(dir).map(|f| f.is_empty()).unwrap_or(false);
    if !just_sealed {
        segments.push(Segment { dir: dir.to_path_buf(), seal: None, result: live });
    }
    Ok(segments)
}

/// Verifies the chain of one segment (`dir` itself, not its sealed ones).
pub fn verify(dir: &Path) -> Result<ChainSummary, ChainBreak> {
    let whole = |reason: String| ChainBreak { file: dir.to_path_buf(), line: 0, seq: None, reason };
    if !dir.is_dir() {
        return Err(whole("no audit log: the directory does not exist".into()));
    }
    // The anchor first: the agent writes it after the record, so a log read
    // after it holds at least what it names.
    let anchor =
        anchor::read(dir).map_err(|e| whole(format!("the anchor ({ANCHOR_FILE}) is unreadable: {e}")))?;
    let files = chain_files(dir).map_err(|e| whole(format!("cannot list the audit directory: {e}")))?;
    let anchor = match (anchor, files.is_empty()) {
        (None, true) => {
            return Err(whole(format!("no audit log in this directory (no {CURRENT}, no {ANCHOR_FILE})")))
        }
        (None, false) => {
            return Err(whole(format!(
                "no anchor ({ANCHOR_FILE}): whether records were cut from the tail cannot be told"
            )))
        }
        (Some(a), _) => a,
    };
    let set_aside = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains(".torn-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    let mut prev = anchor.base_prev.clone();
    let mut last = None::<u64>;
    let mut first = None::<u64>;
    let mut records = 0;
    let mut torn_bytes = 0;
    for (fi, file) in files.iter().enumerate() {
        let f = std::fs::File::open(file).map_err(|e| ChainBreak {
            file: file.clone(),
            line: 0,
            seq: None,
            reason: format!("cannot open: {e}"),
        })?;
        let mut reader = BufReader::new(f);
        let mut raw = Vec::new();
        let mut n = 0;
        loop {
            raw.clear();
            let got = reader.read_until(b'\n', &mut raw).map_err(|e| ChainBreak {
                file: file.clone(),
                line: n + 1,
                seq: None,
                reason: format!("cannot read: {e}"),
            })?;
            if got == 0 {
                break;
            }
            n += 1;
            let brk = |seq, reason: String| ChainBreak { file: file.clone(), line: n, seq, reason };
            let complete = raw.last() == Some(&b'\n');
            let bytes = if complete { &raw[..raw.len() - 1] } else { &raw[..] };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = std::str::from_utf8(bytes)
                .map_err(|_| "not an audit record: invalid UTF-8".to_string())
                .and_then(|t| {
                    serde_json::from_str::<AuditRecord>(t)
                        .map(|r| (r, t))
                        .map_err(|e| format!("not an audit record: {e}"))
                });
            let (rec, text) = match parsed {
                Ok(x) => x,
                // The last file's unfinished last line: torn, not a record.
                Err(_) if !complete && fi + 1 == files.len() => {
                    torn_bytes = bytes.len();
                    break;
                }
                Err(reason) => return Err(brk(None, reason)),
            };
            match last {
                // Retention deleted what came before the base; a file it
                // had not deleted yet when it stopped is skipped.
                None if rec.seq < anchor.base_seq => continue,
                None if rec.seq > anchor.base_seq => {
                    return Err(brk(
                        Some(rec.seq),
                        format!(
                            "records {} to {} are missing from the start of the log",
                            anchor.base_seq,
                            rec.seq - 1
                        ),
                    ))
                }
                Some(l) if rec.seq != l + 1 => {
                    return Err(brk(Some(rec.seq), format!("sequence jumps: expected record {}", l + 1)))
                }
                _ => {}
            }
            if rec.prev != prev {
                return Err(brk(
                    Some(rec.seq),
                    format!(
                        "hash chain broken: prev is {} but the previous record hashes to {prev}",
                        rec.prev
                    ),
                ));
            }
            prev = hash_line(text);
            if rec.seq == anchor.seq && prev != anchor.hash {
                return Err(brk(
                    Some(rec.seq),
                    "does not match the anchor: the log was rewritten from here".to_string(),
                ));
            }
            first.get_or_insert(rec.seq);
            last = Some(rec.seq);
            records += 1;
        }
    }
    let last_seq = last.unwrap_or(0);
    if records == 0 {
        return Err(whole(if anchor.seq > 0 {
            format!("truncated: the anchor names record {} but the log holds no record", anchor.seq)
        } else {
            "the audit log is empty: it holds no record".to_string()
        }));
    }
    if last_seq < anchor.seq {
        return Err(ChainBreak {
            file: files.last().cloned().unwrap_or_else(|| dir.to_path_buf()),
            line: 0,
            seq: Some(last_seq),
            reason: format!(
                "truncated: the log ends at record {last_seq} but its anchor names record {}: records were cut from its tail",
                anchor.seq
            ),
        });
    }
    Ok(ChainSummary {
        files: files.len(),
        records,
        first_seq: first.unwrap_or(0),
        last_seq,
        anchored_seq: anchor.seq,
        torn_bytes,
        set_aside,
    })
}

/// Closes the live chain of `dir` as the segment `sealed-N/` (its files,
/// anchor and whatever was set aside move there, with a `seal.json`), so
/// that a new chain starts in `dir`. An operator's seal acknowledges every
/// earlier segment. The caller holds the state directory's lock (one
/// writer) and records the seal as the new chain's first record
/// ([`super::AuditLog::record_seal`]). Returns the segment's directory.
pub fn seal(dir: &Path, by: SealedBy, reason: &str) -> std::io::Result<PathBuf> {
    let next = sealed_segments(dir)?.last().map(|(n, _)| n + 1).unwrap_or(1);
    let target = dir.join(format!("{SEALED_PREFIX}{next}"));
    crate::fsutil::create_private_dir(&target)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        let n = name.to_string_lossy();
        let ours =
            n == ANCHOR_FILE || (n.starts_with("audit.") && (n.ends_with(".jsonl") || n.contains(".torn-")));
        if ours {
            std::fs::rename(entry.path(), target.join(&name))?;
        }
    }
    let seal = Seal {
        sealed_at: SystemTime::now(),
        by,
        reason: reason.to_string(),
        acknowledged: by == SealedBy::Operator,
    };
    let json = serde_json::to_vec_pretty(&seal).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&target.join(SEAL_FILE), &[&json], None)?;
    crate::fsutil::sync_dir(&target)?;
    crate::fsutil::sync_dir(dir)?;
    if by == SealedBy::Operator {
        for (_, other) in sealed_segments(dir)? {
            if let Some(mut s) = read_seal(&other).filter(|s| !s.acknowledged) {
                s.acknowledged = true;
                let json = serde_json::to_vec_pretty(&s).map_err(std::io::Error::other)?;
                crate::fsutil::write_atomic(&other.join(SEAL_FILE), &[&json], None)?;
            }
        }
    }
    Ok(target)
}
