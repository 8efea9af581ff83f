//! `kindex policy`: the policies of each shard (docs/policies.md), through the Admin API.
//!
//! Reads (`list`, `get`, `history`) ask every `--admin-addr` node (or pod) for the store it
//! applied. Changes (`set`, `delete`, `restore`) go to one node of each shard (a follower
//! forwards to its leader), so an index with several shards gets the same change in each.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context;
use kindex_proto as pb;
use serde_json::{Value, json};

use super::Ctx;
use crate::output::{self, Table};
use crate::{PolicyArgs, PolicyCommand};

pub async fn run(ctx: &Ctx, a: &PolicyArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        PolicyCommand::List => show(ctx, None, false).await,
        PolicyCommand::Get { name } => show(ctx, Some(name), false).await,
        PolicyCommand::History { name } => show(ctx, Some(name), true).await,
        PolicyCommand::Set {
            name,
            json,
            file,
            change,
        } => {
            let policy_json = match (json, file) {
                (Some(j), None) => j.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?,
                _ => anyhow::bail!("give the policy with --json or --file (one of them)"),
            };
            let req = change.request(name, pb::PolicyChange::Put, policy_json, 0);
            write(ctx, req).await
        }
        PolicyCommand::Delete { name, change } => {
            write(
                ctx,
                change.request(name, pb::PolicyChange::Delete, String::new(), 0),
            )
            .await
        }
        PolicyCommand::Restore {
            name,
            version,
            change,
        } => {
            let req = change.request(name, pb::PolicyChange::Restore, String::new(), *version);
            write(ctx, req).await
        }
    }
}

/// One address per shard (by Admin `Status`); addresses whose shard is unknown are kept.
async fn one_per_shard(ctx: &Ctx) -> Vec<(String, Option<u32>)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for addr in &ctx.addrs {
        let shard = match ctx.admin(addr) {
            Ok(mut c) => c
                .status(pb::StatusRequest {})
                .await
                .ok()
                .map(|s| s.into_inner().shard),
            Err(_) => None,
        };
        if shard.is_none_or(|s| seen.insert(s)) {
            out.push((addr.clone(), shard));
        }
    }
    out
}

async fn write(ctx: &Ctx, req: pb::PolicyWriteRequest) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    let mut failed = 0;
    for (addr, shard) in one_per_shard(ctx).await {
        let r = ctx.admin(&addr)?.change_policy(req.clone()).await;
        match r {
            Ok(w) => {
                let w = w.into_inner();
                rows.push(json!({"addr": ctx.name(&addr), "shard": shard, "name": w.name, "version": w.version, "appliedIndex": w.applied_index}));
            }
            Err(s) => {
                failed += 1;
                let e = ctx.rpc_error(&addr, "ChangePolicy", &s);
                rows.push(
                    json!({"addr": ctx.name(&addr), "shard": shard, "error": format!("{e:#}")}),
                );
            }
        }
    }
    for (name, why) in &ctx.unreachable {
        failed += 1;
        rows.push(json!({"addr": name, "error": why}));
    }
    if ctx.json() {
        output::print_json(&json!({"changes": rows}));
    } else {
        let mut t = Table::new(&["ADDR", "SHARD", "POLICY", "VERSION", "LOG INDEX"]);
        for r in &rows {
            if let Some(e) = r["error"].as_str() {
                eprintln!("error: {e}");
                continue;
            }
            t.row(vec![
                r["addr"].as_str().unwrap_or_default().into(),
                r["shard"].as_u64().map_or("-".into(), |s| s.to_string()),
                r["name"].as_str().unwrap_or_default().into(),
                r["version"].to_string(),
                r["appliedIndex"].to_string(),
            ]);
        }
        out!("{}", t.render());
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn show(ctx: &Ctx, name: Option<&String>, history: bool) -> anyhow::Result<ExitCode> {
    let mut nodes = Vec::new();
    let mut failed = 0;
    for addr in &ctx.addrs {
        match ctx
            .admin(addr)?
            .list_policies(pb::ListPoliciesRequest {})
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let mut store: Value = serde_json::from_str(&r.store_json)
                    .with_context(|| format!("{}: the policy store is not JSON", ctx.name(addr)))?;
                if let Some(n) = name {
                    let one = store["policies"][n.as_str()].clone();
                    if one.is_null() {
                        failed += 1;
                        eprintln!("error: {}: no policy {n:?}", ctx.name(addr));
                    }
                    store["policies"] = json!({ n.as_str(): one });
                }
                nodes.push((ctx.name(addr), r.checksum, r.applied_index, store));
            }
            Err(s) => {
                failed += 1;
                eprintln!("error: {:#}", ctx.rpc_error(addr, "ListPolicies", &s));
            }
        }
    }
    for (n, why) in &ctx.unreachable {
        failed += 1;
        eprintln!("error: {n}: {why}");
    }
    if ctx.json() {
        let v: Vec<Value> = nodes
            .iter()
            .map(|(addr, sum, index, store)| {
                json!({"addr": addr, "checksum": format!("{sum:016x}"), "appliedIndex": index, "store": store})
            })
            .collect();
        output::print_json(&json!({"nodes": v}));
    } else if history {
        let mut t = Table::new(&[
            "ADDR",
            "POLICY",
            "VERSION",
            "OP",
            "CONTENT",
            "SOURCE",
            "ACTOR",
            "STAMP MS",
            "LOG INDEX",
        ]);
        for (addr, _, _, store) in &nodes {
            for (pname, h) in policies(store) {
                for v in h["versions"].as_array().into_iter().flatten() {
                    t.row(vec![
                        addr.clone(),
                        pname.clone(),
                        v["version"].to_string(),
                        v["op"].as_str().unwrap_or_default().into(),
                        content(&v["policy"]),
                        v["source"].as_str().unwrap_or_default().into(),
                        v["actor"].as_str().unwrap_or_default().into(),
                        v["stampMs"].to_string(),
                        v["logIndex"].to_string(),
                    ]);
                }
            }
        }
        out!("{}", t.render());
    } else {
        let mut t = Table::new(&[
            "ADDR",
            "POLICY",
            "VERSION",
            "CONTENT",
            "SOURCE",
            "EVALUATED",
            "ALLOWED",
            "REJECTED",
            "CHECKSUM",
        ]);
        for (addr, sum, _, store) in &nodes {
            for (pname, h) in policies(store) {
                let cur = h["versions"]
                    .as_array()
                    .and_then(|v| v.last())
                    .cloned()
                    .unwrap_or_default();
                let c = &h["counters"];
                t.row(vec![
                    addr.clone(),
                    pname.clone(),
                    h["latest"].to_string(),
                    content(&cur["policy"]),
                    cur["source"].as_str().unwrap_or_default().into(),
                    c["evaluated"].to_string(),
                    c["allowed"].to_string(),
                    c["rejected"].to_string(),
                    format!("{sum:016x}"),
                ]);
            }
        }
        out!("{}", t.render());
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn policies(store: &Value) -> Vec<(String, Value)> {
    store["policies"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, h)| !h.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// A version's content for the table: the policy as compact JSON, or `(deleted)`.
fn content(policy: &Value) -> String {
    if policy.is_null() {
        "(deleted)".into()
    } else {
        policy.to_string()
    }
}
