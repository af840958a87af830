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
    /// Score a CSV of `timestamp,value` for anomalies offline, or evaluate the detector on NAB (--nab).
    Detect(custos::detect::cli::DetectArgs),
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
        Command::Detect(args) => custos::detect::cli::run(args),
    }
}
