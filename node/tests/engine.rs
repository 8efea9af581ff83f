#![allow(clippy::unwrap_used)]
//! Engine behaviour: recall for every metric, filters, tail visibility,
//! deletes, compaction and backpressure.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kindex_node::engine::distance::Metric;
use kindex_node::engine::filter::{Condition, Filter, MatchValue, Predicate, RangeBounds};
use kindex_node::engine::{Engine, EngineKnobs, PointInput};
use serde_json::json;

#[test]
fn recall_for_every_metric() {
    let data = clustered(3000, 32, 1);
    let queries = clustered(100, 32, 2);
    // Maximum inner product (dot on unnormalised vectors) is not a metric
    // space, so it needs a wider beam for the same recall.
    // One indexing worker, so the graph and its recall are the same on every run (with
    // several, insertion order varies with machine load; a loaded CI machine fell below 0.95).
    for (metric, ef) in [(Metric::Cosine, 64), (Metric::L2, 64), (Metric::Dot, 128)] {
        let e = Engine::new(
            structural(32, metric),
            EngineKnobs {
                threads: 1,
                ..knobs()
            },
        );
        load(&e, &points(&data));
        assert!(e.drain(Duration::from_secs(60)));
        let r = recall(&e, &queries, 10, ef, &Filter::default());
        assert!(r >= 0.95, "{metric}: recall@10 {r}");
    }
}

