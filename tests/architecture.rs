//! The module layering of the crate, checked from the source text.
//!
//! `ARCHITECTURE.md` describes the crate as layers: foundations that import nothing else from
//! the crate (safetensors files, samplers, prompt parsing, downloads), then the networks, image
//! I/O and object storage, LoRA patching, the engine, the job handler and finally the program
//! glue. These tests keep it that way:
//!
//! - every `crate::<module>` (or `super::…` reaching another top-level module) points to a
//!   module of a strictly lower layer, so there are no upward imports and no cycles between
//!   top-level modules;
//! - inside every module, the sibling files do not import each other in a cycle (for example
//!   `fetch/download.rs` ↔ `fetch/segmented.rs`); the same holds for the runtime crate in
//!   `crates/runpod-worker/src`;
//! - a new top-level module must be given a layer in [`LAYERS`] (and in `ARCHITECTURE.md`).
//!
//! The scan is textual: comments are ignored, every path that starts with `crate::` or
//! `super::` in code (including grouped `use crate::{a::X, b::Y}`) counts as a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of `src/` by layer, lowest first. A module may import only modules of a
/// lower layer; modules of one layer are independent of each other.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "weights",
            "sampling",
            "prompt",
            "fetch",
            "runpod",
            "telemetry",
        ],
    ),
    (
        "networks, image I/O and storage",
        &["model", "image", "storage"],
    ),
    ("adapters", &["lora"]),
    ("engine", &["pipeline"]),
    ("job handler", &["handler"]),
    ("program glue", &["config"]),
];

/// One source file: its module path (`["fetch", "download"]`; `[]` for `lib.rs`) and text.
struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

/// A reference from one file to an absolute module path, with the line it is on.
struct Reference {
    target: Vec<String>,
    line: usize,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Reads every `.rs` file below `root`, with module paths relative to it. `main.rs` is a
/// separate binary crate and is left out.
fn read_tree(root: &Path) -> Vec<SourceFile> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<SourceFile>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("below root");
                let mut module: Vec<String> = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                match module.last().map(String::as_str) {
                    Some("main") if module.len() == 1 => continue,
                    Some("lib") if module.len() == 1 => module.clear(),
                    Some("mod") => {
                        module.pop();
                    }
                    _ => {}
                }
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                out.push(SourceFile { path, module, text });
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// The code of one line without its `//` comment (string contents are kept; a `//` inside a
/// string cuts the line there, which can only hide references, never invent one).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The leading identifiers of each item in a `{a::b, c, d::{e}}` group starting at `s[0] == '{'`,
/// as paths of up to two segments (enough to name a module and its child).
fn group_items(s: &str) -> Vec<Vec<String>> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth > 1 {
                    current.push(c);
                }
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    items.push(std::mem::take(&mut current));
                    break;
                }
                current.push(c);
            }
            ',' if depth == 1 => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items
        .iter()
        .map(|item| {
            item.trim()
                .split("::")
                .map(|seg| {
                    seg.trim()
                        .chars()
                        .take_while(|&c| is_ident_char(c))
                        .collect()
                })
                .take_while(|seg: &String| !seg.is_empty())
                .take(2)
                .collect()
        })
        .filter(|p: &Vec<String>| !p.is_empty())
        .collect()
}

/// The path segments (up to two) that follow position `at` in `code`, or a group's items.
fn paths_after(code: &str) -> Vec<Vec<String>> {
    if code.starts_with('{') {
        return group_items(code);
    }
    let path: Vec<String> = code
        .split("::")
        .map(|seg| {
            seg.chars()
                .take_while(|&c| is_ident_char(c))
                .collect::<String>()
        })
        .take_while(|seg| !seg.is_empty())
        .take(2)
        .collect();
    if path.is_empty() {
        Vec::new()
    } else {
        vec![path]
    }
}

