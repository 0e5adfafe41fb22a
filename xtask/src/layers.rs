//! `cargo xtask layers`: the module graph of `switch-user`, one node a
//! source file, an edge for every `crate::` path it names (in `use` lines
//! and inline). Prints each cycle and fails if there is one, and fails if a
//! layer imports one above it (`model ← engine ← adapters ← daemon ← cli`),
//! or an adapter imports another adapter.
//! Plain text scanning, no compiler: paths are resolved to the longest
//! prefix that is a file's module.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Result, bail};

/// Layers from the bottom; a module may name its own layer and those below.
const LAYERS: &[&str] = &["model", "engine", "adapters", "daemon", "cli"];

pub fn run() -> Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../switch-user/src");
    let mut files = BTreeMap::new();
    collect(&src, &src, &mut files)?;
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, (text, is_dir)) in &files {
        let deps = graph.entry(m.clone()).or_default();
        let mut paths = crate_paths(text);
        // `super::x` names a sibling of a file module, or a sibling of a
        // folder's module from its mod.rs; `self::x` (in a mod.rs) a child.
        let parent = match m.rsplit_once("::") {
            Some((p, _)) => p.to_string(),
            None => String::new(),
        };
        let (sup, this) = if *is_dir {
            (parent.clone(), m.clone())
        } else {
            (parent.clone(), parent.clone())
        };
        for (word, base) in [("super::", &sup), ("self::", &this)] {
            for p in relative_paths(text, word) {
                paths.push(if base.is_empty() {
                    p
                } else {
                    format!("{base}::{p}")
                });
            }
        }
        for path in paths {
            if let Some(target) = resolve(&path, &modules)
                && &target != m
                && !m.starts_with(&format!("{target}::"))
            {
                deps.insert(target);
            }
        }
    }
    let mut failed = false;
    for cycle in cycles(&graph) {
        failed = true;
        println!("cycle: {}", cycle.join(" -> "));
    }
    let rank = |m: &str| {
        let top = m.split("::").next().unwrap_or(m);
        LAYERS.iter().position(|l| *l == top)
    };
    for (m, deps) in &graph {
        for d in deps {
            if let (Some(a), Some(b)) = (rank(m), rank(d))
                && b > a
            {
                failed = true;
                println!("upward: {m} -> {d} ({} imports {})", LAYERS[a], LAYERS[b]);
            }
        }
    }
    // Adapters stand side by side: each is wired by the daemon, none
    // reaches another.
    let adapter = |m: &str| {
        m.strip_prefix("adapters::")
            .map(|r| r.split("::").next().unwrap_or(r).to_string())
    };
    for (m, deps) in &graph {
        for d in deps {
            if let (Some(a), Some(b)) = (adapter(m), adapter(d))
                && a != b
            {
                failed = true;
                println!("sideways: {m} -> {d} (an adapter imports another)");
            }
        }
    }
    println!(
        "{} modules, {} edges",
        graph.len(),
        graph.values().map(|d| d.len()).sum::<usize>()
    );
    if failed {
        bail!("switch-user's modules import in circles or upwards (above)");
    }
    println!("no cycles, no upward imports");
    Ok(())
}

/// Every `.rs` file under `dir`, keyed by module path (`fleet::agent`;
/// `lib.rs`, `main.rs` and `mod.rs` name their folder's module), with its
/// text and whether it is a folder's `mod.rs`.
fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, bool)>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root)?.with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let is_dir = parts.last().is_some_and(|l| l == "mod");
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            let name = if parts.is_empty() {
                "crate".to_string()
            } else {
                parts.join("::")
            };
            out.insert(name, (std::fs::read_to_string(&p)?, is_dir));
        }
    }
    Ok(())
}

/// The `crate::a::b` paths a file names, `use crate::{a::{b, c}, d}` groups
/// expanded.
fn crate_paths(text: &str) -> Vec<String> {
    relative_paths(text, "crate::")
}

/// The paths after every `word` (`crate::`, `super::`, `self::`), groups
/// expanded. Inline `mod tests` blocks are left out: their `super` is the
/// file itself.
fn relative_paths(text: &str, word: &str) -> Vec<String> {
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        // A word that merely ends in "crate" (`switch_crate::`) is not ours.
        let before = rest[..i].chars().last();
        rest = &rest[i + word.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand("", rest, &mut out);
    }
    out
}

/// Expands one path at the start of `s` (after a `prefix`), groups included.
fn expand(prefix: &str, s: &str, out: &mut Vec<String>) {
    let ident: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let after = &s[ident.len()..];
    let path = format!("{prefix}{ident}");
    if after.starts_with('{') {
        // A group: split its top level on commas.
        let mut depth = 0;
        let mut start = 1;
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' | ',' if depth == 1 => {
                    let item = after[start..i].trim();
                    if !item.is_empty() {
                        expand(&path, item, out);
                    }
                    start = i + 1;
                    if c == '}' {
                        break;
                    }
                }
                '}' => depth -= 1,
                _ => {}
            }
            if c == '}' && depth == 0 {
                break;
            }
        }
    } else {
        out.push(path.trim_end_matches(':').to_string());
    }
}

/// The longest prefix of `path` that is a file's module.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|p| modules.contains(p))
}

/// Every strongly connected component of more than one module, as a list.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for d in g.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in g.keys() {
        if done.contains(m) || !reaches[m].contains(m) {
            continue;
        }
        let scc: Vec<String> = g
            .keys()
            .filter(|o| reaches[m].contains(*o) && reaches[*o].contains(m))
            .cloned()
            .collect();
        done.extend(scc.iter().cloned());
        out.push(scc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand_to_every_path() {
        let p = crate_paths(
            "use crate::{api::{self, Command}, config::X, health, fleet::agent::F};\nlet x = crate::bgp::Bird::start();",
        );
        assert_eq!(
            p,
            vec![
                "api::self",
                "api::Command",
                "config::X",
                "health",
                "fleet::agent::F",
                "bgp::Bird::start"
            ]
        );
    }

    #[test]
    fn a_cycle_is_found() {
        let mut g = BTreeMap::new();
        for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
            g.entry(a.to_string())
                .or_insert_with(BTreeSet::new)
                .insert(b.to_string());
        }
        g.insert("d".into(), BTreeSet::new());
        assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    }
}
