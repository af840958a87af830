//! Timing windows: the sys_enter program, which marks the calls to time, is
//! attached only for short windows at random times (see
//! [`LatencyTiming::for_sample`]).

use super::load::btf_program;
use super::{lock, prog_err};
use crate::sizing::LatencyTiming;
use aya::Ebpf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::warn;

/// Attaches the sys_enter program (which marks calls to be timed) for one
/// window in every period, at a random place in each, until stopped. A
/// failure to attach is logged once; counting goes on without latencies.
///
/// The window's link is a descriptor: a child the agent forks during a
/// window holds it (keeping the window open) until the child execs, which
/// the agent's children do at once.
pub(super) async fn time_syscalls(
    bpf: Arc<Mutex<Ebpf>>,
    window: Duration,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    const PROGRAM: &str = "handle_sys_enter";
    let mut rng = XorShift::seeded();
    let mut warned = false;
    loop {
        let before = LatencyTiming::offset(window, period, rng.next());
        let after = period.saturating_sub(before + window);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(before) => {}
        }
        let link = {
            let mut bpf = lock(&bpf);
            btf_program(&mut bpf, PROGRAM).and_then(|p| p.attach().map_err(prog_err(PROGRAM)))
        };
        let link = match link {
            Ok(link) => Some(link),
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    warn!(error = %e, "Cannot time syscalls; they are still counted.");
                }
                None
            }
        };
        let stopped = tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(window) => false,
        };
        if let Some(link) = link {
            let mut bpf = lock(&bpf);
            if let Err(e) =
                btf_program(&mut bpf, PROGRAM).and_then(|p| p.detach(link).map_err(prog_err(PROGRAM)))
            {
                warn!(error = %e, "Cannot end a syscall timing window.");
            }
        }
        if stopped {
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(after) => {}
        }
    }
}

/// Small non-cryptographic generator for window placement (xorshift64*),
/// seeded from the standard library's per-process random keys.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
