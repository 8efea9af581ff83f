#![allow(dead_code, clippy::unwrap_used)]
//! Shared helpers for engine tests: seeded clustered data and recall.

use kindex_node::config::StructuralConfig;
use kindex_node::engine::distance::Metric;
use kindex_node::engine::filter::Filter;
use kindex_node::engine::{Engine, EngineKnobs, PointInput};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

pub fn structural(dim: u32, metric: Metric) -> StructuralConfig {
    StructuralConfig {
        dimension: dim,
        metric,
        m: 16,
        ef_construction: 100,
        shards: 1,
        quantization: Default::default(),
    }
}

pub fn knobs() -> EngineKnobs {
    EngineKnobs {
        ef_search: 64,
        threads: 2,
        batch_size: 256,
        queue_capacity: 1_000_000,
        rescore: 3,
    }
}

/// Gaussian mixture: `n` points around `n / 50` centres.
pub fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..(n / 50).max(1))
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    let noise = Normal::new(0.0f32, 0.25).unwrap();
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..centres.len())];
            c.iter().map(|x| x + noise.sample(&mut rng)).collect()
        })
        .collect()
}

pub fn points(vs: &[Vec<f32>]) -> Vec<PointInput> {
    vs.iter()
        .enumerate()
        .map(|(i, v)| PointInput {
            id: format!("p{i}"),
            vector: v.clone(),
            payload: None,
        })
        .collect()
}

pub fn load(engine: &Engine, pts: &[PointInput]) {
    for chunk in pts.chunks(1000) {
        engine.upsert(chunk).unwrap();
    }
}

/// Mean recall@k of `engine.search` against the exact answer.
pub fn recall(engine: &Engine, queries: &[Vec<f32>], k: usize, ef: usize, filter: &Filter) -> f64 {
    let mut hit = 0usize;
    let mut total = 0usize;
    for q in queries {
        let exact: Vec<String> = engine
            .search_exact(q, k, filter)
            .into_iter()
            .map(|h| h.id)
            .collect();
        let got: Vec<String> = engine
            .search(q, k, Some(ef), filter)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        total += exact.len();
        hit += exact.iter().filter(|id| got.contains(id)).count();
    }
    if total == 0 {
        1.0
    } else {
        hit as f64 / total as f64
    }
}
