//! OTLP over gRPC (tonic) and HTTP/protobuf (reqwest), and the
//! classification of every answer into the OTLP spec's outcomes.

use super::spool::{Batch, BatchKind};
use super::ExportError;
use crate::config::{Compression, OtlpConfig, OtlpProtocol};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use std::time::Duration;

/// What became of one export attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted; `rejected` records were refused in a partial success.
    Ok { rejected: u64, message: String },
    /// Try again later; `after` is the server's hint (Retry-After, RetryInfo).
    Retryable { after: Option<Duration>, reason: String },
    /// Will never succeed; `kind` groups errors for log-once reporting.
    Permanent { kind: String, reason: String },
}

/// An extra header with its value resolved (never logged).
#[derive(Clone)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

/// Resolves header values from the config, the environment or files.
pub fn resolve_headers(cfg: &OtlpConfig) -> Result<Vec<Header>, ExportError> {
    let mut out = Vec::new();
    for h in &cfg.headers {
        let name = h.name.value.to_ascii_lowercase();
        let value = if let Some(v) = &h.value {
            v.value.clone()
        } else if let Some(var) = &h.env {
            crate::config::read_secret(crate::config::SecretSource::Env(&var.value))
                .map_err(|e| ExportError::Config(format!("header `{name}`: {e}")))?
        } else if let Some(file) = &h.file {
            crate::config::read_secret(crate::config::SecretSource::File(&file.value))
                .map_err(|e| ExportError::Config(format!("header `{name}`: {e}")))?
        } else {
            return Err(ExportError::Config(format!("header `{name}` has no value")));
        };
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ExportError::Config(format!("header `{name}`: value contains a line break or NUL")));
        }
        out.push(Header { name, value });
    }
    Ok(out)
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path)
        .map_err(|e| ExportError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// A connection to one collector.
pub enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

impl Transport {
    pub fn new(cfg: &OtlpConfig) -> Result<Self, ExportError> {
        let headers = resolve_headers(cfg)?;
        Ok(match cfg.protocol {
            OtlpProtocol::Grpc => Transport::Grpc(GrpcTransport::new(cfg, headers)?),
            OtlpProtocol::Http => Transport::Http(HttpTransport::new(cfg, headers)?),
        })
    }

    /// One attempt, bounded by `timeout`.
    pub async fn send(&self, batch: &Batch, timeout: Duration) -> Outcome {
        let fut = async {
            match self {
                Transport::Grpc(g) => g.send(batch, timeout).await,
                Transport::Http(h) => h.send(batch, timeout).await,
            }
        };
        // The transports' own timeouts cover requests; this also covers
        // connection setup and anything that hangs.
        match tokio::time::timeout(timeout + Duration::from_millis(250), fut).await {
            Ok(o) => o,
            Err(_) => Outcome::Retryable { after: None, reason: format!("no answer within {timeout:?}") },
        }
    }
}

pub struct GrpcTransport {
    channel: tonic::transport::Channel,
    headers: Vec<(
        tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
    gzip: bool,
}

impl GrpcTransport {
    fn new(cfg: &OtlpConfig, headers: Vec<Header>) -> Result<Self, ExportError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let url = cfg.endpoint.value.clone();
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| ExportError::Config(format!("invalid endpoint `{url}`: {e}")))?
            .timeout(cfg.timeout.0)
            .connect_timeout(cfg.timeout.0)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            match &cfg.tls.ca_file {
                Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read_pem(&ca.value, "CA file")?)),
                None => tls = tls.with_native_roots(),
            }
            if let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_pem(&c.value, "client certificate")?,
                    read_pem(&k.value, "client key")?,
                ));
            }
            ep =
                ep.tls_config(tls).map_err(|e| ExportError::Config(format!("TLS setup for `{url}`: {e}")))?;
        }
        let mut md = Vec::new();
        for h in headers {
            let key = tonic::metadata::MetadataKey::from_bytes(h.name.as_bytes()).map_err(|_| {
                ExportError::Config(format!("header name `{}` is not valid for gRPC", h.name))
            })?;
            let value = h
                .value
                .parse()
                .map_err(|_| ExportError::Config(format!("header `{}`: value is not valid ASCII", h.name)))?;
            md.push((key, value));
        }
        // Lazy: the collector may be down when the agent starts.
        Ok(GrpcTransport {
            channel: ep.connect_lazy(),
            headers: md,
            gzip: cfg.compression == Compression::Gzip,
        })
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        req
    }

    async fn send(&self, batch: &Batch, timeout: Duration) -> Outcome {
        use tonic::codec::CompressionEncoding;
        use tonic::codegen::http::uri::PathAndQuery;
        // The batch is already an encoded request (possibly from the
        // spool): send its bytes as they are rather than decoding and
        // re-encoding it.
        let path = match batch.kind {
            BatchKind::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            BatchKind::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        };
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).accept_compressed(CompressionEncoding::Gzip);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        if let Err(e) = grpc.ready().await {
            return Outcome::Retryable { after: None, reason: format!("gRPC channel not ready: {e}") };
        }
        let req = self.request(batch.payload.clone(), timeout);
        match grpc.unary(req, PathAndQuery::from_static(path), RawCodec).await {
            Ok(r) => {
                let body = r.into_inner();
                let (rejected, message) = match batch.kind {
                    BatchKind::Metrics => ExportMetricsServiceResponse::decode(body.as_slice())
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map(|p| (p.rejected_data_points.max(0) as u64, p.error_message)),
                    BatchKind::Logs => ExportLogsServiceResponse::decode(body.as_slice())
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map(|p| (p.rejected_log_records.max(0) as u64, p.error_message)),
                }
                .unwrap_or_default();
                Outcome::Ok { rejected, message }
            }
            Err(s) => grpc_outcome(&s),
        }
    }
}

