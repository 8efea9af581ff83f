//! The HNSW engine as the Raft state machine's [`ShardState`].
//!
//! - `apply` turns committed [`Command`]s into engine writes and records the log id in the
//!   engine (it ends up in every snapshot manifest). Input that is invalid at apply time is
//!   `Rejected` (deterministically, on every replica) and changes nothing; the coordinator
//!   validates with the same `engine::limits` checks before proposing, so this is a backstop.
//! - Snapshots are the engine's own section files (`snapshot::Capture`): captured between two
//!   applies, written while later entries are applied. The Raft layer adds its `RAFT_META`.
//! - Installing a snapshot builds a new engine with `snapshot::load` and swaps it in; readers
//!   holding the previous `Arc<Engine>` finish on it.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use parking_lot::RwLock;

use super::ApplyOutcome;
use super::Command;
use super::LogId;
use super::PointRecord;
use super::ShardState;
use super::SnapshotWriter;
use super::state_machine::refuse;
use crate::config::StructuralConfig;
use crate::engine::AppliedLog;
use crate::engine::Engine;
use crate::engine::EngineError;
use crate::engine::EngineKnobs;
use crate::engine::InputError;
use crate::engine::PointInput;
use crate::engine::limits;
use crate::metrics::Metrics;
use crate::snapshot;
use crate::snapshot::Capture;

/// The engine of one shard replica, replaceable by a snapshot install.
pub struct EngineState {
    engine: RwLock<Arc<Engine>>,
    structural: StructuralConfig,
    /// Knobs for engines built later (snapshot installs).
    knobs: Mutex<EngineKnobs>,
    metrics: Option<Arc<Metrics>>,
}

impl EngineState {
    /// An empty engine; the Raft layer loads the newest snapshot into it on open.
    pub fn new(
        structural: StructuralConfig,
        knobs: EngineKnobs,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let engine = Engine::new(structural.clone(), knobs);
        Self {
            engine: RwLock::new(Arc::new(engine)),
            structural,
            knobs: Mutex::new(knobs),
            metrics,
        }
    }

    /// The current engine. Keep the `Arc` for the whole request: slot numbers in search hits
    /// refer to this engine, and a snapshot install may swap in another one meanwhile.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.read().clone()
    }

    pub fn structural(&self) -> &StructuralConfig {
        &self.structural
    }

    /// New runtime knobs, for the current engine and for engines built later.
    pub fn set_knobs(&self, knobs: EngineKnobs) {
        *self.knobs.lock() = knobs;
        self.engine().set_knobs(knobs);
    }
}

/// Points of an upsert command as engine input (payload JSON parsed and checked).
pub fn inputs_of(records: &[PointRecord]) -> Result<Vec<PointInput>, InputError> {
    records
        .iter()
        .map(|r| {
            let payload = match &r.payload_json {
                Some(json) => Some(limits::parse_payload(&r.id, json)?),
                None => None,
            };
            Ok(PointInput {
                id: r.id.clone(),
                vector: r.vector.clone(),
                payload,
            })
        })
        .collect()
}

/// The checks `apply` makes, for the coordinator to run before proposing: a command that passes
/// them is never rejected at apply time for its input.
/// `metric`: the magnitude checks are made here only, before proposing (see
/// [`limits::check_magnitudes`]).
pub fn validate_upsert(
    dim: usize,
    metric: crate::engine::distance::Metric,
    records: &[PointRecord],
) -> Result<Vec<PointInput>, InputError> {
    let inputs = inputs_of(records)?;
    limits::check_points(dim, &inputs)?;
    limits::check_magnitudes(metric, &inputs)?;
    Ok(inputs)
}

/// See [`validate_upsert`].
pub fn validate_delete(ids: &[String]) -> Result<(), InputError> {
    limits::check_batch_len(ids.len())?;
    ids.iter()
        .enumerate()
        .try_for_each(|(i, id)| limits::check_id(i, id))
}

