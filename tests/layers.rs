//! The crate's modules form layers that only point down (see the table
//! below): a module imports only modules of a lower rank, so there is no
//! import cycle. This test reads the imports from the source itself, so a
//! `use` that points up, or a new module nobody placed, fails the suite.
//!
//! Run with `--nocapture` to print the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every top-level module of `src/`, bottom to top. A module may import only
/// modules with a smaller rank. Modules that share a layer get distinct ranks
/// where one of them uses the other.
const LAYERS: &[(&str, u32)] = &[
    // 0 data: plain structs and enums, the error type, values.
    ("status", 0),
    ("error", 1),
    ("value", 2),
    // 1 text: the one SQL lexer and what is built on it.
    ("sql", 10),
    // 2 settings: plain logic and configuration.
    ("resilience", 20),
    ("config", 21),
    // 3 drivers.
    ("backend", 30),
    // 4 machinery.
    ("watchdog", 40),
    ("metrics", 40),
    ("observe", 40),
    ("pool", 41),
    ("topology", 41),
    // 5 the choke point.
    ("pipeline", 50),
    // 6 services.
    ("cache", 60),
    ("session", 61),
    ("health", 61),
    ("migrate", 62),
    ("entities", 62),
    ("stream", 62),
    ("bulk", 62),
    ("manager", 63),
    ("replica", 64),
    ("shards", 64),
    // 7 edges.
    ("lib", 70),
    ("bin", 71),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, r)| r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/migrate/history.rs` is in
/// `migrate`, `src/lib.rs` is `lib`, `src/bin/*` is `bin`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let first = rel.components().next().expect("non-empty path");
    let first = first.as_os_str().to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// The source with comments, string and char literals blanked out, so that
/// a `crate::x` in a doc comment or a message is not an import.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat(b'#').take(hashes));
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                out.push(b' ');
            } else {
                out.push(b[i]);
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(b' ');
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); lifetimes ('a) are left alone.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(b' ');
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named after `crate::` in `code`, including every
/// first-level name of a grouped `use crate::{a::x, b::{y, z}}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if matches!(before, Some(c) if c == '$' || c.is_ascii_alphanumeric() || c == '_') {
            continue; // `$crate::` in a macro, or a longer name such as `mycrate::`
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            let mut depth = 1;
            let mut at_item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_item_start = true,
                    c if c.is_whitespace() => {}
                    _ if at_item_start && depth == 1 => {
                        at_item_start = false;
                        let name = ident_at(&group[i..]);
                        if !name.is_empty() {
                            found.insert(name.to_string());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(trimmed);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
    found
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let text = fs::read_to_string(file).expect("read source");
        let edges = graph.entry(from.clone()).or_default();
        for to in imports(&code_only(&text)) {
            // Names that are not modules (crate-root items such as `Result`
            // re-exported by lib.rs) are not edges between modules.
            if to != from && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    graph
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let graph = module_graph();
    let mut text = String::new();
    for (from, to) in &graph {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        text.push_str(&format!("{from:>10} -> {}\n", to.join(", ")));
    }
    println!("module graph (module -> modules it imports):\n{text}");

    let mut problems = Vec::new();
    for (from, to) in &graph {
        let Some(r_from) = rank(from) else {
            problems.push(format!(
                "module `{from}` has no layer: add it to LAYERS in tests/layers.rs"
            ));
            continue;
        };
        for t in to {
            match rank(t) {
                None => problems.push(format!("module `{t}` has no layer")),
                Some(r_to) if r_to >= r_from => problems.push(format!(
                    "`{from}` (rank {r_from}) imports `{t}` (rank {r_to}): a module may only import modules below it"
                )),
                Some(_) => {}
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}\n\n{text}", problems.join("\n"));
}

#[test]
fn the_import_reader_sees_grouped_and_plain_imports() {
    let code = code_only(
        "use crate::a::X;\nuse crate::{b::Y, c::{self, Z}, d};\n// crate::e in a comment\n\
         let s = \"crate::f\"; $crate::g::h; crate :: i;\nfn f<'a>(x: &'a str) { crate::j::k() }",
    );
    let found: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "j"]);
}
