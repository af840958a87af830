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
//!
//! That threshold is chosen on the very files it is scored on: an
//! in-sample score. [`cross_validate`] measures what a fixed threshold does
//! on series of a kind it was not chosen on: each category is scored at the
//! threshold chosen on the others.

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

/// Every file of a corpus weighted for one profile: the rows of each file
/// (probation marked) and the windows each file scores, with corpus-wide
/// window ids.
struct Swept {
    files: Vec<(Vec<Point>, Vec<usize>)>,
    windows: usize,
}

fn sweep_corpus(files: &[&FileResult], c: CostMatrix) -> Swept {
    let mut windows = 0;
    let files = files.iter().map(|f| sweep_file(f, c, &mut windows)).collect();
    Swept { files, windows }
}

/// The threshold that maximizes the summed score of a swept corpus: an
/// exact sweep that lowers the threshold through every distinct score. Of
/// equally good thresholds the highest is kept; 1.1 (above every score)
/// when detecting nothing is best.
fn best_threshold(swept: &Swept, c: CostMatrix) -> f64 {
    let null = -c.fn_ * swept.files.iter().map(|(_, s)| s.len()).sum::<usize>() as f64;
    let mut all: Vec<Point> = swept
        .files
        .iter()
        .flat_map(|(p, _)| p.iter().copied())
        .filter(|p| p.region != Region::Probationary)
        .collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best_in_window = vec![-c.fn_; swept.windows];
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
    best_threshold
}

/// Scores swept files at one threshold.
fn score_swept(files: &[&FileResult], swept: &Swept, profile: &Profile, threshold: f64) -> CorpusScore {
    let c = profile.costs;
    let files_out: Vec<FileScore> = files
        .iter()
        .zip(&swept.files)
        .map(|(f, (pts, scored))| file_score(&f.name, pts, scored, c, threshold))
        .collect();
    let raw: f64 = files_out.iter().map(|f| f.raw).sum();
    let null = -c.fn_ * files_out.iter().map(|f| f.windows).sum::<usize>() as f64;
    let perfect = c.tp * files.iter().map(|f| f.windows.len()).sum::<usize>() as f64;
    CorpusScore {
        profile: profile.name.clone(),
        threshold,
        raw,
        null,
        perfect,
        normalized: normalized(raw, null, perfect),
        files: files_out,
    }
}

/// `100 (raw - null) / (perfect - null)`; 100 for a corpus with nothing to
/// find (there the null detector is already perfect).
fn normalized(raw: f64, null: f64, perfect: f64) -> f64 {
    if perfect > null {
        100.0 * (raw - null) / (perfect - null)
    } else {
        100.0
    }
}

/// Scores a corpus under one profile with the threshold optimized over it
/// (NAB's protocol: in-sample, the threshold is chosen on the files scored).
pub fn score_corpus(files: &[FileResult], profile: &Profile) -> CorpusScore {
    let files: Vec<&FileResult> = files.iter().collect();
    let swept = sweep_corpus(&files, profile.costs);
    let threshold = best_threshold(&swept, profile.costs);
    score_swept(&files, &swept, profile, threshold)
}

/// Scores a corpus under one profile at a given threshold.
pub fn score_at(files: &[FileResult], profile: &Profile, threshold: f64) -> CorpusScore {
    let files: Vec<&FileResult> = files.iter().collect();
    let swept = sweep_corpus(&files, profile.costs);
    score_swept(&files, &swept, profile, threshold)
}

/// The category of a corpus file: the directory part of its name
/// (`realTraffic/speed_7578.csv` -> `realTraffic`), empty for a bare name.
pub fn category(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// One held-out category of a cross-validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub held_out: String,
    /// The threshold chosen on the other categories.
    pub threshold: f64,
    /// The held-out files scored at that threshold.
    pub score: CorpusScore,
}

/// A cross-validated corpus score for one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossValidated {
    pub profile: String,
    /// In category order; every file is in exactly one fold.
    pub folds: Vec<Fold>,
    /// Summed over the folds: each file's raw score at the threshold chosen
    /// without it, and the null and perfect scores of the whole corpus.
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    pub normalized: f64,
}