#[test]
fn filtered_search_keeps_recall_and_only_returns_matches() {
    let data = clustered(3000, 16, 3);
    let pts: Vec<PointInput> = data
        .iter()
        .enumerate()
        .map(|(i, v)| PointInput {
            id: format!("p{i}"),
            vector: v.clone(),
            payload: Some(
                json!({"bucket": (i % 10) as i64, "year": 2000 + (i % 30) as i64})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        })
        .collect();
    // One indexing worker: the graph (and so the recall) is the same on every run; with
    // several, insertion order varies and a busy machine once gave 0.89.
    let e = Engine::new(
        structural(16, Metric::L2),
        EngineKnobs {
            threads: 1,
            ..knobs()
        },
    );
    load(&e, &pts);
    assert!(e.drain(Duration::from_secs(60)));
    let queries = clustered(50, 16, 4);
    // 10% selectivity, equality.
    let eq = Filter {
        must: vec![Condition {
            field: "bucket".into(),
            predicate: Predicate::Match(MatchValue::Integer(3)),
        }],
        ..Default::default()
    };
    let r = recall(&e, &queries, 10, 64, &eq);
    assert!(r >= 0.9, "equality filter recall {r}");
    for q in &queries {
        for h in e.search(q, 10, None, &eq).unwrap() {
            assert_eq!(e.payload(h.slot).unwrap()["bucket"], json!(3));
        }
    }
    // ~3% selectivity, range.
    let range = Filter {
        must: vec![Condition {
            field: "year".into(),
            predicate: Predicate::Range(RangeBounds {
                gte: Some(2010.0),
                lt: Some(2011.0),
                ..Default::default()
            }),
        }],
        ..Default::default()
    };
    let r = recall(&e, &queries, 10, 64, &range);
    assert!(r >= 0.9, "range filter recall {r}");
}

#[test]
fn applied_write_is_found_at_once_even_while_queued() {
    // One slow worker and a large backlog: the new point sits in the queue.
    let knobs = EngineKnobs {
        threads: 1,
        batch_size: 64,
        ..common::knobs()
    };
    let e = Engine::new(structural(32, Metric::L2), knobs);
    load(&e, &points(&clustered(20_000, 32, 5)));
    let probe = vec![9.0f32; 32];
    e.upsert(&[PointInput {
        id: "probe".into(),
        vector: probe.clone(),
        payload: None,
    }])
    .unwrap();
    let queued = e.queue_stats().depth;
    let hits = e.search(&probe, 1, None, &Filter::default()).unwrap();
    assert_eq!(hits[0].id, "probe");
    assert!(hits[0].distance.abs() < 1e-6);
    assert!(
        queued > 0,
        "the probe should still have been queued (depth {queued})"
    );
}

#[test]
fn enqueue_p99_under_100_microseconds() {
    let e = Engine::new(structural(128, Metric::Cosine), knobs());
    let data = clustered(5000, 128, 6);
    let mut lat = Vec::new();
    for (i, v) in data.iter().enumerate() {
        let p = [PointInput {
            id: format!("p{i}"),
            vector: v.clone(),
            payload: None,
        }];
        let t = Instant::now();
        e.upsert(&p).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let p99 = lat[lat.len() * 99 / 100];
    println!("enqueue p50 {:?} p99 {:?}", lat[lat.len() / 2], p99);
    // Generous margin for a loaded CI machine; the benchmark records the real number.
    assert!(p99 < Duration::from_micros(1000), "p99 {p99:?}");
}

#[test]
fn deletes_and_overwrites_are_never_returned_and_compaction_keeps_recall() {
    let data = clustered(4000, 16, 7);
    let e = Engine::new(structural(16, Metric::L2), knobs());
    load(&e, &points(&data));
    assert!(e.drain(Duration::from_secs(60)));
    let doomed: Vec<String> = (0..4000)
        .filter(|i: &usize| i.is_multiple_of(3))
        .map(|i| format!("p{i}"))
        .collect();
    for c in doomed.chunks(500) {
        e.delete(c).unwrap();
    }
    assert_eq!(e.count(), 4000 - doomed.len() as u64);
    // Overwrite one point far away: the old position must not come back.
    e.upsert(&[PointInput {
        id: "p1".into(),
        vector: vec![50.0; 16],
        payload: None,
    }])
    .unwrap();
    let queries = clustered(50, 16, 8);
    for q in &queries {
        for h in e.search(q, 10, None, &Filter::default()).unwrap() {
            let n: usize = h.id[1..].parse().unwrap();
            assert!(!n.is_multiple_of(3), "deleted point {} returned", h.id);
        }
    }
    let hits = e.search(&data[1], 3, None, &Filter::default()).unwrap();
    assert!(
        hits.iter().all(|h| h.id != "p1"),
        "stale version of p1 returned"
    );
    let before = recall(&e, &queries, 10, 64, &Filter::default());
    let stats = e.compact();
    assert_eq!(stats.purged as usize, doomed.len() + 1);
    assert_eq!(e.pending_tombstones(), 0);
    let after = recall(&e, &queries, 10, 64, &Filter::default());
    assert!(
        after >= 0.95 && after >= before - 0.02,
        "recall before {before}, after compaction {after}"
    );
    assert_eq!(
        e.search(&[50.0; 16], 1, None, &Filter::default()).unwrap()[0].id,
        "p1"
    );
}

#[test]
fn checksum_tracks_content_not_history() {
    let data = clustered(200, 8, 9);
    let a = Engine::new(structural(8, Metric::L2), knobs());
    let b = Engine::new(structural(8, Metric::L2), knobs());
    load(&a, &points(&data));
    // b gets the same final content through a detour.
    load(&b, &points(&data[..100]));
    b.upsert(&[PointInput {
        id: "tmp".into(),
        vector: vec![1.0; 8],
        payload: None,
    }])
    .unwrap();
    b.delete(&["tmp".into()]).unwrap();
    load(&b, &points(&data));
    assert_eq!(a.content_checksum(), b.content_checksum());
    b.delete(&["p0".into()]).unwrap();
    assert_ne!(a.content_checksum(), b.content_checksum());
}

#[test]
fn invalid_batch_changes_nothing() {
    let e = Engine::new(structural(4, Metric::L2), knobs());
    e.upsert(&[PointInput {
        id: "a".into(),
        vector: vec![1.0; 4],
        payload: None,
    }])
    .unwrap();
    let sum = e.content_checksum();
    let bad = vec![
        PointInput {
            id: "b".into(),
            vector: vec![1.0; 4],
            payload: None,
        },
        PointInput {
            id: "c".into(),
            vector: vec![f32::NAN; 4],
            payload: None,
        },
    ];
    assert!(e.upsert(&bad).is_err());
    assert_eq!(e.count(), 1);
    assert_eq!(e.content_checksum(), sum);
    assert!(e.get("b").is_none());
}

#[test]
fn runtime_knobs_apply_without_restart() {
    let e = Engine::new(
        structural(8, Metric::L2),
        EngineKnobs {
            threads: 1,
            ..knobs()
        },
    );
    load(&e, &points(&clustered(2000, 8, 10)));
    e.set_knobs(EngineKnobs {
        threads: 2,
        ef_search: 128,
        ..knobs()
    });
    assert_eq!(e.knobs().ef_search, 128);
    assert!(e.drain(Duration::from_secs(60)));
    assert_eq!(e.stats().queued, 0);
}

/// Regression: small batches arriving while workers index and searches run
/// made a graph search meet slots published after it sized its visited set
/// (an indexer panicked and the queue stopped draining).
#[test]
fn trickling_writes_with_concurrent_indexing_and_search_drain() {
    let e = std::sync::Arc::new(Engine::new(structural(16, Metric::L2), knobs()));
    let data = clustered(8000, 16, 21);
    let searcher = {
        let e = e.clone();
        let q = data[0].clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                e.search(&q, 5, None, &Filter::default()).unwrap();
            }
        })
    };
    for (b, chunk) in points(&data).chunks(20).enumerate() {
        e.upsert(chunk)
            .unwrap_or_else(|err| panic!("batch {b}: {err}"));
    }
    searcher.join().expect("searches never panic");
    assert!(
        e.drain(Duration::from_secs(60)),
        "queue drained: {:?}",
        e.stats()
    );
    assert_eq!(e.stats().indexed, 8000);
}

