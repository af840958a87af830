//! ETW smoke test on a real Windows host: the sensor sees a process start
//! and exit with its command line and exit code, a loopback connection
//! accepted, established and closed with its bytes, and a refused connect.
//!
//! Needs an elevated process (kernel sessions need administrators or
//! LocalSystem). Without elevation it prints why and passes, unless
//! `CUSTOS_REQUIRE_ETW=1` (the Windows workflow sets it), then it fails.
//! Compiled on Linux only to type-check (`--cfg custos_windows_typecheck`).
#![cfg(any(windows, custos_windows_typecheck))]

use custos_etw::session::{EtwSensor, SensorConfig, SensorSink};
use custos_etw::ExistingProcess;
use custos_event::{Event, EventBody};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Event>>>);

impl SensorSink for Collect {
    fn event(&self, event: Event) -> bool {
        self.0.lock().unwrap().push(event);
        true
    }
    fn existing_process(&self, _p: ExistingProcess) {}
}

fn required() -> bool {
    std::env::var("CUSTOS_REQUIRE_ETW").is_ok_and(|v| v == "1")
}

fn config(name: &str) -> SensorConfig {
    SensorConfig { session_name: name.to_string(), ..SensorConfig::default() }
}

fn wait_for(events: &Collect, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = events.0.lock().unwrap().iter().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "no {what} within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn etw_sees_processes_and_loopback_connections() {
    let events = Collect::default();
    let sensor = match EtwSensor::start(config("custos-smoke"), events.clone()) {
        Ok(s) => s,
        Err(e) if !required() => {
            eprintln!(
                "skipped: cannot start ETW sessions ({e}); run elevated or set CUSTOS_REQUIRE_ETW=1 to fail"
            );
            return;
        }
        Err(e) => panic!("CUSTOS_REQUIRE_ETW=1 but the ETW sessions did not start: {e}"),
    };
    // Sessions deliver events with up to a second of buffering; give them a
    // moment to be enabled before acting.
    std::thread::sleep(Duration::from_secs(2));

    let child = std::process::Command::new("cmd.exe").args(["/c", "exit", "7"]).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"world!").unwrap();
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).unwrap();
    drop(c);
    server.join().unwrap();

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = closed.local_addr().unwrap().port();
    drop(closed);
    assert!(TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], refused_port)),
        Duration::from_secs(5)
    )
    .is_err());

    let start = wait_for(&events, "process_start of cmd.exe", |e| {
        e.pid == pid && matches!(&e.body, EventBody::ProcessStart(_))
    });
    let EventBody::ProcessStart(p) = &start.body else { unreachable!() };
    assert!(p.argv.iter().any(|a| a == "7"), "argv {:?}", p.argv);
    assert_eq!(p.ppid, std::process::id());

    let exit = wait_for(&events, "process_exit of cmd.exe", |e| {
        e.pid == pid && matches!(&e.body, EventBody::ProcessExit(_))
    });
    let EventBody::ProcessExit(x) = &exit.body else { unreachable!() };
    assert_eq!(x.exit_code, Some(7));

    let me = std::process::id();
    wait_for(&events, "tcp_connect to the listener", |e| {
        e.pid == me
            && matches!(&e.body, EventBody::TcpConnect(c) if c.endpoints.dport == port && c.result.is_ok())
    });
    wait_for(
        &events,
        "tcp_accept on the listener",
        |e| matches!(&e.body, EventBody::TcpAccept(a) if a.sport == port),
    );
    let close = wait_for(&events, "tcp_close of the client side", |e| {
        e.pid == me && matches!(&e.body, EventBody::TcpClose(c) if c.endpoints.dport == port)
    });
    let EventBody::TcpClose(c) = &close.body else { unreachable!() };
    assert_eq!((c.bytes_sent, c.bytes_received), (5, 6));
    wait_for(
        &events,
        "refused tcp_connect",
        |e| matches!(&e.body, EventBody::TcpConnect(c) if c.endpoints.dport == refused_port && c.result.name() == "ECONNREFUSED"),
    );

    let counters = sensor.counters();
    eprintln!("counters: {counters:?}");
    sensor.stop();
}

#[test]
fn a_session_left_behind_by_a_crash_is_replaced() {
    let first = match EtwSensor::start(config("custos-smoke-leftover"), Collect::default()) {
        Ok(s) => s,
        Err(e) if !required() => {
            eprintln!("skipped: cannot start ETW sessions ({e})");
            return;
        }
        Err(e) => panic!("CUSTOS_REQUIRE_ETW=1 but the ETW sessions did not start: {e}"),
    };
    // A crash: the sessions stay registered with the system.
    std::mem::forget(first);
    let second = EtwSensor::start(config("custos-smoke-leftover"), Collect::default())
        .expect("the leftover sessions are stopped and replaced");
    assert_eq!(second.session_names(), ["custos-smoke-leftover-kernel", "custos-smoke-leftover"]);
    second.stop();
}
