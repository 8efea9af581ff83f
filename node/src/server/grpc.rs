//! gRPC services: `Points` (data plane) and `Admin`.
//!
//! A client may send any `Points` request to any node: the node's coordinator
//! (`crate::coordinator`) routes writes to the owning shards' leaders and fans reads out to
//! every shard. Within a shard, writes are replicated through its Raft group; a follower
//! forwards them to the leader (once: requests carrying the `kindex-forwarded` metadata are
//! never forwarded again); when it cannot, it answers `FailedPrecondition` with the leader in
//! the message and in the metadata `kindex-leader` (gRPC address) and `kindex-leader-id`, or
//! `Unavailable` when there is no leader (election, no quorum). A write response's token
//! holds `{shard, applied log index}` for every shard it touched; write responses carry the
//! shard leader in `kindex-leader` metadata.
//!
//! Reads (`Get`, `Search`, `Count`) by `consistency`, per shard:
//! - `EVENTUAL`: any replica, as it is;
//! - `SESSION`: a replica once it has applied the token's index for its shard (waits up to
//!   5 s, then `Unavailable`); no entry for a shard in the token = eventual there;
//! - `LINEARIZABLE`: the leader after a read-index round (confirms leadership with a quorum and
//!   waits until applied);
//! - `UNSPECIFIED` (the default): `SESSION` if a token is given, else the leader under its
//!   lease once it has applied what it committed: a client reads its own acknowledged writes.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use kindex_proto as pb;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::status::status_of;
use crate::auth;
use crate::auth::Access;
use crate::auth::ApiKeys;
use crate::coordinator::Coordinator;
use crate::coordinator::SHARD_LOCAL_HEADER;
use crate::coordinator::merge;
use crate::node::FORWARDED_HEADER;
use crate::node::LEADER_HEADER;
use crate::node::Node;
use crate::node::NodeError;
use crate::node::PolicyChange;
use crate::policy::PolicyOp;
use crate::policy::Source;
use crate::raft::LogId;
use crate::raft::NodeId;

fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER)
}

/// Which shard a request from another node's coordinator is meant for.
fn shard_local<T>(r: &Request<T>) -> Result<Option<u32>, Status> {
    match r.metadata().get(SHARD_LOCAL_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| Status::invalid_argument(format!("bad {SHARD_LOCAL_HEADER} metadata"))),
    }
}

/// The `Points` service: requests from clients go through the coordinator; requests from
/// other nodes (`kindex-shard-local`, or forwarded to this leader) are served for this shard.
/// With API keys on, every request — other nodes' included: they carry their caller's key —
/// needs a key allowing the method (see [`crate::auth`]).
#[derive(Clone)]
pub struct PointsService {
    pub coordinator: Arc<Coordinator>,
    pub keys: Option<Arc<ApiKeys>>,
    pub internal: InternalCalls,
}

/// Whether this listener serves calls from other nodes (the `kindex-shard-local` and
/// `kindex-forwarded` metadata, which make a replica answer for its own shard only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalCalls {
    /// Peer mTLS off: the metadata is honoured wherever it arrives (the network is trusted;
    /// nodes from before peer mTLS send it to the client port).
    Honoured,
    /// The client port with peer mTLS on: the metadata is refused — other nodes call the
    /// internal port, with a certificate.
    Refused,
    /// The internal (admin) port with peer mTLS on: every connection presented a certificate
    /// of the index's CA in its handshake.
    Peers,
}

/// How a request reached this node.
enum Via {
    Client,
    /// From another node: serve this shard only; `forwarded`: do not forward again.
    Node {
        forwarded: bool,
    },
}

impl PointsService {
    pub fn new(coordinator: Arc<Coordinator>) -> PointsService {
        PointsService {
            coordinator,
            keys: None,
            internal: InternalCalls::Honoured,
        }
    }

    /// See [`InternalCalls`].
    pub fn with_internal_calls(mut self, internal: InternalCalls) -> PointsService {
        self.internal = internal;
        self
    }

    /// Requires API keys (see [`crate::auth`]).
    pub fn with_api_keys(mut self, keys: Arc<ApiKeys>) -> PointsService {
        self.keys = Some(keys);
        self
    }

