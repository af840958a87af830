//! The `custos install`, `custos uninstall` and `custos status` commands.

use super::control::{self, ClientError, Request, Response};
use std::io::Write;
use std::path::{Path, PathBuf};
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
        Ok(Response::Reloaded { ok: true, .. }) => {
            println!("reloaded");
            ExitCode::SUCCESS
        }
        Ok(Response::Reloaded { ok: false, error }) => {
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

#[cfg(unix)]
fn require_root(what: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!("{what} needs root (it writes system directories and talks to systemd)"));
    }
    Ok(())
}

/// `custos install [--config F] [--dry-run]`.
#[cfg(unix)]
pub fn install(
    config: Option<PathBuf>,
    dry_run: bool,
    prefix: Option<&Path>,
    unit_dir: Option<&Path>,
) -> Result<ExitCode, String> {
    use super::install::{execute, plan_install, print_plan, InstallOptions, InstallPaths, RealSystemctl};
    let paths = InstallPaths::from_flags(prefix, unit_dir);
    let binary = std::env::current_exe().map_err(|e| format!("cannot find the running binary: {e}"))?;
    let config = match config {
        Some(c) => Some(std::path::absolute(&c).map_err(|e| format!("{}: {e}", c.display()))?),
        None => None,
    };
    let opts = InstallOptions { paths, config, binary, ready_timeout: Duration::from_secs(120) };
    let mut systemctl = RealSystemctl;
    let plan = plan_install(&opts, &mut systemctl).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    if dry_run {
        print_plan(&plan, &mut out);
        return Ok(ExitCode::SUCCESS);
    }
    require_root("install")?;
    execute(&plan, &mut systemctl, &mut out).map_err(|e| e.to_string())?;
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// `custos uninstall [--purge] [--dry-run]`.
#[cfg(unix)]
pub fn uninstall(
    purge: bool,
    dry_run: bool,
    prefix: Option<&Path>,
    unit_dir: Option<&Path>,
) -> Result<ExitCode, String> {
    use super::install::{execute, plan_uninstall, print_plan, InstallPaths, RealSystemctl};
    let paths = InstallPaths::from_flags(prefix, unit_dir);
    let plan = plan_uninstall(&paths, purge);
    let mut out = std::io::stdout();
    if dry_run {
        print_plan(&plan, &mut out);
        return Ok(ExitCode::SUCCESS);
    }
    require_root("uninstall")?;
    if purge {
        // Say what goes before it goes.
        let doomed: Vec<_> = plan
            .iter()
            .filter_map(|a| match a {
                super::install::Action::Remove { path, dir: true } => Some(path.display().to_string()),
                _ => None,
            })
            .collect();
        if !doomed.is_empty() {
            println!("--purge: removing configuration and state: {}", doomed.join(", "));
        }
    }
    execute(&plan, &mut RealSystemctl, &mut out).map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(unix))]
pub fn install(
    config: Option<PathBuf>,
    dry_run: bool,
    _: Option<&Path>,
    _: Option<&Path>,
) -> Result<ExitCode, String> {
    crate::platform::windows::install::cli_install(config, dry_run)
}

#[cfg(not(unix))]
pub fn uninstall(purge: bool, dry_run: bool, _: Option<&Path>, _: Option<&Path>) -> Result<ExitCode, String> {
    crate::platform::windows::install::cli_uninstall(purge, dry_run)
}
