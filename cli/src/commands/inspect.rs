//! `kindex inspect <data-dir> [--verify]`: what a node's data directory holds,
//! read offline with the node's own snapshot code (so it agrees with what the
//! node would load at start-up).
//!
//! Without `--verify` a snapshot counts as valid when its manifest section
//! passes its checksum, the structural hash matches, every listed section file
//! has the recorded size and the structural config equals structural.json.
//! `--verify` also loads it completely, which checks every section's CRC32C,
//! the graph and the content checksum.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use kindex_node::config::{RuntimeConfig, StructuralConfig, structural};
use kindex_node::engine::{EngineKnobs, VectorStorage};
use kindex_node::raft::snapshot::read_raft_meta;
use kindex_node::snapshot::store::SnapshotStore;
use kindex_node::snapshot::{self, Manifest};
use serde_json::{Value, json};

use super::Ctx;
use crate::InspectArgs;
use crate::output::{self, Table, kv};

struct Report {
    data_dir: PathBuf,
    /// Ok(None): no structural.json (a node that never started, or a bare
    /// snapshots dir).
    structural: Result<Option<StructuralConfig>, String>,
    snapshots: Vec<Snap>,
}

struct Snap {
    dir: PathBuf,
    manifest: Option<Manifest>,
    /// Bytes of every file in the snapshot dir, manifest included.
    disk_bytes: u64,
    /// Actual file sizes, in the manifest's section order (None: missing).
    disk_sizes: Vec<Option<u64>>,
    problems: Vec<String>,
    verify: Option<Verify>,
}

struct Verify {
    ok: Result<(), String>,
    seconds: f64,
}

impl Snap {
    fn valid(&self) -> bool {
        self.problems.is_empty() && self.verify.as_ref().is_none_or(|v| v.ok.is_ok())
    }

