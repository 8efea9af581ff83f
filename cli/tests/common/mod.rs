//! Helpers shared by the CLI's integration tests: the real `kindex` binary and .npy files
//! written the way numpy writes them. `kindex-node` processes come from the node's test harness
//! (`node/tests/procs`, included as `mod procs`).
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset

use std::path::Path;
use std::process::{Command, Output};

pub const KINDEX: &str = env!("CARGO_BIN_EXE_kindex");

/// Runs `kindex` with `args`, ignoring the caller's KINDEX_ADDR, KINDEX_INDEX, KINDEX_ADMIN_ADDR
/// KINDEX_API_KEY and KINDEX_CA_CERT.
pub fn kindex(args: &[&str]) -> Output {
    Command::new(KINDEX)
        .args(args)
        .env_remove("KINDEX_ADDR")
        .env_remove("KINDEX_INDEX")
        .env_remove("KINDEX_ADMIN_ADDR")
        .env_remove("KINDEX_API_KEY")
        .env_remove("KINDEX_CA_CERT")
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
