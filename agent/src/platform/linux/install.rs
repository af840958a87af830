//! `custos install` and `custos uninstall`: the agent as a systemd service.
//!
//! Both first compute a plan from what is on disk (so a re-run only does
//! what changed, and `--dry-run` prints exactly what a real run would do),
//! then carry it out. systemd itself is driven through `systemctl`, behind
//! the [`Systemctl`] trait so that tests can install into a temporary root.

use crate::daemon::shutdown::{STOP_BUDGET, STOP_MARGIN};
use crate::daemon::WATCHDOG_SEC;
use std::fmt;
use std::io;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The unit's name.
pub const UNIT_NAME: &str = "custos.service";
/// Puts binary, configuration and state under a prefix (tests, staging).
pub const PREFIX_ENV: &str = "CUSTOS_INSTALL_PREFIX";
/// Where the unit file goes (default `/etc/systemd/system`).
pub const UNIT_DIR_ENV: &str = "CUSTOS_UNIT_DIR";

/// Where things are installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPaths {
    pub bin: PathBuf,
    pub unit_dir: PathBuf,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl InstallPaths {
    /// The standard layout, optionally below `prefix`, with the unit in
    /// `unit_dir` (default `/etc/systemd/system`; never below the prefix,
    /// since systemd only reads its own directories).
    pub fn new(prefix: Option<&Path>, unit_dir: Option<&Path>) -> InstallPaths {
        let root = prefix.unwrap_or(Path::new("/"));
        InstallPaths {
            bin: root.join("usr/local/bin/custos"),
            unit_dir: unit_dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/etc/systemd/system")),
            config_dir: root.join("etc/custos"),
            state_dir: root.join("var/lib/custos"),
        }
    }

    /// From flags, else `CUSTOS_INSTALL_PREFIX` / `CUSTOS_UNIT_DIR`.
    pub fn from_flags(prefix: Option<&Path>, unit_dir: Option<&Path>) -> InstallPaths {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let prefix = prefix.map(Path::to_path_buf).or_else(|| env(PREFIX_ENV));
        let unit_dir = unit_dir.map(Path::to_path_buf).or_else(|| env(UNIT_DIR_ENV));
        InstallPaths::new(prefix.as_deref(), unit_dir.as_deref())
    }

    pub fn unit_file(&self) -> PathBuf {
        self.unit_dir.join(UNIT_NAME)
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("custos.yaml")
    }
    pub fn runbooks_dir(&self) -> PathBuf {
        self.config_dir.join("runbooks")
    }
    /// Units below /run are runtime units: enabling them must not write
    /// symlinks into /etc.
    pub fn runtime_unit(&self) -> bool {
        self.unit_dir.starts_with("/run")
    }
}

