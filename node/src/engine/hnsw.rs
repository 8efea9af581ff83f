//! Hierarchical navigable small-world graph over slots of a `VectorArena`.
//!
//! Link lists are arrays of atomics: readers never lock, writers lock one node
//! at a time. A reader may see a list half-way through an update; every id it
//! sees is still a valid published slot, which is all a greedy search needs.

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::arena::{Chunked, VectorArena};
use super::distance::DistanceFn;
use super::scored::{Near, Scored};
use super::visited::Visited;

const NO_ENTRY: u64 = u64::MAX;
/// Levels above 15 are vanishingly rare (p = m^-16); capping keeps the byte
/// per node sufficient.
const MAX_LEVEL: u8 = 15;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HnswParams {
    pub m: usize,
    pub ef_construction: usize,
}

impl HnswParams {
    pub fn m0(&self) -> usize {
        self.m * 2
    }
}

pub struct Hnsw {
    params: HnswParams,
    level_mult: f64,
    /// Level-0 lists: [count, ids; m0].
    links0: Chunked<AtomicU32>,
    levels: Chunked<AtomicU8>,
    /// Upper levels 1..=level, each [count, ids; m].
    upper: Chunked<OnceLock<Box<[AtomicU32]>>>,
    locks: Chunked<Mutex<()>>,
    /// (slot << 8 | level) of the entry point, or NO_ENTRY.
    entry: AtomicU64,
    entry_lock: Mutex<()>,
}

/// What the graph measures distances in: f32 vectors (`Exact`) or int8 codes
/// (`quant::QuantSpace`). Generic, not dynamic, so the f32 path compiles to
/// what it was before the trait existed.
pub trait Space {
    /// A query prepared for `dist` (for f32, the vector itself).
    type Query<'q>
    where
        Self: 'q;
    /// Published slots (bound for the visited set).
    fn slots(&self) -> usize;
    /// Prepares a stored-form (already normalised) vector as a query.
    fn query<'q>(&'q self, v: &'q [f32]) -> Self::Query<'q>;
    /// The stored vector of `slot` as a query (inserts, link selection).
    fn slot_query(&self, slot: u32) -> Self::Query<'_>;
    fn dist(&self, q: &Self::Query<'_>, slot: u32) -> f32;
    fn prefetch(&self, slot: u32);
}

/// Exact distances on the f32 vectors.
pub struct Exact<'a> {
    pub vectors: &'a VectorArena,
    pub dist: &'a DistanceFn,
}

impl Space for Exact<'_> {
    type Query<'q>
        = &'q [f32]
    where
        Self: 'q;

    #[inline(always)]
    fn slots(&self) -> usize {
        self.vectors.len()
    }

    #[inline(always)]
    fn query<'q>(&'q self, v: &'q [f32]) -> &'q [f32] {
        v
    }

    #[inline(always)]
    fn slot_query(&self, slot: u32) -> &[f32] {
        self.vectors.get(slot)
    }

    #[inline(always)]
    fn dist(&self, q: &&[f32], slot: u32) -> f32 {
        self.dist.distance(q, self.vectors.get(slot))
    }

    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        self.vectors.prefetch(slot);
    }
}

/// Which results a search may return (tombstones, payload filters).
pub trait Accept {
    fn accept(&self, id: u32) -> bool;
}

impl<F: Fn(u32) -> bool> Accept for F {
    #[inline]
    fn accept(&self, id: u32) -> bool {
        self(id)
    }
}

