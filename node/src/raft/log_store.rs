//! Durable Raft log and vote, on the shard's data dir.
//!
//! Backed by the `raft-log` crate (by openraft's author; the WAL under databend-meta): a
//! segmented ("chunked") write-ahead log where vote, append, commit, truncate and purge are all
//! checksummed records, replayed on open. This module only adapts it to openraft's
//! `RaftLogStorage`:
//!
//! - `save_vote`, `truncate_after` and `purge` return only after their record is fsynced.
//! - `append` writes into the WAL buffer (readable at once) and hands openraft's callback to the
//!   WAL's flush thread, which calls it after `fsync` — never before.
//! - `save_committed` is written without its own fsync (best effort, as openraft allows); the
//!   next fsynced append carries it.
//! - Crash recovery (done by the WAL on open): an incomplete trailing record or a zero-filled
//!   tail is cut; a complete record with a bad checksum makes `open` fail (see NOTES.md).
//! - Purge deletes whole chunk files, only after the purge record is durable.
//! - Fault injection (tests): `flush-delay-ms` holds appended entries in memory before they go
//!   to the flush thread (see [`super::fault`]), widening the window in which followers hold
//!   entries the leader has not written yet.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use futures::Stream;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use parking_lot::Mutex;
use raft_log::RaftLog;
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Entry;
use super::EntryPayload;
use super::LogId;
use super::TypeConfig;
use super::Vote;
use super::fault::FaultSwitch;
use super::wire;

/// Tuning of the log store. Defaults suit one shard per pod.
#[derive(Debug, Clone)]
pub struct LogStoreConfig {
    /// Directory that holds the WAL chunk files (`<data>/raft-log`).
    pub dir: PathBuf,
    /// Max size of one chunk file. Purge deletes whole chunks, so smaller chunks free disk sooner.
    pub chunk_max_bytes: usize,
    /// Byte budget of the in-memory entry cache (entries older than it are re-read from disk).
    pub cache_bytes: usize,
    /// Max entries kept in the cache.
    pub cache_items: usize,
    /// Max bytes of entries returned for one AppendEntries (at least one entry is always sent).
    pub append_batch_bytes: u64,
    /// Group commit: how long the WAL's flush thread waits for more writes before an fsync
    /// (writes queued meanwhile share one fsync anyway). raft-log's default is 1 ms, which
    /// adds up to 1 ms to every write on the leader and again on the followers.
    pub group_commit_wait: std::time::Duration,
    /// Fault injection (tests): `flush-delay-ms`. Default: none.
    pub faults: FaultSwitch,
}

impl LogStoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            chunk_max_bytes: 64 << 20,
            cache_bytes: 256 << 20,
            cache_items: 100_000,
            append_batch_bytes: 8 << 20,
            group_commit_wait: std::time::Duration::from_millis(1),
            faults: FaultSwitch::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("cannot create raft log dir {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "cannot open raft log in {path} (a damaged record that is not a torn tail is refused): {source}"
    )]
    Open { path: PathBuf, source: io::Error },
}

/// Codec adapter: a serde value stored in the WAL as a length-prefixed [`wire`] blob.
/// (raft-log's records carry their own checksum; this only frames the value.)
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stored<T>(pub T);

impl<T: Debug> Debug for Stored<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> codeq::Encode for Stored<T> {
    fn encode<W: io::Write>(&self, w: W) -> Result<usize, io::Error> {
        wire::encode(&self.0)?.encode(w)
    }
}

impl<T: DeserializeOwned> codeq::Decode for Stored<T> {
    fn decode<R: io::Read>(r: R) -> Result<Self, io::Error> {
        // `Vec<u8>::decode` reads a u32 length and never allocates more than the file holds.
        let bytes = Vec::<u8>::decode(r)?;
        Ok(Stored(wire::decode(&bytes)?))
    }
}

