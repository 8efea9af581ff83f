//! The reconcile pipeline for one `VectorIndex`:
//!
//! 1. **fetch**: the object comes from the controller's watch cache;
//!    an index annotated `kindex.dev/paused: "true"` stops here (see [`pause`]);
//! 2. **validate**: `kindex_crds::validate` plus the operator's own name check, into a
//!    [`ValidIndex`](crate::validate::ValidIndex), the builders' only input; an
//!    invalid spec gets a status condition and a Warning event, nothing else is touched;
//! 3. **peer TLS**: with `spec.peerTls.enabled`, the index's CA and certificate Secrets
//!    created, renewed or rotated, and the operator's client certificate for the admin
//!    ports (see [`crate::peer_tls`]);
//! 4. **observe**: the existing ConfigMap (structural fields recorded at creation, for
//!    the immutability check), StatefulSets, pods, and every running node's `Status`;
//! 5. **build**: pure, infallible functions from the valid index + observations to the
//!    desired objects ([`Desired`](crate::build::Desired));
//! 6. **apply**: server-side apply (field manager `kindex-operator`, owner references);
//! 7. **orphans**: delete owned objects that are no longer desired;
//! 8. **act**: at most one membership or rollout step for the whole index;
//! 9. **policies**: `spec.policies` sent to every shard leader that does not apply them yet
//!    (see [`crate::policies`]), reported as `PoliciesSynced`;
//! 10. **status**: server-side apply of the status subresource.
//!
//! Each step fails with its own error type (see [`error`]), counted by step and variant.
//!
//! Observation comes before the build (not after the apply) because the StatefulSet's
//! `replicas` depends on the observed Raft membership: a pod is deleted only after it
//! left the Raft group (see `membership::statefulset_replicas`), and `volumeClaimTemplates`
//! are immutable, so an existing StatefulSet keeps the storage it was created with.

mod act;
pub mod error;
pub mod pause;
mod policies;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kindex_crds::{VectorIndex, VectorIndexStatus, condition_types as ct};
use kube::api::Patch;
use kube::runtime::controller::Action as Requeue;
use kube::{Api, ResourceExt};

pub use act::{pick, plan};
pub use error::{
    ActError, ApplyError, FetchError, ObserveError, ReconcileError, StatusError, ValidateError,
};

use crate::build::{self, ShardParams, StatefulSetParams, labels};
use crate::controller::Context;
use crate::membership::{self, Limits, Step};
use crate::observe::{self, ObserveCtx, Observed};
use crate::status::{self, Executed};
use crate::validate::{self, ValidIndex};

async fn peer_tls_events(vi: &VectorIndex, ctx: &Context, changes: crate::peer_tls::Changes) {
    use crate::peer_tls::CaStep;
    let ca = match changes.ca {
        CaStep::Keep => None,
        CaStep::Create => Some("created the index's peer CA"),
        CaStep::AddNext => Some("CA rotation 1/3: a new peer CA is trusted next to the old one"),
        CaStep::PromoteNext => {
            Some("CA rotation 2/3: the new peer CA signs; the pods' certificate is reissued")
        }
        CaStep::DropPrevious => Some("CA rotation 3/3: the old peer CA is no longer trusted"),
    };
    if let Some(message) = ca {
        ctx.events.normal(vi, "PeerCA", message.to_string()).await;
    }
    if changes.node_issued {
        ctx.events
            .normal(
                vi,
                "PeerCertificate",
                "issued the pods' peer certificate (Secret updated; the nodes reload it)"
                    .to_string(),
            )
            .await;
    }
}

