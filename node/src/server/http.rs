//! HTTP: health, readiness, metrics, and a JSON mirror of the `Points` API
//! under `/v1`. Every request goes through the node's coordinator, like a gRPC one: same
//! routing, consistency levels (`consistency`, `token` fields) and errors.
//!
//! With API keys on (see [`crate::auth`]) every `/v1` route needs `Authorization: Bearer
//! <key>` (401 without or with a wrong one, 403 for a read-only key on upsert or delete);
//! `/healthz`, `/readyz` and `/openapi.json` stay open, and so does `/metrics` unless
//! `--metrics-require-key` (then a read-only key suffices: scrapers get one of their own).
//!
//! Every 4xx/5xx answer has one shape, `{"error": {"code": ..., "message": ...}}`: the
//! handlers' own errors, and (through [`json_errors`]) axum's routing 404 and 405, path and
//! query rejections, and body-limit 413s, which axum answers empty or as text/plain.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use kindex_proto as pb;

use crate::api::convert;
use crate::auth::{self, Access, ApiKeys, AuthError};
use crate::coordinator::Coordinator;
use crate::engine::InputError;
use crate::engine::filter::Filter;
use crate::node::{Node, NodeError, QUOTA_EXCEEDED_HEADER};

/// Who may call what (see the module docs).
#[derive(Clone, Default)]
pub struct HttpAuth {
    /// Require API keys on `/v1` (None: open, the default).
    pub keys: Option<Arc<ApiKeys>>,
    /// With keys on, `/metrics` needs one too (any key: it reads).
    pub metrics_need_key: bool,
}

/// The HTTP API.
pub fn router(coordinator: Arc<Coordinator>, auth: HttpAuth) -> Router {
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
        .route("/v1/indexes/{index}/policies", get(policies))
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(auth, require_key))
        // Bulk JSON batches are large (10k × 384 floats is ~40 MB of text).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(coordinator)
}

/// The access a request needs: writes for the upsert and delete routes, reads for every
/// other `/v1` path (unknown ones too) and for `/metrics` when `metrics_need_key`, None
/// (open) otherwise.
fn access_of(method: &axum::http::Method, path: &str, metrics_need_key: bool) -> Option<Access> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "indexes", _, "points"] | ["v1", "indexes", _, "points", "delete"]
            if method == axum::http::Method::POST =>
        {
            Some(Access::Write)
        }
        ["v1", ..] => Some(Access::Read),
        ["metrics"] if metrics_need_key => Some(Access::Read),
        _ => None,
    }
}

/// Checks the API key of `/v1` requests (see [`crate::auth`]) and serves the request with
/// its `Authorization` value in scope, so calls to other nodes made for it carry it.
async fn require_key(State(auth): State<HttpAuth>, req: Request, next: Next) -> Response {
    let value = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(v) => Some(v.to_string()),
            Err(_) => return auth_error(AuthError::Malformed),
        },
    };
    if let Some(need) = access_of(req.method(), req.uri().path(), auth.metrics_need_key)
        && let Err(e) = auth::check(auth.keys.as_deref(), value.as_deref(), need)
    {
        return auth_error(e);
    }
    auth::scope(value, next.run(req)).await
}

