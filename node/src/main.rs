//! `kindex-node`: serves one shard replica of one index.
//!
//! Every write goes through the shard's Raft group. With no cluster flags (`--peers`,
//! `--raft-addr-template`) the node is standalone: a group of one member (node 0 unless
//! `--node-id` says otherwise) that initializes itself on first start, data in `--data-dir`
//! (the README's run command). With cluster flags the group is initialized once by the Admin
//! `Initialize` RPC (the operator), or by `--bootstrap` on the lowest id of `--peers`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use clap::Parser;
use kindex_node::auth::ApiKeys;
use kindex_node::auth::keys::KeyFiles;
use kindex_node::config::args::StructuralArgs;
use kindex_node::config::logging::{self, LogFormat};
use kindex_node::config::{RuntimeConfig, StructuralConfig};
use kindex_node::coordinator::Coordinator;
use kindex_node::coordinator::topology::{self, ShardSeeds};
use kindex_node::node::{
    self, Bootstrap, DEFAULT_ADMIN_PORT, DEFAULT_RAFT_PORT, Node, NodeConfig, RaftTuning,
};
use kindex_node::server::{admin_http, grpc, http};
use kindex_node::tls::ClientTls;
use kindex_node::tls::PeerTls;
use kindex_proto as pb;

#[derive(Debug, Parser)]
#[command(
    name = "kindex-node",
    version,
    about = "kindex index node (one shard replica)"
)]
struct Args {
    /// Where snapshots, the Raft log and the structural config live.
    #[arg(long, env = "KINDEX_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Name of the index this node serves.
    #[arg(long, env = "KINDEX_INDEX", default_value = "default")]
    index: String,
    /// Address to listen on (0.0.0.0 inside Kubernetes): gRPC, HTTP, Raft and Admin.
    #[arg(long, env = "KINDEX_LISTEN", default_value = "127.0.0.1")]
    listen: std::net::IpAddr,
    #[arg(long, env = "KINDEX_GRPC_PORT", default_value_t = 7070)]
    grpc_port: u16,
    #[arg(long, env = "KINDEX_HTTP_PORT", default_value_t = 7080)]
    http_port: u16,
    /// Admin gRPC port: membership changes, snapshots, `Status`. Served on a listener of its
    /// own so that the client Service (which exposes only the data port) never reaches it;
    /// other nodes (topology, divergence guard), the operator and `kindex status`/`snapshot`
    /// call it.
    #[arg(long, env = "KINDEX_ADMIN_PORT", default_value_t = DEFAULT_ADMIN_PORT)]
    admin_port: u16,
    /// Raft transport port [default: 7071]. A standalone node serves Raft RPCs only when it
    /// is given (a group of one needs none).
    #[arg(long, env = "KINDEX_RAFT_PORT")]
    raft_port: Option<u16>,
    /// This node's Raft id. Default: from the ordinal suffix `-<n>` of `--pod-name` (or of
    /// `$HOSTNAME` in cluster mode) and the data dir's incarnation (a new one for an empty
    /// data dir; the ordinal itself for data written before incarnations), else 0.
    #[arg(long, env = "KINDEX_NODE_ID")]
    node_id: Option<u64>,
    /// The pod name (`<index>-s<shard>-<ordinal>`); its ordinal is part of the node id.
    #[arg(long, env = "KINDEX_POD_NAME")]
    pod_name: Option<String>,
    /// The shard this replica serves.
    #[arg(long, env = "KINDEX_SHARD", default_value_t = 0)]
    shard: u32,
    /// Static members of the shard's Raft group: `0=host:7071,1=host:7071,...`. An address may
    /// also carry the member's client gRPC endpoint: `host:7071|host:7070` (otherwise it is the
    /// Raft host with this node's `--grpc-port`), and its Admin endpoint:
    /// `host:7071|host:7070|host:7072` (otherwise the Raft host with this node's
    /// `--admin-port`). Turns on cluster mode: the group waits for the Admin `Initialize` RPC
    /// (or `--bootstrap`).
    #[arg(long, env = "KINDEX_PEERS", value_parser = parse_peers)]
    peers: Option<Peers>,
    /// With `--peers`: the lowest id of the peers initializes the group on first start.
    #[arg(long, env = "KINDEX_BOOTSTRAP")]
    bootstrap: bool,
    /// This node's Raft address in Kubernetes, e.g. `{pod}.{service}.{namespace}.svc:7071`
    /// (placeholders: pod, service, namespace, ordinal, shard, index). Turns on cluster mode.
    #[arg(long, env = "KINDEX_RAFT_ADDR_TEMPLATE")]
    raft_addr_template: Option<String>,
    /// `{service}` of the template (the shard's headless Service).
    #[arg(long, env = "KINDEX_SERVICE")]
    service: Option<String>,
    /// `{namespace}` of the template.
    #[arg(long, env = "KINDEX_NAMESPACE")]
    namespace: Option<String>,
    /// This member's address as other members reach it (`raft_host:port`,
    /// `raft_host:port|grpc_host:port` or `raft_host:port|grpc_host:port|admin_host:port`).
    /// Default: its `--peers` entry, else the rendered `--raft-addr-template`, else
    /// `<listen>:<raft port>|<listen>:<grpc port>|<listen>:<admin port>`.
    #[arg(long, env = "KINDEX_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Raft heartbeat interval.
    #[arg(long, env = "KINDEX_RAFT_HEARTBEAT_MS", default_value_t = 250)]
    raft_heartbeat_ms: u64,
    /// Raft election timeout (minimum; the maximum is twice this).
    #[arg(long, env = "KINDEX_RAFT_ELECTION_TIMEOUT_MS", default_value_t = 1500)]
    raft_election_timeout_ms: u64,
    /// Log entries kept behind the newest snapshot for briefly lagging followers; older ones
    /// are purged after each snapshot (a follower further behind gets the snapshot).
    #[arg(long, env = "KINDEX_RAFT_LOG_KEEP", default_value_t = 1000)]
    raft_log_keep: u64,
    /// Free space kept on the data volume: below it the node refuses writes (as leader),
    /// entries and snapshots from its leader, and snapshot builds, until space is freed; reads
    /// keep working. 0: 5% of the volume, between 4 MiB and 1 GiB (plus one chunk of vectors,
    /// 16,384 × 4 × dimension bytes, with `--vectors-on-disk`).
    #[arg(long, env = "KINDEX_VOLUME_RESERVE_BYTES", default_value_t = 0)]
    volume_reserve_bytes: u64,
    /// Keep the f32 vectors in files on the data volume (`<data-dir>/vectors`, unnamed, mapped)
    /// instead of anonymous memory: the kernel caches them and evicts them under memory
    /// pressure. Costs 4 × dimension bytes of volume per slot; worth it with
    /// `--quantization int8`, where searches read the vectors only to rescore.
    #[arg(long, env = "KINDEX_VECTORS_ON_DISK")]
    vectors_on_disk: bool,
    /// Testing only: a fault file, re-read every 50 ms (missing or empty = no faults): node ids
    /// whose Raft links to this node are cut (both directions), `flush-delay-ms=N`,
    /// `diverge-at=INDEX` (see node/src/raft/fault.rs). Partition and fault tests use it.
    #[arg(long, env = "KINDEX_RAFT_FAULT_FILE", hide = true)]
    raft_fault_file: Option<PathBuf>,
    /// Testing only, UNSAFE: let a restarted leader resume its term without an election
    /// (openraft's leader restore), which loses acknowledged writes. Fault tests use it to show
    /// that their checker catches the loss.
    #[arg(long, env = "KINDEX_UNSAFE_RAFT_LEADER_RESTORE", hide = true)]
    unsafe_raft_leader_restore: bool,
    #[command(flatten)]
    structural: StructuralArgs,
    /// With `--shards` > 1: gRPC addresses of the other shards' replicas (any subset; the rest
    /// is learned from their Admin `Status`, asked on the same host's `--admin-port`):
    /// `1=host:7070,host:7070;2=host:7070`. An entry may name the admin endpoint:
    /// `host:7070|host:7072`.
    #[arg(long, env = "KINDEX_SHARD_ADDRS", value_parser = parse_shard_addrs)]
    shard_addrs: Option<ShardSeeds>,
    /// With `--shards` > 1: one gRPC address per shard from a template, e.g. the shard's
    /// headless Service `{index}-s{shard}-headless.{namespace}.svc:7070` (placeholders:
    /// shard, index, namespace).
    #[arg(
        long,
        env = "KINDEX_SHARD_ADDR_TEMPLATE",
        conflicts_with = "shard_addrs"
    )]
    shard_addr_template: Option<String>,
    /// Require API keys on the data plane (gRPC 7070, HTTP `/v1`): a file of read-write keys,
    /// one per line (`#` comments; e.g. a mounted Secret key). Re-read every 2 s, so keys
    /// are rotated without a restart (list old and new while clients move over). Off when
    /// neither this nor `--read-only-api-keys-file` is given. See docs/security.md.
    #[arg(long, env = "KINDEX_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// A file of read-only API keys (search, get, count, info; not upsert or delete), as
    /// `--api-keys-file`.
    #[arg(long, env = "KINDEX_READ_ONLY_API_KEYS_FILE")]
    read_only_api_keys_file: Option<PathBuf>,
    /// With API keys on, `/metrics` needs a key too (a read-only one suffices; give the
    /// scraper its own). Default: `/metrics` is open.
    #[arg(long, env = "KINDEX_METRICS_REQUIRE_KEY")]
    metrics_require_key: bool,
    /// Peer mTLS: a directory with `tls.crt`, `tls.key` and `ca.crt` (a mounted TLS Secret).
    /// The Raft and admin ports then accept only connections presenting a certificate of a CA
    /// in `ca.crt`, this node presents its own when calling other nodes, and calls between
    /// nodes go to the admin port (the client port refuses them). Re-read every 2 s
    /// (rotation without a restart; list two CAs in `ca.crt` while a CA is rotated). Off
    /// when not given. See docs/security.md.
    #[arg(long, env = "KINDEX_PEER_TLS_DIR")]
    peer_tls_dir: Option<PathBuf>,
    /// With `--peer-tls-dir`: the name every peer's certificate must carry (a DNS SAN), checked
    /// instead of the host dialled. Default: the host dialled.
    #[arg(long, env = "KINDEX_PEER_TLS_SERVER_NAME", requires = "peer_tls_dir")]
    peer_tls_server_name: Option<String>,
    /// Client TLS: a directory with `tls.crt` and `tls.key` (a mounted TLS Secret; `ca.crt` is
    /// not needed). The gRPC client port and the HTTP port then serve TLS only (no client
    /// certificate is asked for: clients authenticate with API keys), probes included: give
    /// them `scheme: HTTPS`. Re-read every 2 s (rotation without a restart). Off when not
    /// given. See docs/security.md.
    #[arg(long, env = "KINDEX_CLIENT_TLS_DIR")]
    client_tls_dir: Option<PathBuf>,
    /// Runtime knobs as JSON (a mounted ConfigMap key); reloaded on change.
    #[arg(long, env = "KINDEX_RUNTIME_CONFIG")]
    runtime_config: Option<PathBuf>,
    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long, env = "KINDEX_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How long a graceful shutdown may spend draining the indexing queue. The snapshot
    /// stores what is still queued and the next start queues it again (searched exactly
    /// meanwhile), so a long drain only moves indexing work from after the restart to before
    /// it, and makes every restart of a pod (rolling updates) that much slower.
    #[arg(long, env = "KINDEX_DRAIN_TIMEOUT_SECS", default_value = "10")]
    drain_timeout_secs: u64,
}

