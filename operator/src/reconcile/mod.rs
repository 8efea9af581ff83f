//! The reconcile pipeline for one `VectorIndex`:
//!
//! 1. **fetch**: the object comes from the controller's watch cache;
//! 2. **validate**: `kindex_crds::validate` plus the operator's own name check; an
//!    invalid spec gets a status condition and a Warning event, nothing else is touched;
//! 3. **observe**: the existing ConfigMap (structural fields recorded at creation, for
//!    the immutability check), StatefulSets, pods, and every running node's `Status`;
//! 4. **build**: pure functions from spec + observations to the desired objects;
//! 5. **apply**: server-side apply (field manager `kindex-operator`, owner references);
//! 6. **orphans**: delete owned objects that are no longer desired;
//! 7. **act**: at most one membership or rollout step for the whole index;
//! 8. **status**: server-side apply of the status subresource.
//!
//! Observation comes before the build (not after the apply) because the StatefulSet's
//! `replicas` depends on the observed Raft membership: a pod is deleted only after it
//! left the Raft group (see `membership::statefulset_replicas`), and `volumeClaimTemplates`
//! are immutable, so an existing StatefulSet keeps the storage it was created with.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kindex_crds::{VectorIndex, VectorIndexStatus, condition_types as ct};
use kindex_proto::Member;
use kube::api::{DeleteParams, Patch};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, ResourceExt};

use crate::build::{self, BuildError, ShardParams, StatefulSetParams, labels};
use crate::controller::Context;
use crate::membership::{self, Action, Limits, Step};
use crate::observe::{self, ObserveCtx, Observed, PodRef};
use crate::status::{self, Executed, ShardPlan};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building objects: {0}")]
    Build(#[from] BuildError),
    #[error("{action}: {reason}")]
    Step {
        action: &'static str,
        reason: String,
    },
    #[error("the VectorIndex has no namespace")]
    NoNamespace,
}

impl Error {
    /// Label of the `kindex_operator_reconcile_errors_total` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Build(_) => "build",
            Error::Step { .. } => "step",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// Entry point used by the controller: runs the pipeline and records metrics.
pub async fn reconcile(vi: Arc<VectorIndex>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let timer = ctx.metrics.duration.start_timer();
    let result = run(&vi, &ctx).await;
    timer.observe_duration();
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => {
            ctx.metrics.errors.with_label_values(&[e.kind()]).inc();
            "error"
        }
    };
    ctx.metrics.reconciles.with_label_values(&[label]).inc();
    if result.is_ok() {
        ctx.reset_backoff(&vi);
    }
    result
}