fn applied_log(l: &LogId) -> AppliedLog {
    AppliedLog {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    }
}

fn outcome(r: Result<u64, EngineError>) -> io::Result<ApplyOutcome> {
    match r {
        Ok(affected) => Ok(ApplyOutcome::Applied { affected }),
        // Deterministic refusals: every replica refuses the same entry the same way.
        Err(e @ (EngineError::Input(_) | EngineError::Full(_))) => {
            Ok(ApplyOutcome::Rejected(e.to_string()))
        }
        // Only while stopping: this replica cannot apply any more.
        Err(e @ EngineError::ShuttingDown) => Err(io::Error::other(e.to_string())),
    }
}

impl ShardState for EngineState {
    fn apply(&self, log_id: &LogId, cmd: &Command) -> io::Result<ApplyOutcome> {
        let engine = self.engine();
        let out = match cmd {
            Command::Upsert { points } => match inputs_of(points) {
                Ok(inputs) => outcome(engine.upsert(&inputs))?,
                Err(e) => ApplyOutcome::Rejected(e.to_string()),
            },
            Command::Delete { ids } => outcome(engine.delete(ids))?,
            Command::Policy { .. } => {
                ApplyOutcome::Rejected("policies are not supported by this node version".into())
            }
        };
        engine.set_applied(applied_log(log_id));
        if let Some(m) = &self.metrics {
            m.raft_applied_entries.inc();
        }
        Ok(out)
    }

    fn begin_snapshot(&self, last_applied: Option<&LogId>) -> io::Result<Box<dyn SnapshotWriter>> {
        let engine = self.engine();
        // The snapshot's manifest records the Raft position it covers, which may be a blank or
        // membership entry after the last write.
        if let Some(l) = last_applied {
            engine.set_applied(applied_log(l));
        }
        let capture = Capture::take(&engine);
        Ok(Box::new(EngineSnapshotWriter {
            capture,
            metrics: self.metrics.clone(),
        }))
    }

    fn load_snapshot(&self, dir: &Path) -> io::Result<()> {
        let knobs = *self.knobs.lock();
        let loaded = snapshot::load(dir, &self.structural, knobs).map_err(|e| {
            if e.is_fatal() {
                // Built with other structural parameters or by a newer kindex: no older snapshot
                // is better, the node must stop and say why.
                refuse(e.to_string())
            } else {
                io::Error::new(io::ErrorKind::InvalidData, e.to_string())
            }
        })?;
        tracing::info!(
            dir = %dir.display(),
            vectors = loaded.manifest.counts.live,
            queued = loaded.manifest.counts.slots.saturating_sub(loaded.manifest.counts.indexed),
            millis = loaded.duration.as_millis() as u64,
            "engine loaded from snapshot"
        );
        let previous = std::mem::replace(&mut *self.engine.write(), Arc::new(loaded.engine));
        // Stops its indexing workers once the last reader lets go.
        drop(previous);
        Ok(())
    }
}

struct EngineSnapshotWriter {
    capture: Capture,
    metrics: Option<Arc<Metrics>>,
}

impl SnapshotWriter for EngineSnapshotWriter {
    fn write(self: Box<Self>, dir: &Path) -> io::Result<()> {
        let started = Instant::now();
        let manifest = self
            .capture
            .write_into(dir, snapshot::FORMAT_VERSION, &[])
            .map_err(|e| io::Error::other(e.to_string()))?;
        if let Some(m) = &self.metrics {
            m.snapshot_duration.observe(started.elapsed().as_secs_f64());
            m.snapshot_bytes.set(manifest.total_bytes() as i64);
        }
        tracing::info!(
            dir = %dir.display(),
            bytes = manifest.total_bytes(),
            vectors = manifest.counts.live,
            millis = started.elapsed().as_millis() as u64,
            "engine snapshot written"
        );
        Ok(())
    }
}
