//! The kernel sensor of this platform behind the pipeline's `SensorControl`.

use crate::config::LoadedConfig;
use crate::run::StartedSensor;
use crate::sensor::SensorError;

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use crate::attribution::FilterUpdate;
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
            argv_max_args: s.argv_max_args,
            scope: if config.manages_everything() { Scope::Everything } else { Scope::Managed },
        };
        let (tx, rx) = mpsc::channel(capacity);
        let sensor = EbpfSensor::start(opts, tx).map_err(|e| SensorError::Kernel(e.to_string()))?;
        Ok(StartedSensor { control: Box::new(Ebpf(sensor)), rx, task: None, replay_stats: None })
    }
}

/// The Windows ETW sensor (public so that the type-check build on Linux,
/// where nothing calls it, still checks it).
#[cfg(any(windows, custos_windows_typecheck))]
pub mod etw {
    use super::*;
    use crate::attribution::FilterUpdate;
    use crate::pipeline::SensorControl;
    use crate::platform::windows::scm::ScmServiceManager;
    use crate::platform::windows::sensor::{start_sensor, WindowsSensor};
    use custos_event::LossCounters;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// The ETW sensor: it scopes by service process tree itself (events
    /// arrive attributed), so there is no kernel filter to drive.
    pub struct Etw(WindowsSensor);

    impl SensorControl for Etw {
        fn apply(&mut self, _: &FilterUpdate) {}
        fn loss(&self) -> LossCounters {
            self.0.loss()
        }
    }

    pub async fn start(config: &LoadedConfig, capacity: usize) -> Result<StartedSensor, SensorError> {
        let (tx, rx) = mpsc::channel(capacity);
        let scm = Arc::new(ScmServiceManager::default());
        let sensor = start_sensor(config, tx, scm).map_err(|e| SensorError::Kernel(e.to_string()))?;
        Ok(StartedSensor { control: Box::new(Etw(sensor)), rx, task: None, replay_stats: None })
    }
}

/// Starts the platform's kernel sensor with a channel of `capacity`.
#[cfg(windows)]
pub async fn start(config: &LoadedConfig, capacity: usize) -> Result<StartedSensor, SensorError> {
    etw::start(config, capacity).await
}

/// Starts the platform's kernel sensor with a channel of `capacity`.
#[cfg(target_os = "linux")]
pub async fn start(config: &LoadedConfig, capacity: usize) -> Result<StartedSensor, SensorError> {
    linux::start(config, capacity).await
}

/// Starts the platform's kernel sensor with a channel of `capacity`.
#[cfg(not(any(target_os = "linux", windows)))]
pub async fn start(_config: &LoadedConfig, _capacity: usize) -> Result<StartedSensor, SensorError> {
    Err(SensorError::Kernel("no kernel sensor for this platform; use --replay FILE".into()))
}
