//! The exporter as a consumer of the pipeline's attributed events.

use super::stats::AgentStats;
use super::ExporterHandle;
use crate::pipeline::{EventSink, Tick};
use custos_event::Event;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Feeds the exporter from the pipeline: `try_send`, never blocking; a
/// full queue drops and counts. Also publishes the pipeline's loss
/// counters as the agent's `events_dropped_*` statistics.
pub struct ExportSink {
    events: mpsc::Sender<Event>,
    stats: Arc<AgentStats>,
}

impl ExporterHandle {
    /// A pipeline sink feeding this exporter.
    pub fn sink(&self) -> ExportSink {
        ExportSink { events: self.events.clone(), stats: self.stats.clone() }
    }
}

impl EventSink for ExportSink {
    fn on_event(&mut self, event: &Event) {
        AgentStats::add(&self.stats.events_in, 1);
        if self.events.try_send(event.clone()).is_err() {
            AgentStats::add(&self.stats.events_dropped_exporter, 1);
        }
    }

    fn on_tick(&mut self, tick: &Tick) {
        // The pipeline's counters are monotonic totals already.
        AgentStats::set(&self.stats.events_dropped_kernel, tick.loss.kernel + tick.loss.platform);
        AgentStats::set(&self.stats.events_dropped_user, tick.loss.channel);
    }
}
