//! Three replicas initialized by the Admin `Initialize` RPC replicate writes (equal content
//! checksums), followers forward writes and linearizable reads, sessions read their writes; a
//! graceful stop hands leadership over and the node rejoins from its data dir.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use procs::http_post;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_replicate_forward_and_read_their_writes() {
    let _serial = serial().await;
    let mut c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        let t = Instant::now();
        wait_answering(&c, &[0, 1, 2]).await;
        // Not initialized yet: no leader, not ready, writes refused.
        let s = c.node(0, 1).status().await.unwrap();
        assert!(!s.initialized && s.leader_id.is_none(), "{s:?}");
        assert_eq!(http_get(&c.node(0, 1).http, "/readyz").unwrap().0, 503);
        let err = upsert(c.node(0, 1), batch("x", 0, 1)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

        initialize(&c, 0, &[0, 1, 2]).await;
        let again = c
            .node(0, 0)
            .admin()
            .initialize(pb::InitializeRequest { members: vec![] })
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
        let leader = wait_leader(&c, None).await;
        eprintln!("leader {leader} elected {:?} after start", t.elapsed());
        let follower = (leader + 1) % 3;

        // Through the leader and through a follower (forwarded).
        let mut last = 0;
        for b in 0..10 {
            let via = if b % 2 == 0 { leader } else { follower };
            let w = upsert(c.node(0, via), batch("p", b * 50, 50))
                .await
                .unwrap();
            assert_eq!(w.affected, 50);
            last = token_index(&w);
        }
        let d = c
            .node(0, follower)
            .points()
            .delete(pb::DeleteRequest {
                index: String::new(),
                ids: vec!["p0".into(), "p1".into(), "nope".into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.affected, 2);
        assert!(token_index(&d) > last);

        // The REST mirror writes through Raft too (forwarded by a follower).
        let (code, body) = http_post(
            &c.node(0, follower).http,
            "/v1/indexes/default/points",
            r#"{"points": [{"id": "h0", "vector": [1, 2, 3, 4], "payload": {"k": "v"}}]}"#,
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(r#""affected":1"#) && body.contains("appliedIndex"),
            "{body}"
        );
        let (code, body) = http_post(
            &c.node(0, follower).http,
            "/v1/indexes/default/points/delete",
            r#"{"ids": ["h0"]}"#,
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""affected":1"#), "{body}");

        // Invalid input is refused before it reaches the log, on any node.
        let bad = upsert(
            c.node(0, follower),
            vec![pb::Point {
                id: "bad".into(),
                vector: vec![1.0, f32::NAN, 0.0, 0.0],
                payload_json: None,
            }],
        )
        .await
        .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

        // A forwarded request is not forwarded again: a follower names the leader.
        let mut req = tonic::Request::new(pb::UpsertRequest {
            index: String::new(),
            points: batch("f", 0, 1),
        });
        req.metadata_mut()
            .insert("kindex-forwarded", "9".parse().unwrap());
        let err = points_client_call(c.node(0, follower), req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            err.metadata()
                .get("kindex-leader-id")
                .unwrap()
                .to_str()
                .unwrap(),
            leader.to_string()
        );
        assert_eq!(
            err.metadata()
                .get("kindex-leader")
                .unwrap()
                .to_str()
                .unwrap(),
            c.node(0, leader).grpc_addr()
        );

        // Session: a follower answers once it applied the token's index.
        let w = upsert(c.node(0, leader), batch("s", 0, 1)).await.unwrap();
        let other = (leader + 2) % 3;
        let got = c
            .node(0, other)
            .points()
            .get(pb::GetRequest {
                ids: vec!["s0".into()],
                consistency: pb::Consistency::Session as i32,
                token: w.token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.points.len(), 1);
        // Linearizable on a follower: forwarded to the leader.
        let n = c
            .node(0, follower)
            .points()
            .count(pb::CountRequest {
                consistency: pb::Consistency::Linearizable as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(n, 499);
        // A token from the future (beyond the leader's log): refused at once.
        let far = pb::ConsistencyToken {
            shards: vec![pb::ShardIndex {
                shard: 0,
                applied_index: 1_000_000,
            }],
            ..Default::default()
        };
        let err = c
            .node(0, other)
            .points()
            .count(pb::CountRequest {
                consistency: pb::Consistency::Session as i32,
                token: Some(far),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

        let (applied, sum) = converge(&c, token_index(&w)).await;
        eprintln!(
            "converged at {applied}, checksum {sum:016x}, {:?} after start",
            t.elapsed()
        );
        for id in 0..3 {
            let s = c.node(0, id).status().await.unwrap();
            assert_eq!(s.vectors_live, 499, "node {id}: {s:?}");
            assert_eq!(s.members.len(), 3, "{s:?}");
            assert!(
                s.members.iter().all(|m| m.voter && m.addr.contains('|')),
                "{s:?}"
            );
            assert_eq!(s.role, if id == leader { "leader" } else { "follower" });
            assert!(s.initialized);
        }
        // Metrics of the Raft layer.
        let lag = http_get(&c.node(0, leader).http, "/metrics").unwrap().1;
        assert!(
            lag.contains("kindex_raft_replication_lag_entries{follower="),
            "{lag}"
        );
        assert_eq!(c.node(0, leader).metric("kindex_raft_role"), Some(3.0));
        assert!(
            c.node(0, follower)
                .metric("kindex_raft_applied_entries_total")
                .unwrap()
                >= 12.0
        );
        assert!(
            c.node(0, follower)
                .metric("kindex_raft_leader_changes_total")
                .unwrap()
                >= 1.0
        );
        assert!(c.node(0, follower).metric("kindex_raft_log_bytes").unwrap() > 0.0);

        // On-demand snapshot covers everything applied.
        let snap = c
            .node(0, follower)
            .admin()
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(snap.log_id.unwrap().index >= applied, "{snap:?}");
        assert!(snap.bytes > 0 && Path::new(&snap.path).is_dir(), "{snap:?}");

        // Graceful stop of the leader: it hands leadership over (no election timeout), drains
        // the queue, takes a snapshot and exits 0; restarted, it rejoins from its data dir.
        let w = upsert(c.node(0, follower), batch("t", 0, 30))
            .await
            .unwrap();
        let stopped = Instant::now();
        let code = c.nodes[leader as usize].sigterm();
        assert!(code.success(), "{code:?}");
        let next = wait_leader(&c, Some(leader)).await;
        eprintln!(
            "SIGTERM: leader {leader} stopped, node {next} leads {:?} later",
            stopped.elapsed()
        );
        let snaps: Vec<_> = std::fs::read_dir(c.node(0, leader).dir.join("snapshots"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
            .collect();
        assert!(
            !snaps.is_empty()
                && snaps
                    .iter()
                    .all(|e| e.path().join("manifest.sect").is_file())
        );
        c.restart(0, leader);
        let (applied, _) = converge(&c, token_index(&w)).await;
        assert!(applied >= token_index(&w));
        let s = c.node(0, leader).status().await.unwrap();
        assert_eq!(s.vectors_live, 529, "{s:?}");
        eprintln!("test done in {:?}", t.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_without_quorum_refuses_writes_at_once_and_recovers() {
    let _serial = serial().await;
    let mut c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        upsert(c.node(0, leader), batch("before", 0, 20))
            .await
            .unwrap();

        // Both followers die: the leader still believes it leads, but no write can commit.
        let followers: Vec<u64> = (0..3).filter(|&i| i != leader).collect();
        for &f in &followers {
            c.kill(0, f);
        }
        // Past QUORUM_LOST_AFTER (5 s) without a majority's acknowledgement.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let t = Instant::now();
        let err = upsert_local(
            c.node(0, leader),
            batch("refused", 0, 1),
            Duration::from_secs(40),
        )
        .await
        .expect_err("a leader without quorum acknowledged a write");
        let took = t.elapsed();
        eprintln!(
            "write without quorum: {:?} {} after {took:?}",
            err.code(),
            err.message()
        );
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains("lost its quorum") && err.message().contains("not proposed"),
            "{err:?}"
        );
        // At once, not after the 30 s commit timeout.
        assert!(took < Duration::from_secs(3), "refused after {took:?}");

        // The followers come back: writes commit again, and the refused one was never applied.
        for &f in &followers {
            c.restart(0, f);
        }
        wait_answering(&c, &followers).await;
        let leader = wait_leader(&c, None).await;
        let w = wait_for("writes commit again", WAIT, || async {
            upsert(c.node(0, leader), batch("after", 0, 20)).await.ok()
        })
        .await;
        converge(&c, token_index(&w)).await;
        for id in 0..3 {
            assert_eq!(present(c.node(0, id), &["refused0".to_string()]).await, 0);
            let s = c.node(0, id).status().await.unwrap();
            assert_eq!(s.vectors_live, 40, "node {id}: {s:?}");
        }
    })
    .await;
}
