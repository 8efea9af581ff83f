//! `kindex status`: Admin.Status of every `--addr`, one row per node.

use std::process::ExitCode;

use kindex_proto as pb;
use serde_json::{Value, json};

use super::{Ctx, KubeSummary, log_id_json, rpc_error_on};
use crate::output::{self, Table};

pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    // Ask all nodes at once so one slow node does not delay the others.
    let mut tasks = Vec::new();
    for addr in &ctx.addrs {
        let mut client = ctx.admin(addr)?;
        let name = ctx.name(addr);
        let forwarded = ctx.kube.is_some();
        tasks.push(tokio::spawn(async move {
            let r = client.status(pb::StatusRequest {}).await;
            (
                name.clone(),
                r.map(|r| r.into_inner())
                    .map_err(|s| rpc_error_on(&name, forwarded, "Status", &s)),
            )
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    for (name, why) in &ctx.unreachable {
        results.push((name.clone(), Err(anyhow::anyhow!("{name}: {why}"))));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if ctx.json() {
        let nodes: Vec<Value> = results
            .iter()
            .map(|(addr, r)| match r {
                Ok(s) => json!({"addr": addr, "status": status_json(s)}),
                Err(e) => json!({"addr": addr, "error": format!("{e:#}")}),
            })
            .collect();
        let mut doc = json!({"nodes": nodes});
        if let Some(k) = &ctx.kube {
            doc["vectorIndex"] = json!({
                "namespace": k.namespace,
                "name": k.index,
                "status": k.status,
            });
        }
        output::print_json(&doc);
    } else {
        if let Some(k) = &ctx.kube {
            outln!("{}", index_line(k));
        }
        out!("{}", table(&results, output::now_unix_ms()));
        for (_, r) in &results {
            if let Err(e) = r {
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn table(results: &[(String, anyhow::Result<pb::StatusResponse>)], now_ms: i64) -> String {
    let mut t = Table::new(&[
        "ADDR",
        "INDEX",
        "SHARD",
        "NODE",
        "ROLE",
        "TERM",
        "LEADER",
        "APPLIED",
        "COMMITTED",
        "LIVE",
        "INDEXED",
        "QUEUED",
        "SNAPSHOT",
        "SNAP SIZE",
        "STRUCT HASH",
        "CHECKSUM",
    ]);
    let idx = |l: &Option<pb::LogId>| l.as_ref().map_or("-".into(), |l| l.index.to_string());
    for (addr, r) in results {
        match r {
            Ok(s) => {
                let snap = match s.last_snapshot_unix_ms {
                    0 => ("never".to_string(), "-".to_string()),
                    at => (
                        format!("{} ago", output::age(now_ms - at)),
                        output::bytes(s.last_snapshot_bytes),
                    ),
                };
                let role = if s.initialized {
                    s.role.clone()
                } else {
                    format!("{} (uninitialized)", s.role)
                };
                t.row(vec![
                    addr.clone(),
                    s.index.clone(),
                    s.shard.to_string(),
                    s.node_id.to_string(),
                    role,
                    s.term.to_string(),
                    s.leader_id.map_or("-".into(), |l| l.to_string()),
                    idx(&s.applied),
                    idx(&s.committed),
                    s.vectors_live.to_string(),
                    s.vectors_indexed.to_string(),
                    s.vectors_queued.to_string(),
                    snap.0,
                    snap.1,
                    s.structural_hash.clone(),
                    format!("{:016x}", s.content_checksum),
                ]);
            }
            Err(_) => t.row(vec![addr.clone(), "UNREACHABLE".into()]),
        }
    }
    t.render()
}

/// `VectorIndex prod/demo: phase Ready, ready 3/3, 1000 vectors`.
fn index_line(k: &KubeSummary) -> String {
    let head = format!("VectorIndex {}/{}", k.namespace, k.index);
    match &k.status {
        None => format!("{head}: status not readable"),
        Some(s) => {
            let mut parts = Vec::new();
            if let Some(p) = s.phase {
                parts.push(format!("phase {p:?}"));
            }
            if let Some(r) = &s.ready {
                parts.push(format!("ready {r}"));
            }
            if let Some(v) = s.vectors {
                parts.push(format!("{v} vectors"));
            }
            if parts.is_empty() {
                format!("{head}: no status yet")
            } else {
                format!("{head}: {}", parts.join(", "))
            }
        }
    }
}

fn status_json(s: &pb::StatusResponse) -> Value {
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| json!({"nodeId": m.node_id, "addr": m.addr, "voter": m.voter}))
        .collect();
    json!({
        "index": s.index,
        "shard": s.shard,
        "nodeId": s.node_id,
        "role": s.role,
        "term": s.term,
        "leaderId": s.leader_id,
        "members": members,
        "applied": log_id_json(s.applied.as_ref()),
        "committed": log_id_json(s.committed.as_ref()),
        "snapshot": log_id_json(s.snapshot.as_ref()),
        "vectorsLive": s.vectors_live,
        "vectorsIndexed": s.vectors_indexed,
        "vectorsQueued": s.vectors_queued,
        "structuralHash": s.structural_hash,
        "lastSnapshotUnixMs": s.last_snapshot_unix_ms,
        "lastSnapshotAt": (s.last_snapshot_unix_ms != 0).then(|| output::rfc3339_ms(s.last_snapshot_unix_ms)),
        "lastSnapshotBytes": s.last_snapshot_bytes,
        "contentChecksum": format!("{:016x}", s.content_checksum),
        "version": s.version,
        "initialized": s.initialized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_node() {
        let s = pb::StatusResponse {
            index: "docs".into(),
            role: "leader".into(),
            node_id: 3,
            leader_id: Some(3),
            applied: Some(pb::LogId { term: 2, index: 40 }),
            vectors_live: 1000,
            last_snapshot_unix_ms: 1_000,
            last_snapshot_bytes: 2048,
            content_checksum: 0xabc,
            initialized: true,
            ..Default::default()
        };
        let rows = vec![
            ("http://a:7070".to_string(), Ok(s)),
            ("http://b:7070".to_string(), Err(anyhow::anyhow!("down"))),
        ];
        let text = table(&rows, 61_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].contains("docs") && lines[1].contains("leader") && lines[1].contains("1m ago"),
            "{text}"
        );
        assert!(
            lines[1].contains("2.0 KiB") && lines[1].contains("0000000000000abc"),
            "{text}"
        );
        assert!(lines[2].contains("UNREACHABLE"), "{text}");
    }

    #[test]
    fn index_line_summarises_the_vector_index_status() {
        let mut k = KubeSummary {
            namespace: "prod".into(),
            index: "demo".into(),
            status: None,
        };
        assert_eq!(index_line(&k), "VectorIndex prod/demo: status not readable");
        k.status = Some(Default::default());
        assert_eq!(index_line(&k), "VectorIndex prod/demo: no status yet");
        k.status = Some(kindex_crds::status::VectorIndexStatus {
            phase: Some(kindex_crds::status::Phase::Ready),
            ready: Some("3/3".into()),
            vectors: Some(1000),
            ..Default::default()
        });
        assert_eq!(
            index_line(&k),
            "VectorIndex prod/demo: phase Ready, ready 3/3, 1000 vectors"
        );
    }
}