/// Leave-one-category-out cross-validation: for each category in turn, the
/// threshold is chosen (as [`score_corpus`] chooses it) on the files of
/// every other category, and the held-out category's files are scored at
/// it. The held-out raw scores are summed and normalized against the whole
/// corpus' null and perfect scores, so the result is on NAB's scale and
/// equals the in-sample score when every fold picks the corpus-wide
/// threshold. Nothing but the threshold is chosen with the labels.
///
/// The in-sample score tells how well the best single threshold separates
/// these files; this one tells what a threshold fixed beforehand does on
/// series of a kind it was not chosen on, which is what an operator gets.
/// With a single category there is nothing to choose on: its threshold is
/// 1.1 (detect nothing).
pub fn cross_validate(files: &[FileResult], profile: &Profile) -> CrossValidated {
    let mut categories: Vec<&str> = files.iter().map(|f| category(&f.name)).collect();
    categories.sort_unstable();
    categories.dedup();
    let c = profile.costs;
    let mut folds = Vec::with_capacity(categories.len());
    for held_out in categories {
        let (test, train): (Vec<&FileResult>, Vec<&FileResult>) =
            files.iter().partition(|f| category(&f.name) == held_out);
        let threshold = best_threshold(&sweep_corpus(&train, c), c);
        let swept = sweep_corpus(&test, c);
        let score = score_swept(&test, &swept, profile, threshold);
        folds.push(Fold { held_out: held_out.to_string(), threshold, score });
    }
    let raw = folds.iter().map(|f| f.score.raw).sum();
    let null = folds.iter().map(|f| f.score.null).sum();
    let perfect = folds.iter().map(|f| f.score.perfect).sum();
    CrossValidated {
        profile: profile.name.clone(),
        folds,
        raw,
        null,
        perfect,
        normalized: normalized(raw, null, perfect),
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

    /// A file named `name` (`category/file`) of 100 rows with one window at
    /// rows 40..=49 (when `window`) and the given (row, score) detections.
    fn named(name: &str, window: bool, detections: &[(usize, f64)]) -> FileResult {
        let mut sc = vec![0.0; 100];
        for &(i, s) in detections {
            sc[i] = s;
        }
        let windows: &[(usize, usize)] = if window { &[(40, 49)] } else { &[] };
        FileResult { name: name.into(), ..file(100, windows, sc) }
    }

    #[test]
    fn category_is_the_directory_of_the_name() {
        assert_eq!(category("realTraffic/speed_7578.csv"), "realTraffic");
        assert_eq!(category("a/b/c.csv"), "a/b");
        assert_eq!(category("bare.csv"), "");
    }

    #[test]
    fn each_category_is_scored_at_the_threshold_chosen_on_the_others() {
        // Category a: its window starts at 0.8, a false alarm at 0.5 (21 rows
        // after the window: a full -fp). Category b: its window starts at 0.5.
        let files = [named("a/1.csv", true, &[(40, 0.8), (70, 0.5)]), named("b/1.csv", true, &[(40, 0.5)])];
        let p = std_profile();
        let fp = 0.11 * scaled_sigmoid(21.0 / 9.0);
        // In-sample: 0.5 catches both windows for one false alarm.
        let s = score_corpus(&files, &p);
        assert_eq!(s.threshold, 0.5);
        assert!(close(s.raw, 2.0 + fp));
        // Held out, a is scored at b's choice (0.5: both its detections),
        // b at a's (0.8, which a prefers to paying for its false alarm):
        // b's window is missed.
        let cv = cross_validate(&files, &p);
        assert_eq!(cv.folds.iter().map(|f| f.held_out.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(cv.folds[0].threshold, 0.5);
        assert_eq!(cv.folds[1].threshold, 0.8);
        assert!(close(cv.folds[0].score.raw, 1.0 + fp));
        assert!(close(cv.folds[1].score.raw, -1.0));
        assert_eq!(cv.folds[1].score.files[0].detected_windows, 0);
        assert!(close(cv.raw, fp));
        assert!(close(cv.null, -2.0) && close(cv.perfect, 2.0));
        assert!(close(cv.normalized, 100.0 * (fp + 2.0) / 4.0));
        assert!(cv.normalized < s.normalized);
    }

    #[test]
    fn a_category_without_windows_is_scored_on_its_false_alarms() {
        // Held out, the quiet category pays for its false alarm at the
        // threshold the other chose; the labelled one, with only the quiet
        // one to choose on, detects nothing (the best there is 1.1).
        let files = [named("a/1.csv", true, &[(40, 0.9)]), named("quiet/1.csv", false, &[(50, 0.9)])];
        let p = std_profile();
        assert_eq!(score_corpus(&files, &p).threshold, 0.9);
        let cv = cross_validate(&files, &p);
        assert_eq!(cv.folds[0].threshold, 1.1);
        assert_eq!(cv.folds[1].threshold, 0.9);
        assert!(close(cv.folds[0].score.raw, -1.0));
        assert!(close(cv.folds[1].score.raw, -0.11));
        assert_eq!(cv.folds[1].score.files[0].false_positives, 1);
        assert!(close(cv.folds[1].score.null, 0.0) && close(cv.folds[1].score.perfect, 0.0));
        assert!(close(cv.normalized, 100.0 * (-1.11 + 1.0) / 2.0));
    }

    #[test]
    fn categories_that_agree_cross_validate_to_the_in_sample_score() {
        let files = [
            // Every window starts at 0.7, every false alarm is below it.
            named("a/1.csv", true, &[(40, 0.7), (20, 0.3)]),
            named("a/2.csv", true, &[(41, 0.7)]),
            named("b/1.csv", true, &[(40, 0.7), (60, 0.4)]),
            named("c/1.csv", false, &[(60, 0.2)]),
        ];
        for p in standard_profiles() {
            let s = score_corpus(&files, &p);
            let cv = cross_validate(&files, &p);
            assert!(cv.folds.iter().all(|f| f.threshold == s.threshold), "{cv:?}");
            assert!(close(cv.normalized, s.normalized), "{} vs {}", cv.normalized, s.normalized);
            // Every file is held out exactly once.
            let mut held: Vec<_> =
                cv.folds.iter().flat_map(|f| f.score.files.iter().map(|x| &x.name)).collect();
            held.sort();
            assert_eq!(held, ["a/1.csv", "a/2.csv", "b/1.csv", "c/1.csv"]);
        }
    }

    #[test]
    fn one_category_has_nothing_to_choose_on() {
        let files = [named("a/1.csv", true, &[(40, 0.8)]), named("a/2.csv", true, &[(40, 0.8)])];
        let cv = cross_validate(&files, &std_profile());
        assert_eq!(cv.folds.len(), 1);
        assert_eq!(cv.folds[0].threshold, 1.1);
        assert!(close(cv.normalized, 0.0));
        assert!(close(score_at(&files, &std_profile(), 0.8).normalized, 100.0));
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
