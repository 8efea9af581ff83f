//! Node errors as gRPC statuses (the one mapping every API uses; the HTTP API maps statuses
//! to HTTP codes), and what `Info` reports.

use kindex_proto as pb;
use tonic::Status;

use crate::engine::limits::InputError;
use crate::node::LEADER_HEADER;
use crate::node::LEADER_ID_HEADER;
use crate::node::Node;
use crate::node::NodeError;
use crate::node::QUORUM_LOST_HEADER;
use crate::node::QUOTA_EXCEEDED_HEADER;

/// Invalid input, as every API answers it.
pub fn invalid(e: InputError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn status_of(e: NodeError) -> Status {
    use crate::engine::EngineError;
    match e {
        NodeError::UnknownIndex { .. } => Status::not_found(e.to_string()),
        NodeError::Engine(EngineError::Input(i)) => Status::invalid_argument(i.to_string()),
        NodeError::Engine(EngineError::ShuttingDown | EngineError::Storage(_))
        | NodeError::Unavailable(_) => Status::unavailable(e.to_string()),
        NodeError::QuorumLost(_) => {
            let mut s = Status::unavailable(e.to_string());
            s.metadata_mut().insert(
                QUORUM_LOST_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            s
        }
        NodeError::Engine(EngineError::Full) | NodeError::VolumeFull(_) => {
            Status::resource_exhausted(e.to_string())
        }
        NodeError::QuotaExceeded(_) => {
            let mut s = Status::resource_exhausted(e.to_string());
            s.metadata_mut().insert(
                QUOTA_EXCEEDED_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            s
        }
        NodeError::NotFound(_) => Status::not_found(e.to_string()),
        NodeError::Conflict(_) => Status::aborted(e.to_string()),
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
