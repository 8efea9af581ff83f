//! Runtime knobs: safe to change while the node runs; never part of the structural
//! hash. The operator renders them as the `runtime.json` key of the index ConfigMap;
//! the node reads that file (mounted) and reloads it when it changes.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_EF_SEARCH: u32 = 64;
/// int8 indexes: the graph returns `rescore × k` candidates ranked on codes, which are
/// re-ranked with the f32 vectors. 3 reaches recall@10 ≥ 0.95 on docs-minilm-30k at
/// efSearch 64 (bench/RESULTS.md).
pub const DEFAULT_RESCORE: u32 = 3;
/// Largest rescoring factor, of the runtime knob and of a search's own `rescore`.
pub const MAX_RESCORE: u32 = 100;
/// 0 = one indexing thread per core.
pub const DEFAULT_INDEXING_THREADS: u32 = 0;
pub const DEFAULT_INDEXING_BATCH_SIZE: u32 = 1024;
pub const DEFAULT_QUEUE_CAPACITY: u32 = 2_000_000;
pub const DEFAULT_SNAPSHOT_INTERVAL_SECS: u64 = 300;
pub const DEFAULT_SNAPSHOT_LOG_ENTRIES: u64 = 100_000;
pub const DEFAULT_SNAPSHOT_KEEP: u32 = 3;
pub const DEFAULT_RETENTION_SWEEP_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The `runtime.json` file. Every key is optional (a missing one takes its default);
/// an unknown key is an error, so a typo is never silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub ef_search: u32,
    /// 0 = one per core.
    pub indexing_threads: u32,
    pub indexing_batch_size: u32,
    /// Bound of the indexing queue in vectors; a full queue holds back the Raft apply (write
    /// backpressure). Queued vectors are already stored and found by an exact scan, so a large
    /// bound costs no memory, only search time (the scan of the unindexed tail) while a write
    /// burst is being indexed. Default 2,000,000: absorbs a minute of 20k vectors/s; lower it
    /// to throttle writes to the indexing rate sooner.
    pub queue_capacity: u32,
    pub snapshot_interval_secs: u64,
    pub snapshot_log_entries: u64,
    /// Complete snapshots kept on disk; applied live at the next snapshot.
    pub snapshot_keep: u32,
    /// How often a shard leader sweeps points its retention policies expired (read at each
    /// sweep).
    pub retention_sweep_interval_secs: u64,
    /// A tracing filter: a level (`debug`) or directives (`info,kindex_node::raft=debug`).
    /// Applied live. Unless it names `openraft`, openraft logs at warn.
    pub log_level: String,
    /// int8 indexes only: rescoring factor (see `DEFAULT_RESCORE`); ignored with
    /// `quantization: none`. Not written when default, so the ConfigMap the operator
    /// renders today is unchanged.
    #[serde(skip_serializing_if = "is_default_rescore")]
    pub rescore: u32,
}

fn is_default_rescore(r: &u32) -> bool {
    *r == DEFAULT_RESCORE
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ef_search: DEFAULT_EF_SEARCH,
            indexing_threads: DEFAULT_INDEXING_THREADS,
            indexing_batch_size: DEFAULT_INDEXING_BATCH_SIZE,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            snapshot_interval_secs: DEFAULT_SNAPSHOT_INTERVAL_SECS,
            snapshot_log_entries: DEFAULT_SNAPSHOT_LOG_ENTRIES,
            snapshot_keep: DEFAULT_SNAPSHOT_KEEP,
            retention_sweep_interval_secs: DEFAULT_RETENTION_SWEEP_INTERVAL_SECS,
            log_level: DEFAULT_LOG_LEVEL.into(),
            rescore: DEFAULT_RESCORE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl RuntimeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.ef_search) {
            return Err("efSearch must be in 1..=4096".into());
        }
        if !(1..=MAX_RESCORE).contains(&self.rescore) {
            return Err(format!("rescore must be in 1..={MAX_RESCORE}"));
        }
        if self.indexing_threads > 256 {
            return Err("indexingThreads must be at most 256".into());
        }
        if self.indexing_batch_size == 0 {
            return Err("indexingBatchSize must be at least 1".into());
        }
        if self.queue_capacity == 0 {
            return Err("queueCapacity must be at least 1".into());
        }
        if self.snapshot_keep == 0 {
            return Err("snapshotKeep must be at least 1".into());
        }
        Ok(())
    }

    pub fn threads(&self) -> usize {
        match self.indexing_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }

    pub fn snapshot_interval(&self) -> Duration {
        Duration::from_secs(self.snapshot_interval_secs.max(1))
    }

    pub fn load(path: &Path) -> Result<RuntimeConfig, RuntimeConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeConfigError::Io {
            path: p.clone(),
            source,
        })?;
        let cfg: RuntimeConfig =
            serde_json::from_str(&text).map_err(|e| RuntimeConfigError::Invalid {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        cfg.validate()
            .map_err(|reason| RuntimeConfigError::Invalid { path: p, reason })?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_keeps_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runtime.json");
        std::fs::write(&p, r#"{"efSearch": 128}"#).unwrap();
        let c = RuntimeConfig::load(&p).unwrap();
        assert_eq!(c.ef_search, 128);
        assert_eq!(c.queue_capacity, RuntimeConfig::default().queue_capacity);
        assert_eq!(c.rescore, DEFAULT_RESCORE);
        std::fs::write(&p, r#"{"rescore": 5}"#).unwrap();
        assert_eq!(RuntimeConfig::load(&p).unwrap().rescore, 5);
        std::fs::write(&p, r#"{"rescore": 0}"#).unwrap();
        assert!(RuntimeConfig::load(&p).is_err());
    }

    #[test]
    fn unknown_and_invalid_fields_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runtime.json");
        std::fs::write(&p, r#"{"efSerch": 128}"#).unwrap();
        assert!(
            RuntimeConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("efSerch")
        );
        std::fs::write(&p, r#"{"efSearch": 0}"#).unwrap();
        assert!(
            RuntimeConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("efSearch")
        );
    }

    /// The keys the operator writes and the node reads (the ConfigMap's wire format).
    #[test]
    fn keys_are_pinned() {
        let json = serde_json::to_string(&RuntimeConfig::default()).unwrap();
        assert_eq!(
            json,
            r#"{"efSearch":64,"indexingThreads":0,"indexingBatchSize":1024,"queueCapacity":2000000,"snapshotIntervalSecs":300,"snapshotLogEntries":100000,"snapshotKeep":3,"retentionSweepIntervalSecs":60,"logLevel":"info"}"#
        );
    }
}
