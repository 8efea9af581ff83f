//! Append-only, chunked storage that never moves what it holds.
//!
//! Searches read vectors and links while the apply path appends and indexing
//! workers link new nodes. Chunks are allocated once and never reallocated, so a
//! reference to a published slot stays valid for the life of the arena without
//! a lock on the read path.

use std::cell::UnsafeCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use std::path::PathBuf;

use super::hugebuf::HugeBuf;
use super::mapped::MappedBuf;

/// Slots per chunk (2^14). Small enough that a fresh chunk is cheap, large
/// enough that the chunk table stays tiny.
pub const CHUNK_BITS: u32 = 14;
pub const CHUNK_SLOTS: usize = 1 << CHUNK_BITS;
/// 2^14 chunks × 2^14 slots = 268M slots per shard.
pub const MAX_CHUNKS: usize = 1 << 14;
pub const MAX_SLOTS: usize = CHUNK_SLOTS * MAX_CHUNKS;

/// A fixed number (`stride`) of `T` per slot, in lazily allocated chunks.
/// `T` must be safe to share (atomics, locks, `OnceLock`s).
pub struct Chunked<T> {
    stride: usize,
    chunks: Box<[OnceLock<HugeBuf<T>>]>,
}

impl<T: Default + Sync> Chunked<T> {
    pub fn new(stride: usize) -> Self {
        Chunked {
            stride,
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The `stride` elements of slot `i`, allocating its chunk on first use.
    #[inline]
    pub fn slot(&self, i: u32) -> &[T] {
        let i = i as usize;
        let chunk = self.chunks[i >> CHUNK_BITS]
            .get_or_init(|| HugeBuf::new(CHUNK_SLOTS * self.stride, |_| T::default()));
        let off = (i & (CHUNK_SLOTS - 1)) * self.stride;
        &chunk[off..off + self.stride]
    }

    #[inline]
    pub fn first(&self, i: u32) -> &T {
        &self.slot(i)[0]
    }

    /// Hints the CPU to load slot `i` (a no-op if its chunk is not allocated).
    #[inline(always)]
    pub fn prefetch(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let i = i as usize;
            if let Some(chunk) = self.chunks.get(i >> CHUNK_BITS).and_then(|c| c.get()) {
                let off = (i & (CHUNK_SLOTS - 1)) * self.stride;
                if let Some(first) = chunk.get(off) {
                    let p = (first as *const T).cast::<i8>();
                    let bytes = (self.stride * std::mem::size_of::<T>()).max(1);
                    // Every cache line the slot touches (at most 4).
                    let (a, b) = (p as usize & !63, (p as usize + bytes - 1) & !63);
                    let lines = ((b - a) / 64 + 1).min(4);
                    let p = p.wrapping_sub(p as usize - a);
                    for l in 0..lines {
                        // SAFETY: prefetch has no architectural effect and
                        // never faults, whatever the address.
                        unsafe {
                            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                            _mm_prefetch(p.wrapping_add(64 * l), _MM_HINT_T0);
                        }
                    }
                }
            }
        }
    }
}

/// Where an arena keeps its vectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VectorStorage {
    /// Anonymous memory (huge pages where the kernel allows).
    #[default]
    Heap,
    /// `vectorsOnDisk`: shared mappings of unnamed files in this directory (see `mapped`).
    Mapped(PathBuf),
}

/// One chunk of vector floats, written once per slot before publication.
struct VectorChunk {
    /// The first float of `_owner`'s memory, kept apart so the search path reads a field
    /// instead of matching on the storage kind (the memory never moves with the owner).
    base: *mut f32,
    _owner: ChunkMemory,
}

/// Owns a chunk's memory: freed or unmapped when the chunk drops.
#[expect(dead_code, reason = "held only to be dropped")]
enum ChunkMemory {
    Heap(HugeBuf<UnsafeCell<f32>>),
    Mapped(MappedBuf),
}

