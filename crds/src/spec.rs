//! `VectorIndex` spec: the desired state a user writes.
//!
//! Every default lives in exactly one place, the `default_*` functions below. serde uses
//! them (so Rust code always sees a value) and schemars copies them into the schema's
//! `default:` (so the API server fills them in and CEL rules see them).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::status::VectorIndexStatus;

pub const DEFAULT_SHARDS: u32 = 1;
pub const DEFAULT_REPLICAS: u32 = 3;
pub const DEFAULT_HNSW_M: u32 = 16;
pub const DEFAULT_EF_CONSTRUCTION: u32 = 200;
pub const DEFAULT_EF_SEARCH: u32 = kindex_common::runtime::DEFAULT_EF_SEARCH;
pub const DEFAULT_INDEXING_THREADS: u32 = kindex_common::runtime::DEFAULT_INDEXING_THREADS;
pub const DEFAULT_BATCH_SIZE: u32 = kindex_common::runtime::DEFAULT_INDEXING_BATCH_SIZE;
pub const DEFAULT_QUEUE_CAPACITY: u32 = kindex_common::runtime::DEFAULT_QUEUE_CAPACITY;
pub const DEFAULT_SNAPSHOT_INTERVAL: &str = "5m";
pub const DEFAULT_SNAPSHOT_LOG_ENTRIES: u64 = kindex_common::runtime::DEFAULT_SNAPSHOT_LOG_ENTRIES;
pub const DEFAULT_SNAPSHOT_KEEP: u32 = kindex_common::runtime::DEFAULT_SNAPSHOT_KEEP;
pub const DEFAULT_STORAGE_SIZE: &str = "10Gi";
/// Upper bound on `spec.policies`; also keeps the API server's CEL cost estimate small.
pub const MAX_POLICIES: usize = 32;
/// Longest `VectorIndex` name whose derived names all stay legal: a StatefulSet name must
/// leave room for the pod ordinal and the `controller-revision-hash` label (63 chars,
/// ≈ name + 11), and `<index>-s63-headless` must be a 63-char DNS label.
pub const MAX_INDEX_NAME: usize = 40;
/// DNS-1035 label: the index name names Services.
pub const DNS_1035_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// A container image reference (the distribution reference grammar without IPv6 hosts):
/// `[host[:port]/]path[:tag][@algorithm:hex]`. Written without backslashes so it can sit
/// in a CEL string literal as is.
pub const IMAGE_PATTERN: &str = concat!(
    "^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?",
    "[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*",
    "(:[a-zA-Z0-9_][-a-zA-Z0-9_.]{0,127})?",
    "(@[a-zA-Z][a-zA-Z0-9]*([-_+.][a-zA-Z][a-zA-Z0-9]*)*:[0-9a-fA-F]{32,})?$"
);
/// Most entries of `resources.limits` / `resources.requests` (bounds the CEL cost).
pub const MAX_RESOURCE_ENTRIES: u32 = 16;

