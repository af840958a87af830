//! The command line as a user meets it: validate, watch and run over a
//! recording (no privileges needed).

use custos_tests::custos_bin;
use std::io::Write;
use std::process::Command;

const RECORDING: &str = r#"{"kind":"process_start","ts":"2024-01-01T00:00:00Z","service":"api","pid":10,"comm":"api","ppid":1,"exe":"/usr/bin/api","argv":["/usr/bin/api","--port","80"]}
{"kind":"tcp_connect","ts":"2024-01-01T00:00:00.5Z","service":"api","pid":10,"comm":"api","family":"ipv4","saddr":"127.0.0.1","sport":40000,"daddr":"127.0.0.1","dport":5432,"result":"ECONNREFUSED","latency_ns":40000}
this line is not an event
{"kind":"tcp_connect","ts":"2024-01-01T00:00:00.6Z","service":"api","pid":10,"comm":"api","family":"ipv6","saddr":"::1","sport":40001,"daddr":"::1","dport":8080,"result":"ok","latency_ns":30000}
{"kind":"process_exit","ts":"2024-01-01T00:00:01Z","service":"api","pid":10,"comm":"api","signal":"SIGSEGV","core_dumped":true,"lifetime_ns":1000000000}
{"kind":"process_exit","ts":"2024-01-01T00:00:02Z","service":"db","pid":11,"comm":"db","exit_code":0,"lifetime_ns":5}
"#;

fn recording() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(RECORDING.as_bytes()).unwrap();
    f
}

fn config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn custos(args: &[&str]) -> std::process::Output {
    Command::new(custos_bin()).args(args).env_remove("CUSTOS_CONFIG").output().expect("run custos")
}

/// `custos <command> [extra...] --config CFG --replay REC`.
fn over_recording(
    command: &str,
    extra: &[&str],
    cfg: &tempfile::NamedTempFile,
    rec: &tempfile::NamedTempFile,
) -> std::process::Output {
    let mut args = vec![command];
    args.extend_from_slice(extra);
    args.extend(["--config", cfg.path().to_str().unwrap(), "--replay", rec.path().to_str().unwrap()]);
    custos(&args)
}

#[test]
fn watch_json_round_trips_through_replay() {
    let rec = recording();
    let cfg = config("");
    let first = over_recording("watch", &["--json"], &cfg, &rec);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let out = String::from_utf8(first.stdout).unwrap();
    assert_eq!(out.lines().count(), 5, "{out}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("1 invalid recording lines skipped"), "{stderr}");
    assert!(stderr.contains("line=3"), "the bad line is named: {stderr}");

    // What watch printed replays to the same lines.
    let again = config(&out);
    let second = over_recording("watch", &["--json"], &cfg, &again);
    assert_eq!(String::from_utf8(second.stdout).unwrap(), out);

    let v: serde_json::Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(v["kind"], "tcp_connect");
    assert_eq!(v["result"], "ECONNREFUSED");
    assert_eq!(v["dport"], 5432);
}

/// A recorded gap is one gap: the pipeline passes it on once, under no
/// service (it concerns them all), and invents no `unknown` service for it,
/// with or without configured services.
#[test]
fn a_replayed_loss_line_is_one_loss_event_under_no_service() {
    let rec = config("{\"kind\":\"loss\",\"ts\":\"2024-01-01T00:00:00Z\",\"stage\":\"kernel\",\"lost\":7}\n");
    for services in ["", "services:\n  - name: api\n    exe: /usr/bin/api\n"] {
        let cfg = config(services);
        let out = over_recording("watch", &["--json"], &cfg, &rec);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["kind"], "loss");
        assert_eq!(lines[0]["lost"], 7);
        assert!(lines[0].get("service").is_none_or(|s| s.is_null()), "{text}");
        assert!(!text.contains("unknown"), "{text}");
    }
}

#[test]
fn watch_filters_by_service_and_prints_readable_lines() {
    let rec = recording();
    let cfg = config("");
    let out = over_recording("watch", &["--service", "db"], &cfg, &rec);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("process_exit") && text.contains("code=0"), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lost: kernel 0 channel 0 platform 0"), "loss counters at exit: {stderr}");
}

