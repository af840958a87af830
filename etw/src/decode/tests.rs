use super::*;
use crate::providers::{KERNEL_NETWORK, PROCESS_CLASS, TCPIP};
use crate::record::Guid;
use custos_event::{unix_nanos, EventKind};

const T0: i64 = 116_444_736_000_000_000 + 1_700_000_000 * 10_000_000;

fn rec(provider: Guid, event_id: u16, opcode: u8, at_ms: i64, props: &[(&str, Value)]) -> Record {
    Record {
        provider,
        event_id,
        opcode,
        version: 0,
        pid: u32::MAX,
        tid: 77,
        filetime: T0 + at_ms * 10_000,
        props: props.iter().map(|(k, v)| (k.to_string().into(), v.clone())).collect(),
    }
}

fn start(pid: u32, ppid: u32, cmdline: &str, at_ms: i64) -> Record {
    rec(
        PROCESS_CLASS,
        0,
        process_opcode::START,
        at_ms,
        &[
            ("ProcessId", Value::U32(pid)),
            ("ParentId", Value::U32(ppid)),
            ("ImageFileName", Value::Str("api.exe".into())),
            ("CommandLine", Value::Str(cmdline.into())),
        ],
    )
}

fn net(id: u16, pid: u32, size: u32, at_ms: i64) -> Record {
    // 10.0.0.5:49152 -> 93.184.216.34:443, as ETW lays them out.
    rec(
        KERNEL_NETWORK,
        id,
        0,
        at_ms,
        &[
            ("PID", Value::U32(pid)),
            ("size", Value::U32(size)),
            ("saddr", Value::U32(u32::from_le_bytes([10, 0, 0, 5]))),
            ("daddr", Value::U32(u32::from_le_bytes([93, 184, 216, 34]))),
            ("sport", Value::U16(u16::from_le_bytes(49152u16.to_be_bytes()))),
            ("dport", Value::U16(u16::from_le_bytes(443u16.to_be_bytes()))),
        ],
    )
}

