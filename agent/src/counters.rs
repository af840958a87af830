//! The one fold of the attributed event stream into per-service counters.
//!
//! Detection, the terminal summary and `custos status` all read the same
//! counts (exits, failed exits, connects, bytes, syscalls...). Counting them
//! once here keeps the three in agreement and the pipeline's per-event work
//! to one match and one map update, however many of them run. The exporter
//! keeps its own aggregation: it needs histograms, which none of these do.
//!
//! [`CountersSink`] is the pipeline sink: it folds each event into what is
//! pending, and at each tick and each drained channel publishes it to its
//! [`CountersConsumer`] as a [`Delta`] (what changed since the previous
//! publish, for consumers that show an interval or keep their own totals),
//! then adds it to the [`Totals`] (monotonic, for consumers that derive
//! rates from counter differences), which each tick hands over too.

use crate::pipeline::{EventSink, Tick};
use custos_event::{Event, EventBody, ExitClass};
use std::collections::HashMap;

/// What one service did, counted. Fixed size, so that a service costs the
/// same whatever it does; the per-syscall breakdown is in [`Activity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every attributed event.
    pub events: u64,
    pub starts: u64,
    pub exits: u64,
    /// Exits that were not clean: a nonzero code, a fatal signal, an OOM kill.
    pub failed_exits: u64,
    pub signals: u64,
    pub oom_kills: u64,
    pub connects: u64,
    pub connect_errors: u64,
    /// Sum of connect latencies. Integer nanoseconds, so that adding a
    /// publish's sum to the total is exact whatever the grouping.
    pub connect_ns: u64,
    pub accepts: u64,
    /// Bytes sent and received on closed connections.
    pub bytes: u64,
    pub health_failures: u64,
    pub syscalls: u64,
    pub syscall_errors: u64,
    /// Time in syscalls, estimated as p50 × count per syscall (the
    /// histogram's mean is not kept; the median is a robust stand-in).
    pub syscall_ns: u64,
}

impl Counts {
    /// Adds `o` to these counts. Sums saturate: a hostile recording must
    /// not wrap a counter, which would read as a restart.
    pub fn add(&mut self, o: &Counts) {
        let pairs = [
            (&mut self.events, o.events),
            (&mut self.starts, o.starts),
            (&mut self.exits, o.exits),
            (&mut self.failed_exits, o.failed_exits),
            (&mut self.signals, o.signals),
            (&mut self.oom_kills, o.oom_kills),
            (&mut self.connects, o.connects),
            (&mut self.connect_errors, o.connect_errors),
            (&mut self.connect_ns, o.connect_ns),
            (&mut self.accepts, o.accepts),
            (&mut self.bytes, o.bytes),
            (&mut self.health_failures, o.health_failures),
            (&mut self.syscalls, o.syscalls),
            (&mut self.syscall_errors, o.syscall_errors),
            (&mut self.syscall_ns, o.syscall_ns),
        ];
        for (a, b) in pairs {
            *a = a.saturating_add(b);
        }
    }

    /// The detector's view of these counts (the input of the series
    /// catalogue's derivations).
    pub fn detector(&self) -> custos_detect::ServiceCounters {
        custos_detect::ServiceCounters {
            exits: self.exits,
            crashes: self.failed_exits,
            connects: self.connects,
            connect_errors: self.connect_errors,
            connect_seconds: self.connect_ns as f64 / 1e9,
            accepts: self.accepts,
            syscalls: self.syscalls,
            syscall_errors: self.syscall_errors,
            syscall_seconds: self.syscall_ns as f64 / 1e9,
            bytes: self.bytes,
        }
    }
}

/// What one service did over an interval: its counts and, when a consumer
/// asked for it, the count and errors of each syscall.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    pub counts: Counts,
    /// syscall name → (count, errors)
    pub syscalls: HashMap<String, (u64, u64)>,
}

