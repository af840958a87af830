//! TCP events from the real BPF programs over loopback: listen, connect,
//! accept, close with byte counts, refused connects, IPv6.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::Scope;
use custos_event::{Closer, ConnectResult, Event, EventBody, EventKind, Family};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const CLIENT_BYTES: usize = 12_345;
const SERVER_BYTES: usize = 54_321;

/// One exchange of known sizes: the client sends CLIENT_BYTES, the server
/// reads them all, answers SERVER_BYTES and closes first.
fn exchange(listener: TcpListener) -> (u16, u16) {
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; CLIENT_BYTES];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&vec![7u8; SERVER_BYTES]).unwrap();
        s.shutdown(Shutdown::Both).unwrap();
    });
    let mut c = TcpStream::connect(addr).unwrap();
    let local_port = c.local_addr().unwrap().port();
    c.write_all(&vec![1u8; CLIENT_BYTES]).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), SERVER_BYTES);
    drop(c);
    server.join().unwrap();
    (addr.port(), local_port)
}

fn involves(e: &Event, port: u16) -> bool {
    match &e.body {
        EventBody::TcpConnect(c) => c.endpoints.dport == port || c.endpoints.sport == port,
        EventBody::TcpAccept(a) => a.sport == port || a.dport == port,
        EventBody::TcpClose(c) => c.endpoints.sport == port || c.endpoints.dport == port,
        EventBody::Listen(l) => l.sport == port,
        _ => false,
    }
}

async fn loopback_round_trip(bind: &str, family: Family) {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(options(Scope::Everything));
    let listener = TcpListener::bind(bind).unwrap();
    let port = listener.local_addr().unwrap().port();
    let ip: IpAddr = listener.local_addr().unwrap().ip();
    let (server_port, client_port) = tokio::task::spawn_blocking(move || exchange(listener)).await.unwrap();
    assert_eq!(server_port, port);
    let me = std::process::id();

    let events = collect_until(
        &mut rx,
        WAIT,
        |e| e.pid == me && involves(e, port),
        |seen| seen.iter().filter(|e| e.kind() == EventKind::TcpClose).count() == 2,
    )
    .await;
    let one = |k: EventKind| {
        let v: Vec<&Event> = events.iter().filter(|e| e.kind() == k).collect();
        assert_eq!(v.len(), 1, "one {k} expected: {events:#?}");
        v[0]
    };
    let EventBody::Listen(l) = &one(EventKind::Listen).body else { unreachable!() };
    assert_eq!((l.family, l.saddr, l.sport), (family, ip, port));

    let EventBody::TcpConnect(c) = &one(EventKind::TcpConnect).body else { unreachable!() };
    assert_eq!(c.result, ConnectResult::Ok);
    assert_eq!(c.endpoints.family, family);
    assert_eq!((c.endpoints.saddr, c.endpoints.daddr), (ip, ip));
    assert_eq!((c.endpoints.sport, c.endpoints.dport), (client_port, port));
    assert!(c.latency_ns > 0 && c.latency_ns < WAIT.as_nanos() as u64);

    let accept = one(EventKind::TcpAccept);
    let EventBody::TcpAccept(a) = &accept.body else { unreachable!() };
    assert_eq!((a.family, a.sport, a.dport), (family, port, client_port));
    assert_eq!(a.daddr, ip);

    let closes: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TcpClose(c) => Some(c),
            _ => None,
        })
        .collect();
    let client = closes.iter().find(|c| !c.inbound).expect("the client's close");
    let server = closes.iter().find(|c| c.inbound).expect("the server's close");
    assert_eq!((client.bytes_sent, client.bytes_received), (CLIENT_BYTES as u64, SERVER_BYTES as u64));
    assert_eq!((server.bytes_sent, server.bytes_received), (SERVER_BYTES as u64, CLIENT_BYTES as u64));
    assert_eq!((client.endpoints.sport, client.endpoints.dport), (client_port, port));
    assert_eq!((server.endpoints.sport, server.endpoints.dport), (port, client_port));
    assert_eq!(server.closed_by, Some(Closer::Local), "the server shut down first");
    assert_eq!(client.closed_by, Some(Closer::Peer));
    assert_eq!(client.retransmits, 0);
    assert!(client.duration_ns > 0);
    assert_eq!(sensor.loss().total(), 0);
    sensor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_connect_accept_close_with_byte_counts() {
    loopback_round_trip("127.0.0.1:0", Family::Ipv4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_connect_accept_close_with_byte_counts() {
    loopback_round_trip("[::1]:0", Family::Ipv6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_closed_port_is_refused() {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(options(Scope::Everything));
    // A port that was just free: bind, note, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let err = tokio::task::spawn_blocking(move || TcpStream::connect(addr).unwrap_err()).await.unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let me = std::process::id();
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| e.pid == me && e.kind() == EventKind::TcpConnect && involves(e, port),
        |seen| !seen.is_empty(),
    )
    .await;
    let EventBody::TcpConnect(c) = &events[0].body else { unreachable!() };
    assert_eq!(c.result, ConnectResult::Err(libc::ECONNREFUSED));
    assert_eq!(c.result.name(), "ECONNREFUSED");
    assert_ne!(c.endpoints.sport, 0, "the ephemeral port of the failed connect");
    // A refused connect never establishes: no close follows.
    let later = collect_for(&mut rx, Duration::from_millis(300), |e| e.pid == me && involves(e, port)).await;
    assert!(later.is_empty(), "{later:#?}");
    sensor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_mapped_connection_on_a_dual_stack_socket_is_ipv4() {
    if !bpf_available() {
        return;
    }
    let (sensor, mut rx) = start(options(Scope::Everything));
    // An IPv6 wildcard listener accepts IPv4 clients through v4-mapped addresses.
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::task::spawn_blocking(move || {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(c);
        drop(s);
    })
    .await
    .unwrap();
    let me = std::process::id();
    let events = collect_until(
        &mut rx,
        WAIT,
        |e| e.pid == me && e.kind() == EventKind::TcpAccept && involves(e, port),
        |seen| !seen.is_empty(),
    )
    .await;
    let EventBody::TcpAccept(a) = &events[0].body else { unreachable!() };
    assert_eq!(a.family, Family::Ipv4);
    assert_eq!(a.daddr, "127.0.0.1".parse::<IpAddr>().unwrap());
    sensor.shutdown().await;
}
