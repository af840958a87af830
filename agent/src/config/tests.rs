use super::*;

fn errors(text: &str) -> Vec<ConfigError> {
    parse(text, "custos.yaml").expect_err("expected an error").0
}

#[test]
fn empty_file_is_the_embedded_default() {
    let c = parse("", "x").unwrap();
    assert!(c.manages_everything());
    assert!(c.raw.exporter.otlp.is_none());
    assert_eq!(c.raw.agent.state_dir.value, default_state_dir());
    assert_eq!(c.raw.exporter.spool.max_bytes.value, ByteSize::mib(512));
}

#[test]
fn design_sketch_parses() {
    let text = r#"
exporter:
  otlp: { endpoint: "http://127.0.0.1:4317", protocol: grpc }
  spool: { dir: /var/lib/custos/spool, max_bytes: 512MiB }
services:
  - name: api
    systemd_unit: api.service
    health: { http: "http://127.0.0.1:8080/healthz", every: 10s, timeout: 2s }
  - name: worker
    exe: /usr/bin/worker
  - discover: systemd
sensors: { syscalls: true }
detection: { sensitivity: medium }
runbooks: { dir: /etc/custos/runbooks }
agent: { state_dir: /var/lib/custos, listen: "127.0.0.1:9464", log_level: info }
"#;
    let c = parse(text, "x").unwrap();
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services[0].selector, Selector::SystemdUnit("api.service".into()));
    assert_eq!(c.services[1].selector, Selector::Exe("/usr/bin/worker".into()));
    assert_eq!(c.discover, vec![Discover::Systemd]);
    assert_eq!(c.raw.exporter.otlp.as_ref().unwrap().endpoint.value, "http://127.0.0.1:4317");
    assert_eq!(c.services[0].health.as_ref().unwrap().every.0.as_secs(), 10);
}

