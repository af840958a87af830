//! One agent per state directory: `custos run` holds an exclusive lock on
//! `agent.lock` in its state dir for its whole life. Two agents on one
//! state dir would both act on the same services and interleave one audit
//! chain (duplicate sequence numbers, a chain broken for good).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the state dir.
pub const LOCK_FILE: &str = "agent.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another custos agent{} holds the state directory {}: stop it first, or give this one another agent.state_dir",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        .dir.display()
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock the state directory {}: {source}", .dir.display())]
    Io { dir: PathBuf, source: std::io::Error },
}

/// The held lock; dropping it (or the process ending, however it ends)
/// releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

fn open(dir: &Path) -> std::io::Result<File> {
    crate::fsutil::create_private_dir(dir)?;
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(dir.join(LOCK_FILE))
}

fn pid_in(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Takes the lock of `dir`, writing this process's pid into it, or says
/// which agent holds it.
pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
    let io = |source| LockError::Io { dir: dir.to_path_buf(), source };
    let mut file = open(dir).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held { dir: dir.to_path_buf(), pid: pid_in(&mut file) })
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(StateLock { _file: file })
}

/// The pid of the agent holding `dir`'s lock, if one does (`Some(None)`
/// when it is held but the pid is unreadable); `None` when it is free.
/// Creates nothing (`install --dry-run` asks too).
pub fn holder(dir: &Path) -> Option<Option<u32>> {
    let mut file = OpenOptions::new().read(true).write(true).open(dir.join(LOCK_FILE)).ok()?;
    match file.try_lock() {
        Ok(()) => None, // released when `file` drops
        Err(TryLockError::WouldBlock) => Some(pid_in(&mut file)),
        Err(TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(dir.path()), None);
        let first = acquire(dir.path()).unwrap();
        let err = acquire(dir.path()).unwrap_err();
        match &err {
            LockError::Held { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
        assert_eq!(holder(dir.path()), Some(Some(std::process::id())));
        drop(first);
        assert_eq!(holder(dir.path()), None);
        let _again = acquire(dir.path()).unwrap();
    }
}
