//! `ServiceManager` for systemd, over D-Bus (zbus, blocking API).
//!
//! Connects to the system bus, or, when no bus daemon runs (containers,
//! the test sandbox, early boot), to systemd's private socket
//! `/run/systemd/private` (root only, peer-to-peer: no `Hello`, no
//! destination). Either can be given explicitly; a bus in another mount
//! namespace is reachable through `/proc/<pid>/root/run/dbus/system_bus_socket`
//! (systemd refuses private-socket peers outside its PID namespace).

use crate::service_manager::{ActiveState, ServiceError, ServiceManager, ServiceStatus};
use std::time::{Duration, Instant};
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const PROPS: &str = "org.freedesktop.DBus.Properties";
/// No single D-Bus call may block an action longer than this.
const METHOD_TIMEOUT: Duration = Duration::from_secs(25);
pub const PRIVATE_SOCKET: &str = "/run/systemd/private";

/// systemd over D-Bus.
pub struct Systemd {
    conn: Connection,
    /// Peer-to-peer (private socket): messages carry no destination.
    p2p: bool,
    /// Bound on waiting for a start/stop/restart job.
    job_timeout: Duration,
}

impl Systemd {
    /// The system bus, else the private socket.
    pub fn connect() -> Result<Self, ServiceError> {
        match Connection::system() {
            Ok(conn) => Ok(Systemd { conn, p2p: false, job_timeout: Duration::from_secs(90) }),
            Err(bus_err) => Self::connect_private(&format!("unix:path={PRIVATE_SOCKET}")).map_err(|e| {
                ServiceError::Unavailable(format!("system bus: {bus_err}; private socket: {e}"))
            }),
        }
    }

    /// A message bus (dbus-daemon) at a D-Bus address, e.g. another mount
    /// namespace's system bus seen through `/proc/<pid>/root`.
    pub fn connect_bus(address: &str) -> Result<Self, ServiceError> {
        let conn = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.method_timeout(METHOD_TIMEOUT).build())
            .map_err(|e| ServiceError::Unavailable(format!("{address}: {e}")))?;
        Ok(Systemd { conn, p2p: false, job_timeout: Duration::from_secs(90) })
    }

    /// systemd's private socket at a D-Bus address (`unix:path=...`).
    /// systemd only accepts root peers in its own PID namespace here.
    pub fn connect_private(address: &str) -> Result<Self, ServiceError> {
        let conn = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.p2p().method_timeout(Duration::from_secs(5)).build())
            .map_err(|e| ServiceError::Unavailable(format!("{address}: {e}")))?;
        let sd = Systemd { conn, p2p: true, job_timeout: Duration::from_secs(90) };
        // Probe once: a connection that cannot carry a call must fail here,
        // bounded, not hang the first action.
        sd.call::<_, OwnedValue>(PATH, PROPS, "Get", &(MANAGER, "Version"))
            .map_err(|e| ServiceError::Unavailable(format!("{address}: systemd did not answer: {e}")))?;
        Ok(sd)
    }

    /// Bounds how long start/stop/restart wait for systemd's job.
    pub fn with_job_timeout(mut self, t: Duration) -> Self {
        self.job_timeout = t;
        self
    }

    fn call<B, R>(&self, path: &str, iface: &str, method: &str, body: &B) -> Result<R, zbus::Error>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let dest = if self.p2p { None } else { Some(DEST) };
        let msg = self.conn.call_method(dest, path, Some(iface), method, body)?;
        msg.body().deserialize::<R>()
    }

    fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, ServiceError> {
        // LoadUnit (not GetUnit) also answers for units not loaded yet.
        self.call::<_, OwnedObjectPath>(PATH, MANAGER, "LoadUnit", &(unit,))
            .map_err(|e| map_err(e, "query", unit))
    }

    fn prop(&self, path: &str, iface: &str, name: &str, unit: &str) -> Result<OwnedValue, ServiceError> {
        self.call::<_, OwnedValue>(path, PROPS, "Get", &(iface, name)).map_err(|e| map_err(e, "query", unit))
    }

    fn job(&self, method: &str, action: &'static str, unit: &str) -> Result<(), ServiceError> {
        let job: OwnedObjectPath =
            self.call(PATH, MANAGER, method, &(unit, "replace")).map_err(|e| map_err(e, action, unit))?;
        // The job object disappears when the job finishes; polling it avoids
        // depending on signal delivery (absent on some private connections).
        let started = Instant::now();
        loop {
            match self.call::<_, OwnedValue>(
                job.as_str(),
                PROPS,
                "Get",
                &("org.freedesktop.systemd1.Job", "State"),
            ) {
                Ok(_) if started.elapsed() >= self.job_timeout => {
                    return Err(ServiceError::Timeout {
                        action,
                        unit: unit.to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    })
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return Ok(()),
            }
        }
    }
}

