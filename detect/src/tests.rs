//! Behaviour of the detector on synthetic series with known anomalies and
//! on series with none, and of the bank around it.

use crate::bank::{BankConfig, DetectorBank, MetricOverride};
use crate::catalogue::{self, derive, ServiceCounters, SERIES};
use crate::series::{SeriesDetector, MEMORY};
use crate::{params_for, Params, Sensitivity};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deterministic noise: xorshift64* and Box-Muller.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

const STEP: f64 = 300.0; // five-minute points, as in NAB
const DAY: f64 = 86_400.0;

/// Runs a fresh medium-sensitivity detector; returns the indices of alarms.
fn alarms(values: &[f64]) -> Vec<usize> {
    alarms_at(values, Sensitivity::Medium)
}

fn alarms_at(values: &[f64], s: Sensitivity) -> Vec<usize> {
    let mut d = SeriesDetector::new(params_for(s));
    let mut out = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        let o = d.observe(1.4e9 + i as f64 * STEP, v);
        assert!((0.0..=1.0).contains(&o.score), "score {} at {i}", o.score);
        if o.alarm {
            out.push(i);
        }
    }
    out
}

fn noisy(n: usize, seed: u64, level: f64, sd: f64) -> Vec<f64> {
    let mut r = Rng(seed);
    (0..n).map(|_| level + sd * r.normal()).collect()
}

fn daily(n: usize, seed: u64) -> Vec<f64> {
    let mut r = Rng(seed);
    (0..n)
        .map(|i| {
            let t = 1.4e9 + i as f64 * STEP;
            let phase = (t % DAY) / DAY * 2.0 * std::f64::consts::PI;
            50.0 + 30.0 * phase.sin() + 2.0 * r.normal()
        })
        .collect()
}

fn mostly_zero(n: usize, seed: u64) -> Vec<f64> {
    let mut r = Rng(seed);
    (0..n).map(|_| if r.uniform() < 0.03 { 1.0 } else { 0.0 }).collect()
}

/// Asserts an alarm within `within` points after `at` and none long before.
fn assert_detected(name: &str, values: &[f64], at: usize, within: usize) {
    let a = alarms(values);
    assert!(
        a.iter().any(|&i| i >= at && i <= at + within),
        "{name}: no alarm in [{at}, {}]: alarms {a:?}",
        at + within
    );
    let early: Vec<_> = a.iter().filter(|&&i| i + 50 < at).collect();
    assert!(early.len() <= 1, "{name}: false alarms before the anomaly: {early:?}");
}

#[test]
fn a_spike_is_detected() {
    let mut v = noisy(3000, 1, 100.0, 5.0);
    v[2000] = 160.0;
    assert_detected("spike", &v, 2000, 2);
}

#[test]
fn a_dip_is_detected() {
    let mut v = noisy(3000, 2, 100.0, 5.0);
    v[2000] = 40.0;
    assert_detected("dip", &v, 2000, 2);
}

#[test]
fn a_level_shift_is_detected_once() {
    let mut v = noisy(3000, 3, 100.0, 5.0);
    v[2000..].iter_mut().for_each(|x| *x += 40.0);
    assert_detected("level shift", &v, 2000, 10);
    let after: Vec<_> = alarms(&v).into_iter().filter(|&i| i >= 2000).collect();
    assert!(after.len() <= 2, "one episode, one alarm (roughly): {after:?}");
}

#[test]
fn a_variance_change_is_detected() {
    let mut v = noisy(3000, 4, 100.0, 2.0);
    let mut r = Rng(44);
    v[2000..].iter_mut().for_each(|x| *x = 100.0 + 12.0 * r.normal());
    assert_detected("variance change", &v, 2000, 40);
}

