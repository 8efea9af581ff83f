//! Reconcile scenarios against the in-memory API server and fake nodes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ApiServer, FakeNodes};
use http::Method;
use kindex_crds::{Metric, PolicyKind, PolicySpec, VectorIndex, VectorIndexSpec};
use kindex_operator::controller::{Context, OperatorConfig};
use kindex_operator::events::Events;
use kindex_operator::metrics::Metrics;
use kindex_operator::observe::ClusterDns;
use kindex_operator::reconcile::reconcile;
use kindex_proto::{LogId, Member, StatusResponse};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

const NS: &str = "ns";
const UID: &str = "0b7c0e3c-0000-4000-8000-000000000001";
const VI_PATH: &str = "/apis/kindex.dev/v1alpha1/namespaces/ns/vectorindexes/idx";

fn index(replicas: u32) -> VectorIndex {
    let mut spec = VectorIndexSpec::new(384, Metric::Cosine);
    spec.replicas = replicas;
    let mut vi = VectorIndex::new("idx", spec);
    vi.metadata.namespace = Some(NS.into());
    vi.metadata.uid = Some(UID.into());
    vi.metadata.generation = Some(1);
    vi
}

struct Env {
    api: ApiServer,
    nodes: Arc<FakeNodes>,
    ctx: Arc<Context>,
}

fn env(vi: &VectorIndex) -> Env {
    env_with(vi, Arc::new(FakeNodes::default()))
}

/// An operator (API server, context) talking to `nodes`, e.g. nodes an earlier operator
/// process already changed.
fn env_with(vi: &VectorIndex, nodes: Arc<FakeNodes>) -> Env {
    let (client, api) = ApiServer::start();
    api.insert(VI_PATH, serde_json::to_value(vi).unwrap());
    let ctx = Arc::new(Context::new(
        client.clone(),
        nodes.clone(),
        Arc::new(ClusterDns),
        Events::new(client, None),
        Metrics::new().unwrap(),
        OperatorConfig {
            default_image: "kindex/kindex-node:test".into(),
            ..OperatorConfig::default()
        },
    ));
    Env { api, nodes, ctx }
}

/// A running pod of shard 0 made from `revision`.
fn seed_pod(api: &ApiServer, ordinal: u32, revision: &str) {
    let name = format!("idx-s0-{ordinal}");
    api.insert(
        &format!("/api/v1/namespaces/ns/pods/{name}"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": NS,
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {
                    "app.kubernetes.io/name": "kindex",
                    "app.kubernetes.io/instance": "idx",
                    "kindex.dev/shard": "0",
                    "controller-revision-hash": revision,
                }
            },
            "status": {
                "phase": "Running", "podIP": format!("10.0.0.{ordinal}"),
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }),
    );
}

/// Shard 0's StatefulSet as the StatefulSet controller leaves it.
fn seed_statefulset(api: &ApiServer, replicas: i32, update_revision: &str) {
    api.insert(
        "/apis/apps/v1/namespaces/ns/statefulsets/idx-s0",
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {
                "name": "idx-s0", "namespace": NS, "generation": 1,
                "labels": {"app.kubernetes.io/name": "kindex", "app.kubernetes.io/instance": "idx",
                           "app.kubernetes.io/managed-by": "kindex-operator", "kindex.dev/shard": "0"},
                "ownerReferences": [{"apiVersion": "kindex.dev/v1alpha1", "kind": "VectorIndex",
                                      "name": "idx", "uid": UID, "controller": true}]
            },
            "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "idx-s0-headless"},
            "status": {"replicas": replicas, "observedGeneration": 1,
                       "updateRevision": update_revision, "currentRevision": "r1"}
        }),
    );
}

/// A node of an initialized group of `n` voters (leader 0) that applied 100 entries.
fn member(id: u64, n: u64) -> StatusResponse {
    StatusResponse {
        index: "idx".into(),
        node_id: id,
        role: if id == 0 { "leader" } else { "follower" }.into(),
        term: 1,
        leader_id: Some(0),
        members: (0..n)
            .map(|node_id| Member {
                node_id,
                addr: String::new(),
                voter: true,
            })
            .collect(),
        applied: Some(LogId {
            term: 1,
            index: 100,
        }),
        vectors_live: 10,
        initialized: true,
        ..StatusResponse::default()
    }
}

