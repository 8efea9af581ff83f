//! `retention-sweep` (issue 16): single-point upsert latency on a standalone `kindex-node` while
//! its retention sweep removes N points that expired at once, against the same node idle, in
//! the same run.
//!
//! 1. The node starts with the `clock-skew-ms=-7200000` fault (before anything is stamped: the
//!    shard clock never goes back) and sweeps off (`retentionSweepIntervalSecs` 3600); N points
//!    are loaded in large batches (stamped two hours back), the skew is cleared, indexing
//!    finishes.
//! 2. One client upserts one new point per request, sequentially, for the whole run; every
//!    request's start time and latency are kept. A monitor polls Status (`vectors_live`) and
//!    `/metrics` (`kindex_tombstones`) every 100 ms in every phase.
//! 3. Phases, cut by time: idle (`--idle-secs`); the retention policy (`maxAgeSeconds` 3600:
//!    all N expired) is put and the runtime config rewritten to sweep every second; the sweep
//!    phase runs from the last poll that still saw every old point to the first poll that saw
//!    none; the compaction tail runs until the engine unlinked the deleted points from the graph
//!    (tombstones 0); then a second idle phase. The verdict compares the sweep's p99 with both
//!    idle phases pooled.
//!
//! Every loop is bounded; the node is killed when its handle drops.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kindex_proto as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::replica::{Cluster, NodeProc, fill, node_bin, structural_args, wait_indexed};

const SKEW_MS: i64 = -7_200_000;
const POLICY: &str = r#"{"kind":"retention","maxAgeSeconds":3600}"#;

#[derive(clap::Args)]
pub struct RetentionArgs {
    /// Scratch dir (wiped first).
    #[arg(long)]
    dir: PathBuf,
    /// Points that expire at once.
    #[arg(long, default_value_t = 1_000_000)]
    n: usize,
    #[arg(long, default_value_t = 8)]
    dim: usize,
    #[arg(long, default_value_t = 64)]
    ef_construction: u32,
    /// Points per request while loading (at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Length of each of the two idle phases.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Longest the sweep may take (from the policy put to every old point gone).
    #[arg(long, default_value_t = 600)]
    max_sweep_secs: u64,
    /// Longest wait after the sweep for compaction to unlink the deleted points.
    #[arg(long, default_value_t = 300)]
    max_compaction_secs: u64,
    /// The `kindex-node` binary [default: next to this binary].
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

/// One single-point upsert: when it started (s since the writer started) and how long it took.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    us: f64,
    ok: bool,
}

/// One monitor poll: sent at `sent`, answered at `got` (s since the writer started).
struct Poll {
    sent: f64,
    got: f64,
    live: u64,
    tombstones: Option<u64>,
    acked_before: u64,
    acked_after: u64,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `GET path` on the node's HTTP port (bounded).
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), get).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sum of a metric's samples in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.split_whitespace().last()?.parse().ok()?;
        *found.get_or_insert(0) += v as u64;
    }
    found
}

