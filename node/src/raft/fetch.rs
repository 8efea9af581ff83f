//! Recovery at start by a snapshot from a peer (issue 13).
//!
//! A replica whose newest snapshot was damaged while it was down loads an older one
//! ([`crate::snapshot::store::SnapshotStore::load_newest`] sets the damaged one aside). If its log
//! was purged past that older snapshot, it cannot rebuild its state from its own disk, and
//! openraft would stop with "Cannot re-apply logs". Before openraft starts, [`recover`] then:
//!
//! 1. takes the peers from the newest membership known locally (the last membership entry in
//!    the retained log, else the loaded snapshot's);
//! 2. asks them in turn (`FetchSnapshot`, with backoff, until `fetch_deadline`) for a snapshot
//!    that covers the log at least up to the local purge point, received with the same receiver
//!    as InstallSnapshot (`incoming-*` dir, size cap, CRC32C);
//! 3. makes the log consistent with it exactly as openraft does after installing a snapshot
//!    ([`align_log_with_snapshot`]);
//! 4. installs it into the state machine through the same path as openraft's install
//!    (`ShardStateMachine::install_snapshot`: commit as a `snap-*` dir, load, apply digest).
//!
//! The vote is only ever raised, never lowered ([`raise_vote_to`]).
//!
//! Why nothing acknowledged is lost: a member's snapshot holds only applied entries, and a
//! member applies only committed entries. Entries up to the snapshot's last log id are
//! therefore committed cluster-wide, and by the Log Matching property every log that holds an
//! entry with that log id holds the same entries before it: dropping our copies of them loses
//! nothing — it is what openraft itself does on install_snapshot (purge up to the snapshot).
//! Entries above it are kept: this voter may have acknowledged them to a leader, and a quorum
//! may count on them. The one exception is openraft's too: if our entry at the snapshot's index
//! has a different log id, it and everything after it were never committed (a committed entry
//! after it would imply ours matches), so they are truncated first, as openraft does on a
//! conflicting snapshot. The WAL refuses to truncate below its recorded commit point.
//!
//! Crash safety: the log is aligned before the snapshot is committed to the store. A crash in
//! between leaves the older snapshot and a log purged past it: the next start fetches again
//! (the `incoming-*` dir is removed at open). A crash after the commit leaves the new snapshot
//! and a log purged exactly to it: a normal start.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use kindex_proto::FetchSnapshotRequest;
use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::storage::StorageHelper;
use tokio::time::Instant;

use super::LogId;
use super::NodeId;
use super::SnapshotMeta;
use super::log_store::LogStore;
use super::network::NetworkConfig;
use super::snapshot::SnapshotDir;
use super::state_machine::ShardState;
use super::state_machine::ShardStateMachine;
use super::transfer;
use super::transfer::IncomingDir;
use crate::snapshot::store::SnapshotStore;

/// A snapshot fetched and installed at start.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub peer: NodeId,
    pub meta: SnapshotMeta,
    pub bytes: u64,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer could provide a snapshot; what was tried (for the refusal message).
    #[error("{0}")]
    Unavailable(String),
    /// A local failure (log, snapshot store, loading the received snapshot).
    #[error("recovering by a snapshot from a peer: {0}")]
    Local(io::Error),
}

/// The peers of the newest membership known locally, by id, with their member address.
pub async fn local_peers<S: ShardState>(
    log: &mut LogStore,
    sm: &ShardStateMachine<S>,
    me: NodeId,
) -> io::Result<BTreeMap<NodeId, String>> {
    let mut sm = sm.clone();
    let in_log = StorageHelper::new(log, &mut sm)
        .last_membership_in_log(0)
        .await
        .map_err(io::Error::other)?;
    let membership = match in_log.last() {
        Some(m) => m.clone(),
        None => sm.applied_state().await?.1,
    };
    Ok(membership
        .membership()
        .nodes()
        .filter(|(id, _)| **id != me)
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect())
}

/// Fetch a snapshot covering the log up to `min_index` from a peer, make the log consistent
/// with it and install it into the state machine. Runs before openraft starts.
pub async fn recover<S: ShardState>(
    log: &mut LogStore,
    sm: &ShardStateMachine<S>,
    me: NodeId,
    min_index: u64,
    cfg: &NetworkConfig,
) -> Result<Fetched, FetchError> {
    let peers = local_peers(log, sm, me).await.map_err(FetchError::Local)?;
    if peers.is_empty() {
        return Err(FetchError::Unavailable(
            "this member is the only one of its group (no peer to fetch a snapshot from)".into(),
        ));
    }
    tracing::warn!(
        ?peers,
        min_index,
        "the log was purged past the newest snapshot that loads: fetching a snapshot from a peer"
    );
    let (fetched, dir) = fetch_from_peers(sm.snapshot_store(), me, &peers, min_index, cfg).await?;
    let last = fetched
        .meta
        .last_log_id
        .ok_or_else(|| FetchError::Local(io::Error::other("fetched snapshot has no log id")))?;
    align_log_with_snapshot(log, last)
        .await
        .map_err(FetchError::Local)?;
    raise_vote_to(log, last).await.map_err(FetchError::Local)?;
    let mut target = sm.clone();
    target
        .install_snapshot(
            &fetched.meta,
            SnapshotDir {
                path: dir.path.clone(),
            },
        )
        .await
        .map_err(FetchError::Local)?;
    drop(dir); // moved into the store by the install: nothing left to remove
    tracing::info!(
        peer = fetched.peer,
        index = last.index,
        meta = %fetched.meta,
        bytes = fetched.bytes,
        secs = fetched.duration.as_secs_f64(),
        "fetched a snapshot from a peer and installed it"
    );
    Ok(fetched)
}

