//! `kindex-bench`: builds a kindex engine on a dataset, sweeps efSearch and
//! prints one JSON line per point (recall@k, single-thread QPS, latency
//! percentiles, build time, memory, snapshot speed). `bench/hnsw_compare.sh`
//! runs hnswlib on the same files in the same run for ratios.

mod data;
mod failover;
mod load;
mod npy;
mod replica;
mod retention;
mod search_load;
mod security;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kindex_common::Quantization;
use kindex_node::config::StructuralConfig;
use kindex_node::engine::distance::Metric;
use kindex_node::engine::filter::Filter;
use kindex_node::engine::{Engine, EngineKnobs, PointInput, VectorStorage};
use kindex_node::raft::snapshot::{load_newest_engine, save_engine};
use kindex_node::snapshot::{self, store::SnapshotStore};
use serde_json::json;

#[derive(Parser)]
#[command(name = "kindex-bench", about = "kindex benchmarks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Recall / QPS sweep of the HNSW engine.
    Hnsw(HnswArgs),
    /// Write a seeded synthetic set (base, query, exact ground truth) as .npy.
    Synth(SynthArgs),
    /// Replicated upsert load over gRPC against running nodes.
    Load(load::LoadArgs),
    /// Search load over gRPC (fan-out over the index's shards).
    SearchLoad(search_load::SearchLoadArgs),
    /// Restart time of a node holding N vectors (snapshot load + log replay).
    Restart(replica::RestartArgs),
    /// Catch-up time of a wiped replica through a snapshot.
    Catchup(replica::CatchupArgs),
    /// Time until writes are acknowledged again after a leader kill (leader restore off vs on).
    Failover(failover::FailoverArgs),
    /// Single-point upsert latency while the retention sweep removes N expired points, against
    /// the same node idle (issue 16).
    RetentionSweep(retention::RetentionArgs),
    /// Replicated upsert throughput and search QPS with peer mTLS and API keys on, against
    /// both off, interleaved (issue 18).
    Security(security::SecurityArgs),
    /// Enqueue latency of single-vector writes (p50/p99).
    Enqueue {
        #[arg(long, default_value_t = 128)]
        dim: usize,
        #[arg(long, default_value_t = 50_000)]
        n: usize,
    },
}

#[derive(clap::Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 200_000)]
    n: usize,
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value = "l2")]
    metric: String,
}

#[derive(clap::Args)]
struct HnswArgs {
    /// Base vectors (.npy, float32, rows × dim).
    #[arg(long)]
    base: PathBuf,
    #[arg(long)]
    query: PathBuf,
    /// Ground-truth row ids (.npy int32); computed by brute force if absent.
    #[arg(long)]
    gt: Option<PathBuf>,
    #[arg(long, default_value = "cosine")]
    metric: String,
    #[arg(long, default_value_t = 16)]
    m: u32,
    #[arg(long, default_value_t = 200)]
    ef_construction: u32,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = "16,24,32,48,64,96,128,256")]
    ef: String,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Also measure snapshot save/load speed (files go to a temp dir here).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Throughput runs per ef point; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Search-only runs: load the index from a snapshot under this dir if one
    /// exists (build_s is then reported as null), else build and save it there.
    #[arg(long)]
    index_cache: Option<PathBuf>,
    /// Skip the throughput loops and latency pass for efs not listed here
    /// (profiling aid): run only the search loop this many times.
    #[arg(long, default_value_t = 0)]
    search_only_loops: usize,
    /// Dataset label for the output.
    #[arg(long, default_value = "")]
    name: String,
    /// Structural quantization: none | int8 | binary.
    #[arg(long, default_value = "none")]
    quantization: String,
    /// int8 and binary: candidates re-ranked exactly, as a multiple of k.
    #[arg(long, default_value_t = kindex_common::runtime::DEFAULT_RESCORE as usize)]
    rescore: usize,
    /// Keep the f32 vectors in mapped files in this directory (the node's
    /// `--vectors-on-disk`); RssAnon then counts no vector pages.
    #[arg(long)]
    vectors_on_disk: Option<PathBuf>,
}

fn metric(s: &str) -> anyhow::Result<Metric> {
    Metric::parse(s).with_context(|| format!("unknown metric {s}"))
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Hnsw(a) => hnsw(a),
        Cmd::Synth(a) => synth(a),
        Cmd::Enqueue { dim, n } => enqueue(dim, n),
        Cmd::Load(a) => tokio::runtime::Runtime::new()?.block_on(load::run(a)),
        Cmd::SearchLoad(a) => tokio::runtime::Runtime::new()?.block_on(search_load::run(a)),
        Cmd::Restart(a) => tokio::runtime::Runtime::new()?.block_on(replica::restart(a)),
        Cmd::Catchup(a) => tokio::runtime::Runtime::new()?.block_on(replica::catchup(a)),
        Cmd::Failover(a) => tokio::runtime::Runtime::new()?.block_on(failover::failover(a)),
        Cmd::Security(a) => tokio::runtime::Runtime::new()?.block_on(security::security(a)),
        Cmd::RetentionSweep(a) => {
            tokio::runtime::Runtime::new()?.block_on(retention::retention_sweep(a))
        }
    }
}