/// Sequential single-point upserts of new ids until `stop` (or `max`).
fn spawn_writer(
    node: &NodeProc,
    dim: usize,
    t0: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    max: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<Vec<Sample>>> {
    let mut client = node.points()?;
    Ok(tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(42);
        let mut out = Vec::with_capacity(1 << 20);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < max {
            let point = pb::Point {
                id: format!("new{i}"),
                vector: (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                payload_json: None,
            };
            i += 1;
            let mut req = tonic::Request::new(pb::UpsertRequest {
                index: String::new(),
                points: vec![point],
            });
            req.set_timeout(Duration::from_secs(30));
            let started = Instant::now();
            let r = client.upsert(req).await;
            let us = started.elapsed().as_secs_f64() * 1e6;
            let at = started.duration_since(t0).as_secs_f64();
            if r.is_ok() {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            out.push(Sample {
                at,
                us,
                ok: r.is_ok(),
            });
        }
        out
    }))
}

/// Polls the node (Status and /metrics); `None` if it did not answer.
async fn poll(node: &NodeProc, t0: Instant, acked: &AtomicU64) -> Option<Poll> {
    let acked_before = acked.load(Ordering::Relaxed);
    let sent = t0.elapsed().as_secs_f64();
    let live = node.status().await?.vectors_live;
    let got = t0.elapsed().as_secs_f64();
    let acked_after = acked.load(Ordering::Relaxed);
    let tombstones = match http_get(node.http, "/metrics").await {
        Ok(page) => metric(&page, "kindex_tombstones"),
        Err(_) => None,
    };
    Some(Poll {
        sent,
        got,
        live,
        tombstones,
        acked_before,
        acked_after,
    })
}

/// Polls every 100 ms until `until` (s since `t0`).
async fn monitor_until(
    node: &NodeProc,
    t0: Instant,
    acked: &AtomicU64,
    polls: &mut Vec<Poll>,
    until: f64,
) {
    while t0.elapsed().as_secs_f64() < until {
        if let Some(p) = poll(node, t0, acked).await {
            polls.push(p);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stats(samples: &[Sample], from: f64, to: f64) -> serde_json::Value {
    let mut v = summary(
        samples.iter().filter(|s| s.at >= from && s.at < to),
        to - from,
    );
    v["from_s"] = json!(round(from));
    v["to_s"] = json!(round(to));
    v
}

/// Percentiles of the selected samples; `span`: the seconds they cover (for the rate).
fn summary<'a>(sel: impl Iterator<Item = &'a Sample>, span: f64) -> serde_json::Value {
    let sel: Vec<&Sample> = sel.collect();
    let failed = sel.iter().filter(|s| !s.ok).count();
    let mut lat: Vec<f64> = sel.iter().map(|s| s.us).collect();
    if lat.is_empty() {
        return json!({"n": 0});
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    json!({
        "n": lat.len(), "failed": failed,
        "upserts_per_s": round(lat.len() as f64 / span),
        "p50_us": round(pct(0.50)), "p90_us": round(pct(0.90)), "p99_us": round(pct(0.99)),
        "p999_us": round(pct(0.999)), "max_us": round(lat[lat.len() - 1]),
    })
}

/// Seconds since midnight (UTC) of a node log line's timestamp (`2026-12-06T04:29:03.079221Z`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.get(11..line.find('Z')?)?;
    let mut it = t.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The node's compactions as (start, end) in seconds since the writer started (`t0_day`: its
/// start in seconds since midnight UTC), from the `compaction ... millis=N` log lines.
fn compactions(log: &str, t0_day: f64) -> Vec<(f64, f64)> {
    log.lines()
        .filter(|l| l.contains(" compaction "))
        .filter_map(|l| {
            let end = (log_time(l)? - t0_day).rem_euclid(86_400.0);
            let ms: f64 = l
                .split("millis=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((end - ms / 1e3, end))
        })
        .filter(|&(_, end)| end < 43_200.0)
        .collect()
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ratio(a: f64, b: f64) -> f64 {
    (a / b * 1000.0).round() / 1000.0
}

fn p99(v: &serde_json::Value) -> f64 {
    v["p99_us"].as_f64().unwrap_or(f64::NAN)
}

pub async fn retention_sweep(a: RetentionArgs) -> anyhow::Result<()> {
    let bin = node_bin(&a.node_bin)?;
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let faults = a.dir.join("faults");
    // Before the node starts: the first stamp is already two hours back.
    std::fs::write(&faults, format!("clock-skew-ms={SKEW_MS}\n"))?;
    let runtime = |sweep_secs: u64| {
        json!({"queueCapacity": (a.n + 1_000_000).max(2_000_000),
               "snapshotIntervalSecs": 86_400, "snapshotLogEntries": 1_000_000_000u64,
               "retentionSweepIntervalSecs": sweep_secs})
        .to_string()
    };
    let mut args = structural_args(a.dim, a.ef_construction);
    args.extend(["--raft-fault-file".into(), faults.display().to_string()]);
    let mut c = Cluster::new(&a.dir, 1, bin, &args, Some(&runtime(3_600)))?;
    let runtime_path = a.dir.join("runtime.json");
    c.nodes[0].start()?;
    let node = &c.nodes[0];
    node.wait_ready(Duration::from_secs(60)).await?;

    // 1. N points stamped two hours back, then the real clock.
    let t = Instant::now();
    let loaded = tokio::time::timeout(
        Duration::from_secs(1800),
        fill(node, "old", 0..a.n, a.dim, a.batch.min(10_000), 4),
    )
    .await
    .context("loading took over 30 min")??;
    if loaded != a.n as u64 {
        bail!("{loaded} of {} points acknowledged", a.n);
    }
    std::fs::write(&faults, "")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let indexed = wait_indexed(node, Duration::from_secs(1800)).await?;
    eprintln!(
        "loaded {} × {}-d in {:.1} s (indexing done {:.1} s after the last write); load {}",
        a.n,
        a.dim,
        t.elapsed().as_secs_f64(),
        indexed.as_secs_f64(),
        loadavg()
    );

    // 2.–4. One writer for every phase, a monitor in every phase.
    let t0 = Instant::now();
    let t0_day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64()
        .rem_euclid(86_400.0);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let hard_limit =
        Duration::from_secs(2 * a.idle_secs + a.max_sweep_secs + a.max_compaction_secs + 120);
    let writer = spawn_writer(node, a.dim, t0, stop.clone(), acked.clone(), hard_limit)?;
    let mut polls: Vec<Poll> = Vec::new();
    let mut load = vec![("start", loadavg())];
    // Warm-up (connection, first requests): 2 s, not counted.
    let warm = 2.0;
    monitor_until(node, t0, &acked, &mut polls, warm).await;
    let idle1_end = warm + a.idle_secs as f64;
    monitor_until(node, t0, &acked, &mut polls, idle1_end).await;
    load.push(("idle1_end", loadavg()));

    // The policy (sweep still off: every old point hidden, none removed), then sweeps on.
    let put = node
        .admin()?
        .change_policy(pb::PolicyWriteRequest {
            name: "retention-bench".into(),
            change: pb::PolicyChange::Put as i32,
            policy_json: POLICY.into(),
            actor: "kindex-bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let policy_at = t0.elapsed().as_secs_f64();
    let hidden = node
        .points()?
        .get(pb::GetRequest {
            ids: vec!["old0".into(), "new0".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .points;
    if hidden.len() != 1 || hidden[0].id != "new0" {
        bail!(
            "after the policy, get(old0, new0) returned {:?}: the old points were not stamped \
             two hours back",
            hidden.iter().map(|p| &p.id).collect::<Vec<_>>()
        );
    }
    std::fs::write(&runtime_path, runtime(1))?;
    let config_at = t0.elapsed().as_secs_f64();
    eprintln!(
        "policy version {} put at {policy_at:.2} s, sweep interval 1 s written at {config_at:.2} s",
        put.version
    );
    let n = a.n as u64;
    let mut sweep_start = None;
    let mut sweep_end = None;
    let deadline = config_at + a.max_sweep_secs as f64;
    while t0.elapsed().as_secs_f64() < deadline {
        let Some(p) = poll(node, t0, &acked).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Some old point gone (prunes remove up to 10,000 at a time).
        if sweep_start.is_none() && p.live + 5_000 < n + p.acked_before {
            // The last poll that still saw every old point: the sweep started after it.
            sweep_start = Some(polls.last().map_or(config_at, |q| q.sent.max(config_at)));
        }
        let done = p.live <= p.acked_after + 1;
        let got = p.got;
        polls.push(p);
        if done {
            sweep_start.get_or_insert(config_at);
            sweep_end = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (Some(sweep_start), Some(sweep_end)) = (sweep_start, sweep_end) else {
        stop.store(true, Ordering::Relaxed);
        bail!(
            "the sweep did not finish within {} s (live {:?})",
            a.max_sweep_secs,
            polls.last().map(|p| p.live)
        );
    };
    load.push(("sweep_end", loadavg()));
    eprintln!(
        "swept {n} points in {:.2} s ({:.2} s after the config write); load {}",
        sweep_end - sweep_start,
        sweep_end - config_at,
        loadavg()
    );

    // Compaction: the deleted points are unlinked from the graph in the background.
    let compact_deadline = sweep_end + a.max_compaction_secs as f64;
    let mut compact_end = None;
    while t0.elapsed().as_secs_f64() < compact_deadline {
        if let Some(p) = poll(node, t0, &acked).await {
            let (done, got) = (p.tombstones.is_none_or(|t| t == 0), p.got);
            polls.push(p);
            if done {
                compact_end = Some(got);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let compacted = compact_end.is_some();
    let compact_end = compact_end.unwrap_or(compact_deadline);
    load.push(("compaction_end", loadavg()));
    eprintln!(
        "compaction {} {:.2} s after the sweep",
        if compacted {
            "done"
        } else {
            "NOT done (tombstones left)"
        },
        compact_end - sweep_end
    );

    let idle2_start = compact_end;
    let idle2_end = idle2_start + a.idle_secs as f64;
    monitor_until(node, t0, &acked, &mut polls, idle2_end).await;
    load.push(("idle2_end", loadavg()));
    stop.store(true, Ordering::Relaxed);
    let samples = writer.await?;
    let status = node.status().await.context("status")?;
    let policies = node
        .admin()?
        .list_policies(pb::ListPoliciesRequest {})
        .await?
        .into_inner();
    let store: serde_json::Value = serde_json::from_str(&policies.store_json)?;
    let pruned = store["policies"]["retention-bench"]["counters"]["pruned"].as_u64();
    let log = std::fs::read_to_string(a.dir.join("node-0.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("retention sweep") || l.contains("compaction"))
    {
        eprintln!("node log: {line}");
    }
    let uptime = std::process::Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    drop(c);

    let idle1 = stats(&samples, warm, idle1_end);
    let idle2 = stats(&samples, idle2_start, idle2_end);
    let pooled: Vec<Sample> = samples
        .iter()
        .filter(|s| (s.at >= warm && s.at < idle1_end) || (s.at >= idle2_start && s.at < idle2_end))
        .copied()
        .collect();
    let idle = stats(&pooled, warm, idle2_end);
    let lead_in = stats(&samples, idle1_end, sweep_start);
    let sweep = stats(&samples, sweep_start, sweep_end);
    let compaction = stats(&samples, sweep_end, compact_end);
    let sweep_and_compaction = stats(&samples, sweep_start, compact_end);
    // Sweep upserts that overlapped a compaction (graph repair of the deleted points, CPU
    // bound) and those that did not.
    let compactions = compactions(&log, t0_day);
    let overlaps = |s: &Sample| {
        let end = s.at + s.us / 1e6;
        compactions.iter().any(|&(a, b)| s.at < b && end > a)
    };
    let in_sweep = |s: &&Sample| s.at >= sweep_start && s.at < sweep_end;
    let compacting_s: f64 = compactions
        .iter()
        .map(|&(a, b)| (b.min(sweep_end) - a.max(sweep_start)).max(0.0))
        .sum();
    let sweep_compacting = summary(
        samples.iter().filter(in_sweep).filter(|s| overlaps(s)),
        compacting_s,
    );
    let sweep_not_compacting = summary(
        samples.iter().filter(in_sweep).filter(|s| !overlaps(s)),
        sweep_end - sweep_start - compacting_s,
    );
    let max_tombstones = polls.iter().filter_map(|p| p.tombstones).max();
    let out = json!({
        "bench": "retention_sweep", "n": a.n, "dim": a.dim, "ef_construction": a.ef_construction,
        "idle_pooled": idle, "idle1": idle1, "idle2": idle2,
        "lead_in_policy_to_first_prune": lead_in,
        "sweep": sweep, "compaction_tail": compaction,
        "sweep_and_compaction": sweep_and_compaction,
        "sweep_upserts_overlapping_a_compaction": sweep_compacting,
        "sweep_upserts_not_overlapping_a_compaction": sweep_not_compacting,
        "compactions_s": compactions.iter().map(|&(a, b)| [round(a), round(b)]).collect::<Vec<_>>(),
        "ratio_sweep_p99_to_idle_p99": ratio(p99(&sweep), p99(&idle)),
        "ratio_sweep_p99_to_idle1_p99": ratio(p99(&sweep), p99(&idle1)),
        "ratio_sweep_p99_to_idle2_p99": ratio(p99(&sweep), p99(&idle2)),
        "ratio_sweep_and_compaction_p99_to_idle_p99":
            ratio(p99(&sweep_and_compaction), p99(&idle)),
        "sweep_s": round(sweep_end - sweep_start),
        "sweep_s_from_config_write": round(sweep_end - config_at),
        "pruned_per_s": round(n as f64 / (sweep_end - sweep_start)),
        "compaction_s_after_sweep": round(compact_end - sweep_end),
        "compaction_done": compacted, "max_tombstones_seen": max_tombstones,
        "pruned_counter": pruned, "live_at_end": status.vectors_live,
        "new_points_acked": acked.load(Ordering::Relaxed),
        "loadavg": load.into_iter().map(|(k, v)| json!({k: v})).collect::<Vec<_>>(),
        "uptime": uptime,
    });
    println!("{out}");
    Ok(())
}
