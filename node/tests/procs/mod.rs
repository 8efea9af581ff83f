//! The one harness for tests that run real `kindex-node` processes, shared by this crate's
//! tests and the CLI's (`#[path = "../../node/tests/procs/mod.rs"] mod procs;`):
//!
//! - [`Proc`]: one node process: its own loopback address with the default ports (see
//!   [`loopback`]; never ports reserved by binding :0), its data dir, a log file of its
//!   stdout and stderr, its command line; start, SIGTERM, SIGKILL, restart; killed on drop.
//! - [`Standalone`]: a node of its own (no peers), with extra arguments, environment, data
//!   dir and runtime config.
//! - [`Cluster`]: a sharded cluster on one loopback /24: `shards` Raft groups of `replicas`
//!   members each (static `--peers`, `--bootstrap` or the `Initialize` RPC), every node
//!   knowing the other shards through `--shard-addrs`, a fault file each
//!   (`Proc::set_faults`, see `node/src/raft/fault.rs`), log tails printed when a test fails.
//! - [`history`] records what clients did and checks every replica against it.
#![allow(dead_code)] // each test binary uses a different part

pub mod cluster;
pub mod history;
pub mod loopback;
pub mod node;

#[allow(unused_imports)] // each test binary uses a different part
pub use cluster::{Cluster, Opts};
#[allow(unused_imports)]
pub use node::{Proc, STOP_WAIT, Standalone};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(90);

/// The `kindex-node` binary. This crate's tests get it from cargo; the CLI's tests, for which
/// `cargo test -p kindex` does not build it, find it next to the `kindex` binary
/// (scripts/test.sh builds every binary first).
pub fn node_binary() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_kindex-node") {
        return PathBuf::from(p);
    }
    let Some(kindex) = option_env!("CARGO_BIN_EXE_kindex") else {
        panic!("neither kindex-node's nor the CLI's tests: where is kindex-node?");
    };
    let p =
        Path::new(kindex).with_file_name(format!("kindex-node{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build -p kindex-node` \
         (scripts/test.sh builds all binaries before running tests)",
        p.display()
    );
    p
}

/// One multi-process cluster at a time on this machine, across test binaries and processes
/// (nextest runs every test in a process of its own): an exclusive lock on a file in the temp
/// dir (an flock, so tests of one process exclude each other too).
pub async fn serial() -> std::fs::File {
    tokio::task::spawn_blocking(|| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("kindex-cluster-process.lock"))
            .unwrap();
        f.lock().unwrap();
        f
    })
    .await
    .unwrap()
}

/// Polls `f` until it returns Some, at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for`] for tests without a runtime: polls `f` every 50 ms, at most `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn with_timeout<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {limit:?}"));
}

fn http(addr: &str, request: String, read_timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"),
        Duration::from_secs(5),
    )
}

pub fn http_post(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http_post_as(addr, path, "application/json", body)
}

/// A request with extra header lines (`("Authorization", "Bearer k")`), a JSON body when
/// `body` is given.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or_default());
    http(addr, req, Duration::from_secs(30))
}

/// A POST with this `Content-Type` (e.g. what `curl -d` sends).
pub fn http_post_as(addr: &str, path: &str, ctype: &str, body: &str) -> Option<(u16, String)> {
    http(
        addr,
        format!(
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        Duration::from_secs(30),
    )
}