/// The status the operator applied last.
fn applied_status(api: &ApiServer) -> Value {
    api.writes()
        .into_iter()
        .rev()
        .find(|c| c.is(Method::PATCH, "/vectorindexes/idx/status"))
        .map(|c| c.body["status"].clone())
        .unwrap()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap()
}

fn events(api: &ApiServer) -> Vec<(String, String)> {
    api.writes()
        .into_iter()
        .filter(|c| c.method == Method::POST && c.path.ends_with("/events"))
        .map(|c| {
            (
                c.body["type"].as_str().unwrap().to_owned(),
                c.body["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn create_applies_every_object_then_status() {
    let vi = index(3);
    let e = env(&vi);
    let action = reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(10)),
        "waiting for pods"
    );

    let writes = e.api.writes();
    let paths: Vec<String> = writes
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        paths,
        [
            "PATCH /api/v1/namespaces/ns/configmaps/idx-config",
            "PATCH /api/v1/namespaces/ns/services/idx",
            "PATCH /apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/idx-kindex",
            "PATCH /api/v1/namespaces/ns/services/idx-s0-headless",
            "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/idx-s0",
            "PATCH /apis/apps/v1/namespaces/ns/statefulsets/idx-s0",
            "PATCH /apis/kindex.dev/v1alpha1/namespaces/ns/vectorindexes/idx/status",
        ]
    );
    for c in &writes {
        assert!(c.is_apply(), "not a forced server-side apply: {c:?}");
    }
    for c in &writes[..6] {
        let owner = &c.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], UID, "{}", c.path);
        assert_eq!(owner["kind"], "VectorIndex");
        assert_eq!(owner["controller"], true);
        assert_eq!(
            c.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kindex-operator"
        );
    }
    let sts = &writes[5].body;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "kindex/kindex-node:test"
    );

    // No pods (no kubelet): Creating and Progressing, not Degraded, no node calls.
    let status = applied_status(&e.api);
    assert_eq!(status["phase"], "Creating");
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["ready"], "0/3");
    assert!(e.nodes.calls.lock().unwrap().is_empty());
    assert!(events(&e.api).is_empty());
}

#[tokio::test]
async fn invalid_spec_only_patches_status_and_emits_an_event() {
    let mut vi = index(3);
    vi.spec.dimension = 0;
    let e = env(&vi);
    let action = reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    let writes = e.api.writes();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(events(&e.api), [("Warning".into(), "InvalidSpec".into())]);
    assert!(writes[1].is(Method::PATCH, "/vectorindexes/idx/status"));
    let status = applied_status(&e.api);
    assert_eq!(status["phase"], "Failed");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.dimension = 0")
    );
}

#[tokio::test]
async fn structural_change_is_refused() {
    let vi = index(3);
    let e = env(&vi);
    // The ConfigMap records that the index was created with dimension 128.
    let mut old = vi.clone();
    old.spec.dimension = 128;
    let cm = kindex_operator::build::configmap::build_configmap(
        &kindex_operator::validate::ValidIndex::new(&old, "unused").unwrap(),
    );
    e.api.insert(
        "/api/v1/namespaces/ns/configmaps/idx-config",
        serde_json::to_value(cm).unwrap(),
    );
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    let writes = e.api.writes();
    assert_eq!(writes.len(), 2, "only an event and the status: {writes:?}");
    let status = applied_status(&e.api);
    assert!(
        condition(&status, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("spec.dimension is immutable (structural field): 128 -> 384")
    );
}

/// The ConfigMap records `quantization: int8` while the spec now says `none` (say, a CRD
/// without the field pruned it, or the CEL rule was bypassed): refused like any structural
/// change, naming the field, and nothing is applied.
#[tokio::test]
async fn quantization_change_is_refused() {
    let vi = index(3);
    assert_eq!(vi.spec.quantization, kindex_common::Quantization::None);
    let e = env(&vi);
    let mut old = vi.clone();
    old.spec.quantization = kindex_common::Quantization::Int8;
    let cm = kindex_operator::build::configmap::build_configmap(
        &kindex_operator::validate::ValidIndex::new(&old, "unused").unwrap(),
    );
    e.api.insert(
        "/api/v1/namespaces/ns/configmaps/idx-config",
        serde_json::to_value(cm).unwrap(),
    );
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    let writes = e.api.writes();
    assert_eq!(writes.len(), 2, "only an event and the status: {writes:?}");
    let status = applied_status(&e.api);
    let message = condition(&status, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("spec.quantization is immutable (structural field): int8 -> none"),
        "{message}"
    );
}

#[tokio::test]
async fn initializes_when_all_pods_answer() {
    let vi = index(3);
    let e = env(&vi);
    seed_statefulset(&e.api, 3, "r1");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
        e.nodes.set(
            &format!("idx-s0-{o}"),
            Ok(StatusResponse {
                node_id: o.into(),
                role: "learner".into(),
                ..StatusResponse::default()
            }),
        );
    }
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    let addr = |o: u32| format!("{o}@idx-s0-{o}.idx-s0-headless.ns.svc:7071");
    assert_eq!(
        e.nodes.actions(),
        [format!(
            "Initialize idx-s0-0 [{},{},{}]",
            addr(0),
            addr(1),
            addr(2)
        )]
    );
    assert_eq!(events(&e.api), [("Normal".into(), "Initialize".into())]);
    let status = applied_status(&e.api);
    assert_eq!(status["phase"], "Creating");
    assert!(
        condition(&status, "Progressing")["message"]
            .as_str()
            .unwrap()
            .contains("initializing shard 0 with voters 0, 1, 2")
    );
}

