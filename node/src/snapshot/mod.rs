//! Snapshots: the full state of a shard's engine at an applied log id, as a
//! directory of checksummed section files plus a manifest.
//!
//! Written into `.tmp-<name>/`, every file fsynced, renamed to `<name>/`, then
//! the parent fsynced: a crash at any point leaves either the old set of
//! snapshots or the old set plus a complete new one. Loading validates every
//! section; a damaged newest snapshot falls back to the previous one.

pub mod section;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::StructuralConfig;
use crate::config::structural::{FieldDiff, StructuralError};
use crate::engine::hnsw::Hnsw;
use crate::engine::{AppliedLog, DELETED, Engine, EngineKnobs, IdIndex, Inner, LIVE, PURGED};
use crate::fsutil;
use section::{Kind, ParallelSection, Section, SectionError, SectionReader, SectionWriter};

/// Format 2: per-slot state section (live / deleted / purged).
/// Format 1: a deleted-slot bitset; migrated on load.
pub const FORMAT_VERSION: u32 = 2;
pub const OLDEST_READABLE: u32 = 1;
const PREFIX: &str = "snap-";
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Section(#[from] SectionError),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Structural(#[from] StructuralError),
}

impl SnapshotError {
    /// Errors that must stop start-up rather than fall back to an older
    /// snapshot: data from a newer build or built with other parameters.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SnapshotError::Section(SectionError::NewerFormat { .. }) | SnapshotError::Structural(_)
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub slots: u64,
    pub live: u64,
    pub tombstoned: u64,
    pub purged: u64,
    pub indexed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SectionInfo {
    pub file: String,
    pub bytes: u64,
    pub crc32c: String,
}

/// Self-description of a snapshot, stored (checksummed) in `manifest.sect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub kindex_version: String,
    pub structural: StructuralConfig,
    pub structural_hash: String,
    pub applied: Option<AppliedLog>,
    pub counts: Counts,
    pub content_checksum: u64,
    pub saved_at_unix_ms: u64,
    pub sections: Vec<SectionInfo>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.sections.iter().map(|s| s.bytes).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Saved {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub bytes: u64,
    pub duration: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn snapshot_name(applied: Option<AppliedLog>, saved_at: u64) -> String {
    let a = applied.unwrap_or_default();
    format!("{PREFIX}{:020}-{:010}-{saved_at:013}", a.index, a.term)
}

struct Writer {
    dir: PathBuf,
    version: u32,
    infos: Vec<SectionInfo>,
}

impl Writer {
    fn section(
        &mut self,
        kind: Kind,
        body: impl FnOnce(&mut SectionWriter) -> Result<(), SectionError>,
    ) -> Result<(), SectionError> {
        let info = write_section(&self.dir, self.version, kind, body)?;
        self.infos.push(info);
        Ok(())
    }
}

/// The bytes of the vectors in slots `from..to`, as one slice per chunk.
fn vector_bytes(inner: &Inner, from: usize, to: usize) -> impl Iterator<Item = &[u8]> + '_ {
    let dim = inner.vectors.dim().max(1);
    inner
        .vectors
        .runs()
        .enumerate()
        .filter_map(move |(c, run)| {
            let start = c * crate::engine::arena::CHUNK_SLOTS;
            let end = start + run.len() / dim;
            let (a, b) = (from.max(start), to.min(end));
            (a < b).then(|| bytemuck::cast_slice(&run[(a - start) * dim..(b - start) * dim]))
        })
}

/// Writes and fsyncs one section file in `dir`.
fn write_section(
    dir: &Path,
    version: u32,
    kind: Kind,
    body: impl FnOnce(&mut SectionWriter) -> Result<(), SectionError>,
) -> Result<SectionInfo, SectionError> {
    let mut w = SectionWriter::create(&dir.join(kind.file_name()), version, kind)?;
    body(&mut w)?;
    let (bytes, crc) = w.finish()?;
    Ok(SectionInfo {
        file: kind.file_name().into(),
        bytes,
        crc32c: format!("{crc:08x}"),
    })
}

/// Options for `save`; `format_version` other than the current one exists
/// for migration tests.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub keep: usize,
    pub raft_meta: Vec<u8>,
    pub format_version: u32,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            keep: 3,
            raft_meta: Vec::new(),
            format_version: FORMAT_VERSION,
        }
    }
}

