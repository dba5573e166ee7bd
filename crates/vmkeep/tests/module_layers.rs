//! The crate's map, checked: which top-level module of `src/` uses which
//! (`crate::X` outside `#[cfg(test)]` code and comments, as
//! `../shared/tools/modgraph.py` counts them). There is no circle between
//! them, every module sits in a layer, and a module uses only its own layer
//! and the layers below (README.md, "Architecture").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of its own layer and
/// of the layers below it, never of a layer above.
const LAYERS: &[(&str, &[&str])] = &[
    // Know nothing of instances.
    (
        "leaves",
        &[
            "os",
            "link",
            "session",
            "text",
            "notice",
            "timeouts",
            "logging",
            "guest_arch",
            "formats",
        ],
    ),
    // The instance model and the pure decisions over it.
    (
        "domain",
        &["stop_ladder", "instance", "forwards", "mount_inotify"],
    ),
    // Runs an instance's VM: reads its layout and config values.
    ("drivers", &["driver"]),
    // Images, templates, service managers.
    ("services", &["image", "template", "autostart"]),
    // The per-VM process and its API (the engine is its client).
    ("agent", &["hostagent"]),
    // One typed operation per verb.
    ("engine", &["engine"]),
    // `cli` runs the daemon; `fuzzing` reaches anywhere.
    ("front ends", &["daemon", "cli", "fuzzing"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules: files and directories of `src/` but the crate
/// roots and `bin/`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("read src/")
        .map(|entry| entry.expect("an entry of src/").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_string();
            if path.is_dir() {
                (name != "bin").then_some(name)
            } else {
                let stem = name.strip_suffix(".rs")?;
                (!matches!(stem, "lib" | "main")).then(|| stem.to_string())
            }
        })
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The code of a file that counts: before its first `#[cfg(test)]` (tests
/// may reach anywhere), without `//` comments (they name modules without
/// using them).
fn counted_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names `code` uses as `crate::NAME` or in `crate::{A, B::x, ...}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(is_ident) {
            continue; // `my_crate::`, not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let item = item.trim_start_matches(|c: char| !is_ident(c));
                let name: String = item.chars().take_while(|c| is_ident(*c)).collect();
                names.insert(name);
            }
        } else {
            names.insert(rest.chars().take_while(|c| is_ident(*c)).collect());
        }
    }
    names
}

/// Which top-level module uses which.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = src();
    let modules = top_level_modules(&src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).expect("a file below src/");
        let first = relative.components().next().expect("a path");
        let first = first.as_os_str().to_string_lossy();
        let top = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if !modules.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for used in crate_paths(&counted_code(&text)) {
            if used != top && modules.contains(&used) {
                edges.get_mut(&top).expect("a module").insert(used);
            }
        }
    }
    edges
}

/// Every module `from` reaches through its uses.
fn reachable(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next: Vec<&str> = edges[from].iter().map(String::as_str).collect();
    while let Some(module) = next.pop() {
        if seen.insert(module.to_string()) {
            next.extend(edges[module].iter().map(String::as_str));
        }
    }
    seen
}

#[test]
fn no_circle_between_top_level_modules() {
    let edges = graph();
    let mut circles = BTreeSet::new();
    for module in edges.keys() {
        let reach = reachable(&edges, module);
        if reach.contains(module) {
            // The circle through `module`: the modules that reach it back.
            let circle: BTreeSet<String> = reach
                .into_iter()
                .filter(|other| reachable(&edges, other).contains(module))
                .collect();
            circles.insert(circle.into_iter().collect::<Vec<_>>().join(", "));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles between top-level modules of src/: {circles:#?}\n\
         (`python3 ../shared/tools/modgraph.py crates/vmkeep/src` shows their edges); \
         what a lower module needs from a higher one moves down, or is passed in"
    );
}

#[test]
fn every_module_uses_only_its_layer_and_those_below() {
    let edges = graph();
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(at, (_, modules))| modules.iter().map(move |m| (*m, at)))
        .collect();
    let unplaced: Vec<&String> = edges
        .keys()
        .filter(|m| !layer_of.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "top-level modules in no layer of LAYERS: {unplaced:?}; place each in the layer it belongs to"
    );
    let gone: Vec<&&str> = layer_of
        .keys()
        .filter(|m| !edges.contains_key(**m))
        .collect();
    assert!(gone.is_empty(), "LAYERS names modules src/ lacks: {gone:?}");
    let mut upward = Vec::new();
    for (module, uses) in &edges {
        let own = layer_of[module.as_str()];
        for used in uses {
            let theirs = layer_of[used.as_str()];
            if theirs > own {
                upward.push(format!(
                    "{module} ({}) uses {used} ({})",
                    LAYERS[own].0, LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules reaching up a layer: {upward:#?}"
    );
}

#[test]
fn the_reader_sees_what_modgraph_sees() {
    assert_eq!(
        crate_paths("use crate::instance::{self, Config};\nlet x = crate::os::fs::len_of(p);"),
        ["instance", "os"].map(String::from).into()
    );
    assert_eq!(
        crate_paths("use crate::{notice, os::process, timeouts};"),
        ["notice", "os", "timeouts"].map(String::from).into()
    );
    assert_eq!(
        crate_paths("vmkeep_crate::engine::x"),
        BTreeSet::new(),
        "only `crate::` paths count"
    );
    let code = counted_code(
        "use crate::os; // see crate::engine\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::cli; }",
    );
    assert_eq!(crate_paths(&code), ["os"].map(String::from).into());
}
