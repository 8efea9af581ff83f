//! One node: a replica of one shard of one index, as the servers see it.
//!
//! Every write goes through the shard's Raft group (`client_write` on the leader), also on a
//! standalone node, which is a group of one member that initializes itself on first start.
//! The engine is the Raft state machine ([`EngineState`]); snapshots are Raft snapshots.
//!
//! Write path: the caller validated the write (`api::validate`, the same `engine::limits`
//! checks as apply, so invalid input never enters the log) → leader: propose, answer with the
//! applied log index; follower: forward the request to the leader's gRPC endpoint (once: a
//! forwarded request is never forwarded again) or report who the leader is
//! ([`NodeError::NotLeader`]).
//!
//! Files by job: `error` (`NodeError`), `open` (config, opening, forming the
//! group), `forward` (the leader, channels, forwarding), `write`, `read` (consistency
//! barriers, get/search), `admin` (membership, leadership, snapshots), `shutdown` (Raft
//! gauges, graceful stop), `data_dir` (identity, writability), `tasks` (watchers, runtime
//! reload, maintenance).

mod admin;
mod data_dir;
mod error;
mod forward;
mod open;
mod policy;
mod read;
mod retention;
mod shutdown;
mod tasks;
mod write;

pub use self::data_dir::pod_node_id;
pub use self::error::NodeError;
pub use self::forward::member_admin_addr;
pub use self::forward::member_grpc_addr;
pub use self::forward::outcome_of;
pub use self::forward::with_port;
pub use self::open::Bootstrap;
pub use self::open::NodeConfig;
pub use self::open::RaftTuning;
pub use self::policy::PolicyChange;
pub use self::policy::PolicyWritten;
pub use self::retention::SweepOutcome;
pub use self::retention::spawn_retention_sweep;
pub use self::shutdown::role_name;
pub use self::tasks::spawn_maintenance;
pub use self::tasks::spawn_runtime_reload;
pub use self::write::split_by_bytes;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use parking_lot::RwLock;

use crate::config::RuntimeConfig;
use crate::engine::Engine;
use crate::engine::EngineKnobs;
use crate::metrics::Metrics;
use crate::raft;
use crate::raft::EngineState;
use crate::raft::KindexRaft;
use crate::raft::LogId;
use crate::raft::NodeId;
use crate::raft::RaftMetrics;
use crate::raft::RaftShard;
use crate::raft::ShardStateMachine;
use crate::snapshot::store::SnapshotStore;

/// Default Raft port (DESIGN §1).
pub const DEFAULT_RAFT_PORT: u16 = 7071;
/// The Admin gRPC port (membership, snapshots, status): never behind the client Service.
pub const DEFAULT_ADMIN_PORT: u16 = 7072;
/// Request metadata set on a write/read a node forwards to the leader (value: the sender's id).
/// A forwarded request is never forwarded again.
pub const FORWARDED_HEADER: &str = "kindex-forwarded";
/// Response metadata on "not the leader" errors: the leader's client gRPC address.
pub const LEADER_HEADER: &str = "kindex-leader";
/// Response metadata on a write refused by a leader that has lost its quorum (value `1`).
pub const QUORUM_LOST_HEADER: &str = "kindex-quorum-lost";
/// Response metadata on a write a quota policy refused (value `1`): HTTP answers 429, not the
/// 507 of a full shard.
pub const QUOTA_EXCEEDED_HEADER: &str = "kindex-quota-exceeded";
/// Response metadata on "not the leader" errors: the leader's node id.
pub const LEADER_ID_HEADER: &str = "kindex-leader-id";

/// Most bytes of points in one log entry; larger upserts are split into several entries (in
/// order). Well below the Raft transport's 64 MiB message limit.
pub const MAX_COMMAND_BYTES: u64 = 8 << 20;
/// How long a write waits for a leader during an election.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a write waits to be committed and applied.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leader may go without a majority's acknowledgement before it refuses writes.
const QUORUM_LOST_AFTER: Duration = Duration::from_secs(5);
/// How long a `session` read waits for this replica to catch up with the token.
pub const SESSION_WAIT: Duration = Duration::from_secs(5);

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
    /// Its Admin gRPC address (node-to-node calls: the divergence guard).
    pub admin: Option<String>,
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
    admin_port: u16,
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
    /// gRPC channels to other nodes (forwarding, the divergence guard, the coordinator).
    channels: Arc<crate::channels::Channels>,
    state_machine: ShardStateMachine<EngineState>,
    /// What the divergence guard found (see [`crate::divergence`]).
    pub divergence: crate::divergence::Guard,
    /// What each member last reported it supports, and when (see [`crate::policy`]).
    member_features: Mutex<std::collections::HashMap<NodeId, (Vec<String>, std::time::Instant)>>,
    /// Test faults (`--raft-fault-file`); here for the clock skew of [`Node::now_ms`].
    faults: crate::raft::fault::FaultSwitch,
    /// The data volume's low-water mark (see [`crate::volume`]).
    volume: Arc<crate::volume::VolumeGuard>,
    pub metrics: Arc<Metrics>,
}

impl Node {
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

    /// The newest on-disk data format this replica's data may hold (see
    /// [`crate::raft::engine_state::EngineState::data_format`]).
    pub fn data_format(&self) -> u32 {
        self.state.data_format()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The client gRPC port of every replica (unless a member address names its own).
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// The Admin gRPC port of every replica (unless a member address names its own).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
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

    /// The data volume's free space now (None: it cannot be asked).
    pub fn volume(&self) -> Option<crate::volume::Sample> {
        self.volume.sample()
    }

    /// Err while the data volume is below its reserve: nothing may be added to it.
    pub fn check_volume(&self) -> Result<(), NodeError> {
        self.volume
            .check()
            .map_err(|e| NodeError::VolumeFull(e.to_string()))
    }

    /// Last applied log index (blank and membership entries included).
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index)
    }
}
