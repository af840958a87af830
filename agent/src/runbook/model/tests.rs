//! Located errors and the normal form of conditions.

use super::{parse, Op, Runbook, Trigger};

fn rb(text: &str) -> Runbook {
    parse(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> String {
    parse(text, "rb.yaml").unwrap_err().to_string()
}

#[test]
fn errors_name_file_line_and_column() {
    let e = errors("name: x\nservice: api\ntrigger: { event: process_exit, where: { exit_cod: 1 } }\nsteps: [ { restart: {} } ]\n");
    assert!(e.starts_with("rb.yaml:3:"), "{e}");
    assert!(e.contains("no field `exit_cod`"), "{e}");

    let e = errors("name: x\nservice: api\ntrigger: { event: process_exit }\nsteps:\n  - exec: { argv: [\"/bin/echo\", \"{{ event.secret }}\"] }\n");
    assert!(e.starts_with("rb.yaml:5:"), "{e}");
    assert!(e.contains("unknown template variable `event.secret`"), "{e}");

    let e = errors(
        "name: x\nservice: api\ntrigger: { event: process_exit }\nsteps:\n  - exec: { argv: [\"echo\"] }\n",
    );
    assert!(e.contains("absolute path"), "{e}");

    let e = errors("name: x\nservice: api\ntrigger: { event: proc_exit }\nsteps: [ { restart: {} } ]\n");
    assert!(e.contains("unknown event `proc_exit`") && e.starts_with("rb.yaml:3:"), "{e}");

    let e = errors("name: x\nservice: api\ntrigger: { event: process_exit }\nsteps: [ { reboot: {} } ]\n");
    assert!(e.starts_with("rb.yaml:4:") && e.contains("reboot"), "{e}");

    let e = errors(
        "name: x\nservice: api\ntrigger: { event: process_exit, count: 3 }\nsteps: [ { restart: {} } ]\n",
    );
    assert!(e.contains("needs `within`"), "{e}");

    let e = errors("name: x\nservice: api\ntrigger: { event: process_exit, where: { signal: SIGNOPE } }\nsteps: [ { restart: {} } ]\n");
    assert!(e.contains("signal name"), "{e}");

    // A series the agent does not compute would never fire.
    let e = errors("name: x\nservice: api\ntrigger: { metric: custos.tcp.errors, above: 1 }\nsteps: [ { restart: {} } ]\n");
    assert!(e.starts_with("rb.yaml:3:") && e.contains("unknown metric `custos.tcp.errors`"), "{e}");
    let e = errors("name: x\nservice: api\ntrigger: { anomaly: { severity: high, metric: cpu } }\nsteps: [ { restart: {} } ]\n");
    assert!(e.contains("unknown metric `cpu`: expected one of custos.process.exits"), "{e}");
}

#[test]
fn conditions_normalize_signals_and_errnos() {
    let r = rb("name: x\nservice: api\ntrigger: { event: tcp_connect, where: { dport: 5432, result: ECONNREFUSED } }\nsteps: [ { restart: {} } ]\n");
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"kind":"tcp_connect","family":"ipv4","saddr":"127.0.0.1","sport":1,"daddr":"127.0.0.1","dport":5432,"result":"ECONNREFUSED"}"#,
    )
    .unwrap();
    let Trigger::Event { conditions, .. } = &r.trigger else { panic!() };
    assert!(conditions.iter().all(|c| crate::runbook::trigger::condition_holds(c, &fields)));
    let r = rb("name: x\nservice: api\ntrigger: { event: process_exit, where: { signal: 11 } }\nsteps: [ { restart: {} } ]\n");
    let Trigger::Event { conditions, .. } = &r.trigger else { panic!() };
    assert_eq!(conditions[0].op, Op::Eq("SIGSEGV".into()));
}

fn units(known: Vec<&'static str>) -> crate::service_manager::UnitLookup {
    crate::service_manager::UnitLookup::new(std::sync::Arc::new(crate::service_manager::KnownUnits(known)))
}

