//! The invariants of ARCHITECTURE.md that the code's own text can show:
//! the wiring (`app`) is imported by nobody below it, and the agent's
//! top-level modules import each other without circles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, so that prose naming a module is not an import.
fn code_of(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules `code` (of module `top`) refers to through `crate::`.
fn refs_of(top: &str, code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c}`: the first segment of each path.
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            inner.split(',').map(|p| p.trim().split("::").next().unwrap_or("").to_string()).collect()
        } else {
            vec![rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()]
        };
        refs.extend(names.into_iter().filter(|n| !n.is_empty() && n != top));
    }
    refs
}

/// The crate's top-level modules each module refers to through `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "main" || top == "lib" {
            continue; // the binary's edge and the module list
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        graph.entry(top.clone()).or_default().extend(refs_of(&top, &code));
    }
    graph
}

#[test]
fn nothing_below_the_wiring_imports_it() {
    let graph = module_graph();
    assert!(graph.contains_key("app"), "the scan found the wiring: {graph:?}");
    let offenders: Vec<&String> =
        graph.iter().filter(|(m, refs)| *m != "app" && refs.contains("app")).map(|(m, _)| m).collect();
    assert!(offenders.is_empty(), "subsystems importing the wiring (app): {offenders:?}");
}

/// A circle of imports, if there is one (depth-first; a module met again
/// while on the path closes it).
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_each_other_without_circles() {
    if let Some(circle) = find_circle(&module_graph()) {
        panic!("import circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_scan_sees_imports_it_must_refuse() {
    let code = code_of("use crate::{app::run, config};\n// crate::daemon\nlet x = crate::pipeline::Tick;");
    let refs = refs_of("health", &code);
    assert_eq!(refs, ["app", "config", "pipeline"].map(String::from).into(), "comments are not imports");
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), refs_of("a", "use crate::b::X;"));
    graph.insert("b".to_string(), refs_of("b", "use crate::{c};"));
    graph.insert("c".to_string(), refs_of("c", "crate::a::f();"));
    assert_eq!(find_circle(&graph).map(|c| c.join(">")), Some("a>b>c>a".to_string()));
    graph.insert("c".to_string(), BTreeSet::new());
    assert_eq!(find_circle(&graph), None);
}
