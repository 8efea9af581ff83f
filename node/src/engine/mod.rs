//! The search core of one shard: vectors, ids, payloads, tombstones, the HNSW
//! graph and the indexing queue that feeds it.
//!
//! Writes are cheap (append + enqueue); background workers link queued slots
//! into the graph; searches combine the graph with an exact scan of the queued
//! tail, so an applied write is searchable at once.

pub mod arena;
pub mod compact;
pub mod distance;
pub mod expiry;
pub mod filter;
pub mod hnsw;
pub mod hugebuf;
pub mod kernels;
pub mod limits;
pub mod mapped;
pub mod quant;
pub mod queue;
mod restore;
pub mod scored;
mod search;
pub mod visited;

use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::config::{RuntimeConfig, StructuralConfig};
pub use arena::VectorStorage;
use arena::{ArenaError, Chunked, VectorArena};
use distance::DistanceFn;
pub use expiry::{Expiry, ExpiryRule};
use filter::{Filter, Payload};
use hnsw::{Exact, Hnsw, HnswParams, Space};
pub use limits::{InputError, PointInput};
use quant::{QuantSpace, QuantState};
use queue::{IndexQueue, QueueStats};
pub(crate) use restore::IdIndex;
pub use restore::Restore;
use scored::Scored;
pub use search::SearchOpts;

/// Slot states.
pub const LIVE: u8 = 0;
/// Deleted or overwritten; still linked in the graph (traversed, never returned).
pub const DELETED: u8 = 1;
/// Deleted and unlinked by compaction (or never indexed): unreachable.
pub const PURGED: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// The shard holds the most slots it can: every replica refuses the same write.
    #[error("vector store is full ({} slots per shard)", arena::MAX_SLOTS)]
    Full,
    /// This replica cannot store vectors (`vectorsOnDisk` and a full or failing volume); unlike
    /// `Full`, other replicas may succeed.
    #[error("{0}")]
    Storage(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl From<ArenaError> for EngineError {
    fn from(e: ArenaError) -> Self {
        match e {
            ArenaError::Full => EngineError::Full,
            e @ ArenaError::Storage { .. } => EngineError::Storage(e.to_string()),
        }
    }
}

/// Raft position of the last applied entry, recorded in snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLog {
    pub term: u64,
    pub node_id: u64,
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub distance: f32,
    pub slot: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload: Option<Payload>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineStats {
    pub slots: usize,
    pub live: u64,
    pub tombstoned: u64,
    pub purged: u64,
    pub indexed: usize,
    pub queued: usize,
    pub queue_capacity: usize,
    pub indexing_lag_ms: u64,
    pub batches: u64,
    pub last_batch_ms: u64,
    pub last_batch_size: u64,
    /// Searches answered by an exact scan (see `Engine::search`).
    pub exact_fallbacks: u64,
    /// Points reads did not return because a retention policy expired them.
    pub hidden: u64,
    pub checksum: u64,
}

/// Knobs the engine reads while running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineKnobs {
    pub ef_search: usize,
    pub threads: usize,
    pub batch_size: usize,
    pub queue_capacity: usize,
    /// int8 only: the graph returns `rescore × k` candidates, re-ranked exactly.
    pub rescore: usize,
}

impl From<&RuntimeConfig> for EngineKnobs {
    fn from(r: &RuntimeConfig) -> Self {
        EngineKnobs {
            ef_search: r.ef_search as usize,
            threads: r.threads(),
            batch_size: r.indexing_batch_size as usize,
            queue_capacity: r.queue_capacity as usize,
            rescore: r.rescore as usize,
        }
    }
}

