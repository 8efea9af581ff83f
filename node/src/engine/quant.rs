//! int8 scalar quantization: per-dimension ranges trained from the data, one
//! `u8` code per component stored next to the f32 vectors, and the distance
//! of an f32 query to a coded vector.
//!
//! Encoding: `c_i = clamp(round((x_i − a_i) / s_i), 0, 255)`, so the decoded
//! vector is `x̂_i = a_i + s_i·c_i` (`a_i` = min, `s_i` = (max − min) / 255
//! of dimension i over the training sample; values outside clamp).
//!
//! Distance (asymmetric: the query is never decoded to codes of the data):
//!   q·x̂ = Σ q_i·a_i + Σ (q_i·s_i)·c_i.
//! Per query, `qa = Σ q_i a_i`, and the weights `w_i = q_i s_i` are themselves
//! quantized to i8 with one scale `t = max|w_i| / 127`, `e_i = round(w_i / t)`,
//! so `q·x̂ ≈ qa + t·Σ e_i c_i`: one u8 × i8 integer dot (VNNI `vpdpbusd`).
//! Per vector, `‖x̂‖²` is kept (4 bytes) for L2:
//!   ‖q − x̂‖² = ‖q‖² − 2 q·x̂ + ‖x̂‖².
//! Cosine vectors are unit length (normalised at insert), so cosine is
//! `1 − q·x̂`, as in `DistanceFn`. The error against the decoded vector is only
//! the query rounding: `|t·Σ e_i c_i − Σ w_i c_i| ≤ (t / 2)·Σ c_i`; against the
//! original x it adds `|Σ q_i (x̂_i − x_i)| ≤ Σ |q_i| s_i / 2` for in-range
//! values (both bounds are tested below).
//!
//! Per-dimension vs global ranges, measured on docs-minilm-30k (384-d, cosine;
//! brute-force ranking of all 30k base vectors on codes, the first 300 queries, test
//! `quant::compare_range_modes` in node/tests/quant.rs):
//!   per dimension: recall@10 0.9913 on codes alone, 1.0000 after rescoring 30;
//!   global:        recall@10 0.9887 on codes alone, 1.0000 after rescoring 30;
//! so ranges are per dimension (min/max; no outlier clipping yet).
//!
//! Ranges are replicated state (see [`Plan`]): decided while a log entry applies, from the
//! live points alone, so every replica of a shard codes with the same ranges after the same
//! entry and a snapshot carries them. Installing them (coding every slot) happens later on
//! an indexing worker.
//!
//! Binary codes (`quantization: binary`) use the same ranges: bit i is set when x_i lies in
//! the upper half of its range, and decodes to the middle of that half,
//! `x̂_i = a_i + s_i·(bit ? 191.25 : 63.75)`. Then
//!   q·x̂ = Σ q_i (a_i + 63.75 s_i) + 127.5 Σ_{bit i set} w_i   (w_i = q_i s_i),
//! and the query's weights are quantized to 4 bits, `u_i = round((w_i − w_min) / Δ)` with
//! `Δ = (w_max − w_min) / 15`, held as four bit planes, so the sum over set bits is
//! `w_min·popcount(b) + Δ·Σ_j 2^j·popcount(b & plane_j)`: five `popcnt` per 64 dimensions.
//! The error against the decoded vector is only that rounding, at most
//! `127.5·(Δ/2)·popcount(b)` (tested below). One bit per dimension makes a poor graph, so a
//! binary shard links its graph on f32 distances and searches it on the codes
//! ([`QuantState::links_on_codes`]).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use super::arena::{CHUNK_BITS, CHUNK_SLOTS, MAX_CHUNKS, VectorArena};
use super::distance::{DistanceFn, Metric};
use super::hnsw::Space;
use super::hugebuf::HugeBuf;
use super::kernels::{self, BitDot, DotU8I8, PLANES};
use kindex_common::Quantization;

/// Points needed before ranges are trained; the graph of the points indexed
/// before then is built on f32 distances.
pub const TRAIN_MIN: usize = 1_000;

/// How ranges are shared across dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeMode {
    /// One (min, max) per dimension.
    PerDimension,
    /// One (min, max) over all components.
    Global,
}

