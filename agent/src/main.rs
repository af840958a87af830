//! The `custos` command: the agent and its tools.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "custos",
    version,
    about = "Keeps services healthy: watches them through the kernel, exports OTLP, detects anomalies, heals by runbook"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file and report every problem with its line and column.
    Validate {
        /// Configuration file (default: /etc/custos/custos.yaml, else the embedded default).
        #[arg(long, short, env = "CUSTOS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Install custos as a systemd service, start it and wait until it is ready. Re-run to update.
    Install {
        /// Configuration to install as /etc/custos/custos.yaml (validated first).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Install binary, configuration and state below this directory.
        #[arg(long, env = "CUSTOS_INSTALL_PREFIX", hide = true)]
        prefix: Option<PathBuf>,
        /// Directory for the unit file (default /etc/systemd/system).
        #[arg(long, env = "CUSTOS_UNIT_DIR", hide = true)]
        unit_dir: Option<PathBuf>,
    },
    /// Stop and remove the custos service.
    Uninstall {
        /// Also remove the configuration and the state (spool, detector and runbook state).
        #[arg(long)]
        purge: bool,
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, env = "CUSTOS_INSTALL_PREFIX", hide = true)]
        prefix: Option<PathBuf>,
        #[arg(long, env = "CUSTOS_UNIT_DIR", hide = true)]
        unit_dir: Option<PathBuf>,
    },
    /// Show the running agent's state: services, events, drops, exporter, runbooks, actions.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Control socket of the agent (default /run/custos/control.sock).
        #[arg(long, env = "CUSTOS_CONTROL_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// Ask the running agent to reload its configuration and runbooks (like SIGHUP).
    Reload {
        #[arg(long, env = "CUSTOS_CONTROL_SOCKET")]
        socket: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("custos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { config } => match custos::config::load(config.as_deref()) {
            Ok(c) => {
                let src = c
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "embedded default".into());
                println!("{src}: ok ({} services, {} discovery rules)", c.services.len(), c.discover.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Install { config, dry_run, prefix, unit_dir } => {
            custos::daemon::cli::install(config, dry_run, prefix.as_deref(), unit_dir.as_deref())
                .map_err(anyhow::Error::msg)
        }
        Command::Uninstall { purge, dry_run, prefix, unit_dir } => {
            custos::daemon::cli::uninstall(purge, dry_run, prefix.as_deref(), unit_dir.as_deref())
                .map_err(anyhow::Error::msg)
        }
        Command::Status { json, socket } => Ok(custos::daemon::cli::status(socket.as_deref(), json)),
        Command::Reload { socket } => Ok(custos::daemon::cli::reload(socket.as_deref())),
    }
}
