//! Outgoing Raft RPCs over gRPC (`kindex.v1.Raft`): openraft's `RaftNetworkFactory` and the
//! per-peer `RaftNetworkV2` client.
//!
//! - One lazily connected tonic `Channel` per peer address, cached and shared by every client
//!   openraft creates for that peer (replication, heartbeat, snapshot); tonic reconnects it.
//! - AppendEntries with entries gets `append_timeout` (multi-MB batches), at least openraft's
//!   own TTL (openraft passes only the heartbeat interval for appends).
//! - `Vote`, `PreVote` and `TransferLeader` share the proto's `Vote` RPC: its bytes are a
//!   [`VoteRpc`] envelope (the contract has no RPC of their own).
//! - Snapshots stream from their directory in chunks (see [`super::snapshot`]), bounded by
//!   `snapshot_timeout` and cancelled when openraft closes the replication.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kindex_proto::RaftReply;
use kindex_proto::RaftRequest;
use kindex_proto::raft_client::RaftClient;
use openraft::RPCTypes;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Timeout;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use parking_lot::Mutex;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::Member;
use super::NodeId;
use super::Snapshot;
use super::TypeConfig;
use super::Vote;
use super::fault::FaultSwitch;
use super::snapshot::SnapshotDir;
use super::wire;

/// Transport settings, shared by client and server.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub connect_timeout: Duration,
    /// Timeout of an AppendEntries that carries entries.
    pub append_timeout: Duration,
    /// Smallest timeout of any RPC (openraft's TTLs can be a few ms).
    pub min_rpc_timeout: Duration,
    /// Data bytes per snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Whole snapshot transfer (send or receive).
    pub snapshot_timeout: Duration,
    /// Receiver: longest wait for the next snapshot chunk.
    pub snapshot_idle_timeout: Duration,
    /// Receiver: largest snapshot accepted (sum of its files).
    pub max_snapshot_bytes: u64,
    /// gRPC message limit, both directions. Must exceed the log store's `append_batch_bytes`
    /// plus the largest single command.
    pub max_message_bytes: usize,
    /// FetchSnapshot server: how long to wait for a snapshot that covers the requested index
    /// (one is triggered) before answering FAILED_PRECONDITION.
    pub fetch_serve_wait: Duration,
    /// Start of a replica that must fetch a snapshot: how long to keep asking its peers.
    pub fetch_deadline: Duration,
    /// Fault injection (tests): peers whose links are cut, both directions. Default: none.
    pub faults: FaultSwitch,
    /// Peer mTLS (`--peer-tls-dir`): both ends of every Raft connection present a
    /// certificate of the index's CA. None: plain TCP.
    pub tls: Option<std::sync::Arc<crate::tls::PeerTls>>,
    /// The data volume's low-water mark (see [`crate::volume`]): while it is below, incoming
    /// entries and snapshots are refused (never acknowledged). None: not checked.
    pub volume: Option<std::sync::Arc<crate::volume::VolumeGuard>>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            append_timeout: Duration::from_secs(30),
            min_rpc_timeout: Duration::from_millis(500),
            snapshot_chunk_bytes: 1 << 20,
            snapshot_timeout: Duration::from_secs(30 * 60),
            snapshot_idle_timeout: Duration::from_secs(60),
            max_snapshot_bytes: 64 << 30,
            max_message_bytes: 64 << 20,
            fetch_serve_wait: Duration::from_secs(60),
            fetch_deadline: Duration::from_secs(120),
            faults: FaultSwitch::default(),
            tls: None,
            volume: None,
        }
    }
}

/// Payload of the `Vote` RPC.
#[derive(Debug, Serialize, Deserialize)]
pub enum VoteRpc {
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
}

/// Creates per-peer clients; holds the channel cache. Clone shares the cache.
#[derive(Clone)]
pub struct RaftNetworkFactoryImpl {
    id: NodeId,
    cfg: Arc<NetworkConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// The peer TLS generation the cached channels were made with.
    tls_generation: Arc<AtomicU64>,
}

