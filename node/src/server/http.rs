//! HTTP: health, readiness, metrics, and a JSON mirror of the `Points` API
//! under `/v1`. Writes are replicated like the gRPC ones (a follower forwards them to the
//! leader over gRPC); reads are served by this replica (consistency `eventual`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::InputError;
use crate::engine::filter::Filter;
use crate::node::{Node, NodeError, WriteOutcome};
use crate::raft::PointRecord;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { Json(super::openapi::document()) }),
        )
        .route("/v1/indexes/{index}", get(info))
        .route("/v1/indexes/{index}/points", post(upsert))
        .route("/v1/indexes/{index}/points/get", post(get_points))
        .route("/v1/indexes/{index}/points/delete", post(delete))
        .route("/v1/indexes/{index}/search", post(search))
        .route("/v1/indexes/{index}/count", get(count))
        // Bulk JSON batches are large (10k × 384 floats is ~40 MB of text).
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(node)
}

/// JSON error body: `{"error": {"code": ..., "message": ...}}`.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error": {"code": self.1, "message": self.2}})),
        )
            .into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        use crate::engine::EngineError;
        let (code, name) = match &e {
            NodeError::UnknownIndex { .. } => (StatusCode::NOT_FOUND, "not_found"),
            NodeError::Engine(EngineError::Input(_))
            | NodeError::Rejected(_)
            | NodeError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            NodeError::Unavailable(_)
            | NodeError::NotLeader { .. }
            | NodeError::Engine(EngineError::ShuttingDown) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            NodeError::Engine(EngineError::Full(_)) => {
                (StatusCode::INSUFFICIENT_STORAGE, "resource_exhausted")
            }
            NodeError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            NodeError::FailedPrecondition(_) => (StatusCode::CONFLICT, "failed_precondition"),
            NodeError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            NodeError::Forwarded(s) => match s.code() {
                tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
                tonic::Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                tonic::Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
                tonic::Code::ResourceExhausted => {
                    (StatusCode::INSUFFICIENT_STORAGE, "resource_exhausted")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError(code, name, e.to_string())
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string())
    }
}

/// A JSON request body, parsed whatever the Content-Type says (`curl -d`
/// sends a form type), with serde's precise error on malformed input.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("cannot read the request body: {}", e.body_text()),
            )
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("malformed request body: {e}"),
            )
        })
    }
}

/// Ready: a leader is known and the log this node had at start is applied (not while stopping).
async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || node.render_metrics())
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPoint {
    pub id: String,
    pub vector: Vec<f32>,
    #[serde(default)]
    pub payload: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    points: Vec<JsonPoint>,
}

#[derive(Debug, Serialize)]
struct WriteReply {
    affected: u64,
    token: Value,
}

fn reply(node: &Node, w: WriteOutcome) -> WriteReply {
    WriteReply {
        affected: w.affected,
        token: json!({"shards": [{"shard": node.shard, "appliedIndex": w.applied_index}]}),
    }
}

fn point_in(i: usize, p: JsonPoint) -> Result<PointRecord, InputError> {
    let payload_json = match p.payload {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(Value::Object(m).to_string()),
        Some(_) => {
            return Err(InputError::BadPayload {
                id: p.id,
                reason: format!("payload of point {i} must be an object"),
            });
        }
    };
    Ok(PointRecord {
        id: p.id,
        vector: p.vector,
        payload_json,
    })
}

async fn upsert(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<UpsertBody>,
) -> Result<Json<WriteReply>, ApiError> {
    node.check_index(&index)?;
    let points = body
        .points
        .into_iter()
        .enumerate()
        .map(|(i, p)| point_in(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    let w = node.upsert(points, false).await?;
    Ok(Json(reply(&node, w)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdsBody {
    ids: Vec<String>,
    #[serde(default)]
    with_vectors: bool,
    #[serde(default = "yes")]
    with_payload: bool,
}

fn yes() -> bool {
    true
}

async fn get_points(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<IdsBody>,
) -> Result<Json<Value>, ApiError> {
    node.check_index(&index)?;
    let points: Vec<Value> = node
        .get(&body.ids)?
        .into_iter()
        .map(|p| {
            let mut o = json!({"id": p.id});
            if body.with_vectors {
                o["vector"] = json!(p.vector);
            }
            if body.with_payload {
                o["payload"] = p.payload.map_or(Value::Null, Value::Object);
            }
            o
        })
        .collect();
    Ok(Json(json!({"points": points})))
}

async fn delete(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<IdsBody>,
) -> Result<Json<WriteReply>, ApiError> {
    node.check_index(&index)?;
    let w = node.delete(body.ids, false).await?;
    Ok(Json(reply(&node, w)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchBody {
    vector: Vec<f32>,
    k: usize,
    #[serde(default)]
    ef_search: Option<usize>,
    #[serde(default)]
    filter: Option<Filter>,
    #[serde(default)]
    with_vectors: bool,
    #[serde(default)]
    with_payload: bool,
}

async fn search(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<SearchBody>,
) -> Result<Json<Value>, ApiError> {
    node.check_index(&index)?;
    let n = node.clone();
    let filter = body.filter.unwrap_or_default();
    let (vector, k, ef) = (body.vector, body.k, body.ef_search);
    let (hits, engine) = tokio::task::spawn_blocking(move || n.search(&vector, k, ef, &filter))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|h| {
            let mut o = json!({"id": h.id, "distance": h.distance});
            if body.with_vectors {
                o["vector"] = json!(engine.vector(h.slot));
            }
            if body.with_payload {
                o["payload"] = engine
                    .payload(h.slot)
                    .cloned()
                    .map_or(Value::Null, Value::Object);
            }
            o
        })
        .collect();
    Ok(Json(json!({"hits": hits, "failures": []})))
}

async fn count(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
) -> Result<Json<Value>, ApiError> {
    node.check_index(&index)?;
    Ok(Json(json!({"count": node.engine().count()})))
}

async fn info(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
) -> Result<Json<Value>, ApiError> {
    node.check_index(&index)?;
    let i = super::grpc::info(&node);
    let l = i.limits.unwrap_or_default();
    Ok(Json(json!({
        "index": i.index, "dimension": i.dimension, "metric": i.metric, "shards": i.shards, "vectors": i.vectors,
        "limits": {"maxBatch": l.max_batch, "maxIdBytes": l.max_id_bytes, "maxPayloadBytes": l.max_payload_bytes, "maxK": l.max_k},
    })))
}