/// Entry point used by the controller: runs the pipeline and records metrics.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(index = %vi.name_any(), namespace = %vi.namespace().unwrap_or_default())
)]
pub async fn reconcile(vi: Arc<VectorIndex>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let timer = ctx.metrics.duration.start_timer();
    let result = run(&vi, &ctx).await;
    timer.observe_duration();
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => {
            ctx.metrics
                .errors
                .with_label_values(&[e.step(), e.variant()])
                .inc();
            "error"
        }
    };
    ctx.metrics.reconciles.with_label_values(&[label]).inc();
    if result.is_ok() {
        ctx.reset_backoff(&vi);
    }
    result
}

async fn run(vi: &VectorIndex, ctx: &Context) -> Result<Requeue, ReconcileError> {
    // fetch: the object comes from the watch cache.
    let ns = vi.namespace().ok_or(FetchError::NoNamespace)?;
    if vi.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything.
        return Ok(Requeue::await_change());
    }
    let now = Timestamp::now();
    let cfg = &ctx.config;
    if pause::is_paused(vi) {
        return pause::hold(vi, ctx, &ns, now).await;
    }
    pause::note_resume(vi, ctx).await;

    // validate
    let valid = match ValidIndex::new(vi, &cfg.default_image) {
        Ok(valid) => valid,
        Err(ValidateError::Spec(errors)) => return invalid(vi, ctx, &ns, &errors, now).await,
        Err(e) => return Err(e.into()),
    };

    // peer TLS: before observing, which calls the admin ports.
    let changes = crate::peer_tls::ensure(
        &ctx.client,
        &valid,
        &ctx.identities,
        &cfg.peer_lifetimes,
        now.as_second(),
    )
    .await?;
    peer_tls_events(vi, ctx, changes).await;

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
    if let Some(recorded) = &obs.recorded_structural
        && let Err(errors) = validate::structure_unchanged(vi, recorded)
    {
        return invalid(vi, ctx, &ns, &errors, now).await;
    }
    // A spec.image the index cannot run (a rollback to a release older than its data, or one
    // that lacks a feature the spec uses): refused before anything is applied, so no pod is
    // touched. The data format is the highest recorded or reported right now.
    let refusals = crate::release::refusals(
        &valid.image,
        &cfg.default_image,
        &vi.spec,
        status::data_format(vi, &obs),
    );
    if !refusals.is_empty() {
        return image_refused(vi, ctx, &ns, &refusals, &obs, now).await;
    }
    let new_generation =
        vi.status.as_ref().and_then(|s| s.observed_generation) != vi.metadata.generation;
    if new_generation {
        for w in kindex_crds::warnings(&vi.spec) {
            ctx.events.warning(vi, "SpecWarning", w.to_string()).await;
        }
    }

    // build + apply + orphans
    let params = shard_params(&valid, &obs);
    if new_generation {
        storage_warnings(vi, ctx, &params).await;
    }
    let desired = build::build_all(&valid, &params, &ctx.config.operator_peer);
    crate::apply::apply_all(&ctx.client, &desired).await?;
    let deleted = crate::apply::delete_all_orphans(
        &ctx.client,
        &ns,
        &labels::owned_selector(&valid.name),
        &valid.owner.uid,
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
        Some(action) => Some((
            action.clone(),
            act::execute(vi, ctx, &ns, action, now).await,
        )),
        None => None,
    };

    // status
    let step = executed.as_ref().map(|(action, result)| Executed {
        action: action.clone(),
        result: result.as_ref().map_err(ToString::to_string).copied(),
    });
    let synced = policies::sync(vi, ctx, &ns, &obs).await;
    let mut status = status::build(vi, &obs, &plans, step.as_ref(), &valid.structural_hash, now);
    for shard in &mut status.shards {
        shard.policies_synced = synced.shards.get(shard.shard as usize).copied();
    }
    status::set_condition(
        vi,
        &mut status,
        policies::TYPE,
        synced.status,
        synced.reason,
        synced.message,
        now,
    );
    transition_events(vi, ctx, &status).await;
    patch_status(ctx, vi, &ns, &status).await?;

    if let Some((_, Err(e))) = executed {
        return Err(e.into());
    }
    // Pod changes are watched; Raft progress (a learner catching up) is not: poll.
    let waiting = plans.iter().any(|p| {
        matches!(p.membership, Step::Wait(_) | Step::Act(_))
            || matches!(p.rollout, Step::Wait(_) | Step::Act(_))
    });
    // Nor is a full volume freed (no pod changes): poll, so that recovery shows soon.
    let volume_full = !crate::status::volume_full(&obs).is_empty();
    Ok(Requeue::requeue(if executed.is_some() {
        cfg.step_requeue
    } else if waiting || volume_full {
        cfg.wait_requeue
    } else {
        cfg.requeue
    }))
}

