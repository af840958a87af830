//! Running a command: argv without a shell, a clean environment, bounded in
//! time and output, as an unprivileged user by default. Runbook `exec`
//! steps and health `command:` probes both run through here.

use serde::Serialize;
#[cfg(unix)]
use std::io::Read;
#[cfg(unix)]
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
#[cfg(unix)]
use std::process::{Command, Stdio};
use std::time::Duration;
#[cfg(unix)]
use std::time::Instant;

/// The user commands run as unless told otherwise.
pub const DEFAULT_RUN_AS: &str = "nobody";

/// Bytes of stdout and of stderr kept in the audit record.
pub const MAX_OUTPUT: usize = 4096;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// Output beyond `MAX_OUTPUT` was dropped.
    pub truncated: bool,
    pub duration_ms: u64,
}

impl ExecOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// A resolved user to run a command as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Looks up `user` (a name or a numeric uid) and its groups.
#[cfg(unix)]
pub fn resolve_user(user: &str) -> Result<Identity, String> {
    let cname = std::ffi::CString::new(user).map_err(|_| format!("invalid user name `{user}`"))?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pwd's strings.
    let rc = unsafe {
        libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result)
    };
    if rc != 0 || result.is_null() {
        if let Ok(uid) = user.parse::<u32>() {
            return Ok(Identity { uid, gid: uid, groups: vec![] });
        }
        return Err(format!("user `{user}` does not exist"));
    }
    let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: groups has room for n entries; n is updated to the count.
    let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    groups.truncate(if rc < 0 { 0 } else { n.max(0) as usize });
    Ok(Identity { uid, gid, groups })
}

#[cfg(unix)]
fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is a plain C struct of integers and pointers; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Commands need a way to drop privileges to `run_as`; until the Windows
/// one exists (a restricted token), exec actions and command probes fail
/// there with this error rather than run as the agent's account.
#[cfg(not(unix))]
pub fn run_exec(
    _argv: &[String],
    _env: &[(String, String)],
    _cwd: Option<&Path>,
    _run_as: &str,
    _timeout: Duration,
) -> Result<ExecOutcome, String> {
    Err("exec actions are not supported on this platform yet".into())
}

