//! HTTP: health, readiness, metrics, and a JSON mirror of the `Points` API
//! under `/v1`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::filter::{Filter, Payload};
use crate::engine::{InputError, PointInput};
use crate::node::{Node, NodeError};

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
        match &e {
            NodeError::UnknownIndex { .. } => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            NodeError::Engine(crate::engine::EngineError::Input(_)) => {
                ApiError(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string())
            }
            NodeError::Unavailable(_)
            | NodeError::Engine(crate::engine::EngineError::ShuttingDown) => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            _ => ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("malformed request body: {}", e.body_text()),
        )
    }
}

type Body<T> = Result<Json<T>, JsonRejection>;

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        node.metrics.render(node.engine()),
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

fn token(node: &Node) -> Value {
    json!({"shards": [{"shard": node.shard, "appliedIndex": node.applied_index()}]})
}

fn point_in(i: usize, p: JsonPoint) -> Result<PointInput, InputError> {
    let payload: Option<Payload> = match p.payload {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            return Err(InputError::BadPayload {
                id: p.id,
                reason: format!("payload of point {i} must be an object"),
            });
        }
    };
    Ok(PointInput {
        id: p.id,
        vector: p.vector,
        payload,
    })
}

async fn upsert(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
    body: Body<UpsertBody>,
) -> Result<Json<WriteReply>, ApiError> {
    let Json(body) = body?;
    node.check_index(&index)?;
    let points = body
        .points
        .into_iter()
        .enumerate()
        .map(|(i, p)| point_in(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    let n = node.clone();
    let affected = tokio::task::spawn_blocking(move || n.upsert(&points))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(WriteReply {
        affected,
        token: token(&node),
    }))
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
    body: Body<IdsBody>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
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
    body: Body<IdsBody>,
) -> Result<Json<WriteReply>, ApiError> {
    let Json(body) = body?;
    node.check_index(&index)?;
    let affected = node.delete(&body.ids)?;
    Ok(Json(WriteReply {
        affected,
        token: token(&node),
    }))
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
    body: Body<SearchBody>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    node.check_index(&index)?;
    let n = node.clone();
    let filter = body.filter.unwrap_or_default();
    let (vector, k, ef) = (body.vector, body.k, body.ef_search);
    let hits = tokio::task::spawn_blocking(move || n.search(&vector, k, ef, &filter))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let engine = node.engine();
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