#[test]
fn a_missing_daily_peak_is_detected() {
    let mut v = daily(4032, 5);
    // Day 10: the afternoon peak does not come (values stay at the mean).
    let start = (10.0 * DAY / STEP) as usize;
    let day_len = (DAY / STEP) as usize;
    for (i, x) in v.iter_mut().enumerate().skip(start).take(day_len / 2) {
        let t = 1.4e9 + i as f64 * STEP;
        let phase = (t % DAY) / DAY * 2.0 * std::f64::consts::PI;
        if phase.sin() > 0.3 {
            *x = 50.0 + 2.0 * (i % 3) as f64;
        }
    }
    // It scores about 0.5 (z ~ 4): an alarm at high sensitivity, below the
    // medium alarm level, which noise alone reaches about once in a
    // thousand points.
    let a = alarms_at(&v, Sensitivity::High);
    assert!(a.iter().any(|&i| i >= start && i <= start + day_len), "missing peak not flagged: {a:?}");
    let late: Vec<_> = a.iter().filter(|&&i| i > 720 && i < start).collect();
    assert!(late.is_empty(), "false alarms before: {late:?}");
}

#[test]
fn a_burst_on_a_mostly_zero_counter_is_detected() {
    let mut v = mostly_zero(3000, 6);
    v[2000..2010].iter_mut().for_each(|x| *x = 25.0);
    assert_detected("burst", &v, 2000, 3);
}

#[test]
fn quiet_series_stay_quiet_after_warm_up() {
    let cases: Vec<(&str, Vec<f64>)> = vec![
        ("flat", vec![42.0; 4000]),
        ("noisy", noisy(4000, 7, 100.0, 5.0)),
        ("noisy 2", noisy(4000, 8, 0.5, 0.1)),
        ("daily seasonal", daily(4032, 9)),
        ("mostly zero counter", mostly_zero(4000, 10)),
    ];
    for (name, v) in cases {
        let a = alarms(&v);
        assert!(a.is_empty(), "{name}: alarms: {a:?}");
    }
}

#[test]
fn a_slow_drift_is_at_most_one_episode() {
    let mut r = Rng(11);
    let v: Vec<f64> = (0..4000).map(|i| 100.0 + i as f64 * 0.01 + 2.0 * r.normal()).collect();
    let late: Vec<_> = alarms(&v).into_iter().filter(|&i| i > 600).collect();
    assert!(late.len() <= 1, "drift: {late:?}");
}

#[test]
fn bad_points_are_skipped_not_fatal() {
    let mut d = SeriesDetector::new(params_for(Sensitivity::Medium));
    let mut r = Rng(12);
    for i in 0..2000 {
        let t = i as f64 * 10.0;
        let v = match i % 97 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            _ => 10.0 + r.normal(),
        };
        let o = d.observe(t, v);
        assert!((0.0..=1.0).contains(&o.score) && o.expected_low <= o.expected_high);
        // Repeated and late timestamps.
        if i % 50 == 0 {
            let o = d.observe(t, 10.0);
            assert!(o.score.is_finite());
            let o = d.observe(t - 100.0, 10.0);
            assert_eq!(o.score, 0.0);
        }
    }
    assert_eq!(d.skipped_non_finite, 3 * 21);
    assert_eq!(d.skipped_out_of_order, 40);
    // A gap of a day then normal values: learning carries on.
    for i in 0..200 {
        d.observe(2000.0 * 10.0 + DAY + i as f64 * 10.0, 10.0 + r.normal());
    }
    assert!(d.last_score() < 0.75, "{}", d.last_score());
}

#[test]
fn state_is_bounded() {
    let mut d = SeriesDetector::new(params_for(Sensitivity::Medium));
    let mut r = Rng(13);
    for i in 0..50_000 {
        d.observe(i as f64 * 10.0, r.normal() * (1.0 + (i % 1000) as f64));
    }
    assert!(d.state_bytes() <= 16 * 1024, "{} bytes", d.state_bytes());
    const { assert!(MEMORY <= 128) };
}

