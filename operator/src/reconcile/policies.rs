//! The policy step: every shard leader gets the changes that make its store apply
//! `spec.policies` ([`crate::policies`]); the outcome is the `PoliciesSynced` condition.

use kindex_crds::{VectorIndex, condition_types as ct};
use kindex_proto::{PolicyChange, PolicyWriteRequest};
use kube::ResourceExt;

use crate::controller::Context;
use crate::observe::{Observed, PodRef};
use crate::policies::{self, Change};

/// Who the versions made by the operator name as their actor.
const ACTOR: &str = "kindex-operator";

/// `PoliciesSynced` as (status, reason, message), and per shard whether its leader applies
/// every policy the operator sends (`status.shards[].policiesSynced`).
pub struct Synced {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    /// Indexed by shard.
    pub shards: Vec<bool>,
}

pub async fn sync(vi: &VectorIndex, ctx: &Context, ns: &str, obs: &Observed) -> Synced {
    let (desired, unsupported) = policies::desired(&vi.spec.policies, vi.spec.shards);
    let (mut pending, mut conflicts) = (Vec::new(), Vec::new());
    let mut shards = vec![false; vi.spec.shards as usize];
    for shard in 0..vi.spec.shards {
        let Some((leader, _)) = obs.shards.get(shard as usize).and_then(|s| s.leader()) else {
            pending.push(format!("shard {shard}: no leader yet"));
            continue;
        };
        let pod = PodRef {
            namespace: ns.to_owned(),
            index: vi.name_any(),
            shard,
            ordinal: leader.ordinal,
        };
        let store = match ctx.nodes.list_policies(&pod).await {
            Ok(r) => serde_json::from_str(&r.store_json).unwrap_or_default(),
            Err(e) => {
                pending.push(format!("shard {shard}: {e}"));
                continue;
            }
        };
        let changes = match policies::plan(&desired, &store) {
            Ok(c) => c,
            Err(c) => {
                conflicts.extend(c.into_iter().map(|m| format!("shard {shard}: {m}")));
                continue;
            }
        };
        let mut all_applied = true;
        for change in changes {
            let (kind, policy_json) = match &change {
                Change::Put { policy, .. } => (PolicyChange::Put, policy.to_string()),
                Change::Delete { .. } => (PolicyChange::Delete, String::new()),
            };
            let req = PolicyWriteRequest {
                name: change.name().to_owned(),
                change: kind as i32,
                policy_json,
                actor: ACTOR.to_owned(),
                from_resource: true,
                ..Default::default()
            };
            match ctx.nodes.change_policy(&pod, req).await {
                Ok(w) => {
                    let what = match &change {
                        Change::Put { name, policy } => format!("{name} = {policy}"),
                        Change::Delete { name } => format!("{name} deleted"),
                    };
                    ctx.events
                        .normal(
                            vi,
                            "PolicyChanged",
                            format!("shard {shard}: {what} (version {})", w.version),
                        )
                        .await;
                }
                // E.g. a replica of an older build: the leader holds policy changes back.
                Err(e) => {
                    all_applied = false;
                    pending.push(format!("shard {shard}: {}: {e}", change.name()));
                }
            }
        }
        shards[shard as usize] = all_applied;
    }
    let (status, reason, problems) = if !conflicts.is_empty() {
        (false, "Conflict", conflicts)
    } else if !pending.is_empty() {
        (false, "Pending", pending)
    } else if !unsupported.is_empty() {
        (false, "Unsupported", unsupported)
    } else {
        let n = desired.len();
        return Synced {
            status: true,
            reason: "Synced",
            message: format!(
                "every shard applies the {n} polic{} of spec.policies",
                if n == 1 { "y" } else { "ies" }
            ),
            shards,
        };
    };
    Synced {
        status,
        reason,
        message: problems.join("; "),
        shards,
    }
}

pub const TYPE: &str = ct::POLICIES_SYNCED;