#[test]
fn run_prints_the_service_table() {
    let rec = recording();
    let cfg = config("");
    let out = over_recording("run", &["--summary", "always"], &cfg, &rec);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let api = text.lines().find(|l| l.starts_with("api ")).unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = api.split_whitespace().collect();
    // STARTS EXITS FAIL CONNECTS CFAIL ACCEPTS
    assert_eq!(&cols[1..7], ["1", "1", "1", "2", "1", "0"], "{api}");
    assert!(text.lines().any(|l| l.starts_with("db ")), "{text}");
}

#[test]
fn validate_reports_every_problem_and_fails() {
    let cfg = config(
        "services:\n  - name: a\n  - name: b\n    exe: /x\n    systemd_unit: y\nagent:\n  listen: nowhere\n",
    );
    let out = custos(&["validate", "--config", cfg.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let path = cfg.path().display().to_string();
    assert_eq!(err.lines().count(), 3, "{err}");
    assert!(err.lines().all(|l| l.starts_with(&format!("{path}:"))), "{err}");
    assert!(err.contains(":2:"), "{err}");

    let ok = config("services:\n  - name: api\n    systemd_unit: api\n");
    let out = custos(&["validate", "--config", ok.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 services"));
}

#[test]
fn a_broken_config_stops_run_with_the_location() {
    let cfg = config("sensors:\n  ring_buffer: huge\n");
    let out = custos(&["run", "--config", cfg.path().to_str().unwrap(), "--replay", "/dev/null"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(":2:") && err.contains("expected a size"), "{err}");
}

#[test]
fn validate_reports_bad_runbooks_with_their_location() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let good = runbooks.join("good.yaml");
    std::fs::write(
        &good,
        "name: good\nservice: api\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n",
    )
    .unwrap();
    let bad = runbooks.join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\nservice: api\ntrigger: { event: proc_exit }\nsteps: [ { restart: {} } ]\n",
    )
    .unwrap();
    for f in [&good, &bad] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let cfg = config(&format!(
        "services:\n  - name: api\n    systemd_unit: api\nrunbooks: {{ dir: {} }}\n",
        runbooks.display()
    ));
    let out = custos(&["validate", "--config", cfg.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:", bad.display())) && err.contains("proc_exit"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 runbooks ok, 1 with problems"), "{stdout}");
}

/// An audit log of `n` records in `<state>/audit`, written the way the
/// agent writes it.
fn audit_log(state: &std::path::Path, n: usize) -> std::path::PathBuf {
    let dir = state.join("audit");
    let log = custos::audit::AuditLog::open(&dir, 1 << 20).unwrap();
    for i in 0..n {
        let entry = custos::audit::AuditEntry {
            kind: custos::audit::AuditKind::Action,
            runbook: "rb".into(),
            service: "api".into(),
            message: format!("record {i}"),
            details: serde_json::Value::Null,
            dry_run: false,
        };
        log.append(entry, std::time::SystemTime::now()).unwrap();
    }
    dir
}

#[test]
fn audit_verify_fails_on_an_emptied_or_cut_log_and_on_no_log() {
    let state = tempfile::tempdir().unwrap();
    let verify = |dir: &std::path::Path| custos(&["audit", "verify", dir.to_str().unwrap()]);
    let missing = verify(&state.path().join("audit"));
    assert!(!missing.status.success(), "verify passed on a directory that does not exist");
    std::fs::create_dir(state.path().join("audit")).unwrap();
    let none = verify(&state.path().join("audit"));
    assert!(!none.status.success(), "verify passed on a directory with no audit log");

    let dir = audit_log(state.path(), 6);
    let ok = verify(&dir);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("records 1 to 6"), "{ok:?}");
    let current = dir.join("audit.jsonl");
    let text = std::fs::read_to_string(&current).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&current, format!("{}\n", lines[..4].join("\n"))).unwrap();
    let cut = verify(&dir);
    assert!(!cut.status.success(), "verify passed on a log whose last two records were cut");
    let err = String::from_utf8_lossy(&cut.stderr);
    assert!(err.contains("truncated") && err.contains("record 6"), "{err}");
    std::fs::write(&current, "").unwrap();
    let emptied = verify(&dir);
    assert!(!emptied.status.success(), "verify passed on an emptied log");
}

#[test]
fn audit_seal_closes_a_broken_chain_and_verify_reports_each_segment() {
    let state = tempfile::tempdir().unwrap();
    let dir = audit_log(state.path(), 4);
    let current = dir.join("audit.jsonl");
    let text = std::fs::read_to_string(&current).unwrap();
    std::fs::write(&current, text.replacen("record 1", "record one", 1)).unwrap();
    let broken = custos(&["audit", "verify", dir.to_str().unwrap()]);
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("hash chain broken"), "{broken:?}");

    // One writer: not while an agent holds the state directory.
    let lock = custos::daemon::lock::acquire(state.path()).unwrap();
    let refused = custos(&["audit", "seal", dir.to_str().unwrap()]);
    assert!(!refused.status.success(), "sealed while an agent held the state directory");
    drop(lock);

    let sealed = custos(&["audit", "seal", dir.to_str().unwrap(), "--reason", "record 2 edited by hand"]);
    assert!(sealed.status.success(), "{}", String::from_utf8_lossy(&sealed.stderr));
    let after = custos(&["audit", "verify", dir.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&after.stdout);
    let err = String::from_utf8_lossy(&after.stderr);
    assert!(after.status.success(), "{out}\n{err}");
    assert!(out.contains("sealed-1: BROKEN") && out.contains("record 2 edited by hand"), "{out}");
    assert!(out.contains("current chain: records 1 to 1"), "{out}");
}

/// One bad state file stopped the agent (`runbooks.json` = `{not json`,
/// one `\xff` byte in `audit.jsonl`): each is set aside with a clear error
/// and the agent starts with the rest.
#[test]
fn corrupt_state_files_are_set_aside_and_the_agent_starts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    let rb = runbooks.join("api.yaml");
    std::fs::write(&rb, "name: api-log\nservice: api\ntrigger: { event: process_exit }\nsteps: [ { log: { message: seen } } ]\ncooldown: 0s\n").unwrap();
    std::fs::set_permissions(&rb, std::fs::Permissions::from_mode(0o644)).unwrap();
    let audit = audit_log(&state, 3);
    let current = audit.join("audit.jsonl");
    let mut bytes = std::fs::read(&current).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = 0xff;
    std::fs::write(&current, bytes).unwrap();
    std::fs::write(state.join("runbooks.json"), "{not json").unwrap();
    let cfg = config(&format!(
        "runbooks: {{ dir: {} }}\nagent: {{ state_dir: {}, listen: \"127.0.0.1:0\" }}\n",
        runbooks.display(),
        state.display()
    ));
    let rec = recording();
    let out = Command::new(custos_bin())
        .args(["run", "--summary", "never", "--config", cfg.path().to_str().unwrap()])
        .args(["--replay", rec.path().to_str().unwrap()])
        .env("CUSTOS_CONTROL_SOCKET", dir.path().join("control.sock"))
        .env_remove("CUSTOS_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Runbook state is corrupt"), "{err}");
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("runbooks.json.corrupt-")), "{names:?}");
    // The runbook ran on the replayed exit and was audited after the
    // damaged record, which stays as evidence: verify still points at it.
    let log = String::from_utf8_lossy(&std::fs::read(audit.join("audit.jsonl")).unwrap()).into_owned();
    assert!(log.contains("\"runbook\":\"api-log\"") && log.contains("Trigger fired"), "{log}");
    let brk = custos::audit::verify(&audit).unwrap_err();
    assert_eq!(brk.line, 2, "{brk}");
}

/// argv, comm and exe are what a process chose: ESC[2J, OSC 0 (window
/// title), OSC 52 (clipboard) and a line break reach the terminal escaped.
#[test]
fn watch_prints_escape_sequences_in_argv_escaped() {
    let line = r#"{"kind":"process_start","ts":"2024-01-01T00:00:00Z","service":"api","pid":10,"comm":"ev\u001b[2Jil","ppid":1,"exe":"/tmp/\u001b]0;owned\u0007x","argv":["x","\u001b]52;c;ZXZpbA==\u0007","a\n12:00:00.000 api 1 sshd process_start forged"]}"#;
    let rec = config(&format!("{line}\n"));
    let cfg = config("");
    let out = custos(&[
        "watch",
        "--config",
        cfg.path().to_str().unwrap(),
        "--replay",
        rec.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "raw escapes reached the terminal: {text:?}"
    );
    assert_eq!(text.lines().count(), 1, "a line break in argv forged a line: {text}");
    assert!(
        text.contains(r"ev\x1b[2Jil")
            && text.contains(r"\x1b]52;c;ZXZpbA==\x07")
            && text.contains(r"a\n12:00"),
        "{text}"
    );
}
