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
//! 5. the exporter: the collector's endpoint, protocol, compression,
//!    timeout, headers and TLS, the spool's budget, the interval and the
//!    log rate limit change while it runs, without losing what is queued
//!    or spooled;
//! 6. the log level.
//!
//! What cannot change while the agent runs (the sensors' sizes, the state
//! directory, the listen address, switching between a collector and
//! files...) is named, key by key, in the reload's answer and the log
//! ([`restart_notes`]).

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
    let units = crate::service_manager::UnitLookup::new(crate::platform::service_manager());
    load_reloaded_with(path, &units)
}

/// [`load_reloaded`] with the service manager's view of units given.
pub fn load_reloaded_with(
    path: Option<&std::path::Path>,
    units: &crate::service_manager::UnitLookup,
) -> Result<Reloaded, String> {
    let config = crate::config::load(path).map_err(|e| e.to_string())?;
    // The collector settings must be usable before the reload says yes
    // (a CA file that does not parse, a header gRPC refuses).
    if let Some(otlp) = &config.raw.exporter.otlp {
        crate::export::Transport::new(otlp).map_err(|e| e.to_string())?;
    }
    let unknown = crate::config::check_units(&config, units);
    if !unknown.is_empty() {
        return Err(crate::yaml::LocatedErrors(unknown).to_string());
    }
    let dir = &config.raw.runbooks.dir;
    let runbooks = if dir.is_dir() {
        let mut report = crate::runbook::model::load_paths(std::slice::from_ref(dir));
        crate::runbook::model::check_against(&mut report, &config, units);
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

/// Whether a reload changes the services as far as the running agent
/// cares: who is managed and how, and how each is probed. Compared by value
/// (`Spanned` ignores places): the same configuration written on other lines
/// is the same, and a field added to a probe counts without being listed.
fn services_differ(old: &LoadedConfig, new: &LoadedConfig) -> bool {
    old.discover != new.discover || old.services != new.services
}

/// What a reload to `new` leaves for the next restart, one sentence per
/// key: what differs from `running`, the configuration the agent started
/// with (a key changed by an earlier reload still needs the restart).
pub fn restart_notes(running: &LoadedConfig, new: &Reloaded) -> Vec<String> {
    let (o, n) = (&running.raw, &new.config.raw);
    let mut keys: Vec<&str> = crate::export::restart_keys(&o.exporter, &n.exporter);
    let mut differs = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    differs("sensors", o.sensors != n.sensors);
    differs("detection", o.detection != n.detection);
    differs("agent.state_dir", o.agent.state_dir != n.agent.state_dir);
    differs("agent.listen", o.agent.listen != n.agent.listen);
    differs("agent.log_format", o.agent.log_format != n.agent.log_format);
    differs("agent.windows", o.agent.windows != n.agent.windows);
    differs("runbooks.dry_run", o.runbooks.dry_run != n.runbooks.dry_run);
    differs("runbooks.audit", o.runbooks.audit != n.runbooks.audit);
    keys.into_iter().map(|k| format!("`{k}` changed: it takes effect when the agent restarts")).collect()
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
    /// The running exporter's reloadable settings.
    pub exporter: Option<crate::export::ExporterReconfigurer>,
}

/// Applies every successful reload from `updates`, one at a time, in the
/// order of the module's documentation. `running` is the configuration the
/// agent started with.
pub fn apply_reloads(
    running: &LoadedConfig,
    mut updates: watch::Receiver<Arc<Reloaded>>,
    targets: ReloadTargets,
) -> tokio::task::JoinHandle<()> {
    let mut services = running.clone();
    tokio::spawn(async move {
        updates.borrow_and_update();
        while updates.changed().await.is_ok() {
            let reloaded = updates.borrow_and_update().clone();
            let new = &reloaded.config;
            targets.live.set_config(new);
            let services_changed = services_differ(&services, new);
            if services_changed {
                services = new.clone();
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
            if let Some(e) = &targets.exporter {
                e.apply(&new.raw.exporter);
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
        std::fs::remove_file(rb_dir.join("b.yaml")).unwrap();
        // A unit the service manager does not know, a runbook for a service
        // that is not configured: rejected, each at its place.
        let units = |known| {
            crate::service_manager::UnitLookup::new(Arc::new(crate::service_manager::KnownUnits(known)))
        };
        let base = format!(
            "runbooks: {{ dir: {} }}\nagent: {{ state_dir: {} }}\n",
            rb_dir.display(),
            dir.path().display()
        );
        write(&cfg, &format!("services:\n  - name: api\n    systemd_unit: apo\n{base}"));
        let err =
            load_reloaded_with(Some(&cfg), &units(vec!["api.service"])).err().expect("unknown unit accepted");
        assert!(err.contains(":3:19:") && err.contains("knows no unit `apo.service`"), "{err}");
        write(&cfg, &format!("services:\n  - name: web\n    systemd_unit: web\n{base}"));
        let err = load_reloaded_with(Some(&cfg), &units(vec!["web.service"]))
            .err()
            .expect("runbook for api accepted");
        assert!(err.contains("a.yaml:") && err.contains("not one of the configured services (web)"), "{err}");
        // No runbooks directory: self-healing off, the config alone reloads.
        write(&cfg, &format!("runbooks: {{ dir: {} }}\n", dir.path().join("absent").display()));
        assert!(load_reloaded(Some(&cfg)).unwrap().runbooks.is_none());
    }
}

#[cfg(test)]
mod change_tests {
    use super::services_differ;
    use crate::config::parse;

    const API: &str = "services:\n  - name: api\n    systemd_unit: api\n";

    fn probed(health: &str) -> crate::config::LoadedConfig {
        parse(&format!("{API}    health: {{ {health} }}\n"), "t").unwrap()
    }

    #[test]
    fn any_health_probe_field_is_a_change() {
        let base = "http: \"http://127.0.0.1:8080/\", every: 10s, timeout: 2s, failures: 3";
        let old = probed(base);
        for changed in [
            "http: \"http://127.0.0.1:8081/\", every: 10s, timeout: 2s, failures: 3",
            "http: \"http://127.0.0.1:8080/\", every: 11s, timeout: 2s, failures: 3",
            "http: \"http://127.0.0.1:8080/\", every: 10s, timeout: 3s, failures: 3",
            "http: \"http://127.0.0.1:8080/\", every: 10s, timeout: 2s, failures: 4",
            "http: \"http://127.0.0.1:8080/\", every: 10s, timeout: 2s, failures: 3, expect_status: 204",
            "http: \"http://127.0.0.1:8080/\", every: 10s, timeout: 2s, failures: 3, body_contains: ok",
            "tcp: \"127.0.0.1:8080\", every: 10s, timeout: 2s, failures: 3",
            "command: [\"/bin/true\"], every: 10s, timeout: 2s, failures: 3",
        ] {
            assert!(services_differ(&old, &probed(changed)), "{changed}");
        }
        assert!(services_differ(&old, &parse(API, "t").unwrap()), "probe removed");
        assert!(!services_differ(&old, &probed(base)));
        let cmd = probed("command: [\"/bin/true\"]");
        assert!(services_differ(&cmd, &probed("command: [\"/bin/true\", \"-q\"]")));
    }

    #[test]
    fn the_same_services_on_other_lines_are_no_change() {
        let old = probed("tcp: \"127.0.0.1:1\"");
        let moved = parse(
            "# a comment\nagent: { log_level: debug }\nservices:\n\n  - systemd_unit: api\n    health: { tcp: \"127.0.0.1:1\" }\n    name: api\n",
            "t",
        )
        .unwrap();
        assert!(!services_differ(&old, &moved));
        let other_unit = parse("services:\n  - name: api\n    systemd_unit: api2\n", "t").unwrap();
        assert!(services_differ(&parse(API, "t").unwrap(), &other_unit));
        assert!(services_differ(
            &parse(API, "t").unwrap(),
            &parse("services:\n  - discover: systemd\n", "t").unwrap()
        ));
    }

    #[test]
    fn the_exporter_compares_by_value() {
        let otlp = |text: &str| parse(text, "t").unwrap().raw.exporter;
        let old = otlp("exporter:\n  otlp: { endpoint: \"http://127.0.0.1:4317\" }\n");
        let moved = otlp("# moved\n\nexporter: { otlp: { endpoint: \"http://127.0.0.1:4317\" } }\n");
        assert_eq!(old, moved);
        assert_ne!(old, otlp("exporter:\n  otlp: { endpoint: \"http://127.0.0.1:4318\" }\n"));
        let header =
            "exporter:\n  otlp: { endpoint: \"http://x:4317\", headers: [ { name: a, value: b } ] }\n";
        assert_ne!(otlp(header), otlp(&header.replace("value: b", "value: c")));
    }
}
