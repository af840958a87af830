//! The on-disk spool: encoded export requests waiting for the collector.
//!
//! One file per batch, named by a sequence number so that the oldest is
//! sent first. A file is written to a temporary name, fsynced, then renamed
//! (and the directory fsynced): after a crash or power loss a batch is
//! either wholly in the spool or absent, never torn. Each file carries a
//! CRC32 of its payload, so a file damaged on disk is detected, reported
//! and skipped instead of poisoning the rest. When the spool would exceed
//! its size cap, the oldest batches are deleted and counted. A file that
//! cannot be read for a reason that passes (no descriptor left, an I/O
//! error) stays where it is and is read again later: only what is proven
//! corrupt is set aside, and nothing unread is deleted.

use super::stats::AgentStats;
use std::collections::VecDeque;
use std::fs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"CUSTOSP1";
const HEADER_LEN: usize = 8 + 1 + 8 + 4 + 4;
const EXT: &str = "batch";

/// What a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    Metrics,
    Logs,
}

impl BatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchKind::Metrics => "metrics",
            BatchKind::Logs => "logs",
        }
    }
}

/// One encoded export request (protobuf), ready to send or spool.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub kind: BatchKind,
    /// Data points or log records inside, for the counters.
    pub records: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot use spool directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot write spool file {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("spool file {} is corrupt ({reason}); skipping it", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot read spool file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

impl SpoolError {
    /// A read that may succeed later (out of descriptors or memory, an I/O
    /// error, a permission being fixed): the batch is kept and tried again.
    /// A file that is gone, or corrupt, is not.
    pub fn is_transient(&self) -> bool {
        match self {
            SpoolError::Read { source, .. } => source.kind() != std::io::ErrorKind::NotFound,
            SpoolError::Dir { .. } | SpoolError::Write { .. } => true,
            SpoolError::Corrupt { .. } => false,
        }
    }
}

/// A spooled batch; its file name follows from `seq` (16 bytes per batch
/// in memory, so that a spool of a million batches costs 16 MB at most).
#[derive(Debug)]
struct Entry {
    seq: u64,
    size: u64,
}

/// A size-capped directory of batches, oldest first.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
    stats: Arc<AgentStats>,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, picking up batches left by a
    /// previous run and removing half-written temporary files.
    pub fn open(dir: &Path, max_bytes: u64, stats: Arc<AgentStats>) -> Result<Self, SpoolError> {
        let derr = |source| SpoolError::Dir { path: dir.to_path_buf(), source };
        crate::fsutil::create_private_dir(dir).map_err(derr)?;
        let mut entries = Vec::new();
        for de in fs::read_dir(dir).map_err(derr)? {
            let de = de.map_err(derr)?;
            let path = de.path();
            let name = de.file_name().to_string_lossy().into_owned();
            // `.tmp-*` is what versions before `fsutil` left behind.
            if crate::fsutil::is_temporary(&name) || name.starts_with(".tmp-") {
                // A write that never reached its rename: not part of the spool.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name.strip_suffix(&format!(".{EXT}")).and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if path != batch_path(dir, seq) {
                continue; // not a name this spool writes
            }
            let size = de.metadata().map(|m| m.len()).unwrap_or(0);
            entries.push(Entry { seq, size });
        }
        entries.sort_by_key(|e| e.seq);
        let next_seq = entries.last().map(|e| e.seq + 1).unwrap_or(1);
        let bytes = entries.iter().map(|e| e.size).sum();
        let spool =
            Spool { dir: dir.to_path_buf(), max_bytes, entries: entries.into(), bytes, next_seq, stats };
        spool.publish();
        Ok(spool)
    }

    /// A new budget (a reload); a smaller one drops the oldest batches at
    /// the next push.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn publish(&self) {
        AgentStats::set(&self.stats.spool_bytes, self.bytes);
        AgentStats::set(&self.stats.spool_batches, self.entries.len() as u64);
    }

    /// Adds a batch durably, deleting the oldest batches first when it
    /// would not fit. Returns how many batches were dropped.
    pub fn push(&mut self, batch: &Batch) -> Result<u64, SpoolError> {
        let size = (HEADER_LEN + batch.payload.len()) as u64;
        let mut dropped = 0u64;
        if size > self.max_bytes {
            tracing::warn!(
                size,
                max_bytes = self.max_bytes,
                kind = batch.kind.as_str(),
                "Batch is larger than the whole spool: dropped it."
            );
            AgentStats::add(&self.stats.spool_dropped, 1);
            return Ok(1);
        }
        while self.bytes + size > self.max_bytes {
            let Some(old) = self.entries.pop_front() else { break };
            let _ = fs::remove_file(batch_path(&self.dir, old.seq));
            self.bytes -= old.size;
            dropped += 1;
        }
        if dropped > 0 {
            AgentStats::add(&self.stats.spool_dropped, dropped);
            tracing::warn!(
                dropped,
                max_bytes = self.max_bytes,
                dir = %self.dir.display(),
                "Spool is full: deleted the oldest batches to make room."
            );
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = batch_path(&self.dir, seq);
        let werr = |source| SpoolError::Write { path: path.clone(), source };
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.push(match batch.kind {
            BatchKind::Metrics => 1,
            BatchKind::Logs => 2,
        });
        header.extend_from_slice(&batch.records.to_le_bytes());
        header.extend_from_slice(&(batch.payload.len() as u32).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(&batch.payload).to_le_bytes());
        if let Err(e) = crate::fsutil::write_atomic(&path, &[&header, &batch.payload], None) {
            self.publish();
            return Err(werr(e));
        }
        self.entries.push_back(Entry { seq, size });
        self.bytes += size;
        AgentStats::add(&self.stats.spool_writes, 1);
        self.publish();
        Ok(dropped)
    }

    /// The oldest batch with its sequence number. A corrupt file is set
    /// aside (renamed `.corrupt`), counted, and returned as the error; a
    /// file gone from the directory is forgotten; a file that cannot be
    /// read now for another reason stays first in line
    /// ([`SpoolError::is_transient`]) and is tried again later.
    pub fn oldest(&mut self) -> Option<Result<(u64, Batch), SpoolError>> {
        let e = self.entries.front()?;
        let seq = e.seq;
        let path = batch_path(&self.dir, seq);
        match read_batch(&path, e.size) {
            Ok(b) => Some(Ok((seq, b))),
            Err(err) if err.is_transient() => {
                AgentStats::add(&self.stats.spool_read_errors, 1);
                Some(Err(err))
            }
            Err(err) => {
                if matches!(err, SpoolError::Corrupt { .. }) {
                    AgentStats::add(&self.stats.spool_corrupt, 1);
                    // Keep the evidence out of the way of the next run;
                    // if even that fails it stays, skipped, never deleted.
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
                self.bytes -= e.size;
                self.entries.pop_front();
                self.publish();
                Some(Err(err))
            }
        }
    }

    /// Removes batch `seq` (sent, or rejected for good).
    pub fn remove(&mut self, seq: u64) {
        if let Some(i) = self.entries.iter().position(|e| e.seq == seq) {
            if let Some(e) = self.entries.remove(i) {
                let _ = fs::remove_file(batch_path(&self.dir, e.seq));
                self.bytes -= e.size;
            }
        }
        self.publish();
    }
}

fn batch_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{EXT}"))
}

/// Reads a batch file of `size` bytes (as found when it was spooled or
/// listed); a file that grew beyond it is corrupt, not read whole.
fn read_batch(path: &Path, size: u64) -> Result<Batch, SpoolError> {
    let data = match crate::fsutil::read_bounded(path, size.max(HEADER_LEN as u64)) {
        Ok(d) => d,
        Err(e)
            if e.kind() == std::io::ErrorKind::InvalidData
                || e.kind() == std::io::ErrorKind::InvalidInput =>
        {
            return Err(SpoolError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })
        }
        Err(source) => return Err(SpoolError::Read { path: path.to_path_buf(), source }),
    };
    let corrupt = |reason: String| SpoolError::Corrupt { path: path.to_path_buf(), reason };
    if data.len() < HEADER_LEN || &data[..8] != MAGIC {
        return Err(corrupt(format!("no spool header in its {} bytes", data.len())));
    }
    let kind = match data[8] {
        1 => BatchKind::Metrics,
        2 => BatchKind::Logs,
        k => return Err(corrupt(format!("unknown batch kind {k}"))),
    };
    let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap_or([0; 4]));
    let records = u64_at(9);
    let len = u32_at(17) as usize;
    let crc = u32_at(21);
    let payload = &data[HEADER_LEN..];
    if payload.len() != len {
        return Err(corrupt(format!("expected {len} payload bytes, found {}", payload.len())));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    Ok(Batch { kind, records, payload: payload.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8, len: usize) -> Batch {
        Batch { kind: BatchKind::Logs, records: n as u64, payload: vec![n; len] }
    }

    #[test]
    fn batches_survive_reopen_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(AgentStats::default());
        let mut s = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        for i in 1..=3 {
            s.push(&batch(i, 100)).unwrap();
        }
        // A write interrupted before its rename is not a batch.
        fs::write(dir.path().join(".tmp-00000000000000000009"), b"half").unwrap();
        let current_tmp = dir.path().join(format!(".{:020}.{EXT}.custos-tmp", 10));
        fs::write(&current_tmp, b"half").unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        assert_eq!(s.len(), 3);
        assert!(!dir.path().join(".tmp-00000000000000000009").exists());
        assert!(!current_tmp.exists());
        let mut got = Vec::new();
        while let Some(r) = s.oldest() {
            let (seq, b) = r.unwrap();
            got.push(b.records);
            s.remove(seq);
        }
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(stats.snapshot().spool_bytes, 0);
        s.push(&batch(4, 10)).unwrap();
        let (seq, _) = s.oldest().unwrap().unwrap();
        assert_eq!(seq, 4, "sequence numbers keep increasing across reopen");
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(AgentStats::default());
        let one = (HEADER_LEN + 1000) as u64;
        let mut s = Spool::open(dir.path(), one * 3, stats.clone()).unwrap();
        for i in 1..=5 {
            s.push(&batch(i, 1000)).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert!(s.bytes() <= one * 3);
        assert_eq!(stats.snapshot().spool_dropped, 2);
        let (_, b) = s.oldest().unwrap().unwrap();
        assert_eq!(b.records, 3, "the two oldest were dropped");
    }

    #[test]
    fn corrupt_file_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(AgentStats::default());
        let mut s = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        for i in 1..=3 {
            s.push(&batch(i, 50)).unwrap();
        }
        let first = dir.path().join(format!("{:020}.batch", 1));
        let mut data = fs::read(&first).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&first, data).unwrap();
        let err = s.oldest().unwrap().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("is corrupt (checksum mismatch)"), "{msg}");
        assert!(msg.contains("00000000000000000001.batch"), "{msg}");
        assert_eq!(stats.snapshot().spool_corrupt, 1);
        let (_, b) = s.oldest().unwrap().unwrap();
        assert_eq!(b.records, 2, "the rest is still there");
        assert!(dir.path().join(format!("{:020}.corrupt", 1)).exists());
    }
}
