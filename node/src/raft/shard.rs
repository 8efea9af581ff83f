//! One running Raft member of a shard: log store + state machine + gRPC transport, wired.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::Config;
use openraft::SnapshotPolicy;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::KindexRaft;
use super::LogId;
use super::NodeId;
use super::fault::FaultSwitch;
use super::fetch;
use super::fetch::FetchError;
use super::fetch::Fetched;
use super::log_store::LogStore;
use super::log_store::LogStoreConfig;
use super::log_store::LogStoreError;
use super::log_store::LogStoreRelease;
use super::network::NetworkConfig;
use super::network::RaftNetworkFactoryImpl;
use super::server::RaftGrpcService;
use super::state_machine::ShardState;
use super::state_machine::ShardStateMachine;
use super::state_machine::StateMachineConfig;
use super::state_machine::StateMachineError;
use crate::snapshot::store::SnapshotStore;

/// Everything needed to start a member.
#[derive(Debug, Clone)]
pub struct RaftShardConfig {
    /// Pod ordinal.
    pub node_id: NodeId,
    /// The PV: the log goes to `<data_dir>/raft-log`, snapshots to `<data_dir>/snapshots`.
    pub data_dir: PathBuf,
    pub raft: Config,
    pub log: LogStoreConfig,
    pub network: NetworkConfig,
    pub state_machine: StateMachineConfig,
    /// Fault injection (tests), shared by the transport, the log store and the state machine.
    pub faults: FaultSwitch,
}

impl RaftShardConfig {
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            node_id,
            log: LogStoreConfig::new(data_dir.join("raft-log")),
            data_dir,
            raft: default_raft_config(),
            network: NetworkConfig::default(),
            state_machine: StateMachineConfig::default(),
            faults: FaultSwitch::default(),
        }
    }
}

