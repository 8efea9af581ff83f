//! Metrics of the Raft member and graceful shutdown.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use std::time::SystemTime;

use openraft::ServerState;

use crate::metrics::RaftGauges;
use crate::raft::NodeId;

use super::*;

impl Node {
    /// Raft state for `/metrics`.
    pub fn raft_gauges(&self) -> RaftGauges {
        let m = self.raft_metrics();
        let last = m.last_log_index.unwrap_or(0);
        let replication_lag = crate::raft::shard::replication_lag(&m)
            .into_iter()
            .collect();
        let snap = self.snapshot_info();
        let snapshot_age_secs = snap
            .as_ref()
            .and_then(|s| s.saved_at)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs());
        RaftGauges {
            role: crate::metrics::role_code(role_name(m.state)),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: last,
            committed_index: m.local_committed.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            replication_lag,
            log_bytes: dir_size(&self.data_dir.join("raft-log")),
            snapshot_age_secs,
            snapshot_bytes: snap.map(|s| s.bytes),
            snapshots_set_aside: self.store.set_aside().map_or(0, |v| v.len() as u64),
            volume: self.volume(),
        }
    }

    pub fn render_metrics(&self) -> String {
        let gauges = self.raft_gauges();
        self.metrics.set_policies(&self.state.policies());
        self.metrics.render(&self.engine(), Some(&gauges))
    }

    // ---------------------------------------------------------------- shutdown

    /// Graceful stop: no more writes, hand leadership to a caught-up voter, drain the indexing
    /// queue, snapshot, stop Raft (the log store is closed when this returns).
    pub async fn shutdown(&self, drain_timeout: Duration) -> Result<(), NodeError> {
        self.begin_stop();
        self.hand_over_leadership().await;
        let engine = self.engine();
        let drained = tokio::task::spawn_blocking(move || engine.drain(drain_timeout))
            .await
            .unwrap_or(false);
        if !drained {
            tracing::warn!(
                "indexing queue not drained in time; the snapshot re-queues the rest on start"
            );
        }
        if self.raft.is_initialized().await.unwrap_or(false) {
            match self.trigger_snapshot(Duration::from_secs(300)).await {
                Ok(s) => {
                    tracing::info!(path = %s.path.display(), bytes = s.bytes, log_id = ?s.log_id, "shutdown snapshot")
                }
                Err(NodeError::FailedPrecondition(_)) => {}
                Err(e @ NodeError::VolumeFull(_)) => {
                    tracing::warn!(error = %e, "no shutdown snapshot; the log is replayed on start")
                }
                Err(e) => {
                    tracing::error!(error = %e, "shutdown snapshot failed; the log is replayed on start")
                }
            }
        }
        if let Some(shard) = self.shard_handle.lock().await.take() {
            shard.shutdown().await.map_err(NodeError::Raft)?;
        }
        let engine = self.engine();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        Ok(())
    }

    /// If this node leads a group with other voters, transfer leadership to the voter that is
    /// furthest along, so the shard does not wait for an election timeout.
    async fn hand_over_leadership(&self) {
        let m = self.raft_metrics();
        if m.current_leader != Some(self.node_id) {
            return;
        }
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let best = m.replication.as_ref().and_then(|r| {
            r.iter()
                .filter(|(id, _)| **id != self.node_id && voters.contains(id))
                .max_by_key(|(_, matched)| matched.map_or(0, |l| l.index))
                .map(|(id, _)| *id)
        });
        if let Some(to) = best {
            match self.transfer_leader(to, Duration::from_secs(5)).await {
                Ok(msg) => tracing::info!("{msg}"),
                Err(e) => tracing::warn!(error = %e, "leadership hand-over before shutdown failed"),
            }
        }
    }
}

pub fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
