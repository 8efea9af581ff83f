//! Snapshots: the full state of a shard's engine at an applied log id, as a
//! directory of checksummed section files plus a manifest.
//!
//! - [`store`]: the snapshot directories of a data dir (the one on-disk layout: naming, temp
//!   dirs, listing, pruning, choosing the newest snapshot that loads, setting damaged ones aside).
//! - [`write`]: the engine → section files ([`Capture`]).
//! - [`load`]: section files → a new engine, validating everything.
//! - [`section`]: one checksummed section file.

pub mod load;
pub mod quant;
pub mod section;
pub mod store;
pub mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::StructuralConfig;
use crate::config::structural::StructuralError;
use crate::engine::{AppliedLog, Engine};
use section::{Kind, SectionError};

pub use load::load;
pub use write::Capture;

/// Format 5: format 4 and a `Quant` section (an int8 shard's ranges, see [`quant`]). Written
/// only by int8 shards once they have trained ranges; int8 exists only in builds that read it.
/// Format 4: format 3 and a `Stamps` section (every slot's ingest stamp). Written only when a
/// point has a stamp, which happens only once every replica of the shard runs a build that
/// reads format 4 (the `retention-v1` gate); otherwise 3 or 2 (see [`format_for`]).
/// Format 3: format 2 and, when the shard has policies, a `Policies` section (listed in the
/// manifest). Written only with policies, so older builds keep reading snapshots of shards
/// without any (see [`FORMAT_WITHOUT_POLICIES`]).
/// Format 2: per-slot state section (live / deleted / purged).
/// Format 1: a deleted-slot bitset; migrated on load.
pub const FORMAT_VERSION: u32 = 5;
/// The format a replica writes when its shard has stamped points but no int8 ranges.
pub const FORMAT_WITHOUT_QUANT: u32 = 4;
/// The format a replica writes when its shard has no policies.
pub const FORMAT_WITHOUT_POLICIES: u32 = 2;
/// The format a replica writes when its shard has policies but no stamped point.
pub const FORMAT_WITHOUT_STAMPS: u32 = 3;

/// The oldest format that holds what a snapshot has: older builds keep reading snapshots of
/// shards that do not use what they lack.
pub fn format_for(has_policies: bool, has_stamps: bool, has_quant: bool) -> u32 {
    match (has_policies, has_stamps, has_quant) {
        (_, _, true) => FORMAT_VERSION,
        (_, true, false) => FORMAT_WITHOUT_QUANT,
        (true, false, false) => FORMAT_WITHOUT_STAMPS,
        (false, false, false) => FORMAT_WITHOUT_POLICIES,
    }
}
pub const OLDEST_READABLE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Section(#[from] SectionError),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Structural(#[from] StructuralError),
    /// This node cannot hold the vectors (`vectorsOnDisk` on a full or failing volume): not the
    /// snapshot's fault, so no reason to set it aside.
    #[error("{0}")]
    Storage(String),
}

impl SnapshotError {
    /// Errors that must stop start-up rather than fall back to an older
    /// snapshot: data from a newer build or built with other parameters, or no room for the
    /// vectors.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SnapshotError::Section(SectionError::NewerFormat { .. })
                | SnapshotError::Structural(_)
                | SnapshotError::Storage(_)
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub slots: u64,
    pub live: u64,
    pub tombstoned: u64,
    pub purged: u64,
    pub indexed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SectionInfo {
    pub file: String,
    pub bytes: u64,
    pub crc32c: String,
}

/// Self-description of a snapshot, stored (checksummed) in `manifest.sect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub kindex_version: String,
    pub structural: StructuralConfig,
    pub structural_hash: String,
    pub applied: Option<AppliedLog>,
    pub counts: Counts,
    pub content_checksum: u64,
    pub saved_at_unix_ms: u64,
    pub sections: Vec<SectionInfo>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.sections.iter().map(|s| s.bytes).sum()
    }
}

/// Reads and validates only the manifest (for `kindex inspect`).
pub fn read_manifest(dir: &Path) -> Result<Manifest, SnapshotError> {
    let sect = section::read(
        &dir.join(Kind::Manifest.file_name()),
        Kind::Manifest,
        FORMAT_VERSION,
    )?;
    let m: Manifest =
        serde_json::from_slice(sect.payload()).map_err(|e| SnapshotError::Invalid {
            path: dir.join(Kind::Manifest.file_name()),
            reason: format!("manifest is not valid: {e}"),
        })?;
    if m.format_version != sect.version {
        return Err(SnapshotError::Invalid {
            path: dir.to_path_buf(),
            reason: format!(
                "manifest says format {} but its section header says {}",
                m.format_version, sect.version
            ),
        });
    }
    Ok(m)
}

/// A loaded snapshot.
pub struct Loaded {
    pub engine: Engine,
    pub manifest: Manifest,
    /// The `Policies` section's payload, if the snapshot has one.
    pub policies: Option<Vec<u8>>,
    pub raft_meta: Vec<u8>,
    pub dir: PathBuf,
    pub duration: Duration,
}

/// Decoded graph section.
pub struct GraphParts {
    pub indexed: usize,
    pub entry: Option<u32>,
    pub levels: Vec<u8>,
    /// Level-0 lists, (1 + m0) u32 each.
    pub level0: Vec<u32>,
    /// Upper lists in slot order, (1 + m) u32 each.
    pub upper: Vec<u32>,
}