/// openraft's configuration for a kindex shard. Every field that matters for safety is set here
/// on purpose, not left to openraft's default; docs/architecture.md ("Raft configuration
/// review") gives the reason for each.
pub fn default_raft_config() -> Config {
    Config {
        cluster_name: "kindex".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1500,
        election_timeout_max: 3000,
        // Build a snapshot every 10k applied entries (the `snapshotLogEntries` knob).
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
        // Keep some log behind the snapshot so briefly lagging followers catch up without one.
        max_in_snapshot_log_to_keep: 1_000,
        // Only used by `add_learner(.., blocking = true)`: it returns once the learner is at most
        // this many entries behind. (A snapshot is sent only when the needed log is purged.)
        replication_lag_threshold: 100,
        // Only relevant to openraft's own timers; our transport uses NetworkConfig timeouts.
        install_snapshot_timeout: 30 * 60 * 1000,
        // A restarted or partitioned node must not bump the term and depose a healthy leader.
        enable_pre_vote: Some(true),
        // SAFETY (issue 12): a restarted leader must win an election like anybody else. With
        // restore on (openraft's default), a leader killed before its own log flush — openraft
        // replicates entries before the local fsync — came back as leader of the same term with
        // a shorter log than its followers and proposed new commands under log ids the
        // followers already held for other commands: they kept theirs, it committed its own,
        // acknowledged writes were lost and replicas diverged.
        enable_leader_restore: Some(false),
        // A follower whose log went backwards (a wiped volume under the same id) is a bug to
        // stop on, not to paper over: replicas that lose their volume join as new members.
        allow_log_reversion: Some(false),
        ..Config::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftShardError {
    #[error(transparent)]
    LogStore(#[from] LogStoreError),
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    #[error("invalid raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft failed to start: {0}")]
    Start(String),
    #[error("raft listener: {0}")]
    Listener(std::io::Error),
    #[error(
        "the newest snapshot that loads covers the log up to index {snapshot} but the local log \
         was purged up to {purged}: this replica cannot rebuild its state locally{set_aside}, \
         and fetching a snapshot from a peer failed: {tried}. Remove it from the group, wipe \
         its data dir and add it again (docs/operations.md)"
    )]
    SnapshotBehindLog {
        snapshot: u64,
        purged: u64,
        /// What was set aside on the way, if anything (for the message).
        set_aside: String,
        /// The peers asked for a snapshot and their errors (or why none was asked).
        tried: String,
    },
    #[error(transparent)]
    Fetch(super::fetch::FetchError),
    #[error("reading the log state: {0}")]
    LogState(std::io::Error),
}

/// openraft re-applies the committed log after the loaded snapshot; when the log was purged past
/// it (the newest snapshot was damaged and an older one loaded, or none loads) that cannot work
/// (openraft: "Cannot re-apply logs"). Then the state comes from a peer's snapshot
/// ([`fetch::recover`], before openraft starts); if no peer can send one, stop here with the
/// reason and the remedy.
async fn ensure_log_covers_snapshot<S: ShardState>(
    log: &mut LogStore,
    sm: &ShardStateMachine<S>,
    me: NodeId,
    network: &NetworkConfig,
) -> Result<Option<Fetched>, RaftShardError> {
    use openraft::storage::RaftLogStorage;
    let state = log
        .get_log_state()
        .await
        .map_err(RaftShardError::LogState)?;
    let purged = state.last_purged_log_id.map_or(0, |l| l.index);
    let snapshot = sm.last_applied().map_or(0, |l| l.index);
    if purged <= snapshot {
        return Ok(None);
    }
    let tried = match fetch::recover(log, sm, me, purged, network).await {
        Ok(fetched) => return Ok(Some(fetched)),
        Err(FetchError::Unavailable(tried)) => tried,
        Err(e) => return Err(RaftShardError::Fetch(e)),
    };
    let set_aside: Vec<String> = sm
        .set_aside_at_open()
        .iter()
        .map(|s| format!("{} ({})", s.dir.display(), s.reason))
        .collect();
    Err(RaftShardError::SnapshotBehindLog {
        snapshot,
        purged,
        set_aside: if set_aside.is_empty() {
            String::new()
        } else {
            format!("; set aside as damaged: {}", set_aside.join(", "))
        },
        tried,
    })
}

/// A running member: the Raft handle and its gRPC server.
pub struct RaftShard<S: ShardState> {
    raft: KindexRaft<S>,
    state: Arc<S>,
    sm: ShardStateMachine<S>,
    store: SnapshotStore,
    local_addr: Option<std::net::SocketAddr>,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    log_release: LogStoreRelease,
    /// The snapshot fetched from a peer at start, if one was needed.
    fetched: Option<Fetched>,
}

/// Leader-side view of the group, from openraft's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node_id: NodeId,
    pub is_leader: bool,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// Committed as known locally (what this node may apply).
    pub committed: Option<LogId>,
    /// Committed by a quorum as last reported by the leader (may be ahead of `committed`).
    pub cluster_committed: Option<LogId>,
    pub last_applied: Option<LogId>,
    pub snapshot: Option<LogId>,
    pub purged: Option<LogId>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Leader only: per follower/learner, how many entries it is behind the leader's last log.
    pub lag: BTreeMap<NodeId, u64>,
}

