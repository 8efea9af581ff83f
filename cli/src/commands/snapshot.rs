//! `kindex snapshot`: Admin.TriggerSnapshot on every `--addr` node (a
//! snapshot is per replica), in order.

use std::process::ExitCode;

use kindex_proto as pb;
use serde_json::{Value, json};

use super::{Ctx, log_id_json};
use crate::output::{self, Table};

pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut results = Vec::new();
    for addr in &ctx.addrs {
        let r = ctx
            .admin(addr)?
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await;
        results.push((
            ctx.name(addr),
            r.map(|r| r.into_inner())
                .map_err(|s| ctx.rpc_error(addr, "TriggerSnapshot", &s)),
        ));
    }
    for (name, why) in &ctx.unreachable {
        results.push((name.clone(), Err(anyhow::anyhow!("{name}: {why}"))));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if ctx.json() {
        let nodes: Vec<Value> = results
            .iter()
            .map(|(addr, r)| match r {
                Ok(s) => json!({
                    "addr": addr,
                    "logId": log_id_json(s.log_id.as_ref()),
                    "bytes": s.bytes,
                    "path": s.path,
                }),
                Err(e) => json!({"addr": addr, "error": format!("{e:#}")}),
            })
            .collect();
        output::print_json(&json!({"snapshots": nodes}));
    } else {
        let mut t = Table::new(&["ADDR", "LOG ID", "SIZE", "PATH"]);
        for (addr, r) in &results {
            match r {
                Ok(s) => {
                    let log = s
                        .log_id
                        .as_ref()
                        .map_or("-".into(), |l| format!("index {} term {}", l.index, l.term));
                    t.row(vec![
                        addr.clone(),
                        log,
                        output::bytes(s.bytes),
                        s.path.clone(),
                    ]);
                }
                Err(e) => eprintln!("error: {e:#}"),
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
