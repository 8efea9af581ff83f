//! Incoming Raft RPCs: the tonic `kindex.v1.Raft` service, handing decoded messages to openraft.

use std::fmt::Display;
use std::sync::Arc;

use kindex_proto::RaftReply;
use kindex_proto::RaftRequest;
use kindex_proto::SnapshotChunk;
use kindex_proto::raft_server::Raft as RaftRpc;
use kindex_proto::raft_server::RaftServer;
use openraft::raft::AppendEntriesRequest;
use serde::Serialize;
use tokio::time::Instant;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::KindexRaft;
use super::Snapshot;
use super::TypeConfig;
use super::network::NetworkConfig;
use super::network::VoteRpc;
use super::snapshot::SnapshotDir;
use super::state_machine::ShardState;
use super::transfer::Incoming;
use super::transfer::IncomingDir;
use super::transfer::TransferError;
use super::wire;
use crate::snapshot::store::SnapshotStore;

/// The gRPC service of one Raft member.
pub struct RaftGrpcService<S: ShardState> {
    raft: KindexRaft<S>,
    /// The state machine's snapshot store: snapshots are received into it, so installing one
    /// is a rename on the same filesystem.
    store: SnapshotStore,
    cfg: Arc<NetworkConfig>,
}

impl<S: ShardState> RaftGrpcService<S> {
    pub fn new(raft: KindexRaft<S>, store: SnapshotStore, cfg: NetworkConfig) -> Self {
        Self {
            raft,
            store,
            cfg: Arc::new(cfg),
        }
    }

    /// The tonic service, with message limits set for multi-MB AppendEntries.
    pub fn into_server(self) -> RaftServer<Self> {
        let max = self.cfg.max_message_bytes;
        RaftServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Receive a whole snapshot stream into an `incoming-*` dir.
    async fn receive_snapshot(
        &self,
        stream: &mut Streaming<SnapshotChunk>,
    ) -> Result<(super::Vote, super::SnapshotMeta, IncomingDir), TransferError> {
        let deadline = Instant::now() + self.cfg.snapshot_timeout;
        let idle = self.cfg.snapshot_idle_timeout;
        let first = next_chunk(stream, deadline, idle).await?;
        let mut incoming =
            Incoming::begin(&self.store, &first, self.cfg.max_snapshot_bytes).await?;
        tracing::info!(meta = %incoming.header().meta, files = incoming.header().files.len(), "receiving snapshot");
        loop {
            let chunk = next_chunk(stream, deadline, idle).await?;
            if chunk.done {
                return incoming.finish(&chunk).await;
            }
            incoming.write(&chunk).await?;
        }
    }
}

/// The next chunk, within the idle timeout and the transfer deadline.
async fn next_chunk(
    stream: &mut Streaming<SnapshotChunk>,
    deadline: Instant,
    idle: std::time::Duration,
) -> Result<SnapshotChunk, TransferError> {
    let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
    match tokio::time::timeout(wait, stream.message()).await {
        Err(_) => Err(TransferError::Protocol(format!("no chunk within {wait:?}"))),
        Ok(Err(status)) => Err(TransferError::Protocol(format!("stream broken: {status}"))),
        Ok(Ok(None)) => Err(TransferError::Protocol(
            "stream ended without a final chunk".into(),
        )),
        Ok(Ok(Some(c))) => Ok(c),
    }
}

/// Encode a handler's outcome: the response, or the error as text.
fn reply<T: Serialize, E: Display>(res: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let reply = match res
        .map_err(|e| e.to_string())
        .and_then(|v| wire::encode(&v).map_err(|e| e.to_string()))
    {
        Ok(data) => RaftReply {
            data,
            error: String::new(),
        },
        Err(error) => RaftReply {
            data: vec![],
            error,
        },
    };
    Ok(Response::new(reply))
}

fn bad_request(e: impl Display) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

impl<S: ShardState> RaftGrpcService<S> {
    /// Fault injection: refuse a message from a peer whose link is cut.
    fn check_link(&self, from: &super::Vote) -> Result<(), Status> {
        let peer = from.leader_id.node_id;
        if self.cfg.faults.is_cut(peer) {
            Err(Status::unavailable(format!(
                "link from raft peer {peer} cut by fault injection"
            )))
        } else {
            Ok(())
        }
    }
}

#[tonic::async_trait]
impl<S: ShardState> RaftRpc for RaftGrpcService<S> {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            wire::decode(&request.into_inner().data).map_err(bad_request)?;
        self.check_link(&rpc.vote)?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        match wire::decode(&request.into_inner().data).map_err(bad_request)? {
            VoteRpc::Vote(rpc) => {
                self.check_link(&rpc.vote)?;
                reply(self.raft.vote(rpc).await)
            }
            VoteRpc::PreVote(rpc) => {
                self.check_link(&rpc.vote)?;
                reply(self.raft.pre_vote(rpc).await)
            }
            VoteRpc::TransferLeader(req) => {
                self.check_link(req.from_leader())?;
                reply(self.raft.handle_transfer_leader(req).await)
            }
        }
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut stream = request.into_inner();
        let (vote, meta, dir) = self.receive_snapshot(&mut stream).await.map_err(|e| {
            tracing::warn!(error = %e, "snapshot transfer refused");
            match e {
                TransferError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
                TransferError::Io(_) => Status::internal(e.to_string()),
                _ => Status::invalid_argument(e.to_string()),
            }
        })?;
        self.check_link(&vote)?;
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotDir {
                path: dir.path.clone(),
            },
        };
        let res = self.raft.install_full_snapshot(vote, snapshot).await;
        // If openraft did not install it (stale vote, older than committed), `dir` is removed here.
        drop(dir);
        reply(res)
    }
}