fn map_err(e: zbus::Error, action: &'static str, unit: &str) -> ServiceError {
    if let zbus::Error::MethodError(name, detail, _) = &e {
        let detail = detail.clone().unwrap_or_default();
        return match name.as_str() {
            "org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.systemd1.LoadFailed" => {
                ServiceError::NotFound(unit.to_string())
            }
            "org.freedesktop.DBus.Error.AccessDenied"
            | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
                ServiceError::PermissionDenied { action, unit: unit.to_string(), detail }
            }
            _ => ServiceError::Failed { action, unit: unit.to_string(), detail: format!("{name}: {detail}") },
        };
    }
    match e {
        zbus::Error::InputOutput(io) => ServiceError::Unavailable(io.to_string()),
        other => ServiceError::Failed { action, unit: unit.to_string(), detail: other.to_string() },
    }
}

fn as_string(v: OwnedValue) -> String {
    String::try_from(v).unwrap_or_default()
}

fn as_u32(v: OwnedValue) -> u32 {
    u32::try_from(v).unwrap_or_default()
}

impl ServiceManager for Systemd {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn status(&self, unit: &str) -> Result<ServiceStatus, ServiceError> {
        let path = self.unit_path(unit)?;
        let p = path.as_str();
        let load = as_string(self.prop(p, UNIT, "LoadState", unit)?);
        if load == "not-found" {
            return Err(ServiceError::NotFound(unit.to_string()));
        }
        let active = as_string(self.prop(p, UNIT, "ActiveState", unit)?);
        let sub_state = as_string(self.prop(p, UNIT, "SubState", unit)?);
        let is_service = unit.ends_with(".service");
        let main_pid = if is_service { as_u32(self.prop(p, SERVICE, "MainPID", unit)?) } else { 0 };
        let restarts =
            if is_service { self.prop(p, SERVICE, "NRestarts", unit).ok().map(as_u32) } else { None };
        let cgroup =
            self.prop(p, if is_service { SERVICE } else { UNIT }, "ControlGroup", unit).ok().map(as_string);
        let state = match active.as_str() {
            "active" => ActiveState::Active,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            _ => ActiveState::Other,
        };
        Ok(ServiceStatus {
            state,
            // `auto-restart`: Restart= is waiting RestartSec= before starting
            // it again; custos must not restart on top.
            manager_restarting: sub_state == "auto-restart",
            sub_state,
            main_pid: (main_pid != 0).then_some(main_pid),
            cgroup: cgroup.filter(|c| !c.is_empty()),
            manager_restarts: restarts,
        })
    }

    fn start(&self, unit: &str) -> Result<(), ServiceError> {
        self.job("StartUnit", "start", unit)
    }

    fn stop(&self, unit: &str) -> Result<(), ServiceError> {
        self.job("StopUnit", "stop", unit)
    }

    fn restart(&self, unit: &str) -> Result<(), ServiceError> {
        self.job("RestartUnit", "restart", unit)
    }

    fn reset_failed(&self, unit: &str) -> Result<(), ServiceError> {
        self.call::<_, ()>(PATH, MANAGER, "ResetFailedUnit", &(unit,))
            .map_err(|e| map_err(e, "reset-failed", unit))
    }

    fn kill(&self, unit: &str, signal: i32) -> Result<(), ServiceError> {
        self.call::<_, ()>(PATH, MANAGER, "KillUnit", &(unit, "main", signal))
            .map_err(|e| map_err(e, "kill", unit))
    }
}