impl RaftNetworkFactoryImpl {
    /// `id`: this node (only used in error reports).
    pub fn new(id: NodeId, cfg: NetworkConfig) -> Self {
        Self {
            id,
            cfg: Arc::new(cfg),
            channels: Arc::default(),
            tls_generation: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        // New peer certificates: new connections (see `PeerTls::generation`).
        if let Some(tls) = &self.cfg.tls
            && tls.generation() != self.tls_generation.swap(tls.generation(), Ordering::AcqRel)
        {
            channels.clear();
        }
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = connect_lazy(addr, &self.cfg)?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// A lazily connected channel to a peer's Raft endpoint (`host:port` or a URI).
pub(crate) fn connect_lazy(addr: &str, cfg: &NetworkConfig) -> Result<Channel, String> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok(match &cfg.tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(crate::tls::Connector::new(tls.clone())),
    })
}

/// A `kindex.v1.Raft` client with the message limits of `cfg`.
pub(crate) fn raft_client(channel: Channel, cfg: &NetworkConfig) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes)
}

impl RaftNetworkFactory<TypeConfig> for RaftNetworkFactoryImpl {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            addr: node.addr.clone(),
            factory: self.clone(),
            cfg: self.cfg.clone(),
        }
    }
}

/// The client to one peer.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    addr: String,
    /// Channels come from the factory's cache at each call (a lookup), so a peer
    /// certificate reload reaches running replication streams too.
    factory: RaftNetworkFactoryImpl,
    cfg: Arc<NetworkConfig>,
}