/// The mode the engine uses (see the numbers in the module comment).
pub const RANGE_MODE: RangeMode = RangeMode::PerDimension;

/// Trained ranges: offset `a_i` and step `s_i` per dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    offset: Vec<f32>,
    step: Vec<f32>,
    /// 1 / s_i, or 0 for a constant dimension (its code is always 0).
    inv: Vec<f32>,
}

impl Ranges {
    /// Min/max of each dimension (or of all components) over `sample`.
    /// With no sample, every range is [0, 0] (all codes 0).
    pub fn train<'a>(
        dim: usize,
        sample: impl IntoIterator<Item = &'a [f32]>,
        mode: RangeMode,
    ) -> Ranges {
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for v in sample {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(v) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        if mode == RangeMode::Global {
            let (l, h) = (
                lo.iter().copied().fold(f32::INFINITY, f32::min),
                hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            );
            lo.fill(l);
            hi.fill(h);
        }
        let mut r = Ranges {
            offset: Vec::with_capacity(dim),
            step: Vec::with_capacity(dim),
            inv: Vec::with_capacity(dim),
        };
        for (l, h) in lo.into_iter().zip(hi) {
            let (l, h) = if l <= h { (l, h) } else { (0.0, 0.0) };
            let step = (h - l) / 255.0;
            r.offset.push(l);
            r.step.push(step);
            r.inv.push(if step > 0.0 && step.is_finite() {
                1.0 / step
            } else {
                0.0
            });
        }
        r
    }

    /// Ranges from stored offsets and steps (a snapshot's `Quant` section). Refuses
    /// lengths that differ and values that are not finite or steps below zero.
    pub fn from_parts(offset: Vec<f32>, step: Vec<f32>) -> Result<Ranges, String> {
        if offset.len() != step.len() {
            return Err(format!("{} offsets but {} steps", offset.len(), step.len()));
        }
        if let Some(i) = (0..offset.len())
            .find(|&i| !offset[i].is_finite() || !step[i].is_finite() || step[i] < 0.0)
        {
            return Err(format!(
                "dimension {i}: offset {} step {} (finite, step >= 0 expected)",
                offset[i], step[i]
            ));
        }
        let inv = step
            .iter()
            // As `train` computes it, so stored ranges code exactly as trained ones.
            .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
            .collect();
        Ok(Ranges { offset, step, inv })
    }

    pub fn offset(&self) -> &[f32] {
        &self.offset
    }

    pub fn step(&self) -> &[f32] {
        &self.step
    }

    pub fn dim(&self) -> usize {
        self.offset.len()
    }

    /// Writes the codes of `v` into `out` and returns ‖x̂‖² of the decoded vector.
    pub fn encode(&self, v: &[f32], out: &mut [u8]) -> f32 {
        let mut norm = 0.0f32;
        for i in 0..out.len().min(v.len()) {
            let c = ((v[i] - self.offset[i]) * self.inv[i])
                .round()
                .clamp(0.0, 255.0);
            out[i] = c as u8;
            let x = self.offset[i] + self.step[i] * c;
            norm += x * x;
        }
        norm
    }

    /// Writes the binary codes of `v` into `out` (the whole of it: bits past the last
    /// dimension are 0) and returns ‖x̂‖² of the decoded vector (see the module comment).
    pub fn encode_bits(&self, v: &[f32], out: &mut [u8]) -> f32 {
        out.fill(0);
        let mut norm = 0.0f32;
        for i in 0..self.dim().min(v.len()).min(out.len() * 8) {
            let upper = (v[i] - self.offset[i]) * self.inv[i] >= BIT_SPLIT;
            if upper {
                out[i / 8] |= 1 << (i % 8);
            }
            let x = self.offset[i] + self.step[i] * if upper { BIT_HI } else { BIT_LO };
            norm += x * x;
        }
        norm
    }

    /// The vector decoded from binary codes (tests and diagnostics).
    pub fn decode_bits(&self, codes: &[u8]) -> Vec<f32> {
        (0..self.dim())
            .map(|i| {
                let upper = codes[i / 8] >> (i % 8) & 1 == 1;
                self.offset[i] + self.step[i] * if upper { BIT_HI } else { BIT_LO }
            })
            .collect()
    }

    /// Per-query constants for binary codes (see the module comment): `planes` is reused
    /// (cleared and filled with `PLANES` planes of `dim.div_ceil(64)` words).
    pub fn bit_query<'q>(&self, v: &'q [f32], planes: Vec<u64>) -> QuantQuery<'q> {
        let dim = self.dim().min(v.len());
        let words = self.dim().div_ceil(64);
        let mut planes = planes;
        planes.clear();
        planes.resize(PLANES * words, 0);
        let (mut qa, mut qn) = (0.0f32, 0.0f32);
        let (mut wmin, mut wmax) = (f32::INFINITY, f32::NEG_INFINITY);
        for ((&x, &a), &s) in v.iter().zip(&self.offset).zip(&self.step) {
            qa += x * (a + BIT_LO * s);
            qn += x * x;
            let w = x * s;
            wmin = wmin.min(w);
            wmax = wmax.max(w);
        }
        if dim == 0 {
            (wmin, wmax) = (0.0, 0.0);
        }
        let levels = ((1u32 << PLANES) - 1) as f32;
        let delta = if wmax > wmin {
            (wmax - wmin) / levels
        } else {
            1.0
        };
        let inv = 1.0 / delta;
        for (i, (&x, &s)) in v.iter().zip(&self.step).enumerate() {
            let u = ((x * s - wmin) * inv).round().clamp(0.0, levels) as u64;
            for (j, plane) in planes.chunks_exact_mut(words).enumerate() {
                plane[i / 64] |= (u >> j & 1) << (i % 64);
            }
        }
        QuantQuery {
            f32: v,
            e: Vec::new(),
            planes,
            t: (BIT_HI - BIT_LO) * delta,
            t1: (BIT_HI - BIT_LO) * wmin,
            qa,
            qn,
        }
    }

    /// The decoded vector x̂ (tests and diagnostics).
    pub fn decode(&self, codes: &[u8]) -> Vec<f32> {
        codes
            .iter()
            .enumerate()
            .map(|(i, &c)| self.offset[i] + self.step[i] * c as f32)
            .collect()
    }

    /// Per-query constants for `QuantQuery::inner`.
    pub fn query<'q>(&self, v: &'q [f32], weights: Vec<i8>) -> QuantQuery<'q> {
        let mut e = weights;
        e.clear();
        let mut qa = 0.0f32;
        let mut qn = 0.0f32;
        let mut wmax = 0.0f32;
        for (i, &x) in v.iter().enumerate() {
            qa += x * self.offset[i];
            qn += x * x;
            wmax = wmax.max((x * self.step[i]).abs());
        }
        let t = if wmax > 0.0 { wmax / 127.0 } else { 1.0 };
        let inv_t = 1.0 / t;
        e.extend(
            v.iter()
                .zip(&self.step)
                .map(|(&x, &s)| (x * s * inv_t).round().clamp(-127.0, 127.0) as i8),
        );
        QuantQuery {
            f32: v,
            e,
            planes: Vec::new(),
            t,
            t1: 0.0,
            qa,
            qn,
        }
    }
}

