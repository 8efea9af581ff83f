#![allow(clippy::unwrap_used)]
//! API keys on the data plane (issue 18), on real `kindex-node` processes: gRPC and HTTP,
//! read-write and read-only keys, rotation without a restart, and calls between nodes
//! (a follower forwarding to its leader, a coordinator fanning out to another shard)
//! carrying the caller's key. See node/src/auth.

mod procs;

use std::path::Path;
use std::time::Duration;

use kindex_proto as pb;
use procs::{Cluster, Opts, Proc, STOP_WAIT, Standalone, http_get, http_with, wait_for};
use tonic::Code;

const RW: &str = "rw-key-0123456789abcdef";
const RO: &str = "ro-key-0123456789abcdef";
const NEW: &str = "rw-key-rotated-0123456789";

/// `msg` with `authorization: <value>` (None: no header).
fn req<T>(msg: T, authorization: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(v) = authorization {
        r.metadata_mut().insert("authorization", v.parse().unwrap());
    }
    r
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn points(prefix: &str, n: usize) -> Vec<pb::Point> {
    (0..n)
        .map(|i| pb::Point {
            id: format!("{prefix}{i}"),
            vector: vec![i as f32, 1.0, 2.0, 3.0],
            payload_json: None,
        })
        .collect()
}

fn upsert_req(prefix: &str, n: usize) -> pb::UpsertRequest {
    pb::UpsertRequest {
        index: String::new(),
        points: points(prefix, n),
    }
}

/// `rw` and `ro` key files in `dir`; returns the node arguments naming them.
fn key_files(dir: &Path, rw: &str, ro: &str) -> Vec<String> {
    std::fs::write(dir.join("rw-keys"), rw).unwrap();
    std::fs::write(dir.join("ro-keys"), ro).unwrap();
    vec![
        "--api-keys-file".into(),
        dir.join("rw-keys").to_str().unwrap().into(),
        "--read-only-api-keys-file".into(),
        dir.join("ro-keys").to_str().unwrap().into(),
    ]
}

fn start(dir: &Path, args: &[String]) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Standalone::new(4, "l2")
        .data_dir(dir.join("data"))
        .args(&args)
        .start();
    node.wait_http_ok("/readyz", Duration::from_secs(60));
    node
}

