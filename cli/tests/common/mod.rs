//! Helpers shared by the CLI's integration tests: the real `kindex` and
//! `kindex-node` binaries, loopback addresses of their own, and .npy files written the way numpy
//! writes them.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const KINDEX: &str = env!("CARGO_BIN_EXE_kindex");

/// `kindex-node`, which `cargo test -p kindex` does not build: it must sit
/// next to the `kindex` binary (scripts/test.sh builds every binary first).
pub fn node_binary() -> PathBuf {
    let p =
        Path::new(KINDEX).with_file_name(format!("kindex-node{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build -p kindex-node` \
         (scripts/test.sh builds all binaries before running tests)",
        p.display()
    );
    p
}

#[path = "../../../node/tests/procs/loopback.rs"]
pub mod loopback;

/// A loopback address of this caller's own: servers there use their default ports (no port
/// reservations by binding :0, see `loopback`); nothing listens there until one starts.
pub fn own_ip() -> String {
    loopback::Block::next().ip(1)
}

/// Runs `kindex` with `args`, ignoring KINDEX_ADDR/KINDEX_INDEX of the caller.
pub fn kindex(args: &[&str]) -> Output {
    Command::new(KINDEX)
        .args(args)
        .env_remove("KINDEX_ADDR")
        .env_remove("KINDEX_INDEX")
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A 2-D little-endian float32 .npy, the way numpy writes it.
pub fn write_npy_dim(path: &Path, dim: usize, data: Vec<f32>, rows: usize) {
    let mut dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((dict.len() as u16).to_le_bytes());
    bytes.extend(dict.as_bytes());
    for x in data {
        bytes.extend(x.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}