/// What flush completion to signal: openraft's append callback, or a local waiter.
pub enum FlushDone {
    Raft(IOFlushed<TypeConfig>),
    Waiter(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for FlushDone {
    fn send(self, res: Result<(), io::Error>) {
        match self {
            FlushDone::Raft(cb) => cb.io_completed(res),
            FlushDone::Waiter(tx) => {
                // The waiter may have given up (e.g. shutdown); nothing else to do then.
                let _ = tx.send(res);
            }
        }
    }
}

/// raft-log type binding.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalTypes;

impl raft_log::Types for WalTypes {
    type LogId = Stored<LogId>;
    type LogPayload = Stored<EntryPayload>;
    type Vote = Stored<Vote>;
    type Callback = FlushDone;
    type UserData = Stored<()>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        super::payload_size(&payload.0)
    }
}

struct Inner {
    wal: Mutex<RaftLog<WalTypes>>,
    dir: PathBuf,
    append_batch_bytes: u64,
    faults: FaultSwitch,
    /// Set once a flush was delayed by fault injection: from then on every append/commit flush
    /// goes through this queue, so flushes (and openraft's callbacks) stay in order.
    delayed: Mutex<Option<tokio::sync::mpsc::UnboundedSender<DelayedFlush>>>,
    /// Declared after `wal`, so it is dropped after it: the WAL's drop joins its flush thread
    /// and only then releases the directory lock.
    closed: ClosedSignal,
}

/// A flush held back by fault injection until `due`.
struct DelayedFlush {
    due: tokio::time::Instant,
    sync: bool,
    done: Option<FlushDone>,
}

/// Set when dropped.
struct ClosedSignal(Arc<AtomicBool>);

impl Drop for ClosedSignal {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// See [`LogStore::release_tracker`].
pub struct LogStoreRelease(Arc<AtomicBool>);

impl LogStoreRelease {
    /// True once the last clone is dropped and the WAL fully closed (lock released).
    pub fn is_released(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The durable log store. Cloning shares the same WAL (the clone is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Open (or create) the log in `cfg.dir`, replaying and repairing its tail. Holds an exclusive
    /// lock on the directory until every clone is dropped.
    pub fn open(cfg: &LogStoreConfig) -> Result<Self, LogStoreError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| LogStoreError::CreateDir {
            path: cfg.dir.clone(),
            source,
        })?;
        let mut wal_cfg = raft_log::Config::new(cfg.dir.display());
        wal_cfg.wal.chunk_max_size = Some(cfg.chunk_max_bytes);
        wal_cfg.wal.read_buffer_size = Some(4 << 20);
        wal_cfg.wal.truncate_incomplete_record = Some(true);
        wal_cfg.wal.flush_batch_wait = Some(cfg.group_commit_wait);
        wal_cfg.log_cache_capacity = Some(cfg.cache_bytes);
        wal_cfg.log_cache_max_items = Some(cfg.cache_items);
        let wal = RaftLog::open(Arc::new(wal_cfg)).map_err(|source| LogStoreError::Open {
            path: cfg.dir.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                wal: Mutex::new(wal),
                dir: cfg.dir.clone(),
                append_batch_bytes: cfg.append_batch_bytes.max(1),
                faults: cfg.faults.clone(),
                delayed: Mutex::new(None),
                closed: ClosedSignal(Arc::default()),
            }),
        })
    }

    /// Something to tell when every clone is gone: the WAL is closed and the directory lock
    /// released. openraft drops its clones some time after `Raft::shutdown` returns.
    pub fn release_tracker(&self) -> LogStoreRelease {
        LogStoreRelease(self.inner.closed.0.clone())
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes the WAL occupies on disk.
    pub fn on_disk_size(&self) -> u64 {
        self.inner.wal.lock().on_disk_size()
    }

    /// Run `write` on the WAL, then fsync and wait for it.
    async fn write_synced(
        &self,
        write: impl FnOnce(&mut RaftLog<WalTypes>) -> io::Result<()>,
    ) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut wal = self.inner.wal.lock();
            write(&mut wal)?;
            wal.flush(true, Some(FlushDone::Waiter(tx)))?;
        }
        rx.await
            .map_err(|_| io::Error::other("raft log flush worker stopped"))?
    }

    /// Hand what was appended to the flush thread (`sync`: fsync, then call `done`) — at once,
    /// or after the fault-injected delay.
    fn flush_appended(
        &self,
        wal: &mut RaftLog<WalTypes>,
        sync: bool,
        done: Option<FlushDone>,
    ) -> io::Result<()> {
        let delay = self.inner.faults.flush_delay();
        let mut delayed = self.inner.delayed.lock();
        if delay.is_none() && delayed.is_none() {
            return wal.flush(sync, done);
        }
        let tx = delayed.get_or_insert_with(|| self.spawn_delayer());
        tx.send(DelayedFlush {
            due: tokio::time::Instant::now() + delay.unwrap_or_default(),
            sync,
            done,
        })
        .map_err(|_| io::Error::other("raft log delayed-flush worker stopped"))
    }

    /// The worker of [`Self::flush_appended`]'s delay: flushes in order, each when it is due.
    /// Holds no strong reference, so the store still closes when openraft drops it.
    fn spawn_delayer(&self) -> tokio::sync::mpsc::UnboundedSender<DelayedFlush> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DelayedFlush>();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                tokio::time::sleep_until(f.due).await;
                let Some(inner) = weak.upgrade() else { return };
                let res = inner.wal.lock().flush(f.sync, f.done);
                if let Err(e) = res {
                    tracing::error!(error = %e, "delayed raft log flush failed");
                }
            }
        });
        tx
    }

    fn read_range(&self, start: u64, end: u64, byte_budget: Option<u64>) -> io::Result<Vec<Entry>> {
        let wal = self.inner.wal.lock();
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for item in wal.read(start, end) {
            let (log_id, payload) = item?;
            bytes += super::payload_size(&payload.0);
            out.push(Entry {
                log_id: log_id.0,
                payload: payload.0,
            });
            if byte_budget.is_some_and(|b| bytes >= b) {
                break;
            }
        }
        Ok(out)
    }
}

