//! What an operator means, end to end: `custos run` with the BPF sensor
//! watches units of a real systemd (the sandbox) and follows systemd's
//! jobs over its bus. Deploys (`systemctl restart`) and deliberate stops
//! are not failures; a SIGSEGV or a kill -9 is; a ladder whose steps do
//! not heal reaches its webhook without waiting for another crash; a
//! healed incident's ladder resets after `reset_after`; a paused service
//! is left alone, across an agent restart, until resumed.
#![cfg(target_os = "linux")]

use custos_tests::systemd::{sandbox_or_skip, SystemdSandbox};
use custos_tests::webhook::{self, WebhookReceiver};
use custos_tests::{custos_bin, gate, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `custos run` with its own state, runbooks and control socket.
struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    bus: String,
    config: PathBuf,
}

impl Agent {
    /// Writes the configuration (services by unit) and the runbooks, and
    /// starts the agent; returns once its sensor had time to attach.
    fn start(sd: &SystemdSandbox, dir: &Path, services: &[&str], runbooks: &[(&str, String)]) -> Agent {
        let rb_dir = dir.join("runbooks");
        std::fs::create_dir_all(&rb_dir).unwrap();
        for (name, text) in runbooks {
            let f = rb_dir.join(name);
            std::fs::write(&f, text).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mut cfg = String::from("services:\n");
        for s in services {
            cfg.push_str(&format!("  - name: {s}\n    systemd_unit: {s}.service\n"));
        }
        cfg.push_str(&format!(
            "runbooks: {{ dir: {} }}\nagent: {{ state_dir: {}, listen: \"127.0.0.1:0\" }}\n",
            rb_dir.display(),
            dir.join("state").display()
        ));
        let config = dir.join("custos.yaml");
        std::fs::write(&config, cfg).unwrap();
        let mut a = Agent { child: None, dir: dir.to_path_buf(), bus: sd.system_bus_address(), config };
        a.spawn();
        a
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn spawn(&mut self) {
        let child = Command::new(custos_bin())
            .args(["run", "--summary", "never", "--config", self.config.to_str().unwrap()])
            .arg("--socket")
            .arg(self.socket())
            .env("CUSTOS_SYSTEMD_BUS", &self.bus)
            .env("CUSTOS_LOG", "info,custos=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for("the agent's control socket", Duration::from_secs(30), || {
            self.cli(&["status", "--json"]).status.success()
        });
        // Let the sensor attach and the units' cgroups resolve.
        std::thread::sleep(Duration::from_secs(2));
    }

    /// Stops the agent (SIGTERM) and checks it stopped cleanly.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log());
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(custos_bin()).args(args).env("CUSTOS_CONTROL_SOCKET", self.socket()).output().unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Every audit record so far.
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("state/audit/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What went wrong, for assertion messages.
    fn story(&self) -> String {
        let audit: Vec<String> =
            self.audit().iter().map(|r| format!("{} {} {}", r["ts"], r["kind"], r["message"])).collect();
        format!("audit:\n{}\nlog:\n{}", audit.join("\n"), self.log())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ready(test: &str) -> Option<SystemdSandbox> {
    if !gate(test, custos_ebpf::availability()) {
        return None;
    }
    sandbox_or_skip(test)
}

fn main_pid(sd: &SystemdSandbox, unit: &str) -> String {
    let pid = sd.property(unit, "MainPID").unwrap();
    assert_ne!(pid, "0", "{unit} has no main process");
    pid
}

fn wait_active(sd: &SystemdSandbox, unit: &str) {
    wait_for(&format!("{unit} active"), Duration::from_secs(20), || {
        sd.property(unit, "ActiveState").unwrap_or_default() == "active"
    });
}

/// Webhook requests received within `wait`.
fn pages(recv: &WebhookReceiver, wait: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match recv.requests.recv_timeout(left) {
            Ok(r) => out.push(r.json()),
            Err(_) => break,
        }
    }
    out
}

/// A page on any exit that is an error or a signal (the shipped crash
/// condition), with no word about intent.
fn crash_pager(service: &str, url: &str) -> String {
    format!(
        r#"name: {service}-crash
service: {service}
trigger: {{ event: process_exit, where: {{ exit_class: {{ in: [error, signal] }} }} }}
steps:
  - webhook: {{ url: "{url}/page", preset: alert, severity: P1, summary: "{{{{ service.name }}}} crashed (signal {{{{ event.signal }}}}, {{{{ event.exit_cause }}}})" }}
cooldown: 0s
"#
    )
}

#[test]
fn three_deploys_page_nothing_while_a_segfault_pages() {
    let Some(sd) = ready("three_deploys_page_nothing_while_a_segfault_pages") else { return };
    sd.write_unit("web.service", "[Service]\nExecStart=/bin/sleep 100000\n").unwrap();
    sd.systemctl(&["start", "web.service"]).unwrap();
    let recv = webhook::start(200).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&sd, dir.path(), &["web"], &[("web.yaml", crash_pager("web", &recv.url))]);
    // Three deploys: each SIGTERMs the running sleep.
    for _ in 0..3 {
        let before = main_pid(&sd, "web.service");
        sd.systemctl(&["restart", "web.service"]).unwrap();
        assert_ne!(main_pid(&sd, "web.service"), before);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let got = pages(&recv, Duration::from_secs(3));
    assert!(got.is_empty(), "deploys paged: {got:#?}\n{}", agent.story());
    let status = agent.status();
    let web = status["services"].as_array().unwrap().iter().find(|s| s["name"] == "web").unwrap().clone();
    assert_eq!(web["last_exit"]["cause"], "restart_requested", "{web:#}\n{}", agent.story());
    assert_eq!(web["last_exit"]["signal"], "SIGTERM", "{web:#}");
    // A segfault is a crash: it pages, with the cause in the alert.
    sd.exec(&["kill", "-SEGV", &main_pid(&sd, "web.service")]).unwrap();
    let got = pages(&recv, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "{got:#?}\n{}", agent.story());
    assert_eq!(got[0]["summary"], "web crashed (signal SIGSEGV, unrequested)", "{:#}", got[0]);
    let status = agent.status();
    assert_eq!(status["runbook_counts"]["firings"], 1, "{:#}", status["runbook_counts"]);
    assert_eq!(status["runbook_counts"]["actions"], 1, "{:#}", status["runbook_counts"]);
}

#[test]
fn a_deliberate_stop_stays_stopped_while_a_kill_9_is_started_again() {
    let Some(sd) = ready("a_deliberate_stop_stays_stopped_while_a_kill_9_is_started_again") else { return };
    sd.write_unit("client.service", "[Service]\nExecStart=/bin/sleep 100000\nRestart=no\n").unwrap();
    sd.systemctl(&["start", "client.service"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keep_up = "name: client-down\nservice: client\ntrigger: { service_down: true }\nsteps:\n  - start: {}\n    verify: { healthy_within: 10s }\ncooldown: 0s\n";
    let agent = Agent::start(&sd, dir.path(), &["client"], &[("client.yaml", keep_up.to_string())]);
    // Let the state poller see it up.
    std::thread::sleep(Duration::from_secs(6));
    sd.systemctl(&["stop", "client.service"]).unwrap();
    // Two polls later it is still stopped.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(sd.property("client.service", "ActiveState").unwrap(), "inactive", "{}", agent.story());
    let status = agent.status();
    let client =
        status["services"].as_array().unwrap().iter().find(|s| s["name"] == "client").unwrap().clone();
    assert_eq!(client["stopped_on_request"], true, "{client:#}\n{}", agent.story());
    // The operator starts it; a kill -9 later is a failure: started again.
    sd.systemctl(&["start", "client.service"]).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let killed = main_pid(&sd, "client.service");
    sd.exec(&["kill", "-9", &killed]).unwrap();
    wait_for("client started again", Duration::from_secs(20), || {
        sd.property("client.service", "ActiveState").unwrap_or_default() == "active"
            && sd.property("client.service", "MainPID").unwrap_or_default() != killed
    });
    let audit = agent.audit();
    let starts: Vec<&serde_json::Value> =
        audit.iter().filter(|r| r["kind"] == "outcome" && r["details"]["ok"] == true).collect();
    assert_eq!(starts.len(), 1, "{}", agent.story());
}

#[test]
fn a_unit_dying_two_seconds_after_each_start_reaches_the_ladders_webhook() {
    let Some(sd) = ready("a_unit_dying_two_seconds_after_each_start_reaches_the_ladders_webhook") else {
        return;
    };
    sd.write_unit("flaky.service", "[Service]\nExecStart=/bin/sh -c 'sleep 2; exit 3'\nRestart=no\n")
        .unwrap();
    let recv = webhook::start(200).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ladder = format!(
        r#"name: flaky-crash
service: flaky
trigger: {{ event: process_exit, where: {{ exit_code: 3 }} }}
steps:
  - restart: {{}}
    verify: {{ healthy_within: 30s, stable_for: 5s }}
  - restart: {{}}
    verify: {{ healthy_within: 30s, stable_for: 5s }}
  - webhook: {{ url: "{}/page", preset: alert, severity: P1, summary: "{{{{ service.name }}}} keeps dying" }}
cooldown: 2m
"#,
        recv.url
    );
    sd.systemctl(&["start", "flaky.service"]).unwrap();
    let agent = Agent::start(&sd, dir.path(), &["flaky"], &[("flaky.yaml", ladder)]);
    // It dies 2 s after each start: restart, restart, then the page, each
    // as soon as the verification sees the unit fail.
    let got = pages(&recv, Duration::from_secs(25));
    assert_eq!(got.len(), 1, "{}", agent.story());
    assert_eq!(got[0]["summary"], "flaky keeps dying");
    let audit = agent.audit();
    let verdicts: Vec<&serde_json::Value> = audit.iter().filter(|r| r["kind"] == "verification").collect();
    assert_eq!(verdicts.len(), 2, "{}", agent.story());
    for v in &verdicts {
        assert_eq!(v["details"]["healed"], false, "{v:#}");
        // Not the 30 s allowed: the unit failed about 2 s after the restart.
        let waited = v["details"]["waited_ms"].as_u64().unwrap();
        assert!(waited < 5_000, "verification waited {waited} ms\n{}", agent.story());
    }
    // The page followed the second verdict at once.
    let at = |r: &serde_json::Value| -> std::time::SystemTime {
        humantime::parse_rfc3339(r["ts"].as_str().unwrap()).unwrap()
    };
    let page = audit.iter().find(|r| r["kind"] == "action" && r["details"]["action"] == "webhook").unwrap();
    let after = at(page).duration_since(at(verdicts[1])).unwrap_or_default();
    assert!(after < Duration::from_secs(1), "paged {after:?} after the verdict\n{}", agent.story());
    // Exhausted: the unit stays dead and nothing more runs.
    assert!(pages(&recv, Duration::from_secs(3)).is_empty());
    let status = agent.status();
    assert_eq!(status["runbooks"][0]["state"], "exhausted", "{:#}", status["runbooks"]);
}

#[test]
fn a_healed_incident_resets_the_ladder_after_reset_after() {
    let Some(sd) = ready("a_healed_incident_resets_the_ladder_after_reset_after") else { return };
    sd.write_unit("crashy.service", "[Service]\nExecStart=/bin/sh -c 'sleep 2; exit 3'\nRestart=no\n")
        .unwrap();
    let recv = webhook::start(200).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ladder = format!(
        r#"name: crashy-crash
service: crashy
trigger: {{ event: process_exit, where: {{ exit_code: 3 }} }}
steps:
  - restart: {{}}
    verify: {{ healthy_within: 5s, stable_for: 1s }}
  - webhook: {{ url: "{}/page" }}
reset_after: 4s
"#,
        recv.url
    );
    sd.systemctl(&["start", "crashy.service"]).unwrap();
    let agent = Agent::start(&sd, dir.path(), &["crashy"], &[("crashy.yaml", ladder)]);
    // Crash, restart, healed (up for a second): the ladder stands at step 2.
    wait_for("the restart healed", Duration::from_secs(20), || {
        agent.audit().iter().any(|r| r["kind"] == "verification" && r["details"]["healed"] == true)
    });
    assert_eq!(agent.status()["runbooks"][0]["ladder_position"], 1, "{}", agent.story());
    // It crashes again 2 s after the restart (a second incident would page)
    // and is left failed; then quiet: after reset_after the ladder is back
    // at step 1 without a new firing.
    sd.systemctl(&["stop", "crashy.service"]).unwrap();
    wait_for("the ladder reset", Duration::from_secs(15), || {
        agent.status()["runbooks"][0]["ladder_position"] == 0
    });
    assert!(
        agent.audit().iter().any(|r| r["message"].as_str().unwrap_or("").starts_with("Ladder reset")),
        "{}",
        agent.story()
    );
    assert!(pages(&recv, Duration::from_millis(100)).is_empty(), "{}", agent.story());
    // The next crash starts at step 1: a restart, not the page.
    let before = sd.property("crashy.service", "InvocationID").unwrap();
    sd.systemctl(&["start", "crashy.service"]).unwrap();
    wait_for("restarted by step 1", Duration::from_secs(20), || {
        let now = sd.property("crashy.service", "InvocationID").unwrap_or_default();
        agent.audit().iter().filter(|r| r["kind"] == "verification").count() >= 2 && now != before
    });
    assert!(pages(&recv, Duration::from_millis(500)).is_empty(), "{}", agent.story());
}

#[test]
fn a_paused_service_is_left_alone_across_an_agent_restart_until_resumed() {
    let Some(sd) = ready("a_paused_service_is_left_alone_across_an_agent_restart_until_resumed") else {
        return;
    };
    sd.write_unit("db.service", "[Service]\nExecStart=/bin/sleep 100000\nRestart=no\n").unwrap();
    sd.systemctl(&["start", "db.service"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keep_up = "name: db-down\nservice: db\ntrigger: { service_down: true }\nsteps:\n  - start: {}\n    verify: { healthy_within: 10s }\ncooldown: 0s\n";
    let mut agent = Agent::start(&sd, dir.path(), &["db"], &[("db.yaml", keep_up.to_string())]);
    let out = agent.cli(&["pause", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no managed service or runbook service named `nope`")
    );
    let out = agent.cli(&["pause", "db", "--for", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("db paused until "));
    // Maintenance: the operator's kill -9 is left alone.
    sd.exec(&["kill", "-9", &main_pid(&sd, "db.service")]).unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(sd.property("db.service", "ActiveState").unwrap(), "failed", "{}", agent.story());
    // The pause outlives the agent.
    agent.stop();
    agent.spawn();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(sd.property("db.service", "ActiveState").unwrap(), "failed", "{}", agent.story());
    let status = agent.status();
    let db = status["services"].as_array().unwrap().iter().find(|s| s["name"] == "db").unwrap().clone();
    assert_eq!(db["paused"], true, "{db:#}");
    assert!(db["paused_until"].as_u64().is_some(), "{db:#}");
    let text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("PAUSED until"), "{text}");
    let audit = agent.audit();
    assert!(
        audit.iter().any(|r| r["kind"] == "suppression" && r["details"]["reason"] == "paused"),
        "{}",
        agent.story()
    );
    assert!(audit.iter().any(|r| r["details"]["maintenance"] == "paused"), "{}", agent.story());
    // Resumed: the failed unit is started.
    let out = agent.cli(&["resume", "db"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_active(&sd, "db.service");
    assert!(agent.audit().iter().any(|r| r["details"]["maintenance"] == "resumed"), "{}", agent.story());
    let out = agent.cli(&["resume", "db"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db was not paused");
    // History beyond the status's ten, for the whole host (the action is
    // recorded once its verification ends).
    let mut v = serde_json::Value::Null;
    wait_for("the start in the history", Duration::from_secs(15), || {
        let out = agent.cli(&["status", "--json", "--actions", "50"]);
        v = serde_json::from_slice(&out.stdout).unwrap();
        v["last_actions"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(v["last_actions"][0]["action"], "step 1 of 1 (start)", "{:#}", v["last_actions"]);
}
