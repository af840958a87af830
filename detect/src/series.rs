//! One series' detector: a bounded nearest-neighbour novelty model over
//! multi-resolution context vectors and three distribution statistics, each
//! calibrated against the series' own history, combined into one tail
//! probability and scored by how rare that is over the history seen so far;
//! with warm-up and episode hysteresis. The method and its evidence are in
//! the crate's README.

use crate::anomaly::Severity;
use serde::{Deserialize, Serialize};

/// Raw values a context vector covers (the newest first); the newest is
/// the reference the others are taken relative to, so `RAW - 1` dimensions.
const RAW: usize = 4;
/// Block means of `MID_BLOCK` values, then of `LONG_BLOCK` values.
const MID: usize = 4;
const MID_BLOCK: usize = 8;
const LONG: usize = 4;
const LONG_BLOCK: usize = 32;
/// Seasonal dimensions: the usual value at this time of day and of week.
const SEASONAL: usize = 2;
/// Dimensions of a context vector: everything but the newest value,
/// relative to the newest value.
pub const DIM: usize = RAW - 1 + MID + LONG + SEASONAL;
/// Bins of the daily (half-hour) and weekly (hourly) profiles.
const DAY_BINS: usize = 48;
const WEEK_BINS: usize = 168;
/// Values of history a context vector spans.
pub const SPAN: usize = RAW + MID * MID_BLOCK + LONG * LONG_BLOCK;
/// Context vectors remembered.
pub const MEMORY: usize = 128;

/// Tunables of one detector; derived from a sensitivity, overridable per
/// metric. Not part of a snapshot: a restored series takes the current
/// configuration's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// A score at or above this starts an episode (an alarm); see
    /// [`score_of_rarity`] for what a score means.
    pub alarm_score: f64,
    /// An episode ends once scores stayed below this for `release_points`...
    pub release_score: f64,
    pub release_points: u32,
    /// ...and it lasted at least this many points (one episode, one alarm).
    /// Also how long a reported point raises the bar for the next ones.
    pub min_episode: u32,
    /// Points learned before any score (they score 0).
    pub warmup: u32,
    /// Points learned before any alarm (episodes start only after this; the
    /// score is reported from `warmup` on). The first weeks' rare but
    /// normal patterns (the first silent hour of a bursty counter) are
    /// learned before anyone is paged for them.
    pub alarm_warmup: u32,
    /// A context vector is remembered every `stride` points, so the memory
    /// reaches `MEMORY * stride` points back.
    pub stride: u32,
    /// Points over which the calibration of the statistics forgets.
    pub calibration_horizon: u32,
    /// Width of the expected range in typical residuals.
    pub range_width: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            alarm_score: score_of_rarity(1e-4),
            release_score: score_of_rarity(1.0),
            release_points: 20,
            min_episode: 100,
            warmup: 150,
            alarm_warmup: 720,
            stride: 3,
            calibration_horizon: 2000,
            range_width: 4.0,
        }
    }
}

/// Decades of rarity between a score of 0 and a score of 1, and the rarity
/// a score of 0 stands for (10^`SCORE_FLOOR` points as unusual expected in
/// the history): the score is linear in `log10` of the rarity between.
pub const SCORE_DECADES: f64 = 16.0;
pub const SCORE_FLOOR: f64 = 4.0;

/// The score of a point whose *rarity* is `r`: how many points as unusual
/// the series' history so far is expected to hold (the tail probability of
/// the point times the points seen). 0 at 10^4 and above, 0.25 at 1 (about
/// one such point expected in the history), 0.5 at 10^-4, 1 at 10^-12 and
/// below. Scores mean the same on every series of any length: a threshold
/// is a bound on the expected false detections over a series' history.
pub fn score_of_rarity(r: f64) -> f64 {
    ((SCORE_FLOOR - r.log10()) / SCORE_DECADES).clamp(0.0, 1.0)
}

