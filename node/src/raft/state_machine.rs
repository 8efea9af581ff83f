//! openraft `RaftStateMachine` over a [`ShardState`] (the engine), with snapshots as
//! directories of files in `<data>/snapshots/` (see [`super::snapshot`]).
//!
//! The state is transient between snapshots: on open the newest snapshot that loads is loaded
//! ([`SnapshotStore::load_newest`]: a broken one is reported, moved to `corrupt-*`, and the
//! previous one tried), and openraft then re-applies the committed log after it (the log store
//! persists `committed`; `RaftShard::start` refuses to start when the log no longer holds it).

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::Stream;
use futures::StreamExt;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::ApplyResponder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use parking_lot::Mutex;

use super::Command;
use super::CommandResult;
use super::Entry;
use super::LogId;
use super::Snapshot;
use super::SnapshotMeta;
use super::StoredMembership;
use super::TypeConfig;
use super::digest::ApplyDigest;
use super::digest::DigestLog;
use super::fault::FaultSwitch;
use super::snapshot::SnapshotDir;
use super::snapshot::read_raft_meta;
use crate::snapshot::store::LoadFailure;
use crate::snapshot::store::Skipped;
use crate::snapshot::store::SnapshotStore;
use crate::snapshot::store::StoreError;

/// Most entries handed to the engine in one blocking call.
const APPLY_BATCH: usize = 256;

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied; `affected` points were inserted, replaced or deleted.
    Applied { affected: u64 },
    /// Deterministically refused (e.g. over quota): nothing changed, the client gets the reason.
    Rejected(super::Refusal),
}

/// The shard's state as the Raft layer sees it. Implemented by the engine.
///
/// All methods are called from blocking threads, never from an async task, so they may block
/// (e.g. `apply` waiting for room in a full indexing queue).
pub trait ShardState: Send + Sync + 'static {
    /// Apply one committed command at `log_id`. Must be deterministic: every replica applies
    /// the same commands in the same order and must end in the same state. `Err` means this
    /// replica cannot go on (disk failure...): the Raft node stops with a fatal error.
    fn apply(&self, log_id: &LogId, cmd: &Command) -> io::Result<ApplyOutcome>;

    /// Capture the state as of now, between two applies (nothing is applied concurrently with
    /// this call). Should be cheap: the heavy I/O belongs in [`SnapshotWriter::write`], which
    /// runs in the background while later commands are applied.
    ///
    /// `last_applied` is the log id the snapshot will be recorded at: the last applied entry of
    /// any kind (blank and membership entries never reach [`Self::apply`]).
    fn begin_snapshot(&self, last_applied: Option<&LogId>) -> io::Result<Box<dyn SnapshotWriter>>;

    /// Replace the whole state with the snapshot in `dir` (written by a [`SnapshotWriter`] on
    /// this or another replica). Validate before replacing: on error the state must be unchanged.
    /// Do not keep using paths inside `dir` afterwards: old snapshot dirs get deleted.
    ///
    /// An error made by [`refuse`] (e.g. the snapshot was built with another structural
    /// config) is not a damaged snapshot: opening stops instead of falling back to an older one.
    fn load_snapshot(&self, dir: &Path) -> io::Result<()>;
}

/// Marks a snapshot load error as "this replica must not go on" (see
/// [`ShardState::load_snapshot`]), as opposed to "this snapshot is damaged".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// An error that stops opening instead of trying an older snapshot.
pub fn refuse(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, Refused(reason.into()))
}

/// Whether `e` was made by [`refuse`].
pub fn is_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Refused>())
}

