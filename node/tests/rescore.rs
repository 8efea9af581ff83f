#![allow(clippy::unwrap_used)]
//! A search's own `rescore` (issue 19), against a real `kindex-node` process with
//! `--quantization int8`: it reaches the engine over gRPC and HTTP (a small factor walks
//! a narrow candidate list on the int8 codes, a large one re-ranks almost every point
//! exactly, and the recall of the two differs), and out-of-range values are refused with
//! INVALID_ARGUMENT / 400 naming the field.

mod procs;

use std::time::{Duration, Instant};

use kindex_proto as pb;
use procs::{Cluster, Opts, Proc, Standalone, http_post, serial, with_timeout};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tonic::Code;

const DIM: usize = 48;
const N: usize = 4_000;
const K: u32 = 10;
const SEARCH: &str = "/v1/indexes/default/search";

/// Uniform points in [-1, 1)^DIM: hard for a graph walked with a beam of only k, so the
/// candidate count decides the recall.
fn rows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The exact top-k ids by brute force.
fn exact(base: &[Vec<f32>], q: &[f32]) -> Vec<String> {
    let mut d: Vec<(f32, usize)> = base.iter().map(|v| l2(v, q)).zip(0..).collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    d.iter()
        .take(K as usize)
        .map(|(_, i)| format!("p{i}"))
        .collect()
}

