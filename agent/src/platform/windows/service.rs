//! Running custos as a Windows service, or in a console.
//!
//! [`run_service_or_console`] connects to the SCM's dispatcher; when custos
//! was started from a terminal instead, that fails with
//! `ERROR_FAILED_SERVICE_CONTROLLER_CONNECT` and the body runs in console
//! mode, stopped by Ctrl+C / Ctrl+Break / closing the window. Either way the
//! stop request (SCM Stop, Shutdown or Preshutdown; console control) calls
//! the caller's `on_stop`, which starts the same graceful drain as on Linux.
//!
//! Status reports follow the SCM's rules ([`super::status`]): START_PENDING
//! with a wait hint and an advancing checkpoint until the body calls
//! [`ServiceContext::ready`], RUNNING, STOP_PENDING with the drain's wait
//! hint (checkpoint advancing every second) once a stop is requested, and
//! STOPPED with a service-specific exit code when the body failed, so that
//! the recovery actions `custos install` configured restart it.

use super::ffi::{describe, last_error, wide};
use super::status::{
    classify_control, ControlRequest, Phase, StatusTracker, ERROR_CALL_NOT_IMPLEMENTED, NO_ERROR,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use windows_sys::core::PWSTR;
use windows_sys::Win32::Foundation::ERROR_FAILED_SERVICE_CONTROLLER_CONNECT;
use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
use windows_sys::Win32::System::Services::{
    RegisterServiceCtrlHandlerExW, SetServiceStatus, StartServiceCtrlDispatcherW, SERVICE_STATUS,
    SERVICE_STATUS_HANDLE, SERVICE_TABLE_ENTRYW, SERVICE_WIN32_OWN_PROCESS,
};

/// The error type of the body: anything, boxed (`anyhow::Error` converts).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How custos was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Under the SCM: log to the Event Log.
    Service,
    /// From a terminal: log to stderr.
    Console,
}

/// Timing of the status reports.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The service name custos was installed under.
    pub service_name: String,
    /// Wait hint while starting, before [`ServiceContext::ready`].
    pub start_wait_hint: Duration,
    /// Wait hint while draining after a stop request.
    pub stop_wait_hint: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            service_name: "custos".to_string(),
            start_wait_hint: Duration::from_secs(10),
            stop_wait_hint: Duration::from_secs(30),
        }
    }
}

/// Why hosting (not the agent) failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the service host was already started in this process")]
    AlreadyStarted,
    #[error("cannot connect to the service control manager: {0}")]
    Dispatcher(String),
    #[error("cannot register the service control handler: {0}")]
    Register(String),
    #[error("cannot install the console control handler: {0}")]
    Console(String),
}

/// Given to the body: its run mode, and how to say it is ready.
pub struct ServiceContext {
    mode: RunMode,
    reporter: Option<Arc<Reporter>>,
}

impl ServiceContext {
    pub fn mode(&self) -> RunMode {
        self.mode
    }

    /// Reports RUNNING to the SCM (no-op in a console). Call once the agent
    /// has started its pipeline.
    pub fn ready(&self) {
        if let Some(r) = &self.reporter {
            r.set(Phase::Running);
        }
    }
}

type Body = Box<dyn FnOnce(ServiceContext) -> Result<(), BodyError> + Send>;

struct Hosted {
    name: Vec<u16>,
    options: HostOptions,
    on_stop: Box<dyn Fn() + Send + Sync>,
    body: Mutex<Option<Body>>,
    result: Mutex<Option<Result<(), BodyError>>>,
    host_error: Mutex<Option<HostError>>,
    reporter: OnceLock<Arc<Reporter>>,
}

static HOSTED: OnceLock<Hosted> = OnceLock::new();

struct Reporter {
    handle: SERVICE_STATUS_HANDLE,
    tracker: Mutex<StatusTracker>,
    start_hint_ms: u32,
    stop_hint_ms: u32,
}

// SAFETY: a service status handle may be used from any thread (the SCM
// documents SetServiceStatus as callable from the handler and other threads).
unsafe impl Send for Reporter {}
unsafe impl Sync for Reporter {}