impl Activity {
    /// Adds `o` to this activity.
    pub fn add(&mut self, o: &Activity) {
        self.counts.add(&o.counts);
        for (name, (count, errors)) in &o.syscalls {
            let entry = match self.syscalls.get_mut(name) {
                Some(e) => e,
                None => self.syscalls.entry(name.clone()).or_default(),
            };
            entry.0 = entry.0.saturating_add(*count);
            entry.1 = entry.1.saturating_add(*errors);
        }
    }
}

/// What was counted since the previous publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Events other than gap markers, with or without a service.
    pub events: u64,
    /// Gap markers (`loss` events): they concern every service, so they
    /// are counted here and in no service.
    pub markers: u64,
    /// Only the services that had events.
    pub services: HashMap<String, Activity>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.events == 0 && self.markers == 0
    }
}

/// Every count since start (monotonic), except for services a reload
/// removed: their counts are dropped, as their detector series are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub markers: u64,
    pub services: HashMap<String, Counts>,
}

/// What the fold feeds. Called on the pipeline task: must not block.
pub trait CountersConsumer: Send {
    /// Whether it reads [`Activity::syscalls`]; the per-syscall breakdown
    /// is kept only then, since it costs a map entry per syscall name.
    fn wants_syscalls(&self) -> bool {
        false
    }
    /// What was counted since the previous publish. Publishes happen at
    /// every tick (before [`on_tick`](Self::on_tick)), when the pipeline's
    /// channel is drained, and before a reload changes the services; an
    /// interval with no event publishes nothing.
    fn on_delta(&mut self, _delta: &Delta) {}
    /// Each pipeline tick, with the totals including every event so far.
    fn on_tick(&mut self, _totals: &Totals, _tick: &Tick) {}
    /// A reload changed the configured services; `removed` were configured
    /// before and are no more (their totals are already dropped).
    fn on_services(&mut self, _configured: &[String], _removed: &[String]) {}
    /// The pipeline stops, after the last event and its publish.
    fn on_finish(&mut self, totals: &Totals, tick: &Tick) {
        self.on_tick(totals, tick);
    }
}

/// A boxed consumer, so that the wiring can hand them over without
/// naming their types.
impl<C: CountersConsumer + ?Sized> CountersConsumer for Box<C> {
    fn wants_syscalls(&self) -> bool {
        (**self).wants_syscalls()
    }
    fn on_delta(&mut self, delta: &Delta) {
        (**self).on_delta(delta);
    }
    fn on_tick(&mut self, totals: &Totals, tick: &Tick) {
        (**self).on_tick(totals, tick);
    }
    fn on_services(&mut self, configured: &[String], removed: &[String]) {
        (**self).on_services(configured, removed);
    }
    fn on_finish(&mut self, totals: &Totals, tick: &Tick) {
        (**self).on_finish(totals, tick);
    }
}

/// Several consumers fed by one fold, in order.
impl CountersConsumer for Vec<Box<dyn CountersConsumer>> {
    fn wants_syscalls(&self) -> bool {
        self.iter().any(|c| c.wants_syscalls())
    }
    fn on_delta(&mut self, delta: &Delta) {
        for c in self {
            c.on_delta(delta);
        }
    }
    fn on_tick(&mut self, totals: &Totals, tick: &Tick) {
        for c in self {
            c.on_tick(totals, tick);
        }
    }
    fn on_services(&mut self, configured: &[String], removed: &[String]) {
        for c in self {
            c.on_services(configured, removed);
        }
    }
    fn on_finish(&mut self, totals: &Totals, tick: &Tick) {
        for c in self {
            c.on_finish(totals, tick);
        }
    }
}

/// The fold itself, without the pipeline: events in, deltas and totals out.
#[derive(Debug, Default)]
pub struct Fold {
    pending: Delta,
    totals: Totals,
    syscall_names: bool,
}

impl Fold {
    /// A fold that keeps the per-syscall breakdown in its deltas when
    /// `syscall_names` is set.
    pub fn new(syscall_names: bool) -> Fold {
        Fold { syscall_names, ..Fold::default() }
    }