/// Binary codes: a component at or above this code value (the middle of its range) sets
/// its bit; a set bit decodes to `BIT_HI`, a clear one to `BIT_LO` (middles of the halves).
const BIT_SPLIT: f32 = 127.5;
const BIT_LO: f32 = 63.75;
const BIT_HI: f32 = 191.25;

/// A query prepared for coded vectors (see the module comment).
pub struct QuantQuery<'q> {
    /// The f32 query, for slots without codes (see `QuantSpace::dist`).
    pub f32: &'q [f32],
    /// int8: the i8 weights (empty for binary).
    pub e: Vec<i8>,
    /// binary: the 4-bit weights as bit planes (empty for int8).
    pub planes: Vec<u64>,
    /// int8: the scale of `e`; binary: 127.5·Δ.
    pub t: f32,
    /// binary: 127.5·w_min, per set bit (0 for int8).
    pub t1: f32,
    pub qa: f32,
    pub qn: f32,
}

/// What a slot's codes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// One u8 per dimension.
    Int8,
    /// One bit per dimension, in 64-bit words.
    Binary,
}

impl CodeKind {
    /// The codes of a quantization (None for `none`).
    pub fn of(q: Quantization) -> Option<CodeKind> {
        match q {
            Quantization::None => None,
            Quantization::Int8 => Some(CodeKind::Int8),
            Quantization::Binary => Some(CodeKind::Binary),
        }
    }

