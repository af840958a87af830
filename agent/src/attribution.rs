//! Attribution: which managed service does an event belong to?
//!
//! The key on Linux is the cgroup v2 id of the process (a systemd unit is a
//! cgroup); processes matched by executable are followed with their
//! descendants by pid. This module is platform-neutral: the facts it needs
//! from the host (a cgroup id's path, a pid's parent) come through the
//! [`HostView`] trait, which tests fake and `platform::linux` implements over
//! /proc and the cgroup2 mount.

use crate::config::{Discover, LoadedConfig, Selector};
use custos_event::{Event, EventBody};
use std::collections::{HashMap, HashSet};

/// What attribution needs to know about the host.
pub trait HostView: Send {
    /// The cgroup path (relative to the cgroup2 root, e.g.
    /// `/system.slice/api.service`) of a cgroup id, if it still exists.
    fn cgroup_path(&mut self, cgroup_id: u64, pid_hint: u32) -> Option<String>;
    /// The cgroup id of a path relative to the cgroup2 root, if it exists now.
    fn cgroup_id(&mut self, path: &str) -> Option<u64>;
    /// The parent pid of a live process.
    fn parent_pid(&mut self, pid: u32) -> Option<u32>;
    /// Systemd services running now, as `(unit, cgroup path)`, for
    /// `discover: systemd`.
    fn systemd_services(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A host view that knows nothing: replayed events keep the attribution
/// they were recorded with, and only exe rules apply.
pub struct NoHost;

impl HostView for NoHost {
    fn cgroup_path(&mut self, _: u64, _: u32) -> Option<String> {
        None
    }
    fn cgroup_id(&mut self, _: &str) -> Option<u64> {
        None
    }
    fn parent_pid(&mut self, _: u32) -> Option<u32> {
        None
    }
}

/// The systemd unit a cgroup path belongs to: the innermost `*.service` or
/// `*.scope` component (`/system.slice/api.service/worker` → `api.service`).
pub fn unit_of_cgroup(path: &str) -> Option<&str> {
    path.rsplit('/').find(|c| c.ends_with(".service") || c.ends_with(".scope"))
}

/// The service name custos uses for a unit: `api.service` → `api`; other
/// unit types keep their suffix (`session-3.scope`).
pub fn service_name_of_unit(unit: &str) -> &str {
    unit.strip_suffix(".service").unwrap_or(unit)
}

/// Matches an executable against an `exe:` selector: an absolute path is
/// compared whole; a pattern with `*` is matched against the path when it
/// contains `/`, else against the executable's file name.
pub fn exe_matches(pattern: &str, exe: &str) -> bool {
    let target = if pattern.contains('/') { exe } else { exe.rsplit('/').next().unwrap_or(exe) };
    glob_match(pattern.as_bytes(), target.as_bytes())
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative `*`/`?` matcher with single backtrack point: linear enough
    // for executable paths, no recursion on hostile patterns.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// What the kernel-side filter should contain, as decided by attribution.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilterUpdate {
    pub add_cgroups: Vec<u64>,
    pub remove_cgroups: Vec<u64>,
    pub track_pids: Vec<u32>,
    /// Processes of services a reload removed.
    pub untrack_pids: Vec<u32>,
    /// A reload switched between managing every process (`Some(true)`) and
    /// only the configured services (`Some(false)`).
    pub scope_everything: Option<bool>,
}

impl FilterUpdate {
    pub fn is_empty(&self) -> bool {
        self.add_cgroups.is_empty()
            && self.remove_cgroups.is_empty()
            && self.track_pids.is_empty()
            && self.untrack_pids.is_empty()
            && self.scope_everything.is_none()
    }
}

/// `(selector, service name)` pairs of a configuration, by kind.
struct Selectors {
    units: Vec<(String, String)>,
    cgroups: Vec<(String, String)>,
    exes: Vec<(String, String)>,
}

impl Selectors {
    fn of(config: &LoadedConfig) -> Self {
        let mut sel = Selectors { units: Vec::new(), cgroups: Vec::new(), exes: Vec::new() };
        for s in &config.services {
            match &s.selector {
                Selector::SystemdUnit(u) => sel.units.push((u.clone(), s.name.clone())),
                // The Windows sensor attributes by process tree before events
                // reach here; on Linux such a selector matches nothing.
                Selector::WindowsService(_) => {}
                Selector::Exe(p) => sel.exes.push((p.clone(), s.name.clone())),
                Selector::Cgroup(p) => sel.cgroups.push((p.clone(), s.name.clone())),
            }
        }
        sel
    }
}

/// Entries kept in the pid and cgroup caches before they are cleared; a
/// bound, not a tuning knob: a host does not have this many live processes
/// in managed services, and a clear only costs re-resolution.
const CACHE_LIMIT: usize = 65_536;

/// Decides the service of each event and the contents of the kernel filter.
pub struct Attributor {
    units: Vec<(String, String)>,   // (unit, service name)
    cgroups: Vec<(String, String)>, // (cgroup path, service name)
    exes: Vec<(String, String)>,    // (pattern, service name)
    discover_systemd: bool,
    everything: bool,
    /// cgroup id → service name (None: known not to be managed).
    by_cgroup: HashMap<u64, Option<String>>,
    /// pid → service name, for exe-selected processes and their descendants.
    by_pid: HashMap<u32, String>,
    /// Units' current cgroup ids, to notice restarts (new cgroup, new id).
    unit_cgroups: HashMap<String, u64>,
    host: Box<dyn HostView>,
    own_pid: u32,
}

impl Attributor {
    pub fn new(config: &LoadedConfig, host: Box<dyn HostView>) -> Self {
        let Selectors { units, cgroups, exes } = Selectors::of(config);
        Attributor {
            units,
            cgroups,
            exes,
            discover_systemd: config.discover.contains(&Discover::Systemd),
            everything: config.manages_everything(),
            by_cgroup: HashMap::new(),
            by_pid: HashMap::new(),
            unit_cgroups: HashMap::new(),
            host,
            own_pid: std::process::id(),
        }
    }

    /// Takes the services of a reloaded configuration and returns what the
    /// kernel filter must change so that it reports exactly them: cgroups
    /// no longer managed leave it, new ones enter it, processes of removed
    /// `exe:` services are untracked while those of services kept (same
    /// name, same pattern) stay attributed, and the scope switches when the
    /// first service is added or the last removed.
    pub fn reconfigure(&mut self, config: &LoadedConfig) -> FilterUpdate {
        let managed = |by_cgroup: &HashMap<u64, Option<String>>| -> HashSet<u64> {
            by_cgroup.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| *id).collect()
        };
        let before = managed(&self.by_cgroup);
        let was_everything = self.everything;
        let Selectors { units, cgroups, exes } = Selectors::of(config);
        let kept: HashSet<String> =
            exes.iter().filter(|e| self.exes.contains(e)).map(|(_, n)| n.clone()).collect();
        self.units = units;
        self.cgroups = cgroups;
        self.exes = exes;
        self.discover_systemd = config.discover.contains(&Discover::Systemd);
        self.everything = config.manages_everything();
        self.by_cgroup.clear();
        self.unit_cgroups.clear();
        let mut update = FilterUpdate::default();
        self.by_pid.retain(|pid, name| {
            let keep = kept.contains(name);
            if !keep {
                update.untrack_pids.push(*pid);
            }
            keep
        });
        let refreshed = self.refresh();
        let after = managed(&self.by_cgroup);
        // Managing everything, the kernel filter held no cgroup: every
        // managed one must enter it now.
        let in_filter = if was_everything { HashSet::new() } else { before.clone() };
        update.add_cgroups = refreshed.add_cgroups.into_iter().filter(|id| !in_filter.contains(id)).collect();
        update.remove_cgroups = before.difference(&after).copied().collect();
        update.remove_cgroups.sort_unstable();
        update.untrack_pids.sort_unstable();
        if was_everything != self.everything {
            update.scope_everything = Some(self.everything);
        }
        update
    }

    /// True when every process is managed (no `services:` configured).
    pub fn manages_everything(&self) -> bool {
        self.everything
    }

    /// True when exec events must all reach user space so that `exe:`
    /// patterns can be matched.
    pub fn needs_all_execs(&self) -> bool {
        !self.exes.is_empty()
    }

    /// Names of the configured services (for tables that list services with
    /// no events yet).
    pub fn configured_services(&self) -> Vec<String> {
        self.units.iter().chain(&self.cgroups).chain(&self.exes).map(|(_, n)| n.clone()).collect()
    }

    /// Re-resolves the cgroups of configured units (they get a new cgroup id
    /// every time they restart) and returns what the kernel filter must
    /// change. Call at start and periodically, and when the cgroup tree
    /// changes.
    pub fn refresh(&mut self) -> FilterUpdate {
        let mut update = FilterUpdate::default();
        let discovered_units = if self.discover_systemd { self.host.systemd_services() } else { Vec::new() };
        let mut wanted: Vec<(String, String)> = self.units.iter().chain(&self.cgroups).cloned().collect();
        if self.discover_systemd {
            for (unit, path) in &discovered_units {
                if !self.units.iter().any(|(u, _)| u == unit) {
                    wanted.push((path.clone(), service_name_of_unit(unit).to_string()));
                }
            }
        }
        for (unit_or_path, name) in wanted {
            let path = if unit_or_path.starts_with('/') {
                unit_or_path.clone()
            } else {
                format!("/system.slice/{unit_or_path}")
            };
            let Some(id) = self.host.cgroup_id(&path) else { continue };
            let key = unit_or_path.clone();
            if let Some(old) = self.unit_cgroups.insert(key, id) {
                if old != id {
                    update.remove_cgroups.push(old);
                    self.by_cgroup.remove(&old);
                }
            }
            if self.by_cgroup.get(&id) != Some(&Some(name.clone())) {
                self.by_cgroup.insert(id, Some(name));
                update.add_cgroups.push(id);
            }
        }
        update
    }

    /// Sets `event.service`, returning false when the event belongs to no
    /// managed service (then it should be dropped). May ask the kernel
    /// filter to track a pid (exe selectors) through `update`.
    pub fn attribute(&mut self, event: &mut Event, update: &mut FilterUpdate) -> bool {
        if event.service.is_some() {
            return true;
        }
        // The agent's own activity (its exporter's connections, its
        // syscalls) would feed back into what it reports.
        if event.pid != 0 && event.pid == self.own_pid {
            return false;
        }
        if self.by_pid.len() > CACHE_LIMIT {
            self.by_pid.clear();
        }
        if self.by_cgroup.len() > CACHE_LIMIT {
            self.by_cgroup.retain(|_, v| v.is_some());
        }

        // Exe selectors: a matching exec makes the process (and, through the
        // kernel, its descendants) part of the service.
        if let EventBody::ProcessStart(start) = &event.body {
            let inherited = self.by_pid.get(&start.ppid).cloned();
            let matched = self
                .exes
                .iter()
                .find(|(p, _)| exe_matches(p, &start.exe))
                .map(|(_, n)| n.clone())
                .or(inherited);
            if let Some(name) = matched {
                if !self.by_pid.contains_key(&event.pid) {
                    update.track_pids.push(event.pid);
                }
                self.by_pid.insert(event.pid, name.clone());
                event.service = Some(name);
                return true;
            }
        }
        if let Some(name) = self.by_pid.get(&event.pid) {
            event.service = Some(name.clone());
            if matches!(event.body, EventBody::ProcessExit(_)) {
                self.by_pid.remove(&event.pid);
            }
            return true;
        }
        if !self.exes.is_empty() && event.pid != 0 {
            if let Some(name) = self.service_of_ancestor(event.pid) {
                self.by_pid.insert(event.pid, name.clone());
                event.service = Some(name);
                return true;
            }
        }

        let mut cgroup_path = None;
        if event.cgroup_id != 0 {
            if let Some(known) = self.by_cgroup.get(&event.cgroup_id) {
                if let Some(name) = known {
                    event.service = Some(name.clone());
                    return true;
                }
                if !self.everything {
                    return false;
                }
            }
            let path = self.host.cgroup_path(event.cgroup_id, event.pid);
            let name = path.as_deref().and_then(|p| self.service_of_path(p));
            self.by_cgroup.insert(event.cgroup_id, name.clone());
            if let Some(name) = name {
                event.service = Some(name);
                return true;
            }
            cgroup_path = path;
        }
        if self.everything {
            // A process's events are named after it; a cgroup's aggregates
            // (syscall statistics) have no process and take the cgroup's
            // path: "/" for the root cgroup's. An event with neither names
            // no service, and no made-up one is invented for it.
            let name = if !event.comm.is_empty() { Some(event.comm.clone()) } else { cgroup_path };
            let found = name.is_some();
            event.service = name;
            return found;
        }
        false
    }

    fn service_of_path(&self, path: &str) -> Option<String> {
        let under = |root: &str| path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'));
        if let Some((_, name)) = self.cgroups.iter().find(|(root, _)| under(root)) {
            return Some(name.clone());
        }
        let unit = unit_of_cgroup(path);
        if let Some(unit) = unit {
            if let Some((_, name)) = self.units.iter().find(|(u, _)| u == unit) {
                return Some(name.clone());
            }
            let is_system_service = path.starts_with("/system.slice/") && unit.ends_with(".service");
            if self.discover_systemd && is_system_service || self.everything {
                return Some(service_name_of_unit(unit).to_string());
            }
        }
        if self.everything && path != "/" && !path.is_empty() {
            return Some(path.to_string());
        }
        None
    }

    fn service_of_ancestor(&mut self, pid: u32) -> Option<String> {
        let mut cur = pid;
        for _ in 0..64 {
            let parent = self.host.parent_pid(cur)?;
            if parent == 0 || parent == cur {
                return None;
            }
            if let Some(name) = self.by_pid.get(&parent) {
                return Some(name.clone());
            }
            cur = parent;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use custos_event::{ProcessExit, ProcessStart};
    use std::time::UNIX_EPOCH;

    #[derive(Default)]
    struct FakeHost {
        paths: HashMap<u64, String>,
        parents: HashMap<u32, u32>,
    }

    impl HostView for FakeHost {
        fn cgroup_path(&mut self, id: u64, _: u32) -> Option<String> {
            self.paths.get(&id).cloned()
        }
        fn cgroup_id(&mut self, path: &str) -> Option<u64> {
            self.paths.iter().find(|(_, p)| *p == path).map(|(id, _)| *id)
        }
        fn parent_pid(&mut self, pid: u32) -> Option<u32> {
            self.parents.get(&pid).copied()
        }
        fn systemd_services(&mut self) -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = self
                .paths
                .values()
                .filter(|p| p.starts_with("/system.slice/") && p.ends_with(".service"))
                .map(|p| (p.rsplit('/').next().unwrap().to_string(), p.clone()))
                .collect();
            v.sort();
            v
        }
    }

    fn cfg(yaml: &str) -> LoadedConfig {
        config::parse(yaml, "t").unwrap()
    }

    fn exit(pid: u32, cgroup: u64) -> Event {
        let mut e = Event::new(UNIX_EPOCH, EventBody::ProcessExit(ProcessExit::default()));
        e.pid = pid;
        e.cgroup_id = cgroup;
        e.comm = "x".into();
        e
    }

    fn start(pid: u32, ppid: u32, exe: &str) -> Event {
        let mut e = Event::new(
            UNIX_EPOCH,
            EventBody::ProcessStart(ProcessStart { ppid, exe: exe.into(), ..Default::default() }),
        );
        e.pid = pid;
        e
    }

    #[test]
    fn globbing() {
        assert!(exe_matches("/usr/bin/api", "/usr/bin/api"));
        assert!(!exe_matches("/usr/bin/api", "/usr/bin/api2"));
        assert!(exe_matches("api*", "/opt/x/api-server"));
        assert!(exe_matches("/opt/*/bin/*", "/opt/a/bin/b"));
        assert!(!exe_matches("api", "/usr/bin/apix"));
        assert!(exe_matches("*", "/anything"));
        assert!(exe_matches("a?c", "/x/abc"));
    }

    #[test]
    fn units_from_cgroup_paths() {
        assert_eq!(unit_of_cgroup("/system.slice/api.service"), Some("api.service"));
        assert_eq!(unit_of_cgroup("/system.slice/api.service/worker"), Some("api.service"));
        assert_eq!(unit_of_cgroup("/user.slice/user-0.slice/session-3.scope"), Some("session-3.scope"));
        assert_eq!(unit_of_cgroup("/"), None);
        assert_eq!(service_name_of_unit("api.service"), "api");
    }

    #[test]
    fn systemd_unit_selector_follows_restarts() {
        let mut host = FakeHost::default();
        host.paths.insert(10, "/system.slice/api.service".into());
        host.paths.insert(11, "/system.slice/other.service".into());
        let mut a =
            Attributor::new(&cfg("services:\n  - name: api\n    systemd_unit: api\n"), Box::new(host));
        let up = a.refresh();
        assert_eq!(up.add_cgroups, vec![10]);
        let mut u = FilterUpdate::default();
        let mut e = exit(5, 10);
        assert!(a.attribute(&mut e, &mut u));
        assert_eq!(e.service.as_deref(), Some("api"));
        let mut e = exit(6, 11);
        assert!(!a.attribute(&mut e, &mut u), "unmanaged cgroup is dropped");
        assert!(a.refresh().is_empty(), "nothing changed");
    }

    #[test]
    fn restart_gets_new_cgroup_id() {
        struct Restarting(u64);
        impl HostView for Restarting {
            fn cgroup_path(&mut self, id: u64, _: u32) -> Option<String> {
                (id == self.0).then(|| "/system.slice/api.service".into())
            }
            fn cgroup_id(&mut self, _: &str) -> Option<u64> {
                Some(self.0)
            }
            fn parent_pid(&mut self, _: u32) -> Option<u32> {
                None
            }
        }
        let c = cfg("services:\n  - name: api\n    systemd_unit: api.service\n");
        let mut a = Attributor::new(&c, Box::new(Restarting(10)));
        assert_eq!(a.refresh().add_cgroups, vec![10]);
        a.host = Box::new(Restarting(20));
        let up = a.refresh();
        assert_eq!((up.add_cgroups, up.remove_cgroups), (vec![20], vec![10]));
        let mut e = exit(1, 20);
        assert!(a.attribute(&mut e, &mut FilterUpdate::default()));
        assert_eq!(e.service.as_deref(), Some("api"));
    }

    #[test]
    fn exe_selector_tracks_descendants() {
        let mut host = FakeHost::default();
        host.parents.insert(300, 200); // forked without exec
        let c = cfg("services:\n  - name: worker\n    exe: \"worker*\"\n");
        let mut a = Attributor::new(&c, Box::new(host));
        assert!(a.needs_all_execs());
        let mut u = FilterUpdate::default();
        let mut e = start(100, 1, "/usr/bin/bash");
        assert!(!a.attribute(&mut e, &mut u));
        let mut e = start(200, 1, "/opt/worker-7");
        assert!(a.attribute(&mut e, &mut u));
        assert_eq!(u.track_pids, vec![200]);
        let mut child = start(201, 200, "/bin/sleep");
        assert!(a.attribute(&mut child, &mut u));
        assert_eq!(child.service.as_deref(), Some("worker"));
        let mut forked = exit(300, 0);
        assert!(a.attribute(&mut forked, &mut u), "found through the parent chain");
        assert_eq!(forked.service.as_deref(), Some("worker"));
    }

    #[test]
    fn cgroup_selector_covers_its_subtree() {
        let mut host = FakeHost::default();
        host.paths.insert(30, "/bench".into());
        host.paths.insert(31, "/bench/child".into());
        host.paths.insert(32, "/benchmark".into());
        let mut a = Attributor::new(&cfg("services:\n  - name: b\n    cgroup: /bench/\n"), Box::new(host));
        assert_eq!(a.refresh().add_cgroups, vec![30]);
        let mut u = FilterUpdate::default();
        let mut e = exit(1, 31);
        assert!(a.attribute(&mut e, &mut u), "a child cgroup belongs to the service");
        assert_eq!(e.service.as_deref(), Some("b"));
        assert!(!a.attribute(&mut exit(1, 32), &mut u), "a sibling with the same prefix does not");
    }

    #[test]
    fn discover_names_every_system_service() {
        let mut host = FakeHost::default();
        host.paths.insert(7, "/system.slice/nginx.service".into());
        host.paths.insert(8, "/user.slice/user-0.slice/session-1.scope".into());
        let mut a = Attributor::new(&cfg("services:\n  - discover: systemd\n"), Box::new(host));
        let up = a.refresh();
        assert_eq!(up.add_cgroups, vec![7]);
        let mut e = exit(1, 7);
        assert!(a.attribute(&mut e, &mut FilterUpdate::default()));
        assert_eq!(e.service.as_deref(), Some("nginx"));
        let mut e = exit(1, 8);
        assert!(!a.attribute(&mut e, &mut FilterUpdate::default()), "a login session is not a service");
    }

    #[test]
    fn no_config_names_everything() {
        let mut host = FakeHost::default();
        host.paths.insert(7, "/system.slice/cron.service".into());
        host.paths.insert(8, "/custom/group".into());
        host.paths.insert(9, "/".into());
        let mut a = Attributor::new(&cfg(""), Box::new(host));
        assert!(a.manages_everything());
        let mut names = Vec::new();
        for cg in [7, 8, 9] {
            let mut e = exit(1, cg);
            e.comm = "bash".into();
            assert!(a.attribute(&mut e, &mut FilterUpdate::default()));
            names.push(e.service.unwrap());
        }
        assert_eq!(names, ["cron", "/custom/group", "bash"]);
        // Without a process (a cgroup's syscall statistics): the root
        // cgroup by its path; with no cgroup either, no service at all
        // rather than one that does not exist.
        let mut e = exit(0, 9);
        e.comm = String::new();
        assert!(a.attribute(&mut e, &mut FilterUpdate::default()));
        assert_eq!(e.service.as_deref(), Some("/"));
        let mut e = exit(0, 0);
        e.comm = String::new();
        assert!(!a.attribute(&mut e, &mut FilterUpdate::default()));
        assert_eq!(e.service, None);
    }

    #[test]
    fn the_agent_does_not_watch_itself() {
        let mut a = Attributor::new(&cfg(""), Box::new(NoHost));
        let mut e = exit(std::process::id(), 0);
        assert!(!a.attribute(&mut e, &mut FilterUpdate::default()));
    }

    #[test]
    fn replayed_attribution_is_kept() {
        let mut a =
            Attributor::new(&cfg("services:\n  - name: api\n    systemd_unit: api\n"), Box::new(NoHost));
        let mut e = exit(1, 0);
        e.service = Some("api".into());
        assert!(a.attribute(&mut e, &mut FilterUpdate::default()));
        assert_eq!(e.service.as_deref(), Some("api"));
    }

    #[test]
    fn reconfigure_switches_services_and_says_what_the_kernel_must_change() {
        let mut host = FakeHost::default();
        host.paths.insert(10, "/system.slice/api.service".into());
        host.paths.insert(20, "/system.slice/db.service".into());
        host.paths.insert(30, "/system.slice/web.service".into());
        let mut a = Attributor::new(
            &cfg("services:\n  - name: api\n    systemd_unit: api\n  - name: db\n    systemd_unit: db\n  - name: worker\n    exe: /usr/bin/worker\n  - name: batch\n    exe: /usr/bin/batch\n"),
            Box::new(host),
        );
        let mut initial = a.refresh().add_cgroups;
        initial.sort();
        assert_eq!(initial, vec![10, 20]);
        let mut up = FilterUpdate::default();
        assert!(a.attribute(&mut start(500, 1, "/usr/bin/worker"), &mut up));
        assert!(a.attribute(&mut start(600, 1, "/usr/bin/batch"), &mut up));

        // db leaves, web comes, api stays and is renamed, batch leaves.
        let up = a.reconfigure(&cfg(
            "services:\n  - name: frontend\n    systemd_unit: api\n  - name: web\n    systemd_unit: web\n  - name: worker\n    exe: /usr/bin/worker\n",
        ));
        assert_eq!(up.add_cgroups, vec![30]);
        assert_eq!(up.remove_cgroups, vec![20]);
        assert_eq!(up.untrack_pids, vec![600], "the removed exe service's process leaves the filter");
        assert_eq!(up.scope_everything, None);
        let mut none = FilterUpdate::default();
        let mut e = exit(1, 10);
        assert!(a.attribute(&mut e, &mut none));
        assert_eq!(e.service.as_deref(), Some("frontend"));
        assert!(!a.attribute(&mut exit(1, 20), &mut none), "db is no longer managed");
        let mut e = exit(1, 30);
        assert!(a.attribute(&mut e, &mut none));
        assert_eq!(e.service.as_deref(), Some("web"));
        let mut e = exit(500, 0);
        assert!(a.attribute(&mut e, &mut none), "the kept exe service keeps its process");
        assert_eq!(e.service.as_deref(), Some("worker"));
        assert!(!a.attribute(&mut exit(600, 0), &mut none));

        // No services at all: everything is managed; and back.
        let up = a.reconfigure(&cfg("agent: { log_level: info }\n"));
        assert_eq!(up.scope_everything, Some(true));
        assert!(a.manages_everything());
        let up = a.reconfigure(&cfg("services:\n  - name: api\n    systemd_unit: api\n"));
        assert_eq!(up.scope_everything, Some(false));
        assert_eq!(up.add_cgroups, vec![10], "managing everything, the filter held nothing");
        assert!(!up.remove_cgroups.contains(&10));
        let up = a.reconfigure(&cfg(
            "services:\n  - name: api\n    systemd_unit: api\n  - name: db\n    systemd_unit: db\n",
        ));
        assert_eq!(up.add_cgroups, vec![20]);
        assert!(up.remove_cgroups.is_empty(), "a cgroup managed before and after stays in the filter");
    }
}
