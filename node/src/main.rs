//! `kindex-node`: serves one shard replica of one index.
//!
//! With no cluster flags it runs standalone: one shard, one replica, data in
//! `--data-dir` (the README's run command).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kindex_node::config::{RuntimeConfig, StructuralConfig};
use kindex_node::engine::distance::Metric;
use kindex_node::node::{self, Node};
use kindex_node::server::{grpc, http};
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
    /// Address to listen on (0.0.0.0 inside Kubernetes).
    #[arg(long, env = "KINDEX_LISTEN", default_value = "127.0.0.1")]
    listen: std::net::IpAddr,
    #[arg(long, env = "KINDEX_GRPC_PORT", default_value_t = 7070)]
    grpc_port: u16,
    #[arg(long, env = "KINDEX_HTTP_PORT", default_value_t = 7080)]
    http_port: u16,
    /// Structural: vector dimension (fixed for the life of the data).
    #[arg(long, env = "KINDEX_DIMENSION", default_value_t = 384)]
    dimension: u32,
    /// Structural: cosine | l2 | dot.
    #[arg(long, env = "KINDEX_METRIC", default_value = "cosine", value_parser = parse_metric)]
    metric: Metric,
    /// Structural: HNSW links per node.
    #[arg(long, env = "KINDEX_M", default_value_t = 16)]
    m: u32,
    /// Structural: HNSW construction beam width.
    #[arg(long, env = "KINDEX_EF_CONSTRUCTION", default_value_t = 200)]
    ef_construction: u32,
    /// Structural: number of shards of the index.
    #[arg(long, env = "KINDEX_SHARDS", default_value_t = 1)]
    shards: u32,
    /// Runtime knobs as JSON (a mounted ConfigMap key); reloaded on change.
    #[arg(long, env = "KINDEX_RUNTIME_CONFIG")]
    runtime_config: Option<PathBuf>,
    /// How long a graceful shutdown may spend draining the indexing queue.
    #[arg(long, default_value = "60")]
    drain_timeout_secs: u64,
}

fn parse_metric(s: &str) -> Result<Metric, String> {
    Metric::parse(s).ok_or_else(|| format!("unknown metric {s:?}; use cosine, l2 or dot"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match &args.runtime_config {
        Some(p) => RuntimeConfig::load(p)?,
        None => RuntimeConfig::default(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&runtime.log_level)),
        )
        .init();
    let structural = StructuralConfig {
        dimension: args.dimension,
        metric: args.metric,
        m: args.m,
        ef_construction: args.ef_construction,
        shards: args.shards,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args, structural, runtime))
}

async fn run(
    args: Args,
    structural: StructuralConfig,
    runtime: RuntimeConfig,
) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone();
    let index = args.index.clone();
    let node =
        tokio::task::spawn_blocking(move || Node::open(&index, &data_dir, structural, runtime))
            .await?
            .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    let node = Arc::new(node);
    tracing::info!(
        index = %node.index,
        data_dir = %args.data_dir.display(),
        structural = %node.engine().structural(),
        vectors = node.engine().count(),
        "node open"
    );
    if let Some(p) = args.runtime_config.clone() {
        node::spawn_runtime_reload(node.clone(), p, Duration::from_secs(2));
    }
    node::spawn_maintenance(node.clone());

    let grpc_addr = SocketAddr::new(args.listen, args.grpc_port);
    let http_addr = SocketAddr::new(args.listen, args.http_port);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let grpc = {
        let mut stop = stop_rx.clone();
        let points =
            pb::points_server::PointsServer::new(grpc::PointsService { node: node.clone() })
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20);
        let admin = pb::admin_server::AdminServer::new(grpc::AdminService { node: node.clone() });
        // Bind first so a busy port fails start-up with a clear error.
        let listener = tokio::net::TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {grpc_addr}"))?;
        let server = tonic::transport::Server::builder()
            .add_service(points)
            .add_service(admin)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stop.changed().await;
                },
            );
        tokio::spawn(server)
    };
    let http = {
        let mut stop = stop_rx.clone();
        let listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding HTTP on {http_addr}"))?;
        let app = http::router(node.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
        })
    };
    tracing::info!(%grpc_addr, %http_addr, "serving");

    shutdown_signal().await;
    tracing::info!("shutting down: draining the indexing queue, then taking a snapshot");
    node.set_ready(false);
    let _ = stop_tx.send(true);
    let _ = grpc.await;
    let _ = http.await;
    let n = node.clone();
    let timeout = Duration::from_secs(args.drain_timeout_secs);
    tokio::task::spawn_blocking(move || n.shutdown(timeout)).await??;
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