#[test]
fn unknown_key_names_line_and_column() {
    let e = errors("agent:\n  state_dir: /var/lib/custos\n  listne: 127.0.0.1:1\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 3, "{e:?}");
    assert!(e[0].column >= 1);
    assert!(e[0].message.starts_with("unknown field `listne`, expected one of"), "{}", e[0].message);
    assert!(e[0].to_string().starts_with("custos.yaml:3:"), "{}", e[0]);
}

#[test]
fn wrong_type_and_bad_units_are_located() {
    let e = errors("sensors:\n  syscalls: sometimes\n");
    assert_eq!(e[0].line, 2, "{e:?}");
    let e = errors("exporter:\n  spool:\n    max_bytes: lots\n");
    assert_eq!(e[0].line, 3, "{e:?}");
    assert!(e[0].message.contains("expected a size"), "{}", e[0].message);
    let e = errors("services:\n  - name: a\n    exe: /x\n    health: { tcp: \"h:1\", every: often }\n");
    assert!(e[0].message.contains("expected a duration"), "{}", e[0].message);
}

#[test]
fn invalid_yaml_is_located() {
    let e = errors("agent: {state_dir: /x\n");
    assert!(e[0].line >= 1, "{e:?}");
}

#[test]
fn every_semantic_problem_is_reported() {
    let text = r#"
services:
  - name: api
    systemd_unit: api
    exe: /usr/bin/api
  - name: db
  - systemd_unit: nameless.service
  - name: api2
    exe: /bin/x
    health: { http: "ftp://x" }
  - name: api2
    exe: /bin/y
  - name: grp
    cgroup: relative/path
exporter:
  otlp: { endpoint: "127.0.0.1:4317" }
agent:
  listen: "everywhere"
"#;
    let e = errors(text);
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let all = msgs.join("\n");
    assert!(all.contains("more than one selector"), "{all}");
    assert!(all.contains("service `db` needs one of"), "{all}");
    assert!(all.contains("`cgroup` expects a path"), "{all}");
    assert!(all.contains("needs a `name`"), "{all}");
    assert!(all.contains("`health.http` expects a URL"), "{all}");
    assert!(all.contains("defined twice"), "{all}");
    assert!(all.contains("expected an endpoint URL"), "{all}");
    assert!(all.contains("`agent.listen` expects"), "{all}");
    assert_eq!(e.len(), 8, "{all}");
    // Each points at its own line.
    assert!(msgs.iter().any(|m| m.starts_with("custos.yaml:5:")), "{all}");
    assert!(msgs.iter().any(|m| m.starts_with("custos.yaml:16:")), "{all}");
}

#[test]
fn discover_rules() {
    let e = errors("services:\n  - discover: systemd\n    name: x\n");
    assert!(e[0].message.contains("take no `name`"), "{e:?}");
    let e = errors("services:\n  - discover: everything\n");
    assert_eq!(e[0].line, 2, "{e:?}");
}

#[test]
fn windows_service_defaults_restart_twice_then_nothing() {
    let w = parse("", "x").unwrap().raw.agent.windows;
    assert_eq!(w.service_name.value, "custos");
    assert_eq!(
        w.recovery.value,
        [
            RecoveryAction::Restart(HumanDuration::secs(60)),
            RecoveryAction::Restart(HumanDuration::secs(60)),
            RecoveryAction::None
        ]
    );
    assert_eq!(w.reset_after.value, HumanDuration::secs(86_400));
    assert!(w.recover_on_error_exit);
    assert_eq!(w.etw_session.value, "custos-sensor");
}

#[test]
fn windows_recovery_actions_parse() {
    let text = "agent:\n  windows:\n    service_name: custos-agent\n    recovery: [{ restart: 5s }, { restart: 2m }, none]\n    reset_after: 1h\n    recover_on_error_exit: false\n";
    let w = parse(text, "x").unwrap().raw.agent.windows;
    assert_eq!(w.service_name.value, "custos-agent");
    assert_eq!(
        w.recovery.value,
        [
            RecoveryAction::Restart(HumanDuration::secs(5)),
            RecoveryAction::Restart(HumanDuration::secs(120)),
            RecoveryAction::None
        ]
    );
    assert_eq!(w.reset_after.value, HumanDuration::secs(3600));
    assert!(!w.recover_on_error_exit);
    let empty = parse("agent:\n  windows:\n    recovery: []\n", "x").unwrap();
    assert!(empty.raw.agent.windows.recovery.value.is_empty());
}

#[test]
fn windows_bad_service_name_is_located() {
    let e = errors("agent:\n  windows:\n    service_name: 'a\\b'\n");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].column), (3, 19));
    assert!(e[0].message.contains("agent.windows.service_name"), "{}", e[0].message);
}

