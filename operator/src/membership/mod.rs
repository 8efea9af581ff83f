//! Raft membership of one shard: a pure decision from observed state to at most one
//! step. A node id carries its pod's ordinal and its volume's incarnation
//! (`kindex_common::node_id`): a pod on a new, empty volume answers with a new id.
//!
//! Order of precedence:
//! 1. Not initialized: once pods `0..replicas` all answer and none is initialized,
//!    initialize the group on ordinal 0 with all of them as voters.
//! 2. Initialized: no step without a leader, or while a voter does not answer
//!    (a member coming back from a restart only makes us wait; one lost for longer
//!    than the pod-ready timeout is reported as degraded).
//! 3. Replacement: a voter whose pod answers under another id lost its volume; the new
//!    incarnation is added as a learner, catches up (a snapshot), and takes the old
//!    member's place in one membership change. The old one is never waited for, and the
//!    empty one never votes before it holds the log.
//! 4. Scale-up, lowest missing ordinal first: add it as a learner, wait until its
//!    applied index is within `max_lag` of the leader's, then promote it to voter.
//! 5. Scale-down, highest ordinal first: move leadership off a voter that is to go,
//!    then remove voters, never more per step than keeps a majority of the current
//!    voters (at least one, so 2 → 1 can finish).
//!
//! The StatefulSet never shrinks below a voter: [`statefulset_replicas`] keeps every
//! ordinal that is still a voter, so pods leave the Raft group before they are deleted.

mod decide;
mod size;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

pub use decide::{coming_back, decide, lag};
pub use size::{pdb_voters, statefulset_replicas};

/// One change to a shard, executed by the reconciler through the node's Admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `Initialize` on ordinal 0 with `members` as voters.
    Initialize { shard: u32, members: Vec<u64> },
    /// `AddLearner(id)` on the leader; `node` is the pod ordinal of `id`.
    AddLearner {
        shard: u32,
        leader: u32,
        node: u32,
        id: u64,
    },
    /// `ChangeMembership(voters)` on the leader, `voters` including `node`.
    Promote {
        shard: u32,
        leader: u32,
        node: u32,
        voters: Vec<u64>,
    },
    /// `ChangeMembership(voters)` on the leader: the member `old` of pod `node` replaced
    /// by that pod's new incarnation (in `voters`).
    Replace {
        shard: u32,
        leader: u32,
        node: u32,
        old: u64,
        voters: Vec<u64>,
    },
    /// `ChangeMembership(voters)` on the leader, without `removed`.
    RemoveVoters {
        shard: u32,
        leader: u32,
        removed: Vec<u64>,
        voters: Vec<u64>,
    },
    /// `TransferLeader(to_id)` on the leader `from`; `to` is the pod ordinal of `to_id`.
    TransferLeader {
        shard: u32,
        from: u32,
        to: u32,
        to_id: u64,
    },
    /// Delete a pod so the StatefulSet controller recreates it from the new template.
    DeletePod {
        shard: u32,
        ordinal: u32,
        pod: String,
    },
}

impl Action {
    pub fn shard(&self) -> u32 {
        match self {
            Action::Initialize { shard, .. }
            | Action::AddLearner { shard, .. }
            | Action::Promote { shard, .. }
            | Action::Replace { shard, .. }
            | Action::RemoveVoters { shard, .. }
            | Action::TransferLeader { shard, .. }
            | Action::DeletePod { shard, .. } => *shard,
        }
    }
    /// Ordinal of the pod the step is about (events name it).
    pub fn subject(&self) -> u32 {
        let first = |ids: &[u64]| ids.first().map(|&i| ordinal(i));
        match self {
            Action::Initialize { .. } => 0,
            Action::AddLearner { node, .. }
            | Action::Promote { node, .. }
            | Action::Replace { node, .. } => *node,
            Action::RemoveVoters {
                removed, leader, ..
            } => first(removed).unwrap_or(*leader),
            Action::TransferLeader { to, .. } => *to,
            Action::DeletePod { ordinal, .. } => *ordinal,
        }
    }
    /// Short name for metrics and event reasons.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Initialize { .. } => "Initialize",
            Action::AddLearner { .. } => "AddLearner",
            Action::Promote { .. } => "PromoteVoter",
            Action::Replace { .. } => "ReplaceMember",
            Action::RemoveVoters { .. } => "RemoveVoters",
            Action::TransferLeader { .. } => "TransferLeader",
            Action::DeletePod { .. } => "RestartPod",
        }
    }
}

/// Outcome of a decision for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Act(Action),
    /// Something is under way (pods starting, a learner catching up).
    Wait(String),
    /// Cannot proceed; the shard is degraded.
    Blocked(String),
    /// Nothing to do.
    Done,
}

/// Knobs of the decisions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Learners / restarted pods count as caught up within this many log entries.
    pub max_lag: u64,
    /// How long a restarting member may take before the shard counts as degraded.
    pub pod_ready_timeout: Duration,
    pub now: Timestamp,
}

/// The pod ordinal of a node id.
pub fn ordinal(id: u64) -> u32 {
    kindex_common::node_id::ordinal_of(id)
}

fn join(ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
