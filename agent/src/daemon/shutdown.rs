//! Graceful stop: ordered shutdown steps under one total time budget, which
//! the systemd unit's `TimeoutStopSec=` exceeds by a margin, so the agent
//! always finishes (or gives up and says what it gave up on) before systemd
//! resorts to SIGKILL.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
// tokio's clock, so that tests can run the budget on a paused clock.
use tokio::time::Instant;

/// Total time the agent allows itself to stop.
pub const STOP_BUDGET: Duration = Duration::from_secs(20);
/// Extra time systemd grants before SIGKILL: `TimeoutStopSec = STOP_BUDGET + margin`.
pub const STOP_MARGIN: Duration = Duration::from_secs(10);

type StepFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

struct Step {
    name: String,
    limit: Option<Duration>,
    fut: StepFuture,
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Done,
    Failed(String),
    /// Its own limit or the remaining budget ran out.
    TimedOut,
    /// The budget was spent before it could start.
    Skipped,
}

/// What a shutdown did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub steps: Vec<(String, StepOutcome, Duration)>,
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// True when every step finished successfully.
    pub fn clean(&self) -> bool {
        self.steps.iter().all(|(_, o, _)| *o == StepOutcome::Done)
    }
}

/// An ordered list of shutdown steps, e.g. stop sensors, drain the pipeline,
/// flush or spool telemetry, persist detector and runbook state.
pub struct ShutdownPlan {
    budget: Duration,
    steps: Vec<Step>,
}

impl ShutdownPlan {
    pub fn new(budget: Duration) -> ShutdownPlan {
        ShutdownPlan { budget, steps: Vec::new() }
    }

    /// Adds a step that may use whatever budget is left.
    pub fn step<F>(mut self, name: impl Into<String>, fut: F) -> Self
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.steps.push(Step { name: name.into(), limit: None, fut: Box::pin(fut) });
        self
    }

    /// Adds a step with its own limit, so that e.g. a slow drain cannot eat
    /// the time that persisting state needs.
    pub fn step_within<F>(mut self, name: impl Into<String>, limit: Duration, fut: F) -> Self
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.steps.push(Step { name: name.into(), limit: Some(limit), fut: Box::pin(fut) });
        self
    }

    /// Runs the steps in order and logs what did not finish.
    pub async fn run(self) -> ShutdownReport {
        let start = Instant::now();
        let deadline = start + self.budget;
        let mut steps = Vec::with_capacity(self.steps.len());
        for step in self.steps {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                tracing::error!(step = %step.name, "Stop budget spent; shutdown step skipped.");
                steps.push((step.name, StepOutcome::Skipped, Duration::ZERO));
                continue;
            }
            let allowed = step.limit.map_or(left, |l| l.min(left));
            let outcome = match tokio::time::timeout(allowed, step.fut).await {
                Ok(Ok(())) => StepOutcome::Done,
                Ok(Err(e)) => {
                    tracing::error!(step = %step.name, error = %e, "Shutdown step failed.");
                    StepOutcome::Failed(e)
                }
                Err(_) => {
                    tracing::error!(
                        step = %step.name,
                        allowed_ms = allowed.as_millis() as u64,
                        "Shutdown step did not finish in time; abandoned."
                    );
                    StepOutcome::TimedOut
                }
            };
            let took = now.elapsed();
            tracing::debug!(step = %step.name, took_ms = took.as_millis() as u64, "Shutdown step ended.");
            steps.push((step.name, outcome, took));
        }
        let report = ShutdownReport { steps, elapsed: start.elapsed() };
        if report.clean() {
            tracing::info!(took_ms = report.elapsed.as_millis() as u64, "Stopped cleanly.");
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn steps_run_in_order_and_a_slow_one_is_abandoned() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let rec = |name: &'static str, o: &Arc<Mutex<Vec<&'static str>>>| {
            let o = o.clone();
            async move {
                o.lock().unwrap().push(name);
                Ok(())
            }
        };
        let report = ShutdownPlan::new(Duration::from_secs(10))
            .step("stop sensors", rec("sensors", &order))
            .step_within("drain", Duration::from_secs(2), async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            })
            .step("flush", async { Err("collector unreachable".to_string()) })
            .step("persist state", rec("persist", &order))
            .run()
            .await;
        assert_eq!(*order.lock().unwrap(), vec!["sensors", "persist"]);
        let outcomes: Vec<_> = report.steps.iter().map(|(n, o, _)| (n.as_str(), o.clone())).collect();
        assert_eq!(
            outcomes,
            vec![
                ("stop sensors", StepOutcome::Done),
                ("drain", StepOutcome::TimedOut),
                ("flush", StepOutcome::Failed("collector unreachable".into())),
                ("persist state", StepOutcome::Done),
            ]
        );
        assert!(!report.clean());
        assert!(report.elapsed < Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn spent_budget_skips_the_remaining_steps() {
        let report = ShutdownPlan::new(Duration::from_secs(1))
            .step("hang", std::future::pending())
            .step("after", async { Ok(()) })
            .run()
            .await;
        assert_eq!(report.steps[0].1, StepOutcome::TimedOut);
        assert_eq!(report.steps[1].1, StepOutcome::Skipped);
        assert!(report.elapsed <= Duration::from_secs(1) + Duration::from_millis(1));
    }
}
