//! Background tasks of a node: leader/role watchers, readiness, runtime reload, maintenance.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::config::RuntimeConfig;

use super::*;

impl Node {
    pub(super) fn spawn_watchers(self: &Arc<Self>) {
        // Leader changes and role changes (logged, counted).
        let node = self.clone();
        tokio::spawn(async move {
            let mut rx = node.raft.metrics();
            let (mut leader, mut state) = (None, ServerState::Learner);
            loop {
                {
                    let m = rx.borrow_watched();
                    if m.current_leader != leader {
                        if let Some(l) = m.current_leader {
                            node.metrics.raft_leader_changes.inc();
                            tracing::info!(leader = l, term = m.current_term, "new shard leader");
                        }
                        leader = m.current_leader;
                    }
                    if m.state != state {
                        tracing::info!(from = ?state, to = ?m.state, term = m.current_term, "raft role changed");
                        state = m.state;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        // Readiness: once the cluster commit covering the local log tail is applied.
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                match node
                    .raft
                    .wait_for_recovery(Some(Duration::from_secs(5)))
                    .await
                {
                    Ok(m) => {
                        tracing::info!(applied = ?m.last_applied, "caught up with the shard; ready");
                        node.recovered.store(true, Ordering::Release);
                        return;
                    }
                    Err(openraft::metrics::WaitError::ShuttingDown) => return,
                    Err(_) => {}
                }
            }
        });
        if !self.standalone {
            crate::divergence::spawn(self.clone());
        }
    }
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
                    crate::config::logging::apply_runtime(&node.runtime(), &cfg);
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

/// Tombstones (deleted points still linked in the graph) above this share of live points are
/// compacted at once.
const COMPACT_RATIO: f64 = 0.1;
/// Fewer tombstones are compacted once their number stopped changing for this long: the tail
/// of a mass delete or a retention sweep would otherwise hold its memory until more deletes.
const TOMBSTONES_SETTLED: Duration = Duration::from_secs(30);

/// Whether `tombstones` should be compacted now, `unchanged_for` after their number last moved.
fn compaction_due(tombstones: u64, live: u64, unchanged_for: Duration) -> bool {
    tombstones > 0
        && (tombstones as f64 >= COMPACT_RATIO * live.max(1) as f64
            || unchanged_for >= TOMBSTONES_SETTLED)
}

/// The least time between two heap trims ([`crate::memory::release_free`]).
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Snapshot triggers (runtime config: `snapshotIntervalSecs`, `snapshotLogEntries`; openraft's
/// own policy is off), compaction ([`compaction_due`]) and heap trims once indexing, a snapshot
/// or a compaction is over.
pub fn spawn_maintenance(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut last_trigger = Instant::now();
        let mut last_snapshot_index = node.raft_metrics().snapshot.map_or(0, |s| s.index);
        let mut last_tombstones = 0;
        let mut tombstones_since = Instant::now();
        // The start loaded a snapshot and replayed the log: trim once that is indexed.
        let mut worked = true;
        let mut last_trim: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if node.stopping.load(Ordering::Acquire) {
                return;
            }
            let rt = node.runtime();
            let m = node.raft_metrics();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let snap = m.snapshot.map_or(0, |l| l.index);
            if snap != last_snapshot_index {
                // A snapshot was built (or installed): the interval counts from it.
                last_snapshot_index = snap;
                last_trigger = Instant::now();
                worked = true;
            }
            let due_entries = applied.saturating_sub(snap) >= rt.snapshot_log_entries.max(1);
            let due_time = applied > snap && last_trigger.elapsed() >= rt.snapshot_interval();
            // A snapshot needs room for a second copy of the state: not on a full volume
            // (samples it every second, which also logs a change of state).
            let room = !node.volume.is_full();
            // Give a running build time before asking again.
            if (due_entries || due_time)
                && room
                && last_trigger.elapsed() >= Duration::from_secs(10).min(rt.snapshot_interval())
            {
                tracing::info!(
                    applied,
                    snapshot = snap,
                    due_entries,
                    due_time,
                    "triggering a snapshot"
                );
                if node.raft.trigger().snapshot().await.is_err() {
                    return;
                }
                last_trigger = Instant::now();
            }
            let engine = node.engine();
            let tombstones = engine.pending_tombstones();
            if tombstones != last_tombstones {
                last_tombstones = tombstones;
                tombstones_since = Instant::now();
            }
            let due = compaction_due(tombstones, engine.count(), tombstones_since.elapsed());
            if due {
                // At most one compaction per settle period, even if it leaves some behind.
                tombstones_since = Instant::now();
            }
            let queued = engine.stats().queued;
            worked |= due || queued > 0;
            if due {
                let _ = tokio::task::spawn_blocking(move || {
                    let s = engine.compact();
                    tracing::info!(
                        purged = s.purged,
                        relinked = s.relinked_lists,
                        millis = s.millis,
                        "compaction"
                    );
                })
                .await;
            } else if worked && queued == 0 && last_trim.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
                worked = false;
                last_trim = Some(Instant::now());
                let _ = tokio::task::spawn_blocking(crate::memory::release_free).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_compacted_over_the_ratio_or_once_settled() {
        let s = Duration::from_secs;
        assert!(!compaction_due(0, 100, s(3600)));
        assert!(compaction_due(10, 100, s(0)));
        assert!(!compaction_due(9, 100, s(29)));
        assert!(compaction_due(9, 100, s(30)));
        assert!(
            compaction_due(1, 0, s(0)),
            "nothing live: any tombstone is over the ratio"
        );
    }
}
