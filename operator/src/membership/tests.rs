//! Decisions on hand-made observations.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kindex_proto::StatusResponse;

use super::*;
use crate::observe::{NodeObs, PodObs, ShardObs, StsObs};
use kindex_proto::{LogId, Member};

const NOW: i64 = 1_700_000_000;
const OLD: i64 = NOW - 3600;

fn limits() -> Limits {
    Limits {
        max_lag: 100,
        pod_ready_timeout: Duration::from_secs(600),
        now: Timestamp::from_second(NOW).unwrap(),
    }
}

/// A node's status: `voters`/`learners` as its membership view.
fn node(id: u64, role: &str, applied: u64, voters: &[u64], learners: &[u64]) -> StatusResponse {
    let members = voters
        .iter()
        .map(|&v| (v, true))
        .chain(learners.iter().map(|&l| (l, false)))
        .map(|(node_id, voter)| Member {
            node_id,
            addr: String::new(),
            voter,
        })
        .collect();
    StatusResponse {
        node_id: id,
        role: role.into(),
        term: 1,
        members,
        applied: Some(LogId {
            term: 1,
            index: applied,
        }),
        initialized: !voters.is_empty(),
        ..StatusResponse::default()
    }
}

fn pod(ord: u32, node: NodeObs) -> PodObs {
    PodObs {
        name: format!("idx-s0-{ord}"),
        ordinal: ord,
        ready: matches!(node, NodeObs::Answered(_)),
        terminating: false,
        revision: Some("r1".into()),
        created: Some(Timestamp::from_second(OLD).unwrap()),
        crash: None,
        drift_message: None,
        node,
    }
}

fn shard(pods: Vec<PodObs>) -> ShardObs {
    ShardObs {
        shard: 0,
        statefulset: Some(StsObs {
            replicas: pods.len() as i32,
            update_revision: Some("r1".into()),
            settled: true,
            storage_size: None,
            storage_class: None,
        }),
        pods,
        ..ShardObs::default()
    }
}

fn fresh(ord: u32) -> PodObs {
    pod(
        ord,
        NodeObs::answered(node(ord.into(), "learner", 0, &[], &[])),
    )
}

/// A healthy initialized group of `n` voters with leader 0, all caught up.
fn group(n: u64) -> Vec<PodObs> {
    let voters: Vec<u64> = (0..n).collect();
    (0..n)
        .map(|i| {
            let role = if i == 0 { "leader" } else { "follower" };
            pod(
                i as u32,
                NodeObs::answered(node(i, role, 500, &voters, &[])),
            )
        })
        .collect()
}

#[test]
fn create_initializes_once_all_pods_answer() {
    let partial = shard(vec![fresh(0), fresh(1), pod(2, NodeObs::NotRunning)]);
    assert!(matches!(decide(&partial, 3, &limits()), Step::Wait(m) if m.contains("pods 2")));
    let all = shard(vec![fresh(0), fresh(1), fresh(2)]);
    assert_eq!(
        decide(&all, 3, &limits()),
        Step::Act(Action::Initialize {
            shard: 0,
            members: vec![0, 1, 2]
        })
    );
    // Fewer replicas desired than pods exist: initialize with the desired ones only.
    assert_eq!(
        decide(&all, 1, &limits()),
        Step::Act(Action::Initialize {
            shard: 0,
            members: vec![0]
        })
    );
}

#[test]
fn never_reinitializes_a_shard_that_had_voters() {
    let mut s = shard(vec![fresh(0), fresh(1), fresh(2)]);
    s.was_initialized = true;
    assert!(matches!(decide(&s, 3, &limits()), Step::Blocked(m) if m.contains("refusing")));
}

#[test]
fn converged_group_does_nothing() {
    let s = shard(group(3));
    assert_eq!(decide(&s, 3, &limits()), Step::Done);
    assert_eq!(statefulset_replicas(&s, 3), 3);
}

