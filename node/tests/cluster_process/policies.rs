//! Policies replicated through Raft (issue 16): a quota holds exactly under concurrent writers
//! through every replica and both APIs, a quota change racing writes is settled by log order,
//! versions survive restarts and a snapshot install onto a wiped replica, and the leader holds
//! policy changes back until every member reports it applies them (an older build does not).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use procs::http_post;

const QUOTA: &str = "cap";

pub(super) fn put(name: &str, json: &str) -> pb::PolicyWriteRequest {
    pb::PolicyWriteRequest {
        name: name.into(),
        change: pb::PolicyChange::Put as i32,
        policy_json: json.into(),
        actor: "cluster-test".into(),
        ..Default::default()
    }
}

fn quota(n: u64) -> String {
    format!(r#"{{"kind":"quota","maxVectors":{n}}}"#)
}

/// A policy change through node `via`, retried while the leader waits for members' feature
/// reports (the first second after an election) or an election runs.
pub(super) async fn change(
    c: &Cluster,
    via: u64,
    req: pb::PolicyWriteRequest,
) -> Result<pb::PolicyWriteResponse, tonic::Status> {
    let deadline = Instant::now() + WAIT;
    loop {
        match c.node(0, via).admin().change_policy(req.clone()).await {
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Unavailable
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r.map(|r| r.into_inner()),
        }
    }
}

pub(super) async fn policies(p: &Proc) -> (serde_json::Value, u64) {
    let r = p
        .admin()
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    (serde_json::from_str(&r.store_json).unwrap(), r.checksum)
}

/// Every running replica reports the same policy checksum (after applying `at_least`).
pub(super) async fn policies_converge(c: &Cluster, at_least: u64) -> serde_json::Value {
    converge(c, at_least).await;
    let mut seen: Option<(serde_json::Value, u64)> = None;
    for id in c.running(0) {
        let got = policies(c.node(0, id)).await;
        if let Some(s) = &seen {
            assert_eq!(s.1, got.1, "policy checksums differ: {} vs {}", s.0, got.0);
        }
        seen = Some(got);
    }
    seen.unwrap().0
}

/// One acknowledged single-point write: its id and the log index it was applied at.
type Acked = (String, u64);

/// Writer `w`: single new points, round-robin start on node `w % 3`, gRPC or (odd writers) HTTP,
/// until `per_writer` ids were tried. A quota refusal must name the policy; other errors are
/// retried on the next node with the same id (an upsert is idempotent).
fn spawn_quota_writer(
    c: &Cluster,
    w: u64,
    prefix: &'static str,
    per_writer: u64,
) -> tokio::task::JoinHandle<(Vec<Acked>, u64)> {
    let nodes: Vec<(String, String)> = c
        .nodes
        .iter()
        .map(|p| (p.grpc_url(), p.http.clone()))
        .collect();
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut refused = 0;
        for i in 0..per_writer {
            let id = format!("{prefix}{w}-{i}");
            let mut at = w as usize;
            for attempt in 0.. {
                assert!(attempt < 50, "writer {w}: {id} never answered");
                let (grpc, http) = &nodes[at % nodes.len()];
                let res: Result<u64, (bool, String)> = if w.is_multiple_of(2) {
                    let mut client = PointsClient::new(
                        tonic::transport::Endpoint::from_shared(grpc.clone())
                            .unwrap()
                            .connect_lazy(),
                    );
                    let mut req = tonic::Request::new(pb::UpsertRequest {
                        index: String::new(),
                        points: vec![pb::Point {
                            id: id.clone(),
                            vector: vec![w as f32, i as f32, 1.0, 2.0],
                            payload_json: None,
                        }],
                    });
                    req.set_timeout(Duration::from_secs(10));
                    match client.upsert(req).await {
                        Ok(r) => Ok(token_index(&r.into_inner())),
                        Err(s) => Err((
                            s.code() == tonic::Code::ResourceExhausted
                                && s.metadata().contains_key("kindex-quota-exceeded"),
                            s.message().to_string(),
                        )),
                    }
                } else {
                    let (http, id2) = (http.clone(), id.clone());
                    let body = format!(r#"{{"points":[{{"id":"{id2}","vector":[{w},{i},1,2]}}]}}"#);
                    let r = tokio::task::spawn_blocking(move || {
                        http_post(&http, "/v1/indexes/default/points", &body)
                    })
                    .await
                    .unwrap();
                    match r {
                        Some((200, body)) => {
                            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                            Ok(v["token"]["shards"][0]["appliedIndex"]
                                .as_u64()
                                .unwrap_or_else(|| panic!("{body}")))
                        }
                        Some((code, body)) => {
                            let v: serde_json::Value =
                                serde_json::from_str(&body).unwrap_or_default();
                            let msg = v["error"]["message"].as_str().unwrap_or(&body).to_string();
                            Err((code == 429 && v["error"]["code"] == "quota_exceeded", msg))
                        }
                        None => Err((false, "no answer".into())),
                    }
                };
                match res {
                    Ok(index) => {
                        acked.push((id.clone(), index));
                        break;
                    }
                    Err((true, msg)) => {
                        assert!(
                            msg.contains(&format!("\"{QUOTA}\"")),
                            "a quota refusal names the policy: {msg}"
                        );
                        refused += 1;
                        break;
                    }
                    Err((false, msg)) => {
                        assert!(
                            !msg.contains("quota"),
                            "a quota refusal with the wrong code: {msg}"
                        );
                        at += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        (acked, refused)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_holds_exactly_under_concurrent_writers_and_log_order_settles_changes() {
    let _serial = serial().await;
    let c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        let follower = (leader + 1) % 3;

        // Set through a follower: forwarded to the leader, stamped there.
        let v = change(&c, follower, put(QUOTA, &quota(250))).await.unwrap();
        assert_eq!(v.version, 1);

        // Phase 1: 8 writers (4 gRPC, 4 HTTP) through all 3 nodes, 60 new ids each.
        let writers: Vec<_> = (0..8).map(|w| spawn_quota_writer(&c, w, "a", 60)).collect();
        let mut acked = Vec::new();
        let mut refused = 0;
        for h in writers {
            let (a, r) = h.await.unwrap();
            acked.extend(a);
            refused += r;
        }
        assert_eq!(acked.len(), 250, "acknowledged writes under a quota of 250");
        assert_eq!(refused, 480 - 250);
        let last = acked.iter().map(|a| a.1).max().unwrap();
        let store = policies_converge(&c, last).await;
        for id in c.running(0) {
            let s = c.node(0, id).status().await.unwrap();
            assert_eq!(s.vectors_live, 250, "node {id}: {s:?}");
        }
        let ids: Vec<String> = acked.iter().map(|a| a.0.clone()).collect();
        for id in c.running(0) {
            assert_eq!(present(c.node(0, id), &ids).await, 250, "node {id}");
        }
        let counters = &store["policies"][QUOTA]["counters"];
        let (allowed, rejected, evaluated) = (
            counters["allowed"].as_u64().unwrap(),
            counters["rejected"].as_u64().unwrap(),
            counters["evaluated"].as_u64().unwrap(),
        );
        assert!(allowed >= 250 && evaluated == allowed + rejected, "{counters}");
        let prechecked: f64 = c.running(0).iter().filter_map(|&id| c.node(0, id).metric("kindex_policy_precheck_rejections_total")).sum();
        eprintln!("quota 250: 250 acknowledged, {refused} refused ({rejected} at apply, {prechecked} by the leader's pre-check)");

        // Phase 2: raise to 400, 8 writers again (320 new ids), and lower it to 40 above the
        // count while they run. Log order decides: every write ordered after the lowering
        // leaves at most the new limit, every one before it at most 400, and the writers end
        // at exactly max(new limit, the count when it was lowered).
        let raised = change(&c, leader, put(QUOTA, &quota(400))).await.unwrap();
        assert_eq!(raised.version, 2);
        let writers: Vec<_> = (0..8).map(|w| spawn_quota_writer(&c, w, "b", 40)).collect();
        let seen = wait_for("phase 2 writes flowing", WAIT, || async {
            let n = c.node(0, leader).status().await?.vectors_live;
            (n >= 260).then_some(n)
        })
        .await;
        // Above the count (writes go on after it), below where the writers would end.
        let limit = seen + 40;
        let lowered = change(&c, follower, put(QUOTA, &quota(limit)))
            .await
            .unwrap();
        assert_eq!(lowered.version, 3);
        let mut acked2 = Vec::new();
        for h in writers {
            acked2.extend(h.await.unwrap().0);
        }
        acked2.sort_by_key(|a| a.1);
        let (mut before, mut after) = (0u64, 0u64);
        for (rank, (id, index)) in acked2.iter().enumerate() {
            let count = 250 + rank as u64 + 1;
            if *index > lowered.applied_index {
                after += 1;
                assert!(
                    count <= limit,
                    "{id} applied at {index}, after the quota was lowered at {}, made {count} points",
                    lowered.applied_index
                );
            } else {
                before += 1;
                assert!(count <= 400, "{id} made {count} points");
            }
        }
        let total = 250 + acked2.len() as u64;
        assert_eq!(total, (250 + before).max(limit), "{before} writes before the lowering, {after} after");
        let last = acked2
            .last()
            .map_or(lowered.applied_index, |a| a.1.max(lowered.applied_index));
        let store = policies_converge(&c, last).await;
        for id in c.running(0) {
            assert_eq!(c.node(0, id).status().await.unwrap().vectors_live, total);
        }
        eprintln!(
            "lowered to {limit} at index {} with {} points: {before} writes before it, {after} after, {total} in the end",
            lowered.applied_index,
            250 + before
        );
        assert_eq!(store["policies"][QUOTA]["latest"], 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_versions_survive_restarts_and_a_snapshot_install() {
    let _serial = serial().await;
    let mut c = cluster(3, 3, &["--raft-log-keep", "5"]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        let follower = (leader + 1) % 3;
        for i in 1..=12u64 {
            let w = change(&c, i % 3, put("q", &quota(1000 + i))).await.unwrap();
            assert_eq!(w.version, i);
        }
        let del = pb::PolicyWriteRequest {
            change: pb::PolicyChange::Delete as i32,
            ..put("q", "")
        };
        assert_eq!(change(&c, follower, del.clone()).await.unwrap().version, 13);
        let gone = change(&c, follower, del).await.unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
        let restore = pb::PolicyWriteRequest {
            change: pb::PolicyChange::Restore as i32,
            restore_version: 5,
            ..put("q", "")
        };
        assert_eq!(change(&c, leader, restore).await.unwrap().version, 14);
        let mut stale = put("q", &quota(700));
        stale.expected_version = Some(13);
        let e = change(&c, leader, stale.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
        assert!(e.message().contains("expected version 13"), "{e:?}");
        stale.expected_version = Some(14);
        assert_eq!(change(&c, leader, stale).await.unwrap().version, 15);
        let mut from_cr = put("q", &quota(800));
        from_cr.from_resource = true;
        let e = change(&c, leader, from_cr).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
        let bad = change(&c, leader, put("q", r#"{"kind":"quota","maxVector":3}"#))
            .await
            .unwrap_err();
        assert!(
            bad.code() == tonic::Code::InvalidArgument && bad.message().contains("maxVector"),
            "{bad:?}"
        );
        let unknown = change(&c, leader, put("r", r#"{"kind":"ttl","maxAgeSeconds":60}"#))
            .await
            .unwrap_err();
        assert!(unknown.message().contains("not known"), "{unknown:?}");

        let w = upsert(c.node(0, leader), batch("p", 0, 10)).await.unwrap();
        let before = policies_converge(&c, token_index(&w)).await;
        let h = &before["policies"]["q"];
        let kept: Vec<u64> = h["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        assert_eq!(kept, (6..=15).collect::<Vec<_>>(), "{h}");
        let v14 = &h["versions"][8];
        assert_eq!(
            (
                v14["restoredFrom"].as_u64(),
                v14["actor"].as_str(),
                v14["source"].as_str()
            ),
            (Some(5), Some("cluster-test"), Some("api")),
            "{v14}"
        );
        assert!(
            v14["stampMs"].as_u64().unwrap() > 1_700_000_000_000
                && v14["logIndex"].as_u64().unwrap() > 0,
            "{v14}"
        );
        let (_, sum) = policies(c.node(0, leader)).await;

        // A snapshot, the log behind it purged, and a follower that lost its volume installs it.
        let snap = c
            .node(0, leader)
            .admin()
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        let snap_index = snap.log_id.unwrap().index;
        wait_for("log purged", WAIT, || async {
            c.node(0, leader)
                .metric("kindex_raft_purged_index")
                .filter(|p| *p > 10.0)
                .map(drop)
        })
        .await;
        let lost = follower;
        c.kill(0, lost);
        let voters: Vec<u64> = (0..3).filter(|&i| i != lost).collect();
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest {
                voters,
                retain: false,
            })
            .await
            .unwrap();
        std::fs::remove_dir_all(&c.node(0, lost).dir).unwrap();
        c.restart(0, lost);
        wait_answering(&c, &[lost]).await;
        c.node(0, leader)
            .admin()
            .add_learner(pb::AddLearnerRequest {
                member: Some(pb::Member {
                    node_id: lost,
                    addr: c.node(0, lost).member_addr(),
                    voter: false,
                }),
                blocking: true,
            })
            .await
            .unwrap();
        wait_for("the learner installed the snapshot", WAIT, || async {
            let s = c.node(0, lost).status().await?;
            (s.snapshot?.index >= snap_index).then_some(())
        })
        .await;
        assert_eq!(
            policies(c.node(0, lost)).await.1,
            sum,
            "policies after a snapshot install"
        );
        assert!(
            std::fs::read_dir(c.node(0, lost).dir.join("snapshots"))
                .unwrap()
                .flatten()
                .any(|d| d.path().join("policies.sect").exists()),
            "the snapshot carries a policy section"
        );
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![0, 1, 2],
                retain: false,
            })
            .await
            .unwrap();

        // The whole group killed and restarted: the same store, from snapshot + log. (Each
        // upsert is counted by the quota, so compare before any new one.)
        let w = upsert(c.node(0, leader), batch("p", 100, 10))
            .await
            .unwrap();
        policies_converge(&c, token_index(&w)).await;
        let (_, sum) = policies(c.node(0, leader)).await;
        for id in 0..3 {
            c.kill(0, id);
        }
        for id in 0..3 {
            c.restart(0, id);
        }
        wait_answering(&c, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        policies_converge(&c, token_index(&w)).await;
        assert_eq!(
            policies(c.node(0, leader)).await.1,
            sum,
            "policies after restarting every replica"
        );
        // The HTTP view of the same store, on the data port.
        let (code, body) = http_get(&c.node(0, lost).http, "/v1/indexes/default/policies").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("{sum:016x}")), "{body}");
    })
    .await;
}

/// The `kindex-node` of release v0.1.0 (built by scripts/compat-node.sh, which the README's
/// test command runs).
fn v010_binary() -> std::path::PathBuf {
    let path = std::env::var("KINDEX_NODE_V010_BIN").unwrap_or_else(|_| {
        panic!(
            "KINDEX_NODE_V010_BIN is not set: run `export KINDEX_NODE_V010_BIN=$(bash scripts/compat-node.sh v0.1.0)` \
             (scripts/test.sh does)"
        )
    });
    let path = std::path::PathBuf::from(path);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_changes_wait_for_a_replica_of_an_older_build() {
    let _serial = serial().await;
    let mut c = cluster(3, 2, &[]);
    // v0.1.0 serves Admin on its data port and reads member addresses as `raft|grpc` (the form
    // the operator uses: host names with the default ports; new builds derive the Admin port).
    let two_part = |p: &Proc| format!("{0}:{1}|{0}:{2}", p.ip, p.raft, p.grpc);
    let peers: Vec<String> = c
        .nodes
        .iter()
        .map(|p| format!("{}={}", p.id, two_part(p)))
        .collect();
    let current = c.node(0, 2).args.clone();
    let old = c.node_mut(0, 2);
    let mut args = Vec::new();
    let mut it = current.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--admin-port" => drop(it.next()),
            "--peers" => {
                it.next();
                args.extend(["--peers".to_string(), peers.join(",")]);
            }
            _ => args.push(a.clone()),
        }
    }
    old.args = args;
    old.admin_port = old.grpc;
    old.binary = Some(v010_binary());
    c.restart(0, 2);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        let members = c
            .nodes
            .iter()
            .map(|p| pb::Member {
                node_id: p.id,
                addr: two_part(p),
                voter: true,
            })
            .collect();
        c.node(0, 0)
            .admin()
            .initialize(pb::InitializeRequest { members })
            .await
            .unwrap();
        let mut leader = wait_leader(&c, None).await;
        if leader == 2 {
            // The old build cannot propose policies at all; the gate is on current leaders.
            c.node(0, 2)
                .admin()
                .transfer_leader(pb::TransferLeaderRequest { to: 0 })
                .await
                .unwrap();
            leader = wait_leader(&c, Some(2)).await;
        }
        // Mixed versions serve writes, through every replica.
        let mut last = 0;
        for (b, via) in [0u64, 1, 2, 0, 1, 2].into_iter().enumerate() {
            let w = upsert(c.node(0, via), batch("m", b as u64 * 20, 20))
                .await
                .unwrap();
            last = token_index(&w);
        }
        // Give the members time to report (once a second), then: refused, naming node 2.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for via in [leader, 2] {
            let e = c
                .node(0, via)
                .admin()
                .change_policy(put(QUOTA, &quota(100)))
                .await
                .unwrap_err();
            if via == 2 {
                // The old build does not know the RPC.
                assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
                continue;
            }
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(
                e.message().contains("node(s) 2 ") && e.message().contains("policy-v1"),
                "{e:?}"
            );
        }
        let (_, sum) = converge(&c, last).await;
        for id in 0..3 {
            // v0.1.0 exports the gauge too.
            assert_eq!(c.node(0, id).metric("kindex_raft_diverged"), Some(0.0), "node {id}");
            assert_eq!(http_get(&c.node(0, id).http, "/readyz").unwrap().0, 200, "node {id}");
        }
        assert_eq!(policies(c.node(0, 0)).await, policies(c.node(0, 1)).await);

        // Node 2 upgraded in place (same data dir): policy changes go through, every replica
        // applies them, nothing diverged.
        c.kill(0, 2);
        let upgraded = c.node_mut(0, 2);
        upgraded.binary = None;
        upgraded.args = current.clone();
        upgraded.admin_port = 7072;
        c.restart(0, 2);
        wait_answering(&c, &[2]).await;
        let w = change(&c, 2, put(QUOTA, &quota(100))).await.unwrap();
        assert_eq!(w.version, 1);
        let store = policies_converge(&c, w.applied_index).await;
        assert_eq!(store["policies"][QUOTA]["latest"], 1);
        let e = upsert(c.node(0, 2), batch("over", 0, 1)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        for id in 0..3 {
            assert_eq!(c.node(0, id).metric("kindex_raft_diverged"), Some(0.0), "node {id}");
        }
        eprintln!("mixed versions: writes served, policy refused until the upgrade; data checksum {sum:016x}");
    })
    .await;
}

/// kill -9 of the shard leader while policy changes flow (and points are written): every
/// acknowledged version is on every replica with the content it was acknowledged with, and
/// the replicas' stores are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_mid_policy_updates_loses_no_acknowledged_version() {
    let _serial = serial().await;
    let mut c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let mut leader = wait_leader(&c, None).await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<parking_lot::Mutex<Vec<(u64, u64)>>> = Arc::default();
        let admins: Vec<String> = c.nodes.iter().map(Proc::admin_url).collect();
        let updater = {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let (mut i, mut at, mut failed) = (0u64, 0usize, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let mut client = pb::admin_client::AdminClient::new(
                        tonic::transport::Endpoint::from_shared(admins[at % 3].clone())
                            .unwrap()
                            .connect_timeout(Duration::from_millis(500))
                            .connect_lazy(),
                    );
                    let mut req = tonic::Request::new(put("q", &quota(1000 + i)));
                    req.set_timeout(Duration::from_secs(5));
                    match client.change_policy(req).await {
                        Ok(r) => {
                            acked.lock().push((r.into_inner().version, 1000 + i));
                            i += 1;
                        }
                        // Unknown outcome or refused: try the same content elsewhere (a
                        // repeated put makes no version, so a retry cannot double it).
                        Err(_) => {
                            failed += 1;
                            at += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                failed
            })
        };
        let writer = spawn_writer(
            c.nodes.iter().map(Proc::grpc_url).collect(),
            stop.clone(),
            Arc::default(),
        );
        for cycle in 0..3 {
            let before = acked.lock().len();
            wait_for("policy updates flowing", WAIT, || async {
                (acked.lock().len() >= before + 10).then_some(())
            })
            .await;
            c.kill(0, leader);
            let next = wait_leader(&c, Some(leader)).await;
            c.restart(0, leader);
            eprintln!("cycle {cycle}: killed leader {leader}, new leader {next}");
            leader = next;
        }
        let before = acked.lock().len();
        wait_for("policy updates after the last kill", WAIT, || async {
            (acked.lock().len() >= before + 10).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let failed = updater.await.unwrap();
        writer.await.unwrap();
        wait_answering(&c, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        let w = upsert(c.node(0, leader), batch("end", 0, 1)).await.unwrap();
        let store = policies_converge(&c, token_index(&w)).await;
        let h = &store["policies"]["q"];
        let kept: std::collections::HashMap<u64, u64> = h["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["version"].as_u64().unwrap(), v["policy"]["maxVectors"].as_u64().unwrap()))
            .collect();
        let acked = acked.lock().clone();
        let newest = acked.iter().map(|a| a.0).max().unwrap();
        assert!(h["latest"].as_u64().unwrap() >= newest, "{h}");
        let mut checked = 0;
        for (version, max) in &acked {
            if let Some(kept_max) = kept.get(version) {
                assert_eq!(kept_max, max, "version {version} was acknowledged with {max}");
                checked += 1;
            }
        }
        assert!(checked >= 5, "{checked} acknowledged versions still kept");
        // Acknowledged versions are increasing in the order they were acknowledged.
        assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "{acked:?}");
        eprintln!(
            "{} policy versions acknowledged across 3 leader kills ({failed} attempts failed), newest {newest}; stores equal",
            acked.len()
        );
    })
    .await;
}

fn tenant_is(t: &str) -> Option<pb::Filter> {
    Some(pb::Filter {
        must: vec![pb::Condition {
            field: "tenant".into(),
            kind: Some(pb::condition::Kind::Match(pb::Match {
                value: Some(pb::r#match::Value::Text(t.into())),
            })),
        }],
        ..Default::default()
    })
}

fn search(k: u32, filter: Option<pb::Filter>) -> pb::SearchRequest {
    pb::SearchRequest {
        vector: vec![1.0, 1.0, 1.0, 1.0],
        k,
        filter,
        with_payload: true,
        ..Default::default()
    }
}

/// Schema and searchDefaults on a 3-replica shard: a write breaking the schema is refused
/// naming the field, through a follower too, and no replica stores it; every replica enforces
/// the search caps and the required tenant filter, so another tenant's points never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_and_search_defaults_hold_on_every_replica() {
    let _serial = serial().await;
    let c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(120), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        let follower = (leader + 1) % 3;
        let schema = r#"{"kind":"schema","maxPayloadBytes":200,"fields":{"tenant":{"type":"string","required":true}}}"#;
        change(&c, follower, put("shape", schema)).await.unwrap();

        let point = |id: &str, payload: Option<&str>| pb::Point {
            id: id.into(),
            vector: vec![1.0, 1.0, 1.0, 1.0],
            payload_json: payload.map(str::to_string),
        };
        let upsert = |points| pb::UpsertRequest {
            index: String::new(),
            points,
        };
        for (bad, want) in [
            (point("x1", Some(r#"{"other":1}"#)), "\"tenant\""),
            (point("x2", Some(r#"{"tenant":7}"#)), "must be a string"),
            (point("x3", None), "\"tenant\""),
        ] {
            for via in [leader, follower] {
                let e = c
                    .node(0, via)
                    .points()
                    .upsert(upsert(vec![point("ok0", Some(r#"{"tenant":"a"}"#)), bad.clone()]))
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
                assert!(
                    e.message().contains(want) && e.message().contains("\"shape\""),
                    "{e:?}"
                );
            }
        }
        let mut last = 0;
        for i in 0..20 {
            let t = if i % 2 == 0 { "a" } else { "b" };
            let r = c
                .node(0, i % 3)
                .points()
                .upsert(upsert(vec![point(
                    &format!("p{i}"),
                    Some(&format!(r#"{{"tenant":"{t}"}}"#)),
                )]))
                .await
                .unwrap()
                .into_inner();
            last = last.max(token_index(&r));
        }
        let rules = r#"{"kind":"searchDefaults","maxK":5,"maxEfSearch":32,"requireMatch":["tenant"]}"#;
        let v = change(&c, follower, put("isolation", rules)).await.unwrap();
        let store = policies_converge(&c, last.max(v.applied_index)).await;
        assert_eq!(
            store["policies"]["shape"]["counters"]["rejected"].as_u64(),
            Some(0),
            "the leader's pre-check refused the bad writes before they were proposed"
        );
        for id in c.running(0) {
            let n = c.node(0, id);
            assert_eq!(n.status().await.unwrap().vectors_live, 20, "node {id}");
            assert_eq!(present(n, &["ok0".to_string()]).await, 0, "node {id}");
            let e = n.points().search(search(3, None)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "node {id}: {e:?}");
            assert!(e.message().contains("\"tenant\""), "{e:?}");
            let e = n.points().search(search(6, tenant_is("a"))).await.unwrap_err();
            assert!(e.message().contains("up to 5"), "node {id}: {e:?}");
            for t in ["a", "b"] {
                let hits = n
                    .points()
                    .search(search(5, tenant_is(t)))
                    .await
                    .unwrap()
                    .into_inner()
                    .hits;
                assert_eq!(hits.len(), 5, "node {id}");
                for h in hits {
                    let p = h.payload_json.unwrap_or_default();
                    assert!(p.contains(&format!("\"{t}\"")), "node {id}: {p}");
                }
            }
        }
    })
    .await;
}

/// A policy call over HTTP on node `via`'s admin port; retried (like [`change`]) while the
/// leader waits for members' feature reports or an election runs (503).
fn admin_http(
    c: &Cluster,
    via: u64,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let addr = c.node(0, via).admin_addr();
        let (code, text) = procs::http_with(&addr, method, path, &[], body)
            .unwrap_or_else(|| panic!("{method} {path} on {addr}: no answer"));
        if code == 503 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {code} {text:?} is not JSON: {e}"));
        return (code, v);
    }
}

/// The policy API over HTTP on the admin port (issue 16): put, compare-and-swap, delete,
/// restore and reads, through a follower and the leader; refusals carry the API's JSON error;
/// the data port serves no change; what HTTP put is in force on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_api_over_http_on_the_admin_port() {
    let _serial = serial().await;
    let c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(120), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        let follower = (leader + 1) % 3;
        let path = "/v1/indexes/default/policies/cap";

        let (code, v) = admin_http(
            &c,
            follower,
            "PUT",
            &format!("{path}?actor=ops"),
            Some(&quota(5)),
        );
        assert_eq!(
            (code, v["version"].as_u64(), v["shard"].as_u64()),
            (200, Some(1), Some(0)),
            "{v}"
        );
        // The same content again makes no version.
        let (code, v) = admin_http(&c, leader, "PUT", path, Some(&quota(5)));
        assert_eq!((code, v["version"].as_u64()), (200, Some(1)), "{v}");
        let (code, v) = admin_http(
            &c,
            follower,
            "PUT",
            &format!("{path}?expectedVersion=0"),
            Some(&quota(7)),
        );
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expected version 0"),
            "{v}"
        );
        let (code, v) = admin_http(
            &c,
            follower,
            "PUT",
            &format!("{path}?expectedVersion=1&actor=ops"),
            Some(&quota(7)),
        );
        assert_eq!((code, v["version"].as_u64()), (200, Some(2)), "{v}");
        let (code, v) = admin_http(
            &c,
            leader,
            "PUT",
            path,
            Some(r#"{"kind":"quota","maxVector":3}"#),
        );
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (400, Some("invalid_argument")),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maxVector"),
            "{v}"
        );
        let (code, v) = admin_http(
            &c,
            leader,
            "PUT",
            &format!("{path}?expectedVersoin=1"),
            Some(&quota(7)),
        );
        assert_eq!(code, 400, "an unknown query parameter is refused: {v}");

        let (code, v) = admin_http(&c, follower, "DELETE", path, None);
        assert_eq!((code, v["version"].as_u64()), (200, Some(3)), "{v}");
        let (code, v) = admin_http(&c, follower, "DELETE", path, None);
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{v}"
        );
        let (code, v) = admin_http(
            &c,
            follower,
            "POST",
            &format!("{path}/restore?actor=ops"),
            Some(r#"{"version":1}"#),
        );
        assert_eq!((code, v["version"].as_u64()), (200, Some(4)), "{v}");
        let (code, v) = admin_http(
            &c,
            follower,
            "GET",
            "/v1/indexes/default/policies/nope",
            None,
        );
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{v}"
        );
        let (code, v) = admin_http(&c, follower, "GET", "/v1/indexes/other/policies", None);
        assert_eq!(code, 404, "another index: {v}");

        // No change on the data port: its HTTP API is read-only for policies.
        let data = c.node(0, leader).http.clone();
        let (code, _) = procs::http_with(&data, "PUT", path, &[], Some(&quota(9))).unwrap();
        assert!(
            code == 404 || code == 405,
            "the data port took a policy change: {code}"
        );

        // Every replica holds the history the HTTP calls made, and enforces the restored quota.
        let w = upsert(c.node(0, leader), batch("p", 0, 5)).await.unwrap();
        policies_converge(&c, token_index(&w)).await;
        for id in 0..3 {
            let (code, v) = admin_http(&c, id, "GET", path, None);
            assert_eq!(code, 200, "{v}");
            let versions: Vec<_> = v["policy"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        x["version"].as_u64().unwrap(),
                        x["actor"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(
                versions.iter().map(|x| x.0).collect::<Vec<_>>(),
                vec![1, 2, 3, 4],
                "{v}"
            );
            assert_eq!(versions[3].1, "ops", "{v}");
            assert_eq!(
                v["policy"]["versions"][3]["restoredFrom"].as_u64(),
                Some(1),
                "{v}"
            );
        }
        let e = upsert(c.node(0, follower), batch("q", 0, 1))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::ResourceExhausted,
            "the restored quota of 5 holds: {e:?}"
        );
    })
    .await;
}
