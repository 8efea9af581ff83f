#![allow(clippy::unwrap_used)]
//! Runtime knobs change while a real `kindex-node` runs: rewriting its `--runtime-config`
//! file changes the log filter (`logLevel`) and the number of snapshots kept
//! (`snapshotKeep`) without a restart. Also: the default filter keeps openraft's INFO
//! lines out, and `--log-format json` writes one JSON object per line.
//!
//! Each node has a loopback address of its own from the `procs` harness (no bind-:0
//! reservations).

mod procs;

use std::time::Duration;

use procs::{Proc, Standalone, http_post};

const WAIT: Duration = Duration::from_secs(30);
const HTTP_PORT: u16 = 8080;

/// A standalone node with this runtime config, ready; its log filter the default one (no
/// `RUST_LOG`, no `KINDEX_LOG_FORMAT` from the caller).
fn spawn(runtime: &str, extra: &[&str]) -> Proc {
    let mut p = Standalone::new(4, "l2")
        .args(&["--grpc-port", "7070", "--raft-port", "7071"])
        .http_port(HTTP_PORT)
        .runtime_config(runtime)
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("KINDEX_LOG_FORMAT")
        .start();
    p.wait_http_ok("/readyz", WAIT);
    p
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    procs::poll(what, WAIT, || ok().then_some(()));
}

/// Complete snapshots on disk (the Raft snapshot store's `snap-*` dirs).
fn snapshots(p: &Proc) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p.dir.join("snapshots"))
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
fn write_and_snapshot(p: &Proc, i: u32) {
    let before = snapshots(p).last().cloned();
    let body = format!(r#"{{"points": [{{"id": "p{i}", "vector": [{i}, 0, 0, 1]}}]}}"#);
    let (code, resp) = http_post(&p.http, "/v1/indexes/default/points", &body).unwrap();
    assert_eq!(code, 200, "{resp}");
    wait_for("a new snapshot", || snapshots(p).last().cloned() != before);
}

/// Rewrites the runtime config and waits for the node to say it reloaded it.
fn set_runtime(p: &Proc, json: &str) {
    let seen = p.log_text().matches("runtime config reloaded").count();
    std::fs::write(p.runtime.as_ref().unwrap(), json).unwrap();
    wait_for("the runtime config reload", || {
        p.log_text().matches("runtime config reloaded").count() > seen
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
    let node = spawn(&runtime("info", 2), &[]);

    // The default filter: no debug lines, and openraft's INFO state dumps stay out.
    for i in 0..4 {
        write_and_snapshot(&node, i);
    }
    let text = node.log_text();
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
    let mark = node.log_text().len();
    for i in 4..9 {
        write_and_snapshot(&node, i);
    }
    wait_for("snapshotKeep=4 to hold", || snapshots(&node).len() == 4);
    let after = node.log_text()[mark..].to_owned();
    assert!(
        debug_lines(&after) > 0,
        "no debug line at logLevel=debug:\n{after}"
    );
    assert!(after.contains("removing old snapshot"), "{after}");

    // Back to info and a smaller snapshotKeep: debug lines stop, old snapshots go.
    set_runtime(&node, &runtime("info", 1));
    let mark = node.log_text().len();
    for i in 9..11 {
        write_and_snapshot(&node, i);
    }
    wait_for("snapshotKeep=1 to hold", || snapshots(&node).len() == 1);
    let after = node.log_text()[mark..].to_owned();
    assert_eq!(
        debug_lines(&after),
        0,
        "debug lines at logLevel=info:\n{after}"
    );
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let node = spawn(&runtime("info", 2), &["--log-format", "json"]);
    write_and_snapshot(&node, 1);
    let text = node.log_text();
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
