//! The runtime's layering, read off its source as a reviewer would read the `use` lines:
//!
//! - `cache/`, `outbox/` and `write_behind/` import neither `storage.rs` nor `repo/`, nor each
//!   other: they are built from the connection layer and handed what they need;
//! - no module imports one that imports it back (no cycle between top-level modules).
//!
//! Needs no server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the top-level modules its code names through `crate::...`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../caas-storage/src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect(&src, &mut files);
    assert!(files.len() > 20, "found the runtime's sources in {src:?}");
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" {
            continue;
        }
        let deps = graph.entry(top.clone()).or_default();
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top && name != "bson" {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn cache_outbox_and_queue_know_neither_storage_nor_the_executor_nor_each_other() {
    let graph = module_graph();
    let parts = ["cache", "outbox", "write_behind"];
    for part in parts {
        let deps = graph
            .get(part)
            .unwrap_or_else(|| panic!("no module {part}"));
        for forbidden in ["storage", "repo"].iter().chain(parts.iter()) {
            assert!(
                *forbidden == part || !deps.contains(*forbidden),
                "{part}/ imports {forbidden}: {deps:?}"
            );
        }
    }
}

#[test]
fn the_audit_log_stands_beside_the_executor_not_on_it() {
    let graph = module_graph();
    let deps = graph.get("audit").expect("no module audit");
    for forbidden in ["storage", "repo", "cache", "write_behind"] {
        assert!(
            !deps.contains(forbidden),
            "audit/ imports {forbidden}: {deps:?}"
        );
    }
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = module_graph();
    fn reaches(
        graph: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        graph
            .get(from)
            .into_iter()
            .flatten()
            .any(|d| d == to || (seen.insert(d.clone()) && reaches(graph, d, to, seen)))
    }
    for module in graph.keys() {
        assert!(
            !reaches(&graph, module, module, &mut BTreeSet::new()),
            "{module} is on an import cycle: {graph:#?}"
        );
    }
}