async fn run(vi: &VectorIndex, ctx: &Context) -> Result<Requeue, Error> {
    let ns = vi.namespace().ok_or(Error::NoNamespace)?;
    if vi.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything.
        return Ok(Requeue::await_change());
    }
    let now = Timestamp::now();
    let cfg = &ctx.config;

    // validate
    let mut errors: Vec<String> = match kindex_crds::validate(&vi.spec) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    };
    if let Err(e) = labels::check_index_name(&vi.name_any()) {
        errors.push(e);
    }
    if !errors.is_empty() {
        return invalid(vi, ctx, &errors, now).await;
    }

    // observe
    let obs = observe::observe(
        &ObserveCtx {
            client: &ctx.client,
            nodes: ctx.nodes.as_ref(),
            deletions: &ctx.deletions,
            now,
            pod_ready_timeout: cfg.pod_ready_timeout,
        },
        vi,
    )
    .await?;
    if let Some(recorded) = &obs.recorded_structural {
        let mut old = vi.spec.clone();
        let r = &recorded.structural;
        (old.dimension, old.metric, old.shards) = (r.dimension, r.metric, r.shards);
        (old.hnsw.m, old.hnsw.ef_construction) = (r.m, r.ef_construction);
        if let Err(errs) = kindex_crds::validate_update(&old, &vi.spec) {
            let errors: Vec<String> = errs.iter().map(ToString::to_string).collect();
            return invalid(vi, ctx, &errors, now).await;
        }
    }
    let new_generation =
        vi.status.as_ref().and_then(|s| s.observed_generation) != vi.metadata.generation;
    if new_generation {
        for w in kindex_crds::warnings(&vi.spec) {
            ctx.events.warning(vi, "SpecWarning", w.to_string()).await;
        }
    }

    // build + apply + orphans
    let params = shard_params(vi, &obs, &cfg.default_image);
    if new_generation {
        storage_warnings(vi, ctx, &params).await;
    }
    let desired = build::build_all(vi, &params)?;
    crate::apply::apply_all(&ctx.client, &desired).await?;
    let owner_uid = vi.uid().unwrap_or_default();
    let deleted = crate::apply::delete_all_orphans(
        &ctx.client,
        &ns,
        &labels::owned_selector(vi),
        &owner_uid,
        &desired,
    )
    .await?;
    for name in deleted {
        ctx.events
            .normal(
                vi,
                "OrphanDeleted",
                format!("deleted {name}: no longer part of the index"),
            )
            .await;
    }

    // act
    let limits = Limits {
        max_lag: cfg.max_lag,
        pod_ready_timeout: cfg.pod_ready_timeout,
        now,
    };
    let plans = plan(&obs, vi.spec.replicas, &limits);
    let executed = match pick(&plans) {
        Some(action) => Some(execute(vi, ctx, &ns, action, now).await),
        None => None,
    };

    // status
    let expected = vi.spec.structural().hash();
    let status = status::build(vi, &obs, &plans, executed.as_ref(), &expected, now);
    transition_events(vi, ctx, &status).await;
    patch_status(ctx, vi, &ns, &status).await?;

    if let Some(Executed {
        action,
        result: Err(reason),
    }) = executed
    {
        return Err(Error::Step {
            action: action.name(),
            reason,
        });
    }
    // Pod changes are watched; Raft progress (a learner catching up) is not: poll.
    let waiting = plans.iter().any(|p| {
        matches!(p.membership, Step::Wait(_) | Step::Act(_))
            || matches!(p.rollout, Step::Wait(_) | Step::Act(_))
    });
    Ok(Requeue::requeue(if executed.is_some() {
        cfg.step_requeue
    } else if waiting {
        cfg.wait_requeue
    } else {
        cfg.requeue
    }))
}

/// Per-shard build parameters from observations.
pub fn shard_params(vi: &VectorIndex, obs: &Observed, default_image: &str) -> Vec<ShardParams> {
    (0..vi.spec.shards)
        .map(|shard| {
            let o = obs.shards.get(shard as usize);
            let replicas = o.map_or(vi.spec.replicas as i32, |s| {
                membership::statefulset_replicas(s, vi.spec.replicas)
            });
            let mut sts = StatefulSetParams::from_spec(vi, replicas, default_image);
            // volumeClaimTemplates are immutable: keep what the StatefulSet has.
            if let Some(existing) = o.and_then(|s| s.statefulset.as_ref()) {
                if let Some(size) = &existing.storage_size {
                    sts.storage_size = size.clone();
                }
                sts.storage_class = existing.storage_class.clone();
            }
            ShardParams {
                statefulset: sts,
                voters: o.map_or(vi.spec.replicas, |s| {
                    membership::pdb_voters(s, vi.spec.replicas)
                }),
            }
        })
        .collect()
}

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

