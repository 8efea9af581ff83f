//! Raft membership of one shard: a pure decision from observed state to at most one
//! step. Node ids are pod ordinals.
//!
//! Order of precedence:
//! 1. Not initialized: once pods `0..replicas` all answer and none is initialized,
//!    initialize the group on ordinal 0 with all of them as voters.
//! 2. Initialized: no step without a leader, or while a voter does not answer
//!    (a member coming back from a restart only makes us wait; one lost for longer
//!    than the pod-ready timeout is reported as degraded).
//! 3. Scale-up, lowest missing ordinal first: add it as a learner, wait until its
//!    applied index is within `max_lag` of the leader's, then promote it to voter.
//! 4. Scale-down, highest ordinal first: move leadership off a voter that is to go,
//!    then remove voters, never more per step than keeps a majority of the current
//!    voters (at least one, so 2 → 1 can finish).
//!
//! The StatefulSet never shrinks below a voter: [`statefulset_replicas`] keeps every
//! ordinal that is still a voter, so pods leave the Raft group before they are deleted.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kindex_proto::StatusResponse;

use crate::build::pdb::quorum;
use crate::observe::{NodeObs, ShardObs, applied, learners, voters};

/// One change to a shard, executed by the reconciler through the node's Admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `Initialize` on ordinal 0 with `members` as voters.
    Initialize { shard: u32, members: Vec<u64> },
    /// `AddLearner(node)` on the leader.
    AddLearner { shard: u32, leader: u32, node: u32 },
    /// `ChangeMembership(voters)` on the leader, `voters` including `node`.
    Promote {
        shard: u32,
        leader: u32,
        node: u32,
        voters: Vec<u64>,
    },
    /// `ChangeMembership(voters)` on the leader, without `removed`.
    RemoveVoters {
        shard: u32,
        leader: u32,
        removed: Vec<u64>,
        voters: Vec<u64>,
    },
    /// `TransferLeader(to)` on the leader `from`.
    TransferLeader { shard: u32, from: u32, to: u32 },
    /// Delete a pod so the StatefulSet controller recreates it from the new template.
    DeletePod {
        shard: u32,
        ordinal: u32,
        pod: String,
    },
}

impl Action {
    pub fn shard(&self) -> u32 {
        match self {
            Action::Initialize { shard, .. }
            | Action::AddLearner { shard, .. }
            | Action::Promote { shard, .. }
            | Action::RemoveVoters { shard, .. }
            | Action::TransferLeader { shard, .. }
            | Action::DeletePod { shard, .. } => *shard,
        }
    }
    /// Ordinal of the pod the step is about (events name it).
    pub fn subject(&self) -> u32 {
        let first = |ids: &[u64]| ids.first().and_then(|&i| u32::try_from(i).ok());
        match self {
            Action::Initialize { .. } => 0,
            Action::AddLearner { node, .. } | Action::Promote { node, .. } => *node,
            Action::RemoveVoters {
                removed, leader, ..
            } => first(removed).unwrap_or(*leader),
            Action::TransferLeader { to, .. } => *to,
            Action::DeletePod { ordinal, .. } => *ordinal,
        }
    }
    /// Short name for metrics and event reasons.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Initialize { .. } => "Initialize",
            Action::AddLearner { .. } => "AddLearner",
            Action::Promote { .. } => "PromoteVoter",
            Action::RemoveVoters { .. } => "RemoveVoters",
            Action::TransferLeader { .. } => "TransferLeader",
            Action::DeletePod { .. } => "RestartPod",
        }
    }
}

/// Outcome of a decision for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Act(Action),
    /// Something is under way (pods starting, a learner catching up).
    Wait(String),
    /// Cannot proceed; the shard is degraded.
    Blocked(String),
    /// Nothing to do.
    Done,
}

/// Knobs of the decisions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Learners / restarted pods count as caught up within this many log entries.
    pub max_lag: u64,
    /// How long a restarting member may take before the shard counts as degraded.
    pub pod_ready_timeout: Duration,
    pub now: Timestamp,
}

fn ordinal(id: u64) -> Option<u32> {
    u32::try_from(id).ok()
}