impl PeerClient {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        if self.cfg.faults.is_cut(self.target) {
            return Err(self.unreachable("link cut by fault injection"));
        }
        let ch = self
            .factory
            .channel(super::raft_addr_of(&self.addr))
            .map_err(Unreachable::from_string)?;
        Ok(raft_client(ch, &self.cfg))
    }

    fn timeout_err(&self, action: RPCTypes, timeout: Duration) -> Timeout<TypeConfig> {
        Timeout {
            action,
            id: self.id,
            target: self.target,
            timeout,
        }
    }

    fn unreachable(&self, what: impl std::fmt::Display) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!(
            "raft peer {} at {}: {what}",
            self.target, self.addr
        ))
    }

    /// One unary call: encode, send with a deadline, decode the reply.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: RPCTypes,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let timeout = timeout.max(self.cfg.min_rpc_timeout);
        let data = wire::encode(req).map_err(|e| NetworkError::<TypeConfig>::new(&e))?;
        let mut client = self.client()?;
        let mut request = tonic::Request::new(RaftRequest { data });
        request.set_timeout(timeout);
        address_to(&mut request, self.target);
        let fut = async {
            match action {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                _ => client.vote(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, fut).await {
            Err(_) => return Err(self.timeout_err(action, timeout).into()),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(self.timeout_err(action, timeout).into());
            }
            Ok(Err(status)) => {
                self.forget_if_misrouted(&status);
                return Err(self.unreachable(status).into());
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        decode_reply(reply).map_err(|e| self.unreachable(e).into())
    }

    /// Another member answered for this peer: its address now leads elsewhere (a pod IP
    /// reused, DNS not yet updated when the cached connection was made). Drop the cached
    /// channel so the next call connects, and resolves the name, again.
    fn forget_if_misrouted(&self, status: &tonic::Status) {
        if status.code() == tonic::Code::FailedPrecondition && status.message().contains(MISROUTED)
        {
            self.factory
                .channels
                .lock()
                .remove(super::raft_addr_of(&self.addr));
        }
    }
}

/// Part of the refusal of a message meant for another member (`RaftGrpcService`).
pub(crate) const MISROUTED: &str = "is not node";

/// The refusal of a message for node `to` by node `me` (the one text the sender matches).
pub(crate) fn misrouted(to: NodeId, me: NodeId) -> String {
    format!(
        "raft message for node {to} reached node {me}: this member {MISROUTED} {to} (a new \
         incarnation of its volume, or the address now leads to another member)"
    )
}

/// Metadata key naming the member a Raft message is for (see `RaftGrpcService`'s check).
pub(crate) const ADDRESSEE: &str = "kindex-raft-to";

/// Names the member `target` in the request, so that a new incarnation of it (an empty
/// volume at the same address, with a new node id) refuses messages meant for the old one.
fn address_to<T>(request: &mut tonic::Request<T>, target: NodeId) {
    request
        .metadata_mut()
        .insert(ADDRESSEE, tonic::metadata::MetadataValue::from(target));
}

/// Decode a `RaftReply`: the peer's error, or the encoded response.
pub(crate) fn decode_reply<T: DeserializeOwned>(reply: RaftReply) -> Result<T, String> {
    if !reply.error.is_empty() {
        return Err(format!("remote error: {}", reply.error));
    }
    wire::decode(&reply.data).map_err(|e| e.to_string())
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotDir;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(self.cfg.append_timeout)
        };
        self.call(RPCTypes::AppendEntries, &rpc, timeout).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::Vote, &VoteRpc::Vote(rpc), option.hard_ttl())
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::Vote, &VoteRpc::PreVote(rpc), option.hard_ttl())
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RPCTypes::TransferLeader,
            &VoteRpc::TransferLeader(req),
            option.hard_ttl(),
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption, // openraft's install_snapshot_timeout is per call, too short for GBs
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let dir = snapshot.snapshot.path.clone();
        let meta = snapshot.meta.clone();
        let chunk = self.cfg.snapshot_chunk_bytes;
        let reader = tokio::task::spawn_blocking(move || {
            super::transfer::read_chunks(&dir, vote, meta, chunk, tx)
        });

        let timeout = self.cfg.snapshot_timeout;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.set_timeout(timeout);
        address_to(&mut request, self.target);
        tracing::info!(target_node = self.target, meta = %snapshot.meta, "sending snapshot");
        let res = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            res = tokio::time::timeout(timeout, client.install_snapshot(request)) => res,
        };
        let reply = match res {
            Err(_) => return Err(self.timeout_err(RPCTypes::InstallSnapshot, timeout).into()),
            Ok(Err(status)) => {
                self.forget_if_misrouted(&status);
                // A local read failure (e.g. the snapshot was pruned mid-transfer) ends the stream
                // early and shows up here as the receiver's complaint; report the cause. Either
                // way it is retryable: openraft fetches the current snapshot again.
                if reader.is_finished()
                    && let Ok(Err(e)) = reader.await
                {
                    return Err(self.unreachable(format!("reading snapshot: {e}")).into());
                }
                return Err(self.unreachable(status).into());
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        // The receiver saw the final chunk, so the reader has finished.
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.unreachable(format!("reading snapshot: {e}")).into()),
            Err(e) => return Err(self.unreachable(format!("snapshot reader: {e}")).into()),
        }
        decode_reply(reply).map_err(|e| self.unreachable(e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindex_proto::raft_server::{Raft, RaftServer};
    use kindex_proto::{FetchSnapshotRequest, SnapshotChunk};
    use tonic::{Request, Response, Status, Streaming};

    /// A peer that refuses every call with `refusal`.
    struct Refusing(fn() -> Status);

    type Chunks =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    #[tonic::async_trait]
    impl Raft for Refusing {
        type FetchSnapshotStream = Chunks;
        async fn append_entries(
            &self,
            _: Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status> {
            Err((self.0)())
        }
        async fn vote(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            Err((self.0)())
        }
        async fn install_snapshot(
            &self,
            _: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftReply>, Status> {
            Err((self.0)())
        }
        async fn fetch_snapshot(
            &self,
            _: Request<FetchSnapshotRequest>,
        ) -> Result<Response<Chunks>, Status> {
            Err((self.0)())
        }
    }

    /// Calls `vote` on a peer that answers with `refusal`; returns whether the factory still
    /// caches the channel to it afterwards.
    async fn channel_kept_after(refusal: fn() -> Status) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(Refusing(refusal)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut factory = RaftNetworkFactoryImpl::new(1, NetworkConfig::default());
        let mut peer = factory.new_client(0, &Member { addr: addr.clone() }).await;
        let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let opt = RPCOption::new(Duration::from_secs(5));
        assert!(peer.vote(vote, opt).await.is_err());
        let kept = factory.channels.lock().contains_key(&addr);
        server.abort();
        kept
    }

    /// A reused address (another member answers for the peer) drops the cached channel, so
    /// the next call connects again and re-resolves the peer's name; other refusals keep it.
    #[tokio::test]
    async fn a_misrouted_refusal_drops_the_cached_channel() {
        assert!(!channel_kept_after(|| Status::failed_precondition(misrouted(0, 2))).await);
        assert!(channel_kept_after(|| Status::failed_precondition("snapshot not ready")).await);
        assert!(channel_kept_after(|| Status::unavailable(misrouted(0, 2))).await);
    }
}
