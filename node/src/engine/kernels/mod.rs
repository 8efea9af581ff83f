//! Integer kernels for int8 quantized vectors: `u8` codes against `i8` query
//! weights (dot) and `u8` codes against `u8` codes (squared L2); and for binary codes,
//! bits against a query's 4-bit weights held as bit planes ([`BitDot`]).
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

/// Binary codes against a query's bit planes: `bits` holds `8·W` bytes (W 64-bit words,
/// little-endian, zero past the last dimension), `planes` `4·W` words (plane j of word k
/// at `j·W + k`: bit j of each dimension's 4-bit weight). Returns
/// (Σ over set bits of the weight, number of set bits).
pub type BitDot = fn(&[u8], &[u64]) -> (u32, u32);

/// Planes per query word (4-bit weights).
pub const PLANES: usize = 4;

#[inline(always)]
fn word(bits: &[u8], k: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bits[8 * k..8 * k + 8]);
    u64::from_le_bytes(w)
}

/// The body of every [`BitDot`]: `count_ones` compiles to `popcnt` where the caller is
/// built with that feature.
#[inline(always)]
fn bit_dot_body(bits: &[u8], planes: &[u64]) -> (u32, u32) {
    let words = (bits.len() / 8).min(planes.len() / PLANES);
    let (mut weighted, mut ones) = (0u32, 0u32);
    for k in 0..words {
        let x = word(bits, k);
        ones += x.count_ones();
        for j in 0..PLANES {
            weighted += (x & planes[j * words + k]).count_ones() << j;
        }
    }
    (weighted, ones)
}

pub fn bit_dot_scalar(bits: &[u8], planes: &[u64]) -> (u32, u32) {
    bit_dot_body(bits, planes)
}

pub fn select_bit_dot() -> BitDot {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("popcnt") {
            return |a, b| {
                // SAFETY: the CPU feature was checked above.
                unsafe { x86::bit_dot_popcnt(a, b) }
            };
        }
    }
    bit_dot_scalar
}

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

    fn bit_case() -> impl Strategy<Value = (Vec<u8>, Vec<u64>)> {
        (0usize..12).prop_flat_map(|words| {
            (
                prop::collection::vec(any::<u8>(), 8 * words),
                prop::collection::vec(any::<u64>(), PLANES * words),
            )
        })
    }

    /// The reference: per dimension, its bit times its 4-bit weight.
    fn bit_dot_reference(bits: &[u8], planes: &[u64]) -> (u32, u32) {
        let words = bits.len() / 8;
        let (mut weighted, mut ones) = (0u32, 0u32);
        for d in 0..64 * words {
            if bits[d / 8] >> (d % 8) & 1 == 1 {
                ones += 1;
                for j in 0..PLANES {
                    weighted += ((planes[j * words + d / 64] >> (d % 64) & 1) as u32) << j;
                }
            }
        }
        (weighted, ones)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The popcount kernel and the scalar one equal a bit-by-bit reference.
        #[test]
        fn bit_kernels_equal_the_reference((bits, planes) in bit_case()) {
            let want = bit_dot_reference(&bits, &planes);
            prop_assert_eq!(bit_dot_scalar(&bits, &planes), want);
            prop_assert_eq!(select_bit_dot()(&bits, &planes), want);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("popcnt") {
                // SAFETY: popcnt was detected.
                prop_assert_eq!(unsafe { x86::bit_dot_popcnt(&bits, &planes) }, want);
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
