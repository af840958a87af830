//! Health probes of managed services: HTTP (status and optional body
//! match), TCP connect, or a command (exit code; argv, no shell, run as
//! `nobody`). Each result is a `HealthProbe` event; a service turns
//! unhealthy after `failures` consecutive failures and healthy again on the
//! first success.

use crate::config::HealthConfig;
use custos_event::{Event, EventBody, HealthProbe};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    Http { url: String, expect_status: Option<u16>, body_contains: Option<String> },
    Tcp { addr: String },
    Command { argv: Vec<String> },
}

/// One service's probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub service: String,
    pub kind: ProbeKind,
    pub every: Duration,
    pub timeout: Duration,
    pub failures: u32,
}

impl Probe {
    /// From a validated `health:` section (exactly one kind is set).
    pub fn from_config(service: &str, h: &HealthConfig) -> Option<Probe> {
        let kind = if let Some(u) = &h.http {
            ProbeKind::Http {
                url: u.value.clone(),
                expect_status: h.expect_status.map(|s| s.value),
                body_contains: h.body_contains.clone(),
            }
        } else if let Some(t) = &h.tcp {
            ProbeKind::Tcp { addr: t.value.clone() }
        } else if let Some(c) = &h.command {
            ProbeKind::Command { argv: c.value.0.clone() }
        } else {
            return None;
        };
        Some(Probe {
            service: service.to_string(),
            kind,
            every: h.every.0,
            timeout: h.timeout.0,
            failures: h.failures.max(1),
        })
    }

    /// `http`, `tcp` or `command`: the probe's name in events.
    pub fn name(&self) -> &'static str {
        match self.kind {
            ProbeKind::Http { .. } => "http",
            ProbeKind::Tcp { .. } => "tcp",
            ProbeKind::Command { .. } => "command",
        }
    }

    /// Runs the probe once.
    pub fn check(&self) -> HealthProbe {
        let started = Instant::now();
        let (ok, detail) = match &self.kind {
            ProbeKind::Http { url, expect_status, body_contains } => {
                http(url, *expect_status, body_contains.as_deref(), self.timeout)
            }
            ProbeKind::Tcp { addr } => tcp(addr, self.timeout),
            ProbeKind::Command { argv } => {
                match crate::command::run_exec(argv, &[], None, crate::command::DEFAULT_RUN_AS, self.timeout)
                {
                    Ok(o) if o.success() => (true, "exit code 0".into()),
                    Ok(o) if o.timed_out => {
                        (false, format!("timed out after {} ms", self.timeout.as_millis()))
                    }
                    Ok(o) => (
                        false,
                        format!("exit code {:?}, signal {:?}: {}", o.exit_code, o.signal, o.stderr.trim()),
                    ),
                    Err(e) => (false, e),
                }
            }
        };
        HealthProbe {
            probe: self.name().to_string(),
            ok,
            latency_ns: started.elapsed().as_nanos() as u64,
            detail,
        }
    }
}

fn http(url: &str, expect: Option<u16>, body_contains: Option<&str>, timeout: Duration) -> (bool, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let status_ok = match expect {
                Some(e) => status == e,
                None => (200..300).contains(&status),
            };
            if !status_ok {
                return (false, format!("HTTP {status}"));
            }
            if let Some(needle) = body_contains {
                let body = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
                if !body.contains(needle) {
                    return (false, format!("HTTP {status}, body lacks {needle:?}"));
                }
            }
            (true, format!("HTTP {status}"))
        }
        Err(e) => (false, e.to_string()),
    }
}

fn tcp(addr: &str, timeout: Duration) -> (bool, String) {
    let addrs = match addr.to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return (false, format!("cannot resolve {addr}: {e}")),
    };
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return (true, format!("connected to {a}")),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    (false, last)
}

/// Consecutive-failure threshold over probe results.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    threshold: u32,
    consecutive_failures: u32,
    healthy: bool,
}

