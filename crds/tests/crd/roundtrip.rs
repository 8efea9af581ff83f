use kindex_crds::VectorIndex;
use kube::core::cel::apply_defaults;
use serde_json::Value;

use super::{example, examples_dir, read, schema};

#[test]
fn full_example_round_trips() {
    let vi = example("production.yaml");
    let json = serde_json::to_value(&vi).expect("to json");
    let back: VectorIndex = serde_json::from_value(json.clone()).expect("from json");
    assert_eq!(back, vi);

    let yaml = serde_saphyr::to_string(&vi).expect("to yaml");
    let back: VectorIndex = serde_saphyr::from_str(&yaml).expect("from yaml");
    assert_eq!(back, vi);

    // Nothing the user wrote is dropped or renamed on the way through Rust.
    let raw: Value =
        serde_saphyr::from_str(&read(&examples_dir().join("production.yaml"))).expect("raw yaml");
    assert_eq!(json["spec"], raw["spec"]);
}

/// The schema's `default:`s (what the API server stores) and serde's defaults (what
/// Rust sees) must agree, for the smallest object and for a fully written one.
#[test]
fn schema_defaults_match_serde_defaults() {
    for name in ["minimal.yaml", "production.yaml"] {
        let raw: Value =
            serde_saphyr::from_str(&read(&examples_dir().join(name))).expect("raw yaml");
        let server_side = apply_defaults(&schema(), &raw);
        let rust_side = serde_json::to_value(example(name)).expect("json");
        assert_eq!(server_side["spec"], rust_side["spec"], "{name}");
    }
}

#[test]
fn status_round_trips() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kindex_crds::{Phase, ShardStatus, VectorIndexStatus, condition_types};

    let mut vi = example("minimal.yaml");
    vi.status = Some(VectorIndexStatus {
        phase: Some(Phase::Ready),
        conditions: vec![Condition {
            type_: condition_types::READY.into(),
            status: "True".into(),
            reason: "AllShardsReady".into(),
            message: "1/1 shards have a leader and all replicas".into(),
            last_transition_time: Time(Default::default()),
            observed_generation: Some(1),
        }],
        shards: vec![ShardStatus {
            shard: 0,
            leader: Some("demo-s0-0".into()),
            members: vec!["demo-s0-0".into()],
            ready_replicas: 1,
            applied_index: 42,
            vectors: 40,
            last_snapshot: Some("2025-01-01T00:00:00Z".into()),
            policies_synced: Some(true),
        }],
        vectors: Some(40),
        replicas: Some(1),
        ready_replicas: Some(1),
        ready: Some(VectorIndexStatus::ready_column(1, 1)),
        observed_generation: Some(1),
        selector: Some("app.kubernetes.io/instance=demo".into()),
        data_format: Some(4),
    });
    let json = serde_json::to_value(&vi).expect("to json");
    assert_eq!(json["status"]["phase"], "Ready");
    assert_eq!(json["status"]["shards"][0]["appliedIndex"], 42);
    assert_eq!(json["status"]["shards"][0]["policiesSynced"], true);
    assert_eq!(json["status"]["ready"], "1/1");
    assert_eq!(json["status"]["dataFormat"], 4);
    let back: VectorIndex = serde_json::from_value(json).expect("from json");
    assert_eq!(back, vi);
}

/// Status written by operators before the phase was renamed (`Running`) still reads, as
/// `Ready`: an operator that failed to read its own old status would fail every reconcile.
#[test]
fn the_old_running_phase_reads_as_ready() {
    use kindex_crds::Phase;
    let phase: Phase = serde_json::from_value(serde_json::json!("Running")).expect("old phase");
    assert_eq!(phase, Phase::Ready);
    assert_eq!(serde_json::to_value(phase).expect("to json"), "Ready");
}
