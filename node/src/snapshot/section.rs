//! One checksummed section file:
//!
//! ```text
//! "KIDXSECT" | u32 format version | u32 kind | u64 payload length | payload | u32 crc32c(payload)
//! ```
//! (little endian). Written streaming: the length is patched in at the end,
//! so a section never needs a second copy in memory.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"KIDXSECT";
pub const HEADER_LEN: usize = 24;
pub const TRAILER_LEN: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Manifest = 1,
    Ids = 2,
    Vectors = 3,
    Payloads = 4,
    States = 5,
    Graph = 6,
    Raft = 7,
    /// Format 1 only: a bitset of deleted slots (replaced by `States`).
    TombstonesV1 = 8,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Manifest,
        Kind::Ids,
        Kind::Vectors,
        Kind::Payloads,
        Kind::States,
        Kind::Graph,
        Kind::Raft,
        Kind::TombstonesV1,
    ];

    pub fn from_file_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.file_name() == name)
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest.sect",
            Kind::Ids => "ids.sect",
            Kind::Vectors => "vectors.sect",
            Kind::Payloads => "payloads.sect",
            Kind::States => "states.sect",
            Kind::Graph => "graph.sect",
            Kind::Raft => "raft.sect",
            Kind::TombstonesV1 => "tombstones.sect",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: written by a newer kindex (snapshot format {found}, this build reads up to {supported}); \
         upgrade kindex-node instead of downgrading"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
}

pub struct SectionWriter {
    path: PathBuf,
    out: BufWriter<File>,
    crc: u32,
    len: u64,
}

impl SectionWriter {
    pub fn create(path: &Path, version: u32, kind: Kind) -> Result<Self, SectionError> {
        let io_err = |source| SectionError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io_err)?;
        out.write_all(&version.to_le_bytes()).map_err(io_err)?;
        out.write_all(&(kind as u32).to_le_bytes())
            .map_err(io_err)?;
        out.write_all(&0u64.to_le_bytes()).map_err(io_err)?;
        Ok(SectionWriter {
            path: path.to_path_buf(),
            out,
            crc: 0,
            len: 0,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), SectionError> {
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.len += data.len() as u64;
        self.out.write_all(data).map_err(|source| SectionError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the trailer, patches the length, fsyncs. Returns (file bytes, crc).
    pub fn finish(mut self) -> Result<(u64, u32), SectionError> {
        let path = self.path.clone();
        let io_err = |source| SectionError::Io {
            path: path.clone(),
            source,
        };
        self.out
            .write_all(&self.crc.to_le_bytes())
            .map_err(io_err)?;
        let mut file = self.out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.seek(SeekFrom::Start(16)).map_err(io_err)?;
        file.write_all(&self.len.to_le_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok((self.len + (HEADER_LEN + TRAILER_LEN) as u64, self.crc))
    }
}

/// A validated section: its payload sits at `bytes[HEADER_LEN..end]`.
pub struct Section {
    pub version: u32,
    bytes: Vec<u8>,
}

impl Section {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - TRAILER_LEN]
    }
}

/// Reads a whole section in one bulk read and validates every header field
/// and the checksum.
pub fn read(path: &Path, kind: Kind, max_version: u32) -> Result<Section, SectionError> {
    let bytes = std::fs::read(path).map_err(|source| SectionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, bytes, kind, max_version)
}

pub fn parse(
    path: &Path,
    bytes: Vec<u8>,
    kind: Kind,
    max_version: u32,
) -> Result<Section, SectionError> {
    let corrupt = |reason: String| SectionError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(corrupt(format!(
            "{} bytes is too short for a section",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic: not a kindex snapshot section".into()));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let version = u32_at(8);
    if version == 0 {
        return Err(corrupt("format version 0 is invalid".into()));
    }
    if version > max_version {
        return Err(SectionError::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: max_version,
        });
    }
    let found_kind = u32_at(12);
    if found_kind != kind as u32 {
        return Err(corrupt(format!(
            "section kind {found_kind}, expected {} ({kind:?})",
            kind as u32
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len8);
    let expected = (bytes.len() - HEADER_LEN - TRAILER_LEN) as u64;
    if len != expected {
        return Err(corrupt(format!(
            "header says {len} payload bytes, file holds {expected} (truncated or padded)"
        )));
    }
    let end = bytes.len() - TRAILER_LEN;
    let stored = u32_at(end);
    let actual = crc32c::crc32c(&bytes[HEADER_LEN..end]);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    Ok(Section { version, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_byte_flip_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sect");
        let mut w = SectionWriter::create(&p, 2, Kind::Ids).unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        let (bytes, _) = w.finish().unwrap();
        let s = read(&p, Kind::Ids, 2).unwrap();
        assert_eq!(s.payload(), b"hello world");
        assert_eq!(bytes as usize, std::fs::read(&p).unwrap().len());
        let good = std::fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            assert!(
                parse(&p, bad, Kind::Ids, 2).is_err(),
                "flip at byte {i} not detected"
            );
        }
        assert!(parse(&p, good[..good.len() - 1].to_vec(), Kind::Ids, 2).is_err());
        assert!(matches!(
            read(&p, Kind::Graph, 2),
            Err(SectionError::Corrupt { .. })
        ));
        assert!(matches!(
            read(&p, Kind::Ids, 1),
            Err(SectionError::NewerFormat { found: 2, .. })
        ));
    }
}