async fn execute(
    vi: &VectorIndex,
    ctx: &Context,
    ns: &str,
    action: &Action,
    now: Timestamp,
) -> Executed {
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
            .raft_addr(&pod(shard, u32::try_from(id).unwrap_or(u32::MAX))),
        voter,
    };
    let nodes = ctx.nodes.as_ref();
    let result = match action {
        Action::Initialize { shard, members } => {
            let members = members.iter().map(|&id| member(*shard, id, true)).collect();
            nodes
                .initialize(&pod(*shard, 0), members)
                .await
                .map_err(|e| e.to_string())
        }
        Action::AddLearner {
            shard,
            leader,
            node,
        } => nodes
            .add_learner(
                &pod(*shard, *leader),
                member(*shard, u64::from(*node), false),
            )
            .await
            .map_err(|e| e.to_string()),
        Action::Promote {
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
            .map_err(|e| e.to_string()),
        Action::TransferLeader { shard, from, to } => nodes
            .transfer_leader(&pod(*shard, *from), u64::from(*to))
            .await
            .map_err(|e| e.to_string()),
        Action::DeletePod { pod: name, .. } => {
            ctx.deletions.record(ns, name, now);
            Api::<Pod>::namespaced(ctx.client.clone(), ns)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
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
    Executed {
        action: action.clone(),
        result,
    }
}

async fn invalid(
    vi: &VectorIndex,
    ctx: &Context,
    errors: &[String],
    now: Timestamp,
) -> Result<Requeue, Error> {
    let ns = vi.namespace().ok_or(Error::NoNamespace)?;
    tracing::warn!(index = %vi.name_any(), namespace = %ns, ?errors, "invalid spec");
    let status = status::invalid(vi, errors, now);
    // One event per generation, not per requeue.
    if vi.status.as_ref().and_then(|s| s.observed_generation) != vi.metadata.generation
        || vi.status.as_ref().and_then(|s| s.phase) != status.phase
    {
        ctx.events
            .warning(
                vi,
                "InvalidSpec",
                format!("invalid spec: {}", errors.join("; ")),
            )
            .await;
    }
    patch_status(ctx, vi, &ns, &status).await?;
    // The next spec change triggers a reconcile anyway.
    Ok(Requeue::requeue(ctx.config.invalid_requeue))
}

/// Warn when the spec asks for storage the existing StatefulSets cannot get.
async fn storage_warnings(vi: &VectorIndex, ctx: &Context, params: &[ShardParams]) {
    let wanted = (&vi.spec.storage.size, &vi.spec.storage.storage_class_name);
    if params
        .iter()
        .any(|p| (&p.statefulset.storage_size, &p.statefulset.storage_class) != wanted)
    {
        ctx.events
            .warning(
                vi,
                "StorageUnchanged",
                "spec.storage changed, but volume claim templates of existing StatefulSets are \
                 immutable; resize the PersistentVolumeClaims directly (if the storage class allows)"
                    .to_owned(),
            )
            .await;
    }
}

/// Warning events when Degraded or ConfigDrift turns true.
async fn transition_events(vi: &VectorIndex, ctx: &Context, new: &VectorIndexStatus) {
    let was_true = |t: &str| {
        vi.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .is_some_and(|c| c.status == "True")
    };
    for t in [ct::DEGRADED, ct::CONFIG_DRIFT] {
        if let Some(c) = new.conditions.iter().find(|c| c.type_ == t)
            && c.status == "True"
            && !was_true(t)
        {
            ctx.events.warning(vi, &c.reason, c.message.clone()).await;
        }
    }
}

/// Server-side apply of the status subresource.
pub async fn patch_status(
    ctx: &Context,
    vi: &VectorIndex,
    ns: &str,
    status: &VectorIndexStatus,
) -> Result<(), kube::Error> {
    let api: Api<VectorIndex> = Api::namespaced(ctx.client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": format!("{}/{}", kindex_crds::GROUP, kindex_crds::VERSION),
        "kind": "VectorIndex",
        "status": status,
    });
    api.patch_status(
        &vi.name_any(),
        &crate::apply::apply_params(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// Delay before retrying after the `failures`-th consecutive error: 5 s doubling up to
/// 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(160));
        assert_eq!(backoff(6), Duration::from_secs(300));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }

    fn delete(shard: u32) -> Step {
        Step::Act(Action::DeletePod {
            shard,
            ordinal: 0,
            pod: format!("x-s{shard}-0"),
        })
    }

    #[test]
    fn one_step_membership_before_rollout() {
        let init = Action::Initialize {
            shard: 1,
            members: vec![0],
        };
        let plans = vec![
            ShardPlan {
                membership: Step::Done,
                rollout: delete(0),
            },
            ShardPlan {
                membership: Step::Act(init.clone()),
                rollout: Step::Done,
            },
        ];
        assert_eq!(pick(&plans), Some(&init));
    }

    #[test]
    fn no_restart_while_another_shard_is_disrupted() {
        let plans = vec![
            ShardPlan {
                membership: Step::Done,
                rollout: Step::Wait("waiting for pod 2".into()),
            },
            ShardPlan {
                membership: Step::Done,
                rollout: delete(1),
            },
        ];
        assert_eq!(pick(&plans), None);
        let plans = vec![
            ShardPlan {
                membership: Step::Done,
                rollout: Step::Done,
            },
            ShardPlan {
                membership: Step::Done,
                rollout: delete(1),
            },
        ];
        assert!(matches!(
            pick(&plans),
            Some(Action::DeletePod { shard: 1, .. })
        ));
    }
}
