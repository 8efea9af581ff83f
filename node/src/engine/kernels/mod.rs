//! Integer kernels for int8 quantized vectors: `u8` codes against `i8` query
//! weights (dot) and `u8` codes against `u8` codes (squared L2).
//!
//! One kernel per CPU level, chosen once at run time: AVX-512 VNNI
//! (`vpdpbusd` / `vpdpwssd`), AVX2 (widen to i16, `vpmaddwd`), and a scalar
//! fallback. Every SIMD kernel is checked against the scalar one (tests below).
//!
//! Range: with d ≤ 65 536 (the structural maximum) a dot of u8 × i8 (|e| ≤ 127)
//! is at most 65 536·255·127 < 2^31, and an L2 of u8 codes at most
//! 65 536·255² < 2^32, so the i32 / u32 results never overflow.

#[cfg(target_arch = "x86_64")]
mod x86;

/// Σ a_i·b_i over the common length.
pub type DotU8I8 = fn(&[u8], &[i8]) -> i32;
/// Σ (a_i − b_i)² over the common length.
pub type L2U8 = fn(&[u8], &[u8]) -> u32;

pub fn dot_u8_i8_scalar(a: &[u8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

pub fn l2_u8_scalar(a: &[u8], b: &[u8]) -> u32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as i32 - y as i32;
            (d * d) as u32
        })
        .sum()
}

/// Which kernel family `select_*` picks on this CPU (for logs and benchmarks).
pub fn level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni() {
            return "avx512vnni";
        }
        if x86::has_avx2() {
            return "avx2";
        }
    }
    "scalar"
}

pub fn select_dot_u8_i8() -> DotU8I8 {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni() {
            return |a, b| {
                // SAFETY: the CPU features were checked by `has_vnni`.
                unsafe { x86::dot_u8_i8_vnni(a, b) }
            };
        }
        if x86::has_avx2() {
            return |a, b| {
                // SAFETY: the CPU feature was checked by `has_avx2`.
                unsafe { x86::dot_u8_i8_avx2(a, b) }
            };
        }
    }
    dot_u8_i8_scalar
}

pub fn select_l2_u8() -> L2U8 {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni() {
            return |a, b| {
                // SAFETY: the CPU features were checked by `has_vnni`.
                unsafe { x86::l2_u8_vnni(a, b) }
            };
        }
        if x86::has_avx2() {
            return |a, b| {
                // SAFETY: the CPU feature was checked by `has_avx2`.
                unsafe { x86::l2_u8_avx2(a, b) }
            };
        }
    }
    l2_u8_scalar
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> impl Strategy<Value = (Vec<u8>, Vec<i8>, Vec<u8>)> {
        // Lengths around every lane width (16, 32, 64, 128 bytes) and beyond.
        (0usize..600).prop_flat_map(|n| {
            (
                prop::collection::vec(any::<u8>(), n),
                prop::collection::vec(-127i8..=127, n),
                prop::collection::vec(any::<u8>(), n),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every kernel this CPU can run (not only the one `select_*` picks)
        /// equals the scalar reference exactly (integer arithmetic).
        #[test]
        fn simd_kernels_equal_scalar((a, w, b) in pair()) {
            let dot = dot_u8_i8_scalar(&a, &w);
            let l2 = l2_u8_scalar(&a, &b);
            prop_assert_eq!(select_dot_u8_i8()(&a, &w), dot);
            prop_assert_eq!(select_l2_u8()(&a, &b), l2);
            #[cfg(target_arch = "x86_64")]
            {
                if x86::has_avx2() {
                    // SAFETY: AVX2 was detected.
                    unsafe {
                        prop_assert_eq!(x86::dot_u8_i8_avx2(&a, &w), dot);
                        prop_assert_eq!(x86::l2_u8_avx2(&a, &b), l2);
                    }
                }
                if x86::has_vnni() {
                    // SAFETY: AVX-512 F/BW/VNNI were detected.
                    unsafe {
                        prop_assert_eq!(x86::dot_u8_i8_vnni(&a, &w), dot);
                        prop_assert_eq!(x86::l2_u8_vnni(&a, &b), l2);
                    }
                }
            }
        }
    }

    /// The extremes of the range documented above do not overflow.
    #[test]
    fn extremes_do_not_overflow() {
        let n = 65_536;
        let (a, w, z) = (vec![255u8; n], vec![127i8; n], vec![0u8; n]);
        let neg = vec![-127i8; n];
        assert_eq!(select_dot_u8_i8()(&a, &w), 255 * 127 * n as i32);
        assert_eq!(select_dot_u8_i8()(&a, &neg), -255 * 127 * n as i32);
        assert_eq!(select_l2_u8()(&a, &z), 255 * 255 * n as u32);
        assert_eq!(dot_u8_i8_scalar(&a, &w), 255 * 127 * n as i32);
        assert_eq!(l2_u8_scalar(&z, &a), 255 * 255 * n as u32);
    }
}
