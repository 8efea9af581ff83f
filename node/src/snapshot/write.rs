//! Engine → snapshot section files: a cheap [`Capture`] between two applies, then the
//! heavy writing while later applies go on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::section::{Kind, ParallelSection, SectionError, SectionWriter};
use super::{Counts, Manifest, SectionInfo, SnapshotError};
use crate::engine::quant::Plan;
use crate::engine::{AppliedLog, DELETED, Engine, Inner, LIVE, PURGED};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// The consistent part of a snapshot, taken between two applies: the slot
/// count, per-slot states, applied log id and content checksum. Published
/// slots never change, so the rest is read later without pausing applies.
pub struct Capture {
    inner: Arc<Inner>,
    len: usize,
    states: Vec<u8>,
    applied: Option<AppliedLog>,
    checksum: u64,
    /// int8 ranges as of the same apply (None: no quantization or none trained yet).
    quant: Option<Plan>,
    saved_at: u64,
}

impl Capture {
    /// Cheap: holds the apply lock only while copying one byte per slot.
    pub fn take(engine: &Engine) -> Capture {
        let inner = engine.inner.clone();
        let (len, states, applied, checksum, quant) = {
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
                Some(inner.quant_plan.lock().clone()).filter(|p| p.ranges.is_some()),
            )
        };
        Capture {
            inner,
            len,
            states,
            applied,
            checksum,
            quant,
            saved_at: now_ms(),
        }
    }

    pub fn applied(&self) -> Option<AppliedLog> {
        self.applied
    }

    /// Whether a captured slot has an ingest stamp (then the snapshot needs format 4).
    pub fn has_stamps(&self) -> bool {
        (0..self.len as u32).any(|s| self.inner.stamps.first(s).load(Ordering::Relaxed) != 0)
    }

    /// Whether the shard has int8 ranges (then the snapshot needs format 5).
    pub fn has_quant(&self) -> bool {
        self.quant.is_some()
    }

    /// Writes every section (each fsynced) into the existing, empty `dir`.
    /// Indexing pauses only while the graph section is written.
    pub fn write_into(
        &self,
        dir: &Path,
        format_version: u32,
        raft_meta: &[u8],
        policies: Option<&[u8]>,
    ) -> Result<Manifest, SnapshotError> {
        if policies.is_some() && format_version < 3 {
            return Err(SnapshotError::Invalid {
                path: dir.to_path_buf(),
                reason: format!("format {format_version} has no policy section (format 3 has)"),
            });
        }
        if self.quant.is_some() && format_version < 5 {
            return Err(SnapshotError::Invalid {
                path: dir.to_path_buf(),
                reason: format!(
                    "format {format_version} has no int8 ranges section (format 5 has)"
                ),
            });
        }
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

        if let Some(p) = policies {
            w.section(Kind::Policies, |s| s.write(p))?;
        }
        if format_version >= 4 {
            // Stamps are set before a slot is published and never change: no lock needed.
            w.section(Kind::Stamps, |s| {
                let mut buf = Vec::with_capacity(64 * 1024);
                for slot in 0..len as u32 {
                    let stamp = inner.stamps.first(slot).load(Ordering::Relaxed);
                    buf.extend_from_slice(&stamp.to_le_bytes());
                    if buf.len() >= 60 * 1024 {
                        s.write(&buf)?;
                        buf.clear();
                    }
                }
                s.write(&buf)
            })?;
        }
        if let Some(raw) = self.quant.as_ref().and_then(super::quant::encode) {
            w.section(Kind::Quant, |s| s.write(&raw))?;
        }
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

/// The slot below `indexed` with the highest level among those `in_graph` (the last of equals).
fn highest_in_graph(
    indexed: u32,
    level: impl Fn(u32) -> u8,
    mut in_graph: impl FnMut(u32) -> bool,
) -> Option<u32> {
    (0..indexed)
        .filter(|&s| in_graph(s))
        .max_by_key(|&s| level(s))
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
        // The entry point is in a batch linked after the capture: the highest node in the
        // graph below `indexed`. Not a slot deleted before it was linked (no links, level 0):
        // searches would start, and stop, there.
        Some(_) => {
            let mut nbs = Vec::new();
            highest_in_graph(
                indexed as u32,
                |s| g.level(s),
                |s| {
                    g.neighbours(s, 0, &mut nbs);
                    !nbs.is_empty() || inner.state.first(s).load(Ordering::Acquire) == LIVE
                },
            )
        }
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

#[cfg(test)]
mod tests {
    use super::highest_in_graph;

    #[test]
    fn a_fallback_entry_point_is_a_node_in_the_graph() {
        let levels = [0u8, 1, 0, 0];
        let level = |s: u32| levels[s as usize];
        // The highest level wins.
        assert_eq!(highest_in_graph(4, level, |_| true), Some(1));
        // Slot 3 was deleted before it was linked: level 0, no links. Never the entry.
        let flat = |_: u32| 0u8;
        assert_eq!(highest_in_graph(4, flat, |s| s != 3), Some(2));
        assert_eq!(highest_in_graph(4, level, |s| s == 3), Some(3));
        assert_eq!(highest_in_graph(4, level, |_| false), None);
        assert_eq!(highest_in_graph(0, level, |_| true), None);
    }
}
