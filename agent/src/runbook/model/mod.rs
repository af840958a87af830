//! Runbook files: what a validated runbook is (`shape.rs`), YAML text to
//! a runbook with located errors (`parse.rs`), and loading files and
//! directories where one bad file does not stop the others (`load.rs`),
//! and runbooks checked against the configuration and host they run under
//! (`check.rs`).

mod check;
mod load;
mod parse;
mod shape;

pub use check::{check_against, check_runbook};
pub use load::{load_file, load_paths, LoadReport};
pub use parse::parse;
pub use shape::*;

#[cfg(test)]
mod tests;
