//! Pausing one index: with the annotation `kindex.dev/paused: "true"` a reconcile
//! changes nothing (no apply, no orphan sweep, no membership or rollout step) and only
//! reports a `Paused` condition, with an event when the pause starts. Removing the
//! annotation (or setting anything but `"true"`) resumes: the next reconcile applies
//! whatever changed meanwhile.

use k8s_openapi::jiff::Timestamp;
use kindex_crds::{VectorIndex, condition_types as ct};
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;

use super::{ReconcileError, patch_status};
use crate::build::labels;
use crate::controller::Context;
use crate::status;

pub fn is_paused(vi: &VectorIndex) -> bool {
    vi.annotations().get(labels::PAUSED).map(String::as_str) == Some("true")
}

/// The last reported status says paused.
fn was_paused(vi: &VectorIndex) -> bool {
    vi.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == ct::PAUSED))
        .is_some_and(|c| c.status == "True")
}

/// Reconcile of a paused index: report, change nothing. The annotation's removal is a
/// change of the object, which triggers the next reconcile.
pub(super) async fn hold(
    vi: &VectorIndex,
    ctx: &Context,
    ns: &str,
    now: Timestamp,
) -> Result<Requeue, ReconcileError> {
    if !was_paused(vi) {
        tracing::info!("reconciliation paused");
        ctx.events
            .normal(
                vi,
                "Paused",
                format!(
                    "reconciliation paused by the annotation {}: \"true\"",
                    labels::PAUSED
                ),
            )
            .await;
    }
    patch_status(ctx, vi, ns, &status::paused(vi, now)).await?;
    Ok(Requeue::await_change())
}

/// Event when a paused index runs again (its status drops the `Paused` condition).
pub(super) async fn note_resume(vi: &VectorIndex, ctx: &Context) {
    if was_paused(vi) {
        tracing::info!("reconciliation resumed");
        ctx.events
            .normal(
                vi,
                "Resumed",
                format!(
                    "the annotation {} is gone: reconciling again",
                    labels::PAUSED
                ),
            )
            .await;
    }
}
