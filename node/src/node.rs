//! One node's state as the servers see it: the index it serves, its shard
//! engine, snapshots, runtime config and metrics.
//!
//! Standalone mode (no cluster flags) serves one shard with one replica.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::config::{RuntimeConfig, StructuralConfig, structural};
use crate::engine::filter::Filter;
use crate::engine::{AppliedLog, Engine, EngineError, EngineKnobs, Hit, PointInput, StoredPoint};
use crate::metrics::Metrics;
use crate::snapshot::{self, SaveOptions, Saved, SnapshotError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("unknown index {got:?}; this node serves {serves:?}")]
    UnknownIndex { got: String, serves: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Structural(#[from] structural::StructuralError),
    #[error("data dir {dir}: {reason}")]
    DataDir { dir: String, reason: String },
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Default)]
pub struct LastSnapshot {
    pub at: Option<SystemTime>,
    pub bytes: u64,
    pub path: PathBuf,
    pub applied_index: u64,
}

pub struct Node {
    pub index: String,
    pub node_id: u64,
    pub shard: u32,
    data_dir: PathBuf,
    engine: Arc<Engine>,
    runtime: RwLock<RuntimeConfig>,
    last_snapshot: Mutex<LastSnapshot>,
    snapshot_lock: Mutex<()>,
    write_seq: Mutex<()>,
    ready: AtomicBool,
    pub metrics: Metrics,
}

impl Node {
    /// Opens (or initialises) a data dir: checks the structural config, loads
    /// the newest valid snapshot, re-queues its unindexed tail.
    pub fn open(
        index: &str,
        data_dir: &Path,
        configured: StructuralConfig,
        runtime: RuntimeConfig,
    ) -> Result<Node, NodeError> {
        std::fs::create_dir_all(data_dir).map_err(|e| NodeError::DataDir {
            dir: data_dir.display().to_string(),
            reason: format!("cannot create: {e}"),
        })?;
        probe_writable(data_dir)?;
        structural::open_or_init(data_dir, &configured)?;
        let knobs = EngineKnobs::from(&runtime);
        let snaps = data_dir.join("snapshots");
        let (engine, last) = match snapshot::load_latest(&snaps, &configured, knobs)? {
            Some(l) => {
                tracing::info!(
                    snapshot = %l.dir.display(),
                    vectors = l.manifest.counts.live,
                    millis = l.duration.as_millis() as u64,
                    "loaded snapshot"
                );
                let last = LastSnapshot {
                    at: Some(
                        SystemTime::UNIX_EPOCH + Duration::from_millis(l.manifest.saved_at_unix_ms),
                    ),
                    bytes: l.manifest.total_bytes(),
                    path: l.dir.clone(),
                    applied_index: l.manifest.applied.map_or(0, |a| a.index),
                };
                (l.engine, last)
            }
            None => (Engine::new(configured, knobs), LastSnapshot::default()),
        };
        Ok(Node {
            index: index.to_string(),
            node_id: 0,
            shard: 0,
            data_dir: data_dir.to_path_buf(),
            engine: Arc::new(engine),
            runtime: RwLock::new(runtime),
            last_snapshot: Mutex::new(last),
            snapshot_lock: Mutex::new(()),
            write_seq: Mutex::new(()),
            ready: AtomicBool::new(true),
            metrics: Metrics::new(),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed)
    }

    pub fn runtime(&self) -> RuntimeConfig {
        self.runtime.read().clone()
    }

    pub fn set_runtime(&self, r: RuntimeConfig) {
        self.engine.set_knobs(EngineKnobs::from(&r));
        *self.runtime.write() = r;
    }

    pub fn last_snapshot(&self) -> LastSnapshot {
        self.last_snapshot.lock().clone()
    }

    pub fn check_index(&self, index: &str) -> Result<(), NodeError> {
        // An empty name means "the index this node serves".
        if index.is_empty() || index == self.index {
            Ok(())
        } else {
            Err(NodeError::UnknownIndex {
                got: index.to_string(),
                serves: self.index.clone(),
            })
        }
    }

    /// Standalone apply: one write at a time, each advancing the applied index
    /// (the Raft log index once the shard is replicated).
    fn apply<T>(&self, f: impl FnOnce(&Engine) -> Result<T, EngineError>) -> Result<T, NodeError> {
        let _seq = self.write_seq.lock();
        let out = f(&self.engine)?;
        let prev = self.engine.applied().unwrap_or_default();
        self.engine.set_applied(AppliedLog {
            term: prev.term.max(1),
            node_id: self.node_id,
            index: prev.index + 1,
        });
        Ok(out)
    }

    pub fn upsert(&self, points: &[PointInput]) -> Result<u64, NodeError> {
        self.apply(|e| e.upsert(points))
    }

    pub fn delete(&self, ids: &[String]) -> Result<u64, NodeError> {
        self.apply(|e| e.delete(ids))
    }

    pub fn applied_index(&self) -> u64 {
        self.engine.applied().map_or(0, |a| a.index)
    }

    pub fn get(&self, ids: &[String]) -> Result<Vec<StoredPoint>, NodeError> {
        crate::engine::limits::check_batch_len(ids.len()).map_err(EngineError::from)?;
        Ok(ids.iter().filter_map(|id| self.engine.get(id)).collect())
    }

    pub fn search(
        &self,
        vector: &[f32],
        k: usize,
        ef: Option<usize>,
        filter: &Filter,
    ) -> Result<Vec<Hit>, NodeError> {
        Ok(self.engine.search(vector, k, ef, filter)?)
    }

    /// Takes a snapshot now (admin RPC, timer, shutdown).
    pub fn snapshot(&self) -> Result<Saved, NodeError> {
        let _one_at_a_time = self.snapshot_lock.lock();
        let keep = self.runtime.read().snapshot_keep as usize;
        let timer = self.metrics.snapshot_duration.start_timer();
        let saved = snapshot::save(
            &self.engine,
            &self.data_dir.join("snapshots"),
            &SaveOptions {
                keep,
                ..Default::default()
            },
        )?;
        timer.observe_duration();
        self.metrics.snapshot_bytes.set(saved.bytes as i64);
        *self.last_snapshot.lock() = LastSnapshot {
            at: Some(SystemTime::now()),
            bytes: saved.bytes,
            path: saved.dir.clone(),
            applied_index: saved.manifest.applied.map_or(0, |a| a.index),
        };
        tracing::info!(
            dir = %saved.dir.display(),
            bytes = saved.bytes,
            millis = saved.duration.as_millis() as u64,
            vectors = saved.manifest.counts.live,
            "snapshot written"
        );
        Ok(saved)
    }

    /// Graceful stop: stop serving writes, drain the queue, snapshot.
    pub fn shutdown(&self, drain_timeout: Duration) -> Result<(), NodeError> {
        self.set_ready(false);
        if !self.engine.drain(drain_timeout) {
            tracing::warn!(
                "indexing queue not drained in time; the snapshot re-queues the rest on start"
            );
        }
        self.snapshot()?;
        self.engine.shutdown();
        Ok(())
    }
}

/// Refuses a data dir we cannot write durably, with the reason.
fn probe_writable(dir: &Path) -> Result<(), NodeError> {
    let probe = dir.join(".kindex-write-probe");
    crate::fsutil::write_atomic(&probe, b"ok")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| NodeError::DataDir {
            dir: dir.display().to_string(),
            reason: format!("not writable: {e}"),
        })
}

