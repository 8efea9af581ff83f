//! `kindex upsert --file ...`: bulk load with a progress bar, retries and resume.
//!
//! One `Upsert` per batch, in file order: a failed batch is simply sent again
//! (upserts are idempotent), and "everything before row N is stored" stays
//! true, which is what `--resume` relies on.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use kindex_proto as pb;
use serde_json::json;

use super::{Ctx, Points, is_transient, normalize_addr, rpc_error_on};
use crate::UpsertArgs;
use crate::input::{Row, Source};
use crate::output;

/// Talks to the nodes (`--addr`, or the pods found through the kubeconfig),
/// retrying transient errors with exponential backoff: on a leader hint that
/// names one of the nodes it goes there, else it moves to the next node. A
/// batch is given up after `attempts` attempts or `retry_for`, whichever
/// comes first.
struct Sender {
    /// (display name, URL, client)
    clients: Vec<(String, String, Points)>,
    current: usize,
    attempts: u32,
    retry_for: Duration,
    forwarded: bool,
    retries: u64,
    progress: ProgressBar,
}

/// First retry delay; doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// The delay before retry number `retry` (1-based).
fn backoff(retry: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(MAX_DELAY)
}

/// The leader's gRPC address a follower put in a `FailedPrecondition`.
fn leader_hint(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get(kindex_node::node::LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(normalize_addr)
}

/// The node to try after `current` failed with `s`.
fn next_node(urls: &[&str], current: usize, s: &tonic::Status) -> usize {
    leader_hint(s)
        .and_then(|h| urls.iter().position(|u| *u == h))
        .unwrap_or((current + 1) % urls.len().max(1))
}

impl Sender {
    async fn call<T, F, Fut>(&mut self, what: &str, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut(Points) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let (name, _, client) = &self.clients[self.current];
            let s = match f(client.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            let e = rpc_error_on(name, self.forwarded, what, &s);
            if !is_transient(&s) {
                return Err(e);
            }
            let delay = backoff(attempt);
            if attempt >= self.attempts || started.elapsed() + delay > self.retry_for {
                return Err(e.context(format!(
                    "gave up after {attempt} attempts in {:.1}s (--attempts {}, --retry-timeout {})",
                    started.elapsed().as_secs_f64(),
                    self.attempts,
                    self.retry_for.as_secs()
                )));
            }
            let urls: Vec<&str> = self.clients.iter().map(|c| c.1.as_str()).collect();
            self.current = next_node(&urls, self.current, &s);
            let next = &self.clients[self.current].0;
            self.progress.suspend(|| {
                eprintln!(
                    "warning: {e:#}; retrying on {next} in {delay:?} (attempt {}/{})",
                    attempt + 1,
                    self.attempts
                )
            });
            tokio::time::sleep(delay).await;
            attempt += 1;
            self.retries += 1;
        }
    }

    async fn exists(&mut self, index: &str, id: String) -> anyhow::Result<bool> {
        let req = pb::GetRequest {
            index: index.into(),
            ids: vec![id],
            ..Default::default()
        };
        let r = self.call("Get", |mut c| {
            let req = req.clone();
            async move { c.get(req).await }
        });
        Ok(!r.await?.points.is_empty())
    }
}

pub async fn run(ctx: &Ctx, args: &UpsertArgs) -> anyhow::Result<ExitCode> {
    let mut batch = args.batch as usize;
    let mut src = Source::open(&args.file, args.format, &args.id_prefix, batch)?;
    let total = src.rows();
    let show_progress = !ctx.json() && std::io::stderr().is_terminal();
    let progress = if show_progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    let mut clients = Vec::new();
    for a in &ctx.addrs {
        clients.push((ctx.name(a), a.clone(), ctx.points(a)?));
    }
    anyhow::ensure!(!clients.is_empty(), "no reachable node");
    let mut sender = Sender {
        clients,
        current: 0,
        attempts: args.attempts,
        retry_for: Duration::from_secs(args.retry_timeout),
        forwarded: ctx.kube.is_some(),
        retries: 0,
        progress: progress.clone(),
    };

    // Check the file against the index before sending anything.
    let index = ctx.index.clone();
    let info = sender
        .call("Info", |mut c| {
            let index = index.clone();
            async move { c.info(pb::InfoRequest { index }).await }
        })
        .await?;
    if let Some(dim) = src.dimension() {
        anyhow::ensure!(
            dim == info.dimension as usize,
            "{} has vectors of dimension {dim}, but index {:?} has dimension {}",
            args.file.display(),
            info.index,
            info.dimension
        );
    }
    if let Some(max) = info
        .limits
        .map(|l| l.max_batch as usize)
        .filter(|&m| m > 0 && batch > m)
    {
        eprintln!("note: --batch {batch} is above the node's limit; using {max}");
        batch = max;
    }

    let start = if args.resume {
        resume_point(&mut src, &mut sender, &ctx.index, batch).await?
    } else {
        args.start_row
    };
    anyhow::ensure!(
        start <= total,
        "--start-row {start} is past the end of the file ({total} rows)"
    );
    src.seek_row(start).context("seeking to the start row")?;

    progress.set_length(total - start);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} vectors  {rate}  ETA {eta}",
        )?
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} vectors/s", s.per_sec());
        })
        .progress_chars("=> "),
    );
    // Rate and ETA count from here, not from before the Info/resume calls.
    progress.reset();
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::with_capacity(batch);
    let mut row = start;
    let mut last_token = None;
    loop {
        src.next_batch(batch, &mut rows)
            .with_context(|| format!("reading {} at row {row}", args.file.display()))?;
        if rows.is_empty() {
            break;
        }
        check_finite(&rows, row)?;
        let req = pb::UpsertRequest {
            index: ctx.index.clone(),
            points: rows
                .drain(..)
                .map(|r| pb::Point {
                    id: r.id,
                    vector: r.vector,
                    payload_json: r.payload_json,
                })
                .collect(),
        };
        let n = req.points.len() as u64;
        let resp = sender
            .call("Upsert", |mut c| {
                let req = req.clone();
                async move { c.upsert(req).await }
            })
            .await
            .with_context(|| {
                format!(
                    "batch of rows {row}..{} was not written; rows before {row} are stored \
                     (fix the cause, then rerun with --resume or --start-row {row})",
                    row + n
                )
            })?;
        last_token = resp.token;
        row += n;
        progress.inc(n);
    }
    progress.finish_and_clear();

    let written = row - start;
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        written as f64 / secs
    } else {
        0.0
    };
    if ctx.json() {
        let token: Vec<_> = last_token
            .map(|t| {
                t.shards
                    .iter()
                    .map(|s| json!({"shard": s.shard, "appliedIndex": s.applied_index}))
                    .collect()
            })
            .unwrap_or_default();
        output::print_json(&json!({
            "file": args.file.display().to_string(),
            "rows": written,
            "startRow": start,
            "endRow": row,
            "totalRows": total,
            "seconds": secs,
            "vectorsPerSecond": rate,
            "retries": sender.retries,
            "token": token,
        }));
    } else {
        let resumed = if args.resume {
            format!(" (resumed at row {start})")
        } else {
            String::new()
        };
        outln!(
            "upserted {written} vectors, rows {start}..{row} of {total}{resumed}, in {secs:.2}s ({rate:.0} vectors/s, {} retries)",
            sender.retries
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// NaN/infinity would be rejected by the node; say which row, in file terms.
fn check_finite(rows: &[Row], first_row: u64) -> anyhow::Result<()> {
    for (i, r) in rows.iter().enumerate() {
        if let Some(p) = r.vector.iter().position(|x| !x.is_finite()) {
            anyhow::bail!(
                "row {} (id {:?}): component {p} is {} (NaN and infinity are not allowed); rows before {first_row} are stored",
                first_row + i as u64,
                r.id,
                r.vector[p]
            );
        }
    }
    Ok(())
}

/// Finds where an interrupted in-order load stopped: the last batch start
/// whose id is stored. Presence is monotone over batch starts (true, ..., true,
/// false, ...), so a binary search needs only log2(batches) lookups. That last
/// batch is sent again, in case it was written only in part.
async fn resume_point(
    src: &mut Source,
    sender: &mut Sender,
    index: &str,
    batch: usize,
) -> anyhow::Result<u64> {
    let batches = src.rows().div_ceil(batch as u64);
    let (mut lo, mut hi) = (0u64, batches);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let id = src.id_at(mid * batch as u64)?;
        if sender.exists(index, id).await? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    // `lo` is the first batch whose start is missing.
    let start = lo.saturating_sub(1) * batch as u64;
    if start > 0 {
        eprintln!("resuming at row {start} (rows before it are stored)");
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let d: Vec<u64> = (1..=7).map(|r| backoff(r).as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(10_000), MAX_DELAY);
    }

    #[test]
    fn a_leader_hint_picks_that_node_else_the_next() {
        let urls = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ];
        let plain = tonic::Status::unavailable("no leader");
        assert_eq!(next_node(&urls, 0, &plain), 1);
        assert_eq!(next_node(&urls, 2, &plain), 0);
        let mut hinted = tonic::Status::failed_precondition("not the leader");
        hinted.metadata_mut().insert(
            kindex_node::node::LEADER_HEADER,
            "127.0.0.1:3".parse().unwrap(),
        );
        assert_eq!(next_node(&urls, 0, &hinted), 2);
        // A hint naming a node we do not know (a pod's cluster address): next.
        let mut other = tonic::Status::failed_precondition("not the leader");
        other.metadata_mut().insert(
            kindex_node::node::LEADER_HEADER,
            "10.0.0.9:7070".parse().unwrap(),
        );
        assert_eq!(next_node(&urls, 1, &other), 2);
    }

    #[test]
    fn non_finite_rows_are_named() {
        let rows = vec![
            Row {
                id: "a".into(),
                vector: vec![1.0, 2.0],
                payload_json: None,
            },
            Row {
                id: "b".into(),
                vector: vec![1.0, f32::NAN],
                payload_json: None,
            },
        ];
        let e = check_finite(&rows, 10).unwrap_err().to_string();
        assert!(
            e.contains("row 11") && e.contains("\"b\"") && e.contains("component 1 is NaN"),
            "{e}"
        );
        assert!(check_finite(&rows[..1], 0).is_ok());
    }
}
