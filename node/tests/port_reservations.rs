#![allow(clippy::unwrap_used)]
//! No test reserves a port by binding :0 and dropping the listener: the port can be taken
//! before the server binds it (by the ephemeral port of an outgoing connection), a start-up
//! flake seen in the cluster tests. Servers in tests use a loopback address of their own with
//! the default ports (`procs::loopback`); binding :0 is fine only where the test keeps the
//! listener and serves on it (`let listener = …`).
//!
//! And every `kindex-node` process of a test is started by the one harness, `node/tests/procs`
//! (the CLI's tests include it by `#[path]`): no other test file names the node binary, and
//! none listens on a fixed loopback address of its own choosing instead of the harness's
//! per-test allocation.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The tests' Rust files of every crate, but this one.
fn test_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for krate in ["node", "operator", "cli", "crds", "bench", "common"] {
        let tests = root.join(krate).join("tests");
        if tests.is_dir() {
            rust_files(&tests, &mut files);
        }
    }
    files.retain(|f| !f.ends_with("port_reservations.rs"));
    files
}

/// `(file, line)` of every :0 bind whose listener is not kept, and every `free_port` helper.
fn reservations(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for f in test_files(root) {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let binds_zero =
                line.contains("bind(\"127.0.0.1:0\")") || line.contains("bind((\"127.0.0.1\", 0))");
            let kept = line.trim_start().starts_with("let listener");
            if (binds_zero && !kept) || line.contains("fn free_port") {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

/// `(file, line)` of every place outside the harness (`procs/`) that names the node binary
/// (to start it itself) or a fixed loopback address other than 127.0.0.1.
fn outside_the_harness(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for f in test_files(root) {
        if f.components().any(|c| c.as_os_str() == "procs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let binary =
                line.contains("CARGO_BIN_EXE_kindex-node") || line.contains("node_binary(");
            let fixed_ip = line.split('"').skip(1).step_by(2).any(|s| {
                let parts: Vec<&str> = s.split(['.', ':']).collect();
                parts.len() >= 4
                    && parts[0] == "127"
                    && parts[1..4].iter().all(|p| p.parse::<u8>().is_ok())
                    && !s.starts_with("127.0.0.1")
            });
            if binary || fixed_ip {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn every_node_process_comes_from_the_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let found = outside_the_harness(root);
    assert!(
        found.is_empty(),
        "kindex-node started, or a loopback address chosen, outside node/tests/procs:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_harness_check_finds_a_node_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let tests = tmp.path().join("cli").join("tests");
    std::fs::create_dir_all(tests.join("procs")).unwrap();
    let own = "let c = Command::new(env!(\"CARGO_BIN_EXE_kindex-node\"));\n\
               let n = Command::new(node_binary()).args([\"--listen\", \"127.77.0.1\"]);\n";
    std::fs::write(tests.join("x.rs"), own).unwrap();
    assert_eq!(outside_the_harness(tmp.path()).len(), 2);
    // The harness itself, and 127.0.0.1 anywhere, are fine.
    std::fs::write(tests.join("procs").join("node.rs"), own).unwrap();
    std::fs::write(tests.join("x.rs"), "let a = \"127.0.0.1:7070\";\n").unwrap();
    assert!(outside_the_harness(tmp.path()).is_empty());
}

#[test]
fn no_test_reserves_a_port_by_binding_zero() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let found = reservations(root);
    assert!(found.is_empty(), "port reservations:\n{}", found.join("\n"));
}

#[test]
fn the_check_finds_a_reservation() {
    let tmp = tempfile::tempdir().unwrap();
    let tests = tmp.path().join("cli").join("tests");
    std::fs::create_dir_all(&tests).unwrap();
    std::fs::write(
        tests.join("x.rs"),
        "fn p() -> u16 {\n    let l = TcpListener::bind(\"127.0.0.1:0\").unwrap();\n}\n",
    )
    .unwrap();
    assert_eq!(reservations(tmp.path()).len(), 1);
    std::fs::write(
        tests.join("x.rs"),
        "let listener = TcpListener::bind(\"127.0.0.1:0\").unwrap();\n",
    )
    .unwrap();
    assert!(reservations(tmp.path()).is_empty());
}
