//! The chain's anchor: `audit.anchor` beside the log holds the last record's
//! sequence number and hash (the head) and the first record still kept (the
//! base, which moves when retention deletes old files). The log alone cannot
//! tell a cut tail from a short log; with the anchor, a record missing from
//! the end, or a log emptied or replaced, no longer verifies.
//!
//! It is rewritten after every record, so it is two fixed-size slots written
//! in turn in place, each with its generation and a CRC: a write torn by a
//! crash leaves the other slot whole, and one `fdatasync` makes it durable
//! (a rename per record would cost a directory fsync too).

use super::GENESIS;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::path::Path;

/// The anchor's file name in the audit directory.
pub const ANCHOR_FILE: &str = "audit.anchor";
const SLOT: usize = 512;

/// What the anchor says about the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Increases with every write; the slot with the higher one is current.
    pub generation: u64,
    /// The last record written (0: none yet).
    pub seq: u64,
    /// Its line's hash (`GENESIS` when there is none).
    pub hash: String,
    /// The first record kept: retention deleted everything before it.
    pub base_seq: u64,
    /// The `prev` the first kept record carries.
    pub base_prev: String,
}

impl Anchor {
    /// The anchor of a chain with no record yet.
    pub fn empty() -> Anchor {
        Anchor { generation: 0, seq: 0, hash: GENESIS.into(), base_seq: 1, base_prev: GENESIS.into() }
    }
}

fn encode(a: &Anchor) -> [u8; SLOT] {
    let json = serde_json::to_string(a).unwrap_or_default();
    let line = format!("{json} {:08x}", crc32fast::hash(json.as_bytes()));
    let mut slot = [b' '; SLOT];
    let n = line.len().min(SLOT - 1);
    slot[..n].copy_from_slice(&line.as_bytes()[..n]);
    slot[SLOT - 1] = b'\n';
    slot
}

fn decode(slot: &[u8]) -> Option<Anchor> {
    let text = std::str::from_utf8(slot).ok()?.trim_end();
    let (json, crc) = text.rsplit_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// Reads the anchor of `dir`: `Ok(None)` when there is none, an error when
/// the file exists and neither slot is whole.
pub fn read(dir: &Path) -> io::Result<Option<Anchor>> {
    let bytes = match std::fs::read(dir.join(ANCHOR_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let best = bytes.chunks(SLOT).take(2).filter_map(decode).max_by_key(|a| a.generation);
    match best {
        Some(a) => Ok(Some(a)),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, "neither slot of the anchor is readable")),
    }
}

/// The open anchor file, written once per record.
#[derive(Debug)]
pub struct AnchorFile {
    file: File,
    current: Anchor,
}

impl AnchorFile {
    /// Opens (creating, 0600) the anchor of `dir`, starting from `current`.
    pub fn open(dir: &Path, current: Anchor) -> io::Result<AnchorFile> {
        let file = crate::fsutil::private_options().read(true).write(true).open(dir.join(ANCHOR_FILE))?;
        let mut a = AnchorFile { file, current };
        // A fresh file gets both slots, so that a torn first update still
        // leaves one whole.
        if a.file.metadata()?.len() < (2 * SLOT) as u64 {
            let c = a.current.clone();
            a.write_slot(&c, 0)?;
            a.write_slot(&c, 1)?;
            a.file.sync_data()?;
        }
        Ok(a)
    }

    /// Records a new head and/or base, durably.
    pub fn update(&mut self, seq: u64, hash: &str, base: Option<(u64, String)>) -> io::Result<()> {
        let mut next = self.current.clone();
        next.generation += 1;
        next.seq = seq;
        next.hash = hash.to_string();
        if let Some((s, p)) = base {
            next.base_seq = s;
            next.base_prev = p;
        }
        self.write_slot(&next, (next.generation % 2) as usize)?;
        self.file.sync_data()?;
        self.current = next;
        Ok(())
    }

    fn write_slot(&mut self, a: &Anchor, slot: usize) -> io::Result<()> {
        let bytes = encode(a);
        write_at(&self.file, &bytes, (slot * SLOT) as u64)
    }
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, offset)
}

#[cfg(windows)]
fn write_at(f: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(f, buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_whole_slot_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut f = AnchorFile::open(dir.path(), Anchor::empty()).unwrap();
        f.update(1, "h1", None).unwrap();
        f.update(2, "h2", Some((1, "p".into()))).unwrap();
        let a = read(dir.path()).unwrap().unwrap();
        assert_eq!((a.seq, a.hash.as_str(), a.base_prev.as_str()), (2, "h2", "p"));
        // Tear the newest slot (generation 2 is in slot 0): the older one is read.
        let path = dir.path().join(ANCHOR_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().seq, 1);
        bytes[SLOT + 10] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(dir.path()).is_err(), "two torn slots are an error, not an empty chain");
    }
}
