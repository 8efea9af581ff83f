//! The kindex operator: turns `VectorIndex` objects into ConfigMaps, Services,
//! StatefulSets and PodDisruptionBudgets, and runs each shard's Raft membership.
//!
//! Reconcile is a pipeline (see [`reconcile`]): fetch → validate ([`validate`]) →
//! observe → build (pure and infallible, [`build`]) → server-side apply ([`apply`]) → delete orphans → one
//! membership or rollout step ([`membership`], [`rollout`]) → status patch
//! ([`status`]). Every decision is a pure function of observed state, so it is
//! unit-tested without an API server or nodes.

pub mod apply;
pub mod build;
pub mod controller;
pub mod events;
pub mod membership;
pub mod metrics;
pub mod observe;
pub mod peer_tls;
pub mod policies;
pub mod preflight;
pub mod reconcile;
pub mod release;
pub mod rollout;
pub mod status;
pub mod validate;

pub use controller::{Context, OperatorConfig};
pub use reconcile::ReconcileError;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = kindex_crds::FIELD_MANAGER;

/// Image of the index nodes when `spec.image` is unset.
pub fn default_image() -> String {
    format!("kindex/kindex-node:{}", env!("CARGO_PKG_VERSION"))
}
