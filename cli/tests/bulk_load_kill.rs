//! A bulk load survives a shard leader kill: an index of two shards of three
//! `kindex-node` replicas each on loopback (`--peers ... --bootstrap`,
//! `--shard-addrs`), `kindex upsert` of 20k vectors across shard 0's three
//! `--addr`s (each node routes every point to its shard), kill -9 of shard 0's
//! leader while the load runs. The CLI must retry, finish with exit 0, report
//! every row, and every id must then be readable through a surviving node.
//!
//! `KINDEX_LOAD_ROWS` changes the number of vectors (default 20000).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;
#[path = "../../node/tests/procs/mod.rs"]
mod procs;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KINDEX, kindex, text, write_npy_dim};
use procs::{Cluster, Opts, Proc, poll};
use serde_json::Value;

/// The whole test must finish within this (each wait below is bounded too).
const BUDGET: Duration = Duration::from_secs(300);

const SHARDS: u32 = 2;

/// `SHARDS` shards of 3 replicas (`--peers ... --bootstrap`, `--shard-addrs`), each on a
/// loopback address of its own with the default ports (the `procs` harness).
fn start_cluster() -> Cluster {
    Cluster::start_with(
        SHARDS,
        3,
        4,
        Opts {
            runtime: None,
            rust_log: "warn".into(),
            ..Opts::default()
        },
    )
}

/// `kindex ... -o json`, parsed when it succeeds.
fn json_of(args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--output", "json", "--timeout", "5"]);
    let o = kindex(&all);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

/// The leader every running replica agrees on, via `kindex status`.
fn agreed_leader(addrs: &[String]) -> Option<u64> {
    let mut leader = None;
    for a in addrs {
        let st = json_of(&["--addr", a, "status"])?;
        let s = &st["nodes"][0]["status"];
        let l = s["leaderId"].as_u64()?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader
}

fn count(addr: &str) -> Option<u64> {
    json_of(&["--addr", addr, "count"])?["count"].as_u64()
}

#[test]
fn bulk_load_survives_a_leader_kill() {
    let t0 = Instant::now();
    let rows: usize = std::env::var("KINDEX_LOAD_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster();
    let shard_addrs = |shard: u32| -> Vec<String> {
        nodes
            .nodes
            .iter()
            .filter(|n| n.shard == shard)
            .map(Proc::grpc_addr)
            .collect()
    };
    let addrs = shard_addrs(0);
    let other = shard_addrs(1);
    let leader = poll("an agreed leader", Duration::from_secs(60), || {
        agreed_leader(&addrs)
    });
    poll("shard 1's leader", Duration::from_secs(60), || {
        agreed_leader(&other)
    });
    eprintln!("shard 0 leader: node {leader} after {:?}", t0.elapsed());

    // Row i is [i, i/7, 1, -i]; ids v0..v<rows-1>.
    let npy = tmp.path().join("load.npy");
    let data: Vec<f32> = (0..rows)
        .flat_map(|i| [i as f32, i as f32 / 7.0, 1.0, -(i as f32)])
        .collect();
    write_npy_dim(&npy, 4, data, rows);

    // The leader first, so the kill breaks the connection the CLI is using.
    let leader_addr = addrs[leader as usize].clone();
    let mut order = vec![leader_addr.clone()];
    order.extend(addrs.iter().filter(|a| **a != leader_addr).cloned());
    let stderr_path = tmp.path().join("upsert.stderr");
    let load_started = Instant::now();
    let mut load = Command::new(KINDEX)
        .args([
            "upsert",
            "--file",
            npy.to_str().unwrap(),
            "--id-prefix",
            "v",
        ])
        .args([
            "--batch",
            "100",
            "--addr",
            &order.join(","),
            "--output",
            "json",
        ])
        .args(["--retry-timeout", "60"])
        .env_remove("KINDEX_ADDR")
        .env_remove("KINDEX_INDEX")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();

    // Kill -9 the leader once a tenth of the rows are in.
    let at_kill = poll("the load under way", Duration::from_secs(60), || {
        assert!(
            load.try_wait().unwrap().is_none(),
            "the load ended before the kill; raise KINDEX_LOAD_ROWS"
        );
        count(&leader_addr).filter(|&c| c as usize >= rows / 10)
    });
    nodes.kill(0, leader);
    let killed_at = load_started.elapsed();
    assert!(
        load.try_wait().unwrap().is_none(),
        "the load ended before the kill took effect; raise KINDEX_LOAD_ROWS"
    );
    eprintln!("killed shard 0's leader {leader} at {killed_at:?} with {at_kill} vectors stored");

    // The CLI must finish by itself, in bounded time.
    let status = poll(
        "the load to finish",
        BUDGET.saturating_sub(t0.elapsed()),
        || load.try_wait().unwrap(),
    );
    let load_time = load_started.elapsed();
    let mut stdout = String::new();
    std::io::Read::read_to_string(load.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        status.success(),
        "kindex upsert failed: {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        nodes.logs()
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"], rows as u64, "{report}");
    assert_eq!(report["endRow"], rows as u64, "{report}");
    let retries = report["retries"].as_u64().unwrap();
    assert!(
        retries >= 1,
        "the kill must have caused retries: {report}\n{stderr}"
    );
    eprintln!(
        "load of {rows} vectors: {load_time:?}, {retries} retries, {:.0} vectors/s; warnings:\n{}",
        report["vectorsPerSecond"].as_f64().unwrap_or(0.0),
        stderr.lines().take(8).collect::<Vec<_>>().join("\n")
    );

    // Every id is readable through each survivor (its coordinator reads every
    // shard's leader), and both shards hold a part of the load.
    let survivors: Vec<String> = nodes
        .nodes
        .iter()
        .filter(|n| n.running())
        .map(Proc::grpc_addr)
        .collect();
    for s in &survivors {
        let n = poll("the survivor's count", Duration::from_secs(60), || {
            count(s).filter(|&c| c as usize >= rows)
        });
        assert_eq!(n as usize, rows, "{s}: more vectors than loaded");
    }
    let s = &survivors[0];
    let ids: Vec<String> = (0..rows).map(|i| format!("v{i}")).collect();
    for chunk in ids.chunks(1000) {
        let mut args = vec![
            "--addr",
            s.as_str(),
            "get",
            "--no-payload",
            "--output",
            "json",
        ];
        args.extend(chunk.iter().map(String::as_str));
        let o = kindex(&args);
        assert!(o.status.success(), "get on {s}: {}", text(&o));
        let got: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            got["points"].as_array().map(Vec::len),
            Some(chunk.len()),
            "{s}: ids {}..: {}",
            chunk[0],
            text(&o)
        );
    }
    let live = |a: &String| {
        json_of(&["--addr", a, "status"])
            .and_then(|st| st["nodes"][0]["status"]["vectorsLive"].as_u64())
    };
    let per_shard = [
        live(&survivors[0]).unwrap_or(0),
        live(other.last().unwrap()).unwrap_or(0),
    ];
    assert!(
        per_shard.iter().all(|n| *n > 0),
        "both shards hold points: {per_shard:?}"
    );
    eprintln!(
        "all {rows} ids readable through {} survivors (per shard {per_shard:?}); test took {:?}",
        survivors.len(),
        t0.elapsed()
    );
}
