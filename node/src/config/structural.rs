//! The data dir's `structural.json`: the structural config (kindex-common: the
//! parameters the stored data was built with, and their hash) persisted next to the
//! data, and the start-up check that the configured values still match it.

use std::path::Path;

pub use kindex_common::structural::{
    FieldDiff, InvalidStructural, StructuralConfig, StructuralDoc,
};

use crate::fsutil;

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

impl From<InvalidStructural> for StructuralError {
    fn from(e: InvalidStructural) -> Self {
        StructuralError::Invalid(e.to_string())
    }
}

fn describe(diffs: &[FieldDiff], v: impl Fn(&FieldDiff) -> &String) -> String {
    diffs
        .iter()
        .map(|d| format!("{}={}", d.field, v(d)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Errors naming each field if `persisted` differs from `configured`.
pub fn check_against(
    configured: &StructuralConfig,
    persisted: &StructuralConfig,
    dir: &Path,
) -> Result<(), StructuralError> {
    let diffs = persisted.diff(configured);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(StructuralError::Mismatch {
            dir: dir.display().to_string(),
            diffs,
        })
    }
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
    let doc: StructuralDoc = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    doc.verified().map(Some).map_err(corrupt)
}

/// Persists the structural config atomically.
pub fn store(dir: &Path, s: &StructuralConfig) -> Result<(), StructuralError> {
    let path = dir.join(FILE_NAME);
    let body = serde_json::to_vec_pretty(&StructuralDoc::new(s))
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
        Some(persisted) => check_against(configured, &persisted, dir),
        None => store(dir, configured),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindex_common::Metric;

    pub fn sample() -> StructuralConfig {
        StructuralConfig {
            dimension: 128,
            metric: Metric::Cosine,
            m: 16,
            ef_construction: 200,
            shards: 1,
            quantization: Default::default(),
        }
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
