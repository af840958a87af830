//! Cgroup v2 helpers: ids and the unified hierarchy's mount point.

use std::io;
use std::path::{Path, PathBuf};

/// The cgroup v2 id of the cgroup at `path`: the inode number of its
/// directory in the cgroup2 filesystem (what `bpf_get_current_cgroup_id`
/// returns for processes in it).
pub fn cgroup_id_of_path(path: impl AsRef<Path>) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = path.as_ref();
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a cgroup directory", path.display()),
        ));
    }
    Ok(meta.ino())
}

/// Where the cgroup v2 (unified) hierarchy is mounted, from
/// /proc/self/mountinfo: /sys/fs/cgroup on most hosts,
/// /sys/fs/cgroup/unified on hybrid ones.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    cgroup2_mount_in(&text).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no cgroup2 filesystem in /proc/self/mountinfo")
    })
}

/// The first cgroup2 mount point in the text of a mountinfo file.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "id parent major:minor root mount-point options [optional...] - fstype source super-options"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(|p| PathBuf::from(unescape_mountinfo(p)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory
";
        assert_eq!(cgroup2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            cgroup2_mount_in("29 23 0:26 / /a\\040b rw - cgroup2 none rw\n"),
            Some(PathBuf::from("/a b"))
        );
        assert_eq!(cgroup2_mount_in("garbage\n35 33 0:30 / /x rw - cgroup cgroup rw\n"), None);
    }

    #[test]
    fn id_of_a_directory_is_its_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir();
        assert_eq!(cgroup_id_of_path(&dir).unwrap(), std::fs::metadata(&dir).unwrap().ino());
        let err = cgroup_id_of_path("/proc/self/status").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
