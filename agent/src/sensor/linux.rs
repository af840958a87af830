//! The eBPF sensor behind the pipeline's `SensorControl`.

use super::{SensorError, StartedSensor};
use crate::attribution::FilterUpdate;
use crate::config::LoadedConfig;
use crate::pipeline::SensorControl;
use custos_ebpf::{EbpfSensor, Scope, SensorOptions};
use custos_event::LossCounters;
use tokio::sync::mpsc;

/// The eBPF sensor as the pipeline drives it.
struct Ebpf(EbpfSensor);

impl SensorControl for Ebpf {
    fn apply(&mut self, update: &FilterUpdate) {
        // A failed map update leaves the filter as it was: events of that
        // cgroup or pid are missed (or kept) until the next refresh
        // retries, which is logged, never fatal.
        let set_scope = |s: &EbpfSensor, everything: bool| {
            let scope = if everything { Scope::Everything } else { Scope::Managed };
            if let Err(e) = s.set_scope(scope) {
                tracing::warn!(everything, error = %e, "Could not switch the kernel filter's scope.");
            }
        };
        // Widening comes first and narrowing last, so that a switch
        // never leaves a moment where a managed service is filtered.
        if update.scope_everything == Some(true) {
            set_scope(&self.0, true);
        }
        for id in &update.remove_cgroups {
            if let Err(e) = self.0.unmanage_cgroup(*id) {
                tracing::warn!(cgroup_id = id, error = %e, "Could not remove a cgroup from the kernel filter.");
            }
        }
        for id in &update.add_cgroups {
            if let Err(e) = self.0.manage_cgroup(*id) {
                tracing::warn!(cgroup_id = id, error = %e, "Could not add a cgroup to the kernel filter.");
            }
        }
        for pid in &update.track_pids {
            if let Err(e) = self.0.track_pid(*pid) {
                tracing::warn!(pid, error = %e, "Could not track a process in the kernel filter.");
            }
        }
        for pid in &update.untrack_pids {
            if let Err(e) = self.0.untrack_pid(*pid) {
                tracing::warn!(pid, error = %e, "Could not untrack a process in the kernel filter.");
            }
        }
        if update.scope_everything == Some(false) {
            set_scope(&self.0, false);
        }
    }

    fn loss(&self) -> LossCounters {
        self.0.loss()
    }

    fn emit_all_execs(&mut self, on: bool) {
        if let Err(e) = self.0.emit_all_execs(on) {
            tracing::warn!(error = %e, "Could not switch exec reporting; exe selectors may miss processes.");
        }
    }
}

pub async fn start(config: &LoadedConfig, capacity: usize) -> Result<StartedSensor, SensorError> {
    let s = &config.raw.sensors;
    let opts = SensorOptions {
        process: s.process,
        tcp: s.tcp,
        syscalls: s.syscalls,
        syscall_interval: s.syscall_interval.0,
        syscall_latency_sample: s.syscall_latency_sample.value,
        ring_buffer_bytes: u32::try_from(s.ring_buffer.0).unwrap_or(u32::MAX),
        argv_max_args: *s.argv_max_args,
        scope: if config.manages_everything() { Scope::Everything } else { Scope::Managed },
    };
    let (tx, rx) = mpsc::channel(capacity);
    let sensor = EbpfSensor::start(opts, tx).map_err(|e| SensorError::Kernel(e.to_string()))?;
    Ok(StartedSensor { control: Box::new(Ebpf(sensor)), rx, task: None, replay_stats: None })
}
