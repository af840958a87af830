//! Where events come from: the platform's kernel sensor (eBPF on Linux, ETW
//! on Windows) or a recording, behind one [`start`].

#[cfg(target_os = "linux")]
mod linux;
pub mod replay;
#[cfg(any(windows, custos_windows_typecheck))]
pub mod windows;

pub use replay::{replay, Pace, ReplayStats, SensorError};

use crate::config::LoadedConfig;
use crate::pipeline::{NoKernel, SensorControl};
use custos_event::Event;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Where events come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The platform's kernel sensor.
    Kernel,
    /// A recording of `custos watch --json`.
    Replay { path: PathBuf, pace: Pace },
}

/// A started sensor: its control surface and the task feeding the channel.
pub struct StartedSensor {
    pub control: Box<dyn SensorControl>,
    pub rx: mpsc::Receiver<Event>,
    /// The task feeding a recording; ends when it is exhausted. Kernel
    /// sensors have none: they run until the pipeline drops their control.
    pub task: Option<tokio::task::JoinHandle<Result<(), SensorError>>>,
    pub replay_stats: Option<Arc<ReplayStats>>,
}

/// Starts the sensor for `source`.
pub async fn start(source: &Source, config: &LoadedConfig) -> Result<StartedSensor, SensorError> {
    let capacity = config.raw.sensors.channel_capacity.max(1);
    match source {
        Source::Replay { path, pace } => {
            let (tx, rx) = mpsc::channel(capacity);
            let stats = Arc::new(ReplayStats::default());
            let task = tokio::spawn(replay(path.clone(), *pace, tx, stats.clone()));
            Ok(StartedSensor { control: Box::new(NoKernel), rx, task: Some(task), replay_stats: Some(stats) })
        }
        Source::Kernel => start_kernel(config, capacity).await,
    }
}

/// The host view attribution uses on this platform.
pub fn host_view(source: &Source) -> Box<dyn crate::attribution::HostView> {
    match source {
        // Recorded events carry their own pids and cgroups, which mean
        // nothing on this host now.
        Source::Replay { .. } => Box::new(crate::attribution::NoHost),
        #[cfg(target_os = "linux")]
        Source::Kernel => Box::new(crate::platform::linux::procfs::ProcHost::new()),
        #[cfg(not(target_os = "linux"))]
        Source::Kernel => Box::new(crate::attribution::NoHost),
    }
}

/// Starts the platform's kernel sensor with a channel of `capacity`.
#[cfg(windows)]
async fn start_kernel(config: &LoadedConfig, capacity: usize) -> Result<StartedSensor, SensorError> {
    windows::start(config, capacity).await
}

/// Starts the platform's kernel sensor with a channel of `capacity`.
#[cfg(target_os = "linux")]
async fn start_kernel(config: &LoadedConfig, capacity: usize) -> Result<StartedSensor, SensorError> {
    linux::start(config, capacity).await
}

/// Starts the platform's kernel sensor with a channel of `capacity`.
#[cfg(not(any(target_os = "linux", windows)))]
async fn start_kernel(_config: &LoadedConfig, _capacity: usize) -> Result<StartedSensor, SensorError> {
    Err(SensorError::Kernel("no kernel sensor for this platform; use --replay FILE".into()))
}
