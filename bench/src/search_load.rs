//! Search load over gRPC against a running index (any node; it fans out to every shard):
//! optionally loads a seeded data set first, waits until it is indexed, then runs
//! `concurrency` clients issuing searches for `seconds` and prints QPS and latency
//! percentiles as one JSON line. `bench/fanout.sh` runs it against 1 and 4 shards.

use std::time::{Duration, Instant};

use anyhow::Context;
use kindex_proto as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

#[derive(clap::Args)]
pub struct SearchLoadArgs {
    /// gRPC address of any node of the index.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    addr: String,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Points to upsert first (seeded; 0 = search what is there).
    #[arg(long, default_value_t = 0)]
    load: usize,
    #[arg(long, default_value_t = 10)]
    k: u32,
    #[arg(long)]
    ef: Option<u32>,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// eventual | default (leader of each shard).
    #[arg(long, default_value = "eventual")]
    consistency: String,
    /// Admin gRPC addresses (comma-separated; each node's `--admin-port`) of every node:
    /// before searching, wait until each reports an empty indexing queue, so every shard
    /// searches a settled graph.
    #[arg(long, value_delimiter = ',')]
    wait_indexed: Vec<String>,
    /// A label for the JSON line (e.g. "shards=4").
    #[arg(long, default_value = "")]
    label: String,
}

fn vector(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn pct(lat: &mut [Duration], p: usize) -> f64 {
    lat.sort();
    lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

pub async fn run(a: SearchLoadArgs) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(a.addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", a.addr))?;
    let client = pb::points_client::PointsClient::new(channel)
        .max_encoding_message_size(256 << 20)
        .max_decoding_message_size(256 << 20);
    if a.load > 0 {
        let mut c = client.clone();
        let mut rng = StdRng::seed_from_u64(1);
        let t = Instant::now();
        for start in (0..a.load).step_by(1000) {
            let points = (start..(start + 1000).min(a.load))
                .map(|i| pb::Point {
                    id: format!("p{i}"),
                    vector: vector(&mut rng, a.dim),
                    payload_json: None,
                })
                .collect();
            c.upsert(pb::UpsertRequest {
                index: String::new(),
                points,
            })
            .await
            .context("loading")?;
        }
        eprintln!("loaded {} points in {:?}", a.load, t.elapsed());
    }
    let t = Instant::now();
    for addr in &a.wait_indexed {
        let mut admin = pb::admin_client::AdminClient::connect(addr.clone())
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        loop {
            let s = admin.status(pb::StatusRequest {}).await?.into_inner();
            if s.vectors_queued == 0 {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(1800),
                "{addr} still has {} vectors queued after 30 min",
                s.vectors_queued
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if !a.wait_indexed.is_empty() {
        eprintln!("indexing settled after {:?}", t.elapsed());
    }
    let consistency = match a.consistency.as_str() {
        "eventual" => pb::Consistency::Eventual,
        "default" => pb::Consistency::Unspecified,
        other => anyhow::bail!("unknown consistency {other:?}; use eventual or default"),
    } as i32;
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let mut c = client.clone();
        let (dim, k, ef) = (a.dim, a.k, a.ef);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(1000 + w as u64);
            let (mut lat, mut failures) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let req = pb::SearchRequest {
                    vector: vector(&mut rng, dim),
                    k,
                    ef_search: ef,
                    consistency,
                    ..Default::default()
                };
                let t = Instant::now();
                match c.search(req).await {
                    Ok(r) if r.get_ref().failures.is_empty() => lat.push(t.elapsed()),
                    _ => failures += 1,
                }
            }
            (lat, failures)
        }));
    }
    let started = Instant::now();
    let (mut lat, mut failures) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failures += f;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": "search_load", "label": a.label, "dim": a.dim, "k": a.k, "ef": a.ef,
               "concurrency": a.concurrency, "seconds": secs, "searches": lat.len(),
               "failed": failures, "qps": lat.len() as f64 / secs,
               "p50_ms": pct(&mut lat, 50), "p99_ms": pct(&mut lat, 99)})
    );
    Ok(())
}
