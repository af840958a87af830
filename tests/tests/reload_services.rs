//! A reload that changes the managed services takes effect in the running
//! agent, on the kernel sensor: the new service is reported, the removed
//! one no longer is, and the agent is not restarted.

#![cfg(target_os = "linux")]

use custos_tests::{custos_bin, gate, wait_for};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn status(socket: &Path) -> serde_json::Value {
    let out = Command::new(custos_bin()).args(["status", "--json", "--socket"]).arg(socket).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Events counted for `service` ("N events" in its status line).
fn events_of(status: &serde_json::Value, service: &str) -> u64 {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == service)
        .and_then(|s| s["detail"].as_str())
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn configured(status: &serde_json::Value) -> Vec<String> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(String::from))
        .collect()
}

fn run(bin: &Path) {
    let s = Command::new(bin).status().unwrap();
    assert!(s.success());
}

#[test]
fn a_reload_switches_the_managed_services_without_a_restart() {
    if !gate("a_reload_switches_the_managed_services_without_a_restart", custos_ebpf::availability()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Two programs told apart by their executable path.
    let alpha = dir.path().join("alpha");
    let beta = dir.path().join("beta");
    for p in [&alpha, &beta] {
        std::fs::copy("/bin/true", p).unwrap();
    }
    let cfg = dir.path().join("custos.yaml");
    let write_config = |name: &str, exe: &Path| {
        std::fs::write(
            &cfg,
            format!(
                "agent: {{ state_dir: {} }}\nservices:\n  - name: {name}\n    exe: {}\n",
                dir.path().join("state").display(),
                exe.display()
            ),
        )
        .unwrap();
    };
    write_config("alpha", &alpha);
    let socket = dir.path().join("control.sock");
    let mut agent = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--config"])
        .arg(&cfg)
        .arg("--socket")
        .arg(&socket)
        .env("CUSTOS_LOG", "warn")
        .env_remove("CUSTOS_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = agent.id();
    // Stops the agent however the test ends, and shows its log on failure.
    struct Stop(u32, std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: kill with the pid of our own child.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
            if std::thread::panicking() {
                eprintln!("agent log:\n{}", std::fs::read_to_string(&self.1).unwrap_or_default());
            }
        }
    }
    let _stop = Stop(pid, dir.path().join("agent.log"));

    wait_for("alpha reported", Duration::from_secs(30), || {
        run(&alpha);
        run(&beta);
        events_of(&status(&socket), "alpha") > 0
    });
    assert_eq!(events_of(&status(&socket), "beta"), 0, "beta is not managed yet");

    write_config("beta", &beta);
    let out = Command::new(custos_bin()).args(["reload", "--socket"]).arg(&socket).output().unwrap();
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    let s = status(&socket);
    assert_eq!(configured(&s)[0], "beta", "{s}");

    // The pipeline takes the new services between two events, just after
    // the reload is acknowledged; what alpha did before is counted by now.
    std::thread::sleep(Duration::from_secs(1));
    let alpha_at_reload = events_of(&status(&socket), "alpha");
    wait_for("beta reported", Duration::from_secs(30), || {
        run(&alpha);
        run(&beta);
        events_of(&status(&socket), "beta") > 0
    });
    // Alpha runs before beta in every round: once beta's start and exit of
    // the last round are counted, alpha's of the same rounds went through
    // the pipeline too.
    let b0 = events_of(&status(&socket), "beta");
    for _ in 0..5 {
        run(&alpha);
        run(&beta);
    }
    // At least their starts (a process this short may exit before the
    // kernel filter tracks it).
    wait_for("five more rounds of beta", Duration::from_secs(30), || {
        events_of(&status(&socket), "beta") >= b0 + 5
    });
    let s = status(&socket);
    assert_eq!(events_of(&s, "alpha"), alpha_at_reload, "the removed service is still reported: {s}");
    assert_eq!(s["pid"].as_u64(), Some(pid as u64), "the agent restarted");
    assert_eq!(s["last_reload"]["ok"], true, "{s}");

    // SAFETY: our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status}");
}
