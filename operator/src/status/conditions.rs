//! Conditions: building them, stamping generation and transition time, and the status
//! of an index whose spec is invalid.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kindex_crds::{Phase, VectorIndex, VectorIndexStatus, condition_types as ct};
use kube::ResourceExt;

use crate::build::labels;

/// Messages in conditions stay readable (the API allows 32 KiB).
const MAX_MESSAGE: usize = 1024;

pub(super) fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Status of an object whose spec is invalid: the last observations are kept, the
/// conditions say why nothing is done.
pub fn invalid(vi: &VectorIndex, errors: &[String], now: Timestamp) -> VectorIndexStatus {
    let msg = format!("invalid spec: {}", errors.join("; "));
    held(vi, Phase::Failed, "InvalidSpec", msg, now)
}

/// Status of an index whose `spec.image` is refused (see [`crate::release`]): a valid
/// spec the operator will not carry out, so nothing is changed, the pods keep running
/// what they run; phase `Degraded`, like a paused rollout.
pub fn image_refused(vi: &VectorIndex, reasons: &[String], now: Timestamp) -> VectorIndexStatus {
    held(vi, Phase::Degraded, "ImageRefused", reasons.join("; "), now)
}

/// The last observations kept; Ready and Progressing false and Degraded true with `reason`.
fn held(
    vi: &VectorIndex,
    phase: Phase,
    reason: &str,
    msg: String,
    now: Timestamp,
) -> VectorIndexStatus {
    let prev = vi.status.clone().unwrap_or_default();
    let mut conditions = vec![
        cond(ct::READY, false, reason, msg.clone()),
        cond(ct::PROGRESSING, false, reason, msg.clone()),
        cond(ct::DEGRADED, true, reason, msg),
    ];
    if let Some(c) = prev.conditions.iter().find(|c| c.type_ == ct::CONFIG_DRIFT) {
        conditions.push(c.clone());
    }
    VectorIndexStatus {
        phase: Some(phase),
        conditions: merge_conditions(vi, conditions, now),
        observed_generation: vi.metadata.generation,
        selector: Some(labels::selector_string(&labels::index_selector(
            &vi.name_any(),
        ))),
        ..prev
    }
}

pub(super) fn cond(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: truncate(message),
        // Filled in by `merge_conditions`.
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Stamp generation and time; a condition whose status did not change keeps its
/// `lastTransitionTime`.
pub(super) fn merge_conditions(
    vi: &VectorIndex,
    new: Vec<Condition>,
    now: Timestamp,
) -> Vec<Condition> {
    let prev = vi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    new.into_iter()
        .map(|mut c| {
            c.observed_generation = vi.metadata.generation;
            c.last_transition_time = match prev.iter().find(|p| p.type_ == c.type_) {
                Some(p)
                    if p.status == c.status
                        && p.last_transition_time.0 != Timestamp::UNIX_EPOCH =>
                {
                    p.last_transition_time.clone()
                }
                _ => Time(now),
            };
            c
        })
        .collect()
}

/// Status of a paused index: the last observations and conditions are kept (they are
/// what was true when it was paused), plus `Paused`. `observedGeneration` stays, as
/// spec changes made while paused are not acted on.
pub fn paused(vi: &VectorIndex, now: Timestamp) -> VectorIndexStatus {
    let prev = vi.status.clone().unwrap_or_default();
    let mut conditions: Vec<Condition> = prev
        .conditions
        .iter()
        .filter(|c| c.type_ != ct::PAUSED)
        .cloned()
        .collect();
    let paused = cond(
        ct::PAUSED,
        true,
        "Annotation",
        format!(
            "reconciliation is paused by the annotation {}: \"true\"; remove it to resume",
            labels::PAUSED
        ),
    );
    // Only the new condition is stamped: the kept ones describe an older generation.
    conditions.extend(merge_conditions(vi, vec![paused], now));
    VectorIndexStatus { conditions, ..prev }
}

/// Sets one condition of `status` (replacing one of its type), stamped like the others.
pub fn set_condition(
    vi: &VectorIndex,
    status: &mut VectorIndexStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let c = merge_conditions(vi, vec![cond(type_, value, reason, message)], now);
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.extend(c);
}