pub struct Inner {
    pub(crate) structural: StructuralConfig,
    pub(crate) dist: DistanceFn,
    pub(crate) vectors: VectorArena,
    pub(crate) graph: Hnsw,
    /// int8 ranges and codes once trained (see `quant`); always None with
    /// `quantization: none`. Swapped whole under `gate` (write), so a search
    /// holding one Arc sees codes of one set of ranges.
    pub(crate) quant: RwLock<Option<Arc<QuantState>>>,
    /// int8 ranges as decided at apply time (replicated state, see `quant::Plan`); `quant`
    /// catches up with it on an indexing worker. Changed only under `writer`.
    pub(crate) quant_plan: Mutex<quant::Plan>,
    pub(crate) slot_ids: Chunked<OnceLock<Box<str>>>,
    pub(crate) payloads: Chunked<OnceLock<Payload>>,
    /// Ingest stamp of each slot (ms since the Unix epoch, the proposing leader's clock as the
    /// state machine applied it; 0: written before stamps existed). Set before the slot is
    /// published and never changed: a re-upsert makes a new slot.
    pub(crate) stamps: Chunked<AtomicU64>,
    pub(crate) state: Chunked<AtomicU8>,
    pub(crate) ids: RwLock<HashMap<Box<str>, u32>>,
    pub(crate) live: AtomicU64,
    pub(crate) tombstoned: AtomicU64,
    pub(crate) purged: AtomicU64,
    pub(crate) checksum: AtomicU64,
    pub(crate) queue: IndexQueue,
    /// Indexing workers hold it shared per batch; snapshots and compaction
    /// hold it exclusively to see a still graph.
    pub(crate) gate: RwLock<()>,
    /// Serialises writers (apply path, snapshot load).
    pub(crate) writer: Mutex<()>,
    pub(crate) applied: Mutex<Option<AppliedLog>>,
    knobs: RwLock<EngineKnobs>,
    batches: AtomicU64,
    last_batch_ms: AtomicU64,
    last_batch_size: AtomicU64,
    /// Searches answered by an exact scan because the graph gave fewer than k.
    exact_fallbacks: AtomicU64,
    /// Points reads did not return because a retention policy expired them.
    pub(crate) hidden: AtomicU64,
    target_workers: AtomicUsize,
}

pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    workers: Mutex<Vec<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("structural", &self.inner.structural)
            .finish()
    }
}

/// Order-independent content hash of one point (id, stored vector, payload):
/// xxh3-64 of `id | 0xff | vector bytes | payload JSON`. Hashed in one shot
/// from a per-thread buffer (same value as streaming those bytes, faster for
/// these short inputs).
fn point_hash(id: &str, vector: &[f32], payload: Option<&Payload>) -> u64 {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let hash = |buf: &mut Vec<u8>| {
        buf.clear();
        buf.extend_from_slice(id.as_bytes());
        buf.push(0xff);
        buf.extend_from_slice(bytemuck::cast_slice(vector));
        if let Some(p) = payload {
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, p);
        }
        xxhash_rust::xxh3::xxh3_64(buf)
    };
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => hash(&mut b),
        Err(_) => hash(&mut Vec::new()),
    })
}

impl Engine {
    /// An empty engine with its vectors in memory; indexing workers start at once.
    pub fn new(structural: StructuralConfig, knobs: EngineKnobs) -> Engine {
        Engine::with_storage(structural, knobs, VectorStorage::Heap)
    }

    /// An empty engine keeping its vectors in `storage`.
    pub fn with_storage(
        structural: StructuralConfig,
        knobs: EngineKnobs,
        storage: VectorStorage,
    ) -> Engine {
        let dist = DistanceFn::new(structural.metric);
        let params = HnswParams {
            m: structural.m as usize,
            ef_construction: structural.ef_construction as usize,
        };
        let inner = Arc::new(Inner {
            dist,
            vectors: VectorArena::with_storage(structural.dimension as usize, storage),
            graph: Hnsw::new(params),
            quant: RwLock::new(None),
            quant_plan: Mutex::new(quant::Plan::default()),
            slot_ids: Chunked::new(1),
            payloads: Chunked::new(1),
            stamps: Chunked::new(1),
            state: Chunked::new(1),
            ids: RwLock::new(HashMap::new()),
            live: AtomicU64::new(0),
            tombstoned: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            checksum: AtomicU64::new(0),
            queue: IndexQueue::new(knobs.queue_capacity),
            gate: RwLock::new(()),
            writer: Mutex::new(()),
            applied: Mutex::new(None),
            knobs: RwLock::new(knobs),
            batches: AtomicU64::new(0),
            last_batch_ms: AtomicU64::new(0),
            last_batch_size: AtomicU64::new(0),
            exact_fallbacks: AtomicU64::new(0),
            hidden: AtomicU64::new(0),
            target_workers: AtomicUsize::new(0),
            structural,
        });
        let engine = Engine {
            inner,
            workers: Mutex::new(Vec::new()),
        };
        engine.resize_workers(knobs.threads);
        engine
    }

