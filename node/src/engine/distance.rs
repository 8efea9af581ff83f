//! Distance kernels. Smaller is always closer, whatever the metric, so the
//! graph code never branches on the metric.
//!
//! Cosine vectors are normalised once at insert time, which turns cosine into a
//! dot product on the hot path. The AVX2+FMA kernels are chosen once at run
//! time (AVX-512F where available, else AVX2+FMA); the scalar fallback is used
//! on other CPUs, and every kernel the CPU can run is checked against it in
//! tests.

/// The metric is shared with the operator (kindex-common); re-exported here where the
/// kernels live.
pub use kindex_common::Metric;

type Kernel = fn(&[f32], &[f32]) -> f32;

/// A metric bound to its fastest kernel for this CPU.
#[derive(Clone, Copy)]
pub struct DistanceFn {
    metric: Metric,
    kernel: Kernel,
}

impl std::fmt::Debug for DistanceFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DistanceFn({})", self.metric)
    }
}

impl DistanceFn {
    pub fn new(metric: Metric) -> Self {
        let kernel: Kernel = match metric {
            Metric::L2 => select_l2(),
            Metric::Cosine | Metric::Dot => select_neg_dot(),
        };
        DistanceFn { metric, kernel }
    }

    pub fn scalar(metric: Metric) -> Self {
        let kernel: Kernel = match metric {
            Metric::L2 => l2_scalar,
            Metric::Cosine | Metric::Dot => neg_dot_scalar,
        };
        DistanceFn { metric, kernel }
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Distance between two stored (already prepared) vectors.
    #[inline(always)]
    pub fn distance(&self, a: &[f32], b: &[f32]) -> f32 {
        let d = (self.kernel)(a, b);
        // Cosine: 1 - cos keeps values in [0, 2] for users; ordering is unchanged.
        if self.metric == Metric::Cosine {
            1.0 + d
        } else {
            d
        }
    }

    /// Turns a user vector into its stored form (unit length for cosine).
    pub fn prepare(&self, v: &mut [f32]) {
        if self.metric == Metric::Cosine {
            normalize(v);
        }
    }
}

/// Scales `v` to unit length. The norm is computed in f64: in f32 it overflows for
/// components above ~1.8e19 (and underflows for tiny ones), which turned such vectors into
/// all zeros. A zero vector stays zero (the API refuses it for cosine).
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

pub fn l2_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

pub fn neg_dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    -a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

fn select_l2() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return |a, b| {
            // SAFETY: the CPU feature was checked just above.
            unsafe { x86::l2_avx512(a, b) }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return |a, b| {
            // SAFETY: the CPU features were checked just above.
            unsafe { x86::l2_avx2(a, b) }
        };
    }
    l2_scalar
}

