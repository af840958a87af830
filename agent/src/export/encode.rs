//! OTLP protobuf values from our types, and the spec's JSON encoding.

use super::record::{AttrValue, HostInfo};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The instrumentation scope name of everything custos exports.
pub const SCOPE_NAME: &str = "custos";

pub fn any(v: AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::Float(f) => any_value::Value::DoubleValue(f),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
        AttrValue::StrArray(a) => any_value::Value::ArrayValue(ArrayValue {
            values: a
                .into_iter()
                .map(|s| AnyValue { value: Some(any_value::Value::StringValue(s)) })
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

pub fn kv(key: impl Into<String>, v: impl Into<AttrValue>) -> KeyValue {
    KeyValue { key: key.into(), value: Some(any(v.into())) }
}

/// How a managed service is known to its platform, for the resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceIdentity {
    SystemdUnit(String),
    WindowsService(String),
    None,
}

/// The resource of one managed service (or of the agent, `custos`).
pub fn resource(host: &HostInfo, service: &str, identity: &ServiceIdentity) -> Resource {
    let instance = if host.host_id.is_empty() {
        format!("{}/{service}", host.host_name)
    } else {
        format!("{}/{service}", host.host_id)
    };
    let mut attributes = vec![
        kv("service.name", service),
        kv("service.instance.id", instance),
        kv("host.name", host.host_name.as_str()),
    ];
    if !host.host_id.is_empty() {
        attributes.push(kv("host.id", host.host_id.as_str()));
    }
    attributes.push(kv("os.type", host.os_type.as_str()));
    attributes.push(kv("custos.agent.version", host.agent_version.as_str()));
    match identity {
        ServiceIdentity::SystemdUnit(u) => attributes.push(kv("systemd.unit.name", u.as_str())),
        ServiceIdentity::WindowsService(s) => attributes.push(kv("windows.service.name", s.as_str())),
        ServiceIdentity::None => {}
    }
    Resource { attributes, dropped_attributes_count: 0, entity_refs: Vec::new() }
}

pub fn scope(version: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: version.to_string(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// Metric data points in a request (what partial success counts against).
pub fn metric_points(req: &ExportMetricsServiceRequest) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut n = 0u64;
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                n += match &m.data {
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Histogram(h)) => h.data_points.len(),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                    Some(Data::Summary(s)) => s.data_points.len(),
                    None => 0,
                } as u64;
            }
        }
    }
    n
}

pub fn log_records(req: &ExportLogsServiceRequest) -> u64 {
    req.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum()
}

/// The OTLP/JSON encoding of a request, as the OTLP specification defines
/// it: lowerCamelCase keys, 64-bit integers as decimal strings, enums as
/// integers, absent optional fields omitted.
pub fn to_otlp_json<T: serde::Serialize>(req: &T) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(req)?;
    fix_json(&mut v, None);
    serde_json::to_string(&v)
}

/// opentelemetry-proto's serde output writes some 64-bit integers as JSON
/// numbers (histogram `count`, `bucketCounts`, `asInt`, nested `intValue`)
/// and optional doubles as `null`; the spec wants strings and absence.
/// Receivers built on protojson accept either, but 64-bit numbers lose
/// precision in JavaScript-style parsers, so follow the spec exactly.
fn fix_json(v: &mut serde_json::Value, key: Option<&str>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            // Absent optionals and empty trace/span ids are omitted, as
            // protojson does (an empty hex id is not a valid id).
            map.retain(|k, x| {
                !(x.is_null() || (matches!(k.as_str(), "traceId" | "spanId") && x.as_str() == Some("")))
            });
            for (k, x) in map.iter_mut() {
                fix_json(x, Some(k.as_str()));
            }
        }
        Value::Array(items) => {
            for x in items.iter_mut() {
                fix_json(x, key);
            }
        }
        Value::Number(n) => {
            let is_int64_field = matches!(
                key,
                Some(
                    "count"
                        | "bucketCounts"
                        | "asInt"
                        | "intValue"
                        | "zeroCount"
                        | "timeUnixNano"
                        | "startTimeUnixNano"
                        | "observedTimeUnixNano"
                )
            );
            if is_int64_field && (n.is_i64() || n.is_u64()) {
                *v = Value::String(n.to_string());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum,
    };

    #[test]
    fn json_encoding_follows_the_otlp_spec() {
        let host = HostInfo {
            host_name: "h".into(),
            host_id: "abc".into(),
            os_type: "linux".into(),
            agent_version: "0.1.0".into(),
        };
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource(&host, "api", &ServiceIdentity::SystemdUnit("api.service".into()))),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope("0.1.0")),
                    metrics: vec![
                        Metric {
                            name: "custos.process.starts".into(),
                            unit: "{process}".into(),
                            data: Some(Data::Sum(Sum {
                                data_points: vec![NumberDataPoint {
                                    attributes: vec![kv("n", 7i64)],
                                    start_time_unix_nano: 1,
                                    time_unix_nano: 1_700_000_000_000_000_000,
                                    value: Some(number_data_point::Value::AsInt(3)),
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                                is_monotonic: true,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "h".into(),
                            data: Some(Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    count: 5,
                                    bucket_counts: vec![2, 3],
                                    explicit_bounds: vec![0.5],
                                    sum: None,
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                            })),
                            ..Default::default()
                        },
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let json = to_otlp_json(&req).unwrap();
        assert!(json.starts_with("{\"resourceMetrics\":[{"), "{json}");
        assert!(json.contains("\"timeUnixNano\":\"1700000000000000000\""), "{json}");
        assert!(json.contains("\"asInt\":\"3\""), "{json}");
        assert!(json.contains("\"intValue\":\"7\""), "{json}");
        assert!(json.contains("\"count\":\"5\""), "{json}");
        assert!(json.contains("\"bucketCounts\":[\"2\",\"3\"]"), "{json}");
        assert!(json.contains("\"aggregationTemporality\":2"), "{json}");
        assert!(json.contains("\"isMonotonic\":true"), "{json}");
        assert!(!json.contains("null"), "{json}");
        assert!(json.contains("{\"key\":\"service.name\",\"value\":{\"stringValue\":\"api\"}}"), "{json}");
    }
}
