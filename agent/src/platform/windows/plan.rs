//! What `custos install` asks of the SCM, computed without touching it: the
//! service's command line, its recovery actions in the layout of
//! `SERVICE_FAILURE_ACTIONSW`, and the Event Log source registration.

use crate::config::{RecoveryAction, WindowsAgentConfig};
use std::path::Path;

/// `SC_ACTION_NONE`.
pub const SC_ACTION_NONE: i32 = 0;
/// `SC_ACTION_RESTART`.
pub const SC_ACTION_RESTART: i32 = 1;

/// One `SC_ACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScAction {
    pub kind: i32,
    pub delay_ms: u32,
}

/// The inputs of `SERVICE_FAILURE_ACTIONSW` and `SERVICE_FAILURE_ACTIONS_FLAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureActions {
    /// `dwResetPeriod`: seconds without failure after which the count resets.
    pub reset_period_secs: u32,
    /// `lpsaActions`; empty removes every action.
    pub actions: Vec<ScAction>,
    /// `fFailureActionsOnNonCrashFailures`: also act when custos stops with
    /// an error exit code rather than crashing.
    pub on_non_crash_failures: bool,
}

/// Encodes the configured recovery. Values beyond the SCM's `u32` fields are
/// rejected by config validation; here they saturate.
pub fn failure_actions(w: &WindowsAgentConfig) -> FailureActions {
    let actions = w
        .recovery
        .value
        .iter()
        .map(|a| match a {
            RecoveryAction::Restart(d) => ScAction {
                kind: SC_ACTION_RESTART,
                delay_ms: u32::try_from(d.0.as_millis()).unwrap_or(u32::MAX),
            },
            RecoveryAction::None => ScAction { kind: SC_ACTION_NONE, delay_ms: 0 },
        })
        .collect();
    FailureActions {
        reset_period_secs: u32::try_from(w.reset_after.0.as_secs()).unwrap_or(u32::MAX),
        actions,
        on_non_crash_failures: w.recover_on_error_exit,
    }
}

/// Registry key (under `HKEY_LOCAL_MACHINE`) of an Event Log source.
pub fn event_source_key(source: &str) -> String {
    format!(r"SYSTEM\CurrentControlSet\Services\EventLog\Application\{source}")
}

/// The message file of the Event Log source: EventCreate.exe's message table
/// maps ids 1 to 1000 to the bare string, so messages show as written
/// without custos shipping a resource DLL.
pub const EVENT_MESSAGE_FILE: &str = r"%SystemRoot%\System32\EventCreate.exe";

/// `EVENTLOG_ERROR_TYPE | EVENTLOG_WARNING_TYPE | EVENTLOG_INFORMATION_TYPE`.
pub const EVENT_TYPES_SUPPORTED: u32 = 0x7;

/// How long the SCM waits for custos to drain at system shutdown.
pub const PRESHUTDOWN_TIMEOUT_MS: u32 = 30_000;

/// Everything `custos install` sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    pub service_name: String,
    pub display_name: String,
    pub description: String,
    /// `lpBinaryPathName`: the quoted executable and its arguments.
    pub command_line: String,
    pub failure_actions: FailureActions,
    pub preshutdown_timeout_ms: u32,
    pub event_source_key: String,
}

/// The plan for installing `exe` as the custos service, reading `config`.
pub fn install_plan(w: &WindowsAgentConfig, exe: &Path, config: &Path) -> InstallPlan {
    let name = w.service_name.value.clone();
    let args =
        [exe.display().to_string(), "run".to_string(), "--config".to_string(), config.display().to_string()];
    InstallPlan {
        display_name: if name == "custos" { "custos".to_string() } else { format!("custos ({name})") },
        description: "Watches services through ETW, exports OpenTelemetry, detects anomalies and heals services by runbook.".to_string(),
        command_line: join_command_line(&args),
        failure_actions: failure_actions(w),
        preshutdown_timeout_ms: PRESHUTDOWN_TIMEOUT_MS,
        event_source_key: event_source_key(&name),
        service_name: name,
    }
}

