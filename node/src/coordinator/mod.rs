//! The coordinator in every node: one endpoint for the whole sharded index (DESIGN §2).
//!
//! - Writes are split by owning shard (`routing::shard_of`) after the whole batch is
//!   validated; each part goes to that shard's leader (cached hint; a follower forwards once;
//!   retried with backoff across replicas on leader changes and restarts; upserts and deletes
//!   are idempotent, so a retry cannot double-apply). The answer's token holds every
//!   touched shard's applied log index. When some shards wrote and others did not, the error
//!   says which (a retry of the whole request is safe).
//! - Searches fan out to one replica per shard (eventual/session: replicas in rotation;
//!   default/linearizable: the leader) and the top-k lists are merged. Shards that do not
//!   answer are listed in `failures`; the hits are then partial, and said to be.
//! - `Get` and `Count` need every shard; a shard that does not answer fails the request with
//!   its number in the message.
//!
//! Requests between nodes carry the metadata `kindex-shard-local: <shard>` and are served by
//! the receiving replica for its shard only (`coordinator::local`).

pub mod local;
pub mod merge;
pub mod routing;
pub mod token;
pub mod topology;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use kindex_proto as pb;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::transport::Channel;

use self::local::LocalShard;
use self::routing::group_by_shard;
use self::topology::ShardSeeds;
use self::topology::Topology;
use self::topology::TopologyError;
use crate::api::convert;
use crate::api::status::invalid;
use crate::api::status::status_of;
use crate::api::validate;
use crate::api::validate::ValidPoint;
use crate::node::LEADER_HEADER;
use crate::node::Node;
use crate::node::QUORUM_LOST_HEADER;

/// Metadata marking a request from another node's coordinator: serve it for this shard only.
pub const SHARD_LOCAL_HEADER: &str = "kindex-shard-local";

/// How long a write keeps retrying a shard (leader election, restarting replicas).
const WRITE_BUDGET: Duration = Duration::from_secs(10);
/// How long a leader read keeps retrying.
const LEADER_READ_BUDGET: Duration = Duration::from_secs(8);
/// Deadline of one call to another node.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Searches of one `SearchBatch` in flight at once.
const BATCH_CONCURRENCY: usize = 8;
/// Background refresh of the other shards' members and leaders.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

type PointsClient = pb::points_client::PointsClient<Channel>;

/// Which replica of a shard should serve a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// The leader; retried (bounded by the budget) through elections.
    Leader(Duration),
    /// Any replica, in rotation; every replica tried once, then once more after a refresh.
    Any,
}

fn read_pick(consistency: i32, token: Option<&pb::ConsistencyToken>) -> Pick {
    match pb::Consistency::try_from(consistency) {
        Ok(pb::Consistency::Eventual | pb::Consistency::Session) => Pick::Any,
        Ok(pb::Consistency::Unspecified) if token.is_some() => Pick::Any,
        _ => Pick::Leader(LEADER_READ_BUDGET),
    }
}

/// Errors worth trying another replica (or the same one later) for.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::FailedPrecondition
    )
}

