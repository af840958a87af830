//! Header values kept out of configuration and runbook files: read from an
//! environment variable or a file when used, and checked when the file
//! that names them is loaded, so that a variable missing from the agent's
//! environment is found by `validate` and `reload`, not by the first alert
//! that needed it. Values are never logged.

use std::path::Path;

/// Where a secret comes from.
#[derive(Debug, Clone, Copy)]
pub enum SecretSource<'a> {
    Env(&'a str),
    File(&'a Path),
}

/// The secret's value (a file's trailing newline removed), or why it
/// cannot be had. A value with a line break or NUL is refused: it would
/// split the header it goes into.
pub fn read_secret(source: SecretSource<'_>) -> Result<String, String> {
    let value = match source {
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(format!(
                    "environment variable {var} is not set in the agent's environment (under systemd: Environment= or EnvironmentFile= in a drop-in)"
                ))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("environment variable {var} is not valid UTF-8"))
            }
        },
        SecretSource::File(path) => {
            let text = crate::fsutil::read_bounded(path, MAX_SECRET_BYTES)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
            let text = String::from_utf8(text)
                .map_err(|_| format!("secret file {} is not valid UTF-8", path.display()))?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("the value contains a line break or NUL".into());
    }
    Ok(value)
}

/// Secrets are tokens, not documents.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variables_and_files_say_where_to_set_them() {
        let e = read_secret(SecretSource::Env("CUSTOS_TEST_SURELY_UNSET_VARIABLE")).unwrap_err();
        assert!(
            e.contains("CUSTOS_TEST_SURELY_UNSET_VARIABLE is not set") && e.contains("Environment="),
            "{e}"
        );
        let e = read_secret(SecretSource::File(Path::new("/nonexistent/token"))).unwrap_err();
        assert!(e.contains("/nonexistent/token"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_secret(SecretSource::File(&f)).unwrap(), "s3cret");
        std::fs::write(&f, "a\nb\n").unwrap();
        assert!(read_secret(SecretSource::File(&f)).is_err());
    }
}
