//! The host as Linux shows it through /proc and the cgroup2 filesystem: the
//! facts attribution needs ([`HostView`]) and unit discovery.

use crate::attribution::HostView;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The /proc and cgroup2 view of this host.
pub struct ProcHost {
    root: Option<PathBuf>,
}

impl ProcHost {
    pub fn new() -> Self {
        ProcHost { root: custos_ebpf::cgroup2_mount().ok() }
    }

    fn list_system_services(&self) -> Vec<(String, String)> {
        let Some(root) = &self.root else { return Vec::new() };
        let Ok(dir) = std::fs::read_dir(root.join("system.slice")) else { return Vec::new() };
        let mut out: Vec<(String, String)> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                (name.ends_with(".service") && e.file_type().ok()?.is_dir())
                    .then(|| (name.clone(), format!("/system.slice/{name}")))
            })
            .collect();
        out.sort();
        out
    }

    fn path_of_pid(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))
    }

    fn id_of(&self, rel: &str) -> Option<u64> {
        let root = self.root.as_ref()?;
        let p = root.join(rel.trim_start_matches('/'));
        std::fs::metadata(p).ok().map(|m| m.ino())
    }

    fn find_by_id(&self, dir: &Path, rel: &str, id: u64, depth: u32) -> Option<String> {
        // Bounded walk: cgroup trees are shallow; depth 6 covers
        // /user.slice/user-0.slice/user@0.service/app.slice/x.scope.
        if depth > 6 {
            return None;
        }
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = format!("{}/{name}", rel.trim_end_matches('/'));
            if entry.metadata().map(|m| m.ino()).ok() == Some(id) {
                return Some(child_rel);
            }
            if let Some(found) = self.find_by_id(&entry.path(), &child_rel, id, depth + 1) {
                return Some(found);
            }
        }
        None
    }
}

impl Default for ProcHost {
    fn default() -> Self {
        Self::new()
    }
}

impl HostView for ProcHost {
    fn cgroup_path(&mut self, cgroup_id: u64, pid_hint: u32) -> Option<String> {
        // Cheap path first: the process's own cgroup file, confirmed by id
        // (the process may have moved or exited since the event).
        if pid_hint != 0 {
            if let Some(p) = self.path_of_pid(pid_hint) {
                if self.id_of(&p) == Some(cgroup_id) {
                    return Some(p);
                }
            }
        }
        let root = self.root.clone()?;
        if std::fs::metadata(&root).ok()?.ino() == cgroup_id {
            return Some("/".into());
        }
        self.find_by_id(&root, "", cgroup_id, 0)
    }

    fn cgroup_id(&mut self, path: &str) -> Option<u64> {
        self.id_of(path)
    }

    fn systemd_services(&mut self) -> Vec<(String, String)> {
        self.list_system_services()
    }

    fn parent_pid(&mut self, pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields resume
        // after the last `)`.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(1)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_resolvable() {
        let mut h = ProcHost::new();
        let me = std::process::id();
        let parent = h.parent_pid(me).expect("own parent pid");
        assert_eq!(parent, std::os::unix::process::parent_id());
        if let Ok(root) = custos_ebpf::cgroup2_mount() {
            let path = h.path_of_pid(me).expect("own cgroup path");
            let id = h.cgroup_id(&path).expect("own cgroup id");
            assert_eq!(std::fs::metadata(root.join(path.trim_start_matches('/'))).unwrap().ino(), id);
            assert_eq!(h.cgroup_path(id, me).as_deref(), Some(path.as_str()));
            assert_eq!(h.cgroup_path(id, 0).as_deref(), Some(path.as_str()), "found by walking the tree");
        }
    }
}
