//! The Numenta Anomaly Benchmark's scoring, written from its published
//! method (NAB v1.1 `sweeper.py`, `runner.py`), pure: no files here.
//!
//! Per data file, every row after the probationary period (the first
//! `min(floor(0.15 n), 750)` rows) gets a weight as if it were a detection:
//!
//! - inside a labelled window `[left, right]` of width `w = right-left+1`:
//!   `tp * σ(-(right - i + 1)/w) / σ(-1)`, where `σ(p) = 2/(1+e^{5p}) - 1`
//!   (the scaled sigmoid; `-1` at `p ≥ 3`), so the first row of a window is
//!   worth exactly `tp` and later rows less;
//! - outside windows: `fp * σ(|i - right_prev| / (w_prev - 1))` relative to
//!   the closest preceding window, or `-fp` when no window precedes.
//!
//! A file's score at a threshold: each window counts the best weight among
//! its detections (rows with `anomaly_score >= threshold`) or `-fn` if it
//! has none, plus the sum of the weights of detections outside windows.
//! One threshold is chosen for the whole corpus and profile: the one that
//! maximizes the summed score (an exact sweep over every distinct score, as
//! NAB's sweeper does). The result is normalized so that the null detector
//! (no detections: `-fn` per scored window) gets 0 and the perfect one
//! (`tp` per labelled window) 100.

use std::collections::HashMap;

/// Weights of one application profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostMatrix {
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

/// A named scoring profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub costs: CostMatrix,
}

/// NAB's three profiles, as in its `config/profiles.json`.
pub fn standard_profiles() -> Vec<Profile> {
    let p = |name: &str, fp, fn_| Profile { name: name.to_string(), costs: CostMatrix { tp: 1.0, fp, fn_ } };
    vec![p("standard", 0.11, 1.0), p("reward_low_FP_rate", 0.22, 1.0), p("reward_low_FN_rate", 0.11, 2.0)]
}

/// Parses a NAB `profiles.json` text (profiles in file order).
pub fn parse_profiles(text: &str) -> Result<Vec<Profile>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid profiles json: {e}"))?;
    let obj = v.as_object().ok_or("profiles json: expected an object of profiles")?;
    let mut out = Vec::new();
    for (name, p) in obj {
        let cm = p.get("CostMatrix").ok_or_else(|| format!("profile `{name}`: missing `CostMatrix`"))?;
        let w = |k: &str| {
            cm.get(k)
                .and_then(|x| x.as_f64())
                .ok_or_else(|| format!("profile `{name}`: missing number `{k}`"))
        };
        out.push(Profile {
            name: name.clone(),
            costs: CostMatrix { tp: w("tpWeight")?, fp: w("fpWeight")?, fn_: w("fnWeight")? },
        });
    }
    // serde_json's map is sorted; keep NAB's customary order when present.
    let order = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];
    out.sort_by_key(|p| order.iter().position(|o| *o == p.name).unwrap_or(order.len()));
    Ok(out)
}

/// One data file's detector output and labels.
#[derive(Debug, Clone)]
pub struct FileResult {
    pub name: String,
    /// Row timestamps (seconds), in file order.
    pub timestamps: Vec<f64>,
    /// Anomaly score of each row, in [0, 1].
    pub scores: Vec<f64>,
    /// Labelled windows, inclusive `(start, end)` timestamps.
    pub windows: Vec<(f64, f64)>,
}

/// NAB's probationary length for a file of `n` rows.
pub fn probationary_length(n: usize) -> f64 {
    (0.15 * n as f64).floor().min(0.15 * 5000.0)
}

/// NAB's scaled sigmoid of a relative position in (or past) a window.
pub fn scaled_sigmoid(p: f64) -> f64 {
    if p >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * p).exp()) - 1.0
    }
}

/// Where a row lies for scoring.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Region {
    Probationary,
    Outside,
    /// Index into the corpus-wide list of scored windows.
    Window(usize),
}

#[derive(Debug, Clone, Copy)]
struct Point {
    score: f64,
    weight: f64,
    region: Region,
}

