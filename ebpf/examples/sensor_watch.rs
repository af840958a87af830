//! Prints the sensor's events as JSON lines (the `custos watch --json`
//! format) until Ctrl-C, then the loss counters. For trying the sensor by
//! hand before the agent wires it in.
//!
//!   cargo run -p custos-ebpf --example sensor_watch -- [--cgroup PATH]... [--pid PID]...
//!
//! With no --cgroup/--pid every process is reported; otherwise only those
//! cgroups (paths under the cgroup2 mount, e.g. system.slice/ssh.service)
//! and pids with their descendants.

use custos_ebpf::{cgroup2_mount, cgroup_id_of_path, EbpfSensor, Scope, SensorOptions};
use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut cgroups = Vec::new();
    let mut pids = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_else(|| fail(&format!("{a} needs a value")));
        match a.as_str() {
            "--cgroup" => {
                let root = cgroup2_mount().unwrap_or_else(|e| fail(&e.to_string()));
                let path = root.join(value.trim_start_matches('/'));
                cgroups.push(
                    cgroup_id_of_path(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display()))),
                );
            }
            "--pid" => {
                pids.push(value.parse::<u32>().unwrap_or_else(|e| fail(&format!("--pid {value}: {e}"))))
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    let scope = if cgroups.is_empty() && pids.is_empty() { Scope::Everything } else { Scope::Managed };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16384);
    let opts = SensorOptions { scope, syscall_interval: Duration::from_secs(5), ..SensorOptions::default() };
    let sensor = EbpfSensor::start(opts, tx).unwrap_or_else(|e| fail(&e.to_string()));
    for id in cgroups {
        sensor.manage_cgroup(id).unwrap_or_else(|e| fail(&e.to_string()));
    }
    for pid in pids {
        sensor.track_pid(pid).unwrap_or_else(|e| fail(&e.to_string()));
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            e = rx.recv() => match e {
                Some(e) => println!("{}", e.to_json_line()),
                None => break,
            },
        }
    }
    let loss = sensor.loss();
    eprintln!("lost: kernel {} channel {}; records read {}", loss.kernel, loss.channel, sensor.events_seen());
    sensor.shutdown().await;
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}
