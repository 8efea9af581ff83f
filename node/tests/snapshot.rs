#![allow(clippy::unwrap_used)]
//! Snapshot durability: round trip, corruption fallback, interrupted writes,
//! format migration, structural mismatch, and arbitrary bytes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kindex_node::engine::distance::Metric;
use kindex_node::engine::filter::Filter;
use kindex_node::engine::{AppliedLog, Engine, PointInput};
use kindex_node::snapshot::{self, SaveOptions, section};
use proptest::prelude::*;
use serde_json::json;

fn filled(n: usize) -> Engine {
    let e = Engine::new(structural(16, Metric::Cosine), knobs());
    let pts: Vec<PointInput> = clustered(n, 16, 11)
        .into_iter()
        .enumerate()
        .map(|(i, v)| PointInput {
            id: format!("id-{i}"),
            vector: v,
            payload: (i % 2 == 0).then(|| json!({"i": i}).as_object().unwrap().clone()),
        })
        .collect();
    load(&e, &pts);
    e.delete(&["id-3".into(), "id-4".into()]).unwrap();
    e.set_applied(AppliedLog {
        term: 2,
        node_id: 1,
        index: n as u64,
    });
    e
}

fn same_content(a: &Engine, b: &Engine) {
    assert_eq!(a.count(), b.count());
    assert_eq!(a.content_checksum(), b.content_checksum());
    assert_eq!(a.get("id-10"), b.get("id-10"));
    assert!(b.get("id-3").is_none());
}

#[test]
fn round_trip_keeps_content_graph_and_queue() {
    let dir = tempfile::tempdir().unwrap();
    let e = filled(3000);
    let saved = snapshot::save(
        &e,
        dir.path(),
        &SaveOptions {
            raft_meta: b"meta".to_vec(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(saved.manifest.counts.live, 2998);
    let l = snapshot::load_latest(dir.path(), e.structural(), knobs())
        .unwrap()
        .unwrap();
    assert_eq!(l.raft_meta, b"meta");
    assert_eq!(l.engine.applied(), e.applied());
    same_content(&e, &l.engine);
    assert!(l.engine.drain(Duration::from_secs(60)));
    let q = clustered(30, 16, 12);
    let r = recall(&l.engine, &q, 10, 64, &Filter::default());
    assert!(r >= 0.95, "recall after load {r}");
}

#[test]
fn unindexed_tail_is_requeued_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::new(
        structural(16, Metric::L2),
        kindex_node::engine::EngineKnobs {
            threads: 1,
            batch_size: 16,
            ..knobs()
        },
    );
    load(&e, &points(&clustered(20_000, 16, 13)));
    let saved = snapshot::save(&e, dir.path(), &SaveOptions::default()).unwrap();
    drop(e);
    let l = snapshot::load_latest(dir.path(), &structural(16, Metric::L2), knobs())
        .unwrap()
        .unwrap();
    assert_eq!(l.engine.count(), 20_000);
    assert!(l.engine.drain(Duration::from_secs(60)));
    assert!(saved.manifest.counts.indexed <= 20_000);
    let q = clustered(20, 16, 14);
    assert!(recall(&l.engine, &q, 10, 64, &Filter::default()) >= 0.95);
}

#[test]
fn corrupt_newest_falls_back_to_previous_for_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = filled(500);
    let old = snapshot::save(&e, dir.path(), &SaveOptions::default()).unwrap();
    e.upsert(&[PointInput {
        id: "new".into(),
        vector: vec![1.0; 16],
        payload: None,
    }])
    .unwrap();
    e.set_applied(AppliedLog {
        term: 2,
        node_id: 1,
        index: 9999,
    });
    let new = snapshot::save(&e, dir.path(), &SaveOptions::default()).unwrap();
    for entry in std::fs::read_dir(&new.dir).unwrap() {
        let path = entry.unwrap().path();
        let good = std::fs::read(&path).unwrap();
        // A byte in the middle of the payload and one in the header.
        for at in [good.len() / 2, 20] {
            let mut bad = good.clone();
            bad[at] ^= 0xff;
            std::fs::write(&path, &bad).unwrap();
            let l = snapshot::load_latest(dir.path(), e.structural(), knobs())
                .unwrap()
                .unwrap();
            assert_eq!(
                l.dir,
                old.dir,
                "{} byte {at}: should fall back",
                path.display()
            );
            assert_eq!(l.skipped.len(), 1);
            assert!(!l.skipped[0].1.is_empty());
            assert!(l.engine.get("new").is_none());
        }
        std::fs::write(&path, &good).unwrap();
    }
    let l = snapshot::load_latest(dir.path(), e.structural(), knobs())
        .unwrap()
        .unwrap();
    assert_eq!(l.dir, new.dir);
    assert!(l.engine.get("new").is_some());
}

#[test]
fn crash_before_rename_leaves_previous_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let e = filled(300);
    let good = snapshot::save(&e, dir.path(), &SaveOptions::default()).unwrap();
    // Simulate a crash mid-write: a temp dir with partial files, never renamed.
    let tmp = dir
        .path()
        .join(".tmp-snap-99999999999999999999-0000000002-0000000000000");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("vectors.sect"), b"KIDXSECT partial").unwrap();
    let l = snapshot::load_latest(dir.path(), e.structural(), knobs())
        .unwrap()
        .unwrap();
    assert_eq!(l.dir, good.dir);
    // The next save cleans the leftovers up.
    snapshot::save(&e, dir.path(), &SaveOptions::default()).unwrap();
    assert!(!tmp.exists());
}

