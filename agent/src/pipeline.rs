//! The agent's event pipeline: sensor → attribution → sinks.
//!
//! One task owns attribution and calls every sink in turn for each event.
//! Sinks must be quick and never block (the exporter, the runbook engine and
//! the detector each hand work to their own tasks through bounded channels
//! and count what they drop), so one slow consumer cannot stall the sensor.

use crate::attribution::{Attributor, FilterUpdate};
use crate::config::LoadedConfig;
use custos_event::{Event, EventBody, Loss, LossCounters, LossStage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// What a sink learns at each tick.
pub struct Tick {
    pub now: SystemTime,
    /// Loss at every stage so far (monotonic).
    pub loss: LossCounters,
}

/// A consumer of attributed events.
pub trait EventSink: Send {
    /// Called for every attributed event, in order. Must not block.
    fn on_event(&mut self, event: &Event);
    /// Called about once per tick interval, also when no event came.
    fn on_tick(&mut self, _tick: &Tick) {}
    /// Called when the channel has been drained for now: a good moment to
    /// flush buffered output.
    fn flush(&mut self) {}
    /// Called when a reload changed the managed services, with the names
    /// of the configured ones.
    fn on_services(&mut self, _configured: &[String]) {}
    /// Called once when the pipeline stops, after the last event.
    fn on_finish(&mut self, tick: &Tick) {
        self.on_tick(tick);
        self.flush();
    }
}

/// The sensor's control surface, as the pipeline needs it: the kernel-side
/// filter and the loss counters. A replay has no kernel.
pub trait SensorControl: Send {
    fn apply(&mut self, update: &FilterUpdate);
    fn loss(&self) -> LossCounters;
    /// Whether exec events of every process should reach user space
    /// (`exe:` selectors).
    fn emit_all_execs(&mut self, _on: bool) {}
}

/// Replay and tests: no kernel filter, no kernel loss.
pub struct NoKernel;

impl SensorControl for NoKernel {
    fn apply(&mut self, _: &FilterUpdate) {}
    fn loss(&self) -> LossCounters {
        LossCounters::default()
    }
}

/// Counters of the pipeline itself, shared with status and self-telemetry.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events received from the sensor.
    pub events_in: AtomicU64,
    /// Events attributed to a managed service and handed to the sinks.
    pub events_attributed: AtomicU64,
    /// Events of unmanaged processes that reached user space anyway (exec
    /// events for exe matching, events racing a filter update).
    pub events_unmanaged: AtomicU64,
    /// Advances every time the pipeline loop makes progress (an event or a
    /// tick): the liveness signal behind the systemd watchdog.
    pub heartbeat: AtomicU64,
}

