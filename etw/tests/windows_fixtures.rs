//! Recorded ETW property fixtures decoded and scoped into the Windows-shaped
//! event stream at tests/fixtures/windows/, which the replay sensor feeds to
//! the shared pipeline. Set `CUSTOS_UPDATE_FIXTURES=1` to rewrite that file
//! after an intended change of decoding (and review the diff).

use custos_etw::{Decoded, Decoder, DecoderConfig, Record, ServiceScope};
use custos_event::{Event, EventBody, EventKind};
use std::path::PathBuf;

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[derive(serde::Deserialize)]
struct ScmLine {
    scm: ScmUpdate,
}

#[derive(serde::Deserialize)]
struct ScmUpdate {
    service: String,
    main_pid: Option<u32>,
}

/// Decodes a record fixture the way the Windows sensor and attribution do:
/// rundown seeds the tree, `scm` lines are what the SCM poll reports.
fn run(records: &str) -> (Vec<Event>, Decoder) {
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut scope = ServiceScope::new(["api"]);
    let mut events = Vec::new();
    for (i, line) in records.lines().enumerate() {
        if let Ok(scm) = serde_json::from_str::<ScmLine>(line) {
            scope.set_main_pid(&scm.scm.service, scm.scm.main_pid);
            continue;
        }
        let rec: Record =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("fixture line {}: {e}", i + 1));
        match decoder.decode(&rec) {
            Some(Decoded::Event(mut e)) => {
                scope.attribute(&mut e);
                events.push(*e);
            }
            Some(Decoded::Existing(p)) => scope.observe_existing(p.pid, p.ppid, &p.image),
            Some(Decoded::Updated) | None => {}
        }
    }
    (events, decoder)
}

#[test]
fn api_crash_records_decode_into_the_windows_replay_fixture() {
    let records = std::fs::read_to_string(repo_path("etw/tests/fixtures/api-crash.records.jsonl")).unwrap();
    let (events, decoder) = run(&records);
    let expected_path = repo_path("tests/fixtures/windows/api-crash.events.jsonl");
    let text: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
    if std::env::var_os("CUSTOS_UPDATE_FIXTURES").is_some() {
        std::fs::write(&expected_path, &text).unwrap();
    }
    let expected: Vec<Event> = std::fs::read_to_string(&expected_path)
        .unwrap()
        .lines()
        .map(|l| Event::from_json_line(l).unwrap())
        .collect();
    assert_eq!(events, expected, "decoded stream differs from {}", expected_path.display());

    let stats = decoder.stats();
    assert_eq!((stats.truncated, stats.malformed), (1, 1), "{stats:?}");

    let kinds: Vec<EventKind> = events.iter().map(Event::kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [
            ProcessStart,
            TcpAccept,
            TcpClose,
            TcpConnect,
            TcpConnect,
            TcpClose,
            ProcessExit,
            ProcessExit,
            ProcessStart,
            ProcessStart,
            ProcessStart
        ]
    );
    let svc = |i: usize| events[i].service.as_deref();
    // The worker started by api belongs to api, with its argv split.
    assert_eq!(svc(0), Some("api"));
    let EventBody::ProcessStart(p) = &events[0].body else { panic!() };
    assert_eq!(p.argv, [r"C:\Windows\System32\cmd.exe", "/c", r#"echo "hi""#]);
    // The inbound connection's bytes add up in its close.
    let EventBody::TcpClose(c) = &events[2].body else { panic!() };
    assert_eq!((c.bytes_received, c.bytes_sent, c.inbound), (512, 2048, true));
    // Connect latency runs from the TCPIP request to established or failed.
    let EventBody::TcpConnect(c) = &events[3].body else { panic!() };
    assert_eq!((c.result.name().as_str(), c.latency_ns), ("ok", 20_000_000));
    // The refused connect says ECONNREFUSED like on Linux, after the 2 s
    // of SYN retries Windows makes against a refusing port.
    let EventBody::TcpConnect(c) = &events[4].body else { panic!() };
    assert_eq!((c.result.name().as_str(), c.endpoints.dport, svc(4)), ("ECONNREFUSED", 6379, Some("api")));
    assert_eq!(c.latency_ns, 2_000_000_000);
    // The crash: the main process ends with an access violation.
    let EventBody::ProcessExit(x) = &events[7].body else { panic!() };
    assert_eq!((x.exit_code, x.lifetime_ns, svc(7)), (Some(-1_073_741_819), 1_200_000_000, Some("api")));
    // The SCM restarts it: the new main process (same executable, started by
    // services.exe) is api's before the SCM poll confirms it, and so are its
    // children; an unrelated process is not.
    assert_eq!(svc(8), Some("api"));
    assert_eq!(svc(9), Some("api"));
    assert_eq!(svc(10), None);
}

#[test]
fn every_record_with_any_property_missing_or_mistyped_is_skipped_without_panic() {
    let records = std::fs::read_to_string(repo_path("etw/tests/fixtures/api-crash.records.jsonl")).unwrap();
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut variants = 0u64;
    for line in records.lines() {
        let Ok(rec) = serde_json::from_str::<Record>(line) else { continue };
        for key in rec.props.keys() {
            let mut cut = rec.clone();
            cut.props.remove(key);
            decoder.decode(&cut);
            let mut wrong = rec.clone();
            wrong.props.insert(key.clone(), custos_etw::Value::Bytes(vec![1]));
            decoder.decode(&wrong);
            variants += 2;
        }
    }
    let s = decoder.stats();
    assert_eq!(s.decoded + s.truncated + s.malformed + s.ignored, variants);
    assert!(s.truncated > 0 && s.malformed > 0, "{s:?}");
}

#[test]
fn the_windows_replay_fixture_is_valid_custos_watch_output() {
    let text = std::fs::read_to_string(repo_path("tests/fixtures/windows/api-crash.events.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let e = Event::from_json_line(line).unwrap_or_else(|err| panic!("{line}: {err}"));
        assert_eq!(e.to_json_line(), line, "not in canonical form");
        n += 1;
    }
    assert_eq!(n, 11);
}