    /// Counts one event into what is pending.
    pub fn record(&mut self, e: &Event) {
        if let EventBody::Loss(_) = e.body {
            self.pending.markers += 1;
            return;
        }
        self.pending.events += 1;
        let Some(service) = &e.service else { return };
        // Looked up before inserting, so that the name is cloned only for
        // a service's first event since the previous publish.
        let a = match self.pending.services.get_mut(service) {
            Some(a) => a,
            None => self.pending.services.entry(service.clone()).or_default(),
        };
        let c = &mut a.counts;
        c.events += 1;
        match &e.body {
            EventBody::ProcessStart(_) => c.starts += 1,
            EventBody::ProcessExit(x) => {
                c.exits += 1;
                if x.class() != ExitClass::Clean {
                    c.failed_exits += 1;
                }
            }
            EventBody::Signal(_) => c.signals += 1,
            EventBody::OomKill(_) => c.oom_kills += 1,
            EventBody::TcpConnect(t) => {
                c.connects += 1;
                if !t.result.is_ok() {
                    c.connect_errors += 1;
                }
                c.connect_ns = c.connect_ns.saturating_add(t.latency_ns);
            }
            EventBody::TcpAccept(_) => c.accepts += 1,
            EventBody::TcpClose(t) => {
                c.bytes = c.bytes.saturating_add(t.bytes_sent.saturating_add(t.bytes_received))
            }
            EventBody::SyscallStats(s) => {
                for sc in &s.syscalls {
                    c.syscalls = c.syscalls.saturating_add(sc.count);
                    c.syscall_errors = c.syscall_errors.saturating_add(sc.errors);
                    c.syscall_ns = c.syscall_ns.saturating_add(sc.p50_ns.saturating_mul(sc.count));
                    if self.syscall_names {
                        let entry = match a.syscalls.get_mut(&sc.name) {
                            Some(e) => e,
                            None => a.syscalls.entry(sc.name.clone()).or_default(),
                        };
                        entry.0 = entry.0.saturating_add(sc.count);
                        entry.1 = entry.1.saturating_add(sc.errors);
                    }
                }
            }
            EventBody::HealthProbe(h) => {
                if !h.ok {
                    c.health_failures += 1
                }
            }
            EventBody::Listen(_) | EventBody::Loss(_) => {}
        }
    }

    /// Hands what is pending to `consumer` (nothing when nothing is) and
    /// adds it to the totals.
    pub fn publish(&mut self, consumer: &mut dyn CountersConsumer) {
        if self.pending.is_empty() {
            return;
        }
        consumer.on_delta(&self.pending);
        let t = &mut self.totals;
        t.events = t.events.saturating_add(self.pending.events);
        t.markers = t.markers.saturating_add(self.pending.markers);
        self.pending.events = 0;
        self.pending.markers = 0;
        // Draining moves the names into the totals instead of cloning them.
        for (service, a) in self.pending.services.drain() {
            match t.services.get_mut(&service) {
                Some(c) => c.add(&a.counts),
                None => {
                    t.services.insert(service, a.counts);
                }
            }
        }
    }

    /// Drops the totals of `services` (removed by a reload): a service
    /// that comes back starts from zero.
    pub fn forget(&mut self, services: &[String]) {
        for s in services {
            self.totals.services.remove(s);
        }
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }
}

/// The pipeline sink that folds each event once and feeds `C`.
pub struct CountersSink<C: CountersConsumer> {
    fold: Fold,
    consumer: C,
    /// The configured services, so that a reload that removes one drops
    /// its totals (discovered services come and go with their own events
    /// and are left alone).
    configured: Vec<String>,
}

impl<C: CountersConsumer> CountersSink<C> {
    pub fn new(consumer: C) -> Self {
        CountersSink { fold: Fold::new(consumer.wants_syscalls()), consumer, configured: Vec::new() }
    }

    /// The services configured at start (see [`EventSink::on_services`]).
    pub fn with_configured(mut self, configured: &[String]) -> Self {
        self.configured = configured.to_vec();
        self
    }

