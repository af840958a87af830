//! Reading the configuration: the file given, the default path, or the
//! embedded default; files others could write are refused.

use super::env::apply_env;
use super::schema::{Config, DEFAULT_CONFIG_PATH};
use super::validate::{validate, LoadedConfig};
use crate::yaml::{LocatedError, LocatedErrors};
use std::path::{Path, PathBuf};

/// Parses and validates configuration text. `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<LoadedConfig, LocatedErrors> {
    let raw: Config =
        if text.trim().is_empty() { Config::default() } else { crate::yaml::from_str(text, source)? };
    validate(raw, source)
}

/// Refuses a file that could let someone other than root (or the agent's
/// own user) make the agent run a command: group- or world-writable, or
/// owned by another user.
#[cfg(unix)]
pub fn check_file_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = md.mode();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != 0 && md.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}, not by root: refusing it because custos runs its commands as root (chown root {})",
            path.display(),
            md.uid(),
            path.display()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is group- or world-writable (mode {:o}): refusing it because custos runs its commands as root (chmod go-w {})",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_file_permissions(_path: &Path) -> Result<(), String> {
    // Windows: files under %ProgramData% inherit an ACL writable by
    // administrators only; the installer sets it.
    Ok(())
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
            let text =
                std::fs::read_to_string(p).map_err(|e| one(format!("cannot read the configuration: {e}")))?;
            check_file_permissions(p).map_err(one)?;
            let mut c = parse(&text, &source)?;
            c.path = Some(p.clone());
            c
        }
        None => parse("", "embedded default")?,
    };
    apply_env(&mut loaded, std::env::vars())?;
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
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = load(Some(Path::new("/nonexistent/custos.yaml"))).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/custos.yaml: cannot read"), "{e}");
    }
}
