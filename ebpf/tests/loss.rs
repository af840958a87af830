//! Never hide loss: with a one-page ring buffer and a small channel that is
//! not read during a burst, every event is either delivered or counted lost
//! in the sensor's counters ([`EbpfSensor::loss`]). The sensor only counts:
//! the agent's pipeline turns growth of the counters into `loss` markers, so
//! none may come from the sensor itself (a gap would be marked twice).
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::{EbpfSensor, Scope, SensorOptions};
use custos_event::{Event, EventBody, EventKind, LossCounters};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const CONNECTIONS: u64 = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_or_counted() {
    if !bpf_available() {
        return;
    }
    let opts = SensorOptions {
        scope: Scope::Managed,
        process: false,
        syscalls: false,
        ring_buffer_bytes: 4096,
        ..SensorOptions::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let sensor = EbpfSensor::start(opts, tx).unwrap();
    // Only this process is in scope: every TCP event is ours.
    sensor.track_pid(std::process::id()).unwrap();

    let burst = std::time::Instant::now();
    tokio::task::spawn_blocking(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..CONNECTIONS {
                let (mut s, _) = listener.accept().unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
            }
        });
        for _ in 0..CONNECTIONS {
            TcpStream::connect(addr).unwrap().write_all(b"x").unwrap();
        }
        server.join().unwrap();
    })
    .await
    .unwrap();

    println!("burst took {:?}", burst.elapsed());
    // Now read everything the channel holds; the counters account for the rest.
    let mut delivered = 0u64;
    let mut markers = 0u64;
    // The pipeline marks gaps from the growth between two readings: the
    // counters must never go back.
    let mut last = LossCounters::default();
    let mut monotonic = |loss: LossCounters| {
        assert!(
            loss.kernel >= last.kernel && loss.channel >= last.channel,
            "loss counters went back: {last:?} then {loss:?}"
        );
        last = loss;
        loss
    };
    let expected = 4 * CONNECTIONS + 1; // connect, accept, 2 closes each; one listen
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let loss = monotonic(sensor.loss());
        if delivered + loss.kernel + loss.channel >= expected || std::time::Instant::now() > deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(e)) => tally(&e, &mut delivered, &mut markers),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    // Anything arriving later would be an event counted twice or a marker
    // from the sensor: wait longer than the 500 ms at which the sensor used
    // to mark losses, then look.
    tokio::time::sleep(Duration::from_millis(600)).await;
    while let Ok(e) = rx.try_recv() {
        tally(&e, &mut delivered, &mut markers);
    }
    let loss = monotonic(sensor.loss());
    println!(
        "expected {expected}, delivered {delivered}, lost in kernel {}, in channel {}",
        loss.kernel, loss.channel
    );
    // Exact: an event the kernel dropped without counting, or the reader
    // dropped without counting, makes the sum short; one counted twice makes
    // it long.
    assert_eq!(delivered + loss.kernel + loss.channel, expected);
    assert!(loss.channel > 0, "a 64-event channel left unread during the burst must overflow");
    assert_eq!(markers, 0, "the sensor counts losses; marking them in the stream is the pipeline's job");
    sensor.shutdown().await;
}

/// Counts a TCP event as delivered, a `loss` event as a marker.
fn tally(e: &Event, delivered: &mut u64, markers: &mut u64) {
    if let EventBody::Loss(_) = e.body {
        *markers += 1;
        return;
    }
    assert!(matches!(
        e.kind(),
        EventKind::TcpConnect | EventKind::TcpAccept | EventKind::TcpClose | EventKind::Listen
    ));
    *delivered += 1;
}
