//! File-backed buffers for `vectorsOnDisk`: the f32 vectors of an arena chunk live in a
//! shared mapping of an unnamed file on the data volume instead of anonymous memory.
//!
//! The pages are the kernel's page cache: counted as file pages (not RssAnon), written back to
//! the file, and evicted under memory pressure, then read again on the next access (rescoring
//! and exact scans read vectors; int8 graph traversal does not). The file is unnamed
//! (`O_TMPFILE`, else created and unlinked at once), so nothing is left on the volume when the
//! process exits or is killed: the snapshot and the log remain the durable copy. Its blocks are
//! reserved up front (`posix_fallocate`), so a full volume is an error here, never a `SIGBUS`
//! on a later write to a page the file system could not back.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-length, zero-initialised `[f32]` in a shared file mapping.
pub struct MappedBuf {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: MappedBuf owns its mapping exactly like Box<[f32]> owns its allocation; the arena
// using it serialises writes (see `VectorArena`).
unsafe impl Send for MappedBuf {}
// SAFETY: as above.
unsafe impl Sync for MappedBuf {}

impl MappedBuf {
    /// `len` zeroed floats in a new unnamed file in `dir`.
    pub fn create(dir: &Path, len: usize) -> io::Result<MappedBuf> {
        let bytes = len
            .checked_mul(4)
            .filter(|&b| b > 0 && i64::try_from(b).is_ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad mapping length"))?;
        let file = unnamed_file(dir)?;
        // SAFETY: a plain syscall on a descriptor we own; it returns an errno value.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: a new shared mapping of `bytes` of our file, which holds that many bytes (just
        // allocated); the kernel picks the address. The mapping outlives the descriptor.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<f32>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(MappedBuf { ptr, len })
    }

    pub fn as_ptr(&self) -> *mut f32 {
        self.ptr.as_ptr()
    }
}

impl Drop for MappedBuf {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `create`, unmapped once. Failure cannot happen for
        // a valid mapping and would only leak address space.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len * 4);
        }
    }
}

/// An open read-write file in `dir` with no name: `O_TMPFILE` where the file system has it,
/// else a fresh name removed right after it is opened.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => return Ok(f),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) => {}
        Err(e) => return Err(e),
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        ".vectors-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_starts_zeroed_holds_writes_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let n = (2 << 20) / 4 + 7;
        let b = MappedBuf::create(dir.path(), n).unwrap();
        assert_eq!(b.len, n);
        // SAFETY: `n` floats of our own mapping.
        let s = unsafe { std::slice::from_raw_parts_mut(b.as_ptr(), n) };
        assert!(s.iter().all(|&x| x == 0.0));
        s[n - 1] = 7.5;
        s[0] = -1.0;
        assert_eq!((s[0], s[n - 1]), (-1.0, 7.5));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(b);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(MappedBuf::create(&dir.path().join("nope"), 16).is_err());
        assert!(MappedBuf::create(dir.path(), 0).is_err());
    }
}
