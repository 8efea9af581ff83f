//! Handing heap memory freed by bulk work back to the kernel.
//!
//! glibc's malloc keeps what bulk work frees (indexing batches on several threads, loading or
//! building a snapshot) in its arenas, resident, for later allocations that may never come.
//! On docs-minilm-30k with int8 and vectors on disk a built index held 1,550 B/vector of
//! anonymous memory, 973 after a trim (bench/RESULTS.md). The node trims once such work ends
//! (`node::tasks`).

/// Returns free heap pages to the kernel (glibc `malloc_trim`); a no-op with other C
/// libraries. Walks the allocator's free lists: milliseconds, so called off the async threads.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only releases pages of free chunks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `RssAnon` of this process in bytes, from /proc/self/status (None elsewhere).
pub fn rss_anon_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    fn rss_anon_kib() -> u64 {
        super::rss_anon_bytes().unwrap() / 1024
    }

    /// Memory freed between blocks still in use stays resident until a trim returns it.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_memory_between_live_blocks_is_returned() {
        const BLOCK: usize = 4096;
        const MIB: usize = 192;
        let mut blocks: Vec<Option<Box<[u8]>>> = (0..MIB * 256)
            .map(|i| Some(vec![i as u8 | 1; BLOCK].into_boxed_slice()))
            .collect();
        // Keep one block in 16, so the heap cannot simply shrink from its top.
        for (i, b) in blocks.iter_mut().enumerate() {
            if i % 16 != 0 {
                *b = None;
            }
        }
        let before = rss_anon_kib();
        super::release_free();
        let after = rss_anon_kib();
        let freed_kib = (MIB * 1024 * 15 / 16) as u64;
        assert!(
            before.saturating_sub(after) >= freed_kib / 2,
            "RssAnon {before} KiB before the trim, {after} KiB after; {freed_kib} KiB were freed"
        );
        drop(blocks);
    }
}
