//! Pure builders: a [`ValidIndex`] (+ a few observed facts passed in as parameters) → the Kubernetes objects the operator applies. No I/O here; the golden
//! tests in `tests/golden.rs` pin their output.

pub mod configmap;
pub mod labels;
pub mod network_policy;
pub mod pdb;
pub mod service;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use network_policy::OperatorPeer;
pub use statefulset::StatefulSetParams;

use crate::validate::ValidIndex;

/// Every object of one index. Apply and the orphan sweep destructure it without `..`,
/// so a new kind of object cannot be forgotten by either.
#[derive(Debug, Clone)]
pub struct Desired {
    pub configmap: ConfigMap,
    pub client_service: Service,
    /// None: `spec.network.policy: false` (an existing one is deleted as an orphan).
    pub network_policy: Option<NetworkPolicy>,
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
pub fn build_all(vi: &ValidIndex, shards: &[ShardParams], operator: &OperatorPeer) -> Desired {
    Desired {
        configmap: configmap::build_configmap(vi),
        client_service: service::build_client_service(vi),
        network_policy: network_policy::build_network_policy(vi, operator),
        shards: shards
            .iter()
            .zip(0u32..)
            .map(|(p, shard)| ShardObjects {
                headless: service::build_headless_service(vi, shard),
                pdb: pdb::build_pdb(vi, shard, p.voters),
                statefulset: statefulset::build_statefulset(vi, shard, &p.statefulset),
            })
            .collect(),
    }
}

/// Metadata of an owned object: name, namespace, labels, controller owner reference
/// (so deleting the VectorIndex garbage-collects everything).
pub(crate) fn owned_meta(
    vi: &ValidIndex,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(vi.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![vi.owner.clone()]),
        ..ObjectMeta::default()
    }
}