/// The unit file for these paths. Each hardening line says why it is there,
/// and what is left out says why too.
pub fn unit_file(paths: &InstallPaths, state_dir: &Path) -> String {
    let stop = (STOP_BUDGET + STOP_MARGIN).as_secs();
    let budget = STOP_BUDGET.as_secs();
    let watchdog = WATCHDOG_SEC.as_secs();
    let bin = paths.bin.display();
    let config = paths.config_file();
    let config = config.display();
    let state = state_dir.display();
    format!(
        r#"# Written by `custos install`; run it again to update, `custos uninstall` to remove.
# Edits here are overwritten: put local changes in a drop-in (systemctl edit custos).

[Unit]
Description=custos service health agent (eBPF telemetry, OTLP export, runbooks)
After=network-online.target
Wants=network-online.target
# A crash loop of the agent itself stops after 5 starts in 5 minutes instead
# of hammering the host; `systemctl reset-failed custos` re-arms it.
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
# READY=1 is sent only once the sensors are attached and the exporter runs.
Type=notify
# Only the agent itself may notify: commands started by runbooks cannot fake
# readiness or keep-alives.
NotifyAccess=main
ExecStart={bin} run --config {config}
# Reload re-reads the configuration and runbooks; an invalid one is rejected,
# the running one stays, and `systemctl reload` fails with the reason.
ExecReload={bin} reload
# Keep-alives come from the pipeline's progress, not a timer: a hung pipeline
# misses them and systemd kills and restarts the agent.
WatchdogSec={watchdog}
# Crashes, watchdog kills and failed starts restart the agent; a clean stop
# does not.
Restart=on-failure
RestartSec=5
# Loading and attaching the BPF programs can take a while on a busy host.
TimeoutStartSec=90
# The agent gives itself {budget}s to stop (drain, spool telemetry, persist
# state); systemd allows a margin more before SIGKILL.
TimeoutStopSec={stop}
# SIGTERM goes to the agent only, which ends its own runbook commands within
# the stop budget; whatever is left is killed when the budget is over.
KillMode=mixed
# The agent that heals services should be the last thing the OOM killer takes.
OOMScoreAdjust=-500
# BPF maps and ring buffers are locked memory; an unlimited limit set here
# replaces CAP_SYS_RESOURCE (which would otherwise raise it at run time).
LimitMEMLOCK=infinity
LimitNOFILE=65536
UMask=0077

# Capabilities: root, but only these.
#   CAP_BPF            load BPF programs and create maps (kernel 5.8+)
#   CAP_PERFMON        attach tracepoints/fentry, read kernel memory in tracing programs
#   CAP_SYS_ADMIN      kernels older than 5.8 (no CAP_BPF)
#   CAP_SYS_PTRACE     read /proc/<pid>/exe and /proc/<pid>/ns of services' processes
#                      (the kernel requires it for processes with more capabilities
#                      than the reader, which includes every root service)
#   CAP_KILL           signal processes of other users (runbook commands run with
#                      run_as, bounded by a timeout)
#   CAP_SETUID/SETGID  run runbook commands and probes as the configured user (run_as)
# Not granted: CAP_NET_ADMIN (no XDP/tc programs; TCP is seen through tracepoints),
# CAP_SYS_RESOURCE (see LimitMEMLOCK), CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (the
# agent's own files are root's). Restarting other units goes over D-Bus, where
# systemd authorizes uid 0 without any capability.
CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_KILL CAP_SETUID CAP_SETGID
# Forbids gaining privileges through execve (setuid binaries, file
# capabilities) for the agent and its runbook commands. It does not stop the
# agent's own setuid()/setgid() for run_as, which only needs CAP_SETUID/SETGID.
NoNewPrivileges=yes

# Filesystem: everything read-only but the state dir and /run/custos (the
# control socket). Connecting to the D-Bus socket still works on a read-only
# /run: socket connects are not writes to the filesystem.
ProtectSystem=strict
ReadWritePaths={state}
RuntimeDirectory=custos
RuntimeDirectoryMode=0700
# Home directories are no business of the agent; read-only rather than hidden
# so a runbook command may still read a service's files there.
ProtectHome=read-only
# Runbook commands get a private /tmp too: diagnostics belong in the state dir.
PrivateTmp=yes
# BPF goes through the bpf() syscall, not device nodes.
PrivateDevices=yes
# Read-only /proc/sys and /sys (reading BTF still works), no
# module loading, no kernel log or clock changes.
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# Unix (control socket, journald, D-Bus), IP (OTLP, health probes) and
# netlink (glibc's getaddrinfo uses it to see which address families exist).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# Left out on purpose: ProtectProc=invisible (the agent must see every
# service's processes), MemoryDenyWriteExecute and SystemCallFilter (both are
# inherited by runbook commands, which may be JIT runtimes or need any
# syscall), PrivateNetwork/IPAddressDeny (the collector and probes are remote).

[Install]
WantedBy=multi-user.target
"#
    )
}

