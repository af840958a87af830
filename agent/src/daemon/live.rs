//! The pipeline's live figures for `custos status` and systemd `STATUS=`:
//! a consumer of the counters fold that keeps the events per service and
//! follows the loss counters, and the provider that turns them into a
//! [`StatusSnapshot`] part.

use super::status::{Drops, ServiceHealth, StatusProvider, StatusSnapshot};
use crate::config::LoadedConfig;
use crate::counters::{CountersConsumer, Delta, Totals};
use crate::pipeline::Tick;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Default)]
struct Inner {
    total: u64,
    per_service: BTreeMap<String, u64>,
    /// Events per second over the last tick interval.
    rate: f64,
    last_tick: Option<(Instant, u64)>,
    drops: Drops,
    /// Configured services and their unit, in configuration order.
    configured: Vec<(String, Option<String>)>,
    config_path: Option<String>,
    /// No services configured: every service on the host is managed.
    manage_everything: bool,
    /// The last health verdict of services with a probe, and the probe's
    /// result.
    health: BTreeMap<String, (bool, String)>,
    /// The service manager's last answer (`active`, `failed (auto-restart)`).
    states: BTreeMap<String, String>,
}

/// Shared between the sink (writer, on the pipeline task) and the control
/// socket (reader). The lock is held for a few counter updates only.
#[derive(Debug, Default, Clone)]
pub struct LiveStatus(Arc<Mutex<Inner>>);

impl LiveStatus {
    pub fn new(config: &LoadedConfig) -> LiveStatus {
        let s = LiveStatus::default();
        s.set_config(config);
        s
    }

    /// Takes the services and path of a (re)loaded configuration.
    pub fn set_config(&self, config: &LoadedConfig) {
        if let Ok(mut g) = self.0.lock() {
            g.configured = config
                .services
                .iter()
                .map(|s| (s.name.clone(), s.selected_unit().map(str::to_string)))
                .collect();
            g.config_path = config.path.as_ref().map(|p| p.display().to_string());
            g.manage_everything = config.manages_everything();
        }
    }

    /// A probe's verdict on a service (health probes call this).
    pub fn record_health(&self, service: &str, healthy: bool, probe: &custos_event::HealthProbe) {
        let detail = if probe.detail.is_empty() {
            format!("{} {}", probe.probe, if probe.ok { "ok" } else { "failed" })
        } else {
            format!("{}: {}", probe.probe, probe.detail)
        };
        if let Ok(mut g) = self.0.lock() {
            g.health.insert(service.to_string(), (healthy, detail));
        }
    }

    /// The service manager's state of a service (the state poller calls
    /// this).
    pub fn record_state(&self, service: &str, status: &crate::service_manager::ServiceStatus) {
        let state = if status.sub_state.is_empty() || status.sub_state == status.state.as_str() {
            status.state.as_str().to_string()
        } else {
            format!("{} ({})", status.state.as_str(), status.sub_state)
        };
        if let Ok(mut g) = self.0.lock() {
            g.states.insert(service.to_string(), state);
        }
    }

    /// What the counters fold feeds.
    pub fn consumer(&self) -> Box<dyn CountersConsumer> {
        Box::new(LiveCounts { shared: self.clone() })
    }
}

impl StatusProvider for LiveStatus {
    fn fill(&self, s: &mut StatusSnapshot) {
        let Ok(g) = self.0.lock() else { return };
        s.events_total = g.total;
        s.events_per_sec = g.rate;
        s.drops.kernel = g.drops.kernel;
        s.drops.user = g.drops.user;
        s.config_path = g.config_path.clone();
        s.manage_everything = g.manage_everything;
        let mut services: Vec<ServiceHealth> =
            g.configured.iter().map(|(name, unit)| g.service(name, unit.clone())).collect();
        // Services found without configuration (discovery, manage-everything).
        for name in g.per_service.keys() {
            if !g.configured.iter().any(|(c, _)| c == name) {
                services.push(g.service(name, None));
            }
        }
        s.services = services;
    }
}

impl Inner {
    fn service(&self, name: &str, unit: Option<String>) -> ServiceHealth {
        let events = format!("{} events", self.per_service.get(name).copied().unwrap_or(0));
        let health = self.health.get(name);
        ServiceHealth {
            name: name.to_string(),
            unit,
            state: self.states.get(name).cloned(),
            healthy: health.map(|(h, _)| *h),
            detail: Some(match health {
                Some((_, probe)) => format!("{events}, {probe}"),
                None => events,
            }),
            ..ServiceHealth::default()
        }
    }
}