fn auth_error(e: AuthError) -> Response {
    let mut resp = match e {
        AuthError::ReadOnly => {
            ApiError(StatusCode::FORBIDDEN, "permission_denied", e.to_string()).into_response()
        }
        _ => ApiError(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()).into_response(),
    };
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    // The refused request's body is never read, and the server may then drop the connection
    // under the client's next request on it (seen as a spurious disconnect by pooled
    // clients): tell the client not to reuse it.
    resp.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 << 20;

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

/// The error code of a status the handlers do not produce themselves.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_argument",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "deadline_exceeded",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// Rewrites every error answer that is not JSON yet (axum's empty 404/405, text/plain path,
/// query and body-limit rejections, the text of `/readyz`) into the API's JSON error shape,
/// keeping the status and the text as the message.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            format!("method {method} is not allowed on {path}; allowed: {allow}")
        }
        (_, false) => text,
        (_, true) => format!(
            "{} ({method} {path})",
            status.canonical_reason().unwrap_or("error")
        ),
    };
    let mut out = ApiError(status, code_of(status), message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// JSON error body: `{"error": {"code": ..., "message": ...}}`.
pub struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error": {"code": self.1, "message": self.2}})),
        )
            .into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let (code, name) = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::FailedPrecondition | Code::Unavailable | Code::Cancelled => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::ResourceExhausted if s.metadata().contains_key(QUOTA_EXCEEDED_HEADER) => {
                (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
            }
            Code::ResourceExhausted => (StatusCode::INSUFFICIENT_STORAGE, "resource_exhausted"),
            Code::Aborted => (StatusCode::CONFLICT, "conflict"),
            // From another node checking the caller's key (forwarding, fan-out).
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError(code, name, s.message().to_string())
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        crate::api::status::status_of(e).into()
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
            let status = e.status();
            ApiError(
                status,
                code_of(status),
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
async fn readyz(State(c): State<Arc<Coordinator>>) -> impl IntoResponse {
    match c.local().node.not_ready_reason() {
        None => (StatusCode::OK, "ready".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> impl IntoResponse {
    let node: Arc<Node> = c.local().node.clone();
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

/// `{"index": "docs", "shardCount": 2, "shards": [{"shard": 0, "appliedIndex": 12}]}`: what
/// writes return and session reads take. `index` and `shardCount` are absent from tokens issued
/// before they existed; such tokens are still accepted (only their shard numbers are checked).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonToken {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub index: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shard_count: u32,
    pub shards: Vec<JsonShardIndex>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonShardIndex {
    pub shard: u32,
    pub applied_index: u64,
}

impl From<pb::ConsistencyToken> for JsonToken {
    fn from(t: pb::ConsistencyToken) -> Self {
        JsonToken {
            index: t.index,
            shard_count: t.shard_count,
            shards: t
                .shards
                .into_iter()
                .map(|s| JsonShardIndex {
                    shard: s.shard,
                    applied_index: s.applied_index,
                })
                .collect(),
        }
    }
}

impl From<JsonToken> for pb::ConsistencyToken {
    fn from(t: JsonToken) -> Self {
        pb::ConsistencyToken {
            index: t.index,
            shard_count: t.shard_count,
            shards: t
                .shards
                .into_iter()
                .map(|s| pb::ShardIndex {
                    shard: s.shard,
                    applied_index: s.applied_index,
                })
                .collect(),
        }
    }
}

/// `eventual | session | linearizable`; absent = the default (read-your-writes).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum JsonConsistency {
    #[default]
    Default,
    Eventual,
    Session,
    Linearizable,
}

impl JsonConsistency {
    fn wire(self) -> i32 {
        (match self {
            JsonConsistency::Default => pb::Consistency::Unspecified,
            JsonConsistency::Eventual => pb::Consistency::Eventual,
            JsonConsistency::Session => pb::Consistency::Session,
            JsonConsistency::Linearizable => pb::Consistency::Linearizable,
        }) as i32
    }
}

#[derive(Debug, Serialize)]
struct WriteReply {
    affected: u64,
    token: JsonToken,
}

fn reply(w: pb::WriteResponse) -> WriteReply {
    WriteReply {
        affected: w.affected,
        token: w.token.map(JsonToken::from).unwrap_or_default(),
    }
}

fn point_in(i: usize, p: JsonPoint) -> Result<pb::Point, InputError> {
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
    Ok(pb::Point {
        id: p.id,
        vector: p.vector,
        payload_json,
    })
}

/// A stored payload (a JSON object, validated on write) back as JSON.
fn payload_out(json: Option<String>) -> Value {
    json.and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or(Value::Null)
}

async fn upsert(
    State(c): State<Arc<Coordinator>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<UpsertBody>,
) -> Result<Json<WriteReply>, ApiError> {
    let points = body
        .points
        .into_iter()
        .enumerate()
        .map(|(i, p)| point_in(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    let w = c.upsert(pb::UpsertRequest { index, points }).await?;
    Ok(Json(reply(w)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdsBody {
    ids: Vec<String>,
    #[serde(default)]
    with_vectors: bool,
    #[serde(default = "yes")]
    with_payload: bool,
    #[serde(default)]
    consistency: JsonConsistency,
    #[serde(default)]
    token: Option<JsonToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    ids: Vec<String>,
}

fn yes() -> bool {
    true
}

async fn get_points(
    State(c): State<Arc<Coordinator>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<IdsBody>,
) -> Result<Json<Value>, ApiError> {
    let r = c
        .get(pb::GetRequest {
            index,
            ids: body.ids,
            with_vectors: body.with_vectors,
            with_payload: body.with_payload,
            consistency: body.consistency.wire(),
            token: body.token.map(Into::into),
        })
        .await?;
    let points: Vec<Value> = r
        .points
        .into_iter()
        .map(|p| {
            let mut o = json!({"id": p.id});
            if body.with_vectors {
                o["vector"] = json!(p.vector);
            }
            if body.with_payload {
                o["payload"] = payload_out(p.payload_json);
            }
            o
        })
        .collect();
    Ok(Json(json!({"points": points})))
}

async fn delete(
    State(c): State<Arc<Coordinator>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<DeleteBody>,
) -> Result<Json<WriteReply>, ApiError> {
    let w = c
        .delete(pb::DeleteRequest {
            index,
            ids: body.ids,
        })
        .await?;
    Ok(Json(reply(w)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchBody {
    vector: Vec<f32>,
    k: u32,
    #[serde(default)]
    ef_search: Option<u32>,
    /// int8 indexes: rescoring factor of this search (1..=100).
    #[serde(default)]
    rescore: Option<u32>,
    #[serde(default)]
    filter: Option<Filter>,
    #[serde(default)]
    with_vectors: bool,
    #[serde(default)]
    with_payload: bool,
    #[serde(default)]
    consistency: JsonConsistency,
    #[serde(default)]
    token: Option<JsonToken>,
}

async fn search(
    State(c): State<Arc<Coordinator>>,
    Path(index): Path<String>,
    JsonBody(body): JsonBody<SearchBody>,
) -> Result<Json<Value>, ApiError> {
    let r = c
        .search(pb::SearchRequest {
            index,
            vector: body.vector,
            k: body.k,
            ef_search: body.ef_search,
            rescore: body.rescore,
            filter: body.filter.map(|f| convert::filter_out(&f)),
            with_vectors: body.with_vectors,
            with_payload: body.with_payload,
            consistency: body.consistency.wire(),
            token: body.token.map(Into::into),
        })
        .await?;
    let hits: Vec<Value> = r
        .hits
        .into_iter()
        .map(|h| {
            let mut o = json!({"id": h.id, "distance": h.distance});
            if body.with_vectors {
                o["vector"] = json!(h.vector);
            }
            if body.with_payload {
                o["payload"] = payload_out(h.payload_json);
            }
            o
        })
        .collect();
    let failures: Vec<Value> = r
        .failures
        .into_iter()
        .map(|f| json!({"shard": f.shard, "message": f.message}))
        .collect();
    Ok(Json(json!({"hits": hits, "failures": failures})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountQuery {
    #[serde(default)]
    consistency: JsonConsistency,
}

async fn count(
    State(c): State<Arc<Coordinator>>,
    Path(index): Path<String>,
    Query(q): Query<CountQuery>,
) -> Result<Json<Value>, ApiError> {
    let r = c
        .count(pb::CountRequest {
            index,
            consistency: q.consistency.wire(),
            token: None,
        })
        .await?;
    Ok(Json(json!({"count": r.count})))
}

/// The policy store of the shard this node serves, as it applied it (changes go through the
/// admin port: `kindex policy` or its HTTP API, see `admin_http`).
async fn policies(
    State(c): State<Arc<Coordinator>>,
    Path(index): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = &c.local().node;
    node.check_index(&index)?;
    let (mut head, store) = super::admin_http::store_of(node);
    head["store"] = store;
    Ok(Json(head))
}

async fn info(
    State(c): State<Arc<Coordinator>>,
    Path(index): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let i = c.info(pb::InfoRequest { index }).await?;
    let l = i.limits.unwrap_or_default();
    Ok(Json(json!({
        "index": i.index, "dimension": i.dimension, "metric": i.metric, "shards": i.shards, "vectors": i.vectors,
        "limits": {"maxBatch": l.max_batch, "maxIdBytes": l.max_id_bytes, "maxPayloadBytes": l.max_payload_bytes, "maxK": l.max_k},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn routes_need_the_right_access() {
        let w = Some(Access::Write);
        let r = Some(Access::Read);
        let access_of = |m: &Method, p: &str| access_of(m, p, false);
        assert_eq!(access_of(&Method::POST, "/v1/indexes/a/points"), w);
        assert_eq!(access_of(&Method::POST, "/v1/indexes/a/points/delete"), w);
        assert_eq!(access_of(&Method::POST, "/v1/indexes/a/points/get"), r);
        assert_eq!(access_of(&Method::POST, "/v1/indexes/a/search"), r);
        assert_eq!(access_of(&Method::GET, "/v1/indexes/a/count"), r);
        assert_eq!(access_of(&Method::GET, "/v1/indexes/points"), r);
        // An index named like a route segment is still read as an index.
        assert_eq!(access_of(&Method::POST, "/v1/indexes/points/points"), w);
        assert_eq!(access_of(&Method::GET, "/v1/unknown"), r);
        for open in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/nope"] {
            assert_eq!(access_of(&Method::GET, open), None, "{open}");
        }
        // `--metrics-require-key`: metrics read; probes stay open.
        assert_eq!(super::access_of(&Method::GET, "/metrics", true), r);
        for open in ["/healthz", "/readyz", "/openapi.json"] {
            assert_eq!(super::access_of(&Method::GET, open, true), None, "{open}");
        }
    }
}