/// Go-style duration made of `<digits><unit>` parts, e.g. `90s`, `5m`, `1h30m`, `500ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// A positive Kubernetes quantity in plain, binary-SI or decimal-SI form, e.g. `10Gi`, `500M`.
pub const STORAGE_SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// RFC 1123 DNS label (policy names).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// RFC 1123 DNS subdomain (storage class names).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A sharded, replicated HNSW vector index.
///
/// Structural fields (`dimension`, `metric`, `shards`, `quantization`, `hnsw.m`,
/// `hnsw.efConstruction`) are fixed at creation: the data on disk is built with them, so
/// the CRD rejects any change with a CEL `self == oldSelf` rule. Everything else is a
/// runtime knob.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// clippy sees the repeated `type_ = ...` of separate printcolumns as duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "kindex.dev",
    version = "v1alpha1",
    kind = "VectorIndex",
    plural = "vectorindexes",
    shortname = "vidx",
    category = "kindex",
    namespaced,
    status = "VectorIndexStatus",
    derive = "PartialEq",
    doc = "A sharded, replicated vector index managed by the kindex operator.",
    // `kubectl scale vidx/x --replicas=N` changes the replicas *per shard*; the status
    // side reports the same unit (see `VectorIndexStatus::replicas`).
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        description = "Replicas per shard",
        json_path = ".spec.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Ready pods / desired pods over all shards",
        json_path = ".status.ready"
    ),
    printcolumn(name = "Vectors", type_ = "integer", json_path = ".status.vectors"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
// Admission of the name: the operator derives StatefulSet, pod and Service names from it.
#[kube(
    validation = Rule::new(format!("self.metadata.name.size() <= {MAX_INDEX_NAME}")).message(kube::core::Message::Message(format!(
        "metadata.name must be at most {MAX_INDEX_NAME} characters: the names of the index's \
         StatefulSets, pods and Services derive from it"
    ))),
    validation = Rule::new(format!("self.metadata.name.matches('{DNS_1035_PATTERN}')")).message(
        "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting \
         with a letter, not ending with '-') because it names Services"
    )
)]
// Presence rules: a structural field that was set may not be dropped. API-server
// defaulting normally refills a dropped field before CEL runs (and then `self == oldSelf`
// on the field decides); these rules keep the guarantee if a default is ever removed.
#[x_kube(
    validation = Rule::new("!has(oldSelf.shards) || has(self.shards)")
        .message("shards cannot be removed once set"),
    validation = Rule::new("!has(oldSelf.hnsw) || has(self.hnsw)")
        .message("hnsw cannot be removed once set"),
    validation = Rule::new("!has(oldSelf.quantization) || has(self.quantization)")
        .message("quantization cannot be removed once set"),
    validation = Rule::new(
        "(has(oldSelf.peerTls) && has(oldSelf.peerTls.enabled) && oldSelf.peerTls.enabled) == \
         (has(self.peerTls) && has(self.peerTls.enabled) && self.peerTls.enabled)"
    )
    .message(
        "peerTls.enabled is set when the index is created: pods with and without peer mTLS \
         cannot talk to each other, so a running index cannot switch; create a new VectorIndex"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VectorIndexSpec {
    /// Number of f32 components in every vector (structural, immutable).
    #[schemars(range(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "dimension is immutable (structural field); create a new VectorIndex to change it"
    ))]
    pub dimension: u32,

    /// Distance metric (structural, immutable).
    // maxLength bounds the API server's CEL cost estimate for the rule below.
    #[schemars(extend("maxLength" = 16))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "metric is immutable (structural field); create a new VectorIndex to change it"
    ))]
    pub metric: Metric,

    /// Number of shards; each is its own Raft group and StatefulSet (structural, immutable).
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "shards is immutable (structural field); create a new VectorIndex to change it"
    ))]
    pub shards: u32,

    /// How the graph stores vectors besides the f32 originals (structural, immutable):
    /// `none` (f32 only), `int8` (scalar int8 codes for graph traversal, the best
    /// `rescore × k` candidates re-ranked exactly with the f32 vectors) or `binary` (one
    /// bit per dimension for traversal, the graph linked on f32 distances, the same exact
    /// re-ranking; meant for 384 dimensions and more, with a larger `rescore`).
    #[serde(default)]
    // maxLength bounds the API server's CEL cost estimate for the rule below.
    #[schemars(extend("maxLength" = 16))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "quantization is immutable (structural field); create a new VectorIndex to change it"
    ))]
    pub quantization: Quantization,

    /// Replicas per shard (Raft voters). Odd numbers are recommended.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 7))]
    pub replicas: u32,

    /// HNSW graph parameters.
    #[serde(default)]
    pub hnsw: HnswSpec,

    /// Background indexing knobs (runtime).
    #[serde(default)]
    pub indexing: IndexingSpec,

    /// Snapshot triggers and retention (runtime).
    #[serde(default)]
    pub snapshots: SnapshotSpec,

    /// Per-pod persistent volume.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Index node image; the operator supplies its own default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(format!("self.matches('{IMAGE_PATTERN}')")).message(
        "image must be a container image reference such as registry.example.com/kindex/node:0.1.0 \
         (no whitespace, lowercase repository path, optional :tag and @sha256:digest)"
    ))]
    pub image: Option<String>,

    /// Resources of the index node container (quantities checked by the API server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// Scheduling overrides for the index pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// Policies synced by the operator into every shard's Raft state machine (condition PoliciesSynced, status.shards[].policiesSynced; docs/policies.md). Enforced by the nodes: quota and retention (index-wide maxVectors and quota maxPayloadBytes split over the shards; maxAgeSeconds, timestampField and tenantField the same on every shard), schema and searchDefaults (each shard gets them unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub policies: Vec<PolicySpec>,

    /// Data-plane authentication (docs/security.md). Unset: the nodes accept every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// Who may reach the index's pods (docs/security.md). Unset: a NetworkPolicy lets only
    /// the index's own pods and the operator reach the Raft (7071) and admin (7072) ports,
    /// and anyone reach the client ports (7070, 7080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,

    /// Peer mTLS between the index's pods (docs/security.md). Unset: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls: Option<PeerTlsSpec>,
}