#[test]
fn expected_range_brackets_normal_values() {
    let v = noisy(3000, 14, 100.0, 5.0);
    let mut d = SeriesDetector::new(params_for(Sensitivity::Medium));
    let mut inside = 0;
    for (i, &x) in v.iter().enumerate() {
        let o = d.observe(i as f64 * STEP, x);
        if i > 500 && o.expected_low <= x && x <= o.expected_high {
            inside += 1;
        }
    }
    assert!(inside as f64 > 0.95 * 2499.0, "{inside}");
}

fn at(i: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i * 10)
}

#[test]
fn snapshot_and_restore_give_the_same_scores_as_an_uninterrupted_run() {
    let v = daily(3000, 15);
    let w = noisy(3000, 16, 5.0, 1.0);
    let mut whole = DetectorBank::new(Sensitivity::Medium);
    let mut first = DetectorBank::new(Sensitivity::Medium);
    for i in 0..1700 {
        whole.observe("api", "custos.tcp.connect.duration", at(i as u64), v[i]);
        whole.observe("db", "custos.tcp.accepts", at(i as u64), w[i]);
        first.observe("api", "custos.tcp.connect.duration", at(i as u64), v[i]);
        first.observe("db", "custos.tcp.accepts", at(i as u64), w[i]);
    }
    let bytes = first.snapshot();
    drop(first);
    let mut restored = DetectorBank::new(Sensitivity::Medium);
    restored.restore(&bytes).unwrap();
    assert_eq!(restored.len(), 2);
    for i in 1700..3000 {
        let a = whole.observe_signals("api", "custos.tcp.connect.duration", at(i as u64), v[i]);
        let b = restored.observe_signals("api", "custos.tcp.connect.duration", at(i as u64), v[i]);
        assert_eq!(a, b, "point {i}");
        let a = whole.observe_signals("db", "custos.tcp.accepts", at(i as u64), w[i]);
        let b = restored.observe_signals("db", "custos.tcp.accepts", at(i as u64), w[i]);
        assert_eq!(a, b, "point {i}");
    }
    assert_eq!(whole.snapshot(), restored.snapshot());
}

#[test]
fn corrupt_snapshots_are_refused() {
    let mut b = DetectorBank::new(Sensitivity::Medium);
    assert!(b.restore(b"not a snapshot").is_err());
    let mut other = DetectorBank::new(Sensitivity::Medium);
    other.observe("api", "custos.tcp.bytes", at(0), 1.0);
    let mut bytes = other.snapshot();
    bytes[0] = 9; // format number
    assert!(b.restore(&bytes).unwrap_err().to_string().contains("format 9"));
}

/// A bank that forecasts `metric` toward `threshold` (a runbook's or
/// `overrides[].threshold`).
fn bank_with_threshold(metric: &str, threshold: f64) -> DetectorBank {
    DetectorBank::from_config(&BankConfig {
        overrides: vec![MetricOverride {
            metric: metric.into(),
            threshold: Some(threshold),
            ..Default::default()
        }],
        ..BankConfig::default()
    })
}

#[test]
fn the_snapshot_layout_is_format_3() {
    // Format number, no series, and the empty counters list earlier
    // versions wrote and expect.
    assert_eq!(DetectorBank::new(Sensitivity::Medium).snapshot(), [3, 0, 0]);
    let mut b = DetectorBank::new(Sensitivity::Medium);
    b.restore(&[3, 0, 0]).unwrap();
    assert!(b.is_empty());
    // A format-2 snapshot (series with their tunables inside) is refused
    // by its number, not misread: learning starts over.
    let e = b.restore(&[2, 0, 0]).unwrap_err();
    assert!(e.to_string().contains("format 2"), "{e}");
}

