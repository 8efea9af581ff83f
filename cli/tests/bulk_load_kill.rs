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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{KINDEX, kindex, loopback, node_binary, text, write_npy_dim};
use serde_json::Value;

/// The whole test must finish within this (each wait below is bounded too).
const BUDGET: Duration = Duration::from_secs(300);

struct Replica {
    shard: u32,
    id: u64,
    /// Own loopback address, default ports (see `common::loopback`).
    ip: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn addr(&self) -> String {
        format!("{}:7070", self.ip)
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

const SHARDS: u32 = 2;

/// `SHARDS` shards of 3 replicas; `[shard * 3 + id]`.
fn start_cluster(dir: &Path) -> Vec<Replica> {
    let block = loopback::Block::next();
    let ips: Vec<Vec<String>> = (0..SHARDS)
        .map(|shard| (0..3).map(|id| block.ip(shard * 3 + id + 1)).collect())
        .collect();
    let mut out = Vec::new();
    for shard in 0..SHARDS {
        let mine = &ips[shard as usize];
        let peers = mine
            .iter()
            .enumerate()
            .map(|(id, ip)| format!("{id}={ip}:7071|{ip}:7070"))
            .collect::<Vec<_>>()
            .join(",");
        let others = (0..SHARDS)
            .filter(|o| *o != shard)
            .map(|o| {
                let addrs: Vec<String> = ips[o as usize]
                    .iter()
                    .map(|ip| format!("{ip}:7070"))
                    .collect();
                format!("{o}={}", addrs.join(","))
            })
            .collect::<Vec<_>>()
            .join(";");
        out.extend(start_shard(dir, shard, mine, &peers, &others));
    }
    out
}

fn start_shard(dir: &Path, shard: u32, ips: &[String], peers: &str, others: &str) -> Vec<Replica> {
    ips.iter()
        .enumerate()
        .map(|(id, ip)| {
            let log = dir.join(format!("s{shard}-node-{id}.log"));
            let child = Command::new(node_binary())
                .args([
                    "--data-dir",
                    dir.join(format!("s{shard}-node-{id}")).to_str().unwrap(),
                ])
                .args([
                    "--shards",
                    &SHARDS.to_string(),
                    "--shard",
                    &shard.to_string(),
                ])
                .args(["--shard-addrs", others])
                .args(["--dimension", "4", "--metric", "l2", "--listen", ip])
                .args([
                    "--node-id",
                    &id.to_string(),
                    "--peers",
                    peers,
                    "--bootstrap",
                ])
                .args([
                    "--raft-heartbeat-ms",
                    "100",
                    "--raft-election-timeout-ms",
                    "800",
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            Replica {
                shard,
                id: id as u64,
                ip: ip.clone(),
                log,
                child: Some(child),
            }
        })
        .collect()
}

fn logs(nodes: &[Replica]) -> String {
    nodes
        .iter()
        .map(|n| {
            let l = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = l.lines().rev().take(20).collect();
            format!(
                "--- shard {} node {} ---\n{}",
                n.shard,
                n.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
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

fn wait<T>(
    what: &str,
    timeout: Duration,
    nodes: &[Replica],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}",
            logs(nodes)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let mut nodes = start_cluster(tmp.path());
    let shard_addrs = |shard: u32| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n.shard == shard)
            .map(Replica::addr)
            .collect()
    };
    let addrs = shard_addrs(0);
    let other = shard_addrs(1);
    let leader = wait("an agreed leader", Duration::from_secs(60), &nodes, || {
        agreed_leader(&addrs)
    });
    wait("shard 1's leader", Duration::from_secs(60), &nodes, || {
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
    let at_kill = wait(
        "the load under way",
        Duration::from_secs(60),
        &nodes,
        || {
            assert!(
                load.try_wait().unwrap().is_none(),
                "the load ended before the kill; raise KINDEX_LOAD_ROWS"
            );
            count(&leader_addr).filter(|&c| c as usize >= rows / 10)
        },
    );
    // Shard 0's replicas come first in `nodes`.
    nodes[leader as usize].kill9();
    let killed_at = load_started.elapsed();
    assert!(
        load.try_wait().unwrap().is_none(),
        "the load ended before the kill took effect; raise KINDEX_LOAD_ROWS"
    );
    eprintln!("killed shard 0's leader {leader} at {killed_at:?} with {at_kill} vectors stored");

    // The CLI must finish by itself, in bounded time.
    let status = wait(
        "the load to finish",
        BUDGET.saturating_sub(t0.elapsed()),
        &nodes,
        || load.try_wait().unwrap(),
    );
    let load_time = load_started.elapsed();
    let mut stdout = String::new();
    std::io::Read::read_to_string(load.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        status.success(),
        "kindex upsert failed: {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        logs(&nodes)
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
        .iter()
        .filter(|n| n.child.is_some())
        .map(Replica::addr)
        .collect();
    for s in &survivors {
        let n = wait(
            "the survivor's count",
            Duration::from_secs(60),
            &nodes,
            || count(s).filter(|&c| c as usize >= rows),
        );
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