    /// Checks the request's key for `need`; returns its `authorization` value, which calls
    /// to other nodes made for it carry ([`auth::scope`]).
    fn authorize<T>(&self, r: &Request<T>, need: Access) -> Result<Option<String>, Status> {
        let value = match r.metadata().get(auth::AUTHORIZATION) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| auth::AuthError::Malformed.to_status())?
                    .to_string(),
            ),
        };
        auth::check(self.keys.as_deref(), value.as_deref(), need).map_err(|e| e.to_status())?;
        Ok(value)
    }

    fn node(&self) -> &Arc<Node> {
        &self.coordinator.local().node
    }

    fn via<T>(&self, r: &Request<T>) -> Result<Via, Status> {
        let forwarded = is_forwarded(r);
        let local = shard_local(r)?;
        if self.internal == InternalCalls::Refused && (forwarded || local.is_some()) {
            return Err(Status::permission_denied(format!(
                "{SHARD_LOCAL_HEADER} and {FORWARDED_HEADER} are calls between nodes: with peer mTLS on they are served on the internal port, to a peer certificate, not on the client port"
            )));
        }
        match local {
            Some(shard) if shard != self.node().shard => Err(Status::failed_precondition(format!(
                "this replica serves shard {}, not shard {shard}; the sender's shard addresses are wrong",
                self.node().shard
            ))),
            Some(_) => Ok(Via::Node { forwarded }),
            None if forwarded => Ok(Via::Node { forwarded }),
            None => Ok(Via::Client),
        }
    }

    fn observe<T>(&self, method: &str, started: Instant, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()).to_lowercase(),
        };
        self.node()
            .metrics
            .requests
            .with_label_values(&["grpc", method, &code])
            .observe(started.elapsed().as_secs_f64());
    }

    /// A write answered for this shard names the shard's leader, so coordinators can send the
    /// next write straight there.
    fn with_leader_hint<T>(&self, r: Result<T, Status>) -> Result<Response<T>, Status> {
        let mut resp = Response::new(r?);
        if let Some(addr) = self.node().leader().and_then(|l| l.grpc)
            && let Ok(v) = addr.parse()
        {
            resp.metadata_mut().insert(LEADER_HEADER, v);
        }
        Ok(resp)
    }
}