    pub fn structural(&self) -> &StructuralConfig {
        &self.inner.structural
    }

    pub fn dimension(&self) -> usize {
        self.inner.vectors.dim()
    }

    /// Where this engine keeps its vectors.
    pub fn storage(&self) -> &VectorStorage {
        self.inner.vectors.storage()
    }

    pub fn knobs(&self) -> EngineKnobs {
        *self.inner.knobs.read()
    }

    /// Applies new runtime knobs without a restart.
    pub fn set_knobs(&self, knobs: EngineKnobs) {
        *self.inner.knobs.write() = knobs;
        self.inner.queue.set_capacity(knobs.queue_capacity);
        self.resize_workers(knobs.threads);
    }

    fn resize_workers(&self, n: usize) {
        let n = n.max(1);
        self.inner.target_workers.store(n, Ordering::SeqCst);
        let mut workers = self.workers.lock();
        if workers.len() < n {
            workers.resize_with(n, || None);
        }
        for (i, slot) in workers.iter_mut().enumerate().take(n) {
            if slot.as_ref().is_none_or(|h| h.is_finished()) {
                let inner = self.inner.clone();
                *slot = std::thread::Builder::new()
                    .name(format!("kindex-indexer-{i}"))
                    .spawn(move || worker_loop(inner, i))
                    .ok();
            }
        }
    }

    pub fn applied(&self) -> Option<AppliedLog> {
        *self.inner.applied.lock()
    }

    pub fn set_applied(&self, log: AppliedLog) {
        *self.inner.applied.lock() = Some(log);
    }

    /// Validates a whole batch, waits for queue space, then stores it. Either
    /// every point is stored or (on invalid input) none is. The points get no ingest stamp.
    pub fn upsert(&self, points: &[PointInput]) -> Result<u64, EngineError> {
        self.upsert_stamped(points, 0)
    }

    /// [`Self::upsert`] with an ingest stamp for every point (ms since the Unix epoch).
    pub fn upsert_stamped(&self, points: &[PointInput], stamp_ms: u64) -> Result<u64, EngineError> {
        let inner = &*self.inner;
        let dim = inner.vectors.dim();
        limits::check_points(dim, points)?;
        inner.queue.wait_for_space(points.len());

        let _w = inner.writer.lock();
        let start = inner.vectors.len();
        // Storage first: once ids and payloads of the new slots are set, `extend` must not fail.
        inner.vectors.reserve(points.len())?;
        let mut flat = Vec::with_capacity(points.len() * dim);
        for p in points {
            let at = flat.len();
            flat.extend_from_slice(&p.vector);
            inner.dist.prepare(&mut flat[at..]);
        }
        // Ids and payloads first: a slot is visible to searches only once
        // `extend` publishes it, and by then everything about it is set.
        let mut added: u64 = 0;
        for (k, p) in points.iter().enumerate() {
            let slot = (start + k) as u32;
            let _ = inner.slot_ids.first(slot).set(p.id.as_str().into());
            if let Some(pl) = &p.payload {
                let _ = inner.payloads.first(slot).set(pl.clone());
            }
            inner.stamps.first(slot).store(stamp_ms, Ordering::Relaxed);
            let v = &flat[k * dim..(k + 1) * dim];
            added = added.wrapping_add(point_hash(&p.id, v, p.payload.as_ref()));
        }
        inner.vectors.extend(&flat)?;
        // Then point ids at the new slots and retire what they replace.
        {
            let mut ids = inner.ids.write();
            for (k, p) in points.iter().enumerate() {
                if let Some(old) = ids.insert(p.id.as_str().into(), (start + k) as u32) {
                    self.retire(old);
                }
            }
        }
        inner.live.fetch_add(points.len() as u64, Ordering::Relaxed);
        inner.checksum.fetch_add(added, Ordering::Relaxed);
        // Before the queue hears of the slots, so the worker that links them installs the
        // ranges first.
        inner.plan_quant(points.len() as u64);
        inner.queue.published(inner.vectors.len());
        Ok(points.len() as u64)
    }

