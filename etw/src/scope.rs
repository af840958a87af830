//! Scoping on Windows: a managed `windows_service` is its main process (as
//! the SCM reports it) and every process descended from it. The SCM is asked
//! for the main pid; the process tree comes from the sensor's own process
//! start/exit events (and the session's rundown of existing processes), so
//! following a service costs no polling of the process list.
//!
//! Windows reuses pids quickly and keeps a child's parent pid after the
//! parent is gone; membership is therefore decided when a process starts
//! (its parent is alive then, since it is creating it) and forgotten when
//! it exits, never recomputed from stale parent pids.

use custos_event::{Event, EventBody};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The parent of every live process custos knows of.
#[derive(Debug, Clone, Default)]
pub struct ProcessTree {
    parent: HashMap<u32, u32>,
}

impl ProcessTree {
    /// A tree from `(pid, parent pid)` pairs, e.g. a process snapshot.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        ProcessTree { parent: pairs.into_iter().collect() }
    }

    pub fn insert(&mut self, pid: u32, ppid: u32) {
        self.parent.insert(pid, ppid);
    }

    pub fn remove(&mut self, pid: u32) {
        self.parent.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// `root` and every live process below it. Parent pids that form a loop
    /// (pid 0 and 4 on Windows, or reuse) are visited once.
    pub fn subtree(&self, root: u32) -> HashSet<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&pid, &ppid) in &self.parent {
            if pid != ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
        let mut seen = HashSet::from([root]);
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
                if seen.insert(c) {
                    stack.push(c);
                }
            }
        }
        seen
    }
}

/// Which managed Windows service each live process belongs to.
#[derive(Debug, Clone, Default)]
pub struct ServiceScope {
    tree: ProcessTree,
    /// Managed service name (the config's `name`) → its main pid, when known.
    roots: BTreeMap<String, Option<u32>>,
    owner: HashMap<u32, String>,
    /// Executable of every live process known, for [`Self::hints`].
    exe: HashMap<u32, String>,
    /// Per service: executable and parent of its last main process. While
    /// the SCM has not yet reported a restarted service's new pid, a process
    /// with the same executable started by the same parent (the SCM's
    /// services.exe) is taken as its main process, so that its start event
    /// is attributed; the next SCM poll confirms or corrects it.
    hints: HashMap<String, (String, u32)>,
}

impl ServiceScope {
    /// A scope following `services` (config names), none resolved yet.
    pub fn new<S: Into<String>>(services: impl IntoIterator<Item = S>) -> Self {
        ServiceScope {
            roots: services.into_iter().map(|s| (s.into(), None)).collect(),
            ..ServiceScope::default()
        }
    }

    /// Follows one more service (e.g. discovered); `false` if already followed.
    pub fn add_service(&mut self, service: &str) -> bool {
        if self.roots.contains_key(service) {
            return false;
        }
        self.roots.insert(service.to_string(), None);
        true
    }

    /// Records a process that existed before custos looked (rundown or
    /// snapshot); `exe` may be empty when unknown.
    pub fn observe_existing(&mut self, pid: u32, ppid: u32, exe: &str) {
        self.tree.insert(pid, ppid);
        if !exe.is_empty() {
            self.exe.insert(pid, exe.to_string());
        }
    }

    /// Sets the main pid the SCM reports for `service` (`None`: not running).
    /// When it changed (the service restarted), the service's processes are
    /// recomputed as the new main process and its descendants. Returns
    /// whether anything changed.
    pub fn set_main_pid(&mut self, service: &str, main_pid: Option<u32>) -> bool {
        let Some(root) = self.roots.get_mut(service) else { return false };
        if *root == main_pid && main_pid.is_none_or(|p| self.owner.get(&p).is_some_and(|s| s == service)) {
            return false;
        }
        *root = main_pid;
        self.owner.retain(|_, s| s != service);
        if let Some(main) = main_pid {
            if let (Some(exe), Some(&parent)) = (self.exe.get(&main), self.tree.parent.get(&main)) {
                self.hints.insert(service.to_string(), (exe.clone(), parent));
            }
            // The SCM may know the pid before the sensor saw it start.
            if !self.tree.parent.contains_key(&main) {
                self.tree.insert(main, 0);
            }
            for pid in self.tree.subtree(main) {
                self.owner.entry(pid).or_insert_with(|| service.to_string());
            }
        }
        true
    }

    /// Services whose main pid is unknown (not started yet, or their main
    /// process exited): the SCM should be asked again soon.
    pub fn unresolved(&self) -> impl Iterator<Item = &str> {
        self.roots.iter().filter(|(_, r)| r.is_none()).map(|(s, _)| s.as_str())
    }

    /// The services followed, with their main pid when known.
    pub fn services(&self) -> impl Iterator<Item = (&str, Option<u32>)> {
        self.roots.iter().map(|(s, r)| (s.as_str(), *r))
    }