impl VectorChunk {
    fn new(storage: &VectorStorage, floats: usize) -> Result<VectorChunk, ArenaError> {
        Ok(match storage {
            VectorStorage::Heap => {
                let b = HugeBuf::new(floats, |_| UnsafeCell::new(0.0));
                VectorChunk {
                    // UnsafeCell<f32> has the layout of f32.
                    base: b.as_ptr() as *mut f32,
                    _owner: ChunkMemory::Heap(b),
                }
            }
            VectorStorage::Mapped(dir) => {
                let m = MappedBuf::create(dir, floats).map_err(|e| ArenaError::Storage {
                    dir: dir.clone(),
                    source: e,
                })?;
                VectorChunk {
                    base: m.as_ptr(),
                    _owner: ChunkMemory::Mapped(m),
                }
            }
        })
    }

    /// The first float; the chunk holds `CHUNK_SLOTS * dim` of them.
    #[inline(always)]
    fn base(&self) -> *mut f32 {
        self.base
    }
}

/// Vectors of one fixed dimension. One writer appends (serialised by an
/// internal lock); any number of readers read published slots.
pub struct VectorArena {
    dim: usize,
    storage: VectorStorage,
    chunks: Box<[OnceLock<VectorChunk>]>,
    len: AtomicUsize,
    writer: Mutex<()>,
}

// SAFETY: a slot is written exactly once, by the single writer holding
// `writer`, before `len` is advanced with Release; readers only touch slots
// below `len` loaded with Acquire, so no slot is read while it is written.
unsafe impl Sync for VectorArena {}
unsafe impl Send for VectorArena {}