async fn upsert_code(node: &Proc, authorization: Option<&str>) -> Code {
    match node
        .points()
        .upsert(req(upsert_req("c", 1), authorization))
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_gate_grpc_and_http_and_leave_health_open() {
    let tmp = tempfile::tempdir().unwrap();
    let args = key_files(tmp.path(), &format!("# writers\n{RW}\n"), RO);
    // /readyz answered without a key (start waits for it).
    let node = start(tmp.path(), &args);
    let (rw, ro) = (bearer(RW), bearer(RO));
    let mut c = node.points();

    // gRPC: no key, a wrong key, a malformed value: UNAUTHENTICATED, nothing written.
    for bad in [None, Some("Bearer wrong-key-0123456789"), Some(RW)] {
        let err = c.upsert(req(upsert_req("x", 1), bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err}");
        let err = c
            .search(req(
                pb::SearchRequest {
                    vector: vec![0.0; 4],
                    k: 1,
                    ..Default::default()
                },
                bad,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err}");
    }
    // The header other nodes send grants nothing without a key.
    let mut internal = req(upsert_req("x", 1), None);
    internal
        .metadata_mut()
        .insert("kindex-shard-local", "0".parse().unwrap());
    let err = c.upsert(internal).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    // A read-only key reads but does not write.
    let err = c
        .upsert(req(upsert_req("x", 1), Some(&ro)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = c
        .delete(req(
            pb::DeleteRequest {
                index: String::new(),
                ids: vec!["p0".into()],
            },
            Some(&ro),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // The read-write key writes; both keys read.
    let w = c
        .upsert(req(upsert_req("p", 10), Some(&rw)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.affected, 10);
    for key in [&rw, &ro] {
        let n = c
            .count(req(pb::CountRequest::default(), Some(key)))
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(n, 10, "the refused writes wrote nothing");
        let hits = c
            .search(req(
                pb::SearchRequest {
                    vector: vec![3.0, 1.0, 2.0, 3.0],
                    k: 1,
                    ..Default::default()
                },
                Some(key),
            ))
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits[0].id, "p3");
        let got = c
            .get(req(
                pb::GetRequest {
                    ids: vec!["p1".into()],
                    ..Default::default()
                },
                Some(key),
            ))
            .await
            .unwrap()
            .into_inner()
            .points;
        assert_eq!(got.len(), 1);
        c.info(req(pb::InfoRequest::default(), Some(key)))
            .await
            .unwrap();
    }
    c.delete(req(
        pb::DeleteRequest {
            index: String::new(),
            ids: vec!["p0".into()],
        },
        Some(&rw),
    ))
    .await
    .unwrap();

    // HTTP: the same rules, 401 / 403.
    let upsert = r#"{"points": [{"id": "h", "vector": [1, 2, 3, 4]}]}"#;
    let path = "/v1/indexes/default/points";
    let auth = |v: &str| [("Authorization", v.to_string())];
    for headers in [vec![], auth("Bearer wrong-key-0123456789").to_vec()] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (code, body) = http_with(&node.http, "POST", path, &h, Some(upsert)).unwrap();
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("unauthenticated"), "{body}");
        let (code, _) =
            http_with(&node.http, "GET", "/v1/indexes/default/count", &h, None).unwrap();
        assert_eq!(code, 401);
    }
    let (code, body) = http_with(
        &node.http,
        "POST",
        path,
        &[("Authorization", &ro)],
        Some(upsert),
    )
    .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("permission_denied"), "{body}");
    // On a keep-alive connection a refusal says `Connection: close`: the refused body is not
    // read, and a pooled client must not send its next request on that connection.
    for key in ["Bearer wrong-key-0123456789", ro.as_str()] {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&node.http).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{upsert}",
            upsert.len()
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.contains("connection: close"), "{head}");
    }
    let (code, body) = http_with(
        &node.http,
        "POST",
        "/v1/indexes/default/points/delete",
        &[("Authorization", &ro)],
        Some(r#"{"ids": ["p1"]}"#),
    )
    .unwrap();
    assert_eq!(code, 403, "{body}");
    let (code, body) = http_with(
        &node.http,
        "POST",
        path,
        &[("Authorization", &rw)],
        Some(upsert),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_with(
        &node.http,
        "POST",
        "/v1/indexes/default/search",
        &[("Authorization", &ro)],
        Some(r#"{"vector": [1, 2, 3, 4], "k": 1}"#),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""id":"h""#), "{body}");
    let (code, body) = http_with(
        &node.http,
        "GET",
        "/v1/indexes/default/count",
        &[("Authorization", &ro)],
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");

    // Probes and scrapers hold no key.
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http_get(&node.http, open).unwrap().0, 200, "{open}");
    }
    // The Admin port is the internal one (not behind the client Service; mTLS later).
    assert!(node.status().await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let args = key_files(tmp.path(), RW, RO);
    let node = start(tmp.path(), &args);
    let pid = node.pid();
    let (old, new) = (bearer(RW), bearer(NEW));
    assert_eq!(upsert_code(&node, Some(&new)).await, Code::Unauthenticated);

    // The new key is added next to the old one: both work, within the reload period.
    std::fs::write(tmp.path().join("rw-keys"), format!("{RW}\n{NEW}\n")).unwrap();
    wait_for("the new key", Duration::from_secs(15), || async {
        (upsert_code(&node, Some(&new)).await == Code::Ok).then_some(())
    })
    .await;
    assert_eq!(upsert_code(&node, Some(&old)).await, Code::Ok);

    // The old key is removed: refused; the new one stays.
    std::fs::write(tmp.path().join("rw-keys"), format!("{NEW}\n")).unwrap();
    wait_for("the old key refused", Duration::from_secs(15), || async {
        (upsert_code(&node, Some(&old)).await == Code::Unauthenticated).then_some(())
    })
    .await;
    assert_eq!(upsert_code(&node, Some(&new)).await, Code::Ok);

    // A key file that turns bad (a Secret being rewritten) keeps the keys in force.
    std::fs::write(tmp.path().join("rw-keys"), "short\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(upsert_code(&node, Some(&new)).await, Code::Ok);
    assert_eq!(node.pid(), pid, "no restart");
}

#[test]
fn a_node_told_to_require_keys_does_not_start_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("absent");
    let mut node = Standalone::new(4, "l2")
        .data_dir(tmp.path().join("data"))
        .args(&["--api-keys-file", missing.to_str().unwrap()])
        .start();
    let status = node.wait_exit(STOP_WAIT);
    assert!(!status.success());
    let log = node.log_text();
    assert!(
        log.contains("reading API keys from") && log.contains("absent"),
        "{log}"
    );
}

/// Two shards of two replicas, every node requiring keys: a write sent to a follower is
/// forwarded to its leader (its own shard's points) and fanned out to the other shard,
/// each hop checking the caller's key. A hop that dropped the key would be refused
/// `UNAUTHENTICATED` by the next node.
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_and_fanned_out_calls_carry_the_callers_key() {
    let _serial = procs::serial().await;
    let keys = tempfile::tempdir().unwrap();
    let opts = Opts {
        extra_args: key_files(keys.path(), RW, RO),
        ..Opts::default()
    };
    let c = Cluster::start_with(2, 2, 4, opts);
    let leaders = c.wait_leaders().await;
    let follower0 = 1 - leaders[0];
    let follower1 = 1 - leaders[1];
    let (rw, ro) = (bearer(RW), bearer(RO));

    // 40 ids hash to both shards; sent to a follower of shard 0.
    let w = c
        .node(0, follower0)
        .points()
        .upsert(req(upsert_req("k", 40), Some(&rw)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.affected, 40);
    let mut shards: Vec<u32> = w.token.unwrap().shards.iter().map(|s| s.shard).collect();
    shards.sort();
    assert_eq!(shards, [0, 1], "the write touched both shards");

    // A read fanned out from a follower of shard 1, with the read-only key.
    let n = c
        .node(1, follower1)
        .points()
        .count(req(pb::CountRequest::default(), Some(&ro)))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 40);
    // Leader reads forwarded by a follower (the default consistency reads the leader).
    let got = c
        .node(1, follower1)
        .points()
        .get(req(
            pb::GetRequest {
                ids: (0..40).map(|i| format!("k{i}")).collect(),
                ..Default::default()
            },
            Some(&ro),
        ))
        .await
        .unwrap()
        .into_inner()
        .points;
    assert_eq!(got.len(), 40);

    // The read-only key writes nowhere, whichever node it reaches.
    let err = c
        .node(0, follower0)
        .points()
        .upsert(req(upsert_req("r", 10), Some(&ro)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // HTTP through a follower: forwarded and fanned out the same way.
    let (code, body) = http_with(
        &c.node(1, follower1).http,
        "POST",
        "/v1/indexes/default/points/delete",
        &[("Authorization", &rw)],
        Some(&format!(
            r#"{{"ids": [{}]}}"#,
            (0..40)
                .map(|i| format!("\"k{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        )),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""affected":40"#), "{body}");

    // What a forwarding node sends, without a key: refused by the leader.
    let mut forged = req(upsert_req("f", 1), None);
    forged
        .metadata_mut()
        .insert("kindex-forwarded", "9".parse().unwrap());
    let err = c
        .node(0, leaders[0])
        .points()
        .upsert(forged)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
}

/// `--metrics-require-key`: `/metrics` answers 401 without a key and 200 with a read-only
/// one; the probes stay open. Without keys the flag is refused at start.
#[test]
fn metrics_can_require_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = key_files(tmp.path(), RW, RO);
    args.push("--metrics-require-key".into());
    let node = start(tmp.path(), &args);
    assert_eq!(http_get(&node.http, "/metrics").unwrap().0, 401);
    let ro = bearer(RO);
    let (code, body) = http_with(
        &node.http,
        "GET",
        "/metrics",
        &[("Authorization", &ro)],
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("kindex_vectors"), "{body}");
    for open in ["/healthz", "/readyz"] {
        assert_eq!(http_get(&node.http, open).unwrap().0, 200, "{open}");
    }

    let mut alone = Standalone::new(4, "l2")
        .data_dir(tmp.path().join("data2"))
        .args(&["--metrics-require-key"])
        .start();
    assert!(!alone.wait_exit(STOP_WAIT).success());
    assert!(
        alone
            .log_text()
            .contains("--metrics-require-key needs API keys")
    );
}
