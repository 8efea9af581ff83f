//! Which shard owns a point: `xxh3_64(id, seed 0) % shards` (DESIGN §2). Every node, the CLI
//! and tests use this one function, so a point always lands on the same shard.

use std::collections::BTreeMap;

/// The shard that owns `id`.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    let shards = u64::from(shards.max(1));
    // The remainder is < shards ≤ u32::MAX, so the cast is lossless.
    (xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 0) % shards) as u32
}

/// Splits items by owning shard, keeping each shard's items in request order.
pub fn group_by_shard<T>(
    items: Vec<T>,
    shards: u32,
    id: impl Fn(&T) -> &str,
) -> BTreeMap<u32, Vec<T>> {
    let mut out: BTreeMap<u32, Vec<T>> = BTreeMap::new();
    for item in items {
        out.entry(shard_of(id(&item), shards))
            .or_default()
            .push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_shard_owns_everything() {
        for id in ["", "a", "doc-1", "ü"] {
            assert_eq!(shard_of(id, 1), 0);
            assert_eq!(shard_of(id, 0), 0, "0 shards is treated as 1");
        }
    }

    #[test]
    fn routing_is_the_documented_hash() {
        // Pinned values: changing the routing function would strand existing data.
        let expect = |id: &str, shards: u64| {
            (xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 0) % shards) as u32
        };
        for id in ["doc-1", "doc-2", "x"] {
            assert_eq!(shard_of(id, 4), expect(id, 4));
        }
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(b"doc-1"),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"doc-1", 0)
        );
    }

    #[test]
    fn ids_spread_over_shards() {
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts[shard_of(&format!("id-{i}"), 4) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread {counts:?}");
        }
    }

    proptest! {
        #[test]
        fn grouping_keeps_every_item_once_in_order(ids in proptest::collection::vec("[a-z0-9]{0,12}", 0..64), shards in 1u32..8) {
            let items: Vec<(usize, String)> = ids.into_iter().enumerate().collect();
            let groups = group_by_shard(items.clone(), shards, |(_, id)| id.as_str());
            let mut seen: Vec<usize> = Vec::new();
            for (shard, group) in &groups {
                prop_assert!(*shard < shards);
                prop_assert!(group.windows(2).all(|w| w[0].0 < w[1].0), "request order kept");
                for (i, id) in group {
                    prop_assert_eq!(shard_of(id, shards), *shard);
                    seen.push(*i);
                }
            }
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..items.len()).collect::<Vec<_>>());
        }
    }
}