fn synth(a: SynthArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let mixture = data::Mixture::new(a.dim, (a.n / 200).max(1), a.seed);
    let base = mixture.sample(a.n, a.seed + 1);
    let query = mixture.sample(a.queries, a.seed + 2);
    let gt = data::ground_truth(&base, &query, metric(&a.metric)?, 100);
    let stem = format!("synth-{}k-{}d", a.n / 1000, a.dim);
    npy::write_f32(&a.out.join(format!("{stem}.base.npy")), &base)?;
    npy::write_f32(&a.out.join(format!("{stem}.query.npy")), &query)?;
    npy::write_i32(&a.out.join(format!("{stem}.gt_ids.npy")), &gt)?;
    println!(
        "{}",
        json!({"wrote": a.out.join(stem).display().to_string(), "n": a.n, "dim": a.dim})
    );
    Ok(())
}

fn hnsw(a: HnswArgs) -> anyhow::Result<()> {
    let metric = metric(&a.metric)?;
    let base = npy::read_f32(&a.base)?;
    let query = npy::read_f32(&a.query)?;
    if base.cols != query.cols {
        bail!("base has {} dims, queries {}", base.cols, query.cols);
    }
    let gt = match &a.gt {
        Some(p) => npy::read_i32(p)?,
        None => data::ground_truth(&base, &query, metric, a.k),
    };
    if gt.cols < a.k || gt.rows < query.rows {
        bail!(
            "ground truth has {}×{}, need {}×{}",
            gt.rows,
            gt.cols,
            query.rows,
            a.k
        );
    }
    let quantization = Quantization::parse(&a.quantization)
        .with_context(|| format!("unknown quantization {}", a.quantization))?;
    let structural = StructuralConfig {
        dimension: base.cols as u32,
        metric,
        m: a.m,
        ef_construction: a.ef_construction,
        shards: 1,
        quantization,
    };
    let knobs = EngineKnobs {
        ef_search: 64,
        threads: a.threads,
        batch_size: 1024,
        queue_capacity: base.rows + 1,
        rescore: a.rescore,
    };
    let storage = match &a.vectors_on_disk {
        Some(dir) => VectorStorage::Mapped(dir.clone()),
        None => VectorStorage::Heap,
    };
    let rss_before = kindex_node::memory::rss_anon_bytes();
    let cached = match &a.index_cache {
        Some(dir) => load_newest_engine(&SnapshotStore::open(dir)?, &structural, knobs, &storage)?
            .require(dir)?
            .map(|(_, l)| l),
        None => None,
    };
    let (engine, build_secs) = match cached {
        Some(l) => (l.engine, None),
        None => {
            let (e, s) = build(&base, &structural, knobs, storage.clone())?;
            if let Some(dir) = &a.index_cache {
                save_engine(&SnapshotStore::open(dir)?, &e, 1, snapshot::FORMAT_VERSION)?;
            }
            (e, Some(s))
        }
    };
    if a.search_only_loops > 0 {
        let filter = Filter::default();
        let ef =
            a.ef.split(',')
                .next()
                .unwrap_or("16")
                .trim()
                .parse::<usize>()?;
        let (t, cpu) = (Instant::now(), thread_cpu_ns());
        for _ in 0..a.search_only_loops {
            for i in 0..query.rows {
                std::hint::black_box(engine.search(query.row(i), a.k, Some(ef), &filter)?);
            }
        }
        let n = (a.search_only_loops * query.rows) as f64;
        let qps = n / t.elapsed().as_secs_f64();
        // CPU time of this thread only: less disturbed by a busy machine
        // than wall time (profiling aid; Linux only, else 0).
        let cpu_us = (thread_cpu_ns().saturating_sub(cpu)) as f64 / 1e3 / n;
        println!(
            "{}",
            json!({"ef": ef, "qps": qps, "cpu_us_per_query": cpu_us})
        );
        return Ok(());
    }
    // Anonymous resident memory the engine added (vectors unless on disk, codes,
    // graph, ids), per vector, after the heap trim a node does once bulk work
    // ends; includes allocator slack and whole arena chunks, so it is an upper
    // bound of what the engine needs (null without /proc).
    kindex_node::memory::release_free();
    let rss_per_vector = kindex_node::memory::rss_anon_bytes()
        .zip(rss_before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / base.rows as f64);
    let (save_mbps, load_mbps, snapshot_bytes) = match &a.snapshot_dir {
        Some(dir) => snapshot_speed(&engine, dir, &structural, knobs)?,
        None => (0.0, 0.0, 0),
    };

    for ef in
        a.ef.split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()?
    {
        let filter = Filter::default();
        // Warm-up pass so the first point does not pay for page faults.
        for i in 0..query.rows.min(100) {
            engine.search(query.row(i), a.k, Some(ef), &filter)?;
        }
        // Recall and per-query latency in one pass.
        let mut lat = Vec::with_capacity(query.rows);
        let mut hits = 0usize;
        for i in 0..query.rows {
            let s = Instant::now();
            let res = engine.search(query.row(i), a.k, Some(ef), &filter)?;
            lat.push(s.elapsed());
            let truth = &gt.row(i)[..a.k];
            hits += res
                .iter()
                .filter(|h| h.id.parse::<i32>().is_ok_and(|id| truth.contains(&id)))
                .count();
        }
        // Throughput: a tight loop over all queries, best of `repeat` runs
        // (the machine is shared; the best run is the least disturbed).
        let mut secs = f64::INFINITY;
        for _ in 0..a.repeat.max(1) {
            let t = Instant::now();
            for i in 0..query.rows {
                std::hint::black_box(engine.search(query.row(i), a.k, Some(ef), &filter)?);
            }
            secs = secs.min(t.elapsed().as_secs_f64());
        }
        lat.sort();
        let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)].as_secs_f64() * 1e6;
        println!(
            "{}",
            json!({
                "engine": "kindex", "dataset": a.name, "n": base.rows, "dim": base.cols, "metric": a.metric,
                "m": a.m, "ef_construction": a.ef_construction, "threads": a.threads, "ef": ef, "k": a.k,
                "recall": hits as f64 / (query.rows * a.k) as f64,
                "qps": query.rows as f64 / secs,
                "p50_us": pct(50), "p99_us": pct(99),
                "build_s": build_secs,
                "bytes_per_vector": engine.bytes_per_vector(),
                "rss_anon_per_vector": rss_per_vector,
                "quantization": a.quantization, "rescore": a.rescore,
                "snapshot_bytes": snapshot_bytes,
                "snapshot_save_mb_s": save_mbps, "snapshot_load_mb_s": load_mbps,
            })
        );
    }
    Ok(())
}

