//! Opening a node: its configuration, the data dir check, the Raft member, the group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use openraft::SnapshotPolicy;
use parking_lot::Mutex;
use parking_lot::RwLock;
use tokio::net::TcpListener;

use crate::config::RuntimeConfig;
use crate::config::StructuralConfig;
use crate::engine::EngineKnobs;
use crate::engine::VectorStorage;
use crate::metrics::Metrics;
use crate::raft;
use crate::raft::EngineState;
use crate::raft::NodeId;
use crate::raft::RaftShard;
use crate::raft::RaftShardConfig;

use super::data_dir::prepare_data_dir;
use super::*;

/// Raft timing and log retention (the rest of openraft's config is `raft::shard::default_raft_config`).
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

/// How the Raft group of this node is formed on first start (the group's members once it
/// exists are openraft's `raft::Membership`).
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// A group of one member (this node) that initializes itself on first start.
    Standalone,
    /// A replicated shard: the group is initialized once by the Admin `Initialize` RPC (the
    /// operator or a test calls it), or by the lowest id of `peers` when `bootstrap` is set.
    Cluster {
        peers: BTreeMap<NodeId, String>,
        bootstrap: bool,
    },
}

/// The directory of `--vectors-on-disk` under the data dir. Its files have no names (see
/// [`crate::engine::mapped`]): it looks empty even while it holds gigabytes.
pub const VECTORS_DIR: &str = "vectors";

pub struct NodeConfig {
    pub index: String,
    pub data_dir: PathBuf,
    pub structural: StructuralConfig,
    pub runtime: RuntimeConfig,
    pub node_id: NodeId,
    pub shard: u32,
    /// This member's address in the membership: `"raft_host:port"` or
    /// `"raft_host:port|grpc_host:port"` (see [`raft::grpc_addr_of`]), optionally
    /// `"...|admin_host:port"` (see [`raft::admin_addr_of`]).
    pub advertise: String,
    /// The client gRPC port of members whose address carries only the Raft endpoint.
    pub grpc_port: u16,
    /// The Admin gRPC port of members whose address does not name their admin endpoint.
    pub admin_port: u16,
    /// Where Raft RPCs are served; None only for a standalone node.
    pub raft_listener: Option<TcpListener>,
    pub bootstrap: Bootstrap,
    pub tuning: RaftTuning,
    /// Peer mTLS (`--peer-tls-dir`, see [`crate::tls`]): on the Raft port and on every call
    /// this node makes to another node. None: plain TCP.
    pub peer_tls: Option<Arc<crate::tls::PeerTls>>,
    /// Free space kept on the data volume (`--volume-reserve-bytes`, see [`crate::volume`]).
    pub volume_reserve: crate::volume::Reserve,
    /// `--vectors-on-disk`: vectors in mapped files under `<data_dir>/vectors` (see
    /// [`crate::engine::mapped`]).
    pub vectors_on_disk: bool,
    /// This replica's name in messages (its pod name; else `node <id>`).
    pub name: String,
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
        let storage = if cfg.vectors_on_disk {
            let dir = data_dir.join(VECTORS_DIR);
            std::fs::create_dir_all(&dir)
                .map_err(|e| NodeError::Unavailable(format!("creating {}: {e}", dir.display())))?;
            VectorStorage::Mapped(dir)
        } else {
            VectorStorage::Heap
        };
        let state = Arc::new(EngineState::with_storage(
            cfg.structural.clone(),
            knobs,
            Some(metrics.clone()),
            storage,
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
        rc.network.tls = cfg.peer_tls.clone();
        // With vectors on disk a write that crosses into a new chunk reserves its blocks at
        // apply, on every replica: the reserve keeps room for one, so a nearly full volume
        // refuses writes (recoverable) before a follower's chunk fails (its Raft would stop).
        let chunk_bytes = match state.engine().storage() {
            VectorStorage::Heap => 0,
            VectorStorage::Mapped(_) => {
                crate::engine::arena::chunk_bytes(cfg.structural.dimension as usize)
            }
        };
        let volume = Arc::new(crate::volume::VolumeGuard::new(
            data_dir.clone(),
            cfg.name.clone(),
            cfg.volume_reserve.plus(chunk_bytes),
        ));
        rc.network.volume = Some(volume.clone());
        rc.state_machine.keep_snapshots = cfg.runtime.snapshot_keep.max(1) as usize;
        let faults = rc.faults.clone();
        let shard = RaftShard::start(rc, state.clone(), cfg.raft_listener)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if shard.fetched_at_start().is_some() {
            metrics.snapshots_fetched.inc();
        }
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
            admin_port: cfg.admin_port,
            standalone: matches!(cfg.bootstrap, Bootstrap::Standalone),
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
            channels: Arc::new(crate::channels::Channels::new(cfg.peer_tls.clone())),
            state_machine,
            divergence: crate::divergence::Guard::default(),
            member_features: Mutex::new(std::collections::HashMap::new()),
            faults,
            volume,
            metrics,
        });
        node.form_group(&cfg.bootstrap).await?;
        node.spawn_watchers();
        Ok(node)
    }

    /// First start: initialize the group where this node is responsible for it. Later starts:
    /// a group of which this node is the only voter elects it at once (no election timeout).
    async fn form_group(&self, bootstrap: &Bootstrap) -> Result<(), NodeError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let members: Option<BTreeMap<NodeId, String>> = match bootstrap {
            Bootstrap::Standalone => Some(BTreeMap::from([(self.node_id, self.advertise.clone())])),
            Bootstrap::Cluster {
                peers,
                bootstrap: true,
            } if peers.keys().next() == Some(&self.node_id) => Some(peers.clone()),
            Bootstrap::Cluster { .. } => None,
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
}
