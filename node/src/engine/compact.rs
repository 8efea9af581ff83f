//! Background compaction: relinks the neighbourhoods of deleted nodes so the
//! graph stays navigable, then unlinks the deleted nodes (PURGED), so searches
//! stop paying for tombstones.
//!
//! Slots themselves are not reused (ids map to new slots on every write); a
//! purged slot costs its vector's memory until the shard is rebuilt.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::hnsw::Exact;
use super::scored::Scored;
use super::{DELETED, Engine, LIVE, PURGED};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub purged: u64,
    pub relinked_lists: u64,
    pub millis: u64,
}

impl Engine {
    /// Tombstones still linked in the graph.
    pub fn pending_tombstones(&self) -> u64 {
        self.inner.tombstoned.load(Ordering::Relaxed)
    }

    /// Repairs every list that points at a deleted node and purges those nodes.
    /// Pauses indexing (not searches) while it runs.
    pub fn compact(&self) -> CompactStats {
        let started = Instant::now();
        let inner = &*self.inner;
        let _pause = inner.gate.write();
        let watermark = inner.queue.watermark();
        let graph = &inner.graph;
        let state = |s: u32| inner.state.first(s).load(Ordering::Acquire);
        let deleted: Vec<u32> = (0..watermark as u32)
            .filter(|&s| state(s) == DELETED)
            .collect();
        if deleted.is_empty() {
            return CompactStats::default();
        }
        let is_dead = |s: u32| state(s) != LIVE;
        // Repairs are chosen on exact distances in every mode: compaction is
        // rare and the repaired lists are what the codes are searched over.
        let exact = Exact {
            vectors: &inner.vectors,
            dist: &inner.dist,
        };
        let mut stats = CompactStats::default();
        let mut nbs = Vec::new();
        let mut second = Vec::new();
        for node in 0..watermark as u32 {
            if is_dead(node) {
                continue;
            }
            let nv = inner.vectors.get(node);
            for level in 0..=graph.level(node) {
                graph.neighbours(node, level, &mut nbs);
                if !nbs.iter().any(|&n| is_dead(n)) {
                    continue;
                }
                // Candidates: live neighbours plus the live neighbours of the
                // dead ones (the 2-hop repair of FreshDiskANN-style deletes).
                let mut cands: Vec<u32> = nbs.iter().copied().filter(|&n| !is_dead(n)).collect();
                for &d in nbs.iter().filter(|&&n| is_dead(n)) {
                    graph.neighbours(d, level, &mut second);
                    cands.extend(second.iter().copied().filter(|&n| n != node && !is_dead(n)));
                }
                cands.sort_unstable();
                cands.dedup();
                let mut scored: Vec<Scored> = cands
                    .into_iter()
                    .map(|id| Scored {
                        dist: inner.dist.distance(nv, inner.vectors.get(id)),
                        id,
                    })
                    .collect();
                scored.sort_unstable_by(Scored::link_order);
                let max = if level == 0 {
                    graph.params().m0()
                } else {
                    graph.params().m
                };
                let chosen = graph.select(&exact, &scored, max);
                graph.set_list(node, level, &chosen);
                stats.relinked_lists += 1;
            }
        }
        // A dead entry point is replaced by the highest live node.
        if let Some((ep, _)) = graph.entry_point()
            && is_dead(ep)
        {
            let best = (0..watermark as u32)
                .filter(|&s| !is_dead(s))
                .max_by_key(|&s| graph.level(s))
                .map(|s| (s, graph.level(s)));
            graph.set_entry_point(best);
        }
        for &d in &deleted {
            for level in 0..=graph.level(d) {
                graph.set_list(d, level, &[]);
            }
            inner.state.first(d).store(PURGED, Ordering::Release);
        }
        // int8 ranges stay: they are replicated state, retrained at apply after a turnover
        // of the data (`quant::Plan`), not at this replica's own compaction time.
        let n = deleted.len() as u64;
        // purged up before tombstoned down (Release): a search never sees
        // both at zero while a dead slot exists (see `Engine::search`).
        inner.purged.fetch_add(n, Ordering::Relaxed);
        inner.tombstoned.fetch_sub(n, Ordering::Release);
        stats.purged = n;
        stats.millis = started.elapsed().as_millis() as u64;
        stats
    }
}
