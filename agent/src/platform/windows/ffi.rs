//! Small safe wrappers shared by the Windows FFI modules.

use crate::service_manager::ServiceError;
use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_ACCESS_DENIED, ERROR_SERVICE_DOES_NOT_EXIST, WIN32_ERROR,
};
use windows_sys::Win32::System::Services::{CloseServiceHandle, OpenSCManagerW, OpenServiceW, SC_HANDLE};

/// A NUL-terminated UTF-16 copy of `s`.
pub(crate) fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The calling thread's last Win32 error.
pub(crate) fn last_error() -> WIN32_ERROR {
    // SAFETY: no preconditions.
    unsafe { GetLastError() }
}

/// The system's message for a Win32 error code.
pub(crate) fn describe(code: WIN32_ERROR) -> String {
    format!("{} (Win32 error {code})", std::io::Error::from_raw_os_error(code as i32))
}

/// An SCM handle, closed on drop.
pub(crate) struct ScHandle(pub(crate) SC_HANDLE);

impl Drop for ScHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenSCManagerW/OpenServiceW/CreateServiceW
        // and is closed exactly once.
        unsafe {
            CloseServiceHandle(self.0);
        }
    }
}

/// Maps the last error of an SCM call about `unit` onto a [`ServiceError`].
pub(crate) fn service_error(action: &'static str, unit: &str, code: WIN32_ERROR) -> ServiceError {
    match code {
        ERROR_SERVICE_DOES_NOT_EXIST => ServiceError::NotFound(unit.to_string()),
        ERROR_ACCESS_DENIED => ServiceError::PermissionDenied {
            action,
            unit: unit.to_string(),
            detail: "run custos as LocalSystem or an administrator".to_string(),
        },
        _ => ServiceError::Failed { action, unit: unit.to_string(), detail: describe(code) },
    }
}

/// Opens the local SCM with `access`.
pub(crate) fn open_manager(access: u32) -> Result<ScHandle, ServiceError> {
    // SAFETY: null machine and database names select the local active database.
    let h = unsafe { OpenSCManagerW(std::ptr::null(), std::ptr::null(), access) };
    if h.is_null() {
        let code = last_error();
        return Err(if code == ERROR_ACCESS_DENIED {
            ServiceError::PermissionDenied {
                action: "open",
                unit: "the service control manager".to_string(),
                detail: "run custos as LocalSystem or an administrator".to_string(),
            }
        } else {
            ServiceError::Unavailable(describe(code))
        });
    }
    Ok(ScHandle(h))
}

/// Opens service `unit` with `access`.
pub(crate) fn open_service(
    manager: &ScHandle,
    unit: &str,
    access: u32,
    action: &'static str,
) -> Result<ScHandle, ServiceError> {
    let name = wide(unit);
    // SAFETY: `manager` is open and `name` is NUL-terminated for the call.
    let h = unsafe { OpenServiceW(manager.0, name.as_ptr(), access) };
    if h.is_null() {
        return Err(service_error(action, unit, last_error()));
    }
    Ok(ScHandle(h))
}