#[test]
fn forecast_fires_once_when_the_crossing_is_within_the_horizon() {
    let mut b = bank_with_threshold("custos.tcp.connect.duration", 1.0);
    // 10 s points rising by 0.001 s each: 1.0 is reached at point 1000;
    // the default horizon is 30 min = 180 points, so a forecast around point 820.
    let mut fired = Vec::new();
    for i in 0..1000u64 {
        let s = b.observe_signals("api", "custos.tcp.connect.duration", at(i), 0.001 * i as f64);
        if let Some(f) = s.forecast {
            fired.push((i, f));
        }
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    let (i, f) = &fired[0];
    assert!((800..=830).contains(i), "fired at {i}");
    let true_eta = (1000 - i) as f64 * 10.0;
    assert!((f.eta_secs - true_eta).abs() < 0.1 * true_eta, "eta {} vs {true_eta}", f.eta_secs);
    assert_eq!(f.threshold, 1.0);
    // A flat series near the threshold never forecasts.
    let mut b = bank_with_threshold("custos.tcp.connect.duration", 1.0);
    let mut r = Rng(17);
    for i in 0..2000u64 {
        let s = b.observe_signals("api", "custos.tcp.connect.duration", at(i), 0.8 + 0.01 * r.normal());
        assert!(s.forecast.is_none(), "point {i}");
    }
}

#[test]
fn counters_become_rates_ratios_and_means() {
    let a = ServiceCounters {
        exits: 10,
        crashes: 2,
        connects: 100,
        connect_errors: 5,
        connect_seconds: 1.0,
        accepts: 50,
        syscalls: 1000,
        syscall_errors: 10,
        syscall_seconds: 0.5,
        bytes: 1000,
    };
    let b = ServiceCounters {
        exits: 20,
        crashes: 4,
        connects: 200,
        connect_errors: 15,
        connect_seconds: 3.0,
        accepts: 150,
        syscalls: 1000,
        syscall_errors: 10,
        syscall_seconds: 0.5,
        bytes: 3000,
    };
    let d: std::collections::HashMap<_, _> = derive(&a, &b, 10.0).into_iter().collect();
    assert_eq!(d["custos.process.exits"], 1.0);
    assert_eq!(d["custos.process.crashes"], 0.2);
    assert_eq!(d["custos.tcp.connect.error_ratio"], 0.1);
    assert_eq!(d["custos.tcp.connect.duration"], 0.02);
    assert_eq!(d["custos.tcp.accepts"], 10.0);
    assert_eq!(d["custos.syscall.error_ratio"], 0.0);
    assert!(!d.contains_key("custos.syscall.duration"), "no syscalls: a gap, not zero latency");
    assert_eq!(d["custos.tcp.bytes"], 200.0);
    // A counter that went down restarted: its new value is the delta.
    let c = ServiceCounters { exits: 3, ..b };
    let d: std::collections::HashMap<_, _> = derive(&b, &c, 1.0).into_iter().collect();
    assert_eq!(d["custos.process.exits"], 3.0);
    assert!(derive(&a, &b, 0.0).is_empty());
    for (m, _) in derive(&a, &b, 1.0) {
        assert!(SERIES.iter().any(|s| s.metric == m));
    }
}

#[test]
fn the_catalogue_names_each_series_once_with_a_unit_and_a_derivation() {
    let mut names: Vec<_> = SERIES.iter().map(|s| s.metric).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), SERIES.len(), "a name written twice");
    for s in SERIES {
        assert!(s.metric.starts_with("custos."), "{}", s.metric);
        assert!(!s.unit.is_empty() && !s.derivation.is_empty(), "{}", s.metric);
        assert!(catalogue::is_known(s.metric));
        assert_eq!(catalogue::lookup(s.metric).map(|l| l.metric), Some(s.metric));
    }
    assert!(!catalogue::is_known("custos.nope"));
    assert!(catalogue::known_names().starts_with("custos.process.exits, custos.process.crashes, "));
    // With every counter moving, every series has a value, in table order.
    let one = ServiceCounters {
        exits: 1,
        crashes: 1,
        connects: 1,
        connect_errors: 1,
        connect_seconds: 1.0,
        accepts: 1,
        syscalls: 1,
        syscall_errors: 1,
        syscall_seconds: 1.0,
        bytes: 1,
    };
    let derived: Vec<_> =
        derive(&ServiceCounters::default(), &one, 1.0).into_iter().map(|(m, _)| m).collect();
    assert_eq!(derived, SERIES.iter().map(|s| s.metric).collect::<Vec<_>>());
}

