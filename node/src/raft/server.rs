//! Incoming Raft RPCs: the tonic `kindex.v1.Raft` service, handing decoded messages to openraft.

use std::fmt::Display;
use std::sync::Arc;

use futures::StreamExt;
use kindex_proto::FetchSnapshotRequest;
use kindex_proto::RaftReply;
use kindex_proto::RaftRequest;
use kindex_proto::SnapshotChunk;
use kindex_proto::raft_server::Raft as RaftRpc;
use kindex_proto::raft_server::RaftServer;
use openraft::async_runtime::WatchReceiver;
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
use super::transfer::TransferError;
use super::wire;
use crate::snapshot::store::SnapshotStore;

/// The gRPC service of one Raft member.
pub struct RaftGrpcService<S: ShardState> {
    /// This member's node id: messages addressed to another id are refused.
    id: super::NodeId,
    /// When a message for another member was last logged.
    misaddressed_logged: Arc<parking_lot::Mutex<Option<Instant>>>,
    raft: KindexRaft<S>,
    /// The state machine's snapshot store: snapshots are received into it, so installing one
    /// is a rename on the same filesystem.
    store: SnapshotStore,
    cfg: Arc<NetworkConfig>,
}

impl<S: ShardState> RaftGrpcService<S> {
    pub fn new(
        id: super::NodeId,
        raft: KindexRaft<S>,
        store: SnapshotStore,
        cfg: NetworkConfig,
    ) -> Self {
        Self {
            id,
            misaddressed_logged: Arc::default(),
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
    /// Refuse a message meant for another member. A replica whose volume was lost comes
    /// back empty, at the same address, under a new node id; the rest of the group still
    /// sends it the old member's messages until the operator replaces that member. Were it
    /// to answer them (a vote above all), an empty log would count as the old member's and
    /// could elect a leader that lacks committed entries. Messages without the header
    /// (builds before it) are accepted.
    fn check_addressee(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(to) = md.get(super::network::ADDRESSEE) else {
            return Ok(());
        };
        match to
            .to_str()
            .ok()
            .and_then(|t| t.parse::<super::NodeId>().ok())
        {
            Some(to) if to == self.id => Ok(()),
            Some(to) => {
                let msg = super::network::misrouted(to, self.id);
                // The old member's peers retry every heartbeat: say it every 10 s at most.
                let mut last = self.misaddressed_logged.lock();
                if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
                    *last = Some(Instant::now());
                    tracing::warn!("refused: {msg}; the operator replaces node {to} by this one");
                }
                Err(Status::failed_precondition(msg))
            }
            None => Err(bad_request(format!(
                "bad {} header",
                super::network::ADDRESSEE
            ))),
        }
    }

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

impl<S: ShardState> RaftGrpcService<S> {
    /// A full data volume takes no entries and no snapshot: what it cannot store it must not
    /// acknowledge (see [`crate::volume`]). The leader retries later; heartbeats still pass.
    fn check_volume(&self) -> Result<(), Status> {
        match self
            .cfg
            .volume
            .as_deref()
            .map(crate::volume::VolumeGuard::check)
        {
            Some(Err(full)) => Err(Status::resource_exhausted(full.to_string())),
            _ => Ok(()),
        }
    }

    /// The newest complete snapshot if it covers the log up to `min_index`; otherwise trigger
    /// one (again every 2 s while needed: a build already running ignores the trigger) once
    /// this member applied that far, and wait for it up to `fetch_serve_wait`.
    async fn snapshot_at_least(&self, min_index: u64) -> Result<Snapshot, Status> {
        let wait = self.cfg.fetch_serve_wait;
        let deadline = Instant::now() + wait;
        let mut last_trigger: Option<Instant> = None;
        loop {
            let snap = self
                .raft
                .get_snapshot()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let have = snap.as_ref().and_then(|s| s.meta.last_log_id);
            if let Some(s) = snap
                && have.is_some_and(|l| l.index >= min_index)
            {
                return Ok(s);
            }
            let have = have.map_or(0, |l| l.index);
            let applied = self.raft.metrics().borrow_watched().last_applied;
            let applied = applied.map_or(0, |l| l.index);
            if applied >= min_index {
                // No build on a full volume (it would stop this member); the peer asks another.
                self.check_volume()?;
            }
            if applied >= min_index
                && last_trigger.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2))
            {
                tracing::info!(
                    have,
                    min_index,
                    applied,
                    "snapshot fetch: taking a snapshot"
                );
                self.raft
                    .trigger()
                    .snapshot()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                last_trigger = Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return Err(Status::failed_precondition(format!(
                    "the newest snapshot here covers the log up to index {have}, the requester \
                     needs at least index {min_index} (applied here: {applied}); none within {wait:?}"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

type ChunkStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: ShardState> RaftRpc for RaftGrpcService<S> {
    type FetchSnapshotStream = ChunkStream;

    /// Streams the newest snapshot with the sender of InstallSnapshot (`read_chunks`); a read
    /// error ends the stream with an INTERNAL status instead of a trailer.
    async fn fetch_snapshot(
        &self,
        request: Request<FetchSnapshotRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = request.into_inner();
        if self.cfg.faults.is_cut(req.requester) {
            return Err(Status::unavailable(format!(
                "link from raft peer {} cut by fault injection",
                req.requester
            )));
        }
        let snapshot = self.snapshot_at_least(req.min_index).await.inspect_err(|e| {
            tracing::warn!(requester = req.requester, min_index = req.min_index, error = %e.message(), "snapshot fetch refused");
        })?;
        let vote = self.raft.metrics().borrow_watched().vote;
        tracing::info!(requester = req.requester, meta = %snapshot.meta, "serving a snapshot fetch");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let chunk = self.cfg.snapshot_chunk_bytes;
        let (dir, meta) = (snapshot.snapshot.path, snapshot.meta);
        let reader = tokio::task::spawn_blocking(move || {
            super::transfer::read_chunks(&dir, vote, meta, chunk, tx)
        });
        let outcome = futures::stream::once(async move {
            match reader.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(Status::internal(format!("reading snapshot: {e}")))),
                Err(e) => Some(Err(Status::internal(format!("snapshot reader: {e}")))),
            }
        })
        .filter_map(futures::future::ready);
        let chunks = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(chunks.chain(outcome))))
    }

    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.check_addressee(request.metadata())?;
        let rpc: AppendEntriesRequest<TypeConfig> =
            wire::decode(&request.into_inner().data).map_err(bad_request)?;
        self.check_link(&rpc.vote)?;
        if !rpc.entries.is_empty() {
            self.check_volume()?;
        }
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check_addressee(request.metadata())?;
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
        self.check_addressee(request.metadata())?;
        self.check_volume()?;
        let mut stream = request.into_inner();
        let received = super::transfer::receive(&self.store, &mut stream, &self.cfg).await;
        let (vote, meta, dir) = received.map_err(|e| {
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