/// Every `crate::…` and `super::…` path in the file, resolved to an absolute module path.
/// Multi-line `use` groups are joined first so that grouped imports are seen whole.
fn references(file: &SourceFile) -> Vec<Reference> {
    let mut out = Vec::new();
    let lines: Vec<&str> = file.text.lines().map(code_of).collect();
    for (idx, line) in lines.iter().enumerate() {
        // A group opened on this line may close several lines later.
        let mut joined = (*line).to_owned();
        let mut next = idx + 1;
        while joined.matches('{').count() > joined.matches('}').count() && next < lines.len() {
            joined.push(' ');
            joined.push_str(lines[next]);
            next += 1;
        }
        let mut rest = joined.as_str();
        // Only references that start on this line belong to it.
        let limit = line.len();
        let mut offset = 0;
        while let Some(found) = find_path_start(rest) {
            let (pos, kind) = found;
            if offset + pos >= limit {
                break;
            }
            // `foo::crate::x` is no crate path, nor is a macro's `$crate::x`.
            let preceded_by_ident = rest[..pos]
                .chars()
                .last()
                .is_some_and(|c| is_ident_char(c) || c == '$')
                || rest[..pos].ends_with("::");
            let after = &rest[pos + kind.len()..];
            if !preceded_by_ident {
                // `crate::x` is absolute; `super::x` starts at the parent, and each further
                // `super::` climbs once more.
                let (mut base, mut tail) = match kind {
                    "crate::" => (Vec::new(), after),
                    _ => (parent_of(&file.module), after),
                };
                if kind == "super::" {
                    while let Some(t) = tail.strip_prefix("super::") {
                        base.pop();
                        tail = t;
                    }
                }
                for path in paths_after(tail) {
                    let mut target = base.clone();
                    target.extend(path);
                    out.push(Reference {
                        target,
                        line: idx + 1,
                    });
                }
            }
            let step = pos + kind.len();
            offset += step;
            rest = &rest[step..];
        }
    }
    out
}

fn find_path_start(s: &str) -> Option<(usize, &'static str)> {
    let c = s.find("crate::").map(|p| (p, "crate::"));
    let p = s.find("super::").map(|p| (p, "super::"));
    match (c, p) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The module that `super` names in this file: the parent of the file's module (for `mod.rs`
/// the module is the directory itself, so `super` is the directory's parent).
fn parent_of(module: &[String]) -> Vec<String> {
    let mut m = module.to_vec();
    m.pop();
    m
}

/// Edges between top-level modules, with one example place each.
fn top_level_edges(files: &[SourceFile]) -> BTreeMap<(String, String), String> {
    let top: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.module.first().cloned())
        .collect();
    let mut edges = BTreeMap::new();
    for file in files {
        let Some(from) = file.module.first() else {
            continue;
        };
        for r in references(file) {
            let Some(to) = r.target.first() else { continue };
            if to != from && top.contains(to) {
                edges
                    .entry((from.clone(), to.clone()))
                    .or_insert_with(|| format!("{}:{}", file.path.display(), r.line));
            }
        }
    }
    edges
}

/// Edges between sibling modules (files or folders under one parent), per parent.
fn sibling_edges(
    files: &[SourceFile],
) -> BTreeMap<Vec<String>, BTreeMap<(String, String), String>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut out: BTreeMap<Vec<String>, BTreeMap<(String, String), String>> = BTreeMap::new();
    for file in files {
        if file.module.is_empty() {
            continue;
        }
        for r in references(file) {
            // The longest common prefix is the parent the two siblings share.
            let common = file
                .module
                .iter()
                .zip(&r.target)
                .take_while(|(a, b)| a == b)
                .count();
            if common >= file.module.len() || common >= r.target.len() {
                continue; // a reference to an ancestor or a descendant
            }
            let parent = file.module[..common].to_vec();
            let from = file.module[common].clone();
            let to = r.target[common].clone();
            let mut to_module = parent.clone();
            to_module.push(to.clone());
            if !modules.contains(&to_module) {
                continue; // an item of the parent, not a sibling module
            }
            out.entry(parent)
                .or_default()
                .entry((from, to))
                .or_insert_with(|| format!("{}:{}", file.path.display(), r.line));
        }
    }
    out
}

