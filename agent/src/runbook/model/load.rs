//! Runbook files and directories: files others could write are refused,
//! a bad file is reported and skipped, and the others still load.

use super::parse::parse;
use super::shape::Runbook;
use crate::yaml::{LocatedError, LocatedErrors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The outcome of loading runbook files: the good ones, and every error of
/// the bad ones (which are skipped).
#[derive(Debug, Default)]
pub struct LoadReport {
    pub runbooks: Vec<Runbook>,
    pub errors: Vec<LocatedError>,
}

/// Reads one file the safe way (`fsutil::read_trusted`: refused when
/// anyone but root could change it or a directory above it, when it is no
/// regular file, when it is too large), then parses it.
pub fn load_file(path: &Path) -> Result<Runbook, LocatedErrors> {
    let source = path.display().to_string();
    let one = |message: String| LocatedErrors(vec![LocatedError::whole(&source, message)]);
    let text = crate::config::read_trusted_text(path, "runbook").map_err(one)?;
    parse(&text, &source)
}

/// Loads files and directories (every `*.yaml`/`*.yml` inside, sorted).
/// A bad file is reported and skipped; duplicate runbook names are errors.
pub fn load_paths(paths: &[PathBuf]) -> LoadReport {
    let mut files = Vec::new();
    let mut report = LoadReport::default();
    for p in paths {
        if p.is_dir() {
            // Others able to add, rename or replace entries here could make
            // root run their commands: the whole directory is refused.
            if let Err(e) = crate::fsutil::check_trusted_dir(p) {
                report.errors.push(LocatedError::whole(
                    p.display().to_string(),
                    format!("runbooks directory refused, none of its runbooks is loaded: {e}"),
                ));
                continue;
            }
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut found: Vec<PathBuf> = rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => report.errors.push(LocatedError::whole(
                    p.display().to_string(),
                    format!("cannot read the runbook directory: {e}"),
                )),
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut names = BTreeMap::<String, String>::new();
    for f in files {
        match load_file(&f) {
            Ok(rb) => {
                if let Some(first) = names.get(&rb.name) {
                    report.errors.push(LocatedError::whole(
                        rb.source.clone(),
                        format!(
                            "runbook name `{}` is already used by {first}: this file is skipped",
                            rb.name
                        ),
                    ));
                    continue;
                }
                names.insert(rb.name.clone(), rb.source.clone());
                report.runbooks.push(rb);
            }
            Err(LocatedErrors(errs)) => report.errors.extend(errs),
        }
    }
    report
}
