//! Fixed-length heap buffers for the large arena chunks, backed by
//! transparent huge pages where the kernel allows it.
//!
//! Graph search reads vectors and link lists at random across hundreds of
//! megabytes; with 4 KiB pages almost every read also misses the TLB (and a
//! page walk is particularly expensive in a VM). Large buffers are therefore
//! allocated 2 MiB-aligned and marked `MADV_HUGEPAGE` *before* they are first
//! written, so the first-touch faults map whole huge pages. Where THP is off
//! the advice is ignored and the buffer behaves like a `Box<[T]>`.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::ops::Deref;
use std::ptr::NonNull;

/// Huge page size on x86-64 and aarch64 (4 KiB granule) Linux.
pub const HUGE_PAGE: usize = 2 << 20;

/// An owned, fixed-length `[T]` (like `Box<[T]>`) whose allocation is
/// huge-page aligned when it is at least one huge page long.
pub struct HugeBuf<T> {
    ptr: NonNull<T>,
    len: usize,
    layout: Layout,
}

// SAFETY: HugeBuf owns its elements exactly like Box<[T]> does.
unsafe impl<T: Send> Send for HugeBuf<T> {}
// SAFETY: shared access only hands out `&[T]`, as Box<[T]> does.
unsafe impl<T: Sync> Sync for HugeBuf<T> {}

impl<T> HugeBuf<T> {
    /// `len` elements, element `i` set to `init(i)`.
    pub fn new(len: usize, mut init: impl FnMut(usize) -> T) -> HugeBuf<T> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("buffer size overflows usize");
        let align = if bytes >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            std::mem::align_of::<T>()
        };
        let layout = Layout::from_size_align(bytes, align.max(std::mem::align_of::<T>()))
            .expect("valid buffer layout");
        let ptr = if bytes == 0 {
            // Nothing to allocate (len 0 or zero-sized T); writes of
            // zero-sized values through a dangling pointer are valid.
            NonNull::dangling()
        } else {
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc(layout) };
            let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
                handle_alloc_error(layout)
            };
            if bytes >= HUGE_PAGE {
                // Only whole huge pages: a partly used one for the tail
                // would cost a full 2 MiB of memory (and of zeroing).
                advise_huge(raw, bytes / HUGE_PAGE * HUGE_PAGE);
            }
            ptr
        };
        let mut b = HugeBuf {
            ptr,
            len: 0,
            layout,
        };
        for i in 0..len {
            let v = init(i);
            // SAFETY: i < len, inside the allocation; slot i is uninitialised
            // (or, for zero-sized T, any aligned
            // non-null pointer is valid) and is counted (for Drop) right after being written, so a panic
            // in `init` drops exactly the elements written so far.
            unsafe { b.ptr.as_ptr().add(i).write(v) };
            b.len = i + 1;
        }
        b
    }
}

impl<T> Deref for HugeBuf<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `len` elements starting at `ptr` are initialised and owned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        // SAFETY: the first `len` elements are initialised and dropped once;
        // the memory was allocated with `layout` unless its size is zero.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ));
            if self.layout.size() != 0 {
                dealloc(self.ptr.as_ptr().cast(), self.layout);
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn advise_huge(p: *mut u8, bytes: usize) {
    unsafe extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    const MADV_HUGEPAGE: i32 = 14;
    // SAFETY: advisory only; the range is (part of) our own live allocation
    // and `p` is page aligned (it is 2 MiB aligned). Failure (THP disabled,
    // old kernel) is harmless and ignored.
    unsafe {
        madvise(p.cast(), bytes, MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_p: *mut u8, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn small_and_huge_buffers_hold_their_values() {
        let small = HugeBuf::new(1000, |i| i as u32);
        assert_eq!(small.len(), 1000);
        assert_eq!(small[999], 999);
        let n = HUGE_PAGE / 4 * 3 + 5;
        let big = HugeBuf::new(n, |i| i as u32);
        assert_eq!(
            big.as_ptr() as usize % HUGE_PAGE,
            0,
            "huge buffers are aligned"
        );
        assert!(big.iter().enumerate().all(|(i, &x)| x == i as u32));
        let empty: HugeBuf<u64> = HugeBuf::new(0, |_| 1);
        assert!(empty.is_empty());
    }

    struct Counted<'a>(&'a AtomicUsize);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_element_is_dropped_once() {
        let drops = AtomicUsize::new(0);
        drop(HugeBuf::new(HUGE_PAGE / 8 + 3, |_| Counted(&drops)));
        assert_eq!(drops.load(Ordering::Relaxed), HUGE_PAGE / 8 + 3);
    }

    #[test]
    fn a_panicking_initialiser_drops_what_was_built() {
        let drops = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            HugeBuf::new(10, |i| {
                assert!(i < 4, "boom");
                Counted(&drops)
            })
        }));
        assert!(r.is_err());
        assert_eq!(drops.load(Ordering::Relaxed), 4);
    }
}
