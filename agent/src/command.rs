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
/// fixed PATH) in its environment, killing its process group after `timeout`.
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
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.current_dir(cwd.unwrap_or(Path::new("/")));
    if euid == 0 {
        let Identity { uid, gid, groups } = id;
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    let out = child.stdout.take().map(|s| std::thread::spawn(move || read_bounded(s)));
    let err = child.stderr.take().map(|s| std::thread::spawn(move || read_bounded(s)));
    let deadline = started + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                // SAFETY: kill of the child's own process group.
                unsafe {
                    libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
                }
                break child.wait().map_err(|e| format!("cannot wait for {program}: {e}"))?;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot wait for {program}: {e}")),
        }
    };
    let (stdout, t1) = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let (stderr, t2) = err.and_then(|h| h.join().ok()).unwrap_or_default();
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

/// Reads a pipe to its end, keeping the first `MAX_OUTPUT` bytes.
#[cfg(unix)]
fn read_bounded(mut r: impl Read) -> (String, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    let mut truncated = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
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
}