    /// Code bytes of one vector of `dim` dimensions.
    pub fn len(self, dim: usize) -> usize {
        match self {
            CodeKind::Int8 => dim,
            CodeKind::Binary => 8 * dim.div_ceil(64),
        }
    }
}

/// Header word of a slot whose codes are not written yet (a NaN: never a norm).
const EMPTY: u32 = u32::MAX;
/// Header word while the one writer of a slot writes its codes.
const WRITING: u32 = u32::MAX - 1;

type CodeChunk = HugeBuf<UnsafeCell<u32>>;

/// Codes of one set of ranges, one write-once cell per slot: a header word
/// (‖x̂‖² as f32 bits once written) followed by the codes, padded to 4 bytes.
pub struct Codes {
    kind: CodeKind,
    /// Code bytes per slot ([`CodeKind::len`]).
    len: usize,
    /// Words per slot: 1 + ceil(len / 4).
    stride: usize,
    chunks: Box<[OnceLock<CodeChunk>]>,
}

// SAFETY: a slot's code bytes are written only by the thread that moved its
// header from EMPTY to WRITING (a CAS, so one writer per slot), and read only
// after the header holds a norm, which the writer stores with Release after
// the last code byte and readers load with Acquire. Headers are only accessed
// atomically. So no byte is read while it is written.
unsafe impl Sync for Codes {}
unsafe impl Send for Codes {}

impl Codes {
    pub fn new(kind: CodeKind, dim: usize) -> Codes {
        let len = kind.len(dim);
        Codes {
            kind,
            len,
            stride: 1 + len.div_ceil(4),
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn chunk(&self, slot: u32) -> (&CodeChunk, usize) {
        let i = slot as usize;
        let chunk = self.chunks[i >> CHUNK_BITS].get_or_init(|| {
            let stride = self.stride;
            HugeBuf::new(CHUNK_SLOTS * stride, |w| {
                UnsafeCell::new(if w % stride == 0 { EMPTY } else { 0 })
            })
        });
        (chunk, (i & (CHUNK_SLOTS - 1)) * self.stride)
    }

    /// The code bytes of the slot at word `off`, derived from the whole chunk
    /// (not from one word) so the pointer covers all of them.
    fn codes_ptr(chunk: &CodeChunk, off: usize) -> *mut u8 {
        UnsafeCell::raw_get(chunk.as_ptr().wrapping_add(off + 1)).cast::<u8>()
    }

    fn header(chunk: &CodeChunk, off: usize) -> &AtomicU32 {
        // SAFETY: the cell is a live, 4-aligned u32 of the chunk, and headers
        // are only ever accessed through this atomic view (see the Sync impl).
        unsafe { AtomicU32::from_ptr(chunk[off].get()) }
    }

    /// Encodes `v` into `slot` unless that slot already has codes. Returns
    /// whether it wrote.
    pub fn write(&self, slot: u32, ranges: &Ranges, v: &[f32]) -> bool {
        let (chunk, off) = self.chunk(slot);
        let h = Self::header(chunk, off);
        if h.compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // SAFETY: the CAS above made this thread the only writer of the slot,
        // and no reader reads its bytes until the Release store below (see the
        // Sync impl); the range lies inside the slot's words of one allocation.
        let out = unsafe { std::slice::from_raw_parts_mut(Self::codes_ptr(chunk, off), self.len) };
        let norm = match self.kind {
            CodeKind::Int8 => ranges.encode(v, out),
            CodeKind::Binary => ranges.encode_bits(v, out),
        };
        h.store(norm.to_bits(), Ordering::Release);
        true
    }

    /// The codes of `slot` and ‖x̂‖², if written.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<(&[u8], f32)> {
        let i = slot as usize;
        let chunk = self.chunks.get(i >> CHUNK_BITS)?.get()?;
        let off = (i & (CHUNK_SLOTS - 1)) * self.stride;
        let bits = Self::header(chunk, off).load(Ordering::Acquire);
        if bits == EMPTY || bits == WRITING {
            return None;
        }
        // SAFETY: the header holds a norm, so the codes were written before
        // it was stored (Release/Acquire) and are never written again.
        let codes = unsafe { std::slice::from_raw_parts(Self::codes_ptr(chunk, off), self.len) };
        Some((codes, f32::from_bits(bits)))
    }

    #[inline(always)]
    pub fn prefetch(&self, slot: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let i = slot as usize;
            if let Some(chunk) = self.chunks.get(i >> CHUNK_BITS).and_then(|c| c.get()) {
                let off = (i & (CHUNK_SLOTS - 1)) * self.stride;
                if let Some(w) = chunk.get(off) {
                    let p = w.get() as *const i8;
                    let lines = (self.stride * 4).div_ceil(64).min(8);
                    for l in 0..lines {
                        // SAFETY: prefetch never faults, whatever the address.
                        unsafe {
                            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                            _mm_prefetch(p.wrapping_add(64 * l), _MM_HINT_T0);
                        }
                    }
                }
            }
        }
    }