fn check(config: &str, runbook: &str) -> Vec<String> {
    let c = crate::config::parse(config, "custos.yaml").unwrap();
    let rb = parse(runbook, "rb.yaml").unwrap_or_else(|e| panic!("{e}"));
    super::check_runbook(&rb, &c, &units(vec!["web.service", "api.service"]))
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn runbooks_that_could_never_fire_are_located_errors() {
    let api = "services:\n  - name: api\n    systemd_unit: api\n";
    // A service the configuration does not manage.
    let e =
        check(api, "name: x\nservice: apu\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("rb.yaml:2:10:")
            && e[0].contains("`apu` is not one of the configured services (api)"),
        "{e:?}"
    );
    // `health: failing` on a service without a probe, nested too.
    let e = check(api, "name: x\nservice: api\ntrigger:\n  any:\n    - { event: process_exit }\n    - { health: failing }\nsteps: [ { restart: {} } ]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("rb.yaml:6:") && e[0].contains("has no `health:` probe"), "{e:?}");
    let probed = "services:\n  - name: api\n    systemd_unit: api\n    health: { tcp: \"127.0.0.1:1\" }\n";
    assert!(check(
        probed,
        "name: x\nservice: api\ntrigger: { health: failing }\nsteps: [ { restart: {} } ]\n"
    )
    .is_empty());
    // Under `discover:`, a unit the manager knows is a service; one it does not, is not.
    let discover = "services:\n  - discover: systemd\n";
    assert!(check(
        discover,
        "name: x\nservice: web\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n"
    )
    .is_empty());
    let e = check(
        discover,
        "name: x\nservice: wbe\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n",
    );
    assert!(e.len() == 1 && e[0].contains("systemd knows no unit `wbe.service`"), "{e:?}");
    // With nothing configured every process is managed: any name may be one.
    assert!(check(
        "",
        "name: x\nservice: anything\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n"
    )
    .is_empty());
}

#[test]
fn exit_classes_that_do_not_exist_are_refused() {
    let e = errors("name: x\nservice: api\ntrigger: { event: process_exit, where: { exit_class: { in: [error, eror] } } }\nsteps: [ { restart: {} } ]\n");
    assert!(
        e.starts_with("rb.yaml:3:")
            && e.contains("`exit_class` expects one of clean, error, signal, oom, found \"eror\""),
        "{e}"
    );
    rb("name: x\nservice: api\ntrigger: { event: process_exit, where: { exit_class: oom } }\nsteps: [ { restart: {} } ]\n");
}

#[test]
fn argv_written_as_a_string_gets_a_hint() {
    let e = errors("name: x\nservice: api\ntrigger: { event: process_exit }\nsteps:\n  - exec:\n      argv: /usr/bin/journalctl -u api\n");
    assert!(e.starts_with("rb.yaml:6:"), "{e}");
    assert!(e.contains("without a shell") && e.contains(r#"["/usr/bin/journalctl", "-u", "api"]"#), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn a_header_secret_missing_at_load_is_an_error_at_its_header() {
    let e = errors("name: x\nservice: api\ntrigger: { event: process_exit }\nsteps:\n  - webhook:\n      url: \"http://127.0.0.1:1/\"\n      headers:\n        Authorization: { env: CUSTOS_TEST_UNSET_ALERT_TOKEN }\n        X-Key: { file: /nonexistent/key }\n");
    assert!(e.contains("rb.yaml:8:") && e.contains("CUSTOS_TEST_UNSET_ALERT_TOKEN is not set"), "{e}");
    assert!(e.contains("rb.yaml:9:") && e.contains("/nonexistent/key"), "{e}");
}

#[test]
fn numbers_and_durations_out_of_range_are_refused_at_their_place() {
    let e = parse(
        "name: x
service: api
trigger: { event: process_exit, count: 0, within: 0s }
steps:
  - exec: { argv: [\"/bin/true\"], timeout: 0s }
    verify: { healthy_within: 0s }
  - webhook: { url: \"http://127.0.0.1:1/\", retries: 100, timeout: 100000h }
cooldown: 1000000d
max_actions: { count: 0, per: 0s }
",
        "rb.yaml",
    )
    .unwrap_err();
    let all = e.to_string();
    for (line, what) in [
        (3, "`count` expects 1"),
        (3, "`within` expects 1s"),
        (5, "`exec.timeout` expects 1ms"),
        (6, "`verify.healthy_within` expects 100ms"),
        (7, "`webhook.retries` expects 0 to 10"),
        (7, "`webhook.timeout` expects 1ms to 5m"),
        (8, "`cooldown` expects 0s to 30days"),
        (9, "`max_actions.count` expects 1"),
        (9, "`max_actions.per` expects 1s"),
    ] {
        assert!(
            e.0.iter().any(|x| x.line == line && x.message.starts_with(what)),
            "no `{what}` at line {line}:\n{all}"
        );
    }
    assert!(e.0.iter().all(|x| x.line > 0 && x.column > 0), "{all}");
}