/// Watches the runtime config file and applies changes without a restart.
pub fn spawn_runtime_reload(node: Arc<Node>, path: PathBuf, every: Duration) {
    tokio::spawn(async move {
        let mut last = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        loop {
            tokio::time::sleep(every).await;
            let now = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if now == last {
                continue;
            }
            last = now;
            match RuntimeConfig::load(&path) {
                Ok(cfg) if cfg != node.runtime() => {
                    tracing::info!(?cfg, "runtime config reloaded");
                    node.set_runtime(cfg);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "runtime config rejected; keeping the previous one")
                }
            }
        }
    });
}

/// Snapshot and compaction timers.
pub fn spawn_maintenance(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut last_snap = std::time::Instant::now();
        let mut last_applied = node.engine().stats().slots;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rt = node.runtime();
            let slots = node.engine().stats().slots;
            let due_time = last_snap.elapsed() >= rt.snapshot_interval() && slots != last_applied;
            let due_entries = (slots - last_applied.min(slots)) as u64 >= rt.snapshot_log_entries;
            if due_time || due_entries {
                let n = node.clone();
                match tokio::task::spawn_blocking(move || n.snapshot()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "scheduled snapshot failed"),
                    Err(e) => tracing::error!(error = %e, "snapshot task panicked"),
                }
                last_snap = std::time::Instant::now();
                last_applied = slots;
            }
            let n = node.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(s) = n.engine().maybe_compact(0.1) {
                    tracing::info!(
                        purged = s.purged,
                        relinked = s.relinked_lists,
                        millis = s.millis,
                        "compaction"
                    );
                }
            })
            .await;
        }
    });
}
