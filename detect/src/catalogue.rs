//! The series catalogue: every per-service series the agent computes, with
//! its name, unit and derivation from the service's counters, in one table.
//!
//! Configuration (`detection.series`, `detection.overrides`), runbook metric
//! and anomaly triggers and the detection sink all read [`SERIES`], so a
//! series added here is computed, detectable and accepted by both checks at
//! once, and a name nobody computes is refused at load rather than never
//! firing.

use serde::{Deserialize, Serialize};

/// A service's cumulative counters at one instant, as the aggregator keeps
/// them (monotonic; a decrease is taken as a restart of the counter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceCounters {
    pub exits: u64,
    pub crashes: u64,
    pub connects: u64,
    pub connect_errors: u64,
    /// Sum of connect latencies, in seconds.
    pub connect_seconds: f64,
    pub accepts: u64,
    pub syscalls: u64,
    pub syscall_errors: u64,
    /// Sum of syscall latencies, in seconds.
    pub syscall_seconds: f64,
    pub bytes: u64,
}

/// What changed over one interval between two counter readings: the input
/// of every derivation in [`SERIES`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Interval {
    /// Length of the interval, in seconds (positive and finite).
    pub secs: f64,
    pub exits: f64,
    pub crashes: f64,
    pub connects: f64,
    pub connect_errors: f64,
    pub connect_seconds: f64,
    pub accepts: f64,
    pub syscalls: f64,
    pub syscall_errors: f64,
    pub syscall_seconds: f64,
    pub bytes: f64,
}

impl Interval {
    /// The changes from `prev` to `cur`, `secs` apart; `None` when the
    /// interval is empty or not a number, since no rate exists then.
    pub fn between(prev: &ServiceCounters, cur: &ServiceCounters, secs: f64) -> Option<Self> {
        if secs <= 0.0 || !secs.is_finite() {
            return None;
        }
        // A counter that went down restarted: its new value is the delta.
        let d = |a: u64, b: u64| if b >= a { (b - a) as f64 } else { b as f64 };
        let df = |a: f64, b: f64| if b >= a { b - a } else { b };
        Some(Interval {
            secs,
            exits: d(prev.exits, cur.exits),
            crashes: d(prev.crashes, cur.crashes),
            connects: d(prev.connects, cur.connects),
            connect_errors: d(prev.connect_errors, cur.connect_errors),
            connect_seconds: df(prev.connect_seconds, cur.connect_seconds),
            accepts: d(prev.accepts, cur.accepts),
            syscalls: d(prev.syscalls, cur.syscalls),
            syscall_errors: d(prev.syscall_errors, cur.syscall_errors),
            syscall_seconds: df(prev.syscall_seconds, cur.syscall_seconds),
            bytes: d(prev.bytes, cur.bytes),
        })
    }
}

/// One series of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct SeriesSpec {
    /// The series' name, as configuration and runbooks write it.
    pub metric: &'static str,
    /// Its unit, in UCUM as OTLP uses it.
    pub unit: &'static str,
    /// How [`value`](Self::value) computes it, for people.
    pub derivation: &'static str,
    compute: fn(&Interval) -> Option<f64>,
}

impl SeriesSpec {
    /// The series' value over one interval. `None` when it has no
    /// meaningful value there (a mean latency over zero connects): that is
    /// a gap, not a zero.
    pub fn value(&self, i: &Interval) -> Option<f64> {
        (self.compute)(i)
    }
}

/// A ratio of two counts, 0 when nothing was counted (no connects means no
/// failed connects) and at most 1 (counters read at slightly different
/// instants can overshoot).
fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        (num / den).min(1.0)
    } else {
        0.0
    }
}

/// Every series, in the order [`derive()`] gives them: exit rate, crash rate,
/// connect error ratio, connect latency, accept rate, syscall error ratio,
/// syscall latency, bytes rate.
pub const SERIES: &[SeriesSpec] = &[
    SeriesSpec {
        metric: "custos.process.exits",
        unit: "1/s",
        derivation: "Δexits / Δt",
        compute: |i| Some(i.exits / i.secs),
    },
    SeriesSpec {
        metric: "custos.process.crashes",
        unit: "1/s",
        derivation: "Δ(exits with nonzero code, fatal signal or OOM kill) / Δt",
        compute: |i| Some(i.crashes / i.secs),
    },
    SeriesSpec {
        metric: "custos.tcp.connect.error_ratio",
        unit: "1",
        derivation: "Δconnect errors / Δconnects (0 when no connects)",
        compute: |i| Some(ratio(i.connect_errors, i.connects)),
    },
    SeriesSpec {
        metric: "custos.tcp.connect.duration",
        unit: "s",
        derivation: "Δ(sum of connect latencies) / Δconnects (no point when no connects)",
        compute: |i| (i.connects > 0.0).then(|| i.connect_seconds / i.connects),
    },
    SeriesSpec {
        metric: "custos.tcp.accepts",
        unit: "1/s",
        derivation: "Δaccepts / Δt",
        compute: |i| Some(i.accepts / i.secs),
    },
    SeriesSpec {
        metric: "custos.syscall.error_ratio",
        unit: "1",
        derivation: "Δsyscall errors / Δsyscalls (0 when no syscalls)",
        compute: |i| Some(ratio(i.syscall_errors, i.syscalls)),
    },
    SeriesSpec {
        metric: "custos.syscall.duration",
        unit: "s",
        derivation: "Δ(sum of syscall latencies) / Δsyscalls (no point when no syscalls)",
        compute: |i| (i.syscalls > 0.0).then(|| i.syscall_seconds / i.syscalls),
    },
    SeriesSpec {
        metric: "custos.tcp.bytes",
        unit: "By/s",
        derivation: "Δ(bytes sent + received) / Δt",
        compute: |i| Some(i.bytes / i.secs),
    },
];

/// The catalogue entry named `metric`.
pub fn lookup(metric: &str) -> Option<&'static SeriesSpec> {
    SERIES.iter().find(|s| s.metric == metric)
}

/// True for a metric name of [`SERIES`].
pub fn is_known(metric: &str) -> bool {
    lookup(metric).is_some()
}

/// Every name of [`SERIES`], comma-separated, for "expected one of" errors.
pub fn known_names() -> String {
    SERIES.iter().map(|s| s.metric).collect::<Vec<_>>().join(", ")
}

/// The value of each series over the interval between two counter readings
/// `secs` apart, in catalogue order; series without a value for the interval
/// are left out (see [`SeriesSpec::value`]).
pub fn derive(prev: &ServiceCounters, cur: &ServiceCounters, secs: f64) -> Vec<(&'static str, f64)> {
    let Some(i) = Interval::between(prev, cur, secs) else { return Vec::new() };
    SERIES.iter().filter_map(|s| s.value(&i).map(|v| (s.metric, v))).collect()
}
