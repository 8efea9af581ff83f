//! Cluster tier: real `kindex-node` processes on loopback forming one shard's Raft group
//! (own loopback addresses with the default ports, temp data dirs, every wait bounded, children killed on drop).
//!
//! - three replicas initialized by the Admin `Initialize` RPC replicate writes (equal content
//!   checksums), followers forward writes and linearizable reads, sessions read their writes;
//! - kill -9 during a steady write load (leader, or a random replica with
//!   `KINDEX_KILL_TARGET=random`), `KINDEX_KILL_CYCLES` times (default 3): no acknowledged write
//!   is lost and the replicas converge;
//! - a replica whose data dir was wiped rejoins by snapshot after snapshot + log purge;
//! - a fourth node is added as a learner, promoted, leads, and is removed again.
//!
//! The tests of this file run one at a time, also under nextest (each starts 3–4 processes).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod procs;

use kindex_proto as pb;
use pb::admin_client::AdminClient;
use pb::points_client::PointsClient;
use procs::{wait_for, with_timeout};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

/// The tests of this binary share the machine's cores: one cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One cluster at a time, also across processes (nextest runs every test in its own process):
/// the in-process mutex, then an exclusive lock on a file in the temp dir.
async fn serial() -> (tokio::sync::MutexGuard<'static, ()>, std::fs::File) {
    let guard = SERIAL.lock().await;
    let file = tokio::task::spawn_blocking(|| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("kindex-cluster-process.lock"))
            .unwrap();
        f.lock().unwrap();
        f
    })
    .await
    .unwrap();
    (guard, file)
}

struct Proc {
    id: u64,
    dir: PathBuf,
    log: PathBuf,
    /// The loopback address this node listens on, with the default ports (see
    /// `procs::loopback`).
    ip: String,
    child: Option<Child>,
}

impl Proc {
    fn addr(&self) -> String {
        format!("{0}:7071|{0}:7070", self.ip)
    }

    fn grpc_addr(&self) -> String {
        format!("{}:7070", self.ip)
    }

    fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr())
    }

    /// `ip:port` of the HTTP server.
    fn http(&self) -> String {
        format!("{}:7080", self.ip)
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node is running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "node {} did not stop within {WAIT:?} after SIGTERM",
                    self.id
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    tmp: tempfile::TempDir,
    nodes: Vec<Proc>,
    peers: String,
    extra: Vec<String>,
}

