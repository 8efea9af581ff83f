//! Cluster tier, sharded: real `kindex-node` processes on 127.0.0.1, several shards of
//! several replicas, every request sent to one node and routed by its coordinator.
//!
//! - 100k points upserted through one node are all readable through a node of the other
//!   shard, each on the shard `xxh3_64(id) % shards` names;
//! - searches equal the merge of exact per-shard results; a shard that is down is reported
//!   in `failures`, `Get`/`Count` fail naming it;
//! - session and default reads through any node see the writes just made through another;
//! - a table of bad inputs gets precise errors over gRPC and HTTP and changes nothing.
//!
//! One cluster at a time on the machine (a lock shared with `cluster_process`).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod procs;

use std::time::{Duration, Instant};

use kindex_node::coordinator::routing::shard_of;
use kindex_proto as pb;
use procs::{Cluster, http_get, http_post, serial, with_timeout};

fn vector(i: u64, dim: u32) -> Vec<f32> {
    // Deterministic, distinct, spread out: no ties in exact distances.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 10_000) as f32 / 100.0
        })
        .collect()
}

fn point(prefix: &str, i: u64, dim: u32) -> pb::Point {
    pb::Point {
        id: format!("{prefix}{i}"),
        vector: vector(i, dim),
        payload_json: Some(format!(r#"{{"i": {i}}}"#)),
    }
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Per shard: (live vectors, content checksum) as its leader reports them.
async fn content(c: &Cluster, leaders: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (shard, l) in leaders.iter().enumerate() {
        let s = c.node(shard as u32, *l).status().await.unwrap();
        out.push((s.vectors_live, s.content_checksum));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_thousand_points_through_one_node_are_read_through_another() {
    let _serial = serial().await;
    let c = Cluster::start(2, 3, 4);
    with_timeout(Duration::from_secs(600), async {
        let leaders = c.wait_leaders().await;
        let t = Instant::now();
        let n = 100_000u64;
        let mut writer = c.node(0, 0).points();
        let mut token = pb::ConsistencyToken::default();
        for from in (0..n).step_by(2_000) {
            let points = (from..from + 2_000).map(|i| point("p", i, 4)).collect();
            let w = writer
                .upsert(pb::UpsertRequest {
                    index: String::new(),
                    points,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(w.affected, 2_000);
            token = w.token.unwrap();
        }
        let wrote = t.elapsed();
        assert_eq!(
            token.shards.iter().map(|s| s.shard).collect::<Vec<_>>(),
            [0, 1],
            "the token covers both shards: {token:?}"
        );

        // Read back through a node of the other shard (a follower, unless it leads).
        let t = Instant::now();
        let mut reader = c.node(1, 2).points();
        let mut found = 0;
        for from in (0..n).step_by(5_000) {
            let ids: Vec<String> = (from..from + 5_000).map(|i| format!("p{i}")).collect();
            let got = reader
                .get(pb::GetRequest {
                    ids: ids.clone(),
                    with_vectors: true,
                    with_payload: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.points.len(), ids.len(), "from {from}");
            for (p, id) in got.points.iter().zip(&ids) {
                assert_eq!(&p.id, id, "request order kept");
                let i: u64 = id[1..].parse().unwrap();
                assert_eq!(p.vector, vector(i, 4));
                assert_eq!(p.payload_json.as_deref(), Some(&*format!(r#"{{"i":{i}}}"#)));
            }
            found += got.points.len();
        }
        let read = t.elapsed();
        assert_eq!(found as u64, n);
        let count = reader
            .count(pb::CountRequest::default())
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(count, n);

        // Every point sits on the shard the routing function names.
        let mut want = [0u64; 2];
        for i in 0..n {
            want[shard_of(&format!("p{i}"), 2) as usize] += 1;
        }
        let have = content(&c, &leaders).await;
        assert_eq!([have[0].0, have[1].0], want, "{have:?}");
        eprintln!(
            "100k points: written through s0-0 in {wrote:?}, read through s1-2 in {read:?}; per shard {want:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_merges_exact_shard_results_and_reports_a_down_shard() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 1, 8);
    with_timeout(Duration::from_secs(300), async {
        c.wait_leaders().await;
        let n = 600u64;
        let points: Vec<pb::Point> = (0..n).map(|i| point("q", i, 8)).collect();
        c.node(1, 0)
            .points()
            .upsert(pb::UpsertRequest {
                index: String::new(),
                points: points.clone(),
            })
            .await
            .unwrap();
        let mut client = c.node(0, 0).points();
        for q in 0..25u64 {
            let query = vector(10_000 + q, 8);
            // ef ≥ the shard size: each shard's answer is exact.
            let req = pb::SearchRequest {
                vector: query.clone(),
                k: 10,
                ef_search: Some(1_000),
                ..Default::default()
            };
            let got = client.search(req.clone()).await.unwrap().into_inner();
            assert!(got.failures.is_empty(), "{:?}", got.failures);
            // Union of the shards' own answers (asked shard-local), merged.
            let mut union: Vec<(f32, String)> = Vec::new();
            for shard in 0..3 {
                let mut r = tonic::Request::new(req.clone());
                r.metadata_mut()
                    .insert("kindex-shard-local", shard.to_string().parse().unwrap());
                let part = c
                    .node(shard, 0)
                    .points()
                    .search(r)
                    .await
                    .unwrap()
                    .into_inner();
                for h in part.hits {
                    assert_eq!(
                        shard_of(&h.id, 3),
                        shard,
                        "{} answered by shard {shard}",
                        h.id
                    );
                    union.push((h.distance, h.id));
                }
            }
            union.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            union.truncate(10);
            // Brute force over everything written.
            let mut exact: Vec<(f32, String)> = points
                .iter()
                .map(|p| (l2(&p.vector, &query), p.id.clone()))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            exact.truncate(10);
            let ids = |v: &[(f32, String)]| v.iter().map(|x| x.1.clone()).collect::<Vec<_>>();
            let got_ids: Vec<String> = got.hits.iter().map(|h| h.id.clone()).collect();
            assert_eq!(got_ids, ids(&union), "query {q}");
            assert_eq!(got_ids, ids(&exact), "query {q}");
        }

        // A shard with no replica up: searches say so, Get and Count refuse to guess.
        c.kill(2, 0);
        let got = client
            .search(pb::SearchRequest {
                vector: vector(7, 8),
                k: 5,
                consistency: pb::Consistency::Eventual as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.hits.len(), 5);
        assert!(got.hits.iter().all(|h| shard_of(&h.id, 3) != 2));
        assert_eq!(got.failures.len(), 1, "{:?}", got.failures);
        assert_eq!(got.failures[0].shard, 2);
        let on_2 = (0..n)
            .map(|i| format!("q{i}"))
            .find(|id| shard_of(id, 3) == 2)
            .unwrap();
        let err = client
            .get(pb::GetRequest {
                ids: vec![on_2],
                consistency: pb::Consistency::Eventual as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(err.message().contains("shard 2"), "{err:?}");
        let (code, body) = http_post(
            &c.node(1, 0).http,
            "/v1/indexes/default/search",
            &format!(
                r#"{{"vector": {:?}, "k": 3, "consistency": "eventual"}}"#,
                vector(7, 8)
            ),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""shard":2"#), "{body}");
        // Operators see it too.
        let (_, metrics) = http_get(&c.node(0, 0).http, "/metrics").unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("kindex_coordinator_shard_calls_total")
                    && l.contains(r#"outcome="failed""#)
                    && l.contains(r#"shard="2""#)
                    && l.contains(r#"op="Search""#)),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                r#"kindex_coordinator_shard_calls_total{op="Search",outcome="ok",shard="1"}"#
            ),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_through_any_node_see_writes_and_bad_input_changes_nothing() {
    let _serial = serial().await;
    let c = Cluster::start(2, 3, 4);
    with_timeout(Duration::from_secs(420), async {
        let leaders = c.wait_leaders().await;
        let nodes: Vec<(u32, u64)> = (0..2).flat_map(|s| (0..3).map(move |r| (s, r))).collect();

        // Session and default reads, many rounds, writer and reader on different nodes.
        let t = Instant::now();
        let rounds = 200u64;
        for i in 0..rounds {
            let (ws, wr) = nodes[(i % 6) as usize];
            let (rs, rr) = nodes[((i * 7 + 3) % 6) as usize];
            let w = c
                .node(ws, wr)
                .points()
                .upsert(pb::UpsertRequest {
                    index: String::new(),
                    points: vec![point("s", i, 4)],
                })
                .await
                .unwrap()
                .into_inner();
            let mut reader = c.node(rs, rr).points();
            let session = reader
                .get(pb::GetRequest {
                    ids: vec![format!("s{i}")],
                    consistency: pb::Consistency::Session as i32,
                    token: w.token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(session.points.len(), 1, "round {i}: session read missed the write");
            let default = reader
                .search(pb::SearchRequest {
                    vector: vector(i, 4),
                    k: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(default.hits[0].id, format!("s{i}"), "round {i}: default read missed the write");
        }
        eprintln!("{rounds} write/session-read/default-read rounds in {:?}", t.elapsed());

        // Bad inputs: precise errors, nothing written anywhere.
        let before = content(&c, &leaders).await;
        let good = |i: u64| point("g", i, 4);
        let with = |bad: pb::Point| {
            // Good points for both shards around the bad one: all or nothing.
            let mut v: Vec<pb::Point> = (0..20).map(good).collect();
            v.insert(10, bad);
            v
        };
        let mut nan = good(100);
        nan.vector[2] = f32::NAN;
        let long = pb::Point {
            id: "x".repeat(300),
            ..good(101)
        };
        let upserts: Vec<(&str, Vec<pb::Point>, &str)> = vec![
            ("wrong dimension", with(pb::Point { vector: vec![1.0; 3], ..good(102) }), "has 3 dimensions; the index has 4"),
            ("NaN", with(nan), "is NaN"),
            ("empty id", with(pb::Point { id: String::new(), ..good(103) }), "id is empty"),
            ("300-byte id", with(long), "300 bytes; the limit is 256"),
            ("oversize batch", (0..10_001).map(good).collect(), "10001 items; the limit is 10000"),
            ("payload not JSON", with(pb::Point { payload_json: Some("{not json".into()), ..good(104) }), "payload"),
        ];
        let mut client = c.node(0, 1).points();
        for (what, points, msg) in upserts {
            let err = client
                .upsert(pb::UpsertRequest { index: String::new(), points })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
            assert!(err.message().contains(msg), "{what}: {:?} lacks {msg:?}", err.message());
        }
        let searches: Vec<(&str, pb::SearchRequest, &str)> = vec![
            ("k=0", pb::SearchRequest { vector: vec![1.0; 4], k: 0, ..Default::default() }, "k must be in 1..=1000, got 0"),
            ("query dimension", pb::SearchRequest { vector: vec![1.0; 5], k: 3, ..Default::default() }, "query vector has 5 dimensions"),
            (
                "filter without a value type",
                pb::SearchRequest {
                    vector: vec![1.0; 4],
                    k: 3,
                    filter: Some(pb::Filter { must: vec![pb::Condition { field: "i".into(), kind: None }], ..Default::default() }),
                    ..Default::default()
                },
                "neither match nor range",
            ),
        ];
        for (what, req, msg) in searches {
            let err = client.search(req).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
            assert!(err.message().contains(msg), "{what}: {:?} lacks {msg:?}", err.message());
        }
        let err = client
            .delete(pb::DeleteRequest { index: String::new(), ids: vec!["ok".into(), String::new()] })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

        // The same over HTTP (through a node of the other shard).
        let port = &c.node(1, 2).http;
        let good_json = |i: u64| format!(r#"{{"id": "h{i}", "vector": [1, 2, 3, {i}]}}"#);
        let batch = |bad: &str| {
            let mut v: Vec<String> = (0..20).map(good_json).collect();
            v.insert(10, bad.to_string());
            format!(r#"{{"points": [{}]}}"#, v.join(","))
        };
        let oversize = format!(
            r#"{{"points": [{}]}}"#,
            (0..10_001).map(good_json).collect::<Vec<_>>().join(",")
        );
        let long_id = format!(r#"{{"id": "{}", "vector": [1, 2, 3, 4]}}"#, "y".repeat(300));
        let http_cases: Vec<(&str, &str, String, &str)> = vec![
            ("wrong dimension", "points", batch(r#"{"id": "d", "vector": [1, 2, 3]}"#), "has 3 dimensions"),
            ("NaN", "points", batch(r#"{"id": "n", "vector": [1, NaN, 3, 4]}"#), "malformed request body"),
            ("empty id", "points", batch(r#"{"id": "", "vector": [1, 2, 3, 4]}"#), "id is empty"),
            ("300-byte id", "points", batch(&long_id), "300 bytes"),
            ("oversize batch", "points", oversize, "the limit is 10000"),
            ("payload not an object", "points", batch(r#"{"id": "p", "vector": [1, 2, 3, 4], "payload": [1]}"#), "must be an object"),
            ("malformed JSON", "points", r#"{"points": [{"id": "m", "vector": [1, 2"#.to_string(), "malformed request body"),
            ("k=0", "search", r#"{"vector": [1, 2, 3, 4], "k": 0}"#.to_string(), "k must be in 1..=1000"),
            ("unknown filter value type", "search", r#"{"vector": [1, 2, 3, 4], "k": 3, "filter": {"must": [{"field": "i", "match": [1, 2]}]}}"#.to_string(), "malformed request body"),
            ("empty range", "search", r#"{"vector": [1, 2, 3, 4], "k": 3, "filter": {"must": [{"field": "i", "range": {}}]}}"#.to_string(), "needs at least one of gt, gte, lt, lte"),
            ("unknown field", "search", r#"{"vector": [1, 2, 3, 4], "k": 3, "kk": 1}"#.to_string(), "unknown field `kk`"),
        ];
        for (what, path, body, msg) in http_cases {
            let (code, reply) = http_post(port, &format!("/v1/indexes/default/{path}"), &body).unwrap();
            assert_eq!(code, 400, "{what}: {reply}");
            assert!(reply.contains(r#""code":"invalid_argument""#), "{what}: {reply}");
            assert!(reply.contains(msg), "{what}: {reply} lacks {msg:?}");
        }

        let after = content(&c, &leaders).await;
        assert_eq!(before, after, "bad input changed the index");
        assert_eq!(after.iter().map(|x| x.0).sum::<u64>(), rounds);
        let (code, body) = http_get(port, "/v1/indexes/default/count").unwrap();
        assert_eq!((code, body.trim()), (200, format!(r#"{{"count":{rounds}}}"#).as_str()));
    })
    .await;
}
