//! The index ConfigMap: `structural.json` (what the data is built with, for humans and
//! for the operator's immutability check) and `runtime.json` (the node's live-reloaded
//! knobs). Only `runtime.json` is mounted into the pods; a change of it never touches
//! the pod template, so runtime knobs apply without restarts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use std::time::Duration;

use kindex_common::{RuntimeConfig, StructuralDoc};
use kindex_crds::VectorIndexSpec;

use super::{labels, owned_meta};
use crate::validate::ValidIndex;

pub const STRUCTURAL_KEY: &str = "structural.json";
pub const RUNTIME_KEY: &str = "runtime.json";

/// The node's `runtime.json` for `spec` (kindex-common's `RuntimeConfig`, the type the
/// node reads). Knobs that are not spec fields (retention sweep interval, log level)
/// take the node's defaults. `snapshot_interval`: `spec.snapshots.interval`, parsed by
/// the validate step.
pub fn runtime_config(spec: &VectorIndexSpec, snapshot_interval: Duration) -> RuntimeConfig {
    RuntimeConfig {
        ef_search: spec.hnsw.ef_search,
        indexing_threads: spec.indexing.threads,
        indexing_batch_size: spec.indexing.batch_size,
        queue_capacity: spec.indexing.queue_capacity,
        // Whole seconds, rounded up so "1500ms" never becomes 1s.
        snapshot_interval_secs: snapshot_interval.as_millis().div_ceil(1000).max(1) as u64,
        snapshot_log_entries: spec.snapshots.log_entries,
        snapshot_keep: spec.snapshots.keep,
        ..RuntimeConfig::default()
    }
}

pub fn build_configmap(vi: &ValidIndex) -> ConfigMap {
    let data = BTreeMap::from([
        (STRUCTURAL_KEY.to_owned(), vi.structural_json.clone()),
        (RUNTIME_KEY.to_owned(), vi.runtime_json.clone()),
    ]);
    ConfigMap {
        metadata: owned_meta(
            vi,
            labels::configmap_name(&vi.name),
            labels::index_labels(&vi.name),
        ),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The structural config recorded in an existing ConfigMap, if readable.
pub fn recorded_structural(cm: &ConfigMap) -> Option<StructuralDoc> {
    let text = cm.data.as_ref()?.get(STRUCTURAL_KEY)?;
    serde_json::from_str(text).ok()
}