/// The commented default configuration written when none exists. Only the
/// lines that differ from the built-in defaults (paths under a prefix) are
/// active; everything else documents the defaults.
pub fn default_config(paths: &InstallPaths) -> String {
    let mut active = String::new();
    let state = paths.state_dir.display().to_string();
    let runbooks = paths.runbooks_dir().display().to_string();
    if paths.state_dir != crate::config::default_state_dir() {
        active.push_str(&format!("agent:\n  state_dir: {state}\n"));
    }
    if paths.runbooks_dir() != crate::config::RunbooksConfig::default().dir {
        active.push_str(&format!("runbooks:\n  dir: {runbooks}\n"));
    }
    format!(
        r#"# custos configuration. Check it with `custos validate`, apply it with
# `systemctl reload custos` (an invalid file is rejected and the running one stays).
# Every key is optional; the commented values are the defaults.
{active}
# Where telemetry goes. Without `otlp`, OTLP/JSON files under <state_dir>/otlp.
#exporter:
#  otlp: {{ endpoint: "http://127.0.0.1:4317", protocol: grpc }}   # or protocol: http
#  spool: {{ max_bytes: 512MiB }}              # survives collector outages and restarts

# The services to manage. None listed: every process on the host, named after
# its unit.
#services:
#  - name: api
#    systemd_unit: api.service                 # or exe: /usr/bin/api
#    health: {{ http: "http://127.0.0.1:8080/healthz", every: 10s, timeout: 2s }}
#  - discover: systemd                         # every other systemd service

#sensors: {{ process: true, tcp: true, syscalls: true }}
#detection: {{ enabled: true, sensitivity: medium }}   # low, medium or high
#runbooks: {{ dir: {runbooks}, dry_run: false }}
#agent:
#  state_dir: {state}
#  listen: "127.0.0.1:9464"                    # /metrics and /healthz
#  log_level: info
#  log_format: text                            # text or json (stderr only; journald is structured)
"#
    )
}

/// Runs `systemctl`; a trait so tests can record instead.
pub trait Systemctl {
    /// Runs `systemctl <args>`; `Ok(stdout)` on exit status 0.
    fn run(&mut self, args: &[&str]) -> Result<String, String>;
}

/// The real `systemctl`.
pub struct RealSystemctl;

impl Systemctl for RealSystemctl {
    fn run(&mut self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(format!(
                "systemctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                if stderr.is_empty() { stdout } else { stderr }
            ))
        }
    }
}

/// Errors of install and uninstall.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the configuration is invalid, nothing was installed:\n{0}")]
    Config(String),
    #[error("{0}")]
    Systemd(String),
    #[error("{unit} did not become active: {state}; see `journalctl -u {unit}`")]
    NotActive { unit: String, state: String },
    #[error("a custos agent not run by systemd{} holds {}: stop it first, then install", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .dir.display())]
    HandRunAgent { dir: PathBuf, pid: Option<u32> },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create (or fix the mode of) a directory.
    Dir {
        path: PathBuf,
        mode: u32,
        exists: bool,
    },
    /// Write a file (atomically), with a reason shown to the user.
    File {
        path: PathBuf,
        mode: u32,
        contents: Vec<u8>,
        what: &'static str,
        replaces: bool,
    },
    /// Already as wanted.
    Unchanged {
        path: PathBuf,
        what: &'static str,
    },
    /// Move a differing file aside before replacing it.
    Backup {
        path: PathBuf,
        to: PathBuf,
    },
    Systemctl(Vec<String>),
    /// `systemctl`, but failure is fine (stopping a unit that is not running).
    SystemctlTolerant(Vec<String>),
    /// Wait until the unit is active (READY=1 seen).
    WaitActive(Duration),
    Remove {
        path: PathBuf,
        dir: bool,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Dir { path, mode, exists: false } => {
                write!(f, "create directory {} (mode {mode:04o})", path.display())
            }
            Action::Dir { path, mode, exists: true } => {
                write!(f, "set mode {mode:04o} on {}", path.display())
            }
            Action::File { path, mode, what, replaces, contents } => write!(
                f,
                "{} {what} {} ({} bytes, mode {mode:04o})",
                if *replaces { "update" } else { "write" },
                path.display(),
                contents.len()
            ),
            Action::Unchanged { path, what } => write!(f, "keep {what} {} (unchanged)", path.display()),
            Action::Backup { path, to } => write!(f, "back up {} to {}", path.display(), to.display()),
            Action::Systemctl(a) | Action::SystemctlTolerant(a) => write!(f, "systemctl {}", a.join(" ")),
            Action::WaitActive(t) => {
                write!(f, "wait up to {}s for {UNIT_NAME} to report ready", t.as_secs())
            }
            Action::Remove { path, dir: true } => {
                write!(f, "remove directory {} and everything in it", path.display())
            }
            Action::Remove { path, dir: false } => write!(f, "remove {}", path.display()),
        }
    }
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o7777)
}