    /// Bytes per slot.
    pub fn bytes_per_slot(&self) -> usize {
        self.stride * 4
    }

    pub fn kind(&self) -> CodeKind {
        self.kind
    }
}

/// The ranges a shard has decided on, and when to decide again: replicated state, a
/// function of the applied log alone (never of timing), kept in snapshots.
///
/// Ranges are trained on every live point (min/max: the order of the points does not
/// matter, so a replica that replayed the log and one that loaded a snapshot agree) once
/// there are `TRAIN_MIN`, and again after as many upserts and deletes as there were live
/// points then (the data has turned over or doubled), so they follow the data at O(d)
/// amortised cost per write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub ranges: Option<Arc<Ranges>>,
    /// Live points when `ranges` were trained.
    pub trained_live: u64,
    /// Points upserted or deleted since.
    pub changes: u64,
}

impl Plan {
    /// Whether the ranges are due for (re)training with `live` points live now.
    pub fn due(&self, live: u64) -> bool {
        let min = TRAIN_MIN as u64;
        live >= min && (self.ranges.is_none() || self.changes >= self.trained_live.max(min))
    }

    /// Trains on `live_vectors` (the `live` live points) and starts counting again.
    pub fn train<'a>(
        dim: usize,
        live: u64,
        live_vectors: impl IntoIterator<Item = &'a [f32]>,
    ) -> Plan {
        Plan {
            ranges: Some(Arc::new(Ranges::train(dim, live_vectors, RANGE_MODE))),
            trained_live: live,
            changes: 0,
        }
    }
}

/// Trained ranges and the codes made with them. Replaced as a whole when the
/// ranges are refreshed, so a search always sees codes of one set of ranges.
pub struct QuantState {
    pub ranges: Arc<Ranges>,
    pub codes: Codes,
}

impl QuantState {
    /// Codes every slot below `len` with the given ranges.
    pub fn with_ranges(
        vectors: &VectorArena,
        len: usize,
        ranges: Arc<Ranges>,
        kind: CodeKind,
    ) -> QuantState {
        let codes = Codes::new(kind, vectors.dim());
        for s in 0..len as u32 {
            codes.write(s, &ranges, vectors.get(s));
        }
        QuantState { ranges, codes }
    }

    /// Whether new slots are linked on code distances (int8) or on f32 ones (binary: one
    /// bit per dimension ranks neighbours too coarsely to build a graph with).
    pub fn links_on_codes(&self) -> bool {
        self.codes.kind == CodeKind::Int8
    }
}

/// The graph's view of coded vectors: distances from a prepared query to
/// codes, with the f32 vectors only for slots not coded yet.
pub struct QuantSpace<'a> {
    pub state: &'a QuantState,
    pub vectors: &'a VectorArena,
    pub dist: &'a DistanceFn,
    pub dot: DotU8I8,
    pub bits: BitDot,
}

impl<'a> QuantSpace<'a> {
    pub fn new(state: &'a QuantState, vectors: &'a VectorArena, dist: &'a DistanceFn) -> Self {
        QuantSpace {
            state,
            vectors,
            dist,
            dot: dot_kernel(),
            bits: bit_kernel(),
        }
    }
}

