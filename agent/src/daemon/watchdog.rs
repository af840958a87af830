//! Liveness for systemd's `WatchdogSec=`: the pipeline advances a heartbeat
//! as it makes progress, and the watchdog task sends `WATCHDOG=1` only when
//! the heartbeat moved since the previous keep-alive. A pipeline that hangs
//! stops the keep-alives, and systemd kills and restarts the agent.

use super::notify::{Notifier, NotifyState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable of the test hook: after this many seconds the
/// pipeline's `checkpoint()` never returns, as a hung pipeline would.
pub const STALL_ENV: &str = "CUSTOS_TEST_STALL_AFTER";

/// Progress counter shared by the pipeline (writer) and the watchdog (reader).
#[derive(Debug)]
pub struct Heartbeat {
    count: AtomicU64,
    stall_at: Option<Instant>,
    stall_logged: AtomicBool,
}

impl Heartbeat {
    pub fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat { count: AtomicU64::new(0), stall_at: None, stall_logged: AtomicBool::new(false) })
    }

    /// Honours the stall test hook (`CUSTOS_TEST_STALL_AFTER=<seconds>`).
    pub fn from_env() -> Arc<Heartbeat> {
        let stall_at = std::env::var(STALL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        if stall_at.is_some() {
            tracing::warn!(var = STALL_ENV, "Test hook armed: the pipeline will stall on purpose.");
        }
        Arc::new(Heartbeat { count: AtomicU64::new(0), stall_at, stall_logged: AtomicBool::new(false) })
    }

    /// Records progress. Cheap enough for every batch of events.
    pub fn beat(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The pipeline's main loop awaits this once per iteration (and its
    /// periodic tick, so that an idle pipeline still proves it is alive).
    /// It records progress; under the stall test hook, once the deadline has
    /// passed, it never returns, so the loop really hangs.
    pub async fn checkpoint(&self) {
        if let Some(at) = self.stall_at {
            if Instant::now() >= at {
                if !self.stall_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(var = STALL_ENV, "Pipeline stalled by the test hook.");
                }
                std::future::pending::<()>().await;
            }
        }
        self.beat();
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
pub async fn run_watchdog(notifier: Notifier, heartbeat: Arc<Heartbeat>, interval: Duration) {
    let mut gate = WatchdogGate::new(heartbeat.count());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut stuck = false;
    loop {
        ticker.tick().await;
        if gate.should_beat(heartbeat.count()) {
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
        let hb = Heartbeat::new();
        let mut gate = WatchdogGate::new(hb.count());
        assert!(!gate.should_beat(hb.count()), "no progress yet");
        hb.beat();
        assert!(gate.should_beat(hb.count()));
        assert!(!gate.should_beat(hb.count()), "stuck pipeline: no keep-alive");
        assert!(!gate.should_beat(hb.count()));
        hb.beat();
        hb.beat();
        assert!(gate.should_beat(hb.count()));
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
        let hb = Heartbeat::new();
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
                    hb.beat();
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
        hb.beat();
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        task.abort();
    }

    #[tokio::test]
    async fn stall_hook_makes_checkpoint_hang() {
        let hb = Arc::new(Heartbeat {
            count: AtomicU64::new(0),
            stall_at: Some(Instant::now() + Duration::from_millis(30)),
            stall_logged: AtomicBool::new(false),
        });
        hb.checkpoint().await;
        assert_eq!(hb.count(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let r = tokio::time::timeout(Duration::from_millis(100), hb.checkpoint()).await;
        assert!(r.is_err(), "checkpoint returned after the stall deadline");
        assert_eq!(hb.count(), 1);
    }
}