fn select_neg_dot() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return |a, b| {
            // SAFETY: the CPU feature was checked just above.
            unsafe { -x86::dot_avx512(a, b) }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return |a, b| {
            // SAFETY: the CPU features were checked just above.
            unsafe { -x86::dot_avx2(a, b) }
        };
    }
    neg_dot_scalar
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): full loads stay below n by the loop bounds; the
        // tail load is masked to the n - i < 16 remaining lanes, and masked
        // lanes are never read (no fault past the end).
        unsafe {
            while i + 32 <= n {
                let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
                let d1 = _mm512_sub_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                );
                acc0 = _mm512_fmadd_ps(d0, d0, acc0);
                acc1 = _mm512_fmadd_ps(d1, d1, acc1);
                i += 32;
            }
            if i + 16 <= n {
                let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
                acc0 = _mm512_fmadd_ps(d0, d0, acc0);
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u16 << (n - i)) - 1;
                let d = _mm512_sub_ps(
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm512_maskz_loadu_ps(m, pb.add(i)),
                );
                acc1 = _mm512_fmadd_ps(d, d, acc1);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): as in `l2_avx512`.
        unsafe {
            while i + 32 <= n {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                    acc1,
                );
                i += 32;
            }
            if i + 16 <= n {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u16 << (n - i)) - 1;
                acc1 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm512_maskz_loadu_ps(m, pb.add(i)),
                    acc1,
                );
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` and `b` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        let mut acc3 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + width <= n, checked by the loop bounds.
        unsafe {
            while i + 32 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    acc1,
                );
                acc2 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 16)),
                    _mm256_loadu_ps(pb.add(i + 16)),
                    acc2,
                );
                acc3 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 24)),
                    _mm256_loadu_ps(pb.add(i + 24)),
                    acc3,
                );
                i += 32;
            }
            while i + 8 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                i += 8;
            }
            let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
            let mut sum = hsum(acc);
            while i < n {
                sum += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            sum
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` and `b` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + width <= n, checked by the loop bounds.
        unsafe {
            while i + 16 <= n {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                let d1 = _mm256_sub_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                );
                acc0 = _mm256_fmadd_ps(d0, d0, acc0);
                acc1 = _mm256_fmadd_ps(d1, d1, acc1);
                i += 16;
            }
            while i + 8 <= n {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                acc0 = _mm256_fmadd_ps(d0, d0, acc0);
                i += 8;
            }
            let mut sum = hsum(_mm256_add_ps(acc0, acc1));
            while i < n {
                let d = *pa.add(i) - *pb.add(i);
                sum += d * d;
                i += 1;
            }
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn simd_matches_scalar_for_every_length() {
        let mut rng = StdRng::seed_from_u64(7);
        for metric in [Metric::L2, Metric::Dot, Metric::Cosine] {
            let fast = DistanceFn::new(metric);
            let slow = DistanceFn::scalar(metric);
            for len in 0..200 {
                let a: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
                let b: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
                let (x, y) = (fast.distance(&a, &b), slow.distance(&a, &b));
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{metric} len {len}: {x} vs {y}"
                );
            }
        }
    }

    /// Every x86 kernel this CPU can run (not only the one `new` picks)
    /// agrees with the scalar reference, for every length up to 200.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_x86_kernel_matches_scalar() {
        let mut rng = StdRng::seed_from_u64(11);
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let avx512 = std::is_x86_feature_detected!("avx512f");
        for len in 0..200 {
            let a: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (l2, dot) = (l2_scalar(&a, &b), -neg_dot_scalar(&a, &b));
            let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + y.abs());
            // SAFETY: each kernel runs only if its CPU features were detected.
            unsafe {
                if avx2 {
                    assert!(close(x86::l2_avx2(&a, &b), l2), "avx2 l2 len {len}");
                    assert!(close(x86::dot_avx2(&a, &b), dot), "avx2 dot len {len}");
                }
                if avx512 {
                    assert!(close(x86::l2_avx512(&a, &b), l2), "avx512 l2 len {len}");
                    assert!(close(x86::dot_avx512(&a, &b), dot), "avx512 dot len {len}");
                }
            }
        }
    }

    #[test]
    fn cosine_is_one_minus_cos() {
        let d = DistanceFn::new(Metric::Cosine);
        let mut a = vec![3.0, 0.0];
        let mut b = vec![0.0, 5.0];
        d.prepare(&mut a);
        d.prepare(&mut b);
        assert!((d.distance(&a, &b) - 1.0).abs() < 1e-6);
        assert!(d.distance(&a, &a).abs() < 1e-6);
    }

    #[test]
    fn metric_parse_round_trip() {
        for m in [Metric::L2, Metric::Dot, Metric::Cosine] {
            assert_eq!(Metric::parse(m.as_str()), Some(m));
        }
        assert_eq!(Metric::parse("hamming"), None);
    }

    /// The f32 norm of [3e38, 3e38] is infinite, which used to store an all-zero vector.
    #[test]
    fn normalising_extreme_vectors_gives_unit_length() {
        for v in [
            vec![3e38f32, 3e38],
            vec![1e-30, -1e-30],
            vec![f32::MAX, 0.0],
        ] {
            let mut u = v.clone();
            normalize(&mut u);
            let n: f32 = u.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5, "{v:?} -> {u:?}");
        }
    }
}
