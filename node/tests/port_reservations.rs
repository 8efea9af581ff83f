#![allow(clippy::unwrap_used)]
//! No test reserves a port by binding :0 and dropping the listener: the port can be taken
//! before the server binds it (by the ephemeral port of an outgoing connection), a start-up
//! flake seen in the cluster tests. Servers in tests use a loopback address of their own with
//! the default ports (`procs::loopback`); binding :0 is fine only where the test keeps the
//! listener and serves on it (`let listener = …`).

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

/// `(file, line)` of every :0 bind whose listener is not kept, and every `free_port` helper.
fn reservations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for krate in ["node", "operator", "cli", "crds", "bench", "common"] {
        let tests = root.join(krate).join("tests");
        if tests.is_dir() {
            rust_files(&tests, &mut files);
        }
    }
    let mut found = Vec::new();
    for f in files {
        if f.ends_with("port_reservations.rs") {
            continue;
        }
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