/// The consistent part of a snapshot, taken between two applies: the slot
/// count, per-slot states, applied log id and content checksum. Published
/// slots never change, so the rest is read later without pausing applies.
pub struct Capture {
    inner: Arc<Inner>,
    len: usize,
    states: Vec<u8>,
    applied: Option<AppliedLog>,
    checksum: u64,
    saved_at: u64,
}

impl Capture {
    /// Cheap: holds the apply lock only while copying one byte per slot.
    pub fn take(engine: &Engine) -> Capture {
        let inner = engine.inner.clone();
        let (len, states, applied, checksum) = {
            let _w = inner.writer.lock();
            let len = inner.vectors.len();
            let states: Vec<u8> = (0..len as u32)
                .map(|s| inner.state.first(s).load(Ordering::Acquire))
                .collect();
            (
                len,
                states,
                *inner.applied.lock(),
                inner.checksum.load(Ordering::Relaxed),
            )
        };
        Capture {
            inner,
            len,
            states,
            applied,
            checksum,
            saved_at: now_ms(),
        }
    }

    pub fn applied(&self) -> Option<AppliedLog> {
        self.applied
    }

    /// Writes every section (each fsynced) into the existing, empty `dir`.
    /// Indexing pauses only while the graph section is written.
    pub fn write_into(
        &self,
        dir: &Path,
        format_version: u32,
        raft_meta: &[u8],
    ) -> Result<Manifest, SnapshotError> {
        let inner = &*self.inner;
        let len = self.len;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            version: format_version,
            infos: Vec::new(),
        };
        // The vectors (most of the bytes) are written by two threads at
        // once: a second thread writes the first two thirds while this one
        // writes the other sections, then the last third.
        let dim = inner.vectors.dim();
        let vec_len = (len * dim * 4) as u64;
        let vec_file = ParallelSection::create(
            &dir.join(Kind::Vectors.file_name()),
            format_version,
            Kind::Vectors,
            vec_len,
        )?;
        let split = len * 2 / 3;
        let (vectors, rest) = std::thread::scope(|sc| {
            let head = sc.spawn(|| vec_file.write_range(0, vector_bytes(inner, 0, split)));
            let rest = (|| -> Result<usize, SnapshotError> {
                w.section(Kind::Ids, |s| {
                    let mut buf = Vec::with_capacity(64 * 1024);
                    for slot in 0..len as u32 {
                        let id = inner
                            .slot_ids
                            .first(slot)
                            .get()
                            .map(|b| b.as_bytes())
                            .unwrap_or_default();
                        buf.extend_from_slice(&(id.len() as u16).to_le_bytes());
                        buf.extend_from_slice(id);
                        if buf.len() >= 60 * 1024 {
                            s.write(&buf)?;
                            buf.clear();
                        }
                    }
                    s.write(&buf)
                })?;
                w.section(Kind::Payloads, |s| {
                    for slot in 0..len as u32 {
                        if let Some(p) = inner.payloads.first(slot).get() {
                            let json = serde_json::to_vec(p).unwrap_or_default();
                            s.write(&slot.to_le_bytes())?;
                            s.write(&(json.len() as u32).to_le_bytes())?;
                            s.write(&json)?;
                        }
                    }
                    Ok(())
                })?;
                if format_version >= 2 {
                    w.section(Kind::States, |s| s.write(&self.states))?;
                } else {
                    w.section(Kind::TombstonesV1, |s| {
                        let mut bits = vec![0u8; len.div_ceil(8)];
                        for (i, st) in self.states.iter().enumerate() {
                            if *st != LIVE {
                                bits[i / 8] |= 1 << (i % 8);
                            }
                        }
                        s.write(&bits)
                    })?;
                }
                let indexed = {
                    let _pause = inner.gate.write();
                    let indexed = inner.queue.watermark().min(len);
                    write_graph(&mut w, inner, indexed)?;
                    indexed
                };
                w.section(Kind::Raft, |s| s.write(raft_meta))?;
                Ok(indexed)
            })();
            let tail =
                vec_file.write_range((split * dim * 4) as u64, vector_bytes(inner, split, len));
            let head = head.join().unwrap_or_else(|_| {
                Err(SectionError::Corrupt {
                    path: dir.join(Kind::Vectors.file_name()),
                    reason: "vector writer panicked".into(),
                })
            });
            let vectors = head.and_then(|h| {
                let t = tail?;
                Ok(crc32c::crc32c_combine(h, t, (len - split) * dim * 4))
            });
            (vectors, rest)
        });
        let indexed = rest?;
        let (bytes, crc) = vec_file.finish(vectors?)?;
        w.infos.insert(
            1.min(w.infos.len()),
            SectionInfo {
                file: Kind::Vectors.file_name().into(),
                bytes,
                crc32c: format!("{crc:08x}"),
            },
        );

