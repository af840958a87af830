//! Syscall statistics in user space: which managed cgroup counts in which
//! row of the kernel's per-CPU array, and the periodic reading of rows and
//! hash into `syscall_stats` events.

use super::{lock, send, EbpfSensor, Shared};
use crate::stats::{self, StatsDiffer};
use crate::wire::{self, SysKey, SysRow, SysVal};
use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use custos_event::Event;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// Which managed cgroup counts its syscalls in which row of the kernel's
/// `syscall_rows` array; cgroups beyond the rows count in the hash.
pub(super) struct Slots {
    by_cgroup: HashMap<u64, u32>,
    /// Rows of cgroups no longer managed, read once more (their last
    /// interval's calls) before they are free.
    retiring: HashMap<u64, u32>,
    free: Vec<u32>,
}

impl Slots {
    pub(super) fn new(rows: u32) -> Slots {
        Slots { by_cgroup: HashMap::new(), retiring: HashMap::new(), free: (0..rows).rev().collect() }
    }

    /// A cgroup is no longer managed: its row is read once more (its last
    /// interval's calls) before it is free.
    pub(super) fn retire(&mut self, cgroup_id: u64) {
        if let Some(slot) = self.by_cgroup.remove(&cgroup_id) {
            self.retiring.insert(cgroup_id, slot);
        }
    }
}

impl EbpfSensor {
    /// The cgroup's row of syscall counts + 1, zeroed when newly taken (a
    /// row is reused after its cgroup left); 0 when no row is free.
    pub(super) fn slot_for(&self, id: u64) -> u32 {
        let Some(rows) = &self.shared.syscall_rows else { return 0 };
        let mut slots = lock(&self.shared.slots);
        if let Some(slot) = slots.by_cgroup.get(&id) {
            return slot + 1;
        }
        // Managed again before its last reading: its totals go on.
        if let Some(slot) = slots.retiring.remove(&id) {
            slots.by_cgroup.insert(id, slot);
            return slot + 1;
        }
        let Some(slot) = slots.free.pop() else { return 0 };
        let zeroed = {
            let mut rows = lock(rows);
            (0..wire::SYSCALL_NRS).all(|nr| {
                PerCpuValues::try_from(vec![SysRow::default(); self.shared.cpus])
                    .is_ok_and(|zeros| rows.set(slot * wire::SYSCALL_NRS + nr, zeros, 0).is_ok())
            })
        };
        if !zeroed {
            warn!(cgroup_id = id, "Cannot clear a row of syscall counts; the cgroup counts in the hash.");
            slots.free.push(slot);
            return 0;
        }
        slots.by_cgroup.insert(id, slot);
        slot + 1
    }
}

pub(super) async fn read_syscall_stats(
    map: PerCpuHashMap<MapData, SysKey, SysVal>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Event>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut differ = StatsDiffer::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut last_read = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let mut snapshot = HashMap::new();
                for entry in map.iter() {
                    match entry {
                        Ok((key, per_cpu)) => {
                            snapshot.insert(key, stats::sum_cpus(per_cpu.iter()));
                        }
                        // Entries can vanish (LRU) while iterating.
                        Err(e) => debug!(error = %e, "Skipped a syscall statistics entry."),
                    }
                }
                add_row_counts(&shared, &mut snapshot);
                // The real length of the interval: ticks can be late.
                let now = Instant::now();
                let elapsed = now - std::mem::replace(&mut last_read, now);
                let events = differ.diff(snapshot, elapsed, SystemTime::now());
                // The first reading is the baseline: counts from before the
                // interval started are not reported.
                if std::mem::take(&mut first) {
                    continue;
                }
                for e in events {
                    if !send(&shared, &tx, e) {
                        return;
                    }
                }
            }
        }
    }
}

/// Adds the counts of slotted cgroups (kept in the per-CPU rows, not in the
/// hash, which holds only their latency histograms) to a reading of the hash.
fn add_row_counts(shared: &Shared, snapshot: &mut HashMap<SysKey, SysVal>) {
    let Some(rows) = &shared.syscall_rows else { return };
    let (slotted, retired): (Vec<(u64, u32)>, Vec<u64>) = {
        let slots = lock(&shared.slots);
        let slotted = slots.by_cgroup.iter().chain(&slots.retiring).map(|(c, s)| (*c, *s)).collect();
        (slotted, slots.retiring.keys().copied().collect())
    };
    {
        let rows = lock(rows);
        for &(cgroup_id, slot) in &slotted {
            for nr in 0..wire::SYSCALL_NRS {
                let Ok(per_cpu) = rows.get(&(slot * wire::SYSCALL_NRS + nr), 0) else { continue };
                let (count, errors) = per_cpu.iter().fold((0, 0), |(c, e), r| (c + r.count, e + r.errors));
                if count > 0 {
                    let v = snapshot.entry(SysKey { cgroup_id, nr, _pad0: 0 }).or_default();
                    v.count += count;
                    v.errors += errors;
                }
            }
        }
    }
    // Read for the last time: free for another cgroup (unless managed again
    // in between, which took the row back).
    let mut slots = lock(&shared.slots);
    for id in retired {
        if let Some(slot) = slots.retiring.remove(&id) {
            slots.free.push(slot);
        }
    }
}