#[tokio::test]
async fn node_not_answering_is_degraded_and_nothing_is_done() {
    let mut vi = index(3);
    // A previous reconcile saw the group.
    vi.status = Some(kindex_crds::VectorIndexStatus {
        shards: vec![kindex_crds::ShardStatus {
            shard: 0,
            members: vec!["idx-s0-0".into(), "idx-s0-1".into(), "idx-s0-2".into()],
            ..Default::default()
        }],
        observed_generation: Some(1),
        ..Default::default()
    });
    let e = env(&vi);
    seed_statefulset(&e.api, 3, "r1");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
    }
    e.nodes.set("idx-s0-0", Ok(member(0, 3)));
    e.nodes.set("idx-s0-1", Ok(member(1, 3)));
    e.nodes.set("idx-s0-2", Err("connection refused"));
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();

    assert!(e.nodes.actions().is_empty(), "{:?}", e.nodes.actions());
    let status = applied_status(&e.api);
    assert_eq!(status["phase"], "Degraded");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ReplicasUnavailable");
    let msg = degraded["message"].as_str().unwrap();
    assert!(
        msg.contains("voters do not answer") && msg.contains("connection refused"),
        "{msg}"
    );
    assert_eq!(status["shards"][0]["leader"], "idx-s0-0");
    assert_eq!(status["shards"][0]["appliedIndex"], 100);
    assert_eq!(status["vectors"], 10);
    assert_eq!(
        events(&e.api),
        [("Warning".into(), "ReplicasUnavailable".into())]
    );
}

#[tokio::test]
async fn scale_down_leaves_raft_before_the_statefulset_shrinks() {
    let vi = index(1);
    let e = env(&vi);
    seed_statefulset(&e.api, 3, "r1");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
        e.nodes.set(&format!("idx-s0-{o}"), Ok(member(o.into(), 3)));
    }
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    assert_eq!(e.nodes.actions(), ["ChangeMembership idx-s0-0 [0, 1]"]);
    let sts = e
        .api
        .writes()
        .into_iter()
        .find(|c| c.is(Method::PATCH, "/statefulsets/idx-s0"))
        .unwrap();
    assert_eq!(
        sts.body["spec"]["replicas"], 3,
        "pods stay while they are voters"
    );
    assert_eq!(applied_status(&e.api)["phase"], "Scaling");
}

#[tokio::test]
async fn rollout_restarts_the_highest_follower_first() {
    let vi = index(3);
    let e = env(&vi);
    seed_statefulset(&e.api, 3, "r2");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
        e.nodes.set(&format!("idx-s0-{o}"), Ok(member(o.into(), 3)));
    }
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    let deletes: Vec<String> = e
        .api
        .writes()
        .into_iter()
        .filter(|c| c.method == Method::DELETE)
        .map(|c| c.path)
        .collect();
    assert_eq!(deletes, ["/api/v1/namespaces/ns/pods/idx-s0-2"]);
    assert_eq!(events(&e.api), [("Normal".into(), "RestartPod".into())]);
    assert_eq!(applied_status(&e.api)["phase"], "Upgrading");
}