impl Cluster {
    /// `n` node slots (ports and dirs); `start` of them are started.
    fn new(n: u64, start: u64, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let block = procs::loopback::Block::next();
        let nodes: Vec<Proc> = (0..n)
            .map(|id| Proc {
                id,
                dir: tmp.path().join(format!("node-{id}")),
                log: tmp.path().join(format!("node-{id}.log")),
                ip: block.ip(id as u32 + 1),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|p| format!("{}={}", p.id, p.addr()))
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(
            tmp.path().join("runtime.json"),
            r#"{"indexingThreads": 1, "snapshotLogEntries": 100, "snapshotIntervalSecs": 3600}"#,
        )
        .unwrap();
        let mut c = Cluster {
            tmp,
            nodes,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 0..start {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let runtime = self.tmp.path().join("runtime.json");
        let faults = self.fault_file(id);
        let p = &mut self.nodes[id as usize];
        assert!(p.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kindex-node"))
            .args(["--data-dir", p.dir.to_str().unwrap()])
            .args(["--dimension", "4", "--metric", "l2"])
            .args(["--node-id", &id.to_string(), "--peers", &self.peers])
            .args(["--listen", &p.ip])
            .args([
                "--raft-heartbeat-ms",
                "100",
                "--raft-election-timeout-ms",
                "800",
            ])
            .args(["--runtime-config", runtime.to_str().unwrap()])
            .args(["--raft-fault-file", faults.to_str().unwrap()])
            .args(&self.extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().unwrap())) // the node logs to stdout
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        p.child = Some(child);
    }

    fn node(&self, id: u64) -> &Proc {
        &self.nodes[id as usize]
    }

    /// Node `id`'s fault-injection file (no file: no faults).
    fn fault_file(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("faults-{id}"))
    }

    /// Cut (or with an empty list, heal) the Raft links between `id` and `peers`. The node
    /// re-reads the file every 50 ms; waits 200 ms so the change is in effect.
    async fn cut_links(&self, id: u64, peers: &[u64]) {
        let list: Vec<String> = peers.iter().map(u64::to_string).collect();
        std::fs::write(self.fault_file(id), list.join(",")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|p| p.running())
            .map(|p| p.id)
            .collect()
    }

    /// The tail of every node's log (printed when a test fails).
    fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.nodes {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            out.push_str(&format!(
                "---- node {} ({})\n{}\n",
                p.id,
                p.log.display(),
                lines[from..].join("\n")
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

fn http_post(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

/// A gauge from `/metrics`.
fn metric(p: &Proc, name: &str) -> Option<f64> {
    let (_, body) = http_get(&p.http(), "/metrics")?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn channel(p: &Proc) -> Channel {
    tonic::transport::Endpoint::from_shared(p.grpc_url())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

async fn admin(p: &Proc) -> AdminClient<Channel> {
    AdminClient::new(channel(p).await)
}

async fn points(p: &Proc) -> PointsClient<Channel> {
    PointsClient::new(channel(p).await)
}

async fn status(p: &Proc) -> Option<pb::StatusResponse> {
    admin(p)
        .await
        .status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

async fn wait_answering(c: &Cluster, ids: &[u64]) {
    for &id in ids {
        wait_for(&format!("node {id} answering Status"), WAIT, || async {
            status(c.node(id)).await
        })
        .await;
    }
}

async fn initialize(c: &Cluster, via: u64, members: &[u64]) {
    let members = members
        .iter()
        .map(|&id| pb::Member {
            node_id: id,
            addr: c.node(id).addr(),
            voter: true,
        })
        .collect();
    admin(c.node(via))
        .await
        .initialize(pb::InitializeRequest { members })
        .await
        .unwrap();
}

/// A leader that every running node agrees on and that is ready (has applied its log).
async fn wait_leader(c: &Cluster, not: Option<u64>) -> u64 {
    wait_leader_among(c, &c.running(), not).await
}

/// A leader that the nodes `among` agree on and that is ready.
async fn wait_leader_among(c: &Cluster, among: &[u64], not: Option<u64>) -> u64 {
    let running = among.to_vec();
    wait_for("an agreed, ready leader", WAIT, || {
        let running = running.clone();
        async move {
            let mut leader = None;
            for &id in &running {
                let s = status(c.node(id)).await?;
                let l = s.leader_id?;
                if leader.is_some_and(|x| x != l) || Some(l) == not {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            let ready = http_get(&c.node(l).http(), "/readyz").is_some_and(|(code, _)| code == 200);
            ready.then_some(l)
        }
    })
    .await
}

/// Waits until every running node applied the same index (≥ `at_least`) and reports the same
/// content checksum; returns (applied index, checksum).
async fn converge(c: &Cluster, at_least: u64) -> (u64, u64) {
    converge_among(c, &c.running(), at_least).await
}

async fn converge_among(c: &Cluster, among: &[u64], at_least: u64) -> (u64, u64) {
    let running = among.to_vec();
    wait_for("replicas to converge", WAIT, || {
        let running = running.clone();
        async move {
            let mut seen = None;
            for &id in &running {
                let s = status(c.node(id)).await?;
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
    points(p).await.upsert(req).await.map(|r| r.into_inner())
}

/// How many of `ids` this node has (eventual read).
async fn present(p: &Proc, ids: &[String]) -> usize {
    let mut client = points(p).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_replicate_forward_and_read_their_writes() {
    let _serial = serial().await;
    let mut c = Cluster::new(3, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        let t = Instant::now();
        wait_answering(&c, &[0, 1, 2]).await;
        // Not initialized yet: no leader, not ready, writes refused.
        let s = status(c.node(1)).await.unwrap();
        assert!(!s.initialized && s.leader_id.is_none(), "{s:?}");
        assert_eq!(http_get(&c.node(1).http(), "/readyz").unwrap().0, 503);
        let err = upsert(c.node(1), batch("x", 0, 1)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

        initialize(&c, 0, &[0, 1, 2]).await;
        let again = admin(c.node(0))
            .await
            .initialize(pb::InitializeRequest { members: vec![] })
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
        let leader = wait_leader(&c, None).await;
        eprintln!("leader {leader} elected {:?} after start", t.elapsed());
        let follower = (leader + 1) % 3;

        // Through the leader and through a follower (forwarded).
        let mut last = 0;
        for b in 0..10 {
            let via = if b % 2 == 0 { leader } else { follower };
            let w = upsert(c.node(via), batch("p", b * 50, 50)).await.unwrap();
            assert_eq!(w.affected, 50);
            last = token_index(&w);
        }
        let d = points(c.node(follower))
            .await
            .delete(pb::DeleteRequest {
                index: String::new(),
                ids: vec!["p0".into(), "p1".into(), "nope".into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.affected, 2);
        assert!(token_index(&d) > last);

        // The REST mirror writes through Raft too (forwarded by a follower).
        let (code, body) = http_post(
            &c.node(follower).http(),
            "/v1/indexes/default/points",
            r#"{"points": [{"id": "h0", "vector": [1, 2, 3, 4], "payload": {"k": "v"}}]}"#,
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(r#""affected":1"#) && body.contains("appliedIndex"),
            "{body}"
        );
        let (code, body) = http_post(
            &c.node(follower).http(),
            "/v1/indexes/default/points/delete",
            r#"{"ids": ["h0"]}"#,
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""affected":1"#), "{body}");

        // Invalid input is refused before it reaches the log, on any node.
        let bad = upsert(
            c.node(follower),
            vec![pb::Point {
                id: "bad".into(),
                vector: vec![1.0, f32::NAN, 0.0, 0.0],
                payload_json: None,
            }],
        )
        .await
        .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

        // A forwarded request is not forwarded again: a follower names the leader.
        let mut req = tonic::Request::new(pb::UpsertRequest {
            index: String::new(),
            points: batch("f", 0, 1),
        });
        req.metadata_mut()
            .insert("kindex-forwarded", "9".parse().unwrap());
        let err = points_client_call(c.node(follower), req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            err.metadata()
                .get("kindex-leader-id")
                .unwrap()
                .to_str()
                .unwrap(),
            leader.to_string()
        );
        assert_eq!(
            err.metadata()
                .get("kindex-leader")
                .unwrap()
                .to_str()
                .unwrap(),
            c.node(leader).grpc_addr()
        );

        // Session: a follower answers once it applied the token's index.
        let w = upsert(c.node(leader), batch("s", 0, 1)).await.unwrap();
        let other = (leader + 2) % 3;
        let got = points(c.node(other))
            .await
            .get(pb::GetRequest {
                ids: vec!["s0".into()],
                consistency: pb::Consistency::Session as i32,
                token: w.token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.points.len(), 1);
        // Linearizable on a follower: forwarded to the leader.
        let n = points(c.node(follower))
            .await
            .count(pb::CountRequest {
                consistency: pb::Consistency::Linearizable as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(n, 499);
        // A token from the future (beyond the leader's log): refused at once.
        let far = pb::ConsistencyToken {
            shards: vec![pb::ShardIndex {
                shard: 0,
                applied_index: 1_000_000,
            }],
            ..Default::default()
        };
        let err = points(c.node(other))
            .await
            .count(pb::CountRequest {
                consistency: pb::Consistency::Session as i32,
                token: Some(far),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

        let (applied, sum) = converge(&c, token_index(&w)).await;
        eprintln!(
            "converged at {applied}, checksum {sum:016x}, {:?} after start",
            t.elapsed()
        );
        for id in 0..3 {
            let s = status(c.node(id)).await.unwrap();
            assert_eq!(s.vectors_live, 499, "node {id}: {s:?}");
            assert_eq!(s.members.len(), 3, "{s:?}");
            assert!(
                s.members.iter().all(|m| m.voter && m.addr.contains('|')),
                "{s:?}"
            );
            assert_eq!(s.role, if id == leader { "leader" } else { "follower" });
            assert!(s.initialized);
        }
        // Metrics of the Raft layer.
        let lag = http_get(&c.node(leader).http(), "/metrics").unwrap().1;
        assert!(
            lag.contains("kindex_raft_replication_lag_entries{follower="),
            "{lag}"
        );
        assert_eq!(metric(c.node(leader), "kindex_raft_role"), Some(3.0));
        assert!(metric(c.node(follower), "kindex_raft_applied_entries_total").unwrap() >= 12.0);
        assert!(metric(c.node(follower), "kindex_raft_leader_changes_total").unwrap() >= 1.0);
        assert!(metric(c.node(follower), "kindex_raft_log_bytes").unwrap() > 0.0);

        // On-demand snapshot covers everything applied.
        let snap = admin(c.node(follower))
            .await
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(snap.log_id.unwrap().index >= applied, "{snap:?}");
        assert!(snap.bytes > 0 && Path::new(&snap.path).is_dir(), "{snap:?}");

        // Graceful stop of the leader: it hands leadership over (no election timeout), drains
        // the queue, takes a snapshot and exits 0; restarted, it rejoins from its data dir.
        let w = upsert(c.node(follower), batch("t", 0, 30)).await.unwrap();
        let stopped = Instant::now();
        let code = c.nodes[leader as usize].sigterm();
        assert!(code.success(), "{code:?}");
        let next = wait_leader(&c, Some(leader)).await;
        eprintln!(
            "SIGTERM: leader {leader} stopped, node {next} leads {:?} later",
            stopped.elapsed()
        );
        let snaps: Vec<_> = std::fs::read_dir(c.node(leader).dir.join("snapshots"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
            .collect();
        assert!(
            !snaps.is_empty()
                && snaps
                    .iter()
                    .all(|e| e.path().join("manifest.sect").is_file())
        );
        c.start(leader);
        let (applied, _) = converge(&c, token_index(&w)).await;
        assert!(applied >= token_index(&w));
        let s = status(c.node(leader)).await.unwrap();
        assert_eq!(s.vectors_live, 529, "{s:?}");
        eprintln!("test done in {:?}", t.elapsed());
    })
    .await;
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
    let mut c = Cluster::new(3, 3, &["--raft-log-keep", "200"]);
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
            c.nodes[victim as usize].kill();
            let was_leader = victim == leader;
            let elected_leader = wait_leader(&c, was_leader.then_some(victim)).await;
            let elected = started.elapsed();
            let after_kill = acked.lock().len();
            wait_for("writes resume", WAIT, || async { (acked.lock().len() >= after_kill + 20).then_some(()) }).await;
            let resumed = started.elapsed();
            // Restart from its data dir; it catches up and becomes ready.
            c.start(victim);
            wait_for("restarted node ready", WAIT, || async {
                http_get(&c.node(victim).http(), "/readyz").is_some_and(|(code, _)| code == 200).then_some(())
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

        let last = status(c.node(leader)).await.unwrap().applied.unwrap().index;
        let (applied, sum) = converge(&c, last).await;
        for id in 0..3 {
            let n = present(c.node(id), &acked).await;
            assert_eq!(n, acked.len(), "node {id} lost acknowledged writes");
            let s = status(c.node(id)).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_replica_rejoins_by_snapshot() {
    let _serial = serial().await;
    let mut c = Cluster::new(3, 3, &["--raft-log-keep", "5"]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        for b in 0..30 {
            upsert(c.node(leader), batch("p", b * 10, 10))
                .await
                .unwrap();
        }
        // Snapshot on the leader; the log behind it (but 5 entries) is purged.
        let snap = admin(c.node(leader))
            .await
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        let snap_index = snap.log_id.unwrap().index;
        wait_for("log purged", WAIT, || async {
            metric(c.node(leader), "kindex_raft_purged_index")
                .filter(|p| *p > 10.0)
                .map(drop)
        })
        .await;

        // A follower loses its volume: it leaves the group, comes back empty, and is added
        // again as the operator does (learner, then voter).
        let lost = (leader + 1) % 3;
        c.nodes[lost as usize].kill();
        let voters: Vec<u64> = (0..3).filter(|&i| i != lost).collect();
        admin(c.node(leader))
            .await
            .change_membership(pb::ChangeMembershipRequest {
                voters: voters.clone(),
                retain: false,
            })
            .await
            .unwrap();
        std::fs::remove_dir_all(&c.node(lost).dir).unwrap();
        // Writes go on with two of two voters.
        for b in 30..35 {
            upsert(c.node(leader), batch("p", b * 10, 10))
                .await
                .unwrap();
        }
        c.start(lost);
        wait_answering(&c, &[lost]).await;
        assert!(!status(c.node(lost)).await.unwrap().initialized);
        let r = admin(c.node(leader))
            .await
            .add_learner(pb::AddLearnerRequest {
                member: Some(pb::Member {
                    node_id: lost,
                    addr: c.node(lost).addr(),
                    voter: false,
                }),
                blocking: true,
            })
            .await
            .unwrap()
            .into_inner();
        eprintln!("{}", r.message);
        wait_for("the learner installed the snapshot", WAIT, || async {
            let s = status(c.node(lost)).await?;
            (s.role == "learner" && s.snapshot?.index >= snap_index).then_some(())
        })
        .await;
        admin(c.node(leader))
            .await
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![0, 1, 2],
                retain: false,
            })
            .await
            .unwrap();
        let w = upsert(c.node(lost), batch("after", 0, 10)).await.unwrap();
        let (_, sum) = converge(&c, token_index(&w)).await;
        let s = status(c.node(lost)).await.unwrap();
        assert_eq!(s.role, "follower", "{s:?}");
        assert_eq!(s.vectors_live, 360, "{s:?}");
        eprintln!("wiped replica rejoined by snapshot at {snap_index}; checksum {sum:016x}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_is_added_promoted_leads_and_is_removed() {
    let _serial = serial().await;
    let mut c = Cluster::new(4, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        for b in 0..10 {
            upsert(c.node(leader), batch("p", b * 20, 20))
                .await
                .unwrap();
        }
        c.start(3);
        wait_answering(&c, &[3]).await;
        // Only the leader adds learners; a follower says who leads.
        let follower = (leader + 1) % 3;
        let learner = pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: 3,
                addr: c.node(3).addr(),
                voter: false,
            }),
            blocking: true,
        };
        let err = admin(c.node(follower))
            .await
            .add_learner(learner.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        admin(c.node(leader))
            .await
            .add_learner(learner)
            .await
            .unwrap();
        wait_for("the learner applied everything", WAIT, || async {
            let s = status(c.node(3)).await?;
            (s.role == "learner" && s.vectors_live == 200).then_some(())
        })
        .await;

        // Promote.
        admin(c.node(leader))
            .await
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![0, 1, 2, 3],
                retain: false,
            })
            .await
            .unwrap();
        let s = status(c.node(leader)).await.unwrap();
        let voters: BTreeSet<u64> = s
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect();
        assert_eq!(voters, BTreeSet::from([0, 1, 2, 3]), "{s:?}");
        // Hand it the leadership, write through it.
        admin(c.node(leader))
            .await
            .transfer_leader(pb::TransferLeaderRequest { to: 3 })
            .await
            .unwrap();
        assert_eq!(wait_leader(&c, None).await, 3);
        let w = upsert(c.node(3), batch("q", 0, 20)).await.unwrap();
        converge(&c, token_index(&w)).await;

        // Remove it again (leadership moves back to the remaining voters).
        admin(c.node(3))
            .await
            .transfer_leader(pb::TransferLeaderRequest { to: leader })
            .await
            .unwrap();
        assert_eq!(wait_leader(&c, None).await, leader);
        admin(c.node(leader))
            .await
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![0, 1, 2],
                retain: false,
            })
            .await
            .unwrap();
        let s = status(c.node(leader)).await.unwrap();
        assert_eq!(s.members.len(), 3, "{s:?}");
        c.nodes[3].kill();
        let w = upsert(c.node(leader), batch("r", 0, 20)).await.unwrap();
        let (_, sum) = converge(&c, token_index(&w)).await;
        let s = status(c.node(follower)).await.unwrap();
        assert_eq!(s.vectors_live, 240, "{s:?}");
        eprintln!("learner added, promoted, led, removed; checksum {sum:016x}");
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
    let c = Cluster::new(3, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        let t = Instant::now();
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let old = wait_leader(&c, None).await;
        let majority: Vec<u64> = (0..3).filter(|&i| i != old).collect();
        let old_term = status(c.node(old)).await.unwrap().term;

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
        c.cut_links(old, &majority).await;
        let cut_at = Instant::now();

        // Writes proposed on the isolated leader are never acknowledged: they time out or are
        // refused, whatever the client's deadline.
        let mut minority_ids = Vec::new();
        let mut tries = Vec::new();
        for i in 0..4u64 {
            let pts = batch("minority", i * 10, 10);
            minority_ids.extend(pts.iter().map(|p| p.id.clone()));
            let deadline = Duration::from_millis(1500 + 1000 * i);
            let p = c.node(old);
            tries.push(async move { upsert_local(p, pts, deadline).await });
        }
        for (i, r) in futures::future::join_all(tries).await.into_iter().enumerate() {
            let err = r.expect_err("the isolated leader acknowledged a write");
            eprintln!("write {i} to the isolated leader: {:?} {}", err.code(), err.message());
        }

        // The majority elects a new leader (higher term) and accepts writes.
        let new = wait_leader_among(&c, &majority, Some(old)).await;
        let elected = cut_at.elapsed();
        let s = status(c.node(new)).await.unwrap();
        assert!(s.term > old_term, "{s:?}");
        let w = upsert(c.node(new), batch("majority", 0, 50)).await.unwrap();
        assert_eq!(w.affected, 50);
        let majority_ids: Vec<String> = (0..50).map(|i| format!("majority{i}")).collect();
        // The old leader has not applied it (it is cut off) …
        assert_eq!(present(c.node(old), &majority_ids).await, 0);
        let isolated = status(c.node(old)).await.unwrap();
        eprintln!(
            "isolated node {old}: role {} term {}; new leader {new} (term {}) after {elected:?}",
            isolated.role, isolated.term, s.term
        );
        // … and a write through it is still not acknowledged.
        let err = upsert_local(c.node(old), batch("minority", 100, 1), Duration::from_secs(2))
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
        let err = points(c.node(old))
            .await
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
        c.cut_links(old, &[]).await;
        let healed_at = Instant::now();
        let leader = wait_leader(&c, None).await;
        assert_ne!(leader, old, "the stale leader must not win back leadership by itself");
        let s = status(c.node(old)).await.unwrap();
        assert_eq!(s.role, "follower", "{s:?}");
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = writer.await.unwrap();
        let acked = acked.lock().clone();
        let last = status(c.node(leader)).await.unwrap().applied.unwrap().index;
        let (applied, sum) = converge(&c, last).await;
        for id in 0..3 {
            assert_eq!(
                present(c.node(id), &acked).await,
                acked.len(),
                "node {id} lost acknowledged writes"
            );
            assert_eq!(
                present(c.node(id), &majority_ids).await,
                majority_ids.len()
            );
            assert_eq!(
                present(c.node(id), &minority_ids).await,
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
