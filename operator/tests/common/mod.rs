//! Test doubles: a small in-memory API server behind `tower_test::mock::pair`, and fake
//! index nodes. Both record what they were asked, for assertions.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kindex_operator::observe::{NodeClient, NodeError, PodRef};
use kindex_proto::{Member, StatusResponse};
use kube::client::Body;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Call {
    /// `PATCH` path tail, e.g. `statefulsets/idx-s0`.
    pub fn is(&self, method: Method, path_suffix: &str) -> bool {
        self.method == method && self.path.ends_with(path_suffix)
    }
    pub fn is_apply(&self) -> bool {
        self.method == Method::PATCH
            && self.query.contains("fieldManager=kindex-operator")
            && self.query.contains("force=true")
    }
}

/// Objects by path (`/api/v1/namespaces/ns/pods/name`), answering GET, LIST (with
/// equality label selectors), server-side-apply PATCH (the body replaces the object,
/// or its status for `/status`), POST and DELETE.
#[derive(Clone, Default)]
pub struct ApiServer {
    pub objects: Arc<Mutex<BTreeMap<String, Value>>>,
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// Resource types (plural names) the server does not know, like a cluster without
    /// a CRD: any path naming one answers 404 with a plain-text body.
    pub unknown_resources: Arc<Mutex<Vec<String>>>,
}

impl ApiServer {
    /// A client wired to a fresh server; the server runs until the client is dropped.
    pub fn start() -> (kube::Client, ApiServer) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = ApiServer::default();
        let s = server.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                let call = Call {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or("").to_owned(),
                    body,
                };
                let (code, out) = s.answer(&call);
                s.calls.lock().unwrap().push(call);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        (kube::Client::new(svc, "default"), server)
    }

    /// Store an object at its canonical path.
    pub fn insert(&self, path: &str, obj: Value) {
        self.objects.lock().unwrap().insert(path.to_owned(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls that change something (everything but GET).
    pub fn writes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method != Method::GET)
            .collect()
    }

    fn answer(&self, c: &Call) -> (StatusCode, Value) {
        let unknown = self
            .unknown_resources
            .lock()
            .unwrap()
            .iter()
            .any(|r| c.path.split('/').any(|seg| seg == r));
        if unknown {
            return (StatusCode::NOT_FOUND, json!("404 page not found"));
        }
        let mut objects = self.objects.lock().unwrap();
        match c.method {
            Method::GET => {
                if let Some(obj) = objects.get(&c.path) {
                    return (StatusCode::OK, obj.clone());
                }
                if is_collection(&c.path) {
                    let selector = query_param(&c.query, "labelSelector").unwrap_or_default();
                    let prefix = format!("{}/", c.path);
                    let items: Vec<Value> = objects
                        .iter()
                        .filter(|(p, _)| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
                        .map(|(_, o)| o.clone())
                        .filter(|o| matches(&selector, o))
                        .collect();
                    return (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                    );
                }
                not_found(&c.path)
            }
            Method::PATCH => {
                if let Some(parent) = c.path.strip_suffix("/status") {
                    let Some(obj) = objects.get_mut(parent) else {
                        return not_found(parent);
                    };
                    obj["status"] = c.body["status"].clone();
                    return (StatusCode::OK, obj.clone());
                }
                let mut obj = c.body.clone();
                if let Some(old) = objects.get(&c.path) {
                    // Keep server-owned parts (status, uid) across applies.
                    obj["status"] = old["status"].clone();
                    obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                }
                objects.insert(c.path.clone(), obj.clone());
                (StatusCode::OK, obj)
            }
            Method::POST => (StatusCode::CREATED, c.body.clone()),
            Method::DELETE => match objects.remove(&c.path) {
                Some(obj) => (StatusCode::OK, obj),
                None => not_found(&c.path),
            },
            _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
        }
    }
}

/// `/api/v1/namespaces/ns/pods` has an odd number of segments after the group/version.
fn is_collection(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let after = if segs.first() == Some(&"api") { 2 } else { 3 };
    segs.len() > after && (segs.len() - after) % 2 == 1
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

fn matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let Some((k, v)) = kv.split_once('=') else {
            return false;
        };
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// Fake nodes: a status (or an error) per pod name; records every call. Policy changes go
/// through the node's own parser into the node's own `PolicyStore` (one per pod that is
/// sent them), which `ListPolicies` then reports, as a shard leader does.
#[derive(Default)]
pub struct FakeNodes {
    pub statuses: Mutex<HashMap<String, Result<StatusResponse, String>>>,
    pub calls: Mutex<Vec<String>>,
    pub policy_stores: Mutex<HashMap<String, kindex_node::policy::PolicyStore>>,
    /// Pods whose `ChangePolicy` fails with this status (e.g. a replica of an older build).
    pub policy_errors: Mutex<HashMap<String, String>>,
}

impl FakeNodes {
    pub fn set(&self, pod: &str, status: Result<StatusResponse, &str>) {
        self.statuses
            .lock()
            .unwrap()
            .insert(pod.to_owned(), status.map_err(str::to_owned));
    }
    /// Calls that change something (not `Status`, `ListPolicies`), e.g.
    /// `Initialize idx-s0-0 [0@addr, ...]`.
    pub fn actions(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.starts_with("Status") && !c.starts_with("ListPolicies"))
            .cloned()
            .collect()
    }
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

fn members(m: &[Member]) -> String {
    m.iter()
        .map(|m| {
            format!(
                "{}@{}{}",
                m.node_id,
                m.addr,
                if m.voter { "" } else { "(learner)" }
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NodeClient for FakeNodes {
    fn status<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<StatusResponse, NodeError>> {
        let name = pod.pod_name();
        self.record(format!("Status {name}"));
        let answer = self
            .statuses
            .lock()
            .unwrap()
            .get(&name)
            .cloned()
            .unwrap_or_else(|| Err("no such node".to_owned()));
        Box::pin(async move {
            answer.map_err(|reason| NodeError::Connect {
                endpoint: name,
                reason,
            })
        })
    }
    fn initialize<'a>(
        &'a self,
        pod: &'a PodRef,
        m: Vec<Member>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        self.record(format!("Initialize {} [{}]", pod.pod_name(), members(&m)));
        Box::pin(async { Ok(()) })
    }
    fn add_learner<'a>(
        &'a self,
        pod: &'a PodRef,
        m: Member,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        self.record(format!("AddLearner {} [{}]", pod.pod_name(), members(&[m])));
        Box::pin(async { Ok(()) })
    }
    fn change_membership<'a>(
        &'a self,
        pod: &'a PodRef,
        voters: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        self.record(format!("ChangeMembership {} {voters:?}", pod.pod_name()));
        Box::pin(async { Ok(()) })
    }
    fn transfer_leader<'a>(
        &'a self,
        pod: &'a PodRef,
        to: u64,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        self.record(format!("TransferLeader {} to {to}", pod.pod_name()));
        Box::pin(async { Ok(()) })
    }
    /// The pod's store (empty until it is sent a change).
    fn list_policies<'a>(
        &'a self,
        pod: &'a PodRef,
    ) -> BoxFuture<'a, Result<kindex_proto::ListPoliciesResponse, NodeError>> {
        let name = pod.pod_name();
        self.record(format!("ListPolicies {name}"));
        let store = self
            .policy_stores
            .lock()
            .unwrap()
            .get(&name)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move {
            Ok(kindex_proto::ListPoliciesResponse {
                store_json: String::from_utf8(store.to_bytes()).unwrap(),
                checksum: store.checksum(),
                applied_index: 0,
            })
        })
    }
    fn change_policy<'a>(
        &'a self,
        pod: &'a PodRef,
        req: kindex_proto::PolicyWriteRequest,
    ) -> BoxFuture<'a, Result<kindex_proto::PolicyWriteResponse, NodeError>> {
        self.record(format!(
            "ChangePolicy {} {} {} {} resource={}",
            pod.pod_name(),
            req.change,
            req.name,
            req.policy_json,
            req.from_resource
        ));
        let result = self.apply_policy(&pod.pod_name(), &req);
        Box::pin(async move {
            let version = result.map_err(|status| NodeError::Rpc {
                endpoint: pod.pod_name(),
                status,
            })?;
            Ok(kindex_proto::PolicyWriteResponse {
                name: req.name,
                version,
                applied_index: version,
            })
        })
    }
}

