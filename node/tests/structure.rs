//! Pins the module structure the code promises (issue 13): one name per concept, and the
//! dependency direction between modules. These read the sources, so they fail when someone
//! adds a second `Membership` type or makes `coordinator` import from `server`.

use std::path::Path;
use std::path::PathBuf;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively (bounded by the tree's depth).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read source dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The files under `src/` that define a type called `name` (struct, enum or type alias).
fn definitions_of(name: &str) -> Vec<String> {
    let patterns = [
        format!("struct {name} "),
        format!("struct {name}<"),
        format!("struct {name} {{"),
        format!("enum {name} "),
        format!("type {name} "),
        format!("type {name}<"),
    ];
    let mut found = Vec::new();
    for f in rust_files(&src()) {
        let text = std::fs::read_to_string(&f).expect("read source");
        for line in text.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            if patterns.iter().any(|p| line.contains(p.as_str())) {
                found.push(format!("{}: {line}", f.display()));
            }
        }
    }
    found
}

#[test]
fn one_membership_type() {
    // `raft::Membership` (openraft's) is the group's membership; how a node forms its group
    // on first start is `node::Bootstrap`.
    let defs = definitions_of("Membership");
    assert_eq!(defs.len(), 1, "Membership types: {defs:#?}");
    assert!(defs[0].contains("raft"), "{defs:?}");
}

#[test]
fn one_type_called_node() {
    // `node::Node` is the node; the Raft wrapper is `raft::RaftShard` (in `raft::shard`) and a
    // member's address is `raft::Member`.
    let defs = definitions_of("Node");
    assert_eq!(defs.len(), 1, "Node types: {defs:#?}");
    assert!(
        src().join("node").join("mod.rs").exists() && !src().join("raft").join("node.rs").exists(),
        "the node lives in src/node/, the Raft wrapper in src/raft/shard.rs"
    );
}

#[test]
fn coordinator_does_not_import_server() {
    // `server` sits on top of `coordinator`; what both need (conversions, the error → status
    // mapping, validation) lives below both, in `api`.
    let mut offending = Vec::new();
    for f in rust_files(&src().join("coordinator")) {
        let text = std::fs::read_to_string(&f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains("crate::server") || code.contains("super::server") {
                offending.push(format!("{}:{}: {line}", f.display(), n + 1));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "coordinator imports server: {offending:#?}"
    );
}

#[test]
fn one_channel_cache() {
    // Channels to other nodes' client gRPC endpoints come from `channels::Channels` (one set
    // of timeouts); the Raft transport (`raft/`) dials the Raft port on its own.
    let mut builders = Vec::new();
    for f in rust_files(&src()) {
        if f.starts_with(src().join("raft")) || f.ends_with("channels.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        if text.contains("Endpoint::from_shared") || text.contains("Endpoint::new") {
            builders.push(f.display().to_string());
        }
    }
    assert!(
        builders.is_empty(),
        "gRPC channels built outside channels.rs: {builders:#?}"
    );
}
