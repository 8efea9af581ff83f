//! The decision itself: observed shard → at most one step (precedence in the module doc
//! of [`super`]).

use std::collections::BTreeSet;

use kindex_proto::StatusResponse;

use super::{Action, Limits, Step, join, ordinal};
use crate::build::pdb::quorum;
use crate::observe::{NodeObs, ShardObs, applied, learners, voters};

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
