//! custos as a systemd service, in a real systemd (the sandbox harness):
//! install → active with READY, status, reload (valid and invalid), crash
//! restart, watchdog, clean stop, uninstall and purge.
//!
//! Everything lands inside the sandbox: the unit in its private
//! `/run/systemd/system`, binary, configuration and state under the prefix
//! `/run/custos-test` (its private `/run` tmpfs). Nothing touches the host's
//! `/etc` or `/usr/local`.
//!
//! Where BPF works, the unit runs exactly as `custos install` writes it, on
//! the kernel sensor: this also proves the capability set and the hardening
//! leave BPF loading and attaching working. Elsewhere a drop-in points it at
//! a replay from a FIFO that a feeder unit keeps open.

use custos_tests::systemd::{sandbox_or_skip, SystemdSandbox};
use custos_tests::{custos_bin, wait_for};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PREFIX: &str = "/run/custos-test";
const UNIT: &str = "custos.service";
const EVENT: &str = r#"{"kind":"process_start","ts":"2024-01-01T00:00:00Z","service":"api","pid":10,"comm":"api","ppid":1,"exe":"/usr/bin/api","argv":["/usr/bin/api"]}"#;

/// A path inside the sandbox, as seen from outside.
fn inside(sd: &SystemdSandbox, path: &str) -> PathBuf {
    sd.root().join(path.trim_start_matches('/'))
}