    /// Marks a live slot deleted and removes it from the counters.
    fn retire(&self, slot: u32) {
        let inner = &*self.inner;
        if inner
            .state
            .first(slot)
            .compare_exchange(LIVE, DELETED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let p = self.stored(slot);
            inner.checksum.fetch_sub(
                point_hash(&p.id, &p.vector, p.payload.as_ref()),
                Ordering::Relaxed,
            );
            inner.live.fetch_sub(1, Ordering::Relaxed);
            inner.tombstoned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Deletes ids (unknown ids are ignored); returns how many existed.
    pub fn delete(&self, ids: &[String]) -> Result<u64, EngineError> {
        limits::check_batch_len(ids.len())?;
        ids.iter()
            .enumerate()
            .try_for_each(|(i, id)| limits::check_id(i, id))?;
        let _w = self.inner.writer.lock();
        let mut map = self.inner.ids.write();
        let mut n = 0;
        for id in ids {
            if let Some(slot) = map.remove(id.as_str()) {
                self.retire(slot);
                n += 1;
            }
        }
        drop(map);
        self.inner.plan_quant(n);
        Ok(n)
    }

    fn stored(&self, slot: u32) -> StoredPoint {
        let inner = &*self.inner;
        StoredPoint {
            id: inner
                .slot_ids
                .first(slot)
                .get()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            vector: inner.vectors.get(slot).to_vec(),
            payload: inner.payloads.first(slot).get().cloned(),
        }
    }

    pub fn get(&self, id: &str) -> Option<StoredPoint> {
        let slot = *self.inner.ids.read().get(id)?;
        Some(self.stored(slot))
    }

    /// The slots of every live point (unordered).
    pub fn live_slots(&self) -> Vec<u32> {
        self.inner.ids.read().values().copied().collect()
    }

    /// The ingest stamp of a slot (0: unstamped).
    pub fn stamp(&self, slot: u32) -> u64 {
        self.inner.stamps.first(slot).load(Ordering::Relaxed)
    }

    /// The live slot of `id`.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.inner.ids.read().get(id).copied()
    }

    /// `get`, unless the point is expired under `expiry`.
    pub fn get_unexpired(&self, id: &str, expiry: &Expiry) -> Option<StoredPoint> {
        let slot = self.slot_of(id)?;
        if !expiry.is_empty() && expiry.expired(self.stamp(slot), self.payload(slot)) {
            self.inner.hidden.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.stored(slot))
    }

    /// Live points expired under `rule` (ids with their ingest stamps), at most `limit`, and
    /// whether there were more. For the retention sweep.
    pub fn expired_points(
        &self,
        rule: &ExpiryRule,
        unstamped_ms: u64,
        limit: usize,
    ) -> (Vec<(String, u64)>, bool) {
        let inner = &*self.inner;
        let ids = inner.ids.read();
        let mut out = Vec::new();
        for (id, &slot) in ids.iter() {
            if rule.expired(self.stamp(slot), unstamped_ms, self.payload(slot)) {
                if out.len() == limit {
                    return (out, true);
                }
                out.push((id.to_string(), self.stamp(slot)));
            }
        }
        (out, false)
    }

    /// The `n` live points with the oldest ingest stamps (ties by id), oldest first, each with
    /// its stamp (unstamped ones at `unstamped_ms`). For a retention count limit.
    pub fn oldest_points(&self, n: usize, unstamped_ms: u64) -> Vec<(String, u64)> {
        let ids = self.inner.ids.read();
        let mut all: Vec<(u64, &str)> = ids
            .iter()
            .map(|(id, &slot)| {
                let s = self.stamp(slot);
                (if s == 0 { unstamped_ms } else { s }, &**id)
            })
            .collect();
        let n = n.min(all.len());
        if n == 0 {
            return Vec::new();
        }
        all.select_nth_unstable(n - 1);
        all.truncate(n);
        all.sort_unstable();
        all.into_iter().map(|(s, id)| (id.to_string(), s)).collect()
    }

    pub fn payload(&self, slot: u32) -> Option<&Payload> {
        self.inner.payloads.first(slot).get()
    }

    pub fn vector(&self, slot: u32) -> &[f32] {
        self.inner.vectors.get(slot)
    }

    pub fn count(&self) -> u64 {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Waits until every applied vector is in the graph.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.inner.queue.drain(timeout)
    }

    pub fn queue_stats(&self) -> QueueStats {
        self.inner.queue.stats()
    }

    pub fn stats(&self) -> EngineStats {
        let inner = &*self.inner;
        let q = inner.queue.stats();
        EngineStats {
            slots: inner.vectors.len(),
            live: inner.live.load(Ordering::Relaxed),
            tombstoned: inner.tombstoned.load(Ordering::Relaxed),
            purged: inner.purged.load(Ordering::Relaxed),
            indexed: q.watermark,
            queued: q.depth,
            queue_capacity: q.capacity,
            indexing_lag_ms: q.lag.as_millis() as u64,
            batches: inner.batches.load(Ordering::Relaxed),
            last_batch_ms: inner.last_batch_ms.load(Ordering::Relaxed),
            last_batch_size: inner.last_batch_size.load(Ordering::Relaxed),
            exact_fallbacks: inner.exact_fallbacks.load(Ordering::Relaxed),
            hidden: inner.hidden.load(Ordering::Relaxed),
            checksum: inner.checksum.load(Ordering::Relaxed),
        }
    }

    /// Order-independent checksum of live content; equal on replicas with the
    /// same applied prefix.
    pub fn content_checksum(&self) -> u64 {
        self.inner.checksum.load(Ordering::Relaxed)
    }

    /// Approximate anonymous memory per stored vector (vectors unless they are on disk, codes,
    /// graph, ids).
    pub fn bytes_per_vector(&self) -> usize {
        let p = self.inner.graph.params();
        let codes = quant::CodeKind::of(self.inner.structural.quantization).map_or(0, |kind| {
            quant::Codes::new(kind, self.dimension()).bytes_per_slot()
        });
        let vectors = match self.storage() {
            VectorStorage::Heap => self.dimension() * 4,
            VectorStorage::Mapped(_) => 0,
        };
        vectors + codes + (1 + p.m0()) * 4 + 8 + 24 + 24 + 2 + 8
    }

    /// The int8 ranges decided so far and when they are due again (replicated state; the
    /// installed codes may lag a moment behind it).
    pub fn quant_plan(&self) -> quant::Plan {
        self.inner.quant_plan.lock().clone()
    }

    /// Whether ranges are trained (always false with `quantization: none`).
    pub fn quant_trained(&self) -> bool {
        self.inner.quant.read().is_some()
    }

    pub fn shutdown(&self) {
        self.inner.queue.shutdown();
        for h in self.workers.lock().iter_mut().filter_map(Option::take) {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    /// int8 and binary, at apply (the caller holds `writer`): counts `changed` points and, when
    /// [`quant::Plan::due`], trains new ranges on every live point. Only decides: an indexing
    /// worker installs them ([`Self::install_planned_quant`]).
    fn plan_quant(&self, changed: u64) {
        if self.structural.quantization.is_none() {
            return;
        }
        let mut plan = self.quant_plan.lock();
        // Counted from the first training on (before it, only the live count matters).
        if plan.ranges.is_some() {
            plan.changes = plan.changes.saturating_add(changed);
        }
        let live = self.live.load(Ordering::Relaxed);
        if plan.due(live) {
            *plan = self.train_plan(live);
        }
    }

    /// Ranges trained on the live points (the caller holds `writer`, so they stay put).
    pub(crate) fn train_plan(&self, live: u64) -> quant::Plan {
        let len = self.vectors.len() as u32;
        quant::Plan::train(
            self.vectors.dim(),
            live,
            (0..len)
                .filter(|&s| self.state.first(s).load(Ordering::Acquire) == LIVE)
                .map(|s| self.vectors.get(s)),
        )
    }

    /// Codes every published slot with the planned ranges if they are not the installed
    /// ones, under `gate` (write): no batch is half linked on other codes (or on f32
    /// distances) while the new codes appear; batches after it code their slots before
    /// linking them.
    pub(crate) fn install_planned_quant(&self) {
        let Some(planned) = self.quant_plan.lock().ranges.clone() else {
            return;
        };
        let installed = |q: &Option<Arc<QuantState>>| {
            q.as_ref().is_some_and(|q| Arc::ptr_eq(&q.ranges, &planned))
        };
        if installed(&self.quant.read()) {
            return;
        }
        let _pause = self.gate.write();
        if !installed(&self.quant.read()) {
            self.code_with(planned);
        }
    }

    /// Codes every published slot with `ranges` and publishes them. The caller holds `gate`
    /// (write).
    pub(crate) fn code_with(&self, ranges: Arc<quant::Ranges>) {
        let Some(kind) = quant::CodeKind::of(self.structural.quantization) else {
            return;
        };
        let state = QuantState::with_ranges(&self.vectors, self.vectors.len(), ranges, kind);
        *self.quant.write() = Some(Arc::new(state));
    }
}

fn worker_loop(inner: Arc<Inner>, me: usize) {
    loop {
        let target = inner.target_workers.load(Ordering::SeqCst);
        if me >= target {
            return;
        }
        let batch = inner.knobs.read().batch_size;
        let Some(range) = inner
            .queue
            .claim_timeout(batch, target, Duration::from_millis(200))
        else {
            if inner.queue.is_shutdown() {
                return;
            }
            // Ranges planned by a delete (no batch follows) are installed while idle.
            inner.install_planned_quant();
            continue;
        };
        let started = Instant::now();
        inner.install_planned_quant();
        {
            let _g = inner.gate.read();
            // Ranges change only under `gate` (write): one state for the batch.
            let quant = inner.quant.read().clone();
            let exact = Exact {
                vectors: &inner.vectors,
                dist: &inner.dist,
            };
            let coded = quant
                .as_deref()
                .map(|q| QuantSpace::new(q, &inner.vectors, &inner.dist));
            for slot in range.clone() {
                // A stopping engine does not finish its batch (up to `batch_size` inserts,
                // seconds in a debug build): the range stays unfinished, so the watermark
                // does not pass it and a search still scans it exactly.
                if inner.queue.is_shutdown() {
                    return;
                }
                let slot = slot as u32;
                if inner.state.first(slot).load(Ordering::Acquire) == LIVE {
                    match &coded {
                        // Codes before links: a slot reachable in the graph
                        // always has its codes (a no-op if training coded it).
                        Some(sp) => {
                            sp.state
                                .codes
                                .write(slot, &sp.state.ranges, inner.vectors.get(slot));
                            if sp.state.links_on_codes() {
                                inner.graph.insert(sp, slot);
                            } else {
                                inner.graph.insert(&exact, slot);
                            }
                        }
                        None => inner.graph.insert(&exact, slot),
                    }
                } else if inner
                    .state
                    .first(slot)
                    .compare_exchange(DELETED, PURGED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    // Deleted before it was indexed: never link it.
                    // purged up before tombstoned down (Release): a search
                    // never sees both at zero while a dead slot exists.
                    inner.purged.fetch_add(1, Ordering::Relaxed);
                    inner.tombstoned.fetch_sub(1, Ordering::Release);
                }
            }
        }
        inner.batches.fetch_add(1, Ordering::Relaxed);
        inner
            .last_batch_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        inner
            .last_batch_size
            .store(range.len() as u64, Ordering::Relaxed);
        inner.queue.complete(range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-shot hash must equal the streaming hash the checksums (and
    /// snapshot manifests) were defined with.
    #[test]
    fn point_hash_matches_the_streaming_definition() {
        let payload = serde_json::json!({"a": 1, "b": "x"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (id, v, p) in [
            ("p1", vec![1.0f32, -2.5, 3.25], None),
            ("", vec![], Some(&payload)),
            ("long-id-éü", vec![0.5; 384], Some(&payload)),
        ] {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(id.as_bytes());
            h.update(&[0xff]);
            h.update(bytemuck::cast_slice(&v));
            if let Some(p) = p {
                h.update(serde_json::to_string(p).unwrap_or_default().as_bytes());
            }
            assert_eq!(point_hash(id, &v, p), h.digest(), "{id}");
        }
    }
}
