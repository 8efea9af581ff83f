//! Structural configuration: the parameters the stored data was built with. Changing
//! any of them invalidates the data, so the node persists them next to it (and in every
//! snapshot) with their hash, and the operator stamps the same hash on the pods.
//!
//! The hash and the serde shape are on-disk formats: existing data dirs carry them, so
//! they never change (pinned by the tests below).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::metric::Metric;

/// How the graph stores and compares vectors besides the f32 originals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// f32 vectors only (what every data dir written before this field holds).
    #[default]
    None,
    /// Scalar int8 codes for graph traversal, exact rescoring with the f32 vectors.
    Int8,
    /// One bit per dimension for graph traversal (the graph is linked on f32 distances),
    /// exact rescoring with the f32 vectors. Meant for high dimensions (≥ 384).
    Binary,
}

impl Quantization {
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::Int8 => "int8",
            Quantization::Binary => "binary",
        }
    }

    pub fn parse(s: &str) -> Option<Quantization> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Quantization::None),
            "int8" => Some(Quantization::Int8),
            "binary" => Some(Quantization::Binary),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Quantization::None
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Field order is the persisted `structural.json` order; never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StructuralConfig {
    pub dimension: u32,
    pub metric: Metric,
    pub m: u32,
    pub ef_construction: u32,
    pub shards: u32,
    /// Absent in files written before it existed (they load as `none`) and never
    /// written when `none`, so those files and their hashes stay byte-identical.
    #[serde(default, skip_serializing_if = "Quantization::is_none")]
    pub quantization: Quantization,
}

/// A structural field whose persisted value differs from the configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// The field's name in `structural.json` (`efConstruction`, not `ef_construction`).
    pub field: &'static str,
    pub data: String,
    pub configured: String,
}

/// A structural value out of the range the node can build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidStructural(pub &'static str);

impl StructuralConfig {
    pub fn validate(&self) -> Result<(), InvalidStructural> {
        let bad = |s| Err(InvalidStructural(s));
        if !(1..=65_536).contains(&self.dimension) {
            return bad("dimension must be in 1..=65536");
        }
        if !(2..=256).contains(&self.m) {
            return bad("m must be in 2..=256");
        }
        if !(1..=4096).contains(&self.ef_construction) {
            return bad("efConstruction must be in 1..=4096");
        }
        if !(1..=1024).contains(&self.shards) {
            return bad("shards must be in 1..=1024");
        }
        Ok(())
    }

    /// Canonical text form: the hash input; field order is fixed here, never by a
    /// serializer. `quantization` is appended only when it is not `none`, so every
    /// config that existed before the field keeps its hash.
    pub fn canonical(&self) -> String {
        let mut s = format!(
            "dimension={};metric={};m={};efConstruction={};shards={}",
            self.dimension, self.metric, self.m, self.ef_construction, self.shards
        );
        if !self.quantization.is_none() {
            s.push_str(";quantization=");
            s.push_str(self.quantization.as_str());
        }
        s
    }

    /// Stable 64-bit hash in hex: persisted in data dirs, reported by the node in
    /// `StatusResponse.structural_hash`, stamped by the operator on the pods.
    pub fn hash(&self) -> String {
        format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(self.canonical().as_bytes())
        )
    }

    /// Fields that differ, persisted (`self`) vs configured (`other`), in field order.
    pub fn diff(&self, configured: &StructuralConfig) -> Vec<FieldDiff> {
        let fields = |s: &StructuralConfig| {
            [
                ("dimension", s.dimension.to_string()),
                ("metric", s.metric.to_string()),
                ("m", s.m.to_string()),
                ("efConstruction", s.ef_construction.to_string()),
                ("shards", s.shards.to_string()),
                ("quantization", s.quantization.to_string()),
            ]
        };
        fields(self)
            .into_iter()
            .zip(fields(configured))
            .filter(|((_, a), (_, b))| a != b)
            .map(|((field, data), (_, configured))| FieldDiff {
                field,
                data,
                configured,
            })
            .collect()
    }
}

impl fmt::Display for StructuralConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// The `structural.json` record: the config plus its hash, to catch hand edits and bit
/// rot. The node writes it into its data dir; the operator into the index ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StructuralDoc {
    pub structural: StructuralConfig,
    pub hash: String,
}

impl StructuralDoc {
    pub fn new(s: &StructuralConfig) -> Self {
        Self {
            structural: s.clone(),
            hash: s.hash(),
        }
    }