/// Joins arguments into a command line that `CommandLineToArgvW` (and the C
/// runtime) split back into the same arguments.
pub fn join_command_line(args: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if i == 0 {
            // The program name has no escapes: quote it, it cannot hold `"`.
            out.push('"');
            out.push_str(a);
            out.push('"');
            continue;
        }
        if !a.is_empty() && !a.contains([' ', '\t', '\n', '\u{b}', '"']) {
            out.push_str(a);
            continue;
        }
        out.push('"');
        let mut backslashes = 0;
        for c in a.chars() {
            match c {
                '\\' => backslashes += 1,
                '"' => {
                    out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                    out.push('"');
                    backslashes = 0;
                }
                _ => {
                    out.extend(std::iter::repeat_n('\\', backslashes));
                    out.push(c);
                    backslashes = 0;
                }
            }
        }
        out.extend(std::iter::repeat_n('\\', backslashes * 2));
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    #[test]
    fn default_recovery_restarts_twice_after_a_minute_then_does_nothing() {
        let fa = failure_actions(&WindowsAgentConfig::default());
        assert_eq!(
            fa,
            FailureActions {
                reset_period_secs: 86_400,
                actions: vec![
                    ScAction { kind: SC_ACTION_RESTART, delay_ms: 60_000 },
                    ScAction { kind: SC_ACTION_RESTART, delay_ms: 60_000 },
                    ScAction { kind: SC_ACTION_NONE, delay_ms: 0 },
                ],
                on_non_crash_failures: true,
            }
        );
    }

    #[test]
    fn configured_recovery_is_encoded_in_order() {
        let mut w = WindowsAgentConfig::default();
        w.recovery.value = vec![RecoveryAction::Restart(HumanDuration::millis(1500)), RecoveryAction::None];
        w.reset_after.value = HumanDuration::secs(3600);
        w.recover_on_error_exit = false;
        let fa = failure_actions(&w);
        assert_eq!(fa.actions, [ScAction { kind: 1, delay_ms: 1500 }, ScAction { kind: 0, delay_ms: 0 }]);
        assert_eq!(fa.reset_period_secs, 3600);
        assert!(!fa.on_non_crash_failures);
        w.recovery.value.clear();
        assert!(failure_actions(&w).actions.is_empty());
    }

    #[test]
    fn out_of_range_values_saturate() {
        let mut w = WindowsAgentConfig::default();
        w.recovery.value = vec![RecoveryAction::Restart(HumanDuration::secs(100 * 86_400))];
        w.reset_after.value = HumanDuration::secs(u64::MAX / 2);
        let fa = failure_actions(&w);
        assert_eq!(fa.actions[0].delay_ms, u32::MAX);
        assert_eq!(fa.reset_period_secs, u32::MAX);
    }

    #[test]
    fn install_plan_runs_the_agent_with_its_config() {
        let w = WindowsAgentConfig::default();
        let p = install_plan(
            &w,
            Path::new(r"C:\Program Files\custos\custos.exe"),
            Path::new(r"C:\ProgramData\custos\custos.yaml"),
        );
        assert_eq!(p.service_name, "custos");
        assert_eq!(
            p.command_line,
            r#""C:\Program Files\custos\custos.exe" run --config C:\ProgramData\custos\custos.yaml"#
        );
        assert_eq!(p.event_source_key, r"SYSTEM\CurrentControlSet\Services\EventLog\Application\custos");
        assert_eq!(p.preshutdown_timeout_ms, 30_000);
    }

    #[test]
    fn command_lines_split_back_into_the_same_arguments() {
        let cases: &[&[&str]] = &[
            &[r"C:\Program Files\custos\custos.exe", "run", "--config", r"C:\Data Dir\custos.yaml"],
            &[
                r"C:\c.exe",
                "",
                "a b",
                r#"say "hi""#,
                r"trailing\",
                r"C:\dir with space\",
                r#"\\"\"#,
                "tab\there",
            ],
        ];
        for args in cases {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let line = join_command_line(&args);
            let (back, truncated) = custos_etw::cmdline::split_command_line(&line, 64);
            assert_eq!(back, args, "line: {line}");
            assert!(!truncated);
        }
    }
}