/// The same few documents written and deleted over and over (as a test
/// suite or a re-ingesting pipeline does) leave many tombstoned exact
/// duplicates of every live vector. Each live point must stay findable, with
/// and without a filter that only it matches: duplicates once left a fresh
/// node with no in-link (the heuristic dropped ties), so a search returned
/// fewer than k points although more were live (issue 20's flaky CI run).
#[test]
fn rewritten_duplicates_stay_findable() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let docs = clustered(8, 6, 21);
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let e = Engine::new(structural(6, Metric::Cosine), knobs());
        let rounds = rng.random_range(10..60);
        for round in 0..rounds {
            let pts: Vec<PointInput> = docs
                .iter()
                .enumerate()
                .map(|(i, v)| PointInput {
                    // Some documents keep their id, others get a fresh one each time.
                    id: if i % 2 == 0 {
                        format!("d{i}")
                    } else {
                        format!("d{i}-{round}")
                    },
                    vector: v.clone(),
                    payload: Some(json!({"doc": i as i64}).as_object().unwrap().clone()),
                })
                .collect();
            e.upsert(&pts).unwrap();
            assert!(e.drain(Duration::from_secs(30)));
            if round + 1 == rounds {
                break;
            }
            let ids: Vec<String> = pts.into_iter().map(|p| p.id).collect();
            e.delete(&ids).unwrap();
            if rng.random_bool(0.1) {
                e.compact();
            }
        }
        assert_eq!(e.count(), docs.len() as u64);
        let all = e
            .search(&docs[0], docs.len(), None, &Filter::default())
            .unwrap();
        assert_eq!(
            all.len(),
            docs.len(),
            "seed {seed}: unfiltered search missed live points"
        );
        for (i, v) in docs.iter().enumerate() {
            let only = Filter {
                must: vec![Condition {
                    field: "doc".into(),
                    predicate: Predicate::Match(MatchValue::Integer(i as i64)),
                }],
                ..Default::default()
            };
            let scans = e.stats().exact_fallbacks;
            let got = e
                .search(&docs[(i + 3) % docs.len()], 4, None, &only)
                .unwrap();
            assert_eq!(got.len(), 1, "seed {seed}: doc {i} not found by its filter");
            // One match for k = 4: only an exact scan can know there is no other.
            assert_eq!(e.stats().exact_fallbacks, scans + 1);
            let near = e.search(v, 1, None, &Filter::default()).unwrap();
            assert!(
                near[0].distance.abs() < 1e-5,
                "seed {seed}: doc {i} not nearest to itself"
            );
        }
    }
}

/// A stopping engine does not finish its indexing batch: `shutdown` returns between two
/// inserts (a pod with a backlog stopped ~10 s late in a debug build), and the slots it did
/// not index stay below the watermark's reach, so nothing is marked indexed that is not.
#[test]
fn shutdown_does_not_wait_for_the_current_batch() {
    let n = 10_000;
    let e = Engine::new(
        structural(64, Metric::L2),
        EngineKnobs {
            ef_search: 64,
            threads: 1,
            batch_size: n,
            queue_capacity: 1_000_000,
            rescore: 3,
        },
    );
    // One call: the worker claims the whole backlog as one batch.
    e.upsert(&points(&clustered(n, 64, 7))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = e.queue_stats();
    assert_eq!(
        before.watermark, 0,
        "the batch finished already: {before:?}"
    );
    let t = Instant::now();
    e.shutdown();
    let took = t.elapsed();
    let after = e.queue_stats();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
    assert_eq!(
        after.watermark, 0,
        "an unfinished batch was marked indexed: {after:?}"
    );
    assert_eq!(e.count(), n as u64);
}
