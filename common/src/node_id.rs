//! Raft node ids of operator-managed pods: the pod ordinal in the low 16 bits and the
//! volume's incarnation above them.
//!
//! Why an incarnation: a replica whose volume is lost comes back empty at the same pod
//! name and address. Under its old id it would be a voter with no log, and its vote could
//! elect a leader that lacks committed entries (etcd gives every new member a new ID for
//! the same reason). So every fresh volume gets a new random incarnation, and the operator
//! replaces the old member by the new one in Raft once the new one caught up.
//!
//! Incarnation 0 is the id of volumes written before incarnations existed (id = ordinal),
//! so those keep their identity. Ids stay below 2^53 (exact in JSON numbers).

/// Bits of the ordinal part.
const ORDINAL_BITS: u32 = 16;
/// Largest pod ordinal an id can carry.
pub const MAX_ORDINAL: u32 = (1 << ORDINAL_BITS) - 1;
/// Incarnations are drawn from `1..=MAX_INCARNATION`.
pub const MAX_INCARNATION: u64 = (1 << (53 - ORDINAL_BITS)) - 1;

/// The id of incarnation `incarnation` of pod `ordinal` (`ordinal ≤ MAX_ORDINAL`,
/// `incarnation ≤ MAX_INCARNATION`; larger values are masked).
pub fn compose(ordinal: u32, incarnation: u64) -> u64 {
    ((incarnation & MAX_INCARNATION) << ORDINAL_BITS) | u64::from(ordinal & MAX_ORDINAL)
}

/// The pod ordinal of a node id.
pub fn ordinal_of(id: u64) -> u32 {
    (id & u64::from(MAX_ORDINAL)) as u32
}

/// The incarnation of a node id (0: a volume from before incarnations).
pub fn incarnation_of(id: u64) -> u64 {
    id >> ORDINAL_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_legacy_ids_are_ordinals() {
        for (ord, inc) in [
            (0, 0),
            (2, 0),
            (7, 1),
            (MAX_ORDINAL, MAX_INCARNATION),
            (3, 12345),
        ] {
            let id = compose(ord, inc);
            assert_eq!((ordinal_of(id), incarnation_of(id)), (ord, inc));
            assert!(id < 1 << 53);
        }
        assert_eq!(compose(4, 0), 4, "incarnation 0 is the pre-incarnation id");
        assert_ne!(compose(1, 1), compose(1, 2));
    }
}
