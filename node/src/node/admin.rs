//! Admin RPCs: initialize, membership changes, leadership transfer, snapshots, members.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use std::time::UNIX_EPOCH;

use openraft::errors::ClientWriteError;
use openraft::errors::InitializeError;
use openraft::errors::RaftError;

use crate::raft;
use crate::raft::LogId;
use crate::raft::NodeId;

use super::*;

impl Node {
    // ---------------------------------------------------------------- admin

    /// Initialize the group (once, on one pristine node). Empty `members`: this node alone.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<String, NodeError> {
        let members = if members.is_empty() {
            BTreeMap::from([(self.node_id, self.advertise.clone())])
        } else {
            members
        };
        let nodes: BTreeMap<NodeId, raft::Member> = members
            .iter()
            .map(|(id, a)| (*id, raft::Member::new(a.clone())))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(format!(
                "initialized the shard's raft group with members {members:?}"
            )),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(
                NodeError::AlreadyExists(format!("the raft group is already initialized: {e}")),
            ),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(NodeError::InvalidArgument(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(NodeError::Unavailable(format!("raft stopped: {f}"))),
        }
    }

    fn membership_error(
        &self,
        e: RaftError<raft::TypeConfig, ClientWriteError<raft::TypeConfig>>,
    ) -> NodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                self.not_leader(f.leader_id.filter(|id| *id != self.node_id), f.leader_node)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                NodeError::FailedPrecondition(e.to_string())
            }
            RaftError::APIError(e) => NodeError::Raft(e.to_string()),
            RaftError::Fatal(f) => NodeError::Unavailable(format!("raft stopped: {f}")),
        }
    }

    /// Add a learner (leader only). `blocking`: also wait (bounded by `timeout`) until it has
    /// every entry the leader had when it was added.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: String,
        blocking: bool,
        timeout: Duration,
    ) -> Result<(String, LogId), NodeError> {
        if addr.is_empty() {
            return Err(NodeError::InvalidArgument("member address is empty".into()));
        }
        let resp = self
            .raft
            .add_learner(id, raft::Member::new(addr.clone()), blocking)
            .await
            .map_err(|e| self.membership_error(e))?;
        if blocking {
            let target = resp.log_id.index;
            self.raft
                .wait(Some(timeout))
                .metrics(
                    |m| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(&id))
                            .is_some_and(|matched| matched.is_some_and(|l| l.index >= target))
                    },
                    "learner caught up",
                )
                .await
                .map_err(|e| {
                    NodeError::Timeout(format!("learner {id} added but not caught up: {e}"))
                })?;
        }
        Ok((format!("node {id} at {addr} is a learner"), resp.log_id))
    }

    /// Replace the voters (leader only); removed voters are kept as learners if `retain`.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<NodeId>,
        retain: bool,
    ) -> Result<(String, LogId), NodeError> {
        if voters.is_empty() {
            return Err(NodeError::InvalidArgument(
                "the voter set must not be empty".into(),
            ));
        }
        let resp = self
            .raft
            .change_membership(voters.clone(), retain)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok((format!("voters are now {voters:?}"), resp.log_id))
    }

    /// Hand leadership to `to` (leader only) and wait (bounded) until it leads.
    pub async fn transfer_leader(
        &self,
        to: NodeId,
        timeout: Duration,
    ) -> Result<String, NodeError> {
        let m = self.raft_metrics();
        if m.current_leader != Some(self.node_id) {
            return Err(self.not_leader(m.current_leader, None));
        }
        if to == self.node_id {
            return Ok(format!("node {to} already leads"));
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == to)
        {
            return Err(NodeError::FailedPrecondition(format!(
                "node {to} is not a voter of the shard"
            )));
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|f| NodeError::Unavailable(format!("raft stopped: {f}")))?;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader == Some(to), "leadership transferred")
            .await
            .map_err(|e| NodeError::Timeout(format!("node {to} did not take over: {e}")))?;
        Ok(format!("node {to} leads now"))
    }

    /// Build a snapshot of everything applied so far (unless one exists), wait for it.
    pub async fn trigger_snapshot(&self, timeout: Duration) -> Result<SnapshotInfo, NodeError> {
        // A snapshot needs room for a second copy of the state; one that fails for lack of
        // space stops the Raft member (openraft treats it as a storage failure).
        self.check_volume()?;
        let m = self.raft_metrics();
        let Some(target) = m.last_applied else {
            return Err(NodeError::FailedPrecondition(
                "nothing applied yet: no snapshot to take".into(),
            ));
        };
        if m.snapshot.is_none_or(|s| s.index < target.index) {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|f| NodeError::Unavailable(format!("raft stopped: {f}")))?;
            self.raft
                .wait(Some(timeout))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= target.index),
                    "snapshot built",
                )
                .await
                .map_err(|e| NodeError::Timeout(format!("snapshot not built: {e}")))?;
        }
        self.snapshot_info()
            .ok_or_else(|| NodeError::Unavailable("snapshot built but not found on disk".into()))
    }

    /// The newest snapshot on disk (cached per directory).
    pub fn snapshot_info(&self) -> Option<SnapshotInfo> {
        let newest = self.store.list().ok()?.into_iter().next()?;
        let mut cache = self.snapshot_cache.lock();
        if let Some(c) = cache.as_ref().filter(|c| c.path == newest) {
            return Some(c.clone());
        }
        let log_id = raft::snapshot::read_raft_meta(&newest)
            .ok()?
            .meta
            .last_log_id;
        let bytes = raft::transfer::list_files(&newest)
            .map(|f| f.iter().map(|e| e.size).sum())
            .unwrap_or(0);
        let saved_at = crate::snapshot::read_manifest(&newest)
            .ok()
            .map(|m| UNIX_EPOCH + Duration::from_millis(m.saved_at_unix_ms));
        let info = SnapshotInfo {
            log_id,
            bytes,
            path: newest,
            saved_at,
        };
        *cache = Some(info.clone());
        Some(info)
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }
}
