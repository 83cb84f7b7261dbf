//! Checks across service files: every dependency names a service, and there are no cycles.
//!
//! A service that fails these checks is moved from the valid list to the broken list, so the
//! supervisor never has to think about cycles or dangling names.

use std::collections::{BTreeMap, BTreeSet};

use super::service::DependencySpans;
use super::{Broken, Diagnostic, Tree};

/// (service name, file text, dependency spans) for every valid service.
pub type Spans = [(String, String, DependencySpans)];

pub fn check(tree: &mut Tree, spans: &Spans) {
    let known: BTreeSet<&str> = tree
        .services
        .iter()
        .map(|s| s.name.as_str())
        .chain(tree.broken.iter().map(|b| b.name.as_str()))
        .collect();
    let mut bad: BTreeMap<String, String> = BTreeMap::new();
    let mut diagnostics = Vec::new();

    // Dependencies on names that have no file at all.
    for (name, text, deps) in spans {
        let svc = tree.service(name);
        for (dep, span) in &deps.entries {
            if !known.contains(dep.as_str()) {
                let key = if svc.is_some_and(|s| s.requires.contains(dep)) {
                    "requires"
                } else {
                    "after"
                };
                let file = svc.map(|s| s.file.clone()).unwrap_or_default();
                let message = format!("{key}: no service named {dep:?}");
                diagnostics.push(Diagnostic::new(&file, text, Some(span.clone()), message));
                bad.insert(name.clone(), format!("depends on missing service {dep:?}"));
            }
        }
    }

    // Cycles: each service on one is reported at the edge that closes it.
    for cycle in find_cycles(tree) {
        let path = cycle.join(" -> ");
        for (i, name) in cycle.iter().enumerate().take(cycle.len() - 1) {
            let next = &cycle[i + 1];
            if let Some((_, text, deps)) = spans.iter().find(|(n, _, _)| n == name) {
                let span = deps.entries.iter().find(|(d, _)| d == next).map(|(_, s)| s.clone());
                let file = tree.service(name).map(|s| s.file.clone()).unwrap_or_default();
                let message = format!("dependency cycle: {path}");
                diagnostics.push(Diagnostic::new(&file, text, span, message));
            }
            bad.insert(name.clone(), format!("is part of a dependency cycle ({path})"));
        }
    }

    tree.diagnostics.extend(diagnostics);
    for (name, reason) in bad {
        tree.services.retain(|s| s.name != name);
        tree.broken.push(Broken { name, reason });
    }
}

/// Every dependency cycle among the valid services, each as a closed path `a -> b -> a`.
fn find_cycles(tree: &Tree) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let index: BTreeMap<&str, usize> =
        tree.services.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut marks = vec![Mark::New; tree.services.len()];
    let mut cycles = Vec::new();
    for root in 0..tree.services.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (node, next dependency to look at).
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps: Vec<usize> = tree.services[node]
                .dependencies()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect();
            if let Some(&dep) = deps.get(*next) {
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Active;
                        stack.push((dep, 0));
                    }
                    Mark::Active => {
                        let start = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..]
                            .iter()
                            .map(|&(n, _)| tree.services[n].name.clone())
                            .collect();
                        cycle.push(tree.services[dep].name.clone());
                        cycles.push(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::load;

    fn tree_of(tag: &str, files: &[(&str, &str)]) -> (super::Tree, PathBuf) {
        let dir = std::env::temp_dir().join(format!("brig-graph-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("services")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join("services").join(format!("{name}.toml")), text).unwrap();
        }
        (load(&dir), dir)
    }

    fn cleanup(dir: &Path) {
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_dependency_is_reported_at_its_entry() {
        let (tree, dir) =
            tree_of("missing", &[("web", "exec = [\"/x\"]\nrequires = [\"net\", \"dbx\"]\n")]);
        assert!(tree.services.is_empty());
        let d = &tree.diagnostics;
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].position, Some((2, 13)));
        assert!(d[1].message.contains("no service named \"dbx\""), "{d:?}");
        cleanup(&dir);
    }

    #[test]
    fn dependency_on_a_broken_file_is_not_a_second_error() {
        let (tree, dir) = tree_of(
            "on-broken",
            &[("net", "exec = [\"/x\"\n"), ("web", "exec = [\"/x\"]\nrequires = [\"net\"]\n")],
        );
        assert_eq!(tree.services.len(), 1);
        assert_eq!(tree.diagnostics.len(), 1);
        cleanup(&dir);
    }

    #[test]
    fn cycle_is_reported_and_its_members_are_broken() {
        let (tree, dir) = tree_of(
            "cycle",
            &[
                ("a", "exec = [\"/x\"]\nafter = [\"b\"]\n"),
                ("b", "exec = [\"/x\"]\nrequires = [\"c\"]\n"),
                ("c", "exec = [\"/x\"]\nafter = [\"a\"]\n"),
                ("d", "exec = [\"/x\"]\nafter = [\"a\"]\n"),
            ],
        );
        let names: Vec<&str> = tree.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["d"]);
        assert_eq!(tree.broken.len(), 3);
        assert!(tree.diagnostics.iter().all(|d| d.message == "dependency cycle: a -> b -> c -> a"));
        assert_eq!(tree.diagnostics.len(), 3);
        cleanup(&dir);
    }
}