fn range_to_start_end(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_to_start_end(&range);
        self.read_range(start, end, None)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.inner.wal.lock().log_state().vote().map(|v| v.0))
    }

    /// Streams in bounded pieces: re-applying a long range of multi-MB entries after a restart
    /// must not load the whole range into memory (the default impl would).
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl Stream<Item = Result<Entry, io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let (start, end) = range_to_start_end(&range);
        let store = self.clone();
        let budget = self.inner.append_batch_bytes;
        futures::stream::unfold(
            (store, start, end, VecDeque::<Entry>::new()),
            move |(store, mut next, end, mut buf)| async move {
                loop {
                    if let Some(e) = buf.pop_front() {
                        return Some((Ok(e), (store, next, end, buf)));
                    }
                    if next >= end {
                        return None;
                    }
                    match store.read_range(next, end, Some(budget)) {
                        Ok(v) => match v.last() {
                            None => return None,
                            Some(last) => {
                                next = last.log_id.index + 1;
                                buf.extend(v);
                            }
                        },
                        // Report once, then end the stream.
                        Err(e) => return Some((Err(e), (store, end, end, buf))),
                    }
                }
            },
        )
    }

    /// Bounded by bytes as well as by openraft's entry count, so multi-MB upsert batches do not
    /// add up to an AppendEntries larger than the gRPC message limit.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_range(start, end, Some(self.inner.append_batch_bytes))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let wal = self.inner.wal.lock();
        let st = wal.log_state();
        let last_purged_log_id = st.purged().map(|l| l.0);
        let last_log_id = st.last().map(|l| l.0).max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.write_synced(|wal| wal.save_vote(Stored(vote)).map(drop))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let Some(committed) = committed else {
            return Ok(());
        };
        let mut wal = self.inner.wal.lock();
        let st = wal.log_state();
        // The WAL rejects a commit that moves back or lies beyond its last entry (possible right
        // after a snapshot install). `committed` is only an optimisation for restart, so skip.
        if st.committed().is_some_and(|c| c.0 >= committed)
            || st.last().is_none_or(|l| l.0 < committed)
        {
            return Ok(());
        }
        wal.commit(Stored(committed))?;
        // No fsync of its own: the next synced append persists it.
        self.flush_appended(&mut wal, false, None)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.inner.wal.lock().log_state().committed().map(|l| l.0))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut wal = self.inner.wal.lock();
        wal.append(
            entries
                .into_iter()
                .map(|e| (Stored(e.log_id), Stored(e.payload))),
        )?;
        // The flush thread fsyncs, then calls back: openraft counts the entries as persisted
        // only from then on.
        self.flush_appended(&mut wal, true, Some(FlushDone::Raft(callback)))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep_next = last_log_id.map_or(0, |l| l.index + 1);
        self.write_synced(|wal| {
            let next = wal.log_state().last().map_or(0, |l| l.0.index + 1);
            if keep_next < next {
                wal.truncate(keep_next)?;
            }
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.write_synced(|wal| wal.purge(Stored(log_id)).map(drop))
            .await
    }
}

#[cfg(test)]
mod tests;
