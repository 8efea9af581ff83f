//! x86-64 implementations of the integer kernels (see `mod.rs`).

use std::arch::x86_64::*;

pub fn has_vnni() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

pub fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Sum of 16 i32 lanes as u32 with wrap-around: the true L2 fits in u32 (see
/// `mod.rs`) even where an i32 sum would overflow.
#[inline]
#[target_feature(enable = "avx512f")]
fn sum_u32_512(v: __m512i) -> u32 {
    let mut lanes = [0u32; 16];
    // SAFETY: `lanes` is 64 writable bytes; storeu has no alignment requirement.
    unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), v) };
    lanes.iter().fold(0u32, |s, &x| s.wrapping_add(x))
}

#[inline]
#[target_feature(enable = "avx2")]
fn sum_i32_256(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// `super::BitDot` with the `popcnt` instruction.
///
/// # Safety
/// The CPU must support POPCNT.
#[target_feature(enable = "popcnt")]
pub unsafe fn bit_dot_popcnt(bits: &[u8], planes: &[u64]) -> (u32, u32) {
    super::bit_dot_body(bits, planes)
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_u8_i8_vnni(a: &[u8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_si512();
    let mut acc1 = _mm512_setzero_si512();
    let mut i = 0;
    // SAFETY (all loads): full loads stay below n by the loop bounds; the tail
    // load is masked to the n - i < 64 remaining bytes, and masked-off bytes are
    // never read (no fault past the end).
    unsafe {
        while i + 128 <= n {
            acc0 = _mm512_dpbusd_epi32(
                acc0,
                _mm512_loadu_si512(pa.add(i).cast()),
                _mm512_loadu_si512(pb.add(i).cast()),
            );
            acc1 = _mm512_dpbusd_epi32(
                acc1,
                _mm512_loadu_si512(pa.add(i + 64).cast()),
                _mm512_loadu_si512(pb.add(i + 64).cast()),
            );
            i += 128;
        }
        if i + 64 <= n {
            acc0 = _mm512_dpbusd_epi32(
                acc0,
                _mm512_loadu_si512(pa.add(i).cast()),
                _mm512_loadu_si512(pb.add(i).cast()),
            );
            i += 64;
        }
        if i < n {
            let m: __mmask64 = (1u64 << (n - i)) - 1;
            acc1 = _mm512_dpbusd_epi32(
                acc1,
                _mm512_maskz_loadu_epi8(m, pa.add(i).cast()),
                _mm512_maskz_loadu_epi8(m, pb.add(i)),
            );
        }
    }
    _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1))
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_u8_i8_avx2(a: &[u8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let mut i = 0;
    // `vpmaddubsw` would saturate (255·127·2 > i16::MAX): widen to i16 and
    // use `vpmaddwd`, which is exact.
    // SAFETY (all loads): i + width <= n by the loop bounds.
    unsafe {
        while i + 32 <= n {
            let a0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(pa.add(i).cast()));
            let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i).cast()));
            let a1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(pa.add(i + 16).cast()));
            let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i + 16).cast()));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, b1));
            i += 32;
        }
        if i + 16 <= n {
            let a0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(pa.add(i).cast()));
            let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i).cast()));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
            i += 16;
        }
    }
    let mut sum = sum_i32_256(_mm256_add_epi32(acc0, acc1));
    sum += super::dot_u8_i8_scalar(&a[i..n], &b[i..n]);
    sum
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn l2_u8_vnni(a: &[u8], b: &[u8]) -> u32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_si512();
    let mut acc1 = _mm512_setzero_si512();
    let mut i = 0;
    // Differences in i16 (|d| ≤ 255), squared and pair-summed into i32 lanes
    // by `vpdpwssd`.
    // SAFETY (all loads): i + width <= n by the loop bounds.
    unsafe {
        while i + 64 <= n {
            let d0 = _mm512_sub_epi16(
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(pa.add(i).cast())),
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(pb.add(i).cast())),
            );
            let d1 = _mm512_sub_epi16(
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(pa.add(i + 32).cast())),
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(pb.add(i + 32).cast())),
            );
            acc0 = _mm512_dpwssd_epi32(acc0, d0, d0);
            acc1 = _mm512_dpwssd_epi32(acc1, d1, d1);
            i += 64;
        }
        if i + 32 <= n {
            let d0 = _mm512_sub_epi16(
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(pa.add(i).cast())),
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(pb.add(i).cast())),
            );
            acc0 = _mm512_dpwssd_epi32(acc0, d0, d0);
            i += 32;
        }
    }
    let sum = sum_u32_512(_mm512_add_epi32(acc0, acc1));
    sum.wrapping_add(super::l2_u8_scalar(&a[i..n], &b[i..n]))
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn l2_u8_avx2(a: &[u8], b: &[u8]) -> u32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let mut i = 0;
    // SAFETY (all loads): i + width <= n by the loop bounds.
    unsafe {
        while i + 32 <= n {
            let d0 = _mm256_sub_epi16(
                _mm256_cvtepu8_epi16(_mm_loadu_si128(pa.add(i).cast())),
                _mm256_cvtepu8_epi16(_mm_loadu_si128(pb.add(i).cast())),
            );
            let d1 = _mm256_sub_epi16(
                _mm256_cvtepu8_epi16(_mm_loadu_si128(pa.add(i + 16).cast())),
                _mm256_cvtepu8_epi16(_mm_loadu_si128(pb.add(i + 16).cast())),
            );
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(d0, d0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(d1, d1));
            i += 32;
        }
    }
    // Lanes hold at most n/8·130 050 each; their sum fits u32 (see `mod.rs`),
    // so add them as u32 with wrap-around.
    let mut lanes = [0u32; 8];
    // SAFETY: `lanes` is 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), _mm256_add_epi32(acc0, acc1)) };
    let sum = lanes.iter().fold(0u32, |s, &x| s.wrapping_add(x));
    sum.wrapping_add(super::l2_u8_scalar(&a[i..n], &b[i..n]))
}
