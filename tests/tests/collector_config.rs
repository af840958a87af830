//! The collector configurations in collector-config/ are well-formed: every
//! component a pipeline names is defined, every storage reference points at
//! a declared extension, and the README lists every file. (No collector
//! binary can run here; users run the real one.)

use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../collector-config")
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn storage_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "storage" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                storage_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| storage_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_collector_config_is_consistent_and_documented() {
    let readme = std::fs::read_to_string(dir().join("README.md")).expect("collector-config/README.md");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(readme.contains(&name), "README does not describe {name}");
        let text = std::fs::read_to_string(f).unwrap();
        let cfg: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let defined = |section: &str| keys(&cfg[section]);
        let pipelines =
            cfg["service"]["pipelines"].as_object().unwrap_or_else(|| panic!("{name}: no pipelines"));
        assert!(!pipelines.is_empty());
        for (pname, p) in pipelines {
            assert!(
                pname == "metrics"
                    || pname == "logs"
                    || pname.starts_with("metrics/")
                    || pname.starts_with("logs/")
            );
            for section in ["receivers", "processors", "exporters"] {
                for c in p[section].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    let c = c.as_str().unwrap();
                    assert!(
                        defined(section).contains(&c.to_string()),
                        "{name}: pipeline {pname} uses undefined {section} `{c}`"
                    );
                }
            }
            assert!(
                !p["receivers"].as_array().unwrap().is_empty()
                    && !p["exporters"].as_array().unwrap().is_empty()
            );
        }
        let declared: Vec<String> = cfg["service"]["extensions"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        for e in &declared {
            assert!(defined("extensions").contains(e), "{name}: extension `{e}` is enabled but not defined");
        }
        let mut refs = Vec::new();
        storage_refs(&cfg, &mut refs);
        for r in refs {
            assert!(declared.contains(&r), "{name}: storage `{r}` is not an enabled extension");
        }
    }
}
