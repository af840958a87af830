//! A real systemd (the machine's `/lib/systemd/systemd`) running as PID 1 of
//! a private PID and mount namespace, for system tests that need units with
//! real cgroups, `Restart=`, D-Bus and `systemctl`.
//!
//! Recipe (shared/NOTES.md): private tmpfs on `/run`, `/tmp` and `/var/tmp`
//! *before* systemd starts (its tmpfiles service would otherwise empty the
//! host's `/tmp`), runtime masks for units that make no sense in a sandbox,
//! and `setsid unshare --mount --pid --fork --mount-proc`. Dropping the
//! sandbox kills its PID 1 with SIGKILL from outside, which ends every
//! process inside, and the kernel tears the namespaces and mounts down.
//!
//! Usage:
//!
//! ```no_run
//! use custos_tests::systemd::{self, SystemdSandbox};
//! let Some(sd) = systemd::sandbox_or_skip("my_test") else { return };
//! sd.write_unit("crashy.service", "[Service]\nExecStart=/bin/sh -c 'sleep 1; exit 1'\n").unwrap();
//! sd.systemctl(&["start", "crashy.service"]).unwrap();
//! let bus = sd.system_bus_address(); // unix:path=/proc/<pid>/root/run/dbus/system_bus_socket
//! ```
//!
//! Sandboxes are serialized machine-wide with a lock file: without a cgroup
//! namespace, two systemd instances would share the host's
//! `/sys/fs/cgroup/.../system.slice` and fight over it.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the machine-wide sandbox lock lives (host `/run`, not the sandbox's).
const LOCK_PATH: &str = "/run/lock/custos-systemd-sandbox.lock";
const SYSTEMD: &str = "/lib/systemd/systemd";
/// How long systemd may take to finish booting in the namespace.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The boot script run by `sh -c` as the namespace's first process.
/// `$1`..: units to mask at runtime.
const BOOT_SCRIPT: &str = r#"
set -e
mount --make-rprivate /
for d in /run /tmp /var/tmp; do mount -t tmpfs tmpfs "$d"; done
mkdir -p /run/systemd/system /run/lock
for u in "$@"; do ln -sf /dev/null "/run/systemd/system/$u"; done
export container=custos-test
exec /lib/systemd/systemd --system --unit=multi-user.target --log-target=null
"#;

/// Units masked in every sandbox: tmpfiles would touch shared directories,
/// gettys have no terminal; postgresql and nginx are installed on this
/// machine and would bind the host's ports (the sandbox shares the network
/// namespace).
pub const MASKED_UNITS: &[&str] = &[
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-clean.timer",
    "getty@tty1.service",
    "console-getty.service",
    "postgresql.service",
    "nginx.service",
];

/// Whether this machine can run a sandbox; `Err` says why not.
pub fn systemd_available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("systemd sandbox needs root".into());
    }
    if !std::path::Path::new(SYSTEMD).exists() {
        return Err(format!("{SYSTEMD} does not exist"));
    }
    for tool in ["unshare", "nsenter", "setsid", "systemctl"] {
        let found =
            Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "unshare --mount --pid fails here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(())
}

