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
    /// Check, replay and draw runbooks.
    #[command(subcommand)]
    Runbook(custos::runbook::cli::RunbookCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(custos::runbook::cli::AuditCommand),
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
        Command::Runbook(cmd) => {
            let dir = custos::config::load(None).map(|c| c.raw.runbooks.dir).unwrap_or_default();
            custos::runbook::cli::run_runbook(cmd, &dir)
        }
        Command::Audit(cmd) => {
            let dir = custos::config::load(None).map(|c| c.raw.agent.state_dir).unwrap_or_default();
            custos::runbook::cli::run_audit(cmd, &dir.join("audit"))
        }
    }
}
