//! Cluster tier: real `kindex-node` processes on loopback forming one shard's Raft group
//! (started and stopped by the `procs` harness: own loopback addresses with the default ports,
//! temp data dirs, every wait bounded, children killed on drop).
//!
//! - three replicas initialized by the Admin `Initialize` RPC replicate writes (equal content
//!   checksums), followers forward writes and linearizable reads, sessions read their writes
//!   (`replication`);
//! - kill -9 during a steady write load (leader, or a random replica with
//!   `KINDEX_KILL_TARGET=random`), `KINDEX_KILL_CYCLES` times (default 3): no acknowledged write
//!   is lost and the replicas converge;
//! - a partitioned leader never acknowledges and rejoins;
//! - a replica whose data dir was wiped rejoins by snapshot after snapshot + log purge;
//! - a fourth node is added as a learner, promoted, leads, and is removed again (`membership`);
//! - a replica whose volume was lost comes back under a new Raft identity: while it is empty
//!   and the leader is down, a lagging follower cannot be elected with its vote; it is
//!   replaced in the membership (learner, snapshot, one change) and nothing acknowledged is
//!   lost; a control run under the old id loses writes (`identity`);
//! - a quota holds exactly under concurrent writers on every path, a quota change racing writes
//!   is settled by log order, policy versions survive restarts and snapshot installs, policy
//!   changes wait for a member of an older build (`policies`);
//! - an int8 shard with vectors on disk
//!   (`--quantization int8 --vectors-on-disk`) survives a leader kill -9 under writers and a wiped
//!   replica refilled by snapshot: every acknowledged write on every replica (history checker),
//!   the same search hits on all three (`quant`);
//! - a per-tenant quota holds per tenant under writers racing through every replica
//!   (`tenants`);
//! - retention hides expired points on every replica before the sweep, the sweep removes
//!   exactly them, and a leader killed mid-sweep loses no acknowledged write (`retention`);
//! - a replica whose data volume (its own small tmpfs) fills up: as leader it refuses writes
//!   at once (RESOURCE_EXHAUSTED, "volume full on ..."), reads keep working, Status says so; as
//!   follower it takes no entries while the others commit; freed, it recovers and catches up
//!   without a restart or a Raft step; every acknowledged write on every replica (`volume`;
//!   needs root).
//!
//! The tests of this file run one at a time, also under nextest (each starts 3–4 processes).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[path = "cluster_process/identity.rs"]
mod identity;
#[path = "cluster_process/membership.rs"]
mod membership;
#[path = "cluster_process/policies.rs"]
mod policies;
mod procs;
#[path = "cluster_process/quant.rs"]
mod quant;
#[path = "cluster_process/replication.rs"]
mod replication;
#[path = "cluster_process/retention.rs"]
mod retention;
#[path = "cluster_process/tenants.rs"]
mod tenants;
#[path = "cluster_process/volume.rs"]
mod volume;

use kindex_proto as pb;
use pb::points_client::PointsClient;
use procs::{Cluster, Opts, Proc, http_get, serial, wait_for, with_timeout};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

/// One shard of `n` replicas, `start` of them started, waiting for the `Initialize` RPC.
fn cluster(n: u64, start: u64, extra: &[&str]) -> Cluster {
    Cluster::start_with(
        1,
        n,
        4,
        Opts {
            bootstrap: false,
            started: Some(start),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            runtime: Some(
                r#"{"indexingThreads": 1, "snapshotLogEntries": 100, "snapshotIntervalSecs": 3600}"#
                    .into(),
            ),
            ..Opts::default()
        },
    )
}

async fn wait_answering(c: &Cluster, ids: &[u64]) {
    for &id in ids {
        wait_for(&format!("node {id} answering Status"), WAIT, || async {
            c.node(0, id).status().await
        })
        .await;
    }
}

async fn initialize(c: &Cluster, via: u64, members: &[u64]) {
    let members = members
        .iter()
        .map(|&id| pb::Member {
            node_id: id,
            addr: c.node(0, id).member_addr(),
            voter: true,
        })
        .collect();
    c.node(0, via)
        .admin()
        .initialize(pb::InitializeRequest { members })
        .await
        .unwrap();
}