fn leader_hint(m: &tonic::metadata::MetadataMap) -> Option<String> {
    m.get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn on_shard(shard: u32, s: Status) -> Status {
    let mut out = Status::new(s.code(), format!("shard {shard}: {}", s.message()));
    *out.metadata_mut() = s.metadata().clone();
    out
}

pub struct Coordinator {
    node: Arc<Node>,
    local: LocalShard,
    shards: u32,
    topology: Topology,
}

impl Coordinator {
    /// `seeds`: gRPC addresses for the other shards (ignored for this node's own shard).
    pub fn new(node: Arc<Node>, mut seeds: ShardSeeds) -> Result<Arc<Coordinator>, TopologyError> {
        let shards = node.engine().structural().shards.max(1);
        seeds.remove(&node.shard);
        topology::check_complete(&seeds, shards, node.shard)?;
        let topology = Topology::new(
            seeds,
            (node.grpc_port(), node.admin_port()),
            node.channels().clone(),
        );
        Ok(Arc::new(Coordinator {
            local: LocalShard { node: node.clone() },
            node,
            shards,
            topology,
        }))
    }

    pub fn local(&self) -> &LocalShard {
        &self.local
    }

    /// Keeps the other shards' members and leaders fresh.
    pub fn spawn_refresh(self: &Arc<Self>) {
        if self.shards <= 1 {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(c) = me.upgrade() else { return };
                let shards: Vec<u32> = c.topology.shards().collect();
                for s in shards {
                    c.topology.refresh(s).await;
                }
                drop(c);
                tokio::time::sleep(REFRESH_EVERY).await;
            }
        });
    }

    /// Runs one operation on `shard`: on this node when it is ours, else on a replica picked
    /// by `pick`, retrying as described in the module docs.
    async fn call<Req, Resp, L, LF, R, RF>(
        &self,
        shard: u32,
        pick: Pick,
        req: Req,
        local: L,
        remote: R,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        L: Fn(Req) -> LF,
        LF: Future<Output = Result<Resp, Status>>,
        R: Fn(PointsClient, Request<Req>) -> RF,
        RF: Future<Output = Result<Response<Resp>, Status>>,
    {
        // This node's own shard: the node itself waits out elections and forwards to its
        // leader (see `Node::upsert`, `LocalShard`); retrying here would only stack waits.
        if shard == self.node.shard {
            return local(req).await.map_err(|s| {
                if self.shards > 1 {
                    on_shard(shard, s)
                } else {
                    s
                }
            });
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut passes = 0u32;
        loop {
            passes += 1;
            let mut last: Option<Status> = None;
            let leader_first = matches!(pick, Pick::Leader(_));
            for addr in self.topology.candidates(shard, leader_first) {
                let client = PointsClient::new(self.topology.points_channel(&addr)?)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20);
                let mut r = Request::new(req.clone());
                r.set_timeout(CALL_TIMEOUT);
                if let Ok(v) = shard.to_string().parse() {
                    r.metadata_mut().insert(SHARD_LOCAL_HEADER, v);
                }
                // The other shard checks the caller's API key, not ours (see `crate::auth`).
                crate::auth::attach(r.metadata_mut());
                let outcome = remote(client, r).await;
                let label = match &outcome {
                    Ok(_) => "ok",
                    Err(s) if retryable(s) => "retried",
                    Err(_) => "error",
                };
                self.count_call::<Req>(shard, label);
                match outcome {
                    // The shard's leader itself says its quorum is gone: no replica can do better.
                    Err(s) if s.metadata().contains_key(QUORUM_LOST_HEADER) => {
                        self.count_call::<Req>(shard, "failed");
                        return Err(on_shard(shard, s));
                    }
                    Ok(resp) => {
                        if let Some(l) = leader_hint(resp.metadata()) {
                            self.topology.set_leader(shard, Some(l));
                        }
                        return Ok(resp.into_inner());
                    }
                    Err(s) if retryable(&s) => {
                        let hint = leader_hint(s.metadata());
                        if hint.is_some() || Some(&addr) == self.topology.leader(shard).as_ref() {
                            self.topology.set_leader(shard, hint);
                        }
                        tracing::debug!(shard, addr, error = %s.message(), "shard call failed; trying another replica");
                        last = Some(s);
                    }
                    Err(s) => return Err(s),
                }
            }
            let last = last.unwrap_or_else(|| {
                Status::unavailable("no replica of this shard is known (check --shard-addrs)")
            });
            let give_up = match pick {
                Pick::Any => passes >= 2,
                Pick::Leader(budget) => started.elapsed() + backoff > budget,
            };
            if give_up {
                self.count_call::<Req>(shard, "failed");
                return Err(on_shard(shard, last));
            }
            self.topology.refresh(shard).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn count_call<Req>(&self, shard: u32, outcome: &str) {
        let op = std::any::type_name::<Req>()
            .rsplit("::")
            .next()
            .unwrap_or_default()
            .trim_end_matches("Request");
        self.node
            .metrics
            .shard_calls
            .with_label_values(&[&shard.to_string(), op, outcome])
            .inc();
    }

    // ------------------------------------------------------------------ writes

    pub async fn upsert(&self, req: pb::UpsertRequest) -> Result<pb::WriteResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        let structural = self.node.engine().structural().clone();
        let index = req.index;
        // The whole request is checked, once, before any shard sees a part of it; this node's
        // part goes on to its Raft group as it is (payloads parsed), the others as requests.
        let points = validate::upsert(
            structural.dimension as usize,
            structural.metric,
            convert::records(req.points),
        )
        .map_err(invalid)?;
        let parts = group_by_shard(points, self.shards, |p| p.id())
            .into_iter()
            .map(|(shard, points)| {
                let index = index.clone();
                (shard, Upsert { index, points })
            });
        self.write(
            parts,
            |r| async move { self.local.upsert_valid(r.points, false).await },
            |mut c, r| async move { c.upsert(r.map(Upsert::into_wire)).await },
        )
        .await
    }

    pub async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::WriteResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        validate::delete(&req.ids).map_err(invalid)?;
        let index = req.index;
        let parts = group_by_shard(req.ids, self.shards, String::as_str)
            .into_iter()
            .map(|(shard, ids)| {
                let index = index.clone();
                (shard, pb::DeleteRequest { index, ids })
            });
        self.write(
            parts,
            |r| async move { self.local.delete_valid(r, false).await },
            |mut c, r| async move { c.delete(r).await },
        )
        .await
    }

    /// Sends each shard its part of a write (to its leader, concurrently) and combines the
    /// answers.
    async fn write<Req, L, LF, R, RF>(
        &self,
        parts: impl Iterator<Item = (u32, Req)>,
        local: L,
        remote: R,
    ) -> Result<pb::WriteResponse, Status>
    where
        Req: Clone,
        L: Fn(Req) -> LF,
        LF: Future<Output = Result<pb::WriteResponse, Status>>,
        R: Fn(PointsClient, Request<Req>) -> RF,
        RF: Future<Output = Result<Response<pb::WriteResponse>, Status>>,
    {
        let (local, remote) = (&local, &remote);
        let calls = parts.map(|(shard, req)| async move {
            let r = self
                .call(shard, Pick::Leader(WRITE_BUDGET), req, local, remote)
                .await;
            (shard, r)
        });
        self.write_results(futures::future::join_all(calls).await)
    }

    /// One answer for a write that touched several shards.
    fn write_results(
        &self,
        results: Vec<(u32, Result<pb::WriteResponse, Status>)>,
    ) -> Result<pb::WriteResponse, Status> {
        let mut affected = 0;
        let mut tokens = Vec::new();
        let mut written = Vec::new();
        let mut failed: Option<Status> = None;
        for (shard, r) in results {
            match r {
                Ok(w) => {
                    affected += w.affected;
                    tokens.extend(w.token);
                    written.push(shard);
                }
                Err(s) => {
                    failed.get_or_insert(s);
                }
            }
        }
        match failed {
            None => Ok(pb::WriteResponse {
                affected,
                token: Some(pb::ConsistencyToken {
                    index: self.node.index.clone(),
                    shard_count: self.shards,
                    ..merge::tokens(tokens)
                }),
            }),
            Some(s) if written.is_empty() => Err(s),
            Some(s) => Err(Status::new(
                s.code(),
                format!(
                    "{} (the parts for shards {written:?} were written; retrying the whole \
                     request is safe: writes are idempotent)",
                    s.message()
                ),
            )),
        }
    }

    // ------------------------------------------------------------------ reads

    /// A session token must belong to this index and its shard layout (see [`token`]).
    fn check_token(&self, t: Option<&pb::ConsistencyToken>) -> Result<(), Status> {
        match t {
            Some(t) => token::check(t, &self.node.index, self.shards)
                .map_err(|e| Status::invalid_argument(e.to_string())),
            None => Ok(()),
        }
    }

    pub async fn get(&self, req: pb::GetRequest) -> Result<pb::GetResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        crate::engine::limits::check_batch_len(req.ids.len())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_token(req.token.as_ref())?;
        let pick = read_pick(req.consistency, req.token.as_ref());
        let mut unique = req.ids.clone();
        unique.sort_unstable();
        unique.dedup();
        let groups = group_by_shard(unique, self.shards, String::as_str);
        let parts = groups.into_iter().map(|(shard, ids)| {
            let part = pb::GetRequest { ids, ..req.clone() };
            self.call(
                shard,
                pick,
                part,
                |r| async move { self.local.get(r, false).await },
                |mut c, r| async move { c.get(r).await },
            )
        });
        let mut found: HashMap<String, pb::Point> = HashMap::new();
        for r in futures::future::join_all(parts).await {
            for p in r?.points {
                found.insert(p.id.clone(), p);
            }
        }
        // Request order, duplicates included, like a single shard answers.
        Ok(pb::GetResponse {
            points: req
                .ids
                .iter()
                .filter_map(|id| found.get(id).cloned())
                .collect(),
        })
    }

    pub async fn search(&self, req: pb::SearchRequest) -> Result<pb::SearchResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        // Bad queries fail once, here, instead of once per shard.
        let filter = convert::filter_in(req.filter.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let structural = self.node.engine().structural().clone();
        crate::engine::limits::check_query(
            structural.dimension as usize,
            structural.metric,
            &req.vector,
            req.k as usize,
            req.ef_search.map(|e| e as usize),
            &filter,
        )
        .and_then(|()| crate::engine::limits::check_rescore(req.rescore.map(|r| r as usize)))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_token(req.token.as_ref())?;
        let pick = read_pick(req.consistency, req.token.as_ref());
        let k = req.k as usize;
        let parts = (0..self.shards).map(|shard| {
            let part = req.clone();
            async move {
                let r = self
                    .call(
                        shard,
                        pick,
                        part,
                        |r| async move { self.local.search(r, false).await },
                        |mut c, r| async move { c.search(r).await },
                    )
                    .await;
                (shard, r)
            }
        });
        let mut lists = Vec::new();
        let mut failures = Vec::new();
        let mut first_error = None;
        for (shard, r) in futures::future::join_all(parts).await {
            match r {
                Ok(resp) => {
                    lists.push(resp.hits);
                    failures.extend(resp.failures);
                }
                Err(s) => {
                    failures.push(pb::ShardFailure {
                        shard,
                        message: s.message().to_string(),
                    });
                    first_error.get_or_insert(s);
                }
            }
        }
        match first_error {
            // Nothing answered: an error, not an empty result.
            Some(s) if lists.is_empty() => Err(s),
            // A shard refused the request itself (e.g. a session token beyond its log):
            // bad input, not a partial answer.
            Some(s) if s.code() == tonic::Code::InvalidArgument => Err(s),
            _ => Ok(pb::SearchResponse {
                hits: merge::top_k(lists, k),
                failures,
            }),
        }
    }

    pub async fn search_batch(
        &self,
        req: pb::SearchBatchRequest,
    ) -> Result<pb::SearchBatchResponse, Status> {
        crate::engine::limits::check_batch_len(req.searches.len())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let results: Vec<Result<pb::SearchResponse, Status>> =
            futures::stream::iter(req.searches.into_iter().map(|s| self.search(s)))
                .buffered(BATCH_CONCURRENCY)
                .collect()
                .await;
        let mut out = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            out.push(r.map_err(|s| {
                Status::new(
                    s.code(),
                    format!("search {i} of the batch: {}", s.message()),
                )
            })?);
        }
        Ok(pb::SearchBatchResponse { results: out })
    }

    pub async fn count(&self, req: pb::CountRequest) -> Result<pb::CountResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        self.check_token(req.token.as_ref())?;
        let pick = read_pick(req.consistency, req.token.as_ref());
        let parts = (0..self.shards).map(|shard| {
            self.call(
                shard,
                pick,
                req.clone(),
                |r| async move { self.local.count(r, false).await },
                |mut c, r| async move { c.count(r).await },
            )
        });
        let mut count = 0;
        for r in futures::future::join_all(parts).await {
            count += r?.count;
        }
        Ok(pb::CountResponse { count })
    }

    /// Index facts; `vectors` is the eventual total over all shards.
    pub async fn info(&self, req: pb::InfoRequest) -> Result<pb::InfoResponse, Status> {
        self.node.check_index(&req.index).map_err(status_of)?;
        let mut info = crate::api::status::info(&self.node);
        if self.shards > 1 {
            info.vectors = self
                .count(pb::CountRequest {
                    index: req.index,
                    consistency: pb::Consistency::Eventual as i32,
                    token: None,
                })
                .await?
                .count;
        }
        Ok(info)
    }
}

