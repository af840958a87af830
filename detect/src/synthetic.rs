//! Synthetic series of kinds the NAB files here do not have, with labelled
//! anomalies, scored the NAB way: how a threshold chosen on NAB transfers
//! to other series (heavy-tailed, bursty, spiky, quantized, counts, long).
//!
//! The NAB files of this project are mostly smooth or periodic; a threshold
//! chosen on them was far too low for the rest of the NAB corpus (spiky
//! CloudWatch metrics, bursty tweet counts, series four times as long),
//! where normal behaviour alone crossed it again and again. These series
//! stand for such data without using any of it. Twelve kinds of normal
//! behaviour, each at NAB's two usual lengths (4 032 and 15 840 five-minute
//! points), each with two anomalies of five kinds (a spike above anything
//! normal, a level shift, a burst of variance, a stuck value, a drop to the
//! floor), with windows drawn as NAB draws them (10 % of the file, centred
//! on the anomalies). Generated from fixed seeds: the same on every run.

use crate::nab::FileResult;
use crate::series::{Params, SeriesDetector};

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

    fn poisson(&mut self, mean: f64) -> f64 {
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0);
        }
        let (mut k, mut p, limit) = (0.0, 1.0, (-mean).exp());
        loop {
            p *= self.uniform();
            if p < limit {
                return k;
            }
            k += 1.0;
        }
    }
}

/// Five-minute points per day.
const DAY: f64 = 288.0;
/// Seconds between points, and the first timestamp.
const STEP: f64 = 300.0;
const START: f64 = 1.4e9;

/// The kinds of normal behaviour: a name and point `i` of a series drawn
/// with `r` (`state` carries a random walk's position).
pub const KINDS: [&str; 12] = [
    "gaussian",
    "student_t3",
    "lognormal",
    "poisson_daily",
    "counts_bursty_daily",
    "rare_bursts",
    "random_walk",
    "square_daily",
    "cpu_spikes",
    "sparse_counter",
    "quantized",
    "slow_ar1",
];

fn normal_point(kind: usize, r: &mut Rng, i: usize, state: &mut f64) -> f64 {
    let phase = i as f64 / DAY * 2.0 * std::f64::consts::PI;
    match kind {
        0 => 10.0 + r.normal(),
        1 => {
            let chi2: f64 = (0..3).map(|_| r.normal().powi(2)).sum();
            10.0 + r.normal() / (chi2 / 3.0).sqrt()
        }
        2 => r.normal().exp(),
        3 => r.poisson(20.0 * (1.0 + 0.8 * phase.sin())),
        4 => {
            let mean = 8.0 * (1.0 + 0.7 * phase.sin()) * (0.5 * r.normal()).exp();
            r.poisson(mean)
        }
        5 => {
            if r.uniform() < 0.01 {
                50.0 + 20.0 * r.uniform()
            } else {
                5.0 + r.normal()
            }
        }
        6 => {
            *state += r.normal();
            *state
        }
        7 => {
            let high = (i as f64 % DAY) < DAY / 2.0;
            (if high { 80.0 } else { 20.0 }) + 0.5 * r.normal()
        }
        8 => {
            if r.uniform() < 0.02 {
                (60.0 + 50.0 * r.uniform()).min(100.0)
            } else {
                (20.0 + 3.0 * r.normal()).clamp(0.0, 100.0)
            }
        }
        9 => {
            if r.uniform() < 0.03 {
                r.poisson(2.0) + 1.0
            } else {
                0.0
            }
        }
        10 => (3.0 + 1.2 * r.normal()).round(),
        _ => {
            *state = 0.99 * *state + r.normal();
            *state
        }
    }
}

/// One synthetic series: timestamps, values and labelled windows.
pub struct Series {
    pub name: String,
    pub timestamps: Vec<f64>,
    pub values: Vec<f64>,
    pub windows: Vec<(f64, f64)>,
}

/// Every kind at both lengths, in a fixed order.
pub fn series() -> Vec<Series> {
    let mut out = Vec::new();
    for (kind, kind_name) in KINDS.iter().enumerate() {
        for (variant, n) in [4032usize, 15_840].into_iter().enumerate() {
            let mut r = Rng(1 + variant as u64 * 104_729 + kind as u64 * 7919);
            let mut state = 0.0;
            let mut v: Vec<f64> = (0..n).map(|i| normal_point(kind, &mut r, i, &mut state)).collect();
            let mean = v.iter().sum::<f64>() / n as f64;
            let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt().max(1e-6);
            let (lo, hi) =
                v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            let len = n / 40;
            let half_window = n / 40;
            let mut windows = Vec::new();
            for (k, at) in [n * 35 / 100, n * 75 / 100].into_iter().enumerate() {
                let stretch = &mut v[at..at + len];
                match (kind * 2 + variant * 3 + k) % 5 {
                    0 => stretch[..3].iter_mut().for_each(|x| *x = hi + 2.0 * sd),
                    1 => stretch.iter_mut().for_each(|x| *x += 3.0 * sd),
                    2 => stretch.iter_mut().for_each(|x| *x = mean + 4.0 * (*x - mean)),
                    3 => {
                        let stuck = stretch[0];
                        stretch.iter_mut().for_each(|x| *x = stuck);
                    }
                    _ => stretch.iter_mut().for_each(|x| *x = lo),
                }
                let t = |i: usize| START + i as f64 * STEP;
                windows.push((t(at - half_window), t(at + half_window)));
            }
            out.push(Series {
                name: format!("synthetic/{kind_name}_{n}.csv"),
                timestamps: (0..n).map(|i| START + i as f64 * STEP).collect(),
                values: v,
                windows,
            });
        }
    }
    out
}

/// The synthetic series scored by fresh detectors (the gated score, as
/// `custos detect` writes it), ready for [`crate::nab::score_at`].
pub fn scored(params: &Params) -> Vec<FileResult> {
    series()
        .into_iter()
        .map(|s| {
            let mut d = SeriesDetector::new(params.clone());
            let scores =
                s.timestamps.iter().zip(&s.values).map(|(&t, &x)| d.observe(t, x).gated_score).collect();
            FileResult { name: s.name, timestamps: s.timestamps, scores, windows: s.windows }
        })
        .collect()
}
