//! Snapshot section files → a new engine. Nothing is trusted until every checksum, size and
//! link has been validated; on any error the half-built engine is dropped.

use std::path::Path;
use std::time::Instant;

use super::section::{self, Kind, Section, SectionReader};
use super::{FORMAT_VERSION, Loaded, OLDEST_READABLE, SnapshotError, read_manifest};
use crate::config::StructuralConfig;
use crate::config::structural::{FieldDiff, StructuralError};
use crate::engine::arena::ArenaError;
use crate::engine::hnsw::Hnsw;
use crate::engine::{DELETED, Engine, EngineKnobs, IdIndex, Inner, LIVE, PURGED, VectorStorage};

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

/// Loads one snapshot dir into a new engine keeping its vectors in `storage`.
pub fn load(
    dir: &Path,
    configured: &StructuralConfig,
    knobs: EngineKnobs,
    storage: &VectorStorage,
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
    let engine = Engine::with_storage(configured.clone(), knobs, storage.clone());
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
    let listed = |kind: Kind| manifest.sections.iter().any(|s| s.file == kind.file_name());
    let quant = match (listed(Kind::Quant), version >= 5) {
        (true, true) => Some(
            super::quant::decode(read(Kind::Quant)?.payload(), dim).map_err(|e| invalid(dir, e))?,
        ),
        (true, false) => {
            return Err(invalid(
                dir,
                format!("format {version} cannot have an int8 ranges section"),
            ));
        }
        // Older formats: ranges are trained on the loaded points (see `finish_restore`).
        (false, _) => None,
    };
    engine
        .finish_restore(
            index,
            &ids,
            payloads,
            indexed,
            entry,
            manifest.applied,
            quant,
        )
        .map_err(|e| invalid(dir, e))?;
    if engine.content_checksum() != manifest.content_checksum && version >= 2 {
        return Err(invalid(
            dir,
            "content checksum of the loaded points does not match the manifest",
        ));
    }
    let policies = match (listed(Kind::Policies), version >= 3) {
        (true, true) => Some(read(Kind::Policies)?.payload().to_vec()),
        (true, false) => {
            return Err(invalid(
                dir,
                format!("format {version} cannot have a policy section"),
            ));
        }
        (false, _) => None,
    };
    match (listed(Kind::Stamps), version >= 4) {
        (true, true) => {
            let sect = read(Kind::Stamps)?;
            let raw = sect.payload();
            if raw.len() != len * 8 {
                return Err(invalid(
                    dir,
                    format!("stamps section has {} bytes for {len} slots", raw.len()),
                ));
            }
            for (slot, b) in raw.chunks_exact(8).enumerate() {
                let stamp = u64::from_le_bytes(b.try_into().unwrap_or_default());
                engine
                    .inner
                    .stamps
                    .first(slot as u32)
                    .store(stamp, std::sync::atomic::Ordering::Relaxed);
            }
        }
        (true, false) => {
            return Err(invalid(
                dir,
                format!("format {version} cannot have a stamps section"),
            ));
        }
        // Older formats: every point is unstamped (the policy store's `unstampedMs` gives it
        // an ingest time once the shard has one).
        (false, _) => {}
    }
    Ok(Loaded {
        engine,
        manifest,
        policies,
        raft_meta,
        dir: dir.to_path_buf(),
        duration: started.elapsed(),
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
        .map_err(|e| match e {
            ArenaError::Full => invalid(path, e.to_string()),
            ArenaError::Storage { .. } => SnapshotError::Storage(e.to_string()),
        })?;
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
    // Indexed slots may all be out of the graph, with no entry point: deleted before the
    // indexer reached them (never linked), or every node compacted away. Links without an
    // entry point cannot be searched: that is damage.
    let mut linked = false;
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
            linked |= cnt > 0;
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
            linked |= cnt > 0;
        }
    }
    if entry.is_none() && linked {
        return Err(invalid(path, "linked nodes but no entry point"));
    }
    Ok((indexed, entry))
}