fn dir_action(path: &Path, mode: u32, out: &mut Vec<Action>) {
    match mode_of(path) {
        Some(m) if m == mode => {}
        Some(_) => out.push(Action::Dir { path: path.to_path_buf(), mode, exists: true }),
        None => out.push(Action::Dir { path: path.to_path_buf(), mode, exists: false }),
    }
}

fn file_action(path: &Path, mode: u32, contents: Vec<u8>, what: &'static str, out: &mut Vec<Action>) {
    match std::fs::read(path) {
        Ok(old) if old == contents && mode_of(path) == Some(mode) => {
            out.push(Action::Unchanged { path: path.to_path_buf(), what })
        }
        Ok(_) => out.push(Action::File { path: path.to_path_buf(), mode, contents, what, replaces: true }),
        Err(_) => out.push(Action::File { path: path.to_path_buf(), mode, contents, what, replaces: false }),
    }
}

/// What `custos install` was asked.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub paths: InstallPaths,
    /// A configuration file to install as `<config_dir>/custos.yaml`.
    pub config: Option<PathBuf>,
    /// The binary to install (normally the running one).
    pub binary: PathBuf,
    /// How long to wait for READY after starting.
    pub ready_timeout: Duration,
}

/// Computes the install plan. Validates the configuration that the unit
/// will use, so a broken file is refused before anything changes.
pub fn plan_install(
    opts: &InstallOptions,
    systemctl: &mut dyn Systemctl,
) -> Result<Vec<Action>, InstallError> {
    let p = &opts.paths;
    let mut plan = Vec::new();

    // The configuration first: it decides the state dir the unit may write.
    let target_config = p.config_file();
    let config_text = match &opts.config {
        Some(src) => {
            let text = std::fs::read(src).map_err(io_err(src))?;
            Some(text)
        }
        None if target_config.exists() => None,
        None => Some(default_config(p).into_bytes()),
    };
    let loaded = match &config_text {
        Some(text) => {
            let source = opts.config.as_ref().unwrap_or(&target_config).display().to_string();
            let text = String::from_utf8_lossy(text);
            let mut c =
                crate::config::parse(&text, &source).map_err(|e| InstallError::Config(e.to_string()))?;
            crate::config::apply_env(&mut c, std::iter::empty())
                .map_err(|e| InstallError::Config(e.to_string()))?;
            c
        }
        None => crate::config::load(Some(&target_config)).map_err(|e| InstallError::Config(e.to_string()))?,
    };
    let state_dir = loaded.raw.agent.state_dir.clone();

    if let Some(bin_dir) = p.bin.parent() {
        if !bin_dir.exists() {
            plan.push(Action::Dir { path: bin_dir.to_path_buf(), mode: 0o755, exists: false });
        }
    }
    let same_binary = std::fs::canonicalize(&opts.binary).ok() == std::fs::canonicalize(&p.bin).ok();
    if !same_binary {
        let bytes = std::fs::read(&opts.binary).map_err(io_err(&opts.binary))?;
        file_action(&p.bin, 0o755, bytes, "binary", &mut plan);
    } else {
        plan.push(Action::Unchanged { path: p.bin.clone(), what: "binary" });
    }

    dir_action(&p.config_dir, 0o755, &mut plan);
    dir_action(&p.runbooks_dir(), 0o755, &mut plan);
    match config_text {
        Some(text) => {
            if opts.config.is_some() {
                if let Ok(old) = std::fs::read(&target_config) {
                    if old != text {
                        let to = target_config.with_extension("yaml.bak");
                        plan.push(Action::Backup { path: target_config.clone(), to });
                    }
                }
            }
            file_action(&target_config, 0o644, text, "configuration", &mut plan)
        }
        None => plan.push(Action::Unchanged { path: target_config.clone(), what: "configuration" }),
    }
    dir_action(&state_dir, 0o700, &mut plan);
    if !p.unit_dir.exists() {
        plan.push(Action::Dir { path: p.unit_dir.clone(), mode: 0o755, exists: false });
    }
    file_action(&p.unit_file(), 0o644, unit_file(p, &state_dir).into_bytes(), "unit", &mut plan);

    let changed = plan.iter().any(|a| !matches!(a, Action::Unchanged { .. }));
    let active = systemctl.run(&["is-active", UNIT_NAME]).map(|s| s == "active").unwrap_or(false);
    plan.push(Action::Systemctl(vec!["daemon-reload".into()]));
    let mut enable = vec!["enable".to_string()];
    if p.runtime_unit() {
        enable.push("--runtime".into());
    }
    enable.push(UNIT_NAME.into());
    plan.push(Action::Systemctl(enable));
    if active && changed {
        plan.push(Action::Systemctl(vec!["restart".into(), UNIT_NAME.into()]));
    } else if !active {
        // The unit's agent would refuse to start on a state dir another
        // agent holds, and systemd would restart it over and over.
        if let Some(pid) = crate::daemon::lock::holder(&state_dir) {
            return Err(InstallError::HandRunAgent { dir: state_dir.value, pid });
        }
        // A unit that failed its start limit stays failed without this.
        plan.push(Action::SystemctlTolerant(vec!["reset-failed".into(), UNIT_NAME.into()]));
        plan.push(Action::Systemctl(vec!["start".into(), UNIT_NAME.into()]));
    }
    plan.push(Action::WaitActive(opts.ready_timeout));
    Ok(plan)
}

