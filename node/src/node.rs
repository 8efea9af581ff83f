//! One node: a replica of one shard of one index, as the servers see it.
//!
//! Every write goes through the shard's Raft group (`client_write` on the leader), also on a
//! standalone node, which is a group of one member that initializes itself on first start.
//! The engine is the Raft state machine ([`EngineState`]); snapshots are Raft snapshots.
//!
//! Write path: validate (the same `engine::limits` checks as apply, so invalid input never
//! enters the log) → leader: propose, answer with the applied log index; follower: forward the
//! request to the leader's gRPC endpoint (once: a forwarded request is never forwarded again) or
//! report who the leader is ([`NodeError::NotLeader`]).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use kindex_proto as pb;
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::InitializeError;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use parking_lot::Mutex;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::config::RuntimeConfig;
use crate::config::StructuralConfig;
use crate::config::structural;
use crate::engine::Engine;
use crate::engine::EngineError;
use crate::engine::EngineKnobs;
use crate::engine::Hit;
use crate::engine::StoredPoint;
use crate::engine::filter::Filter;
use crate::metrics::Metrics;
use crate::metrics::RaftGauges;
use crate::raft;
use crate::raft::Command;
use crate::raft::CommandResult;
use crate::raft::EngineState;
use crate::raft::KindexRaft;
use crate::raft::LogId;
use crate::raft::NodeId;
use crate::raft::PointRecord;
use crate::raft::RaftMetrics;
use crate::raft::RaftShard;
use crate::raft::RaftShardConfig;
use crate::raft::ShardStateMachine;
use crate::raft::engine_state::validate_delete;
use crate::raft::engine_state::validate_upsert;
use crate::raft::snapshot::SnapshotStore;
use crate::snapshot::SnapshotError;

/// Default Raft port (DESIGN §1).
pub const DEFAULT_RAFT_PORT: u16 = 7071;
/// Request metadata set on a write/read a node forwards to the leader (value: the sender's id).
/// A forwarded request is never forwarded again.
pub const FORWARDED_HEADER: &str = "kindex-forwarded";
/// Response metadata on "not the leader" errors: the leader's client gRPC address.
pub const LEADER_HEADER: &str = "kindex-leader";
/// Response metadata on "not the leader" errors: the leader's node id.
pub const LEADER_ID_HEADER: &str = "kindex-leader-id";

/// Most bytes of points in one log entry; larger upserts are split into several entries (in
/// order). Well below the Raft transport's 64 MiB message limit.
pub const MAX_COMMAND_BYTES: u64 = 8 << 20;
/// How long a write waits for a leader during an election.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a write waits to be committed and applied.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `session` read waits for this replica to catch up with the token.
pub const SESSION_WAIT: Duration = Duration::from_secs(5);

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
    /// This node cannot serve the request; the leader can (if known).
    #[error("{}", not_leader_message(*leader_id, leader_grpc.as_deref()))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_grpc: Option<String>,
    },
    /// The state machine refused the command (same on every replica); nothing changed.
    #[error("write rejected: {0}")]
    Rejected(String),
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

/// Raft timing and log retention (the rest of openraft's config is `raft::node::default_raft_config`).
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    /// Minimum election timeout; the maximum is twice this.
    pub election_timeout_ms: u64,
    /// Log entries kept behind the newest snapshot, for followers that lag a little
    /// (openraft `max_in_snapshot_log_to_keep`); older entries are purged after a snapshot.
    pub log_keep: u64,
    /// Fault injection for tests: a file of faults (cut links, a delayed log flush, a replica
    /// applying something else; see [`raft::fault`]). None in production.
    pub fault_file: Option<PathBuf>,
    /// Tests only: turn openraft's leader restore back on, which loses acknowledged writes
    /// (issue 12), to show that the fault tests detect it.
    pub unsafe_leader_restore: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_timeout_ms: 1500,
            log_keep: 1000,
            fault_file: None,
            unsafe_leader_restore: false,
        }
    }
}

