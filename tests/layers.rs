//! The module map holds: every `crate::` import points down the layers below, and no files import each other
//! in a circle. Read from the sources' own `use crate::…` / `crate::…` / `super::…` paths, so a change that
//! imports upwards, or ties two files into a loop, fails here with the files named.
//!
//! The layers, top to bottom (docs/architecture.md draws them):
//!   cli → http → jobs → serving → batching → reward → metrics → pipeline, registry →
//!   runtime, storage → error

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its layer; a module may import only modules on lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("cli", 10),
    ("http", 8),
    ("jobs", 7),
    ("serving", 6),
    ("batching", 5),
    ("reward", 4),
    ("metrics", 3),
    ("pipeline", 2),
    ("registry", 2),
    ("runtime", 1),
    ("storage", 1),
    ("error", 0),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(folder: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The source without comments (doc comments name paths too) and without string literals.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut kept = String::new();
        let mut in_string = false;
        let mut previous = ' ';
        for character in line.chars() {
            if character == '"' && previous != '\\' {
                in_string = !in_string;
            } else if !in_string {
                kept.push(character);
            }
            previous = character;
        }
        code.push_str(&kept);
        code.push('\n');
    }
    code
}

fn is_ident(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_'
}

/// The paths after each `crate::` (or `super::`), a `{…}` group split into its items.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(index) = rest.find(prefix) {
        let before = rest[..index].chars().last();
        rest = &rest[index + prefix.len()..];
        if before.is_some_and(|character| is_ident(character) || character == ':') {
            continue;
        }
        paths.extend(expand(rest));
    }
    paths
}

/// The paths a `use` tail names: `a::b::C` or `{a::b, c::{d, e}}`.
fn expand(text: &str) -> Vec<Vec<String>> {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 0;
        let mut end = group.len();
        for (index, character) in group.char_indices() {
            match character {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = index;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let inner = &group[..end];
        let mut items = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (index, character) in inner.char_indices() {
            match character {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&inner[start..index]);
                    start = index + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[start..]);
        return items
            .into_iter()
            .filter(|item| !item.trim().is_empty())
            .flat_map(expand)
            .collect();
    }
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let name: String = rest.chars().take_while(|&character| is_ident(character)).collect();
        if name.is_empty() {
            break;
        }
        rest = &rest[name.len()..];
        segments.push(name);
        match rest.strip_prefix("::") {
            Some(after) if after.starts_with('{') => {
                return expand(after)
                    .into_iter()
                    .map(|tail| segments.iter().cloned().chain(tail).collect())
                    .collect();
            }
            Some(after) => rest = after,
            None => break,
        }
    }
    vec![segments]
}

/// The file a module path names: the deepest `src/a/b.rs` or `src/a/b/mod.rs` that exists.
fn resolve(segments: &[String]) -> Option<String> {
    let root = src();
    for length in (1..=segments.len()).rev() {
        let stem = segments[..length].join("/");
        for candidate in [format!("{stem}.rs"), format!("{stem}/mod.rs")] {
            if root.join(&candidate).is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// The module path of a file: `jobs/context.rs` → [jobs, context]; `jobs/mod.rs` → [jobs].
fn module_of(file: &str) -> Vec<String> {
    let trimmed = file.trim_end_matches(".rs").trim_end_matches("/mod");
    trimmed.split('/').map(str::to_string).collect()
}

/// Every file's imports of other files of the crate.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut graph = BTreeMap::new();
    for path in files {
        let file = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if file == "lib.rs" || file == "main.rs" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&path).unwrap());
        let mut targets = BTreeSet::new();
        for segments in paths_after(&code, "crate::") {
            if let Some(target) = resolve(&segments) {
                targets.insert(target);
            }
        }
        // `super::x` from a file of module m names a sibling (m/x.rs) or m itself.
        let module = module_of(&file);
        let parent: Vec<String> = if file.ends_with("mod.rs") {
            module[..module.len().saturating_sub(1)].to_vec()
        } else {
            module[..module.len() - 1].to_vec()
        };
        for segments in paths_after(&code, "super::") {
            let full: Vec<String> = parent.iter().cloned().chain(segments).collect();
            if let Some(target) = resolve(&full) {
                targets.insert(target);
            }
        }
        targets.remove(&file);
        graph.insert(file, targets);
    }
    graph
}

fn top(file: &str) -> String {
    file.split('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".rs")
        .to_string()
}

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
        .unwrap_or_else(|| panic!("src/{module} is not in LAYERS: give it a layer in tests/layers.rs"))
}

#[test]
fn every_import_points_down_the_layers() {
    let mut upward = Vec::new();
    for (file, targets) in imports() {
        let from = top(&file);
        for target in targets {
            let to = top(&target);
            if from != to && layer(&to) >= layer(&from) {
                upward.push(format!("src/{file} ({from}) imports src/{target} ({to})"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down:\n{}",
        upward.join("\n")
    );
}

/// A module's `mod.rs` declares and re-exports its files, and they may use what it defines (the stage list, a
/// shared type): that parent-child tie is how Rust modules work, so the circle search leaves it out.
fn is_parent_tie(from: &str, to: &str) -> bool {
    let parent_of = |file: &str| {
        let module = module_of(file);
        module[..module.len().saturating_sub(1)].join("/")
    };
    (to.ends_with("mod.rs") && parent_of(from) == module_of(to).join("/"))
        || (from.ends_with("mod.rs") && parent_of(to) == module_of(from).join("/"))
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let graph = imports();
    let edges: BTreeMap<&String, Vec<&String>> = graph
        .iter()
        .map(|(file, targets)| {
            let kept = targets
                .iter()
                .filter(|target| graph.contains_key(*target) && !is_parent_tie(file, target))
                .collect();
            (file, kept)
        })
        .collect();
    // Depth-first search for a back edge; the path on the stack is the circle.
    fn visit<'a>(
        file: &'a String,
        edges: &BTreeMap<&'a String, Vec<&'a String>>,
        stack: &mut Vec<&'a String>,
        done: &mut BTreeSet<&'a String>,
    ) -> Option<Vec<String>> {
        if let Some(position) = stack.iter().position(|on| *on == file) {
            let mut circle: Vec<String> = stack[position..].iter().map(|file| format!("src/{file}")).collect();
            circle.push(format!("src/{file}"));
            return Some(circle);
        }
        if done.contains(file) {
            return None;
        }
        stack.push(file);
        for next in edges.get(file).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(file);
        None
    }
    let mut done = BTreeSet::new();
    for file in edges.keys() {
        let mut stack = Vec::new();
        if let Some(circle) = visit(file, &edges, &mut stack, &mut done) {
            panic!("an import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_sees_imports() {
    // The checks above are only as good as this reader: it must see a plain path, a group and a nested group.
    let paths = paths_after(
        "use crate::jobs::{context::JobContext, spec::{A, B}};\nlet x = crate::error::Error::Cancelled;",
        "crate::",
    );
    let joined: Vec<String> = paths.iter().map(|path| path.join("::")).collect();
    assert_eq!(
        joined,
        [
            "jobs::context::JobContext",
            "jobs::spec::A",
            "jobs::spec::B",
            "error::Error::Cancelled"
        ]
    );
    let graph = imports();
    assert!(
        graph["http/generate.rs"].contains("http/extract.rs"),
        "{:?}",
        graph["http/generate.rs"]
    );
    assert!(
        graph["jobs/sampling.rs"].contains("serving/engine.rs") || graph["jobs/sampling.rs"].contains("serving/mod.rs")
    );
}