/// Nanoseconds this thread has run on a CPU (from /proc; 0 if unavailable).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Builds an engine over `base`: enqueue everything, then wait for the
/// workers to index it. Returns the engine and the seconds it took.
fn build(
    base: &npy::Matrix<f32>,
    structural: &StructuralConfig,
    knobs: EngineKnobs,
    storage: VectorStorage,
) -> anyhow::Result<(Engine, f64)> {
    let engine = Engine::with_storage(structural.clone(), knobs, storage);
    let t = Instant::now();
    // Points are made per chunk, so the RssAnon the engine adds is not hidden
    // by a full copy of the input the allocator may keep.
    for start in (0..base.rows).step_by(5_000) {
        let chunk: Vec<PointInput> = (start..(start + 5_000).min(base.rows))
            .map(|i| PointInput {
                id: i.to_string(),
                vector: base.row(i).to_vec(),
                payload: None,
            })
            .collect();
        engine.upsert(&chunk)?;
    }
    if !engine.drain(Duration::from_secs(3600)) {
        bail!("indexing did not finish");
    }
    Ok((engine, t.elapsed().as_secs_f64()))
}

/// Save and load (with full checksum validation) speeds in MB/s, warm page cache.
fn snapshot_speed(
    engine: &Engine,
    dir: &std::path::Path,
    s: &StructuralConfig,
    knobs: EngineKnobs,
) -> anyhow::Result<(f64, f64, u64)> {
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::tempdir_in(dir)?;
    let store = SnapshotStore::open(tmp.path())?;
    let started = std::time::Instant::now();
    let (dir, manifest) = save_engine(&store, engine, 1, snapshot::FORMAT_VERSION)?;
    let secs = started.elapsed().as_secs_f64();
    let bytes = manifest.total_bytes();
    let mb = bytes as f64 / 1e6;
    let save = mb / secs;
    // Load twice; report the second (warm cache), as the acceptance asks.
    let _ = snapshot::load(&dir, s, knobs, engine.storage())?;
    let loaded = snapshot::load(&dir, s, knobs, engine.storage())?;
    let load = mb / loaded.duration.as_secs_f64();
    Ok((save, load, bytes))
}

fn enqueue(dim: usize, n: usize) -> anyhow::Result<()> {
    let s = StructuralConfig {
        dimension: dim as u32,
        metric: Metric::Cosine,
        m: 16,
        ef_construction: 200,
        shards: 1,
        quantization: Quantization::None,
    };
    let engine = Engine::new(
        s,
        EngineKnobs {
            ef_search: 64,
            threads: 1,
            batch_size: 1024,
            queue_capacity: n + 1,
            rescore: 3,
        },
    );
    let data = data::Mixture::new(dim, 100, 3).sample(n, 4);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let p = [PointInput {
            id: i.to_string(),
            vector: data.row(i).to_vec(),
            payload: None,
        }];
        let t = Instant::now();
        engine.upsert(&p)?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "{}",
        json!({"bench": "enqueue", "n": n, "dim": dim, "p50_us": pct(50), "p99_us": pct(99), "max_us": lat[n - 1].as_secs_f64() * 1e6})
    );
    Ok(())
}
