//! `GET /metrics` (Prometheus text) and `GET /healthz` on `agent.listen`.
//!
//! Any local user can connect, so connections are capped (beyond
//! [`MAX_CONNECTIONS`] a new one is closed at once and counted) and each
//! lives at most [`CONNECTION_LIFETIME`]: a user holding a thousand
//! connections takes neither the agent's descriptors nor its memory.

use super::stats::{prometheus_text, AgentStats};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What `/healthz` reports: whether the exporter's loop is running, and
/// whether an internal task of the agent has died.
#[derive(Debug, Default)]
pub struct Health {
    pub exporter_running: AtomicBool,
    pub faults: crate::daemon::Faults,
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    stats: Arc<AgentStats>,
    health: Arc<Health>,
    version: Arc<str>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let resp = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => resp(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(&stats.snapshot(), &version),
        ),
        (&Method::GET, "/healthz") => {
            let s = stats.snapshot();
            if let Some(fault) = health.faults.first() {
                let body = serde_json::json!({ "status": "failed", "error": fault }).to_string() + "\n";
                resp(StatusCode::SERVICE_UNAVAILABLE, "application/json", body)
            } else if health.exporter_running.load(Ordering::Relaxed) {
                let body = format!(
                    "{{\"status\":\"ok\",\"spool_batches\":{},\"spool_bytes\":{},\"export_failures\":{}}}\n",
                    s.spool_batches, s.spool_bytes, s.export_failures
                );
                resp(StatusCode::OK, "application/json", body)
            } else {
                resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"status\":\"exporter stopped\"}\n".into(),
                )
            }
        }
        (_, "/metrics" | "/healthz") => {
            resp(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into())
        }
        _ => resp(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /healthz\n".into()),
    })
}

/// Connections served at once; scrapers need one or two.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest a connection is kept, idle or not.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Binds `addr` and serves until the returned task is aborted. Must be
/// called from within a Tokio runtime.
pub fn serve(
    addr: SocketAddr,
    stats: Arc<AgentStats>,
    health: Arc<Health>,
    version: String,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    let version: Arc<str> = version.into();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Could not accept an HTTP connection.");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closed at once: the kernel's backlog, not our descriptors,
                // holds whoever waits.
                drop(stream);
                AgentStats::add(&stats.http_connections_refused, 1);
                continue;
            };
            let (stats, health, version) = (stats.clone(), health.clone(), version.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| {
                    handle(req, stats.clone(), health.clone(), version.clone())
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(io, svc);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            });
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_cap_are_closed_and_counted() {
        let stats = Arc::new(AgentStats::default());
        let health = Arc::new(Health::default());
        health.exporter_running.store(true, Ordering::Relaxed);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), stats.clone(), health, "t".into()).unwrap();
        // A local user opens many connections and says nothing.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 100 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stats.snapshot().http_connections_refused < 100 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(stats.snapshot().http_connections_refused, 100);
        // The refused ones were closed by the agent: reading gives EOF.
        let mut closed = 0;
        for s in held.iter_mut().rev().take(100) {
            let mut b = [0u8; 1];
            if matches!(
                tokio::time::timeout(std::time::Duration::from_secs(1), s.read(&mut b)).await,
                Ok(Ok(0))
            ) {
                closed += 1;
            }
        }
        assert_eq!(closed, 100);
        drop(held);
        // Once they are gone, scrapes are served again.
        let mut answer = String::new();
        for _ in 0..50 {
            answer = get(addr, "/metrics").await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // (A scrape that raced the release of the slots was refused too.)
        let refused: u64 = answer
            .lines()
            .find_map(|l| l.strip_prefix("custos_http_connections_refused_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{answer}"));
        assert!(refused >= 100, "{answer}");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn healthz_says_when_an_internal_task_died() {
        let stats = Arc::new(AgentStats::default());
        let health = Arc::new(Health::default());
        health.exporter_running.store(true, Ordering::Relaxed);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), stats, health.clone(), "t".into()).unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        // The exporter's loop panics; its flag says it still runs.
        health.faults.spawn("exporter", async { panic!("boom") }).await.unwrap();
        let answer = get(addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("\"status\":\"failed\"") && answer.contains("exporter stopped: panicked: boom"),
            "{answer}"
        );
        task.abort();
    }
}