#[tonic::async_trait]
impl pb::points_server::Points for PointsService {
    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.authorize(&request, Access::Write)?;
        auth::scope(caller, async move {
            let t = Instant::now();
            let via = self.via(&request)?;
            let req = request.into_inner();
            let r = match via {
                Via::Client => self.coordinator.upsert(req).await,
                Via::Node { forwarded } => self.coordinator.local().upsert(req, forwarded).await,
            };
            self.observe("Upsert", t, &r);
            self.with_leader_hint(r)
        })
        .await
    }

    async fn upsert_stream(
        &self,
        request: Request<tonic::Streaming<pb::UpsertRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.authorize(&request, Access::Write)?;
        auth::scope(caller, async move {
            let t = Instant::now();
            let via = self.via(&request)?;
            let mut stream = request.into_inner();
            let mut affected = 0;
            let mut tokens = Vec::new();
            let mut result = Ok(());
            while let Some(batch) = stream.message().await? {
                let r = match via {
                    Via::Client => self.coordinator.upsert(batch).await,
                    Via::Node { forwarded } => {
                        self.coordinator.local().upsert(batch, forwarded).await
                    }
                };
                match r {
                    Ok(w) => {
                        affected += w.affected;
                        tokens.extend(w.token);
                    }
                    Err(s) => {
                        let mut out = Status::new(
                            s.code(),
                            format!("after {affected} points were written: {}", s.message()),
                        );
                        *out.metadata_mut() = s.metadata().clone();
                        result = Err(out);
                        break;
                    }
                }
            }
            let r = result.map(|_| pb::WriteResponse {
                affected,
                token: Some(merge::tokens(tokens)),
            });
            self.observe("UpsertStream", t, &r);
            self.with_leader_hint(r)
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.authorize(&request, Access::Write)?;
        auth::scope(caller, async move {
            let t = Instant::now();
            let via = self.via(&request)?;
            let req = request.into_inner();
            let r = match via {
                Via::Client => self.coordinator.delete(req).await,
                Via::Node { forwarded } => self.coordinator.local().delete(req, forwarded).await,
            };
            self.observe("Delete", t, &r);
            self.with_leader_hint(r)
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let caller = self.authorize(&request, Access::Read)?;
        auth::scope(caller, async move {
            let t = Instant::now();
            let via = self.via(&request)?;
            let req = request.into_inner();
            let r = match via {
                Via::Client => self.coordinator.get(req).await,
                Via::Node { forwarded } => self.coordinator.local().get(req, forwarded).await,
            };
            self.observe("Get", t, &r);
            r.map(Response::new)
        })
        .await
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let caller = self.authorize(&request, Access::Read)?;
        auth::scope(caller, async move {
            let t = Instant::now();
            let via = self.via(&request)?;
            let req = request.into_inner();
            let r = match via {
                Via::Client => self.coordinator.search(req).await,
                Via::Node { forwarded } => self.coordinator.local().search(req, forwarded).await,
            };
            self.observe("Search", t, &r);
            r.map(Response::new)
        })
        .await
    }

    async fn search_batch(
        &self,
        request: Request<pb::SearchBatchRequest>,
    ) -> Result<Response<pb::SearchBatchResponse>, Status> {
        let caller = self.authorize(&request, Access::Read)?;
        auth::scope(caller, async move {
            let t = Instant::now();
            let r = self.coordinator.search_batch(request.into_inner()).await;
            self.observe("SearchBatch", t, &r);
            r.map(Response::new)
        })
        .await
    }

    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let caller = self.authorize(&request, Access::Read)?;
        auth::scope(caller, async move {
            let t = Instant::now();
            let via = self.via(&request)?;
            let req = request.into_inner();
            let r = match via {
                Via::Client => self.coordinator.count(req).await,
                Via::Node { forwarded } => self.coordinator.local().count(req, forwarded).await,
            };
            self.observe("Count", t, &r);
            r.map(Response::new)
        })
        .await
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let caller = self.authorize(&request, Access::Read)?;
        auth::scope(caller, async move {
            self.coordinator
                .info(request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }
}

#[derive(Clone)]
pub struct AdminService {
    pub node: Arc<Node>,
}

fn unix_ms(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

fn log_id(l: Option<LogId>) -> Option<pb::LogId> {
    l.map(|l| pb::LogId {
        term: l.leader_id.term,
        index: l.index,
    })
}

pub async fn status(node: &Node) -> pb::StatusResponse {
    let m = node.raft_metrics();
    let engine = node.engine();
    let stats = engine.stats();
    let snap = node.snapshot_info().unwrap_or_default();
    pb::StatusResponse {
        index: node.index.clone(),
        shard: node.shard,
        node_id: node.node_id,
        role: crate::node::role_name(m.state).into(),
        term: m.current_term,
        leader_id: m.current_leader,
        members: node
            .members()
            .into_iter()
            .map(|mi| pb::Member {
                node_id: mi.id,
                addr: mi.addr,
                voter: mi.voter,
            })
            .collect(),
        applied: log_id(m.last_applied),
        committed: log_id(m.local_committed),
        snapshot: log_id(m.snapshot),
        vectors_indexed: stats.indexed as u64,
        vectors_queued: stats.queued as u64,
        vectors_live: stats.live,
        structural_hash: engine.structural().hash(),
        last_snapshot_unix_ms: unix_ms(snap.saved_at),
        last_snapshot_bytes: snap.bytes,
        content_checksum: engine.content_checksum(),
        version: env!("CARGO_PKG_VERSION").into(),
        initialized: node.raft().is_initialized().await.unwrap_or(false),
        last_log_index: m.last_log_index.unwrap_or(0),
        apply_digest: Some(crate::divergence::digest_to_pb(node.apply_digest())),
        divergence: node.divergence.found().map(Into::into),
        volume: node.volume().map(|v| pb::VolumeStatus {
            free_bytes: v.free,
            total_bytes: v.total,
            reserve_bytes: v.reserve,
            full: v.full(),
            message: node
                .check_volume()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        }),
        data_format: node.data_format(),
    }
}

/// This replica's policy store (Admin `ListPolicies`, HTTP `GET .../policies`).
pub fn policies_of(node: &Node) -> pb::ListPoliciesResponse {
    // Read the index first: the store is at least as new.
    let applied_index = node.applied_index();
    let store = node.policies();
    pb::ListPoliciesResponse {
        store_json: String::from_utf8(store.to_bytes()).unwrap_or_default(),
        checksum: store.checksum(),
        applied_index,
    }
}

fn admin(message: String, l: Option<LogId>) -> Response<pb::AdminResponse> {
    Response::new(pb::AdminResponse {
        message,
        log_id: log_id(l),
    })
}

/// How long a blocking `AddLearner` waits for the learner to catch up.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(600);
/// How long `TriggerSnapshot` waits for the snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status(&self.node).await))
    }

    /// Initializes the shard's Raft group with `members` (empty: this node alone). Once per
    /// group, on one node; `AlreadyExists` when it is initialized.
    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let mut members = BTreeMap::new();
        for m in request.into_inner().members {
            if m.addr.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "member {} has no address",
                    m.node_id
                )));
            }
            if members.insert(m.node_id, m.addr).is_some() {
                return Err(Status::invalid_argument(format!(
                    "member {} is listed twice",
                    m.node_id
                )));
            }
        }
        let msg = self.node.initialize(members).await.map_err(status_of)?;
        Ok(admin(msg, None))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let req = request.into_inner();
        let m = req
            .member
            .ok_or_else(|| Status::invalid_argument("member is required"))?;
        let (msg, l) = self
            .node
            .add_learner(m.node_id, m.addr, req.blocking, LEARNER_CATCH_UP)
            .await
            .map_err(status_of)?;
        Ok(admin(msg, Some(l)))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let req = request.into_inner();
        let voters: BTreeSet<NodeId> = req.voters.into_iter().collect();
        let (msg, l) = self
            .node
            .change_membership(voters, req.retain)
            .await
            .map_err(status_of)?;
        Ok(admin(msg, Some(l)))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let to = request.into_inner().to;
        let msg = self
            .node
            .transfer_leader(to, Duration::from_secs(15))
            .await
            .map_err(status_of)?;
        Ok(admin(msg, None))
    }

    /// The divergence guard: this node's digest at the caller's index, compared by the caller.
    async fn apply_digest(
        &self,
        request: Request<pb::ApplyDigestRequest>,
    ) -> Result<Response<pb::ApplyDigestResponse>, Status> {
        let req = request.into_inner();
        let index = req.digest.map_or(0, |d| d.index);
        let node = &self.node;
        node.record_features(req.node_id, req.features);
        Ok(Response::new(pb::ApplyDigestResponse {
            node_id: node.node_id,
            is_leader: node.raft_metrics().current_leader == Some(node.node_id),
            at_index: node
                .apply_digest_at(index)
                .map(crate::divergence::digest_to_pb),
            current: Some(crate::divergence::digest_to_pb(node.apply_digest())),
        }))
    }

    /// A policy change, proposed by the shard leader (a follower forwards it there once).
    async fn change_policy(
        &self,
        request: Request<pb::PolicyWriteRequest>,
    ) -> Result<Response<pb::PolicyWriteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let op = match pb::PolicyChange::try_from(req.change) {
            Ok(pb::PolicyChange::Put) => PolicyOp::Put,
            Ok(pb::PolicyChange::Delete) => PolicyOp::Delete,
            Ok(pb::PolicyChange::Restore) => PolicyOp::Restore,
            _ => {
                return Err(Status::invalid_argument(
                    "change must be PUT, DELETE or RESTORE",
                ));
            }
        };
        let change = PolicyChange {
            op,
            name: req.name.clone(),
            policy_json: req.policy_json.clone(),
            restore: req.restore_version,
            expected_version: req.expected_version,
            actor: if req.actor.is_empty() {
                "unknown".into()
            } else {
                req.actor.clone()
            },
            source: if req.from_resource {
                Source::Resource
            } else {
                Source::Api
            },
        };
        let name = req.name.clone();
        match self.node.change_policy(change).await {
            Ok(w) => Ok(Response::new(pb::PolicyWriteResponse {
                name,
                version: w.version,
                applied_index: w.applied_index,
            })),
            Err(NodeError::NotLeader {
                leader_id: Some(id),
                ..
            }) if !forwarded => {
                let addr = self
                    .node
                    .leader()
                    .filter(|l| l.id == id)
                    .and_then(|l| l.admin)
                    .ok_or_else(|| {
                        Status::unavailable("the shard leader's address is unknown; retry")
                    })?;
                let mut client = self.node.admin_client(&addr).map_err(status_of)?;
                let fwd = self.node.forwarded_request(req, Duration::from_secs(35));
                client.change_policy(fwd).await
            }
            Err(e) => Err(status_of(e)),
        }
    }

    async fn list_policies(
        &self,
        _: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        Ok(Response::new(policies_of(&self.node)))
    }

    /// Builds a snapshot covering everything applied so far (unless one exists) and waits for it.
    async fn trigger_snapshot(
        &self,
        _: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let s = self
            .node
            .trigger_snapshot(SNAPSHOT_WAIT)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SnapshotResponse {
            log_id: log_id(s.log_id),
            bytes: s.bytes,
            path: s.path.display().to_string(),
        }))
    }
}