/// Per-shard build parameters from observations.
pub fn shard_params(vi: &ValidIndex, obs: &Observed) -> Vec<ShardParams> {
    let replicas = vi.spec.replicas;
    (0..vi.spec.shards)
        .map(|shard| {
            let o = obs.shards.get(shard as usize);
            let sts_replicas = o.map_or(replicas as i32, |s| {
                membership::statefulset_replicas(s, replicas)
            });
            let mut sts = StatefulSetParams::from_spec(vi, sts_replicas);
            // volumeClaimTemplates are immutable: keep what the StatefulSet has.
            if let Some(existing) = o.and_then(|s| s.statefulset.as_ref()) {
                if let Some(size) = &existing.storage_size {
                    sts.storage_size = size.clone();
                }
                sts.storage_class = existing.storage_class.clone();
            }
            ShardParams {
                statefulset: sts,
                voters: o.map_or(replicas, |s| membership::pdb_voters(s, replicas)),
            }
        })
        .collect()
}

async fn invalid(
    vi: &VectorIndex,
    ctx: &Context,
    ns: &str,
    errors: &[String],
    now: Timestamp,
) -> Result<Requeue, ReconcileError> {
    tracing::warn!(?errors, "invalid spec");
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
    patch_status(ctx, vi, ns, &status).await?;
    // The next spec change triggers a reconcile anyway.
    Ok(Requeue::requeue(ctx.config.invalid_requeue))
}

async fn image_refused(
    vi: &VectorIndex,
    ctx: &Context,
    ns: &str,
    reasons: &[String],
    obs: &Observed,
    now: Timestamp,
) -> Result<Requeue, ReconcileError> {
    tracing::warn!(?reasons, "spec.image refused");
    let mut status = status::image_refused(vi, reasons, now);
    // Keep the format just observed too, so the refusal holds even if no full status was
    // written since the nodes reported it.
    status.data_format = status::data_format(vi, obs);
    if vi.status.as_ref().and_then(|s| s.observed_generation) != vi.metadata.generation
        || vi.status.as_ref().and_then(|s| s.phase) != status.phase
    {
        ctx.events
            .warning(vi, "ImageRefused", reasons.join("; "))
            .await;
    }
    patch_status(ctx, vi, ns, &status).await?;
    // Observed again at the next spec change or requeue (the nodes keep serving meanwhile).
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

/// Warning events when Degraded or ConfigDrift turns true, and when Degraded turns to
/// `VolumeFull` from another reason (a full volume needs someone to act).
async fn transition_events(vi: &VectorIndex, ctx: &Context, new: &VectorIndexStatus) {
    let old = |t: &str| {
        vi.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .filter(|c| c.status == "True")
    };
    for t in [ct::DEGRADED, ct::CONFIG_DRIFT] {
        if let Some(c) = new.conditions.iter().find(|c| c.type_ == t)
            && c.status == "True"
            && old(t).is_none_or(|o| c.reason == "VolumeFull" && o.reason != c.reason)
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
) -> Result<(), StatusError> {
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
    .await
    .map_err(StatusError::Patch)?;
    Ok(())
}

/// Delay before retrying after the `failures`-th consecutive error: 5 s doubling up to
/// 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_secs(secs.min(300))
}