/// Row index ranges `[left, right]` of each window that holds rows.
fn window_ranges(ts: &[f64], windows: &[(f64, f64)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(a, b) in windows {
        let left = ts.partition_point(|&t| t < a);
        let right = ts.partition_point(|&t| t <= b);
        if right > left {
            out.push((left, right - 1));
        }
    }
    out.sort_unstable();
    out
}

/// Weights every row of one file; windows get ids from `next_window`.
fn sweep_file(f: &FileResult, c: CostMatrix, next_window: &mut usize) -> (Vec<Point>, Vec<usize>) {
    let n = f.timestamps.len().min(f.scores.len());
    let prob = probationary_length(n);
    let max_tp = scaled_sigmoid(-1.0);
    let ranges = window_ranges(&f.timestamps[..n], &f.windows);
    let mut points = Vec::with_capacity(n);
    let mut scored_windows = Vec::new();
    let mut w = 0; // next window to enter
    let mut prev: Option<(usize, usize)> = None; // (right, width) of the last window left
    let mut cur: Option<(usize, usize, usize)> = None; // (right, width, id)
    for i in 0..n {
        if cur.is_none() && w < ranges.len() && ranges[w].0 == i {
            let (l, r) = ranges[w];
            cur = Some((r, r - l + 1, *next_window));
            *next_window += 1;
            w += 1;
        }
        let (weight, region) = match cur {
            Some((r, width, id)) => {
                let pos = -((r - i + 1) as f64) / width as f64;
                (scaled_sigmoid(pos) * c.tp / max_tp, Region::Window(id))
            }
            None => {
                let pos = match prev {
                    Some((r, width)) if width > 1 => (i - r) as f64 / (width - 1) as f64,
                    _ => 3.0,
                };
                (scaled_sigmoid(pos) * c.fp, Region::Outside)
            }
        };
        let region = if (i as f64) < prob { Region::Probationary } else { region };
        if let Region::Window(id) = region {
            if scored_windows.last() != Some(&id) {
                scored_windows.push(id);
            }
        }
        points.push(Point { score: f.scores[i], weight, region });
        if let Some((r, width, _)) = cur {
            if i == r {
                prev = Some((r, width));
                cur = None;
            }
        }
    }
    (points, scored_windows)
}

/// The score of one profile over a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusScore {
    pub profile: String,
    /// The threshold chosen for the whole corpus.
    pub threshold: f64,
    /// Summed raw score at that threshold.
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    /// `100 (raw - null) / (perfect - null)`.
    pub normalized: f64,
    /// Per file: name, raw score, true-positive windows, false-positive rows.
    pub files: Vec<FileScore>,
}

/// One file's share of a corpus score at the chosen threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct FileScore {
    pub name: String,
    pub raw: f64,
    pub windows: usize,
    pub detected_windows: usize,
    pub false_positives: usize,
}

/// Scores a corpus under one profile with the threshold optimized over it.
pub fn score_corpus(files: &[FileResult], profile: &Profile) -> CorpusScore {
    let c = profile.costs;
    let mut next_window = 0;
    let mut per_file = Vec::with_capacity(files.len());
    let mut total_windows = 0usize;
    for f in files {
        let (pts, scored) = sweep_file(f, c, &mut next_window);
        total_windows += f.windows.len();
        per_file.push((pts, scored));
    }
    let scored_windows: usize = per_file.iter().map(|(_, s)| s.len()).sum();
    let null = -c.fn_ * scored_windows as f64;
    let perfect = c.tp * total_windows as f64;

    // Exact threshold sweep: lower the threshold through every distinct score.
    let mut all: Vec<Point> = per_file
        .iter()
        .flat_map(|(p, _)| p.iter().copied())
        .filter(|p| p.region != Region::Probationary)
        .collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best_in_window = vec![-c.fn_; next_window];
    let mut total = null;
    let (mut best_total, mut best_threshold) = (null, 1.1);
    let mut i = 0;
    while i < all.len() {
        let s = all[i].score;
        while i < all.len() && all[i].score == s {
            match all[i].region {
                Region::Window(id) => {
                    if all[i].weight > best_in_window[id] {
                        total += all[i].weight - best_in_window[id];
                        best_in_window[id] = all[i].weight;
                    }
                }
                _ => total += all[i].weight,
            }
            i += 1;
        }
        if total > best_total {
            best_total = total;
            best_threshold = s;
        }
    }

    let files_out = files
        .iter()
        .zip(&per_file)
        .map(|(f, (pts, scored))| file_score(&f.name, pts, scored, c, best_threshold))
        .collect::<Vec<_>>();
    let raw: f64 = files_out.iter().map(|f| f.raw).sum();
    let normalized = if perfect > null { 100.0 * (raw - null) / (perfect - null) } else { 100.0 };
    CorpusScore {
        profile: profile.name.clone(),
        threshold: best_threshold,
        raw,
        null,
        perfect,
        normalized,
        files: files_out,
    }
}

