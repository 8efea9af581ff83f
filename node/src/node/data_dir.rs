//! The data dir: identity, structural config, writability.

use std::path::Path;

use crate::config::StructuralConfig;
use crate::config::structural;
use crate::raft;
use crate::raft::NodeId;

use super::*;

/// The identity a data dir belongs to: a PV must not be mounted by another pod by mistake.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    index: String,
    shard: u32,
    node_id: NodeId,
}

const IDENTITY_FILE: &str = "node.json";

/// Creates / checks the data dir: writable, structural config, identity, no pre-Raft snapshots.
pub(super) fn prepare_data_dir(
    dir: &Path,
    s: &StructuralConfig,
    index: &str,
    node_id: NodeId,
    shard: u32,
) -> Result<(), NodeError> {
    let data_err = |reason: String| NodeError::DataDir {
        dir: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| data_err(format!("cannot create: {e}")))?;
    probe_writable(dir)?;
    structural::open_or_init(dir, s)?;

    let me = Identity {
        index: index.to_string(),
        shard,
        node_id,
    };
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| data_err(format!("{IDENTITY_FILE} is not valid: {e}")))?;
            if stored != me {
                return Err(data_err(format!(
                    "belongs to node {} of shard {} of index {:?}, but this is node {node_id} of shard {shard} of index {index:?} \
                     (check --node-id / --shard / --index, or the volume mounted here)",
                    stored.node_id, stored.shard, stored.index
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let json = serde_json::to_vec_pretty(&me).map_err(|e| data_err(e.to_string()))?;
            crate::fsutil::write_atomic(&path, &json)
                .map_err(|e| data_err(format!("cannot write {IDENTITY_FILE}: {e}")))?;
        }
        Err(e) => return Err(data_err(format!("cannot read {IDENTITY_FILE}: {e}"))),
    }

    // Snapshots written by a standalone node before replication existed have no Raft metadata
    // and no log: they cannot be replayed into a Raft group. Refuse instead of discarding them.
    let snaps = dir.join("snapshots");
    if !dir.join("raft-log").exists()
        && let Ok(rd) = std::fs::read_dir(&snaps)
    {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("snap-") && !e.path().join(raft::snapshot::RAFT_META_FILE).exists()
            {
                return Err(data_err(format!(
                    "snapshot {name} was written by a kindex node without Raft replication and cannot be \
                     loaded by this version; move {} aside and re-load the data",
                    snaps.display()
                )));
            }
        }
    }
    Ok(())
}

/// The Raft node id of pod `ordinal` whose volume is `dir` (ids: `kindex_common::node_id`).
///
/// - The volume names its node (`node.json`): that id, so restarts keep their identity.
/// - It holds a Raft log but no `node.json` (written before identities were recorded):
///   the pre-incarnation id, the ordinal.
/// - It is empty (a new pod, or a lost volume replaced): a new random incarnation. An
///   empty replica must never answer under the id of the member it replaces: a voter
///   with no log can elect a leader that lacks committed entries.
///
/// Only reads; `prepare_data_dir` records the id in `node.json` before Raft opens.
pub fn pod_node_id(dir: &Path, ordinal: u32) -> Result<NodeId, NodeError> {
    use kindex_common::node_id;
    let data_err = |reason: String| NodeError::DataDir {
        dir: dir.display().to_string(),
        reason,
    };
    if ordinal > node_id::MAX_ORDINAL {
        return Err(data_err(format!(
            "pod ordinal {ordinal} is above {}, the largest a node id can carry",
            node_id::MAX_ORDINAL
        )));
    }
    match std::fs::read(dir.join(IDENTITY_FILE)) {
        Ok(bytes) => {
            let stored: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| data_err(format!("{IDENTITY_FILE} is not valid: {e}")))?;
            if node_id::ordinal_of(stored.node_id) != ordinal {
                return Err(data_err(format!(
                    "belongs to node {} (pod ordinal {}), but this pod's ordinal is {ordinal} \
                     (check the volume mounted here)",
                    stored.node_id,
                    node_id::ordinal_of(stored.node_id)
                )));
            }
            Ok(stored.node_id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("raft-log").exists() {
                return Ok(u64::from(ordinal));
            }
            use rand::Rng;
            let incarnation = rand::rng().random_range(1..=node_id::MAX_INCARNATION);
            Ok(node_id::compose(ordinal, incarnation))
        }
        Err(e) => Err(data_err(format!("cannot read {IDENTITY_FILE}: {e}"))),
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
