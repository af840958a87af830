//! Never hide loss: with a one-page ring buffer and a small channel that is
//! not read during a burst, every event is either delivered or counted lost.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use custos_ebpf::{EbpfSensor, Scope, SensorOptions};
use custos_event::{EventBody, EventKind, LossStage};
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
    // Now read everything, including the loss markers.
    let mut delivered = 0u64;
    let mut marked = [0u64; 2];
    let expected = 4 * CONNECTIONS + 1; // connect, accept, 2 closes each; one listen
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let loss = sensor.loss();
        if delivered + loss.kernel + loss.channel >= expected
            && marked[0] >= loss.kernel
            && marked[1] >= loss.channel
            || std::time::Instant::now() > deadline
        {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(e)) => match &e.body {
                EventBody::Loss(l) if l.stage == LossStage::Kernel => marked[0] += l.lost,
                EventBody::Loss(l) if l.stage == LossStage::Channel => marked[1] += l.lost,
                _ => {
                    assert!(matches!(
                        e.kind(),
                        EventKind::TcpConnect
                            | EventKind::TcpAccept
                            | EventKind::TcpClose
                            | EventKind::Listen
                    ));
                    delivered += 1;
                }
            },
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let loss = sensor.loss();
    println!(
        "expected {expected}, delivered {delivered}, lost in kernel {}, in channel {}",
        loss.kernel, loss.channel
    );
    assert_eq!(delivered + loss.kernel + loss.channel, expected);
    assert!(loss.channel > 0, "a 64-event channel left unread during the burst must overflow");
    // The gaps are marked in the stream too.
    assert_eq!(marked, [loss.kernel, loss.channel]);
    sensor.shutdown().await;
}