#[tokio::test]
async fn orphans_owned_by_the_index_are_deleted() {
    let vi = index(3);
    let e = env(&vi);
    let labels = json!({"app.kubernetes.io/name": "kindex", "app.kubernetes.io/instance": "idx",
                        "app.kubernetes.io/managed-by": "kindex-operator"});
    let owner = json!([{"apiVersion": "kindex.dev/v1alpha1", "kind": "VectorIndex",
                        "name": "idx", "uid": UID, "controller": true}]);
    e.api.insert(
        "/api/v1/namespaces/ns/services/idx-s7-headless",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "idx-s7-headless", "namespace": NS, "labels": labels, "ownerReferences": owner}}),
    );
    // Same labels, not ours: left alone.
    e.api.insert(
        "/api/v1/namespaces/ns/services/foreign",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "foreign", "namespace": NS, "labels": labels}}),
    );
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    let deletes: Vec<String> = e
        .api
        .writes()
        .into_iter()
        .filter(|c| c.method == Method::DELETE)
        .map(|c| c.path)
        .collect();
    assert_eq!(deletes, ["/api/v1/namespaces/ns/services/idx-s7-headless"]);
    assert!(
        e.api
            .get("/api/v1/namespaces/ns/services/foreign")
            .is_some()
    );
}

/// A node that answers but is in no Raft group yet (a freshly created pod).
fn fresh(id: u64) -> StatusResponse {
    StatusResponse {
        index: "idx".into(),
        node_id: id,
        role: "learner".into(),
        initialized: false,
        ..StatusResponse::default()
    }
}