impl FakeNodes {
    /// What a shard leader does with `ChangePolicy`: the Admin API's checks, then the change
    /// applied to its store (`Ok(version)`), or the error status.
    fn apply_policy(
        &self,
        pod: &str,
        req: &kindex_proto::PolicyWriteRequest,
    ) -> Result<u64, String> {
        use kindex_node::policy::command::{PolicyCommand, PolicyOp, Source, parse_policy};
        if let Some(e) = self.policy_errors.lock().unwrap().get(pod) {
            return Err(e.clone());
        }
        let op = match kindex_proto::PolicyChange::try_from(req.change) {
            Ok(kindex_proto::PolicyChange::Put) => PolicyOp::Put,
            Ok(kindex_proto::PolicyChange::Delete) => PolicyOp::Delete,
            other => return Err(format!("unexpected change {other:?}")),
        };
        let policy = match op {
            PolicyOp::Put => Some(parse_policy(&req.policy_json)?),
            _ => None,
        };
        let mut stores = self.policy_stores.lock().unwrap();
        let store = stores.entry(pod.to_owned()).or_default();
        // The leader's stamp and the log index: one more than the last change.
        let next = store.clock_ms + 1;
        let cmd = PolicyCommand {
            v: kindex_node::policy::COMMAND_VERSION,
            op,
            name: req.name.clone(),
            policy,
            restore: None,
            prune: None,
            expected_version: None,
            source: if req.from_resource {
                Source::Resource
            } else {
                Source::Api
            },
            actor: req.actor.clone(),
            stamp_ms: next,
        };
        store.apply(&cmd, next).map_err(|e| e.to_string())
    }
}
