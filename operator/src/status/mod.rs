//! Pure: observed state + the decisions of this reconcile → `VectorIndexStatus`.

mod conditions;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use kindex_crds::{Phase, ShardStatus, VectorIndex, VectorIndexStatus, condition_types as ct};
use kube::ResourceExt;

use crate::build::labels;
use crate::membership::{Action, Step};
use crate::observe::{Observed, ShardObs, applied, voters};

use conditions::{cond, merge_conditions};
pub use conditions::{image_refused, invalid, paused, set_condition};

/// What the reconciler decided for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub membership: Step,
    pub rollout: Step,
}

/// The step executed this reconcile and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub action: Action,
    pub result: Result<(), String>,
}

/// Human description of an action, for conditions and events.
pub fn describe(vi: &VectorIndex, a: &Action) -> String {
    let name = vi.name_any();
    let pod = |shard: u32, ord: u32| labels::pod_name(&name, shard, ord);
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match a {
        Action::Initialize { shard, members } => {
            format!("initializing shard {shard} with voters {}", list(members))
        }
        Action::AddLearner { shard, node, .. } => {
            format!(
                "adding {} to shard {shard} as a learner",
                pod(*shard, *node)
            )
        }
        Action::Promote { shard, node, .. } => {
            format!("promoting {} to voter of shard {shard}", pod(*shard, *node))
        }
        Action::Replace {
            shard, node, old, ..
        } => format!(
            "replacing node {old} of shard {shard} by {} on its new volume (new Raft identity)",
            pod(*shard, *node)
        ),
        Action::RemoveVoters { shard, removed, .. } => {
            format!("removing voters {} from shard {shard}", list(removed))
        }
        Action::TransferLeader {
            shard, from, to, ..
        } => format!(
            "transferring leadership of shard {shard} from {} to {}",
            pod(*shard, *from),
            pod(*shard, *to)
        ),
        Action::DeletePod { pod, .. } => format!("restarting {pod} with the new pod template"),
    }
}

/// Structural drift reported by nodes or by a crash-looping pod's exit message.
pub fn drift(obs: &Observed, expected_hash: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in obs.shards.iter().flat_map(|s| &s.pods) {
        if let Some(s) = p.status()
            && !s.structural_hash.is_empty()
            && s.structural_hash != expected_hash
        {
            out.push(format!(
                "{} reports structural hash {} but the spec's is {expected_hash}",
                p.name, s.structural_hash
            ));
        } else if let Some(m) = &p.drift_message {
            out.push(format!("{}: {}", p.name, m.trim()));
        }
    }
    out
}

/// "<pod>: volume full on <pod>: N MiB free of M MiB, below the reserve ..." for every pod
/// whose node reports its data volume below the reserve (it refuses the writes it leads and
/// takes no entries from its leader until space is freed).
pub fn volume_full(obs: &Observed) -> Vec<String> {
    obs.shards
        .iter()
        .flat_map(|s| &s.pods)
        .filter_map(|p| {
            let v = p.status()?.volume.as_ref().filter(|v| v.full)?;
            let role = p.status().map_or("", |s| s.role.as_str());
            Some(format!("{} ({role}): {}", p.name, v.message))
        })
        .collect()
}

fn shard_status(vi: &VectorIndex, s: &ShardObs) -> ShardStatus {
    let name = vi.name_any();
    // A voter's pod name; a voter whose pod answers under another id lost its volume (the
    // pod is its replacement, not the voter), so it is marked and never counts as ready.
    let pod = |id: u64| {
        let ord = crate::membership::ordinal(id);
        let name = labels::pod_name(&name, s.shard, ord);
        match s.status_of(ord) {
            Some(st) if st.node_id != id => format!("{name} (replaced: lost volume)"),
            _ => name,
        }
    };
    let previous = vi
        .status
        .as_ref()
        .and_then(|st| st.shards.iter().find(|x| x.shard == s.shard));
    let answering: Vec<_> = s.pods.iter().filter_map(|p| p.status()).collect();
    let leader = s.leader().map(|(_, st)| st);
    // The leader's view; without one, what the nodes saw; without any, what we knew.
    let members: Vec<String> = match leader {
        Some(l) => voters(l).into_iter().map(pod).collect(),
        None => {
            let seen: BTreeSet<u64> = answering.iter().flat_map(|st| voters(st)).collect();
            if seen.is_empty() {
                previous.map(|p| p.members.clone()).unwrap_or_default()
            } else {
                seen.into_iter().map(pod).collect()
            }
        }
    };
    let best = leader.or_else(|| answering.iter().copied().max_by_key(|st| applied(st)));
    ShardStatus {
        shard: s.shard,
        leader: s.leader().map(|(p, _)| p.name.clone()),
        members,
        ready_replicas: s.pods.iter().filter(|p| p.ready).count() as i32,
        applied_index: best.map_or(0, applied),
        vectors: best.map_or(0, |b| b.vectors_live),
        last_snapshot: best
            .filter(|b| b.last_snapshot_unix_ms > 0)
            .and_then(|b| Timestamp::from_millisecond(b.last_snapshot_unix_ms).ok())
            .map(|t| t.to_string()),
        // Set by the policy step ([`crate::reconcile`]), which talks to the leaders.
        policies_synced: None,
    }
}