/// Runs `argv` directly (no shell) as `run_as`, with only `env` (plus a
/// fixed PATH) in its environment, for at most `timeout` whatever it and its
/// children do:
///
/// - it starts a session of its own (so it is the leader of its session
///   and process group) and, on Linux, a cgroup of its own below the
///   agent's (`custos-cmd-<pid>-<n>`) when the cgroup2 filesystem allows;
/// - its output is read without blocking, so a descendant that keeps the
///   pipes open cannot hold the caller past the deadline;
/// - at the deadline its process group, every process of its session and
///   every process of its cgroup (which catches those that left the
///   session with `setsid`) are killed.
#[cfg(unix)]
pub fn run_exec(
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
    run_as: &str,
    timeout: Duration,
) -> Result<ExecOutcome, String> {
    let program = argv.first().ok_or("empty argv")?;
    let id = resolve_user(run_as)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && id.uid != euid {
        return Err(format!("cannot run as `{run_as}`: custos is not running as root"));
    }
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.current_dir(cwd.unwrap_or(Path::new("/")));
    let cgroup = CommandCgroup::create();
    let procs_fd = cgroup.as_ref().map(|c| c.procs_fd());
    let drop_to = (euid == 0).then_some(id);
    // SAFETY: only async-signal-safe syscalls between fork and exec
    // (setsid, write, setgroups, setgid, setuid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd {
                // "0" moves the writer (this child) into the cgroup; a failure
                // leaves it where it is, still bounded by its session.
                let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
            }
            if let Some(Identity { uid, gid, groups }) = &drop_to {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    let session = child.id() as libc::pid_t;
    let mut out = child.stdout.take().map(Pipe::new);
    let mut err = child.stderr.take().map(Pipe::new);
    let deadline = started + timeout;
    let mut timed_out = false;
    let mut status = None;
    loop {
        for p in [&mut out, &mut err].into_iter().flatten() {
            p.drain();
        }
        if status.is_none() {
            status = child.try_wait().map_err(|e| format!("cannot wait for {program}: {e}"))?;
        }
        let pipes_done = [&out, &err].into_iter().flatten().all(|p| p.closed);
        if status.is_some() && pipes_done {
            break;
        }
        if Instant::now() >= deadline {
            // Whatever still runs, or holds the pipes, ends now.
            timed_out = status.is_none();
            kill_all(session, cgroup.as_ref());
            if status.is_none() {
                status = Some(child.wait().map_err(|e| format!("cannot wait for {program}: {e}"))?);
            }
            break;
        }
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(10));
        poll_pipes([&out, &err], wait);
    }
    let status = status.ok_or_else(|| format!("cannot wait for {program}"))?;
    if let Some(c) = cgroup {
        c.remove();
    }
    let (stdout, t1) = out.map(Pipe::finish).unwrap_or_default();
    let (stderr, t2) = err.map(Pipe::finish).unwrap_or_default();
    Ok(ExecOutcome {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
        truncated: t1 || t2,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// SIGKILL to the command's process group, to every process of its
/// session, and to every process of its cgroup.
#[cfg(unix)]
fn kill_all(session: libc::pid_t, cgroup: Option<&CommandCgroup>) {
    // SAFETY: kill with a negative pid signals that process group only.
    unsafe { libc::kill(-session, libc::SIGKILL) };
    for pid in session_members(session) {
        // SAFETY: kill of a process of the command's own session.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Some(c) = cgroup {
        c.kill();
    }
}

/// Processes whose session is `sid` (from /proc; none elsewhere).
#[cfg(unix)]
fn session_members(sid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // After the command name in parentheses (which may hold spaces):
            // state ppid pgrp session.
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            rest.split_whitespace().nth(3).and_then(|s| s.parse::<libc::pid_t>().ok()) == Some(sid)
        })
        .collect()
}

/// The command's own cgroup (Linux, cgroup2), below the agent's.
#[cfg(unix)]
struct CommandCgroup {
    path: std::path::PathBuf,
    procs: std::fs::File,
}

