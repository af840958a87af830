//! The kernel sensor of this platform behind the pipeline's `SensorControl`.

use crate::config::LoadedConfig;
use crate::run::StartedSensor;
use crate::sensor::SensorError;

/// Starts the platform's kernel sensor with a channel of `capacity`.
pub async fn start(_config: &LoadedConfig, _capacity: usize) -> Result<StartedSensor, SensorError> {
    Err(SensorError::Kernel("the kernel sensor is not wired in yet; use --replay FILE".into()))
}
