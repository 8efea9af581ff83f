//! A (distance, slot) pair and its orders: the one currency of the graph, the
//! search and compaction.

use std::cmp::Ordering as CmpOrdering;

/// A (distance, slot) pair ordered by distance, then slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub dist: f32,
    pub id: u32,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Scored {
    /// Order for choosing links: by distance, ties newest slot first. Slots are
    /// never reused and every rewrite takes a new one, so among exact
    /// duplicates the newest is the one that may be live; oldest-first once
    /// filled a list with tombstoned copies and cut the live one off.
    pub fn link_order(a: &Scored, b: &Scored) -> CmpOrdering {
        a.dist.total_cmp(&b.dist).then(b.id.cmp(&a.id))
    }
}

/// Min-heap adapter.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Near(pub(crate) std::cmp::Reverse<Scored>);
