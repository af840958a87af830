//! Harnesses for custos's end-to-end tests: locating the built binary,
//! privileged-test gating, an OTLP receiver, a systemd sandbox.

pub mod systemd;
pub mod webhook;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `custos` binary of the same build profile as these tests. Cargo builds
/// another package's binaries only on request, so `cargo build --workspace`
/// must run first (scripts/test.sh does); `CUSTOS_BIN` overrides the path.
pub fn custos_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CUSTOS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/custos
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target profile dir");
    let bin = profile_dir.join(if cfg!(windows) { "custos.exe" } else { "custos" });
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// True when privileged tests must run (CI): a machine that cannot run them
/// fails them instead of skipping.
pub fn privileged_required() -> bool {
    std::env::var("CUSTOS_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

/// Gate for a privileged test: true to go on; otherwise prints why the test
/// is skipped and returns false, or panics under `CUSTOS_REQUIRE_BPF=1`.
pub fn gate(test: &str, available: Result<(), String>) -> bool {
    match available {
        Ok(()) => true,
        Err(reason) if privileged_required() => {
            panic!("{test}: required by CUSTOS_REQUIRE_BPF=1 but cannot run: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: {test}: {reason}");
            false
        }
    }
}

/// Polls `ready` every 100 ms until it holds; panics naming `what` after
/// `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub mod otlp;
