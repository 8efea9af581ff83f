//! One `kindex-node` process of a test ([`Proc`]) and the builder of a standalone one
//! ([`Standalone`]); [`super::Cluster`] builds the members of Raft groups.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kindex_proto as pb;
use pb::admin_client::AdminClient;
use pb::points_client::PointsClient;
use tonic::transport::Channel;

use super::{history, http_get, loopback, node_binary};

/// How long a node may take to exit after SIGTERM (it drains its queue and snapshots first).
pub const STOP_WAIT: Duration = Duration::from_secs(60);

pub struct Proc {
    pub ip: String,
    pub shard: u32,
    pub id: u64,
    pub dir: PathBuf,
    /// stdout and stderr of every start, appended (the node logs to stdout).
    pub log: PathBuf,
    pub grpc: u16,
    /// `ip:port` of the HTTP server.
    pub http: String,
    pub raft: u16,
    /// The Admin gRPC port (its own listener; the data port does not serve Admin).
    pub admin_port: u16,
    /// This node's fault file (missing or empty: no faults).
    pub faults: PathBuf,
    /// The `--runtime-config` file, if it has one.
    pub runtime: Option<PathBuf>,
    /// The command line but the binary; every (re)start runs it.
    pub args: Vec<String>,
    /// Changes to the inherited environment: `(name, Some(value))` sets, `(name, None)` removes.
    pub env: Vec<(String, Option<String>)>,
    /// Another `kindex-node` build to run (mixed-version tests); None: this build's.
    pub binary: Option<PathBuf>,
    /// Peer mTLS of the test's own calls to the admin port (the node runs with
    /// `--peer-tls-dir`): the identity the harness presents. None: plain.
    pub tls: Option<std::sync::Arc<kindex_node::tls::PeerTls>>,
    child: Option<Child>,
    /// A standalone node's own temp dir (log, runtime config, default data dir), removed
    /// after the process (fields drop after `Drop::drop` killed it).
    own: Option<tempfile::TempDir>,
}

impl Proc {
    /// A node that is not running yet: on `ip` with the default ports (gRPC 7070, HTTP 7080,
    /// Raft 7071, Admin 7072), the rest of its command line in `args`.
    pub fn new(ip: String, shard: u32, id: u64, dir: PathBuf, log: PathBuf) -> Proc {
        let faults = log.with_extension("faults");
        Proc {
            http: format!("{ip}:7080"),
            ip,
            shard,
            id,
            dir,
            log,
            grpc: 7070,
            raft: 7071,
            admin_port: 7072,
            faults,
            runtime: None,
            args: vec![],
            env: vec![],
            binary: None,
            tls: None,
            child: None,
            own: None,
        }
    }