/// The rarity a score stands for (the inverse of [`score_of_rarity`]).
pub fn rarity_of_score(score: f64) -> f64 {
    10f64.powf(SCORE_FLOOR - score * SCORE_DECADES)
}

/// Differences below this fraction of the series' standard deviation are
/// noise to every statistic: the resolution at which two values of a
/// series are told apart.
const DEAD_BAND: f64 = 0.05;

/// The history the rarity is counted over grows with the series, up to
/// this many points (116 days at 10 s points): false detections over a
/// series' life grow with the logarithm of its length rather than with
/// it, and after this the rate stays constant instead of the detector
/// growing numb over a long uptime.
const HISTORY_CAP: f64 = 1e6;

/// The running maximum (or, negated, minimum) of a series and how many
/// separate times the series came back to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Extreme {
    level: f64,
    visits: u32,
    /// Whether the previous point was at it (a stay is one visit).
    at: bool,
}

impl Extreme {
    /// Visits after which an extreme is a known ceiling (or floor).
    const KNOWN: u32 = 3;

    /// Learns `v` (with a tolerance of `tol`); true if `v` is at an extreme
    /// the series has come back to at least `KNOWN` times.
    fn at_known(&mut self, v: f64, tol: f64) -> bool {
        if self.visits == 0 || v > self.level + tol {
            *self = Extreme { level: v, visits: 1, at: true };
            return false;
        }
        if v < self.level - tol {
            self.at = false;
            return false;
        }
        if !self.at {
            self.visits += 1;
            self.at = true;
        }
        self.visits >= Self::KNOWN
    }
}

/// A statistic at least this many standard deviations above its usual
/// value corroborates the context novelty.
const CORROBORATION: f64 = 0.5;
/// Weight of context novelty that no other statistic corroborates.
const UNCORROBORATED_NOVELTY: f64 = 0.8;
/// A statistic at least this many standard deviations above its usual
/// value corroborates a seasonal departure, level shift or spread change.
const CORROBORATION_OTHERS: f64 = 0.9;
/// Weight of a seasonal departure, level shift or spread change that no
/// other statistic corroborates.
const UNCORROBORATED_OTHER: f64 = 0.6;

/// Points before the seasonal departure is trusted.
const DAY_SECONDS_MIN_POINTS: usize = 64;

/// Combines the statistics' z-scores into one: the sum of the squares of
/// their positive parts (a chi-like statistic), as its surprisal
/// `-ln P(C >= c)` under the statistics' model (independent standard
/// normal z-scores), so that the score is a tail probability rather than a
/// distance.
///
/// The largest z alone ranks a point where one statistic is high above one
/// where several agree; but each statistic alone is often high on normal
/// data of some kind (novelty at the sharp daily steps of a square wave, the
/// spread of a bursty counter), while real anomalies usually move more than
/// one (a novel context that is also off the daily profile, a shift with a
/// change of spread). A single statistic reaching z still counts about as z.
/// On NAB (standard / low FP / low FN): largest z 59.9 / 51.7 / 67.8, root
/// sum of squares 66.7 / 55.3 / 72.1.
fn combined_surprisal(zs: [f64; 4]) -> f64 {
    let c: f64 = zs.iter().map(|z| z.max(0.0).powi(2)).sum();
    // Each positive part is 0 with probability 1/2, else chi-square(1):
    // P(C >= c) = sum over k of C(4, k) / 16 * P(chi2_k >= c), k = 1..4,
    // = Q(sqrt c) + e^(-c/2) (6/16 + sqrt(2c/pi)/4 + (1 + c/2)/16),
    // written with e^(-c/2) factored out so it holds far in the tail.
    if c <= 0.0 {
        return 0.0;
    }
    let q = (c / 2.0 - gaussian_surprisal(c.sqrt())).exp();
    let rest = 6.0 / 16.0 + (2.0 * c / std::f64::consts::PI).sqrt() / 4.0 + (1.0 + c / 2.0) / 16.0;
    (c / 2.0 - (q + rest).ln()).max(0.0)
}

