//! Write availability after a leader kill: how long until writes are acknowledged again when
//! the leader is killed (kill -9) and restarted after `down_ms` — with leader restore off (what
//! kindex runs) and on (openraft's default, which lost writes: issue 12), interleaved round by
//! round on two 3-node groups so both see the same machine noise.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use kindex_proto as pb;
use serde_json::json;

use crate::replica::{Cluster, node_bin};

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Scratch dir (wiped first).
    #[arg(long)]
    dir: PathBuf,
    /// Kills per mode.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// How long the killed leader stays down before it is restarted.
    #[arg(long, default_value_t = 300)]
    down_ms: u64,
    /// Raft election timeout of the nodes (the product's default is 1500).
    #[arg(long, default_value_t = 1500)]
    election_timeout_ms: u64,
    /// The `kindex-node` binary [default: next to this binary].
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

/// One write through `node` (followers forward to the leader): acknowledged or not.
async fn write_once(node: &crate::replica::NodeProc, id: u64) -> bool {
    let Ok(mut client) = node.points() else {
        return false;
    };
    let mut req = tonic::Request::new(pb::UpsertRequest {
        index: String::new(),
        points: vec![pb::Point {
            id: format!("w{id}"),
            vector: vec![id as f32, 1.0, 0.0, 0.0],
            payload_json: None,
        }],
    });
    req.set_timeout(Duration::from_millis(500));
    client.upsert(req).await.is_ok()
}

/// Kills the leader, restarts it after `down`, and returns the time from the kill until a write
/// through a surviving node is acknowledged.
async fn one_round(c: &mut Cluster, down: Duration, seq: &mut u64) -> anyhow::Result<f64> {
    let leader = c.wait_leader(Duration::from_secs(60)).await? as usize;
    let survivor = (leader + 1) % c.nodes.len();
    // Warm: a write goes through before the kill.
    *seq += 1;
    anyhow::ensure!(
        write_once(&c.nodes[survivor], *seq).await,
        "no write before the kill"
    );
    let killed = Instant::now();
    c.nodes[leader].kill();
    let mut restarted = false;
    loop {
        if !restarted && killed.elapsed() >= down {
            c.nodes[leader].start()?;
            restarted = true;
        }
        *seq += 1;
        // Any node: the restarted one too (it may lead again).
        let target = (*seq as usize) % c.nodes.len();
        let node = if target == leader && !restarted {
            survivor
        } else {
            target
        };
        if write_once(&c.nodes[node], *seq).await {
            let gap = killed.elapsed().as_secs_f64();
            if !restarted {
                tokio::time::sleep(down.saturating_sub(killed.elapsed())).await;
                c.nodes[leader].start()?;
            }
            return Ok(gap);
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no write for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn summary(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pick = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    json!({"runs": s.len(), "min_s": s[0], "median_s": pick(0.5), "p90_s": pick(0.9), "max_s": s[s.len() - 1]})
}

pub async fn failover(a: FailoverArgs) -> anyhow::Result<()> {
    let bin = node_bin(&a.node_bin)?;
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)?;
    }
    let common = vec![
        "--dimension".to_string(),
        "4".into(),
        "--metric".into(),
        "l2".into(),
        "--raft-election-timeout-ms".into(),
        a.election_timeout_ms.to_string(),
        "--raft-heartbeat-ms".into(),
        (a.election_timeout_ms / 6).max(10).to_string(),
    ];
    let mut unsafe_args = common.clone();
    unsafe_args.push("--unsafe-raft-leader-restore".into());
    let mut safe = Cluster::new(&a.dir.join("restore-off"), 3, bin.clone(), &common, None)?;
    let mut unsafe_ = Cluster::new(&a.dir.join("restore-on"), 3, bin, &unsafe_args, None)?;
    safe.start_all()?;
    unsafe_.start_all()?;
    let down = Duration::from_millis(a.down_ms);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut seq = 0;
    for round in 0..a.rounds {
        let g_off = one_round(&mut safe, down, &mut seq)
            .await
            .context("restore off")?;
        let g_on = one_round(&mut unsafe_, down, &mut seq)
            .await
            .context("restore on")?;
        eprintln!("round {round}: restore off {g_off:.2} s, restore on {g_on:.2} s");
        off.push(g_off);
        on.push(g_on);
    }
    println!(
        "{}",
        json!({"bench": "failover", "down_ms": a.down_ms, "election_timeout_ms": a.election_timeout_ms,
               "leader_restore_off": summary(&off), "leader_restore_on_unsafe": summary(&on)})
    );
    Ok(())
}