fn join(ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pod is expected back soon: recreated recently, or deleted by us recently.
pub fn coming_back(shard: &ShardObs, ord: u32, limits: &Limits) -> bool {
    if shard.recently_deleted.contains(&ord) {
        return true;
    }
    shard.pod(ord).is_some_and(|p| {
        !p.terminating
            && p.created.is_some_and(|c| {
                limits
                    .now
                    .duration_since(c)
                    .unsigned_abs()
                    .lt(&limits.pod_ready_timeout)
            })
    })
}

/// Why the node of ordinal `ord` does not answer, for messages.
fn absence(shard: &ShardObs, ord: u32) -> String {
    match shard.pod(ord).map(|p| &p.node) {
        None => "pod missing".to_owned(),
        Some(NodeObs::NotRunning) => "pod not running".to_owned(),
        Some(NodeObs::Unreachable(e)) => e.clone(),
        Some(NodeObs::Answered(_)) => "answers".to_owned(),
    }
}

/// Entries the node of `ord` is behind the leader, if it answers.
pub fn lag(shard: &ShardObs, leader: &StatusResponse, ord: u32) -> Option<u64> {
    let s = shard.status_of(ord)?;
    Some(applied(leader).saturating_sub(applied(s)))
}

/// The next membership step for `shard` with `replicas` desired voters.
pub fn decide(shard: &ShardObs, replicas: u32, limits: &Limits) -> Step {
    let s = shard.shard;
    if !shard.initialized() {
        return decide_initialize(shard, replicas);
    }
    let Some((leader_pod, leader)) = shard.leader() else {
        return Step::Blocked(format!("shard {s} has no Raft leader"));
    };
    let leader_ord = leader_pod.ordinal;
    let voters = voters(leader);
    let learners = learners(leader);

    // Never change membership while a voter is away.
    let mut waiting = Vec::new();
    let mut lost = Vec::new();
    for &id in &voters {
        let Some(ord) = ordinal(id) else { continue };
        if shard.status_of(ord).is_some() {
            continue;
        }
        if coming_back(shard, ord, limits) {
            waiting.push(id);
        } else {
            lost.push(format!("{id} ({})", absence(shard, ord)));
        }
    }
    if !lost.is_empty() {
        return Step::Blocked(format!(
            "shard {s}: voters do not answer: {}",
            lost.join("; ")
        ));
    }
    if !waiting.is_empty() {
        return Step::Wait(format!(
            "shard {s}: waiting for voters {} to come back",
            join(waiting)
        ));
    }

    // Scale-up: the lowest missing ordinal, one at a time.
    if let Some(ord) = (0..replicas).find(|&o| !voters.contains(&u64::from(o))) {
        let id = u64::from(ord);
        if shard.status_of(ord).is_none() {
            return Step::Wait(format!("shard {s}: waiting for pod {ord} to start"));
        }
        if !learners.contains(&id) {
            return Step::Act(Action::AddLearner {
                shard: s,
                leader: leader_ord,
                node: ord,
            });
        }
        let behind = lag(shard, leader, ord).unwrap_or(u64::MAX);
        if behind > limits.max_lag {
            return Step::Wait(format!(
                "shard {s}: learner {ord} is catching up ({behind} entries behind)"
            ));
        }
        let mut new_voters = voters.clone();
        new_voters.insert(id);
        return Step::Act(Action::Promote {
            shard: s,
            leader: leader_ord,
            node: ord,
            voters: new_voters.into_iter().collect(),
        });
    }

    // Scale-down: highest ordinals first.
    let extra: Vec<u64> = voters
        .iter()
        .rev()
        .copied()
        .filter(|&id| id >= u64::from(replicas))
        .collect();
    if extra.is_empty() {
        return Step::Done;
    }
    if extra.contains(&u64::from(leader_ord)) {
        // Hand leadership to a staying voter that is caught up.
        let target = voters
            .iter()
            .filter_map(|&id| ordinal(id))
            .filter(|&o| o < replicas)
            .find(|&o| lag(shard, leader, o).is_some_and(|l| l <= limits.max_lag));
        return match target {
            Some(to) => Step::Act(Action::TransferLeader {
                shard: s,
                from: leader_ord,
                to,
            }),
            None => Step::Wait(format!(
                "shard {s}: no caught-up voter to take over leadership from {leader_ord}"
            )),
        };
    }
    let n = voters.len() as u32;
    let per_step = n.saturating_sub(quorum(n)).max(1) as usize;
    let removed: BTreeSet<u64> = extra.into_iter().take(per_step).collect();
    Step::Act(Action::RemoveVoters {
        shard: s,
        leader: leader_ord,
        voters: voters.difference(&removed).copied().collect(),
        removed: removed.into_iter().collect(),
    })
}

fn decide_initialize(shard: &ShardObs, replicas: u32) -> Step {
    let s = shard.shard;
    let missing: Vec<u64> = (0..replicas)
        .filter(|&o| shard.status_of(o).is_none())
        .map(u64::from)
        .collect();
    if !missing.is_empty() {
        return Step::Wait(format!(
            "shard {s}: waiting for pods {} to answer before forming the Raft group",
            join(missing)
        ));
    }
    if shard.was_initialized {
        // Every node answers and none has Raft state, yet we saw voters before: the
        // volumes were lost or replaced. Re-initializing would silently start empty.
        return Step::Blocked(format!(
            "shard {s} had Raft voters but no node reports Raft state now (volumes lost?); \
             refusing to re-initialize: restore the volumes, or delete and recreate the index"
        ));
    }
    Step::Act(Action::Initialize {
        shard: s,
        members: (0..u64::from(replicas)).collect(),
    })
}

/// Replicas of the shard's StatefulSet: `spec.replicas`, but never fewer than needed to
/// keep every pod that is still a Raft voter. When the membership is unknown (no
/// leader), the current size is kept: growing is safe, shrinking blindly is not.
pub fn statefulset_replicas(shard: &ShardObs, replicas: u32) -> i32 {
    let spec = replicas as i32;
    let highest = |ids: &BTreeSet<u64>| {
        ids.last()
            .and_then(|&id| i32::try_from(id).ok())
            .map_or(0, |o| o + 1)
    };
    if let Some((_, leader)) = shard.leader() {
        return spec.max(highest(&voters(leader)));
    }
    let seen: BTreeSet<u64> = shard
        .pods
        .iter()
        .filter_map(|p| p.status())
        .flat_map(voters)
        .collect();
    let current = shard.statefulset.as_ref().map_or(spec, |s| s.replicas);
    spec.max(highest(&seen)).max(current)
}

/// Voters the PDB protects: the smaller of the desired and the current voter count.
pub fn pdb_voters(shard: &ShardObs, replicas: u32) -> u32 {
    match shard.leader() {
        Some((_, l)) => replicas.min(voters(l).len() as u32).max(1),
        None => replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{PodObs, StsObs};
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
            crash_looping: false,
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
                node: 3
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
                to: 0
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
        assert!(
            matches!(decide(&s, 1, &limits()), Step::Blocked(m) if m.contains("no Raft leader"))
        );
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
}
