//! Reading the configuration: the file given, the default path, or the
//! embedded default; files others could write are refused.

use super::env::apply_env;
use super::schema::{Config, DEFAULT_CONFIG_PATH};
use super::secret::SecretSource;
use super::validate::{validate, LoadedConfig};
use crate::yaml::{LocatedError, LocatedErrors};
use std::path::{Path, PathBuf};

/// Parses and validates configuration text. `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<LoadedConfig, LocatedErrors> {
    let raw: Config =
        if text.trim().is_empty() { Config::default() } else { crate::yaml::from_str(text, source)? };
    validate(raw, source)
}

/// Largest configuration file read; real ones are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a file that can make the agent run commands as root (the
/// configuration, a runbook) the safe way (`fsutil::read_trusted`: no
/// directory or file others could change, no FIFO or device, bounded) as
/// UTF-8 text.
pub fn read_trusted_text(path: &Path, what: &str) -> Result<String, String> {
    let bytes = crate::fsutil::read_trusted(path, MAX_CONFIG_BYTES).map_err(|e| e.0)?;
    String::from_utf8(bytes)
        .map_err(|e| format!("the {what} is not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()))
}

/// Header values taken from the environment or files: each must be there
/// now, not only when the first export needs it.
fn check_secrets(c: &LoadedConfig, source: &str) -> Result<(), LocatedErrors> {
    let mut p = crate::yaml::Problems::new(source);
    for h in c.raw.exporter.otlp.iter().flat_map(|o| &o.headers) {
        let found = match (&h.env, &h.file) {
            (Some(var), _) => {
                Some((var.referenced, super::secret::read_secret(SecretSource::Env(&var.value))))
            }
            (None, Some(f)) => Some((f.referenced, super::secret::read_secret(SecretSource::File(&f.value)))),
            _ => None,
        };
        if let Some((at, Err(e))) = found {
            p.at(at, format!("header `{}`: {e}", h.name.value));
        }
    }
    p.finish(())
}

/// Reads the configuration: the given file, else the default path when it
/// exists, else the embedded default. Then applies `CUSTOS_*` overrides.
pub fn load(path: Option<&Path>) -> Result<LoadedConfig, LocatedErrors> {
    let chosen = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    let mut loaded = match &chosen {
        Some(p) => {
            let source = p.display().to_string();
            let one = |message: String| LocatedErrors(vec![LocatedError::whole(&source, message)]);
            let text = read_trusted_text(p, "configuration").map_err(one)?;
            let mut c = parse(&text, &source)?;
            c.path = Some(p.clone());
            c
        }
        None => parse("", "embedded default")?,
    };
    apply_env(&mut loaded, std::env::vars())?;
    let source =
        chosen.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "embedded default".into());
    check_secrets(&loaded, &source)?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn writable_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("custos.yaml");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = load(Some(&f)).unwrap_err();
        assert!(e.to_string().contains("world-writable"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(Some(&f)).is_ok());
        // A file of its own in a directory anyone can write to is no safer.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("directory") && e.contains("world-writable"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn fifos_devices_and_huge_files_are_refused_at_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("custos.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let e = load(Some(&fifo)).unwrap_err().to_string();
        assert!(e.contains("a FIFO") && t.elapsed() < std::time::Duration::from_secs(2), "{e}");
        std::fs::remove_file(&fifo).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &fifo).unwrap();
        let e = load(Some(&fifo)).unwrap_err().to_string();
        assert!(e.contains("a device"), "{e}");
        std::fs::remove_file(&fifo).unwrap();
        std::fs::write(&fifo, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load(Some(&fifo)).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn a_header_variable_missing_from_the_environment_is_found_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("custos.yaml");
        std::fs::write(
            &f,
            "exporter:\n  otlp:\n    endpoint: \"http://127.0.0.1:4317\"\n    headers:\n      - { name: authorization, env: CUSTOS_TEST_NO_SUCH_TOKEN }\n",
        )
        .unwrap();
        let e = load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains(":5:") && e.contains("CUSTOS_TEST_NO_SUCH_TOKEN is not set"), "{e}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = load(Some(Path::new("/nonexistent/custos.yaml"))).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/custos.yaml: cannot read"), "{e}");
    }
}
