//! One checksummed section file:
//!
//! ```text
//! "KIDXSECT" | u32 format version | u32 kind | u64 payload length | payload | u32 crc32c(payload)
//! ```
//! (little endian). Written streaming: the length is patched in at the end,
//! so a section never needs a second copy in memory.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
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
    /// Format 3: the shard's policy store (JSON), when it has policies.
    Policies = 9,
    /// Format 4: the ingest stamp of every slot (u64 LE, ms since the Unix epoch; 0:
    /// unstamped), when any slot has one.
    Stamps = 10,
    /// Format 5: an int8 shard's ranges (`snapshot::quant`), once it has trained them.
    Quant = 11,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Manifest,
        Kind::Ids,
        Kind::Vectors,
        Kind::Payloads,
        Kind::States,
        Kind::Graph,
        Kind::Raft,
        Kind::TombstonesV1,
        Kind::Policies,
        Kind::Stamps,
        Kind::Quant,
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
            Kind::Policies => "policies.sect",
            Kind::Stamps => "stamps.sect",
            Kind::Quant => "quant.sect",
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

/// A section written by several threads at once: its payload length is
/// known up front, so the header is final at creation and each thread writes
/// its own byte range with positional writes, returning that range's CRC;
/// `finish` takes the CRCs combined in payload order.
pub struct ParallelSection {
    path: PathBuf,
    file: File,
    len: u64,
}

