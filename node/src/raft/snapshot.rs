//! The Raft layer's part of a snapshot directory: [`RAFT_META_FILE`] (JSON: format version,
//! openraft `SnapshotMeta`, and the apply digest at its log id), written next to the engine's
//! section files. Directory management (naming, listing, pruning, fallback) is
//! [`crate::snapshot::store`]; the transfer to other replicas is [`super::transfer`].

use std::fs;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use serde::Deserialize;
use serde::Serialize;

use super::LogId;
use super::SnapshotMeta;
use super::digest::ApplyDigest;
use crate::config::StructuralConfig;
use crate::engine::Engine;
use crate::engine::EngineKnobs;
use crate::engine::VectorStorage;
use crate::snapshot;
use crate::snapshot::Capture;
use crate::snapshot::Loaded;
use crate::snapshot::Manifest;
use crate::snapshot::store::LoadFailure;
use crate::snapshot::store::Newest;
use crate::snapshot::store::SnapshotStore;
use crate::snapshot::store::StoreError;

/// Raft's own file inside every snapshot directory (reserved name).
pub const RAFT_META_FILE: &str = "RAFT_META";
/// Version of the snapshot directory layout written by this code.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A complete snapshot: a directory of files. This is openraft's `SnapshotData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    pub path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct RaftMetaFile {
    format: u32,
    meta: SnapshotMeta,
    created_unix_ms: u64,
    /// Absent in snapshots written before the divergence guard existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<ApplyDigest>,
}

/// What [`RAFT_META_FILE`] records about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftMeta {
    pub meta: SnapshotMeta,
    /// The apply digest at `meta.last_log_id` (None: written by an older version).
    pub digest: Option<ApplyDigest>,
}

impl RaftMeta {
    /// The digest chain to continue from after loading this snapshot.
    pub fn digest_or_restart(&self) -> ApplyDigest {
        self.digest.unwrap_or_else(|| {
            ApplyDigest::restarted_at(self.meta.last_log_id.map_or(0, |l| l.index))
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn write_raft_meta(dir: &Path, meta: &SnapshotMeta, digest: &ApplyDigest) -> io::Result<()> {
    let body = RaftMetaFile {
        format: SNAPSHOT_FORMAT,
        meta: meta.clone(),
        created_unix_ms: now_ms(),
        digest: Some(*digest),
    };
    let json = serde_json::to_vec_pretty(&body).map_err(io::Error::other)?;
    let mut f = fs::File::create(dir.join(RAFT_META_FILE))?;
    f.write_all(&json)?;
    f.sync_all()
}

pub fn read_raft_meta(dir: &Path) -> io::Result<RaftMeta> {
    let bytes = fs::read(dir.join(RAFT_META_FILE))?;
    let body: RaftMetaFile = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{RAFT_META_FILE}: {e}"))
    })?;
    if body.format != SNAPSHOT_FORMAT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{RAFT_META_FILE}: unknown snapshot format {}", body.format),
        ));
    }
    Ok(RaftMeta {
        meta: body.meta,
        digest: body.digest,
    })
}

/// Recursive copy (used when a snapshot to install lives outside this node's store).
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        } else if ty.is_file() {
            fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Make a complete snapshot directory durable under its final name in `store`.
/// `built`: the digest of a snapshot built here, written to RAFT_META with `meta`; None for a
/// received snapshot, which carries the sender's RAFT_META, checked against `meta` instead.
pub fn commit(
    store: &SnapshotStore,
    tmp: &Path,
    meta: &SnapshotMeta,
    built: Option<&ApplyDigest>,
) -> io::Result<PathBuf> {
    if let Some(digest) = built {
        write_raft_meta(tmp, meta, digest)?;
    } else {
        let got = read_raft_meta(tmp)?.meta;
        if &got != meta {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot {RAFT_META_FILE} says {got}, expected {meta}"),
            ));
        }
    }
    store.commit(tmp, meta.last_log_id.map_or(0, |l| l.index))
}

/// A snapshot of `engine` written into `store` the way a replica writes one (the engine's
/// sections, then RAFT_META at the engine's applied log id with no membership), then pruned to
/// `keep`. For tools, benchmarks and tests; a node builds its snapshots through openraft.
/// `format_version` other than [`snapshot::FORMAT_VERSION`] exists for migration tests.
pub fn save_engine(
    store: &SnapshotStore,
    engine: &Engine,
    keep: usize,
    format_version: u32,
) -> io::Result<(PathBuf, Manifest)> {
    let capture = Capture::take(engine);
    let meta = SnapshotMeta {
        last_log_id: capture.applied().map(|a| {
            LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: a.term,
                    node_id: a.node_id,
                },
                a.index,
            )
        }),
        last_membership: Default::default(),
    };
    let digest = ApplyDigest::restarted_at(meta.last_log_id.map_or(0, |l| l.index));
    let tmp = store.new_build_dir()?;
    let res = capture
        .write_into(&tmp, format_version, &[], None)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|m| Ok((commit(store, &tmp, &meta, Some(&digest))?, m)));
    if res.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let (dir, manifest) = res?;
    store.prune(&dir, keep.max(1))?;
    Ok((dir, manifest))
}

/// The newest snapshot in `store` that loads into an engine, chosen as a starting replica
/// chooses it: RAFT_META must read, every section must validate; damaged ones are set aside
/// (see [`SnapshotStore::load_newest`]).
pub fn load_newest_engine(
    store: &SnapshotStore,
    configured: &StructuralConfig,
    knobs: EngineKnobs,
    storage: &VectorStorage,
) -> Result<Newest<Loaded>, StoreError> {
    store.load_newest(|dir| {
        read_raft_meta(dir).map_err(|e| LoadFailure::Damaged(e.to_string()))?;
        snapshot::load(dir, configured, knobs, storage).map_err(|e| {
            if e.is_fatal() {
                LoadFailure::Refused(e.to_string())
            } else {
                LoadFailure::Damaged(e.to_string())
            }
        })
    })
}