#[test]
fn the_bank_flags_a_crash_burst_from_counters() {
    let mut b = DetectorBank::new(Sensitivity::Medium);
    let mut c = ServiceCounters::default();
    let mut r = Rng(18);
    let mut anomalies = Vec::new();
    // The detection sink's loop: derive each interval's values from the
    // counters (the first reading only sets the baseline), observe each.
    let mut prev: Option<(SystemTime, ServiceCounters)> = None;
    for i in 0..1500u64 {
        c.syscalls += 1000;
        c.syscall_seconds += 0.001 * (1.0 + 0.05 * r.normal());
        c.accepts += 20;
        c.connects += 10;
        c.connect_seconds += 0.01;
        c.bytes += 10_000;
        if (1200..1205).contains(&i) {
            c.exits += 3;
            c.crashes += 3;
        }
        let now = at(i);
        if let Some((t0, c0)) = prev.replace((now, c)) {
            let secs = now.duration_since(t0).unwrap().as_secs_f64();
            for (metric, v) in derive(&c0, &c, secs) {
                if let Some(a) = b.observe_signals("api", metric, now, v).anomaly {
                    anomalies.push((i, a));
                }
            }
        }
    }
    assert!(
        anomalies.iter().any(|(i, a)| *i >= 1200 && *i <= 1202 && a.metric == "custos.process.crashes"),
        "{anomalies:?}"
    );
    assert!(anomalies.iter().all(|(i, _)| *i >= 1200), "false alarms: {anomalies:?}");
    let a = &anomalies[0].1;
    assert_eq!(a.service, "api");
    assert!(a.value > a.expected_high && (0.0..=1.0).contains(&a.score));
    assert!(b.score("api", "custos.process.crashes").is_some());
    assert!(b.score("api", "nope").is_none());
}

#[test]
fn overrides_and_series_selection_apply() {
    let c = BankConfig {
        sensitivity: Sensitivity::Low,
        series: Some(vec!["custos.process.crashes".into(), "custos.tcp.connect.duration".into()]),
        overrides: vec![
            MetricOverride {
                metric: "custos.tcp.connect.duration".into(),
                sensitivity: Some(Sensitivity::High),
                warmup: Some(300),
                threshold: Some(0.5),
                ..Default::default()
            },
            MetricOverride {
                metric: "custos.process.crashes".into(),
                enabled: Some(false),
                ..Default::default()
            },
        ],
        forecast_horizon: Duration::from_secs(600),
        ..BankConfig::default()
    };
    let b = DetectorBank::from_config(&c);
    assert!(!b.watches("custos.process.crashes"));
    assert!(!b.watches("custos.tcp.bytes"));
    assert!(b.watches("custos.tcp.connect.duration"));
    let s = b.settings("custos.tcp.connect.duration");
    assert_eq!(s.params, Params { warmup: 300, ..params_for(Sensitivity::High) });
    assert_eq!(s.threshold, Some(0.5));
    assert_eq!(b.settings("custos.tcp.accepts").params, params_for(Sensitivity::Low));
}

#[test]
fn the_bank_is_bounded() {
    let mut b = DetectorBank::from_config(&BankConfig { max_series: 2, ..Default::default() });
    for s in ["a", "b", "c"] {
        b.observe(s, "custos.tcp.bytes", at(0), 1.0);
    }
    assert_eq!(b.len(), 2);
    // The series beyond the bound was refused, not kept.
    assert!(b.score("c", "custos.tcp.bytes").is_none());
    assert_eq!(b.remove_service("a"), 1);
    assert_eq!(b.len(), 1);
    assert!(b.score("a", "custos.tcp.bytes").is_none());
    // The freed room takes a new series.
    b.observe("c", "custos.tcp.bytes", at(1), 1.0);
    assert!(b.score("c", "custos.tcp.bytes").is_some());
    assert_eq!(b.len(), 2);
}

