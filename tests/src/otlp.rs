//! An OTLP receiver for tests, built from opentelemetry-proto: a tonic gRPC
//! server and an OTLP/HTTP (protobuf) server that decode and record every
//! request, can be told to answer with failures (UNAVAILABLE, RESOURCE_EXHAUSTED
//! with RetryInfo, HTTP 429/503 with Retry-After, partial success), and can be
//! stopped and started again on the same ports to simulate a collector outage.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_server::{LogsService, LogsServiceServer},
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_server::{MetricsService, MetricsServiceServer},
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, HistogramDataPoint, Metric};
use prost::Message;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the receiver answers the next request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok,
    /// gRPC UNAVAILABLE / HTTP 503 (retryable).
    Unavailable,
    /// gRPC RESOURCE_EXHAUSTED with RetryInfo / HTTP 429 with Retry-After.
    Throttle(Duration),
    /// Accepted, but `rejected` records refused with `message`.
    Partial {
        rejected: i64,
        message: String,
    },
    /// gRPC INVALID_ARGUMENT / HTTP 400 (permanent).
    BadRequest,
}

/// What one request carried, besides its payload.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub signal: &'static str,
    pub transport: &'static str,
    /// Lower-case header names with their values.
    pub headers: Vec<(String, String)>,
    /// `gzip` when the body was compressed.
    pub encoding: Option<String>,
    /// What the receiver answered.
    pub reply: String,
}

#[derive(Debug, Default)]
struct State {
    metrics: Vec<ExportMetricsServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    requests: Vec<RequestInfo>,
    script: VecDeque<Reply>,
}

/// Recorded requests, shared by the gRPC and HTTP servers.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<State>>);

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues answers for the next requests; after them, `Ok`.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    fn next_reply(&self) -> Reply {
        self.lock().script.pop_front().unwrap_or(Reply::Ok)
    }

    /// Metrics requests accepted (not those answered with a failure).
    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.lock().metrics.clone()
    }
    /// Logs requests accepted.
    pub fn logs(&self) -> Vec<ExportLogsServiceRequest> {
        self.lock().logs.clone()
    }
    /// Number of accepted log records, without copying them.
    pub fn log_record_count(&self) -> usize {
        self.lock()
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.metrics.clear();
        st.logs.clear();
        st.requests.clear();
    }

    /// Every request, failed ones included, in arrival order.
    pub fn requests(&self) -> Vec<RequestInfo> {
        self.lock().requests.clone()
    }

    /// The distinct `process.pid`s of `service`'s log records named
    /// `event_name`, sorted: which events made it through the exporter.
    pub fn pids_of(&self, service: &str, event_name: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .log_records()
            .iter()
            .filter(|(svc, l)| svc == service && l.event_name == event_name)
            .filter_map(|(_, l)| str_attr(&l.attributes, "process.pid")?.parse().ok())
            .collect();
        pids.sort();
        pids.dedup();
        pids
    }

    /// Every accepted log record with its `service.name`.
    pub fn log_records(&self) -> Vec<(String, LogRecord)> {
        let mut out = Vec::new();
        for req in self.logs() {
            for rl in req.resource_logs {
                let svc = rl
                    .resource
                    .as_ref()
                    .and_then(|r| str_attr(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for sl in rl.scope_logs {
                    for r in sl.log_records {
                        out.push((svc.clone(), r));
                    }
                }
            }
        }
        out
    }

    /// The latest accepted value of metric `name` for service `service`
    /// whose attributes include `attrs`, as an integer sum/gauge.
    pub fn latest_int(&self, service: &str, name: &str, attrs: &[(&str, &str)]) -> Option<i64> {
        let mut found = None;
        for req in self.metrics() {
            for (svc, m) in metrics_of(&req) {
                if svc != service || m.name != name {
                    continue;
                }
                let points = match &m.data {
                    Some(Data::Sum(s)) => &s.data_points,
                    Some(Data::Gauge(g)) => &g.data_points,
                    _ => continue,
                };
                for p in points {
                    if attrs.iter().all(|(k, v)| str_attr(&p.attributes, k).as_deref() == Some(*v)) {
                        if let Some(number_data_point::Value::AsInt(i)) = p.value {
                            found = Some(i);
                        }
                    }
                }
            }
        }
        found
    }

    /// The latest accepted histogram point of `name` for `service`.
    pub fn latest_histogram(
        &self,
        service: &str,
        name: &str,
        attrs: &[(&str, &str)],
    ) -> Option<HistogramDataPoint> {
        let mut found = None;
        for req in self.metrics() {
            for (svc, m) in metrics_of(&req) {
                if svc != service || m.name != name {
                    continue;
                }
                if let Some(Data::Histogram(h)) = &m.data {
                    for p in &h.data_points {
                        if attrs.iter().all(|(k, v)| str_attr(&p.attributes, k).as_deref() == Some(*v)) {
                            found = Some(p.clone());
                        }
                    }
                }
            }
        }
        found
    }

    /// Waits until `cond` holds on the recorder, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, what: &str, cond: impl Fn(&Recorder) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every metric of a request with its resource's `service.name`.
pub fn metrics_of(req: &ExportMetricsServiceRequest) -> Vec<(String, Metric)> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let svc =
            rm.resource.as_ref().and_then(|r| str_attr(&r.attributes, "service.name")).unwrap_or_default();
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                out.push((svc.clone(), m.clone()));
            }
        }
    }
    out
}

