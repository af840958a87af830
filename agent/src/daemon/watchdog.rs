//! Liveness for systemd's `WatchdogSec=`: the pipeline advances a heartbeat
//! as it makes progress, and the watchdog task sends `WATCHDOG=1` only when
//! the heartbeat moved since the previous keep-alive. A pipeline that hangs
//! stops the keep-alives, and systemd kills and restarts the agent.

use super::notify::{Notifier, NotifyState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable of the test hook: after this many seconds the
/// pipeline hangs inside a sink, as a pipeline stuck in a consumer would.
pub const STALL_ENV: &str = "CUSTOS_TEST_STALL_AFTER";

/// A progress counter the watchdog reads: the pipeline's heartbeat, which
/// advances with every event and every tick.
pub trait Liveness: Send + Sync + 'static {
    fn progress(&self) -> u64;
}

impl<F: Fn() -> u64 + Send + Sync + 'static> Liveness for F {
    fn progress(&self) -> u64 {
        self()
    }
}

impl Liveness for AtomicU64 {
    fn progress(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// The stall test hook as a pipeline sink: once the deadline has passed,
/// its next tick never returns, so the pipeline task really hangs (and
/// with it the heartbeat). Only armed by `CUSTOS_TEST_STALL_AFTER`.
#[derive(Debug)]
pub struct StallSink {
    at: Instant,
}

impl StallSink {
    pub fn from_env() -> Option<StallSink> {
        let secs = std::env::var(STALL_ENV).ok()?.trim().parse::<f64>().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        tracing::warn!(var = STALL_ENV, secs, "Test hook armed: the pipeline will stall on purpose.");
        Some(StallSink { at: Instant::now() + Duration::from_secs_f64(secs) })
    }

    fn stall_if_due(&self) {
        if Instant::now() >= self.at {
            tracing::warn!(var = STALL_ENV, "Pipeline stalled by the test hook.");
            // Blocks the pipeline's thread for good, as a consumer stuck in a
            // syscall would; only the watchdog can end this.
            loop {
                std::thread::park();
            }
        }
    }
}

impl crate::pipeline::EventSink for StallSink {
    fn on_event(&mut self, _event: &custos_event::Event) {
        self.stall_if_due();
    }
    fn on_tick(&mut self, _tick: &crate::pipeline::Tick) {
        self.stall_if_due();
    }
}

/// The keep-alive interval asked for by systemd: half of `WATCHDOG_USEC`,
/// when `WATCHDOG_PID` (if set) is this process.
pub fn interval_from_env() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// Decides whether a keep-alive is due: only if the heartbeat moved.
#[derive(Debug, Default)]
pub struct WatchdogGate {
    last: Option<u64>,
}

impl WatchdogGate {
    pub fn new(start: u64) -> WatchdogGate {
        WatchdogGate { last: Some(start) }
    }

    /// True (and remembers `current`) when the heartbeat advanced.
    pub fn should_beat(&mut self, current: u64) -> bool {
        let moved = self.last != Some(current);
        self.last = Some(current);
        moved
    }
}

/// Sends `WATCHDOG=1` every `interval` while the heartbeat moves; logs once
/// when it stops moving and again when it recovers. Runs until aborted.
pub async fn run_watchdog(notifier: Notifier, liveness: Arc<dyn Liveness>, interval: Duration) {
    let mut gate = WatchdogGate::new(liveness.progress());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut stuck = false;
    loop {
        ticker.tick().await;
        if gate.should_beat(liveness.progress()) {
            if stuck {
                tracing::info!("Pipeline progresses again; watchdog keep-alives resume.");
                stuck = false;
            }
            notifier.notify_logged(&[NotifyState::Watchdog]);
        } else if !stuck {
            stuck = true;
            tracing::error!(
                interval_ms = interval.as_millis() as u64,
                "Pipeline made no progress; withholding the watchdog keep-alive."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_beats_only_when_the_heartbeat_moved() {
        let hb = AtomicU64::new(0);
        let mut gate = WatchdogGate::new(hb.progress());
        assert!(!gate.should_beat(hb.progress()), "no progress yet");
        hb.fetch_add(1, Ordering::Relaxed);
        assert!(gate.should_beat(hb.progress()));
        assert!(!gate.should_beat(hb.progress()), "stuck pipeline: no keep-alive");
        assert!(!gate.should_beat(hb.progress()));
        hb.fetch_add(2, Ordering::Relaxed);
        assert!(gate.should_beat(hb.progress()));
    }

    #[test]
    fn interval_is_half_of_watchdog_usec_for_this_pid() {
        assert_eq!(interval_from(Some("10000000"), None, 5), Some(Duration::from_secs(5)));
        assert_eq!(interval_from(Some("10000000"), Some("5"), 5), Some(Duration::from_secs(5)));
        assert_eq!(interval_from(Some("10000000"), Some("6"), 5), None, "meant for another process");
        assert_eq!(interval_from(None, None, 5), None);
        assert_eq!(interval_from(Some("0"), None, 5), None);
        assert_eq!(interval_from(Some("x"), None, 5), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn watchdog_task_beats_while_alive_and_stops_when_stuck() {
        use crate::daemon::notify::NotifyAddr;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = tokio::net::UnixDatagram::bind(&path).unwrap();
        let hb = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run_watchdog(
            Notifier::to_addr(NotifyAddr::Path(path)),
            hb.clone(),
            Duration::from_millis(20),
        ));
        // Alive: the pipeline beats faster than the watchdog interval.
        let beater = {
            let hb = hb.clone();
            tokio::spawn(async move {
                loop {
                    hb.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        // Stuck: once the in-flight keep-alives are read, none arrive for
        // many intervals.
        beater.abort();
        let _ = beater.await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        while rx.try_recv(&mut buf).is_ok() {}
        let silent = tokio::time::timeout(Duration::from_millis(300), rx.recv(&mut buf)).await;
        assert!(silent.is_err(), "watchdog kept beating while the heartbeat was stuck");
        // Recovers when progress resumes.
        hb.fetch_add(1, Ordering::Relaxed);
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        task.abort();
    }

    #[test]
    fn stall_sink_blocks_the_pipeline_thread_after_its_deadline() {
        use crate::pipeline::EventSink;
        let mut sink = StallSink { at: Instant::now() + Duration::from_millis(50) };
        let tick = crate::pipeline::Tick { now: std::time::SystemTime::now(), loss: Default::default() };
        sink.on_tick(&tick); // before the deadline: returns
        std::thread::sleep(Duration::from_millis(60));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            sink.on_tick(&tick);
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "the stalled tick returned");
    }
}
