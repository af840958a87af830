//! The rules of talking to the SCM as a service and about services, as pure
//! functions: how SCM states map onto [`ActiveState`], what a status report
//! says in each phase, and what each control code asks for.

use crate::service_manager::{ActiveState, ServiceError};
use std::time::Duration;

pub const SERVICE_STOPPED: u32 = 1;
pub const SERVICE_START_PENDING: u32 = 2;
pub const SERVICE_STOP_PENDING: u32 = 3;
pub const SERVICE_RUNNING: u32 = 4;
pub const SERVICE_CONTINUE_PENDING: u32 = 5;
pub const SERVICE_PAUSE_PENDING: u32 = 6;
pub const SERVICE_PAUSED: u32 = 7;

pub const SERVICE_ACCEPT_STOP: u32 = 0x1;
pub const SERVICE_ACCEPT_SHUTDOWN: u32 = 0x4;
pub const SERVICE_ACCEPT_PRESHUTDOWN: u32 = 0x100;

pub const SERVICE_CONTROL_STOP: u32 = 0x1;
pub const SERVICE_CONTROL_INTERROGATE: u32 = 0x4;
pub const SERVICE_CONTROL_SHUTDOWN: u32 = 0x5;
pub const SERVICE_CONTROL_PRESHUTDOWN: u32 = 0xF;

pub const NO_ERROR: u32 = 0;
pub const ERROR_CALL_NOT_IMPLEMENTED: u32 = 120;
pub const ERROR_SERVICE_SPECIFIC_ERROR: u32 = 1066;

/// The coarse state and the SCM's own name for a service's state.
pub fn active_state(current_state: u32, win32_exit_code: u32) -> (ActiveState, &'static str) {
    match current_state {
        SERVICE_STOPPED if win32_exit_code != NO_ERROR => (ActiveState::Failed, "stopped"),
        SERVICE_STOPPED => (ActiveState::Inactive, "stopped"),
        SERVICE_START_PENDING => (ActiveState::Activating, "start_pending"),
        SERVICE_STOP_PENDING => (ActiveState::Deactivating, "stop_pending"),
        SERVICE_RUNNING => (ActiveState::Active, "running"),
        SERVICE_CONTINUE_PENDING => (ActiveState::Activating, "continue_pending"),
        SERVICE_PAUSE_PENDING => (ActiveState::Other, "pause_pending"),
        SERVICE_PAUSED => (ActiveState::Other, "paused"),
        _ => (ActiveState::Other, "unknown"),
    }
}

/// Where custos is in its life as a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    /// Draining before exit; the hint is how long the drain may take.
    Stopping,
    /// Stopped; `Some(code)` when the agent ended with an error, which lets
    /// the SCM's recovery actions run (with the non-crash flag set).
    Stopped(Option<u32>),
}

/// The fields of one `SERVICE_STATUS` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusReport {
    pub current_state: u32,
    pub controls_accepted: u32,
    pub win32_exit_code: u32,
    pub service_specific_exit_code: u32,
    pub check_point: u32,
    pub wait_hint_ms: u32,
}

/// Builds successive reports: the checkpoint grows while a phase is
/// pending, so the SCM sees progress, and is 0 otherwise.
#[derive(Debug, Clone, Default)]
pub struct StatusTracker {
    check_point: u32,
    last: Option<Phase>,
}

impl StatusTracker {
    pub fn report(&mut self, phase: Phase, wait_hint_ms: u32) -> StatusReport {
        let pending = matches!(phase, Phase::Starting | Phase::Stopping);
        self.check_point = if !pending {
            0
        } else if self.last == Some(phase) {
            self.check_point.saturating_add(1)
        } else {
            1
        };
        self.last = Some(phase);
        let (current_state, controls_accepted) = match phase {
            // No controls while starting or stopping: the SCM queues none then.
            Phase::Starting => (SERVICE_START_PENDING, 0),
            Phase::Running => {
                (SERVICE_RUNNING, SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN | SERVICE_ACCEPT_PRESHUTDOWN)
            }
            Phase::Stopping => (SERVICE_STOP_PENDING, 0),
            Phase::Stopped(_) => (SERVICE_STOPPED, 0),
        };
        let (win32_exit_code, service_specific_exit_code) = match phase {
            Phase::Stopped(Some(code)) => (ERROR_SERVICE_SPECIFIC_ERROR, code),
            _ => (NO_ERROR, 0),
        };
        StatusReport {
            current_state,
            controls_accepted,
            win32_exit_code,
            service_specific_exit_code,
            check_point: self.check_point,
            wait_hint_ms: if pending { wait_hint_ms } else { 0 },
        }
    }

    /// The phase of the last report.
    pub fn phase(&self) -> Option<Phase> {
        self.last
    }
}

/// What a control code asks of custos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// Stop, system shutdown or preshutdown: drain and exit.
    Stop,
    /// Report the current status again.
    Interrogate,
    /// Not handled: answer `ERROR_CALL_NOT_IMPLEMENTED`.
    Unsupported,
}

pub fn classify_control(control: u32) -> ControlRequest {
    match control {
        SERVICE_CONTROL_STOP | SERVICE_CONTROL_SHUTDOWN | SERVICE_CONTROL_PRESHUTDOWN => ControlRequest::Stop,
        SERVICE_CONTROL_INTERROGATE => ControlRequest::Interrogate,
        _ => ControlRequest::Unsupported,
    }
}