/// How the Raft group of this node is formed.
#[derive(Debug, Clone)]
pub enum Membership {
    /// A group of one member (this node) that initializes itself on first start.
    Standalone,
    /// A replicated shard: the group is initialized once by the Admin `Initialize` RPC (the
    /// operator or a test calls it), or by the lowest id of `peers` when `bootstrap` is set.
    Cluster {
        peers: BTreeMap<NodeId, String>,
        bootstrap: bool,
    },
}

pub struct NodeConfig {
    pub index: String,
    pub data_dir: PathBuf,
    pub structural: StructuralConfig,
    pub runtime: RuntimeConfig,
    pub node_id: NodeId,
    pub shard: u32,
    /// This member's address in the membership: `"raft_host:port"` or
    /// `"raft_host:port|grpc_host:port"` (see [`raft::grpc_addr_of`]).
    pub advertise: String,
    /// The client gRPC port of members whose address carries only the Raft endpoint.
    pub grpc_port: u16,
    /// Where Raft RPCs are served; None only for a standalone node.
    pub raft_listener: Option<TcpListener>,
    pub membership: Membership,
    pub tuning: RaftTuning,
}

/// The newest snapshot on disk.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInfo {
    pub log_id: Option<LogId>,
    pub bytes: u64,
    pub path: PathBuf,
    pub saved_at: Option<SystemTime>,
}

/// Result of a replicated write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub affected: u64,
    /// Log index at which the (last part of the) write was applied: the session token.
    pub applied_index: u64,
}

/// Who leads the shard, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: NodeId,
    /// Its client gRPC address.
    pub grpc: Option<String>,
}

/// A member as reported by `Status`.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

pub struct Node {
    pub index: String,
    pub node_id: NodeId,
    pub shard: u32,
    data_dir: PathBuf,
    advertise: String,
    grpc_port: u16,
    standalone: bool,
    state: Arc<EngineState>,
    raft: KindexRaft<EngineState>,
    shard_handle: tokio::sync::Mutex<Option<RaftShard<EngineState>>>,
    store: SnapshotStore,
    raft_addr: Option<std::net::SocketAddr>,
    runtime: RwLock<RuntimeConfig>,
    accepting_writes: AtomicBool,
    recovered: AtomicBool,
    stopping: AtomicBool,
    snapshot_cache: Mutex<Option<SnapshotInfo>>,
    /// gRPC channels to other members, by address (forwarding, the divergence guard).
    channels: Mutex<HashMap<String, Channel>>,
    state_machine: ShardStateMachine<EngineState>,
    /// What the divergence guard found (see [`crate::divergence`]).
    pub divergence: crate::divergence::Guard,
    pub metrics: Arc<Metrics>,
}

impl Node {
    /// Opens (or initialises) a data dir and starts the shard's Raft member: checks the
    /// structural config and the node identity, loads the newest valid snapshot, replays the
    /// committed log after it. A standalone node initializes its group of one on first start.
    pub async fn open(cfg: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let data_dir = cfg.data_dir.clone();
        {
            let (dir, s, index, id, shard) = (
                data_dir.clone(),
                cfg.structural.clone(),
                cfg.index.clone(),
                cfg.node_id,
                cfg.shard,
            );
            tokio::task::spawn_blocking(move || prepare_data_dir(&dir, &s, &index, id, shard))
                .await
                .map_err(|e| NodeError::Unavailable(e.to_string()))??;
        }
        let metrics = Arc::new(Metrics::new());
        let knobs = EngineKnobs::from(&cfg.runtime);
        let state = Arc::new(EngineState::new(
            cfg.structural.clone(),
            knobs,
            Some(metrics.clone()),
        ));

        let mut rc = RaftShardConfig::new(cfg.node_id, &data_dir);
        rc.raft.heartbeat_interval = cfg.tuning.heartbeat_ms.max(10);
        rc.raft.election_timeout_min = cfg
            .tuning
            .election_timeout_ms
            .max(3 * rc.raft.heartbeat_interval);
        rc.raft.election_timeout_max = 2 * rc.raft.election_timeout_min;
        // Snapshots are triggered by the node (runtime config: interval, applied entries).
        rc.raft.snapshot_policy = SnapshotPolicy::Never;
        rc.raft.max_in_snapshot_log_to_keep = cfg.tuning.log_keep;
        if let Some(f) = &cfg.tuning.fault_file {
            rc.faults = raft::fault::FaultSwitch::watch_file(f.clone());
        }
        if cfg.tuning.unsafe_leader_restore {
            rc.raft.enable_leader_restore = Some(true);
        }
        rc.state_machine.keep_snapshots = cfg.runtime.snapshot_keep.max(1) as usize;
        let shard = RaftShard::start(rc, state.clone(), cfg.raft_listener)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = shard.raft().clone();
        let state_machine = shard.state_machine().clone();
        let store = shard.snapshot_store().clone();
        let raft_addr = shard.local_addr();

        let node = Arc::new(Node {
            index: cfg.index,
            node_id: cfg.node_id,
            shard: cfg.shard,
            data_dir,
            advertise: cfg.advertise,
            grpc_port: cfg.grpc_port,
            standalone: matches!(cfg.membership, Membership::Standalone),
            state,
            raft,
            shard_handle: tokio::sync::Mutex::new(Some(shard)),
            store,
            raft_addr,
            runtime: RwLock::new(cfg.runtime),
            accepting_writes: AtomicBool::new(true),
            recovered: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            snapshot_cache: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            state_machine,
            divergence: crate::divergence::Guard::default(),
            metrics,
        });
        node.form_group(&cfg.membership).await?;
        node.spawn_watchers();
        Ok(node)
    }

