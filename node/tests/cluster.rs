//! Real clusters in one process: 127.0.0.1 random ports, the gRPC transport, durable log
//! stores and snapshot dirs in temp dirs, the in-memory engine.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use kindex_node::raft::Command;
use kindex_node::raft::KindexRaft;
use kindex_node::raft::Member;
use kindex_node::raft::NodeId;
use kindex_node::raft::PointRecord;
use kindex_node::raft::RaftShard;
use kindex_node::raft::RaftShardConfig;
use mem_state::MemState;
use openraft::ReadPolicy;
use openraft::SnapshotPolicy;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;

#[path = "procs/loopback.rs"]
mod loopback;
#[path = "support/mem_state.rs"]
mod mem_state;
use kindex_node::raft::ApplyOutcome;
use kindex_node::raft::LogId;
use kindex_node::raft::Refusal;
use kindex_node::raft::RefusalKind;
use kindex_node::raft::ShardState;
use kindex_node::raft::SnapshotWriter;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

struct TestNode {
    id: NodeId,
    dir: PathBuf,
    addr: SocketAddr,
    shard: Option<RaftShard<MemState>>,
}

impl TestNode {
    fn shard(&self) -> &RaftShard<MemState> {
        self.shard.as_ref().expect("node is running")
    }

    fn raft(&self) -> &KindexRaft<MemState> {
        self.shard().raft()
    }

    fn node(&self) -> Member {
        Member::new(self.addr)
    }

    async fn stop(&mut self) {
        if let Some(s) = self.shard.take() {
            s.shutdown().await.unwrap();
        }
    }

    /// Start again from the same data dir and address.
    async fn restart(&mut self, snapshot_every: u64) {
        assert!(self.shard.is_none());
        let listener = bind(Some(self.addr)).await;
        self.shard = Some(start_shard(self.id, &self.dir, listener, snapshot_every).await);
    }
}

/// Binds `addr`, or a loopback address of this node's own (never :0: a restart rebinds the
/// same address, and an ephemeral port could have taken it meanwhile; see `loopback`).
async fn bind(addr: Option<SocketAddr>) -> TcpListener {
    let want = addr.unwrap_or_else(|| {
        format!("{}:7071", loopback::Block::next().ip(1))
            .parse()
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(want).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {want}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {want}: {e}"),
        }
    }
}

async fn start_shard(
    id: NodeId,
    dir: &Path,
    listener: TcpListener,
    snapshot_every: u64,
) -> RaftShard<MemState> {
    let mut cfg = RaftShardConfig::new(id, dir);
    cfg.raft.heartbeat_interval = 100;
    cfg.raft.election_timeout_min = 500;
    cfg.raft.election_timeout_max = 1000;
    cfg.raft.snapshot_policy = SnapshotPolicy::LogsSinceLast(snapshot_every);
    cfg.raft.max_in_snapshot_log_to_keep = 50;
    cfg.raft.purge_batch_size = 1;
    cfg.raft.replication_lag_threshold = 10;
    RaftShard::start(cfg, Arc::new(MemState::new()), Some(listener))
        .await
        .unwrap()
}

async fn start_node(root: &Path, id: NodeId, snapshot_every: u64) -> TestNode {
    let dir = root.join(format!("node-{id}"));
    let listener = bind(None).await;
    let addr = listener.local_addr().unwrap();
    let shard = start_shard(id, &dir, listener, snapshot_every).await;
    TestNode {
        id,
        dir,
        addr,
        shard: Some(shard),
    }
}

async fn start_cluster(root: &Path, n: u64, snapshot_every: u64) -> Vec<TestNode> {
    let mut nodes = vec![];
    for id in 0..n {
        nodes.push(start_node(root, id, snapshot_every).await);
    }
    let members: BTreeMap<NodeId, Member> = nodes.iter().map(|n| (n.id, n.node())).collect();
    nodes[0].raft().initialize(members).await.unwrap();
    nodes
}

/// Wait until `node` knows a leader (other than `not`) and that leader has heard from a quorum:
/// openraft 0.10 refuses writes (ForwardToLeader, reason LeaseExpired) until then.
async fn wait_leader(nodes: &[TestNode], node: NodeId, not: Option<NodeId>) -> NodeId {
    let m = by_id(nodes, node)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    by_id(nodes, leader)
        .raft()
        .wait(Some(WAIT))
        .leader_with_quorum_acked(None, "writable")
        .await
        .unwrap();
    leader
}

