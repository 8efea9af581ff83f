#![allow(clippy::unwrap_used)]
//! The real `kindex-node` binary in standalone mode: health, gRPC, HTTP,
//! graceful shutdown with snapshot, restart from the same data dir, and a
//! clear refusal on structural drift.

mod procs;

use std::path::Path;
use std::time::Duration;

use kindex_proto as pb;
use procs::{Proc, STOP_WAIT, Standalone, http_get, http_post_as};

/// A node on `dir` (own loopback address, default ports), not waited for.
fn spawn(dir: &Path, extra: &[&str]) -> Proc {
    Standalone::new(4, "l2").data_dir(dir).args(extra).start()
}

/// A POST the way `curl -d` sends it: no JSON content type.
fn http_post(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http_post_as(addr, path, "application/x-www-form-urlencoded", body)
}

fn wait_healthy(p: &mut Proc) {
    p.wait_http_ok("/healthz", Duration::from_secs(30));
}

async fn client(p: &Proc) -> pb::points_client::PointsClient<tonic::transport::Channel> {
    pb::points_client::PointsClient::connect(p.grpc_url())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_restarts_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn(dir.path(), &[]);
    wait_healthy(&mut node);
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
    assert!(node.sigterm().success());
    drop(node);
    let mut node = spawn(dir.path(), &[]);
    wait_healthy(&mut node);
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
    wait_healthy(&mut node);
    assert!(node.sigterm().success());
    drop(node);
    let mut other = spawn(dir.path(), &["--m", "32"]);
    let status = other.wait_exit(STOP_WAIT);
    assert!(!status.success());
    // stdout and stderr, where the node says why it refused.
    let err = other.log_text();
    assert!(err.contains("m=16") && err.contains("m=32"), "{err}");
}

/// The Admin service has a listener of its own (`--admin-port`, default 7072): the data port,
/// which the client Service exposes, does not answer any Admin RPC.
#[tokio::test(flavor = "multi_thread")]
async fn admin_rpcs_are_served_on_the_admin_port_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn(dir.path(), &[]);
    wait_healthy(&mut node);
    // On the data port: every Admin RPC is unknown there, the read-only one and the ones that
    // change the group alike.
    let mut on_data = pb::admin_client::AdminClient::new(node.channel());
    let err = on_data.status(pb::StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    let err = on_data
        .trigger_snapshot(pb::TriggerSnapshotRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    let err = on_data
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![0],
            retain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    // On the admin port they work.
    let s = node.status().await.expect("Status on the admin port");
    assert_eq!(s.node_id, 0);
    assert!(s.initialized);
    let snap = node
        .admin()
        .trigger_snapshot(pb::TriggerSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(snap.bytes > 0, "{snap:?}");
    // The admin port serves no data-plane calls either.
    let mut points_on_admin = pb::points_client::PointsClient::new(node.admin_channel());
    let err = points_on_admin
        .count(pb::CountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
}

/// `--admin-port` moves the Admin listener.
#[tokio::test(flavor = "multi_thread")]
async fn admin_port_flag_moves_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn(dir.path(), &["--admin-port", "9072"]);
    node.admin_port = 9072;
    wait_healthy(&mut node);
    assert!(node.status().await.is_some(), "Status on port 9072");
}
