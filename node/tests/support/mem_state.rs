//! An in-memory `ShardState` for tests of the Raft layer: id → (vector, payload). Snapshot =
//! one JSON file. A test double, so it lives with the tests: included by `node/tests/cluster.rs`
//! and by the state machine's unit tests, each bringing the kindex names it uses into scope
//! (`ApplyOutcome`, `Command`, `LogId`, `Refusal`, `RefusalKind`, `ShardState`,
//! `SnapshotWriter`).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use parking_lot::RwLock;
use serde::Deserialize;
use serde::Serialize;

use super::ApplyOutcome;
use super::Command;
use super::LogId;
use super::Refusal;
use super::RefusalKind;
use super::ShardState;
use super::SnapshotWriter;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemData {
    pub points: BTreeMap<String, (Vec<f32>, Option<String>)>,
    pub last_index: u64,
    /// Reject upserts that would make the store hold more points (stand-in for a quota).
    pub max_points: Option<usize>,
}

#[derive(Debug, Default)]
pub struct MemState {
    data: RwLock<MemData>,
}

// Each including test uses its own part of it.
#[allow(dead_code)]
impl MemState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot_data(&self) -> MemData {
        self.data.read().clone()
    }

    pub fn len(&self) -> usize {
        self.data.read().points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &str) -> Option<Vec<f32>> {
        self.data.read().points.get(id).map(|(v, _)| v.clone())
    }
}

struct MemWriter(MemData);

impl SnapshotWriter for MemWriter {
    fn write(self: Box<Self>, dir: &Path) -> io::Result<()> {
        std::fs::write(
            dir.join("points.json"),
            serde_json::to_vec(&self.0).map_err(io::Error::other)?,
        )
    }
}

impl ShardState for MemState {
    fn apply(&self, log_id: &LogId, cmd: &Command) -> io::Result<ApplyOutcome> {
        let mut d = self.data.write();
        d.last_index = log_id.index;
        match cmd {
            Command::Upsert { points } | Command::StampedUpsert { points, .. } => {
                let new = points
                    .iter()
                    .filter(|p| !d.points.contains_key(&p.id))
                    .count();
                if d.max_points.is_some_and(|m| d.points.len() + new > m) {
                    return Ok(ApplyOutcome::Rejected(Refusal::new(
                        RefusalKind::Quota,
                        "quota: too many points",
                    )));
                }
                for p in points {
                    d.points
                        .insert(p.id.clone(), (p.vector.clone(), p.payload_json.clone()));
                }
                Ok(ApplyOutcome::Applied {
                    affected: points.len() as u64,
                })
            }
            Command::Delete { ids } => {
                let n = ids
                    .iter()
                    .filter(|id| d.points.remove(*id).is_some())
                    .count();
                Ok(ApplyOutcome::Applied { affected: n as u64 })
            }
            Command::Policy { json } => {
                #[derive(Deserialize)]
                struct Quota {
                    max_points: Option<usize>,
                }
                let Ok(q) = serde_json::from_str::<Quota>(json) else {
                    return Ok(ApplyOutcome::Rejected(Refusal::invalid("malformed policy")));
                };
                d.max_points = q.max_points;
                Ok(ApplyOutcome::Applied { affected: 0 })
            }
        }
    }

    fn begin_snapshot(&self, _last_applied: Option<&LogId>) -> io::Result<Box<dyn SnapshotWriter>> {
        Ok(Box::new(MemWriter(self.data.read().clone())))
    }

    fn load_snapshot(&self, dir: &Path) -> io::Result<()> {
        let bytes = std::fs::read(dir.join("points.json"))?;
        let d: MemData = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        *self.data.write() = d;
        Ok(())
    }
}
