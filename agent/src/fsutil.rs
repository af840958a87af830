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

/// Reads at most `max` bytes of a regular file, refusing anything else: a
/// FIFO (which would block the reader until someone writes), a device
/// (`/dev/zero` never ends), a directory. The open does not block and the
/// check is made on the open descriptor, so what is checked is what is read.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = open_nonblocking(path, false)?;
    read_regular(f, path, max)
}

fn read_regular(mut f: File, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file ({})", path.display(), file_kind(&md)),
        ));
    }
    if md.len() > max {
        return Err(too_large(path, max));
    }
    let mut out = Vec::with_capacity(md.len() as usize);
    Read::by_ref(&mut f).take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(too_large(path, max));
    }
    Ok(out)
}

fn too_large(path: &Path, max: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} is larger than {max} bytes", path.display()))
}

fn file_kind(md: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = md.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if md.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(unix)]
fn open_nonblocking(path: &Path, no_follow: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    if no_follow {
        flags |= libc::O_NOFOLLOW;
    }
    OpenOptions::new().read(true).custom_flags(flags).open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path, _no_follow: bool) -> io::Result<File> {
    File::open(path)
}

/// Why a file that could make root act was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(pub String);

/// Reads a file whose content can make custos (root) run commands: the
/// configuration, a runbook. Only what root (or the agent's own user)
/// alone controls is read:
///
/// - the path is resolved component by component: every directory entered,
///   from `/` down, is owned by root or this user and writable by no one
///   else, and every symlink followed lies in such a directory; a
///   world-writable directory with the sticky bit (/tmp) may be crossed,
///   but only into entries root or this user owns. So no other user can
///   swap a component, or choose where a link points, between the check
///   and the open (sshd's StrictModes, through symlinks);
/// - the file is opened without following a final symlink and without
///   blocking, then checked on the open descriptor: a regular file (no
///   FIFO, device or directory), owned by root or this user, writable by
///   no one else;
/// - at most `max` bytes are read.
///
/// Windows: directories under %ProgramData% inherit an ACL writable by
/// administrators only (the installer sets it); only the file's kind and
/// size are checked there.
pub fn read_trusted(path: &Path, max: u64) -> Result<Vec<u8>, Untrusted> {
    let shown = path.display();
    let err = |m: String| Untrusted(m);
    #[cfg(unix)]
    {
        let real = resolve_trusted(path)?;
        let f = open_nonblocking(&real, true).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => err(format!("{shown} changed into a symlink while it was read: refused")),
            _ => err(format!("cannot read {shown}: {e}")),
        })?;
        let md = f.metadata().map_err(|e| err(format!("cannot read {shown}: {e}")))?;
        if !md.is_file() {
            return Err(err(format!("{shown} is {}, not a regular file: refused", file_kind(&md))));
        }
        check_owner_and_mode(&md, path, "file")?;
        read_regular(f, path, max).map_err(|e| err(format!("cannot read {shown}: {e}")))
    }
    #[cfg(not(unix))]
    {
        read_bounded(path, max).map_err(|e| err(format!("cannot read {shown}: {e}")))
    }
}

/// Checks that a directory whose files can make root act, and the path to
/// it, only root or this user can change (see [`read_trusted`]).
pub fn check_trusted_dir(dir: &Path) -> Result<(), Untrusted> {
    #[cfg(unix)]
    {
        let real = resolve_trusted(dir)?;
        let md = std::fs::metadata(&real)
            .map_err(|e| Untrusted(format!("cannot read the directory {}: {e}", dir.display())))?;
        if !md.is_dir() {
            return Err(Untrusted(format!("{} is not a directory", dir.display())));
        }
        check_owner_and_mode(&md, dir, "directory")?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Resolves `path` as the kernel would, checking each directory entered
/// and each symlink followed (see [`read_trusted`]). The last component is
/// returned unchecked when it is not a symlink: the caller checks it on
/// what it opens.
#[cfg(unix)]
fn resolve_trusted(path: &Path) -> Result<PathBuf, Untrusted> {
    use std::path::Component;
    let cannot = |p: &Path, e: io::Error| Untrusted(format!("cannot read {}: {e}", p.display()));
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| cannot(path, e))?.join(path)
    };
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = std::collections::VecDeque::new();
    let push_front = |pending: &mut std::collections::VecDeque<std::ffi::OsString>, p: &Path| {
        let parts: Vec<std::ffi::OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        for part in parts.into_iter().rev() {
            pending.push_front(part);
        }
    };
    push_front(&mut pending, &absolute);
    let mut current = PathBuf::from("/");
    // The directory we are in, and whether others may add entries to it
    // (sticky and world-writable: entries must then be ours).
    let mut shared_dir = check_dir(&current)?;
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            current.pop();
            shared_dir = check_dir(&current)?;
            continue;
        }
        let next = current.join(&part);
        let md = std::fs::symlink_metadata(&next).map_err(|e| cannot(&next, e))?;
        if md.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(Untrusted(format!("{}: too many levels of symlinks", path.display())));
            }
            if shared_dir {
                check_owner(&md, &next, "symlink")?;
            }
            let target = std::fs::read_link(&next).map_err(|e| cannot(&next, e))?;
            if target.is_absolute() {
                current = PathBuf::from("/");
                shared_dir = check_dir(&current)?;
            }
            push_front(&mut pending, &target);
            continue;
        }
        if pending.is_empty() {
            if shared_dir {
                check_owner(&md, &next, "file")?;
            }
            return Ok(next);
        }
        current = next;
        shared_dir = check_dir(&current)?;
    }
    Ok(current)
}

/// Checks one directory on the way; true when it is a sticky
/// world-writable one (its entries are checked for their owner).
#[cfg(unix)]
fn check_dir(dir: &Path) -> Result<bool, Untrusted> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir)
        .map_err(|e| Untrusted(format!("cannot read the directory {}: {e}", dir.display())))?;
    if !md.is_dir() {
        return Err(Untrusted(format!("{} is not a directory", dir.display())));
    }
    let sticky_shared = md.mode() & 0o1000 != 0 && md.mode() & 0o002 != 0;
    if sticky_shared {
        check_owner(&md, dir, "directory")?;
        return Ok(true);
    }
    check_owner_and_mode(&md, dir, "directory")?;
    Ok(false)
}

#[cfg(unix)]
fn check_owner(md: &std::fs::Metadata, path: &Path, what: &str) -> Result<(), Untrusted> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != 0 && md.uid() != euid {
        let shown = path.display();
        return Err(Untrusted(format!(
            "{what} {shown} is owned by uid {}, not by root: refusing it because custos runs commands as root (chown root {shown})",
            md.uid()
        )));
    }
    Ok(())
}

#[cfg(unix)]
fn check_owner_and_mode(md: &std::fs::Metadata, path: &Path, what: &str) -> Result<(), Untrusted> {
    use std::os::unix::fs::MetadataExt;
    check_owner(md, path, what)?;
    if md.mode() & 0o022 != 0 {
        let shown = path.display();
        return Err(Untrusted(format!(
            "{what} {shown} is group- or world-writable (mode {:o}): refusing it because custos runs commands as root (chmod go-w {shown})",
            md.mode() & 0o7777
        )));
    }
    Ok(())
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
