//! One reload, in one place, in one order: the configuration and its
//! runbooks are loaded and checked together ([`load_reloaded`]); then, only
//! if both are valid, they are applied in this order by one task
//! ([`apply_reloads`]):
//!
//! 1. the configuration `custos status` shows;
//! 2. the pipeline: attribution and the kernel filter switch between two
//!    events (when the services changed);
//! 3. the runbook engine: runbooks and services swapped together;
//! 4. the watchers: probes and the state poller replaced for the new set;
//! 5. the exporter: its settings cannot change while it runs, so a change
//!    is named in the log as needing a restart;
//! 6. the log level.

use super::watchers::ServiceWatchers;
use crate::config::LoadedConfig;
use crate::daemon::logging::LoggingHandle;
use crate::daemon::LiveStatus;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// What a reload replaces, as one unit: the configuration and the
/// runbooks its `runbooks.dir` holds. Either both are valid and both are
/// swapped in, or neither is.
pub struct Reloaded {
    pub config: LoadedConfig,
    /// `None` when the runbooks directory does not exist (self-healing off).
    pub runbooks: Option<Vec<crate::runbook::model::Runbook>>,
}

/// Loads a [`Reloaded`]: the configuration file, then its runbooks. Any
/// invalid runbook rejects the whole reload (at start-up a bad runbook is
/// skipped; on reload, keeping the running set is the safer choice).
pub fn load_reloaded(path: Option<&std::path::Path>) -> Result<Reloaded, String> {
    let config = crate::config::load(path).map_err(|e| e.to_string())?;
    let dir = &config.raw.runbooks.dir;
    let runbooks = if dir.is_dir() {
        let report = crate::runbook::model::load_paths(std::slice::from_ref(dir));
        if !report.errors.is_empty() {
            let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
            return Err(errors.join("\n"));
        }
        Some(report.runbooks)
    } else {
        None
    };
    Ok(Reloaded { config, runbooks })
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

/// What a reload acts on in the running agent.
pub struct ReloadTargets {
    pub live: LiveStatus,
    /// Attribution and the kernel filter, in the pipeline task.
    pub pipeline: mpsc::Sender<Arc<LoadedConfig>>,
    pub engine: Option<crate::runbook::Engine>,
    /// `None` once the agent stops: a late reload starts no watchers.
    pub watchers: Arc<Mutex<Option<ServiceWatchers>>>,
    /// The installed logger, when the level is not pinned.
    pub logging: Option<LoggingHandle>,
}

/// Applies every successful reload from `updates`, one at a time, in the
/// order of the module's documentation. `running` is the configuration the
/// agent started with.
pub fn apply_reloads(
    running: &LoadedConfig,
    mut updates: watch::Receiver<Arc<Reloaded>>,
    targets: ReloadTargets,
) -> tokio::task::JoinHandle<()> {
    let mut services = services_key(running);
    let exporter = format!("{:?}", running.raw.exporter);
    tokio::spawn(async move {
        updates.borrow_and_update();
        while updates.changed().await.is_ok() {
            let reloaded = updates.borrow_and_update().clone();
            let new = &reloaded.config;
            targets.live.set_config(new);
            let key = services_key(new);
            let services_changed = key != services;
            if services_changed {
                services = key;
                if targets.pipeline.send(Arc::new(new.clone())).await.is_err() {
                    return; // the pipeline has stopped
                }
            }
            let infos = services_changed.then(|| super::runbooks::service_infos(new));
            match (&targets.engine, &reloaded.runbooks) {
                (Some(e), rbs) => e.reload(rbs.clone().unwrap_or_default(), infos),
                (None, Some(_)) => {
                    tracing::warn!("Runbooks appeared; self-healing starts at the next restart.")
                }
                (None, None) => {}
            }
            if services_changed {
                let Ok(mut w) = targets.watchers.lock() else { return };
                // The old ones stop before the new ones start; a stopped
                // agent (taken) starts none.
                if let Some(old) = w.take() {
                    let events = old.events.clone();
                    drop(old);
                    *w = Some(ServiceWatchers::start(
                        new,
                        targets.engine.clone(),
                        targets.live.clone(),
                        events,
                    ));
                }
                tracing::info!(services = new.services.len(), "Applied the reloaded services.");
            }
            if format!("{:?}", new.raw.exporter) != exporter {
                tracing::warn!("The exporter's settings changed; they take effect when the agent restarts.");
            }
            if let Some(l) = &targets.logging {
                if let Err(e) = l.set_level(&new.raw.agent.log_level.value) {
                    tracing::warn!(error = %e, "Kept the previous log level.");
                }
            }
        }
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn reload_loads_config_and_runbooks_together_or_not_at_all() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let rb_dir = dir.path().join("runbooks");
        std::fs::create_dir(&rb_dir).unwrap();
        let cfg = dir.path().join("custos.yaml");
        let write = |p: &std::path::Path, t: &str| {
            std::fs::write(p, t).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write(
            &cfg,
            &format!(
                "runbooks: {{ dir: {} }}\nagent: {{ state_dir: {} }}\n",
                rb_dir.display(),
                dir.path().display()
            ),
        );
        let example =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../runbooks/anomaly.yaml"))
                .unwrap();
        write(&rb_dir.join("a.yaml"), &example);
        let ok = load_reloaded(Some(&cfg)).unwrap();
        assert_eq!(ok.runbooks.as_ref().map(Vec::len), Some(1));
        // One broken runbook rejects the whole reload, with its place.
        write(&rb_dir.join("b.yaml"), "name: broken\nservice: api\ntrigger: { nonsense: 1 }\nsteps: []\n");
        let err = load_reloaded(Some(&cfg)).err().expect("a broken runbook was accepted");
        assert!(err.contains(&rb_dir.join("b.yaml").display().to_string()), "{err}");
        // No runbooks directory: self-healing off, the config alone reloads.
        write(&cfg, &format!("runbooks: {{ dir: {} }}\n", dir.path().join("absent").display()));
        assert!(load_reloaded(Some(&cfg)).unwrap().runbooks.is_none());
    }
}
