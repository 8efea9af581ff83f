//! Cost of security (issue 18): replicated upsert throughput and search QPS of a 3-node group
//! with peer mTLS and API keys on, against the same group with both off, interleaved round by
//! round (which goes first alternates) so both see the same machine noise. Writes and searches
//! enter through a follower: a write is forwarded to the leader (over the admin port with
//! mTLS), and the Raft traffic is mTLS too.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use kindex_node::tls::PeerTls;
use kindex_node::tls::issue::{Ca, Validity, write_dir};
use kindex_proto as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::replica::{Cluster, NodeProc, node_bin, structural_args};

const NAME: &str = "peers.bench.kindex";
const KEY: &str = "bench-read-write-key-0123456789";

#[derive(clap::Args)]
pub struct SecurityArgs {
    /// Scratch dir (wiped first).
    #[arg(long)]
    dir: PathBuf,
    /// Rounds; each runs the upsert and the search phase on both groups. Even, so each
    /// group goes first equally often.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Points per upsert request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent writers, and concurrent searchers.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Points written before the first round (what the searches search).
    #[arg(long, default_value_t = 20_000)]
    preload: usize,
    /// The `kindex-node` binary [default: next to this binary].
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

struct Group {
    label: &'static str,
    cluster: Cluster,
    /// `authorization` value of every data-plane request (None: keys off).
    auth: Option<String>,
    /// The follower the load enters through.
    entry: usize,
    next_id: Arc<AtomicU64>,
}

fn request<T>(msg: T, auth: &Option<String>) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    if let Some(a) = auth {
        r.metadata_mut().insert("authorization", a.parse()?);
    }
    r.set_timeout(Duration::from_secs(10));
    Ok(r)
}