/// Waits until node `p` has indexed everything it applied.
async fn wait_indexed(p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if p.metric("kindex_index_queue_depth") == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "indexing did not finish\n{}",
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An int8 node holding `base`, every point indexed (queue empty, so no search is
/// answered by the exact scan of the queued tail) and the int8 ranges trained (trained
/// as soon as the first batch is claimed with more than 1,000 points stored).
async fn int8_node(base: &[Vec<f32>]) -> Proc {
    let mut node = Standalone::new(DIM as u32, "l2")
        .args(&["--quantization", "int8"])
        .start();
    node.wait_http_ok("/readyz", Duration::from_secs(30));
    let mut c = node.points();
    let points: Vec<pb::Point> = base
        .iter()
        .enumerate()
        .map(|(i, v)| pb::Point {
            id: format!("p{i}"),
            vector: v.clone(),
            payload_json: None,
        })
        .collect();
    for chunk in points.chunks(2_000) {
        c.upsert(pb::UpsertRequest {
            index: String::new(),
            points: chunk.to_vec(),
        })
        .await
        .unwrap();
    }
    wait_indexed(&node).await;
    node
}

fn grpc_request(q: &[f32], rescore: Option<u32>) -> pb::SearchRequest {
    pb::SearchRequest {
        vector: q.to_vec(),
        k: K,
        // The beam is max(efSearch, rescore × k): with efSearch = k the rescoring factor
        // alone sets how many candidates the graph walk keeps.
        ef_search: Some(K),
        rescore,
        ..Default::default()
    }
}

async fn grpc_ids(node: &Proc, q: &[f32], rescore: Option<u32>) -> Vec<String> {
    let r = node
        .points()
        .search(grpc_request(q, rescore))
        .await
        .unwrap()
        .into_inner();
    r.hits.into_iter().map(|h| h.id).collect()
}

fn http_search(node: &Proc, body: &Value) -> (u16, Value) {
    let (code, text) = http_post(&node.http, SEARCH, &body.to_string()).expect("HTTP answer");
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn http_ids(node: &Proc, q: &[f32], rescore: Option<u32>) -> Vec<String> {
    let mut body = json!({"vector": q, "k": K, "efSearch": K});
    if let Some(r) = rescore {
        body["rescore"] = json!(r);
    }
    let (code, v) = http_search(node, &body);
    assert_eq!(code, 200, "{v}");
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

fn recall(truth: &[Vec<String>], got: &[Vec<String>]) -> f64 {
    let hit: usize = truth
        .iter()
        .zip(got)
        .map(|(t, g)| t.iter().filter(|id| g.contains(id)).count())
        .sum();
    hit as f64 / (truth.len() * K as usize) as f64
}

/// rescore 1 keeps k candidates from the walk on the codes; rescore 100 keeps 1,000 of the
/// 4,000 points and re-ranks them with the f32 vectors. Both over gRPC and HTTP, which
/// must agree hit for hit (the graph does not change between the searches). If the field
/// were dropped anywhere on the way, every search would run with the runtime default (3)
/// and the recalls (and the hits compared with the default's) would be equal.
#[tokio::test(flavor = "multi_thread")]
async fn per_query_rescore_changes_the_search_over_grpc_and_http() {
    let base = rows(N, 19);
    let queries = rows(60, 1919);
    let truth: Vec<Vec<String>> = queries.iter().map(|q| exact(&base, q)).collect();
    let node = int8_node(&base).await;

    let mut by = Vec::new();
    for rescore in [Some(1), None, Some(100)] {
        let mut grpc = Vec::new();
        for q in &queries {
            let g = grpc_ids(&node, q, rescore).await;
            assert_eq!(
                g,
                http_ids(&node, q, rescore),
                "rescore {rescore:?}: gRPC vs HTTP"
            );
            grpc.push(g);
        }
        by.push((rescore, recall(&truth, &grpc), grpc));
    }
    let [(_, r1, ids1), (_, r_default, ids_default), (_, r100, _)] = &by[..] else {
        unreachable!()
    };
    eprintln!(
        "recall@{K} at efSearch {K}: rescore 1 {r1:.3}, default (3) {r_default:.3}, 100 {r100:.3}"
    );
    assert!(*r100 >= 0.97, "rescore 100: recall {r100}");
    assert!(
        *r100 >= r1 + 0.1,
        "rescore 100 ({r100}) must beat rescore 1 ({r1}) clearly"
    );
    assert!(
        ids1 != ids_default,
        "rescore 1 gave the same hits as the runtime default: the field is ignored"
    );
}

/// Two int8 shards of one replica each: the coordinator (shard 0's node) sends the search
/// on to shard 1's node over gRPC, and that shard must search with the query's own
/// `rescore` too. If either shard ignored it, the merged top 10 of `rescore 100` would be
/// short of the exact answer (the recall at the default, 3, is ~0.85 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescore_reaches_every_shard() {
    let _serial = serial().await;
    let c = Cluster::start_with(
        2,
        1,
        DIM as u32,
        Opts {
            extra_args: vec!["--quantization".into(), "int8".into()],
            ..Opts::default()
        },
    );
    with_timeout(Duration::from_secs(240), async {
        c.wait_leaders().await;
        let base = rows(2 * N, 29);
        let queries = rows(40, 2929);
        let truth: Vec<Vec<String>> = queries.iter().map(|q| exact(&base, q)).collect();
        let mut client = c.node(0, 0).points();
        for (n, chunk) in base.chunks(2_000).enumerate() {
            let points = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| pb::Point {
                    id: format!("p{}", n * 2_000 + i),
                    vector: v.clone(),
                    payload_json: None,
                })
                .collect();
            client
                .upsert(pb::UpsertRequest {
                    index: String::new(),
                    points,
                })
                .await
                .unwrap();
        }
        for shard in 0..2 {
            let p = c.node(shard, 0);
            wait_indexed(p).await;
            let live = p.status().await.unwrap().vectors_live;
            assert!(
                live > 3_000,
                "shard {shard} holds {live}: too few to train int8"
            );
        }
        let mut recalls = Vec::new();
        for rescore in [Some(1), Some(100)] {
            let mut got = Vec::new();
            for q in &queries {
                let r = client
                    .search(grpc_request(q, rescore))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.failures.is_empty(), "{:?}", r.failures);
                got.push(r.hits.into_iter().map(|h| h.id).collect::<Vec<_>>());
            }
            recalls.push(recall(&truth, &got));
        }
        eprintln!(
            "two shards, recall@{K} at efSearch {K}: rescore 1 {:.3}, 100 {:.3}",
            recalls[0], recalls[1]
        );
        assert!(
            recalls[1] >= 0.97,
            "rescore 100 over two shards: {}",
            recalls[1]
        );
        assert!(recalls[1] >= recalls[0] + 0.1, "{recalls:?}");
    })
    .await;
}

/// A rescore outside 1..=100 is refused before any shard is asked, naming the field and
/// the range, over gRPC (INVALID_ARGUMENT, also inside a SearchBatch) and HTTP (400).
#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_rescore_is_refused() {
    let node = int8_node(&rows(1_200, 7)).await;
    let q = rows(1, 8).remove(0);
    for bad in [0u32, 101, u32::MAX] {
        let want = format!("rescore must be in 1..=100, got {bad}");
        let err = node
            .points()
            .search(grpc_request(&q, Some(bad)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err}");
        assert!(err.message().contains(&want), "{bad}: {err}");

        let err = node
            .points()
            .search_batch(pb::SearchBatchRequest {
                searches: vec![grpc_request(&q, Some(3)), grpc_request(&q, Some(bad))],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "batch {bad}: {err}");
        assert!(
            err.message().contains("search 1 of the batch") && err.message().contains(&want),
            "batch {bad}: {err}"
        );

        let (code, v) = http_search(&node, &json!({"vector": q, "k": K, "rescore": bad}));
        assert_eq!(code, 400, "{bad}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&want), "{bad}: {v}");
    }
    // Not a number: refused by the JSON body's parser (which names the type, not the field).
    let (code, v) = http_search(&node, &json!({"vector": q, "k": K, "rescore": "many"}));
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
    // The edges of the range are accepted.
    for ok in [1u32, 100] {
        assert_eq!(grpc_ids(&node, &q, Some(ok)).await.len(), K as usize);
    }
}