    /// The service `pid` belongs to.
    pub fn service_of(&self, pid: u32) -> Option<&str> {
        self.owner.get(&pid).map(String::as_str)
    }

    /// A process started: it belongs to its parent's service, if any, or
    /// is the new main process of a restarting service (see `hints`).
    pub fn process_started(&mut self, pid: u32, ppid: u32, exe: &str) -> Option<&str> {
        self.tree.insert(pid, ppid);
        if exe.is_empty() {
            self.exe.remove(&pid);
        } else {
            self.exe.insert(pid, exe.to_string());
        }
        // A reused pid must not keep the service of the process that had it.
        self.owner.remove(&pid);
        if let Some(s) = self.owner.get(&ppid).cloned() {
            self.owner.insert(pid, s);
        } else if !exe.is_empty() {
            let restarted = self.roots.iter_mut().find(|(s, r)| {
                r.is_none() && self.hints.get(s.as_str()).is_some_and(|(e, p)| e == exe && *p == ppid)
            });
            if let Some((service, root)) = restarted {
                *root = Some(pid);
                self.owner.insert(pid, service.clone());
            }
        }
        self.service_of(pid)
    }

    /// A process exited; returns the service it belonged to. When it was a
    /// service's main process, that service becomes unresolved until the
    /// SCM reports its next main pid.
    pub fn process_exited(&mut self, pid: u32) -> Option<String> {
        self.tree.remove(pid);
        self.exe.remove(&pid);
        let owner = self.owner.remove(&pid);
        for root in self.roots.values_mut() {
            if *root == Some(pid) {
                *root = None;
            }
        }
        owner
    }

    /// Updates the scope from `event` and sets its `service`: process starts
    /// and exits change the tree, every event is attributed by its pid.
    pub fn attribute(&mut self, event: &mut Event) {
        let service = match &event.body {
            EventBody::ProcessStart(p) => self.process_started(event.pid, p.ppid, &p.exe).map(str::to_string),
            EventBody::ProcessExit(_) => self.process_exited(event.pid),
            _ if event.pid != 0 => self.service_of(event.pid).map(str::to_string),
            _ => None,
        };
        if service.is_some() {
            event.service = service;
        }
    }

