//! The structural hash the nodes report, computed the same way as the node's
//! `StructuralConfig::hash()` (node/src/config/structural.rs) without depending on the
//! node crate: xxh3-64 of a canonical text whose field order is fixed here.

use kindex_crds::StructuralSpec;
use serde::{Deserialize, Serialize};

/// `dimension=…;metric=…;m=…;efConstruction=…;shards=…`, exactly as the node writes it.
pub fn canonical(s: &StructuralSpec) -> String {
    format!(
        "dimension={};metric={};m={};efConstruction={};shards={}",
        s.dimension, s.metric, s.m, s.ef_construction, s.shards
    )
}

/// The hash a node built with `s` reports in `StatusResponse.structural_hash`.
pub fn hash(s: &StructuralSpec) -> String {
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(canonical(s).as_bytes())
    )
}

/// The `structural.json` key of the ConfigMap: the same shape as the node's persisted
/// `structural.json` (`{"structural": {...}, "hash": "..."}`), so an operator reading it
/// back knows what the existing pods were built with.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StructuralDoc {
    pub structural: StructuralFields,
    pub hash: String,
}

/// Field order and names of the node's `StructuralConfig`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StructuralFields {
    pub dimension: u32,
    pub metric: kindex_crds::Metric,
    pub m: u32,
    pub ef_construction: u32,
    pub shards: u32,
}

impl StructuralDoc {
    pub fn new(s: &StructuralSpec) -> Self {
        Self {
            structural: StructuralFields {
                dimension: s.dimension,
                metric: s.metric,
                m: s.m,
                ef_construction: s.ef_construction,
                shards: s.shards,
            },
            hash: hash(s),
        }
    }

    pub fn spec(&self) -> StructuralSpec {
        let f = &self.structural;
        StructuralSpec {
            dimension: f.dimension,
            metric: f.metric,
            shards: f.shards,
            m: f.m,
            ef_construction: f.ef_construction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindex_crds::Metric;

    fn spec(dimension: u32, metric: Metric, m: u32, ef: u32, shards: u32) -> StructuralSpec {
        StructuralSpec {
            dimension,
            metric,
            shards,
            m,
            ef_construction: ef,
        }
    }

    /// Values printed by the node's own `StructuralConfig::hash()` (a throwaway binary
    /// linked against kindex-node); if the node's canonical form changes, this fails.
    #[test]
    fn hash_matches_the_node() {
        let table = [
            (spec(128, Metric::Cosine, 16, 200, 1), HASH_128_COSINE),
            (spec(384, Metric::Cosine, 16, 200, 1), HASH_384_COSINE),
            (spec(768, Metric::Cosine, 32, 400, 3), HASH_768_COSINE),
            (spec(3, Metric::L2, 4, 8, 2), HASH_3_L2),
            (spec(10, Metric::Dot, 8, 64, 4), HASH_10_DOT),
        ];
        for (s, want) in table {
            assert_eq!(hash(&s), want, "{}", canonical(&s));
        }
    }

    #[test]
    fn canonical_text_is_the_nodes() {
        assert_eq!(
            canonical(&spec(128, Metric::Cosine, 16, 200, 1)),
            "dimension=128;metric=cosine;m=16;efConstruction=200;shards=1"
        );
    }

    #[test]
    fn doc_round_trips() {
        let s = spec(768, Metric::L2, 32, 400, 3);
        let doc = StructuralDoc::new(&s);
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"structural":{{"dimension":768,"metric":"l2","m":32,"efConstruction":400,"shards":3}},"hash":"{}"}}"#,
                hash(&s)
            )
        );
        let back: StructuralDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back.spec(), s);
    }

    const HASH_128_COSINE: &str = "7e1c9cee7491a083";
    const HASH_384_COSINE: &str = "74f6a5f1cbb7360a";
    const HASH_768_COSINE: &str = "860eff2462980c76";
    const HASH_3_L2: &str = "32ff1e7669dd2df9";
    const HASH_10_DOT: &str = "941c85b936283861";
}