/// "shard N: R of V voters ready, fewer than a quorum (Q) ...", if the shard's ready voter pods
/// are fewer than a majority of its voters: its leader refuses writes (or none is elected).
fn quorum_lost(o: &ShardObs, st: &ShardStatus) -> Option<String> {
    let voters = st.members.len() as u32;
    let ready = o
        .pods
        .iter()
        .filter(|p| p.ready && st.members.contains(&p.name))
        .count() as u32;
    let quorum = crate::build::pdb::quorum(voters);
    (voters > 0 && ready < quorum).then(|| {
        format!(
            "shard {}: {ready} of {voters} voters ready, fewer than a quorum ({quorum}): \
             its writes are refused until enough replicas are back",
            o.shard
        )
    })
}

/// Status after a reconcile of a valid spec.
pub fn build(
    vi: &VectorIndex,
    obs: &Observed,
    plans: &[ShardPlan],
    executed: Option<&Executed>,
    expected_hash: &str,
    now: Timestamp,
) -> VectorIndexStatus {
    let spec_replicas = vi.spec.replicas as i32;
    let shards: Vec<ShardStatus> = obs.shards.iter().map(|s| shard_status(vi, s)).collect();
    let ready_pods: i32 = shards.iter().map(|s| s.ready_replicas).sum();
    let desired_pods = spec_replicas * vi.spec.shards as i32;
    let live = |s: &ShardObs| s.pods.iter().filter(|p| !p.terminating).count() as i32;

    let drift = drift(obs, expected_hash);
    let no_leader: Vec<u32> = obs
        .shards
        .iter()
        .filter(|s| s.initialized() && s.leader().is_none())
        .map(|s| s.shard)
        .collect();
    // Replicas whose divergence guard found they applied something else than their leader.
    let diverged: Vec<String> = obs
        .shards
        .iter()
        .flat_map(|s| &s.pods)
        .filter_map(|p| {
            let d = p.status()?.divergence.as_ref()?;
            Some(format!("{}: {}", p.name, d.message))
        })
        .collect();
    let quorum_lost: Vec<String> = obs
        .shards
        .iter()
        .zip(&shards)
        .filter(|(o, _)| o.initialized())
        .filter_map(|(o, st)| quorum_lost(o, st))
        .collect();
    let volume_full = volume_full(obs);
    let creating = obs.shards.iter().any(|s| !s.initialized());
    // The rollout's last restarted pod: the rollout decides Done once no pod is outdated,
    // but the rollout goes on until that pod is back (not Scaling or Degraded meanwhile).
    let restarting: Vec<String> = obs
        .shards
        .iter()
        .zip(plans)
        .filter(|(_, p)| p.rollout == Step::Done)
        .flat_map(|(s, _)| {
            s.recently_deleted
                .iter()
                .filter(|&&o| !s.pod(o).is_some_and(|p| p.ready && !p.terminating))
                .map(move |o| {
                    format!(
                        "shard {}: waiting for {} to be back with the new pod template",
                        s.shard,
                        labels::pod_name(&vi.name_any(), s.shard, *o)
                    )
                })
        })
        .collect();
    let rolling = plans.iter().any(|p| p.rollout != Step::Done) || !restarting.is_empty();
    let scaling = obs.shards.iter().zip(&shards).any(|(o, st)| {
        st.members.len() as i32 != spec_replicas
            || live(o) != spec_replicas
            || o.statefulset
                .as_ref()
                .is_some_and(|s| s.replicas != spec_replicas)
    });
    let mut blocked = Vec::new();
    let mut waiting = restarting;
    for p in plans {
        for step in [&p.membership, &p.rollout] {
            match step {
                Step::Blocked(m) => blocked.push(m.clone()),
                Step::Wait(m) => waiting.push(m.clone()),
                _ => {}
            }
        }
    }
    let failed = executed.and_then(|e| e.result.as_ref().err().map(|err| (e, err)));
    // A paused rollout (a pod that does not come back, crash-looping on the new template)
    // is not upgrading any more: Degraded, with the reason in the condition.
    let rollout_paused: Vec<&String> = plans
        .iter()
        .filter_map(|p| match &p.rollout {
            Step::Blocked(m) => Some(m),
            _ => None,
        })
        .collect();

    let phase = if !drift.is_empty() || !no_leader.is_empty() {
        Phase::Failed
    } else if creating {
        Phase::Creating
    } else if rolling && rollout_paused.is_empty() {
        Phase::Upgrading
    } else if scaling {
        Phase::Scaling
    } else if !blocked.is_empty()
        || ready_pods < desired_pods
        || failed.is_some()
        || !diverged.is_empty()
        || !volume_full.is_empty()
    {
        Phase::Degraded
    } else {
        Phase::Ready
    };

    let ready = if phase == Phase::Ready {
        cond(
            ct::READY,
            true,
            "AllReplicasReady",
            format!("{ready_pods}/{desired_pods} pods ready, every shard has a leader"),
        )
    } else {
        cond(
            ct::READY,
            false,
            &format!("{phase:?}"),
            format!("{ready_pods}/{desired_pods} pods ready"),
        )
    };

    let mut progress = Vec::new();
    if let Some(e) = executed {
        progress.push(match &e.result {
            Ok(()) => describe(vi, &e.action),
            Err(err) => format!("{} failed: {err}", describe(vi, &e.action)),
        });
    }
    progress.extend(waiting);
    let progressing_reason = match phase {
        Phase::Creating => Some("Creating"),
        Phase::Upgrading => Some("RollingUpdate"),
        Phase::Scaling => Some("Scaling"),
        _ if !progress.is_empty() => Some("Reconciling"),
        _ => None,
    };
    let progressing = match progressing_reason {
        _ if !rollout_paused.is_empty() => cond(
            ct::PROGRESSING,
            false,
            "RolloutPaused",
            rollout_paused
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Some(reason) => {
            let msg = if progress.is_empty() {
                "waiting for pods to start".to_owned()
            } else {
                progress.join("; ")
            };
            cond(ct::PROGRESSING, true, reason, msg)
        }
        None => cond(
            ct::PROGRESSING,
            false,
            "Reconciled",
            "all shards match the spec".into(),
        ),
    };

    let degraded = if !no_leader.is_empty() {
        let list = no_leader
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        cond(
            ct::DEGRADED,
            true,
            "NoLeader",
            format!("shards without a Raft leader: {list}"),
        )
    } else if !quorum_lost.is_empty() {
        cond(ct::DEGRADED, true, "QuorumLost", quorum_lost.join("; "))
    } else if !diverged.is_empty() {
        cond(ct::DEGRADED, true, "ReplicaDiverged", diverged.join("; "))
    } else if !volume_full.is_empty() {
        cond(ct::DEGRADED, true, "VolumeFull", volume_full.join("; "))
    } else if let Some((e, err)) = failed {
        cond(
            ct::DEGRADED,
            true,
            "ActionFailed",
            format!("{} failed: {err}", describe(vi, &e.action)),
        )
    } else if !blocked.is_empty() {
        let reason = if blocked.iter().any(|m| m.contains("rollout paused")) {
            "RolloutPaused"
        } else {
            "ReplicasUnavailable"
        };
        cond(ct::DEGRADED, true, reason, blocked.join("; "))
    } else if phase == Phase::Degraded {
        let not_ready: Vec<&str> = obs
            .shards
            .iter()
            .flat_map(|s| &s.pods)
            .filter(|p| !p.ready)
            .map(|p| p.name.as_str())
            .collect();
        cond(
            ct::DEGRADED,
            true,
            "PodsNotReady",
            format!(
                "{ready_pods}/{desired_pods} pods ready; not ready: {}",
                not_ready.join(", ")
            ),
        )
    } else {
        cond(
            ct::DEGRADED,
            false,
            "AsExpected",
            "no shard is missing replicas".into(),
        )
    };

    let config_drift = if drift.is_empty() {
        cond(
            ct::CONFIG_DRIFT,
            false,
            "NoDrift",
            "every node matches the spec's structural config".into(),
        )
    } else {
        cond(
            ct::CONFIG_DRIFT,
            true,
            "StructuralMismatch",
            drift.join("; "),
        )
    };

    let data_format = data_format(vi, obs);
    let vectors = (!shards.is_empty() && obs.shards.iter().any(|s| s.leader().is_some()))
        .then(|| shards.iter().map(|s| s.vectors).sum());
    VectorIndexStatus {
        phase: Some(phase),
        conditions: merge_conditions(vi, vec![ready, progressing, degraded, config_drift], now),
        replicas: Some(obs.shards.iter().map(live).min().unwrap_or(0)),
        ready_replicas: Some(ready_pods),
        ready: Some(VectorIndexStatus::ready_column(ready_pods, desired_pods)),
        vectors,
        shards,
        observed_generation: vi.metadata.generation,
        selector: Some(labels::selector_string(&labels::index_selector(
            &vi.name_any(),
        ))),
        data_format,
    }
}

/// The highest data format recorded or reported by a node now (0, from builds before the
/// field, does not count): what a rollback must be able to read.
pub fn data_format(vi: &VectorIndex, obs: &Observed) -> Option<u32> {
    let recorded = vi.status.as_ref().and_then(|s| s.data_format);
    let reported = obs
        .shards
        .iter()
        .flat_map(|s| &s.pods)
        .filter_map(|p| p.status())
        .map(|s| s.data_format)
        .filter(|&f| f > 0)
        .max();
    recorded.max(reported)
}
