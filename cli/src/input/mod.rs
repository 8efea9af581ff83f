//! Vector file readers for `upsert` and `search --vector-file`.
//!
//! The readers are pure (generic over `Read + Seek`) so they are unit-tested on
//! in-memory buffers; `Source` wraps one of them over a file and turns rows
//! into points with ids.

pub mod fvecs;
pub mod jsonl;
pub mod npy;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// A file that cannot be read as vectors, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Invalid(String),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

pub fn invalid(msg: impl Into<String>) -> InputError {
    InputError::Invalid(msg.into())
}

/// Decodes little-endian f32s from `bytes` (a multiple of 4 long) into `out`.
pub(crate) fn f32s_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Npy,
    Fvecs,
    Jsonl,
}

impl Format {
    /// Guesses the format from the file extension.
    pub fn guess(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "npy" => Some(Format::Npy),
            "fvecs" => Some(Format::Fvecs),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// One point ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload_json: Option<String>,
}

type FileReader = BufReader<File>;

/// A vector file opened for reading rows in order, with random access by row
/// (used by `--start-row`, `--resume` and `search --row`).
pub enum Source {
    Npy(npy::NpyReader<FileReader>, String),
    Fvecs(fvecs::FvecsReader<FileReader>, String),
    Jsonl(jsonl::JsonlReader<FileReader>),
}

impl Source {
    /// Opens `path`; `id_prefix` names rows of npy/fvecs files (`<prefix><row>`).
    /// `stride` is how often the jsonl reader remembers a line offset.
    pub fn open(
        path: &Path,
        format: Option<Format>,
        id_prefix: &str,
        stride: usize,
    ) -> anyhow::Result<Source> {
        use anyhow::Context;
        let format = match format.or_else(|| Format::guess(path)) {
            Some(f) => f,
            None => anyhow::bail!(
                "cannot tell the format of {} from its extension; pass --format npy|fvecs|jsonl",
                path.display()
            ),
        };
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let r = BufReader::with_capacity(1 << 20, file);
        let ctx = || format!("reading {}", path.display());
        Ok(match format {
            Format::Npy => {
                Source::Npy(npy::NpyReader::open(r).with_context(ctx)?, id_prefix.into())
            }
            Format::Fvecs => Source::Fvecs(
                fvecs::FvecsReader::open(r).with_context(ctx)?,
                id_prefix.into(),
            ),
            Format::Jsonl => Source::Jsonl(jsonl::JsonlReader::open(r, stride).with_context(ctx)?),
        })
    }

    pub fn rows(&self) -> u64 {
        match self {
            Source::Npy(r, _) => r.rows(),
            Source::Fvecs(r, _) => r.rows(),
            Source::Jsonl(r) => r.rows(),
        }
    }

    /// The vector dimension (for jsonl: of the first record), None if empty.
    pub fn dimension(&self) -> Option<usize> {
        match self {
            Source::Npy(r, _) => (r.rows() > 0).then_some(r.dim()),
            Source::Fvecs(r, _) => r.dim(),
            Source::Jsonl(r) => r.dim(),
        }
    }

    pub fn seek_row(&mut self, row: u64) -> Result<(), InputError> {
        match self {
            Source::Npy(r, _) => r.seek_row(row),
            Source::Fvecs(r, _) => r.seek_row(row),
            Source::Jsonl(r) => r.seek_row(row),
        }
    }

    /// The id of `row`; moves the read position.
    pub fn id_at(&mut self, row: u64) -> Result<String, InputError> {
        match self {
            Source::Npy(_, p) | Source::Fvecs(_, p) => Ok(format!("{p}{row}")),
            Source::Jsonl(r) => {
                r.seek_row(row)?;
                r.next_record()?
                    .map(|rec| rec.id)
                    .ok_or_else(|| invalid(format!("row {row} is past the end of the file")))
            }
        }
    }

    /// Reads up to `max` rows from the current position into `out` (cleared
    /// first); `out` is empty at the end of the file.
    pub fn next_batch(&mut self, max: usize, out: &mut Vec<Row>) -> Result<(), InputError> {
        out.clear();
        while out.len() < max {
            let row = match self {
                Source::Npy(r, prefix) => {
                    let n = r.position();
                    r.next_row()?.map(|vector| Row {
                        id: format!("{prefix}{n}"),
                        vector,
                        payload_json: None,
                    })
                }
                Source::Fvecs(r, prefix) => {
                    let n = r.position();
                    r.next_row()?.map(|vector| Row {
                        id: format!("{prefix}{n}"),
                        vector,
                        payload_json: None,
                    })
                }
                Source::Jsonl(r) => r.next_record()?.map(|rec| Row {
                    id: rec.id,
                    vector: rec.vector,
                    payload_json: rec.payload_json,
                }),
            };
            match row {
                Some(row) => out.push(row),
                None => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_format_from_extension() {
        assert_eq!(Format::guess(Path::new("a/b.NPY")), Some(Format::Npy));
        assert_eq!(Format::guess(Path::new("x.fvecs")), Some(Format::Fvecs));
        assert_eq!(Format::guess(Path::new("x.jsonl")), Some(Format::Jsonl));
        assert_eq!(Format::guess(Path::new("x.csv")), None);
        assert_eq!(Format::guess(Path::new("noext")), None);
    }

    #[test]
    fn source_names_rows_with_prefix_and_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.npy");
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        std::fs::write(
            &path,
            npy::tests::npy_bytes(1, "<f4", false, "(6, 2)", &data),
        )
        .unwrap();
        let mut s = Source::open(&path, None, "doc-", 4).unwrap();
        assert_eq!((s.rows(), s.dimension()), (6, Some(2)));
        let mut out = Vec::new();
        s.seek_row(4).unwrap();
        s.next_batch(10, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id, "doc-4");
        assert_eq!(out[1].vector, vec![10.0, 11.0]);
        s.next_batch(10, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(s.id_at(3).unwrap(), "doc-3");
    }
}
