//! What a node operation can fail with.

use crate::config::structural;
use crate::engine::EngineError;
use crate::raft::NodeId;
use crate::snapshot::SnapshotError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("unknown index {got:?}; this node serves {serves:?}")]
    UnknownIndex { got: String, serves: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Structural(#[from] structural::StructuralError),
    #[error("data dir {dir}: {reason}")]
    DataDir { dir: String, reason: String },
    #[error("{0}")]
    Unavailable(String),
    /// This node leads its shard but a majority of voters has not acknowledged it for a while:
    /// the write was not proposed. Definite (see `QUORUM_LOST_HEADER`): no other replica can
    /// do better, so coordinators pass it on instead of retrying the shard's replicas.
    #[error("{0}")]
    QuorumLost(String),
    /// This node cannot serve the request; the leader can (if known).
    #[error("{}", not_leader_message(*leader_id, leader_grpc.as_deref()))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_grpc: Option<String>,
    },
    /// The state machine refused the command (same on every replica); nothing changed.
    #[error("write rejected: {0}")]
    Rejected(String),
    /// A quota policy refused the write (at the leader's pre-check or when applied).
    #[error("{0}")]
    QuotaExceeded(String),
    /// This node's data volume is below its reserve (see [`crate::volume`]): it leads the
    /// shard and takes no write until space is freed. Nothing was proposed.
    #[error("{0}")]
    VolumeFull(String),
    #[error("{0}")]
    NotFound(String),
    /// A policy change with a stale `expectedVersion`, or to a policy of the other source.
    #[error("{0}")]
    Conflict(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Timeout(String),
    /// The leader's answer to a request this node forwarded.
    #[error("{}", .0.message())]
    Forwarded(tonic::Status),
}

impl From<crate::raft::Refusal> for NodeError {
    fn from(r: crate::raft::Refusal) -> NodeError {
        use crate::raft::RefusalKind;
        match r.kind {
            RefusalKind::Invalid => NodeError::Rejected(r.message),
            RefusalKind::Quota => NodeError::QuotaExceeded(r.message),
            RefusalKind::NotFound => NodeError::NotFound(r.message),
            RefusalKind::Conflict => NodeError::Conflict(r.message),
        }
    }
}

fn not_leader_message(id: Option<NodeId>, grpc: Option<&str>) -> String {
    match (id, grpc) {
        (Some(id), Some(addr)) => {
            format!("this replica is not the shard leader; the leader is node {id} at {addr}")
        }
        (Some(id), None) => {
            format!("this replica is not the shard leader; the leader is node {id}")
        }
        _ => "the shard has no leader right now (election in progress or no quorum); retry"
            .to_string(),
    }
}
