//! HTTP on the admin port (`--admin-port`, 7072): the policy API (docs/policies.md).
//!
//! Policy changes are administrative, so they are served where the Admin gRPC service is,
//! behind the same guard (peer mTLS with `--peer-tls-dir`, the NetworkPolicy otherwise),
//! never on the data port. Each call concerns the shard of the node it reaches, as
//! `kindex policy` does per node: a change on a follower is forwarded to its leader once
//! (the Admin `ChangePolicy` code does it); reads show the store this replica applied.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use kindex_proto as pb;
use pb::admin_server::Admin;
use serde::Deserialize;
use serde_json::{Value, json};

use super::grpc::{AdminService, policies_of};
use super::http::{ApiError, JsonBody, json_errors};
use crate::node::Node;

/// The policy routes, for the admin port's server (gRPC services are added next to them).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/indexes/{index}/policies", get(list))
        .route(
            "/v1/indexes/{index}/policies/{name}",
            get(one).put(put).delete(delete),
        )
        .route("/v1/indexes/{index}/policies/{name}/restore", post(restore))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_POLICY_BYTES))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(node)
}

/// Largest policy document accepted (a schema with many fields is a few KB).
const MAX_POLICY_BYTES: usize = 1 << 20;

/// Query of a change: `?expectedVersion=N&actor=NAME`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChangeQuery {
    /// Compare-and-swap: the change applies only if the newest version is this one (0: the
    /// policy must not exist yet).
    expected_version: Option<u64>,
    /// Recorded in the version's audit fields.
    actor: Option<String>,
}

/// Body of a restore: `{"version": N}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    version: u64,
}

async fn list(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    node.check_index(&index)?;
    let (head, store) = store_of(&node);
    Ok(axum::Json(with(head, "store", store)))
}

/// One policy: its kept versions (the history), deletion mark and counters.
async fn one(
    State(node): State<Arc<Node>>,
    Path((index, name)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    node.check_index(&index)?;
    let (head, store) = store_of(&node);
    let policy = store["policies"][name.as_str()].clone();
    if policy.is_null() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("shard {} has no policy named {name:?}", node.shard),
        ));
    }
    Ok(axum::Json(with(
        with(head, "name", json!(name)),
        "policy",
        policy,
    )))
}

async fn put(
    State(node): State<Arc<Node>>,
    Path((index, name)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
    body: String,
) -> Result<axum::Json<Value>, ApiError> {
    node.check_index(&index)?;
    change(&node, name, pb::PolicyChange::Put, body, 0, q).await
}

async fn delete(
    State(node): State<Arc<Node>>,
    Path((index, name)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    node.check_index(&index)?;
    change(&node, name, pb::PolicyChange::Delete, String::new(), 0, q).await
}

async fn restore(
    State(node): State<Arc<Node>>,
    Path((index, name)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
    JsonBody(b): JsonBody<RestoreBody>,
) -> Result<axum::Json<Value>, ApiError> {
    node.check_index(&index)?;
    change(
        &node,
        name,
        pb::PolicyChange::Restore,
        String::new(),
        b.version,
        q,
    )
    .await
}

/// A change through the Admin `ChangePolicy` code (validation, leader forwarding, errors).
async fn change(
    node: &Arc<Node>,
    name: String,
    op: pb::PolicyChange,
    policy_json: String,
    restore_version: u64,
    q: ChangeQuery,
) -> Result<axum::Json<Value>, ApiError> {
    let req = pb::PolicyWriteRequest {
        name,
        change: op.into(),
        policy_json,
        restore_version,
        expected_version: q.expected_version,
        actor: q.actor.unwrap_or_default(),
        // Policies of `spec.policies` are the operator's (gRPC only): this API cannot change them.
        from_resource: false,
    };
    let admin = AdminService { node: node.clone() };
    let w = admin
        .change_policy(tonic::Request::new(req))
        .await?
        .into_inner();
    Ok(axum::Json(json!({
        "shard": node.shard, "name": w.name, "version": w.version, "appliedIndex": w.applied_index,
    })))
}

/// The store this replica applied, and the fields that say where and when.
pub(super) fn store_of(node: &Node) -> (Value, Value) {
    let r = policies_of(node);
    let store: Value = serde_json::from_str(&r.store_json).unwrap_or(Value::Null);
    let head = json!({
        "shard": node.shard, "node": node.node_id, "appliedIndex": r.applied_index,
        "checksum": format!("{:016x}", r.checksum),
    });
    (head, store)
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}
