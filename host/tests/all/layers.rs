//! The host's rooms stay in their layer order: no import circle between the top-level
//! modules of `host/src`, and the rooms below the edge import nothing from it. Reads
//! the sources as text (`crate::<module>` paths, `use crate::{a, b}` groups); run with
//! `--nocapture` to see the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rooms that must not reach up into the edge (`gateway`, `admin`).
const BELOW_THE_EDGE: &[&str] = &[
    "config",
    "store",
    "bus",
    "auth",
    "capability",
    "runtime",
    "outcome",
    "policy",
    "registry",
    "dispatch",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The top-level module a source file belongs to (`None` for lib.rs and main.rs).
fn room(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The `crate::X` names a file mentions, comments left out.
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    found.insert(name.to_string());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn graph() -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files)?;
    let rooms: BTreeSet<String> = files.iter().filter_map(|f| room(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> =
        rooms.iter().map(|r| (r.clone(), BTreeSet::new())).collect();
    for file in &files {
        let Some(from) = room(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file)?;
        for to in imports(&text) {
            if to != from && rooms.contains(&to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    Ok(edges)
}

/// A path from `to` back to `from`, if there is one.
fn path_back(
    edges: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![vec![to.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("paths are never empty").clone();
        if last == from {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in edges.get(&last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next.clone());
            stack.push(longer);
        }
    }
    None
}

#[test]
fn no_import_circle_between_the_hosts_rooms() -> anyhow::Result<()> {
    let edges = graph()?;
    let mut circles = Vec::new();
    for (from, targets) in &edges {
        println!(
            "{from:12} -> {}",
            targets.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        for to in targets {
            if let Some(back) = path_back(&edges, from, to) {
                circles.push(format!("{from} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(
        edges.len() > 10,
        "found only {} rooms: {edges:?}",
        edges.len()
    );
    assert!(circles.is_empty(), "import circles: {circles:#?}");
    Ok(())
}

#[test]
fn rooms_below_the_edge_import_nothing_from_it() -> anyhow::Result<()> {
    let edges = graph()?;
    for room in BELOW_THE_EDGE {
        let targets = edges
            .get(*room)
            .ok_or_else(|| anyhow::anyhow!("no room {room:?} in host/src"))?;
        for edge in ["gateway", "admin"] {
            assert!(
                !targets.contains(edge),
                "{room} imports from {edge}: {targets:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_reader_finds_imports() {
    let found = imports(
        "use crate::a::B;\nuse crate::{c, d::E};\n// crate::commented\nlet x = crate::f::g();",
    );
    let expected: BTreeSet<String> = ["a", "c", "d", "f"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, expected);
}
