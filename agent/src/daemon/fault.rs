//! Internal tasks that must not die: when one does (a panic, an
//! unexpected end), `/healthz` says so and the agent stops with an error,
//! so that its service manager restarts it, instead of running on without
//! it (an exporter task that panicked left the agent dropping every event
//! while `/healthz` said ok).

use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Inner {
    first: Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

/// The first fault of the agent's internal tasks, shared by whoever reports
/// one and whoever waits for one.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Inner>);

impl Faults {
    /// Records that `task` stopped because of `why` (the first one is
    /// kept) and wakes whoever waits.
    pub fn report(&self, task: &str, why: impl std::fmt::Display) {
        let what = format!("{task} stopped: {why}");
        tracing::error!(task, reason = %why, "An internal task stopped; the agent stops with an error so that its service manager restarts it.");
        let mut first = self.0.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(what);
        }
        drop(first);
        self.0.notify.notify_waiters();
        self.0.notify.notify_one();
    }

    /// The first fault, if any.
    pub fn first(&self) -> Option<String> {
        self.0.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for a fault; returns at once if there was one.
    pub async fn wait(&self) -> String {
        loop {
            let notified = self.0.notify.notified();
            if let Some(f) = self.first() {
                return f;
            }
            notified.await;
        }
    }

    /// Spawns `fut` as the task `name`, watched: a panic is reported as a
    /// fault. The returned handle finishes when the task does; aborting it
    /// aborts the task.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(fut);
        let faults = self.clone();
        tokio::spawn(async move {
            let abort = inner.abort_handle();
            // Aborting this task drops the guard, which aborts the inner one.
            let _guard = AbortOnDrop(abort);
            match inner.await {
                Ok(()) => {}
                Err(e) if e.is_panic() => faults.report(name, panic_message(e.into_panic())),
                Err(_) => {} // cancelled: the agent is stopping
            }
        })
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A panic's message, when it has one.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => format!("panicked: {s}"),
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => format!("panicked: {s}"),
            Err(_) => "panicked".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_a_fault_and_wakes_the_waiter() {
        let faults = Faults::default();
        let waiter = tokio::spawn({
            let f = faults.clone();
            async move { f.wait().await }
        });
        let t = faults.spawn("exporter", async { panic!("interval overflow") });
        t.await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(got, "exporter stopped: panicked: interval overflow");
        faults.report("second", "ignored");
        assert_eq!(faults.first().unwrap(), got, "the first fault is kept");
        // A task that ends normally, or is aborted, is no fault.
        let clean = Faults::default();
        clean.spawn("ok", async {}).await.unwrap();
        let long = clean.spawn("long", std::future::pending());
        long.abort();
        let _ = long.await;
        assert_eq!(clean.first(), None);
    }
}