/// systemd's jobs as they come and go, from the manager's `JobNew` and
/// `JobRemoved` signals on a connection of its own: what tells an
/// operator's `systemctl stop` or `restart` (or custos's own) from a crash.
///
/// systemd announces a job before it runs it, so the announcement of the
/// stop that sent a SIGTERM leaves systemd before the process exits; it
/// may still reach custos after the kernel's exit event. [`sync`] closes
/// that race: a `Ping` sent on the same connection is answered after
/// every signal systemd sent before it, so once the watcher has read the
/// answer, every job created before the ping is in the log.
///
/// [`sync`]: crate::service_manager::ManagerJobs::sync
pub struct JobWatcher {
    log: std::sync::Arc<crate::service_manager::JobLog>,
    conn: Connection,
    sync: std::sync::Arc<(std::sync::Mutex<PingState>, std::sync::Condvar)>,
}

#[derive(Debug, Default)]
struct PingState {
    /// Pings whose answer the watcher has read, by serial.
    answered: std::collections::HashSet<u32>,
    /// The watcher's thread has ended (the connection broke).
    gone: bool,
}

const PEER: &str = "org.freedesktop.DBus.Peer";
/// Where systemd puts its unit objects (`.../unit/api_2eservice`).
const UNIT_PATHS: &str = "/org/freedesktop/systemd1/unit";
const JOB: &str = "org.freedesktop.systemd1.Job";

impl JobWatcher {
    /// Subscribes to systemd's job signals on the system bus, or on the bus
    /// at `address` (another namespace's, in tests), and follows them on a
    /// thread of its own until the connection breaks.
    pub fn start(address: Option<&str>) -> Result<JobWatcher, ServiceError> {
        let unavailable = |e: zbus::Error| ServiceError::Unavailable(format!("job signals: {e}"));
        let connect = || match address {
            Some(a) => zbus::blocking::connection::Builder::address(a)
                .and_then(|b| b.method_timeout(Duration::from_secs(5)).build()),
            None => Connection::system(),
        };
        let conn = connect().map_err(unavailable)?;
        // Job types are read on a second connection, so that the watcher
        // never waits for an answer behind the signals it has not read.
        let query = connect().map_err(unavailable)?;
        let manager_signals = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(DEST)
            .and_then(|b| b.interface(MANAGER))
            .and_then(|b| b.path(PATH))
            .map_err(unavailable)?
            .build();
        // Each unit's ActiveState changes: what a job does to its unit.
        let unit_changes = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(DEST)
            .and_then(|b| b.interface(PROPS))
            .and_then(|b| b.member("PropertiesChanged"))
            .and_then(|b| b.path_namespace(UNIT_PATHS))
            .and_then(|b| b.add_arg(UNIT))
            .map_err(unavailable)?
            .build();
        let bus = zbus::blocking::fdo::DBusProxy::new(&conn).map_err(unavailable)?;
        for rule in [manager_signals, unit_changes] {
            bus.add_match_rule(rule).map_err(|e| unavailable(e.into()))?;
        }
        // Every message the connection receives, in order: the signals and
        // the answers to pings.
        let messages = zbus::blocking::MessageIterator::from(&conn);
        // systemd sends job signals on the bus only while someone subscribed.
        conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &()).map_err(unavailable)?;
        let log = std::sync::Arc::new(crate::service_manager::JobLog::default());
        let sync =
            std::sync::Arc::new((std::sync::Mutex::new(PingState::default()), std::sync::Condvar::new()));
        let (l, s) = (log.clone(), sync.clone());
        std::thread::Builder::new()
            .name("systemd-jobs".into())
            .spawn(move || follow_jobs(messages, &query, &l, &s))
            .map_err(|e| ServiceError::Unavailable(format!("job signals: {e}")))?;
        Ok(JobWatcher { log, conn, sync })
    }
}