/// See [`VectorIndexSpec::peer_tls`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerTlsSpec {
    /// The operator keeps a CA for the index (Secret `<index>-peer-ca`) and a certificate
    /// its pods share (Secret `<index>-peer-tls`, mounted), renews the certificate before it
    /// expires and rotates the CA with an overlap; the Raft (7071) and admin (7072) ports
    /// then accept only clients with a certificate of that CA, the operator included. Set
    /// when the index is created: a running index cannot switch.
    #[serde(default)]
    pub enabled: bool,
}

impl PeerTlsSpec {
    /// Whether peer mTLS is on (`peerTls` unset: off).
    pub fn enabled(spec: Option<&PeerTlsSpec>) -> bool {
        spec.is_some_and(|p| p.enabled)
    }
}

/// Names the operator, the nodes and `kubectl kindex` agree on for peer mTLS.
pub mod peer_tls {
    /// The Secret holding the index's CA (`ca.crt`, `ca.key`); the operator only.
    pub fn ca_secret(index: &str) -> String {
        format!("{index}-peer-ca")
    }
    /// The TLS Secret every pod of the index mounts (`tls.crt`, `tls.key`, `ca.crt`).
    pub fn node_secret(index: &str) -> String {
        format!("{index}-peer-tls")
    }
    /// The DNS name in the index's certificate, which every peer checks
    /// (`--peer-tls-server-name`): one name for all pods, so the certificate does not
    /// depend on pod addresses.
    pub fn server_name(index: &str, namespace: &str) -> String {
        format!("{index}.{namespace}.kindex-peer")
    }
}

/// See [`VectorIndexSpec::network`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Render the NetworkPolicy (default true). Set false when the cluster's policies are
    /// managed elsewhere; the pods are then reachable as the cluster's own policies allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<bool>,
    /// Peers allowed on the client ports 7070 (gRPC) and 7080 (HTTP, also `/metrics`): a
    /// NetworkPolicy `from` list (pod and namespace selectors, IP blocks). Unset: anyone.
    /// The index's own pods are always allowed (calls between nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_from: Option<Vec<NetworkPolicyPeer>>,
}

impl NetworkSpec {
    /// Whether the NetworkPolicy is rendered (`policy` defaults to true).
    pub fn policy_enabled(network: Option<&NetworkSpec>) -> bool {
        network.and_then(|n| n.policy).unwrap_or(true)
    }
}

/// Pattern of a Secret data key (also a file name in the mounted Secret).
pub const SECRET_KEY_PATTERN: &str = "^[-._a-zA-Z0-9]+$";
/// The Secret key holding read-write API keys unless `readWriteKey` says otherwise.
pub const DEFAULT_READ_WRITE_KEY: &str = "readWrite";

/// Data-plane authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// API keys from a Secret in the index's namespace, mounted into every index pod; the
    /// nodes then require `authorization: Bearer <key>` on gRPC 7070 and HTTP `/v1`, and
    /// re-read the keys as the kubelet updates the mounted Secret (rotation without a
    /// restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<ApiKeySecretRef>,
}

/// Which Secret, and which of its keys, hold the API keys (one key per line).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// The Secret key holding read-write API keys (must exist in the Secret).
    #[serde(default = "default_read_write_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub read_write_key: String,
    /// The Secret key holding read-only API keys (search, get, count, info); unset: no
    /// read-only keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub read_only_key: Option<String>,
}

fn default_read_write_key() -> String {
    DEFAULT_READ_WRITE_KEY.to_owned()
}

/// Distance metric between vectors; shared with the node (kindex-common), the schema is
/// derived from it.
pub use kindex_common::Metric;

/// Vector quantization (structural); shared with the node (kindex-common), the schema is
/// derived from it.
pub use kindex_common::Quantization;

