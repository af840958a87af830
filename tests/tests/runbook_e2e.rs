//! End to end through the real binary: `custos run` with the BPF sensor
//! sees a unit of the systemd sandbox crash, attributes the exit to its
//! service, and its runbook restarts the unit over D-Bus; the audit log in
//! the state dir records it and verifies.
#![cfg(target_os = "linux")]

use custos_tests::systemd::sandbox_or_skip;
use custos_tests::{custos_bin, gate};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn custos_run_restarts_a_crashing_unit_by_runbook() {
    if !gate("custos_run_restarts_a_crashing_unit_by_runbook", custos_ebpf::availability()) {
        return;
    }
    let Some(sd) = sandbox_or_skip("custos_run_restarts_a_crashing_unit_by_runbook") else { return };
    // Crashes 6 s after each start, with systemd's Restart= off: only the
    // runbook brings it back.
    sd.write_unit("crashy.service", "[Service]\nExecStart=/bin/sh -c 'sleep 6; exit 3'\n").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let rb = runbooks.join("crashy.yaml");
    std::fs::write(
        &rb,
        "name: crashy-restart\nservice: crashy\ntrigger: { event: process_exit, where: { exit_code: 3 } }\nsteps: [ { restart: {} } ]\ncooldown: 0s\n",
    )
    .unwrap();
    std::fs::set_permissions(&rb, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("custos.yaml");
    std::fs::write(
        &cfg,
        format!(
            "services:\n  - name: crashy\n    systemd_unit: crashy.service\nrunbooks: {{ dir: {} }}\nagent: {{ state_dir: {}, listen: \"127.0.0.1:0\" }}\n",
            runbooks.display(),
            state.display()
        ),
    )
    .unwrap();
    // Started before the agent so that its cgroup exists when the agent
    // starts; later runs get new cgroups the agent must follow.
    sd.systemctl(&["start", "crashy.service"]).unwrap();
    let mut agent = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--config", cfg.to_str().unwrap()])
        .env("CUSTOS_SYSTEMD_BUS", sd.system_bus_address())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the sensor attach before the first crash.
    std::thread::sleep(Duration::from_secs(3));
    let first = sd.property("crashy.service", "InvocationID").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut invocations = vec![first];
    while invocations.len() < 3 && Instant::now() < deadline {
        let now = sd.property("crashy.service", "InvocationID").unwrap_or_default();
        if !now.is_empty() && invocations.last() != Some(&now) {
            invocations.push(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let mut stderr = String::new();
    use std::io::Read;
    agent.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let audit = std::fs::read_to_string(state.join("audit/audit.jsonl")).unwrap_or_default();
    assert!(
        invocations.len() >= 3,
        "the runbook restarted the unit twice: {invocations:?}\n{stderr}\n{audit}"
    );
    assert!(status.success(), "{status:?}\n{stderr}");
    let outcomes: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "outcome")
        .collect();
    assert!(outcomes.len() >= 2 && outcomes.iter().all(|o| o["details"]["ok"] == true), "{audit}");
    let verify = Command::new(custos_bin())
        .args(["audit", "verify", state.join("audit").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

/// A recording of a crash replayed on a host that runs a unit of the same
/// name: without `--act` the runbook decides and audits as dry-run and the
/// live unit is left alone; with `--act` it is restarted.
#[test]
fn a_replay_restarts_nothing_without_act() {
    let Some(sd) = sandbox_or_skip("a_replay_restarts_nothing_without_act") else { return };
    sd.write_unit("replayed.service", "[Service]\nExecStart=/bin/sleep infinity\n").unwrap();
    sd.systemctl(&["start", "replayed.service"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let rb = runbooks.join("replayed.yaml");
    std::fs::write(
        &rb,
        "name: replayed-restart\nservice: replayed\ntrigger: { event: process_exit, where: { signal: SIGKILL } }\nsteps: [ { restart: {} } ]\ncooldown: 0s\n",
    )
    .unwrap();
    std::fs::set_permissions(&rb, std::fs::Permissions::from_mode(0o644)).unwrap();
    let recording = dir.path().join("oom.jsonl");
    std::fs::write(
        &recording,
        "{\"kind\":\"process_exit\",\"ts\":\"2024-01-01T00:00:00Z\",\"service\":\"replayed\",\"pid\":10,\"comm\":\"sleep\",\"signal\":\"SIGKILL\",\"lifetime_ns\":5}\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("custos.yaml");
    std::fs::write(
        &cfg,
        format!(
            "services:\n  - name: replayed\n    systemd_unit: replayed.service\nrunbooks: {{ dir: {} }}\nagent: {{ state_dir: {}, listen: \"127.0.0.1:0\" }}\n",
            runbooks.display(),
            state.display()
        ),
    )
    .unwrap();
    let replay = |act: bool| {
        let mut args = vec!["run", "--summary", "never", "--config", cfg.to_str().unwrap()];
        args.extend(["--replay", recording.to_str().unwrap()]);
        if act {
            args.push("--act");
        }
        let out = Command::new(custos_bin())
            .args(&args)
            .env("CUSTOS_SYSTEMD_BUS", sd.system_bus_address())
            .env("CUSTOS_CONTROL_SOCKET", dir.path().join("control.sock"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let before = sd.property("replayed.service", "InvocationID").unwrap();
    replay(false);
    std::thread::sleep(Duration::from_millis(500));
    let after = sd.property("replayed.service", "InvocationID").unwrap();
    let audit = std::fs::read_to_string(state.join("audit/audit.jsonl")).unwrap();
    assert_eq!(before, after, "a replay without --act restarted the live unit\n{audit}");
    let actions: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "action")
        .collect();
    assert!(!actions.is_empty() && actions.iter().all(|a| a["dry_run"] == true), "{audit}");

    replay(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sd.property("replayed.service", "InvocationID").unwrap() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(sd.property("replayed.service", "InvocationID").unwrap(), before, "--act did not act");
}

/// A misspelled unit validated `ok` and showed as `-` in status forever; a
/// runbook for a service nobody configured loaded and stayed armed. Asked
/// of a real systemd, both are errors at their line and column.
#[test]
fn validate_refuses_a_unit_systemd_does_not_know() {
    let Some(sd) = sandbox_or_skip("validate_refuses_a_unit_systemd_does_not_know") else { return };
    sd.write_unit("known.service", "[Service]\nExecStart=/bin/sleep infinity\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let rb = runbooks.join("other.yaml");
    std::fs::write(
        &rb,
        "name: other\nservice: other\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n",
    )
    .unwrap();
    std::fs::set_permissions(&rb, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("custos.yaml");
    let write = |units: &str| {
        std::fs::write(&cfg, format!("services:\n{units}runbooks: {{ dir: {} }}\n", runbooks.display()))
            .unwrap()
    };
    let validate = || {
        Command::new(custos_bin())
            .args(["validate", "--config", cfg.to_str().unwrap()])
            .env("CUSTOS_SYSTEMD_BUS", sd.system_bus_address())
            .output()
            .unwrap()
    };
    write("  - name: known\n    systemd_unit: known\n  - name: other\n    systemd_unit: konwn.service\n");
    let out = validate();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a unit systemd does not know validated: {err}");
    assert!(err.contains(&format!("{}:5:19:", cfg.display())) && err.contains("`konwn.service`"), "{err}");
    write("  - name: known\n    systemd_unit: known\n");
    let out = validate();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a runbook for an unconfigured service validated: {err}");
    assert!(err.contains(&format!("{}:2:10:", rb.display())) && err.contains("`other`"), "{err}");
    write("  - name: known\n    systemd_unit: known\n  - name: other\n    systemd_unit: known.service\n");
    let out = validate();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