    fn name(&self) -> String {
        self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

pub fn run(ctx: &Ctx, args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let report = collect(&args.data_dir, args.verify)?;
    let newest_ok = report.snapshots.first().is_none_or(Snap::valid);
    let ok = newest_ok && report.structural.is_ok();
    if ctx.json() {
        output::print_json(&to_json(&report, ok));
    } else {
        out!("{}", to_text(&report));
        match (report.snapshots.first(), ok) {
            (None, _) => outln!("\nno snapshots"),
            (Some(_), true) => outln!("\nnewest snapshot is valid"),
            (Some(s), false) if !s.valid() => {
                outln!(
                    "\nNEWEST SNAPSHOT IS INVALID: the node would set it aside (corrupt-*) and load the previous one; \
                     with none left it replays its log, or refuses to start if the log was purged"
                )
            }
            _ => outln!("\nstructural.json is unreadable: the node would refuse to start"),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where the snapshots are: `<dir>/snapshots`, or `<dir>` itself when it is a
/// snapshots dir or a single snapshot.
fn snapshot_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let is_snap = dir
        .file_name()
        .is_some_and(|n| SnapshotStore::is_snapshot_name(&n.to_string_lossy()));
    if is_snap {
        return Ok(vec![dir.to_path_buf()]);
    }
    let sub = dir.join("snapshots");
    let root = if sub.is_dir() { sub } else { dir.to_path_buf() };
    // Read only: a running node may be building a snapshot in this dir right now.
    SnapshotStore::read_only(&root)
        .list()
        .map_err(|e| anyhow::anyhow!("listing {}: {e}", root.display()))
}

fn collect(dir: &Path, verify: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let structural = structural::load(dir).map_err(|e| e.to_string());
    let mut snapshots = Vec::new();
    for snap_dir in snapshot_dirs(dir)? {
        snapshots.push(inspect_one(
            &snap_dir,
            structural.as_ref().ok().and_then(Option::as_ref),
            verify,
        ));
    }
    Ok(Report {
        data_dir: dir.to_path_buf(),
        structural,
        snapshots,
    })
}

fn inspect_one(dir: &Path, configured: Option<&StructuralConfig>, verify: bool) -> Snap {
    let mut problems = Vec::new();
    let disk_bytes = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    // Without its RAFT_META a node sets the snapshot aside at start-up.
    if let Err(e) = read_raft_meta(dir) {
        problems.push(format!("raft meta: {e}"));
    }
    let manifest = match snapshot::read_manifest(dir) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(format!("manifest: {e}"));
            None
        }
    };
    let mut disk_sizes = Vec::new();
    if let Some(m) = &manifest {
        if m.structural.hash() != m.structural_hash {
            problems.push(format!(
                "structural hash {} does not match its config (expected {})",
                m.structural_hash,
                m.structural.hash()
            ));
        }
        for s in &m.sections {
            let size = std::fs::metadata(dir.join(&s.file)).ok().map(|md| md.len());
            match size {
                None => problems.push(format!("{} is missing", s.file)),
                Some(n) if n != s.bytes => problems.push(format!(
                    "{} is {n} bytes; the manifest says {}",
                    s.file, s.bytes
                )),
                Some(_) => {}
            }
            disk_sizes.push(size);
        }
        if let Some(c) = configured {
            let diffs = m.structural.diff(c);
            if !diffs.is_empty() {
                let d: Vec<String> = diffs
                    .iter()
                    .map(|d| format!("{} {} (structural.json: {})", d.field, d.data, d.configured))
                    .collect();
                problems.push(format!(
                    "built with other structural parameters: {}",
                    d.join(", ")
                ));
            }
        }
    }
    let verify = (verify && problems.is_empty())
        .then(|| {
            manifest
                .as_ref()
                .map(|m| full_load(dir, configured.unwrap_or(&m.structural), m))
        })
        .flatten();
    Snap {
        dir: dir.to_path_buf(),
        manifest,
        disk_bytes,
        disk_sizes,
        problems,
        verify,
    }
}

/// Loads the snapshot the way a starting node does, then drops it.
fn full_load(dir: &Path, configured: &StructuralConfig, m: &Manifest) -> Verify {
    let mut knobs = EngineKnobs::from(&RuntimeConfig::default());
    // One indexing thread, and a queue that holds the whole unindexed tail
    // (the tail is re-queued on load; we stop before indexing much of it).
    knobs.threads = 1;
    knobs.queue_capacity = knobs.queue_capacity.max(m.counts.slots as usize + 1);
    let started = Instant::now();
    let ok = snapshot::load(dir, configured, knobs, &VectorStorage::Heap)
        .map(drop)
        .map_err(|e| e.to_string());
    Verify {
        ok,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn applied_text(m: &Manifest) -> String {
    match m.applied {
        Some(a) => format!("index {} term {} (node {})", a.index, a.term, a.node_id),
        None => "none (empty state)".into(),
    }
}

fn to_text(r: &Report) -> String {
    let mut out = String::new();
    let structural = match &r.structural {
        Ok(Some(s)) => format!("{s} (hash {})", s.hash()),
        Ok(None) => "no structural.json".into(),
        Err(e) => format!("UNREADABLE: {e}"),
    };
    out += &kv(&[
        ("data dir", r.data_dir.display().to_string()),
        ("structural", structural),
        ("snapshots", r.snapshots.len().to_string()),
    ]);
    let now = output::now_unix_ms();
    for (i, s) in r.snapshots.iter().enumerate() {
        let state = if s.valid() { "valid" } else { "INVALID" };
        let newest = if i == 0 { " (newest)" } else { "" };
        out += &format!("\nsnapshot {}{newest}: {state}\n", s.name());
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(m) = &s.manifest {
            let c = &m.counts;
            let at = m.saved_at_unix_ms as i64;
            pairs.push((
                "format",
                format!(
                    "{} (written by kindex {})",
                    m.format_version, m.kindex_version
                ),
            ));
            pairs.push((
                "saved at",
                format!("{} ({} ago)", output::rfc3339_ms(at), output::age(now - at)),
            ));
            pairs.push(("applied", applied_text(m)));
            pairs.push((
                "vectors",
                format!(
                    "{} live, {} indexed, {} tombstoned, {} purged, {} slots",
                    c.live, c.indexed, c.tombstoned, c.purged, c.slots
                ),
            ));
            pairs.push((
                "structural",
                format!("{} (hash {})", m.structural, m.structural_hash),
            ));
            pairs.push(("checksum", format!("{:016x}", m.content_checksum)));
        }
        pairs.push((
            "size",
            format!("{} ({} bytes)", output::bytes(s.disk_bytes), s.disk_bytes),
        ));
        if let Some(v) = &s.verify {
            let res = match &v.ok {
                Ok(()) => "every checksum OK".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            pairs.push(("verify", format!("full load in {:.3}s: {res}", v.seconds)));
        }
        for p in &s.problems {
            pairs.push(("problem", p.clone()));
        }
        for line in kv(&pairs).lines() {
            out += &format!("  {line}\n");
        }
        if let Some(m) = &s.manifest {
            let mut t = Table::new(&["SECTION", "BYTES", "CRC32C", "ON DISK"]);
            for (sec, disk) in m.sections.iter().zip(&s.disk_sizes) {
                let disk = match disk {
                    Some(n) if *n == sec.bytes => "ok".to_string(),
                    Some(n) => format!("{n} bytes"),
                    None => "missing".into(),
                };
                t.row(vec![
                    sec.file.clone(),
                    sec.bytes.to_string(),
                    sec.crc32c.clone(),
                    disk,
                ]);
            }
            for line in t.render().lines() {
                out += &format!("  {line}\n");
            }
        }
    }
    out
}

fn to_json(r: &Report, ok: bool) -> Value {
    let structural = match &r.structural {
        Ok(Some(s)) => json!({"config": s, "hash": s.hash()}),
        Ok(None) => Value::Null,
        Err(e) => json!({"error": e}),
    };
    let snapshots: Vec<Value> = r
        .snapshots
        .iter()
        .map(|s| {
            let mut v = json!({
                "name": s.name(),
                "path": s.dir.display().to_string(),
                "valid": s.valid(),
                "problems": s.problems,
                "bytes": s.disk_bytes,
                "verify": s.verify.as_ref().map(|v| json!({
                    "ok": v.ok.is_ok(),
                    "error": v.ok.as_ref().err(),
                    "seconds": v.seconds,
                })),
            });
            if let (Some(m), Value::Object(o)) = (&s.manifest, &mut v) {
                let sections: Vec<Value> = m
                    .sections
                    .iter()
                    .zip(&s.disk_sizes)
                    .map(|(sec, disk)| json!({"file": sec.file, "bytes": sec.bytes, "crc32c": sec.crc32c, "onDiskBytes": disk}))
                    .collect();
                let extra = json!({
                    "formatVersion": m.format_version,
                    "kindexVersion": m.kindex_version,
                    "savedAtUnixMs": m.saved_at_unix_ms,
                    "savedAt": output::rfc3339_ms(m.saved_at_unix_ms as i64),
                    "applied": m.applied.map(|a| json!({"term": a.term, "nodeId": a.node_id, "index": a.index})),
                    "counts": m.counts,
                    "structural": m.structural,
                    "structuralHash": m.structural_hash,
                    "contentChecksum": format!("{:016x}", m.content_checksum),
                    "sections": sections,
                });
                if let Value::Object(e) = extra {
                    o.extend(e);
                }
            }
            v
        })
        .collect();
    json!({
        "dataDir": r.data_dir.display().to_string(),
        "structural": structural,
        "snapshots": snapshots,
        "ok": ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindex_node::engine::distance::Metric;
    use kindex_node::engine::{AppliedLog, Engine, PointInput};

    fn data_dir() -> (tempfile::TempDir, StructuralConfig) {
        let dir = tempfile::tempdir().unwrap();
        let s = StructuralConfig {
            dimension: 3,
            metric: Metric::L2,
            m: 8,
            ef_construction: 32,
            shards: 1,
            quantization: Default::default(),
        };
        structural::store(dir.path(), &s).unwrap();
        let engine = Engine::new(s.clone(), EngineKnobs::from(&RuntimeConfig::default()));
        let pts: Vec<PointInput> = (0..20)
            .map(|i| PointInput {
                id: format!("p{i}"),
                vector: vec![i as f32, 1.0, 2.0],
                payload: None,
            })
            .collect();
        engine.upsert(&pts).unwrap();
        engine.set_applied(AppliedLog {
            term: 1,
            node_id: 1,
            index: 1,
        });
        let store = SnapshotStore::open(dir.path().join("snapshots")).unwrap();
        kindex_node::raft::snapshot::save_engine(&store, &engine, 2, snapshot::FORMAT_VERSION)
            .unwrap();
        (dir, s)
    }

    #[test]
    fn valid_data_dir_verifies() {
        let (dir, s) = data_dir();
        let r = collect(dir.path(), true).unwrap();
        assert_eq!(r.structural.as_ref().unwrap().as_ref(), Some(&s));
        assert_eq!(r.snapshots.len(), 1);
        let snap = &r.snapshots[0];
        assert!(snap.valid(), "{:?}", snap.problems);
        assert!(snap.verify.as_ref().unwrap().ok.is_ok());
        assert_eq!(snap.manifest.as_ref().unwrap().counts.live, 20);
        let text = to_text(&r);
        assert!(text.contains("20 live"), "{text}");
        assert!(text.contains("vectors.sect"), "{text}");
        let j = to_json(&r, true);
        assert_eq!(j["snapshots"][0]["counts"]["live"], 20);
        assert_eq!(j["snapshots"][0]["applied"]["index"], 1);
    }

    #[test]
    fn corruption_is_found_by_verify_only() {
        let (dir, _) = data_dir();
        let snap = snapshot_dirs(dir.path()).unwrap().remove(0);
        let vectors = snap.join("vectors.sect");
        let mut bytes = std::fs::read(&vectors).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&vectors, bytes).unwrap();
        assert!(collect(dir.path(), false).unwrap().snapshots[0].valid());
        let r = collect(dir.path(), true).unwrap();
        let err = r.snapshots[0]
            .verify
            .as_ref()
            .unwrap()
            .ok
            .clone()
            .unwrap_err();
        assert!(err.contains("vectors.sect"), "{err}");
        assert!(!r.snapshots[0].valid());
    }

    #[test]
    fn missing_section_and_drift_are_problems() {
        let (dir, s) = data_dir();
        let snap = snapshot_dirs(dir.path()).unwrap().remove(0);
        std::fs::remove_file(snap.join("graph.sect")).ok();
        std::fs::remove_file(snap.join("RAFT_META")).unwrap();
        structural::store(dir.path(), &StructuralConfig { dimension: 4, ..s }).unwrap();
        let r = collect(dir.path(), false).unwrap();
        let p = r.snapshots[0].problems.join("; ");
        assert!(p.contains("dimension 3 (structural.json: 4)"), "{p}");
        assert!(p.contains("graph.sect is missing"), "{p}");
        assert!(p.contains("raft meta"), "{p}");
        assert!(!r.snapshots[0].valid());
        // A snapshot dir given directly works too.
        assert_eq!(collect(&snap, false).unwrap().snapshots.len(), 1);
    }
}
