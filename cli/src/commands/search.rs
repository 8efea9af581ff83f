//! `kindex search`: nearest neighbours of a vector given inline or as a row
//! of a vector file.

use std::process::ExitCode;

use anyhow::Context;
use kindex_proto as pb;
use serde_json::{Value, json};

use super::{Consistency, Ctx, payload_value};
use crate::input::Source;
use crate::output::{self, Table};
use crate::{SearchArgs, filter};

/// Parses `--vector '[0.1, 0.2]'`.
pub fn parse_vector(text: &str) -> anyhow::Result<Vec<f32>> {
    let v: Vec<f64> = serde_json::from_str(text)
        .with_context(|| format!("--vector must be a JSON array of numbers, got {text:?}"))?;
    anyhow::ensure!(!v.is_empty(), "--vector is empty");
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    if let Some(p) = v.iter().position(|x| !x.is_finite()) {
        anyhow::bail!("--vector component {p} does not fit a finite float32");
    }
    Ok(v)
}

fn query_vector(args: &SearchArgs) -> anyhow::Result<Vec<f32>> {
    if let Some(text) = &args.vector {
        return parse_vector(text);
    }
    let Some(path) = &args.vector_file else {
        anyhow::bail!("give --vector or --vector-file");
    };
    // Stride: remember every 1024th jsonl line, then skip forward to the row.
    let mut src = Source::open(path, args.format, "", 1024)?;
    anyhow::ensure!(
        args.row < src.rows(),
        "--row {} is out of range: {} has {} rows",
        args.row,
        path.display(),
        src.rows()
    );
    src.seek_row(args.row)?;
    let mut rows = Vec::new();
    src.next_batch(1, &mut rows)?;
    rows.pop()
        .map(|r| r.vector)
        .ok_or_else(|| anyhow::anyhow!("row {} of {} is missing", args.row, path.display()))
}

pub async fn run(ctx: &Ctx, args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let vector = query_vector(args)?;
    let filter = args.filter.as_deref().map(filter::parse).transpose()?;
    let req = pb::SearchRequest {
        index: ctx.index.clone(),
        vector,
        k: args.k,
        ef_search: args.ef,
        rescore: args.rescore,
        filter,
        with_vectors: args.with_vectors,
        with_payload: args.with_payload,
        consistency: Consistency::proto(args.consistency),
        token: None,
    };
    let addr = ctx.addr()?;
    let resp = ctx
        .points(addr)?
        .search(req)
        .await
        .map_err(|s| ctx.rpc_error(addr, "Search", &s))?
        .into_inner();
    if ctx.json() {
        let hits: Vec<Value> = resp
            .hits
            .iter()
            .map(|h| {
                let mut v = json!({"id": h.id, "distance": h.distance});
                if args.with_payload {
                    v["payload"] = payload_value(h.payload_json.as_deref());
                }
                if args.with_vectors {
                    v["vector"] = json!(h.vector);
                }
                v
            })
            .collect();
        let failures: Vec<Value> = resp
            .failures
            .iter()
            .map(|f| json!({"shard": f.shard, "message": f.message}))
            .collect();
        output::print_json(&json!({"hits": hits, "failures": failures}));
    } else {
        let mut header = vec!["RANK", "ID", "DISTANCE"];
        if args.with_payload {
            header.push("PAYLOAD");
        }
        if args.with_vectors {
            header.push("VECTOR");
        }
        let mut t = Table::new(&header);
        for (i, h) in resp.hits.iter().enumerate() {
            let mut row = vec![
                (i + 1).to_string(),
                h.id.clone(),
                format!("{:.6}", h.distance),
            ];
            if args.with_payload {
                row.push(h.payload_json.clone().unwrap_or_else(|| "-".into()));
            }
            if args.with_vectors {
                row.push(output::short_vector(&h.vector));
            }
            t.row(row);
        }
        out!("{}", t.render());
        if resp.hits.is_empty() {
            outln!("(no hits)");
        }
    }
    for f in &resp.failures {
        eprintln!(
            "warning: shard {} did not answer, results are partial: {}",
            f.shard, f.message
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_parsing() {
        assert_eq!(
            parse_vector("[0.5, 1, -2e1]").unwrap(),
            vec![0.5, 1.0, -20.0]
        );
        for bad in ["", "[]", "[1, \"x\"]", "{\"a\": 1}", "[1e300]"] {
            assert!(parse_vector(bad).is_err(), "{bad}");
        }
    }
}