#[test]
fn scale_up_adds_learner_waits_then_promotes() {
    // 3 → 4: pod 3 starts uninitialized.
    let mut pods = group(3);
    pods.push(fresh(3));
    let s = shard(pods.clone());
    assert_eq!(
        decide(&s, 4, &limits()),
        Step::Act(Action::AddLearner {
            shard: 0,
            leader: 0,
            node: 3,
            id: 3
        })
    );
    // Learner behind by 400 entries: wait.
    let voters = [0, 1, 2];
    pods[0] = pod(0, NodeObs::answered(node(0, "leader", 500, &voters, &[3])));
    pods[3] = pod(3, NodeObs::answered(node(3, "learner", 100, &voters, &[3])));
    let s = shard(pods.clone());
    assert!(matches!(decide(&s, 4, &limits()), Step::Wait(m) if m.contains("400 entries")));
    // Caught up (lag 50 ≤ 100): promote.
    pods[3] = pod(3, NodeObs::answered(node(3, "learner", 450, &voters, &[3])));
    let s = shard(pods);
    assert_eq!(
        decide(&s, 4, &limits()),
        Step::Act(Action::Promote {
            shard: 0,
            leader: 0,
            node: 3,
            voters: vec![0, 1, 2, 3]
        })
    );
}

#[test]
fn scale_up_waits_for_the_new_pod() {
    let mut pods = group(3);
    pods.push(pod(3, NodeObs::NotRunning));
    let s = shard(pods);
    assert!(matches!(decide(&s, 4, &limits()), Step::Wait(m) if m.contains("pod 3")));
    // The StatefulSet grows right away; new pods are not voters yet.
    assert_eq!(statefulset_replicas(&s, 5), 5);
}

#[test]
fn scale_down_removes_from_raft_before_shrinking() {
    // 5 → 3: at most 5 - quorum(5) = 2 voters per step, highest first.
    let s = shard(group(5));
    assert_eq!(statefulset_replicas(&s, 3), 5, "pods stay while voters");
    assert_eq!(
        decide(&s, 3, &limits()),
        Step::Act(Action::RemoveVoters {
            shard: 0,
            leader: 0,
            removed: vec![3, 4],
            voters: vec![0, 1, 2]
        })
    );
    // After the change the leader reports 3 voters: the StatefulSet may shrink.
    let voters = [0, 1, 2];
    let pods: Vec<PodObs> = (0..5u64)
        .map(|i| {
            let role = if i == 0 { "leader" } else { "follower" };
            let view: &[u64] = if i < 3 { &voters } else { &[] };
            pod(i as u32, NodeObs::answered(node(i, role, 500, view, &[])))
        })
        .collect();
    let s = shard(pods);
    assert_eq!(statefulset_replicas(&s, 3), 3);
    assert_eq!(decide(&s, 3, &limits()), Step::Done);
}

#[test]
fn scale_down_never_below_quorum_per_step() {
    // 3 → 1: one voter per step (3 - quorum(3) = 1), then 2 → 1 (at least one).
    let s = shard(group(3));
    assert_eq!(
        decide(&s, 1, &limits()),
        Step::Act(Action::RemoveVoters {
            shard: 0,
            leader: 0,
            removed: vec![2],
            voters: vec![0, 1]
        })
    );
    let s = shard(group(2));
    assert_eq!(
        decide(&s, 1, &limits()),
        Step::Act(Action::RemoveVoters {
            shard: 0,
            leader: 0,
            removed: vec![1],
            voters: vec![0]
        })
    );
    // 7 → 1: 3, then 2 (4 voters), then 1 (2 voters).
    let s = shard(group(7));
    let Step::Act(Action::RemoveVoters { removed, .. }) = decide(&s, 1, &limits()) else {
        panic!("expected a removal");
    };
    assert_eq!(removed, vec![4, 5, 6]);
}