/// HNSW graph parameters. `m` and `efConstruction` shape the graph on disk (immutable);
/// `efSearch` is a runtime knob.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(oldSelf.m) || has(self.m)")
        .message("hnsw.m cannot be removed once set"),
    validation = Rule::new("!has(oldSelf.efConstruction) || has(self.efConstruction)")
        .message("hnsw.efConstruction cannot be removed once set")
)]
#[serde(rename_all = "camelCase")]
pub struct HnswSpec {
    /// Links per node (structural, immutable).
    #[serde(default = "default_m")]
    #[schemars(range(min = 4, max = 128))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "hnsw.m is immutable (structural field); create a new VectorIndex to change it"
    ))]
    pub m: u32,

    /// Candidate list size while building (structural, immutable).
    #[serde(default = "default_ef_construction")]
    #[schemars(range(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "hnsw.efConstruction is immutable (structural field); create a new VectorIndex to change it"
    ))]
    pub ef_construction: u32,

    /// Candidate list size while searching (runtime).
    #[serde(default = "default_ef_search")]
    #[schemars(range(min = 1, max = 4096))]
    pub ef_search: u32,
}

impl Default for HnswSpec {
    fn default() -> Self {
        Self {
            m: default_m(),
            ef_construction: default_ef_construction(),
            ef_search: default_ef_search(),
        }
    }
}

/// Background indexing: workers move applied vectors from the queue into the graph.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IndexingSpec {
    /// Worker threads; 0 means one per available core.
    #[serde(default = "default_indexing_threads")]
    #[schemars(range(max = 256))]
    pub threads: u32,

    /// Vectors inserted per batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: u32,

    /// Vectors that may wait for indexing before Raft apply is held back.
    #[serde(default = "default_queue_capacity")]
    // An explicit maximum, so the API server never stores a value Rust cannot read.
    #[schemars(range(min = 1, max = u32::MAX))]
    pub queue_capacity: u32,
}

impl Default for IndexingSpec {
    fn default() -> Self {
        Self {
            threads: default_indexing_threads(),
            batch_size: default_batch_size(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

/// When snapshots are taken and how many are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Time between snapshots, e.g. `5m`, `1h30m` (at least 1s).
    #[serde(default = "default_snapshot_interval")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("snapshots.interval must be at least 1s"))]
    pub interval: String,

    /// Applied log entries between snapshots.
    #[serde(default = "default_snapshot_log_entries")]
    #[schemars(range(min = 1))]
    pub log_entries: u64,

    /// Snapshots kept on each volume.
    #[serde(default = "default_snapshot_keep")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: u32,
}

impl Default for SnapshotSpec {
    fn default() -> Self {
        Self {
            interval: default_snapshot_interval(),
            log_entries: default_snapshot_log_entries(),
            keep: default_snapshot_keep(),
        }
    }
}

/// The `data` volume claim of every index pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, a positive quantity such as `10Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(schema_with = "storage_size_schema")]
    // The pattern already refuses what is not a quantity; `isQuantity` keeps the rule from
    // failing to evaluate on such a value.
    #[x_kube(validation = Rule::new("!isQuantity(self) || quantity(self).isGreaterThan(quantity('0'))")
        .message("storage.size must be greater than zero, e.g. 10Gi"))]
    pub size: Quantity,

    /// Storage class of the claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub storage_class_name: Option<String>,

    /// Keep the PersistentVolumeClaims when the VectorIndex is deleted.
    #[serde(default = "default_true")]
    pub retain_on_delete: bool,

    /// Keep each replica's f32 vectors in files on its volume (mapped, in the kernel's page
    /// cache) instead of the pod's anonymous memory: the pages can be evicted under memory
    /// pressure and read back when needed. Meant for `quantization: int8`, where searches
    /// read the f32 vectors only to rescore; with `none` every search step reads them. The
    /// volume then needs 4 × dimension bytes per stored vector more (not counted in
    /// snapshots). Changing it restarts the pods one by one; no data is rewritten.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vectors_on_disk: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            retain_on_delete: default_true(),
            vectors_on_disk: false,
        }
    }
}

/// Pod scheduling fields copied into every shard's StatefulSet pod template.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Replaces the operator's default anti-affinity (spread replicas across nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// Most payload fields one `schema` policy lists (the nodes' limit).
pub const MAX_SCHEMA_FIELDS: usize = 64;
/// Most conditions of one `searchDefaults` filter, `must` and `mustNot` together (the
/// nodes' limit).
pub const MAX_FILTER_CONDITIONS: usize = 16;
/// Most fields one `searchDefaults` policy lists in `requireMatch`.
pub const MAX_REQUIRE_MATCH: usize = 16;
/// Longest payload field name in a policy (bounds the API server's CEL cost estimate).
pub const MAX_FIELD_NAME: usize = 256;

