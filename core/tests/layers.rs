//! The layers point one way: no module of the component or the core names a module that
//! names it back, directly or through others. Read from the source, so a new import that
//! closes a loop fails here, before a reader trips on it.
//!
//! A module is a file; it names another when it writes a path to it (`crate::queue::…`,
//! `super::…`, or a child's `child::…`), so a parent that re-exports a child's items and a
//! child that takes items from its parent name each other. `mod child;` alone is not a use,
//! and the crate root is left out: `lib.rs` only declares the modules and the entry points,
//! and the component's names for the core's modules (`crate::slot`) are the core's, which
//! cannot name the component at all (the compiler keeps that way).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, as a module path (`http::tasks`; `lib.rs` is the root, "").
fn modules(dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let entries = std::fs::read_dir(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative: PathBuf = path.strip_prefix(dir).unwrap_or(&path).with_extension("");
                let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                found.insert(parts.join("::"), text);
            }
        }
    }
    found
}

/// The code of a file without its tests and comments (a test may use anything).
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The modules of `all` that `module`'s code names, itself left out.
fn named(module: &str, text: &str, all: &BTreeMap<String, String>, root: &str) -> BTreeSet<String> {
    let code = code(text);
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = BTreeSet::new();
    let words: Vec<&str> = code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).collect();
    for word in words {
        let path = if let Some(rest) = word.strip_prefix("crate::") {
            rest.to_string()
        } else if let Some(rest) = word.strip_prefix(&format!("{root}::")) {
            rest.to_string()
        } else if let Some(rest) = word.strip_prefix("super::") {
            if parent.is_empty() { rest.to_string() } else { format!("{parent}::{rest}") }
        } else if word.contains("::")
            && !module.is_empty()
            && all.contains_key(&format!("{module}::{}", word.split("::").next().unwrap_or("")))
        {
            format!("{module}::{word}")
        } else if word.contains("::") && module.is_empty() {
            word.to_string()
        } else {
            continue;
        };
        // The longest module that the path starts with.
        let parts: Vec<&str> = path.split("::").collect();
        let target =
            (0..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| all.contains_key(m)).unwrap_or_default();
        if target != module {
            out.insert(target);
        }
    }
    out.remove(module);
    out.remove("");
    out
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        at: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == at) {
            let mut found = path[start..].to_vec();
            found.push(at.to_string());
            return Some(found);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(at.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

fn graph_of(dir: &Path, root: &str) -> BTreeMap<String, BTreeSet<String>> {
    let all = modules(dir);
    all.iter()
        .filter(|(module, _)| !module.is_empty())
        .map(|(module, text)| (module.clone(), named(module, text, &all, root)))
        .collect()
}

fn show(name: &str, graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    graph.iter().map(|(m, to)| format!("{name} {m:?} -> {to:?}\n")).collect()
}

#[test]
fn no_module_of_the_core_names_a_module_that_names_it_back() {
    let graph = graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "task_core");
    assert_eq!(cycle(&graph), None, "\n{}", show("core", &graph));
}

#[test]
fn no_module_of_the_component_names_a_module_that_names_it_back() {
    let graph = graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../src"), "task_api");
    assert_eq!(cycle(&graph), None, "\n{}", show("component", &graph));
}

#[test]
fn the_checker_finds_a_planted_loop() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    graph.insert("c".to_string(), BTreeSet::new());
    assert_eq!(cycle(&graph), None);
}