#[test]
fn keeps_only_the_last_n() {
    let dir = tempfile::tempdir().unwrap();
    let e = filled(50);
    for i in 0..5 {
        e.set_applied(AppliedLog {
            term: 1,
            node_id: 0,
            index: 100 + i,
        });
        snapshot::save(
            &e,
            dir.path(),
            &SaveOptions {
                keep: 2,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let left = snapshot::list(dir.path()).unwrap();
    assert_eq!(left.len(), 2);
    assert!(left[1].to_string_lossy().contains("00000000000000000104"));
}

#[test]
fn structural_mismatch_names_the_field_and_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let e = filled(50);
    snapshot::save(&e, dir.path(), &SaveOptions::default()).unwrap();
    let other = kindex_node::config::StructuralConfig {
        m: 32,
        ..e.structural().clone()
    };
    let err = snapshot::load_latest(dir.path(), &other, knobs())
        .err()
        .unwrap();
    assert!(err.is_fatal());
    let msg = err.to_string();
    assert!(msg.contains("m=16") && msg.contains("m=32"), "{msg}");
}

#[test]
fn newer_format_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let e = filled(50);
    snapshot::save(&e, dir.path(), &SaveOptions::default()).unwrap();
    snapshot::save(
        &e,
        dir.path(),
        &SaveOptions {
            format_version: snapshot::FORMAT_VERSION + 1,
            ..Default::default()
        },
    )
    .unwrap();
    let err = snapshot::load_latest(dir.path(), e.structural(), knobs())
        .err()
        .unwrap();
    assert!(err.is_fatal());
    assert!(err.to_string().contains("newer kindex"), "{err}");
}

#[test]
fn format_1_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let e = filled(400);
    snapshot::save(
        &e,
        dir.path(),
        &SaveOptions {
            format_version: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let l = snapshot::load_latest(dir.path(), e.structural(), knobs())
        .unwrap()
        .unwrap();
    assert_eq!(l.manifest.format_version, 1);
    same_content(&e, &l.engine);
    // Re-saving writes the current format.
    let again = snapshot::save(&l.engine, dir.path(), &SaveOptions::default()).unwrap();
    assert_eq!(again.manifest.format_version, snapshot::FORMAT_VERSION);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Arbitrary bytes in any section never panic the reader: raw garbage
    /// (caught by framing/CRC) and garbage re-framed with a valid checksum
    /// (reaches the section decoders).
    #[test]
    fn arbitrary_bytes_never_panic(file in 0usize..7, garbage in proptest::collection::vec(any::<u8>(), 0..512), keep_header in any::<bool>(), reframe in any::<bool>()) {
        let src = tempfile::tempdir().unwrap();
        let e = Engine::new(structural(4, Metric::L2), knobs());
        load(&e, &points(&clustered(60, 4, 15)));
        let saved = snapshot::save(&e, src.path(), &SaveOptions::default()).unwrap();
        let work = tempfile::tempdir().unwrap();
        let dst = work.path().join(saved.dir.file_name().unwrap());
        copy_dir(&saved.dir, &dst);
        let mut files: Vec<_> = std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let target = &files[file % files.len()];
        if reframe {
            let name = target.file_name().unwrap().to_string_lossy().into_owned();
            let kind = section::Kind::from_file_name(&name).unwrap();
            let mut w = section::SectionWriter::create(target, snapshot::FORMAT_VERSION, kind).unwrap();
            w.write(&garbage).unwrap();
            w.finish().unwrap();
        } else {
            let mut bytes = if keep_header { std::fs::read(target).unwrap()[..24].to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&garbage);
            std::fs::write(target, bytes).unwrap();
        }
        let _ = snapshot::load(&dst, e.structural(), knobs());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Valid payloads with a few bytes changed and a fresh, valid checksum:
    /// the decoders behind the CRC must reject or accept, never panic.
    #[test]
    fn mutated_payloads_with_valid_crc_never_panic(file in 0usize..7, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let src = tempfile::tempdir().unwrap();
        let e = Engine::new(structural(4, Metric::L2), knobs());
        let pts: Vec<PointInput> = clustered(80, 4, 16).into_iter().enumerate().map(|(i, v)| PointInput {
            id: format!("x{i}"), vector: v, payload: Some(json!({"i": i}).as_object().unwrap().clone()),
        }).collect();
        load(&e, &pts);
        e.drain(Duration::from_secs(10));
        e.delete(&["x1".into()]).unwrap();
        let saved = snapshot::save(&e, src.path(), &SaveOptions::default()).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&saved.dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let target = &files[file % files.len()];
        let kind = section::Kind::from_file_name(&target.file_name().unwrap().to_string_lossy()).unwrap();
        let sect = section::read(target, kind, snapshot::FORMAT_VERSION).unwrap();
        let mut payload = sect.payload().to_vec();
        if !payload.is_empty() {
            for (at, x) in flips {
                let n = payload.len();
                payload[at % n] ^= x | 1;
            }
        }
        let mut w = section::SectionWriter::create(target, snapshot::FORMAT_VERSION, kind).unwrap();
        w.write(&payload).unwrap();
        w.finish().unwrap();
        let _ = snapshot::load(&saved.dir, e.structural(), knobs());
    }
}
