//! The source tree's shape: no module imports one that imports it back (types flow downward).
//!
//! An edge is a file-level path use: `crate::a::b` or `super::x` anywhere in a module's code
//! (comments and string literals are skipped), resolved to the longest module path that exists.
//! A parent's `mod` declarations are not edges, and nor is a module naming its own descendants.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `root`, by module path (`crate` for lib.rs, `http::tokens`, …).
fn modules(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let name = if parts.is_empty() {
                "crate".to_string()
            } else {
                parts.join("::")
            };
            out.insert(name, path);
        }
    }
    out
}

/// The code of a file without comments, string and char literals, and `#[cfg(test)]` modules
/// at its end (unit tests may reach anywhere).
fn code_only(src: &str) -> String {
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    };
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied()) {
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            (b'"', _) => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            (b'r', Some(b'#')) | (b'r', Some(b'"'))
                if i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') =>
            {
                // A raw string r#"…"#: skip to the matching close.
                let mut j = i + 1;
                let mut hashes = 0;
                while j < b.len() && b[j] == b'#' {
                    hashes += 1;
                    j += 1;
                }
                if j < b.len() && b[j] == b'"' {
                    let close: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    j += 1;
                    while j < b.len() && !b[j..].starts_with(&close) {
                        j += 1;
                    }
                    i = j + close.len();
                    out.push_str("\"\"");
                } else {
                    out.push('r');
                    i += 1;
                }
            }
            (b'\'', _) if b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\')) => {
                // A char literal ('x' or '\n'); lifetimes ('a) pass through.
                let mut j = i + 1;
                while j < b.len() && b[j] != b'\'' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                i = j + 1;
                out.push_str("' '");
            }
            // Only ASCII matters for paths: anything else becomes a space.
            (c, _) => {
                out.push(if c.is_ascii() { char::from(c) } else { ' ' });
                i += 1;
            }
        }
    }
    out
}

/// The modules `name` (at `path`) uses.
fn edges(
    name: &str,
    path: &Path,
    all: &BTreeMap<String, PathBuf>,
    crate_name: &str,
) -> BTreeSet<String> {
    let code = code_only(&std::fs::read_to_string(path).unwrap());
    let own: Vec<&str> = if name == "crate" {
        Vec::new()
    } else {
        name.split("::").collect()
    };
    let is_mod_file = matches!(
        path.file_name().and_then(|f| f.to_str()),
        Some("mod.rs" | "lib.rs" | "main.rs")
    );
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &code[i..];
        let (base, after): (Vec<String>, &str) = if start_ok && rest.starts_with("crate::") {
            (Vec::new(), &rest[7..])
        } else if start_ok && rest.starts_with(&format!("{crate_name}::")) && name != "crate" {
            (Vec::new(), &rest[crate_name.len() + 2..])
        } else if start_ok && rest.starts_with("super::") {
            let mut b: Vec<String> = own.iter().map(|s| s.to_string()).collect();
            if !is_mod_file {
                b.pop();
            }
            (b, &rest[7..])
        } else {
            i += 1;
            continue;
        };
        let mut segs = base;
        for seg in after.split("::") {
            let ident: String = seg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() {
                break;
            }
            let full = ident.len() == seg.len();
            segs.push(ident);
            if !full {
                break;
            }
        }
        // A `use x::{a, b}` group names children of x: each is tried.
        let group: Vec<Vec<String>> = match after.find("::{") {
            Some(p) if !after[..p].contains(|c: char| c.is_whitespace() || c == ';') => {
                let inner = &after[p + 3..after[p..].find('}').map_or(after.len(), |q| p + q)];
                inner
                    .split(',')
                    .map(|item| {
                        let mut s = segs.clone();
                        s.extend(
                            item.trim()
                                .split("::")
                                .map(|x| x.split_whitespace().next().unwrap_or("").to_string())
                                .filter(|x| !x.is_empty() && x != "self"),
                        );
                        s
                    })
                    .collect()
            }
            _ => vec![segs],
        };
        for segs in group {
            for n in (1..=segs.len()).rev() {
                let candidate = segs[..n].join("::");
                if all.contains_key(&candidate) {
                    let descendant = name != "crate" && candidate.starts_with(&format!("{name}::"));
                    if candidate != name && !descendant {
                        out.insert(candidate);
                    }
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.found.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn graph_of(root: &Path, crate_name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let all = modules(root);
    all.iter()
        .map(|(name, path)| (name.clone(), edges(name, path, &all, crate_name)))
        .collect()
}

/// The source roots of the workspace: the daemon's `src/` and each crate under `crates/`.
fn roots() -> Vec<(PathBuf, String)> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![(top.join("src"), "toolgate".to_string())];
    if let Ok(dir) = std::fs::read_dir(top.join("crates")) {
        for entry in dir.flatten() {
            let src = entry.path().join("src");
            if src.is_dir() {
                let name = entry.file_name().to_string_lossy().replace('-', "_");
                out.push((src, name));
            }
        }
    }
    out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut found = Vec::new();
    for (root, name) in roots() {
        for comp in cycles(&graph_of(&root, &name)) {
            found.push(format!("{}: {}", root.display(), comp.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("http")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "pub mod app;\npub mod http;\npub mod leaf;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("app.rs"),
        "use crate::http::Response;\n// crate::leaf in a comment is no edge\n",
    )
    .unwrap();
    std::fs::write(src.join("http/mod.rs"), "pub mod tokens;\n").unwrap();
    std::fs::write(
        src.join("http/tokens.rs"),
        "use crate::app::App;\nuse super::{Response, Result};\nconst S: &str = \"crate::leaf\";\n",
    )
    .unwrap();
    std::fs::write(src.join("leaf.rs"), "pub struct Leaf;\n").unwrap();
    let graph = graph_of(src, "x");
    assert!(graph["app"].contains("http"));
    assert!(graph["http::tokens"].contains("app"));
    assert!(!graph["app"].contains("leaf"), "comments are not edges");
    assert!(
        !graph["http::tokens"].contains("leaf"),
        "strings are not edges"
    );
    assert!(
        !graph["http"].contains("http::tokens"),
        "a parent's mod is not an edge"
    );
    // app -> http (mod.rs), http::tokens -> app: no cycle, since http/mod.rs uses nothing.
    assert!(cycles(&graph).is_empty(), "{:?}", cycles(&graph));
    std::fs::write(
        src.join("http/mod.rs"),
        "pub mod tokens;\npub fn f(a: &crate::app::App) {}\n",
    )
    .unwrap();
    assert_eq!(
        cycles(&graph_of(src, "x")),
        vec![vec!["app".to_string(), "http".to_string()]]
    );
}