#[test]
fn scale_down_moves_leadership_first() {
    let voters: Vec<u64> = (0..3).collect();
    let pods: Vec<PodObs> = (0..3u64)
        .map(|i| {
            let role = if i == 2 { "leader" } else { "follower" };
            pod(
                i as u32,
                NodeObs::answered(node(i, role, 500, &voters, &[])),
            )
        })
        .collect();
    let s = shard(pods);
    assert_eq!(
        decide(&s, 2, &limits()),
        Step::Act(Action::TransferLeader {
            shard: 0,
            from: 2,
            to: 0,
            to_id: 0
        })
    );
}

#[test]
fn unreachable_voter_blocks_with_a_reason() {
    let mut pods = group(3);
    pods[2] = pod(2, NodeObs::Unreachable("connection refused".into()));
    let s = shard(pods);
    let step = decide(&s, 5, &limits());
    assert!(
        matches!(&step, Step::Blocked(m) if m.contains("connection refused") && m.contains("2 (")),
        "{step:?}"
    );
    // A voter whose pod was just recreated is only waited for.
    let mut pods = group(3);
    let mut p = pod(2, NodeObs::NotRunning);
    p.created = Some(Timestamp::from_second(NOW - 30).unwrap());
    pods[2] = p;
    assert!(matches!(decide(&shard(pods), 3, &limits()), Step::Wait(_)));
    // A voter whose pod we deleted and is not back yet: waited for too.
    let mut pods = group(3);
    pods.remove(2);
    let mut s = shard(pods);
    s.recently_deleted.insert(2);
    assert!(matches!(decide(&s, 3, &limits()), Step::Wait(_)));
    s.recently_deleted.clear();
    assert!(matches!(decide(&s, 3, &limits()), Step::Blocked(m) if m.contains("pod missing")));
}

#[test]
fn no_leader_blocks_and_keeps_the_statefulset() {
    let voters = [0, 1, 2];
    let pods: Vec<PodObs> = (0..3u64)
        .map(|i| {
            pod(
                i as u32,
                NodeObs::answered(node(i, "candidate", 500, &voters, &[])),
            )
        })
        .collect();
    let s = shard(pods);
    assert!(matches!(decide(&s, 1, &limits()), Step::Blocked(m) if m.contains("no Raft leader")));
    assert_eq!(statefulset_replicas(&s, 1), 3, "never shrinks blindly");
}

#[test]
fn unknown_membership_keeps_current_size() {
    let mut s = shard(vec![
        pod(0, NodeObs::NotRunning),
        pod(1, NodeObs::NotRunning),
    ]);
    assert_eq!(statefulset_replicas(&s, 1), 2);
    assert_eq!(statefulset_replicas(&s, 3), 3);
    s.statefulset = None;
    assert_eq!(statefulset_replicas(&s, 3), 3);
}

#[test]
fn pdb_follows_the_smaller_voter_count() {
    let s = shard(group(3));
    assert_eq!(pdb_voters(&s, 5), 3);
    assert_eq!(pdb_voters(&s, 1), 1);
    assert_eq!(pdb_voters(&shard(vec![]), 5), 5);
}

/// Node id of incarnation `inc` of pod `ord`.
fn inc(ord: u32, inc: u64) -> u64 {
    kindex_common::node_id::compose(ord, inc)
}

#[test]
fn initializes_with_the_ids_the_pods_report() {
    let pods = (0..3)
        .map(|o| {
            pod(
                o,
                NodeObs::answered(node(inc(o, 40 + u64::from(o)), "learner", 0, &[], &[])),
            )
        })
        .collect();
    assert_eq!(
        decide(&shard(pods), 3, &limits()),
        Step::Act(Action::Initialize {
            shard: 0,
            members: vec![inc(0, 40), inc(1, 41), inc(2, 42)]
        })
    );
}