/// Writes a captured state (see [`ShardState::begin_snapshot`]).
pub trait SnapshotWriter: Send + 'static {
    /// Write the captured state as files (subdirectories allowed) into the empty directory
    /// `dir`. The top-level name `RAFT_META` is reserved. No fsync needed: the caller fsyncs
    /// the whole tree before the snapshot counts as taken.
    fn write(self: Box<Self>, dir: &Path) -> io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    #[error("snapshot dir {path}: {source}")]
    Store { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Load(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct StateMachineConfig {
    /// Complete snapshots kept on disk (at least 1); changed live by
    /// [`ShardStateMachine::set_keep_snapshots`].
    pub keep_snapshots: usize,
    /// Fault injection (tests): `diverge-at`. Default: none.
    pub faults: FaultSwitch,
}

impl Default for StateMachineConfig {
    fn default() -> Self {
        Self {
            keep_snapshots: 2,
            faults: FaultSwitch::default(),
        }
    }
}

/// What has been applied; one lock, so a snapshot's meta and digest always agree.
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
    digests: DigestLog,
}

struct Inner<S> {
    state: Arc<S>,
    store: SnapshotStore,
    cfg: StateMachineConfig,
    /// `cfg.keep_snapshots`, live (the runtime config's `snapshotKeep`).
    keep: AtomicUsize,
    applied: Mutex<Applied>,
    /// The newest complete snapshot: what `get_current_snapshot` returns.
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    /// Newer snapshots that did not load at open and were set aside.
    set_aside: Vec<Skipped>,
}

/// The Raft state machine of a shard. Cheap to clone (shared).
pub struct ShardStateMachine<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for ShardStateMachine<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

impl<S: ShardState> ShardStateMachine<S> {
    /// Open the state machine on `snapshot_root` (`<data>/snapshots`) and load the newest
    /// snapshot that loads into `state` (which must be empty).
    pub async fn open(
        snapshot_root: impl Into<PathBuf>,
        state: Arc<S>,
        cfg: StateMachineConfig,
    ) -> Result<Self, StateMachineError> {
        let root = snapshot_root.into();
        let err = |source| StateMachineError::Store {
            path: root.clone(),
            source,
        };
        let store = SnapshotStore::open(root.clone()).map_err(err)?;
        let cfg = StateMachineConfig {
            keep_snapshots: cfg.keep_snapshots.max(1),
            ..cfg
        };

        let opened = blocking(move || {
            let newest = store.load_newest(|dir| {
                let meta = read_raft_meta(dir).map_err(|e| LoadFailure::Damaged(e.to_string()))?;
                state.load_snapshot(dir).map_err(|e| {
                    if is_refusal(&e) {
                        LoadFailure::Refused(e.to_string())
                    } else {
                        LoadFailure::Damaged(e.to_string())
                    }
                })?;
                Ok(meta)
            });
            Ok((newest, store, state))
        })
        .await
        .map_err(err)?;
        let (newest, store, state) = opened;
        let newest = newest?;
        if newest.loaded.is_none() && !newest.skipped.is_empty() {
            // Not fatal here: a log that still starts at index 1 rebuilds the state; otherwise
            // `RaftShard::start` stops with the gap.
            tracing::error!(
                root = %store.root().display(),
                "no snapshot loads; the state must come from the log alone"
            );
        }
        let current = newest.loaded.map(|(dir, meta)| (meta, dir));
        let set_aside = newest.skipped;

        let applied = match &current {
            Some((meta, _)) => Applied {
                last: meta.meta.last_log_id,
                membership: meta.meta.last_membership.clone(),
                digests: DigestLog::new(meta.digest_or_restart()),
            },
            None => Applied {
                last: None,
                membership: StoredMembership::default(),
                digests: DigestLog::new(ApplyDigest::default()),
            },
        };
        let current = current.map(|(m, dir)| (m.meta, dir));
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                store,
                keep: AtomicUsize::new(cfg.keep_snapshots),
                cfg,
                applied: Mutex::new(applied),
                current: Mutex::new(current),
                set_aside,
            }),
        })
    }

    /// Complete snapshots to keep from the next snapshot on (at least 1).
    pub fn set_keep_snapshots(&self, keep: usize) {
        self.inner.keep.store(keep.max(1), Ordering::Relaxed);
    }

    /// The engine.
    pub fn state(&self) -> &Arc<S> {
        &self.inner.state
    }

    pub fn snapshot_store(&self) -> &SnapshotStore {
        &self.inner.store
    }

    /// Snapshots that did not load at open (newest first), set aside as `corrupt-*`.
    pub fn set_aside_at_open(&self) -> &[Skipped] {
        &self.inner.set_aside
    }

    /// Last applied log id (also in `RaftMetrics::last_applied`).
    pub fn last_applied(&self) -> Option<LogId> {
        self.inner.applied.lock().last
    }

    /// The apply digest after the last applied entry.
    pub fn apply_digest(&self) -> ApplyDigest {
        self.inner.applied.lock().digests.current()
    }

    /// The apply digest at a recently applied `index` (see [`DigestLog`]).
    pub fn apply_digest_at(&self, index: u64) -> Option<ApplyDigest> {
        self.inner.applied.lock().digests.at(index)
    }

    /// Apply up to [`APPLY_BATCH`] entries on a blocking thread; returns the results and apply
    /// digests of the applied prefix, the entries back, and the error that stopped it, if any.
    async fn apply_batch(&self, batch: Vec<Entry>) -> io::Result<BatchApplied> {
        let state = self.inner.state.clone();
        let faults = self.inner.cfg.faults.clone();
        let mut digest = self.apply_digest();
        if let Some(d) = faults.apply_delay() {
            tokio::time::sleep(d).await;
        }
        tokio::task::spawn_blocking(move || {
            let mut results = Vec::with_capacity(batch.len());
            let mut digests = Vec::with_capacity(batch.len());
            for entry in &batch {
                let applied_index = entry.log_id.index;
                // Fault injection: this replica applies something else here (tests only).
                let diverged = match &entry.payload {
                    openraft::EntryPayload::Normal(cmd) if faults.diverges_at(applied_index) => {
                        tracing::warn!(
                            index = applied_index,
                            "fault injection: applying a different command"
                        );
                        Some(super::fault::diverged(cmd))
                    }
                    _ => None,
                };
                let result = match &entry.payload {
                    openraft::EntryPayload::Normal(cmd) => {
                        match state.apply(&entry.log_id, diverged.as_ref().unwrap_or(cmd)) {
                            Ok(ApplyOutcome::Applied { affected }) => CommandResult {
                                applied_index,
                                affected,
                                rejected: None,
                            },
                            Ok(ApplyOutcome::Rejected(reason)) => CommandResult {
                                applied_index,
                                affected: 0,
                                rejected: Some(reason),
                            },
                            Err(e) => {
                                return BatchApplied {
                                    results,
                                    digests,
                                    batch,
                                    error: Some(e),
                                };
                            }
                        }
                    }
                    _ => CommandResult {
                        applied_index,
                        affected: 0,
                        rejected: None,
                    },
                };
                digest = digest.apply(entry, diverged.as_ref());
                digests.push(digest);
                results.push(result);
            }
            BatchApplied {
                results,
                digests,
                batch,
                error: None,
            }
        })
        .await
        .map_err(io::Error::other)
    }

    fn record_applied(&self, entries: &[Entry], digests: Vec<ApplyDigest>) {
        let mut a = self.inner.applied.lock();
        for (e, d) in entries.iter().zip(digests) {
            a.last = Some(e.log_id);
            if let openraft::EntryPayload::Membership(m) = &e.payload {
                a.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
            a.digests.push(d);
        }
    }

    /// Make a freshly built `dir` the current snapshot, unless a newer one was installed while
    /// it was being built: then it stays on disk unused until pruned (openraft may still hold
    /// the path the build returned).
    fn register(&self, meta: &SnapshotMeta, dir: &Path) -> io::Result<()> {
        let mut cur = self.inner.current.lock();
        if cur
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id)
        {
            return Ok(());
        }
        *cur = Some((meta.clone(), dir.to_path_buf()));
        self.inner
            .store
            .prune(dir, self.inner.keep.load(Ordering::Relaxed))
    }
}