impl Hnsw {
    pub fn new(params: HnswParams) -> Self {
        Hnsw {
            params,
            level_mult: 1.0 / (params.m.max(2) as f64).ln(),
            links0: Chunked::new(1 + params.m0()),
            levels: Chunked::new(1),
            upper: Chunked::new(1),
            locks: Chunked::new(1),
            entry: AtomicU64::new(NO_ENTRY),
            entry_lock: Mutex::new(()),
        }
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    pub fn entry_point(&self) -> Option<(u32, u8)> {
        let e = self.entry.load(Ordering::Acquire);
        (e != NO_ENTRY).then_some(((e >> 8) as u32, (e & 0xff) as u8))
    }

    pub fn set_entry_point(&self, e: Option<(u32, u8)>) {
        let v = e.map_or(NO_ENTRY, |(id, l)| ((id as u64) << 8) | l as u64);
        self.entry.store(v, Ordering::Release);
    }

    pub fn level(&self, id: u32) -> u8 {
        self.levels.first(id).load(Ordering::Acquire)
    }

    /// Deterministic level for a slot, so rebuilds are reproducible.
    pub fn random_level(&self, id: u32) -> u8 {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&id.to_le_bytes(), 0x6b69_6e64);
        // Uniform in (0, 1]: never zero, so ln is finite.
        let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_mult) as u64).min(MAX_LEVEL as u64) as u8
    }

    /// The link list of `id` at `level`: [count, ids...].
    #[inline]
    pub fn list(&self, id: u32, level: u8) -> &[AtomicU32] {
        if level == 0 {
            self.links0.slot(id)
        } else {
            let stride = 1 + self.params.m;
            let all = self.upper.first(id).get().map(|b| &b[..]).unwrap_or(&[]);
            let off = (level as usize - 1) * stride;
            all.get(off..off + stride).unwrap_or(&[])
        }
    }

    /// Copies the current neighbours of `id` at `level` into `out`.
    #[inline]
    pub fn neighbours(&self, id: u32, level: u8, out: &mut Vec<u32>) {
        out.clear();
        let list = self.list(id, level);
        if list.is_empty() {
            return;
        }
        let n = (list[0].load(Ordering::Acquire) as usize).min(list.len() - 1);
        out.extend(list[1..=n].iter().map(|a| a.load(Ordering::Relaxed)));
    }

    fn write_list(list: &[AtomicU32], ids: &[u32]) {
        let n = ids.len().min(list.len() - 1);
        for (slot, id) in list[1..=n].iter().zip(ids) {
            slot.store(*id, Ordering::Relaxed);
        }
        list[0].store(n as u32, Ordering::Release);
    }

    /// Sets a node's level and allocates its upper lists (before linking).
    pub fn init_node(&self, id: u32, level: u8) {
        self.levels.first(id).store(level, Ordering::Release);
        if level > 0 {
            let stride = 1 + self.params.m;
            let _ = self.upper.first(id).set(
                (0..level as usize * stride)
                    .map(|_| AtomicU32::new(0))
                    .collect(),
            );
        }
    }

    /// Replaces a node's list wholesale (used by snapshot load and compaction).
    pub fn set_list(&self, id: u32, level: u8, ids: &[u32]) {
        let list = self.list(id, level);
        if !list.is_empty() {
            let _g = self.locks.first(id).lock();
            Self::write_list(list, ids);
        }
    }

    /// Inserts slot `q` (already published in `sp`) into the graph.
    pub fn insert<S: Space>(&self, sp: &S, q: u32) {
        let level = self.random_level(q);
        self.init_node(q, level);
        let qv = sp.slot_query(q);

        // The first node becomes the entry point.
        let entry = {
            let _g = self.entry_lock.lock();
            match self.entry_point() {
                None => {
                    self.set_entry_point(Some((q, level)));
                    return;
                }
                Some(e) => e,
            }
        };
        let (mut ep, top) = entry;
        with_scratch(|s| {
            let mut ep_dist = sp.dist(&qv, ep);
            for l in (level.saturating_add(1)..=top).rev() {
                (ep, ep_dist) = self.greedy(sp, &qv, ep, ep_dist, l, &mut s.nbs);
            }
            s.eps.clear();
            s.eps.push(Scored {
                dist: ep_dist,
                id: ep,
            });
            for l in (0..=level.min(top)).rev() {
                s.visited.prepare(sp.slots());
                self.layer(sp, &qv, self.params.ef_construction, l, s, &|_| true);
                // A concurrent insert may already have linked q; never self-link.
                s.found.retain(|x| x.id != q);
                s.found.sort_unstable_by(Scored::link_order);
                let max = if l == 0 {
                    self.params.m0()
                } else {
                    self.params.m
                };
                self.select_into(sp, &s.found, self.params.m, &mut s.kept);
                s.chosen.clear();
                s.chosen.extend(s.kept.iter().map(|k| k.id));
                self.write_own_list(sp, q, l, max, &s.chosen, &mut s.link);
                for i in 0..s.chosen.len() {
                    let nb = s.chosen[i];
                    self.add_link(sp, nb, q, l, max, &mut s.link);
                }
                std::mem::swap(&mut s.eps, &mut s.found);
            }
        });

        if level > top {
            let _g = self.entry_lock.lock();
            if self.entry_point().is_none_or(|(_, t)| level > t) {
                self.set_entry_point(Some((q, level)));
            }
        }
    }

    /// Writes a new node's own list at `level`. A concurrent insert that
    /// reached `q` from an upper level may already have linked itself here;
    /// overwriting would drop that back-link (and with it, for a node whose
    /// only in-link it was, reachability), so such links are merged in.
    fn write_own_list<S: Space>(
        &self,
        sp: &S,
        q: u32,
        level: u8,
        max: usize,
        chosen: &[u32],
        buf: &mut LinkScratch,
    ) {
        let list = self.list(q, level);
        let _g = self.locks.first(q).lock();
        let n = (list[0].load(Ordering::Acquire) as usize).min(list.len() - 1);
        buf.ids.clear();
        buf.ids.extend_from_slice(chosen);
        for a in &list[1..=n] {
            let id = a.load(Ordering::Relaxed);
            if !buf.ids.contains(&id) {
                buf.ids.push(id);
            }
        }
        if buf.ids.len() > max {
            self.shrink(sp, q, max, buf);
        }
        Self::write_list(list, &buf.ids);
    }

    /// Shrinks the candidate links in `buf.ids` of `base` to at most `max`
    /// with the heuristic, closest first (ties newest first).
    fn shrink<S: Space>(&self, sp: &S, base: u32, max: usize, buf: &mut LinkScratch) {
        let bv = sp.slot_query(base);
        buf.cands.clear();
        buf.cands.extend(buf.ids.iter().map(|&id| Scored {
            dist: sp.dist(&bv, id),
            id,
        }));
        buf.cands.sort_unstable_by(Scored::link_order);
        self.select_into(sp, &buf.cands, max, &mut buf.kept);
        buf.ids.clear();
        buf.ids.extend(buf.kept.iter().map(|k| k.id));
    }

    /// Adds `new` to `node`'s list at `level`, shrinking it with the heuristic
    /// when full.
    fn add_link<S: Space>(
        &self,
        sp: &S,
        node: u32,
        new: u32,
        level: u8,
        max: usize,
        buf: &mut LinkScratch,
    ) {
        let list = self.list(node, level);
        if list.is_empty() {
            return;
        }
        let _g = self.locks.first(node).lock();
        let n = (list[0].load(Ordering::Acquire) as usize).min(list.len() - 1);
        let current = &list[1..=n];
        if current.iter().any(|a| a.load(Ordering::Relaxed) == new) {
            return;
        }
        if n < max {
            list[1 + n].store(new, Ordering::Relaxed);
            list[0].store(n as u32 + 1, Ordering::Release);
            return;
        }
        buf.ids.clear();
        buf.ids
            .extend(current.iter().map(|a| a.load(Ordering::Relaxed)));
        buf.ids.push(new);
        self.shrink(sp, node, max, buf);
        Self::write_list(list, &buf.ids);
    }

    /// Neighbour selection heuristic: drop a candidate only if a neighbour
    /// already kept is strictly closer to it than the base is (spreads links
    /// around). Ties are kept, as in hnswlib: with `<=` an exact duplicate of a
    /// kept neighbour, and everything equidistant from both, was dropped, so a
    /// point rewritten over its tombstoned copies could end with no in-link.
    /// `cands` must be sorted by `Scored::link_order` from the base.
    pub fn select<S: Space>(&self, sp: &S, cands: &[Scored], max: usize) -> Vec<u32> {
        let mut kept = Vec::with_capacity(max);
        self.select_into(sp, cands, max, &mut kept);
        kept.into_iter().map(|s| s.id).collect()
    }

    /// `select` into a reused buffer.
    fn select_into<S: Space>(&self, sp: &S, cands: &[Scored], max: usize, kept: &mut Vec<Scored>) {
        kept.clear();
        for c in cands {
            if kept.len() >= max {
                break;
            }
            // The first candidate is always kept; preparing its query (an
            // allocation for int8) would be wasted.
            if kept.is_empty() {
                kept.push(*c);
                continue;
            }
            let cv = sp.slot_query(c.id);
            if kept.iter().all(|k| sp.dist(&cv, k.id) >= c.dist) {
                kept.push(*c);
            }
        }
    }

    fn greedy<S: Space>(
        &self,
        sp: &S,
        qv: &S::Query<'_>,
        mut ep: u32,
        mut ep_dist: f32,
        level: u8,
        scratch: &mut Vec<u32>,
    ) -> (u32, f32) {
        loop {
            let mut moved = false;
            self.neighbours(ep, level, scratch);
            for &nb in scratch.iter() {
                let d = sp.dist(qv, nb);
                if d < ep_dist {
                    (ep, ep_dist) = (nb, d);
                    moved = true;
                }
            }
            if !moved {
                return (ep, ep_dist);
            }
        }
    }

    /// Beam search on one level. Results (ascending) only hold accepted nodes;
    /// rejected nodes are still traversed, so a filter never cuts the graph.
    #[allow(clippy::too_many_arguments)]
    pub fn search_layer<S: Space>(
        &self,
        sp: &S,
        qv: &S::Query<'_>,
        eps: &[Scored],
        ef: usize,
        level: u8,
        vis: &mut Visited,
        accept: &dyn Accept,
    ) -> Vec<Scored> {
        let mut s = Scratch::new();
        std::mem::swap(&mut s.visited, vis);
        s.eps.extend_from_slice(eps);
        self.layer(sp, qv, ef, level, &mut s, accept);
        std::mem::swap(&mut s.visited, vis);
        s.found
    }

    /// `search_layer` on reused buffers: starts from `s.eps`, leaves the
    /// results (ascending) in `s.found`. `s.visited` must be prepared.
    #[inline]
    fn layer<S: Space, A: Accept + ?Sized>(
        &self,
        sp: &S,
        qv: &S::Query<'_>,
        ef: usize,
        level: u8,
        s: &mut Scratch,
        accept: &A,
    ) {
        let Scratch {
            visited: vis,
            candidates,
            results,
            nbs,
            found,
            eps,
            ..
        } = s;
        candidates.clear();
        results.clear();
        for e in eps.iter() {
            vis.insert(e.id);
            candidates.push(Near(std::cmp::Reverse(*e)));
            if accept.accept(e.id) {
                results.push(*e);
            }
        }
        while let Some(Near(std::cmp::Reverse(c))) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|w| c.dist > w.dist) {
                break;
            }
            // The next candidate's list is likely read next: start loading it.
            if let Some(Near(std::cmp::Reverse(next))) = candidates.peek() {
                self.prefetch_list(next.id, level);
            }
            self.neighbours(c.id, level, nbs);
            for &nb in nbs.iter() {
                vis.prefetch(nb);
            }
            // Only unvisited neighbours cost a distance: mark them first, then
            // keep PREFETCH_AHEAD vectors in flight while computing.
            nbs.retain(|&nb| vis.insert(nb));
            for &nb in nbs.iter().take(PREFETCH_AHEAD) {
                sp.prefetch(nb);
            }
            for j in 0..nbs.len() {
                if let Some(&ahead) = nbs.get(j + PREFETCH_AHEAD) {
                    sp.prefetch(ahead);
                }
                let nb = nbs[j];
                let d = sp.dist(qv, nb);
                let worst = results.peek().map_or(f32::INFINITY, |w| w.dist);
                if results.len() < ef || d < worst {
                    let s = Scored { dist: d, id: nb };
                    candidates.push(Near(std::cmp::Reverse(s)));
                    if accept.accept(nb) {
                        results.push(s);
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        found.clear();
        found.extend(results.drain());
        found.sort_unstable();
    }

    #[inline(always)]
    fn prefetch_list(&self, id: u32, level: u8) {
        if level == 0 {
            self.links0.prefetch(id);
        }
    }

    /// k nearest accepted nodes reachable in the graph, ascending.
    pub fn search<S: Space, A: Accept + ?Sized>(
        &self,
        sp: &S,
        qv: &S::Query<'_>,
        k: usize,
        ef: usize,
        accept: &A,
    ) -> Vec<Scored> {
        let Some((mut ep, top)) = self.entry_point() else {
            return Vec::new();
        };
        with_scratch(|s| {
            let mut ep_dist = sp.dist(qv, ep);
            for l in (1..=top).rev() {
                (ep, ep_dist) = self.greedy(sp, qv, ep, ep_dist, l, &mut s.nbs);
            }
            s.eps.clear();
            s.eps.push(Scored {
                dist: ep_dist,
                id: ep,
            });
            s.visited.prepare(sp.slots());
            self.layer(sp, qv, ef.max(k), 0, s, accept);
            s.found.iter().take(k).copied().collect()
        })
    }
}

/// Vectors kept in flight ahead of the distance loop.
const PREFETCH_AHEAD: usize = 3;

/// Buffers for shrinking a full link list.
#[derive(Default)]
struct LinkScratch {
    cands: Vec<Scored>,
    kept: Vec<Scored>,
    ids: Vec<u32>,
}

/// Per-thread buffers for searches and inserts, so neither allocates in the
/// steady state.
pub struct Scratch {
    visited: Visited,
    candidates: BinaryHeap<Near>,
    results: BinaryHeap<Scored>,
    nbs: Vec<u32>,
    eps: Vec<Scored>,
    found: Vec<Scored>,
    kept: Vec<Scored>,
    chosen: Vec<u32>,
    link: LinkScratch,
}

impl Scratch {
    const fn new() -> Scratch {
        Scratch {
            visited: Visited::new(),
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            nbs: Vec::new(),
            eps: Vec::new(),
            found: Vec::new(),
            kept: Vec::new(),
            chosen: Vec::new(),
            link: LinkScratch {
                cands: Vec::new(),
                kept: Vec::new(),
                ids: Vec::new(),
            },
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// Runs `f` with this thread's scratch buffers (fresh ones if re-entered).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::new()),
    })
}
