//! A sharded cluster of real `kindex-node` processes on 127.0.0.1 for tests: `shards` Raft
//! groups of `replicas` members each (static `--peers`, `--bootstrap`), every node knowing the
//! other shards through `--shard-addrs`. Own loopback addresses, a temp dir, bounded waits, children
//! killed on drop, log tails printed when a test fails. Every node watches a fault file of its
//! own (`Proc::set_faults`, see `node/src/raft/fault.rs`); [`history`] records what clients
//! did and checks every replica against it.
#![allow(dead_code)] // each test binary uses a different part

pub mod history;
pub mod loopback;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kindex_proto as pb;
use pb::admin_client::AdminClient;
use pb::points_client::PointsClient;
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(90);

/// One multi-process cluster at a time on this machine (shared with `cluster_process`): an
/// exclusive lock on a file in the temp dir.
pub async fn serial() -> std::fs::File {
    tokio::task::spawn_blocking(|| {
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
    .unwrap()
}

pub struct Proc {
    pub ip: String,
    pub shard: u32,
    pub id: u64,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub grpc: u16,
    /// `ip:port` of the HTTP server.
    pub http: String,
    pub raft: u16,
    /// This node's fault file (empty: no faults).
    pub faults: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Rewrites this node's fault file (see `node/src/raft/fault.rs`); a running node picks it
    /// up within 50 ms, a restarted one at start.
    pub fn set_faults(&self, faults: &str) {
        std::fs::write(&self.faults, faults).unwrap();
    }

    /// The child's pid (None: not running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn member_addr(&self) -> String {
        format!("{0}:{1}|{0}:{2}", self.ip, self.raft, self.grpc)
    }

    pub fn grpc_addr(&self) -> String {
        format!("{}:{}", self.ip, self.grpc)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status if the process ended on its own (e.g. refused to start); it then
    /// counts as not running.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc_addr()))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect_lazy()
    }

    pub fn points(&self) -> PointsClient<Channel> {
        PointsClient::new(self.channel())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel())
    }

    /// What this node's own replica holds for `keys` (shard-local eventual
    /// reads of shard 0, 500 ids at a time): the input of the history checker.
    pub async fn replica_state(&self, keys: &[String]) -> history::ReplicaState {
        let mut out: history::ReplicaState = keys.iter().map(|k| (k.clone(), None)).collect();
        for chunk in keys.chunks(500) {
            let mut req = tonic::Request::new(pb::GetRequest {
                index: String::new(),
                ids: chunk.to_vec(),
                with_vectors: true,
                with_payload: false,
                consistency: pb::Consistency::Eventual as i32,
                token: None,
            });
            req.metadata_mut()
                .insert("kindex-shard-local", "0".parse().unwrap());
            let got = self.points().get(req).await.unwrap().into_inner();
            for p in got.points {
                out.insert(p.id, Some(p.vector[0] as u64));
            }
        }
        out
    }

    pub async fn status(&self) -> Option<pb::StatusResponse> {
        self.admin()
            .status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub shards: u32,
    pub replicas: u64,
    pub dim: u32,
    pub nodes: Vec<Proc>,
    pub opts: Opts,
}

/// How the nodes of a [`Cluster`] run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// More `kindex-node` arguments for every node.
    pub extra_args: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 800,
            extra_args: vec![],
        }
    }
}

impl Cluster {
    /// Starts every node of `shards` × `replicas` (`dim`-dimensional l2 index).
    pub fn start(shards: u32, replicas: u64, dim: u32) -> Cluster {
        Self::start_with(shards, replicas, dim, Opts::default())
    }