    /// First start: initialize the group where this node is responsible for it. Later starts:
    /// a group of which this node is the only voter elects it at once (no election timeout).
    async fn form_group(&self, membership: &Membership) -> Result<(), NodeError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let members: Option<BTreeMap<NodeId, String>> = match membership {
            Membership::Standalone => {
                Some(BTreeMap::from([(self.node_id, self.advertise.clone())]))
            }
            Membership::Cluster {
                peers,
                bootstrap: true,
            } if peers.keys().next() == Some(&self.node_id) => Some(peers.clone()),
            Membership::Cluster { .. } => None,
        };
        if !initialized {
            if let Some(members) = members {
                tracing::info!(?members, "initializing the shard's raft group");
                match self.initialize(members).await {
                    Ok(_) | Err(NodeError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            } else {
                tracing::info!(
                    "raft group not initialized yet: waiting for the Admin Initialize RPC or a leader"
                );
            }
            return Ok(());
        }
        let m = self.raft_metrics();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if voters == [self.node_id] && m.current_leader != Some(self.node_id) {
            let _ = self.raft.trigger().elect(false).await;
        }
        Ok(())
    }

    fn spawn_watchers(self: &Arc<Self>) {
        // Leader changes and role changes (logged, counted).
        let node = self.clone();
        tokio::spawn(async move {
            let mut rx = node.raft.metrics();
            let (mut leader, mut state) = (None, ServerState::Learner);
            loop {
                {
                    let m = rx.borrow_watched();
                    if m.current_leader != leader {
                        if let Some(l) = m.current_leader {
                            node.metrics.raft_leader_changes.inc();
                            tracing::info!(leader = l, term = m.current_term, "new shard leader");
                        }
                        leader = m.current_leader;
                    }
                    if m.state != state {
                        tracing::info!(from = ?state, to = ?m.state, term = m.current_term, "raft role changed");
                        state = m.state;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        // Readiness: once the cluster commit covering the local log tail is applied.
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                match node
                    .raft
                    .wait_for_recovery(Some(Duration::from_secs(5)))
                    .await
                {
                    Ok(m) => {
                        tracing::info!(applied = ?m.last_applied, "caught up with the shard; ready");
                        node.recovered.store(true, Ordering::Release);
                        return;
                    }
                    Err(openraft::metrics::WaitError::ShuttingDown) => return,
                    Err(_) => {}
                }
            }
        });
        if !self.standalone {
            crate::divergence::spawn(self.clone());
        }
    }

    pub fn raft(&self) -> &KindexRaft<EngineState> {
        &self.raft
    }

    /// Resolves when Raft stopped by itself (a fatal error: storage failure, a snapshot that
    /// cannot be installed...), not by [`Self::shutdown`]; the process should exit and be
    /// restarted rather than serve without a Raft member.
    pub async fn raft_stopped(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_watched();
                let stopped = m.state == ServerState::Shutdown || m.running_state.is_err();
                if stopped && !self.stopping.load(Ordering::Acquire) {
                    return match &m.running_state {
                        Err(f) => format!("raft stopped: {f}"),
                        Ok(()) => "raft stopped".to_string(),
                    };
                }
            }
            if rx.changed().await.is_err() {
                if self.stopping.load(Ordering::Acquire) {
                    std::future::pending::<()>().await;
                }
                return "raft stopped (metrics channel closed)".to_string();
            }
        }
    }

    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The current engine (see [`EngineState::engine`]: keep it for the whole request).
    pub fn engine(&self) -> Arc<Engine> {
        self.state.engine()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The client gRPC port of every replica (unless a member address names its own).
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    pub fn is_standalone(&self) -> bool {
        self.standalone
    }

    /// Where Raft RPCs are served (None: standalone without a Raft listener).
    pub fn raft_addr(&self) -> Option<std::net::SocketAddr> {
        self.raft_addr
    }

    /// Ready: not stopping, a leader is known, the log this node had at start (as committed
    /// by the cluster) has been applied, and it has not diverged from the leader.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why this node is not ready (None: ready).
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.stopping.load(Ordering::Acquire) {
            return Some("shutting down".into());
        }
        if let Some(d) = self.divergence.found() {
            return Some(d.to_string());
        }
        if !self.recovered.load(Ordering::Acquire) {
            return Some("catching up with the shard after start".into());
        }
        if self
            .raft
            .metrics()
            .borrow_watched()
            .current_leader
            .is_none()
        {
            return Some("no shard leader known".into());
        }
        None
    }

    /// The apply digest after the last applied entry (see [`raft::digest`]).
    pub fn apply_digest(&self) -> raft::digest::ApplyDigest {
        self.state_machine.apply_digest()
    }

    /// The apply digest at a recently applied `index`.
    pub fn apply_digest_at(&self, index: u64) -> Option<raft::digest::ApplyDigest> {
        self.state_machine.apply_digest_at(index)
    }

    /// Whether graceful shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stops readiness and writes (graceful shutdown begins).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.accepting_writes.store(false, Ordering::Release);
    }

