//! What watches the managed services apart from the sensor: health probes
//! and the service manager's state poller, replaced whole when a reload
//! changes the services.

use crate::config::LoadedConfig;

/// What watches the managed services apart from the sensor: health probes
/// (results as events, `custos status` lines and health triggers) and the
/// service manager poller (`custos status`, the `service_down` trigger).
/// Dropping it stops both.
pub struct ServiceWatchers {
    _probes: crate::health::ProbeThreads,
    _state_poller: Option<crate::service_manager::StatePoller>,
    pub events: tokio::sync::mpsc::Sender<custos_event::Event>,
}

impl ServiceWatchers {
    pub fn start(
        config: &LoadedConfig,
        engine: Option<crate::runbook::Engine>,
        live: crate::daemon::LiveStatus,
        events: tokio::sync::mpsc::Sender<custos_event::Event>,
    ) -> ServiceWatchers {
        let probes = {
            let engine = engine.clone();
            let live = live.clone();
            crate::health::start_probes(
                config,
                Box::new(move |ev, healthy| {
                    let (Some(svc), custos_event::EventBody::HealthProbe(probe)) = (&ev.service, &ev.body)
                    else {
                        return;
                    };
                    live.record_health(svc, healthy, probe);
                    if let Some(e) = &engine {
                        e.on_health(svc, healthy, Some(ev));
                    }
                }),
                events.clone(),
            )
        };
        ServiceWatchers { _probes: probes, _state_poller: start_state_poller(config, engine, live), events }
    }
}

/// Polls the service manager: with runbooks, every service (by its unit, or
/// the unit its name suggests); without, only the services selected by unit.
fn start_state_poller(
    config: &LoadedConfig,
    engine: Option<crate::runbook::Engine>,
    live: crate::daemon::LiveStatus,
) -> Option<crate::service_manager::StatePoller> {
    let (manager, services) = match &engine {
        Some(e) => {
            let units =
                super::runbooks::service_infos(config).into_iter().map(|(n, i)| (n, i.unit)).collect();
            (e.service_manager(), units)
        }
        None => {
            let units: Vec<(String, String)> = config
                .services
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.selected_unit()?.to_string())))
                .collect();
            if units.is_empty() {
                return None;
            }
            (crate::platform::service_manager(), units)
        }
    };
    crate::service_manager::StatePoller::start(
        manager,
        services,
        Box::new(move |name, status| {
            live.record_state(name, status);
            if let Some(e) = &engine {
                e.on_service_state(name, status);
            }
        }),
    )
}
