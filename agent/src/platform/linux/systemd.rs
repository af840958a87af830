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
