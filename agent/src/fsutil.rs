//! The one way custos replaces a file: written to a temporary name beside
//! it, fsynced, renamed over it, and the directory fsynced, so that a crash
//! or power loss leaves either the old file or the new one, never a torn
//! mix; on failure the temporary file is removed. Spool batches, detector
//! snapshots, runbook state and installed files all go through here.
//!
//! Also here: what the state directory's files share. They hold command
//! output and every process's argv, so custos creates its directories
//! 0700 and its files 0600 whoever runs it and whatever the umask; a
//! line-based file whose last write was torn (a crash, a full disk) has its
//! partial tail set aside before anything is appended to it; and a write
//! that keeps failing is reported once per kind of error, not once per
//! record.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The suffix of temporary files; a leftover one (the write never reached
/// its rename) is not part of what its directory holds.
const TEMP_SUFFIX: &str = ".custos-tmp";

/// The temporary name `write_atomic` uses for `path`.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMP_SUFFIX}"))
}

/// True for a file name `write_atomic` writes before its rename.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// Replaces `path` with the concatenation of `parts`, atomically and
/// durably. Creates the parent directory (0700) if needed. `mode` sets the
/// Unix permission bits of the new file (ignored elsewhere); `None` makes it
/// private (0600), as every state file is.
pub fn write_atomic(path: &Path, parts: &[&[u8]], mode: Option<u32>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&dir)?;
    let tmp = temporary_path(path);
    let write = || -> io::Result<()> {
        let mut f = private_options().write(true).truncate(true).open(&tmp)?;
        set_mode(&f, Some(mode.unwrap_or(PRIVATE_FILE)))?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()?;
        drop(f);
        // Renaming over a running binary is fine: the old inode lives on.
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        sync_dir(&dir)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(unix)]
fn set_mode(f: &File, mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match mode {
        Some(m) => f.set_permissions(std::fs::Permissions::from_mode(m)),
        None => Ok(()),
    }
}

#[cfg(not(unix))]
fn set_mode(_f: &File, _mode: Option<u32>) -> io::Result<()> {
    Ok(())
}

/// Mode of the files custos creates in its state directory.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of the directories custos creates there.
pub const PRIVATE_DIR: u32 = 0o700;

/// Creates `dir` and its missing parents, each new one 0700. Existing
/// directories are left as they are (`/var`, or a directory an operator
/// chose); [`make_private`] tightens the state directory itself.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, PRIVATE_DIR);
    b.create(dir)
}

/// Options that create a file 0600 (the umask can only take bits away).
pub fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, PRIVATE_FILE);
    o
}

/// Opens `path` for appending, creating it 0600.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    private_options().append(true).open(path)
}

/// Makes `dir` 0700 when it is more open than that (a state directory made
/// by hand, by an older custos or by systemd's `StateDirectory=` with its
/// default 0755). Returns the mode it had when it changed it.
#[cfg(unix)]
pub fn make_private(dir: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))?;
    Ok(Some(mode))
}

/// ACLs inherited from `%ProgramData%` keep the state directory private.
#[cfg(not(unix))]
pub fn make_private(_dir: &Path) -> io::Result<Option<u32>> {
    Ok(None)
}

/// Moves the bytes of `path` from `keep` to its end into a file of their
/// own beside it (`<name>.torn-<unix ms>`, 0600) and cuts `path` to `keep`
/// bytes, both durably. Returns the new file's path, or `None` when there
/// was nothing past `keep`. What is set aside is kept, never deleted: it
/// may be the half of a record an investigation wants.
pub fn set_aside_tail(path: &Path, keep: u64) -> io::Result<Option<PathBuf>> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    if len <= keep {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(keep))?;
    let mut tail = Vec::new();
    // Bounded by the file: a torn tail is at most one record long, and a
    // tail of records that do not parse is what the caller chose to move.
    Read::by_ref(&mut f).take(len - keep).read_to_end(&mut tail)?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let aside = path.with_file_name(format!("{name}.torn-{ms}"));
    write_atomic(&aside, &[&tail], None)?;
    f.set_len(keep)?;
    f.sync_all()?;
    Ok(Some(aside))
}

