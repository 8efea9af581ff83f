//! Pure builders: validated `VectorIndex` (+ a few observed facts passed in as
//! parameters) → the Kubernetes objects the operator applies. No I/O here; the golden
//! tests in `tests/golden.rs` pin their output.

pub mod configmap;
pub mod labels;
pub mod pdb;
pub mod service;
pub mod statefulset;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kindex_crds::VectorIndex;
use kube::{Resource, ResourceExt};

pub use statefulset::StatefulSetParams;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the VectorIndex has no uid/namespace yet (not read from the API server)")]
    NoOwner,
    #[error("spec.snapshots.interval: {0}")]
    Interval(&'static str),
    #[error("serializing {0}: {1}")]
    Json(&'static str, serde_json::Error),
}

/// Every object of one index, in apply order.
#[derive(Debug, Clone)]
pub struct Desired {
    pub configmap: ConfigMap,
    pub client_service: Service,
    pub shards: Vec<ShardObjects>,
}

#[derive(Debug, Clone)]
pub struct ShardObjects {
    pub headless: Service,
    pub pdb: PodDisruptionBudget,
    pub statefulset: StatefulSet,
}

/// Observed facts a shard's objects depend on (see [`StatefulSetParams`]).
#[derive(Debug, Clone)]
pub struct ShardParams {
    pub statefulset: StatefulSetParams,
    /// Raft voters the PDB protects: `min(spec.replicas, observed voters)`.
    pub voters: u32,
}

/// Build every object; `shards[i]` holds the parameters of shard `i`.
pub fn build_all(vi: &VectorIndex, shards: &[ShardParams]) -> Result<Desired, BuildError> {
    let configmap = configmap::build_configmap(vi)?;
    let client_service = service::build_client_service(vi)?;
    let shards = shards
        .iter()
        .zip(0u32..)
        .map(|(p, shard)| {
            Ok(ShardObjects {
                headless: service::build_headless_service(vi, shard)?,
                pdb: pdb::build_pdb(vi, shard, p.voters)?,
                statefulset: statefulset::build_statefulset(vi, shard, &p.statefulset)?,
            })
        })
        .collect::<Result<_, BuildError>>()?;
    Ok(Desired {
        configmap,
        client_service,
        shards,
    })
}

/// Metadata of an owned object: name, namespace, labels, controller owner reference
/// (so deleting the VectorIndex garbage-collects everything).
pub(crate) fn owned_meta(
    vi: &VectorIndex,
    name: String,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(vi.namespace().ok_or(BuildError::NoOwner)?),
        labels: Some(labels),
        owner_references: Some(vec![owner_ref(vi)?]),
        ..ObjectMeta::default()
    })
}

/// Controller reference; `blockOwnerDeletion` so a foreground deletion of the index
/// waits for its objects (RBAC: `update` on `vectorindexes/finalizers`).
pub fn owner_ref(vi: &VectorIndex) -> Result<OwnerReference, BuildError> {
    let mut r = vi.controller_owner_ref(&()).ok_or(BuildError::NoOwner)?;
    r.block_owner_deletion = Some(true);
    Ok(r)
}