/// A gRPC codec for messages that are already protobuf bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The OTLP spec's gRPC retry rules: these codes are retryable;
/// RESOURCE_EXHAUSTED only when the server says when to retry (RetryInfo).
pub fn grpc_outcome(s: &tonic::Status) -> Outcome {
    use tonic::Code;
    use tonic_types::StatusExt;
    let retry_after = s.get_details_retry_info().and_then(|ri| ri.retry_delay);
    let reason = format!("gRPC {:?}: {}", s.code(), s.message());
    // A status tonic made from a transport error (a TLS alert, a reset
    // connection, an HTTP/2 protocol error) carries that error as its
    // source; a status the collector sent has none. Whatever its code, a
    // batch that never reached a verdict is retried, never dropped.
    if std::error::Error::source(s).is_some() {
        return Outcome::Retryable { after: None, reason };
    }
    match s.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Outcome::Retryable { after: retry_after, reason },
        Code::ResourceExhausted if retry_after.is_some() => Outcome::Retryable { after: retry_after, reason },
        code => Outcome::Permanent { kind: format!("gRPC {code:?}"), reason },
    }
}

pub struct HttpTransport {
    client: reqwest::Client,
    metrics_url: String,
    logs_url: String,
    headers: Vec<Header>,
    gzip: bool,
}

