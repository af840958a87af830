//! The JSON line format is a public contract (`custos watch --json`, replay).

use custos_event::*;
use std::time::{Duration, UNIX_EPOCH};

fn at(secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn process_exit_by_signal_has_the_documented_keys() {
    let mut e = Event::new(
        at(1_700_000_000),
        EventBody::ProcessExit(ProcessExit {
            exit_code: None,
            signal: Some(Signal(11)),
            core_dumped: true,
            lifetime_ns: 1_500,
            ppid: 1,
            oom_killed: false,
            exit_cause: None,
        }),
    );
    e.pid = 42;
    e.tid = 42;
    e.comm = "api".into();
    e.cgroup_id = 7;
    e.service = Some("api".into());
    let v: serde_json::Value = serde_json::from_str(&e.to_json_line()).unwrap();
    assert_eq!(v["kind"], "process_exit");
    assert_eq!(v["ts"], "2023-11-14T22:13:20.000000000Z");
    assert_eq!(v["signal"], "SIGSEGV");
    assert_eq!(v["core_dumped"], true);
    assert_eq!(v["pid"], 42);
    assert_eq!(v["service"], "api");
    assert_eq!(v["cgroup_id"], 7);
    assert!(v.get("exit_code").is_none(), "absent keys are omitted: {v}");
    assert!(v.get("exit_cause").is_none(), "an unknown cause is omitted: {v}");
    assert_eq!(Event::from_json_line(&e.to_json_line()).unwrap(), e);
    assert_eq!(
        match &e.body {
            EventBody::ProcessExit(x) => x.class(),
            _ => unreachable!(),
        },
        ExitClass::Signal
    );
}

#[test]
fn exit_cause_is_a_snake_case_key_and_faults_are_never_requested() {
    let exit = |signal: Option<i32>, cause| ProcessExit {
        signal: signal.map(Signal),
        exit_cause: cause,
        ..Default::default()
    };
    let mut e = Event::new(at(1), EventBody::ProcessExit(exit(Some(15), Some(ExitCause::StopRequested))));
    e.pid = 9;
    let v: serde_json::Value = serde_json::from_str(&e.to_json_line()).unwrap();
    assert_eq!(v["exit_cause"], "stop_requested");
    assert_eq!(Event::from_json_line(&e.to_json_line()).unwrap(), e);
    let names: Vec<&str> = ExitCause::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names, ["unrequested", "stop_requested", "restart_requested"]);
    for c in ExitCause::ALL {
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, format!("\"{}\"", c.as_str()));
        assert_eq!(c.requested(), c != ExitCause::Unrequested);
    }
    // SIGSEGV, SIGABRT, SIGBUS and the OOM killer are faults; the signals a
    // stop sends (SIGTERM, SIGKILL, SIGHUP) are not.
    for s in [11, 6, 7, 4, 8, 31, 5] {
        assert!(exit(Some(s), None).is_fault(), "signal {s}");
    }
    for s in [15, 9, 1, 2, 3] {
        assert!(!exit(Some(s), None).is_fault(), "signal {s}");
    }
    assert!(ProcessExit { oom_killed: true, ..Default::default() }.is_fault());
    assert!(!exit(None, None).is_fault());
}

#[test]
fn tcp_connect_failure_round_trips_with_errno_name() {
    let line = r#"{"kind":"tcp_connect","ts":"2024-01-01T00:00:00Z","pid":5,"comm":"curl","family":"ipv6","saddr":"::1","sport":40000,"daddr":"::1","dport":9,"result":"ECONNREFUSED","latency_ns":12000,"future_key":1}"#;
    let e = Event::from_json_line(line).unwrap();
    match &e.body {
        EventBody::TcpConnect(c) => {
            assert_eq!(c.result, ConnectResult::Err(111));
            assert_eq!(c.endpoints.dport, 9);
            assert_eq!(c.endpoints.family, Family::Ipv6);
        }
        other => panic!("wrong body {other:?}"),
    }
    let v: serde_json::Value = serde_json::from_str(&e.to_json_line()).unwrap();
    assert_eq!(v["result"], "ECONNREFUSED");
    assert_eq!(v["daddr"], "::1");
}

#[test]
fn syscall_stats_and_quantiles() {
    // 99 calls in [1024, 2048) ns and one in [2^20, 2^21).
    let mut b = vec![0u64; LATENCY_BUCKETS];
    b[10] = 99;
    b[20] = 1;
    let p50 = SyscallStat::quantile_from_log2(&b, 0.5);
    assert!((1024..2048).contains(&p50), "{p50}");
    let p100 = SyscallStat::quantile_from_log2(&b, 1.0);
    assert!(p100 >= 1 << 20, "{p100}");
    let line = r#"{"kind":"syscall_stats","ts":"2024-01-01T00:00:00Z","cgroup_id":9,"interval_ns":1000000000,"syscalls":[{"name":"read","count":100,"errors":2,"p50_ns":1500,"p99_ns":2000}]}"#;
    let e = Event::from_json_line(line).unwrap();
    assert_eq!(e.kind(), EventKind::SyscallStats);
    assert_eq!(e.cgroup_id, 9);
}

#[test]
fn malformed_lines_are_errors_not_panics() {
    for bad in [
        "",
        "{}",
        r#"{"kind":"nope","ts":"2024-01-01T00:00:00Z"}"#,
        r#"{"kind":"process_exit","ts":"yesterday"}"#,
        r#"{"kind":"signal","ts":"2024-01-01T00:00:00Z","signal":"SIGNOPE"}"#,
    ] {
        assert!(Event::from_json_line(bad).is_err(), "{bad}");
    }
}

#[test]
fn kinds_parse_back() {
    for k in EventKind::ALL {
        assert_eq!(EventKind::parse(k.as_str()), Some(k));
    }
}