/// The value of attribute `key` as a string (ints and bools formatted).
pub fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(any_to_string)
}

pub fn any_to_string(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        any_value::Value::ArrayValue(a) => {
            Some(a.values.iter().filter_map(any_to_string).collect::<Vec<_>>().join(" "))
        }
        _ => None,
    }
}

struct GrpcSvc(Recorder);

fn grpc_info(signal: &'static str, md: &tonic::metadata::MetadataMap, reply: &Reply) -> RequestInfo {
    let headers: Vec<(String, String)> = md
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let encoding = headers.iter().find(|(k, _)| k == "grpc-encoding").map(|(_, v)| v.clone());
    RequestInfo { signal, transport: "grpc", headers, encoding, reply: format!("{reply:?}") }
}

fn grpc_failure(reply: &Reply) -> Option<tonic::Status> {
    use tonic_types::{ErrorDetails, StatusExt};
    match reply {
        Reply::Unavailable => Some(tonic::Status::unavailable("receiver told to refuse")),
        Reply::Throttle(d) => Some(tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "receiver told to throttle",
            ErrorDetails::with_retry_info(Some(*d)),
        )),
        Reply::BadRequest => Some(tonic::Status::invalid_argument("receiver told to reject")),
        _ => None,
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcSvc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let reply = self.0.next_reply();
        let info = grpc_info("metrics", request.metadata(), &reply);
        let mut st = self.0.lock();
        st.requests.push(info);
        if let Some(s) = grpc_failure(&reply) {
            return Err(s);
        }
        st.metrics.push(request.into_inner());
        let partial_success = match reply {
            Reply::Partial { rejected, message } => {
                Some(ExportMetricsPartialSuccess { rejected_data_points: rejected, error_message: message })
            }
            _ => None,
        };
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success }))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcSvc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let reply = self.0.next_reply();
        let info = grpc_info("logs", request.metadata(), &reply);
        let mut st = self.0.lock();
        st.requests.push(info);
        if let Some(s) = grpc_failure(&reply) {
            return Err(s);
        }
        st.logs.push(request.into_inner());
        let partial_success = match reply {
            Reply::Partial { rejected, message } => {
                Some(ExportLogsPartialSuccess { rejected_log_records: rejected, error_message: message })
            }
            _ => None,
        };
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success }))
    }
}

fn http_tls_acceptor(tls: &ServerTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(std::io::Error::other)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    let config = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots.add(c.map_err(std::io::Error::other)?).map_err(std::io::Error::other)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(std::io::Error::other)?;
            builder.with_client_cert_verifier(verifier).with_single_cert(certs, key)
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key),
    }
    .map_err(std::io::Error::other)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn reuse_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // Restarting on the same port right after a stop must not fail on
    // connections in TIME_WAIT.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

async fn http_handle(
    rec: Recorder,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let encoding = headers.iter().find(|(k, _)| k == "content-encoding").map(|(_, v)| v.clone());
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let resp = |status: u16, body: Vec<u8>, retry_after: Option<u64>| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut()
            .insert("content-type", hyper::header::HeaderValue::from_static("application/x-protobuf"));
        if let Some(s) = retry_after {
            r.headers_mut().insert("retry-after", hyper::header::HeaderValue::from(s));
        }
        Ok(r)
    };
    let signal: &'static str = match path.as_str() {
        "/v1/metrics" => "metrics",
        "/v1/logs" => "logs",
        _ => return resp(404, Vec::new(), None),
    };
    let data = if encoding.as_deref() == Some("gzip") {
        use std::io::Read;
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(body.as_ref()).read_to_end(&mut out).is_err() {
            return resp(400, b"bad gzip".to_vec(), None);
        }
        out
    } else {
        body.to_vec()
    };
    let reply = rec.next_reply();
    let mut st = rec.lock();
    st.requests.push(RequestInfo {
        signal,
        transport: "http",
        headers,
        encoding,
        reply: format!("{reply:?}"),
    });
    match &reply {
        Reply::Unavailable => return resp(503, Vec::new(), None),
        Reply::Throttle(d) => return resp(429, Vec::new(), Some(d.as_secs().max(1))),
        Reply::BadRequest => return resp(400, b"told to reject".to_vec(), None),
        _ => {}
    }
    let (rejected, message) = match reply {
        Reply::Partial { rejected, message } => (rejected, message),
        _ => (0, String::new()),
    };
    let out = if signal == "metrics" {
        match ExportMetricsServiceRequest::decode(data.as_slice()) {
            Ok(m) => st.metrics.push(m),
            Err(_) => return resp(400, b"undecodable".to_vec(), None),
        }
        let ps = (rejected != 0 || !message.is_empty()).then_some(ExportMetricsPartialSuccess {
            rejected_data_points: rejected,
            error_message: message,
        });
        ExportMetricsServiceResponse { partial_success: ps }.encode_to_vec()
    } else {
        match ExportLogsServiceRequest::decode(data.as_slice()) {
            Ok(m) => st.logs.push(m),
            Err(_) => return resp(400, b"undecodable".to_vec(), None),
        }
        let ps = (rejected != 0 || !message.is_empty())
            .then_some(ExportLogsPartialSuccess { rejected_log_records: rejected, error_message: message });
        ExportLogsServiceResponse { partial_success: ps }.encode_to_vec()
    };
    resp(200, out, None)
}