/// Where the last complete line of a line-based file ends: the length to
/// keep so that the next append starts on a line of its own. Reads the
/// file backwards, so a long file costs one block or two.
pub fn complete_lines_len(f: &mut File) -> io::Result<u64> {
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Sets aside a partial last line of `path` (one a crash or a full disk cut
/// short), so that what is appended next starts a line of its own and the
/// complete lines before it stay readable. Returns where the partial line
/// went, if there was one. A missing file has none.
pub fn repair_torn_line(path: &Path) -> io::Result<Option<PathBuf>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let keep = complete_lines_len(&mut f)?;
    drop(f);
    set_aside_tail(path, keep)
}

/// Write failures of one destination, reported once per kind of error
/// (a full disk fails every record the same way: one log line says so, a
/// counter says how often) until a write succeeds again.
#[derive(Debug, Default)]
pub struct WriteFailures {
    reported: Mutex<HashSet<io::ErrorKind>>,
    count: AtomicU64,
}

impl WriteFailures {
    /// Counts a failure; true when it is the first of its kind since the
    /// last success, i.e. when the caller should log it.
    pub fn record(&self, e: &io::Error) -> bool {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.reported.lock().unwrap_or_else(|p| p.into_inner()).insert(e.kind())
    }

    /// A write succeeded: the next failure is news again. True when a
    /// failure had been reported (the caller may say it recovered).
    pub fn succeeded(&self) -> bool {
        let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let had = !r.is_empty();
        r.clear();
        had
    }

    /// Failures so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Makes the directory's entries durable.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// NTFS renames are journaled; directories cannot be opened for fsync.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("state.json");
        write_atomic(&path, &[b"old"], None).unwrap();
        write_atomic(&path, &[b"ne", b"w"], None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["state.json".to_string()]);
        assert!(is_temporary(&temporary_path(&path).file_name().unwrap().to_string_lossy()));
        assert!(!is_temporary("state.json"));
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way of the rename makes it fail after the write.
        let path = dir.path().join("target");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomic(&path, &[b"data"], None).is_err());
        assert!(!temporary_path(&path).exists());
        assert!(path.join("inside").exists());
    }

    #[test]
    fn a_torn_last_line_is_set_aside_and_complete_lines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        assert_eq!(repair_torn_line(&path).unwrap(), None, "a missing file has no torn line");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let aside = repair_torn_line(&path).unwrap().expect("the partial line was not set aside");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(std::fs::read(&aside).unwrap(), b"{\"c\":");
        assert!(aside.file_name().unwrap().to_string_lossy().starts_with("log.jsonl.torn-"));
        // Whole lines: nothing to do.
        assert_eq!(repair_torn_line(&path).unwrap(), None);
        // No newline at all, longer than one read block.
        let long = vec![b'x'; 10_000];
        std::fs::write(&path, &long).unwrap();
        let aside = repair_torn_line(&path).unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(std::fs::read(&aside).unwrap(), long);
    }

    #[test]
    fn failures_are_reported_once_per_kind_until_a_success() {
        let f = WriteFailures::default();
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(f.record(&full));
        assert!(!f.record(&full));
        assert!(f.record(&io::Error::from(io::ErrorKind::PermissionDenied)));
        assert_eq!(f.count(), 3);
        assert!(f.succeeded());
        assert!(!f.succeeded());
        assert!(f.record(&full), "a new outage is news again");
    }

    #[cfg(unix)]
    #[test]
    fn state_files_and_directories_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // SAFETY: umask has no preconditions; restored below.
        let old = unsafe { libc::umask(0) };
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        write_atomic(&nested.join("state.json"), &[b"{}"], None).unwrap();
        let log = open_private_append(&nested.join("log.jsonl"));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        log.unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&nested.join("state.json")), 0o600);
        assert_eq!(mode(&nested.join("log.jsonl")), 0o600);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(make_private(dir.path()).unwrap(), Some(0o755));
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(make_private(dir.path()).unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn mode_is_set_on_the_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, &[b"x"], Some(0o600)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