/// The next message of an optional input (side events, reloads); pending
/// forever when there is none (or it closed), so the `select!` branch
/// simply never fires.
async fn recv_optional<T>(side: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match side {
        Some(rx) => match rx.recv().await {
            Some(e) => Some(e),
            None => {
                *side = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// What a finished pipeline hands back.
pub struct Finished {
    pub loss: LossCounters,
}

/// The pipeline, ready to run.
pub struct Pipeline {
    attributor: Attributor,
    sensor: Box<dyn SensorControl>,
    sinks: Vec<Box<dyn EventSink>>,
    stats: Arc<PipelineStats>,
    tick: Duration,
    reported_loss: LossCounters,
    /// Events made inside the agent (health probe results), merged into
    /// the stream after the sensor's.
    side: Option<mpsc::Receiver<Event>>,
    /// Reloaded configurations whose services attribution and the kernel
    /// filter take on.
    reconfigure: Option<mpsc::Receiver<Arc<LoadedConfig>>>,
}

impl Pipeline {
    pub fn new(
        attributor: Attributor,
        mut sensor: Box<dyn SensorControl>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        sensor.emit_all_execs(attributor.needs_all_execs());
        Pipeline {
            attributor,
            sensor,
            sinks: Vec::new(),
            stats,
            tick: Duration::from_secs(1),
            reported_loss: LossCounters::default(),
            side: None,
            reconfigure: None,
        }
    }

    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// A second input for events the agent makes itself (health probe
    /// results): they go through attribution (their service is already set)
    /// and reach every sink like the sensor's. Bounded; producers `try_send`.
    pub fn side_input(&mut self, capacity: usize) -> mpsc::Sender<Event> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.side = Some(rx);
        tx
    }

    /// Where reloaded configurations go: the pipeline switches to their
    /// services between two events, so no event is attributed half under
    /// the old and half under the new configuration.
    pub fn reconfigure_input(&mut self) -> mpsc::Sender<Arc<LoadedConfig>> {
        let (tx, rx) = mpsc::channel(4);
        self.reconfigure = Some(rx);
        tx
    }

    pub fn add_sink(&mut self, sink: Box<dyn EventSink>) {
        self.sinks.push(sink);
    }

    pub fn configured_services(&self) -> Vec<String> {
        self.attributor.configured_services()
    }

    /// Runs until the sensor's channel closes (the recording ended) or `stop`
    /// becomes true, then drains what is already queued. Returns the sinks so
    /// the caller can shut them down in order, and the final loss counters.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>, mut stop: watch::Receiver<bool>) -> Finished {
        let initial = self.attributor.refresh();
        self.sensor.apply(&initial);
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut update = FilterUpdate::default();
        let mut side = self.side.take();
        let mut reconfigure = self.reconfigure.take();
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        // Take what the sensor already delivered: it was
                        // acknowledged by the kernel, so it must not be lost.
                        rx.close();
                        while let Some(e) = rx.recv().await {
                            self.handle(e, &mut update);
                        }
                        break;
                    }
                }
                maybe = rx.recv() => {
                    let Some(e) = maybe else { break };
                    self.handle(e, &mut update);
                    // Drain what is queued without yielding per event.
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(e) => self.handle(e, &mut update),
                            Err(_) => break,
                        }
                    }
                    if !update.is_empty() {
                        self.sensor.apply(&update);
                        update = FilterUpdate::default();
                    }
                    if rx.is_empty() {
                        for s in &mut self.sinks {
                            s.flush();
                        }
                    }
                }
                Some(e) = recv_optional(&mut side) => {
                    self.handle(e, &mut update);
                }
                Some(config) = recv_optional(&mut reconfigure) => {
                    let changed = self.attributor.reconfigure(&config);
                    self.sensor.emit_all_execs(self.attributor.needs_all_execs());
                    self.sensor.apply(&changed);
                    let configured = self.attributor.configured_services();
                    for s in &mut self.sinks {
                        s.on_services(&configured);
                    }
                    tracing::info!(
                        services = config.services.len(),
                        added_cgroups = changed.add_cgroups.len(),
                        removed_cgroups = changed.remove_cgroups.len(),
                        "Managed services reloaded."
                    );
                }
                _ = ticker.tick() => {
                    self.stats.heartbeat.fetch_add(1, Ordering::Relaxed);
                    let refreshed = self.attributor.refresh();
                    if !refreshed.is_empty() {
                        self.sensor.apply(&refreshed);
                    }
                    let tick = Tick { now: SystemTime::now(), loss: self.sensor.loss() };
                    self.mark_gaps(&tick);
                    for s in &mut self.sinks {
                        s.on_tick(&tick);
                    }
                }
            }
        }
        if !update.is_empty() {
            self.sensor.apply(&update);
        }
        let tick = Tick { now: SystemTime::now(), loss: self.sensor.loss() };
        self.mark_gaps(&tick);
        for s in &mut self.sinks {
            s.on_finish(&tick);
        }
        Finished { loss: tick.loss }
    }

    /// Puts a `loss` event into the stream where counters grew since the
    /// last tick, so consumers see a gap as a gap. Lost events cannot be
    /// attributed, so the marker has no service: it concerns every one.
    fn mark_gaps(&mut self, tick: &Tick) {
        let stages = [
            (LossStage::Kernel, tick.loss.kernel, self.reported_loss.kernel),
            (LossStage::Channel, tick.loss.channel, self.reported_loss.channel),
            (LossStage::Platform, tick.loss.platform, self.reported_loss.platform),
        ];
        for (stage, now, before) in stages {
            if now > before {
                let marker = Event::new(tick.now, EventBody::Loss(Loss { stage, lost: now - before }));
                for s in &mut self.sinks {
                    s.on_event(&marker);
                }
            }
        }
        self.reported_loss = tick.loss;
    }

    fn handle(&mut self, mut e: Event, update: &mut FilterUpdate) {
        self.stats.events_in.fetch_add(1, Ordering::Relaxed);
        self.stats.heartbeat.fetch_add(1, Ordering::Relaxed);
        if let EventBody::Loss(_) = e.body {
            // A gap marker in a recording: it concerns every service, so it
            // goes to the sinks as it is, never attributed to one. (Live
            // sensors only count their losses; `mark_gaps` marks them.)
            e.service = None;
            for s in &mut self.sinks {
                s.on_event(&e);
            }
            return;
        }
        if !self.attributor.attribute(&mut e, update) {
            self.stats.events_unmanaged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.events_attributed.fetch_add(1, Ordering::Relaxed);
        for s in &mut self.sinks {
            s.on_event(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::NoHost;
    use crate::config;
    use custos_event::{EventBody, ProcessStart};
    use std::sync::Mutex;
    use std::time::UNIX_EPOCH;

    struct Collect(Arc<Mutex<Vec<Event>>>, Arc<AtomicU64>);
    impl EventSink for Collect {
        fn on_event(&mut self, e: &Event) {
            self.0.lock().unwrap().push(e.clone());
        }
        fn on_tick(&mut self, _: &Tick) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start(pid: u32, exe: &str) -> Event {
        let mut e = Event::new(
            UNIX_EPOCH,
            EventBody::ProcessStart(ProcessStart { exe: exe.into(), ..Default::default() }),
        );
        e.pid = pid;
        e
    }

    #[tokio::test]
    async fn attributes_filters_and_drains_on_close() {
        let cfg = config::parse("services:\n  - name: api\n    exe: /usr/bin/api\n", "t").unwrap();
        let stats = Arc::new(PipelineStats::default());
        let mut p = Pipeline::new(Attributor::new(&cfg, Box::new(NoHost)), Box::new(NoKernel), stats.clone());
        let got = Arc::new(Mutex::new(Vec::new()));
        let ticks = Arc::new(AtomicU64::new(0));
        p.add_sink(Box::new(Collect(got.clone(), ticks.clone())));
        let (tx, rx) = mpsc::channel(8);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let run = tokio::spawn(p.run(rx, stop_rx));
        tx.send(start(1, "/usr/bin/api")).await.unwrap();
        tx.send(start(2, "/usr/bin/other")).await.unwrap();
        drop(tx);
        run.await.unwrap();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].service.as_deref(), Some("api"));
        assert_eq!(stats.events_in.load(Ordering::Relaxed), 2);
        assert_eq!(stats.events_unmanaged.load(Ordering::Relaxed), 1);
        assert!(ticks.load(Ordering::Relaxed) >= 1, "sinks get a final tick");
    }

    struct Lossy(Arc<AtomicU64>);
    impl SensorControl for Lossy {
        fn apply(&mut self, _: &FilterUpdate) {}
        fn loss(&self) -> LossCounters {
            LossCounters { kernel: self.0.load(Ordering::Relaxed), ..Default::default() }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn growing_loss_is_marked_in_the_stream() {
        let cfg = config::parse("", "t").unwrap();
        let lost = Arc::new(AtomicU64::new(0));
        let mut p = Pipeline::new(
            Attributor::new(&cfg, Box::new(NoHost)),
            Box::new(Lossy(lost.clone())),
            Arc::new(PipelineStats::default()),
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        p.add_sink(Box::new(Collect(got.clone(), Arc::new(AtomicU64::new(0)))));
        let (tx, rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = tokio::spawn(p.run(rx, stop_rx));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        lost.store(7, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop_tx.send(true).unwrap();
        run.await.unwrap();
        drop(tx);
        let markers: Vec<_> = got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Loss(l) => Some((l.stage, l.lost)),
                _ => None,
            })
            .collect();
        assert_eq!(
            markers,
            vec![(LossStage::Kernel, 7)],
            "one marker for the gap, none while nothing is lost"
        );
    }

    #[tokio::test]
    async fn side_input_events_reach_the_sinks() {
        let cfg = config::parse("services:\n  - name: api\n    exe: /usr/bin/api\n", "t").unwrap();
        let mut p = Pipeline::new(
            Attributor::new(&cfg, Box::new(NoHost)),
            Box::new(NoKernel),
            Arc::new(PipelineStats::default()),
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        p.add_sink(Box::new(Collect(got.clone(), Arc::new(AtomicU64::new(0)))));
        let side = p.side_input(4);
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = tokio::spawn(p.run(rx, stop_rx));
        let mut probe = Event::new(
            UNIX_EPOCH,
            EventBody::HealthProbe(custos_event::HealthProbe {
                probe: "http".into(),
                ok: false,
                latency_ns: 1,
                detail: "503".into(),
            }),
        );
        probe.service = Some("api".into());
        side.send(probe).await.unwrap();
        drop(side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send(true).unwrap();
        run.await.unwrap();
        drop(tx);
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind(), custos_event::EventKind::HealthProbe);
    }

    #[tokio::test]
    async fn stop_drains_what_was_queued() {
        let cfg = config::parse("", "t").unwrap();
        let stats = Arc::new(PipelineStats::default());
        let mut p = Pipeline::new(Attributor::new(&cfg, Box::new(NoHost)), Box::new(NoKernel), stats.clone());
        let got = Arc::new(Mutex::new(Vec::new()));
        p.add_sink(Box::new(Collect(got.clone(), Arc::new(AtomicU64::new(0)))));
        let (tx, rx) = mpsc::channel(100);
        // Pids far from the test's own (attribution ignores the agent's own
        // events, and Wine hands out small pids), each a named process.
        for i in 0..50 {
            let mut e = start(4_000_000 + i, "/bin/x");
            e.comm = "x".into();
            tx.send(e).await.unwrap();
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_tx.send(true).unwrap();
        p.run(rx, stop_rx).await;
        assert_eq!(got.lock().unwrap().len(), 50);
        drop(tx);
    }
}
