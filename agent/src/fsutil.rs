//! The one way custos replaces a file: written to a temporary name beside
//! it, fsynced, renamed over it, and the directory fsynced, so that a crash
//! or power loss leaves either the old file or the new one, never a torn
//! mix; on failure the temporary file is removed. Spool batches, detector
//! snapshots, runbook state and installed files all go through here.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
/// durably. Creates the parent directory if needed. `mode` sets the Unix
/// permission bits of the new file (ignored elsewhere); `None` leaves the
/// process's default.
pub fn write_atomic(path: &Path, parts: &[&[u8]], mode: Option<u32>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let tmp = temporary_path(path);
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        set_mode(&f, mode)?;
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
