//! Webhook actions. Commands run through [`crate::command`] (shared with
//! health probes); service actions go through the `ServiceManager` in the
//! engine.

use super::model::{HeaderValue, WebhookAction};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WebhookOutcome {
    pub status: Option<u16>,
    pub attempts: u32,
    pub error: Option<String>,
}

impl WebhookOutcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

fn header_value(v: &HeaderValue) -> Result<String, String> {
    match v {
        HeaderValue::Literal(s) => Ok(s.clone()),
        HeaderValue::Env(name) => crate::config::read_secret(crate::config::SecretSource::Env(name)),
        HeaderValue::File(path) => crate::config::read_secret(crate::config::SecretSource::File(path)),
    }
}

/// Sends the webhook, retrying on transport errors and 5xx/429 with
/// backoff (`sleep` is the engine's clock). Secrets are read per call.
pub fn send_webhook(
    w: &WebhookAction,
    body: Option<&serde_json::Value>,
    sleep: &dyn Fn(Duration),
) -> WebhookOutcome {
    let mut headers = Vec::new();
    for (name, v) in &w.headers {
        match header_value(v) {
            Ok(val) => headers.push((name.clone(), val)),
            Err(e) => return WebhookOutcome { status: None, attempts: 0, error: Some(e) },
        }
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(w.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let payload = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
    let mut last = WebhookOutcome { status: None, attempts: 0, error: None };
    for attempt in 0..=w.retries {
        if attempt > 0 {
            sleep(Duration::from_millis(500) * 2u32.pow(attempt.min(6) - 1));
        }
        last.attempts = attempt + 1;
        let mut req = ureq::http::Request::builder().method(w.method.as_str()).uri(&w.url);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let result = match &payload {
            Some(bytes) if w.method != "GET" => req
                .header("content-type", "application/json")
                .body(bytes.clone())
                .map_err(|e| e.to_string())
                .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
            _ => {
                req.body(()).map_err(|e| e.to_string()).and_then(|r| agent.run(r).map_err(|e| e.to_string()))
            }
        };
        match result {
            Ok(resp) => {
                let s = resp.status().as_u16();
                last.status = Some(s);
                last.error = None;
                if s < 500 && s != 429 {
                    return last;
                }
            }
            Err(e) => {
                last.status = None;
                last.error = Some(e);
            }
        }
    }
    last
}