impl ParallelSection {
    pub fn create(path: &Path, version: u32, kind: Kind, len: u64) -> Result<Self, SectionError> {
        let io_err = |source| SectionError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::create(path).map_err(io_err)?;
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&version.to_le_bytes());
        head.extend_from_slice(&(kind as u32).to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        file.write_all(&head).map_err(io_err)?;
        Ok(ParallelSection {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Writes `pieces` back to back from payload offset `at`; returns their
    /// CRC. Callers must cover the payload exactly once overall.
    pub fn write_range<'a>(
        &self,
        at: u64,
        pieces: impl Iterator<Item = &'a [u8]>,
    ) -> Result<u32, SectionError> {
        use std::os::unix::fs::FileExt;
        let mut pos = HEADER_LEN as u64 + at;
        let mut crc = 0;
        for p in pieces {
            if pos + p.len() as u64 > HEADER_LEN as u64 + self.len {
                return Err(SectionError::Corrupt {
                    path: self.path.clone(),
                    reason: "write past the declared payload length".into(),
                });
            }
            crc = crc32c::crc32c_append(crc, p);
            self.file
                .write_all_at(p, pos)
                .map_err(|source| SectionError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            pos += p.len() as u64;
        }
        Ok(crc)
    }

    /// Writes the trailer (`crc` of the whole payload) and fsyncs. Returns
    /// (file bytes, crc).
    pub fn finish(self, crc: u32) -> Result<(u64, u32), SectionError> {
        use std::os::unix::fs::FileExt;
        let io_err = |source| SectionError::Io {
            path: self.path.clone(),
            source,
        };
        self.file
            .write_all_at(&crc.to_le_bytes(), HEADER_LEN as u64 + self.len)
            .map_err(io_err)?;
        self.file.sync_all().map_err(io_err)?;
        Ok((self.len + (HEADER_LEN + TRAILER_LEN) as u64, crc))
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

/// Streaming reader of one section, for the big ones (vectors, graph): the
/// payload is read in caller-sized pieces straight into its final place and
/// checksummed on the way; `finish` checks length and checksum. Nothing read
/// before `finish` succeeds may be trusted (callers build a private engine
/// and drop it on any error).
pub struct SectionReader {
    path: PathBuf,
    file: File,
    pub version: u32,
    remaining: u64,
    crc: u32,
}

impl SectionReader {
    /// Opens `path` and validates the header (magic, version, kind, and the
    /// payload length against the file size).
    pub fn open(path: &Path, kind: Kind, max_version: u32) -> Result<Self, SectionError> {
        let io_err = |source| SectionError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        if size < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(SectionError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("{size} bytes is too short for a section"),
            });
        }
        let mut head = [0u8; HEADER_LEN];
        file.read_exact(&mut head).map_err(io_err)?;
        // Header checks are shared with `parse`: give it the header and an
        // empty payload whose length field matches, then compare sizes.
        let declared = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
        let expected = size - (HEADER_LEN + TRAILER_LEN) as u64;
        let mut probe = head.to_vec();
        probe[16..24].copy_from_slice(&0u64.to_le_bytes());
        probe.extend_from_slice(&crc32c::crc32c(&[]).to_le_bytes());
        let version = parse(path, probe, kind, max_version)?.version;
        if declared != expected {
            return Err(SectionError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "header says {declared} payload bytes, file holds {expected} (truncated or padded)"
                ),
            });
        }
        Ok(SectionReader {
            path: path.to_path_buf(),
            file,
            version,
            remaining: declared,
            crc: 0,
        })
    }

    /// Payload bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `buf` from the payload (an error if the payload is shorter).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SectionError> {
        if buf.len() as u64 > self.remaining {
            return Err(SectionError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "payload ends {} bytes early",
                    buf.len() as u64 - self.remaining
                ),
            });
        }
        self.file
            .read_exact(buf)
            .map_err(|source| SectionError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    /// Checks that the whole payload was consumed and that its checksum
    /// matches the trailer.
    pub fn finish(mut self) -> Result<(), SectionError> {
        if self.remaining != 0 {
            return Err(SectionError::Corrupt {
                path: self.path.clone(),
                reason: format!("{} unexpected trailing payload bytes", self.remaining),
            });
        }
        self.check_trailer()
    }

    /// Reads (and checksums) the rest of the payload and checks the trailer:
    /// used after a parse error to report a checksum mismatch, the likelier
    /// cause, instead of its symptom.
    pub fn verify_rest(mut self) -> Result<(), SectionError> {
        let mut buf = vec![0u8; 1 << 20];
        while self.remaining > 0 {
            let n = (self.remaining as usize).min(buf.len());
            self.read_exact(&mut buf[..n])?;
        }
        self.check_trailer()
    }

    fn check_trailer(&mut self) -> Result<(), SectionError> {
        let mut t = [0u8; TRAILER_LEN];
        self.file
            .read_exact(&mut t)
            .map_err(|source| SectionError::Io {
                path: self.path.clone(),
                source,
            })?;
        let stored = u32::from_le_bytes(t);
        if stored != self.crc {
            return Err(SectionError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "checksum mismatch (stored {stored:08x}, computed {:08x})",
                    self.crc
                ),
            });
        }
        Ok(())
    }
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

    fn stream(p: &Path, piece: usize) -> Result<Vec<u8>, SectionError> {
        let mut r = SectionReader::open(p, Kind::Vectors, 2)?;
        let mut out = Vec::new();
        while r.remaining() > 0 {
            let mut buf = vec![0u8; piece.min(r.remaining() as usize)];
            r.read_exact(&mut buf)?;
            out.extend_from_slice(&buf);
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn streaming_reader_round_trips_and_catches_every_byte_flip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.sect");
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let mut w = SectionWriter::create(&p, 2, Kind::Vectors).unwrap();
        w.write(&payload).unwrap();
        w.finish().unwrap();
        assert_eq!(stream(&p, 64).unwrap(), payload);
        let good = std::fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            std::fs::write(&p, &bad).unwrap();
            assert!(stream(&p, 64).is_err(), "flip at byte {i} not detected");
        }
        // Truncated and padded files are refused at open.
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(SectionReader::open(&p, Kind::Vectors, 2).is_err());
        let mut padded = good.clone();
        padded.push(0);
        std::fs::write(&p, &padded).unwrap();
        assert!(SectionReader::open(&p, Kind::Vectors, 2).is_err());
        // Reading past the payload, or finishing early, is an error.
        std::fs::write(&p, &good).unwrap();
        let mut r = SectionReader::open(&p, Kind::Vectors, 2).unwrap();
        assert!(r.read_exact(&mut [0u8; 301]).is_err());
        r.read_exact(&mut [0u8; 10]).unwrap();
        assert!(r.finish().is_err());
        // A parse error midway still surfaces a checksum mismatch.
        let mut bad = good.clone();
        bad[HEADER_LEN + 200] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let mut r = SectionReader::open(&p, Kind::Vectors, 2).unwrap();
        r.read_exact(&mut [0u8; 10]).unwrap();
        let e = r.verify_rest().unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(matches!(
            SectionReader::open(&p, Kind::Vectors, 1),
            Err(SectionError::NewerFormat { found: 2, .. })
        ));
    }

    #[test]
    fn parallel_section_equals_streamed_section() {
        let d = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
        let a = d.path().join("a.sect");
        let mut w = SectionWriter::create(&a, 2, Kind::Vectors).unwrap();
        w.write(&payload).unwrap();
        let (bytes_a, crc_a) = w.finish().unwrap();
        let b = d.path().join("b.sect");
        let p = ParallelSection::create(&b, 2, Kind::Vectors, 1000).unwrap();
        // Second range first: order of writes does not matter.
        let c2 = p
            .write_range(600, [&payload[600..800], &payload[800..]].into_iter())
            .unwrap();
        let c1 = p.write_range(0, std::iter::once(&payload[..600])).unwrap();
        let (bytes_b, crc_b) = p.finish(crc32c::crc32c_combine(c1, c2, 400)).unwrap();
        assert_eq!((bytes_a, crc_a), (bytes_b, crc_b));
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let p = ParallelSection::create(&b, 2, Kind::Vectors, 10).unwrap();
        assert!(p.write_range(5, std::iter::once(&payload[..6])).is_err());
    }
}
