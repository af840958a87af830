//! The ring buffer reader: one task that drains the kernel's ring (woken by
//! the kernel once records pile up, else by a poll) and turns each record
//! into an event for the channel.

use super::{send, Shared};
use crate::decode::{self, Clock, DecodeOptions};
use aya::maps::{MapData, RingBuf};
use custos_event::{Event, EventBody};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// How long the reader lets records gather after a drain: the bound on the
/// extra latency it adds, in exchange for one wake-up per batch.
const BATCH_DELAY: Duration = Duration::from_millis(2);

/// How often the reader looks at the ring without being woken: the bound on
/// the latency of a record at low rates, where the kernel does not wake it.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

pub(super) struct Reader {
    pub(super) shared: Arc<Shared>,
    pub(super) tx: mpsc::Sender<Event>,
    pub(super) clock: Clock,
    pub(super) decode: DecodeOptions,
    /// Pids chosen by the OOM killer whose exit has not been seen yet, so
    /// that the exit can say `oom_killed`.
    pub(super) oom_victims: HashSet<u32>,
}

impl Reader {
    /// Hands over every record in the ring; false when the receiver is gone.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> bool {
        while let Some(item) = rb.next() {
            if !self.handle(&item) {
                return false;
            }
        }
        true
    }

    pub(super) async fn run(mut self, mut ring: AsyncFd<RingBuf<MapData>>, mut stop: watch::Receiver<bool>) {
        // The kernel wakes the reader only once records pile up
        // (cfg_wakeup_bytes); below that, this poll picks them up.
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    // What is in the ring at shutdown is delivered, not lost.
                    self.drain(ring.get_mut());
                    break;
                }
                _ = poll.tick() => {
                    if !self.drain(ring.get_mut()) {
                        return;
                    }
                }
                guard = ring.readable_mut() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => {
                            warn!(error = %e, "Ring buffer poll failed; the sensor stops reading.");
                            break;
                        }
                    };
                    // Clear before draining: a record committed after the
                    // drain wakes us again instead of waiting for the next one.
                    guard.clear_ready();
                    let rb = guard.get_inner_mut();
                    let mut drained = 0usize;
                    while let Some(item) = rb.next() {
                        drained += 1;
                        if !self.handle(&item) {
                            return;
                        }
                    }
                    // Under a stream of events, waking once per event costs
                    // more than handling it: let a batch gather (the ring
                    // buffer holds far more than arrives in a millisecond).
                    if drained > 0 {
                        tokio::time::sleep(BATCH_DELAY).await;
                    }
                }
            }
        }
    }

    /// False when the receiver is gone.
    fn handle(&mut self, record: &[u8]) -> bool {
        self.shared.events_seen.fetch_add(1, Ordering::Relaxed);
        let decoded = match decode::decode(record, &self.clock, &self.decode) {
            Ok(d) => d,
            Err(e) => {
                let n = self.shared.decode_errors.fetch_add(1, Ordering::Relaxed);
                if n < 10 {
                    warn!(error = %e, "Undecodable record from the kernel.");
                }
                return true;
            }
        };
        let mut event = decoded;
        match &mut event.body {
            EventBody::OomKill(_) => {
                // Bounded: victims whose exit is never seen (out of scope,
                // lost) must not accumulate.
                if self.oom_victims.len() >= 4096 {
                    self.oom_victims.clear();
                }
                self.oom_victims.insert(event.pid);
            }
            EventBody::ProcessExit(exit) => exit.oom_killed = self.oom_victims.remove(&event.pid),
            _ => {}
        }
        if let EventBody::ProcessStart(start) = &mut event.body {
            // The kernel gives the path as passed to execve; a relative one
            // is resolved through /proc while the process still exists.
            if !start.exe.starts_with('/') {
                if let Ok(p) = std::fs::read_link(format!("/proc/{}/exe", event.pid)) {
                    start.exe = p.to_string_lossy().into_owned();
                }
            }
        }
        send(&self.shared, &self.tx, event)
    }
}