#[test]
fn windows_recovery_delay_beyond_the_scm_limit_is_an_error() {
    let e = errors("agent:\n  windows:\n    recovery: [{ restart: 60d }]\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 3);
    assert!(e[0].message.contains("recovery[0]"), "{}", e[0].message);
}

#[test]
fn windows_unknown_recovery_action_is_a_located_error() {
    let e = errors("agent:\n  windows:\n    recovery: [reboot]\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 3);
    assert!(e[0].message.contains("reboot"), "{}", e[0].message);
    let e = errors("agent:\n  windows:\n    colour: blue\n");
    assert!(e[0].message.contains("colour"), "{}", e[0].message);
}

#[test]
fn exporter_section_parses_with_headers_tls_and_limits() {
    let text = r#"
exporter:
  interval: 5s
  syscall_top_n: 8
  log_rate_limit: { max: 20, per: 30s }
  otlp:
    endpoint: "https://otel.example.com:4317"
    protocol: grpc
    compression: none
    timeout: 3s
    headers:
      - { name: authorization, env: OTLP_TOKEN }
      - { name: x-tenant, value: blue }
      - { name: x-key, file: /etc/custos/key }
    tls: { ca_file: /etc/custos/ca.pem, cert_file: /etc/custos/c.pem, key_file: /etc/custos/k.pem }
"#;
    let c = parse(text, "x").unwrap();
    let o = c.raw.exporter.otlp.as_ref().unwrap();
    assert_eq!(o.compression, Compression::None);
    assert_eq!(o.timeout.0.as_secs(), 3);
    assert_eq!(o.headers.len(), 3);
    assert_eq!(c.raw.exporter.interval.0.as_secs(), 5);
    assert_eq!(*c.raw.exporter.log_rate_limit.max, 20);
    let d = parse("exporter:\n  otlp: { endpoint: \"http://127.0.0.1:4317\" }\n", "x").unwrap();
    let o = d.raw.exporter.otlp.as_ref().unwrap();
    assert_eq!((o.compression, o.timeout.0.as_secs()), (Compression::Gzip, 10));
}

#[test]
fn exporter_problems_are_located() {
    let text = r#"
exporter:
  otlp:
    endpoint: "http://127.0.0.1:4317"
    headers:
      - { name: "bad name", value: x }
      - { name: authorization }
      - { name: x-two, value: a, env: B }
    tls: { cert_file: /c.pem }
"#;
    let e = errors(text);
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    assert!(all.contains("custos.yaml:6:") && all.contains("expected an HTTP header name"), "{all}");
    assert!(all.contains("custos.yaml:7:") && all.contains("needs one of `value`, `env` or `file`"), "{all}");
    assert!(all.contains("custos.yaml:8:") && all.contains("not several"), "{all}");
    assert!(all.contains("`tls.cert_file` needs `tls.key_file`"), "{all}");
    assert!(all.contains("use an `https://` endpoint"), "{all}");
    let e = errors("exporter:\n  otlp: { endpoint: \"http://x:1\", compression: zstd }\n");
    assert_eq!(e[0].line, 2, "{e:?}");
    let e = errors("exporter:\n  interval: 1ms\n  spool: { max_bytes: 1KiB }\n");
    let all = e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(all.contains("custos.yaml:2:13: `exporter.interval` expects 100ms to 1h, found 1ms"), "{all}");
    assert!(all.contains("custos.yaml:3:23: `exporter.spool.max_bytes` expects 64KiB"), "{all}");
}

#[test]
fn values_that_would_crash_or_silently_break_the_agent_are_refused_at_their_line() {
    let text = "exporter:
  queue_capacity: 18446744073709551615
  interval: 500000000000y
  log_rate_limit: { per: 0s }
  files: { max_files: 0 }
sensors:
  channel_capacity: 18446744073709551615
  ring_buffer: 1TiB
  syscall_interval: 0s
  argv_max_args: 100000
services:
  - name: api
    systemd_unit: api
    health: { tcp: \"127.0.0.1:1\", every: 0s, failures: 0 }
  - name: db
    systemd_unit: db
    health: { every: 5s }
agent:
  log_level: inof
  state_dir: relative/state
detection: { max_series: 0 }
runbooks:
  audit: { max_bytes: 1KiB }
";
    let e = errors(text);
    let all = e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    for (line, what) in [
        (2, "`exporter.queue_capacity` expects 1 to 1048576"),
        (3, "`exporter.interval` expects 100ms to 1h"),
        (4, "`exporter.log_rate_limit.per` expects 1s"),
        (5, "`exporter.files.max_files` expects 1"),
        (7, "`sensors.channel_capacity` expects 1 to 1048576"),
        (8, "`sensors.ring_buffer` expects 4KiB to 1GiB, found 1024GiB"),
        (9, "`sensors.syscall_interval` expects 100ms"),
        (10, "`sensors.argv_max_args` expects 1 to 1024"),
        (14, "`health.every` expects 100ms"),
        (14, "`health.failures` expects 1 to 1000"),
        (17, "`health` needs one of `http`, `tcp` or `command`"),
        (19, "`agent.log_level` expects error, warn, info, debug, trace or off"),
        (20, "`agent.state_dir` expects an absolute path"),
        (21, "`detection.max_series` expects 1 to 1000000"),
        (23, "`runbooks.audit.max_bytes` expects 16MiB"),
    ] {
        assert!(
            e.iter().any(|x| x.line == line && x.column > 0 && x.message.starts_with(what)),
            "no error `{what}` at line {line}:\n{all}"
        );
    }
    assert!(e.iter().all(|x| x.line > 0 && x.column > 0), "every problem is located:\n{all}");
    // Levels, alone or per target, are what tracing knows.
    for ok in ["info", "DEBUG", "warn,custos::export=trace", "off"] {
        assert!(parse(&format!("agent: {{ log_level: \"{ok}\" }}\n"), "x").is_ok(), "{ok}");
    }
    for bad in ["inof", "info,custos=verbose", ""] {
        assert!(parse(&format!("agent: {{ log_level: \"{bad}\" }}\n"), "x").is_err(), "{bad}");
    }
}

#[test]
fn syscall_latency_sample_is_bounded_and_located() {
    assert_eq!(
        parse("", "x").unwrap().raw.sensors.syscall_latency_sample.value,
        DEFAULT_SYSCALL_LATENCY_SAMPLE
    );
    let c = parse("sensors:\n  syscall_latency_sample: 1\n", "x").unwrap();
    assert_eq!(c.raw.sensors.syscall_latency_sample.value, 1);
    for bad in ["0", "65537"] {
        let e = errors(&format!("sensors:\n  syscalls: true\n  syscall_latency_sample: {bad}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        let msg = e[0].to_string();
        assert!(msg.starts_with("custos.yaml:3:"), "{msg}");
        assert!(msg.contains("`sensors.syscall_latency_sample` expects 1"), "{msg}");
        assert!(msg.contains(&format!("found {bad}")), "{msg}");
    }
    // Not a number: the YAML error names the key.
    let e = errors("sensors:\n  syscall_latency_sample: often\n");
    assert!(e[0].to_string().contains("custos.yaml:2:"), "{:?}", e);
}

#[test]
fn the_detection_section_sets_up_the_bank() {
    use custos_detect::{BankConfig, MetricOverride};
    let yaml = r#"
detection:
  sensitivity: low
  series: [custos.process.crashes, custos.tcp.connect.duration]
  overrides:
    - { metric: custos.tcp.connect.duration, sensitivity: high, warmup: 300, threshold: 0.5 }
    - { metric: custos.process.crashes, enabled: false }
  forecast_horizon: 10m
"#;
    let c = parse(yaml, "x").unwrap();
    // What the bank makes of these settings is the detector's to test
    // (custos-detect: overrides_and_series_selection_apply); here, that the
    // section arrives as those settings.
    let expected = BankConfig {
        sensitivity: Sensitivity::Low,
        series: Some(vec!["custos.process.crashes".into(), "custos.tcp.connect.duration".into()]),
        overrides: vec![
            MetricOverride {
                metric: "custos.tcp.connect.duration".into(),
                sensitivity: Some(Sensitivity::High),
                warmup: Some(300),
                threshold: Some(0.5),
                ..Default::default()
            },
            MetricOverride {
                metric: "custos.process.crashes".into(),
                enabled: Some(false),
                ..Default::default()
            },
        ],
        forecast_horizon: std::time::Duration::from_secs(600),
        ..BankConfig::default()
    };
    assert_eq!(c.raw.detection.bank_config(), expected);
    // An empty section is the detector's own default bank.
    assert_eq!(DetectionConfig::default().bank_config(), BankConfig::default());
}

#[test]
fn detection_config_errors_are_located() {
    let e = parse("detection:\n  series: [custos.nope]\n", "x").unwrap_err().0;
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].column), (2, 12));
    assert!(
        e[0].message.starts_with(
            "unknown metric `custos.nope` in `detection.series`: expected one of custos.process.exits"
        ),
        "{}",
        e[0].message
    );
    let y = "detection:\n  overrides:\n    - { metric: custos.tcp.bytes }\n    - { metric: custos.tcp.bytes, threshold: .nan }\n";
    let e = parse(y, "x").unwrap_err().0;
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].message.contains("more than one override") && e[0].line == 4);
    assert!(e[1].message.contains("finite"));
    let e =
        parse("detection:\n  overrides:\n    - { metric: custos.tcp.bytes, sensitivity: extreme }\n", "x")
            .unwrap_err()
            .0;
    assert_eq!(e[0].line, 3);
}