fn body(d: Option<Decoded>) -> Event {
    match d {
        Some(Decoded::Event(e)) => *e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn process_start_splits_the_command_line_and_names_the_executable() {
    let mut d = Decoder::new(DecoderConfig::default());
    let e = body(d.decode(&start(4242, 600, r#""C:\Program Files\Api\api.exe" --port 8080"#, 0)));
    assert_eq!(e.pid, 4242);
    assert_eq!(e.tid, 77);
    assert_eq!(e.comm, "api.exe");
    assert_eq!(unix_nanos(e.ts), 1_700_000_000_000_000_000);
    let EventBody::ProcessStart(p) = e.body else { panic!("{:?}", e.body) };
    assert_eq!(p.ppid, 600);
    assert_eq!(p.exe, r"C:\Program Files\Api\api.exe");
    assert_eq!(p.argv, [r"C:\Program Files\Api\api.exe", "--port", "8080"]);
    assert!(!p.argv_truncated);
}

#[test]
fn process_start_with_a_relative_program_uses_the_image_name() {
    let mut d = Decoder::new(DecoderConfig { argv_max_args: 2, ..DecoderConfig::default() });
    let e = body(d.decode(&start(1, 2, "api --a --b", 0)));
    let EventBody::ProcessStart(p) = e.body else { panic!() };
    assert_eq!(p.exe, "api.exe");
    assert_eq!(p.argv, ["api", "--a"]);
    assert!(p.argv_truncated);
}

#[test]
fn process_exit_carries_code_lifetime_and_parent() {
    let mut d = Decoder::new(DecoderConfig::default());
    d.decode(&start(4242, 600, r"C:\svc\api.exe", 0));
    let end = rec(
        PROCESS_CLASS,
        0,
        process_opcode::END,
        1500,
        &[("ProcessId", Value::U32(4242)), ("ExitStatus", Value::I32(0xC000_0005u32 as i32))],
    );
    let e = body(d.decode(&end));
    assert_eq!(e.comm, "api.exe");
    let EventBody::ProcessExit(x) = e.body else { panic!() };
    assert_eq!(x.exit_code, Some(-1_073_741_819));
    assert_eq!(x.lifetime_ns, 1_500_000_000);
    assert_eq!(x.ppid, 600);
    assert_eq!(x.class(), custos_event::ExitClass::Error);
}

#[test]
fn rundown_reports_existing_processes_without_events() {
    let mut d = Decoder::new(DecoderConfig::default());
    let mut r = start(300, 4, r"C:\Windows\System32\services.exe", 0);
    r.opcode = process_opcode::DC_START;
    assert_eq!(
        d.decode(&r),
        Some(Decoded::Existing(ExistingProcess {
            pid: 300,
            ppid: 4,
            image: r"C:\Windows\System32\services.exe".into()
        }))
    );
}

#[test]
fn a_connection_sums_bytes_and_retransmits_into_its_close() {
    let mut d = Decoder::new(DecoderConfig::default());
    let c = body(d.decode(&net(net_event::CONNECT, 4242, 0, 0)));
    assert_eq!(c.kind(), EventKind::TcpConnect);
    let EventBody::TcpConnect(tc) = &c.body else { panic!() };
    assert_eq!(tc.endpoints.saddr.to_string(), "10.0.0.5");
    assert_eq!(tc.endpoints.sport, 49152);
    assert_eq!(tc.endpoints.daddr.to_string(), "93.184.216.34");
    assert_eq!(tc.endpoints.dport, 443);
    assert!(tc.result.is_ok());
    assert_eq!(d.decode(&net(net_event::SEND, 4242, 100, 10)), Some(Decoded::Updated));
    assert_eq!(d.decode(&net(net_event::SEND, 4242, 50, 11)), Some(Decoded::Updated));
    assert_eq!(d.decode(&net(net_event::RECV, 4242, 4000, 12)), Some(Decoded::Updated));
    assert_eq!(d.decode(&net(net_event::RETRANSMIT, 4242, 50, 13)), Some(Decoded::Updated));
    let e = body(d.decode(&net(net_event::DISCONNECT, 4242, 0, 250)));
    let EventBody::TcpClose(close) = e.body else { panic!() };
    assert_eq!((close.bytes_sent, close.bytes_received, close.retransmits), (150, 4000, 1));
    assert_eq!(close.duration_ns, 250_000_000);
    assert!(!close.inbound);
    assert_eq!(e.pid, 4242);
}

#[test]
fn accept_and_ipv6_close_are_inbound() {
    let mut d = Decoder::new(DecoderConfig::default());
    let v6 = |id: u16, at: i64| {
        let mut r = net(id + net_event::V6_OFFSET, 9, 0, at);
        r.props.insert("saddr".into(), Value::Bytes(std::net::Ipv6Addr::LOCALHOST.octets().to_vec()));
        r.props.insert("daddr".into(), Value::Bytes(std::net::Ipv6Addr::LOCALHOST.octets().to_vec()));
        r
    };
    let a = body(d.decode(&v6(net_event::ACCEPT, 0)));
    let EventBody::TcpAccept(ep) = a.body else { panic!() };
    assert_eq!(ep.family, Family::Ipv6);
    assert_eq!(ep.daddr.to_string(), "::1");
    let e = body(d.decode(&v6(net_event::DISCONNECT, 5)));
    let EventBody::TcpClose(c) = e.body else { panic!() };
    assert!(c.inbound);
    assert_eq!(c.endpoints.family, Family::Ipv6);
}

fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut b = 2u16.to_le_bytes().to_vec();
    b.extend(port.to_be_bytes());
    b.extend(ip);
    b.extend([0u8; 8]);
    b
}

fn failure(status: u32, local: Vec<u8>, remote: Vec<u8>) -> Record {
    rec(
        TCPIP,
        providers::TCPIP_CONNECT_FAILURE,
        0,
        0,
        &[
            ("LocalAddress", Value::Bytes(local)),
            ("RemoteAddress", Value::Bytes(remote)),
            ("Status", Value::U32(status)),
            ("ProcessId", Value::U32(4242)),
        ],
    )
}

#[test]
fn failed_connects_carry_the_errno_name() {
    let mut d = Decoder::new(DecoderConfig::default());
    let e = body(d.decode(&failure(
        0xC000_0236,
        sockaddr_in([127, 0, 0, 1], 50000),
        sockaddr_in([127, 0, 0, 1], 9),
    )));
    let EventBody::TcpConnect(c) = e.body else { panic!() };
    assert_eq!(c.result.name(), "ECONNREFUSED");
    assert_eq!(c.endpoints.dport, 9);
    assert_eq!(c.endpoints.sport, 50000);
    assert_eq!(e.pid, 4242);

    let mut v6 = 23u16.to_le_bytes().to_vec();
    v6.extend(80u16.to_be_bytes());
    v6.extend([0u8; 4]);
    v6.extend(std::net::Ipv6Addr::LOCALHOST.octets());
    v6.extend([0u8; 4]);
    let e = body(d.decode(&failure(0xC000_00B5, v6.clone(), v6)));
    let EventBody::TcpConnect(c) = e.body else { panic!() };
    assert_eq!(c.result.name(), "ETIMEDOUT");
    assert_eq!(c.endpoints.family, Family::Ipv6);

    let e = body(d.decode(&failure(0xC0DE_0001, sockaddr_in([1, 1, 1, 1], 1), sockaddr_in([2, 2, 2, 2], 2))));
    let EventBody::TcpConnect(c) = e.body else { panic!() };
    assert_eq!(c.result.name(), "EIO");
    assert_eq!(d.stats().unmapped_status, 1);
}

#[test]
fn truncated_and_malformed_records_are_counted_and_skipped() {
    let mut d = Decoder::new(DecoderConfig::default());
    let mut no_pid = start(1, 2, "x", 0);
    no_pid.props.remove("ProcessId");
    assert_eq!(d.decode(&no_pid), None);
    let mut wrong = start(1, 2, "x", 0);
    wrong.props.insert("CommandLine".into(), Value::U32(5));
    assert_eq!(d.decode(&wrong), None);
    let mut bad_time = start(1, 2, "x", 0);
    bad_time.filetime = 0;
    assert_eq!(d.decode(&bad_time), None);
    let mut end = rec(PROCESS_CLASS, 0, process_opcode::END, 0, &[("ProcessId", Value::U32(1))]);
    assert_eq!(d.decode(&end), None);
    end.props.insert("ExitStatus".into(), Value::Str("0".into()));
    assert_eq!(d.decode(&end), None);
    let mut short_v6 = net(net_event::CONNECT + net_event::V6_OFFSET, 1, 0, 0);
    short_v6.props.insert("saddr".into(), Value::Bytes(vec![0; 7]));
    assert_eq!(d.decode(&short_v6), None);
    let mut no_port = net(net_event::CONNECT, 1, 0, 0);
    no_port.props.remove("dport");
    assert_eq!(d.decode(&no_port), None);
    assert_eq!(d.decode(&failure(0xC000_0236, vec![2, 0, 0], sockaddr_in([1, 1, 1, 1], 1))), None);
    assert_eq!(
        d.decode(&failure(0xC000_0236, vec![99, 0, 0, 0, 0, 0, 0, 0], sockaddr_in([1, 1, 1, 1], 1))),
        None
    );
    let s = d.stats();
    assert_eq!(s.truncated, 5, "{s:?}");
    assert_eq!(s.malformed, 4, "{s:?}");
    assert_eq!(s.decoded, 0);
}

#[test]
fn unused_events_are_ignored_not_errors() {
    let mut d = Decoder::new(DecoderConfig::default());
    assert_eq!(d.decode(&rec(KERNEL_NETWORK, 17, 0, 0, &[])), None);
    assert_eq!(d.decode(&rec(PROCESS_CLASS, 0, 39, 0, &[])), None);
    assert_eq!(d.decode(&rec(Guid(1), 1, 1, 0, &[])), None);
    assert_eq!(d.stats().ignored, 3);
    assert_eq!(d.stats().truncated + d.stats().malformed, 0);
}

#[test]
fn state_tables_stay_bounded() {
    let mut d =
        Decoder::new(DecoderConfig { max_processes: 4, max_connections: 2, ..DecoderConfig::default() });
    for pid in 0..100 {
        d.decode(&start(pid, 1, "x", 0));
        d.decode(&net(net_event::CONNECT, pid, 0, 0));
    }
    assert!(d.procs.len() <= 4 && d.proc_order.len() <= 8);
    assert!(d.conns.len() <= 2 && d.conn_order.len() <= 4);
    assert_eq!(d.stats().evicted, 96 + 98);
}

#[test]
fn base_names_of_both_path_styles() {
    assert_eq!(base_name(r"C:\a\b.exe"), "b.exe");
    assert_eq!(base_name("/usr/bin/x"), "x");
    assert_eq!(base_name("x"), "x");
}

fn request(local: Vec<u8>, remote: Vec<u8>, at_ms: i64) -> Record {
    rec(
        TCPIP,
        providers::TCPIP_REQUEST_CONNECT,
        0,
        at_ms,
        &[("LocalAddress", Value::Bytes(local)), ("RemoteAddress", Value::Bytes(remote))],
    )
}

#[test]
fn connect_latency_runs_from_the_request_to_established_or_failed() {
    let mut d = Decoder::new(DecoderConfig::default());
    let local = sockaddr_in([10, 0, 0, 5], 49152);
    let remote = sockaddr_in([93, 184, 216, 34], 443);
    assert_eq!(d.decode(&request(local.clone(), remote.clone(), -35)), Some(Decoded::Updated));
    let e = body(d.decode(&net(net_event::CONNECT, 4242, 0, 0)));
    let EventBody::TcpConnect(c) = e.body else { panic!() };
    assert_eq!(c.latency_ns, 35_000_000);
    // The request is consumed: a second connect with the same endpoints has none.
    let e = body(d.decode(&net(net_event::CONNECT, 4242, 0, 10)));
    let EventBody::TcpConnect(c) = e.body else { panic!() };
    assert_eq!(c.latency_ns, 0);

    let remote = sockaddr_in([127, 0, 0, 1], 9);
    let local = sockaddr_in([127, 0, 0, 1], 50000);
    d.decode(&request(local.clone(), remote.clone(), -2000));
    let e = body(d.decode(&failure(0xC000_0236, local, remote)));
    let EventBody::TcpConnect(c) = e.body else { panic!() };
    assert_eq!((c.result.name().as_str(), c.latency_ns), ("ECONNREFUSED", 2_000_000_000));
}

#[test]
fn malformed_requests_are_counted_and_pending_requests_bounded() {
    let mut d = Decoder::new(DecoderConfig { max_connections: 3, ..DecoderConfig::default() });
    assert_eq!(d.decode(&request(vec![2, 0], sockaddr_in([1, 1, 1, 1], 1), 0)), None);
    assert_eq!(d.stats().truncated, 1);
    for port in 0..50 {
        d.decode(&request(sockaddr_in([10, 0, 0, 1], port), sockaddr_in([10, 0, 0, 2], 80), 0));
    }
    assert!(d.connecting.len() <= 3 && d.connecting_order.len() <= 6);
    assert_eq!(d.stats().evicted, 47);
}
