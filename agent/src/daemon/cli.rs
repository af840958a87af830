//! The `custos status` and `custos reload` commands (the installers are the
//! platforms': `platform::install`, `platform::uninstall`).

use super::control::{self, ClientError, Request, Response};

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// `custos status [--json]`: exit 0 when the agent answered, 3 (as
/// `systemctl status` does for a stopped unit) when it is not running,
/// 1 on other errors.
pub fn status(socket: Option<&Path>, json: bool) -> ExitCode {
    let path = control::socket_path(socket);
    match control::request(&path, &Request::Status, Duration::from_secs(10)) {
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
                print!("{}", status.render_text());
            }
            ExitCode::SUCCESS
        }
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