/// Computes the uninstall plan; `purge` adds configuration and state.
pub fn plan_uninstall(paths: &InstallPaths, purge: bool) -> Vec<Action> {
    let mut plan = vec![
        Action::SystemctlTolerant(vec!["stop".into(), UNIT_NAME.into()]),
        Action::SystemctlTolerant(if paths.runtime_unit() {
            vec!["disable".into(), "--runtime".into(), UNIT_NAME.into()]
        } else {
            vec!["disable".into(), UNIT_NAME.into()]
        }),
    ];
    if paths.unit_file().exists() {
        plan.push(Action::Remove { path: paths.unit_file(), dir: false });
    }
    plan.push(Action::Systemctl(vec!["daemon-reload".into()]));
    plan.push(Action::SystemctlTolerant(vec!["reset-failed".into(), UNIT_NAME.into()]));
    if paths.bin.exists() {
        plan.push(Action::Remove { path: paths.bin.clone(), dir: false });
    }
    if purge {
        // The state dir the configuration names, and the default one.
        let mut state_dirs = vec![paths.state_dir.clone()];
        if let Ok(c) = crate::config::load(Some(&paths.config_file())) {
            if !state_dirs.contains(&c.raw.agent.state_dir) {
                state_dirs.push(c.raw.agent.state_dir.value);
            }
        }
        for d in [vec![paths.config_dir.clone()], state_dirs].concat() {
            if d.exists() {
                plan.push(Action::Remove { path: d, dir: true });
            }
        }
    }
    plan
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    crate::fsutil::write_atomic(path, &[contents], Some(mode))
        .map_err(|e| InstallError::Io { path: path.to_path_buf(), source: e })
}

/// Carries out a plan, printing each step to `out`.
pub fn execute(
    plan: &[Action],
    systemctl: &mut dyn Systemctl,
    out: &mut dyn io::Write,
) -> Result<(), InstallError> {
    for action in plan {
        let _ = writeln!(out, "{action}");
        match action {
            Action::Dir { path, mode, exists } => {
                if !exists {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(*mode)
                        .create(path)
                        .map_err(io_err(path))?;
                }
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                    .map_err(io_err(path))?;
            }
            Action::File { path, mode, contents, .. } => write_atomic(path, contents, *mode)?,
            Action::Unchanged { .. } => {}
            Action::Backup { path, to } => {
                std::fs::copy(path, to).map_err(io_err(path))?;
            }
            Action::Systemctl(args) => {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                systemctl.run(&a).map_err(InstallError::Systemd)?;
            }
            Action::SystemctlTolerant(args) => {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                if let Err(e) = systemctl.run(&a) {
                    let _ = writeln!(out, "  (ignored: {e})");
                }
            }
            Action::WaitActive(timeout) => {
                let state = wait_active(systemctl, *timeout)?;
                let _ = writeln!(out, "{UNIT_NAME} is {state}");
            }
            Action::Remove { path, dir } => {
                let r = if *dir { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(InstallError::Io { path: path.clone(), source: e }),
                }
            }
        }
    }
    Ok(())
}