/// `-ln P(Z >= z)` for a standard normal `Z`, `z >= 0`: `-ln(erfc(z / sqrt 2) / 2)`
/// with erfc by its Chebyshev-fitted exponential form (relative error
/// below 1.2e-7 everywhere), in logs so that it holds far in the tail.
fn gaussian_surprisal(z: f64) -> f64 {
    let x = z.max(0.0) * std::f64::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    std::f64::consts::LN_2 - (t.ln() - x * x + poly)
}

/// A running estimate of the distribution of a log-scale statistic, which
/// turns a new value into a z-score. Updates are winsorized at 3 sigma so
/// that an anomaly does not teach it that anomalies are normal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Calibration {
    mean: f64,
    var: f64,
    n: u64,
}

impl Calibration {
    /// Below this spread (in log units) differences are not meaningful.
    const MIN_SD: f64 = 0.1;

    fn z(&self, x: f64) -> f64 {
        if self.n < 16 {
            return 0.0;
        }
        (x - self.mean) / self.var.sqrt().max(Self::MIN_SD)
    }

    fn learn(&mut self, x: f64, horizon: u32) {
        let x = if self.n >= 16 { x.min(self.mean + 3.0 * self.var.sqrt().max(Self::MIN_SD)) } else { x };
        self.n += 1;
        let b = 1.0 / (self.n.min(horizon as u64) as f64);
        let e = x - self.mean;
        self.mean += b * e;
        self.var = (1.0 - b) * (self.var + b * e * e);
    }
}

/// What one observation produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Anomaly score in [0, 1] of this point (0 during warm-up and for
    /// non-finite or out-of-order points).
    pub score: f64,
    /// The score gated by hysteresis: the score of the point that started
    /// an episode, 0 for the rest of the episode, the plain score otherwise.
    /// This is the signal to threshold (it is what `custos detect` writes).
    pub gated_score: f64,
    /// True on the point that starts an episode.
    pub alarm: bool,
    pub severity: Severity,
    pub expected_low: f64,
    pub expected_high: f64,
}

impl Observation {
    fn quiet(expected_low: f64, expected_high: f64) -> Self {
        Observation {
            score: 0.0,
            gated_score: 0.0,
            alarm: false,
            severity: Severity::Low,
            expected_low,
            expected_high,
        }
    }
}

/// State of one series. Plain data: serializable, a few KiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesDetector {
    /// Not saved: a restored series takes the configuration's (`set_params`).
    #[serde(skip)]
    params: Params,
    /// Finite, in-order points learned.
    n: u64,
    last_ts: f64,
    /// The last `SPAN` values, a ring; `head` is the next slot.
    hist: Vec<f32>,
    head: usize,
    /// Exponentially weighted mean and variance of the values.
    mean: f64,
    var: f64,
    /// Remembered context vectors, dimension-major (`memory[k * MEMORY + i]`
    /// is dimension `k` of context `i`) so the nearest-neighbour scan
    /// vectorizes over contexts.
    memory: Vec<f32>,
    mem_len: usize,
    /// Per remembered context: the point count when it last matched.
    mem_last_hit: Vec<u64>,
    /// Calibration of log novelty.
    novelty: Calibration,
    /// Smoothed |value - usual value at this time of day| and its calibration.
    season_dev: f64,
    season_cal: Calibration,
    /// Short-window mean and variance of the values, and calibrations of
    /// their departures from the long-run ones (level shift, rate change,
    /// variance change).
    short_mean: f64,
    short_var: f64,
    shift_cal: Calibration,
    spread_cal: Calibration,
    /// Typical |value - expected value| for the expected range.
    resid_season: f64,
    resid_recent: f64,
    in_episode: bool,
    episode_len: u32,
    /// Gating: a point's score is reported only above this level, which
    /// rises after each reported point and lapses after `min_episode` points
    /// (level, points since it was set).
    gate: (f64, u32),
    /// Usual value per half hour of the day and per hour of the week (NaN: not seen yet).
    day_profile: Vec<f32>,
    week_profile: Vec<f32>,
    quiet_run: u32,
    pub(crate) skipped_non_finite: u64,
    pub(crate) skipped_out_of_order: u64,
    last_score: f64,
    /// Running maximum and (negated) minimum: known ceilings and floors.
    highest: Extreme,
    lowest: Extreme,
}