/// The outcome of [`ShardStateMachine::apply_batch`]: results and digests of the applied prefix.
struct BatchApplied {
    results: Vec<CommandResult>,
    digests: Vec<ApplyDigest>,
    batch: Vec<Entry>,
    error: Option<io::Error>,
}

/// Builds one snapshot from a state captured by [`ShardState::begin_snapshot`].
pub struct ShardSnapshotBuilder<S> {
    sm: ShardStateMachine<S>,
    meta: SnapshotMeta,
    digest: ApplyDigest,
    /// Mutex only to make the builder `Sync` (openraft requires it); taken once.
    writer: Mutex<Option<io::Result<Box<dyn SnapshotWriter>>>>,
}

impl<S: ShardState> RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder<S> {
    type SnapshotData = SnapshotDir;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let writer = self
            .writer
            .lock()
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))??;
        let store = self.sm.inner.store.clone();
        let meta = self.meta.clone();
        let digest = self.digest;
        let dir = blocking(move || {
            let tmp = store.new_build_dir()?;
            let res = writer
                .write(&tmp)
                .and_then(|()| super::snapshot::commit(&store, &tmp, &meta, Some(&digest)));
            if res.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            res
        })
        .await?;
        let sm = self.sm.clone();
        let meta = self.meta.clone();
        let d = dir.clone();
        blocking(move || sm.register(&meta, &d)).await?;
        tracing::info!(dir = %dir.display(), meta = %self.meta, "built snapshot");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: SnapshotDir { path: dir },
        })
    }
}