impl Reporter {
    fn set(&self, phase: Phase) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing may follow STOPPED; a late stop request must not revive it.
        if matches!(t.phase(), Some(Phase::Stopped(_))) {
            return;
        }
        let hint = match phase {
            Phase::Starting => self.start_hint_ms,
            Phase::Stopping => self.stop_hint_ms,
            _ => 0,
        };
        let r = t.report(phase, hint);
        let status = SERVICE_STATUS {
            dwServiceType: SERVICE_WIN32_OWN_PROCESS,
            dwCurrentState: r.current_state,
            dwControlsAccepted: r.controls_accepted,
            dwWin32ExitCode: r.win32_exit_code,
            dwServiceSpecificExitCode: r.service_specific_exit_code,
            dwCheckPoint: r.check_point,
            dwWaitHint: r.wait_hint_ms,
        };
        // SAFETY: the handle came from RegisterServiceCtrlHandlerExW and is
        // valid for the life of the service; `status` lives across the call.
        unsafe { SetServiceStatus(self.handle, &status) };
    }

    fn phase(&self) -> Option<Phase> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner()).phase()
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Runs `body` as the custos service when the SCM started this process, or
/// in console mode otherwise. `on_stop` is called (possibly more than once,
/// from another thread) when a stop is requested: it must only signal the
/// drain, e.g. cancel a token. Returns the run mode and the body's result.
pub fn run_service_or_console(
    options: HostOptions,
    on_stop: impl Fn() + Send + Sync + 'static,
    body: impl FnOnce(ServiceContext) -> Result<(), BodyError> + Send + 'static,
) -> Result<(RunMode, Result<(), BodyError>), HostError> {
    let hosted = Hosted {
        name: wide(&options.service_name),
        options,
        on_stop: Box::new(on_stop),
        body: Mutex::new(Some(Box::new(body))),
        result: Mutex::new(None),
        host_error: Mutex::new(None),
        reporter: OnceLock::new(),
    };
    HOSTED.set(hosted).map_err(|_| HostError::AlreadyStarted)?;
    let Some(hosted) = HOSTED.get() else { return Err(HostError::AlreadyStarted) };

    let table = [
        SERVICE_TABLE_ENTRYW {
            lpServiceName: hosted.name.as_ptr() as PWSTR,
            lpServiceProc: Some(service_main),
        },
        SERVICE_TABLE_ENTRYW { lpServiceName: std::ptr::null_mut(), lpServiceProc: None },
    ];
    // SAFETY: the table is terminated by a null entry and, like the name it
    // points to (in a static), outlives the call, which returns only once
    // the service has stopped.
    if unsafe { StartServiceCtrlDispatcherW(table.as_ptr()) } == 0 {
        let code = last_error();
        if code != ERROR_FAILED_SERVICE_CONTROLLER_CONNECT {
            return Err(HostError::Dispatcher(describe(code)));
        }
        return run_console(hosted);
    }
    if let Some(e) = hosted.host_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let result = hosted.result.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or(Ok(()));
    Ok((RunMode::Service, result))
}

fn run_console(hosted: &'static Hosted) -> Result<(RunMode, Result<(), BodyError>), HostError> {
    // SAFETY: the handler is a plain function valid for the process's life.
    if unsafe { SetConsoleCtrlHandler(Some(console_handler), 1) } == 0 {
        return Err(HostError::Console(describe(last_error())));
    }
    let Some(body) = hosted.body.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return Err(HostError::AlreadyStarted);
    };
    Ok((RunMode::Console, body(ServiceContext { mode: RunMode::Console, reporter: None })))
}

unsafe extern "system" fn console_handler(_ctrl_type: u32) -> i32 {
    if let Some(h) = HOSTED.get() {
        (h.on_stop)();
    }
    // Handled: Windows does not terminate the process; the drain does.
    1
}

unsafe extern "system" fn service_main(_argc: u32, _argv: *mut PWSTR) {
    let Some(hosted) = HOSTED.get() else { return };
    // SAFETY: the name is NUL-terminated and static; the handler is a plain
    // function; no context is used.
    let handle = unsafe {
        RegisterServiceCtrlHandlerExW(hosted.name.as_ptr(), Some(control_handler), std::ptr::null())
    };
    if handle.is_null() {
        *hosted.host_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(HostError::Register(describe(last_error())));
        return;
    }
    let reporter = Arc::new(Reporter {
        handle,
        tracker: Mutex::new(StatusTracker::default()),
        start_hint_ms: millis(hosted.options.start_wait_hint),
        stop_hint_ms: millis(hosted.options.stop_wait_hint),
    });
    let _ = hosted.reporter.set(reporter.clone());
    reporter.set(Phase::Starting);

    // While a phase is pending, re-report it every second so the SCM sees
    // the checkpoint advance and does not give up on custos.
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let (reporter, ticking) = (reporter.clone(), ticking.clone());
        std::thread::spawn(move || {
            while ticking.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                if let Some(p @ (Phase::Starting | Phase::Stopping)) = reporter.phase() {
                    if ticking.load(Ordering::Relaxed) {
                        reporter.set(p);
                    }
                }
            }
        })
    };

    let body = hosted.body.lock().unwrap_or_else(|p| p.into_inner()).take();
    let context = ServiceContext { mode: RunMode::Service, reporter: Some(reporter.clone()) };
    // A panic must not unwind out of this `extern "system"` function (that
    // aborts without telling the SCM): report it as a failure instead, so
    // the recovery actions restart custos.
    let result = match body {
        Some(body) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(context))) {
            Ok(r) => r,
            Err(_) => Err("the agent panicked".into()),
        },
        None => Ok(()),
    };
    ticking.store(false, Ordering::Relaxed);
    let _ = ticker.join();
    if let Err(e) = &result {
        tracing::error!(error = %e, "custos stopped with an error.");
    }
    let exit = if result.is_err() { Some(1) } else { None };
    *hosted.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    reporter.set(Phase::Stopped(exit));
}

unsafe extern "system" fn control_handler(
    control: u32,
    _event_type: u32,
    _event_data: *mut core::ffi::c_void,
    _context: *mut core::ffi::c_void,
) -> u32 {
    let Some(hosted) = HOSTED.get() else { return ERROR_CALL_NOT_IMPLEMENTED };
    match classify_control(control) {
        ControlRequest::Stop => {
            if let Some(r) = hosted.reporter.get() {
                r.set(Phase::Stopping);
            }
            tracing::info!(control, "Stop requested by the service control manager.");
            (hosted.on_stop)();
            NO_ERROR
        }
        ControlRequest::Interrogate => {
            if let Some(r) = hosted.reporter.get() {
                if let Some(p) = r.phase() {
                    r.set(p);
                }
            }
            NO_ERROR
        }
        ControlRequest::Unsupported => ERROR_CALL_NOT_IMPLEMENTED,
    }
}
