//! End to end: the real `kindex-node` binary on loopback, driven by the real
//! `kindex` binary, then `kindex inspect --verify` on the data it left.
//!
//! The node binary is not built by `cargo test -p kindex` itself; it must sit
//! next to the `kindex` binary (scripts/test.sh builds every binary first).

// Test code: clippy.toml allows unwrap in #[test] fns; the helpers here are
// test code too.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../node/tests/procs/mod.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{kindex, text, write_npy_dim};
use procs::{Proc, Standalone};
use serde_json::Value;

/// A running node on `data` (the `procs` harness: killed with SIGKILL when dropped, so a
/// failing test leaves no process behind).
fn start_node(data: &Path) -> Proc {
    // A node that exits at start is tried again (up to three times).
    for _ in 0..3 {
        let mut proc = Standalone::new(4, "l2")
            .data_dir(data)
            .env("RUST_LOG", "warn")
            .start();
        let addr = proc.grpc_addr();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if proc.exited().is_some() {
                break;
            }
            if kindex(&["--addr", &addr, "info"]).status.success() {
                return proc;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        proc.kill();
        eprintln!("node did not come up:\n{}", proc.log_text());
    }
    panic!("could not start kindex-node; see the log above");
}

/// Runs a command that must succeed with `--output json` and parses stdout.
fn json(addr: &str, args: &[&str]) -> Value {
    let mut all = vec!["--addr", addr];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    let o = kindex(&all);
    assert!(o.status.success(), "kindex {all:?} failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o)))
}

/// A 2-D little-endian float32 .npy, the way numpy writes it.
fn write_npy(path: &Path, rows: &[[f32; 4]]) {
    write_npy_dim(
        path,
        4,
        rows.iter().flatten().copied().collect(),
        rows.len(),
    );
}

#[test]
fn load_search_snapshot_and_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = start_node(&data);
    let addr = node.grpc_addr();

    // 200 rows: row i is [i, i/2, 1, -i], id "v<i>".
    let npy = tmp.path().join("vectors.npy");
    let rows: Vec<[f32; 4]> = (0..200)
        .map(|i| [i as f32, i as f32 / 2.0, 1.0, -(i as f32)])
        .collect();
    write_npy(&npy, &rows);
    let npy_s = npy.to_str().unwrap();

    let up = json(
        &addr,
        &[
            "upsert",
            "--file",
            npy_s,
            "--batch",
            "64",
            "--id-prefix",
            "v",
        ],
    );
    assert_eq!(up["rows"], 200, "{up}");
    assert_eq!(up["endRow"], 200, "{up}");
    assert!(up["vectorsPerSecond"].as_f64().unwrap() > 0.0, "{up}");

    // JSON Lines with payloads, then a filtered search.
    let jsonl = tmp.path().join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": \"en-1\", \"vector\": [10, 5, 1, -10], \"payload\": {\"lang\": \"en\"}}\n\
         {\"id\": \"de-1\", \"vector\": [10, 5, 1, -10], \"payload\": {\"lang\": \"de\"}}\n",
    )
    .unwrap();
    assert_eq!(
        json(&addr, &["upsert", "--file", jsonl.to_str().unwrap()])["rows"],
        2
    );
    let filtered = json(
        &addr,
        &[
            "search",
            "--vector",
            "[10, 5, 1, -10]",
            "-k",
            "5",
            "--with-payload",
            "--filter",
            r#"{"must":[{"field":"lang","match":"en"}]}"#,
        ],
    );
    let hits = filtered["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{filtered}");
    assert_eq!(hits[0]["id"], "en-1");
    assert_eq!(hits[0]["payload"]["lang"], "en");

    let s = json(&addr, &["search", "--vector", "[10, 5, 1, -10]", "-k", "3"]);
    let ids: Vec<&str> = s["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"v10"), "{s}");
    assert_eq!(s["hits"][0]["distance"], 0.0, "{s}");
    let s = json(
        &addr,
        &["search", "--vector-file", npy_s, "--row", "7", "-k", "1"],
    );
    assert_eq!(s["hits"][0]["id"], "v7", "{s}");

    // `--rescore` reaches the node: accepted (and ignored, this index has no quantization)
    // in range, refused with the node's message outside it.
    let s = json(
        &addr,
        &[
            "search",
            "--vector",
            "[10, 5, 1, -10]",
            "-k",
            "1",
            "--rescore",
            "5",
        ],
    );
    assert_eq!(s["hits"][0]["id"], "v10", "{s}");
    let o = kindex(&[
        "--addr",
        &addr,
        "search",
        "--vector",
        "[10, 5, 1, -10]",
        "--rescore",
        "0",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("rescore must be in 1..=100, got 0"),
        "{}",
        text(&o)
    );

    assert_eq!(json(&addr, &["count"])["count"], 202);

    // Resume after a complete load re-sends only the last batch.
    let resumed = json(
        &addr,
        &[
            "upsert",
            "--file",
            npy_s,
            "--batch",
            "64",
            "--id-prefix",
            "v",
            "--resume",
        ],
    );
    assert_eq!(resumed["startRow"], 192, "{resumed}");
    assert_eq!(resumed["rows"], 8, "{resumed}");

    // A file of another dimension is refused before anything is sent.
    let wrong = tmp.path().join("wrong.npy");
    write_npy_dim(&wrong, 3, vec![1.0; 6], 2);
    let o = kindex(&["--addr", &addr, "upsert", "--file", wrong.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("dimension 3"), "{}", text(&o));

    let got = json(&addr, &["get", "v1", "--with-vectors"]);
    assert_eq!(
        got["points"][0]["vector"],
        serde_json::json!([1.0, 0.5, 1.0, -1.0])
    );
    let o = kindex(&["--addr", &addr, "get", "v1", "nope"]);
    assert!(!o.status.success(), "a missing id fails: {}", text(&o));
    assert!(text(&o).contains("not found: nope"), "{}", text(&o));

    assert_eq!(json(&addr, &["delete", "v0"])["affected"], 1);
    assert_eq!(json(&addr, &["count"])["count"], 201);

    let st = json(&addr, &["status"]);
    let node_status = &st["nodes"][0]["status"];
    assert_eq!(node_status["vectorsLive"], 201, "{st}");
    assert_eq!(node_status["role"], "leader", "{st}");
    let o = kindex(&["--addr", &addr, "status"]);
    assert!(
        o.status.success() && text(&o).contains("LIVE"),
        "{}",
        text(&o)
    );

    let snap = json(&addr, &["snapshot"]);
    let snap = &snap["snapshots"][0];
    assert!(snap["bytes"].as_u64().unwrap() > 0, "{snap}");
    let snap_path = PathBuf::from(snap["path"].as_str().unwrap());
    assert!(snap_path.is_dir(), "{snap}");
    let log_index = snap["logId"]["index"].clone();

    // Offline: stop the node, then inspect what it left.
    drop(node);
    let report = json(&addr, &["inspect", data.to_str().unwrap(), "--verify"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["structural"]["config"]["dimension"], 4, "{report}");
    let newest = &report["snapshots"][0];
    assert_eq!(newest["valid"], true, "{report}");
    assert_eq!(newest["verify"]["ok"], true, "{report}");
    assert_eq!(newest["counts"]["live"], 201, "{report}");
    // At least the deleted v0 (re-sent rows may also leave replaced slots).
    assert!(
        newest["counts"]["tombstoned"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(newest["applied"]["index"], log_index, "{report}");
    assert_eq!(newest["structural"]["metric"], "l2", "{report}");
    assert!(
        newest["savedAt"].as_str().unwrap().ends_with('Z'),
        "{report}"
    );
    let o = kindex(&["inspect", data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("newest snapshot is valid"),
        "{}",
        text(&o)
    );

    // Flip a byte of the newest snapshot's vectors: only --verify notices,
    // and then the exit code says so.
    let vectors = snap_path.join("vectors.sect");
    let mut bytes = std::fs::read(&vectors).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&vectors, bytes).unwrap();
    let o = kindex(&["inspect", data.to_str().unwrap(), "--verify"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("INVALID"), "{}", text(&o));
}

#[test]
fn kubectl_plugin_help_explains_kubeconfig_discovery() {
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-kindex"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("kubectl kindex"), "{help}");
    assert!(help.contains("reads your kubeconfig"), "{help}");
    assert!(help.contains("--namespace"), "{help}");
}

/// `kubectl kindex` with the given kubeconfig environment (no in-cluster
/// service account, no ~/.kube/config).
fn plugin(home: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-kindex"));
    c.args(args)
        .env("HOME", home)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("KINDEX_ADDR")
        .env_remove("KINDEX_INDEX");
    match kubeconfig {
        Some(k) => c.env("KUBECONFIG", k),
        None => c.env_remove("KUBECONFIG"),
    };
    c.output().unwrap()
}

#[test]
fn kubectl_plugin_without_kubeconfig_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = plugin(tmp.path(), None, &["count"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("no usable kubeconfig") && t.contains("--addr"),
        "{t}"
    );

    // A kubeconfig whose API server does not answer: named, not a hang.
    let nobody = format!("{}:7070", procs::loopback::Block::next().ip(1));
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: 'http://{nobody}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u, namespace: prod}}}}]\n"
        ),
    )
    .unwrap();
    let o = plugin(tmp.path(), Some(&kc), &["--index", "demo", "count"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("cannot reach the Kubernetes API server") && t.contains(&nobody),
        "{t}"
    );
    // An unknown context is a kubeconfig error too.
    let o = plugin(tmp.path(), Some(&kc), &["--context", "nope", "count"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no usable kubeconfig"), "{}", text(&o));
    // --addr skips discovery entirely.
    let o = plugin(
        tmp.path(),
        Some(&kc),
        &["--addr", &nobody, "--timeout", "5", "count"],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains(&format!("Count on http://{nobody}")) && t.contains("unavailable"),
        "{t}"
    );
}

#[test]
fn unreachable_node_is_a_clear_error() {
    let nobody = format!("{}:7070", procs::loopback::Block::next().ip(1));
    let o = kindex(&["--addr", &nobody, "--timeout", "5", "count"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("unavailable") && t.contains("port-forward"),
        "{t}"
    );
}

/// A node that requires API keys: `--api-key` and `KINDEX_API_KEY` reach it, a missing key
/// is refused with a hint, a read-only key cannot write, and `status` (the admin port)
/// needs none.
#[test]
fn api_key_flag_and_env_reach_a_node_that_requires_keys() {
    const RW: &str = "cli-rw-key-0123456789";
    const RO: &str = "cli-ro-key-0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let (rw, ro) = (tmp.path().join("rw"), tmp.path().join("ro"));
    std::fs::write(&rw, RW).unwrap();
    std::fs::write(&ro, RO).unwrap();
    let mut node = Standalone::new(4, "l2")
        .data_dir(tmp.path().join("data"))
        .args(&[
            "--api-keys-file",
            rw.to_str().unwrap(),
            "--read-only-api-keys-file",
            ro.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .start();
    node.wait_http_ok("/readyz", Duration::from_secs(60));
    let addr = node.grpc_addr();
    let jsonl = tmp.path().join("p.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": \"a\", \"vector\": [1, 2, 3, 4]}\n{\"id\": \"b\", \"vector\": [4, 3, 2, 1]}\n",
    )
    .unwrap();
    let upsert = ["--addr", &addr, "upsert", "--file", jsonl.to_str().unwrap()];

    let o = kindex(&["--addr", &addr, "count"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("unauthenticated") && text(&o).contains("--api-key"),
        "{}",
        text(&o)
    );

    let mut args = vec!["--api-key", RW];
    args.extend_from_slice(&upsert);
    let o = kindex(&args);
    assert!(o.status.success(), "{}", text(&o));

    let with_env = |key: &str, args: &[&str]| {
        Command::new(common::KINDEX)
            .args(args)
            .env_remove("KINDEX_ADDR")
            .env_remove("KINDEX_INDEX")
            .env("KINDEX_API_KEY", key)
            .output()
            .unwrap()
    };
    let o = with_env(RO, &["--addr", &addr, "count", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let count: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(count["count"], 2, "{count}");
    let o = with_env(RO, &upsert);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("permission denied"), "{}", text(&o));

    let o = kindex(&["--addr", &addr, "status"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// `kindex policy`: set a quota, see a write over it refused naming the policy, list,
/// history, delete and restore, all against a real node.
#[test]
fn policy_commands_set_list_delete_restore_and_the_quota_refuses_the_cli_upsert() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(&tmp.path().join("data"));
    let addr = node.grpc_addr();
    let set = json(
        &addr,
        &[
            "policy",
            "set",
            "cap",
            "--json",
            r#"{"kind":"quota","maxVectors":3}"#,
            "--actor",
            "ops",
        ],
    );
    assert_eq!(set["changes"][0]["version"], 1, "{set}");

    let jsonl = tmp.path().join("points.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"id": "p{i}", "vector": [{i}, 0, 0, 1]}}"#))
        .collect();
    std::fs::write(&jsonl, lines[..3].join("\n")).unwrap();
    json(&addr, &["upsert", "--file", jsonl.to_str().unwrap()]);
    std::fs::write(&jsonl, lines[3..].join("\n")).unwrap();
    let o = kindex(&["--addr", &addr, "upsert", "--file", jsonl.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success() && !out.contains("retrying"), "{out}");
    assert!(
        out.contains(r#"quota policy "cap""#) && out.contains("at most 3"),
        "{out}"
    );

    let list = json(&addr, &["policy", "list"]);
    let h = &list["nodes"][0]["store"]["policies"]["cap"];
    assert_eq!(h["latest"], 1, "{list}");
    // The refused write never reached the log (the leader's pre-check): the replicated
    // counters saw only the allowed one.
    assert_eq!(h["counters"]["allowed"], 1, "{list}");
    let table = kindex(&["--addr", &addr, "policy", "list"]);
    assert!(
        text(&table).contains(r#"{"kind":"quota","maxVectors":3}"#),
        "{}",
        text(&table)
    );

    json(&addr, &["policy", "delete", "cap"]);
    let restored = json(&addr, &["policy", "restore", "cap", "1"]);
    assert_eq!(restored["changes"][0]["version"], 3, "{restored}");
    let stale = kindex(&[
        "--addr",
        &addr,
        "policy",
        "set",
        "cap",
        "--json",
        r#"{"kind":"quota","maxVectors":9}"#,
        "--expected-version",
        "2",
    ]);
    assert!(
        !stale.status.success() && text(&stale).contains("expected version 2"),
        "{}",
        text(&stale)
    );
    let history = json(&addr, &["policy", "history", "cap"]);
    let versions = history["nodes"][0]["store"]["policies"]["cap"]["versions"]
        .as_array()
        .unwrap()
        .clone();
    let ops: Vec<&str> = versions.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["put", "delete", "restore"], "{history}");
    assert_eq!(versions[0]["actor"], "ops");
    let table = kindex(&["--addr", &addr, "policy", "history", "cap"]);
    assert!(text(&table).contains("(deleted)"), "{}", text(&table));
    let missing = kindex(&["--addr", &addr, "policy", "get", "nope"]);
    assert!(
        !missing.status.success() && text(&missing).contains("no policy \"nope\""),
        "{}",
        text(&missing)
    );
    drop(node);
}

/// `kindex status` against a node with peer mTLS: its admin port refuses a CLI without a
/// certificate and answers one given `--peer-tls-dir` (a certificate of the node's CA);
/// the data port is unchanged.
#[test]
fn status_reaches_a_peer_mtls_node_with_peer_tls_dir() {
    use kindex_node::tls::issue::{Ca, Validity, write_dir};
    const NAME: &str = "peers.kindex.test";
    let tmp = tempfile::tempdir().unwrap();
    let validity = Validity::from_now(Duration::from_secs(3600));
    let ca = Ca::generate("cli test CA", validity).unwrap();
    let names = vec![NAME.to_string()];
    let (node_tls, cli_tls) = (tmp.path().join("node-tls"), tmp.path().join("cli-tls"));
    write_dir(
        &node_tls,
        &ca.issue(&names, validity).unwrap(),
        ca.cert_pem(),
    )
    .unwrap();
    write_dir(
        &cli_tls,
        &ca.issue(&names, validity).unwrap(),
        ca.cert_pem(),
    )
    .unwrap();
    let mut node = Standalone::new(4, "l2")
        .data_dir(tmp.path().join("data"))
        .args(&[
            "--peer-tls-dir",
            node_tls.to_str().unwrap(),
            "--peer-tls-server-name",
            NAME,
        ])
        .env("RUST_LOG", "warn")
        .start();
    node.wait_http_ok("/readyz", Duration::from_secs(60));
    let addr = node.grpc_addr();
    let o = kindex(&["--addr", &addr, "count"]);
    assert!(o.status.success(), "{}", text(&o));

    let o = kindex(&["--addr", &addr, "status", "-o", "json", "--timeout", "5"]);
    let without = text(&o);
    let o = kindex(&[
        "--addr",
        &addr,
        "--peer-tls-dir",
        cli_tls.to_str().unwrap(),
        "--peer-tls-server-name",
        NAME,
        "status",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    println!("without: {without}\nwith: {status}");
    assert!(status.to_string().contains("leader"), "{status}");
    assert!(
        !without.contains("\"leader\"") && without.contains("--peer-tls-dir"),
        "{without}"
    );
}

/// `--ca-cert`: data-plane calls over TLS to a node with `--client-tls-dir`, with an
/// `https://` or a bare `host:port` --addr; the hints when TLS and plaintext are mixed up.
#[test]
fn data_plane_over_client_tls_with_ca_cert() {
    use kindex_node::tls::issue::{Ca, Validity};
    let tmp = tempfile::tempdir().unwrap();
    let validity = Validity::from_now(Duration::from_secs(3600));
    let ca = Ca::generate("cli client CA", validity).unwrap();
    let tls_dir = tmp.path().join("client-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let write_pair = |names: &[String]| {
        let c = ca.issue(names, validity).unwrap();
        for (name, text) in [("tls.key", &c.key_pem), ("tls.crt", &c.cert_pem)] {
            let t = tls_dir.join(format!(".{name}.tmp"));
            std::fs::write(&t, text).unwrap();
            std::fs::rename(&t, tls_dir.join(name)).unwrap();
        }
    };
    // The node's loopback address is known once it starts: a certificate for another name
    // first, then one for its address (reloaded within 2 s).
    write_pair(&["placeholder.invalid".to_string()]);
    let ca_pem = tmp.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    let ca_pem = ca_pem.to_str().unwrap();
    let node = Standalone::new(4, "l2")
        .data_dir(tmp.path().join("data"))
        .args(&["--client-tls-dir", tls_dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .start();
    write_pair(std::slice::from_ref(&node.ip));
    let https = format!("https://{}", node.grpc_addr());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = kindex(&["--addr", &https, "--ca-cert", ca_pem, "count"]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            text(&o),
            node.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let jsonl = tmp.path().join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": \"tls-1\", \"vector\": [10, 5, 1, -10]}\n{\"id\": \"tls-2\", \"vector\": [0, 0, 1, 1]}\n",
    )
    .unwrap();
    let o = kindex(&[
        "--addr",
        &https,
        "--ca-cert",
        ca_pem,
        "upsert",
        "--file",
        jsonl.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // A bare host:port with --ca-cert is TLS too; KINDEX_CA_CERT works like the flag.
    let o = Command::new(common::KINDEX)
        .args([
            "--addr",
            &node.grpc_addr(),
            "search",
            "--vector",
            "[10, 5, 1, -10]",
            "-k",
            "1",
            "-o",
            "json",
        ])
        .env("KINDEX_CA_CERT", ca_pem)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["hits"][0]["id"], "tls-1", "{s}");

    // Plaintext to the TLS port: refused, with a hint naming --ca-cert.
    let o = kindex(&["--addr", &node.grpc_addr(), "count", "--timeout", "5"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--ca-cert"), "{}", text(&o));
    // https:// without --ca-cert: said before dialling.
    let o = kindex(&["--addr", &https, "count"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("needs --ca-cert"), "{}", text(&o));
    // TLS to a plaintext port (the admin port has no TLS here): the hint says so.
    let o = kindex(&[
        "--addr",
        &node.admin_addr(),
        "--ca-cert",
        ca_pem,
        "count",
        "--timeout",
        "5",
    ]);
    assert!(!o.status.success());
    println!("TLS to a plaintext port: {}", text(&o));
    assert!(text(&o).contains("does not serve TLS"), "{}", text(&o));
}
