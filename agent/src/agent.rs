//! `custos run`: the agent. Starts the sensor and the pipeline with every
//! consumer, and stops them in order.

use crate::attribution::Attributor;
use crate::config::LoadedConfig;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::run::{host_view, start_sensor, Source, SummaryPrinter};
use std::sync::Arc;
use std::time::Duration;

/// How long `custos run` gives the exporter to send or spool what it holds
/// when stopping.
const EXPORT_SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);

/// Options of `custos run` beyond the configuration.
pub struct RunOptions {
    pub source: Source,
    /// Print the per-service table this often (None: never).
    pub summary: Option<Duration>,
    /// Service integration: control socket path, and the logger whose level
    /// follows reloads.
    pub daemon: crate::daemon::run_support::DaemonRunOptions,
}

/// What watches the managed services apart from the sensor: health probes
/// (results as events, `custos status` lines and health triggers) and the
/// service manager poller (`custos status`, the `service_down` trigger).
/// Dropping it stops both.
struct ServiceWatchers {
    _probes: crate::health::ProbeThreads,
    _state_poller: Option<crate::service_manager::StatePoller>,
    events: tokio::sync::mpsc::Sender<custos_event::Event>,
}

impl ServiceWatchers {
    fn start(
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
    use crate::config::Selector;
    let (manager, services) = match &engine {
        Some(e) => {
            let units =
                crate::runbook::sink::service_infos(config).into_iter().map(|(n, i)| (n, i.unit)).collect();
            (e.service_manager(), units)
        }
        None => {
            let units: Vec<(String, String)> = config
                .services
                .iter()
                .filter_map(|s| match &s.selector {
                    Selector::SystemdUnit(u) | Selector::WindowsService(u) => {
                        Some((s.name.clone(), u.clone()))
                    }
                    Selector::Exe(_) | Selector::Cgroup(_) => None,
                })
                .collect();
            if units.is_empty() {
                return None;
            }
            (crate::runbook::sink::service_manager(), units)
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

/// The services of a configuration as far as the running agent cares: who
/// is managed and how, and how each is probed (values only: the same
/// configuration written on other lines is the same).
fn services_key(config: &LoadedConfig) -> String {
    let mut key = format!("{:?}", config.discover);
    for s in &config.services {
        key.push_str(&format!("|{}={:?}", s.name, s.selector));
        if let Some(h) = &s.health {
            key.push_str(&format!(
                " health {:?} {:?} {:?} {:?} {:?} {} {:?} {:?}",
                h.http.as_ref().map(|v| &v.value),
                h.tcp.as_ref().map(|v| &v.value),
                h.command.as_ref().map(|v| &v.value),
                h.every.0,
                h.timeout.0,
                h.failures,
                h.expect_status,
                h.body_contains,
            ));
        }
    }
    key
}

/// Applies reloads that change the managed services while the agent runs:
/// attribution and the kernel filter switch between two events, the engine
/// acts on the new units, and probes and the state poller restart for the
/// new set. Reloads that leave the services alone leave them running.
fn apply_service_reloads(
    config: &LoadedConfig,
    service: &crate::daemon::run_support::ServiceLink,
    pipeline: &mut Pipeline,
    engine: Option<crate::runbook::Engine>,
    watchers: Arc<std::sync::Mutex<Option<ServiceWatchers>>>,
) {
    let mut updates = service.config_updates();
    let reconfigure = pipeline.reconfigure_input();
    let live = service.live().clone();
    let mut current = services_key(config);
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let new = updates.borrow_and_update().config.clone();
            let key = services_key(&new);
            if key == current {
                continue;
            }
            current = key;
            if reconfigure.send(Arc::new(new.clone())).await.is_err() {
                return; // the pipeline has stopped
            }
            if let Some(e) = &engine {
                e.set_services(crate::runbook::sink::service_infos(&new));
            }
            let Ok(mut w) = watchers.lock() else { return };
            // The old ones stop before the new ones start; a stopped agent
            // (taken) starts none.
            if let Some(old) = w.take() {
                let events = old.events.clone();
                drop(old);
                *w = Some(ServiceWatchers::start(&new, engine.clone(), live.clone(), events));
            }
            tracing::info!(services = new.services.len(), "Applied the reloaded services.");
        }
    });
}

/// Runs the agent until SIGTERM/SIGINT, or until a recording is exhausted.
pub async fn run(config: LoadedConfig, opts: RunOptions) -> anyhow::Result<()> {
    // Service integration first, so that an early SIGTERM is not lost.
    let service = crate::daemon::run_support::ServiceLink::start(&config, opts.daemon)?;
    let started = start_sensor(&opts.source, &config).await?;
    let stats = Arc::new(PipelineStats::default());
    let attributor = Attributor::new(&config, host_view(&opts.source));
    let mut pipeline = Pipeline::new(attributor, started.control, stats.clone());
    let agent_stats = Arc::new(crate::export::AgentStats::default());
    let exporter = crate::export::Exporter::start(&config, crate::export::HostInfo::detect(), agent_stats)?;
    pipeline.add_sink(Box::new(exporter.sink()));
    service.add_exporter_status(&config, exporter.stats().clone());
    let runbooks = crate::runbook::sink::start(&config)?;
    if let Some(rb) = &runbooks {
        pipeline.add_sink(Box::new(rb.sink()));
        rb.export_audit(exporter.log_sender());
        service.attach_runbooks(rb.engine.clone());
    }
    // The per-service series feed the detectors and the runbooks' metric
    // triggers; anomalies and series values reach the engine through a
    // bounded channel.
    if config.raw.detection.enabled || runbooks.is_some() {
        let bank = config
            .raw
            .detection
            .enabled
            .then(|| custos_detect::DetectorBank::from_config(&config.raw.detection.bank_config()));
        let findings = runbooks.as_ref().map(|rb| {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            rb.forward_findings(rx);
            tx
        });
        let sink = crate::detection::DetectionSink::new(
            bank,
            &config.raw.agent.state_dir,
            Some(exporter.log_sender()),
            findings,
        )
        .with_exporter(exporter.anomaly_scores(), exporter.stats().clone());
        pipeline.add_sink(Box::new(sink));
    }
    // Health probes and the service state poller run with or without
    // runbooks; a reload that changes the services replaces them.
    let engine = runbooks.as_ref().map(|rb| rb.engine.clone());
    let watchers = Arc::new(std::sync::Mutex::new(Some(ServiceWatchers::start(
        &config,
        engine.clone(),
        service.live().clone(),
        pipeline.side_input(1024),
    ))));
    apply_service_reloads(&config, &service, &mut pipeline, engine, watchers.clone());
    if let Some(every) = opts.summary {
        let services = pipeline.configured_services();
        pipeline.add_sink(Box::new(SummaryPrinter::new(every, &services)));
    }
    service.add_sinks(&mut pipeline);
    tracing::info!(
        services = config.services.len(),
        everything = config.manages_everything(),
        "Agent started."
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let pipeline_task = tokio::spawn(pipeline.run(started.rx, stop));
    service.ready(&stats);
    let stopping = service.until_stop(pipeline_task, stop_tx, started.task).await;
    // After the drain: flushes what the exporter holds, or spools it, within the budget.
    let stopping = stopping.then("flush or spool telemetry", EXPORT_SHUTDOWN_BUDGET, async move {
        exporter.shutdown(EXPORT_SHUTDOWN_BUDGET).await;
        Ok(())
    });
    let finished = stopping.finish().await?;
    drop(watchers.lock().ok().and_then(|mut w| w.take()));
    tracing::info!(
        events = stats.events_attributed.load(std::sync::atomic::Ordering::Relaxed),
        lost_kernel = finished.loss.kernel,
        lost_channel = finished.loss.channel,
        "Agent stopped."
    );
    Ok(())
}