    pub fn consumer(&self) -> &C {
        &self.consumer
    }

    pub fn totals(&self) -> &Totals {
        self.fold.totals()
    }
}

impl<C: CountersConsumer> EventSink for CountersSink<C> {
    fn on_event(&mut self, e: &Event) {
        self.fold.record(e);
    }

    fn flush(&mut self) {
        self.fold.publish(&mut self.consumer);
    }

    fn on_tick(&mut self, tick: &Tick) {
        self.fold.publish(&mut self.consumer);
        self.consumer.on_tick(self.fold.totals(), tick);
    }

    fn on_services(&mut self, configured: &[String]) {
        // Events counted before the reload belong to the configuration
        // they were attributed under: publish them before dropping anything.
        self.fold.publish(&mut self.consumer);
        let removed: Vec<String> =
            self.configured.iter().filter(|s| !configured.contains(s)).cloned().collect();
        self.fold.forget(&removed);
        self.consumer.on_services(configured, &removed);
        self.configured = configured.to_vec();
    }

    fn on_finish(&mut self, tick: &Tick) {
        self.fold.publish(&mut self.consumer);
        self.consumer.on_finish(self.fold.totals(), tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_event::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn ev(service: Option<&str>, body: EventBody) -> Event {
        let mut e = Event::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000), body);
        e.service = service.map(Into::into);
        e
    }

    fn connect(ok: bool, latency_ns: u64) -> EventBody {
        EventBody::TcpConnect(TcpConnect {
            endpoints: TcpEndpoints {
                family: Family::Ipv4,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 5000,
                daddr: "127.0.0.1".parse().unwrap(),
                dport: 80,
            },
            result: if ok { ConnectResult::Ok } else { ConnectResult::Err(111) },
            latency_ns,
        })
    }

    fn syscalls(name: &str, count: u64, errors: u64, p50_ns: u64) -> EventBody {
        EventBody::SyscallStats(SyscallStats {
            interval_ns: 1,
            syscalls: vec![SyscallStat { name: name.into(), count, errors, p50_ns, ..Default::default() }],
        })
    }