impl SeriesDetector {
    pub fn new(params: Params) -> Self {
        SeriesDetector {
            params,
            n: 0,
            last_ts: f64::NEG_INFINITY,
            hist: vec![0.0; SPAN],
            head: 0,
            mean: 0.0,
            var: 0.0,
            memory: vec![0.0; MEMORY * DIM],
            mem_len: 0,
            mem_last_hit: vec![0; MEMORY],
            novelty: Calibration::default(),
            season_dev: 0.0,
            season_cal: Calibration::default(),
            short_mean: 0.0,
            short_var: 0.0,
            shift_cal: Calibration::default(),
            spread_cal: Calibration::default(),
            resid_season: 0.0,
            resid_recent: 0.0,
            in_episode: false,
            episode_len: 0,
            gate: (0.0, 0),
            day_profile: vec![f32::NAN; DAY_BINS],
            week_profile: vec![f32::NAN; WEEK_BINS],
            quiet_run: 0,
            skipped_non_finite: 0,
            skipped_out_of_order: 0,
            last_score: 0.0,
            highest: Extreme::default(),
            lowest: Extreme::default(),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Replaces the tunables, keeping what was learned.
    pub fn set_params(&mut self, params: Params) {
        self.params = params;
    }

    /// The score of the last scored point.
    pub fn last_score(&self) -> f64 {
        self.last_score
    }

    /// Points learned so far.
    pub fn points(&self) -> u64 {
        self.n
    }

    /// Points to learn before the first alarm: until then the series is
    /// warming up (it learns, and scores from `warmup` on, but pages no one).
    pub fn alarm_warmup(&self) -> u64 {
        u64::from(self.params.alarm_warmup.max(self.params.warmup))
    }

    /// Whether the series is still warming up (see [`alarm_warmup`](Self::alarm_warmup)).
    pub fn warming_up(&self) -> bool {
        self.n <= self.alarm_warmup()
    }

    /// Bytes of heap and inline state of this series.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.hist.capacity() * 4
            + self.memory.capacity() * 4
            + self.mem_last_hit.capacity() * 8
            + (DAY_BINS + WEEK_BINS) * 4
    }

    /// The `k`-th most recent value (0 = newest); needs `k < SPAN`.
    #[inline]
    fn back(&self, k: usize) -> f32 {
        self.hist[(self.head + SPAN - 1 - k) % SPAN]
    }

    /// The context of the newest value: its recent past at three
    /// resolutions and the usual values at this time of day and week, all
    /// relative to the newest value. The context is a *shape*, not a level:
    /// a pattern seen before at another level is familiar, so a series that
    /// settles at a new level stops being novel as soon as its shape is
    /// (the level itself is judged by the shift and seasonal statistics).
    /// With absolute contexts every point of a new regime was novel until
    /// the memory had filled with it: repeated alarms after each regime
    /// change (NAB 66.67 / 55.32 / 72.12 -> 67.70 / 60.31 / 73.35).
    fn context(&self, out: &mut [f32; DIM], seasonal: [f32; SEASONAL]) {
        let now = self.back(0);
        for (o, s) in out[DIM - SEASONAL..].iter_mut().zip(seasonal) {
            *o = s - now;
        }
        for k in 1..RAW {
            out[k - 1] = self.back(k) - now;
        }
        let mut k = RAW;
        for b in 0..MID {
            let s: f32 = (0..MID_BLOCK).map(|j| self.back(k + j)).sum();
            out[RAW - 1 + b] = s / MID_BLOCK as f32 - now;
            k += MID_BLOCK;
        }
        for b in 0..LONG {
            let s: f32 = (0..LONG_BLOCK).map(|j| self.back(k + j)).sum();
            out[RAW - 1 + MID + b] = s / LONG_BLOCK as f32 - now;
            k += LONG_BLOCK;
        }
    }

    /// Learns one point and scores it. `ts` is in seconds (any epoch).
    pub fn observe(&mut self, ts: f64, value: f64) -> Observation {
        if !value.is_finite() || !ts.is_finite() {
            self.skipped_non_finite += 1;
            return Observation::quiet(self.mean, self.mean);
        }
        if ts < self.last_ts {
            // Late data cannot be placed in the context it belongs to; it is
            // counted and left out rather than spliced in the wrong place.
            self.skipped_out_of_order += 1;
            return Observation::quiet(self.mean, self.mean);
        }
        self.last_ts = ts;
        if self.n == 0 {
            // Start the history at the first value, not at zero.
            self.hist.iter_mut().for_each(|h| *h = value as f32);
            self.mean = value;
        }
        self.n += 1;
        self.hist[self.head] = value as f32;
        self.head = (self.head + 1) % SPAN;

        let a = 1.0 / (self.n.min(self.params.calibration_horizon as u64) as f64);
        let d = value - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
        // Distances below a small fraction of the series' spread are noise.
        let scale = self.var.sqrt();
        let floor = DEAD_BAND * scale + 1e-9 * (1.0 + self.mean.abs());

        let seasonal = self.seasonal(ts, value);
        let mut ctx = [0f32; DIM];
        self.context(&mut ctx, seasonal);
        let (nn_d2, nn_at) = self.nearest(&ctx);
        let dist = nn_d2.sqrt();
        // The expected range comes from whichever simple forecast of this
        // point has been closer lately: the usual value at this time of day,
        // or the recent mean (both from before this point).
        let (by_season, by_recent) = (seasonal[0] as f64, if self.n == 1 { value } else { self.short_mean });
        let (expected, typical_miss) = if self.resid_season < self.resid_recent {
            (by_season, self.resid_season)
        } else {
            (by_recent, self.resid_recent)
        };
        let half = self.params.range_width * typical_miss.max(floor);
        let (lo, hi) = (expected - half, expected + half);
        let w = a.max(0.01);
        for (resid, f) in [(&mut self.resid_season, by_season), (&mut self.resid_recent, by_recent)] {
            let miss = (value - f).abs();
            // Capped so one anomaly does not widen the range for long.
            *resid += (miss.min(4.0 * resid.max(floor)) - *resid) * w;
        }

        // The z-scores of the four statistics (novelty, seasonal departure,
        // level shift, spread change; 0 where not yet available).
        let mut zs = [0.0f64; 4];
        if nn_at.is_some() {
            let ld = (dist + floor).ln();
            zs[0] = self.novelty.z(ld);
            self.novelty.learn(ld, self.params.calibration_horizon);
        }
        // Departure from the usual value at this time of day, smoothed so
        // that a missing daily peak (sustained) counts more than noise.
        let sres = (value - seasonal[0] as f64).abs();
        self.season_dev = if self.n == 1 { sres } else { self.season_dev + (sres - self.season_dev) * 0.2 };
        let ls = (self.season_dev + floor).ln();
        if self.n as usize > DAY_SECONDS_MIN_POINTS {
            zs[1] = self.season_cal.z(ls);
        }
        self.season_cal.learn(ls, self.params.calibration_horizon);

        if self.n == 1 {
            self.short_mean = value;
        }
        let sa = 1.0 / 16.0;
        let e = value - self.short_mean;
        self.short_mean += sa * e;
        self.short_var = (1.0 - sa) * (self.short_var + sa * e * e);
        let f2 = floor * floor;
        let shift = ((self.short_mean - self.mean).abs() + floor).ln() - (scale + floor).ln();
        let spread = ((self.short_var + f2) / (self.var + f2)).ln().abs();
        if self.n as usize > DAY_SECONDS_MIN_POINTS {
            zs[2] = self.shift_cal.z(shift);
            zs[3] = self.spread_cal.z(spread);
        }
        self.shift_cal.learn(shift, self.params.calibration_horizon);
        self.spread_cal.learn(spread, self.params.calibration_horizon);

        // Memory as a set of prototypes: a context like a remembered one
        // (closer than the typical nearest distance) refreshes it; a new one
        // is added, evicting the least recently matched. Recurring patterns
        // thus stay remembered however long ago they started, and one
        // slot is spent per kind of pattern rather than per point.
        let typical = if self.novelty.n >= 16 { self.novelty.mean.exp() } else { 0.0 };
        match nn_at {
            Some(i) if dist + floor <= typical => {
                self.mem_last_hit[i] = self.n;
                if (self.n - 1).is_multiple_of(self.params.stride as u64) {
                    for (k, c) in ctx.iter().enumerate() {
                        let m = &mut self.memory[k * MEMORY + i];
                        *m += (c - *m) * 0.1;
                    }
                }
            }
            _ => {
                if (self.n - 1).is_multiple_of(self.params.stride as u64) {
                    self.remember(&ctx);
                }
            }
        }

        // A value back at a ceiling (or floor) the series has reached again
        // and again is not novel whatever the shape of the approach: a
        // saturating series (CPU at 100 %, a sensor at its limit, a counter
        // at 0) clips its peaks, and each clipped shape looked new to the
        // context memory. The other statistics still judge the point; a new
        // extreme (beyond the old one by more than half a standard
        // deviation) is not discounted. NAB: 67.70 / 60.31 / 73.35 ->
        // 72.16 / 61.30 / 78.68 (most of it from a lower corpus threshold
        // once these false positives are gone).
        let tol = 0.5 * scale.max(floor);
        let at_ceiling = self.highest.at_known(value, tol);
        let at_floor = self.lowest.at_known(-value, tol);
        if at_ceiling || at_floor {
            zs[0] = 0.0;
        }
        // Novelty that no other statistic corroborates (none of them half
        // a standard deviation above its usual) counts for less: a jump
        // back up after a slow ramp down, a daily step of a square wave are
        // new shapes to the context memory but sit at usual levels, usual
        // spreads and usual values for the time of day, while real
        // anomalies usually move something else too. NAB: 72.16 / 61.30 /
        // 78.68 -> 73.19 / 62.98 / 79.61 (factor 0.6-0.85 at 0.5: 72.8-73.3).
        //
        // The same holds for the other three statistics, at a higher level:
        // a seasonal departure, level shift or spread change that neither
        // the novelty nor another statistic backs (none of them 0.9 σ
        // above its usual) counts 0.6. Alone, each is often high on normal
        // data (the spread of white noise or of a bursty counter): with
        // this, art_noisy's 7 false positives go, nyc_taxi's 8 drop to 1,
        // ec2_request_latency's 12 to 7; spread change alone accounts for
        // most of the gain. NAB: 73.19 / 62.98 / 79.61 -> 75.02 / 66.01 /
        // 80.83 (factor 0.3-0.7: 74.9-75.0; level 0.75-1.0: 73.9-75.0;
        // from 1.05 on, false positives keep falling but both of
        // rogue_agent_key_hold's windows are lost: 72.8).
        let before = zs;
        let uncorroborated = |i: usize, level: f64| (0..4).filter(|&j| j != i).all(|j| before[j] < level);
        if uncorroborated(0, CORROBORATION) {
            zs[0] *= UNCORROBORATED_NOVELTY;
        }
        for (i, z) in zs.iter_mut().enumerate().skip(1) {
            if uncorroborated(i, CORROBORATION_OTHERS) {
                *z *= UNCORROBORATED_OTHER;
            }
        }
        let surprisal = combined_surprisal(zs);
        if self.n <= self.params.warmup as u64 || nn_at.is_none() {
            self.last_score = 0.0;
            return Observation::quiet(lo, hi);
        }
        // Rarity over the history: how many points as unusual as this one
        // the series' history so far is expected to hold. An operator (or
        // NAB) watching a series for n points sees about n p points of tail
        // probability p; counting the rarity over the history makes a
        // threshold a bound on false detections over the series' life, so
        // that they grow with the logarithm of its length rather than with
        // it, and the same threshold means the same on a series of 2 000
        // points and one of 20 000. (Judged on the tail probability alone,
        // the longer series pay for more false detections.)
        let history = (self.n as f64).min(HISTORY_CAP);
        let log10_rarity = (history.ln() - surprisal) / std::f64::consts::LN_10;
        let score = ((SCORE_FLOOR - log10_rarity) / SCORE_DECADES).clamp(0.0, 1.0);
        self.last_score = score;
        // Gating that does not depend on where a threshold is later put: a
        // reported point raises the bar for the next `min_episode` points
        // to the square of its tail probability (twice its surprisal): a
        // further point of the same episode is reported only if it alone is
        // as unlikely as two independent points like the first. Whatever
        // the threshold, an episode crosses it about once. (Also requiring
        // the scores to have calmed down before lowering the bar scored
        // worse on NAB: a bar left up by a noisy stretch hides the next
        // anomaly.)
        let (level, age) = self.gate;
        let level = if age >= self.params.min_episode { 0.0 } else { level };
        let reported = score > 0.0 && surprisal > level;
        let gated = if reported { score } else { 0.0 };
        self.gate = if reported { (2.0 * surprisal, 0) } else { (level, age.saturating_add(1)) };
        let mut alarm = false;
        if self.in_episode {
            self.episode_len += 1;
            self.quiet_run = if score < self.params.release_score { self.quiet_run + 1 } else { 0 };
            if self.episode_len >= self.params.min_episode && self.quiet_run >= self.params.release_points {
                self.in_episode = false;
            }
        } else if score >= self.params.alarm_score && self.n > self.params.alarm_warmup as u64 {
            alarm = true;
            self.in_episode = true;
            self.episode_len = 0;
            self.quiet_run = 0;
        }
        // Severity, in decades of rarity: about where the combined z of 7,
        // 10 and 15 fell before scores were rarities (a history of ~10^4
        // points), so that runbooks' severity triggers keep their meaning.
        let severity = match log10_rarity {
            r if r > -8.0 => Severity::Low,
            r if r > -20.0 => Severity::Medium,
            r if r > -50.0 => Severity::High,
            _ => Severity::Critical,
        };
        Observation { score, gated_score: gated, alarm, severity, expected_low: lo, expected_high: hi }
    }

    /// The usual values at this time of day and week (before learning
    /// this point), then learns it. Profiles make a normal value at an
    /// unusual time (a missing daily peak) a context never seen before.
    fn seasonal(&mut self, ts: f64, value: f64) -> [f32; SEASONAL] {
        let day = ts.rem_euclid(86_400.0);
        let week = ts.rem_euclid(7.0 * 86_400.0);
        let d = ((day / 1800.0) as usize).min(DAY_BINS - 1);
        let w = ((week / 3600.0) as usize).min(WEEK_BINS - 1);
        let fallback = self.mean as f32;
        let pd = if self.day_profile[d].is_nan() { fallback } else { self.day_profile[d] };
        let pw = if self.week_profile[w].is_nan() { fallback } else { self.week_profile[w] };
        let v = value as f32;
        for (p, i) in [(&mut self.day_profile, d), (&mut self.week_profile, w)] {
            p[i] = if p[i].is_nan() { v } else { p[i] + (v - p[i]) * 0.05 };
        }
        [pd, pw]
    }

    /// Squared distance to the nearest remembered context and its slot
    /// (`None` while the memory is empty).
    fn nearest(&self, ctx: &[f32; DIM]) -> (f64, Option<usize>) {
        let len = self.mem_len;
        let mut d = [0f32; MEMORY];
        for (k, &c) in ctx.iter().enumerate() {
            let row = &self.memory[k * MEMORY..k * MEMORY + len];
            for (di, &m) in d[..len].iter_mut().zip(row) {
                let t = m - c;
                *di += t * t;
            }
        }
        let mut best = f32::INFINITY;
        let mut at = usize::MAX;
        for (i, &di) in d[..len].iter().enumerate() {
            if di < best {
                best = di;
                at = i;
            }
        }
        if at == usize::MAX {
            (0.0, None)
        } else {
            (best as f64, Some(at))
        }
    }

    fn remember(&mut self, ctx: &[f32; DIM]) {
        let slot = if self.mem_len < MEMORY {
            self.mem_len += 1;
            self.mem_len - 1
        } else {
            let mut oldest = 0;
            for i in 1..MEMORY {
                if self.mem_last_hit[i] < self.mem_last_hit[oldest] {
                    oldest = i;
                }
            }
            oldest
        };
        for (k, &c) in ctx.iter().enumerate() {
            self.memory[k * MEMORY + slot] = c;
        }
        self.mem_last_hit[slot] = self.n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_surprisal_matches_the_normal_tail() {
        // -ln P(Z >= z) at published values of the normal upper tail.
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.158_655_25),
            (3.0, 1.349_898e-3),
            (6.0, 9.865_876e-10),
            (10.0, 7.619_853e-24),
        ] {
            let s = gaussian_surprisal(z);
            assert!((s - -f64::ln(p)).abs() < 1e-6 * (1.0 + s), "z {z}: {s} vs {}", -f64::ln(p));
        }
    }

