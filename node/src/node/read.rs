//! Reads: the consistency step (barriers) and local get/search.

use std::sync::Arc;
use std::time::Duration;

use kindex_proto as pb;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;

use crate::engine::Engine;
use crate::engine::EngineError;
use crate::engine::Hit;
use crate::engine::StoredPoint;
use crate::engine::filter::Filter;

use super::*;

impl Node {
    // ---------------------------------------------------------------- reads

    /// Makes a local read satisfy `consistency` (see the module docs of `server::grpc`):
    /// eventual = nothing; session = wait (bounded) until this replica applied the token's index;
    /// linearizable = leader read-index check; unspecified = session with a token, else a
    /// leader lease read (read-your-writes by default).
    pub async fn read_barrier(
        &self,
        consistency: i32,
        token: Option<&pb::ConsistencyToken>,
    ) -> Result<(), NodeError> {
        let c = pb::Consistency::try_from(consistency).map_err(|_| {
            NodeError::InvalidArgument(format!("unknown consistency {consistency}"))
        })?;
        let want = token
            .and_then(|t| t.shards.iter().find(|s| s.shard == self.shard))
            .map(|s| s.applied_index);
        match (c, want) {
            (pb::Consistency::Eventual, _) => Ok(()),
            (pb::Consistency::Session | pb::Consistency::Unspecified, Some(idx)) => {
                self.session_barrier(idx).await
            }
            // A session token without an entry for this shard: nothing to wait for here.
            (pb::Consistency::Session, None) => Ok(()),
            // The default: served by the leader under its lease (no quorum round trip) once it
            // has applied everything it committed, so a client reads its acknowledged writes.
            // A stale lease (leader cut off) falls back to a read-index round.
            (pb::Consistency::Unspecified, None) => {
                match self.linearize(ReadPolicy::LeaseRead).await {
                    Err(NodeError::Unavailable(_)) => self.linearize(ReadPolicy::ReadIndex).await,
                    other => other,
                }
            }
            (pb::Consistency::Linearizable, _) => self.linearize(ReadPolicy::ReadIndex).await,
        }
    }

    /// Confirms leadership under `policy` and waits until the read point is applied; a
    /// follower gets `NotLeader` (naming the leader when known).
    async fn linearize(&self, policy: ReadPolicy) -> Result<(), NodeError> {
        let res = tokio::time::timeout(LEADER_WAIT, self.raft.ensure_linearizable(policy))
            .await
            .map_err(|_| {
                NodeError::Unavailable(
                    "linearizable read: no quorum confirmed the leader in time".into(),
                )
            })?;
        match res {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(self.not_leader(f.leader_id.filter(|id| *id != self.node_id), f.leader_node))
            }
            Err(RaftError::APIError(e)) => {
                Err(NodeError::Unavailable(format!("linearizable read: {e}")))
            }
            Err(RaftError::Fatal(f)) => Err(NodeError::Unavailable(format!("raft stopped: {f}"))),
        }
    }

    /// A session read at log index `index`. An index this replica has in its log is waited
    /// for (bounded). An index beyond it is either not replicated here yet (a lagging
    /// follower: the read goes to the leader, which has every acknowledged write) or was
    /// never written: the leader, once sure it still leads, refuses an index beyond its last
    /// log index at once instead of letting the client wait and retry for nothing.
    async fn session_barrier(&self, index: u64) -> Result<(), NodeError> {
        if self.applied_index() >= index {
            return Ok(());
        }
        let (last_log, leader) = {
            let m = self.raft.metrics().borrow_watched().clone();
            (m.last_log_index.unwrap_or(0), m.current_leader)
        };
        if index <= last_log {
            return self.wait_applied(index, SESSION_WAIT).await;
        }
        match leader {
            Some(l) if l == self.node_id => {
                // A deposed leader's log may end before a newer leader's: confirm first.
                self.linearize(ReadPolicy::ReadIndex).await?;
                let last_log = self
                    .raft
                    .metrics()
                    .borrow_watched()
                    .last_log_index
                    .unwrap_or(0);
                if index > last_log {
                    return Err(NodeError::InvalidArgument(format!(
                        "the session token names log index {index} of shard {}, beyond the \
                         shard leader's last log index {last_log}: it was not issued by this \
                         index (or its data was replaced)",
                        self.shard
                    )));
                }
                self.wait_applied(index, SESSION_WAIT).await
            }
            Some(l) => Err(self.not_leader(Some(l), None)),
            // No leader known (election): nothing can tell yet; wait as for lag.
            None => self.wait_applied(index, SESSION_WAIT).await,
        }
    }

    /// Waits (bounded) until this replica applied `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), NodeError> {
        if self.applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "session read")
            .await
            .map(drop)
            .map_err(|_| {
                NodeError::Unavailable(format!(
                    "this replica has applied up to log index {}, the session token needs {index}; \
                     retry, or read from another replica",
                    self.applied_index()
                ))
            })
    }

    pub fn get(&self, ids: &[String]) -> Result<Vec<StoredPoint>, NodeError> {
        crate::engine::limits::check_batch_len(ids.len()).map_err(EngineError::from)?;
        let engine = self.engine();
        let expiry = self.expiry_now();
        Ok(ids
            .iter()
            .filter_map(|id| engine.get_unexpired(id, &expiry))
            .collect())
    }

    /// Search; returns the engine the hits' slots refer to.
    pub fn search(
        &self,
        vector: &[f32],
        k: usize,
        ef: Option<usize>,
        rescore: Option<usize>,
        filter: &Filter,
    ) -> Result<(Vec<Hit>, Arc<Engine>), NodeError> {
        let engine = self.engine();
        let expiry = self.expiry_now();
        let opts = crate::engine::SearchOpts {
            ef,
            rescore,
            hide: (!expiry.is_empty()).then(|| Arc::new(expiry)),
        };
        let hits = engine.search_with(vector, k, opts, filter)?;
        Ok((hits, engine))
    }
}