/// Polls the unit until it is `active` (for Type=notify: READY=1 was sent).
/// `systemctl start` already blocks until then; this also covers `restart`
/// of a unit that was active and reports a start that failed after all.
fn wait_active(systemctl: &mut dyn Systemctl, timeout: Duration) -> Result<String, InstallError> {
    let start = Instant::now();
    loop {
        let show = systemctl
            .run(&["show", "-p", "ActiveState,SubState,StatusText", UNIT_NAME])
            .map_err(InstallError::Systemd)?;
        let get = |k: &str| {
            show.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .unwrap_or("")
                .to_string()
        };
        let (active, sub, text) = (get("ActiveState"), get("SubState"), get("StatusText"));
        let state =
            if text.is_empty() { format!("{active} ({sub})") } else { format!("{active} ({sub}): {text}") };
        match active.as_str() {
            "active" => return Ok(state),
            "failed" | "inactive" => return Err(InstallError::NotActive { unit: UNIT_NAME.into(), state }),
            _ if start.elapsed() >= timeout => {
                return Err(InstallError::NotActive { unit: UNIT_NAME.into(), state })
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Prints a plan without doing it.
pub fn print_plan(plan: &[Action], out: &mut dyn io::Write) {
    for a in plan {
        let _ = writeln!(out, "would {a}");
    }
}

// The `custos install` and `custos uninstall` commands.

fn require_root(what: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!("{what} needs root (it writes system directories and talks to systemd)"));
    }
    Ok(())
}

/// `custos install [--config F] [--dry-run]`.
pub fn cli_install(
    config: Option<PathBuf>,
    dry_run: bool,
    prefix: Option<&Path>,
    unit_dir: Option<&Path>,
) -> Result<ExitCode, String> {
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
pub fn cli_uninstall(
    purge: bool,
    dry_run: bool,
    prefix: Option<&Path>,
    unit_dir: Option<&Path>,
) -> Result<ExitCode, String> {
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
                Action::Remove { path, dir: true } => Some(path.display().to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records calls; answers `is-active` and `show` from a scripted state.
    #[derive(Default)]
    struct FakeSystemctl {
        calls: Vec<String>,
        active: bool,
    }

    impl Systemctl for FakeSystemctl {
        fn run(&mut self, args: &[&str]) -> Result<String, String> {
            self.calls.push(args.join(" "));
            match args[0] {
                "is-active" if self.active => Ok("active".into()),
                "is-active" => Err("inactive".into()),
                "start" | "restart" => {
                    self.active = true;
                    Ok(String::new())
                }
                "stop" => {
                    self.active = false;
                    Ok(String::new())
                }
                "show" if self.active => {
                    Ok("ActiveState=active\nSubState=running\nStatusText=running: 0 services".into())
                }
                "show" => Ok("ActiveState=failed\nSubState=failed\nStatusText=".into()),
                _ => Ok(String::new()),
            }
        }
    }

    fn opts(root: &Path) -> InstallOptions {
        let bin = root.join("build/custos");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, b"\x7fELF fake binary").unwrap();
        InstallOptions {
            paths: InstallPaths::new(Some(&root.join("prefix")), Some(&root.join("units"))),
            config: None,
            binary: bin,
            ready_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn unit_file_has_the_lifecycle_settings() {
        let p = InstallPaths::new(None, None);
        let u = unit_file(&p, Path::new("/var/lib/custos"));
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "ExecStart=/usr/local/bin/custos run --config /etc/custos/custos.yaml",
            "ExecReload=/usr/local/bin/custos reload",
            "WatchdogSec=30",
            "Restart=on-failure",
            "RestartSec=5",
            "StartLimitIntervalSec=300",
            "StartLimitBurst=5",
            "TimeoutStopSec=30",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/custos",
            "RuntimeDirectory=custos",
            "RuntimeDirectoryMode=0700",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_KILL CAP_SETUID CAP_SETGID",
            "WantedBy=multi-user.target",
        ] {
            assert!(u.lines().any(|l| l == line), "unit lacks `{line}`:\n{u}");
        }
        // The stop timeout covers the agent's own budget with a margin.
        assert!(STOP_BUDGET < Duration::from_secs(30));
        // Every hardening directive is preceded by a comment somewhere above
        // it in its block: no unexplained lines in [Service] after Type=.
        let service = u.split("[Service]").nth(1).unwrap().split("[Install]").next().unwrap();
        let mut commented = false;
        for l in service.lines() {
            if l.starts_with('#') {
                commented = true;
            } else if l.is_empty() {
                commented = false;
            } else {
                assert!(commented, "directive without an explanation: {l}");
            }
        }
    }

    #[test]
    fn default_config_is_valid_and_points_at_the_prefix() {
        let p = InstallPaths::new(Some(Path::new("/tmp/x")), None);
        let text = default_config(&p);
        let c = crate::config::parse(&text, "default").unwrap();
        assert_eq!(c.raw.agent.state_dir.value, Path::new("/tmp/x/var/lib/custos"));
        assert_eq!(c.raw.runbooks.dir, Path::new("/tmp/x/etc/custos/runbooks"));
        let std = default_config(&InstallPaths::new(None, None));
        let c = crate::config::parse(&std, "default").unwrap();
        assert_eq!(c.raw.agent.state_dir.value, crate::config::default_state_dir());
        assert!(std.lines().filter(|l| !l.trim().is_empty()).all(|l| l.starts_with('#')), "{std}");
    }

    #[test]
    fn dry_run_lists_everything_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let mut sc = FakeSystemctl::default();
        let plan = plan_install(&o, &mut sc).unwrap();
        let mut out = Vec::new();
        print_plan(&plan, &mut out);
        let text = String::from_utf8(out).unwrap();
        let pre = dir.path().join("prefix");
        let expect = [
            format!("would create directory {} (mode 0755)", pre.join("usr/local/bin").display()),
            format!(
                "would write binary {} (16 bytes, mode 0755)",
                pre.join("usr/local/bin/custos").display()
            ),
            format!("would create directory {} (mode 0755)", pre.join("etc/custos").display()),
            format!("would create directory {} (mode 0755)", pre.join("etc/custos/runbooks").display()),
            format!("would write configuration {}", pre.join("etc/custos/custos.yaml").display()),
            format!("would create directory {} (mode 0700)", pre.join("var/lib/custos").display()),
            format!("would write unit {}", dir.path().join("units/custos.service").display()),
            "would systemctl daemon-reload".to_string(),
            "would systemctl enable custos.service".to_string(),
            "would systemctl start custos.service".to_string(),
            "would wait up to 5s for custos.service to report ready".to_string(),
        ];
        for e in &expect {
            assert!(text.contains(e.as_str()), "missing `{e}` in:\n{text}");
        }
        assert!(!pre.exists(), "dry run created files");
        assert_eq!(sc.calls, vec!["is-active custos.service"], "dry run may only query systemd");
    }

    #[test]
    fn install_into_a_temp_root_then_again_then_uninstall() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let p = o.paths.clone();
        let mut sc = FakeSystemctl::default();
        let plan = plan_install(&o, &mut sc).unwrap();
        execute(&plan, &mut sc, &mut io::sink()).unwrap();
        assert_eq!(std::fs::read(&p.bin).unwrap(), b"\x7fELF fake binary");
        let mode = |q: &Path| std::fs::metadata(q).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p.bin), 0o755);
        assert_eq!(mode(&p.state_dir), 0o700);
        assert_eq!(mode(&p.config_file()), 0o644);
        assert!(p.runbooks_dir().is_dir());
        let unit = std::fs::read_to_string(p.unit_file()).unwrap();
        assert!(unit.contains(&format!("ReadWritePaths={}", p.state_dir.display())));
        assert!(unit.contains(&format!(
            "ExecStart={} run --config {}",
            p.bin.display(),
            p.config_file().display()
        )));
        crate::config::load(Some(&p.config_file())).unwrap();
        assert_eq!(
            sc.calls,
            vec![
                "is-active custos.service",
                "daemon-reload",
                "enable custos.service",
                "reset-failed custos.service",
                "start custos.service",
                "show -p ActiveState,SubState,StatusText custos.service",
            ]
        );

        // Again, unchanged and running: nothing written, no restart.
        sc.calls.clear();
        let plan = plan_install(&o, &mut sc).unwrap();
        assert!(
            plan.iter().all(|a| matches!(
                a,
                Action::Unchanged { .. } | Action::Systemctl(_) | Action::WaitActive(_)
            )),
            "{plan:?}"
        );
        execute(&plan, &mut sc, &mut io::sink()).unwrap();
        assert!(
            !sc.calls.iter().any(|c| c.starts_with("restart") || c.starts_with("start")),
            "{:?}",
            sc.calls
        );

        // A user's config edit is kept; a new binary updates in place and restarts.
        std::fs::write(p.config_file(), "detection: { sensitivity: high }\n").unwrap();
        std::fs::write(&o.binary, b"\x7fELF new binary").unwrap();
        sc.calls.clear();
        let plan = plan_install(&o, &mut sc).unwrap();
        execute(&plan, &mut sc, &mut io::sink()).unwrap();
        assert_eq!(std::fs::read(&p.bin).unwrap(), b"\x7fELF new binary");
        assert_eq!(std::fs::read_to_string(p.config_file()).unwrap(), "detection: { sensitivity: high }\n");
        assert!(sc.calls.contains(&"restart custos.service".to_string()), "{:?}", sc.calls);

        // An invalid installed configuration refuses the install.
        std::fs::write(p.config_file(), "bogus: 1\n").unwrap();
        let err = plan_install(&o, &mut sc).unwrap_err();
        assert!(err.to_string().contains("custos.yaml:1:1"), "{err}");

        // Uninstall keeps config and state; purge removes them.
        let plan = plan_uninstall(&p, false);
        execute(&plan, &mut sc, &mut io::sink()).unwrap();
        assert!(!p.unit_file().exists() && !p.bin.exists());
        assert!(p.config_dir.exists() && p.state_dir.exists());
        let plan = plan_uninstall(&p, true);
        let mut out = Vec::new();
        print_plan(&plan, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(&format!("would remove directory {} and everything in it", p.config_dir.display()))
        );
        execute(&plan, &mut sc, &mut io::sink()).unwrap();
        assert!(!p.config_dir.exists() && !p.state_dir.exists());
    }

    #[test]
    fn config_flag_installs_that_file_after_validating_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        let src = dir.path().join("mine.yaml");
        std::fs::write(&src, "services:\n  - name: api\n    systemd_unit: api\n    oops: 1\n").unwrap();
        o.config = Some(src.clone());
        let err = plan_install(&o, &mut FakeSystemctl::default()).unwrap_err();
        assert!(err.to_string().contains(&format!("{}:4:5", src.display())), "{err}");
        assert!(!o.paths.config_dir.exists());

        let state = dir.path().join("elsewhere");
        std::fs::write(&src, format!("agent: {{ state_dir: {} }}\n", state.display())).unwrap();
        let mut sc = FakeSystemctl::default();
        let plan = plan_install(&o, &mut sc).unwrap();
        execute(&plan, &mut sc, &mut io::sink()).unwrap();
        assert_eq!(std::fs::read(o.paths.config_file()).unwrap(), std::fs::read(&src).unwrap());
        // The unit may write the state dir the configuration names.
        let unit = std::fs::read_to_string(o.paths.unit_file()).unwrap();
        assert!(unit.contains(&format!("ReadWritePaths={}", state.display())), "{unit}");
        assert!(state.is_dir());
    }

    #[test]
    fn runtime_units_are_enabled_at_runtime_only() {
        let p = InstallPaths::new(Some(Path::new("/tmp/p")), Some(Path::new("/run/systemd/system")));
        assert!(p.runtime_unit());
        let plan = plan_uninstall(&p, false);
        assert!(plan.contains(&Action::SystemctlTolerant(vec![
            "disable".into(),
            "--runtime".into(),
            UNIT_NAME.into()
        ])));
    }

    #[test]
    fn failed_start_is_reported() {
        let mut sc = FakeSystemctl::default();
        let err = wait_active(&mut sc, Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string().starts_with("custos.service did not become active: failed (failed)"),
            "{err}"
        );
    }
}