/// True when the environment demands that privileged tests run (CI).
pub fn required() -> bool {
    std::env::var("CUSTOS_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

/// Starts a sandbox, or prints `skipped: <reason>` and returns `None` when the
/// machine cannot run one. Panics instead of skipping when
/// `CUSTOS_REQUIRE_BPF=1`, and panics when the machine could but booting failed.
pub fn sandbox_or_skip(test: &str) -> Option<SystemdSandbox> {
    if let Err(reason) = systemd_available() {
        if required() {
            panic!("{test}: CUSTOS_REQUIRE_BPF=1 but the systemd sandbox is unavailable: {reason}");
        }
        println!("skipped: {reason}");
        return None;
    }
    match SystemdSandbox::start() {
        Ok(sd) => Some(sd),
        Err(e) => panic!("{test}: cannot start the systemd sandbox: {e}"),
    }
}

/// A running systemd in private namespaces. Killed on drop.
pub struct SystemdSandbox {
    /// The `setsid unshare ...` process (parent of `pid`).
    unshare: Child,
    /// systemd's PID as seen from outside the namespace.
    pid: u32,
    /// Held until drop: one sandbox at a time on this machine.
    _lock: File,
}

impl SystemdSandbox {
    /// Boots systemd and waits until it has finished starting up (the system
    /// state is `running` or `degraded`).
    pub fn start() -> Result<Self, String> {
        let lock = acquire_lock()?;
        let mut cmd = Command::new("setsid");
        cmd.args([
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "/bin/sh",
            "-c",
            BOOT_SCRIPT,
            "sdbox",
        ])
        .args(MASKED_UNITS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut unshare = cmd.spawn().map_err(|e| format!("cannot spawn unshare: {e}"))?;
        let unshare_pid = unshare.id();
        let deadline = Instant::now() + BOOT_TIMEOUT;

        // unshare forks once: its child is PID 1 of the namespace, which
        // execs systemd at the end of the boot script.
        let pid = loop {
            if let Some(pid) = child_of(unshare_pid) {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                if exe.is_some_and(|p| p.ends_with("systemd")) {
                    break pid;
                }
            }
            if let Ok(Some(status)) = unshare.try_wait() {
                return Err(format!("the sandbox's boot script exited early ({status})"));
            }
            if Instant::now() > deadline {
                kill_unshare(&mut unshare);
                return Err("systemd did not start in the namespace".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let sd = SystemdSandbox { unshare, pid, _lock: lock };
        loop {
            let out = sd.exec(&["systemctl", "is-system-running"]);
            let state = out.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            match state.as_deref() {
                Ok("running") | Ok("degraded") => break,
                _ if Instant::now() > deadline => {
                    return Err(format!("systemd did not finish booting: last state {state:?}"));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(sd)
    }

    /// systemd's PID as seen from outside (the PID to `nsenter -t`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The namespace's root directory as seen from outside
    /// (`/proc/<pid>/root`): files under it are the sandbox's `/run`, `/tmp`...
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// systemd's private D-Bus socket as seen from outside the namespace
    /// (peer-to-peer, root only, no bus daemon needed).
    pub fn private_socket(&self) -> PathBuf {
        self.root().join("run/systemd/private")
    }

    /// A D-Bus address for `private_socket()`. Only usable from inside
    /// the namespace (`exec`): systemd refuses peers whose PID it cannot
    /// see, which is every process outside its PID namespace.
    pub fn private_bus_address(&self) -> String {
        format!("unix:path={}", self.private_socket().display())
    }

    /// The sandbox's system bus (its own dbus-daemon) as seen from outside:
    /// the way to talk D-Bus to this systemd from the test process.
    pub fn system_bus_address(&self) -> String {
        format!("unix:path={}", self.root().join("run/dbus/system_bus_socket").display())
    }

    /// Runs `args` inside the namespaces (`nsenter -t PID -m -p`).
    pub fn exec(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs `systemctl args...` inside; `Err` carries stderr when it fails.
    pub fn systemctl(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["systemctl"];
        full.extend_from_slice(args);
        let out = self.exec(&full).map_err(|e| format!("cannot run nsenter: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "systemctl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Writes a unit into `/run/systemd/system` inside the namespace (a
    /// tmpfs: nothing lands on the host's disk) and reloads systemd.
    pub fn write_unit(&self, name: &str, text: &str) -> Result<(), String> {
        let path = self.root().join("run/systemd/system").join(name);
        let mut f = File::create(&path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        drop(f);
        self.systemctl(&["daemon-reload"]).map(|_| ())
    }

    /// A unit's property value (`systemctl show -p NAME --value`).
    pub fn property(&self, unit: &str, name: &str) -> Result<String, String> {
        self.systemctl(&["show", "-p", name, "--value", unit]).map(|s| s.trim().to_string())
    }
}

impl Drop for SystemdSandbox {
    fn drop(&mut self) {
        // SIGKILL to a namespace's PID 1 from outside kills every process in
        // the namespace; the mounts go with the last process.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
        kill_unshare(&mut self.unshare);
    }
}

fn kill_unshare(unshare: &mut Child) {
    let _ = unshare.kill();
    let _ = unshare.wait();
}

/// The first child of `pid`, from procfs.
fn child_of(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn acquire_lock() -> Result<File, String> {
    let _ = std::fs::create_dir_all("/run/lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(|e| format!("cannot open {LOCK_PATH}: {e}"))?;
    // SAFETY: flock on a file descriptor we own; blocks until the other
    // sandbox on this machine is gone.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(format!("cannot lock {LOCK_PATH}: {}", std::io::Error::last_os_error()));
    }
    Ok(f)
}
