//! [`ServiceManager`] over the Service Control Manager.

use super::discover::ListedService;
use super::ffi::{describe, last_error, open_manager, open_service, service_error, ScHandle};
use super::status::{active_state, kill_exit_code, wait_until_stopped};
use crate::service_manager::{ServiceError, ServiceManager, ServiceStatus};
use std::time::{Duration, Instant};
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_MORE_DATA, ERROR_SERVICE_ALREADY_RUNNING, ERROR_SERVICE_NOT_ACTIVE,
};
use windows_sys::Win32::System::Services::{
    ControlService, EnumServicesStatusExW, QueryServiceStatusEx, StartServiceW, ENUM_SERVICE_STATUS_PROCESSW,
    SC_ENUM_PROCESS_INFO, SC_MANAGER_CONNECT, SC_MANAGER_ENUMERATE_SERVICE, SC_STATUS_PROCESS_INFO,
    SERVICE_CONTROL_STOP, SERVICE_QUERY_STATUS, SERVICE_START, SERVICE_STATE_ALL, SERVICE_STATUS,
    SERVICE_STATUS_PROCESS, SERVICE_STOP, SERVICE_WIN32, SERVICE_WIN32_OWN_PROCESS,
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
        wait_until_stopped(
            unit,
            self.stop_timeout,
            self.poll,
            || query(service, unit).map(|s| s.dwCurrentState),
            || started.elapsed(),
            std::thread::sleep,
        )
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

/// Every Win32 service the SCM knows, with its process when running.
pub fn list_services() -> Result<Vec<ListedService>, ServiceError> {
    let m = open_manager(SC_MANAGER_CONNECT | SC_MANAGER_ENUMERATE_SERVICE)?;
    let mut out = Vec::new();
    let mut resume = 0u32;
    // u64 storage keeps the returned structures aligned.
    let mut buf = vec![0u64; 8 * 1024];
    loop {
        let (mut needed, mut count) = (0u32, 0u32);
        // SAFETY: the buffer and its byte length match; the SCM writes
        // `count` ENUM_SERVICE_STATUS_PROCESSW records at its start and the
        // strings they point to after them, inside the buffer.
        let ok = unsafe {
            EnumServicesStatusExW(
                m.0,
                SC_ENUM_PROCESS_INFO,
                SERVICE_WIN32,
                SERVICE_STATE_ALL,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
                &mut needed,
                &mut count,
                &mut resume,
                std::ptr::null(),
            )
        };
        let more = ok == 0 && last_error() == ERROR_MORE_DATA;
        if ok == 0 && !more {
            return Err(ServiceError::Unavailable(describe(last_error())));
        }
        // SAFETY: see above; `count` records are initialized.
        let records = unsafe {
            std::slice::from_raw_parts(buf.as_ptr().cast::<ENUM_SERVICE_STATUS_PROCESSW>(), count as usize)
        };
        for r in records {
            let st = r.ServiceStatusProcess;
            out.push(ListedService {
                // SAFETY: the SCM NUL-terminates each name inside the buffer.
                name: unsafe { wide_to_string(r.lpServiceName) },
                own_process: st.dwServiceType & SERVICE_WIN32_OWN_PROCESS != 0,
                pid: (st.dwProcessId != 0).then_some(st.dwProcessId),
            });
        }
        if !more {
            return Ok(out);
        }
        if count == 0 {
            // Not even one record fit: grow to what the SCM asked for.
            buf.resize((needed as usize).div_ceil(8).max(buf.len() * 2), 0);
        }
    }
}

/// # Safety
/// `p` must point to a NUL-terminated UTF-16 string.
unsafe fn wide_to_string(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut len = 0;
    // SAFETY: the caller guarantees a terminating NUL.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` elements were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) })
}