impl<S: ShardState> RaftStateMachine<TypeConfig> for ShardStateMachine<S> {
    type SnapshotData = SnapshotDir;
    type SnapshotBuilder = ShardSnapshotBuilder<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let a = self.inner.applied.lock();
        Ok((a.last, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut done = false;
        while !done {
            // Pull a bounded batch: the stream may cover a long range of large entries.
            let mut batch = Vec::new();
            let mut responders: Vec<Option<ApplyResponder<TypeConfig>>> = Vec::new();
            while batch.len() < APPLY_BATCH {
                match entries.next().await {
                    Some(item) => {
                        let (entry, responder) = item?;
                        batch.push(entry);
                        responders.push(responder);
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let BatchApplied {
                results,
                digests,
                batch,
                error: err,
            } = self.apply_batch(batch).await?;
            self.record_applied(&batch[..results.len()], digests);
            for (result, responder) in results.into_iter().zip(responders) {
                if let Some(r) = responder {
                    r.send(result);
                }
            }
            if let Some(e) = err {
                tracing::error!(error = %e, "state machine apply failed; stopping");
                return Err(e);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called between applies: the captured state and the applied meta agree.
        let (meta, digest) = {
            let a = self.inner.applied.lock();
            let meta = SnapshotMeta {
                last_log_id: a.last,
                last_membership: a.membership.clone(),
            };
            (meta, a.digests.current())
        };
        let state = self.inner.state.clone();
        let writer = state.begin_snapshot(meta.last_log_id.as_ref());
        ShardSnapshotBuilder {
            sm: self.clone(),
            meta,
            digest,
            writer: Mutex::new(Some(writer)),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotDir,
    ) -> Result<(), io::Error> {
        let already_current = self
            .inner
            .current
            .lock()
            .as_ref()
            .is_some_and(|(_, p)| *p == snapshot.path);
        let sm = self.clone();
        let meta2 = meta.clone();
        let dir = blocking(move || {
            let store = &sm.inner.store;
            let dir = if already_current {
                snapshot.path
            } else {
                // Received into our store: move it. Anywhere else: copy, never take others' dirs.
                let src = if store.contains(&snapshot.path) {
                    snapshot.path
                } else {
                    let tmp = store.new_build_dir()?;
                    super::snapshot::copy_tree(&snapshot.path, &tmp)?;
                    tmp
                };
                super::snapshot::commit(store, &src, &meta2, None)?
            };
            let loaded = read_raft_meta(&dir).and_then(|raft_meta| {
                sm.inner.state.load_snapshot(&dir)?;
                Ok(raft_meta.digest_or_restart())
            });
            match loaded {
                Ok(digest) => Ok((dir, digest)),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "installing snapshot failed");
                    let _ = store.mark_corrupt(&dir);
                    Err(e)
                }
            }
        })
        .await?;
        let (dir, digest) = dir;

        {
            let mut a = self.inner.applied.lock();
            a.last = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.digests.reset(digest);
        }
        // A snapshot from the leader replaces the local history: drop every other snapshot.
        *self.inner.current.lock() = Some((meta.clone(), dir.clone()));
        let store = self.inner.store.clone();
        blocking(move || store.prune(&dir, 1)).await?;
        tracing::info!(%meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .inner
            .current
            .lock()
            .as_ref()
            .map(|(meta, path)| Snapshot {
                meta: meta.clone(),
                snapshot: SnapshotDir { path: path.clone() },
            }))
    }
}

#[cfg(test)]
mod tests;
