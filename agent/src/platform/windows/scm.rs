//! [`ServiceManager`] over the Service Control Manager.

use super::ffi::{last_error, open_manager, open_service, service_error, ScHandle};
use super::status::{active_state, kill_exit_code};
use crate::service_manager::{ServiceError, ServiceManager, ServiceStatus};
use std::time::{Duration, Instant};
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SERVICE_ALREADY_RUNNING, ERROR_SERVICE_NOT_ACTIVE};
use windows_sys::Win32::System::Services::{
    ControlService, QueryServiceStatusEx, StartServiceW, SC_MANAGER_CONNECT, SC_STATUS_PROCESS_INFO,
    SERVICE_CONTROL_STOP, SERVICE_QUERY_STATUS, SERVICE_START, SERVICE_STATUS, SERVICE_STATUS_PROCESS,
    SERVICE_STOP, SERVICE_STOPPED,
};
use windows_sys::Win32::System::Threading::{OpenProcess, TerminateProcess, PROCESS_TERMINATE};

/// Acts on Windows services through the SCM. Calls block (see the trait).
#[derive(Debug, Clone)]
pub struct ScmServiceManager {
    /// How long `stop` (and the stop half of `restart`) waits for STOPPED.
    pub stop_timeout: Duration,
    /// How often a pending stop is polled.
    pub poll: Duration,
}

impl Default for ScmServiceManager {
    fn default() -> Self {
        ScmServiceManager { stop_timeout: Duration::from_secs(30), poll: Duration::from_millis(250) }
    }
}

fn query(service: &ScHandle, unit: &str) -> Result<SERVICE_STATUS_PROCESS, ServiceError> {
    // SAFETY: zero is a valid bit pattern for this plain C structure.
    let mut status: SERVICE_STATUS_PROCESS = unsafe { std::mem::zeroed() };
    let mut needed = 0u32;
    // SAFETY: the buffer is exactly one SERVICE_STATUS_PROCESS, as the
    // SC_STATUS_PROCESS_INFO level requires.
    let ok = unsafe {
        QueryServiceStatusEx(
            service.0,
            SC_STATUS_PROCESS_INFO,
            (&mut status as *mut SERVICE_STATUS_PROCESS).cast(),
            std::mem::size_of::<SERVICE_STATUS_PROCESS>() as u32,
            &mut needed,
        )
    };
    if ok == 0 {
        return Err(service_error("query", unit, last_error()));
    }
    Ok(status)
}

impl ScmServiceManager {
    fn wait_stopped(&self, service: &ScHandle, unit: &str) -> Result<(), ServiceError> {
        let started = Instant::now();
        loop {
            if query(service, unit)?.dwCurrentState == SERVICE_STOPPED {
                return Ok(());
            }
            if started.elapsed() >= self.stop_timeout {
                return Err(ServiceError::Timeout {
                    action: "stop",
                    unit: unit.to_string(),
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(self.poll);
        }
    }
}

impl ServiceManager for ScmServiceManager {
    fn name(&self) -> &'static str {
        "scm"
    }

    fn status(&self, unit: &str) -> Result<ServiceStatus, ServiceError> {
        let m = open_manager(SC_MANAGER_CONNECT)?;
        let s = open_service(&m, unit, SERVICE_QUERY_STATUS, "query")?;
        let st = query(&s, unit)?;
        let (state, sub) = active_state(st.dwCurrentState, st.dwWin32ExitCode);
        Ok(ServiceStatus {
            state,
            sub_state: sub.to_string(),
            main_pid: (st.dwProcessId != 0).then_some(st.dwProcessId),
            cgroup: None,
            // The SCM does not expose a pending recovery restart.
            manager_restarting: false,
            manager_restarts: None,
        })
    }

    fn start(&self, unit: &str) -> Result<(), ServiceError> {
        let m = open_manager(SC_MANAGER_CONNECT)?;
        let s = open_service(&m, unit, SERVICE_START, "start")?;
        // SAFETY: the handle is open; no arguments are passed.
        if unsafe { StartServiceW(s.0, 0, std::ptr::null()) } == 0 {
            let code = last_error();
            if code != ERROR_SERVICE_ALREADY_RUNNING {
                return Err(service_error("start", unit, code));
            }
        }
        Ok(())
    }

    fn stop(&self, unit: &str) -> Result<(), ServiceError> {
        let m = open_manager(SC_MANAGER_CONNECT)?;
        let s = open_service(&m, unit, SERVICE_STOP | SERVICE_QUERY_STATUS, "stop")?;
        // SAFETY: zero is a valid SERVICE_STATUS; the handle is open.
        let mut st: SERVICE_STATUS = unsafe { std::mem::zeroed() };
        if unsafe { ControlService(s.0, SERVICE_CONTROL_STOP, &mut st) } == 0 {
            let code = last_error();
            if code == ERROR_SERVICE_NOT_ACTIVE {
                return Ok(());
            }
            return Err(service_error("stop", unit, code));
        }
        self.wait_stopped(&s, unit)
    }

    fn restart(&self, unit: &str) -> Result<(), ServiceError> {
        self.stop(unit)?;
        self.start(unit)
    }

    fn reset_failed(&self, _unit: &str) -> Result<(), ServiceError> {
        // The SCM keeps no failed state to clear: a stopped service starts.
        Ok(())
    }

    fn kill(&self, unit: &str, signal: i32) -> Result<(), ServiceError> {
        let status = self.status(unit)?;
        let Some(pid) = status.main_pid else {
            return Err(ServiceError::Failed {
                action: "kill",
                unit: unit.to_string(),
                detail: "the service has no running process".to_string(),
            });
        };
        // SAFETY: OpenProcess has no memory preconditions; the handle is
        // closed below on every path.
        let h = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
        if h.is_null() {
            return Err(service_error("kill", unit, last_error()));
        }
        // Windows has no signals: every signal terminates the process.
        let ok = unsafe { TerminateProcess(h, kill_exit_code(signal)) };
        let code = last_error();
        unsafe { CloseHandle(h) };
        if ok == 0 {
            return Err(service_error("kill", unit, code));
        }
        Ok(())
    }
}