/// A cycle in a directed graph, as the list of its nodes, if there is one.
fn find_cycle(edges: &BTreeMap<(String, String), String>) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        graph.entry(a.as_str()).or_default().push(b.as_str());
        graph.entry(b.as_str()).or_default();
    }
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: BTreeMap<&str, u8> = graph.keys().map(|k| (*k, 0)).collect();
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(node, 1);
        path.push(node);
        for &next in &graph[node] {
            match state[next] {
                1 => {
                    let start = path.iter().position(|&n| n == next).expect("on path");
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(next.to_owned());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    let nodes: Vec<&str> = graph.keys().copied().collect();
    for node in nodes {
        if state[node] == 0 {
            if let Some(c) = visit(node, &graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sibling-cycle violations of one source tree, as readable lines.
fn sibling_cycles(files: &[SourceFile]) -> Vec<String> {
    let mut problems = Vec::new();
    for (parent, edges) in sibling_edges(files) {
        if let Some(cycle) = find_cycle(&edges) {
            let places: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let at = &edges[&(w[0].clone(), w[1].clone())];
                    format!("{} -> {} ({at})", w[0], w[1])
                })
                .collect();
            problems.push(format!(
                "cycle among the children of `{}`: {}",
                if parent.is_empty() {
                    "crate".to_owned()
                } else {
                    parent.join("::")
                },
                places.join(", ")
            ));
        }
    }
    problems
}

#[test]
fn every_top_level_module_has_a_layer() {
    let files = read_tree(&manifest_dir().join("src"));
    let unplaced: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.module.first().map(String::as_str))
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in tests/architecture.rs LAYERS (and ARCHITECTURE.md): {unplaced:?}"
    );
    // Each module in the table exists (a removed module is taken out of the table too),
    // except the runtime and logging, which live in crates/runpod-worker and are re-exported.
    let present: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.module.first().cloned())
        .collect();
    for (_, modules) in LAYERS {
        for m in *modules {
            let external = matches!(*m, "runpod" | "telemetry");
            assert!(
                external || present.contains(*m),
                "LAYERS names `{m}`, which is not a module of src/"
            );
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let files = read_tree(&manifest_dir().join("src"));
    let mut problems = Vec::new();
    for ((from, to), at) in top_level_edges(&files) {
        let (Some(lf), Some(lt)) = (layer_of(&from), layer_of(&to)) else {
            continue; // reported by every_top_level_module_has_a_layer
        };
        if lt >= lf {
            problems.push(format!(
                "{from} ({}) imports {to} ({}) at {at}",
                LAYERS[lf].0, LAYERS[lt].0
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "imports from a module to one of the same or a higher layer:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_import_cycles_inside_modules() {
    let mut problems = sibling_cycles(&read_tree(&manifest_dir().join("src")));
    let runtime = manifest_dir().join("crates/runpod-worker/src");
    assert!(
        runtime.is_dir(),
        "the runtime crate is missing: {}",
        runtime.display()
    );
    problems.extend(sibling_cycles(&read_tree(&runtime)));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The scanner itself: an upward import, a grouped import and a sibling cycle written the ways
/// they appear in real code are all found.
#[test]
fn the_scanner_finds_what_it_looks_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("lib.rs", "pub mod weights;\npub mod model;\n");
    write("weights/mod.rs", "mod a;\nmod b;\n");
    write(
        "weights/a.rs",
        "// crate::model in a comment does not count\nuse super::b::Thing;\n",
    );
    write(
        "weights/b.rs",
        "use crate::{\n    model::ShapeMap,\n    weights::a::Other,\n};\n",
    );
    write("model/mod.rs", "pub struct ShapeMap;\n");
    let files = read_tree(dir.path());

    let edges = top_level_edges(&files);
    let keys: Vec<_> = edges.keys().cloned().collect();
    assert_eq!(keys, vec![("weights".to_owned(), "model".to_owned())]);
    assert!(edges[&("weights".into(), "model".into())].ends_with("b.rs:1"));

    let problems = sibling_cycles(&files);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("weights"), "{}", problems[0]);
    assert!(problems[0].contains("a -> b") || problems[0].contains("b -> a"));
}
