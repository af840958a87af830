//! Syscall statistics: the kernel keeps running totals per (cgroup, syscall)
//! in a per-CPU map; user space sums the CPUs, diffs against the previous
//! reading and emits one `syscall_stats` event per cgroup per interval.

use crate::syscall_names::syscall_name;
use crate::wire::{SysKey, SysVal, LATENCY_BUCKETS};
use custos_event::{Event, EventBody, SyscallStat, SyscallStats};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Sum of the per-CPU values of one key.
pub fn sum_cpus<'a>(values: impl IntoIterator<Item = &'a SysVal>) -> SysVal {
    let mut total = SysVal::default();
    for v in values {
        total.count += v.count;
        total.errors += v.errors;
        for (t, b) in total.buckets.iter_mut().zip(v.buckets.iter()) {
            *t += b;
        }
    }
    total
}

/// Remembers the previous totals to turn them into per-interval counts.
#[derive(Debug, Default)]
pub struct StatsDiffer {
    previous: HashMap<SysKey, SysVal>,
}

impl StatsDiffer {
    /// Events for the calls made since the last call, one per cgroup with
    /// activity, each syscall sorted by count (most first).
    pub fn diff(
        &mut self,
        current: HashMap<SysKey, SysVal>,
        interval: Duration,
        ts: SystemTime,
    ) -> Vec<Event> {
        let mut per_cgroup: HashMap<u64, Vec<SyscallStat>> = HashMap::new();
        for (key, now) in &current {
            let delta = match self.previous.get(key) {
                // A total that went down was evicted (LRU) and started over:
                // everything in it is new.
                Some(prev) if prev.count <= now.count => delta(prev, now),
                _ => *now,
            };
            if delta.count == 0 {
                continue;
            }
            let mut hist: Vec<u64> = delta.buckets.to_vec();
            while hist.last() == Some(&0) {
                hist.pop();
            }
            let name =
                syscall_name(key.nr).map(str::to_string).unwrap_or_else(|| format!("syscall_{}", key.nr));
            per_cgroup.entry(key.cgroup_id).or_default().push(SyscallStat {
                name,
                count: delta.count,
                errors: delta.errors,
                p50_ns: SyscallStat::quantile_from_log2(&hist, 0.5),
                p99_ns: SyscallStat::quantile_from_log2(&hist, 0.99),
                latency_log2: hist,
            });
        }
        self.previous = current;
        let mut events: Vec<Event> = per_cgroup
            .into_iter()
            .map(|(cgroup_id, mut syscalls)| {
                syscalls.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
                let mut e = Event::new(
                    ts,
                    EventBody::SyscallStats(SyscallStats {
                        interval_ns: interval.as_nanos() as u64,
                        syscalls,
                    }),
                );
                e.cgroup_id = cgroup_id;
                e
            })
            .collect();
        events.sort_by_key(|e| e.cgroup_id);
        events
    }
}

fn delta(prev: &SysVal, now: &SysVal) -> SysVal {
    let mut d = SysVal {
        count: now.count - prev.count,
        errors: now.errors.saturating_sub(prev.errors),
        buckets: [0; LATENCY_BUCKETS],
    };
    for i in 0..LATENCY_BUCKETS {
        d.buckets[i] = now.buckets[i].saturating_sub(prev.buckets[i]);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(count: u64, errors: u64, bucket: usize) -> SysVal {
        let mut v = SysVal { count, errors, ..Default::default() };
        v.buckets[bucket] = count;
        v
    }

    fn key(cgroup_id: u64, nr: u32) -> SysKey {
        SysKey { cgroup_id, nr, _pad0: 0 }
    }

    #[test]
    fn sums_cpus() {
        let s = sum_cpus(&[val(2, 1, 3), val(5, 0, 3), val(1, 1, 10)]);
        assert_eq!((s.count, s.errors, s.buckets[3], s.buckets[10]), (8, 2, 7, 1));
    }

    #[test]
    fn diffs_between_readings() {
        let mut d = StatsDiffer::default();
        let ts = SystemTime::UNIX_EPOCH;
        let first = d.diff(
            HashMap::from([(key(7, 110), val(10, 0, 8)), (key(9, 0), val(4, 4, 12))]),
            Duration::from_secs(1),
            ts,
        );
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].cgroup_id, 7);
        let EventBody::SyscallStats(s) = &first[0].body else { panic!() };
        assert_eq!(s.syscalls[0].name, "getppid");
        assert_eq!(s.syscalls[0].count, 10);
        assert_eq!(s.syscalls[0].latency_log2.len(), 9);
        assert!(s.syscalls[0].p50_ns >= 256 && s.syscalls[0].p50_ns < 512);
        let EventBody::SyscallStats(s) = &first[1].body else { panic!() };
        assert_eq!((s.syscalls[0].name.as_str(), s.syscalls[0].errors), ("read", 4));

        // cgroup 9 idle, cgroup 7 made 5 more calls; an unknown nr is named by number.
        let second = d.diff(
            HashMap::from([
                (key(7, 110), val(15, 0, 8)),
                (key(9, 0), val(4, 4, 12)),
                (key(7, 999), val(1, 0, 0)),
            ]),
            Duration::from_secs(1),
            ts,
        );
        assert_eq!(second.len(), 1);
        let EventBody::SyscallStats(s) = &second[0].body else { panic!() };
        assert_eq!(s.syscalls.len(), 2);
        assert_eq!((s.syscalls[0].name.as_str(), s.syscalls[0].count), ("getppid", 5));
        assert_eq!(s.syscalls[1].name, "syscall_999");
        assert_eq!(s.interval_ns, 1_000_000_000);

        // An evicted and recreated entry counts from zero.
        let third = d.diff(HashMap::from([(key(7, 110), val(3, 0, 8))]), Duration::from_secs(1), ts);
        let EventBody::SyscallStats(s) = &third[0].body else { panic!() };
        assert_eq!(s.syscalls[0].count, 3);
    }
}