/// A named policy kept in each shard's Raft state machine (docs/policies.md). Which fields
/// apply depends on `kind`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.kind != 'retention' || has(self.maxAgeSeconds) || has(self.maxVectors)")
        .message("a retention policy needs maxAgeSeconds and/or maxVectors"),
    validation = Rule::new("self.kind != 'quota' || has(self.maxVectors) || has(self.maxPayloadBytes)")
        .message("a quota policy needs maxVectors and/or maxPayloadBytes"),
    validation = Rule::new("self.kind != 'schema' || has(self.fields) || has(self.maxPayloadBytes)")
        .message("a schema policy needs fields and/or maxPayloadBytes"),
    validation = Rule::new("self.kind != 'searchDefaults' || has(self.maxK) || has(self.maxEfSearch) || has(self.filter) || has(self.requireMatch)")
        .message("a searchDefaults policy needs maxK, maxEfSearch, filter and/or requireMatch"),
    validation = Rule::new("self.kind == 'retention' || !has(self.maxAgeSeconds)")
        .message("maxAgeSeconds applies to retention policies only"),
    validation = Rule::new("self.kind == 'quota' || self.kind == 'retention' || !has(self.maxVectors)")
        .message("maxVectors applies to quota and retention policies only"),
    validation = Rule::new("self.kind == 'quota' || self.kind == 'schema' || !has(self.maxPayloadBytes)")
        .message("maxPayloadBytes applies to quota and schema policies only"),
    validation = Rule::new("self.kind == 'schema' || !has(self.fields)")
        .message("fields applies to schema policies only"),
    validation = Rule::new("self.kind == 'searchDefaults' || !(has(self.maxK) || has(self.maxEfSearch) || has(self.filter) || has(self.requireMatch))")
        .message("maxK, maxEfSearch, filter and requireMatch apply to searchDefaults policies only"),
    validation = Rule::new("self.kind == 'retention' || !has(self.timestampField)")
        .message("timestampField applies to retention policies only"),
    // The nodes refuse a timestampField without an age to measure (it would do nothing).
    validation = Rule::new("!has(self.timestampField) || has(self.maxAgeSeconds)")
        .message("timestampField needs maxAgeSeconds"),
    validation = Rule::new("self.kind == 'quota' || !has(self.tenantField)")
        .message("tenantField applies to quota policies only")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Unique name within the index (a DNS label).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    // maxLength bounds the API server's CEL cost estimate for the rules above.
    #[schemars(extend("maxLength" = 16))]
    pub kind: PolicyKind,
    /// retention: points older than this (by their ingest time) are hidden from reads at once
    /// and removed by the shard leader's sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_age_seconds: Option<u64>,
    /// retention (needs maxAgeSeconds): age a point from this top-level payload field, read
    /// as Unix seconds (a JSON number, fractions allowed), instead of its ingest time. A point
    /// without a number in the field ages from its ingest time. maxVectors still removes the
    /// oldest by ingest time. The same on every shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_FIELD_NAME))]
    pub timestamp_field: Option<String>,
    /// quota: refuse writes that would take the index above this many vectors (index-wide:
    /// each shard gets ceil(maxVectors / shards)). retention: the sweep removes the oldest
    /// points beyond this count (index-wide, split the same way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_vectors: Option<u64>,
    /// schema: refuse an upserted point whose payload's JSON text is longer than this many
    /// bytes. quota: refuse writes that would take the payloads of the index above this many
    /// bytes (as stored: compact JSON; index-wide, each shard gets ceil(n / shards)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_payload_bytes: Option<u64>,
    /// quota: maxVectors and maxPayloadBytes hold per value of this top-level payload field
    /// (e.g. `tenant`; strings as they are, other values as JSON) instead of for all points;
    /// points without the field are not counted. Split like the index-wide limits: each
    /// shard allows each tenant ceil(limit / shards). Points go to shards by id hash and no
    /// shard knows the others' counts, so a tenant is refused once it fills its share on one
    /// shard, which can be before it holds the whole limit index-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_FIELD_NAME))]
    pub tenant_field: Option<String>,
    /// schema: top-level payload fields by name. A listed field that is present must have
    /// its type; a `required` one must be present and not null in every upserted point.
    /// Points stored before the policy are not re-checked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("minProperties" = 1, "maxProperties" = MAX_SCHEMA_FIELDS))]
    pub fields: BTreeMap<String, SchemaFieldSpec>,
    /// searchDefaults: a search asking for more hits than this is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub max_k: Option<u32>,
    /// searchDefaults: a search's efSearch (or the index's `hnsw.efSearch` when it gives
    /// none) is lowered to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub max_ef_search: Option<u32>,
    /// searchDefaults: conditions added (ANDed) to every search's filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<PolicyFilter>,
    /// searchDefaults: payload fields every search must constrain with a `must` equality
    /// (`match`) condition, e.g. `[tenant]`; other searches are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = MAX_REQUIRE_MATCH))]
    #[schemars(inner(length(min = 1, max = MAX_FIELD_NAME)))]
    pub require_match: Vec<String>,
}