#[test]
fn a_reload_frees_the_series_of_services_no_longer_configured() {
    let mut b = DetectorBank::new(Sensitivity::Medium);
    for s in ["api", "db", "cache"] {
        for m in ["custos.tcp.bytes", "custos.process.exits"] {
            b.observe(s, m, at(0), 1.0);
        }
    }
    let configured = ["api", "cache"];
    assert_eq!(b.retain_services(|s| configured.contains(&s)), 2);
    assert_eq!(b.len(), 4);
    assert!(b.scores().all(|(s, _, _)| s != "db"));
    // What was freed is gone from the snapshot too: a restart does not bring it back.
    let mut restored = DetectorBank::new(Sensitivity::Medium);
    restored.restore(&b.snapshot()).unwrap();
    assert_eq!(restored.len(), 4);
    assert!(restored.score("db", "custos.tcp.bytes").is_none());
    assert_eq!(b.retain_services(|s| configured.contains(&s)), 0, "nothing more to free");
    assert_eq!(b.remove_service("nope"), 0);
}

#[test]
fn the_same_points_score_lower_after_a_longer_history() {
    // The same 5 000 points of noise, scored after 3 000 and after 30 000
    // points of the same noise. A score judging each point's tail
    // probability alone would be alike after both (and so false detections
    // per point: they would grow with a series' length). Judged as a rarity
    // over the history seen, the same points score lower after the longer
    // one. The history term alone is log10(32 500 / 5 500) = 0.77 decades;
    // measured, 0.34: the statistics' calibrations find these points
    // somewhat more surprising after the long history, which without the
    // history term would make false detections per point rise with age.
    let segment = noisy(5_000, 22, 100.0, 5.0);
    let upper_tenth_mean = |history: usize| {
        let mut d = SeriesDetector::new(params_for(Sensitivity::Medium));
        let values = noisy(history, 23, 100.0, 5.0).into_iter().chain(segment.iter().copied());
        let mut scores: Vec<f64> = values
            .enumerate()
            .map(|(i, x)| d.observe(1.4e9 + i as f64 * STEP, x).score)
            .skip(history)
            .collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        scores[..scores.len() / 10].iter().sum::<f64>() / (scores.len() / 10) as f64
    };
    let (short, long) = (upper_tenth_mean(3_000), upper_tenth_mean(30_000));
    let decades = (short - long) * crate::series::SCORE_DECADES;
    assert!((0.2..1.0).contains(&decades), "after 3 000: {short}, after 30 000: {long} ({decades} decades)");
}

#[test]
fn each_series_reports_its_learning_state() {
    let mut b = DetectorBank::new(Sensitivity::Medium);
    for i in 0..800u64 {
        b.observe("db", "custos.process.exits", at(i), 1.0);
        if i < 400 {
            b.observe("api", "custos.tcp.bytes", at(i), 1.0);
        }
    }
    let states = b.series_states();
    let summary: Vec<_> = states.iter().map(|s| (s.service, s.metric, s.points, s.warming_up())).collect();
    assert_eq!(summary, [("api", "custos.tcp.bytes", 400, true), ("db", "custos.process.exits", 800, false)]);
    // A series learns 720 points before it may alarm.
    assert!(states.iter().all(|s| s.alarm_warmup == 720));
}

#[test]
fn severity_grows_with_how_far_out_a_point_is() {
    let severity_of = |spike: f64| {
        let mut v = noisy(3000, 25, 100.0, 5.0);
        v[2000] = 100.0 + spike * 5.0;
        let mut d = SeriesDetector::new(params_for(Sensitivity::Medium));
        let obs: Vec<_> = v.iter().enumerate().map(|(i, &x)| d.observe(1.4e9 + i as f64 * STEP, x)).collect();
        obs[2000].severity
    };
    use crate::Severity;
    let s: Vec<Severity> = [3.0, 6.0, 12.0, 40.0, 1e4].iter().map(|&k| severity_of(k)).collect();
    assert!(s.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
    assert_eq!(s[0], Severity::Low);
    assert_eq!(s[4], Severity::Critical);
}
