//! The detector does no I/O (ARCHITECTURE.md, Invariants): its sources name
//! neither files, sockets, processes nor the async runtime, and its manifest
//! pulls in no tokio. This file is an integration test, outside `src/`, so
//! it may read files itself.

use std::path::{Path, PathBuf};

/// What the library must not use, as paths in code.
const FORBIDDEN: &[&str] = &["std::fs", "std::net", "std::process", "tokio"];

/// The code of a Rust source with comments, string and character literals
/// blanked, so that documentation saying "no `std::fs`" is not taken for a
/// use of it.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                } else if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r' && !ident_before && (at(i + 1) == '"' || at(i + 1) == '#') {
            // A raw string: r"...", r#"..."#, with as many hashes to close.
            let mut j = i + 1;
            while at(j) == '#' {
                j += 1;
            }
            if at(j) != '"' {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            j += 1;
            while j < c.len() && !(c[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#')) {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A character literal ('"', '\''); a lifetime has no closing quote.
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The forbidden paths `code` uses, whitespace ignored, including those
/// imported through a group (`use std::{fs, io}`).
fn violations(code: &str) -> Vec<String> {
    let dense: String = code_only(code).chars().filter(|c| !c.is_whitespace()).collect();
    let mut found: Vec<String> =
        FORBIDDEN.iter().filter(|f| dense.contains(*f)).map(|f| f.to_string()).collect();
    let mut rest = dense.as_str();
    while let Some(i) = rest.find("std::{") {
        rest = &rest[i + "std::{".len()..];
        let group = &rest[..rest.find('}').unwrap_or(rest.len())];
        for item in group.split(',') {
            let head = item.split("::").next().unwrap_or("");
            if ["fs", "net", "process"].contains(&head) {
                found.push(format!("std::{head}"));
            }
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_detector_sources_use_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.iter().any(|f| f.ends_with("lib.rs")), "no sources found under {}", src.display());
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for v in violations(&text) {
            problems.push(format!("{}: uses {v}", f.display()));
        }
    }
    assert!(problems.is_empty(), "the detector must do no I/O:\n{}", problems.join("\n"));
}

#[test]
fn the_detector_manifest_has_no_tokio() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let deps: Vec<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.contains("tokio"))
        .collect();
    assert!(deps.is_empty(), "{} names tokio: {deps:?}", manifest.display());
}

#[test]
fn the_check_sees_uses_and_ignores_comments_and_strings() {
    assert_eq!(violations("use std::fs;"), ["std::fs"]);
    assert_eq!(violations("let _ = std :: net :: TcpStream::connect(a);"), ["std::net"]);
    assert_eq!(violations("use std::{collections::HashMap, process::Command};"), ["std::process"]);
    assert_eq!(violations("#[tokio::main]\nasync fn main() {}"), ["tokio"]);
    assert!(violations("// no std::fs here\n/* nor tokio /* nested */ */\nlet s = \"std::net\";").is_empty());
    assert!(violations("/// Doc: does no std::process.\nuse std::collections::HashMap;").is_empty());
    assert!(violations("let j = r#\"{\"a\": \"std::fs\"}\"#; let q = '\"'; let e = '\\'';").is_empty());
    assert_eq!(violations("let q = '\"'; use std::fs; fn f<'a>(x: &'a str) {}"), ["std::fs"]);
}
