//! The ETW sensor behind the pipeline's `SensorControl`.

use super::{SensorError, StartedSensor};
use crate::attribution::FilterUpdate;
use crate::config::LoadedConfig;
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
