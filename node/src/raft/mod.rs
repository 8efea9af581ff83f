//! The Raft layer of one shard: every write is committed on a quorum before it is acknowledged.
//!
//! - [`log_store`]: durable Raft log + vote on the data dir (raft-log WAL, fsync before ack).
//! - [`state_machine`]: applies committed [`Command`]s to a [`ShardState`] (the engine) and
//!   builds, loads and installs snapshots in the [`crate::snapshot::store`];
//!   [`snapshot`]: the `RAFT_META` file of each snapshot.
//! - [`network`] / [`server`]: the Raft transport over the `kindex.v1.Raft` gRPC service;
//!   [`transfer`]: a snapshot sent to a replica as a chunk stream.
//! - [`shard`]: wires the above into one running Raft member (`RaftShard`).
//! - [`digest`]: the running digest of what was applied, compared across replicas (divergence
//!   guard); [`fault`]: fault injection for tests.
//!
//! openraft is `=0.10.0-alpha.37`; see `NOTES.md` in this directory for the API facts this module relies on.

pub mod digest;
pub mod engine_state;
pub mod fault;
pub mod fetch;
pub mod log_store;
pub mod network;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod state_machine;
pub mod transfer;
pub mod usage;
pub mod wire;

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

pub use self::engine_state::EngineState;
pub use self::log_store::LogStore;
pub use self::log_store::LogStoreConfig;
pub use self::network::NetworkConfig;
pub use self::network::RaftNetworkFactoryImpl;
pub use self::server::RaftGrpcService;
pub use self::shard::RaftShard;
pub use self::shard::RaftShardConfig;
pub use self::snapshot::SnapshotDir;
pub use self::state_machine::ApplyOutcome;
pub use self::state_machine::ShardState;
pub use self::state_machine::ShardStateMachine;
pub use self::state_machine::SnapshotWriter;

/// Node id = the pod ordinal.
pub type NodeId = u64;

/// A member's address: `BasicNode { addr }` with `addr` = `"raft_host:port"` (the pod's Raft
/// endpoint, port 7071), `"raft_host:port|grpc_host:port"` when the member's client gRPC
/// endpoint (port 7070) cannot be derived from it, or `"raft|grpc|admin_host:port"` when its
/// Admin endpoint (port 7072) cannot either (see [`raft_addr_of`], [`grpc_addr_of`],
/// [`admin_addr_of`]). Older two-part addresses stay valid.
pub type Member = openraft::BasicNode;

/// The `n`th `|`-separated part of a member address, if present and not empty.
fn part(addr: &str, n: usize) -> Option<&str> {
    addr.split('|').nth(n).filter(|p| !p.is_empty())
}

/// The Raft endpoint of a member address (`"raft"`, `"raft|grpc"` or `"raft|grpc|admin"`).
pub fn raft_addr_of(addr: &str) -> &str {
    addr.split('|').next().unwrap_or(addr)
}

/// The client gRPC endpoint of a member address, if it carries one (`"raft|grpc..."`).
pub fn grpc_addr_of(addr: &str) -> Option<&str> {
    part(addr, 1)
}

/// The Admin gRPC endpoint of a member address, if it carries one (`"raft|grpc|admin"`).
pub fn admin_addr_of(addr: &str) -> Option<&str> {
    part(addr, 2)
}

openraft::declare_raft_types!(
    /// openraft type configuration of a kindex shard.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotDir>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
/// The Raft handle of a shard whose engine is `S`.
pub type KindexRaft<S> = openraft::Raft<TypeConfig, ShardStateMachine<S>>;

/// One point of an upsert: string id, vector, optional JSON payload (kept as text so the log
/// encoding stays schema-free and compact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointRecord {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload_json: Option<String>,
}

/// A replicated write. Applied in log order on every replica; must be validated (dimension,
/// ids, limits) by the coordinator *before* it is proposed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Upsert {
        points: Vec<PointRecord>,
    },
    Delete {
        ids: Vec<String>,
    },
    /// Reserved for policy updates (retention, quota, prune). The policy is JSON text rather than
    /// a `serde_json::Value` because the log and the wire use postcard, which cannot decode
    /// self-describing values.
    Policy {
        json: String,
    },
    /// An upsert with the proposing leader's clock (ms since the Unix epoch): the points' ingest
    /// stamp, for retention (the state machine keeps the highest stamp seen, so time never
    /// goes back across leaders). Proposed only once every member reports
    /// [`crate::policy::RETENTION_FEATURE`]: older builds cannot decode it.
    StampedUpsert {
        stamp_ms: u64,
        points: Vec<PointRecord>,
    },
}

impl Command {
    /// The points of an upsert, stamped or not.
    pub fn upserted(&self) -> Option<&[PointRecord]> {
        match self {
            Command::Upsert { points } | Command::StampedUpsert { points, .. } => Some(points),
            Command::Delete { .. } | Command::Policy { .. } => None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Upsert { points } => write!(f, "upsert({} points)", points.len()),
            Command::StampedUpsert { stamp_ms, points } => {
                write!(f, "upsert({} points, stamp {stamp_ms})", points.len())
            }
            Command::Delete { ids } => write!(f, "delete({} ids)", ids.len()),
            Command::Policy { json } => write!(f, "policy({} bytes)", json.len()),
        }
    }
}

/// The result of applying one log entry, returned by `client_write` on the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Log index at which the command was applied (the client's "session" token).
    pub applied_index: u64,
    /// Points inserted/replaced/deleted; for a policy command, the policy's newest version.
    pub affected: u64,
    /// Set when the state deterministically refused the command (e.g. quota); nothing changed.
    pub rejected: Option<Refusal>,
}

/// Why the state machine refused a command: the same on every replica, nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// Input the state cannot store (it passed an older leader's validation).
    Invalid,
    /// A quota policy.
    Quota,
    /// A policy change that names nothing to change.
    NotFound,
    /// A policy change with a stale `expectedVersion`, or to a policy of the other source.
    Conflict,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Invalid, message)
    }
}

/// A stable wire/log representation size estimate for a command, used by the log cache and to
/// bound AppendEntries batches.
pub(crate) fn command_size(cmd: &Command) -> u64 {
    match cmd {
        Command::Upsert { points } | Command::StampedUpsert { points, .. } => points
            .iter()
            .map(|p| {
                (p.id.len()
                    + p.vector.len() * 4
                    + p.payload_json.as_ref().map_or(0, String::len)
                    + 16) as u64
            })
            .sum(),
        Command::Delete { ids } => ids.iter().map(|i| i.len() as u64 + 2).sum(),
        Command::Policy { json } => json.len() as u64,
    }
}

/// Size estimate of a log payload (see [`command_size`]).
pub(crate) fn payload_size(payload: &EntryPayload) -> u64 {
    match payload {
        openraft::EntryPayload::Normal(cmd) => command_size(cmd) + 16,
        openraft::EntryPayload::Blank => 16,
        openraft::EntryPayload::Membership(m) => 64 + 64 * m.nodes().count() as u64,
    }
}