#[cfg(unix)]
impl CommandCgroup {
    #[cfg(target_os = "linux")]
    fn create() -> Option<CommandCgroup> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = custos_ebpf::cgroup2_mount().ok()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim().trim_start_matches('/').to_string();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let parent = root.join(own);
        if n.is_multiple_of(64) {
            Self::sweep(&parent);
        }
        let path = parent.join(format!("custos-cmd-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).ok()?;
        match std::fs::OpenOptions::new().write(true).open(path.join("cgroup.procs")) {
            Ok(procs) => Some(CommandCgroup { path, procs }),
            Err(_) => {
                let _ = std::fs::remove_dir(&path);
                None
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn create() -> Option<CommandCgroup> {
        None
    }

    fn procs_fd(&self) -> libc::c_int {
        std::os::fd::AsRawFd::as_raw_fd(&self.procs)
    }

    /// Kills every process in it: `cgroup.kill` where the kernel has it
    /// (5.14), else each pid listed, until it is empty (bounded).
    fn kill(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), b"1").is_ok() {
            return;
        }
        for _ in 0..100 {
            let pids = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<libc::pid_t> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill of a process in the command's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes it once empty: processes just reaped or killed take a
    /// moment to leave it. One that outlives the command by design (it
    /// ended in time and left a daemon behind) keeps it; the next command
    /// removes it once empty ([`CommandCgroup::sweep`]).
    fn remove(self) {
        for _ in 0..40 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the empty cgroups earlier commands left in `parent`.
    #[cfg(target_os = "linux")]
    fn sweep(parent: &Path) {
        let Ok(rd) = std::fs::read_dir(parent) else { return };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("custos-cmd-") {
                // Fails, harmlessly, while processes remain.
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// One output pipe, read without blocking, the first `MAX_OUTPUT` bytes
/// kept.
#[cfg(unix)]
struct Pipe {
    reader: std::fs::File,
    kept: Vec<u8>,
    truncated: bool,
    closed: bool,
}

#[cfg(unix)]
impl Pipe {
    fn new(r: impl Into<std::os::fd::OwnedFd>) -> Pipe {
        let reader = std::fs::File::from(r.into());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
        // SAFETY: fcntl on a pipe descriptor this process owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Pipe { reader, kept: Vec::new(), truncated: false, closed: false }
    }

    /// Reads what is there now.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while !self.closed {
            match self.reader.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                    self.truncated |= n > room;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    fn finish(mut self) -> (String, bool) {
        self.drain();
        (String::from_utf8_lossy(&self.kept).into_owned(), self.truncated)
    }
}

/// Waits until a pipe has data or `wait` passes.
#[cfg(unix)]
fn poll_pipes(pipes: [&Option<Pipe>; 2], wait: Duration) {
    let mut fds: Vec<libc::pollfd> = pipes
        .into_iter()
        .flatten()
        .filter(|p| !p.closed)
        .map(|p| libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&p.reader),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = wait.as_millis().clamp(1, 10) as libc::c_int;
    if fds.is_empty() {
        std::thread::sleep(Duration::from_millis(ms as u64));
        return;
    }
    // SAFETY: fds is a valid array of pollfd for its length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn exec_passes_arguments_literally_and_bounds_output() {
        let out = run_exec(
            &["/bin/echo".into(), "x; touch /tmp/pwned-custos-unit".into(), "$(id)".into()],
            &[],
            None,
            "root",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout, "x; touch /tmp/pwned-custos-unit $(id)\n");
        assert!(!Path::new("/tmp/pwned-custos-unit").exists());
        let big = run_exec(
            &["/usr/bin/head".into(), "-c".into(), "100000".into(), "/dev/zero".into()],
            &[],
            None,
            "root",
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(big.truncated && big.stdout.len() == MAX_OUTPUT);
    }

    #[test]
    fn exec_times_out_and_runs_unprivileged_by_default() {
        let out =
            run_exec(&["/bin/sleep".into(), "10".into()], &[], None, "root", Duration::from_millis(200))
                .unwrap();
        assert!(out.timed_out && !out.success());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let id =
                run_exec(&["/usr/bin/id".into(), "-u".into()], &[], None, "nobody", Duration::from_secs(5))
                    .unwrap();
            assert_eq!(id.stdout.trim(), resolve_user("nobody").unwrap().uid.to_string());
        }
    }

    /// Whether a process whose argv holds `marker` still runs.
    fn running(marker: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == marker))
        })
    }

    #[test]
    fn a_child_that_leaves_the_session_is_still_bounded_by_the_timeout() {
        let marker = format!("40.{}", std::process::id());
        let t = Instant::now();
        let out = run_exec(
            &["/usr/bin/setsid".into(), "/bin/sleep".into(), marker.clone()],
            &[],
            None,
            "root",
            Duration::from_secs(2),
        )
        .unwrap();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(4), "took {took:?}: {out:?}");
        // setsid forks (its child is a group leader), its child leaves the
        // session: whatever the shape, nothing of it outlives the timeout.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!running(&marker), "setsid sleep {marker} outlived its timeout");
    }

    #[test]
    fn a_descendant_holding_the_pipes_does_not_hold_the_outcome() {
        let marker = format!("30.{}", std::process::id());
        let t = Instant::now();
        let out = run_exec(
            &["/bin/sh".into(), "-c".into(), format!("/bin/sleep {marker} & echo started")],
            &[],
            None,
            "root",
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!((out.exit_code, out.timed_out, out.stdout.as_str()), (Some(0), false, "started\n"));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!running(&marker), "the descendant holding the pipe outlived the deadline");
    }
}