impl HealthTracker {
    pub fn new(threshold: u32) -> Self {
        HealthTracker { threshold: threshold.max(1), consecutive_failures: 0, healthy: true }
    }
    /// Records a result; returns whether the service counts as healthy now.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            self.consecutive_failures = 0;
            self.healthy = true;
        } else {
            self.consecutive_failures += 1;
            if self.consecutive_failures >= self.threshold {
                self.healthy = false;
            }
        }
        self.healthy
    }
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

/// Runs each probe on its own thread every `every` until `stop` is set,
/// calling `sink(event, healthy)` with each result: the integrator sends
/// the event down the pipeline and `healthy` to `Engine::on_health`.
pub fn spawn(
    probes: Vec<Probe>,
    sink: Arc<dyn Fn(Event, bool) + Send + Sync>,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    probes
        .into_iter()
        .filter_map(|p| {
            let sink = sink.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("probe-{}", p.service))
                .spawn(move || {
                    let mut tracker = HealthTracker::new(p.failures);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let result = p.check();
                        let healthy = tracker.record(result.ok);
                        let mut ev = Event::new(SystemTime::now(), EventBody::HealthProbe(result));
                        ev.service = Some(p.service.clone());
                        sink(ev, healthy);
                        // Sleep in short slices so `stop` is honoured quickly.
                        while !stop.load(Ordering::Relaxed) && started.elapsed() < p.every {
                            std::thread::sleep(Duration::from_millis(50).min(p.every));
                        }
                    }
                })
                .ok()
        })
        .collect()
}

/// Running probe threads; [`ProbeThreads::stop`] (or drop) ends them.
pub struct ProbeThreads {
    stop: Arc<AtomicBool>,
}

impl ProbeThreads {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for ProbeThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Told of each probe result: the `health_probe` event (with its service)
/// and whether the service counts as healthy now (after its threshold of
/// consecutive failures).
pub type HealthObserver = Box<dyn Fn(&Event, bool) + Send + Sync>;

/// Starts the probes of every configured service with `health:`. Each
/// result goes down the pipeline as a `health_probe` event (`try_send`: a
/// full queue drops it) and to the observer (the runbook engine's
/// `on_health`, `custos status`).
pub fn start_probes(
    config: &crate::config::LoadedConfig,
    observer: HealthObserver,
    events: tokio::sync::mpsc::Sender<Event>,
) -> ProbeThreads {
    let probes: Vec<Probe> = config
        .services
        .iter()
        .filter_map(|s| s.health.as_ref().and_then(|h| Probe::from_config(&s.name, h)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    spawn(
        probes,
        Arc::new(move |ev: Event, healthy: bool| {
            observer(&ev, healthy);
            if events.try_send(ev).is_err() {
                tracing::debug!("Health probe result dropped: the pipeline is busy.");
            }
        }),
        stop.clone(),
    );
    ProbeThreads { stop }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn probe(kind: ProbeKind) -> Probe {
        Probe {
            service: "api".into(),
            kind,
            every: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failures: 2,
        }
    }

    #[test]
    fn tracker_needs_consecutive_failures() {
        let mut t = HealthTracker::new(2);
        assert!(t.record(false));
        assert!(t.record(true));
        assert!(t.record(false));
        assert!(!t.record(false));
        assert!(t.record(true));
    }

    #[test]
    fn tcp_probe_sees_listener_and_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(probe(ProbeKind::Tcp { addr: addr.clone() }).check().ok);
        drop(l);
        let r = probe(ProbeKind::Tcp { addr }).check();
        assert!(!r.ok && r.detail.contains("refused"), "{}", r.detail);
    }

    #[test]
    fn http_probe_checks_status_and_body() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for body in ["all good", "degraded"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let p = probe(ProbeKind::Http { url, expect_status: None, body_contains: Some("good".into()) });
        assert!(p.check().ok);
        let r = p.check();
        assert!(!r.ok && r.detail.contains("lacks"), "{}", r.detail);
        server.join().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn command_probe_uses_exit_code() {
        assert!(probe(ProbeKind::Command { argv: vec!["/bin/true".into()] }).check().ok);
        assert!(!probe(ProbeKind::Command { argv: vec!["/bin/false".into()] }).check().ok);
    }
}