fn upsert(i: u64) -> Command {
    Command::Upsert {
        points: vec![PointRecord {
            id: format!("p{i}"),
            vector: vec![i as f32; 16],
            payload_json: Some(format!("{{\"i\":{i}}}")),
        }],
    }
}

/// `client_write` ids `from..to`, 32 in flight; returns the largest applied index.
async fn write_range(raft: &KindexRaft<MemState>, from: u64, to: u64) -> u64 {
    let results: Vec<u64> = futures::stream::iter(from..to)
        .map(|i| async move {
            let resp = raft.client_write(upsert(i)).await.unwrap();
            assert_eq!(resp.data.affected, 1);
            assert_eq!(resp.data.applied_index, resp.log_id.index);
            resp.log_id.index
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().max().unwrap()
}

async fn wait_applied(node: &TestNode, index: u64) {
    node.raft()
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap();
}

fn by_id(nodes: &[TestNode], id: NodeId) -> &TestNode {
    nodes.iter().find(|n| n.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_fail_over_and_restart() {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tmp = tempfile::tempdir().unwrap();
        // Snapshots every 300 entries, so restart exercises snapshot load + log replay.
        let mut nodes = start_cluster(tmp.path(), 3, 300).await;
        let leader = wait_leader(&nodes, 0, None).await;

        let t = Instant::now();
        let last = write_range(by_id(&nodes, leader).raft(), 0, 1000).await;
        eprintln!("1000 writes committed in {:?}", t.elapsed());
        for n in &nodes {
            wait_applied(n, last).await;
        }
        let want = by_id(&nodes, leader).shard().state().snapshot_data();
        assert_eq!(want.points.len(), 1000);
        for n in &nodes {
            assert_eq!(
                n.shard().state().snapshot_data().points,
                want.points,
                "node {}",
                n.id
            );
        }

        // Kill the leader; the other two elect a new one and keep accepting writes.
        let old = leader;
        let t = Instant::now();
        let idx = nodes.iter().position(|n| n.id == old).unwrap();
        nodes[idx].stop().await;
        let survivor = nodes.iter().find(|n| n.id != old).unwrap().id;
        let leader = wait_leader(&nodes, survivor, Some(old)).await;
        eprintln!("new leader {leader} after {:?}", t.elapsed());
        let last = write_range(by_id(&nodes, leader).raft(), 1000, 1200).await;

        // The old leader restarts from its data dir: its state comes back from disk at once,
        // then it catches up with what it missed.
        nodes[idx].restart(300).await;
        assert!(
            nodes[idx].shard().state().len() >= 1000,
            "state restored from snapshot + log"
        );
        for n in &nodes {
            wait_applied(n, last).await;
        }
        let want = by_id(&nodes, leader).shard().state().snapshot_data();
        assert_eq!(want.points.len(), 1200);
        for n in &nodes {
            assert_eq!(
                n.shard().state().snapshot_data().points,
                want.points,
                "node {}",
                n.id
            );
        }
        let st = by_id(&nodes, leader).shard().status();
        assert!(
            st.is_leader && st.voters == BTreeSet::from([0, 1, 2]),
            "{st:?}"
        );

        for n in &mut nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_replica_joins_by_snapshot_and_is_promoted() {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tmp = tempfile::tempdir().unwrap();
        // No automatic snapshots: the test decides when.
        let mut nodes = start_cluster(tmp.path(), 3, 1_000_000).await;
        let leader = wait_leader(&nodes, 0, None).await;
        let last = write_range(by_id(&nodes, leader).raft(), 0, 300).await;

        // Snapshot and purge the log on the leader, so a new member can only catch up by snapshot.
        let lr = by_id(&nodes, leader).raft().clone();
        lr.trigger().snapshot().await.unwrap();
        lr.wait(Some(WAIT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= last),
                "snapshot built",
            )
            .await
            .unwrap();
        lr.trigger().purge_log(last).await.unwrap();
        lr.wait(Some(WAIT))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
            .await
            .unwrap();

        let t = Instant::now();
        let new = start_node(tmp.path(), 3, 1_000_000).await;
        lr.add_learner(3, new.node(), true).await.unwrap();
        eprintln!("learner caught up in {:?}", t.elapsed());
        let lag = by_id(&nodes, leader).shard().status().lag;
        assert!(
            lag.get(&3).is_some_and(|l| *l <= 10),
            "blocking add_learner waits for the snapshot: {lag:?}"
        );
        nodes.push(new);
        let n3 = by_id(&nodes, 3);
        wait_applied(n3, last).await;
        let m3 = n3.raft().metrics().borrow_watched().clone();
        assert!(
            m3.snapshot.is_some_and(|s| s.index >= last),
            "learner installed a snapshot: {m3:?}"
        );
        let snaps: Vec<_> = std::fs::read_dir(n3.dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(snaps.iter().any(|s| s.starts_with("snap-")), "{snaps:?}");
        assert_eq!(n3.shard().state().snapshot_data().points.len(), 300);

        // Promote it to voter.
        lr.change_membership(BTreeSet::from([0, 1, 2, 3]), false)
            .await
            .unwrap();
        let st = by_id(&nodes, leader).shard().status();
        assert_eq!(st.voters, BTreeSet::from([0, 1, 2, 3]));
        assert!(st.learners.is_empty());

        let last = write_range(&lr, 300, 400).await;
        for n in &nodes {
            wait_applied(n, last).await;
        }
        let want = by_id(&nodes, leader).shard().state().snapshot_data();
        for n in &nodes {
            assert_eq!(
                n.shard().state().snapshot_data().points,
                want.points,
                "node {}",
                n.id
            );
        }

        // Hand leadership to the new member (TransferLeader travels in the Vote RPC).
        lr.trigger().transfer_leader(3).await.unwrap();
        let n3 = by_id(&nodes, 3);
        assert_eq!(wait_leader(&nodes, 3, Some(leader)).await, 3);
        let read = n3
            .raft()
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .unwrap();
        assert!(read.index() >= last);
        let last = write_range(n3.raft(), 400, 410).await;
        for n in &nodes {
            wait_applied(n, last).await;
        }

        for n in &mut nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restarts_from_disk_and_rejections_are_replicated() {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = start_cluster(tmp.path(), 3, 100).await;
        let leader = wait_leader(&nodes, 0, None).await;
        let lr = by_id(&nodes, leader).raft().clone();
        write_range(&lr, 0, 250).await;

        // A quota policy, then an upsert over it: refused on every replica, nothing changes.
        lr.client_write(Command::Policy {
            json: r#"{"max_points":250}"#.into(),
        })
        .await
        .unwrap();
        let resp = lr.client_write(upsert(999)).await.unwrap();
        assert_eq!(
            resp.data.rejected.as_ref().map(|r| r.message.as_str()),
            Some("quota: too many points")
        );
        let del = lr
            .client_write(Command::Delete {
                ids: vec!["p1".into(), "nope".into()],
            })
            .await
            .unwrap();
        assert_eq!(del.data.affected, 1);
        let last = del.log_id.index;
        for n in &nodes {
            wait_applied(n, last).await;
        }

        for n in &mut nodes {
            n.stop().await;
        }
        for n in &mut nodes {
            n.restart(100).await;
        }
        for n in &nodes {
            let d = n.shard().state().snapshot_data();
            assert_eq!(d.points.len(), 249, "node {} after restart", n.id);
            assert_eq!(d.max_points, Some(250));
            assert!(!d.points.contains_key("p1") && !d.points.contains_key("p999"));
        }
        let leader = wait_leader(&nodes, 0, None).await;
        let resp = by_id(&nodes, leader)
            .raft()
            .client_write(upsert(1))
            .await
            .unwrap();
        assert_eq!(resp.data.affected, 1);
        for n in &nodes {
            wait_applied(n, resp.log_id.index).await;
            assert_eq!(n.shard().state().len(), 250);
        }
        for n in &mut nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_that_lost_its_disk_rejoins_by_snapshot() {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = start_cluster(tmp.path(), 3, 1_000_000).await;
        let leader = wait_leader(&nodes, 0, None).await;
        let lr = by_id(&nodes, leader).raft().clone();
        let last = write_range(&lr, 0, 200).await;
        lr.trigger().snapshot().await.unwrap();
        lr.wait(Some(WAIT))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot")
            .await
            .unwrap();
        lr.trigger().purge_log(last).await.unwrap();
        lr.wait(Some(WAIT))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purged")
            .await
            .unwrap();

        // A follower loses its PV. The leader must be told that its log going back is expected,
        // otherwise openraft treats the reverted follower as a fatal inconsistency.
        let f = nodes.iter().position(|n| n.id != leader).unwrap();
        let fid = nodes[f].id;
        nodes[f].stop().await;
        lr.trigger()
            .allow_next_revert(&fid, true)
            .await
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&nodes[f].dir).unwrap();
        nodes[f].restart(1_000_000).await;

        let last = write_range(&lr, 200, 250).await;
        wait_applied(&nodes[f], last).await;
        let m = nodes[f].raft().metrics().borrow_watched().clone();
        assert!(m.snapshot.is_some(), "caught up through a snapshot: {m:?}");
        assert_eq!(
            nodes[f].shard().state().snapshot_data().points,
            by_id(&nodes, leader).shard().state().snapshot_data().points
        );
        for n in &mut nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_losing_the_leader_mid_stream() {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = start_cluster(tmp.path(), 3, 200).await;
        let leader = wait_leader(&nodes, 0, None).await;
        let lr = by_id(&nodes, leader).raft().clone();

        // Writers keep proposing; record only what was acknowledged.
        let acked = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
        let mut writers = vec![];
        for w in 0..8u64 {
            let (lr, acked) = (lr.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..10_000u64 {
                    let id = w * 100_000 + i;
                    match lr.client_write(upsert(id)).await {
                        Ok(_) => acked.lock().push(id),
                        Err(_) => return, // leader gone
                    }
                }
            }));
        }
        // Let some writes through (however slow the machine), then kill the leader.
        while acked.lock().len() < 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let idx = nodes.iter().position(|n| n.id == leader).unwrap();
        nodes[idx].stop().await;
        for w in writers {
            w.await.unwrap();
        }
        let acked = acked.lock().clone();

        let survivor = nodes.iter().find(|n| n.id != leader).unwrap().id;
        let new_leader = wait_leader(&nodes, survivor, Some(leader)).await;
        // A write in the new term commits everything before it.
        let last = write_range(by_id(&nodes, new_leader).raft(), 1_000_000, 1_000_001).await;
        nodes[idx].restart(200).await;
        for n in &nodes {
            wait_applied(n, last).await;
            let d = n.shard().state().snapshot_data();
            let missing: Vec<_> = acked
                .iter()
                .filter(|id| !d.points.contains_key(&format!("p{id}")))
                .collect();
            assert!(
                missing.is_empty(),
                "node {} lost acknowledged writes {missing:?}",
                n.id
            );
        }
        eprintln!("{} acknowledged writes all present on 3 nodes", acked.len());
        for n in &mut nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_megabyte_batches_and_snapshot_stream() {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = start_cluster(tmp.path(), 3, 1_000_000).await;
        let leader = wait_leader(&nodes, 0, None).await;
        let lr = by_id(&nodes, leader).raft().clone();

        // 8 commands of 500 x 768-dim vectors (~1.5 MB each): AppendEntries are cut at the log
        // store's 8 MiB budget and must fit the 64 MiB gRPC limit.
        let t = Instant::now();
        let cmds = (0..8u64).map(|b| Command::Upsert {
            points: (0..500u64)
                .map(|i| PointRecord {
                    id: format!("b{b}-{i}"),
                    vector: vec![(b * 1000 + i) as f32; 768],
                    payload_json: None,
                })
                .collect(),
        });
        let mut last = 0;
        for r in futures::future::join_all(cmds.map(|c| lr.client_write(c))).await {
            let r = r.unwrap();
            assert_eq!(r.data.affected, 500);
            last = last.max(r.log_id.index);
        }
        for n in &nodes {
            wait_applied(n, last).await;
            assert_eq!(n.shard().state().len(), 4000);
        }
        eprintln!("8 x 1.5 MB commands replicated in {:?}", t.elapsed());

        lr.trigger().snapshot().await.unwrap();
        lr.wait(Some(WAIT))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot")
            .await
            .unwrap();
        lr.trigger().purge_log(last).await.unwrap();
        lr.wait(Some(WAIT))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purged")
            .await
            .unwrap();

        let t = Instant::now();
        let new = start_node(tmp.path(), 3, 1_000_000).await;
        lr.add_learner(3, new.node(), true).await.unwrap();
        wait_applied(&new, last).await;
        eprintln!(
            "learner got a {} byte snapshot in {:?}",
            dir_size(&new.dir.join("snapshots")),
            t.elapsed()
        );
        assert_eq!(
            new.shard().state().snapshot_data().points,
            by_id(&nodes, leader).shard().state().snapshot_data().points
        );
        nodes.push(new);
        for n in &mut nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test timed out");
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dir_size(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}