/// Polls `current_state` until the service is STOPPED, sleeping `poll`
/// between queries, for at most `timeout` as measured by `elapsed`. The
/// clock and sleep are parameters so the rule is tested without waiting.
pub fn wait_until_stopped(
    unit: &str,
    timeout: Duration,
    poll: Duration,
    mut current_state: impl FnMut() -> Result<u32, ServiceError>,
    elapsed: impl Fn() -> Duration,
    mut sleep: impl FnMut(Duration),
) -> Result<(), ServiceError> {
    loop {
        if current_state()? == SERVICE_STOPPED {
            return Ok(());
        }
        let waited = elapsed();
        if waited >= timeout {
            return Err(ServiceError::Timeout {
                action: "stop",
                unit: unit.to_string(),
                waited_ms: waited.as_millis() as u64,
            });
        }
        sleep(poll.min(timeout - waited));
    }
}

/// The exit code of a service process terminated by a runbook's `kill`:
/// Windows has no signals, so the process ends with 128 + signal, as a
/// shell reports a process killed by that signal on Linux.
pub fn kill_exit_code(signal: i32) -> u32 {
    128 + signal.clamp(0, 127) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scm_states_map_onto_active_states() {
        assert_eq!(active_state(SERVICE_RUNNING, 0), (ActiveState::Active, "running"));
        assert_eq!(active_state(SERVICE_STOPPED, 0), (ActiveState::Inactive, "stopped"));
        assert_eq!(active_state(SERVICE_STOPPED, ERROR_SERVICE_SPECIFIC_ERROR).0, ActiveState::Failed);
        assert_eq!(
            active_state(SERVICE_STOPPED, 1067).0,
            ActiveState::Failed,
            "process terminated unexpectedly"
        );
        assert_eq!(active_state(SERVICE_START_PENDING, 0).0, ActiveState::Activating);
        assert_eq!(active_state(SERVICE_STOP_PENDING, 0).0, ActiveState::Deactivating);
        assert_eq!(active_state(SERVICE_PAUSED, 0).0, ActiveState::Other);
        assert_eq!(active_state(99, 0), (ActiveState::Other, "unknown"));
    }

    #[test]
    fn pending_phases_advance_the_checkpoint_and_accept_no_controls() {
        let mut t = StatusTracker::default();
        let r = t.report(Phase::Starting, 10_000);
        assert_eq!((r.current_state, r.check_point, r.wait_hint_ms, r.controls_accepted), (2, 1, 10_000, 0));
        assert_eq!(t.report(Phase::Starting, 10_000).check_point, 2);
        let r = t.report(Phase::Running, 10_000);
        assert_eq!((r.current_state, r.check_point, r.wait_hint_ms), (SERVICE_RUNNING, 0, 0));
        assert_eq!(
            r.controls_accepted,
            SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN | SERVICE_ACCEPT_PRESHUTDOWN
        );
        let r = t.report(Phase::Stopping, 30_000);
        assert_eq!((r.current_state, r.check_point, r.wait_hint_ms, r.controls_accepted), (3, 1, 30_000, 0));
        assert_eq!(t.report(Phase::Stopping, 30_000).check_point, 2);
        let r = t.report(Phase::Stopped(None), 30_000);
        assert_eq!((r.current_state, r.check_point, r.win32_exit_code), (SERVICE_STOPPED, 0, NO_ERROR));
    }

    #[test]
    fn stopping_with_an_error_reports_a_service_specific_exit_code() {
        let r = StatusTracker::default().report(Phase::Stopped(Some(3)), 0);
        assert_eq!((r.win32_exit_code, r.service_specific_exit_code), (ERROR_SERVICE_SPECIFIC_ERROR, 3));
    }

    use std::cell::Cell;

    #[test]
    fn stop_waits_for_stopped_within_the_timeout() {
        let clock = Cell::new(Duration::ZERO);
        let mut states = [SERVICE_STOP_PENDING, SERVICE_STOP_PENDING, SERVICE_STOPPED].into_iter();
        let r = wait_until_stopped(
            "Api",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || Ok(states.next().unwrap()),
            || clock.get(),
            |d| clock.set(clock.get() + d),
        );
        assert!(r.is_ok());
        assert_eq!(clock.get(), Duration::from_millis(500));
    }

    #[test]
    fn a_service_that_does_not_stop_times_out() {
        let clock = Cell::new(Duration::ZERO);
        let r = wait_until_stopped(
            "Api",
            Duration::from_secs(1),
            Duration::from_millis(300),
            || Ok(SERVICE_STOP_PENDING),
            || clock.get(),
            |d| clock.set(clock.get() + d),
        );
        match r {
            Err(ServiceError::Timeout { action: "stop", unit, waited_ms }) => {
                assert_eq!((unit.as_str(), waited_ms), ("Api", 1000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failing_query_ends_the_wait() {
        let r = wait_until_stopped(
            "Api",
            Duration::from_secs(1),
            Duration::from_millis(300),
            || Err(ServiceError::NotFound("Api".into())),
            || Duration::ZERO,
            |_| panic!("no sleep after an error"),
        );
        assert!(matches!(r, Err(ServiceError::NotFound(_))));
    }

    #[test]
    fn killed_processes_exit_like_a_signal_on_linux() {
        assert_eq!(kill_exit_code(9), 137);
        assert_eq!(kill_exit_code(15), 143);
        assert_eq!(kill_exit_code(-1), 128);
    }

    #[test]
    fn stop_shutdown_and_preshutdown_all_drain() {
        assert_eq!(classify_control(SERVICE_CONTROL_STOP), ControlRequest::Stop);
        assert_eq!(classify_control(SERVICE_CONTROL_SHUTDOWN), ControlRequest::Stop);
        assert_eq!(classify_control(SERVICE_CONTROL_PRESHUTDOWN), ControlRequest::Stop);
        assert_eq!(classify_control(SERVICE_CONTROL_INTERROGATE), ControlRequest::Interrogate);
        assert_eq!(classify_control(0x2), ControlRequest::Unsupported, "pause");
    }
}
