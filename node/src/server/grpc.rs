//! gRPC services: `Points` (data plane) and `Admin`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kindex_proto as pb;
use tonic::{Request, Response, Status};

use super::convert;
use crate::node::{Node, NodeError};

pub fn status_of(e: NodeError) -> Status {
    match e {
        NodeError::UnknownIndex { .. } => Status::not_found(e.to_string()),
        NodeError::Engine(crate::engine::EngineError::Input(i)) => {
            Status::invalid_argument(i.to_string())
        }
        NodeError::Engine(crate::engine::EngineError::ShuttingDown) | NodeError::Unavailable(_) => {
            Status::unavailable(e.to_string())
        }
        NodeError::Engine(crate::engine::EngineError::Full(_)) => {
            Status::resource_exhausted(e.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

fn invalid(e: crate::engine::InputError) -> Status {
    Status::invalid_argument(e.to_string())
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

    fn token(&self) -> pb::ConsistencyToken {
        pb::ConsistencyToken {
            shards: vec![pb::ShardIndex {
                shard: self.node.shard,
                applied_index: self.node.applied_index(),
            }],
        }
    }

    fn upsert_inner(&self, req: pb::UpsertRequest) -> Result<pb::WriteResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        let points = convert::points_in(req.points).map_err(invalid)?;
        let affected = self.node.upsert(&points).map_err(status_of)?;
        Ok(pb::WriteResponse {
            affected,
            token: Some(self.token()),
        })
    }

    fn search_inner(&self, req: pb::SearchRequest) -> Result<pb::SearchResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        let filter = convert::filter_in(req.filter).map_err(invalid)?;
        let hits = self
            .node
            .search(
                &req.vector,
                req.k as usize,
                req.ef_search.map(|e| e as usize),
                &filter,
            )
            .map_err(status_of)?;
        let engine = self.node.engine();
        Ok(pb::SearchResponse {
            hits: hits
                .into_iter()
                .map(|h| convert::hit_out(h, engine, req.with_vectors, req.with_payload))
                .collect(),
            failures: Vec::new(),
        })
    }
}

#[tonic::async_trait]
impl pb::points_server::Points for PointsService {
    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let t = Instant::now();
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || me.upsert_inner(request.into_inner()))
            .await
            .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
        self.observe("Upsert", t, &r);
        r.map(Response::new)
    }

    async fn upsert_stream(
        &self,
        request: Request<tonic::Streaming<pb::UpsertRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let t = Instant::now();
        let mut stream = request.into_inner();
        let mut affected = 0;
        let mut result = Ok(());
        while let Some(batch) = stream.message().await? {
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.upsert_inner(batch)).await {
                Ok(Ok(w)) => affected += w.affected,
                Ok(Err(s)) => {
                    result = Err(Status::new(
                        s.code(),
                        format!("after {affected} points were written: {}", s.message()),
                    ));
                    break;
                }
                Err(e) => {
                    result = Err(Status::internal(e.to_string()));
                    break;
                }
            }
        }
        let r = result.map(|_| pb::WriteResponse {
            affected,
            token: Some(self.token()),
        });
        self.observe("UpsertStream", t, &r);
        r.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let t = Instant::now();
        let req = request.into_inner();
        let r = self
            .node
            .check_index(&req.index)
            .and_then(|_| self.node.delete(&req.ids))
            .map(|affected| pb::WriteResponse {
                affected,
                token: Some(self.token()),
            })
            .map_err(status_of);
        self.observe("Delete", t, &r);
        r.map(Response::new)
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let t = Instant::now();
        let req = request.into_inner();
        let r = self
            .node
            .check_index(&req.index)
            .and_then(|_| self.node.get(&req.ids))
            .map(|pts| pb::GetResponse {
                points: pts
                    .into_iter()
                    .map(|p| convert::point_out(p, req.with_vectors, req.with_payload))
                    .collect(),
            })
            .map_err(status_of);
        self.observe("Get", t, &r);
        r.map(Response::new)
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let t = Instant::now();
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || me.search_inner(request.into_inner()))
            .await
            .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
        self.observe("Search", t, &r);
        r.map(Response::new)
    }

    async fn search_batch(
        &self,
        request: Request<pb::SearchBatchRequest>,
    ) -> Result<Response<pb::SearchBatchResponse>, Status> {
        let t = Instant::now();
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let searches = request.into_inner().searches;
            crate::engine::limits::check_batch_len(searches.len()).map_err(invalid)?;
            let results = searches
                .into_iter()
                .map(|s| me.search_inner(s))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pb::SearchBatchResponse { results })
        })
        .await
        .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
        self.observe("SearchBatch", t, &r);
        r.map(Response::new)
    }

    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let req = request.into_inner();
        self.node.check_index(&req.index).map_err(status_of)?;
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
    let s = node.engine().structural();
    pb::InfoResponse {
        index: node.index.clone(),
        dimension: s.dimension,
        metric: s.metric.to_string(),
        shards: s.shards,
        vectors: node.engine().count(),
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

pub fn status(node: &Node) -> pb::StatusResponse {
    let e = node.engine();
    let stats = e.stats();
    let last = node.last_snapshot();
    let applied = e.applied().unwrap_or_default();
    pb::StatusResponse {
        index: node.index.clone(),
        shard: node.shard,
        node_id: node.node_id,
        role: "leader".into(),
        term: applied.term,
        leader_id: Some(node.node_id),
        members: vec![pb::Member {
            node_id: node.node_id,
            addr: String::new(),
            voter: true,
        }],
        applied: Some(pb::LogId {
            term: applied.term,
            index: applied.index,
        }),
        committed: Some(pb::LogId {
            term: applied.term,
            index: applied.index,
        }),
        snapshot: Some(pb::LogId {
            term: 0,
            index: last.applied_index,
        }),
        vectors_indexed: stats.indexed as u64,
        vectors_queued: stats.queued as u64,
        vectors_live: stats.live,
        structural_hash: e.structural().hash(),
        last_snapshot_unix_ms: unix_ms(last.at),
        last_snapshot_bytes: last.bytes,
        content_checksum: e.content_checksum(),
        version: env!("CARGO_PKG_VERSION").into(),
        initialized: true,
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status(&self.node)))
    }

    async fn initialize(
        &self,
        _: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        Ok(Response::new(pb::AdminResponse {
            message: "standalone node is always initialized".into(),
            log_id: None,
        }))
    }

    async fn add_learner(
        &self,
        _: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        Err(Status::failed_precondition(
            "membership changes need a replicated shard (start with --peers)",
        ))
    }

    async fn change_membership(
        &self,
        _: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        Err(Status::failed_precondition(
            "membership changes need a replicated shard (start with --peers)",
        ))
    }

    async fn transfer_leader(
        &self,
        _: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        Err(Status::failed_precondition(
            "a standalone node has no other replica to lead",
        ))
    }

    async fn trigger_snapshot(
        &self,
        _: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let node = self.node.clone();
        let saved = tokio::task::spawn_blocking(move || node.snapshot())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status_of)?;
        let a = saved.manifest.applied.unwrap_or_default();
        Ok(Response::new(pb::SnapshotResponse {
            log_id: Some(pb::LogId {
                term: a.term,
                index: a.index,
            }),
            bytes: saved.bytes,
            path: saved.dir.display().to_string(),
        }))
    }
}
