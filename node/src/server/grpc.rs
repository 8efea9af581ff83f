//! gRPC services: `Points` (data plane) and `Admin`.
//!
//! Writes (`Upsert`, `UpsertStream`, `Delete`) are replicated through the shard's Raft group.
//! A follower forwards them to the leader (once: requests carrying the `kindex-forwarded`
//! metadata are never forwarded again); when it cannot, it answers `FailedPrecondition` with
//! the leader in the message and in the metadata `kindex-leader` (gRPC address) and
//! `kindex-leader-id`, or `Unavailable` when there is no leader (election, no quorum). The
//! write response's token holds `{shard, applied log index}`.
//!
//! Reads (`Get`, `Search`, `Count`) by `consistency`:
//! - `EVENTUAL`: this replica, as it is;
//! - `SESSION`: this replica once it has applied the token's index for this shard (waits up to
//!   5 s, then `Unavailable`); no entry for this shard in the token = eventual;
//! - `LINEARIZABLE`: the leader after a read-index round (confirms leadership with a quorum and
//!   waits until applied); a follower forwards the read to the leader;
//! - `UNSPECIFIED`: `SESSION` if a token is given, else `EVENTUAL`.
//!
//! `SearchBatch` applies each search's consistency on this node and does not forward.

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

use super::convert;
use crate::node::FORWARDED_HEADER;
use crate::node::LEADER_HEADER;
use crate::node::LEADER_ID_HEADER;
use crate::node::Node;
use crate::node::NodeError;
use crate::node::WriteOutcome;
use crate::raft::LogId;
use crate::raft::NodeId;
use crate::raft::PointRecord;

/// Timeout of a forwarded read.
const FORWARD_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub fn status_of(e: NodeError) -> Status {
    use crate::engine::EngineError;
    match e {
        NodeError::UnknownIndex { .. } => Status::not_found(e.to_string()),
        NodeError::Engine(EngineError::Input(i)) => Status::invalid_argument(i.to_string()),
        NodeError::Engine(EngineError::ShuttingDown) | NodeError::Unavailable(_) => {
            Status::unavailable(e.to_string())
        }
        NodeError::Engine(EngineError::Full(_)) => Status::resource_exhausted(e.to_string()),
        NodeError::NotLeader {
            leader_id: Some(id),
            ref leader_grpc,
        } => {
            let mut s = Status::failed_precondition(e.to_string());
            if let Ok(v) = id.to_string().parse() {
                s.metadata_mut().insert(LEADER_ID_HEADER, v);
            }
            if let Some(v) = leader_grpc.as_deref().and_then(|a| a.parse().ok()) {
                s.metadata_mut().insert(LEADER_HEADER, v);
            }
            s
        }
        NodeError::NotLeader {
            leader_id: None, ..
        } => Status::unavailable(e.to_string()),
        NodeError::Rejected(_) | NodeError::InvalidArgument(_) => {
            Status::invalid_argument(e.to_string())
        }
        NodeError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        NodeError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        NodeError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        NodeError::Forwarded(s) => s,
        other => Status::internal(other.to_string()),
    }
}

fn invalid(e: crate::engine::InputError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER)
}

fn records(points: Vec<pb::Point>) -> Vec<PointRecord> {
    points
        .into_iter()
        .map(|p| PointRecord {
            id: p.id,
            vector: p.vector,
            payload_json: p.payload_json,
        })
        .collect()
}

pub fn token(shard: u32, applied_index: u64) -> pb::ConsistencyToken {
    pb::ConsistencyToken {
        shards: vec![pb::ShardIndex {
            shard,
            applied_index,
        }],
    }
}

#[derive(Clone)]
pub struct PointsService {
    pub node: Arc<Node>,
}

impl PointsService {
    fn observe<T>(&self, method: &str, started: Instant, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()).to_lowercase(),
        };
        self.node
            .metrics
            .requests
            .with_label_values(&["grpc", method, &code])
            .observe(started.elapsed().as_secs_f64());
    }

    fn response(&self, w: WriteOutcome) -> pb::WriteResponse {
        pb::WriteResponse {
            affected: w.affected,
            token: Some(token(self.node.shard, w.applied_index)),
        }
    }

    async fn upsert_inner(
        &self,
        forwarded: bool,
        req: pb::UpsertRequest,
    ) -> Result<WriteOutcome, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        // Ids, dimensions, components and payloads are checked for the whole batch before
        // anything is proposed.
        self.node
            .upsert(records(req.points), forwarded)
            .await
            .map_err(status_of)
    }

    /// Apply `consistency`; `Some(leader)` when the read must be forwarded there.
    async fn barrier(
        &self,
        forwarded: bool,
        consistency: i32,
        token: Option<&pb::ConsistencyToken>,
    ) -> Result<Option<(NodeId, String)>, Status> {
        match self.node.read_barrier(consistency, token).await {
            Ok(()) => Ok(None),
            Err(e) => match self.node.read_forward_target(&e, forwarded) {
                Some(target) => Ok(Some(target)),
                None => Err(status_of(e)),
            },
        }
    }

    async fn search_local(&self, req: pb::SearchRequest) -> Result<pb::SearchResponse, Status> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            let filter = convert::filter_in(req.filter).map_err(invalid)?;
            let (hits, engine) = node
                .search(
                    &req.vector,
                    req.k as usize,
                    req.ef_search.map(|e| e as usize),
                    &filter,
                )
                .map_err(status_of)?;
            Ok(pb::SearchResponse {
                hits: hits
                    .into_iter()
                    .map(|h| convert::hit_out(h, &engine, req.with_vectors, req.with_payload))
                    .collect(),
                failures: Vec::new(),
            })
        })
        .await
        .unwrap_or_else(|e| Err(Status::internal(e.to_string())))
    }

    /// Sends a read to the leader (a linearizable read arriving at a follower).
    async fn forward_read<Req, Resp, F, Fut>(
        &self,
        leader: NodeId,
        addr: &str,
        req: Req,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(pb::points_client::PointsClient<tonic::transport::Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let client = self.node.points_client(addr).map_err(status_of)?;
        call(
            client,
            self.node.forwarded_request(req, FORWARD_READ_TIMEOUT),
        )
        .await
        .map_err(|s| status_of(self.node.forward_error(leader, addr, s)))
    }

    async fn search_inner(
        &self,
        forwarded: bool,
        req: pb::SearchRequest,
    ) -> Result<pb::SearchResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        if let Some((leader, addr)) = self
            .barrier(forwarded, req.consistency, req.token.as_ref())
            .await?
        {
            return self
                .forward_read(
                    leader,
                    &addr,
                    req,
                    |mut c, r| async move { c.search(r).await },
                )
                .await
                .map(Response::into_inner);
        }
        self.search_local(req).await
    }
}

