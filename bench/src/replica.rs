//! Replica lifecycle benchmarks on real `kindex-node` processes (127.0.0.1, free ports):
//!
//! - `restart`: a node holding N vectors (default 1M × 128-d) restarts; time until `/readyz`
//!   answers 200, after a graceful stop (snapshot covers everything) and after kill -9 with a
//!   tail of writes only in the Raft log (snapshot load + log replay).
//! - `catchup`: in a 3-replica shard, a follower whose data dir was wiped rejoins (removed from
//!   the membership, restarted empty, added as a learner); time until it has installed the
//!   leader's snapshot and applied up to the leader's index.
//!
//! Also [`Cluster`], used by `load --spawn`. Every child is killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kindex_proto as pb;
use pb::admin_client::AdminClient;
use pb::points_client::PointsClient;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// One `kindex-node` process slot (ports and data dir stay the same across restarts).
pub struct NodeProc {
    pub id: u64,
    pub dir: PathBuf,
    pub grpc: u16,
    pub http: u16,
    pub raft: u16,
    pub admin_port: u16,
    log: PathBuf,
    pub args: Vec<String>,
    bin: PathBuf,
    child: Option<Child>,
    /// Peer mTLS identity for calls to the admin port (nodes run with `--peer-tls-dir`).
    pub tls: Option<std::sync::Arc<kindex_node::tls::PeerTls>>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NodeProc {
    fn new(id: u64, dir: PathBuf, bin: PathBuf) -> anyhow::Result<NodeProc> {
        Ok(NodeProc {
            id,
            log: dir.with_extension("log"),
            dir,
            grpc: free_port()?,
            http: free_port()?,
            raft: free_port()?,
            admin_port: free_port()?,
            args: Vec::new(),
            bin,
            child: None,
            tls: None,
        })
    }

    pub fn member_addr(&self) -> String {
        format!(
            "127.0.0.1:{}|127.0.0.1:{}|127.0.0.1:{}",
            self.raft, self.grpc, self.admin_port
        )
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.id);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--node-id", &self.id.to_string()])
            .args(["--grpc-port", &self.grpc.to_string()])
            .args(["--http-port", &self.http.to_string()])
            .args(["--raft-port", &self.raft.to_string()])
            .args(["--admin-port", &self.admin_port.to_string()])
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (drain, snapshot, exit), bounded wait; kill -9 after `limit`.
    pub fn stop(&mut self, limit: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait()? {
                if !s.success() {
                    bail!("node {} exited with {s} after SIGTERM", self.id);
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "node {} did not stop within {limit:?} after SIGTERM",
            self.id
        )
    }

    fn channel_to(url: String) -> anyhow::Result<Channel> {
        Ok(tonic::transport::Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy())
    }

    fn channel(&self) -> anyhow::Result<Channel> {
        Self::channel_to(self.grpc_url())
    }

    /// The Admin service, on the node's own admin port.
    pub fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let url = format!("http://127.0.0.1:{}", self.admin_port);
        let channel = match &self.tls {
            None => Self::channel_to(url)?,
            Some(tls) => tonic::transport::Endpoint::from_shared(url)?
                .connect_timeout(Duration::from_secs(2))
                .connect_with_connector_lazy(kindex_node::tls::Connector::new(tls.clone())),
        };
        Ok(AdminClient::new(channel))
    }

    pub fn points(&self) -> anyhow::Result<PointsClient<Channel>> {
        Ok(PointsClient::new(self.channel()?).max_encoding_message_size(256 << 20))
    }

    pub async fn status(&self) -> Option<pb::StatusResponse> {
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_secs(5));
        self.admin()
            .ok()?
            .status(req)
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// `/readyz` answers 200. A request sent before the HTTP server runs waits in the
    /// listener's backlog and is answered as soon as it does.
    pub async fn ready(&self) -> bool {
        let get = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http)).await?;
            s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        match tokio::time::timeout(Duration::from_secs(60), get).await {
            Ok(Ok(out)) => out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200"),
            _ => false,
        }
    }

    /// Polls `/readyz` until 200 (every 10 ms), at most `limit`; returns the time waited.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        while !self.ready().await {
            if t.elapsed() > limit {
                bail!(
                    "node {} not ready after {limit:?} (log: {})",
                    self.id,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(t.elapsed())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` node processes in `root` (`node-<id>` dirs); with `n > 1` a static-peer Raft group that
/// node 0 bootstraps.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// `node_args`: structural and other flags for every node; `runtime`: runtime-config JSON
    /// (None: the node's defaults).
    pub fn new(
        root: &Path,
        n: u64,
        bin: PathBuf,
        node_args: &[String],
        runtime: Option<&str>,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(root)?;
        let mut nodes = (0..n)
            .map(|id| NodeProc::new(id, root.join(format!("node-{id}")), bin.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let peers = nodes
            .iter()
            .map(|p| format!("{}={}", p.id, p.member_addr()))
            .collect::<Vec<_>>()
            .join(",");
        let mut common: Vec<String> = node_args.to_vec();
        if let Some(json) = runtime {
            let path = root.join("runtime.json");
            std::fs::write(&path, json)?;
            common.extend(["--runtime-config".into(), path.display().to_string()]);
        }
        for p in &mut nodes {
            p.args = common.clone();
            if n > 1 {
                p.args.extend(["--peers".into(), peers.clone()]);
                if p.id == 0 {
                    p.args.push("--bootstrap".into());
                }
            }
        }
        Ok(Cluster { nodes })
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        self.nodes.iter_mut().try_for_each(NodeProc::start)
    }

    /// The leader every node names, once it is ready.
    pub async fn wait_leader(&self, limit: Duration) -> anyhow::Result<u64> {
        let t = Instant::now();
        loop {
            let mut leader = None;
            let mut agreed = true;
            for p in self.nodes.iter().filter(|p| p.child.is_some()) {
                match p.status().await.and_then(|s| s.leader_id) {
                    Some(l) if leader.is_none_or(|x| x == l) => leader = Some(l),
                    _ => agreed = false,
                }
            }
            if let (true, Some(l)) = (agreed, leader)
                && self.nodes[l as usize].ready().await
            {
                return Ok(l);
            }
            if t.elapsed() > limit {
                bail!("no agreed leader after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes ids `{prefix}{from..to}` (seeded random vectors) with `writers` concurrent clients in
/// batches of `batch`; returns vectors acknowledged.
pub async fn fill(
    node: &NodeProc,
    prefix: &str,
    range: std::ops::Range<usize>,
    dim: usize,
    batch: usize,
    writers: usize,
) -> anyhow::Result<u64> {
    let t = Instant::now();
    let total = range.len();
    let chunks: Vec<std::ops::Range<usize>> = range
        .clone()
        .step_by(batch)
        .map(|s| s..(s + batch).min(range.end))
        .collect();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = node.points()?;
        let mine: Vec<_> = chunks.iter().skip(w).step_by(writers).cloned().collect();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64 + 1000);
            let mut acked = 0u64;
            for r in mine {
                let points = r
                    .map(|i| pb::Point {
                        id: format!("{prefix}{i}"),
                        vector: (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                        payload_json: None,
                    })
                    .collect();
                let req = pb::UpsertRequest {
                    index: String::new(),
                    points,
                };
                acked += client.upsert(req).await?.into_inner().affected;
            }
            Ok::<_, tonic::Status>(acked)
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await??;
    }
    eprintln!(
        "wrote {total} vectors in {:.1} s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        total as f64 / t.elapsed().as_secs_f64()
    );
    Ok(acked)
}

/// Waits until the node's indexing queue is empty; prints progress.
pub async fn wait_indexed(node: &NodeProc, limit: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut last_print = Instant::now();
    loop {
        if let Some(s) = node.status().await {
            if s.vectors_queued == 0 {
                return Ok(t.elapsed());
            }
            if last_print.elapsed() > Duration::from_secs(15) {
                eprintln!(
                    "node {}: {} indexed, {} queued",
                    node.id, s.vectors_indexed, s.vectors_queued
                );
                last_print = Instant::now();
            }
        }
        if t.elapsed() > limit {
            bail!("node {} still indexing after {limit:?}", node.id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn node_bin(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("kindex-node"),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p kindex-node) or pass --node-bin",
            bin.display()
        );
    }
    Ok(bin)
}

pub fn structural_args(dim: usize, ef_construction: u32) -> Vec<String> {
    vec![
        "--dimension".into(),
        dim.to_string(),
        "--metric".into(),
        "l2".into(),
        "--ef-construction".into(),
        ef_construction.to_string(),
    ]
}

/// Runtime config of the benchmark nodes: a queue that takes the whole fill (ingest is not
/// throttled by indexing), snapshots only when asked.
fn bench_runtime(n: usize) -> String {
    json!({"queueCapacity": n.max(100_000), "snapshotIntervalSecs": 86_400, "snapshotLogEntries": 1_000_000_000u64})
        .to_string()
}

#[derive(clap::Args)]
pub struct RestartArgs {
    /// Kept between runs: the data dir is built once (`<dir>/node-0`) and reused.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    n: usize,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Structural efConstruction of the data dir (only the build time depends on it; the
    /// graph's size on disk depends on m = 16).
    #[arg(long, default_value_t = 64)]
    ef_construction: u32,
    /// Vectors written after the snapshot, left only in the Raft log for the kill -9 restart.
    #[arg(long, default_value_t = 100_000)]
    tail: usize,
    /// Graceful restarts measured.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The `kindex-node` binary [default: next to this binary].
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

pub async fn restart(a: RestartArgs) -> anyhow::Result<()> {
    let bin = node_bin(&a.node_bin)?;
    let mut c = Cluster::new(
        &a.dir,
        1,
        bin,
        &structural_args(a.dim, a.ef_construction),
        Some(&bench_runtime(a.n)),
    )?;
    let built_marker = a.dir.join(format!("built-{}", a.n));
    if !built_marker.is_file() {
        if c.nodes[0].dir.exists() {
            std::fs::remove_dir_all(&c.nodes[0].dir)?;
        }
        let node = &mut c.nodes[0];
        node.start()?;
        node.wait_ready(Duration::from_secs(60)).await?;
        let t = Instant::now();
        fill(node, "v", 0..a.n, a.dim, 1024, 4).await?;
        let indexed = wait_indexed(node, Duration::from_secs(3600)).await?;
        eprintln!(
            "built {} vectors in {:.0} s (indexing finished {:.0} s after the last write)",
            a.n,
            t.elapsed().as_secs_f64(),
            indexed.as_secs_f64()
        );
        node.stop(Duration::from_secs(600))?;
        std::fs::write(&built_marker, b"")?;
    }
    let node = &mut c.nodes[0];
    let mut graceful = Vec::new();
    let mut status = None;
    for run in 0..a.runs {
        node.start()?;
        let ready = node.wait_ready(Duration::from_secs(300)).await?;
        let s = node.status().await.context("status")?;
        eprintln!(
            "graceful restart {run}: ready after {:.2} s, {} vectors ({} queued), snapshot {} bytes",
            ready.as_secs_f64(),
            s.vectors_live,
            s.vectors_queued,
            s.last_snapshot_bytes
        );
        graceful.push(ready.as_secs_f64());
        status = Some(s);
        // kill -9 keeps the data dir exactly as it is (no new snapshot).
        node.kill();
    }
    // A tail only in the log: snapshot load + replay of `tail` vectors.
    node.start()?;
    node.wait_ready(Duration::from_secs(300)).await?;
    fill(node, "tail", 0..a.tail, a.dim, 256, 4).await?;
    node.kill();
    node.start()?;
    let with_tail = node.wait_ready(Duration::from_secs(300)).await?;
    let s = node.status().await.context("status")?;
    eprintln!(
        "kill -9 restart with {} vectors in the log: ready after {:.2} s, {} vectors ({} queued)",
        a.tail,
        with_tail.as_secs_f64(),
        s.vectors_live,
        s.vectors_queued
    );
    // Fold the tail into a snapshot so the next invocation starts from the same state.
    node.stop(Duration::from_secs(600))?;
    let base = status.context("no graceful run")?;
    println!(
        "{}",
        json!({"bench": "restart", "dim": a.dim, "vectors": base.vectors_live,
               "snapshot_bytes": base.last_snapshot_bytes,
               "graceful_ready_s": graceful,
               "kill9_tail_vectors": a.tail, "kill9_tail_ready_s": with_tail.as_secs_f64(),
               "queued_after_kill9_restart": s.vectors_queued})
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct CatchupArgs {
    /// Scratch dir for the three data dirs (wiped first).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 200_000)]
    n: usize,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    #[arg(long, default_value_t = 64)]
    ef_construction: u32,
    /// Wait until every replica has indexed everything before the snapshot (the snapshot then
    /// carries the whole graph); otherwise the queued tail is in it unindexed.
    #[arg(long)]
    wait_indexed: bool,
    /// The `kindex-node` binary [default: next to this binary].
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

pub async fn catchup(a: CatchupArgs) -> anyhow::Result<()> {
    let bin = node_bin(&a.node_bin)?;
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)?;
    }
    // Keep only a few entries behind a snapshot, so the wiped replica cannot be caught up
    // from the log and must take the snapshot.
    let mut args = structural_args(a.dim, a.ef_construction);
    args.extend(["--raft-log-keep".into(), "4".into()]);
    let mut c = Cluster::new(&a.dir, 3, bin, &args, Some(&bench_runtime(a.n)))?;
    c.start_all()?;
    let leader = c.wait_leader(Duration::from_secs(60)).await?;
    fill(&c.nodes[leader as usize], "v", 0..a.n, a.dim, 1024, 4).await?;
    if a.wait_indexed {
        for p in &c.nodes {
            wait_indexed(p, Duration::from_secs(3600)).await?;
        }
    }
    let snap = c.nodes[leader as usize]
        .admin()?
        .trigger_snapshot(pb::TriggerSnapshotRequest {})
        .await?
        .into_inner();
    let queued_in_snapshot = c.nodes[leader as usize]
        .status()
        .await
        .map_or(0, |s| s.vectors_queued);
    // The log behind the snapshot is purged right after it is built.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost = (leader + 1) % 3;
    // The follower loses its volume: out of the membership, wiped, back empty, re-added.
    c.nodes[lost as usize].kill();
    let voters: Vec<u64> = (0..3).filter(|&i| i != lost).collect();
    let mut admin = c.nodes[leader as usize].admin()?;
    admin
        .change_membership(pb::ChangeMembershipRequest {
            voters,
            retain: false,
        })
        .await?;
    std::fs::remove_dir_all(&c.nodes[lost as usize].dir)?;
    c.nodes[lost as usize].start()?;
    let target = c.nodes[leader as usize]
        .status()
        .await
        .and_then(|s| s.applied)
        .context("leader status")?
        .index;
    let t = Instant::now();
    // Wait for the empty node to answer before adding it.
    while c.nodes[lost as usize].status().await.is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("restarted node does not answer");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answering = t.elapsed();
    let added = Instant::now();
    admin
        .add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: lost,
                addr: c.nodes[lost as usize].member_addr(),
                voter: false,
            }),
            blocking: false,
        })
        .await?;
    let s = loop {
        if let Some(s) = c.nodes[lost as usize].status().await
            && s.applied.as_ref().is_some_and(|l| l.index >= target)
        {
            break s;
        }
        if added.elapsed() > Duration::from_secs(1800) {
            bail!("the wiped replica did not catch up in 30 min");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let caught_up = added.elapsed();
    let leader_sum = c.nodes[leader as usize]
        .status()
        .await
        .context("leader status")?
        .content_checksum;
    eprintln!(
        "wiped replica {lost}: answering {:.2} s after start; snapshot of {} bytes installed and \
         applied to {} in {:.2} s after add_learner ({:.0} MB/s); {} vectors, {} queued; \
         checksum equal to the leader's: {}",
        answering.as_secs_f64(),
        snap.bytes,
        target,
        caught_up.as_secs_f64(),
        snap.bytes as f64 / 1e6 / caught_up.as_secs_f64(),
        s.vectors_live,
        s.vectors_queued,
        s.content_checksum == leader_sum
    );
    println!(
        "{}",
        json!({"bench": "wiped_replica_catchup", "dim": a.dim, "vectors": s.vectors_live,
               "snapshot_bytes": snap.bytes, "catchup_s": caught_up.as_secs_f64(),
               "mb_per_s": snap.bytes as f64 / 1e6 / caught_up.as_secs_f64(),
               "leader_queued_at_snapshot": queued_in_snapshot,
               "queued_after": s.vectors_queued,
               "checksum_equal": s.content_checksum == leader_sum})
    );
    for p in &mut c.nodes {
        p.kill();
    }
    Ok(())
}
