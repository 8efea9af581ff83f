//! The act step: both decisions for every shard, the one step picked for the index, and
//! its execution through the node's Admin API (or a pod deletion).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kindex_crds::VectorIndex;
use kindex_proto::Member;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};

use super::ActError;
use crate::build::labels;
use crate::controller::Context;
use crate::membership::{self, Action, Limits, Step};
use crate::observe::{Observed, PodRef};
use crate::status::{self, ShardPlan};

/// Both decisions for every shard. The rollout is decided even while membership
/// waits or is blocked: replacing an outdated pod that is down is how a broken image
/// gets fixed, and the rollout's own checks keep it from disrupting a busy shard.
pub fn plan(obs: &Observed, replicas: u32, limits: &Limits) -> Vec<ShardPlan> {
    obs.shards
        .iter()
        .map(|s| ShardPlan {
            membership: membership::decide(s, replicas, limits),
            rollout: crate::rollout::decide(s, limits),
        })
        .collect()
}

/// The one step of this reconcile: the first membership step of any shard, else the
/// first rollout step, but no new restart while any shard's rollout is waiting for a
/// pod or paused (one disrupted pod in the whole index at a time).
pub fn pick(plans: &[ShardPlan]) -> Option<&Action> {
    fn act(s: &Step) -> Option<&Action> {
        match s {
            Step::Act(a) => Some(a),
            _ => None,
        }
    }
    if let Some(a) = plans.iter().find_map(|p| act(&p.membership)) {
        return Some(a);
    }
    let restarts_blocked = plans
        .iter()
        .any(|p| matches!(p.rollout, Step::Wait(_) | Step::Blocked(_)));
    if restarts_blocked {
        return None;
    }
    plans.iter().find_map(|p| act(&p.rollout))
}

/// Run `action`, count it, log it and publish an event about it.
pub(super) async fn execute(
    vi: &VectorIndex,
    ctx: &Context,
    ns: &str,
    action: &Action,
    now: Timestamp,
) -> Result<(), ActError> {
    let index = vi.name_any();
    let pod = |shard: u32, ordinal: u32| PodRef {
        namespace: ns.to_owned(),
        index: index.clone(),
        shard,
        ordinal,
    };
    let member = |shard: u32, id: u64, voter: bool| Member {
        node_id: id,
        addr: ctx
            .addresses
            .raft_addr(&pod(shard, membership::ordinal(id))),
        voter,
    };
    let nodes = ctx.nodes.as_ref();
    let node_err = |leader: u32| {
        let pod = labels::pod_name(&index, action.shard(), leader);
        move |source| ActError::Node {
            action: action.name(),
            pod,
            source,
        }
    };
    let result = match action {
        Action::Initialize { shard, members } => {
            let members = members.iter().map(|&id| member(*shard, id, true)).collect();
            nodes
                .initialize(&pod(*shard, 0), members)
                .await
                .map_err(node_err(0))
        }
        Action::AddLearner {
            shard, leader, id, ..
        } => nodes
            .add_learner(&pod(*shard, *leader), member(*shard, *id, false))
            .await
            .map_err(node_err(*leader)),
        Action::Promote {
            shard,
            leader,
            voters,
            ..
        }
        | Action::Replace {
            shard,
            leader,
            voters,
            ..
        }
        | Action::RemoveVoters {
            shard,
            leader,
            voters,
            ..
        } => nodes
            .change_membership(&pod(*shard, *leader), voters.clone())
            .await
            .map_err(node_err(*leader)),
        Action::TransferLeader {
            shard, from, to_id, ..
        } => nodes
            .transfer_leader(&pod(*shard, *from), *to_id)
            .await
            .map_err(node_err(*from)),
        Action::DeletePod { pod: name, .. } => {
            ctx.deletions.record(ns, name, now);
            Api::<Pod>::namespaced(ctx.client.clone(), ns)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ())
                .map_err(|source| ActError::DeletePod {
                    pod: name.clone(),
                    source,
                })
        }
    };
    let text = status::describe(vi, action);
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .actions
        .with_label_values(&[action.name(), outcome])
        .inc();
    let subject = labels::pod_name(&index, action.shard(), action.subject());
    match &result {
        Ok(()) => {
            tracing::info!(index = %index, namespace = ns, "{text}");
            ctx.events
                .about_pod(vi, false, action.name(), text, &subject)
                .await;
        }
        Err(e) => {
            tracing::warn!(index = %index, namespace = ns, error = %e, "{text} failed");
            let reason = format!("{}Failed", action.name());
            ctx.events
                .about_pod(vi, true, &reason, format!("{text} failed: {e}"), &subject)
                .await;
        }
    }
    result
}
