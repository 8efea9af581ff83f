#![allow(clippy::unwrap_used)]
//! Runtime knobs change while a real `kindex-node` runs: rewriting its `--runtime-config`
//! file changes the log filter (`logLevel`) and the number of snapshots kept
//! (`snapshotKeep`) without a restart. Also: the default filter keeps openraft's INFO
//! lines out, and `--log-format json` writes one JSON object per line.
//!
//! Each test has its own loopback address with fixed ports (no bind-:0 reservations).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const HTTP_PORT: u16 = 8080;

struct NodeProc {
    child: Child,
    ip: &'static str,
    data: PathBuf,
    log: PathBuf,
    runtime: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(tmp: &Path, ip: &'static str, runtime: &str, extra: &[&str]) -> NodeProc {
    let data = tmp.join("data");
    let log = tmp.join("node.log");
    let runtime_path = tmp.join("runtime.json");
    std::fs::write(&runtime_path, runtime).unwrap();
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kindex-node"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--dimension", "4", "--metric", "l2", "--listen", ip])
        .args(["--grpc-port", "7070", "--raft-port", "7071"])
        .args(["--http-port", &HTTP_PORT.to_string()])
        .args(["--runtime-config", runtime_path.to_str().unwrap()])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("KINDEX_LOG_FORMAT")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    let p = NodeProc {
        child,
        ip,
        data,
        log,
        runtime: runtime_path,
    };
    wait_for("the node to be ready", || {
        matches!(http(&p, "GET", "/readyz", ""), Some((200, _)))
    });
    p
}

fn http(p: &NodeProc, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((p.ip, HTTP_PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().into(),
    ))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn log_text(p: &NodeProc) -> String {
    std::fs::read_to_string(&p.log).unwrap()
}

/// Complete snapshots on disk (the Raft snapshot store's `snap-*` dirs).
fn snapshots(p: &NodeProc) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p.data.join("snapshots"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("snap-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Writes one point and waits for the snapshot that follows it (the runtime config
/// asks for a snapshot after every applied entry).
fn write_and_snapshot(p: &NodeProc, i: u32) {
    let before = snapshots(p).last().cloned();
    let body = format!(r#"{{"points": [{{"id": "p{i}", "vector": [{i}, 0, 0, 1]}}]}}"#);
    let (code, resp) = http(p, "POST", "/v1/indexes/default/points", &body).unwrap();
    assert_eq!(code, 200, "{resp}");
    wait_for("a new snapshot", || snapshots(p).last().cloned() != before);
}

/// Rewrites the runtime config and waits for the node to say it reloaded it.
fn set_runtime(p: &NodeProc, json: &str) {
    let seen = log_text(p).matches("runtime config reloaded").count();
    std::fs::write(&p.runtime, json).unwrap();
    wait_for("the runtime config reload", || {
        log_text(p).matches("runtime config reloaded").count() > seen
    });
}

fn runtime(log_level: &str, keep: u32) -> String {
    format!(
        r#"{{"logLevel": "{log_level}", "snapshotKeep": {keep}, "snapshotIntervalSecs": 1, "snapshotLogEntries": 1}}"#
    )
}

fn debug_lines(text: &str) -> usize {
    text.lines().filter(|l| l.contains(" DEBUG ")).count()
}

#[test]
fn log_level_and_snapshot_keep_change_live() {
    let tmp = tempfile::tempdir().unwrap();
    let node = spawn(tmp.path(), "127.77.0.1", &runtime("info", 2), &[]);

    // The default filter: no debug lines, and openraft's INFO state dumps stay out.
    for i in 0..4 {
        write_and_snapshot(&node, i);
    }
    let text = log_text(&node);
    assert_eq!(debug_lines(&text), 0, "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("openraft")),
        "openraft INFO lines at the default filter:\n{text}"
    );
    wait_for("snapshotKeep=2 to hold", || snapshots(&node).len() == 2);

    // logLevel=debug: our debug lines appear (e.g. "removing old snapshot"); a larger
    // snapshotKeep lets snapshots accumulate.
    set_runtime(&node, &runtime("debug", 4));
    let mark = log_text(&node).len();
    for i in 4..9 {
        write_and_snapshot(&node, i);
    }
    wait_for("snapshotKeep=4 to hold", || snapshots(&node).len() == 4);
    let after = log_text(&node)[mark..].to_owned();
    assert!(
        debug_lines(&after) > 0,
        "no debug line at logLevel=debug:\n{after}"
    );
    assert!(after.contains("removing old snapshot"), "{after}");

    // Back to info and a smaller snapshotKeep: debug lines stop, old snapshots go.
    set_runtime(&node, &runtime("info", 1));
    let mark = log_text(&node).len();
    for i in 9..11 {
        write_and_snapshot(&node, i);
    }
    wait_for("snapshotKeep=1 to hold", || snapshots(&node).len() == 1);
    let after = log_text(&node)[mark..].to_owned();
    assert_eq!(
        debug_lines(&after),
        0,
        "debug lines at logLevel=info:\n{after}"
    );
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let node = spawn(
        tmp.path(),
        "127.77.0.2",
        &runtime("info", 2),
        &["--log-format", "json"],
    );
    write_and_snapshot(&node, 1);
    let text = log_text(&node);
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 0, "no log line");
}