fn file_score(name: &str, pts: &[Point], scored: &[usize], c: CostMatrix, threshold: f64) -> FileScore {
    let mut best: HashMap<usize, f64> = scored.iter().map(|&w| (w, -c.fn_)).collect();
    let mut raw = 0.0;
    let mut fps = 0;
    for p in pts.iter().filter(|p| p.score >= threshold) {
        match p.region {
            Region::Probationary => {}
            Region::Outside => {
                raw += p.weight;
                fps += 1;
            }
            Region::Window(id) => {
                let b = best.get_mut(&id).expect("window ids come from this file");
                *b = b.max(p.weight);
            }
        }
    }
    let detected = best.values().filter(|&&v| v > -c.fn_).count();
    raw += best.values().sum::<f64>();
    FileScore {
        name: name.to_string(),
        raw,
        windows: scored.len(),
        detected_windows: detected,
        false_positives: fps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_profile() -> Profile {
        standard_profiles().remove(0)
    }

    /// A file of `n` rows one second apart with the given windows (row indices).
    fn file(n: usize, windows: &[(usize, usize)], scores: Vec<f64>) -> FileResult {
        FileResult {
            name: "f".into(),
            timestamps: (0..n).map(|i| i as f64).collect(),
            scores,
            windows: windows.iter().map(|&(a, b)| (a as f64, b as f64)).collect(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn scaled_sigmoid_matches_the_published_points() {
        assert!(close(scaled_sigmoid(-1.0), 0.9866142981514305));
        assert!(close(scaled_sigmoid(-0.5), 0.8482836399575129));
        assert!(close(scaled_sigmoid(0.0), 0.0));
        assert!(close(scaled_sigmoid(1.0), -0.9866142981514305));
        assert_eq!(scaled_sigmoid(3.0), -1.0);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probationary_length(100), 15.0);
        assert_eq!(probationary_length(4032), 604.0);
        assert_eq!(probationary_length(22695), 750.0);
    }

    #[test]
    fn null_detector_scores_zero_and_window_starts_score_100() {
        let windows = [(40, 49), (70, 79)];
        let null = file(100, &windows, vec![0.0; 100]);
        let s = score_corpus(&[null], &std_profile());
        assert!(close(s.normalized, 0.0), "{s:?}");
        let mut sc = vec![0.0; 100];
        sc[40] = 1.0;
        sc[70] = 1.0;
        for p in standard_profiles() {
            let s = score_corpus(&[file(100, &windows, sc.clone())], &p);
            assert!(close(s.normalized, 100.0), "{s:?}");
            assert_eq!(s.threshold, 1.0);
        }
    }

    #[test]
    fn hand_computed_case() {
        // 100 rows, probation 15; one window at rows 40..=49 (width 10).
        // Detections: row 45 (in window), row 20 (before any window: -fp),
        // row 52 (3 rows after the window's right edge 49: pos 3/9).
        let mut sc = vec![0.0; 100];
        sc[45] = 0.9;
        sc[20] = 0.9;
        sc[52] = 0.9;
        sc[5] = 1.0; // probationary: ignored
        let f = file(100, &[(40, 49)], sc);
        let p = std_profile();
        let tp = scaled_sigmoid(-(49.0 - 45.0 + 1.0) / 10.0) / scaled_sigmoid(-1.0);
        let fp_after = 0.11 * scaled_sigmoid(3.0 / 9.0);
        let expected = tp - 0.11 + fp_after;
        let s = score_corpus(std::slice::from_ref(&f), &p);
        // Detecting (tp ~0.93) beats the null's -1 despite the two false positives.
        assert_eq!(s.threshold, 0.9);
        assert!(close(s.raw, expected), "{} vs {expected}", s.raw);
        assert!(close(s.normalized, 100.0 * (expected + 1.0) / 2.0));
        assert_eq!(s.files[0].false_positives, 2);
        assert_eq!(s.files[0].detected_windows, 1);
    }

    #[test]
    fn threshold_is_shared_across_files() {
        // File a: its window's start scores 0.8. File b: a false alarm at 0.9.
        // A threshold of 0.8 gains a window (+2) and pays one fp (-0.11).
        let mut a = vec![0.0; 100];
        a[40] = 0.8;
        let mut b = vec![0.0; 100];
        b[60] = 0.9;
        let files = [file(100, &[(40, 49)], a), file(100, &[], b)];
        let s = score_corpus(&files, &std_profile());
        assert_eq!(s.threshold, 0.8);
        assert!(close(s.raw, 1.0 - 0.11));
        // Under reward_low_FN_rate a miss costs 2: same choice, different null.
        let s = score_corpus(&files, &standard_profiles()[2]);
        assert!(close(s.null, -2.0));
        assert!(close(s.normalized, 100.0 * (0.89 + 2.0) / 3.0));
    }

    #[test]
    fn a_detector_that_always_fires_scores_badly() {
        let f = file(1000, &[(400, 449)], vec![1.0; 1000]);
        let s = score_corpus(std::slice::from_ref(&f), &std_profile());
        // Firing everywhere costs far more than the window is worth: stay silent.
        assert_eq!(s.threshold, 1.1);
        assert!(close(s.normalized, 0.0));
    }

    #[test]
    fn windows_inside_probation_count_only_toward_perfect() {
        let f = file(100, &[(2, 5), (40, 49)], vec![0.0; 100]);
        let s = score_corpus(&[f], &std_profile());
        assert!(close(s.null, -1.0));
        assert!(close(s.perfect, 2.0));
    }

    #[test]
    fn profiles_json_parses() {
        let t = r#"{"standard":{"CostMatrix":{"tpWeight":1.0,"fnWeight":1.0,"fpWeight":0.11,"tnWeight":1.0}},
                    "reward_low_FN_rate":{"CostMatrix":{"tpWeight":1.0,"fnWeight":2.0,"fpWeight":0.11,"tnWeight":1.0}}}"#;
        let p = parse_profiles(t).unwrap();
        assert_eq!(p[0], standard_profiles()[0]);
        assert_eq!(p[1], standard_profiles()[2]);
        assert!(parse_profiles("{\"x\":{}}").unwrap_err().contains("CostMatrix"));
    }
}
