//! The agent's own counters: what `/metrics` serves and what goes out as
//! self-telemetry under the `custos` service.
//!
//! Plain atomics so that every stage (sensor, pipeline, exporter, detector,
//! runbook engine) can count from any thread without locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a statistic only goes up or is a current level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Counter,
    Gauge,
}

macro_rules! agent_stats {
    ($( $(#[doc = $doc:literal])* $field:ident : $kind:ident, $unit:literal; )*) => {
        /// Counters of the agent itself. Increment with [`AgentStats::add`]
        /// or the fields directly; read with [`AgentStats::snapshot`].
        #[derive(Debug, Default)]
        pub struct AgentStats {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
        }

        /// A point-in-time copy of [`AgentStats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl AgentStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }

        impl StatsSnapshot {
            /// Every statistic as (name without prefix, help, kind, unit, value),
            /// in a stable order.
            pub fn entries(&self) -> Vec<StatEntry> {
                vec![ $( StatEntry {
                    name: stringify!($field),
                    help: concat!($($doc),*).trim_start(),
                    kind: StatKind::$kind,
                    unit: $unit,
                    value: self.$field,
                }, )* ]
            }
        }
    };
}

/// One statistic of a [`StatsSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatEntry {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: StatKind,
    /// UCUM unit as used by OTLP (`{event}`, `By`).
    pub unit: &'static str,
    pub value: u64,
}

agent_stats! {
    /// Events received from the sensor.
    events_in: Counter, "{event}";
    /// Events lost in the kernel (ring buffer full).
    events_dropped_kernel: Counter, "{event}";
    /// Events dropped in user space because a pipeline channel was full.
    events_dropped_user: Counter, "{event}";
    /// Events dropped because the exporter's queue was full.
    events_dropped_exporter: Counter, "{event}";
    /// Log records dropped because the exporter's log queue was full.
    logs_dropped: Counter, "{record}";
    /// Event log records suppressed by the per-service rate limit.
    logs_suppressed: Counter, "{record}";
    /// Metric data points and log records accepted by the collector or written to local files.
    records_exported: Counter, "{record}";
    /// Export requests accepted by the collector or written to local files.
    batches_exported: Counter, "{batch}";
    /// Export attempts that were retried after a retryable failure.
    export_retries: Counter, "{attempt}";
    /// Batches rejected permanently by the collector (not retried).
    export_failures: Counter, "{batch}";
    /// Data points and log records the collector rejected in a partial success.
    records_rejected: Counter, "{record}";
    /// Bytes currently held in the on-disk spool.
    spool_bytes: Gauge, "By";
    /// Batches currently held in the on-disk spool.
    spool_batches: Gauge, "{batch}";
    /// Batches written to the spool because the collector was unreachable.
    spool_writes: Counter, "{batch}";
    /// Oldest spooled batches deleted because the spool was full.
    spool_dropped: Counter, "{batch}";
    /// Spool files skipped because they were corrupt.
    spool_corrupt: Counter, "{batch}";
    /// Spool reads that failed for a passing reason (no descriptor left, I/O error); the batch is kept and read again.
    spool_read_errors: Counter, "{attempt}";
    /// Anomalies reported by the detector.
    anomalies: Counter, "{anomaly}";
    /// Anomalies and series values dropped because the runbook engine's queue was full.
    findings_dropped: Counter, "{finding}";
    /// Audit records not exported as log records because the export queue was full (the audit file keeps them).
    audit_export_dropped: Counter, "{record}";
    /// Audit records (and anchor updates) that could not be written, e.g. on a full disk.
    audit_write_failures: Counter, "{record}";
    /// Events not handed to the runbook engine because its queue was full.
    runbook_inputs_dropped: Counter, "{event}";
    /// Connections to `/metrics` and `/healthz` closed at once because the cap was reached.
    http_connections_refused: Counter, "{connection}";
    /// Runbook triggers that fired.
    runbook_firings: Counter, "{firing}";
    /// Actions runbooks performed on the host (not those left to systemd, dry runs or paused services).
    runbook_actions: Counter, "{action}";
    /// Runbook actions that failed.
    runbook_action_failures: Counter, "{action}";
    /// Verifications that found the service not healed after an action.
    runbook_not_healed: Counter, "{verification}";
    /// Firings held to be acted on later (a step running, a cooldown).
    runbook_firings_held: Counter, "{firing}";
    /// Firings not acted on (circuit breaker open, ladder exhausted, service paused).
    runbook_suppressions: Counter, "{firing}";
    /// Times a runbook's circuit breaker opened.
    runbook_breaker_openings: Counter, "{event}";
}

impl AgentStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}

/// The Prometheus text exposition of `s`, each statistic as `custos_<name>`
/// (counters with the `_total` suffix).
pub fn prometheus_text(s: &StatsSnapshot, version: &str) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str("# HELP custos_agent_info The custos agent, with its version.\n");
    out.push_str("# TYPE custos_agent_info gauge\n");
    out.push_str(&format!("custos_agent_info{{version=\"{}\"}} 1\n", escape_label(version)));
    for e in s.entries() {
        let (name, ty) = match e.kind {
            StatKind::Counter => (format!("custos_{}_total", e.name), "counter"),
            StatKind::Gauge => (format!("custos_{}", e.name), "gauge"),
        };
        out.push_str(&format!("# HELP {name} {}\n# TYPE {name} {ty}\n{name} {}\n", e.help, e.value));
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_prometheus_text() {
        let st = AgentStats::default();
        AgentStats::add(&st.events_in, 5);
        AgentStats::set(&st.spool_bytes, 42);
        let snap = st.snapshot();
        assert_eq!(snap.events_in, 5);
        let text = prometheus_text(&snap, "1.2.3");
        assert!(text.contains("# TYPE custos_events_in_total counter\ncustos_events_in_total 5\n"), "{text}");
        assert!(text.contains("# TYPE custos_spool_bytes gauge\ncustos_spool_bytes 42\n"), "{text}");
        assert!(text.contains("custos_agent_info{version=\"1.2.3\"} 1"), "{text}");
        assert!(text.contains("# HELP custos_events_in_total Events received from the sensor.\n"), "{text}");
    }
}