impl<S: ShardState> RaftShard<S> {
    /// Open the data dir, start Raft and serve the Raft RPCs on `listener`.
    /// The member is pristine until [`Self::raft`]`.initialize(..)` (first start of the group)
    /// or until a leader adds it.
    ///
    /// Without a listener no Raft RPCs are served: only for a group of one member (a standalone
    /// node), which never receives any.
    pub async fn start(
        cfg: RaftShardConfig,
        state: Arc<S>,
        listener: Option<TcpListener>,
    ) -> Result<Self, RaftShardError> {
        let raft_cfg = Arc::new(cfg.raft.clone().validate()?);
        if raft_cfg.enable_leader_restore != Some(false) {
            tracing::warn!(
                "UNSAFE: raft leader restore is on (tests only): a restarted leader may lose acknowledged writes"
            );
        }
        let mut cfg = cfg;
        cfg.network.faults = cfg.faults.clone();
        cfg.log.faults = cfg.faults.clone();
        cfg.state_machine.faults = cfg.faults.clone();
        let mut log = LogStore::open(&cfg.log)?;
        let log_release = log.release_tracker();
        let sm = ShardStateMachine::open(
            cfg.data_dir.join("snapshots"),
            state.clone(),
            cfg.state_machine.clone(),
        )
        .await?;
        // Before openraft: it would refuse a log purged past the loaded snapshot.
        let fetched = ensure_log_covers_snapshot(&mut log, &sm, cfg.node_id, &cfg.network).await?;
        let sm_handle = sm.clone();
        let store = sm.snapshot_store().clone();
        let network = RaftNetworkFactoryImpl::new(cfg.node_id, cfg.network.clone());
        let raft = openraft::Raft::new(cfg.node_id, raft_cfg, network, log, sm)
            .await
            .map_err(|e| RaftShardError::Start(e.to_string()))?;

        let (local_addr, stop_server, server) = match listener {
            None => (None, None, None),
            Some(listener) => {
                let local_addr = listener.local_addr().map_err(RaftShardError::Listener)?;
                let svc = RaftGrpcService::new(
                    cfg.node_id,
                    raft.clone(),
                    store.clone(),
                    cfg.network.clone(),
                )
                .into_server();
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                let router = tonic::transport::Server::builder().add_service(svc);
                let server = tokio::spawn(crate::tls::serve(
                    router,
                    listener,
                    cfg.network.tls.as_ref().map(|t| t.acceptor()),
                    async {
                        let _ = stop_rx.await;
                    },
                ));
                (Some(local_addr), Some(stop_tx), Some(server))
            }
        };
        Ok(Self {
            raft,
            state,
            sm: sm_handle,
            store,
            local_addr,
            stop_server,
            server,
            log_release,
            fetched,
        })
    }

    pub fn raft(&self) -> &KindexRaft<S> {
        &self.raft
    }

    pub fn state(&self) -> &Arc<S> {
        &self.state
    }

    /// Where the Raft RPCs are served (None: not served).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local_addr
    }

    /// The state machine (apply digests, last applied).
    pub fn state_machine(&self) -> &ShardStateMachine<S> {
        &self.sm
    }

    /// The snapshot fetched from a peer at start because the local state could not be rebuilt
    /// from this member's own disk (None: not needed).
    pub fn fetched_at_start(&self) -> Option<&Fetched> {
        self.fetched.as_ref()
    }

    /// The snapshot directories (`<data>/snapshots`).
    pub fn snapshot_store(&self) -> &SnapshotStore {
        &self.store
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let lag = replication_lag(&m);
        let membership = m.membership_config.membership();
        RaftStatus {
            node_id: m.id,
            is_leader: m.current_leader == Some(m.id),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed,
            cluster_committed: m.cluster_committed,
            last_applied: m.last_applied,
            snapshot: m.snapshot,
            purged: m.purged,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            lag,
        }
    }

    /// Stop Raft, then the server, then wait (up to 10 s) until openraft's tasks have dropped
    /// the log store: once this returns Ok, the data dir is free to be opened again.
    pub async fn shutdown(mut self) -> Result<(), String> {
        let res = self.raft.shutdown().await.map_err(|e| e.to_string());
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        res?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.log_release.is_released() {
            if tokio::time::Instant::now() >= deadline {
                return Err("raft log store still in use 10 s after shutdown".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

impl<S: ShardState> Drop for RaftShard<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
    }
}

/// Entries each follower is behind the leader's last log entry (empty unless leader).
pub fn replication_lag(m: &super::RaftMetrics) -> BTreeMap<NodeId, u64> {
    let last = m.last_log_index.unwrap_or(0);
    m.replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index))))
                .collect()
        })
        .unwrap_or_default()
}
