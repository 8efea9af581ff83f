//! Benchmark data: `.npy` files (real embeddings) or a seeded Gaussian
//! mixture, plus exact ground truth by brute force when none is given.

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::npy::Matrix;
use kindex_node::engine::distance::{DistanceFn, Metric};

/// A seeded Gaussian mixture: fixed centres, samples drawn around them.
pub struct Mixture {
    dim: usize,
    centres: Vec<Vec<f32>>,
}

impl Mixture {
    pub fn new(dim: usize, clusters: usize, seed: u64) -> Mixture {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres = (0..clusters.max(1))
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect();
        Mixture { dim, centres }
    }

    /// `n` points; deterministic in `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> Matrix<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let noise = Normal::new(0.0f32, 0.35).expect("valid normal");
        let mut data = Vec::with_capacity(n * self.dim);
        for _ in 0..n {
            let c = &self.centres[rng.random_range(0..self.centres.len())];
            data.extend(c.iter().map(|x| x + noise.sample(&mut rng)));
        }
        Matrix {
            rows: n,
            cols: self.dim,
            data,
        }
    }
}

/// Exact top-k row numbers for every query.
pub fn ground_truth(
    base: &Matrix<f32>,
    queries: &Matrix<f32>,
    metric: Metric,
    k: usize,
) -> Matrix<i32> {
    let d = DistanceFn::new(metric);
    let prep = |m: &Matrix<f32>| -> Vec<f32> {
        let mut v = m.data.clone();
        for row in v.chunks_exact_mut(m.cols) {
            d.prepare(row);
        }
        v
    };
    let b = prep(base);
    let q = prep(queries);
    let k = k.min(base.rows);
    let rows: Vec<Vec<i32>> = q
        .par_chunks_exact(queries.cols)
        .map(|qv| {
            let mut all: Vec<(f32, i32)> = b
                .chunks_exact(base.cols)
                .enumerate()
                .map(|(i, bv)| (d.distance(qv, bv), i as i32))
                .collect();
            if k < all.len() {
                all.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
            }
            all.truncate(k);
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            all.into_iter().map(|x| x.1).collect()
        })
        .collect();
    Matrix {
        rows: queries.rows,
        cols: k,
        data: rows.into_iter().flatten().collect(),
    }
}