/// A leader that every running node agrees on and that is ready (has applied its log).
async fn wait_leader(c: &Cluster, not: Option<u64>) -> u64 {
    wait_leader_among(c, &c.running(0), not).await
}

/// A leader that the nodes `among` agree on and that is ready.
async fn wait_leader_among(c: &Cluster, among: &[u64], not: Option<u64>) -> u64 {
    let running = among.to_vec();
    wait_for("an agreed, ready leader", WAIT, || {
        let running = running.clone();
        async move {
            let mut leader = None;
            for &id in &running {
                let s = c.node(0, id).status().await?;
                let l = s.leader_id?;
                if leader.is_some_and(|x| x != l) || Some(l) == not {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            let ready =
                http_get(&c.node(0, l).http, "/readyz").is_some_and(|(code, _)| code == 200);
            ready.then_some(l)
        }
    })
    .await
}

/// Waits until every running node applied the same index (≥ `at_least`) and reports the same
/// content checksum; returns (applied index, checksum).
async fn converge(c: &Cluster, at_least: u64) -> (u64, u64) {
    converge_among(c, &c.running(0), at_least).await
}

async fn converge_among(c: &Cluster, among: &[u64], at_least: u64) -> (u64, u64) {
    let running = among.to_vec();
    wait_for("replicas to converge", WAIT, || {
        let running = running.clone();
        async move {
            let mut seen = None;
            for &id in &running {
                let s = c.node(0, id).status().await?;
                let got = (s.applied?.index, s.content_checksum);
                if got.0 < at_least || seen.is_some_and(|x| x != got) {
                    return None;
                }
                seen = Some(got);
            }
            seen
        }
    })
    .await
}

fn batch(prefix: &str, from: u64, n: u64) -> Vec<pb::Point> {
    (from..from + n)
        .map(|i| pb::Point {
            id: format!("{prefix}{i}"),
            vector: vec![i as f32, 1.0, 2.0, 3.0],
            payload_json: Some(format!(r#"{{"i": {i}}}"#)),
        })
        .collect()
}

async fn upsert(p: &Proc, points: Vec<pb::Point>) -> Result<pb::WriteResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::UpsertRequest {
        index: String::new(),
        points,
    });
    req.set_timeout(Duration::from_secs(10));
    points_client_call(p, req).await
}

async fn points_client_call(
    p: &Proc,
    req: tonic::Request<pb::UpsertRequest>,
) -> Result<pb::WriteResponse, tonic::Status> {
    p.points().upsert(req).await.map(|r| r.into_inner())
}

/// How many of `ids` this node has (eventual read).
async fn present(p: &Proc, ids: &[String]) -> usize {
    let mut client = p.points();
    let mut n = 0;
    for chunk in ids.chunks(5000) {
        let got = client
            .get(pb::GetRequest {
                ids: chunk.to_vec(),
                consistency: pb::Consistency::Eventual as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .points;
        n += got.len();
    }
    n
}

fn token_index(w: &pb::WriteResponse) -> u64 {
    w.token.as_ref().unwrap().shards[0].applied_index
}

/// A client that writes batches of 5 points in a loop, round-robin over the nodes, retrying
/// elsewhere on any error; records every acknowledged id.
fn spawn_writer(
    grpc_urls: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<parking_lot::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let clients: Vec<PointsClient<Channel>> = grpc_urls
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
        let (mut ok, mut failed, mut next, mut at) = (0u64, 0u64, 0u64, 0usize);
        while !stop.load(Ordering::Relaxed) {
            let pts = batch("w", next, 5);
            let ids: Vec<String> = pts.iter().map(|p| p.id.clone()).collect();
            let mut req = tonic::Request::new(pb::UpsertRequest {
                index: String::new(),
                points: pts,
            });
            req.set_timeout(Duration::from_secs(5));
            match clients[at % clients.len()].clone().upsert(req).await {
                Ok(_) => {
                    ok += 1;
                    acked.lock().extend(ids);
                }
                Err(_) => {
                    failed += 1;
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            // Unacknowledged ids are never reused: a retried batch gets new ids.
            next += 5;
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let _serial = serial().await;
    let cycles: u64 = std::env::var("KINDEX_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let random = std::env::var("KINDEX_KILL_TARGET").is_ok_and(|v| v == "random");
    let mut c = cluster(3, 3, &["--raft-log-keep", "200"]);
    with_timeout(Duration::from_secs(120 + 60 * cycles), async {
        let t = Instant::now();
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let mut leader = wait_leader(&c, None).await;

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let urls = c.nodes.iter().map(Proc::grpc_url).collect();
        let writer = spawn_writer(urls, stop.clone(), acked.clone());

        for cycle in 0..cycles {
            let victim = if random { rand::random_range(0..3u64) } else { leader };
            // Let the load run, then kill -9 in the middle of it.
            let before = acked.lock().len();
            wait_for("writes flowing", WAIT, || async { (acked.lock().len() >= before + 50).then_some(()) }).await;
            let started = Instant::now();
            c.kill(0, victim);
            let was_leader = victim == leader;
            let elected_leader = wait_leader(&c, was_leader.then_some(victim)).await;
            let elected = started.elapsed();
            let after_kill = acked.lock().len();
            wait_for("writes resume", WAIT, || async { (acked.lock().len() >= after_kill + 20).then_some(()) }).await;
            let resumed = started.elapsed();
            // Restart from its data dir; it catches up and becomes ready.
            c.restart(0, victim);
            wait_for("restarted node ready", WAIT, || async {
                http_get(&c.node(0, victim).http, "/readyz").is_some_and(|(code, _)| code == 200).then_some(())
            })
            .await;
            leader = wait_leader(&c, None).await;
            eprintln!(
                "cycle {cycle}: killed node {victim} (leader: {was_leader}), leader {elected_leader} after \
                 {elected:?}, writes resumed after {resumed:?}, back after {:?} (leader {leader}); \
                 {} batches acknowledged",
                started.elapsed(),
                acked.lock().len() / 5
            );
        }
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = writer.await.unwrap();
        let acked = acked.lock().clone();
        eprintln!("writer: {ok} batches acknowledged, {failed} failed attempts");
        assert!(ok > 0);

        let last = c.node(0, leader).status().await.unwrap().applied.unwrap().index;
        let (applied, sum) = converge(&c, last).await;
        for id in 0..3 {
            let n = present(c.node(0, id), &acked).await;
            assert_eq!(n, acked.len(), "node {id} lost acknowledged writes");
            let s = c.node(0, id).status().await.unwrap();
            assert!(s.vectors_live >= acked.len() as u64, "{s:?}");
        }
        eprintln!(
            "{cycles} kill -9 cycles: {} acknowledged points present on all 3 replicas, applied {applied}, \
             checksum {sum:016x}, {:?}",
            acked.len(),
            t.elapsed()
        );
    })
    .await;
}

/// One upsert sent to node `p` itself (marked as forwarded, so the node proposes it locally or
/// refuses; it is never passed on to another leader), with a client deadline.
async fn upsert_local(
    p: &Proc,
    points: Vec<pb::Point>,
    deadline: Duration,
) -> Result<pb::WriteResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::UpsertRequest {
        index: String::new(),
        points,
    });
    req.set_timeout(deadline);
    req.metadata_mut()
        .insert("kindex-forwarded", "99".parse().unwrap());
    points_client_call(p, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_never_acknowledges_and_rejoins() {
    let _serial = serial().await;
    let c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        let t = Instant::now();
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let old = wait_leader(&c, None).await;
        let majority: Vec<u64> = (0..3).filter(|&i| i != old).collect();
        let old_term = c.node(0, old).status().await.unwrap().term;

        // A steady writer over all three nodes for the whole test; records what is acked.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let urls = c.nodes.iter().map(Proc::grpc_url).collect();
        let writer = spawn_writer(urls, stop.clone(), acked.clone());
        wait_for("writes flowing", WAIT, || async {
            (acked.lock().len() >= 100).then_some(())
        })
        .await;

        // Isolate the leader from both followers (Raft links only; clients still reach it).
        c.cut_links(0, old, &majority).await;
        let cut_at = Instant::now();

        // Writes proposed on the isolated leader are never acknowledged: they time out or are
        // refused, whatever the client's deadline.
        let mut minority_ids = Vec::new();
        let mut tries = Vec::new();
        for i in 0..4u64 {
            let pts = batch("minority", i * 10, 10);
            minority_ids.extend(pts.iter().map(|p| p.id.clone()));
            let deadline = Duration::from_millis(1500 + 1000 * i);
            let p = c.node(0, old);
            tries.push(async move { upsert_local(p, pts, deadline).await });
        }
        for (i, r) in futures::future::join_all(tries).await.into_iter().enumerate() {
            let err = r.expect_err("the isolated leader acknowledged a write");
            eprintln!("write {i} to the isolated leader: {:?} {}", err.code(), err.message());
        }

        // The majority elects a new leader (higher term) and accepts writes.
        let new = wait_leader_among(&c, &majority, Some(old)).await;
        let elected = cut_at.elapsed();
        let s = c.node(0, new).status().await.unwrap();
        assert!(s.term > old_term, "{s:?}");
        let w = upsert(c.node(0, new), batch("majority", 0, 50)).await.unwrap();
        assert_eq!(w.affected, 50);
        let majority_ids: Vec<String> = (0..50).map(|i| format!("majority{i}")).collect();
        // The old leader has not applied it (it is cut off) …
        assert_eq!(present(c.node(0, old), &majority_ids).await, 0);
        let isolated = c.node(0, old).status().await.unwrap();
        eprintln!(
            "isolated node {old}: role {} term {}; new leader {new} (term {}) after {elected:?}",
            isolated.role, isolated.term, s.term
        );
        // … and a write through it is still not acknowledged.
        let err = upsert_local(c.node(0, old), batch("minority", 100, 1), Duration::from_secs(2))
            .await
            .expect_err("the isolated node acknowledged a write");
        minority_ids.push("minority100".into());
        eprintln!("late write to the isolated node: {:?}", err.code());
        // Nor does it serve a linearizable read (it cannot confirm its leadership).
        let mut req = tonic::Request::new(pb::CountRequest {
            consistency: pb::Consistency::Linearizable as i32,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(3));
        req.metadata_mut()
            .insert("kindex-forwarded", "99".parse().unwrap());
        let err = c.node(0, old).points()
            .count(req)
            .await
            .expect_err("the isolated leader served a linearizable read");
        eprintln!("linearizable read on the isolated node: {:?}", err.code());
        let during = acked.lock().len();
        wait_for("writes flowing through the majority", WAIT, || async {
            (acked.lock().len() >= during + 100).then_some(())
        })
        .await;

        // Heal: the old leader learns the new term, steps down, drops its uncommitted tail and
        // converges to the majority's content.
        c.cut_links(0, old, &[]).await;
        let healed_at = Instant::now();
        let leader = wait_leader(&c, None).await;
        assert_ne!(leader, old, "the stale leader must not win back leadership by itself");
        let s = c.node(0, old).status().await.unwrap();
        assert_eq!(s.role, "follower", "{s:?}");
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = writer.await.unwrap();
        let acked = acked.lock().clone();
        let last = c.node(0, leader).status().await.unwrap().applied.unwrap().index;
        let (applied, sum) = converge(&c, last).await;
        for id in 0..3 {
            assert_eq!(
                present(c.node(0, id), &acked).await,
                acked.len(),
                "node {id} lost acknowledged writes"
            );
            assert_eq!(
                present(c.node(0, id), &majority_ids).await,
                majority_ids.len()
            );
            assert_eq!(
                present(c.node(0, id), &minority_ids).await,
                0,
                "node {id} has a write only the isolated leader took"
            );
        }
        eprintln!(
            "healed: node {old} follower again, converged at {applied} (checksum {sum:016x}) \
             {:?} after heal; writer {ok} batches acked, {failed} failed; {} acked points on all 3; \
             test {:?}",
            healed_at.elapsed(),
            acked.len(),
            t.elapsed()
        );
    })
    .await;
}
