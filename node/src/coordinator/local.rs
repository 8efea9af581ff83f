//! Shard-local execution of the `Points` operations on this replica: what a node does for
//! its own shard, whether the request came from a client (through the coordinator) or from
//! another node's coordinator (metadata `kindex-shard-local`).
//!
//! Writes go through the shard's Raft group (a follower forwards them to the leader once).
//! Reads apply the consistency level (see `Node::read_barrier`); a read this replica cannot
//! serve (linearizable or default at a follower) is forwarded to the leader once.

use std::sync::Arc;
use std::time::Duration;

use kindex_proto as pb;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::routing::shard_of;
use crate::api::convert;
use crate::api::status::invalid;
use crate::api::status::status_of;
use crate::api::validate;
use crate::api::validate::ValidPoint;
use crate::node::Node;
use crate::raft::NodeId;

/// Timeout of a read forwarded to the leader.
const FORWARD_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct LocalShard {
    pub node: Arc<Node>,
}

impl LocalShard {
    /// Ids must belong to this shard: a misrouted point would be invisible to `Get` through
    /// the coordinator forever.
    fn check_owned<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<(), Status> {
        let shards = self.node.engine().structural().shards;
        if shards <= 1 {
            return Ok(());
        }
        for id in ids {
            let owner = shard_of(id, shards);
            if owner != self.node.shard {
                return Err(Status::invalid_argument(format!(
                    "point {id:?} belongs to shard {owner}, not to shard {} (send writes to any node \
                     without the kindex-shard-local header and it routes them)",
                    self.node.shard
                )));
            }
        }
        Ok(())
    }

    fn write_response(&self, affected: u64, applied_index: u64) -> pb::WriteResponse {
        pb::WriteResponse {
            affected,
            token: Some(super::token::issue(
                &self.node.index,
                self.node.engine().structural().shards.max(1),
                self.node.shard,
                applied_index,
            )),
        }
    }

    /// An upsert from another node (its coordinator, or a follower forwarding to us).
    pub async fn upsert(
        &self,
        req: pb::UpsertRequest,
        forwarded: bool,
    ) -> Result<pb::WriteResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        // Ids, dimensions, components and payloads are checked for the whole batch before
        // anything is proposed.
        let structural = self.node.engine().structural().clone();
        let points = validate::upsert(
            structural.dimension as usize,
            structural.metric,
            convert::records(req.points),
        )
        .map_err(invalid)?;
        self.upsert_valid(points, forwarded).await
    }

    /// An upsert validated by this node (`api::validate`), for this shard.
    pub async fn upsert_valid(
        &self,
        points: Vec<ValidPoint>,
        forwarded: bool,
    ) -> Result<pb::WriteResponse, Status> {
        self.check_owned(points.iter().map(ValidPoint::id))?;
        let w = self
            .node
            .upsert(points, forwarded)
            .await
            .map_err(status_of)?;
        Ok(self.write_response(w.affected, w.applied_index))
    }

    pub async fn delete(
        &self,
        req: pb::DeleteRequest,
        forwarded: bool,
    ) -> Result<pb::WriteResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        validate::delete(&req.ids).map_err(invalid)?;
        self.delete_valid(req, forwarded).await
    }

    /// A delete whose ids this node validated (`api::validate::delete`), for this shard.
    pub async fn delete_valid(
        &self,
        req: pb::DeleteRequest,
        forwarded: bool,
    ) -> Result<pb::WriteResponse, Status> {
        self.check_owned(req.ids.iter().map(String::as_str))?;
        let w = self
            .node
            .delete(req.ids, forwarded)
            .await
            .map_err(status_of)?;
        Ok(self.write_response(w.affected, w.applied_index))
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

    /// Sends a read to the leader (a read this follower cannot serve).
    async fn forward_read<Req, Resp, F, Fut>(
        &self,
        leader: NodeId,
        addr: &str,
        req: Req,
        call: F,
    ) -> Result<Resp, Status>
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
        .map(Response::into_inner)
        .map_err(|s| status_of(self.node.forward_error(leader, addr, s)))
    }

    /// A read under `consistency`: here, or forwarded to the leader when this replica cannot
    /// serve it (see `Node::read_barrier`).
    async fn read<Req, Resp, C, CF, H, HF>(
        &self,
        forwarded: bool,
        (consistency, token): (i32, Option<pb::ConsistencyToken>),
        req: Req,
        forward: C,
        here: H,
    ) -> Result<Resp, Status>
    where
        C: FnOnce(pb::points_client::PointsClient<tonic::transport::Channel>, Request<Req>) -> CF,
        CF: std::future::Future<Output = Result<Response<Resp>, Status>>,
        H: FnOnce(Req) -> HF,
        HF: std::future::Future<Output = Result<Resp, Status>>,
    {
        match self.barrier(forwarded, consistency, token.as_ref()).await? {
            Some((leader, addr)) => self.forward_read(leader, &addr, req, forward).await,
            None => here(req).await,
        }
    }

    pub async fn get(
        &self,
        req: pb::GetRequest,
        forwarded: bool,
    ) -> Result<pb::GetResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        let level = (req.consistency, req.token.clone());
        self.read(
            forwarded,
            level,
            req,
            |mut c, r| async move { c.get(r).await },
            |req| async move {
                let pts = self.node.get(&req.ids).map_err(status_of)?;
                Ok(pb::GetResponse {
                    points: pts
                        .into_iter()
                        .map(|p| convert::point_out(p, req.with_vectors, req.with_payload))
                        .collect(),
                })
            },
        )
        .await
    }

    /// Search this replica as it is (no consistency step).
    async fn search_here(&self, req: pb::SearchRequest) -> Result<pb::SearchResponse, Status> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            let filter = convert::filter_in(req.filter).map_err(invalid)?;
            let k = req.k as usize;
            let (ef, filter) = node
                .search_under_policies(k, req.ef_search.map(|e| e as usize), filter)
                .map_err(status_of)?;
            // `rescore` is checked by the engine (INVALID_ARGUMENT), also when this
            // replica is called directly; searchDefaults policies do not touch it.
            let rescore = req.rescore.map(|r| r as usize);
            let (hits, engine) = node
                .search(&req.vector, k, ef, rescore, &filter)
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

    pub async fn search(
        &self,
        req: pb::SearchRequest,
        forwarded: bool,
    ) -> Result<pb::SearchResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        let level = (req.consistency, req.token.clone());
        self.read(
            forwarded,
            level,
            req,
            |mut c, r| async move { c.search(r).await },
            |req| self.search_here(req),
        )
        .await
    }

    pub async fn count(
        &self,
        req: pb::CountRequest,
        forwarded: bool,
    ) -> Result<pb::CountResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        let level = (req.consistency, req.token.clone());
        self.read(
            forwarded,
            level,
            req,
            |mut c, r| async move { c.count(r).await },
            |_| async {
                Ok(pb::CountResponse {
                    count: self.node.engine().count(),
                })
            },
        )
        .await
    }
}