fn points(rng: &mut StdRng, ids: std::ops::Range<u64>, dim: usize) -> Vec<pb::Point> {
    ids.map(|i| pb::Point {
        id: format!("p{i}"),
        vector: (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        payload_json: None,
    })
    .collect()
}

/// Points acknowledged per second over `secs`, `clients` writers through `node`.
async fn upsert_phase(g: &Group, a: &SecurityArgs, seed: u64) -> anyhow::Result<f64> {
    let node: &NodeProc = &g.cluster.nodes[g.entry];
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..a.clients {
        let mut client = node.points()?;
        let (stop, acked, next, auth) = (
            stop.clone(),
            acked.clone(),
            g.next_id.clone(),
            g.auth.clone(),
        );
        let (dim, batch) = (a.dim, a.batch as u64);
        // Ids wrap inside the preloaded range: writes replace points, so both groups keep
        // the same number of points whatever their write rate (else the slower writer
        // searches a smaller index and its search QPS looks better).
        let span = (a.preload as u64).saturating_sub(batch).max(1);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ w as u64);
            while !stop.load(Ordering::Relaxed) {
                let first = next.fetch_add(batch, Ordering::Relaxed) % span;
                let req = pb::UpsertRequest {
                    index: String::new(),
                    points: points(&mut rng, first..first + batch, dim),
                };
                let r = client.upsert(request(req, &auth)?).await?;
                acked.fetch_add(r.into_inner().affected, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(acked.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

/// Searches (k = 10) per second over `secs`, `clients` searchers through `node`.
async fn search_phase(g: &Group, a: &SecurityArgs, seed: u64) -> anyhow::Result<f64> {
    let node: &NodeProc = &g.cluster.nodes[g.entry];
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..a.clients {
        let mut client = node.points()?;
        let (stop, done, auth, dim) = (stop.clone(), done.clone(), g.auth.clone(), a.dim);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 100));
            while !stop.load(Ordering::Relaxed) {
                let req = pb::SearchRequest {
                    vector: (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                    k: 10,
                    ..pb::SearchRequest::default()
                };
                client.search(request(req, &auth)?).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn group(
    label: &'static str,
    a: &SecurityArgs,
    bin: &std::path::Path,
    secure: bool,
) -> anyhow::Result<Group> {
    let root = a.dir.join(label);
    let mut args = structural_args(a.dim, 64);
    if secure {
        let ca = Ca::generate("bench CA", Validity::from_now(Duration::from_secs(86_400)))?;
        let cert = || {
            ca.issue(
                &[NAME.to_string()],
                Validity::from_now(Duration::from_secs(86_400)),
            )
        };
        std::fs::create_dir_all(&root)?;
        let keys = root.join("api-keys");
        std::fs::write(&keys, KEY)?;
        args.extend([
            "--peer-tls-server-name".into(),
            NAME.into(),
            "--api-keys-file".into(),
            keys.display().to_string(),
        ]);
        let dir = root.join("harness-tls");
        write_dir(&dir, &cert()?, ca.cert_pem())?;
        let harness = Some(Arc::new(PeerTls::load(&dir, Some(NAME.into()))?));
        let mut c = Cluster::new(&root, 3, bin.to_path_buf(), &args, Some(&runtime()))?;
        for p in &mut c.nodes {
            let dir = root.join(format!("tls-{}", p.id));
            write_dir(&dir, &cert()?, ca.cert_pem())?;
            p.args
                .extend(["--peer-tls-dir".into(), dir.display().to_string()]);
            p.tls = harness.clone();
        }
        return finish(label, c, Some(format!("Bearer {KEY}"))).await;
    }
    let c = Cluster::new(&root, 3, bin.to_path_buf(), &args, Some(&runtime()))?;
    finish(label, c, None).await
}

fn runtime() -> String {
    serde_json::json!({"queueCapacity": 2_000_000, "snapshotIntervalSecs": 86_400, "snapshotLogEntries": 1_000_000_000u64})
        .to_string()
}

async fn finish(
    label: &'static str,
    mut c: Cluster,
    auth: Option<String>,
) -> anyhow::Result<Group> {
    c.start_all()?;
    let leader = c
        .wait_leader(Duration::from_secs(60))
        .await
        .with_context(|| format!("group {label}"))? as usize;
    Ok(Group {
        label,
        cluster: c,
        auth,
        entry: (leader + 1) % 3,
        next_id: Arc::new(AtomicU64::new(0)),
    })
}

pub async fn security(a: SecurityArgs) -> anyhow::Result<()> {
    let bin = node_bin(&a.node_bin)?;
    let _ = std::fs::remove_dir_all(&a.dir);
    let plain = group("plain", &a, &bin, false).await?;
    let secure = group("mtls+keys", &a, &bin, true).await?;
    // The data the searches search, on both.
    for g in [&plain, &secure] {
        let mut rng = StdRng::seed_from_u64(7);
        let mut client = g.cluster.nodes[g.entry].points()?;
        for first in (0..a.preload as u64).step_by(500) {
            let req = pb::UpsertRequest {
                index: String::new(),
                points: points(&mut rng, first..first + 500, a.dim),
            };
            client.upsert(request(req, &g.auth)?).await?;
        }
        g.next_id.store(a.preload as u64, Ordering::Relaxed);
        crate::replica::wait_indexed(&g.cluster.nodes[g.entry], Duration::from_secs(300)).await?;
    }
    let (mut up, mut qps) = (vec![Vec::new(), Vec::new()], vec![Vec::new(), Vec::new()]);
    let groups = [&plain, &secure];
    // Both groups idle before every phase: a write phase leaves graph work queued, which
    // would otherwise slow whichever phase runs next on the same cores.
    let quiesce = || async {
        for g in groups {
            crate::replica::wait_indexed(&g.cluster.nodes[g.entry], Duration::from_secs(300))
                .await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    for round in 0..a.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for &i in &order {
            quiesce().await?;
            up[i].push(upsert_phase(groups[i], &a, round as u64).await?);
        }
        for &i in &order {
            quiesce().await?;
            qps[i].push(search_phase(groups[i], &a, round as u64).await?);
        }
        println!(
            "round {round}: upsert {:.0} / {:.0} points/s, search {:.0} / {:.0} QPS ({} / {})",
            up[0][round], up[1][round], qps[0][round], qps[1][round], plain.label, secure.label
        );
    }
    // Per-round ratios, geometric mean: with the order alternating, an advantage of going
    // first cancels out.
    let geo = |a: &[f64], b: &[f64]| {
        let logs: f64 = a.iter().zip(b).map(|(x, y)| (y / x).ln()).sum();
        (logs / a.len() as f64).exp()
    };
    let (ur, qr) = (geo(&up[0], &up[1]), geo(&qps[0], &qps[1]));
    let (u0, u1) = (median(&mut up[0]), median(&mut up[1]));
    let (q0, q1) = (median(&mut qps[0]), median(&mut qps[1]));
    println!(
        "over {} rounds: upsert median {u0:.0} plain, {u1:.0} mtls+keys points/s, ratio {ur:.3} \
         (geometric mean of per-round ratios); search median {q0:.0} plain, {q1:.0} mtls+keys \
         QPS, ratio {qr:.3}",
        a.rounds
    );
    Ok(())
}