/// Ask every peer in turn, with backoff between rounds, until one sends a snapshot that covers
/// `min_index` or `cfg.fetch_deadline` passes (no new attempt starts after it).
async fn fetch_from_peers(
    store: &SnapshotStore,
    me: NodeId,
    peers: &BTreeMap<NodeId, String>,
    min_index: u64,
    cfg: &NetworkConfig,
) -> Result<(Fetched, IncomingDir), FetchError> {
    let start = Instant::now();
    let deadline = start + cfg.fetch_deadline;
    let mut last_error: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut backoff = Duration::from_millis(500);
    let mut attempts = 0u32;
    loop {
        for (&peer, addr) in peers {
            attempts += 1;
            let t = Instant::now();
            tracing::info!(peer, %addr, min_index, attempt = attempts, "asking a peer for a snapshot");
            match fetch_one(store, me, addr, min_index, cfg).await {
                Ok((meta, dir)) => {
                    let bytes = transfer::list_files(&dir.path)
                        .map(|f| f.iter().map(|f| f.size).sum())
                        .unwrap_or(0);
                    let fetched = Fetched {
                        peer,
                        meta,
                        bytes,
                        duration: t.elapsed(),
                    };
                    return Ok((fetched, dir));
                }
                Err(e) => {
                    tracing::warn!(peer, %addr, error = %e, secs = t.elapsed().as_secs_f64(), "snapshot fetch failed");
                    last_error.insert(peer, e);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    let tried: Vec<String> = peers
        .iter()
        .map(|(id, addr)| {
            let err = last_error.get(id).map_or("not tried", String::as_str);
            format!("peer {id} at {addr}: {err}")
        })
        .collect();
    Err(FetchError::Unavailable(format!(
        "no peer sent a snapshot covering index {min_index} within {:.0?} ({attempts} attempts; {})",
        start.elapsed(),
        tried.join("; ")
    )))
}

/// One FetchSnapshot call to `addr` (a member address, see [`super::raft_addr_of`]).
async fn fetch_one(
    store: &SnapshotStore,
    me: NodeId,
    addr: &str,
    min_index: u64,
    cfg: &NetworkConfig,
) -> Result<(SnapshotMeta, IncomingDir), String> {
    let channel = super::network::connect_lazy(super::raft_addr_of(addr), cfg)?;
    let mut client = super::network::raft_client(channel, cfg);
    let mut request = tonic::Request::new(FetchSnapshotRequest {
        min_index,
        requester: me,
    });
    request.set_timeout(cfg.snapshot_timeout);
    let mut stream = client
        .fetch_snapshot(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let (_vote, meta, dir) = transfer::receive(store, &mut stream, cfg)
        .await
        .map_err(|e| e.to_string())?;
    match meta.last_log_id {
        Some(l) if l.index >= min_index => Ok((meta, dir)),
        other => Err(format!(
            "sent a snapshot up to {other:?}, at least index {min_index} is needed"
        )),
    }
}

/// Make the log consistent with an installed snapshot at `snap`, as openraft does after
/// installing one (`following_handler::install_full_snapshot`): if the entry at `snap.index`
/// differs from `snap`, that entry and everything after it are truncated (never committed);
/// then the log is purged up to `snap` (so `last_purged = snap`, and `last = snap` if the log
/// ended before it). Entries after a matching `snap` are kept. Never touches the vote.
pub async fn align_log_with_snapshot(log: &mut LogStore, snap: LogId) -> io::Result<()> {
    let state = log.get_log_state().await?;
    if let Some(purged) = state.last_purged_log_id
        && purged.index >= snap.index
    {
        if purged.index == snap.index && purged != snap {
            return Err(io::Error::other(format!(
                "the log was purged up to {purged} but the snapshot is at {snap}: they disagree"
            )));
        }
        // Already purged that far; nothing of the snapshot's range is left.
        return Ok(());
    }
    let local = log.try_get_log_entries(snap.index..=snap.index).await?;
    if let Some(entry) = local.first()
        && entry.log_id != snap
    {
        tracing::warn!(local = %entry.log_id, snapshot = %snap, "the local log conflicts with the fetched snapshot: truncating the uncommitted tail");
        // Keep everything before `snap.index`: the entry there is the previous one, or the
        // purge point (which is below `snap.index` here).
        let prev = match snap.index.checked_sub(1) {
            None => None,
            Some(i) if state.last_purged_log_id.is_some_and(|p| p.index == i) => {
                state.last_purged_log_id
            }
            Some(i) => log
                .try_get_log_entries(i..=i)
                .await?
                .first()
                .map(|e| e.log_id),
        };
        log.truncate_after(prev).await?;
    }
    log.purge(snap).await
}

/// Raise the vote to the term of the snapshot's last entry if it is below it. After a fetch the
/// log may end at the snapshot's log id, of a term this member never saw (it was down while the
/// group moved on): a log whose last term is above the vote is a state openraft never reaches
/// by itself (a follower adopts the leader's vote before accepting its entries or snapshot).
/// Raising the term is always allowed in Raft, and voting for the leader that wrote that entry
/// agrees with the majority that committed it, so no second leader of that term can arise.
pub async fn raise_vote_to(log: &mut LogStore, snap: LogId) -> io::Result<()> {
    let term = log.read_vote().await?.map_or(0, |v| v.leader_id.term);
    if term < snap.leader_id.term {
        let vote = super::Vote::new(snap.leader_id.term, snap.leader_id.node_id);
        tracing::info!(%vote, "raising the vote to the fetched snapshot's term");
        log.save_vote(&vote).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
