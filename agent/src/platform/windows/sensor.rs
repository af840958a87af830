//! The Windows sensor as the agent runs it: the ETW sessions of
//! `custos-etw`, service scoping by process tree with main pids from the
//! SCM, and the bounded channel to the pipeline.
//!
//! Events are attributed here (their `service` is set) for `windows_service`
//! selectors; other events pass through unattributed for the shared
//! attribution stage (`exe:` selectors, or everything when no services are
//! configured).

use super::discover::{discovered, windows_services};
use crate::config::{Discover, LoadedConfig};
use crate::service_manager::{ActiveState, ServiceManager};
use custos_etw::session::{EtwSensor, SensorConfig, SensorCounters, SensorError, SensorSink};
use custos_etw::{DecoderConfig, ExistingProcess, ServiceScope};
use custos_event::Event;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// How often the SCM is asked for the main pid of a service whose main
/// process is unknown (just restarted), and of every service otherwise.
const POLL_UNRESOLVED: Duration = Duration::from_millis(250);
const POLL_ALL: Duration = Duration::from_secs(5);

struct ScopedSink {
    scope: Arc<Mutex<ServiceScope>>,
    tx: Sender<Event>,
}

impl SensorSink for ScopedSink {
    fn event(&self, mut event: Event) -> bool {
        self.scope.lock().unwrap_or_else(|p| p.into_inner()).attribute(&mut event);
        self.tx.try_send(event).is_ok()
    }

    fn existing_process(&self, p: ExistingProcess) {
        self.scope.lock().unwrap_or_else(|p| p.into_inner()).observe_existing(p.pid, p.ppid, &p.image);
    }
}

/// The running Windows sensor; dropping it stops the ETW sessions and the
/// SCM poller.
pub struct WindowsSensor {
    etw: Option<EtwSensor>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
    scope: Arc<Mutex<ServiceScope>>,
}

/// Starts the ETW sessions and the SCM poller, sending events to `tx`
/// (`try_send`: a full channel drops and counts).
pub fn start_sensor(
    config: &LoadedConfig,
    tx: Sender<Event>,
    scm: Arc<dyn ServiceManager>,
) -> Result<WindowsSensor, SensorError> {
    let s = &config.raw.sensors;
    if s.syscalls {
        tracing::info!("Syscall statistics are not collected on Windows: the kernel logger's per-syscall events cost too much.");
    }
    let services = windows_services(config);
    let scope = Arc::new(Mutex::new(ServiceScope::new(services.iter().map(|(n, _)| n.clone()))));
    let discovery = config.discover.contains(&Discover::Windows).then(|| Discovery {
        // Neither a configured name nor a configured SCM name is discovered again.
        skip: config
            .services
            .iter()
            .map(|s| s.name.clone())
            .chain(services.iter().map(|(_, scm)| scm.clone()))
            .collect(),
        custos: config.raw.agent.windows.service_name.value.clone(),
    });
    let sensor_config = SensorConfig {
        session_name: config.raw.agent.windows.etw_session.value.clone(),
        process: s.process,
        tcp: s.tcp,
        decoder: DecoderConfig { argv_max_args: *s.argv_max_args as usize, ..DecoderConfig::default() },
        ..SensorConfig::default()
    };
    let etw = EtwSensor::start(sensor_config, ScopedSink { scope: scope.clone(), tx })?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (scope, stop) = (scope.clone(), stop.clone());
        std::thread::spawn(move || poll_main_pids(&services, discovery.as_ref(), &scope, scm.as_ref(), &stop))
    };
    Ok(WindowsSensor { etw: Some(etw), stop, poller: Some(poller), scope })
}

/// What `discover: windows` follows besides the configured services.
struct Discovery {
    skip: Vec<String>,
    custos: String,
}

fn discover_services(d: &Discovery, scope: &Mutex<ServiceScope>) {
    let listed = match super::scm::list_services() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot list Windows services to discover.");
            return;
        }
    };
    let mut scope = scope.lock().unwrap_or_else(|p| p.into_inner());
    for (name, pid) in discovered(&listed, &d.skip, &d.custos) {
        if scope.add_service(name) {
            tracing::info!(service = %name, "Discovered a Windows service.");
        }
        scope.set_main_pid(name, pid);
    }
}

fn poll_main_pids(
    services: &[(String, String)],
    discovery: Option<&Discovery>,
    scope: &Mutex<ServiceScope>,
    scm: &dyn ServiceManager,
    stop: &AtomicBool,
) {
    let mut last_all: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let all = last_all.is_none_or(|t| t.elapsed() >= POLL_ALL);
        if all {
            last_all = Some(Instant::now());
            if let Some(d) = discovery {
                discover_services(d, scope);
            }
        }
        let unresolved: Vec<String> =
            scope.lock().unwrap_or_else(|p| p.into_inner()).unresolved().map(str::to_string).collect();
        for (name, scm_name) in services {
            if !all && !unresolved.contains(name) {
                continue;
            }
            let main_pid = match scm.status(scm_name) {
                Ok(st)
                    if matches!(
                        st.state,
                        ActiveState::Active | ActiveState::Activating | ActiveState::Deactivating
                    ) =>
                {
                    st.main_pid
                }
                Ok(_) => None,
                Err(e) => {
                    if all {
                        tracing::warn!(service = %name, windows_service = %scm_name, error = %e, "Cannot query the service.");
                    }
                    None
                }
            };
            if scope.lock().unwrap_or_else(|p| p.into_inner()).set_main_pid(name, main_pid) {
                tracing::info!(service = %name, windows_service = %scm_name, main_pid = ?main_pid, "Following the service's process tree.");
            }
        }
        std::thread::sleep(POLL_UNRESOLVED);
    }
}

impl WindowsSensor {
    /// Decoding, channel and ETW loss counters.
    pub fn counters(&self) -> SensorCounters {
        self.etw.as_ref().map(EtwSensor::counters).unwrap_or_default()
    }

    /// Loss counters in the shared shape (`LossCounters.platform` is ETW's).
    pub fn loss(&self) -> custos_event::LossCounters {
        let c = self.counters();
        custos_event::LossCounters { kernel: 0, channel: c.channel_dropped, platform: c.platform_lost }
    }

    /// The service a pid belongs to now, for other sources (health probes).
    pub fn service_of(&self, pid: u32) -> Option<String> {
        self.scope.lock().unwrap_or_else(|p| p.into_inner()).service_of(pid).map(str::to_string)
    }

    /// Stops the sessions and the poller, waiting for their threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(etw) = self.etw.take() {
            etw.stop();
        }
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }
}

impl Drop for WindowsSensor {
    fn drop(&mut self) {
        self.shutdown();
    }
}
