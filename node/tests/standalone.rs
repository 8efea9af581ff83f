#![allow(clippy::unwrap_used)]
//! The real `kindex-node` binary in standalone mode: health, gRPC, HTTP,
//! graceful shutdown with snapshot, restart from the same data dir, and a
//! clear refusal on structural drift.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kindex_proto as pb;

#[path = "procs/loopback.rs"]
mod loopback;

struct NodeProc {
    child: Child,
    /// `ip:port` of the gRPC server.
    grpc: String,
    /// `ip:port` of the HTTP server.
    http: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, extra: &[&str]) -> NodeProc {
    // An own loopback address with the default ports (see `loopback`).
    let ip = loopback::Block::next().ip(1);
    let (grpc, http) = (format!("{ip}:7070"), format!("{ip}:7080"));
    let child = Command::new(env!("CARGO_BIN_EXE_kindex-node"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--dimension",
            "4",
            "--metric",
            "l2",
        ])
        .args(["--listen", &ip])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    NodeProc { child, grpc, http }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

/// A POST the way `curl -d` sends it: no JSON content type.
fn http_post(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

fn wait_healthy(p: &NodeProc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(&p.http, "/healthz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("node did not become healthy");
}

async fn client(p: &NodeProc) -> pb::points_client::PointsClient<tonic::transport::Channel> {
    pb::points_client::PointsClient::connect(format!("http://{}", p.grpc))
        .await
        .unwrap()
}

fn sigterm(p: &mut NodeProc) -> std::process::ExitStatus {
    let pid = p.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_restarts_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn(dir.path(), &[]);
    wait_healthy(&node);
    assert_eq!(http_get(&node.http, "/readyz").unwrap().0, 200);
    let mut c = client(&node).await;
    let points: Vec<pb::Point> = (0..500)
        .map(|i| pb::Point {
            id: format!("p{i}"),
            vector: vec![i as f32, 1.0, 2.0, 3.0],
            payload_json: Some(format!(r#"{{"i": {i}}}"#)),
        })
        .collect();
    let w = c
        .upsert(pb::UpsertRequest {
            index: String::new(),
            points,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.affected, 500);
    let hits = c
        .search(pb::SearchRequest {
            vector: vec![42.0, 1.0, 2.0, 3.0],
            k: 3,
            with_payload: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].id, "p42");
    assert_eq!(hits[0].payload_json.as_deref(), Some(r#"{"i":42}"#));
    // Bad input is rejected precisely.
    let err = c
        .upsert(pb::UpsertRequest {
            index: String::new(),
            points: vec![pb::Point {
                id: "x".into(),
                vector: vec![1.0],
                payload_json: None,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("has 1 dimensions; the index has 4"),
        "{}",
        err.message()
    );
    let err = c
        .count(pb::CountRequest {
            index: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The REST mirror takes JSON whatever the Content-Type (curl -d).
    let (code, body) = http_post(
        &node.http,
        "/v1/indexes/default/points",
        r#"{"points": [{"id": "rest", "vector": [9, 9, 9, 9], "payload": {"via": "http"}}]}"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_post(
        &node.http,
        "/v1/indexes/default/search",
        r#"{"vector": [9, 9, 9, 9], "k": 1}"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""id":"rest""#), "{body}");
    let (code, body) = http_post(
        &node.http,
        "/v1/indexes/default/search",
        r#"{"vector": [9, 9"#,
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed request body"), "{body}");
    c.delete(pb::DeleteRequest {
        index: String::new(),
        ids: vec!["rest".into()],
    })
    .await
    .unwrap();
    let metrics = http_get(&node.http, "/metrics").unwrap().1;
    assert!(metrics.contains("kindex_vectors 500"), "{metrics}");

    // Graceful stop snapshots; a restart serves the same data.
    assert!(sigterm(&mut node).success());
    drop(node);
    let node = spawn(dir.path(), &[]);
    wait_healthy(&node);
    let mut c = client(&node).await;
    let n = c
        .count(pb::CountRequest::default())
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 500);
    let got = c
        .get(pb::GetRequest {
            ids: vec!["p7".into()],
            with_vectors: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .points;
    assert_eq!(got[0].vector, vec![7.0, 1.0, 2.0, 3.0]);
}

#[test]
fn structural_drift_refuses_to_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn(dir.path(), &[]);
    wait_healthy(&node);
    assert!(sigterm(&mut node).success());
    drop(node);
    let mut other = spawn(dir.path(), &["--m", "32"]);
    let status = other.child.wait().unwrap();
    assert!(!status.success());
    let mut err = String::new();
    other
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("m=16") && err.contains("m=32"), "{err}");
}