#[tokio::test]
async fn scale_up_adds_a_learner_then_promotes_it_when_caught_up() {
    let vi = index(4);
    let e = env(&vi);
    seed_statefulset(&e.api, 4, "r1");
    for o in 0..4 {
        seed_pod(&e.api, o, "r1");
    }
    for o in 0..3 {
        e.nodes.set(&format!("idx-s0-{o}"), Ok(member(o, 3)));
    }
    e.nodes.set("idx-s0-3", Ok(fresh(3)));
    reconcile(Arc::new(vi.clone()), e.ctx.clone())
        .await
        .unwrap();
    let actions = e.nodes.actions();
    assert_eq!(actions.len(), 1, "one step per reconcile: {actions:?}");
    assert!(
        actions[0].starts_with("AddLearner idx-s0-0 [3"),
        "{actions:?}"
    );
    assert_eq!(applied_status(&e.api)["phase"], "Scaling");

    // The learner has caught up (same applied index as the leader): promote.
    let mut leader = member(0, 3);
    leader.members.push(Member {
        node_id: 3,
        addr: String::new(),
        voter: false,
    });
    e.nodes.set("idx-s0-0", Ok(leader));
    let mut learner = member(3, 3);
    learner.role = "learner".into();
    e.nodes.set("idx-s0-3", Ok(learner));
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    let actions = e.nodes.actions();
    assert_eq!(
        actions.last().map(String::as_str),
        Some("ChangeMembership idx-s0-0 [0, 1, 2, 3]"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn errors_are_counted_by_step_and_variant() {
    let vi = index(3);
    let e = env(&vi);
    // The object is gone from the API server: the status patch fails with 404.
    e.api.objects.lock().unwrap().remove(VI_PATH);
    let err = reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap_err();
    assert_eq!((err.step(), err.variant()), ("status", "patch"), "{err}");
    let errors = &e.ctx.metrics.errors;
    assert_eq!(errors.with_label_values(&["status", "patch"]).get(), 1);
    assert_eq!(errors.with_label_values(&["apply", "apply"]).get(), 0);
    assert!(
        e.ctx
            .metrics
            .render()
            .contains(r#"kindex_operator_reconcile_errors_total{error="patch",step="status"} 1"#)
    );
}

/// `vi` as the next reconcile sees it: the status the operator applied last.
fn with_applied_status(api: &ApiServer, mut vi: VectorIndex) -> VectorIndex {
    vi.status = Some(serde_json::from_value(applied_status(api)).unwrap());
    vi
}

fn statefulset_image(api: &ApiServer) -> Value {
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/idx-s0")
        .unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
        .clone()
}

#[tokio::test]
async fn pausing_one_index_stops_its_reconciliation_until_resumed() {
    let vi = index(3);
    let e = env(&vi);
    reconcile(Arc::new(vi.clone()), e.ctx.clone())
        .await
        .unwrap();
    assert_eq!(statefulset_image(&e.api), "kindex/kindex-node:test");

    // Paused, and the spec changes meanwhile: nothing but the status and an event.
    let mut paused = with_applied_status(&e.api, vi);
    paused
        .annotations_mut()
        .insert("kindex.dev/paused".into(), "true".into());
    paused.spec.image = Some("kindex/kindex-node:new".into());
    paused.spec.replicas = 5;
    paused.metadata.generation = Some(2);
    let before = e.api.writes().len();
    let action = reconcile(Arc::new(paused.clone()), e.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    let writes: Vec<String> = e.api.writes()[before..]
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes[0].ends_with("/events"), "{writes:?}");
    assert!(
        writes[1].ends_with("/vectorindexes/idx/status"),
        "{writes:?}"
    );
    assert_eq!(statefulset_image(&e.api), "kindex/kindex-node:test");
    assert!(e.nodes.actions().is_empty());
    let status = applied_status(&e.api);
    let cond = condition(&status, "Paused");
    assert_eq!(cond["status"], "True");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("kindex.dev/paused")
    );
    assert_eq!(
        status["observedGeneration"], 1,
        "the new spec is not observed"
    );
    assert!(events(&e.api).contains(&("Normal".into(), "Paused".into())));

    // Still paused: no new event, still nothing applied.
    let paused = with_applied_status(&e.api, paused);
    let before = e.api.writes().len();
    reconcile(Arc::new(paused.clone()), e.ctx.clone())
        .await
        .unwrap();
    let writes = e.api.writes();
    assert_eq!(
        writes.len() - before,
        1,
        "only the status: {:?}",
        &writes[before..]
    );

    // Resumed: the change made while paused is applied, the condition is gone.
    let mut resumed = with_applied_status(&e.api, paused);
    resumed.annotations_mut().remove("kindex.dev/paused");
    reconcile(Arc::new(resumed), e.ctx.clone()).await.unwrap();
    assert_eq!(statefulset_image(&e.api), "kindex/kindex-node:new");
    let status = applied_status(&e.api);
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] != "Paused")
    );
    assert_eq!(status["observedGeneration"], 2);
    assert!(events(&e.api).contains(&("Normal".into(), "Resumed".into())));
}

fn quota(name: &str, kind: PolicyKind, max_vectors: u64) -> PolicySpec {
    PolicySpec {
        max_vectors: Some(max_vectors),
        ..PolicySpec::new(name, kind)
    }
}

#[tokio::test]
async fn spec_policies_go_to_the_shard_leader_and_are_reported_as_policies_synced() {
    let mut vi = index(3);
    vi.spec.policies = vec![quota("cap", PolicyKind::Quota, 100)];
    let e = env(&vi);
    seed_statefulset(&e.api, 3, "r1");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
        e.nodes.set(&format!("idx-s0-{o}"), Ok(member(o.into(), 3)));
    }
    reconcile(Arc::new(vi.clone()), e.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        e.nodes.actions(),
        [r#"ChangePolicy idx-s0-0 1 cap {"kind":"quota","maxVectors":100} resource=true"#]
    );
    let synced = condition(&applied_status(&e.api), "PoliciesSynced");
    assert_eq!(synced["status"], "True", "{synced}");
    assert!(events(&e.api).contains(&("Normal".into(), "PolicyChanged".into())));

    // A retention policy: its count split over the shards (one shard here), sent like the rest.
    vi.spec
        .policies
        .push(quota("old", PolicyKind::Retention, 5));
    let e = env(&vi);
    seed_statefulset(&e.api, 3, "r1");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
        e.nodes.set(&format!("idx-s0-{o}"), Ok(member(o.into(), 3)));
    }
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    assert_eq!(
        e.nodes.actions(),
        [
            r#"ChangePolicy idx-s0-0 1 cap {"kind":"quota","maxVectors":100} resource=true"#,
            r#"ChangePolicy idx-s0-0 1 old {"kind":"retention","maxVectors":5} resource=true"#
        ]
    );
    let synced = condition(&applied_status(&e.api), "PoliciesSynced");
    assert_eq!(synced["status"], "True", "{synced}");
}