    /// Starts the process (again: a restart from its data dir); does not wait for it.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(self.binary.clone().unwrap_or_else(node_binary));
        cmd.args(&self.args);
        for (name, value) in &self.env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// kill -9 (nothing when it is not running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a graceful stop), then the exit status ([`STOP_WAIT`] at most).
    pub fn sigterm(&mut self) -> ExitStatus {
        let pid = self.pid().expect("node is running");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}: {sent:?}");
        self.wait_exit(STOP_WAIT)
    }

    /// Waits (at most `timeout`) for the process to end by itself; kills it and panics with
    /// its log when it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "node {} did not stop within {timeout:?}\n{}",
                    self.id,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process ended on its own (e.g. refused to start); it then
    /// counts as not running.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The child's pid (None: not running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits (at most `timeout`) until `GET path` answers 200 on the HTTP port; panics with
    /// the log when the process ends first or the time is up.
    pub fn wait_http_ok(&mut self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while http_get(&self.http, path).map(|r| r.0) != Some(200) {
            if let Some(s) = self.exited() {
                panic!(
                    "node {} exited ({s}) before {path} was 200\n{}",
                    self.id,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {}: {path} not 200 within {timeout:?}\n{}",
                self.id,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the node wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// 30 lines of the log: from a panic's or error's message (it comes before the long
    /// backtrace), else the last ones.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines
            .iter()
            .position(|l| l.contains("panicked at") || l.starts_with("Error:"))
            .unwrap_or(lines.len().saturating_sub(30));
        lines[from..(from + 30).min(lines.len())].join("\n")
    }

    /// Rewrites this node's fault file (see `node/src/raft/fault.rs`); a running node picks it
    /// up within 50 ms, a restarted one at start.
    pub fn set_faults(&self, faults: &str) {
        std::fs::write(&self.faults, faults).unwrap();
    }

    /// `raft_host:port|grpc_host:port|admin_host:port`, as `--peers` and the membership RPCs
    /// name members.
    pub fn member_addr(&self) -> String {
        format!(
            "{0}:{1}|{0}:{2}|{0}:{3}",
            self.ip, self.raft, self.grpc, self.admin_port
        )
    }

    /// `ip:port` of the Admin gRPC server.
    pub fn admin_addr(&self) -> String {
        format!("{}:{}", self.ip, self.admin_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    pub fn grpc_addr(&self) -> String {
        format!("{}:{}", self.ip, self.grpc)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr())
    }

    /// A channel to the data port.
    pub fn channel(&self) -> Channel {
        lazy_channel(self.grpc_url())
    }

    /// A channel to the Admin port (over mTLS when [`Proc::tls`] is set).
    pub fn admin_channel(&self) -> Channel {
        match &self.tls {
            None => lazy_channel(self.admin_url()),
            Some(tls) => tonic::transport::Endpoint::from_shared(self.admin_url())
                .unwrap()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
                .connect_with_connector_lazy(kindex_node::tls::Connector::new(tls.clone())),
        }
    }

    pub fn points(&self) -> PointsClient<Channel> {
        PointsClient::new(self.channel())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// The Admin service, on the admin port.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.admin_channel())
    }

    pub async fn status(&self) -> Option<pb::StatusResponse> {
        self.admin()
            .status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// A gauge or counter from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&self.http, "/metrics")?;
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
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
            // With peer mTLS, calls between nodes are served on the internal port only.
            let mut client = match &self.tls {
                None => self.points(),
                Some(_) => {
                    PointsClient::new(self.admin_channel()).max_decoding_message_size(256 << 20)
                }
            };
            let got = client.get(req).await.unwrap().into_inner();
            for p in got.points {
                out.insert(p.id, Some(p.vector[0] as u64));
            }
        }
        out
    }
}

fn lazy_channel(url: String) -> Channel {
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone node (no peers) on a loopback address of its own with the default ports; its
/// log (stdout and stderr) and, unless given, its data dir in a temp dir of its own.
#[derive(Debug, Clone)]
pub struct Standalone {
    dim: u32,
    metric: String,
    data_dir: Option<PathBuf>,
    http_port: Option<u16>,
    runtime: Option<String>,
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
}

impl Standalone {
    /// `dim`-dimensional vectors under `metric`; the environment inherited.
    pub fn new(dim: u32, metric: &str) -> Standalone {
        Standalone {
            dim,
            metric: metric.to_string(),
            data_dir: None,
            http_port: None,
            runtime: None,
            args: vec![],
            env: vec![],
        }
    }

    /// The data dir (e.g. one a restart reuses); default: `data` in the node's own temp dir.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Standalone {
        self.data_dir = Some(dir.into());
        self
    }

    /// More `kindex-node` arguments.
    pub fn args(mut self, args: &[&str]) -> Standalone {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Standalone {
        self.env.push((name.into(), Some(value.into())));
        self
    }

    pub fn env_remove(mut self, name: &str) -> Standalone {
        self.env.push((name.into(), None));
        self
    }

    /// `--http-port` (default 7080).
    pub fn http_port(mut self, port: u16) -> Standalone {
        self.http_port = Some(port);
        self
    }

    /// `--runtime-config`: a file in the node's own temp dir with this JSON (`Proc::runtime`).
    pub fn runtime_config(mut self, json: &str) -> Standalone {
        self.runtime = Some(json.to_string());
        self
    }

    /// Starts the node; does not wait for it to serve.
    pub fn start(self) -> Proc {
        let own = tempfile::tempdir().unwrap();
        let ip = loopback::Block::next().ip(1);
        let dir = self.data_dir.unwrap_or_else(|| own.path().join("data"));
        let mut p = Proc::new(ip, 0, 0, dir, own.path().join("node.log"));
        p.args = vec![
            "--data-dir".into(),
            p.dir.to_str().unwrap().into(),
            "--dimension".into(),
            self.dim.to_string(),
            "--metric".into(),
            self.metric,
            "--listen".into(),
            p.ip.clone(),
        ];
        if let Some(port) = self.http_port {
            p.http = format!("{}:{port}", p.ip);
            p.args.extend(["--http-port".into(), port.to_string()]);
        }
        if let Some(json) = self.runtime {
            let path = own.path().join("runtime.json");
            std::fs::write(&path, json).unwrap();
            p.args
                .extend(["--runtime-config".into(), path.to_str().unwrap().into()]);
            p.runtime = Some(path);
        }
        p.args.extend(self.args);
        p.env = self.env;
        p.own = Some(own);
        p.start();
        p
    }
}
