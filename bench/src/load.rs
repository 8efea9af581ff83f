//! Replicated write load against running nodes over gRPC: sustained batch
//! upsert throughput, then single-vector upsert latency at low load.

use std::time::{Duration, Instant};

use anyhow::Context;
use kindex_proto as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

#[derive(clap::Args)]
pub struct LoadArgs {
    /// gRPC address of a node (any replica; followers forward to the leader).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    addr: String,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Duration of the sustained phase.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Concurrent writers in the sustained phase.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Single-vector upserts in the latency phase (one at a time).
    #[arg(long, default_value_t = 2000)]
    singles: usize,
    /// Start this many `kindex-node` replicas (127.0.0.1, free ports, data under
    /// `--spawn-dir`) with their default configuration and load them, instead of `--addr`.
    #[arg(long)]
    spawn: Option<u64>,
    /// Data dirs of the spawned replicas (wiped first) [default: a temp dir].
    #[arg(long)]
    spawn_dir: Option<std::path::PathBuf>,
    /// Runtime-config JSON for the spawned replicas [default: none, the node's defaults].
    #[arg(long)]
    runtime: Option<String>,
    /// The `kindex-node` binary [default: next to this binary].
    #[arg(long)]
    node_bin: Option<std::path::PathBuf>,
    /// Pause between the sustained phase and the single-upsert phase.
    #[arg(long, default_value_t = 0)]
    settle_secs: u64,
}

fn batch(rng: &mut StdRng, prefix: &str, start: usize, n: usize, dim: usize) -> pb::UpsertRequest {
    pb::UpsertRequest {
        index: String::new(),
        points: (start..start + n)
            .map(|i| pb::Point {
                id: format!("{prefix}{i}"),
                vector: (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                payload_json: None,
            })
            .collect(),
    }
}

fn pct(lat: &mut [Duration], p: usize) -> f64 {
    lat.sort();
    lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

pub async fn run(mut a: LoadArgs) -> anyhow::Result<()> {
    let _cluster = match a.spawn {
        None => None,
        Some(n) => {
            let tmp = tempfile::tempdir()?;
            let root = a
                .spawn_dir
                .clone()
                .unwrap_or_else(|| tmp.path().to_path_buf());
            if root.exists() {
                std::fs::remove_dir_all(&root)?;
            }
            let args = ["--dimension".to_string(), a.dim.to_string()];
            let bin = crate::replica::node_bin(&a.node_bin)?;
            let mut c = crate::replica::Cluster::new(&root, n, bin, &args, a.runtime.as_deref())?;
            c.start_all()?;
            let leader = c.wait_leader(Duration::from_secs(60)).await?;
            a.addr = c.nodes[leader as usize].grpc_url();
            eprintln!("{n} replicas under {}, leader {leader}", root.display());
            Some((c, tmp))
        }
    };
    let channel = tonic::transport::Endpoint::from_shared(a.addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", a.addr))?;
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let mut client = pb::points_client::PointsClient::new(channel.clone())
            .max_encoding_message_size(256 << 20);
        let (dim, size) = (a.dim, a.batch);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let (mut acked, mut lat, mut n) = (0u64, Vec::new(), 0usize);
            while Instant::now() < deadline {
                let req = batch(&mut rng, &format!("w{w}-"), n, size, dim);
                n += size;
                let t = Instant::now();
                if let Ok(r) = client.upsert(req).await {
                    acked += r.into_inner().affected;
                    lat.push(t.elapsed());
                }
            }
            (acked, lat)
        }));
    }
    let started = Instant::now();
    let (mut acked, mut lat) = (0u64, Vec::new());
    for t in tasks {
        let (a, l) = t.await?;
        acked += a;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": "replicated_upsert", "dim": a.dim, "batch": a.batch, "concurrency": a.concurrency,
               "seconds": secs, "vectors_acked": acked, "vectors_per_s": acked as f64 / secs,
               "batch_p50_ms": pct(&mut lat, 50), "batch_p99_ms": pct(&mut lat, 99)})
    );

    tokio::time::sleep(Duration::from_secs(a.settle_secs)).await;
    let mut client = pb::points_client::PointsClient::new(channel);
    let mut rng = StdRng::seed_from_u64(99);
    let mut lat = Vec::with_capacity(a.singles);
    for i in 0..a.singles {
        let req = batch(&mut rng, "single-", i, 1, a.dim);
        let t = Instant::now();
        client.upsert(req).await?;
        lat.push(t.elapsed());
    }
    println!(
        "{}",
        json!({"bench": "single_upsert_latency", "dim": a.dim, "n": a.singles,
               "p50_ms": pct(&mut lat, 50), "p99_ms": pct(&mut lat, 99)})
    );
    Ok(())
}