        let count = |st: u8| self.states.iter().filter(|&&x| x == st).count() as u64;
        let manifest = Manifest {
            format_version,
            kindex_version: env!("CARGO_PKG_VERSION").into(),
            structural: inner.structural.clone(),
            structural_hash: inner.structural.hash(),
            applied: self.applied,
            counts: Counts {
                slots: len as u64,
                live: count(LIVE),
                tombstoned: count(DELETED),
                purged: count(PURGED),
                indexed: indexed as u64,
            },
            content_checksum: self.checksum,
            saved_at_unix_ms: self.saved_at,
            sections: w.infos.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Invalid {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        w.section(Kind::Manifest, |s| s.write(&json))?;
        Ok(Manifest {
            sections: w.infos,
            ..manifest
        })
    }
}

/// Writes a snapshot of `engine` under `root` (temp dir, fsync, rename,
/// fsync of `root`) and prunes old ones. Used by standalone nodes and tools;
/// the Raft layer manages its own snapshot directories and calls `Capture`.
pub fn save(engine: &Engine, root: &Path, opts: &SaveOptions) -> Result<Saved, SnapshotError> {
    let started = Instant::now();
    let io = |source| SnapshotError::Io {
        dir: root.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(root).map_err(io)?;
    let capture = Capture::take(engine);
    let name = snapshot_name(capture.applied, capture.saved_at);
    let tmp = root.join(format!("{TMP_PREFIX}{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io)?;
    let manifest = capture.write_into(&tmp, opts.format_version, &opts.raft_meta)?;
    let bytes = manifest.total_bytes();
    fsutil::sync_dir(&tmp).map_err(io)?;
    let dir = root.join(&name);
    std::fs::rename(&tmp, &dir).map_err(io)?;
    fsutil::sync_dir(root).map_err(io)?;
    prune(root, opts.keep.max(1)).map_err(io)?;
    Ok(Saved {
        dir,
        manifest,
        bytes,
        duration: started.elapsed(),
    })
}

/// Graph section: indexed count, entry point, m, m0, levels, level-0 lists,
/// then upper lists of every node above level 0, in slot order. Links to
/// slots at or above `indexed` (inserted after the capture) are dropped; those
/// slots are re-queued and relinked on load.
fn write_graph(w: &mut Writer, inner: &Inner, indexed: usize) -> Result<(), SectionError> {
    let g = &inner.graph;
    let p = g.params();
    let (m, m0) = (p.m, p.m0());
    let entry = match g.entry_point() {
        Some((e, _)) if (e as usize) < indexed => Some(e),
        Some(_) => (0..indexed as u32).max_by_key(|&s| g.level(s)),
        None => None,
    };
    w.section(Kind::Graph, |s| {
        s.write(&(indexed as u64).to_le_bytes())?;
        s.write(&entry.map_or(u64::MAX, |e| e as u64).to_le_bytes())?;
        s.write(&(m as u32).to_le_bytes())?;
        s.write(&(m0 as u32).to_le_bytes())?;
        let levels: Vec<u8> = (0..indexed as u32).map(|i| g.level(i)).collect();
        s.write(&levels)?;
        let mut nbs = Vec::new();
        let mut buf: Vec<u32> = Vec::with_capacity(16 * 1024);
        let put_list = |s: &mut SectionWriter,
                        buf: &mut Vec<u32>,
                        nbs: &[u32],
                        cap: usize|
         -> Result<(), SectionError> {
            let kept = nbs.iter().filter(|&&n| (n as usize) < indexed).take(cap);
            let start = buf.len();
            buf.push(0);
            buf.extend(kept);
            let n = buf.len() - start - 1;
            buf[start] = n as u32;
            buf.resize(start + 1 + cap, 0);
            if buf.len() >= 16 * 1024 - 300 {
                s.write(bytemuck::cast_slice(buf))?;
                buf.clear();
            }
            Ok(())
        };
        for i in 0..indexed as u32 {
            g.neighbours(i, 0, &mut nbs);
            put_list(s, &mut buf, &nbs, m0)?;
        }
        for i in 0..indexed as u32 {
            for level in 1..=levels[i as usize] {
                g.neighbours(i, level, &mut nbs);
                put_list(s, &mut buf, &nbs, m)?;
            }
        }
        s.write(bytemuck::cast_slice(&buf))
    })
}

/// Removes all but the newest `keep` snapshots and any leftover temp dirs.
pub fn prune(root: &Path, keep: usize) -> std::io::Result<()> {
    let mut snaps = list(root)?;
    snaps.reverse();
    for old in snaps.into_iter().skip(keep) {
        std::fs::remove_dir_all(old)?;
    }
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Complete snapshot dirs, oldest first.
pub fn list(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match std::fs::read_dir(root) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                if e.file_name().to_string_lossy().starts_with(PREFIX) && e.path().is_dir() {
                    out.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Reads and validates only the manifest (for `kindex inspect`).
pub fn read_manifest(dir: &Path) -> Result<Manifest, SnapshotError> {
    let sect = section::read(
        &dir.join(Kind::Manifest.file_name()),
        Kind::Manifest,
        FORMAT_VERSION,
    )?;
    let m: Manifest =
        serde_json::from_slice(sect.payload()).map_err(|e| SnapshotError::Invalid {
            path: dir.join(Kind::Manifest.file_name()),
            reason: format!("manifest is not valid: {e}"),
        })?;
    if m.format_version != sect.version {
        return Err(SnapshotError::Invalid {
            path: dir.to_path_buf(),
            reason: format!(
                "manifest says format {} but its section header says {}",
                m.format_version, sect.version
            ),
        });
    }
    Ok(m)
}

/// A loaded snapshot.
pub struct Loaded {
    pub engine: Engine,
    pub manifest: Manifest,
    pub raft_meta: Vec<u8>,
    pub dir: PathBuf,
    pub duration: Duration,
    /// Newer snapshots that were skipped, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads the newest valid snapshot under `root`, falling back past damaged
/// ones (each reported in `skipped` and logged). Ok(None) if there is none.
pub fn load_latest(
    root: &Path,
    configured: &StructuralConfig,
    knobs: EngineKnobs,
) -> Result<Option<Loaded>, SnapshotError> {
    let dirs = list(root).map_err(|source| SnapshotError::Io {
        dir: root.to_path_buf(),
        source,
    })?;
    let mut skipped = Vec::new();
    for dir in dirs.into_iter().rev() {
        match load(&dir, configured, knobs) {
            Ok(mut l) => {
                l.skipped = skipped;
                return Ok(Some(l));
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::error!(snapshot = %dir.display(), error = %e, "snapshot is damaged; trying the previous one");
                skipped.push((dir, e.to_string()));
            }
        }
    }
    if let Some((dir, why)) = skipped.last() {
        tracing::error!(snapshot = %dir.display(), error = %why, "no valid snapshot left");
    }
    Ok(None)
}

fn invalid(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Little-endian cursor over a payload that fails instead of panicking.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| {
            invalid(
                self.path,
                format!("unexpected end of section at byte {}", self.pos),
            )
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn done(&self) -> bool {
        self.pos == self.data.len()
    }
}

/// Loads one snapshot dir into a new engine.
pub fn load(
    dir: &Path,
    configured: &StructuralConfig,
    knobs: EngineKnobs,
) -> Result<Loaded, SnapshotError> {
    let started = Instant::now();
    let manifest = read_manifest(dir)?;
    let version = manifest.format_version;
    if version < OLDEST_READABLE {
        return Err(invalid(
            dir,
            format!("format {version} is older than the oldest readable ({OLDEST_READABLE})"),
        ));
    }
    if manifest.structural.hash() != manifest.structural_hash {
        return Err(invalid(
            dir,
            "structural hash does not match the structural config in the manifest",
        ));
    }
    let diffs: Vec<FieldDiff> = manifest.structural.diff(configured);
    if !diffs.is_empty() {
        return Err(StructuralError::Mismatch {
            dir: dir.display().to_string(),
            diffs,
        }
        .into());
    }
    let read = |kind: Kind| -> Result<Section, SnapshotError> {
        let s = section::read(&dir.join(kind.file_name()), kind, FORMAT_VERSION)?;
        if s.version != version {
            return Err(invalid(
                dir,
                format!(
                    "{kind:?} section has format {} but the manifest {version}",
                    s.version
                ),
            ));
        }
        Ok(s)
    };
    let len =
        usize::try_from(manifest.counts.slots).map_err(|_| invalid(dir, "slot count overflows"))?;
    if len > crate::engine::arena::MAX_SLOTS {
        return Err(invalid(
            dir,
            format!("{len} slots exceed the per-shard limit"),
        ));
    }
    let dim = configured.dimension as usize;

    // A private engine: vectors stream straight into its arena (on a second
    // thread) while the other sections are parsed and the graph streams
    // into its lists. Nothing is trusted until every checksum has passed;
    // on any error the engine is dropped.
    let engine = Engine::new(configured.clone(), knobs);
    let inner = &*engine.inner;
    let vec_path = dir.join(Kind::Vectors.file_name());
    let graph_path = dir.join(Kind::Graph.file_name());
    let (vectors_loaded, graph_loaded, rest) = std::thread::scope(|sc| {
        let vectors = sc.spawn(|| load_vectors(&vec_path, version, len, dim, inner));
        let graph = sc.spawn(|| load_graph(&graph_path, version, len, configured, &inner.graph));
        let rest = load_rest(dir, version, len, &engine, &read);
        let vectors = vectors
            .join()
            .unwrap_or_else(|_| Err(invalid(&vec_path, "vector loading panicked")));
        let graph = graph
            .join()
            .unwrap_or_else(|_| Err(invalid(&graph_path, "graph loading panicked")));
        (vectors, graph, rest)
    });
    vectors_loaded?;
    let (indexed, entry) = graph_loaded?;
    let Rest {
        ids_sect,
        id_spans,
        index,
        payloads,
        raft_meta,
    } = rest?;
    let ids = span_strs(ids_sect.payload(), &id_spans);
    engine
        .finish_restore(index, &ids, payloads, indexed, entry, manifest.applied)
        .map_err(|e| invalid(dir, e))?;
    if engine.content_checksum() != manifest.content_checksum && version >= 2 {
        return Err(invalid(
            dir,
            "content checksum of the loaded points does not match the manifest",
        ));
    }
    Ok(Loaded {
        engine,
        manifest,
        raft_meta,
        dir: dir.to_path_buf(),
        duration: started.elapsed(),
        skipped: Vec::new(),
    })
}

/// Everything but the vectors and graph lists, decoded.
struct Rest {
    ids_sect: Section,
    /// (offset, length) of each id inside `ids_sect`'s payload (validated UTF-8).
    id_spans: Vec<(u32, u16)>,
    /// Slot ids and states, already set in the engine.
    index: IdIndex,
    payloads: Vec<(u32, crate::engine::filter::Payload)>,
    raft_meta: Vec<u8>,
}

/// The ids at `spans` of `data` (validated as UTF-8 when the spans were made).
fn span_strs<'a>(data: &'a [u8], spans: &[(u32, u16)]) -> Vec<&'a str> {
    spans
        .iter()
        .map(|&(o, n)| {
            data.get(o as usize..o as usize + n as usize)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default()
        })
        .collect()
}

/// Streams the vectors section into the engine's arena, checking that every
/// value is finite.
fn load_vectors(
    path: &Path,
    version: u32,
    len: usize,
    dim: usize,
    inner: &Inner,
) -> Result<(), SnapshotError> {
    let mut r = SectionReader::open(path, Kind::Vectors, FORMAT_VERSION)?;
    if r.version != version {
        return Err(invalid(
            path,
            format!(
                "Vectors section has format {} but the manifest {version}",
                r.version
            ),
        ));
    }
    let expected = (len * dim * 4) as u64;
    if r.remaining() != expected {
        return Err(invalid(
            path,
            format!(
                "vectors section holds {} bytes, expected {expected}",
                r.remaining()
            ),
        ));
    }
    let filled = inner
        .vectors
        .extend_with(len, |dst| {
            r.read_exact(bytemuck::cast_slice_mut(dst))?;
            // A fold (not `any`) so the check vectorises.
            if dst.iter().fold(true, |ok, x| ok & x.is_finite()) {
                Ok(())
            } else {
                Err(invalid(path, "vectors section holds a non-finite value"))
            }
        })
        .map_err(|e| invalid(path, e.to_string()))?;
    match filled {
        Ok(_) => Ok(r.finish()?),
        // Damage is the likelier cause: report the checksum if it fails.
        Err(e) => {
            r.verify_rest()?;
            Err(e)
        }
    }
}

/// Ids and states (indexed into `engine`), payloads and raft meta.
fn load_rest(
    dir: &Path,
    version: u32,
    len: usize,
    engine: &Engine,
    read: &dyn Fn(Kind) -> Result<Section, SnapshotError>,
) -> Result<Rest, SnapshotError> {
    let ids_sect = read(Kind::Ids)?;
    let ids_path = dir.join(Kind::Ids.file_name());
    let mut c = Cursor {
        data: ids_sect.payload(),
        pos: 0,
        path: &ids_path,
    };
    let mut id_spans: Vec<(u32, u16)> = Vec::with_capacity(len);
    for _ in 0..len {
        let n = c.u16()?;
        let at = c.pos;
        let raw = c.take(n as usize)?;
        std::str::from_utf8(raw).map_err(|_| invalid(&ids_path, "id is not UTF-8"))?;
        let at = u32::try_from(at).map_err(|_| invalid(&ids_path, "ids section over 4 GiB"))?;
        id_spans.push((at, n));
    }
    if !c.done() {
        return Err(invalid(&ids_path, "trailing bytes after the last id"));
    }

    let states: Vec<u8> = if version >= 2 {
        let s = read(Kind::States)?;
        if s.payload().len() != len || s.payload().iter().any(|&x| x > PURGED) {
            return Err(invalid(dir, "states section does not match the slot count"));
        }
        s.payload().to_vec()
    } else {
        // Migration from format 1: tombstone bits become DELETED; the next
        // compaction purges them.
        let s = read(Kind::TombstonesV1)?;
        if s.payload().len() != len.div_ceil(8) {
            return Err(invalid(
                dir,
                "tombstone bitset does not match the slot count",
            ));
        }
        (0..len)
            .map(|i| {
                if s.payload()[i / 8] & (1 << (i % 8)) != 0 {
                    DELETED
                } else {
                    LIVE
                }
            })
            .collect()
    };

    // Ids and states into the engine while the vectors stream in.
    let index = engine
        .index_ids(&span_strs(ids_sect.payload(), &id_spans), &states)
        .map_err(|e| invalid(dir, e))?;

    let pay_sect = read(Kind::Payloads)?;
    let pay_path = dir.join(Kind::Payloads.file_name());
    let mut c = Cursor {
        data: pay_sect.payload(),
        pos: 0,
        path: &pay_path,
    };
    let mut payloads = Vec::new();
    while !c.done() {
        let slot = c.u32()? as usize;
        let n = c.u32()? as usize;
        let raw = c.take(n)?;
        if slot >= len {
            return Err(invalid(
                &pay_path,
                format!("payload for slot {slot} beyond {len} slots"),
            ));
        }
        let p = match serde_json::from_slice::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                return Err(invalid(
                    &pay_path,
                    format!("payload of slot {slot} is not a JSON object"),
                ));
            }
        };
        payloads.push((slot as u32, p));
    }

    let raft_meta = read(Kind::Raft)?.payload().to_vec();
    Ok(Rest {
        ids_sect,
        id_spans,
        index,
        payloads,
        raft_meta,
    })
}

/// Streams the graph section into `g` (see `write_graph` for the layout),
/// validating every list. Returns (indexed count, entry point).
fn load_graph(
    path: &Path,
    version: u32,
    len: usize,
    s: &StructuralConfig,
    g: &Hnsw,
) -> Result<(usize, Option<u32>), SnapshotError> {
    let mut r = SectionReader::open(path, Kind::Graph, FORMAT_VERSION)?;
    if r.version != version {
        return Err(invalid(
            path,
            format!(
                "Graph section has format {} but the manifest {version}",
                r.version
            ),
        ));
    }
    match stream_graph(&mut r, len, s, g) {
        Ok(v) => {
            r.finish()?;
            Ok(v)
        }
        // Damage is the likelier cause: report the checksum if it fails.
        Err(e) => {
            r.verify_rest()?;
            Err(e)
        }
    }
}

fn stream_graph(
    r: &mut SectionReader,
    len: usize,
    s: &StructuralConfig,
    g: &Hnsw,
) -> Result<(usize, Option<u32>), SnapshotError> {
    let path = r.path().to_path_buf();
    let path = path.as_path();
    let mut head = [0u8; 24];
    r.read_exact(&mut head)?;
    let mut c = Cursor {
        data: &head,
        pos: 0,
        path,
    };
    let indexed = c.u64()?;
    let entry = c.u64()?;
    let m = c.u32()? as usize;
    let m0 = c.u32()? as usize;
    if indexed > len as u64 {
        return Err(invalid(
            path,
            format!("{indexed} indexed slots but only {len} slots"),
        ));
    }
    let indexed = indexed as usize;
    if m != s.m as usize || m0 != 2 * m {
        return Err(invalid(
            path,
            format!(
                "graph built with m={m}, m0={m0}; structural config says m={}",
                s.m
            ),
        ));
    }
    let entry = match entry {
        u64::MAX => None,
        e if (e as usize) < indexed => Some(e as u32),
        e => {
            return Err(invalid(
                path,
                format!("entry point {e} is not an indexed slot"),
            ));
        }
    };
    if entry.is_none() && indexed > 0 {
        return Err(invalid(path, "indexed nodes but no entry point"));
    }
    // Sizes are checked against the section before anything is allocated.
    let (stride0, stride) = (1 + m0, 1 + m);
    if (indexed as u64) * (1 + 4 * stride0 as u64) > r.remaining() {
        return Err(invalid(
            path,
            "graph section is too short for its node count",
        ));
    }
    let mut levels = vec![0u8; indexed];
    r.read_exact(&mut levels)?;
    if levels.iter().any(|&l| l > 15) {
        return Err(invalid(path, "node level above 15"));
    }
    let uppers: u64 = levels.iter().map(|&l| l as u64).sum();
    if r.remaining() != (indexed as u64 * stride0 as u64 + uppers * stride as u64) * 4 {
        return Err(invalid(
            path,
            "graph section size does not match its levels",
        ));
    }
    for (slot, &l) in levels.iter().enumerate() {
        g.init_node(slot as u32, l);
    }
    let bad = || {
        invalid(
            path,
            "a link list is malformed or points outside the indexed slots",
        )
    };
    let mut buf: Vec<u32> = vec![0; 4096 * stride0];
    // Level-0 lists, in blocks of 4096.
    let mut slot = 0usize;
    while slot < indexed {
        let n = (indexed - slot).min(4096);
        let block = &mut buf[..n * stride0];
        r.read_exact(bytemuck::cast_slice_mut(block))?;
        for l in block.chunks_exact(stride0) {
            let cnt = l[0] as usize;
            if cnt >= stride0 || l[1..=cnt].iter().any(|&x| x as usize >= indexed) {
                return Err(bad());
            }
            g.set_list(slot as u32, 0, &l[1..=cnt]);
            slot += 1;
        }
    }
    // Upper lists of every node above level 0, in slot order.
    let mut one = vec![0u32; stride];
    for (slot, &top) in levels.iter().enumerate() {
        for level in 1..=top {
            r.read_exact(bytemuck::cast_slice_mut(&mut one))?;
            let cnt = one[0] as usize;
            if cnt >= stride || one[1..=cnt].iter().any(|&x| x as usize >= indexed) {
                return Err(bad());
            }
            g.set_list(slot as u32, level, &one[1..=cnt]);
        }
    }
    Ok((indexed, entry))
}

/// Decoded graph section.
pub struct GraphParts {
    pub indexed: usize,
    pub entry: Option<u32>,
    pub levels: Vec<u8>,
    /// Level-0 lists, (1 + m0) u32 each.
    pub level0: Vec<u32>,
    /// Upper lists in slot order, (1 + m) u32 each.
    pub upper: Vec<u32>,
}
