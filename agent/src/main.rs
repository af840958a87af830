//! The `custos` command: the agent and its tools.

use anyhow::Result;
use clap::{Parser, Subcommand};
use custos::app::watch::WatchOptions;
use custos::sensor::Pace;
use custos::sensor::Source;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Run the agent: watch the managed services, export telemetry, detect, heal.
    Run(RunArgs),
    /// Stream events as they happen: one readable line per event, or JSON lines.
    Watch(WatchArgs),
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
        /// Show the last N runbook actions of the host (default 10).
        #[arg(long, value_name = "N")]
        actions: Option<usize>,
        /// Control socket of the agent (default /run/custos/control.sock).
        #[arg(long, env = "CUSTOS_CONTROL_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// Maintenance: the service's runbooks keep deciding and auditing, and act on nothing, until `custos resume` (or for a while). Kept across agent restarts.
    Pause {
        /// The managed service (its name in the configuration or runbooks).
        service: String,
        /// End the pause by itself after this long (`30m`, `2h`).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
        #[arg(long, env = "CUSTOS_CONTROL_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// End a service's maintenance pause: its runbooks act again.
    Resume {
        service: String,
        #[arg(long, env = "CUSTOS_CONTROL_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// Ask the running agent to reload its configuration and runbooks (like SIGHUP).
    Reload {
        #[arg(long, env = "CUSTOS_CONTROL_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// Check, replay and draw runbooks.
    #[command(subcommand)]
    Runbook(custos::runbook::cli::RunbookCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(custos::runbook::cli::AuditCommand),
    /// Score a CSV of `timestamp,value` for anomalies offline, or evaluate the detector on NAB (--nab).
    Detect(custos::detect_cli::DetectArgs),
}

#[derive(clap::Args)]
struct SourceArgs {
    /// Configuration file (default: /etc/custos/custos.yaml, else the embedded default).
    #[arg(long, short, env = "CUSTOS_CONFIG")]
    config: Option<PathBuf>,
    /// Read events from a recording of `custos watch --json` instead of the kernel.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// With --replay: keep the recorded gaps between events, sped up by this factor.
    #[arg(long, value_name = "FACTOR", requires = "replay")]
    replay_speed: Option<f64>,
}

impl SourceArgs {
    fn source(&self) -> Source {
        match &self.replay {
            None => Source::Kernel,
            Some(path) => Source::Replay {
                path: path.clone(),
                pace: match self.replay_speed {
                    Some(speed) => Pace::Recorded { speed },
                    None => Pace::AsFast,
                },
            },
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// With --replay: let runbooks act on this host. Without it a replay only decides and audits (dry-run).
    #[arg(long, requires = "replay")]
    act: bool,
    /// When to print the per-service summary table: auto (when stdout is a terminal), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    summary: String,
    /// How often the summary table is printed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    summary_every: Duration,
    /// Log line format on stderr; given, it also wins over journald under systemd.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Control socket for `custos status` (default /run/custos/control.sock).
    #[arg(long, env = "CUSTOS_CONTROL_SOCKET")]
    socket: Option<PathBuf>,
}

#[derive(clap::Args)]
struct WatchArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Only events of this managed service.
    #[arg(long, short)]
    service: Option<String>,
    /// One JSON object per line (the format --replay reads back).
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    custos::config::HumanDuration::parse(s).map(|d| d.0)
}

fn load_config(path: Option<&std::path::Path>) -> Result<custos::config::LoadedConfig> {
    custos::config::load(path).map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))
}

fn init_logging(config: &custos::config::LoadedConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUSTOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.raw.agent.log_level.value));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.raw.agent.log_format {
        custos::config::LogFormat::Json => builder.json().init(),
        custos::config::LogFormat::Text => builder.init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Messages quote paths and names: escaped for the terminal,
            // line by line (errors are one problem per line).
            let msg = format!("{e:#}");
            for (i, line) in msg.lines().enumerate() {
                let p = custos::terminal::printable(line);
                if i == 0 {
                    eprintln!("custos: {p}");
                } else {
                    eprintln!("{p}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = load_config(args.source.config.as_deref())?;
            let logging = custos::app::service_link::init_logging(&config, args.log_format.as_deref())?;
            let summary = match args.summary.as_str() {
                "always" => Some(args.summary_every),
                "never" => None,
                _ => std::io::stdout().is_terminal().then_some(args.summary_every),
            };
            let daemon = custos::app::service_link::DaemonRunOptions {
                control_socket: args.socket,
                logging: logging.handle,
                external_stop: None,
            };
            let opts =
                custos::app::run::RunOptions { source: args.source.source(), act: args.act, summary, daemon };
            #[cfg(windows)]
            {
                // Under the SCM: the dispatcher, status reports and its stop
                // controls; from a terminal: the console.
                custos::app::windows_host::run_agent(config, opts, logging.event_log, runtime)?;
                Ok(ExitCode::SUCCESS)
            }
            #[cfg(not(windows))]
            {
                let rt = runtime()?;
                let result = rt.block_on(custos::app::run::run(config, opts));
                // The stop budget is spent inside run(); threads still blocked
                // in a read (a replay from a pipe) must not hold the exit.
                rt.shutdown_timeout(Duration::from_secs(1));
                result?;
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Watch(args) => {
            let config = load_config(args.source.config.as_deref())?;
            init_logging(&config);
            let opts = WatchOptions { source: args.source.source(), json: args.json, service: args.service };
            runtime()?.block_on(custos::app::watch::watch(config, opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config } => match custos::config::load(config.as_deref()) {
            Ok(c) => {
                let src = c
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "embedded default".into());
                let units = custos::service_manager::UnitLookup::new(custos::platform::service_manager());
                let unit_errors = custos::config::check_units(&c, &units);
                for e in &unit_errors {
                    eprintln!("{}", custos::terminal::printable(&e.to_string()));
                }
                let mut failed = !unit_errors.is_empty();
                if unit_errors.is_empty() {
                    println!(
                        "{src}: ok ({} services, {} discovery rules)",
                        c.services.len(),
                        c.discover.len()
                    );
                }
                // The runbooks the agent would load are part of what it runs:
                // one bad file is skipped at run time, so say so here.
                let dir = &c.raw.runbooks.dir;
                if !dir.is_dir() {
                    println!("{}: no runbooks directory (self-healing off)", dir.display());
                } else {
                    let mut report = custos::runbook::load_paths(std::slice::from_ref(dir));
                    custos::runbook::model::check_against(&mut report, &c, &units);
                    for e in &report.errors {
                        eprintln!("{}", custos::terminal::printable(&e.to_string()));
                    }
                    println!(
                        "{}: {} runbooks ok, {} with problems",
                        dir.display(),
                        report.runbooks.len(),
                        report.errors.len()
                    );
                    failed |= !report.errors.is_empty();
                }
                if let Some(why) = units.unreachable() {
                    eprintln!("note: units were not checked against the service manager: {why}");
                }
                Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}", custos::terminal::printable(&e.to_string()));
                }
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Install { config, dry_run, prefix, unit_dir } => {
            custos::platform::install(config, dry_run, prefix.as_deref(), unit_dir.as_deref())
                .map_err(anyhow::Error::msg)
        }
        Command::Uninstall { purge, dry_run, prefix, unit_dir } => {
            custos::platform::uninstall(purge, dry_run, prefix.as_deref(), unit_dir.as_deref())
                .map_err(anyhow::Error::msg)
        }
        Command::Status { json, actions, socket } => {
            Ok(custos::daemon::cli::status(socket.as_deref(), json, actions))
        }
        Command::Pause { service, duration, socket } => {
            Ok(custos::daemon::cli::pause(socket.as_deref(), &service, duration))
        }
        Command::Resume { service, socket } => Ok(custos::daemon::cli::resume(socket.as_deref(), &service)),
        Command::Reload { socket } => Ok(custos::daemon::cli::reload(socket.as_deref())),
        Command::Runbook(cmd) => {
            // Checked against the configuration and the host they would run under.
            let config = custos::config::load(None).ok();
            let dir = config.as_ref().map(|c| c.raw.runbooks.dir.clone()).unwrap_or_default();
            let units = custos::service_manager::UnitLookup::new(custos::platform::service_manager());
            custos::runbook::cli::run_runbook(cmd, &dir, config.as_ref().map(|c| (c, &units)))
        }
        Command::Audit(cmd) => {
            let dir = custos::config::load(None).map(|c| c.raw.agent.state_dir).unwrap_or_default();
            let audit = cmd.dir(&dir.join("audit"));
            // Sealing writes the chain: one writer, so not while an agent runs.
            let _lock = match (&cmd, audit.parent()) {
                (custos::runbook::cli::AuditCommand::Seal { .. }, Some(state)) => {
                    Some(custos::daemon::lock::acquire(state).map_err(|e| {
                        anyhow::anyhow!("{e}; the audit log can be sealed only while no agent writes it")
                    })?)
                }
                _ => None,
            };
            custos::runbook::cli::run_audit(cmd, &dir.join("audit"))
        }
        Command::Detect(args) => custos::detect_cli::run(args),
    }
}
