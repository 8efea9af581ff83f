//! `VectorIndex` status: what the operator observed. Only the operator writes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `status.conditions[].type` values.
pub mod condition_types {
    /// Every shard has a leader and all desired replicas are ready and caught up.
    pub const READY: &str = "Ready";
    /// The operator is creating, scaling or rolling the index.
    pub const PROGRESSING: &str = "Progressing";
    /// Some shard lost replicas or its quorum.
    pub const DEGRADED: &str = "Degraded";
    /// A node's data was built with structural settings that differ from the spec.
    pub const CONFIG_DRIFT: &str = "ConfigDrift";
    /// Reconciliation is paused by the `kindex.dev/paused: "true"` annotation.
    pub const PAUSED: &str = "Paused";
    /// Every shard applies the policies of `spec.policies` (docs/policies.md).
    pub const POLICIES_SYNCED: &str = "PoliciesSynced";
}

/// Observed state of a `VectorIndex`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VectorIndexStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Standard conditions, one per type: Ready, Progressing, Degraded, ConfigDrift,
    /// PoliciesSynced, and Paused while the `kindex.dev/paused: "true"` annotation is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// One entry per shard, keyed by `shard`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["shard".into()]))]
    pub shards: Vec<ShardStatus>,

    /// Live vectors over all shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<u64>,

    /// Replicas *per shard* that currently exist in every shard (the minimum over shards),
    /// in the same unit as `spec.replicas`, so the scale subresource (`kubectl scale`,
    /// HPA) compares like with like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Ready index pods over all shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// `"<ready pods>/<desired pods>"` over all shards, for the Ready printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Label selector of the index pods (string form), for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// The newest on-disk data format any node of the index ever reported (snapshot format
    /// numbers; unset while only builds that do not report it ran). Never decreases: the
    /// operator refuses a `spec.image` of an older release that cannot read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_format: Option<u32>,
}

impl VectorIndexStatus {
    /// The text of the Ready printer column, e.g. `"8/9"`.
    pub fn ready_column(ready_pods: i32, desired_pods: i32) -> String {
        format!("{ready_pods}/{desired_pods}")
    }
}

/// Coarse lifecycle of the index, shown in `kubectl get vidx`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Phase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Objects created; waiting for the first pods and Raft groups.
    Creating,
    /// All shards have a leader and all replicas are ready (condition `Ready`). Status written
    /// by operators before 0.2 says `Running`; it is read as `Ready`.
    #[serde(alias = "Running")]
    Ready,
    /// Replicas are being added or removed.
    Scaling,
    /// Image or pod template rolling out.
    Upgrading,
    /// Serving, but some shard lacks replicas (still has quorum).
    Degraded,
    /// Cannot make progress: invalid spec, config drift, or a shard without quorum.
    /// The conditions say which.
    Failed,
}

/// Observed state of one shard (one Raft group).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// Shard index, `0..spec.shards`.
    pub shard: u32,
    /// Pod name of the current Raft leader, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Pod names of the Raft voters. A voter whose pod came back on a new, empty volume
    /// (a new Raft identity) reads `<pod> (replaced: lost volume)` until the operator has
    /// replaced it in the membership.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Ready pods of this shard.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Highest log index applied by the leader (or the most advanced replica).
    #[serde(default)]
    pub applied_index: u64,
    /// Live vectors in the shard.
    #[serde(default)]
    pub vectors: u64,
    /// When the newest snapshot was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
    /// Whether the shard's leader applies every policy of `spec.policies` that the operator
    /// sends (at the last reconcile). Kinds the nodes do not enforce yet are not sent, so they
    /// do not count here; the `PoliciesSynced` condition names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies_synced: Option<bool>,
}