    #[test]
    fn the_combined_surprisal_is_the_tail_of_the_combination_under_the_model() {
        // Monte Carlo of C = sum of max(z, 0)^2 over four independent
        // standard normals, against the closed form, at a few levels.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut normal = move || {
            let mut u = || {
                seed ^= seed >> 12;
                seed ^= seed << 25;
                seed ^= seed >> 27;
                ((seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let (a, b) = (u(), u());
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        };
        let samples: Vec<f64> =
            (0..400_000).map(|_| (0..4).map(|_| normal().max(0.0).powi(2)).sum::<f64>()).collect();
        for c in [1.0f64, 4.0, 9.0, 16.0] {
            let observed = samples.iter().filter(|&&x| x >= c).count() as f64 / samples.len() as f64;
            let modelled = (-combined_surprisal([c.sqrt(), 0.0, 0.0, 0.0])).exp();
            // Within four binomial standard errors.
            let se = (modelled * (1.0 - modelled) / samples.len() as f64).sqrt();
            assert!(
                (observed - modelled).abs() < 4.0 * se,
                "c {c}: observed {observed}, modelled {modelled}"
            );
        }
        // Agreement counts: two statistics at z are rarer than one.
        assert!(combined_surprisal([3.0, 3.0, 0.0, 0.0]) > combined_surprisal([3.0, 0.0, 0.0, 0.0]) + 3.0);
        assert_eq!(combined_surprisal([-1.0, 0.0, -2.0, 0.0]), 0.0);
    }

    #[test]
    fn scores_are_decades_of_rarity() {
        assert_eq!(score_of_rarity(1e4), 0.0);
        assert_eq!(score_of_rarity(1.0), 0.25);
        assert_eq!(score_of_rarity(1e-4), 0.5);
        assert_eq!(score_of_rarity(1e-12), 1.0);
        assert_eq!(score_of_rarity(1e-30), 1.0);
        for s in [0.1, 0.375, 0.6, 0.9] {
            assert!((score_of_rarity(rarity_of_score(s)) - s).abs() < 1e-12);
        }
    }
}
