//! The write path of a leader, in process: a write's payloads are parsed once (issue 13).
//!
//! One test per binary on purpose: the parse counter is process-wide.

use std::time::Duration;

use kindex_node::config::RuntimeConfig;
use kindex_node::config::StructuralConfig;
use kindex_node::coordinator::Coordinator;
use kindex_node::coordinator::topology::ShardSeeds;
use kindex_node::engine::distance::Metric;
use kindex_node::engine::limits::payload_parses;
use kindex_node::node::Bootstrap;
use kindex_node::node::Node;
use kindex_node::node::NodeConfig;
use kindex_node::node::RaftTuning;
use kindex_proto as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_parses_each_payload_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(NodeConfig {
        index: "docs".into(),
        data_dir: dir.path().to_path_buf(),
        structural: StructuralConfig {
            dimension: 2,
            metric: Metric::L2,
            m: 8,
            ef_construction: 32,
            shards: 1,
            quantization: Default::default(),
        },
        runtime: RuntimeConfig::default(),
        node_id: 0,
        shard: 0,
        advertise: "127.0.0.1:7071".into(),
        grpc_port: 7070,
        admin_port: 7072,
        raft_listener: None,
        bootstrap: Bootstrap::Standalone,
        tuning: RaftTuning::default(),
        peer_tls: None,
        volume_reserve: kindex_node::volume::Reserve::Auto,
        vectors_on_disk: false,
        name: "docs-s0-0".into(),
    })
    .await
    .unwrap();
    let coordinator = Coordinator::new(node.clone(), ShardSeeds::new()).unwrap();
    // A standalone node elects itself; bounded wait.
    let mut waited = 0;
    while node.leader().is_none() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(node.leader().is_some(), "no leader after 5 s");

    let points: Vec<pb::Point> = (0..5)
        .map(|i| pb::Point {
            id: format!("p{i}"),
            vector: vec![i as f32, 1.0],
            payload_json: Some(format!(r#"{{"n":{i},"tag":"t{i}"}}"#)),
        })
        .collect();
    let before = payload_parses();
    let w = coordinator
        .upsert(pb::UpsertRequest {
            index: "docs".into(),
            points,
        })
        .await
        .unwrap();
    let parses = payload_parses() - before;
    assert_eq!(w.affected, 5);
    assert_eq!(parses, 5, "one parse per point on the leader, got {parses}");

    // What was stored is what was sent.
    let got = node.get(&["p3".into()]).unwrap();
    assert_eq!(
        got[0].payload.as_ref().unwrap()["tag"],
        serde_json::json!("t3")
    );
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}
