//! Per-thread "visited" marks for graph searches, reset in O(1) by bumping an
//! epoch instead of clearing memory.

use std::cell::RefCell;

pub struct Visited {
    marks: Vec<u16>,
    epoch: u16,
}

impl Default for Visited {
    fn default() -> Self {
        Visited::new()
    }
}

impl Visited {
    pub const fn new() -> Visited {
        Visited {
            marks: Vec::new(),
            epoch: 0,
        }
    }

    /// Starts a new search over up to `capacity` slots (more grow on demand).
    pub fn prepare(&mut self, capacity: usize) {
        if self.marks.len() < capacity {
            self.marks.resize(capacity.next_power_of_two(), 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    /// Hints the CPU to load the mark of `i` (no-op when out of range).
    #[inline(always)]
    pub fn prefetch(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(m) = self.marks.get(i as usize) {
            // SAFETY: prefetch has no architectural effect and never faults;
            // the address is inside `marks` anyway.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch((m as *const u16).cast::<i8>(), _MM_HINT_T0);
            }
        }
    }

    /// Marks `i`; true if it was not marked in this search yet.
    #[inline(always)]
    pub fn insert(&mut self, i: u32) -> bool {
        let i = i as usize;
        if i >= self.marks.len() {
            // A slot published after this search began (a concurrent insert
            // linked it): grow instead of indexing out of bounds.
            self.marks.resize((i + 1).next_power_of_two(), 0);
        }
        let m = &mut self.marks[i];
        if *m == self.epoch {
            false
        } else {
            *m = self.epoch;
            true
        }
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), epoch: 0 }) };
}

/// Runs `f` with this thread's visited set, sized for `capacity` slots.
pub fn with_visited<R>(capacity: usize, f: impl FnOnce(&mut Visited) -> R) -> R {
    VISITED.with(|v| match v.try_borrow_mut() {
        Ok(mut v) => {
            v.prepare(capacity);
            f(&mut v)
        }
        // Re-entrant use (not expected): fall back to a fresh set.
        Err(_) => {
            let mut v = Visited {
                marks: Vec::new(),
                epoch: 0,
            };
            v.prepare(capacity);
            f(&mut v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_reset_between_searches() {
        with_visited(10, |v| {
            assert!(v.insert(3));
            assert!(!v.insert(3));
        });
        with_visited(10, |v| assert!(v.insert(3)));
    }

    #[test]
    fn slots_beyond_the_prepared_capacity_grow_the_set() {
        with_visited(4, |v| {
            assert!(v.insert(3));
            assert!(v.insert(1025));
            assert!(!v.insert(1025));
        });
    }

    #[test]
    fn epoch_wrap_clears() {
        for _ in 0..70_000 {
            with_visited(4, |v| {
                assert!(v.insert(1));
            });
        }
    }
}
