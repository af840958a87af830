//! `GET /metrics` (Prometheus text) and `GET /healthz` on `agent.listen`.

use super::stats::{prometheus_text, AgentStats};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What `/healthz` reports: whether the exporter's loop is running.
#[derive(Debug, Default)]
pub struct Health {
    pub exporter_running: AtomicBool,
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
            if health.exporter_running.load(Ordering::Relaxed) {
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
            let (stats, health, version) = (stats.clone(), health.clone(), version.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    handle(req, stats.clone(), health.clone(), version.clone())
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(io, svc);
                let _ = conn.await;
            });
        }
    });
    Ok((local, task))
}