/// A spec policy of each enforced kind, as YAML in a VectorIndex would give them.
fn enforced_policies() -> Vec<PolicySpec> {
    serde_json::from_value(json!([
        {"name": "cap", "kind": "quota", "maxVectors": 100},
        {"name": "shape", "kind": "schema", "maxPayloadBytes": 4096,
         "fields": {"tenant": {"type": "string", "required": true}, "year": {"type": "integer"}}},
        {"name": "search", "kind": "searchDefaults", "maxK": 100, "maxEfSearch": 256,
         "requireMatch": ["tenant"],
         "filter": {"mustNot": [{"field": "hidden", "match": true}],
                    "must": [{"field": "year", "range": {"gte": 2020}}]}},
    ]))
    .unwrap()
}

/// Shard 0 with three ready pods; `idx-s0-0` leads.
fn seed_shard(e: &Env) {
    seed_statefulset(&e.api, 3, "r1");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
        e.nodes.set(&format!("idx-s0-{o}"), Ok(member(o.into(), 3)));
    }
}

/// The policy `name` in force in the leader's store: (version, content, source).
fn in_force(nodes: &FakeNodes, name: &str) -> (u64, Value, String) {
    let stores = nodes.policy_stores.lock().unwrap();
    let store: Value = serde_json::from_slice(&stores["idx-s0-0"].to_bytes()).unwrap();
    let v = store["policies"][name]["versions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    (
        v["version"].as_u64().unwrap(),
        v["policy"].clone(),
        v["source"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn schema_and_search_defaults_reach_the_leader_and_a_restarted_operator_makes_no_version() {
    let mut vi = index(3);
    vi.spec.policies = enforced_policies();
    let e = env(&vi);
    seed_shard(&e);
    reconcile(Arc::new(vi.clone()), e.ctx.clone())
        .await
        .unwrap();
    // The fake leader parses with the node's parser: each put was accepted as sent.
    let actions = e.nodes.actions();
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(
        actions
            .iter()
            .all(|a| a.starts_with("ChangePolicy idx-s0-0 1 ") && a.ends_with("resource=true")),
        "{actions:?}"
    );
    assert_eq!(
        in_force(&e.nodes, "shape"),
        (
            1,
            json!({"kind": "schema", "maxPayloadBytes": 4096, "fields": {
                "tenant": {"type": "string", "required": true},
                "year": {"type": "integer", "required": false}}}),
            "resource".into()
        )
    );
    assert_eq!(
        in_force(&e.nodes, "search"),
        (
            1,
            json!({"kind": "searchDefaults", "maxK": 100, "maxEfSearch": 256,
                   "requireMatch": ["tenant"],
                   "filter": {"must": [{"field": "year", "range": {"gte": 2020.0}}],
                              "mustNot": [{"field": "hidden", "match": true}]}}),
            "resource".into()
        )
    );
    // Not split: per point and per search, every shard gets the same.
    assert_eq!(in_force(&e.nodes, "cap").1["maxVectors"], 100);
    let status = applied_status(&e.api);
    let synced = condition(&status, "PoliciesSynced");
    assert_eq!(
        (&synced["status"], &synced["reason"]),
        (&"True".into(), &"Synced".into()),
        "{synced}"
    );
    assert!(
        synced["message"]
            .as_str()
            .unwrap()
            .contains("the 3 policies"),
        "{synced}"
    );
    assert_eq!(status["shards"][0]["policiesSynced"], true, "{status}");

    // The same resource again, by a restarted operator: nothing is sent, no version.
    let again = env_with(&vi, e.nodes.clone());
    seed_shard(&again);
    reconcile(Arc::new(vi.clone()), again.ctx.clone())
        .await
        .unwrap();
    assert_eq!(e.nodes.actions().len(), 3, "{:?}", e.nodes.actions());
    for name in ["cap", "shape", "search"] {
        assert_eq!(in_force(&e.nodes, name).0, 1, "{name}");
    }
    let status = applied_status(&again.api);
    assert_eq!(
        condition(&status, "PoliciesSynced")["status"],
        "True",
        "{status}"
    );
    assert_eq!(status["shards"][0]["policiesSynced"], true, "{status}");

    // A changed limit the leader cannot take yet (a replica of an older build): the shard
    // and the condition say so; once it can, one new version.
    vi.spec.policies[2].max_k = Some(50);
    e.nodes.policy_errors.lock().unwrap().insert(
        "idx-s0-0".into(),
        "FAILED_PRECONDITION: policy changes wait until every replica runs a kindex that applies them".into(),
    );
    let blocked = env_with(&vi, e.nodes.clone());
    seed_shard(&blocked);
    reconcile(Arc::new(vi.clone()), blocked.ctx.clone())
        .await
        .unwrap();
    let status = applied_status(&blocked.api);
    let synced = condition(&status, "PoliciesSynced");
    assert_eq!(
        (&synced["status"], &synced["reason"]),
        (&"False".into(), &"Pending".into()),
        "{synced}"
    );
    assert!(
        synced["message"]
            .as_str()
            .unwrap()
            .contains("shard 0: search: "),
        "{synced}"
    );
    assert_eq!(status["shards"][0]["policiesSynced"], false, "{status}");
    assert_eq!(in_force(&e.nodes, "search").0, 1);

    e.nodes.policy_errors.lock().unwrap().clear();
    let unblocked = env_with(&vi, e.nodes.clone());
    seed_shard(&unblocked);
    reconcile(Arc::new(vi), unblocked.ctx.clone())
        .await
        .unwrap();
    let (version, policy, _) = in_force(&e.nodes, "search");
    assert_eq!((version, &policy["maxK"]), (2, &json!(50)));
    assert_eq!(
        in_force(&e.nodes, "shape").0,
        1,
        "the others are left alone"
    );
    let status = applied_status(&unblocked.api);
    assert_eq!(
        condition(&status, "PoliciesSynced")["status"],
        "True",
        "{status}"
    );
    assert_eq!(status["shards"][0]["policiesSynced"], true, "{status}");
}

#[tokio::test]
async fn a_pod_on_a_new_volume_replaces_its_old_member() {
    // Pod 2 lost its volume: it answers, empty, as a new incarnation (id ordinal 2, incarnation 5).
    let new = kindex_common::node_id::compose(2, 5);
    let vi = index(3);
    let e = env(&vi);
    seed_statefulset(&e.api, 3, "r1");
    for o in 0..3 {
        seed_pod(&e.api, o, "r1");
    }
    e.nodes.set("idx-s0-0", Ok(member(0, 3)));
    e.nodes.set("idx-s0-1", Ok(member(1, 3)));
    e.nodes.set("idx-s0-2", Ok(fresh(new)));
    reconcile(Arc::new(vi.clone()), e.ctx.clone())
        .await
        .unwrap();
    let actions = e.nodes.actions();
    assert_eq!(
        actions,
        [format!(
            "AddLearner idx-s0-0 [{new}@idx-s0-2.idx-s0-headless.ns.svc:7071(learner)]"
        )],
        "the new incarnation joins as a learner, never as the old member"
    );
    let status = applied_status(&e.api);
    assert_eq!(
        status["shards"][0]["members"],
        json!(["idx-s0-0", "idx-s0-1", "idx-s0-2 (replaced: lost volume)"])
    );

    // Caught up: one membership change swaps the members.
    let mut leader = member(0, 3);
    leader.members.push(Member {
        node_id: new,
        addr: String::new(),
        voter: false,
    });
    e.nodes.set("idx-s0-0", Ok(leader));
    let mut learner = member(2, 3);
    learner.node_id = new;
    learner.role = "learner".into();
    e.nodes.set("idx-s0-2", Ok(learner));
    reconcile(Arc::new(vi), e.ctx.clone()).await.unwrap();
    let actions = e.nodes.actions();
    assert_eq!(
        actions.last().cloned(),
        Some(format!("ChangeMembership idx-s0-0 [0, 1, {new}]")),
        "{actions:?}"
    );
    assert!(
        events(&e.api).contains(&("Normal".into(), "ReplaceMember".into())),
        "{:?}",
        events(&e.api)
    );
}
