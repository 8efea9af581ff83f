//! Small data-plane commands: `get`, `delete`, `count`, `info`.

use std::process::ExitCode;

use kindex_proto as pb;
use serde_json::{Value, json};

use super::{Ctx, payload_value};
use crate::output::{self, Table, kv};
use crate::{DeleteArgs, GetArgs};

pub async fn get(ctx: &Ctx, args: &GetArgs) -> anyhow::Result<ExitCode> {
    let addr = ctx.addr()?;
    let req = pb::GetRequest {
        index: ctx.index.clone(),
        ids: args.ids.clone(),
        with_vectors: args.with_vectors,
        with_payload: !args.no_payload,
        ..Default::default()
    };
    let points = ctx
        .points(addr)?
        .get(req)
        .await
        .map_err(|s| ctx.rpc_error(addr, "Get", &s))?
        .into_inner()
        .points;
    let missing: Vec<&String> = args
        .ids
        .iter()
        .filter(|id| !points.iter().any(|p| &p.id == *id))
        .collect();
    if ctx.json() {
        let pts: Vec<Value> = points
            .iter()
            .map(|p| {
                let mut v = json!({"id": p.id});
                if !args.no_payload {
                    v["payload"] = payload_value(p.payload_json.as_deref());
                }
                if args.with_vectors {
                    v["vector"] = json!(p.vector);
                }
                v
            })
            .collect();
        output::print_json(&json!({"points": pts, "missing": missing}));
    } else {
        let mut header = vec!["ID"];
        if !args.no_payload {
            header.push("PAYLOAD");
        }
        if args.with_vectors {
            header.push("VECTOR");
        }
        let mut t = Table::new(&header);
        for p in &points {
            let mut row = vec![p.id.clone()];
            if !args.no_payload {
                row.push(p.payload_json.clone().unwrap_or_else(|| "-".into()));
            }
            if args.with_vectors {
                row.push(output::short_vector(&p.vector));
            }
            t.row(row);
        }
        out!("{}", t.render());
        for id in &missing {
            eprintln!("not found: {id}");
        }
    }
    // Like `kubectl get`: a missing object is a failure for scripts.
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn delete(ctx: &Ctx, args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let addr = ctx.addr()?;
    let req = pb::DeleteRequest {
        index: ctx.index.clone(),
        ids: args.ids.clone(),
    };
    let r = ctx
        .points(addr)?
        .delete(req)
        .await
        .map_err(|s| ctx.rpc_error(addr, "Delete", &s))?
        .into_inner();
    if ctx.json() {
        output::print_json(&json!({"requested": args.ids.len(), "affected": r.affected}));
    } else {
        outln!("deleted {} of {} ids", r.affected, args.ids.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn count(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let addr = ctx.addr()?;
    let req = pb::CountRequest {
        index: ctx.index.clone(),
        ..Default::default()
    };
    let r = ctx
        .points(addr)?
        .count(req)
        .await
        .map_err(|s| ctx.rpc_error(addr, "Count", &s))?
        .into_inner();
    if ctx.json() {
        output::print_json(&json!({"count": r.count}));
    } else {
        outln!("{}", r.count);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn info(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let addr = ctx.addr()?;
    let req = pb::InfoRequest {
        index: ctx.index.clone(),
    };
    let r = ctx
        .points(addr)?
        .info(req)
        .await
        .map_err(|s| ctx.rpc_error(addr, "Info", &s))?
        .into_inner();
    let l = r.limits.unwrap_or_default();
    if ctx.json() {
        output::print_json(&json!({
            "index": r.index,
            "dimension": r.dimension,
            "metric": r.metric,
            "shards": r.shards,
            "vectors": r.vectors,
            "limits": {
                "maxBatch": l.max_batch,
                "maxIdBytes": l.max_id_bytes,
                "maxPayloadBytes": l.max_payload_bytes,
                "maxK": l.max_k,
            },
        }));
    } else {
        out!(
            "{}",
            kv(&[
                ("index", r.index),
                ("dimension", r.dimension.to_string()),
                ("metric", r.metric),
                ("shards", r.shards.to_string()),
                ("vectors", r.vectors.to_string()),
                ("max batch", l.max_batch.to_string()),
                ("max id bytes", l.max_id_bytes.to_string()),
                ("max payload", output::bytes(l.max_payload_bytes.into())),
                ("max k", l.max_k.to_string()),
            ])
        );
    }
    Ok(ExitCode::SUCCESS)
}