    pub fn start_with(shards: u32, replicas: u64, dim: u32, opts: Opts) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        // Every node listens on its own loopback address with the default ports (see
        // `loopback`).
        let block = loopback::Block::next();
        let mut nodes = Vec::new();
        for shard in 0..shards {
            for id in 0..replicas {
                nodes.push(Proc {
                    shard,
                    id,
                    dir: tmp.path().join(format!("s{shard}-{id}")),
                    log: tmp.path().join(format!("s{shard}-{id}.log")),
                    ip: block.ip(shard * replicas as u32 + id as u32 + 1),
                    grpc: 7070,
                    http: format!("{}:7080", block.ip(shard * replicas as u32 + id as u32 + 1)),
                    raft: 7071,
                    faults: tmp.path().join(format!("s{shard}-{id}.faults")),
                    child: None,
                });
            }
        }
        std::fs::write(
            tmp.path().join("runtime.json"),
            r#"{"indexingThreads": 1, "snapshotIntervalSecs": 3600}"#,
        )
        .unwrap();
        let mut c = Cluster {
            tmp,
            shards,
            replicas,
            dim,
            nodes,
            opts,
        };
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c
    }

    fn pos(&self, shard: u32, id: u64) -> usize {
        (shard as u64 * self.replicas + id) as usize
    }

    pub fn node(&self, shard: u32, id: u64) -> &Proc {
        &self.nodes[self.pos(shard, id)]
    }

    pub fn kill(&mut self, shard: u32, id: u64) {
        let i = self.pos(shard, id);
        self.nodes[i].kill();
    }

    pub fn restart(&mut self, shard: u32, id: u64) {
        let i = self.pos(shard, id);
        self.spawn(i);
    }

    fn spawn(&mut self, i: usize) {
        let p = &self.nodes[i];
        assert!(p.child.is_none());
        let peers = self
            .nodes
            .iter()
            .filter(|q| q.shard == p.shard)
            .map(|q| format!("{}={}", q.id, q.member_addr()))
            .collect::<Vec<_>>()
            .join(",");
        let others = (0..self.shards)
            .filter(|s| *s != p.shard)
            .map(|s| {
                let addrs: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|q| q.shard == s)
                    .map(Proc::grpc_addr)
                    .collect();
                format!("{s}={}", addrs.join(","))
            })
            .collect::<Vec<_>>()
            .join(";");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kindex-node"));
        cmd.args(["--data-dir", p.dir.to_str().unwrap()])
            .args(["--dimension", &self.dim.to_string(), "--metric", "l2"])
            .args(["--shards", &self.shards.to_string()])
            .args(["--shard", &p.shard.to_string()])
            .args([
                "--node-id",
                &p.id.to_string(),
                "--peers",
                &peers,
                "--bootstrap",
            ])
            .args(["--listen", &p.ip])
            .args(["--grpc-port", &p.grpc.to_string()])
            .args(["--http-port", "7080"])
            .args(["--raft-port", &p.raft.to_string()])
            .args([
                "--raft-heartbeat-ms",
                &self.opts.heartbeat_ms.to_string(),
                "--raft-election-timeout-ms",
                &self.opts.election_timeout_ms.to_string(),
            ])
            .args(["--raft-fault-file", p.faults.to_str().unwrap()])
            .args(&self.opts.extra_args)
            .args([
                "--runtime-config",
                self.tmp.path().join("runtime.json").to_str().unwrap(),
            ]);
        if !others.is_empty() {
            cmd.args(["--shard-addrs", &others]);
        }
        let child = cmd
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().unwrap())) // the node logs to stdout
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.nodes[i].child = Some(child);
    }

    /// Cut (or with an empty list, heal) the Raft links between node (`shard`, `id`) and
    /// the replicas `peers` of its shard. The node re-reads the file every 50 ms; waits
    /// 200 ms so the change is in effect.
    pub async fn cut_links(&self, shard: u32, id: u64, peers: &[u64]) {
        let list: Vec<String> = peers.iter().map(u64::to_string).collect();
        self.node(shard, id).set_faults(&list.join(","));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Every shard has a leader all its running replicas agree on, and it is ready.
    pub async fn wait_leaders(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for shard in 0..self.shards {
            out.push(self.wait_leader(shard, None).await);
        }
        out
    }

    pub async fn wait_leader(&self, shard: u32, not: Option<u64>) -> u64 {
        wait_for(
            &format!("a ready leader of shard {shard}"),
            WAIT,
            || async move { self.try_leader(shard).await.filter(|l| Some(*l) != not) },
        )
        .await
    }

    /// The leader all running replicas of `shard` agree on, if it is ready.
    pub async fn try_leader(&self, shard: u32) -> Option<u64> {
        let mut leader = None;
        for p in self
            .nodes
            .iter()
            .filter(|p| p.shard == shard && p.running())
        {
            let l = p.status().await?.leader_id?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        let l = leader?;
        let ready = http_get(&self.node(shard, l).http, "/readyz").is_some_and(|(c, _)| c == 200);
        ready.then_some(l)
    }

    /// The tail of every node's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.nodes {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            // A panic's or error's message comes before its (long) backtrace: show from there.
            let from = lines
                .iter()
                .position(|l| l.contains("panicked at") || l.starts_with("Error:"))
                .unwrap_or(lines.len().saturating_sub(30));
            out.push_str(&format!(
                "---- shard {} node {} ({})\n{}\n",
                p.shard,
                p.id,
                p.log.display(),
                lines[from..(from + 30).min(lines.len())].join("\n")
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

/// Polls `f` until it returns Some, at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn with_timeout<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {limit:?}"));
}

fn http(addr: &str, request: String, read_timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"),
        Duration::from_secs(5),
    )
}

pub fn http_post(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http(
        addr,
        format!(
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        Duration::from_secs(30),
    )
}
