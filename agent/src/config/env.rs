//! `CUSTOS_*` environment variables over the file, for settings an
//! installer or a container sets without writing YAML.

use super::schema::{LogFormat, OtlpConfig, OtlpProtocol};
use super::validate::{validate, LoadedConfig};
use super::Sensitivity;
use crate::yaml::{LocatedError, LocatedErrors, Spanned};
use std::path::PathBuf;

/// The environment variables that override the file, with what they set.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CUSTOS_OTLP_ENDPOINT", "exporter.otlp.endpoint"),
    ("CUSTOS_OTLP_PROTOCOL", "exporter.otlp.protocol (grpc or http)"),
    ("CUSTOS_STATE_DIR", "agent.state_dir"),
    ("CUSTOS_LISTEN", "agent.listen"),
    ("CUSTOS_LOG_LEVEL", "agent.log_level"),
    ("CUSTOS_LOG_FORMAT", "agent.log_format (text or json)"),
    ("CUSTOS_RUNBOOKS_DIR", "runbooks.dir"),
    ("CUSTOS_DRY_RUN", "runbooks.dry_run (true or false)"),
    ("CUSTOS_SENSITIVITY", "detection.sensitivity (low, medium or high)"),
];

/// Applies `CUSTOS_*` overrides from `vars`, then validates again.
pub fn apply_env(
    loaded: &mut LoadedConfig,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), LocatedErrors> {
    let mut errors = Vec::new();
    let mut err =
        |var: &str, msg: String| errors.push(LocatedError::whole(format!("environment {var}"), msg));
    let c = &mut loaded.raw;
    for (k, v) in vars {
        match k.as_str() {
            "CUSTOS_OTLP_ENDPOINT" => {
                let protocol = c.exporter.otlp.as_ref().map(|o| o.protocol).unwrap_or_default();
                match c.exporter.otlp.as_mut() {
                    Some(o) => o.endpoint = Spanned::unlocated(v),
                    None => c.exporter.otlp = Some(OtlpConfig::new(v, protocol)),
                }
            }
            "CUSTOS_OTLP_PROTOCOL" => match (v.as_str(), c.exporter.otlp.as_mut()) {
                ("grpc", Some(o)) => o.protocol = OtlpProtocol::Grpc,
                ("http", Some(o)) => o.protocol = OtlpProtocol::Http,
                (_, None) => err(&k, "is set but no OTLP endpoint is configured".into()),
                _ => err(&k, format!("expected `grpc` or `http`, found `{v}`")),
            },
            "CUSTOS_STATE_DIR" => c.agent.state_dir = Spanned::unlocated(PathBuf::from(v)),
            "CUSTOS_LISTEN" => c.agent.listen = Spanned::unlocated(v),
            "CUSTOS_LOG_LEVEL" => c.agent.log_level = Spanned::unlocated(v),
            "CUSTOS_LOG_FORMAT" => match v.as_str() {
                "text" => c.agent.log_format = LogFormat::Text,
                "json" => c.agent.log_format = LogFormat::Json,
                _ => err(&k, format!("expected `text` or `json`, found `{v}`")),
            },
            "CUSTOS_RUNBOOKS_DIR" => c.runbooks.dir = PathBuf::from(v),
            "CUSTOS_DRY_RUN" => match v.as_str() {
                "1" | "true" | "yes" => c.runbooks.dry_run = true,
                "0" | "false" | "no" => c.runbooks.dry_run = false,
                _ => err(&k, format!("expected `true` or `false`, found `{v}`")),
            },
            "CUSTOS_SENSITIVITY" => match Sensitivity::parse(&v) {
                Some(s) => c.detection.sensitivity = s,
                None => err(&k, format!("expected `low`, `medium` or `high`, found `{v}`")),
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(LocatedErrors(errors));
    }
    let path = loaded.path.take();
    let source = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "embedded default".into());
    *loaded = validate(loaded.raw.clone(), &source)?;
    loaded.path = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn environment_overrides_file_and_is_validated() {
        let mut c = parse("agent: { log_level: info }\n", "x").unwrap();
        apply_env(
            &mut c,
            [
                ("CUSTOS_LOG_LEVEL".to_string(), "debug".to_string()),
                ("CUSTOS_OTLP_ENDPOINT".into(), "http://10.0.0.1:4318".into()),
                ("CUSTOS_OTLP_PROTOCOL".into(), "http".into()),
                ("CUSTOS_SENSITIVITY".into(), "high".into()),
                ("UNRELATED".into(), "1".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.raw.agent.log_level.value, "debug");
        let o = c.raw.exporter.otlp.as_ref().unwrap();
        assert_eq!((o.endpoint.value.as_str(), o.protocol), ("http://10.0.0.1:4318", OtlpProtocol::Http));
        assert_eq!(c.raw.detection.sensitivity, Sensitivity::High);

        let mut c = parse("", "x").unwrap();
        let e = apply_env(&mut c, [("CUSTOS_SENSITIVITY".to_string(), "extreme".to_string())]).unwrap_err();
        assert!(e.to_string().contains("environment CUSTOS_SENSITIVITY: expected `low`"), "{e}");
        let mut c = parse("", "x").unwrap();
        let e = apply_env(&mut c, [("CUSTOS_LISTEN".to_string(), "nowhere".to_string())]).unwrap_err();
        assert!(e.to_string().contains("agent.listen"), "{e}");
    }
}
