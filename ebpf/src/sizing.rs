//! Decisions about the syscall statistics that depend only on numbers: when
//! calls are timed, and how large the per-CPU maps may grow. Kept apart from
//! the sensor so they are tested on every platform.

use crate::wire::{SysRow, SysVal, SYSCALL_NRS};
use std::time::Duration;

/// When calls are timed for the latency histograms. Timing needs a second
/// program on every syscall (its entry); attaching that program only during
/// short windows at random times keeps its cost off the observed services
/// the rest of the time. Calls that start in a window are timed, however
/// long they last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyTiming {
    /// Every call is timed (`syscall_latency_sample: 1`).
    Always,
    /// `window` out of every `period`, at a random place in each period.
    Windows { window: Duration, period: Duration },
}

/// Shortest window: below this, timer slack would make the timed share much
/// larger than asked.
pub const MIN_TIMING_WINDOW: Duration = Duration::from_millis(10);

impl LatencyTiming {
    /// Timing for 1/`sample` of the time: one window a second, spread over
    /// the statistics interval (62.5 ms for 16), or one per `interval` when
    /// that is shorter, so every interval has latencies; windows are never
    /// shorter than [`MIN_TIMING_WINDOW`] (periods grow instead).
    pub fn for_sample(sample: u32, interval: Duration) -> LatencyTiming {
        if sample <= 1 {
            return LatencyTiming::Always;
        }
        let window = (interval.min(Duration::from_secs(1)) / sample).max(MIN_TIMING_WINDOW);
        LatencyTiming::Windows { window, period: window * sample }
    }

    /// Where the window starts in a period, from a random draw: anywhere
    /// that leaves room for the whole window.
    pub fn offset(window: Duration, period: Duration, draw: u64) -> Duration {
        let room = period.saturating_sub(window).as_nanos() as u64;
        Duration::from_nanos(if room == 0 { 0 } else { draw % (room + 1) })
    }
}

/// Per-CPU memory allowed for the rows of per-cgroup syscall counts, summed
/// over CPUs. Each row takes `SYSCALL_NRS * 16` bytes on every CPU.
pub const ROW_BUDGET_BYTES: u64 = 16 << 20;
/// Upper bound on rows: more managed cgroups than this count in the hash.
pub const MAX_ROWS: u32 = 64;
/// Per-CPU memory allowed for the syscall statistics hash (preallocated: an
/// LRU hash always is), summed over CPUs.
pub const HASH_BUDGET_BYTES: u64 = 64 << 20;
/// Entries of the hash on hosts where the budget does not bind.
pub const MAX_HASH_ENTRIES: u32 = 16_384;
/// Fewest entries of the hash, whatever the number of CPUs.
pub const MIN_HASH_ENTRIES: u32 = 1_024;

/// Rows of per-cgroup counts for a host with `cpus` possible CPUs: as many as
/// fit in [`ROW_BUDGET_BYTES`], at least 1, at most [`MAX_ROWS`].
pub fn syscall_rows(cpus: u32) -> u32 {
    let per_row = u64::from(SYSCALL_NRS) * std::mem::size_of::<SysRow>() as u64 * u64::from(cpus.max(1));
    (ROW_BUDGET_BYTES / per_row).clamp(1, u64::from(MAX_ROWS)) as u32
}

/// Entries of the syscall statistics hash for `cpus` possible CPUs.
pub fn syscall_hash_entries(cpus: u32) -> u32 {
    let per_entry = std::mem::size_of::<SysVal>() as u64 * u64::from(cpus.max(1));
    (HASH_BUDGET_BYTES / per_entry).clamp(u64::from(MIN_HASH_ENTRIES), u64::from(MAX_HASH_ENTRIES)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_windows_cover_one_nth_of_the_time_in_every_interval() {
        let ten = Duration::from_secs(10);
        assert_eq!(LatencyTiming::for_sample(0, ten), LatencyTiming::Always);
        assert_eq!(LatencyTiming::for_sample(1, ten), LatencyTiming::Always);
        assert_eq!(
            LatencyTiming::for_sample(16, ten),
            LatencyTiming::Windows { window: Duration::from_micros(62_500), period: Duration::from_secs(1) }
        );
        // Intervals shorter than a second get one window each.
        assert_eq!(
            LatencyTiming::for_sample(4, Duration::from_millis(200)),
            LatencyTiming::Windows { window: Duration::from_millis(50), period: Duration::from_millis(200) }
        );
        // Past 100, windows stay 10 ms and periods grow.
        assert_eq!(
            LatencyTiming::for_sample(1000, ten),
            LatencyTiming::Windows { window: MIN_TIMING_WINDOW, period: ten }
        );
        for interval in [Duration::from_millis(200), ten, Duration::from_secs(60)] {
            for sample in [2, 3, 7, 16, 99, 100, 101, 65_536] {
                let LatencyTiming::Windows { window, period } = LatencyTiming::for_sample(sample, interval)
                else {
                    panic!("{sample}")
                };
                let share = window.as_secs_f64() / period.as_secs_f64();
                assert!((share - 1.0 / f64::from(sample)).abs() < 1e-6, "{sample}: {share}");
                if window > MIN_TIMING_WINDOW {
                    assert!(period <= interval, "{sample} {interval:?}: {period:?}");
                }
            }
        }
    }

    #[test]
    fn window_offsets_keep_the_window_inside_its_period() {
        let (w, p) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(LatencyTiming::offset(w, p, 0), Duration::ZERO);
        assert_eq!(LatencyTiming::offset(w, p, 900_000_000), Duration::from_millis(900));
        for draw in [1, 12_345, u64::MAX, 900_000_001] {
            assert!(LatencyTiming::offset(w, p, draw) + w <= p, "{draw}");
        }
        assert_eq!(LatencyTiming::offset(p, p, 77), Duration::ZERO);
    }

    #[test]
    fn per_cpu_maps_shrink_with_the_number_of_cpus() {
        assert_eq!(syscall_rows(1), MAX_ROWS);
        assert_eq!(syscall_rows(2), MAX_ROWS);
        // 8 KiB per row per CPU: 16 MiB holds 32 rows on 64 CPUs.
        assert_eq!(syscall_rows(64), 32);
        assert_eq!(syscall_rows(4096), 1);
        assert_eq!(syscall_hash_entries(2), MAX_HASH_ENTRIES);
        // 272 bytes per entry per CPU.
        assert_eq!(syscall_hash_entries(64), (64u32 << 20) / (272 * 64));
        assert_eq!(syscall_hash_entries(100_000), MIN_HASH_ENTRIES);
        for cpus in [1, 2, 8, 64, 256] {
            let rows = u64::from(syscall_rows(cpus)) * 8192 * u64::from(cpus);
            assert!(rows <= ROW_BUDGET_BYTES.max(8192 * u64::from(cpus)), "{cpus}");
        }
    }
}
