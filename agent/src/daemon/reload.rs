//! Reload on SIGHUP (or `custos reload` over the control socket): the new
//! configuration (and runbooks) are loaded and validated as a whole, then
//! swapped in with one store. An invalid one is rejected with its located
//! errors and the running one stays.

use super::notify::{monotonic_usec, Notifier, NotifyState};
use super::status::{unix_now, ReloadRecord};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Loads everything a reload replaces. `Err` carries a human message with
/// the file, line and column of each problem.
pub type Loader<T> = Arc<dyn Fn() -> Result<T, String> + Send + Sync>;

/// What a reload from the first value to the second cannot apply while the
/// agent runs, one sentence each (shown in the reload's answer and logged).
pub type Notes<T> = Arc<dyn Fn(&T, &T) -> Vec<String> + Send + Sync>;

/// Holds the current value and swaps it on a successful reload.
pub struct Reloader<T> {
    tx: watch::Sender<Arc<T>>,
    load: Loader<T>,
    notes: Option<Notes<T>>,
    notifier: Notifier,
    last: Mutex<Option<ReloadRecord>>,
    // One reload at a time: a SIGHUP during a control-socket reload waits.
    running: tokio::sync::Mutex<()>,
}

impl<T: Send + Sync + 'static> Reloader<T> {
    pub fn new(initial: T, load: Loader<T>, notifier: Notifier) -> Reloader<T> {
        let (tx, _) = watch::channel(Arc::new(initial));
        Reloader {
            tx,
            load,
            notes: None,
            notifier,
            last: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Says, at each successful reload, what it cannot apply at once.
    pub fn with_notes(mut self, notes: Notes<T>) -> Self {
        self.notes = Some(notes);
        self
    }

    /// The current value; `changed()` wakes on each successful reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<T> {
        self.tx.borrow().clone()
    }

    /// The outcome of the last reload, if any.
    pub fn last(&self) -> Option<ReloadRecord> {
        self.last.lock().map(|g| g.clone()).unwrap_or(None)
    }

    /// Loads and swaps, telling systemd `RELOADING=1` then `READY=1` (the
    /// service is ready again either way: with the new value or the old one).
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        let _one = self.running.lock().await;
        self.notifier.notify_logged(&[
            NotifyState::Reloading { monotonic_usec: monotonic_usec() },
            NotifyState::Status("reloading configuration".into()),
        ]);
        // Loading reads files: off the async workers.
        let load = self.load.clone();
        let outcome = tokio::task::spawn_blocking(move || load())
            .await
            .unwrap_or_else(|e| Err(format!("configuration loader panicked: {e}")));
        let record = match outcome {
            Ok(value) => {
                let notes = self.notes.as_ref().map(|n| n(&self.current(), &value)).unwrap_or_default();
                self.tx.send_replace(Arc::new(value));
                tracing::info!("Reloaded the configuration.");
                for n in &notes {
                    tracing::warn!(note = %n, "Part of the reloaded configuration needs a restart.");
                }
                ReloadRecord { at: unix_now(), ok: true, error: None, notes }
            }
            Err(e) => {
                tracing::error!(error = %e, "Rejected the new configuration; the current one stays in effect.");
                ReloadRecord { at: unix_now(), ok: false, error: Some(e), notes: Vec::new() }
            }
        };
        let result =
            if record.ok { Ok(record.notes.clone()) } else { Err(record.error.clone().unwrap_or_default()) };
        if let Ok(mut g) = self.last.lock() {
            *g = Some(record);
        }
        self.notifier.notify_logged(&[NotifyState::Ready]);
        result
    }
}

/// A loader for the configuration file alone: `config::load` with its
/// located errors joined into one message.
pub fn config_loader(path: Option<std::path::PathBuf>) -> Loader<crate::config::LoadedConfig> {
    Arc::new(move || crate::config::load(path.as_deref()).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn valid_config_is_swapped_in_and_invalid_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.yaml");
        std::fs::write(&path, "detection: { sensitivity: low }\n").unwrap();
        let initial = crate::config::load(Some(&path)).unwrap();
        let r = Reloader::new(initial, config_loader(Some(path.clone())), Notifier::disabled());
        let mut rx = r.subscribe();
        assert_eq!(rx.borrow().raw.detection.sensitivity, crate::config::Sensitivity::Low);

        std::fs::write(&path, "detection: { sensitivity: high }\n").unwrap();
        r.reload().await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().raw.detection.sensitivity, crate::config::Sensitivity::High);
        assert!(r.last().unwrap().ok);

        std::fs::write(&path, "detection:\n  sensitivity: high\n  bogus: 1\n").unwrap();
        let err = r.reload().await.unwrap_err();
        let where_ = format!("{}:3:3:", path.display());
        assert!(err.contains(&where_), "error lacks file:line:col: {err}");
        assert!(!rx.has_changed().unwrap(), "a rejected config must not be published");
        assert_eq!(r.current().raw.detection.sensitivity, crate::config::Sensitivity::High);
        let last = r.last().unwrap();
        assert!(!last.ok && last.error.unwrap().contains("bogus"));
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reload_is_announced_to_systemd() {
        use crate::daemon::notify::NotifyAddr;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("notify");
        let rx = tokio::net::UnixDatagram::bind(&sock).unwrap();
        let r = Reloader::new(
            1u32,
            Arc::new(|| Err("x.yaml:1:1: bad".into())),
            Notifier::to_addr(NotifyAddr::Path(sock)),
        );
        assert!(r.reload().await.is_err());
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).await.unwrap();
        let first = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(first.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{first}");
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert_eq!(*r.current(), 1);
    }
}