#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("vector store is full ({MAX_SLOTS} slots per shard)")]
    Full,
    /// Local to this replica (a full or failing volume), unlike `Full`.
    #[error("cannot map vector storage in {dir}: {source}")]
    Storage {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bytes of one chunk of `dim`-dimensional vectors (what `--vectors-on-disk` allocates at once).
pub fn chunk_bytes(dim: usize) -> u64 {
    (CHUNK_SLOTS * dim * 4) as u64
}

impl VectorArena {
    pub fn new(dim: usize) -> Self {
        VectorArena::with_storage(dim, VectorStorage::Heap)
    }

    pub fn with_storage(dim: usize, storage: VectorStorage) -> Self {
        VectorArena {
            dim,
            storage,
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            writer: Mutex::new(()),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn storage(&self) -> &VectorStorage {
        &self.storage
    }

    /// Number of published vectors.
    #[inline]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Allocates the chunks `count` more vectors need, so the next `extend` of at most `count`
    /// cannot fail for lack of storage. Callers that must not half-apply (the apply path sets
    /// ids and payloads of the new slots first) call it before anything else.
    pub fn reserve(&self, count: usize) -> Result<(), ArenaError> {
        let _guard = self.writer.lock();
        let start = self.len.load(Ordering::Relaxed);
        if start + count > MAX_SLOTS {
            return Err(ArenaError::Full);
        }
        if count == 0 {
            return Ok(());
        }
        for c in (start >> CHUNK_BITS)..=((start + count - 1) >> CHUNK_BITS) {
            self.chunk(c)?;
        }
        Ok(())
    }

    /// Chunk `c`, created if missing. Only with `writer` held (one creator at a time).
    fn chunk(&self, c: usize) -> Result<&VectorChunk, ArenaError> {
        if let Some(chunk) = self.chunks[c].get() {
            return Ok(chunk);
        }
        let chunk = VectorChunk::new(&self.storage, CHUNK_SLOTS * self.dim)?;
        Ok(self.chunks[c].get_or_init(|| chunk))
    }

    /// Appends vectors (each `dim` long, concatenated) and publishes them
    /// together. Returns the first new slot.
    pub fn extend(&self, flat: &[f32]) -> Result<u32, ArenaError> {
        assert_eq!(
            flat.len() % self.dim.max(1),
            0,
            "flat length is a multiple of dim"
        );
        let count = flat.len() / self.dim.max(1);
        let mut rest = flat;
        // Runs come in slot order and cover the new slots exactly once.
        let filled = self.extend_with(count, |dst| {
            let (head, tail) = rest.split_at(dst.len());
            dst.copy_from_slice(head);
            rest = tail;
            Ok::<_, std::convert::Infallible>(())
        })?;
        Ok(filled.unwrap_or_else(|never| match never {}))
    }

    /// Appends `count` vectors produced in place by `fill` (no intermediate
    /// copy: snapshot loading reads file bytes straight into the arena), then
    /// publishes them together. `fill` gets the new slots as consecutive
    /// disjoint runs (at most one per chunk), in slot order. If `fill` fails
    /// nothing is published (the runs may already have been written; they
    /// stay unpublished and the next append overwrites them).
    pub fn extend_with<E>(
        &self,
        count: usize,
        mut fill: impl FnMut(&mut [f32]) -> Result<(), E>,
    ) -> Result<Result<u32, E>, ArenaError> {
        let _guard = self.writer.lock();
        let start = self.len.load(Ordering::Relaxed);
        if start + count > MAX_SLOTS {
            return Err(ArenaError::Full);
        }
        let mut i = start;
        while i < start + count {
            let chunk = self.chunk(i >> CHUNK_BITS)?;
            let in_chunk = (CHUNK_SLOTS - (i & (CHUNK_SLOTS - 1))).min(start + count - i);
            let off = (i & (CHUNK_SLOTS - 1)) * self.dim;
            // SAFETY: slots i.. are at or above `len`, so no reader touches
            // them (readers stop at `len`), and we are the only writer (guard
            // held); the run lies inside the chunk (`in_chunk` stops at its end).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(chunk.base().add(off), in_chunk * self.dim)
            };
            if let Err(e) = fill(dst) {
                return Ok(Err(e));
            }
            i += in_chunk;
        }
        self.len.store(start + count, Ordering::Release);
        Ok(Ok(start as u32))
    }

    /// The vector in slot `i`; `i` must be below `len()`.
    #[inline]
    pub fn get(&self, i: u32) -> &[f32] {
        let i = i as usize;
        assert!(i < self.len(), "slot {i} is not published");
        let chunk = self.chunks[i >> CHUNK_BITS]
            .get()
            .expect("published slots have their chunk allocated");
        let off = (i & (CHUNK_SLOTS - 1)) * self.dim;
        // SAFETY: published slots are never written again (see the Sync impl); the slot lies
        // inside its chunk.
        unsafe { std::slice::from_raw_parts(chunk.base().add(off), self.dim) }
    }

    /// Hints the CPU to load slot `i`; a no-op for unpublished slots.
    #[inline(always)]
    pub fn prefetch(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let i = i as usize;
            if let Some(chunk) = self.chunks.get(i >> CHUNK_BITS).and_then(|c| c.get()) {
                let off = (i & (CHUNK_SLOTS - 1)) * self.dim;
                let p = chunk.base().wrapping_add(off) as *const i8;
                // The first few lines; the hardware streams the rest.
                let lines = (self.dim * 4).div_ceil(64).min(4);
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

    /// Published vectors as contiguous runs (one per chunk), for snapshots.
    pub fn runs(&self) -> impl Iterator<Item = &[f32]> + '_ {
        let len = self.len();
        (0..len.div_ceil(CHUNK_SLOTS)).map(move |c| {
            let slots = (len - c * CHUNK_SLOTS).min(CHUNK_SLOTS);
            let chunk = self.chunks[c].get().expect("published chunk");
            // SAFETY: as in `get`, for all published slots of this chunk.
            unsafe { std::slice::from_raw_parts(chunk.base(), slots * self.dim) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn vectors_survive_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for storage in [
            VectorStorage::Heap,
            VectorStorage::Mapped(dir.path().to_path_buf()),
        ] {
            vectors_survive_chunk_boundaries_in(storage);
        }
    }

    fn vectors_survive_chunk_boundaries_in(storage: VectorStorage) {
        let a = VectorArena::with_storage(3, storage);
        let n = CHUNK_SLOTS + 10;
        let flat: Vec<f32> = (0..n * 3).map(|x| x as f32).collect();
        assert_eq!(a.extend(&flat[..30]).unwrap(), 0);
        assert_eq!(a.extend(&flat[30..]).unwrap(), 10);
        assert_eq!(a.len(), n);
        assert_eq!(a.get(0), &[0.0, 1.0, 2.0]);
        let last = (n - 1) as u32;
        assert_eq!(a.get(last)[0], ((n - 1) * 3) as f32);
        let total: usize = a.runs().map(|r| r.len()).sum();
        assert_eq!(total, n * 3);
    }

    #[test]
    fn extend_with_fills_in_place_across_chunks_and_publishes_only_on_success() {
        let a = VectorArena::new(2);
        a.extend(&[9.0, 9.0]).unwrap();
        let n = CHUNK_SLOTS + 3;
        let mut next = 0.0f32;
        let mut runs = 0;
        let first = a
            .extend_with::<()>(n, |dst| {
                runs += 1;
                for x in dst.iter_mut() {
                    *x = next;
                    next += 1.0;
                }
                Ok(())
            })
            .unwrap()
            .unwrap();
        assert_eq!((first, runs, a.len()), (1, 2, n + 1));
        assert_eq!(a.get(1), &[0.0, 1.0]);
        assert_eq!(a.get(n as u32)[1], (2 * n - 1) as f32);
        // A failing fill publishes nothing.
        let r = a.extend_with(5, |_| Err("bad")).unwrap();
        assert_eq!(r, Err("bad"));
        assert_eq!(a.len(), n + 1);
        assert!(a.extend_with::<()>(MAX_SLOTS, |_| Ok(())).is_err());
    }

    #[test]
    fn mapped_storage_errors_are_reported_and_reserve_allocates_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let gone = VectorArena::with_storage(2, VectorStorage::Mapped(dir.path().join("gone")));
        assert!(matches!(
            gone.extend(&[1.0, 2.0]),
            Err(ArenaError::Storage { .. })
        ));
        assert!(matches!(gone.reserve(1), Err(ArenaError::Storage { .. })));
        assert_eq!(gone.len(), 0);
        assert!(gone.reserve(0).is_ok());

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let a = VectorArena::with_storage(2, VectorStorage::Mapped(sub.clone()));
        a.reserve(CHUNK_SLOTS + 1).unwrap();
        assert!(a.chunks[0].get().is_some() && a.chunks[1].get().is_some());
        assert!(a.chunks[2].get().is_none());
        assert!(matches!(a.reserve(MAX_SLOTS + 1), Err(ArenaError::Full)));
        // The reserved chunks exist: extending into them no longer needs the directory.
        std::fs::rename(&sub, dir.path().join("moved")).unwrap();
        a.extend(&vec![0.5; 2 * (CHUNK_SLOTS + 1)]).unwrap();
        assert!(matches!(
            a.extend(&vec![0.5; 2 * CHUNK_SLOTS]),
            Err(ArenaError::Storage { .. })
        ));
        assert_eq!(a.get(CHUNK_SLOTS as u32), &[0.5, 0.5]);
    }

    #[test]
    #[should_panic]
    fn reading_past_len_panics() {
        let a = VectorArena::new(2);
        a.extend(&[1.0, 2.0]).unwrap();
        let _ = a.get(1);
    }

    #[test]
    fn chunked_slots_are_independent() {
        let c: Chunked<AtomicU32> = Chunked::new(4);
        c.slot(5)[2].store(9, Ordering::Relaxed);
        assert_eq!(c.slot(5)[2].load(Ordering::Relaxed), 9);
        assert_eq!(c.slot(4)[2].load(Ordering::Relaxed), 0);
        c.first(CHUNK_SLOTS as u32 * 3).store(1, Ordering::Relaxed);
        assert_eq!(c.first(CHUNK_SLOTS as u32 * 3).load(Ordering::Relaxed), 1);
    }
}