/// The u8 × i8 kernel for this CPU, selected once.
fn dot_kernel() -> DotU8I8 {
    static K: OnceLock<DotU8I8> = OnceLock::new();
    *K.get_or_init(kernels::select_dot_u8_i8)
}

/// The binary kernel for this CPU, selected once.
fn bit_kernel() -> BitDot {
    static K: OnceLock<BitDot> = OnceLock::new();
    *K.get_or_init(kernels::select_bit_dot)
}

impl Space for QuantSpace<'_> {
    type Query<'q>
        = QuantQuery<'q>
    where
        Self: 'q;

    #[inline]
    fn slots(&self) -> usize {
        self.vectors.len()
    }

    fn query<'q>(&'q self, v: &'q [f32]) -> QuantQuery<'q> {
        match self.state.codes.kind {
            CodeKind::Int8 => self.state.ranges.query(v, Vec::with_capacity(v.len())),
            CodeKind::Binary => self.state.ranges.bit_query(v, Vec::new()),
        }
    }

    fn slot_query(&self, slot: u32) -> QuantQuery<'_> {
        self.query(self.vectors.get(slot))
    }

    #[inline(always)]
    fn dist(&self, q: &QuantQuery<'_>, slot: u32) -> f32 {
        let Some((codes, norm)) = self.state.codes.get(slot) else {
            // Not coded (cannot happen for a slot reachable in the graph, see
            // `Engine`): the exact distance is still a valid answer.
            return self.dist.distance(q.f32, self.vectors.get(slot));
        };
        let ip = match self.state.codes.kind {
            CodeKind::Int8 => q.qa + q.t * (self.dot)(codes, &q.e) as f32,
            CodeKind::Binary => {
                let (weighted, ones) = (self.bits)(codes, &q.planes);
                q.qa + q.t1 * ones as f32 + q.t * weighted as f32
            }
        };
        match self.dist.metric() {
            Metric::L2 => q.qn - 2.0 * ip + norm,
            Metric::Dot => -ip,
            Metric::Cosine => 1.0 - ip,
        }
    }

    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        self.state.codes.prefetch(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn data(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|i| rng.random_range(-1.0f32..1.0) * (1.0 + i as f32 / 8.0))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn encode_decode_is_within_half_a_step_and_clamps() {
        let vs = data(200, 37, 1);
        let r = Ranges::train(37, vs.iter().map(|v| v.as_slice()), RangeMode::PerDimension);
        let mut c = vec![0u8; 37];
        for v in &vs {
            let norm = r.encode(v, &mut c);
            let back = r.decode(&c);
            for i in 0..37 {
                assert!((back[i] - v[i]).abs() <= r.step[i] / 2.0 + 1e-5, "dim {i}");
            }
            let n2: f32 = back.iter().map(|x| x * x).sum();
            assert!((n2 - norm).abs() <= 1e-3 * (1.0 + n2));
        }
        // Out of range clamps to the ends.
        let big = vec![1e6f32; 37];
        r.encode(&big, &mut c);
        assert!(c.iter().all(|&x| x == 255));
        let small = vec![-1e6f32; 37];
        r.encode(&small, &mut c);
        assert!(c.iter().all(|&x| x == 0));
        // A constant dimension codes to 0 and decodes to its value.
        let flat = Ranges::train(
            2,
            [[3.0f32, 1.0].as_slice(), &[3.0, 2.0]],
            RangeMode::PerDimension,
        );
        flat.encode(&[3.0, 1.0], &mut c[..2]);
        assert_eq!((c[0], flat.decode(&c[..2])[0]), (0, 3.0));
        let none = Ranges::train(3, std::iter::empty(), RangeMode::PerDimension);
        assert_eq!(none.encode(&[1.0, 2.0, 3.0], &mut c[..3]), 0.0);
    }

    /// The coded distance is within the documented bounds of the exact one,
    /// for every metric (see the module comment).
    #[test]
    fn coded_distance_error_is_bounded() {
        let dim = 50;
        for metric in [Metric::Dot, Metric::L2, Metric::Cosine] {
            let dist = DistanceFn::new(metric);
            let mut vs = data(300, dim, 2);
            vs.iter_mut().for_each(|v| dist.prepare(v));
            let arena = VectorArena::new(dim);
            arena.extend(&vs.concat()).unwrap();
            let plan = Plan::train(dim, vs.len() as u64, vs.iter().map(|v| v.as_slice()));
            let state =
                QuantState::with_ranges(&arena, vs.len(), plan.ranges.unwrap(), CodeKind::Int8);
            let space = QuantSpace::new(&state, &arena, &dist);
            for q in vs.iter().take(20) {
                let qq = space.query(q);
                for (s, x) in vs.iter().enumerate() {
                    let (codes, _) = state.codes.get(s as u32).unwrap();
                    let xh = state.ranges.decode(codes);
                    let approx = space.dist(&qq, s as u32);
                    // Against the decoded vector: only the query rounding.
                    let csum: f32 = codes.iter().map(|&c| c as f32).sum();
                    let round = qq.t / 2.0 * csum;
                    let k = if metric == Metric::L2 { 2.0 } else { 1.0 };
                    let exact_dec = dist.distance(q, &xh);
                    assert!(
                        (approx - exact_dec).abs() <= k * round + 1e-3 * (1.0 + exact_dec.abs()),
                        "{metric}: {approx} vs decoded {exact_dec}"
                    );
                    // Against the original (dot and cosine: the ip bound).
                    if metric != Metric::L2 {
                        let code_err: f32 = q
                            .iter()
                            .zip(&state.ranges.step)
                            .map(|(qi, s)| qi.abs() * s / 2.0)
                            .sum();
                        let exact = dist.distance(q, x);
                        assert!(
                            (approx - exact).abs() <= round + code_err + 1e-3,
                            "{metric}: {approx} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    /// Binary: the coded distance equals the exact distance to the decoded vector up to the
    /// 4-bit rounding of the query's weights (see the module comment), for every metric and
    /// a dimension that leaves part of the last word unused.
    #[test]
    fn binary_distance_error_is_bounded() {
        let dim = 100;
        for metric in [Metric::Dot, Metric::L2, Metric::Cosine] {
            let dist = DistanceFn::new(metric);
            let mut vs = data(300, dim, 6);
            vs.iter_mut().for_each(|v| dist.prepare(v));
            let arena = VectorArena::new(dim);
            arena.extend(&vs.concat()).unwrap();
            let plan = Plan::train(dim, vs.len() as u64, vs.iter().map(|v| v.as_slice()));
            let state =
                QuantState::with_ranges(&arena, vs.len(), plan.ranges.unwrap(), CodeKind::Binary);
            assert!(!state.links_on_codes());
            let space = QuantSpace::new(&state, &arena, &dist);
            for q in vs.iter().take(20) {
                let qq = space.query(q);
                assert_eq!(qq.planes.len(), PLANES * 2);
                let delta = qq.t / (BIT_HI - BIT_LO);
                for s in 0..vs.len() as u32 {
                    let (codes, norm) = state.codes.get(s).unwrap();
                    assert_eq!(codes.len(), 16);
                    assert_eq!(codes[13..], [0, 0, 0], "bits past dimension 100 are 0");
                    let xh = state.ranges.decode_bits(codes);
                    let n2: f32 = xh.iter().map(|x| x * x).sum();
                    assert!((n2 - norm).abs() <= 1e-3 * (1.0 + n2));
                    let ones: u32 = codes.iter().map(|b| b.count_ones()).sum();
                    let round = (BIT_HI - BIT_LO) * delta / 2.0 * ones as f32;
                    let k = if metric == Metric::L2 { 2.0 } else { 1.0 };
                    let exact_dec = dist.distance(q, &xh);
                    let approx = space.dist(&qq, s);
                    assert!(
                        (approx - exact_dec).abs() <= k * round + 1e-3 * (1.0 + exact_dec.abs()),
                        "{metric}: {approx} vs decoded {exact_dec} (bound {})",
                        k * round
                    );
                }
            }
        }
    }

    /// A bit is set exactly for components in the upper half of their range; a constant
    /// dimension (step 0) never sets its bit and decodes to its value.
    #[test]
    fn binary_bits_split_each_range_in_the_middle() {
        let r =
            Ranges::from_parts(vec![-1.0, 0.0, 5.0], vec![2.0 / 255.0, 1.0 / 255.0, 0.0]).unwrap();
        let mut out = [0xffu8; 8];
        r.encode_bits(&[0.01, 0.49, 5.0], &mut out);
        assert_eq!(out, [0b001, 0, 0, 0, 0, 0, 0, 0]);
        r.encode_bits(&[-0.01, 0.51, 9.0], &mut out);
        assert_eq!(out[0], 0b010);
        let back = r.decode_bits(&out);
        assert!((back[0] - (-0.5)).abs() < 1e-5, "{back:?}");
        assert!((back[1] - 0.75).abs() < 1e-5, "{back:?}");
        assert_eq!(back[2], 5.0);
    }

    #[test]
    fn codes_are_write_once_and_absent_until_written() {
        let vs = data(3, 9, 3);
        let r = Ranges::train(9, vs.iter().map(|v| v.as_slice()), RangeMode::PerDimension);
        let codes = Codes::new(CodeKind::Int8, 9);
        assert!(codes.get(1).is_none());
        assert!(codes.get(CHUNK_SLOTS as u32 * 5).is_none());
        assert!(codes.write(1, &r, &vs[1]));
        let first = codes.get(1).map(|(c, n)| (c.to_vec(), n));
        assert!(!codes.write(1, &r, &vs[2]));
        assert_eq!(codes.get(1).map(|(c, n)| (c.to_vec(), n)), first);
        assert!(codes.get(0).is_none());
    }

    /// Training is due at `TRAIN_MIN` live points, then after as many changes as there
    /// were live points (at least `TRAIN_MIN`), never below `TRAIN_MIN` live points.
    #[test]
    fn plan_retrains_after_a_turnover_of_the_live_points() {
        let min = TRAIN_MIN as u64;
        let none = Plan::default();
        assert!(!none.due(min - 1));
        assert!(none.due(min));
        let vs = data(5, 4, 9);
        let p = Plan::train(4, 5_000, vs.iter().map(|v| v.as_slice()));
        assert!(p.ranges.is_some() && p.changes == 0 && p.trained_live == 5_000);
        let after = |changes| Plan {
            changes,
            ..p.clone()
        };
        assert!(!after(4_999).due(10_000));
        assert!(after(5_000).due(10_000));
        assert!(
            !after(5_000).due(min - 1),
            "too few live points to train on"
        );
        let small = Plan {
            trained_live: 10,
            changes: min - 1,
            ..p.clone()
        };
        assert!(!small.due(min));
        assert!(
            Plan {
                changes: min,
                ..small
            }
            .due(min)
        );
    }

    /// The ranges do not depend on the order of the points (replicas that replayed the log
    /// and replicas that loaded a snapshot hold their live points in other slots).
    #[test]
    fn trained_ranges_ignore_the_order_of_the_points() {
        let mut vs = data(200, 7, 4);
        let a = Plan::train(7, 200, vs.iter().map(|v| v.as_slice()));
        vs.reverse();
        vs.swap(3, 150);
        let b = Plan::train(7, 200, vs.iter().map(|v| v.as_slice()));
        assert_eq!(a, b);
    }

    #[test]
    fn ranges_from_parts_round_trip_and_refuse_bad_values() {
        let vs = data(50, 6, 5);
        let r = Ranges::train(6, vs.iter().map(|v| v.as_slice()), RangeMode::PerDimension);
        let back = Ranges::from_parts(r.offset().to_vec(), r.step().to_vec()).unwrap();
        assert_eq!(back, r);
        assert!(Ranges::from_parts(vec![0.0; 3], vec![0.1; 2]).is_err());
        assert!(Ranges::from_parts(vec![f32::NAN], vec![0.1]).is_err());
        assert!(Ranges::from_parts(vec![0.0], vec![-0.1]).is_err());
        assert!(Ranges::from_parts(vec![0.0], vec![f32::INFINITY]).is_err());
        let zero = Ranges::from_parts(vec![1.0], vec![0.0]).unwrap();
        let mut c = [9u8];
        zero.encode(&[5.0], &mut c);
        assert_eq!(c, [0]);
    }
}