/// One shard's part of a validated upsert. Named like the RPC: `count_call` labels calls by
/// the request's type name.
#[derive(Clone)]
struct Upsert {
    index: String,
    points: Vec<ValidPoint>,
}

impl Upsert {
    fn into_wire(self) -> pb::UpsertRequest {
        pb::UpsertRequest {
            index: self.index,
            points: self.points.into_iter().map(ValidPoint::into_wire).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_picks_the_replica() {
        let t = pb::ConsistencyToken::default();
        assert_eq!(read_pick(pb::Consistency::Eventual as i32, None), Pick::Any);
        assert_eq!(read_pick(pb::Consistency::Session as i32, None), Pick::Any);
        assert_eq!(read_pick(0, Some(&t)), Pick::Any);
        assert!(matches!(read_pick(0, None), Pick::Leader(_)));
        assert!(matches!(
            read_pick(pb::Consistency::Linearizable as i32, Some(&t)),
            Pick::Leader(_)
        ));
        assert!(matches!(read_pick(99, None), Pick::Leader(_)));
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(retryable(&Status::unavailable("x")));
        assert!(retryable(&Status::failed_precondition("not leader")));
        assert!(!retryable(&Status::invalid_argument("bad")));
        assert!(!retryable(&Status::not_found("index")));
        assert!(!retryable(&Status::resource_exhausted("full")));
    }
}
