//! Session consistency tokens: issued by writes, checked by reads.
//!
//! A token names the index it was issued for and that index's shard count, and per shard the
//! log index the write was applied at. A read refuses (INVALID_ARGUMENT / 400) a token of
//! another index or shard layout, a shard number outside the layout, and a shard listed
//! twice; the shard's leader then refuses a log index beyond its last log index (see
//! `Node::read_barrier`).
//!
//! Tokens issued before the identity fields existed have an empty `index` and a
//! `shard_count` of 0. They are still accepted: the identity checks are skipped for them,
//! the shard-number and log-index checks are not.

use std::collections::BTreeSet;

use kindex_proto as pb;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the session token was issued by index {token:?}; this request reads index {serves:?}")]
    OtherIndex { token: String, serves: String },
    #[error(
        "the session token was issued for a layout of {token} shards; index {index:?} has {shards}"
    )]
    OtherLayout {
        token: u32,
        index: String,
        shards: u32,
    },
    #[error("the session token names shard {shard}; index {index:?} has shards 0..{shards}")]
    NoSuchShard {
        shard: u32,
        index: String,
        shards: u32,
    },
    #[error("the session token lists shard {0} more than once")]
    DuplicateShard(u32),
}

/// A token for one shard's write.
pub fn issue(
    index: &str,
    shard_count: u32,
    shard: u32,
    applied_index: u64,
) -> pb::ConsistencyToken {
    pb::ConsistencyToken {
        shards: vec![pb::ShardIndex {
            shard,
            applied_index,
        }],
        index: index.to_string(),
        shard_count,
    }
}

/// Checks a token against the index a read goes to (`index`, with `shards` shards).
pub fn check(t: &pb::ConsistencyToken, index: &str, shards: u32) -> Result<(), TokenError> {
    if !t.index.is_empty() && t.index != index {
        return Err(TokenError::OtherIndex {
            token: t.index.clone(),
            serves: index.to_string(),
        });
    }
    if t.shard_count != 0 && t.shard_count != shards {
        return Err(TokenError::OtherLayout {
            token: t.shard_count,
            index: index.to_string(),
            shards,
        });
    }
    let mut seen = BTreeSet::new();
    for s in &t.shards {
        if s.shard >= shards {
            return Err(TokenError::NoSuchShard {
                shard: s.shard,
                index: index.to_string(),
                shards,
            });
        }
        if !seen.insert(s.shard) {
            return Err(TokenError::DuplicateShard(s.shard));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(index: &str, shard_count: u32, shards: &[(u32, u64)]) -> pb::ConsistencyToken {
        pb::ConsistencyToken {
            index: index.into(),
            shard_count,
            shards: shards
                .iter()
                .map(|&(shard, applied_index)| pb::ShardIndex {
                    shard,
                    applied_index,
                })
                .collect(),
        }
    }

    #[test]
    fn tokens_of_this_index_and_layout_pass() {
        check(&issue("docs", 2, 1, 7), "docs", 2).unwrap();
        check(&t("docs", 2, &[(0, 3), (1, 9)]), "docs", 2).unwrap();
        check(&t("docs", 2, &[]), "docs", 2).unwrap();
    }

    #[test]
    fn tokens_of_another_index_or_layout_are_refused() {
        let e = check(&t("other", 2, &[(0, 1)]), "docs", 2).unwrap_err();
        assert!(e.to_string().contains("issued by index \"other\""), "{e}");
        let e = check(&t("docs", 4, &[(0, 1)]), "docs", 2).unwrap_err();
        assert!(e.to_string().contains("layout of 4 shards"), "{e}");
        let e = check(&t("docs", 2, &[(2, 1)]), "docs", 2).unwrap_err();
        assert!(e.to_string().contains("names shard 2"), "{e}");
        let e = check(&t("docs", 2, &[(1, 1), (1, 2)]), "docs", 2).unwrap_err();
        assert_eq!(e, TokenError::DuplicateShard(1));
    }

    /// Tokens from before the identity fields: accepted, shard numbers still checked.
    #[test]
    fn old_tokens_without_identity() {
        check(&t("", 0, &[(0, 5), (1, 2)]), "docs", 2).unwrap();
        assert!(check(&t("", 0, &[(3, 5)]), "docs", 2).is_err());
    }

    proptest! {
        /// Any token (arbitrary identity, shard numbers, indexes): `check` never panics,
        /// and accepts exactly the tokens that fit the index.
        #[test]
        fn check_accepts_exactly_fitting_tokens(
            index in prop::sample::select(vec!["", "docs", "other"]),
            shard_count in 0u32..6,
            shards in prop::collection::vec((0u32..6, any::<u64>()), 0..6),
        ) {
            let tok = t(index, shard_count, &shards);
            let fits = (index.is_empty() || index == "docs")
                && (shard_count == 0 || shard_count == 3)
                && shards.iter().all(|s| s.0 < 3)
                && shards.iter().map(|s| s.0).collect::<BTreeSet<_>>().len() == shards.len();
            prop_assert_eq!(check(&tok, "docs", 3).is_ok(), fits);
        }
    }
}
