//! A sharded cluster of real `kindex-node` processes on one loopback /24 of its own (default
//! ports), a temp dir, bounded waits, children killed on drop, log tails printed when a test
//! fails.

use std::time::Duration;

use super::{Proc, WAIT, http_get, loopback, wait_for};

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
    /// `--bootstrap` (the lowest id initializes each group); false: the group waits for the
    /// Admin `Initialize` RPC.
    pub bootstrap: bool,
    /// How many replicas of each shard start at once (None: all); the others are members of
    /// `--peers` that start with [`Cluster::restart`].
    pub started: Option<u64>,
    /// The `--runtime-config` JSON every node reads (None: no runtime config).
    pub runtime: Option<String>,
    /// `RUST_LOG` of every node.
    pub rust_log: String,
    /// Every node runs with `--peer-tls-dir` [`Cluster::tls_dir`] (the test writes the
    /// certificates there before it starts the nodes: use `started: Some(0)`).
    pub peer_tls: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 800,
            extra_args: vec![],
            bootstrap: true,
            started: None,
            runtime: Some(r#"{"indexingThreads": 1, "snapshotIntervalSecs": 3600}"#.into()),
            rust_log: "info,openraft=warn".into(),
            peer_tls: false,
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
        let ip = |shard: u32, id: u64| block.ip(shard * replicas as u32 + id as u32 + 1);
        let runtime = opts.runtime.as_ref().map(|json| {
            let path = tmp.path().join("runtime.json");
            std::fs::write(&path, json).unwrap();
            path
        });
        let mut nodes = Vec::new();
        for shard in 0..shards {
            for id in 0..replicas {
                let mut p = Proc::new(
                    ip(shard, id),
                    shard,
                    id,
                    tmp.path().join(format!("s{shard}-{id}")),
                    tmp.path().join(format!("s{shard}-{id}.log")),
                );
                p.runtime = runtime.clone();
                nodes.push(p);
            }
        }
        for i in 0..nodes.len() {
            let args = Self::args(&nodes, &nodes[i], shards, dim, &opts);
            nodes[i].args = args;
            nodes[i].env = vec![("RUST_LOG".into(), Some(opts.rust_log.clone()))];
        }
        let started = opts.started.unwrap_or(replicas);
        for p in nodes.iter_mut().filter(|p| p.id < started) {
            p.start();
        }
        Cluster {
            tmp,
            shards,
            replicas,
            dim,
            nodes,
            opts,
        }
    }

    /// The command line of node `p` of `nodes`.
    fn args(nodes: &[Proc], p: &Proc, shards: u32, dim: u32, opts: &Opts) -> Vec<String> {
        let peers = nodes
            .iter()
            .filter(|q| q.shard == p.shard)
            .map(|q| format!("{}={}", q.id, q.member_addr()))
            .collect::<Vec<_>>()
            .join(",");
        let others = (0..shards)
            .filter(|s| *s != p.shard)
            .map(|s| {
                let addrs: Vec<String> = nodes
                    .iter()
                    .filter(|q| q.shard == s)
                    .map(Proc::grpc_addr)
                    .collect();
                format!("{s}={}", addrs.join(","))
            })
            .collect::<Vec<_>>()
            .join(";");
        let mut args: Vec<String> = [
            "--data-dir",
            p.dir.to_str().unwrap(),
            "--dimension",
            &dim.to_string(),
            "--metric",
            "l2",
            "--shards",
            &shards.to_string(),
            "--shard",
            &p.shard.to_string(),
            "--node-id",
            &p.id.to_string(),
            "--peers",
            &peers,
            "--listen",
            &p.ip,
            "--grpc-port",
            &p.grpc.to_string(),
            "--http-port",
            "7080",
            "--raft-port",
            &p.raft.to_string(),
            "--admin-port",
            &p.admin_port.to_string(),
            "--raft-heartbeat-ms",
            &opts.heartbeat_ms.to_string(),
            "--raft-election-timeout-ms",
            &opts.election_timeout_ms.to_string(),
            "--raft-fault-file",
            p.faults.to_str().unwrap(),
        ]
        .map(String::from)
        .into();
        if opts.bootstrap {
            args.push("--bootstrap".into());
        }
        if opts.peer_tls {
            args.extend([
                "--peer-tls-dir".into(),
                p.log.with_extension("tls").to_str().unwrap().into(),
            ]);
        }
        args.extend(opts.extra_args.iter().cloned());
        if let Some(runtime) = &p.runtime {
            args.extend(["--runtime-config".into(), runtime.to_str().unwrap().into()]);
        }
        if !others.is_empty() {
            args.extend(["--shard-addrs".into(), others]);
        }
        args
    }

    fn pos(&self, shard: u32, id: u64) -> usize {
        (shard as u64 * self.replicas + id) as usize
    }

    /// The `--peer-tls-dir` of a node (with [`Opts::peer_tls`]).
    pub fn tls_dir(&self, shard: u32, id: u64) -> std::path::PathBuf {
        self.node(shard, id).log.with_extension("tls")
    }

    pub fn node(&self, shard: u32, id: u64) -> &Proc {
        &self.nodes[self.pos(shard, id)]
    }

    pub fn node_mut(&mut self, shard: u32, id: u64) -> &mut Proc {
        let i = self.pos(shard, id);
        &mut self.nodes[i]
    }

    /// kill -9 of node (`shard`, `id`).
    pub fn kill(&mut self, shard: u32, id: u64) {
        self.node_mut(shard, id).kill();
    }

    /// Starts node (`shard`, `id`) again from its data dir (or for the first time, see
    /// [`Opts::started`]).
    pub fn restart(&mut self, shard: u32, id: u64) {
        self.node_mut(shard, id).start();
    }

    /// The ids of the running replicas of `shard`.
    pub fn running(&self, shard: u32) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|p| p.shard == shard && p.running())
            .map(|p| p.id)
            .collect()
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
            out.push_str(&format!(
                "---- shard {} node {} ({})\n{}\n",
                p.shard,
                p.id,
                p.log.display(),
                p.log_tail()
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
