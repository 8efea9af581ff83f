//! An int8 shard with its f32 vectors on disk (issue 19) under faults: three replicas started
//! with `--quantization int8 --vectors-on-disk`, writers upserting (new points and overwrites) while the leader is killed with -9 and
//! restarted, then a follower's data dir wiped and refilled by a snapshot (taken on demand,
//! the log behind it purged, so the log cannot serve it). At the end the history checker
//! finds every acknowledged write on every replica, the three run int8 (structural hash) with
//! their vectors in mapped files under `<data dir>/vectors`, and the same searches give the same
//! hits, with the same distances, on all three.

use std::collections::BTreeMap;
use std::time::Duration;

use kindex_common::{Metric, Quantization, StructuralConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::procs::history::{History, ReplicaState, Write};
use super::*;

const DIM: u32 = 16;
const K: u32 = 10;
/// Points loaded before the faults: past the 1,000 an int8 shard trains its ranges on.
const PRELOAD: u64 = 1_500;

/// The vector an upsert of `version` writes: uniform in [-1, 1)^DIM, from the version alone,
/// so the final state's vectors follow from the versions the replicas hold.
fn vector_of(version: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(0x1919_0000 + version);
    (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn point(h: &History, key: String) -> (pb::Point, usize) {
    let v = h.next_version();
    let op = h.invoke(&key, Write::Upsert(v));
    let p = pb::Point {
        id: key,
        vector: vector_of(v),
        payload_json: Some(format!(r#"{{"v":{v}}}"#)),
    };
    (p, op)
}

/// Upserts `points` through `p`; acknowledges their operations in `h` on success.
async fn write(h: &History, p: &PointsClient<Channel>, batch: Vec<(pb::Point, usize)>) -> bool {
    let (points, ops): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let mut req = tonic::Request::new(pb::UpsertRequest {
        index: String::new(),
        points,
    });
    req.set_timeout(Duration::from_secs(5));
    let ok = p.clone().upsert(req).await.is_ok();
    if ok {
        ops.into_iter().for_each(|op| h.ack(op));
    }
    ok
}

/// A writer: batches of 4 new keys and 1 overwrite of one of its earlier keys, round-robin
/// over the nodes, moving to the next node after an error (bounded by `stop`). Returns
/// (acknowledged, failed) batches.
fn spawn_int8_writer(
    me: u64,
    urls: Vec<String>,
    h: Arc<History>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let clients: Vec<PointsClient<Channel>> = urls
            .iter()
            .map(|u| {
                PointsClient::new(
                    tonic::transport::Endpoint::from_shared(u.clone())
                        .unwrap()
                        .connect_timeout(Duration::from_millis(500))
                        .connect_lazy(),
                )
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(100 + me);
        let (mut ok, mut failed, mut next, mut at) = (0u64, 0u64, 0u64, me as usize);
        while !stop.load(Ordering::Relaxed) {
            let mut batch: Vec<(pb::Point, usize)> = (next..next + 4)
                .map(|i| point(&h, format!("w{me}-{i}")))
                .collect();
            if next > 0 {
                let old = rng.random_range(0..next);
                batch.push(point(&h, format!("w{me}-{old}")));
            }
            next += 4;
            if write(&h, &clients[at % clients.len()], batch).await {
                ok += 1;
            } else {
                failed += 1;
                at += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        (ok, failed)
    })
}

/// What node `p`'s own replica holds for `keys`: key → version (from the payload).
async fn replica_versions(p: &Proc, keys: &[String]) -> ReplicaState {
    let mut out: ReplicaState = keys.iter().map(|k| (k.clone(), None)).collect();
    for chunk in keys.chunks(500) {
        let mut req = tonic::Request::new(pb::GetRequest {
            ids: chunk.to_vec(),
            with_payload: true,
            consistency: pb::Consistency::Eventual as i32,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("kindex-shard-local", "0".parse().unwrap());
        for got in p.points().get(req).await.unwrap().into_inner().points {
            let payload: serde_json::Value =
                serde_json::from_str(got.payload_json.as_deref().unwrap()).unwrap();
            let v = payload["v"].as_u64().unwrap();
            out.insert(got.id, Some(v));
        }
    }
    out
}

/// Node `p`'s own hits for `q` (shard-local, eventual: served by its own engine).
async fn local_search(
    p: &Proc,
    q: &[f32],
    ef: Option<u32>,
    rescore: Option<u32>,
) -> Vec<(String, u32)> {
    let mut req = tonic::Request::new(pb::SearchRequest {
        vector: q.to_vec(),
        k: K,
        ef_search: ef,
        rescore,
        consistency: pb::Consistency::Eventual as i32,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("kindex-shard-local", "0".parse().unwrap());
    let r = p.points().search(req).await.unwrap().into_inner();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    // Distances compared bit for bit: every replica computes them from the same f32 vectors.
    r.hits
        .into_iter()
        .map(|h| (h.id, h.distance.to_bits()))
        .collect()
}

/// Bytes of node `p`'s address space mapped from (unnamed) files in its `<data dir>/vectors`:
/// the f32 vectors `--vectors-on-disk` keeps out of anonymous memory.
fn mapped_vector_bytes(p: &Proc) -> u64 {
    let pid = p.pid().expect("node running");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let dir = p.dir.join("vectors");
    let dir = dir.to_str().unwrap();
    maps.lines()
        .filter(|l| l.contains(dir))
        .map(|l| {
            let (lo, hi) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            u64::from_str_radix(hi, 16).unwrap() - u64::from_str_radix(lo, 16).unwrap()
        })
        .sum()
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn int8_shard_with_vectors_on_disk_survives_a_leader_kill_and_a_wiped_replica() {
    let _serial = serial().await;
    let mut c = Cluster::start_with(
        1,
        3,
        DIM,
        Opts {
            bootstrap: false,
            extra_args: [
                "--quantization",
                "int8",
                "--vectors-on-disk",
                "--raft-log-keep",
                "5",
            ]
                .map(String::from)
                .to_vec(),
            runtime: Some(
                r#"{"indexingThreads": 1, "snapshotLogEntries": 1000, "snapshotIntervalSecs": 3600}"#
                    .into(),
            ),
            ..Opts::default()
        },
    );
    with_timeout(Duration::from_secs(300), async {
        let t = Instant::now();
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        let h = History::new();

        // Preload (acknowledged) past the int8 training threshold.
        let client = c.node(0, leader).points();
        for b in 0..PRELOAD / 100 {
            let batch = (b * 100..(b + 1) * 100)
                .map(|i| point(&h, format!("p{i}")))
                .collect();
            assert!(write(&h, &client, batch).await, "preload batch {b}");
        }

        // Two writers over all three nodes for the rest of the test.
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = c.nodes.iter().map(Proc::grpc_url).collect();
        let writers: Vec<_> = (0..2)
            .map(|me| spawn_int8_writer(me, urls.clone(), h.clone(), stop.clone()))
            .collect();
        let acked = || h.ops().iter().filter(|o| o.complete.is_some()).count();

        // kill -9 of the leader in the middle of the load, then back from its data dir.
        let before = acked();
        wait_for("writes flowing", WAIT, || async { (acked() >= before + 200).then_some(()) }).await;
        c.kill(0, leader);
        let killed_at = Instant::now();
        let new_leader = wait_leader(&c, Some(leader)).await;
        let after_kill = acked();
        wait_for("writes resume", WAIT, || async { (acked() >= after_kill + 100).then_some(()) }).await;
        c.restart(0, leader);
        wait_for("the old leader ready again", WAIT, || async {
            http_get(&c.node(0, leader).http, "/readyz")
                .is_some_and(|(code, _)| code == 200)
                .then_some(())
        })
        .await;
        eprintln!(
            "killed leader {leader}: new leader {new_leader}, old one back after {:?}; {} writes acknowledged",
            killed_at.elapsed(),
            acked()
        );

        // A snapshot on the leader, the log behind it purged (but 5 entries): a replica that
        // lost its volume can only be refilled by the snapshot.
        let killed = leader;
        let leader = wait_leader(&c, None).await;
        let snap = c
            .node(0, leader)
            .admin()
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        let snap_index = snap.log_id.unwrap().index;
        wait_for("log purged up to the snapshot", WAIT, || async {
            c.node(0, leader)
                .metric("kindex_raft_purged_index")
                .filter(|p| *p + 10.0 >= snap_index as f64)
                .map(drop)
        })
        .await;

        // A follower loses its volume: removed from the voters, wiped, restarted empty, added
        // back as a learner (it installs the snapshot), then a voter again, as the operator
        // does. The writers go on all along.
        // The replica that was not killed (if it follows), so each of the three had a fault.
        let lost = (0..3)
            .find(|&i| i != leader && i != killed)
            .unwrap_or((leader + 1) % 3);
        c.kill(0, lost);
        let voters: Vec<u64> = (0..3).filter(|&i| i != lost).collect();
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest { voters, retain: false })
            .await
            .unwrap();
        std::fs::remove_dir_all(&c.node(0, lost).dir).unwrap();
        let after_wipe = acked();
        wait_for("writes go on with two voters", WAIT, || async {
            (acked() >= after_wipe + 100).then_some(())
        })
        .await;
        c.restart(0, lost);
        wait_answering(&c, &[lost]).await;
        assert!(!c.node(0, lost).status().await.unwrap().initialized);
        c.node(0, leader)
            .admin()
            .add_learner(pb::AddLearnerRequest {
                member: Some(pb::Member {
                    node_id: lost,
                    addr: c.node(0, lost).member_addr(),
                    voter: false,
                }),
                blocking: true,
            })
            .await
            .unwrap();
        wait_for("the learner installed the snapshot", WAIT, || async {
            let s = c.node(0, lost).status().await?;
            (s.snapshot?.index >= snap_index).then_some(())
        })
        .await;
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest { voters: vec![0, 1, 2], retain: false })
            .await
            .unwrap();
        let after_join = acked();
        wait_for("writes after the rejoin", WAIT, || async {
            (acked() >= after_join + 100).then_some(())
        })
        .await;

        stop.store(true, Ordering::Relaxed);
        for (me, w) in writers.into_iter().enumerate() {
            let (ok, failed) = w.await.unwrap();
            eprintln!("writer {me}: {ok} batches acknowledged, {failed} failed attempts");
        }

        // Every replica applied the same log and holds the same content, and indexed it all.
        let last = c.node(0, leader).status().await.unwrap().applied.unwrap().index;
        let (applied, sum) = converge(&c, last).await;
        for id in 0..3 {
            wait_for(&format!("node {id} indexed everything"), WAIT, || async {
                (c.node(0, id).metric("kindex_index_queue_depth")? == 0.0).then_some(())
            })
            .await;
        }

        // No acknowledged write lost, none resurrected or stale, replicas equal.
        let keys = h.keys();
        let mut states = Vec::new();
        for id in 0..3 {
            states.push((format!("node {id}"), replica_versions(c.node(0, id), &keys).await));
        }
        let report = h.check(&states);
        assert!(report.ok(), "{report}\n{:#?}", report);
        assert!(report.acked as u64 > PRELOAD + 500, "{report}");

        // All three run int8: the structural hash they report is the int8 config's.
        let int8 = StructuralConfig {
            dimension: DIM,
            metric: Metric::L2,
            m: 16,
            ef_construction: 200,
            shards: 1,
            quantization: Quantization::Int8,
        };
        // Their automatic volume reserve keeps room for one more chunk of vectors (16,384 slots).
        let chunk = kindex_node::engine::arena::chunk_bytes(DIM as usize);
        for id in 0..3 {
            let s = c.node(0, id).status().await.unwrap();
            assert_eq!(s.structural_hash, int8.hash(), "node {id}: {s:?}");
            let v = s.volume.expect("volume reported");
            let auto = kindex_node::volume::Reserve::Auto.bytes(v.total_bytes);
            assert_eq!(v.reserve_bytes, auto + chunk, "node {id}: {v:?}");
        }

        // The final state, from the versions the replicas agree on: exact answers by brute force.
        let live: BTreeMap<&String, Vec<f32>> = states[0]
            .1
            .iter()
            .filter_map(|(k, v)| Some((k, vector_of((*v)?))))
            .collect();
        // All three hold their f32 vectors in file mappings (the wiped one too, which loaded
        // them from the snapshot): at least 4 bytes per dimension of every live point.
        let mut mapped = Vec::new();
        for id in 0..3 {
            let bytes = mapped_vector_bytes(c.node(0, id));
            let need = live.len() as u64 * 4 * u64::from(DIM);
            assert!(bytes >= need, "node {id}: {bytes} B mapped, {need} B of vectors");
            mapped.push(bytes);
        }
        let mut rng = StdRng::seed_from_u64(1919);
        let queries: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect();
        let (mut same_default, mut same_narrow, mut rescore_matters) = (0, 0, [false; 3]);
        for (i, q) in queries.iter().enumerate() {
            let mut exact: Vec<(f32, &String)> = live.iter().map(|(k, v)| (l2(v, q), *k)).collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let exact: Vec<&String> = exact.iter().take(K as usize).map(|(_, k)| *k).collect();

            // Wide rescoring: every replica must give the exact answer, the same bits.
            let mut wide = Vec::new();
            let mut default = Vec::new();
            let mut narrow = Vec::new();
            for id in 0..3 {
                let p = c.node(0, id);
                wide.push(local_search(p, q, None, Some(100)).await);
                default.push(local_search(p, q, None, None).await);
                narrow.push(local_search(p, q, Some(K), Some(1)).await);
                rescore_matters[id as usize] |= narrow[id as usize] != wide[id as usize];
            }
            // A walk of only k candidates on the codes: the replicas share their int8 ranges
            // (replicated state) but not their graphs (each links points as its own indexing
            // runs), so these may differ; reported, not required.
            same_narrow += usize::from(narrow[1] == narrow[0] && narrow[2] == narrow[0]);
            let ids: Vec<&String> = wide[0].iter().map(|(id, _)| id).collect();
            assert_eq!(ids, exact, "query {i}: node 0 vs brute force");
            assert_eq!(wide[1], wide[0], "query {i}: node 1 vs node 0 (rescore 100)");
            assert_eq!(wide[2], wide[0], "query {i}: node 2 vs node 0 (rescore 100)");
            // The index's own settings (efSearch 64, rescore 3): equal hits on all three too.
            assert_eq!(default[1], default[0], "query {i}: node 1 vs node 0 (defaults)");
            assert_eq!(default[2], default[0], "query {i}: node 2 vs node 0 (defaults)");
            same_default += usize::from(default[0] == wide[0]);
        }
        // The codes are in use on every replica (with `none` the rescoring factor changes
        // nothing): a walk keeping only k candidates on the codes misses somewhere.
        assert_eq!(rescore_matters, [true; 3], "rescore 1 vs 100 differ on each replica");
        eprintln!(
            "int8 shard: {report}; applied {applied}, checksum {sum:016x}, snapshot {snap_index} \
             installed on wiped node {lost}; {} live points, vectors mapped {mapped:?} B; of {} queries, {} at the defaults \
             equal the exact answer, {} at efSearch {K} + rescore 1 equal on all three; {:?}",
            live.len(),
            queries.len(),
            same_default,
            same_narrow,
            t.elapsed()
        );
    })
    .await;
}