    /// The recorded config if its hash matches it; else the mismatch, for an error.
    pub fn verified(&self) -> Result<StructuralConfig, String> {
        let want = self.structural.hash();
        if want == self.hash {
            Ok(self.structural.clone())
        } else {
            Err(format!(
                "hash {} does not match its content (expected {want}); the file was edited or damaged",
                self.hash
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dimension: u32, metric: Metric, m: u32, ef: u32, shards: u32) -> StructuralConfig {
        StructuralConfig {
            dimension,
            metric,
            m,
            ef_construction: ef,
            shards,
            quantization: Quantization::None,
        }
    }

    /// The hashes existing data dirs carry: printed by the node's
    /// `StructuralConfig::hash()` before this crate existed (node and operator agreed on
    /// them). A change here makes every existing data dir refuse to open.
    #[test]
    fn hash_is_pinned() {
        let table = [
            (cfg(128, Metric::Cosine, 16, 200, 1), "7e1c9cee7491a083"),
            (cfg(384, Metric::Cosine, 16, 200, 1), "74f6a5f1cbb7360a"),
            (cfg(768, Metric::Cosine, 32, 400, 3), "860eff2462980c76"),
            (cfg(3, Metric::L2, 4, 8, 2), "32ff1e7669dd2df9"),
            (cfg(10, Metric::Dot, 8, 64, 4), "941c85b936283861"),
        ];
        for (s, want) in table {
            assert_eq!(s.hash(), want, "{s}");
        }
        assert_eq!(
            cfg(128, Metric::Cosine, 16, 200, 1).canonical(),
            "dimension=128;metric=cosine;m=16;efConstruction=200;shards=1"
        );
    }

    /// The persisted shape, byte for byte (data dirs and the ConfigMap carry it).
    #[test]
    fn doc_format_is_pinned() {
        let s = cfg(768, Metric::L2, 32, 400, 3);
        let doc = StructuralDoc::new(&s);
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            text,
            r#"{"structural":{"dimension":768,"metric":"l2","m":32,"efConstruction":400,"shards":3},"hash":"c69ca77e7fa5cf9a"}"#
        );
        let back: StructuralDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verified(), Ok(s.clone()));
        let edited = StructuralDoc {
            structural: StructuralConfig { m: 33, ..s.clone() },
            ..doc
        };
        assert!(edited.verified().unwrap_err().contains("c69ca77e7fa5cf9a"));
    }

    #[test]
    fn diff_names_each_changed_field() {
        let a = cfg(128, Metric::Cosine, 16, 200, 1);
        let b = StructuralConfig {
            metric: Metric::L2,
            shards: 2,
            ..a
        };
        let d = a.diff(&b);
        assert_eq!(
            d.iter().map(|d| d.field).collect::<Vec<_>>(),
            ["metric", "shards"]
        );
        assert_eq!(
            (d[0].data.as_str(), d[0].configured.as_str()),
            ("cosine", "l2")
        );
        assert!(a.diff(&a).is_empty());
    }

    /// A `structural.json` written before `quantization` existed loads as `none`,
    /// verifies against its recorded hash, and re-serializes byte for byte.
    #[test]
    fn old_doc_without_quantization_loads_as_none() {
        let old = r#"{"structural":{"dimension":768,"metric":"l2","m":32,"efConstruction":400,"shards":3},"hash":"c69ca77e7fa5cf9a"}"#;
        let doc: StructuralDoc = serde_json::from_str(old).unwrap();
        let s = doc.verified().unwrap();
        assert_eq!(s.quantization, Quantization::None);
        assert_eq!(serde_json::to_string(&doc).unwrap(), old);
    }

    #[test]
    fn int8_changes_the_hash_the_json_and_the_diff() {
        let none = cfg(384, Metric::Cosine, 16, 200, 1);
        let int8 = StructuralConfig {
            quantization: Quantization::Int8,
            ..none.clone()
        };
        assert_eq!(none.hash(), "74f6a5f1cbb7360a");
        assert_eq!(
            int8.canonical(),
            "dimension=384;metric=cosine;m=16;efConstruction=200;shards=1;quantization=int8"
        );
        assert_ne!(int8.hash(), none.hash());
        let doc = StructuralDoc::new(&int8);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(
            text.contains(r#""shards":1,"quantization":"int8"}"#),
            "{text}"
        );
        let back: StructuralDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verified(), Ok(int8.clone()));
        let d = none.diff(&int8);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].field, d[0].data.as_str(), d[0].configured.as_str()),
            ("quantization", "none", "int8")
        );
        assert_eq!(Quantization::parse("INT8"), Some(Quantization::Int8));
        assert_eq!(Quantization::parse("Binary"), Some(Quantization::Binary));
        assert_eq!(Quantization::parse("pq"), None);
        let binary = StructuralConfig {
            quantization: Quantization::Binary,
            ..none.clone()
        };
        assert!(binary.canonical().ends_with(";quantization=binary"));
        assert_ne!(binary.hash(), int8.hash());
        assert_ne!(binary.hash(), none.hash());
    }

    #[test]
    fn validate_bounds() {
        assert!(cfg(128, Metric::Cosine, 16, 200, 1).validate().is_ok());
        assert!(cfg(0, Metric::Cosine, 16, 200, 1).validate().is_err());
        assert!(cfg(128, Metric::Cosine, 1, 200, 1).validate().is_err());
        assert!(cfg(128, Metric::Cosine, 16, 0, 1).validate().is_err());
        assert!(cfg(128, Metric::Cosine, 16, 200, 1025).validate().is_err());
    }
}
