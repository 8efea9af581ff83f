//! Top-k search: the graph for indexed slots, an exact scan of the queued
//! tail, and an exact scan when the graph gives fewer than k.

use super::*;

/// Per-query overrides of the runtime knobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchOpts {
    pub ef: Option<usize>,
    /// int8 only (ignored with `none`); 1..=`limits::MAX_RESCORE`, else the search
    /// is refused. Overrides the runtime knob `rescore`.
    pub rescore: Option<usize>,
    /// Points a retention policy expired are never returned (they are traversed).
    pub hide: Option<Arc<Expiry>>,
}

impl Engine {
    /// Top-k live points nearest to `query`, optionally filtered by payload.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: Option<usize>,
        filter: &Filter,
    ) -> Result<Vec<Hit>, EngineError> {
        let opts = SearchOpts {
            ef,
            ..SearchOpts::default()
        };
        self.search_with(query, k, opts, filter)
    }

    /// `search` with per-query knobs. With int8 codes, the graph is searched on
    /// the codes for `rescore × k` candidates, which are re-ranked with their
    /// f32 vectors; the distances returned are always exact.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        opts: SearchOpts,
        filter: &Filter,
    ) -> Result<Vec<Hit>, EngineError> {
        let ef = opts.ef;
        let inner = &*self.inner;
        limits::check_query(
            inner.vectors.dim(),
            inner.dist.metric(),
            query,
            k,
            ef,
            filter,
        )?;
        limits::check_rescore(opts.rescore)?;
        let mut q = query.to_vec();
        inner.dist.prepare(&mut q);
        let knobs = self.knobs();
        let ef = ef.unwrap_or(knobs.ef_search);
        let rescore = opts.rescore.unwrap_or(knobs.rescore).max(1);
        // With no deleted or purged slot at the start of the search, every
        // reachable slot is live: skip the per-candidate state load. (A
        // delete racing with this search may or may not be seen either way.)
        let all_live = inner.tombstoned.load(Ordering::Acquire) == 0
            && inner.purged.load(Ordering::Acquire) == 0;
        let hide = opts.hide.as_deref().filter(|h| !h.is_empty());
        let accept = |slot: u32| {
            (all_live || inner.state.first(slot).load(Ordering::Relaxed) == LIVE)
                && (filter.is_empty() || filter.matches(inner.payloads.first(slot).get()))
                && hide.is_none_or(|h| {
                    let expired = h.expired(
                        inner.stamps.first(slot).load(Ordering::Relaxed),
                        inner.payloads.first(slot).get(),
                    );
                    if expired {
                        inner.hidden.fetch_add(1, Ordering::Relaxed);
                    }
                    !expired
                })
        };

        let len = inner.vectors.len();
        let watermark = inner.queue.watermark().min(len);
        let mut best: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
        let push = |best: &mut BinaryHeap<Scored>, s: Scored| {
            if best.len() < k {
                best.push(s);
            } else if best.peek().is_some_and(|w| s < *w) {
                best.pop();
                best.push(s);
            }
        };
        let scan = |best: &mut BinaryHeap<Scored>, slots: std::ops::Range<u32>| {
            for slot in slots {
                if accept(slot) {
                    let d = inner.dist.distance(&q, inner.vectors.get(slot));
                    push(best, Scored { dist: d, id: slot });
                }
            }
        };
        // Exact scan of the queued tail first; graph results dedupe against it.
        scan(&mut best, watermark as u32..len as u32);
        if watermark > 0 {
            let quant = inner.quant.read().clone();
            match quant.as_deref() {
                None => {
                    let sp = Exact {
                        vectors: &inner.vectors,
                        dist: &inner.dist,
                    };
                    for s in inner.graph.search(&sp, &q.as_slice(), k, ef, &accept) {
                        if (s.id as usize) < watermark {
                            push(&mut best, s);
                        }
                    }
                }
                Some(state) => {
                    let sp = QuantSpace::new(state, &inner.vectors, &inner.dist);
                    let qq = sp.query(&q);
                    let n = k.saturating_mul(rescore);
                    for s in inner.graph.search(&sp, &qq, n, ef.max(n), &accept) {
                        if (s.id as usize) < watermark {
                            let dist = inner.dist.distance(&q, inner.vectors.get(s.id));
                            push(&mut best, Scored { dist, id: s.id });
                        }
                    }
                }
            }
        }
        // Fewer than k while more points are live: the filter matches fewer
        // than k points, or the graph missed some (a node it cannot reach).
        // Only a scan can tell; it costs one filter test per slot and one
        // distance per match, and makes such answers exact.
        if best.len() < k && self.count() > best.len() as u64 && watermark > 0 {
            inner.exact_fallbacks.fetch_add(1, Ordering::Relaxed);
            best.clear();
            scan(&mut best, 0..len as u32);
        }
        Ok(best
            .into_sorted_vec()
            .into_iter()
            .filter_map(|s| {
                Some(Hit {
                    id: inner.slot_ids.first(s.id).get()?.to_string(),
                    distance: s.dist,
                    slot: s.id,
                })
            })
            .collect())
    }

    /// Exact top-k by brute force (tests and recall checks).
    pub fn search_exact(&self, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
        let inner = &*self.inner;
        let mut q = query.to_vec();
        inner.dist.prepare(&mut q);
        let mut all: Vec<Scored> = (0..inner.vectors.len() as u32)
            .filter(|&s| inner.state.first(s).load(Ordering::Relaxed) == LIVE)
            .filter(|&s| filter.matches(inner.payloads.first(s).get()) || filter.is_empty())
            .map(|s| Scored {
                dist: inner.dist.distance(&q, inner.vectors.get(s)),
                id: s,
            })
            .collect();
        all.sort_unstable();
        all.truncate(k);
        all.into_iter()
            .map(|s| Hit {
                id: inner
                    .slot_ids
                    .first(s.id)
                    .get()
                    .map(|x| x.to_string())
                    .unwrap_or_default(),
                distance: s.dist,
                slot: s.id,
            })
            .collect()
    }
}
