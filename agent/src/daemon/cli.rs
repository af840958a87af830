//! The `custos status` and `custos reload` commands (the installers are the
//! platforms': `platform::install`, `platform::uninstall`).

use super::control::{self, ClientError, Request, Response};

use std::path::Path;

use std::process::ExitCode;
use std::time::Duration;

/// The snapshot with every string in it escaped for a terminal
/// (`terminal::printable`): service and unit names, paths, errors and
/// action details can hold what a local user chose. Done on the data, not
/// the rendered text, so that a line break in a value cannot forge a line,
/// and whatever fields the snapshot gains are covered.
fn for_terminal(s: &super::status::StatusSnapshot) -> super::status::StatusSnapshot {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(e) = crate::terminal::printable(s) {
                    *s = e;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            serde_json::Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut v) = serde_json::to_value(s) else { return s.clone() };
    walk(&mut v);
    serde_json::from_value(v).unwrap_or_else(|_| s.clone())
}

/// `custos status [--json] [--actions N]`: exit 0 when the agent answered,
/// 3 (as `systemctl status` does for a stopped unit) when it is not
/// running, 1 on other errors. `--actions N` shows the host's last N
/// runbook actions instead of 10.
pub fn status(socket: Option<&Path>, json: bool, actions: Option<usize>) -> ExitCode {
    let path = control::socket_path(socket);
    let answer = control::request(&path, &Request::Status, Duration::from_secs(10));
    let answer = match (answer, actions) {
        (Ok(Response::Status { mut status }), Some(limit)) => {
            match control::request(&path, &Request::Actions { limit }, Duration::from_secs(10)) {
                Ok(Response::Actions { actions }) => {
                    status.last_actions = actions;
                    Ok(Response::Status { status })
                }
                Ok(Response::Error { error }) => Ok(Response::Error { error }),
                Ok(other) => Ok(other),
                Err(e) => Err(e),
            }
        }
        (other, _) => other,
    };
    match answer {
        Ok(Response::Status { status }) => {
            if json {
                match serde_json::to_string_pretty(&status) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("custos: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", for_terminal(&status).render_text());
            }
            ExitCode::SUCCESS
        }
        other => failure(other, json),
    }
}

/// `custos pause SERVICE [--for DURATION]`.
pub fn pause(socket: Option<&Path>, service: &str, duration: Option<Duration>) -> ExitCode {
    let path = control::socket_path(socket);
    let req = Request::Pause { service: service.to_string(), for_secs: duration.map(|d| d.as_secs().max(1)) };
    match control::request(&path, &req, Duration::from_secs(10)) {
        Ok(Response::Paused { service, until }) => {
            match until {
                Some(u) => println!(
                    "{service} paused until {}: its runbooks decide and audit, and act on nothing",
                    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(u))
                ),
                None => println!(
                    "{service} paused until `custos resume {service}`: its runbooks decide and audit, and act on nothing"
                ),
            }
            ExitCode::SUCCESS
        }
        other => failure(other, false),
    }
}

/// `custos resume SERVICE`.
pub fn resume(socket: Option<&Path>, service: &str) -> ExitCode {
    let path = control::socket_path(socket);
    match control::request(&path, &Request::Resume { service: service.to_string() }, Duration::from_secs(10))
    {
        Ok(Response::Resumed { service, was_paused: true }) => {
            println!("{service} resumed: its runbooks act again");
            ExitCode::SUCCESS
        }
        Ok(Response::Resumed { service, was_paused: false }) => {
            println!("{service} was not paused");
            ExitCode::SUCCESS
        }
        other => failure(other, false),
    }
}

/// Reports an answer that is not the one asked for: the agent's refusal
/// (1), no agent (3), anything else (1).
fn failure(answer: Result<Response, ClientError>, json: bool) -> ExitCode {
    match answer {
        Ok(Response::Error { error }) => {
            eprintln!("custos: the agent refused: {error}");
            ExitCode::FAILURE
        }
        Ok(other) => {
            eprintln!("custos: unexpected answer from the agent: {other:?}");
            ExitCode::FAILURE
        }
        Err(e @ ClientError::NotRunning(_)) => {
            if json {
                println!("{}", serde_json::json!({ "running": false, "error": e.to_string() }));
            }
            eprintln!("custos: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("custos: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `custos reload`: asks the running agent to reload and reports the result.
pub fn reload(socket: Option<&Path>) -> ExitCode {
    let path = control::socket_path(socket);
    match control::request(&path, &Request::Reload, Duration::from_secs(60)) {
        Ok(Response::Reloaded { ok: true, notes, .. }) => {
            println!("reloaded");
            for n in notes {
                println!("note: {}", crate::terminal::printable(&n));
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Reloaded { ok: false, error, .. }) => {
            eprintln!(
                "custos: reload rejected, the previous configuration stays:\n{}",
                error.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        Ok(other) => {
            eprintln!("custos: unexpected answer from the agent: {other:?}");
            ExitCode::FAILURE
        }
        Err(e @ ClientError::NotRunning(_)) => {
            eprintln!("custos: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("custos: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_text_escapes_what_services_and_errors_hold() {
        let s = super::super::status::StatusSnapshot {
            config_path: Some("/etc/custos/\x1b]52;c;ZXZpbA==\x07custos.yaml".into()),
            services: vec![super::super::status::ServiceHealth {
                name: "api\nfake     active".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = super::for_terminal(&s).render_text();
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text}");
        assert!(text.contains("\\x1b]52;c;ZXZpbA==\\x07"), "{text}");
        assert!(text.contains("api\\nfake"), "a line break cannot forge a line: {text}");
    }
}
