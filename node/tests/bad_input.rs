#![allow(clippy::unwrap_used)]
//! Bad input never changes results silently (issue 17), against real `kindex-node`
//! processes on loopback: strict filters, huge and zero vectors, one JSON error shape for
//! every HTTP error, and session tokens that name log indexes nobody wrote.
//!
//! Every test here speaks only HTTP/JSON or gRPC messages that existed before the fixes, so
//! the same file builds against the code before them (where each of these tests failed).

mod procs;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kindex_proto as pb;
use procs::{Proc, Standalone};
use serde_json::{Value, json};

/// A standalone node with `dim`-dimensional vectors under `metric`, ready.
fn standalone(metric: &str, dim: u32) -> Proc {
    let mut node = Standalone::new(dim, metric).start();
    node.wait_http_ok("/readyz", Duration::from_secs(30));
    node
}

/// One HTTP/1.0 request: (status, content type, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).ok()?;
    // The server may answer (413) before it read everything.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((code, ctype, body.to_string()))
}

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let (code, _, text) = request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .expect("answer");
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The API's error shape: JSON `{"error": {"code": .., "message": ..}}`; returns the message.
fn error_message(code: u16, ctype: &str, body: &str) -> String {
    assert!(
        ctype.starts_with("application/json"),
        "{code}: content type {ctype:?}, body {body:?}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    let (c, m) = (&v["error"]["code"], &v["error"]["message"]);
    assert!(c.is_string() && m.is_string(), "{code}: {v}");
    m.as_str().unwrap().to_string()
}

const POINTS: &str = "/v1/indexes/default/points";
const SEARCH: &str = "/v1/indexes/default/search";

/// Four points: a/b in "en", c/d in "de"; years 1990, 2000, 2010, 2020.
fn seed(n: &Proc) {
    let points: Vec<Value> = [("a", "en", 1990), ("b", "en", 2000), ("c", "de", 2010), ("d", "de", 2020)]
        .iter()
        .enumerate()
        .map(|(i, (id, lang, year))| {
            json!({"id": id, "vector": [i as f32, 1.0, 0.0, 0.0], "payload": {"lang": lang, "year": year}})
        })
        .collect();
    let (code, v) = post(&n.http, POINTS, &json!({ "points": points }));
    assert_eq!(code, 200, "{v}");
}

fn search_ids(n: &Proc, filter: Value) -> Result<Vec<String>, (u16, String)> {
    let (code, v) = post(
        &n.http,
        SEARCH,
        &json!({"vector": [0.0, 1.0, 0.0, 0.0], "k": 10, "filter": filter}),
    );
    if code != 200 {
        return Err((
            code,
            v["error"]["message"].as_str().unwrap_or("").to_string(),
        ));
    }
    let mut ids: Vec<String> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Each filter mistake the issue lists is refused with 400 naming the key and its path
/// (before: accepted with 200 and unfiltered or half-filtered hits).
#[test]
fn filter_mistakes_are_refused_with_their_path() {
    let n = standalone("l2", 4);
    seed(&n);
    let cases = [
        (
            "typo of a clause",
            json!({"mst": [{"field": "lang", "match": "en"}]}),
            "mst",
        ),
        (
            "extra key in a condition",
            json!({"must": [{"field": "lang", "match": "en", "boost": 2}]}),
            "must[0].boost",
        ),
        (
            "match and range in one condition",
            json!({"must": [{"field": "lang", "match": "en"}, {"field": "year", "match": 2000, "range": {"lt": 2005}}]}),
            "must[1]",
        ),
        (
            "range bound typo next to a valid one",
            json!({"must": [{"field": "year", "range": {"gte": 1995, "ltee": 2005}}]}),
            "must[0].range.ltee",
        ),
    ];
    for (what, filter, path) in cases {
        let err = search_ids(&n, filter).expect_err(what);
        assert_eq!(err.0, 400, "{what}: {err:?}");
        assert!(err.1.contains(path), "{what}: {err:?} should name {path}");
    }
    // And nothing changed: the same valid filter still gives the same hits.
    assert_eq!(
        search_ids(&n, json!({"must": [{"field": "lang", "match": "en"}]})).unwrap(),
        ["a", "b"]
    );
}

/// `mustNot` and `should` filter (before: both were ignored, returning every point). Over
/// gRPC the same clauses are `Filter.must_not` / `Filter.should` (the HTTP API goes through
/// them: JSON → proto → coordinator).
#[test]
fn must_not_and_should_filter() {
    let n = standalone("l2", 4);
    seed(&n);
    assert_eq!(
        search_ids(&n, json!({"mustNot": [{"field": "lang", "match": "de"}]})).unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        search_ids(
            &n,
            json!({"should": [{"field": "year", "range": {"lt": 1995}}, {"field": "year", "match": 2020}]})
        )
        .unwrap(),
        ["a", "d"]
    );
    assert_eq!(
        search_ids(
            &n,
            json!({"must": [{"field": "year", "range": {"gte": 2000}}], "mustNot": [{"field": "lang", "match": "en"}]})
        )
        .unwrap(),
        ["c", "d"]
    );
}

/// Finite but huge components: refused for l2 and dot (before: accepted, distances came
/// back as JSON null); for cosine, stored as the right direction (before: the f32 norm
/// overflowed and the vector became all zeros); zero vectors refused for cosine.
#[test]
fn huge_and_zero_vectors() {
    for metric in ["l2", "dot"] {
        let n = standalone(metric, 4);
        let (code, v) = post(
            &n.http,
            POINTS,
            &json!({"points": [{"id": "big", "vector": [3e38, 0.0, 0.0, 0.0]}]}),
        );
        assert_eq!(code, 400, "{metric}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains("big") && m.contains("too large"), "{m}");
        let (code, v) = post(
            &n.http,
            SEARCH,
            &json!({"vector": [0.0, -3e38, 0.0, 0.0], "k": 1}),
        );
        assert_eq!(code, 400, "{metric}: {v}");
        // The largest accepted vectors give finite distances, never null.
        let (code, v) = post(
            &n.http,
            POINTS,
            &json!({"points": [{"id": "p", "vector": [1.5e18, 1.5e18, 0.0, 0.0]}, {"id": "q", "vector": [-1.5e18, -1.5e18, 0.0, 0.0]}]}),
        );
        assert_eq!(code, 200, "{metric}: {v}");
        let (code, v) = post(
            &n.http,
            SEARCH,
            &json!({"vector": [1.5e18, 1.5e18, 0.0, 0.0], "k": 2}),
        );
        assert_eq!(code, 200, "{metric}: {v}");
        for h in v["hits"].as_array().unwrap() {
            assert!(h["distance"].is_number(), "{metric}: {v}");
        }
    }
    let n = standalone("cosine", 4);
    let (code, v) = post(
        &n.http,
        POINTS,
        &json!({"points": [{"id": "big", "vector": [3e38, 3e38, 0.0, 0.0]}, {"id": "x", "vector": [0.0, 0.0, 1.0, 0.0]}]}),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = post(
        &n.http,
        SEARCH,
        &json!({"vector": [1.0, 1.0, 0.0, 0.0], "k": 1}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["hits"][0]["id"], "big", "{v}");
    assert!(v["hits"][0]["distance"].as_f64().unwrap() < 1e-3, "{v}");
    let (code, v) = post(
        &n.http,
        POINTS,
        &json!({"points": [{"id": "z", "vector": [0.0, 0.0, 0.0, 0.0]}]}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("all zeros"),
        "{v}"
    );
    let (code, v) = post(
        &n.http,
        SEARCH,
        &json!({"vector": [0.0, 0.0, 0.0, 0.0], "k": 1}),
    );
    assert_eq!(code, 400, "{v}");
}

/// (name, method, path, headers, body, expected status, expected error code)
type HttpCase<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

/// Every error answer of the HTTP API is JSON with the documented shape, including the
/// framework's own (before: empty 404/405 bodies, text/plain path and query rejections).
#[test]
fn every_http_error_is_json() {
    let n = standalone("l2", 4);
    let json_ct = [("Content-Type", "application/json")];
    let cases: Vec<HttpCase<'_>> = vec![
        (
            "unknown route",
            "GET",
            "/nope",
            vec![],
            vec![],
            404,
            "/nope",
        ),
        (
            "unknown route under /v1",
            "POST",
            "/v1/indexes/default/nope",
            json_ct.to_vec(),
            b"{}".to_vec(),
            404,
            "nope",
        ),
        (
            "wrong method",
            "DELETE",
            POINTS,
            vec![],
            vec![],
            405,
            "DELETE",
        ),
        (
            "wrong method on a GET route",
            "POST",
            "/v1/indexes/default/count",
            json_ct.to_vec(),
            b"{}".to_vec(),
            405,
            "POST",
        ),
        (
            "path that is not UTF-8",
            "GET",
            "/v1/indexes/%FF%FE",
            vec![],
            vec![],
            400,
            "",
        ),
        (
            "bad query value",
            "GET",
            "/v1/indexes/default/count?consistency=strong",
            vec![],
            vec![],
            400,
            "strong",
        ),
        (
            "unknown query key",
            "GET",
            "/v1/indexes/default/count?consistancy=eventual",
            vec![],
            vec![],
            400,
            "consistancy",
        ),
        (
            "unknown index",
            "GET",
            "/v1/indexes/other",
            vec![],
            vec![],
            404,
            "other",
        ),
        (
            "not JSON (would be 415/400 with axum's Json)",
            "POST",
            SEARCH,
            vec![("Content-Type", "text/plain")],
            b"k=1".to_vec(),
            400,
            "malformed",
        ),
        (
            "JSON of the wrong shape (would be 422)",
            "POST",
            SEARCH,
            json_ct.to_vec(),
            br#"{"vector": "x", "k": 1}"#.to_vec(),
            400,
            "invalid type",
        ),
        (
            "unknown body key",
            "POST",
            SEARCH,
            json_ct.to_vec(),
            br#"{"vector": [0,0,0,0], "k": 1, "kk": 2}"#.to_vec(),
            400,
            "kk",
        ),
    ];
    for (what, method, path, headers, body, want, needle) in cases {
        let (code, ctype, text) = request(&n.http, method, path, &headers, &body).expect(what);
        assert_eq!(code, want, "{what}: {text:?}");
        let m = error_message(code, &ctype, &text);
        assert!(
            m.contains(needle),
            "{what}: {m:?} should contain {needle:?}"
        );
    }
    // 413: a body over the 64 MiB limit.
    let big = vec![b' '; (64 << 20) + 1024];
    let (code, ctype, text) = request(&n.http, "POST", POINTS, &json_ct, &big).expect("413");
    assert_eq!(code, 413, "{text:?}");
    error_message(code, &ctype, &text);
}

// ---------------------------------------------------------------- session tokens

fn far_token(index: u64) -> pb::ConsistencyToken {
    pb::ConsistencyToken {
        shards: vec![pb::ShardIndex {
            shard: 0,
            applied_index: index,
        }],
        ..Default::default()
    }
}

fn session_count(token: pb::ConsistencyToken) -> pb::CountRequest {
    pb::CountRequest {
        consistency: pb::Consistency::Session as i32,
        token: Some(token),
        ..Default::default()
    }
}

fn points(n: u32, prefix: &str) -> Vec<pb::Point> {
    (0..n)
        .map(|i| pb::Point {
            id: format!("{prefix}{i}"),
            vector: vec![i as f32, 1.0],
            payload_json: None,
        })
        .collect()
}

/// A token naming a log index nobody wrote is refused at once (INVALID_ARGUMENT / 400 naming
/// the index) through the leader and through a follower, over gRPC and HTTP (before: a 5 s
/// wait, then "unavailable, retry"); a token of another index or shard layout is refused.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_beyond_the_log_or_of_another_index_are_refused() {
    let _serial = procs::serial().await;
    let c = procs::Cluster::start(1, 3, 2);
    procs::with_timeout(Duration::from_secs(120), async {
        let leader = c.wait_leader(0, None).await;
        let follower = (leader + 1) % 3;
        let w = c
            .node(0, leader)
            .points()
            .upsert(pb::UpsertRequest {
                points: points(10, "p"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let token = w.token.unwrap();
        for id in [leader, follower] {
            let t = Instant::now();
            let err = c
                .node(0, id)
                .points()
                .count(session_count(far_token(1_000_000)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "node {id}: {err:?}");
            assert!(err.message().contains("1000000"), "{err:?}");
            assert!(t.elapsed() < Duration::from_secs(3), "not at once: {:?}", t.elapsed());
        }
        let (code, body) = procs::http_post(
            &c.node(0, follower).http,
            "/v1/indexes/default/search",
            r#"{"vector": [1, 1], "k": 1, "consistency": "session", "token": {"shards": [{"shard": 0, "appliedIndex": 999999}]}}"#,
        )
        .unwrap();
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("999999"), "{body}");

        // The real token still reads; a copy naming another index or layout does not.
        let n = c.node(0, follower).points().count(session_count(token.clone())).await.unwrap();
        assert_eq!(n.into_inner().count, 10);
        let mut json_token = json!({
            "shards": [{"shard": 0, "appliedIndex": token.shards[0].applied_index}],
        });
        json_token["index"] = json!("products");
        let body = json!({"vector": [1, 1], "k": 1, "consistency": "session", "token": json_token});
        let (code, text) =
            procs::http_post(&c.node(0, leader).http, "/v1/indexes/default/search", &body.to_string())
                .unwrap();
        assert_eq!(code, 400, "{text}");
        assert!(text.contains("products"), "{text}");
        json_token["index"] = json!("default");
        json_token["shardCount"] = json!(4);
        let body = json!({"vector": [1, 1], "k": 1, "consistency": "session", "token": json_token});
        let (code, text) =
            procs::http_post(&c.node(0, leader).http, "/v1/indexes/default/search", &body.to_string())
                .unwrap();
        assert_eq!(code, 400, "{text}");
        assert!(text.contains("4 shards"), "{text}");
    })
    .await;
}

/// A just-acknowledged token read through a follower that has not received the write yet
/// still waits (or is served by the leader) and succeeds: the refusal above is only for
/// indexes beyond the leader's log.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_token_through_a_lagging_follower_succeeds() {
    let _serial = procs::serial().await;
    let c = procs::Cluster::start(1, 3, 2);
    procs::with_timeout(Duration::from_secs(120), async {
        let leader = c.wait_leader(0, None).await;
        let lagging = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        // Cut the follower off; the leader and the other follower still form a quorum.
        c.cut_links(0, lagging, &[leader, other]).await;
        let w = c
            .node(0, leader)
            .points()
            .upsert(pb::UpsertRequest {
                points: points(5, "lag"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let token = w.token.unwrap();
        let applied =
            |s: Option<pb::StatusResponse>| s.and_then(|s| s.applied).map_or(0, |l| l.index);
        assert!(
            applied(c.node(0, lagging).status().await) < token.shards[0].applied_index,
            "the follower must not have the write yet"
        );
        // Heal after a second, while the read is in flight.
        let heal = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.cut_links(0, lagging, &[]).await;
        };
        let read = async {
            let mut req = tonic::Request::new(pb::GetRequest {
                ids: vec!["lag0".into(), "lag4".into()],
                consistency: pb::Consistency::Session as i32,
                token: Some(token.clone()),
                ..Default::default()
            });
            // Served by this replica (not spread over replicas by its coordinator).
            req.metadata_mut()
                .insert("kindex-shard-local", "0".parse().unwrap());
            c.node(0, lagging).points().get(req).await
        };
        let (_, got) = tokio::join!(heal, read);
        let got = got.unwrap().into_inner();
        assert_eq!(got.points.len(), 2, "{got:?}");
        // Through the follower's HTTP API (its coordinator) as well.
        let body = json!({"ids": ["lag1"], "consistency": "session", "token": {
            "shards": [{"shard": 0, "appliedIndex": token.shards[0].applied_index}]}});
        let (code, text) = procs::http_post(
            &c.node(0, lagging).http,
            "/v1/indexes/default/points/get",
            &body.to_string(),
        )
        .unwrap();
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("lag1"), "{text}");
    })
    .await;
}
