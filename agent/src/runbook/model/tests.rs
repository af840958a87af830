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
