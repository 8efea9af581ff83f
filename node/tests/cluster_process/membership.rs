//! Membership changes: a replica whose data dir was wiped rejoins by snapshot after snapshot +
//! log purge; a fourth node is added as a learner, promoted, leads, and is removed again.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_replica_rejoins_by_snapshot() {
    let _serial = serial().await;
    let mut c = cluster(3, 3, &["--raft-log-keep", "5"]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        for b in 0..30 {
            upsert(c.node(0, leader), batch("p", b * 10, 10))
                .await
                .unwrap();
        }
        // Snapshot on the leader; the log behind it (but 5 entries) is purged.
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

        // A follower loses its volume: it leaves the group, comes back empty, and is added
        // again as the operator does (learner, then voter).
        let lost = (leader + 1) % 3;
        c.kill(0, lost);
        let voters: Vec<u64> = (0..3).filter(|&i| i != lost).collect();
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest {
                voters: voters.clone(),
                retain: false,
            })
            .await
            .unwrap();
        std::fs::remove_dir_all(&c.node(0, lost).dir).unwrap();
        // Writes go on with two of two voters.
        for b in 30..35 {
            upsert(c.node(0, leader), batch("p", b * 10, 10))
                .await
                .unwrap();
        }
        c.restart(0, lost);
        wait_answering(&c, &[lost]).await;
        assert!(!c.node(0, lost).status().await.unwrap().initialized);
        let r = c
            .node(0, leader)
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
            .unwrap()
            .into_inner();
        eprintln!("{}", r.message);
        wait_for("the learner installed the snapshot", WAIT, || async {
            let s = c.node(0, lost).status().await?;
            (s.role == "learner" && s.snapshot?.index >= snap_index).then_some(())
        })
        .await;
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![0, 1, 2],
                retain: false,
            })
            .await
            .unwrap();
        let w = upsert(c.node(0, lost), batch("after", 0, 10))
            .await
            .unwrap();
        let (_, sum) = converge(&c, token_index(&w)).await;
        let s = c.node(0, lost).status().await.unwrap();
        assert_eq!(s.role, "follower", "{s:?}");
        assert_eq!(s.vectors_live, 360, "{s:?}");
        eprintln!("wiped replica rejoined by snapshot at {snap_index}; checksum {sum:016x}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_is_added_promoted_leads_and_is_removed() {
    let _serial = serial().await;
    let mut c = cluster(4, 3, &[]);
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        for b in 0..10 {
            upsert(c.node(0, leader), batch("p", b * 20, 20))
                .await
                .unwrap();
        }
        // (Read at start: a running node would pick it up only within 50 ms.)
        c.node(0, 3).set_faults("apply-delay-ms=3000");
        c.restart(0, 3);
        wait_answering(&c, &[3]).await;
        // Only the leader adds learners; a follower says who leads.
        let follower = (leader + 1) % 3;
        let learner = pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: 3,
                addr: c.node(0, 3).member_addr(),
                voter: false,
            }),
            blocking: true,
        };
        let err = c
            .node(0, follower)
            .admin()
            .add_learner(learner.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        // The window of the full-stack failure: the learner knows the leader but has applied
        // nothing yet (its applies are held 3 s), while its divergence guard asks the leader
        // once a second. It must not take "nothing applied" for a divergence at index 0.
        c.node(0, leader)
            .admin()
            .add_learner(pb::AddLearnerRequest {
                blocking: false,
                ..learner
            })
            .await
            .unwrap();
        wait_for("the learner knows the leader", WAIT, || async {
            let s = c.node(0, 3).status().await?;
            (s.leader_id == Some(leader)).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let s = c.node(0, 3).status().await.unwrap();
        assert!(s.applied.is_none(), "the window was missed: {s:?}");
        assert!(s.divergence.is_none(), "{s:?}");
        assert_eq!(c.node(0, 3).metric("kindex_raft_diverged"), Some(0.0));
        c.node(0, 3).set_faults("");
        wait_for("the learner applied everything", WAIT, || async {
            let s = c.node(0, 3).status().await?;
            (s.role == "learner" && s.vectors_live == 200).then_some(())
        })
        .await;
        assert_eq!(c.node(0, 3).metric("kindex_raft_diverged"), Some(0.0));
        c.nodes[3].wait_http_ok("/readyz", WAIT);

        // Promote.
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![0, 1, 2, 3],
                retain: false,
            })
            .await
            .unwrap();
        let s = c.node(0, leader).status().await.unwrap();
        let voters: BTreeSet<u64> = s
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect();
        assert_eq!(voters, BTreeSet::from([0, 1, 2, 3]), "{s:?}");
        // Hand it the leadership, write through it.
        c.node(0, leader)
            .admin()
            .transfer_leader(pb::TransferLeaderRequest { to: 3 })
            .await
            .unwrap();
        assert_eq!(wait_leader(&c, None).await, 3);
        let w = upsert(c.node(0, 3), batch("q", 0, 20)).await.unwrap();
        converge(&c, token_index(&w)).await;

        // Remove it again (leadership moves back to the remaining voters).
        c.node(0, 3)
            .admin()
            .transfer_leader(pb::TransferLeaderRequest { to: leader })
            .await
            .unwrap();
        assert_eq!(wait_leader(&c, None).await, leader);
        c.node(0, leader)
            .admin()
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![0, 1, 2],
                retain: false,
            })
            .await
            .unwrap();
        let s = c.node(0, leader).status().await.unwrap();
        assert_eq!(s.members.len(), 3, "{s:?}");
        c.nodes[3].kill();
        let w = upsert(c.node(0, leader), batch("r", 0, 20)).await.unwrap();
        let (_, sum) = converge(&c, token_index(&w)).await;
        let s = c.node(0, follower).status().await.unwrap();
        assert_eq!(s.vectors_live, 240, "{s:?}");
        eprintln!("learner added, promoted, led, removed; checksum {sum:016x}");
    })
    .await;
}