/// Takes the fold's deltas, which come at each tick and drained channel,
/// so the lock is taken per publish and not per event. Keeps its own
/// per-service sums: a service a reload removed stays listed with what it
/// did, while the fold forgets it.
struct LiveCounts {
    shared: LiveStatus,
}

impl CountersConsumer for LiveCounts {
    fn on_delta(&mut self, d: &Delta) {
        let Ok(mut g) = self.shared.0.lock() else { return };
        g.total += d.events;
        for (name, a) in &d.services {
            match g.per_service.get_mut(name) {
                Some(n) => *n += a.counts.events,
                None => {
                    g.per_service.insert(name.clone(), a.counts.events);
                }
            }
        }
    }

    fn on_tick(&mut self, _totals: &Totals, t: &Tick) {
        let Ok(mut g) = self.shared.0.lock() else { return };
        let now = Instant::now();
        if let Some((then, count)) = g.last_tick {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                g.rate = (g.total - count) as f64 / secs;
            }
        }
        g.last_tick = Some((now, g.total));
        g.drops.kernel = t.loss.kernel;
        g.drops.user = t.loss.channel + t.loss.platform;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::CountersSink;
    use crate::pipeline::EventSink;
    use custos_event::{Event, EventBody, LossCounters, ProcessStart};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn ev(service: &str) -> Event {
        let mut e = Event::new(UNIX_EPOCH, EventBody::ProcessStart(ProcessStart::default()));
        e.service = Some(service.into());
        e
    }

    #[test]
    fn counts_events_per_service_and_losses() {
        let cfg = crate::config::parse("services:\n  - name: api\n    systemd_unit: api\n", "t").unwrap();
        let live = LiveStatus::new(&cfg);
        let mut sink = CountersSink::new(live.consumer());
        for _ in 0..3 {
            sink.on_event(&ev("api"));
        }
        sink.on_event(&ev("cron"));
        let loss = LossCounters { kernel: 5, channel: 2, ..Default::default() };
        sink.on_tick(&Tick { now: SystemTime::now(), loss });
        let mut s = StatusSnapshot::default();
        live.fill(&mut s);
        assert_eq!(s.events_total, 4);
        assert_eq!((s.drops.kernel, s.drops.user), (5, 2));
        let got: Vec<_> =
            s.services.iter().map(|x| (x.name.as_str(), x.unit.as_deref(), x.detail.as_deref())).collect();
        assert_eq!(
            got,
            vec![("api", Some("api.service"), Some("3 events")), ("cron", None, Some("1 events"))]
        );
        // A second tick gives a rate.
        std::thread::sleep(std::time::Duration::from_millis(20));
        sink.on_event(&ev("api"));
        sink.on_tick(&Tick { now: SystemTime::now(), loss });
        live.fill(&mut s);
        assert!(s.events_per_sec > 0.0);
    }

    #[test]
    fn shows_each_services_manager_state_and_probe_verdict() {
        use crate::service_manager::{ActiveState, ServiceStatus};
        let cfg = crate::config::parse(
            "services:\n  - name: api\n    systemd_unit: api\n  - name: db\n    systemd_unit: db\n",
            "t",
        )
        .unwrap();
        let live = LiveStatus::new(&cfg);
        let status = |state, sub: &str| ServiceStatus {
            state,
            sub_state: sub.into(),
            main_pid: None,
            cgroup: None,
            manager_restarting: false,
            manager_restarts: None,
        };
        live.record_state("api", &status(ActiveState::Active, "running"));
        live.record_state("db", &status(ActiveState::Failed, "failed"));
        let probe = |ok, detail: &str| custos_event::HealthProbe {
            probe: "http".into(),
            ok,
            latency_ns: 0,
            detail: detail.into(),
        };
        live.record_health("api", true, &probe(true, ""));
        let mut s = StatusSnapshot::default();
        live.fill(&mut s);
        let got: Vec<_> = s
            .services
            .iter()
            .map(|x| (x.name.as_str(), x.state.as_deref(), x.healthy, x.detail.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("api", Some("active (running)"), Some(true), Some("0 events, http ok")),
                ("db", Some("failed"), None, Some("0 events")),
            ]
        );
        // A later verdict replaces the earlier one, and the text shows it.
        live.record_health("api", false, &probe(false, "status 503"));
        live.fill(&mut s);
        assert_eq!(s.services[0].healthy, Some(false));
        let text = s.render_text();
        assert!(text.contains("active (running)") && text.contains("UNHEALTHY"), "{text}");
        assert!(text.contains("http: status 503"), "{text}");
    }
}
