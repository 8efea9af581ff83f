//! Combining per-shard answers: top-k merge of search hits, union of consistency tokens.

use std::collections::BTreeMap;

use kindex_proto as pb;

/// The `k` closest hits of all shards' top-k lists (smaller distance first; ties by id, so
/// the order does not depend on which shard answered first).
pub fn top_k(per_shard: Vec<Vec<pb::ScoredPoint>>, k: usize) -> Vec<pb::ScoredPoint> {
    let mut all: Vec<pb::ScoredPoint> = per_shard.into_iter().flatten().collect();
    all.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| a.id.cmp(&b.id))
    });
    all.truncate(k);
    all
}

/// One token holding the highest applied index seen per shard (and the parts' identity).
pub fn tokens(parts: impl IntoIterator<Item = pb::ConsistencyToken>) -> pb::ConsistencyToken {
    let mut by_shard: BTreeMap<u32, u64> = BTreeMap::new();
    let (mut index, mut shard_count) = (String::new(), 0);
    for t in parts {
        if index.is_empty() {
            index = t.index;
            shard_count = t.shard_count;
        }
        for s in t.shards {
            let e = by_shard.entry(s.shard).or_default();
            *e = (*e).max(s.applied_index);
        }
    }
    pb::ConsistencyToken {
        index,
        shard_count,
        shards: by_shard
            .into_iter()
            .map(|(shard, applied_index)| pb::ShardIndex {
                shard,
                applied_index,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(id: &str, d: f32) -> pb::ScoredPoint {
        pb::ScoredPoint {
            id: id.into(),
            distance: d,
            ..Default::default()
        }
    }

    #[test]
    fn merges_sorted_lists_into_global_top_k() {
        let got = top_k(
            vec![
                vec![hit("a", 0.1), hit("c", 0.5)],
                vec![hit("b", 0.2), hit("d", 0.3)],
                vec![],
            ],
            3,
        );
        let ids: Vec<&str> = got.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d"]);
    }

    #[test]
    fn ties_break_by_id() {
        let got = top_k(vec![vec![hit("z", 1.0)], vec![hit("m", 1.0)]], 2);
        assert_eq!(got[0].id, "m");
    }

    #[test]
    fn tokens_keep_the_highest_index_per_shard() {
        let t = |s: u32, i: u64| pb::ConsistencyToken {
            shards: vec![pb::ShardIndex {
                shard: s,
                applied_index: i,
            }],
            ..Default::default()
        };
        let merged = tokens([t(1, 5), t(0, 7), t(1, 3)]);
        assert_eq!(
            merged.shards,
            vec![
                pb::ShardIndex {
                    shard: 0,
                    applied_index: 7
                },
                pb::ShardIndex {
                    shard: 1,
                    applied_index: 5
                }
            ]
        );
    }

    proptest! {
        #[test]
        fn top_k_equals_sorting_everything(lists in proptest::collection::vec(proptest::collection::vec(0u16..1000, 0..20), 0..5), k in 0usize..30) {
            let per_shard: Vec<Vec<pb::ScoredPoint>> = lists.iter().enumerate().map(|(s, l)| {
                l.iter().enumerate().map(|(i, d)| hit(&format!("{s}-{i}"), f32::from(*d))).collect()
            }).collect();
            let got = top_k(per_shard.clone(), k);
            let mut all: Vec<(u16, String)> = lists.iter().enumerate().flat_map(|(s, l)| {
                l.iter().enumerate().map(move |(i, d)| (*d, format!("{s}-{i}")))
            }).collect();
            all.sort();
            all.truncate(k);
            let want: Vec<String> = all.into_iter().map(|(_, id)| id).collect();
            let got: Vec<String> = got.into_iter().map(|h| h.id).collect();
            prop_assert_eq!(got, want);
        }
    }
}