impl PolicySpec {
    /// A policy of `kind` without any limit set.
    pub fn new(name: impl Into<String>, kind: PolicyKind) -> Self {
        Self {
            name: name.into(),
            kind,
            max_age_seconds: None,
            timestamp_field: None,
            max_vectors: None,
            max_payload_bytes: None,
            tenant_field: None,
            fields: BTreeMap::new(),
            max_k: None,
            max_ef_search: None,
            filter: None,
            require_match: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum PolicyKind {
    Retention,
    Quota,
    Schema,
    SearchDefaults,
}

/// One payload field of a `schema` policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SchemaFieldSpec {
    /// The JSON type a present value must have: string, number (any JSON number), integer
    /// (a number without a fraction that fits 64 bits), boolean, array or object.
    #[serde(rename = "type")]
    pub type_: SchemaFieldType,
    /// The field must be present and not null in every upserted point.
    #[serde(default)]
    pub required: bool,
}

/// JSON types a `schema` policy checks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SchemaFieldType {
    String,
    /// Any JSON number.
    Number,
    /// A number without a fraction that fits 64 bits.
    Integer,
    Boolean,
    Array,
    Object,
}

impl SchemaFieldType {
    /// The name the nodes use (and the CRD).
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaFieldType::String => "string",
            SchemaFieldType::Number => "number",
            SchemaFieldType::Integer => "integer",
            SchemaFieldType::Boolean => "boolean",
            SchemaFieldType::Array => "array",
            SchemaFieldType::Object => "object",
        }
    }
}

/// The mandatory filter of a `searchDefaults` policy: the search API's filter grammar
/// without `should` (the conditions are ANDed with each search's own filter).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("has(self.must) || has(self.mustNot)")
        .message("a searchDefaults filter needs must and/or mustNot conditions"),
    validation = Rule::new(format!("(has(self.must) ? size(self.must) : 0) + (has(self.mustNot) ? size(self.mustNot) : 0) <= {MAX_FILTER_CONDITIONS}"))
        .message(kube::core::Message::Message(format!("a searchDefaults filter has at most {MAX_FILTER_CONDITIONS} conditions (must and mustNot together)")))
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFilter {
    /// Conditions every hit must meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = MAX_FILTER_CONDITIONS))]
    pub must: Vec<FilterCondition>,
    /// Conditions no hit may meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = MAX_FILTER_CONDITIONS))]
    pub must_not: Vec<FilterCondition>,
}

/// A condition on one top-level payload field: an equality (`match`) or a numeric `range`,
/// exactly one of them. A point without the field meets no condition.
// No CEL rule for "exactly one": the API server's CEL does not see `match` (a field without
// a type), so `has(self.match)` does not compile there; the operator's validation refuses
// such a condition (InvalidSpec).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FilterCondition {
    /// Payload field name.
    #[schemars(length(min = 1, max = MAX_FIELD_NAME))]
    pub field: String,
    /// Equal to this string, integer (64-bit) or boolean.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "match_value_schema")]
    pub match_: Option<serde_json::Value>,
    /// A number within these bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<FilterRange>,
}

/// Numeric bounds; at least one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("has(self.gt) || has(self.gte) || has(self.lt) || has(self.lte)")
        .message("a range needs at least one of gt, gte, lt, lte")
)]
pub struct FilterRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

/// The fields the data on disk is built with. The node persists them (and their hash)
/// and refuses to start when they differ; the operator reports `ConfigDrift`.
pub use kindex_common::StructuralConfig;

