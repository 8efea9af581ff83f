//! Retention (issue 16) on a 3-replica shard: points past a retention policy are hidden from
//! every read at once, on every replica, before any sweep; the leader's sweep removes exactly
//! them through Raft (replicated `pruned` counters equal the points removed, data and policy
//! checksums equal everywhere); a point re-upserted since survives; a leader killed mid-sweep
//! loses no acknowledged write and the next leader finishes the sweep.
//!
//! Old data without waiting for it to age: the nodes' clocks are moved back with the
//! `clock-skew-ms` fault while the "old" points are written (their ingest stamps are then an
//! hour or more in the past), and timestamp-field points carry Unix times spread over a window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use super::policies::{change, policies, policies_converge, put};
use super::*;

const HOUR_MS: i64 = 3_600_000;

/// 3 replicas whose sweep runs every `sweep_secs`.
fn cluster_sweeping(sweep_secs: u64) -> Cluster {
    Cluster::start_with(
        1,
        3,
        4,
        Opts {
            bootstrap: false,
            runtime: Some(runtime(sweep_secs)),
            ..Opts::default()
        },
    )
}

fn runtime(sweep_secs: u64) -> String {
    format!(
        r#"{{"indexingThreads": 1, "snapshotIntervalSecs": 3600, "retentionSweepIntervalSecs": {sweep_secs}}}"#
    )
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn points(prefix: &str, from: u64, n: u64, ts: impl Fn(u64) -> Option<f64>) -> Vec<pb::Point> {
    (from..from + n)
        .map(|i| pb::Point {
            id: format!("{prefix}{i}"),
            vector: vec![(i % 1000) as f32, (i / 1000) as f32, 1.0, 2.0],
            payload_json: ts(i).map(|t| format!(r#"{{"ts": {t}}}"#)),
        })
        .collect()
}

/// Writes `pts` in batches through `via`; returns the highest applied index.
async fn write_all(c: &Cluster, via: u64, pts: Vec<pb::Point>) -> u64 {
    let mut last = 0;
    for chunk in pts.chunks(2_000) {
        let r = upsert(c.node(0, via), chunk.to_vec()).await.unwrap();
        last = last.max(token_index(&r));
    }
    last
}

fn ids(prefix: &str, from: u64, n: u64) -> Vec<String> {
    (from..from + n).map(|i| format!("{prefix}{i}")).collect()
}

/// Search hits on node `p` around a few query points: ids only.
async fn search_ids(p: &Proc) -> Vec<String> {
    let mut out = Vec::new();
    for q in [
        [0.0, 0.0, 1.0, 2.0],
        [500.0, 3.0, 1.0, 2.0],
        [999.0, 40.0, 1.0, 2.0],
    ] {
        let hits = p
            .points()
            .search(pb::SearchRequest {
                vector: q.to_vec(),
                k: 200,
                consistency: pb::Consistency::Eventual as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        out.extend(hits.into_iter().map(|h| h.id));
    }
    out
}

/// Points pruned so far by the shard's retention policies, as node `p` applied them.
async fn pruned_total(p: &Proc) -> u64 {
    let (store, _) = policies(p).await;
    store["policies"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|h| h["counters"]["pruned"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn set_clock_skew(c: &Cluster, ms: i64) {
    for p in &c.nodes {
        p.set_faults(&if ms == 0 {
            String::new()
        } else {
            format!("clock-skew-ms={ms}")
        });
    }
}

/// Points expired by the policies below: stamped two hours back (`old`), or with a timestamp
/// field 70–120 minutes back (`fold`); kept: stamped now (`new`), field 0–50 minutes back
/// (`fnew`). The 20-minute gap keeps the expected survivors exact while the test runs.
struct Data {
    old: u64,
    fold: u64,
    fnew: u64,
    new: u64,
}

const POLICY_AGE: &str = r#"{"kind":"retention","maxAgeSeconds":3600}"#;
const POLICY_FIELD: &str = r#"{"kind":"retention","maxAgeSeconds":3600,"timestampField":"ts"}"#;

/// Starts the shard with every clock two hours back (before anything is stamped: the shard
/// clock never goes back, so stamps taken later with a slow clock would be moved up to it);
/// returns the leader.
async fn start_two_hours_back(c: &Cluster) -> u64 {
    set_clock_skew(c, -2 * HOUR_MS);
    wait_answering(c, &[0, 1, 2]).await;
    initialize(c, 0, &[0, 1, 2]).await;
    let leader = wait_leader(c, None).await;
    // Stamped upserts start once every member reported that it applies them.
    change(
        c,
        leader,
        put("warmup", r#"{"kind":"quota","maxVectors":100000000}"#),
    )
    .await
    .unwrap();
    leader
}

/// Writes the data set through the leader (clocks two hours back, see
/// [`start_two_hours_back`]); returns the last applied index.
async fn write_data(c: &Cluster, leader: u64, d: &Data) -> u64 {
    write_all(c, leader, points("old", 0, d.old, |_| None)).await;
    set_clock_skew(c, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = now_secs();
    let fold = |i: u64| Some(now - 4_200.0 - (i % 3_000) as f64);
    let fnew = |i: u64| Some(now - (i % 3_000) as f64);
    write_all(c, leader, points("fold", 0, d.fold, fold)).await;
    write_all(c, leader, points("fnew", 0, d.fnew, fnew)).await;
    write_all(c, leader, points("new", 0, d.new, |_| None)).await
}

/// Retention policies hide on every replica before any sweep; the sweep then removes exactly
/// the expired points on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_hides_then_prunes_the_same_points_on_every_replica() {
    let _serial = serial().await;
    let n: u64 = std::env::var("KINDEX_RETENTION_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // Sweeps off until the hiding was checked (runtime config, reloaded live).
    let c = cluster_sweeping(3_600);
    with_timeout(Duration::from_secs(300), async {
        let leader = start_two_hours_back(&c).await;
        let d = Data {
            old: n / 10,
            fold: n * 4 / 10,
            fnew: n * 4 / 10,
            new: n / 10,
        };
        let started = Instant::now();
        write_data(&c, leader, &d).await;
        eprintln!(
            "{} points written in {:?}",
            d.old + d.fold + d.fnew + d.new,
            started.elapsed()
        );
        let follower = (leader + 1) % 3;
        change(&c, follower, put("age", POLICY_AGE)).await.unwrap();
        let v = change(&c, leader, put("by-ts", POLICY_FIELD))
            .await
            .unwrap();
        converge(&c, v.applied_index).await;

        // Before any sweep: nothing expired comes back from any replica.
        let expired: Vec<String> = [ids("old", 0, d.old), ids("fold", 0, d.fold)].concat();
        let kept: Vec<String> = [ids("new", 0, d.new), ids("fnew", 0, d.fnew)].concat();
        for id in c.running(0) {
            let p = c.node(0, id);
            assert_eq!(
                present(p, &expired).await,
                0,
                "node {id}: an expired point was returned"
            );
            assert_eq!(present(p, &kept).await, kept.len(), "node {id}");
            let hits = search_ids(p).await;
            assert!(!hits.is_empty(), "node {id}");
            assert!(
                hits.iter()
                    .all(|h| h.starts_with("new") || h.starts_with("fnew")),
                "node {id}: {:?}",
                hits.iter()
                    .find(|h| h.starts_with("old") || h.starts_with("fold"))
            );
            let live = p.status().await.unwrap().vectors_live;
            assert_eq!(
                live,
                d.old + d.fold + d.fnew + d.new,
                "node {id}: not pruned yet"
            );
        }
        // A point re-upserted now is new again.
        let w = upsert(c.node(0, leader), points("old", 0, 1, |_| None))
            .await
            .unwrap();
        converge(&c, token_index(&w)).await;
        assert_eq!(present(c.node(0, follower), &ids("old", 0, 1)).await, 1);

        // Sweeps on: every replica ends with exactly the survivors.
        std::fs::write(c.nodes[0].runtime.as_ref().unwrap(), runtime(1)).unwrap();
        let started = Instant::now();
        let survivors = d.new + d.fnew + 1;
        wait_for("the sweep removed every expired point", WAIT, || async {
            let s = c.node(0, leader).status().await?;
            (s.vectors_live == survivors).then_some(())
        })
        .await;
        eprintln!(
            "swept {} points in {:?}",
            d.old + d.fold - 1,
            started.elapsed()
        );
        let w = upsert(c.node(0, leader), points("end", 0, 1, |_| None))
            .await
            .unwrap();
        let store = policies_converge(&c, token_index(&w)).await;
        let pruned = |name: &str| {
            store["policies"][name]["counters"]["pruned"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(
            pruned("age") + pruned("by-ts"),
            d.old - 1 + d.fold,
            "{store}"
        );
        assert_eq!(
            pruned("by-ts"),
            d.fold,
            "the field rule removed the field points"
        );
        for id in c.running(0) {
            let p = c.node(0, id);
            assert_eq!(
                p.status().await.unwrap().vectors_live,
                survivors + 1,
                "node {id}"
            );
            assert_eq!(
                present(p, &ids("old", 0, 1)).await,
                1,
                "node {id}: re-upserted point"
            );
            assert_eq!(present(p, &kept).await, kept.len(), "node {id}");
        }
    })
    .await;
}

/// kill -9 of the leader while its sweep's prunes are in flight: no acknowledged write is lost,
/// the replicas converge, and the next leader finishes the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_mid_sweep_loses_nothing_and_the_sweep_resumes() {
    let _serial = serial().await;
    let mut c = cluster_sweeping(1);
    with_timeout(Duration::from_secs(300), async {
        let leader = start_two_hours_back(&c).await;
        let d = Data {
            old: 20_000,
            fold: 40_000,
            fnew: 2_000,
            new: 2_000,
        };
        write_data(&c, leader, &d).await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let writer = spawn_writer(
            c.nodes.iter().map(Proc::grpc_url).collect(),
            stop.clone(),
            acked.clone(),
        );
        // The sweep is paced (small prunes with pauses between them), so removing 60,000 points
        // spans seconds: the kill lands mid-sweep.
        change(&c, leader, put("by-ts", POLICY_FIELD)).await.unwrap();
        change(&c, leader, put("age", POLICY_AGE)).await.unwrap();
        let expired_total = d.old + d.fold;
        wait_for("the sweep under way", WAIT, || async {
            let n = pruned_total(c.node(0, leader)).await;
            (n > 0 && n < expired_total).then_some(())
        })
        .await;
        let at_kill = pruned_total(c.node(0, leader)).await;
        c.kill(0, leader);
        let next = wait_leader(&c, Some(leader)).await;
        c.restart(0, leader);
        eprintln!("killed leader {leader} mid-sweep ({at_kill} of {expired_total} pruned); new leader {next}");
        wait_answering(&c, &[0, 1, 2]).await;
        wait_for("the new leader finished the sweep", WAIT, || async {
            (pruned_total(c.node(0, next)).await == expired_total).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = writer.await.unwrap();
        let leader = wait_leader(&c, None).await;
        let w = upsert(c.node(0, leader), points("end", 0, 1, |_| None)).await.unwrap();
        let store = policies_converge(&c, token_index(&w)).await;
        let pruned = |name: &str| store["policies"][name]["counters"]["pruned"].as_u64().unwrap();
        let acked = acked.lock().clone();
        let expired: Vec<String> = [ids("old", 0, d.old), ids("fold", 0, d.fold)].concat();
        let kept: Vec<String> = [ids("new", 0, d.new), ids("fnew", 0, d.fnew)].concat();
        for id in c.running(0) {
            let p = c.node(0, id);
            assert_eq!(present(p, &acked).await, acked.len(), "node {id}: acknowledged write lost");
            assert_eq!(present(p, &kept).await, kept.len(), "node {id}");
            // Gets hide expired points; the count shows they are gone (a failed writer batch
            // may still have been applied).
            let live = p.status().await.unwrap().vectors_live;
            assert!(
                live <= (kept.len() + acked.len()) as u64 + 5 * failed + 1,
                "node {id}: {live} live"
            );
            assert_eq!(present(p, &expired).await, 0, "node {id}");
        }
        assert_eq!(pruned("age") + pruned("by-ts"), expired_total, "{store}");
        eprintln!(
            "{ok} writer batches acknowledged ({failed} failed) across the kill; {} pruned",
            d.old + d.fold
        );
    })
    .await;
}