#[test]
fn a_lost_volume_is_replaced_under_a_new_identity() {
    // Voters are incarnation 1 of pods 0..3; pod 2 lost its volume and answers as
    // incarnation 9, empty. It is not waited for as the old member, nor treated as it.
    let voters = [inc(0, 1), inc(1, 1), inc(2, 1)];
    let member = |o: u32, role: &str, applied, learners: &[u64]| {
        pod(
            o,
            NodeObs::answered(node(inc(o, 1), role, applied, &voters, learners)),
        )
    };
    let new = inc(2, 9);
    let mut pods = vec![
        member(0, "leader", 500, &[]),
        member(1, "follower", 500, &[]),
        pod(2, NodeObs::answered(node(new, "learner", 0, &[], &[]))),
    ];
    assert_eq!(
        decide(&shard(pods.clone()), 3, &limits()),
        Step::Act(Action::AddLearner {
            shard: 0,
            leader: 0,
            node: 2,
            id: new
        })
    );
    // Added, catching up: wait, naming both ids.
    pods[0] = member(0, "leader", 500, &[new]);
    pods[2] = pod(
        2,
        NodeObs::answered(node(new, "learner", 10, &voters, &[new])),
    );
    let step = decide(&shard(pods.clone()), 3, &limits());
    assert!(
        matches!(&step, Step::Wait(m) if m.contains(&format!("node {new}")) && m.contains("490 entries")),
        "{step:?}"
    );
    // Caught up: one change swaps the old member for the new one.
    pods[2] = pod(
        2,
        NodeObs::answered(node(new, "learner", 480, &voters, &[new])),
    );
    let mut expected = vec![inc(0, 1), inc(1, 1), new];
    expected.sort();
    assert_eq!(
        decide(&shard(pods.clone()), 3, &limits()),
        Step::Act(Action::Replace {
            shard: 0,
            leader: 0,
            node: 2,
            old: inc(2, 1),
            voters: expected.clone()
        })
    );
    // Done: the leader reports the new voters.
    let pods: Vec<PodObs> = (0..3)
        .map(|o| {
            let role = if o == 0 { "leader" } else { "follower" };
            pod(
                o,
                NodeObs::answered(node(expected[o as usize], role, 500, &expected, &[])),
            )
        })
        .collect();
    let s = shard(pods);
    assert_eq!(decide(&s, 3, &limits()), Step::Done);
    assert_eq!(statefulset_replicas(&s, 3), 3);
}

#[test]
fn a_replacement_waits_while_another_voter_is_away() {
    // Two of five members away: one lost its volume (answers under a new id), one is
    // restarting. Nothing changes until the restarting one is back.
    let voters: Vec<u64> = (0..5).map(|o| inc(o, 1)).collect();
    let mut pods: Vec<PodObs> = (0..5)
        .map(|o| {
            let role = if o == 0 { "leader" } else { "follower" };
            pod(
                o,
                NodeObs::answered(node(inc(o, 1), role, 500, &voters, &[])),
            )
        })
        .collect();
    pods[4] = pod(
        4,
        NodeObs::answered(node(inc(4, 2), "learner", 0, &[], &[])),
    );
    let mut p = pod(3, NodeObs::NotRunning);
    p.created = Some(Timestamp::from_second(NOW - 30).unwrap());
    pods[3] = p;
    assert!(matches!(decide(&shard(pods), 5, &limits()), Step::Wait(m) if m.contains("come back")));
}

#[test]
fn a_replaced_member_above_the_replicas_is_removed_not_replaced() {
    // 3 → 2 while pod 2 answers under a new id: its old member is removed.
    let voters = [inc(0, 1), inc(1, 1), inc(2, 1)];
    let pods = vec![
        pod(
            0,
            NodeObs::answered(node(inc(0, 1), "leader", 500, &voters, &[])),
        ),
        pod(
            1,
            NodeObs::answered(node(inc(1, 1), "follower", 500, &voters, &[])),
        ),
        pod(
            2,
            NodeObs::answered(node(inc(2, 7), "learner", 0, &[], &[])),
        ),
    ];
    assert_eq!(
        decide(&shard(pods), 2, &limits()),
        Step::Act(Action::RemoveVoters {
            shard: 0,
            leader: 0,
            removed: vec![inc(2, 1)],
            voters: vec![inc(0, 1), inc(1, 1)]
        })
    );
}