#[tonic::async_trait]
impl pb::points_server::Points for PointsService {
    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let t = Instant::now();
        let forwarded = is_forwarded(&request);
        let r = self
            .upsert_inner(forwarded, request.into_inner())
            .await
            .map(|w| self.response(w));
        self.observe("Upsert", t, &r);
        r.map(Response::new)
    }

    async fn upsert_stream(
        &self,
        request: Request<tonic::Streaming<pb::UpsertRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let t = Instant::now();
        let forwarded = is_forwarded(&request);
        let mut stream = request.into_inner();
        let mut total = WriteOutcome::default();
        let mut result = Ok(());
        while let Some(batch) = stream.message().await? {
            match self.upsert_inner(forwarded, batch).await {
                Ok(w) => {
                    total.affected += w.affected;
                    total.applied_index = total.applied_index.max(w.applied_index);
                }
                Err(s) => {
                    let mut out = Status::new(
                        s.code(),
                        format!(
                            "after {} points were written: {}",
                            total.affected,
                            s.message()
                        ),
                    );
                    *out.metadata_mut() = s.metadata().clone();
                    result = Err(out);
                    break;
                }
            }
        }
        let r = result.map(|_| self.response(total));
        self.observe("UpsertStream", t, &r);
        r.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let t = Instant::now();
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let r = match self.node.check_index(&req.index) {
            Ok(()) => self
                .node
                .delete(req.ids, forwarded)
                .await
                .map(|w| self.response(w))
                .map_err(status_of),
            Err(e) => Err(status_of(e)),
        };
        self.observe("Delete", t, &r);
        r.map(Response::new)
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let t = Instant::now();
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let r = async {
            self.node.check_index(&req.index).map_err(status_of)?;
            if let Some((leader, addr)) = self
                .barrier(forwarded, req.consistency, req.token.as_ref())
                .await?
            {
                return self
                    .forward_read(leader, &addr, req, |mut c, r| async move { c.get(r).await })
                    .await
                    .map(Response::into_inner);
            }
            let pts = self.node.get(&req.ids).map_err(status_of)?;
            Ok(pb::GetResponse {
                points: pts
                    .into_iter()
                    .map(|p| convert::point_out(p, req.with_vectors, req.with_payload))
                    .collect(),
            })
        }
        .await;
        self.observe("Get", t, &r);
        r.map(Response::new)
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let t = Instant::now();
        let forwarded = is_forwarded(&request);
        let r = self.search_inner(forwarded, request.into_inner()).await;
        self.observe("Search", t, &r);
        r.map(Response::new)
    }

    async fn search_batch(
        &self,
        request: Request<pb::SearchBatchRequest>,
    ) -> Result<Response<pb::SearchBatchResponse>, Status> {
        let t = Instant::now();
        let searches = request.into_inner().searches;
        let r = async {
            crate::engine::limits::check_batch_len(searches.len()).map_err(invalid)?;
            let mut results = Vec::with_capacity(searches.len());
            for s in searches {
                self.node.check_index(&s.index).map_err(status_of)?;
                self.node
                    .read_barrier(s.consistency, s.token.as_ref())
                    .await
                    .map_err(status_of)?;
                results.push(self.search_local(s).await?);
            }
            Ok(pb::SearchBatchResponse { results })
        }
        .await;
        self.observe("SearchBatch", t, &r);
        r.map(Response::new)
    }

    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.node.check_index(&req.index).map_err(status_of)?;
        if let Some((leader, addr)) = self
            .barrier(forwarded, req.consistency, req.token.as_ref())
            .await?
        {
            return self
                .forward_read(
                    leader,
                    &addr,
                    req,
                    |mut c, r| async move { c.count(r).await },
                )
                .await;
        }
        Ok(Response::new(pb::CountResponse {
            count: self.node.engine().count(),
        }))
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let req = request.into_inner();
        self.node.check_index(&req.index).map_err(status_of)?;
        Ok(Response::new(info(&self.node)))
    }
}

pub fn info(node: &Node) -> pb::InfoResponse {
    use crate::engine::limits::*;
    let engine = node.engine();
    let s = engine.structural();
    pb::InfoResponse {
        index: node.index.clone(),
        dimension: s.dimension,
        metric: s.metric.to_string(),
        shards: s.shards,
        vectors: engine.count(),
        limits: Some(pb::Limits {
            max_batch: MAX_BATCH as u32,
            max_id_bytes: MAX_ID_BYTES as u32,
            max_payload_bytes: MAX_PAYLOAD_BYTES as u32,
            max_k: MAX_K as u32,
        }),
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