/// Reads the watcher's connection until it breaks: jobs into the log, ping
/// answers into the sync state.
fn follow_jobs(
    messages: zbus::blocking::MessageIterator,
    query: &Connection,
    log: &crate::service_manager::JobLog,
    sync: &(std::sync::Mutex<PingState>, std::sync::Condvar),
) {
    use crate::service_manager::JobKind;
    for msg in messages {
        let Ok(msg) = msg else { break };
        let header = msg.header();
        match msg.message_type() {
            zbus::message::Type::Signal => {
                let member = header.member().map(|m| m.as_str().to_string()).unwrap_or_default();
                let seen = std::time::SystemTime::now();
                if member == "JobNew" {
                    let Ok((id, job, unit)) = msg.body().deserialize::<(u32, OwnedObjectPath, String)>()
                    else {
                        continue;
                    };
                    log.job_new(&unit, u64::from(id), JobKind::Unknown, seen);
                    // The type as long as the job exists (a short job is
                    // gone already; its unit's changes tell what it did).
                    let kind = query
                        .call_method(Some(DEST), job.as_str(), Some(PROPS), "Get", &(JOB, "JobType"))
                        .ok()
                        .and_then(|m| m.body().deserialize::<OwnedValue>().ok())
                        .map(|v| JobKind::from_systemd(&as_string(v)));
                    tracing::debug!(unit = %unit, job = id, ?kind, "systemd job started.");
                    if let Some(kind) = kind {
                        log.job_kind(&unit, u64::from(id), kind);
                    }
                } else if member == "JobRemoved" {
                    if let Ok((id, _job, unit, result)) =
                        msg.body().deserialize::<(u32, OwnedObjectPath, String, String)>()
                    {
                        tracing::debug!(unit = %unit, job = id, result = %result, "systemd job ended.");
                        log.job_removed(&unit, u64::from(id), seen);
                    }
                } else if member == "PropertiesChanged" {
                    let Some(unit) = header.path().and_then(|p| unit_of_path(p.as_str())) else { continue };
                    let Ok((_iface, changed, _invalidated)) = msg.body().deserialize::<(
                        String,
                        std::collections::HashMap<String, OwnedValue>,
                        Vec<String>,
                    )>() else {
                        continue;
                    };
                    if let Some(state) = changed.get("ActiveState").and_then(|v| v.try_clone().ok()) {
                        log.unit_state(&unit, &as_string(state), seen);
                    }
                }
            }
            zbus::message::Type::MethodReturn | zbus::message::Type::Error => {
                if let Some(serial) = header.reply_serial() {
                    let (state, cv) = sync;
                    let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
                    if g.answered.len() > 1024 {
                        // Answers nobody waited for (pings that timed out).
                        g.answered.clear();
                    }
                    g.answered.insert(serial.get());
                    cv.notify_all();
                }
            }
            zbus::message::Type::MethodCall => {}
        }
    }
    tracing::warn!("The systemd job signal connection ended: stops can no longer be told from crashes.");
    let (state, cv) = sync;
    state.lock().unwrap_or_else(|e| e.into_inner()).gone = true;
    cv.notify_all();
}

impl crate::service_manager::ManagerJobs for JobWatcher {
    fn jobs(&self, unit: &str) -> Vec<crate::service_manager::ManagerJob> {
        self.log.jobs(unit)
    }

    fn sync(&self, timeout: Duration) -> Option<std::time::SystemTime> {
        let sent = std::time::SystemTime::now();
        let ping = zbus::Message::method_call(PATH, "Ping")
            .and_then(|b| b.destination(DEST))
            .and_then(|b| b.interface(PEER))
            .and_then(|b| b.build(&()))
            .ok()?;
        let serial = ping.primary_header().serial_num().get();
        self.conn.send(&ping).ok()?;
        let (state, cv) = &*self.sync;
        let deadline = Instant::now() + timeout;
        let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.answered.remove(&serial) {
                return Some(sent);
            }
            let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
            let left = left.filter(|_| !g.gone)?;
            g = cv.wait_timeout(g, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// The unit a systemd unit object path names: the last element with
/// systemd's escaping undone (`api_2eservice` is `api.service`: every
/// byte but ASCII letters and digits is `_` and two hex digits).
fn unit_of_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATHS)?.strip_prefix('/')?;
    if label.is_empty() || label.contains('/') {
        return None;
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::unit_of_path;

    #[test]
    fn unit_object_paths_are_unescaped() {
        let at = |label: &str| unit_of_path(&format!("/org/freedesktop/systemd1/unit/{label}"));
        assert_eq!(at("api_2eservice").as_deref(), Some("api.service"));
        assert_eq!(at("getty_40tty1_2eservice").as_deref(), Some("getty@tty1.service"));
        assert_eq!(at("_31password_2dagent_2eservice").as_deref(), Some("1password-agent.service"));
        assert_eq!(at("bad_2"), None);
        assert_eq!(at("bad_zz"), None);
        assert_eq!(unit_of_path("/org/freedesktop/systemd1/job/12"), None);
        assert_eq!(unit_of_path("/org/freedesktop/systemd1/unit"), None);
    }
}