    /// Records what it is handed.
    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Vec<String>>>);
    impl CountersConsumer for Seen {
        fn wants_syscalls(&self) -> bool {
            true
        }
        fn on_delta(&mut self, d: &Delta) {
            let mut names: Vec<_> = d.services.keys().cloned().collect();
            names.sort();
            self.0.lock().unwrap().push(format!("delta {} {} {}", d.events, d.markers, names.join(",")));
        }
        fn on_tick(&mut self, t: &Totals, _: &Tick) {
            self.0.lock().unwrap().push(format!("tick {} {}", t.events, t.services.len()));
        }
        fn on_services(&mut self, configured: &[String], removed: &[String]) {
            self.0.lock().unwrap().push(format!("services {} -{}", configured.join(","), removed.join(",")));
        }
    }

    #[test]
    fn each_event_is_counted_once_into_its_service() {
        let mut f = Fold::new(true);
        f.record(&ev(Some("api"), EventBody::ProcessStart(ProcessStart::default())));
        f.record(&ev(
            Some("api"),
            EventBody::ProcessExit(ProcessExit { exit_code: Some(0), ..Default::default() }),
        ));
        f.record(&ev(
            Some("api"),
            EventBody::ProcessExit(ProcessExit { exit_code: Some(3), ..Default::default() }),
        ));
        f.record(&ev(Some("api"), connect(true, 1_000)));
        f.record(&ev(Some("api"), connect(false, 2_000)));
        f.record(&ev(Some("api"), syscalls("read", 200, 50, 10)));
        f.record(&ev(Some("api"), syscalls("read", 100, 0, 20)));
        f.record(&ev(
            Some("db"),
            EventBody::HealthProbe(HealthProbe {
                probe: "http".into(),
                ok: false,
                latency_ns: 1,
                detail: String::new(),
            }),
        ));
        f.record(&ev(None, EventBody::Loss(Loss { stage: LossStage::Kernel, lost: 7 })));

        let mut got = None;
        struct Keep<'a>(&'a mut Option<Delta>);
        impl CountersConsumer for Keep<'_> {
            fn on_delta(&mut self, d: &Delta) {
                *self.0 = Some(d.clone());
            }
        }
        f.publish(&mut Keep(&mut got));
        let d = got.expect("a delta");
        assert_eq!((d.events, d.markers), (8, 1), "markers are counted apart");
        let api = &d.services["api"];
        assert_eq!(
            api.counts,
            Counts {
                events: 7,
                starts: 1,
                exits: 2,
                failed_exits: 1,
                connects: 2,
                connect_errors: 1,
                connect_ns: 3_000,
                syscalls: 300,
                syscall_errors: 50,
                syscall_ns: 200 * 10 + 100 * 20,
                ..Counts::default()
            }
        );
        assert_eq!(api.syscalls["read"], (300, 50));
        assert_eq!(d.services["db"].counts.health_failures, 1);
        let t = f.totals();
        assert_eq!((t.events, t.markers), (8, 1));
        assert_eq!(t.services["api"], api.counts, "the totals take the delta");
        let det = t.services["api"].detector();
        assert_eq!((det.exits, det.crashes, det.connects), (2, 1, 2));
        assert!((det.connect_seconds - 3e-6).abs() < 1e-15);

        // Nothing pending: no delta; the totals stay.
        let mut none = None;
        f.publish(&mut Keep(&mut none));
        assert!(none.is_none());
        f.record(&ev(Some("api"), EventBody::ProcessStart(ProcessStart::default())));
        f.publish(&mut Keep(&mut none));
        let d = none.unwrap();
        assert_eq!(d.services["api"].counts.starts, 1, "a delta holds only what came since the last");
        assert!(!d.services.contains_key("db"), "and only the services that did something");
        assert_eq!(f.totals().services["api"].starts, 2, "the totals are monotonic");
    }

    #[test]
    fn the_syscall_breakdown_is_kept_only_when_asked_for() {
        let mut f = Fold::new(false);
        f.record(&ev(Some("api"), syscalls("read", 5, 1, 10)));
        struct Names(usize);
        impl CountersConsumer for Names {
            fn on_delta(&mut self, d: &Delta) {
                self.0 = d.services["api"].syscalls.len();
            }
        }
        let mut names = Names(99);
        f.publish(&mut names);
        assert_eq!(names.0, 0);
        assert_eq!(f.totals().services["api"].syscalls, 5, "the sums are kept either way");
        let sink = CountersSink::new(vec![Box::new(Seen::default()) as Box<dyn CountersConsumer>]);
        assert!(sink.fold.syscall_names, "a consumer that wants them gets them");
    }

    #[test]
    fn the_sink_publishes_at_flush_and_tick_and_forgets_removed_services() {
        let seen = Seen::default();
        let mut sink = CountersSink::new(vec![Box::new(seen.clone()) as Box<dyn CountersConsumer>])
            .with_configured(&["api".into(), "db".into()]);
        let tick = Tick { now: SystemTime::now(), loss: LossCounters::default() };
        for s in ["api", "db", "cron"] {
            sink.on_event(&ev(Some(s), EventBody::ProcessStart(ProcessStart::default())));
        }
        sink.flush();
        sink.flush();
        sink.on_tick(&tick);
        sink.on_event(&ev(Some("db"), EventBody::ProcessStart(ProcessStart::default())));
        sink.on_services(&["api".into()]);
        assert!(!sink.totals().services.contains_key("db"), "a removed service's totals are dropped");
        assert!(sink.totals().services.contains_key("cron"), "a discovered one's are kept");
        sink.on_finish(&tick);
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec!["delta 3 0 api,cron,db", "tick 3 3", "delta 1 0 db", "services api -db", "tick 4 2",],
            "one delta per publish with something in it; events before a reload are published first"
        );
    }
}