impl HttpTransport {
    fn new(cfg: &OtlpConfig, headers: Vec<Header>) -> Result<Self, ExportError> {
        let mut b =
            reqwest::Client::builder().timeout(cfg.timeout.0).connect_timeout(cfg.timeout.0).no_proxy();
        if let Some(ca) = &cfg.tls.ca_file {
            let pem = read_pem(&ca.value, "CA file")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ExportError::Config(format!("CA file {}: {e}", ca.value.display())))?;
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
            let mut pem = read_pem(&c.value, "client certificate")?;
            pem.push(b'\n');
            pem.extend(read_pem(&k.value, "client key")?);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| ExportError::Config(format!("client certificate {}: {e}", c.value.display())))?;
            b = b.identity(id);
        }
        let client = b.build().map_err(|e| ExportError::Config(format!("HTTP client: {e}")))?;
        // The endpoint is the collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT);
        // a signal path given by mistake is not doubled.
        let base = cfg.endpoint.value.trim_end_matches('/');
        let base = base.strip_suffix("/v1/metrics").or_else(|| base.strip_suffix("/v1/logs")).unwrap_or(base);
        Ok(HttpTransport {
            client,
            metrics_url: format!("{base}/v1/metrics"),
            logs_url: format!("{base}/v1/logs"),
            headers,
            gzip: cfg.compression == Compression::Gzip,
        })
    }

    async fn send(&self, batch: &Batch, timeout: Duration) -> Outcome {
        let url = match batch.kind {
            BatchKind::Metrics => &self.metrics_url,
            BatchKind::Logs => &self.logs_url,
        };
        let mut req = self.client.post(url).timeout(timeout).header("content-type", "application/x-protobuf");
        for h in &self.headers {
            req = req.header(h.name.as_str(), h.value.as_str());
        }
        let body = if self.gzip {
            req = req.header("content-encoding", "gzip");
            gzip(&batch.payload)
        } else {
            batch.payload.clone()
        };
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            // Connection refused, reset, timeout: the collector is away.
            Err(e) => {
                return Outcome::Retryable {
                    after: None,
                    reason: format!("HTTP request failed: {}", error_chain(&e)),
                }
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp.bytes().await.unwrap_or_default();
        match status {
            200..=299 => {
                let rejected = match batch.kind {
                    BatchKind::Metrics => ExportMetricsServiceResponse::decode(bytes.as_ref())
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map(|p| (p.rejected_data_points.max(0) as u64, p.error_message)),
                    BatchKind::Logs => ExportLogsServiceResponse::decode(bytes.as_ref())
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map(|p| (p.rejected_log_records.max(0) as u64, p.error_message)),
                };
                let (rejected, message) = rejected.unwrap_or_default();
                Outcome::Ok { rejected, message }
            }
            429 | 502 | 503 | 504 => {
                Outcome::Retryable { after: retry_after, reason: format!("HTTP {status} from {url}") }
            }
            _ => Outcome::Permanent {
                kind: format!("HTTP {status}"),
                reason: format!(
                    "HTTP {status} from {url}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    use std::io::Write;
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// Exponential backoff with full jitter, as the OTLP spec recommends.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Backoff { initial, max, attempt: 0, seed }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next attempt: the server's hint when given
    /// (capped at `max`), else a random time in [ceiling/2, ceiling] with
    /// the ceiling doubling per failure.
    pub fn next(&mut self, hint: Option<Duration>) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        if let Some(h) = hint {
            return h.min(self.max);
        }
        let ceiling =
            self.initial.saturating_mul(1u32 << self.attempt.min(16).saturating_sub(1)).min(self.max);
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = (self.seed % 1000) as f64 / 1000.0;
        ceiling.mul_f64(0.5 + 0.5 * frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_otlp_spec() {
        use tonic::{Code, Status};
        assert!(matches!(grpc_outcome(&Status::unavailable("x")), Outcome::Retryable { .. }));
        assert!(matches!(grpc_outcome(&Status::invalid_argument("x")), Outcome::Permanent { .. }));
        // The same code made from a transport error (here Unknown, with the
        // io error as its source) is not the collector's verdict.
        let transport = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "tls alert",
        )));
        assert_eq!(transport.code(), Code::Unknown);
        assert!(matches!(grpc_outcome(&transport), Outcome::Retryable { .. }));
        assert!(matches!(grpc_outcome(&Status::unknown("x")), Outcome::Permanent { .. }));
        // RESOURCE_EXHAUSTED without RetryInfo is permanent.
        assert!(matches!(
            grpc_outcome(&Status::new(Code::ResourceExhausted, "x")),
            Outcome::Permanent { .. }
        ));
        use tonic_types::{ErrorDetails, StatusExt};
        let s = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        );
        assert_eq!(
            grpc_outcome(&s),
            Outcome::Retryable {
                after: Some(Duration::from_millis(1500)),
                reason: "gRPC ResourceExhausted: slow down".into()
            }
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_hints() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let d1 = b.next(None);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
        let _ = b.next(None);
        let d3 = b.next(None);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
        for _ in 0..20 {
            assert!(b.next(None) <= Duration::from_secs(5));
        }
        assert_eq!(b.next(Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(b.next(Some(Duration::from_secs(60))), Duration::from_secs(5));
        b.reset();
        assert!(b.next(None) <= Duration::from_millis(100));
    }
}