    /// Live processes known (for bounding and diagnostics).
    pub fn known_processes(&self) -> usize {
        self.tree.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_event::{ConnectResult, Family, ProcessExit, ProcessStart, TcpConnect, TcpEndpoints};
    use std::net::Ipv4Addr;
    use std::time::UNIX_EPOCH;

    /// services.exe (600) started api (1000), which has a worker (1001) with
    /// a child (1002); an unrelated process (2000) runs beside them.
    fn table() -> ServiceScope {
        let mut s = ServiceScope::new(["api", "db"]);
        for (pid, ppid) in [(4, 0), (0, 0), (600, 4), (1000, 600), (1001, 1000), (1002, 1001), (2000, 600)] {
            s.observe_existing(pid, ppid, "");
        }
        s
    }

    fn start_event(pid: u32, ppid: u32) -> Event {
        start_exe(pid, ppid, "")
    }

    fn start_exe(pid: u32, ppid: u32, exe: &str) -> Event {
        let body = ProcessStart { ppid, exe: exe.to_string(), ..Default::default() };
        let mut e = Event::new(UNIX_EPOCH, EventBody::ProcessStart(body));
        e.pid = pid;
        e
    }

    fn exit_event(pid: u32) -> Event {
        let mut e = Event::new(UNIX_EPOCH, EventBody::ProcessExit(ProcessExit::default()));
        e.pid = pid;
        e
    }

    #[test]
    fn the_main_process_and_its_descendants_belong_to_the_service() {
        let mut s = table();
        assert!(s.set_main_pid("api", Some(1000)));
        for pid in [1000, 1001, 1002] {
            assert_eq!(s.service_of(pid), Some("api"), "pid {pid}");
        }
        assert_eq!(s.service_of(2000), None);
        assert_eq!(s.service_of(600), None);
        assert_eq!(s.unresolved().collect::<Vec<_>>(), ["db"]);
        assert!(!s.set_main_pid("api", Some(1000)), "same pid: no change");
        assert!(!s.set_main_pid("unknown", Some(1)));
    }

    #[test]
    fn new_children_follow_their_parent_and_exits_leave() {
        let mut s = table();
        s.set_main_pid("api", Some(1000));
        let mut e = start_event(1003, 1002);
        s.attribute(&mut e);
        assert_eq!(e.service.as_deref(), Some("api"));
        let mut other = start_event(2001, 2000);
        s.attribute(&mut other);
        assert_eq!(other.service, None);
        let mut x = exit_event(1003);
        s.attribute(&mut x);
        assert_eq!(x.service.as_deref(), Some("api"), "the exit is attributed before leaving");
        assert_eq!(s.service_of(1003), None);
    }

    #[test]
    fn a_restarted_service_is_re_resolved_and_its_old_pids_released() {
        let mut s = table();
        s.set_main_pid("api", Some(1000));
        // The service crashes: its main process exits, a worker lingers.
        let mut x = exit_event(1000);
        s.attribute(&mut x);
        assert_eq!(x.service.as_deref(), Some("api"));
        assert_eq!(s.unresolved().collect::<Vec<_>>(), ["api", "db"]);
        // The SCM restarts it as pid 1500, child of services.exe.
        let mut e = start_event(1500, 600);
        s.attribute(&mut e);
        assert_eq!(e.service, None, "not known as the service until the SCM says so");
        assert!(s.set_main_pid("api", Some(1500)));
        assert_eq!(s.service_of(1500), Some("api"));
        assert_eq!(s.service_of(1001), None, "the orphaned worker of the old instance is released");
        let mut c = start_event(1501, 1500);
        s.attribute(&mut c);
        assert_eq!(c.service.as_deref(), Some("api"));
    }

    #[test]
    fn a_reused_pid_does_not_inherit_the_old_owner() {
        let mut s = table();
        s.set_main_pid("api", Some(1000));
        s.process_exited(1002);
        // pid 1002 is reused by a child of the unrelated process.
        assert_eq!(s.process_started(1002, 2000, ""), None);
        // And a stale owner entry is cleared even if the exit was lost.
        assert_eq!(s.process_started(1001, 2000, ""), None);
    }

    #[test]
    fn main_pid_unknown_to_the_tree_is_still_followed() {
        let mut s = ServiceScope::new(["api"]);
        assert!(s.set_main_pid("api", Some(77)));
        assert_eq!(s.service_of(77), Some("api"));
        assert_eq!(s.process_started(78, 77, ""), Some("api"));
        assert!(s.set_main_pid("api", None));
        assert_eq!(s.service_of(77), None);
        assert_eq!(s.service_of(78), None);
    }

    #[test]
    fn two_services_keep_their_own_trees_and_network_events_follow_pids() {
        let mut s = table();
        s.observe_existing(3000, 600, "");
        s.set_main_pid("api", Some(1000));
        s.set_main_pid("db", Some(3000));
        assert_eq!(s.service_of(3000), Some("db"));
        assert_eq!(s.service_of(1001), Some("api"));
        let endpoints = TcpEndpoints {
            family: Family::Ipv4,
            saddr: Ipv4Addr::LOCALHOST.into(),
            sport: 40000,
            daddr: Ipv4Addr::LOCALHOST.into(),
            dport: 5432,
        };
        let mut net = Event::new(
            UNIX_EPOCH,
            EventBody::TcpConnect(TcpConnect { endpoints, result: ConnectResult::Ok, latency_ns: 0 }),
        );
        net.pid = 1002;
        s.attribute(&mut net);
        assert_eq!(net.service.as_deref(), Some("api"));
    }

    #[test]
    fn a_restarted_main_process_is_recognized_before_the_scm_poll() {
        let mut s = ServiceScope::new(["api"]);
        s.observe_existing(600, 4, r"C:\Windows\System32\services.exe");
        s.observe_existing(1000, 600, r"C:\svc\api.exe");
        s.set_main_pid("api", Some(1000));
        s.process_exited(1000);
        // Same executable, but started by someone else: not the service.
        let mut other = start_exe(1400, 2000, r"C:\svc\api.exe");
        s.attribute(&mut other);
        assert_eq!(other.service, None);
        // Started by services.exe: the restarted service.
        let mut e = start_exe(1500, 600, r"C:\svc\api.exe");
        s.attribute(&mut e);
        assert_eq!(e.service.as_deref(), Some("api"));
        assert_eq!(s.unresolved().count(), 0);
        assert!(!s.set_main_pid("api", Some(1500)), "the SCM confirms it");
        // Had the SCM said otherwise, it wins.
        assert!(s.set_main_pid("api", Some(1600)));
        assert_eq!(s.service_of(1500), None);
    }

    #[test]
    fn added_services_are_followed_like_configured_ones() {
        let mut s = table();
        assert!(s.add_service("Spooler"));
        assert!(!s.add_service("Spooler"));
        assert!(!s.add_service("api"));
        assert!(s.set_main_pid("Spooler", Some(2000)));
        assert_eq!(s.service_of(2000), Some("Spooler"));
    }

    #[test]
    fn subtree_survives_parent_loops() {
        let t = ProcessTree::from_pairs([(0, 0), (4, 0), (10, 11), (11, 10), (12, 11)]);
        let sub = t.subtree(10);
        assert_eq!(sub, HashSet::from([10, 11, 12]));
        assert_eq!(t.subtree(4), HashSet::from([4]));
        assert_eq!(t.subtree(0), HashSet::from([0, 4]));
    }
}
