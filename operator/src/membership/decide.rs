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

    // A voter whose pod answers under another id lost its volume: that member is gone for
    // good and is replaced below, not waited for.
    let mut replaced = Vec::new();
    // Never change membership while a voter is away.
    let mut waiting = Vec::new();
    let mut lost = Vec::new();
    for &id in &voters {
        let ord = ordinal(id);
        match shard.status_of(ord) {
            Some(st) if st.node_id == id => continue,
            Some(st) => {
                replaced.push((id, ord, st.node_id));
                continue;
            }
            None => {}
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

    // Replacement (pods that stay; a replaced voter above `replicas` is just removed by the
    // scale-down): the new incarnation joins as a learner, catches up, then takes the old
    // member's place in one change (joint consensus: a majority of both sets).
    if let Some(&(old, ord, new)) = replaced.iter().find(|(_, o, _)| *o < replicas) {
        if !learners.contains(&new) {
            return Step::Act(Action::AddLearner {
                shard: s,
                leader: leader_ord,
                node: ord,
                id: new,
            });
        }
        let behind = lag(shard, leader, ord).unwrap_or(u64::MAX);
        if behind > limits.max_lag {
            return Step::Wait(format!(
                "shard {s}: node {new} (pod {ord}, a new volume) is catching up to replace node {old} \
                 ({behind} entries behind)"
            ));
        }
        let mut new_voters = voters.clone();
        new_voters.remove(&old);
        new_voters.insert(new);
        return Step::Act(Action::Replace {
            shard: s,
            leader: leader_ord,
            node: ord,
            old,
            voters: new_voters.into_iter().collect(),
        });
    }

    // Scale-up: the lowest missing ordinal, one at a time.
    if let Some(ord) = (0..replicas).find(|&o| !voters.iter().any(|&v| ordinal(v) == o)) {
        let Some(id) = shard.status_of(ord).map(|st| st.node_id) else {
            return Step::Wait(format!("shard {s}: waiting for pod {ord} to start"));
        };
        if !learners.contains(&id) {
            return Step::Act(Action::AddLearner {
                shard: s,
                leader: leader_ord,
                node: ord,
                id,
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
    let mut extra: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|&id| ordinal(id) >= replicas)
        .collect();
    extra.sort_by_key(|&id| std::cmp::Reverse(ordinal(id)));
    if extra.is_empty() {
        return Step::Done;
    }
    if extra.iter().any(|&id| ordinal(id) == leader_ord) {
        // Hand leadership to a staying voter that is caught up.
        let target = voters
            .iter()
            .map(|&id| (ordinal(id), id))
            .filter(|&(o, id)| {
                o < replicas && shard.status_of(o).is_some_and(|st| st.node_id == id)
            })
            .find(|&(o, _)| lag(shard, leader, o).is_some_and(|l| l <= limits.max_lag));
        return match target {
            Some((to, to_id)) => Step::Act(Action::TransferLeader {
                shard: s,
                from: leader_ord,
                to,
                to_id,
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
    // Every pod answered (above): the ids they report are the members.
    Step::Act(Action::Initialize {
        shard: s,
        members: (0..replicas)
            .filter_map(|o| shard.status_of(o).map(|st| st.node_id))
            .collect(),
    })
}