/// The running receiver: gRPC and HTTP on their own loopback ports.
pub struct OtlpReceiver {
    pub recorder: Recorder,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    running: Option<Running>,
    tls: Option<ServerTls>,
}

/// TLS for the gRPC server: its certificate and key (PEM), and the CA
/// that client certificates must chain to (mutual TLS) when given.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

struct Running {
    grpc_stop: oneshot::Sender<()>,
    grpc_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts on free loopback ports.
    pub async fn start() -> std::io::Result<Self> {
        let any: SocketAddr = "127.0.0.1:0".parse().map_err(std::io::Error::other)?;
        let mut r = OtlpReceiver {
            recorder: Recorder::default(),
            grpc_addr: any,
            http_addr: any,
            running: None,
            tls: None,
        };
        r.start_on(any, any).await?;
        Ok(r)
    }

    /// Starts with TLS on both the gRPC and the HTTP server.
    pub async fn start_tls(tls: ServerTls) -> std::io::Result<Self> {
        let any: SocketAddr = "127.0.0.1:0".parse().map_err(std::io::Error::other)?;
        let mut r = OtlpReceiver {
            recorder: Recorder::default(),
            grpc_addr: any,
            http_addr: any,
            running: None,
            tls: Some(tls),
        };
        r.start_on(any, any).await?;
        Ok(r)
    }

    pub fn grpc_tls_endpoint(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }
    pub fn http_tls_endpoint(&self) -> String {
        format!("https://{}", self.http_addr)
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    async fn start_on(&mut self, grpc: SocketAddr, http: SocketAddr) -> std::io::Result<()> {
        let gl = reuse_listener(grpc)?;
        let hl = reuse_listener(http)?;
        self.grpc_addr = gl.local_addr()?;
        self.http_addr = hl.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let rec = self.recorder.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            use tonic::transport::{Certificate, Identity, ServerTlsConfig};
            let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(ca) = &tls.client_ca_pem {
                cfg = cfg.client_ca_root(Certificate::from_pem(ca));
            }
            builder = builder.tls_config(cfg).map_err(std::io::Error::other)?;
        }
        let grpc_task = tokio::spawn(async move {
            use tonic::codec::CompressionEncoding::Gzip;
            let incoming = tonic::transport::server::TcpIncoming::from(gl);
            let _ = builder
                .add_service(MetricsServiceServer::new(GrpcSvc(rec.clone())).accept_compressed(Gzip))
                .add_service(LogsServiceServer::new(GrpcSvc(rec)).accept_compressed(Gzip))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let rec = self.recorder.clone();
        let acceptor = match &self.tls {
            Some(tls) => Some(http_tls_acceptor(tls)?),
            None => None,
        };
        let http_task = tokio::spawn(async move {
            // Connections live in this set: stopping the receiver drops them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = hl.accept().await else { continue };
                let rec = rec.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| http_handle(rec.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            let Ok(tls) = a.accept(stream).await else { return };
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                        }
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        self.running = Some(Running { grpc_stop: stop_tx, grpc_task, http_task });
        Ok(())
    }

    /// Stops both servers: new connections are refused, open ones closed.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.http_task.abort();
            let _ = r.grpc_stop.send(());
            let mut t = r.grpc_task;
            if tokio::time::timeout(Duration::from_secs(2), &mut t).await.is_err() {
                t.abort();
            }
        }
    }

    /// Starts again on the same ports, keeping what was recorded.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let (g, h) = (self.grpc_addr, self.http_addr);
        self.start_on(g, h).await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.http_task.abort();
            r.grpc_task.abort();
        }
    }
}
