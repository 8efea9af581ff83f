//! Rebuilding an engine from a decoded snapshot (`snapshot::load` decodes, this
//! module puts the parts back: vectors, ids, states, payloads, graph).

use super::*;

/// Decoded snapshot content for `Engine::restore`.
pub struct Restore<'a> {
    pub flat: Vec<f32>,
    pub ids: Vec<&'a str>,
    pub states: Vec<u8>,
    pub payloads: Vec<(u32, Payload)>,
    pub graph: crate::snapshot::GraphParts,
    pub applied: Option<AppliedLog>,
}

/// Slot ids indexed for a restore: the live id map and the state counts.
pub(crate) struct IdIndex {
    map: HashMap<Box<str>, u32>,
    live: u64,
    dead: u64,
    purged: u64,
}

impl Engine {
    /// Rebuilds an engine from decoded snapshot parts (see `snapshot::load`).
    pub fn restore(
        structural: StructuralConfig,
        knobs: EngineKnobs,
        r: Restore<'_>,
    ) -> Result<Engine, String> {
        let engine = Engine::new(structural, knobs);
        let inner = &*engine.inner;
        let dim = inner.vectors.dim();
        let len = r.ids.len();
        if r.flat.len() != len * dim
            || r.states.len() != len
            || r.graph.levels.len() != r.graph.indexed
        {
            return Err("snapshot parts disagree on the slot count".into());
        }
        inner.vectors.extend(&r.flat).map_err(|e| e.to_string())?;
        {
            let _w = inner.writer.lock();
            let _pause = inner.gate.write();
            let g = &inner.graph;
            let (m, m0) = (g.params().m, g.params().m0());
            let mut upper = r.graph.upper.chunks_exact(1 + m);
            for slot in 0..r.graph.indexed {
                let level = r.graph.levels[slot];
                let s = slot as u32;
                g.init_node(s, level);
                let l0 = &r.graph.level0[slot * (1 + m0)..(slot + 1) * (1 + m0)];
                g.set_list(s, 0, &l0[1..=l0[0] as usize]);
                for l in 1..=level {
                    let list = upper.next().ok_or("upper lists end early")?;
                    g.set_list(s, l, &list[1..=list[0] as usize]);
                }
            }
        }
        engine.restore_points(
            &r.ids,
            &r.states,
            r.payloads,
            r.graph.indexed,
            r.graph.entry,
            r.applied,
        )?;
        Ok(engine)
    }

    /// Second half of a restore, once the vectors (all `ids.len()` of them)
    /// and the graph lists of the first `indexed` slots are in place: ids,
    /// states, payloads, counters, content checksum, entry point and queue.
    pub(crate) fn restore_points(
        &self,
        ids: &[&str],
        states: &[u8],
        payloads: Vec<(u32, Payload)>,
        indexed: usize,
        entry: Option<u32>,
        applied: Option<AppliedLog>,
    ) -> Result<(), String> {
        let index = self.index_ids(ids, states)?;
        // Decoded parts carry no int8 ranges: they are trained on the restored points.
        self.finish_restore(index, ids, payloads, indexed, entry, applied, None)
    }

    /// Restore step that needs no vectors (snapshot loading runs it while
    /// the vectors stream in): sets slot ids and states, builds the id map.
    pub(crate) fn index_ids(&self, ids: &[&str], states: &[u8]) -> Result<IdIndex, String> {
        let inner = &*self.inner;
        if states.len() != ids.len() {
            return Err("snapshot parts disagree on the slot count".into());
        }
        let mut map = HashMap::with_capacity(ids.len());
        let (mut live, mut dead, mut purged) = (0u64, 0u64, 0u64);
        for (slot, (id, st)) in ids.iter().zip(states).enumerate() {
            let s = slot as u32;
            let _ = inner.slot_ids.first(s).set((*id).into());
            inner.state.first(s).store(*st, Ordering::Relaxed);
            match *st {
                LIVE => {
                    if map.insert(Box::<str>::from(*id), s).is_some() {
                        return Err(format!("id {id:?} is live in two slots"));
                    }
                    live += 1;
                }
                DELETED => dead += 1,
                _ => purged += 1,
            }
        }
        Ok(IdIndex {
            map,
            live,
            dead,
            purged,
        })
    }

    /// Last restore step: payloads, content checksum (on two threads),
    /// counters, entry point, applied log id, int8 ranges (`quant`: the snapshot's, if it
    /// has them) and the indexing queue.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_restore(
        &self,
        index: IdIndex,
        ids: &[&str],
        payloads: Vec<(u32, Payload)>,
        indexed: usize,
        entry: Option<u32>,
        applied: Option<AppliedLog>,
        quant: Option<quant::Plan>,
    ) -> Result<(), String> {
        let inner = &*self.inner;
        let len = ids.len();
        if inner.vectors.len() != len || indexed > len {
            return Err("snapshot parts disagree on the slot count".into());
        }
        let _w = inner.writer.lock();
        let _pause = inner.gate.write();
        for (slot, p) in payloads {
            let _ = inner.payloads.first(slot).set(p);
        }
        let sum = |range: std::ops::Range<usize>| {
            let mut checksum = 0u64;
            for slot in range {
                let s = slot as u32;
                if inner.state.first(s).load(Ordering::Relaxed) == LIVE {
                    checksum = checksum.wrapping_add(point_hash(
                        ids[slot],
                        inner.vectors.get(s),
                        inner.payloads.first(s).get(),
                    ));
                }
            }
            checksum
        };
        let checksum = std::thread::scope(|sc| {
            let half = sc.spawn(|| sum(len / 2..len));
            let first = sum(0..len / 2);
            half.join().map(|h| first.wrapping_add(h))
        })
        .map_err(|_| "content checksum thread panicked".to_string())?;
        *inner.ids.write() = index.map;
        inner.live.store(index.live, Ordering::Relaxed);
        inner.tombstoned.store(index.dead, Ordering::Relaxed);
        inner.purged.store(index.purged, Ordering::Relaxed);
        inner.checksum.store(checksum, Ordering::Relaxed);
        let g = &inner.graph;
        g.set_entry_point(entry.map(|e| (e, g.level(e))));
        *inner.applied.lock() = applied;
        // int8: the snapshot's ranges (the shard's, as of its log id), or for a snapshot
        // written before ranges were stored, ranges trained on its live points. Codes are
        // not stored: they are rebuilt from the f32 vectors, before the queue restarts, so
        // the tail is linked on codes like any later write.
        if !self.structural().quantization.is_none() {
            let plan = match quant {
                Some(plan) => plan,
                None if index.live >= quant::TRAIN_MIN as u64 => inner.train_plan(index.live),
                None => quant::Plan::default(),
            };
            if let Some(ranges) = plan.ranges.clone() {
                inner.code_with(ranges);
            }
            *inner.quant_plan.lock() = plan;
        } else if quant.is_some() {
            return Err("quantization ranges in a snapshot of a shard without quantization".into());
        }
        inner.queue.reset(indexed, len);
        Ok(())
    }
}