    pub fn runtime(&self) -> RuntimeConfig {
        self.runtime.read().clone()
    }

    pub fn set_runtime(&self, r: RuntimeConfig) {
        self.state.set_knobs(EngineKnobs::from(&r));
        self.state_machine
            .set_keep_snapshots(r.snapshot_keep as usize);
        *self.runtime.write() = r;
    }

    pub fn check_index(&self, index: &str) -> Result<(), NodeError> {
        // An empty name means "the index this node serves".
        if index.is_empty() || index == self.index {
            Ok(())
        } else {
            Err(NodeError::UnknownIndex {
                got: index.to_string(),
                serves: self.index.clone(),
            })
        }
    }

    /// Last applied log index (blank and membership entries included).
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index)
    }

    // ---------------------------------------------------------------- leader and forwarding

    /// The client gRPC address of a member address (`"raft"` or `"raft|grpc"`): the explicit
    /// one, else the Raft host with this node's gRPC port (every replica of a StatefulSet
    /// listens on the same ports).
    pub fn grpc_addr_of_member(&self, addr: &str) -> String {
        member_grpc_addr(addr, self.grpc_port)
    }

    pub fn leader(&self) -> Option<LeaderInfo> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone());
        Some(LeaderInfo {
            id,
            grpc: addr.map(|a| self.grpc_addr_of_member(&a)),
        })
    }

    fn not_leader(&self, id: Option<NodeId>, node: Option<raft::Node>) -> NodeError {
        let grpc = node.map(|n| self.grpc_addr_of_member(&n.addr)).or_else(|| {
            self.leader()
                .filter(|l| Some(l.id) == id)
                .and_then(|l| l.grpc)
        });
        NodeError::NotLeader {
            leader_id: id,
            leader_grpc: grpc,
        }
    }

    /// A cached channel to another member's client gRPC endpoint.
    fn channel(&self, grpc_addr: &str) -> Result<Channel, NodeError> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(grpc_addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))
            .map_err(|e| NodeError::Unavailable(format!("bad member address {grpc_addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .connect_lazy();
        channels.insert(grpc_addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A client to another member's `Points` service.
    pub fn points_client(
        &self,
        grpc_addr: &str,
    ) -> Result<pb::points_client::PointsClient<Channel>, NodeError> {
        Ok(
            pb::points_client::PointsClient::new(self.channel(grpc_addr)?)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
    }

    /// A client to another member's `Admin` service.
    pub fn admin_client(
        &self,
        grpc_addr: &str,
    ) -> Result<pb::admin_client::AdminClient<Channel>, NodeError> {
        Ok(pb::admin_client::AdminClient::new(self.channel(grpc_addr)?))
    }

    /// Where to forward a request this node cannot serve: the leader, if known, not us, and the
    /// request was not forwarded already.
    fn forward_target(&self, err: &NodeError, forwarded: bool) -> Option<(NodeId, String)> {
        match err {
            NodeError::NotLeader {
                leader_id: Some(id),
                leader_grpc: Some(addr),
            } if !forwarded && *id != self.node_id => Some((*id, addr.clone())),
            _ => None,
        }
    }

    /// A request to forward, marked as forwarded, with a deadline.
    pub fn forwarded_request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = self.node_id.to_string().parse() {
            req.metadata_mut().insert(FORWARDED_HEADER, v);
        }
        req.set_timeout(timeout);
        req
    }

    /// The forwarded call failed: "unavailable" answers (including transport errors) stay
    /// retryable and name the leader; anything else the leader answered is passed through.
    fn forward_failed(&self, leader: NodeId, addr: &str, s: tonic::Status) -> NodeError {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                NodeError::Unavailable(format!(
                    "forwarded to the shard leader (node {leader} at {addr}): {}",
                    s.message()
                ))
            }
            _ => NodeError::Forwarded(s),
        }
    }

    // ---------------------------------------------------------------- writes

    fn check_writable(&self) -> Result<(), NodeError> {
        if self.accepting_writes.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(NodeError::Unavailable(
                "this node is shutting down and accepts no writes".into(),
            ))
        }
    }

    /// Propose one command on this node (which must lead); waits out an election in progress
    /// (bounded), returns NotLeader when another node leads.
    async fn propose(&self, cmd: &Command) -> Result<CommandResult, NodeError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let res = tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(cmd.clone()))
                .await
                .map_err(|_| {
                    NodeError::Unavailable(format!(
                        "the write was not committed within {COMMIT_TIMEOUT:?} (no quorum?); it may still be applied"
                    ))
                })?;
            match res {
                Ok(resp) => {
                    return match resp.data.rejected {
                        Some(reason) => Err(NodeError::Rejected(reason)),
                        None => Ok(resp.data),
                    };
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_id
                {
                    Some(id) if id != self.node_id => {
                        return Err(self.not_leader(Some(id), f.leader_node));
                    }
                    // Election in progress, or a new leader not yet acknowledged by a quorum.
                    _ if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    _ => return Err(self.not_leader(None, None)),
                },
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                    return Err(NodeError::Unavailable(
                        "leadership changed while the write was in flight; it may or may not be applied; \
                         retry (upserts and deletes are idempotent)"
                            .into(),
                    ));
                }
                Err(RaftError::APIError(e)) => return Err(NodeError::Raft(e.to_string())),
                Err(RaftError::Fatal(f)) => {
                    return Err(NodeError::Unavailable(format!("raft stopped: {f}")));
                }
            }
        }
    }

    /// Validates and replicates an upsert (split into entries of at most [`MAX_COMMAND_BYTES`],
    /// in order). `forwarded`: the request came from another node (never forwarded again).
    pub async fn upsert(
        &self,
        points: Vec<PointRecord>,
        forwarded: bool,
    ) -> Result<WriteOutcome, NodeError> {
        self.check_writable()?;
        let structural = self.state.structural();
        validate_upsert(structural.dimension as usize, structural.metric, &points)
            .map_err(EngineError::from)?;
        let chunks = split_by_bytes(points, MAX_COMMAND_BYTES);
        let mut out = WriteOutcome::default();
        let mut written = 0usize;
        for (i, chunk) in chunks.iter().enumerate() {
            let cmd = Command::Upsert {
                points: chunk.clone(),
            };
            match self.propose(&cmd).await {
                Ok(r) => {
                    out.affected += r.affected;
                    out.applied_index = r.applied_index;
                    written += chunk.len();
                }
                Err(e) if i == 0 => {
                    drop(cmd);
                    let Some((leader, addr)) = self.forward_target(&e, forwarded) else {
                        return Err(e);
                    };
                    let mut client = self.points_client(&addr)?;
                    let points = chunks
                        .into_iter()
                        .flatten()
                        .map(|p| pb::Point {
                            id: p.id,
                            vector: p.vector,
                            payload_json: p.payload_json,
                        })
                        .collect();
                    let req = self.forwarded_request(
                        pb::UpsertRequest {
                            index: self.index.clone(),
                            points,
                        },
                        COMMIT_TIMEOUT,
                    );
                    return match client.upsert(req).await {
                        Ok(r) => Ok(outcome_of(r.into_inner(), self.shard)),
                        Err(s) => Err(self.forward_failed(leader, &addr, s)),
                    };
                }
                Err(e) => return Err(partial(e, written)),
            }
        }
        Ok(out)
    }

    pub async fn delete(
        &self,
        ids: Vec<String>,
        forwarded: bool,
    ) -> Result<WriteOutcome, NodeError> {
        self.check_writable()?;
        validate_delete(&ids).map_err(EngineError::from)?;
        match self.propose(&Command::Delete { ids: ids.clone() }).await {
            Ok(r) => Ok(WriteOutcome {
                affected: r.affected,
                applied_index: r.applied_index,
            }),
            Err(e) => {
                let Some((leader, addr)) = self.forward_target(&e, forwarded) else {
                    return Err(e);
                };
                let mut client = self.points_client(&addr)?;
                let req = self.forwarded_request(
                    pb::DeleteRequest {
                        index: self.index.clone(),
                        ids,
                    },
                    COMMIT_TIMEOUT,
                );
                match client.delete(req).await {
                    Ok(r) => Ok(outcome_of(r.into_inner(), self.shard)),
                    Err(s) => Err(self.forward_failed(leader, &addr, s)),
                }
            }
        }
    }

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

    /// Whether an error of `read_barrier` should make the caller forward the read to the leader.
    pub fn read_forward_target(
        &self,
        err: &NodeError,
        forwarded: bool,
    ) -> Option<(NodeId, String)> {
        self.forward_target(err, forwarded)
    }

    /// See [`Self::forward_failed`].
    pub fn forward_error(&self, leader: NodeId, addr: &str, s: tonic::Status) -> NodeError {
        self.forward_failed(leader, addr, s)
    }

    pub fn get(&self, ids: &[String]) -> Result<Vec<StoredPoint>, NodeError> {
        crate::engine::limits::check_batch_len(ids.len()).map_err(EngineError::from)?;
        let engine = self.engine();
        Ok(ids.iter().filter_map(|id| engine.get(id)).collect())
    }

    /// Search; returns the engine the hits' slots refer to.
    pub fn search(
        &self,
        vector: &[f32],
        k: usize,
        ef: Option<usize>,
        filter: &Filter,
    ) -> Result<(Vec<Hit>, Arc<Engine>), NodeError> {
        let engine = self.engine();
        let hits = engine.search(vector, k, ef, filter)?;
        Ok((hits, engine))
    }

    // ---------------------------------------------------------------- admin

    /// Initialize the group (once, on one pristine node). Empty `members`: this node alone.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<String, NodeError> {
        let members = if members.is_empty() {
            BTreeMap::from([(self.node_id, self.advertise.clone())])
        } else {
            members
        };
        let nodes: BTreeMap<NodeId, raft::Node> = members
            .iter()
            .map(|(id, a)| (*id, raft::Node::new(a.clone())))
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
            .add_learner(id, raft::Node::new(addr.clone()), blocking)
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
        let bytes = raft::snapshot::list_files(&newest)
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

    /// Raft state for `/metrics`.
    pub fn raft_gauges(&self) -> RaftGauges {
        let m = self.raft_metrics();
        let last = m.last_log_index.unwrap_or(0);
        let replication_lag = crate::raft::node::replication_lag(&m).into_iter().collect();
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
        }
    }

    pub fn render_metrics(&self) -> String {
        let gauges = self.raft_gauges();
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

fn partial(e: NodeError, written: usize) -> NodeError {
    let msg = format!("after {written} points of the batch were written: {e}");
    match e {
        NodeError::Unavailable(_) | NodeError::NotLeader { .. } => NodeError::Unavailable(msg),
        NodeError::Timeout(_) => NodeError::Timeout(msg),
        _ => NodeError::Raft(msg),
    }
}

/// The shard's entry in a write response from another node.
pub fn outcome_of(r: pb::WriteResponse, shard: u32) -> WriteOutcome {
    let applied_index = r
        .token
        .and_then(|t| t.shards.into_iter().find(|s| s.shard == shard))
        .map_or(0, |s| s.applied_index);
    WriteOutcome {
        affected: r.affected,
        applied_index,
    }
}

/// Splits points into runs of at most `max` bytes (each run at least one point), in order.
pub fn split_by_bytes(points: Vec<PointRecord>, max: u64) -> Vec<Vec<PointRecord>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0u64;
    for p in points {
        // Same estimate as the log store's (`raft::command_size`).
        let size =
            (p.id.len() + p.vector.len() * 4 + p.payload_json.as_ref().map_or(0, String::len) + 16)
                as u64;
        if !cur.is_empty() && bytes + size > max {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(p);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// The client gRPC address of a member address (`"raft"` or `"raft|grpc"`): the explicit one,
/// else the Raft host with `default_port`.
pub fn member_grpc_addr(addr: &str, default_port: u16) -> String {
    if let Some(g) = raft::grpc_addr_of(addr) {
        return g.to_string();
    }
    let raft_addr = raft::raft_addr_of(addr);
    match raft_addr.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{default_port}"),
        None => format!("{raft_addr}:{default_port}"),
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

/// The identity a data dir belongs to: a PV must not be mounted by another pod by mistake.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    index: String,
    shard: u32,
    node_id: NodeId,
}

const IDENTITY_FILE: &str = "node.json";

/// Creates / checks the data dir: writable, structural config, identity, no pre-Raft snapshots.
fn prepare_data_dir(
    dir: &Path,
    s: &StructuralConfig,
    index: &str,
    node_id: NodeId,
    shard: u32,
) -> Result<(), NodeError> {
    let data_err = |reason: String| NodeError::DataDir {
        dir: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| data_err(format!("cannot create: {e}")))?;
    probe_writable(dir)?;
    structural::open_or_init(dir, s)?;

    let me = Identity {
        index: index.to_string(),
        shard,
        node_id,
    };
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| data_err(format!("{IDENTITY_FILE} is not valid: {e}")))?;
            if stored != me {
                return Err(data_err(format!(
                    "belongs to node {} of shard {} of index {:?}, but this is node {node_id} of shard {shard} of index {index:?} \
                     (check --node-id / --shard / --index, or the volume mounted here)",
                    stored.node_id, stored.shard, stored.index
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let json = serde_json::to_vec_pretty(&me).map_err(|e| data_err(e.to_string()))?;
            crate::fsutil::write_atomic(&path, &json)
                .map_err(|e| data_err(format!("cannot write {IDENTITY_FILE}: {e}")))?;
        }
        Err(e) => return Err(data_err(format!("cannot read {IDENTITY_FILE}: {e}"))),
    }

    // Snapshots written by a standalone node before replication existed have no Raft metadata
    // and no log: they cannot be replayed into a Raft group. Refuse instead of discarding them.
    let snaps = dir.join("snapshots");
    if !dir.join("raft-log").exists()
        && let Ok(rd) = std::fs::read_dir(&snaps)
    {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("snap-") && !e.path().join(raft::snapshot::RAFT_META_FILE).exists()
            {
                return Err(data_err(format!(
                    "snapshot {name} was written by a kindex node without Raft replication and cannot be \
                     loaded by this version; move {} aside and re-load the data",
                    snaps.display()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a data dir we cannot write durably, with the reason.
fn probe_writable(dir: &Path) -> Result<(), NodeError> {
    let probe = dir.join(".kindex-write-probe");
    crate::fsutil::write_atomic(&probe, b"ok")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| NodeError::DataDir {
            dir: dir.display().to_string(),
            reason: format!("not writable: {e}"),
        })
}

/// Watches the runtime config file and applies changes without a restart.
pub fn spawn_runtime_reload(node: Arc<Node>, path: PathBuf, every: Duration) {
    tokio::spawn(async move {
        let mut last = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        loop {
            tokio::time::sleep(every).await;
            let now = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if now == last {
                continue;
            }
            last = now;
            match RuntimeConfig::load(&path) {
                Ok(cfg) if cfg != node.runtime() => {
                    tracing::info!(?cfg, "runtime config reloaded");
                    crate::config::logging::apply_runtime(&node.runtime(), &cfg);
                    node.set_runtime(cfg);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "runtime config rejected; keeping the previous one")
                }
            }
        }
    });
}

/// Snapshot triggers (runtime config: `snapshotIntervalSecs`, `snapshotLogEntries`; openraft's
/// own policy is off) and compaction.
pub fn spawn_maintenance(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut last_trigger = Instant::now();
        let mut last_snapshot_index = node.raft_metrics().snapshot.map_or(0, |s| s.index);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if node.stopping.load(Ordering::Acquire) {
                return;
            }
            let rt = node.runtime();
            let m = node.raft_metrics();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let snap = m.snapshot.map_or(0, |l| l.index);
            if snap != last_snapshot_index {
                // A snapshot was built (or installed): the interval counts from it.
                last_snapshot_index = snap;
                last_trigger = Instant::now();
            }
            let due_entries = applied.saturating_sub(snap) >= rt.snapshot_log_entries.max(1);
            let due_time = applied > snap && last_trigger.elapsed() >= rt.snapshot_interval();
            // Give a running build time before asking again.
            if (due_entries || due_time)
                && last_trigger.elapsed() >= Duration::from_secs(10).min(rt.snapshot_interval())
            {
                tracing::info!(
                    applied,
                    snapshot = snap,
                    due_entries,
                    due_time,
                    "triggering a snapshot"
                );
                if node.raft.trigger().snapshot().await.is_err() {
                    return;
                }
                last_trigger = Instant::now();
            }
            let engine = node.engine();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(s) = engine.maybe_compact(0.1) {
                    tracing::info!(
                        purged = s.purged,
                        relinked = s.relinked_lists,
                        millis = s.millis,
                        "compaction"
                    );
                }
            })
            .await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, dim: usize) -> PointRecord {
        PointRecord {
            id: id.into(),
            vector: vec![0.0; dim],
            payload_json: None,
        }
    }

    #[test]
    fn big_upserts_split_in_order_within_the_byte_cap() {
        let points: Vec<PointRecord> = (0..10).map(|i| rec(&format!("p{i}"), 250)).collect();
        // ~1018 bytes each: 3 per 3 KiB chunk.
        let chunks = split_by_bytes(points.clone(), 3 * 1024);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert_eq!(chunks.concat(), points);
        // A point larger than the cap still goes, alone.
        let chunks = split_by_bytes(vec![rec("a", 10_000), rec("b", 1)], 1024);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(
            split_by_bytes(Vec::new(), 1024),
            vec![Vec::<PointRecord>::new()]
        );
    }

    #[test]
    fn member_addresses_give_the_grpc_endpoint() {
        assert_eq!(member_grpc_addr("a.svc:7071", 7070), "a.svc:7070");
        assert_eq!(
            member_grpc_addr("10.0.0.1:9|10.0.0.1:8", 7070),
            "10.0.0.1:8"
        );
        assert_eq!(member_grpc_addr("[::1]:7071", 7070), "[::1]:7070");
        assert_eq!(raft::raft_addr_of("h:1|h:2"), "h:1");
        assert_eq!(raft::grpc_addr_of("h:1|"), None);
    }
}
