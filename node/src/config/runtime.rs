//! Runtime knobs: safe to change while the node runs; never part of the
//! structural hash. Read from a JSON file (a mounted ConfigMap key) and
//! reloaded when it changes.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub snapshot_keep: u32,
    pub retention_sweep_interval_secs: u64,
    pub log_level: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ef_search: 64,
            indexing_threads: 0,
            indexing_batch_size: 1024,
            queue_capacity: 2_000_000,
            snapshot_interval_secs: 300,
            snapshot_log_entries: 100_000,
            snapshot_keep: 3,
            retention_sweep_interval_secs: 60,
            log_level: "info".into(),
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
}