type Peers = BTreeMap<u64, String>;

fn parse_shard_addrs(s: &str) -> Result<ShardSeeds, String> {
    topology::parse_shard_addrs(s).map_err(|e| e.to_string())
}

fn parse_peers(s: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("peer {item:?} is not <id>=<host:port>"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        let addr = addr.trim();
        if addr.is_empty() || !addr.split('|').all(|a| a.contains(':')) {
            return Err(format!(
                "peer {id}: address {addr:?} is not host:port (or host:port|host:port)"
            ));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("peer {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

/// `kindex-a-s0-2` → 2.
fn ordinal(name: &str) -> Option<u32> {
    name.rsplit_once('-')?.1.parse().ok()
}

fn render_template(t: &str, vars: &[(&str, Option<String>)]) -> anyhow::Result<String> {
    let mut out = t.to_string();
    for (k, v) in vars {
        let key = format!("{{{k}}}");
        if out.contains(&key) {
            let Some(v) = v else {
                bail!(
                    "--raft-addr-template uses {key} but its value is not known (set the matching flag)"
                );
            };
            out = out.replace(&key, v);
        }
    }
    if out.contains('{') {
        bail!("--raft-addr-template {t:?}: unknown placeholder left in {out:?}");
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match &args.runtime_config {
        Some(p) => RuntimeConfig::load(p)?,
        None => RuntimeConfig::default(),
    };
    logging::init(args.log_format, &runtime.log_level)?;
    let structural = args.structural.config();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args, structural, runtime))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))
}

async fn run(
    args: Args,
    structural: StructuralConfig,
    runtime: RuntimeConfig,
) -> anyhow::Result<()> {
    let cluster = args.peers.is_some() || args.raft_addr_template.is_some();
    let pod = args
        .pod_name
        .clone()
        .or_else(|| cluster.then(|| std::env::var("HOSTNAME").ok()).flatten());
    let pod_ordinal = match &pod {
        Some(p) => Some(ordinal(p).with_context(|| {
            format!("cannot derive the node id from the pod name {p:?} (no -<ordinal> suffix); pass --node-id")
        })?),
        None => None,
    };
    let node_id = match (args.node_id, pod_ordinal) {
        (Some(id), _) => id,
        // The ordinal plus the volume's incarnation: a pod on a new, empty volume gets a new
        // identity (see `node::pod_node_id`).
        (None, Some(ord)) => {
            let id = node::pod_node_id(&args.data_dir, ord)?;
            tracing::info!(
                node_id = id,
                ordinal = ord,
                incarnation = kindex_common::node_id::incarnation_of(id),
                "raft identity"
            );
            id
        }
        (None, None) if cluster => {
            bail!("cluster mode needs --node-id (or --pod-name with an ordinal)")
        }
        (None, None) => 0,
    };
    let raft_port = args.raft_port.unwrap_or(DEFAULT_RAFT_PORT);
    let advertise = match (&args.advertise_addr, &args.peers, &args.raft_addr_template) {
        (Some(a), _, _) => a.clone(),
        (None, Some(peers), _) => peers
            .get(&node_id)
            .cloned()
            .with_context(|| format!("--peers has no entry for this node ({node_id})"))?,
        (None, None, Some(t)) => render_template(
            t,
            &[
                ("pod", pod.clone()),
                ("service", args.service.clone()),
                ("namespace", args.namespace.clone()),
                (
                    "ordinal",
                    Some(pod_ordinal.map_or(node_id, u64::from).to_string()),
                ),
                ("shard", Some(args.shard.to_string())),
                ("index", Some(args.index.clone())),
            ],
        )?,
        (None, None, None) => format!(
            "{0}:{raft_port}|{0}:{1}|{0}:{2}",
            args.listen, args.grpc_port, args.admin_port
        ),
    };
    let bootstrap = match &args.peers {
        Some(peers) => Bootstrap::Cluster {
            peers: peers.clone(),
            bootstrap: args.bootstrap,
        },
        None if cluster => Bootstrap::Cluster {
            peers: BTreeMap::new(),
            bootstrap: false,
        },
        None => Bootstrap::Standalone,
    };
    if args.bootstrap && args.peers.is_none() {
        bail!("--bootstrap needs --peers");
    }
    let shard_seeds = match (&args.shard_addrs, &args.shard_addr_template) {
        (Some(s), _) => s.clone(),
        (None, Some(t)) => topology::seeds_from_template(
            t,
            structural.shards,
            &args.index,
            args.namespace.as_deref(),
        )?,
        (None, None) => ShardSeeds::new(),
    };
    if args.shard >= structural.shards {
        bail!(
            "--shard {} is out of range: the index has {} shard(s) (--shards)",
            args.shard,
            structural.shards
        );
    }

    if args.metrics_require_key
        && args.api_keys_file.is_none()
        && args.read_only_api_keys_file.is_none()
    {
        bail!(
            "--metrics-require-key needs API keys (--api-keys-file or --read-only-api-keys-file)"
        );
    }
    // Keys before anything listens: a node told to require keys never serves without them.
    let key_files = KeyFiles {
        read_write: args.api_keys_file.clone(),
        read_only: args.read_only_api_keys_file.clone(),
    };
    let api_keys = if key_files.enabled() {
        let keys = std::sync::Arc::new(ApiKeys::load(key_files)?);
        ApiKeys::spawn_reload(&keys, Duration::from_secs(2));
        Some(keys)
    } else {
        None
    };

    let peer_tls = match &args.peer_tls_dir {
        Some(dir) => {
            let tls = std::sync::Arc::new(
                PeerTls::load(dir, args.peer_tls_server_name.clone())
                    .context("loading --peer-tls-dir")?,
            );
            PeerTls::spawn_reload(&tls, kindex_node::tls::RELOAD_EVERY);
            Some(tls)
        }
        None => None,
    };
    let client_tls = match &args.client_tls_dir {
        Some(dir) => {
            let tls =
                std::sync::Arc::new(ClientTls::load(dir).context("loading --client-tls-dir")?);
            ClientTls::spawn_reload(&tls, kindex_node::tls::RELOAD_EVERY);
            Some(tls)
        }
        None => None,
    };

    // Bind everything first so a busy port fails start-up with a clear error.
    let grpc_addr = SocketAddr::new(args.listen, args.grpc_port);
    let http_addr = SocketAddr::new(args.listen, args.http_port);
    let admin_addr = SocketAddr::new(args.listen, args.admin_port);
    let grpc_listener = bind(grpc_addr, "gRPC").await?;
    let http_listener = bind(http_addr, "HTTP").await?;
    let admin_listener = bind(admin_addr, "Admin gRPC").await?;
    let raft_listener = if cluster || args.raft_port.is_some() {
        Some(bind(SocketAddr::new(args.listen, raft_port), "Raft").await?)
    } else {
        None
    };

    let node = Node::open(NodeConfig {
        index: args.index.clone(),
        data_dir: args.data_dir.clone(),
        structural,
        runtime,
        node_id,
        shard: args.shard,
        advertise: advertise.clone(),
        grpc_port: args.grpc_port,
        admin_port: args.admin_port,
        raft_listener,
        bootstrap,
        tuning: RaftTuning {
            heartbeat_ms: args.raft_heartbeat_ms,
            election_timeout_ms: args.raft_election_timeout_ms,
            log_keep: args.raft_log_keep,
            fault_file: args.raft_fault_file.clone(),
            unsafe_leader_restore: args.unsafe_raft_leader_restore,
        },
        peer_tls: peer_tls.clone(),
        volume_reserve: kindex_node::volume::Reserve::from_flag(args.volume_reserve_bytes),
        vectors_on_disk: args.vectors_on_disk,
        name: args
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("node {node_id}")),
    })
    .await
    .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    tracing::info!(
        index = %node.index,
        shard = node.shard,
        node_id,
        %advertise,
        raft_addr = ?node.raft_addr(),
        data_dir = %args.data_dir.display(),
        structural = %node.engine().structural(),
        vectors = node.engine().count(),
        standalone = node.is_standalone(),
        "node open"
    );
    if node.is_standalone() {
        // A group of one elects itself at once: serve only when it can take writes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !node.is_ready() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !node.is_ready() {
            tracing::warn!("standalone node is not ready after 60 s; serving anyway");
        }
    }
    if let Some(p) = args.runtime_config.clone() {
        node::spawn_runtime_reload(node.clone(), p, Duration::from_secs(2));
    }
    node::spawn_maintenance(node.clone());
    node::spawn_retention_sweep(node.clone());
    let coordinator = Coordinator::new(node.clone(), shard_seeds)?;
    coordinator.spawn_refresh();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let points = |internal: grpc::InternalCalls| {
        let mut service =
            grpc::PointsService::new(coordinator.clone()).with_internal_calls(internal);
        if let Some(keys) = &api_keys {
            service = service.with_api_keys(keys.clone());
        }
        pb::points_server::PointsServer::new(service)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    };
    let grpc = {
        let mut stop = stop_rx.clone();
        let internal = if peer_tls.is_some() {
            grpc::InternalCalls::Refused
        } else {
            grpc::InternalCalls::Honoured
        };
        // The data port serves `Points` only: Admin RPCs on it answer UNIMPLEMENTED.
        let router = tonic::transport::Server::builder().add_service(points(internal));
        tokio::spawn(kindex_node::tls::serve(
            router,
            grpc_listener,
            client_tls.as_ref().map(|t| t.grpc_acceptor()),
            async move {
                let _ = stop.changed().await;
            },
        ))
    };
    let admin = {
        let mut stop = stop_rx.clone();
        let admin = pb::admin_server::AdminServer::new(grpc::AdminService { node: node.clone() });
        // HTTP/1.1 too: the policy API (`admin_http`) answers curl and REST clients here.
        // Merged into tonic's default routes, whose fallback answers an unknown gRPC method
        // UNIMPLEMENTED (an HTTP 404 would reach gRPC clients as a protocol error).
        let mut routes = tonic::service::Routes::default();
        let merged =
            std::mem::take(routes.axum_router_mut()).merge(admin_http::router(node.clone()));
        *routes.axum_router_mut() = merged;
        let mut router = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes)
            .add_service(admin);
        if peer_tls.is_some() {
            // Calls between nodes (forwarding, fan-out) arrive here, with a certificate.
            router = router.add_service(points(grpc::InternalCalls::Peers));
        }
        tokio::spawn(kindex_node::tls::serve(
            router,
            admin_listener,
            peer_tls.as_ref().map(|t| t.admin_acceptor()),
            async move {
                let _ = stop.changed().await;
            },
        ))
    };
    let http = {
        let mut stop = stop_rx.clone();
        let app = http::router(
            coordinator.clone(),
            http::HttpAuth {
                keys: api_keys.clone(),
                metrics_need_key: args.metrics_require_key,
            },
        );
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        match &client_tls {
            None => tokio::spawn(async move {
                axum::serve(http_listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }),
            Some(tls) => {
                let listener =
                    kindex_node::tls::TlsListener::new(http_listener, tls.http_acceptor())?;
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                })
            }
        }
    };
    tracing::info!(
        %grpc_addr,
        %http_addr,
        %admin_addr,
        api_keys = api_keys.is_some(),
        peer_tls = peer_tls.is_some(),
        client_tls = client_tls.is_some(),
        "serving"
    );

    tokio::select! {
        _ = shutdown_signal() => {}
        why = node.raft_stopped() => {
            // Serving without a Raft member would only fail every write: exit and be restarted.
            tracing::error!(error = %why, "the shard's raft member stopped; exiting");
            anyhow::bail!("{why}");
        }
    }
    tracing::info!("shutting down: no more writes; draining the indexing queue, then a snapshot");
    node.begin_stop();
    let _ = stop_tx.send(true);
    // In-flight requests finish (bounded); new ones are refused.
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let _ = grpc.await;
        let _ = http.await;
        let _ = admin.await;
    })
    .await;
    node.shutdown(Duration::from_secs(args.drain_timeout_secs))
        .await
        .context("graceful shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_and_ordinals_parse() {
        let p = parse_peers("0=a:7071, 1=b:7071|b:7070").unwrap();
        assert_eq!(p[&1], "b:7071|b:7070");
        assert!(parse_peers("0=a").is_err());
        assert!(parse_peers("0=a:1,0=b:1").is_err());
        assert_eq!(ordinal("docs-s0-12"), Some(12));
        assert_eq!(ordinal("docs"), None);
        let t = render_template(
            "{pod}.{service}.{namespace}.svc:7071",
            &[
                ("pod", Some("docs-s0-1".into())),
                ("service", Some("docs-s0".into())),
                ("namespace", Some("ns".into())),
            ],
        )
        .unwrap();
        assert_eq!(t, "docs-s0-1.docs-s0.ns.svc:7071");
        assert!(render_template("{pod}:1", &[("pod", None)]).is_err());
    }
}