fn custos(sd: &SystemdSandbox, bin: &Path, args: &[&str]) -> std::process::Output {
    let mut full = vec![bin.to_str().unwrap()];
    full.extend_from_slice(args);
    sd.exec(&full).expect("nsenter custos")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn prop(sd: &SystemdSandbox, name: &str) -> String {
    sd.property(UNIT, name).unwrap_or_default()
}

fn status_json(sd: &SystemdSandbox, bin: &Path) -> serde_json::Value {
    let out = custos(sd, bin, &["status", "--json"]);
    assert!(out.status.success(), "custos status --json failed: {}{}", text(&out.stdout), text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn write_dropin(sd: &SystemdSandbox, name: &str, body: &str) {
    let dir = inside(sd, "/run/systemd/system/custos.service.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), body).unwrap();
}

fn remove_dropin(sd: &SystemdSandbox, name: &str) {
    let _ = std::fs::remove_file(inside(sd, "/run/systemd/system/custos.service.d").join(name));
}

#[test]
fn custos_as_a_systemd_service() {
    let Some(sd) = sandbox_or_skip("custos_as_a_systemd_service") else { return };
    let bin = custos_bin();
    let installed_bin = format!("{PREFIX}/usr/local/bin/custos");
    let config = format!("{PREFIX}/etc/custos/custos.yaml");

    // The event source: a FIFO kept open and fed by a unit of its own.
    std::fs::create_dir_all(inside(&sd, PREFIX)).unwrap();
    let fifo = format!("{PREFIX}/events.fifo");
    let out = sd.exec(&["mkfifo", "-m", "0600", &fifo]).unwrap();
    assert!(out.status.success(), "mkfifo: {}", text(&out.stderr));
    std::fs::write(inside(&sd, &format!("{PREFIX}/event.json")), format!("{EVENT}\n")).unwrap();
    sd.write_unit(
        "custos-feeder.service",
        &format!(
            "[Service]\nExecStart=/bin/sh -c 'exec 3<>{fifo}; while :; do cat {PREFIX}/event.json >&3; sleep 0.2; done'\n"
        ),
    )
    .unwrap();
    sd.systemctl(&["start", "--no-block", "custos-feeder.service"]).unwrap();
    match custos_ebpf::availability() {
        Ok(()) => println!("source: the kernel sensor (the unit as installed)"),
        Err(why) => {
            println!("source: a replay, because BPF is unavailable: {why}");
            write_dropin(
                &sd,
                "10-test-source.conf",
                &format!("[Service]\nExecStart=\nExecStart={installed_bin} run --config {config} --replay {fifo}\n"),
            );
        }
    }

    // --- dry run: says what it would do, does nothing.
    let out =
        custos(&sd, &bin, &["install", "--dry-run", "--prefix", PREFIX, "--unit-dir", "/run/systemd/system"]);
    let plan = text(&out.stdout);
    assert!(out.status.success(), "dry run failed: {plan}{}", text(&out.stderr));
    assert!(plan.contains("would write unit /run/systemd/system/custos.service"), "{plan}");
    assert!(plan.contains("would systemctl enable --runtime custos.service"), "{plan}");
    assert!(!inside(&sd, "/run/systemd/system/custos.service").exists());
    assert!(!inside(&sd, &config).exists());

    // --- install: active (running), READY seen, STATUS= set.
    let out = custos(&sd, &bin, &["install", "--prefix", PREFIX, "--unit-dir", "/run/systemd/system"]);
    assert!(out.status.success(), "install failed: {}{}", text(&out.stdout), text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("custos.service is active (running)"), "{said}");
    assert_eq!(prop(&sd, "ActiveState"), "active");
    assert_eq!(prop(&sd, "SubState"), "running");
    assert_eq!(prop(&sd, "Type"), "notify");
    assert_eq!(prop(&sd, "UnitFileState"), "enabled-runtime");
    wait_for("STATUS= from the agent", Duration::from_secs(20), || {
        prop(&sd, "StatusText").starts_with("running:")
    });
    let state_dir = inside(&sd, &format!("{PREFIX}/var/lib/custos"));
    assert!(state_dir.is_dir());
    let first_pid = prop(&sd, "MainPID");

    // Idempotent: a second install changes nothing and does not restart.
    let out = custos(&sd, &bin, &["install", "--prefix", PREFIX, "--unit-dir", "/run/systemd/system"]);
    assert!(out.status.success(), "re-install failed: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("keep unit /run/systemd/system/custos.service (unchanged)"));
    assert_eq!(prop(&sd, "MainPID"), first_pid, "an unchanged re-install restarted the agent");

    // --- status over the control socket.
    let out = custos(&sd, &bin, &["status"]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "status failed: {shown}{}", text(&out.stderr));
    println!("custos status:\n{shown}");
    assert!(
        shown.starts_with(&format!("custos {} (pid {first_pid}): running", env!("CARGO_PKG_VERSION"))),
        "{shown}"
    );
    assert!(shown.contains(&format!("config     {config}")), "{shown}");
    wait_for("events counted", Duration::from_secs(20), || {
        status_json(&sd, &bin)["events_total"].as_u64().unwrap_or(0) > 0
    });
    let socket = inside(&sd, "/run/custos/control.sock");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(socket.parent().unwrap()), 0o700);
    }

    // --- reload: valid config applies, invalid one is rejected and the old stays.
    std::fs::write(inside(&sd, &config), format!("agent: {{ state_dir: {PREFIX}/var/lib/custos }}\nservices:\n  - name: api\n    exe: /usr/bin/api\n"))
        .unwrap();
    sd.systemctl(&["reload", UNIT]).unwrap();
    wait_for("valid reload applied", Duration::from_secs(20), || {
        let s = status_json(&sd, &bin);
        s["last_reload"]["ok"] == true && s["services"][0]["name"] == "api"
    });
    std::fs::write(
        inside(&sd, &config),
        format!("agent: {{ state_dir: {PREFIX}/var/lib/custos }}\nservices:\n  - name: api\n    exe: /usr/bin/api\n    bogus: 1\n"),
    )
    .unwrap();
    // ExecReload is `custos reload`, which waits for the agent's answer: a
    // rejected configuration fails `systemctl reload` with the reason, and
    // the unit stays up on the configuration it had.
    let rejected = sd.systemctl(&["reload", UNIT]).expect_err("a rejected configuration reloaded");
    assert!(rejected.contains("failed"), "{rejected}");
    sd.systemctl(&["is-active", UNIT]).expect("the agent stays active after a rejected reload");
    wait_for("invalid reload rejected", Duration::from_secs(20), || {
        status_json(&sd, &bin)["last_reload"]["ok"] == false
    });
    let s = status_json(&sd, &bin);
    let err = s["last_reload"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains(&format!("{config}:5:5")), "rejection lacks file:line:col: {err}");
    assert_eq!(s["services"][0]["name"], "api", "the previous configuration must stay in effect");
    // Logged to journald with structured fields (when the sandbox runs journald).
    if sd.systemctl(&["is-active", "systemd-journald.service"]).is_ok() {
        let want = format!("{config}:5:5");
        wait_for("the rejection in the journal", Duration::from_secs(20), || {
            let out = sd.exec(&["journalctl", "-u", UNIT, "-o", "json", "--no-pager"]).unwrap();
            text(&out.stdout).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(
                |r| {
                    r["SYSLOG_IDENTIFIER"] == "custos"
                        && r["MESSAGE"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("Rejected the new configuration"))
                        && r["CUSTOS_ERROR"].as_str().is_some_and(|e| e.contains(&want))
                        && r["PRIORITY"] == "3"
                },
            )
        });
        println!("journal: the rejection is logged with PRIORITY=3 and CUSTOS_ERROR containing {want}");
    } else {
        println!("note: no journald in the sandbox; journal fields not checked");
    }
    assert_eq!(prop(&sd, "ActiveState"), "active");
    assert_eq!(prop(&sd, "MainPID"), first_pid, "a reload must not restart the agent");
    // The same through the control socket's reload command.
    let out = custos(&sd, &bin, &["reload"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("reload rejected"), "{}", text(&out.stderr));
    // The feeder unit as a managed service with a probe that cannot pass
    // (nothing listens on port 9): managed services change at the next
    // start, which kill -9 below brings.
    std::fs::write(
        inside(&sd, &config),
        format!(
            "agent: {{ state_dir: {PREFIX}/var/lib/custos }}\nservices:\n  - name: feeder\n    systemd_unit: custos-feeder\n    health: {{ tcp: \"127.0.0.1:9\", every: 1s, timeout: 500ms, failures: 2 }}\n"
        ),
    )
    .unwrap();
    let out = custos(&sd, &bin, &["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // --- kill -9: systemd restarts it (Restart=on-failure).
    let restarts_before: u32 = prop(&sd, "NRestarts").parse().unwrap();
    let out = sd.exec(&["kill", "-9", &first_pid]).unwrap();
    assert!(out.status.success());
    wait_for("restart after kill -9", Duration::from_secs(30), || {
        prop(&sd, "NRestarts").parse::<u32>().unwrap_or(0) > restarts_before
            && prop(&sd, "ActiveState") == "active"
            && prop(&sd, "MainPID") != first_pid
    });
    let second_pid = prop(&sd, "MainPID");
    // Status shows the service manager's state and the probe's verdict.
    wait_for("the feeder's state and health in status", Duration::from_secs(30), || {
        let s = status_json(&sd, &bin);
        let f = &s["services"][0];
        f["name"] == "feeder"
            && f["state"] == "active (running)"
            && f["healthy"] == false
            && f["detail"].as_str().is_some_and(|d| d.contains("tcp"))
    });
    let shown = text(&custos(&sd, &bin, &["status"]).stdout);
    println!("custos status with a probed unit:\n{shown}");
    assert!(
        shown.contains("feeder") && shown.contains("active (running)") && shown.contains("UNHEALTHY"),
        "{shown}"
    );

    // --- clean stop: exit 0 within TimeoutStopSec (a timeout would be Result=timeout).
    assert_eq!(prop(&sd, "TimeoutStopUSec"), "30s");
    let stop_started = Instant::now();
    sd.systemctl(&["stop", UNIT]).unwrap();
    println!("systemctl stop took {:?} (TimeoutStopSec=30s)", stop_started.elapsed());
    assert_eq!(prop(&sd, "ActiveState"), "inactive");
    assert_eq!(prop(&sd, "Result"), "success");
    assert_eq!(prop(&sd, "ExecMainStatus"), "0", "the agent did not exit 0");
    assert_ne!(second_pid, "0");
    // Not running: status says so and exits 3.
    let out = custos(&sd, &bin, &["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("custos is not running"), "{}", text(&out.stderr));
    assert!(!socket.exists(), "control socket left behind");

    // --- watchdog: keep-alives while alive; a stalled pipeline is killed.
    write_dropin(&sd, "20-test-watchdog.conf", "[Service]\nWatchdogSec=3\n");
    sd.systemctl(&["daemon-reload"]).unwrap();
    sd.systemctl(&["start", UNIT]).unwrap();
    let healthy_pid = prop(&sd, "MainPID");
    let restarts_before: u32 = prop(&sd, "NRestarts").parse().unwrap();
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(prop(&sd, "MainPID"), healthy_pid, "a live pipeline was killed by the watchdog");
    assert_eq!(prop(&sd, "NRestarts").parse::<u32>().unwrap(), restarts_before);
    write_dropin(
        &sd,
        "20-test-watchdog.conf",
        // No core file from the watchdog's SIGABRT on the host's disk.
        "[Service]\nWatchdogSec=3\nEnvironment=CUSTOS_TEST_STALL_AFTER=2\nRestartSec=3\nLimitCORE=0\n",
    );
    sd.systemctl(&["daemon-reload"]).unwrap();
    sd.systemctl(&["restart", UNIT]).unwrap();
    let stalled_pid = prop(&sd, "MainPID");
    let mut saw_watchdog = false;
    wait_for("watchdog kill and restart", Duration::from_secs(40), || {
        saw_watchdog |= prop(&sd, "Result") == "watchdog";
        saw_watchdog && prop(&sd, "MainPID") != stalled_pid && prop(&sd, "ActiveState") == "active"
    });
    println!(
        "watchdog: stalled pid {stalled_pid} killed (Result=watchdog), restarted as {}",
        prop(&sd, "MainPID")
    );
    remove_dropin(&sd, "20-test-watchdog.conf");

    // --- uninstall keeps configuration and state; --purge removes them.
    let out = custos(&sd, &bin, &["uninstall", "--prefix", PREFIX, "--unit-dir", "/run/systemd/system"]);
    assert!(out.status.success(), "uninstall failed: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(!inside(&sd, "/run/systemd/system/custos.service").exists());
    assert!(!inside(&sd, &installed_bin).exists());
    assert_eq!(prop(&sd, "LoadState"), "not-found", "the unit is still loaded");
    assert!(inside(&sd, &config).exists() && state_dir.exists());
    let out =
        custos(&sd, &bin, &["uninstall", "--purge", "--prefix", PREFIX, "--unit-dir", "/run/systemd/system"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "purge failed: {said}{}", text(&out.stderr));
    assert!(
        said.contains(&format!("--purge: removing configuration and state: {PREFIX}/etc/custos")),
        "{said}"
    );
    assert!(!inside(&sd, &format!("{PREFIX}/etc/custos")).exists());
    assert!(!state_dir.exists());
    remove_dropin(&sd, "10-test-source.conf");
}
