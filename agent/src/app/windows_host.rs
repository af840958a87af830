//! `custos run` on Windows: under the Service Control Manager when it started
//! us (dispatcher, StartPending → Running → StopPending reports, Stop,
//! Shutdown and Preshutdown draining like SIGTERM on Linux), in the console
//! otherwise (Ctrl+C).

use crate::app::run::RunOptions;
use crate::config::LoadedConfig;
use crate::platform::windows::eventlog::{arm_service_log, Deferred, EventSource};
use crate::platform::windows::service::{run_service_or_console, BodyError, HostOptions, RunMode};

/// Runs the agent until the SCM (or Ctrl+C) stops it. `runtime` builds the
/// tokio runtime on the service's own thread; `event_log` is armed when the
/// SCM started us, so that the agent's log goes to the Event Log too.
pub fn run_agent(
    config: LoadedConfig,
    mut opts: RunOptions,
    event_log: Deferred<EventSource>,
    runtime: impl FnOnce() -> anyhow::Result<tokio::runtime::Runtime> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    opts.daemon.external_stop = Some(stop_rx);
    let service_name = config.raw.agent.windows.service_name.value.clone();
    let host = HostOptions { service_name: service_name.clone(), ..HostOptions::default() };
    let (_mode, result) = run_service_or_console(
        host,
        // Called on the SCM's control thread: only signal the drain.
        move || {
            let _ = stop_tx.send(true);
        },
        move |ctx| {
            if ctx.mode() == RunMode::Service {
                if let Err(e) = arm_service_log(&event_log, &service_name) {
                    tracing::warn!(service = %service_name, error = %e, "Cannot write to the Event Log; logging to stderr only.");
                }
            }
            let rt = runtime().map_err(|e| -> BodyError { e.into() })?;
            // The agent reports READY to systemd itself; to the SCM, Running
            // means the process is up and draining on Stop works, which it
            // does from here on.
            ctx.ready();
            let result = rt.block_on(crate::app::run::run(config, opts));
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result.map_err(|e| -> BodyError { e.into() })
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot run as a Windows service: {e}"))?;
    result.map_err(|e| anyhow::anyhow!("{e}"))
}