/// The structural fields in spec order: the name [`StructuralConfig::diff`] reports, and
/// the YAML path under `spec`.
pub const STRUCTURAL_FIELDS: [(&str, &str); 6] = [
    ("dimension", "dimension"),
    ("metric", "metric"),
    ("shards", "shards"),
    ("quantization", "quantization"),
    ("m", "hnsw.m"),
    ("efConstruction", "hnsw.efConstruction"),
];

impl VectorIndexSpec {
    /// A spec with the required fields set and every other field at its default.
    pub fn new(dimension: u32, metric: Metric) -> Self {
        Self {
            dimension,
            metric,
            shards: default_shards(),
            quantization: Quantization::None,
            replicas: default_replicas(),
            hnsw: HnswSpec::default(),
            indexing: IndexingSpec::default(),
            snapshots: SnapshotSpec::default(),
            storage: StorageSpec::default(),
            image: None,
            resources: None,
            pod_template: None,
            policies: Vec::new(),
            auth: None,
            network: None,
            peer_tls: None,
        }
    }

    /// The structural (immutable) part of the spec.
    pub fn structural(&self) -> StructuralConfig {
        StructuralConfig {
            dimension: self.dimension,
            metric: self.metric,
            m: self.hnsw.m,
            ef_construction: self.hnsw.ef_construction,
            shards: self.shards,
            // `none` (the default) leaves the hash of every existing index unchanged.
            quantization: self.quantization,
        }
    }
}

fn default_shards() -> u32 {
    DEFAULT_SHARDS
}
fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}
fn default_m() -> u32 {
    DEFAULT_HNSW_M
}
fn default_ef_construction() -> u32 {
    DEFAULT_EF_CONSTRUCTION
}
fn default_ef_search() -> u32 {
    DEFAULT_EF_SEARCH
}
fn default_indexing_threads() -> u32 {
    DEFAULT_INDEXING_THREADS
}
fn default_batch_size() -> u32 {
    DEFAULT_BATCH_SIZE
}
fn default_queue_capacity() -> u32 {
    DEFAULT_QUEUE_CAPACITY
}
fn default_snapshot_interval() -> String {
    DEFAULT_SNAPSHOT_INTERVAL.to_owned()
}
fn default_snapshot_log_entries() -> u64 {
    DEFAULT_SNAPSHOT_LOG_ENTRIES
}
fn default_snapshot_keep() -> u32 {
    DEFAULT_SNAPSHOT_KEEP
}
fn default_storage_size() -> Quantity {
    Quantity(DEFAULT_STORAGE_SIZE.to_owned())
}
fn default_true() -> bool {
    true
}

/// `ResourceRequirements` with its quantities checked: k8s-openapi's schema takes any
/// string, which the API server stores and the operator's StatefulSet then fails on.
fn resources_schema(generator: &mut SchemaGenerator) -> Schema {
    let quantities = |which: &str| {
        json_schema!({
            "type": "object",
            "description": format!("{which} of compute resources, e.g. cpu: 500m, memory: 4Gi."),
            "maxProperties": MAX_RESOURCE_ENTRIES,
            // The rule sits on each value: no comprehension, and its cost is per value.
            "additionalProperties": {
                // Bounds the API server's cost estimate of the rule (a quantity is short).
                "maxLength": 64,
                "x-kubernetes-int-or-string": true,
                "x-kubernetes-validations": [{
                    "rule": "isQuantity(string(self))",
                    "message": format!("every value of resources.{} must be a quantity such as 500m, 2 or 4Gi", which.to_lowercase())
                }]
            }
        })
    };
    let mut s = ResourceRequirements::json_schema(generator);
    if let Some(props) = s.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert("limits".into(), quantities("Limits").to_value());
        props.insert("requests".into(), quantities("Requests").to_value());
    }
    // The field is an `Option`; keep it nullable as the derived schema had it.
    s.insert("nullable".into(), true.into());
    s
}

/// `Quantity` is int-or-string in k8s-openapi; a volume size is always a string here, so
/// the schema can carry a pattern the API server checks.
fn storage_size_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 32,
        "pattern": STORAGE_SIZE_PATTERN,
    })
}

/// A filter's `match` value: a string, an integer or a boolean. A structural schema cannot
/// say "one of these scalar types", so the API server keeps any value (and its CEL rules
/// cannot see the field); the operator's validation refuses the others, naming the
/// condition.
fn match_value_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Equal to this string, integer (64-bit) or boolean.",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
