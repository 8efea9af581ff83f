//! Pure: observed state + the decisions of this reconcile → `VectorIndexStatus`.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kindex_crds::{Phase, ShardStatus, VectorIndex, VectorIndexStatus, condition_types as ct};
use kube::ResourceExt;

use crate::build::labels;
use crate::membership::{Action, Step};
use crate::observe::{Observed, ShardObs, applied, voters};

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

/// Messages in conditions stay readable (the API allows 32 KiB).
const MAX_MESSAGE: usize = 1024;

fn truncate(mut s: String) -> String {
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
        Action::RemoveVoters { shard, removed, .. } => {
            format!("removing voters {} from shard {shard}", list(removed))
        }
        Action::TransferLeader { shard, from, to } => format!(
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

fn shard_status(vi: &VectorIndex, s: &ShardObs) -> ShardStatus {
    let name = vi.name_any();
    let pod = |id: u64| labels::pod_name(&name, s.shard, u32::try_from(id).unwrap_or(u32::MAX));
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
    }
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
    let creating = obs.shards.iter().any(|s| !s.initialized());
    let rolling = plans.iter().any(|p| p.rollout != Step::Done);
    let scaling = obs.shards.iter().zip(&shards).any(|(o, st)| {
        st.members.len() as i32 != spec_replicas
            || live(o) != spec_replicas
            || o.statefulset
                .as_ref()
                .is_some_and(|s| s.replicas != spec_replicas)
    });
    let mut blocked = Vec::new();
    let mut waiting = Vec::new();
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

    let phase = if !drift.is_empty() || !no_leader.is_empty() {
        Phase::Failed
    } else if creating {
        Phase::Creating
    } else if rolling {
        Phase::Upgrading
    } else if scaling {
        Phase::Scaling
    } else if !blocked.is_empty()
        || ready_pods < desired_pods
        || failed.is_some()
        || !diverged.is_empty()
    {
        Phase::Degraded
    } else {
        Phase::Running
    };

    let ready = if phase == Phase::Running {
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
    } else if !diverged.is_empty() {
        cond(ct::DEGRADED, true, "ReplicaDiverged", diverged.join("; "))
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
        selector: Some(labels::selector_string(&labels::index_selector(vi))),
    }
}

/// Status of an object whose spec is invalid: the last observations are kept, the
/// conditions say why nothing is done.
pub fn invalid(vi: &VectorIndex, errors: &[String], now: Timestamp) -> VectorIndexStatus {
    let prev = vi.status.clone().unwrap_or_default();
    let msg = format!("invalid spec: {}", errors.join("; "));
    let mut conditions = vec![
        cond(ct::READY, false, "InvalidSpec", msg.clone()),
        cond(ct::PROGRESSING, false, "InvalidSpec", msg.clone()),
        cond(ct::DEGRADED, true, "InvalidSpec", msg),
    ];
    if let Some(c) = prev.conditions.iter().find(|c| c.type_ == ct::CONFIG_DRIFT) {
        conditions.push(c.clone());
    }
    VectorIndexStatus {
        phase: Some(Phase::Failed),
        conditions: merge_conditions(vi, conditions, now),
        observed_generation: vi.metadata.generation,
        selector: Some(labels::selector_string(&labels::index_selector(vi))),
        ..prev
    }
}

fn cond(type_: &str, status: bool, reason: &str, message: String) -> Condition {
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
fn merge_conditions(vi: &VectorIndex, new: Vec<Condition>, now: Timestamp) -> Vec<Condition> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{NodeObs, PodObs, StsObs};
    use kindex_crds::{Metric, VectorIndexSpec};
    use kindex_proto::{LogId, Member, StatusResponse};

    fn vi() -> VectorIndex {
        let mut spec = VectorIndexSpec::new(8, Metric::L2);
        spec.replicas = 3;
        let mut vi = VectorIndex::new("idx", spec);
        vi.metadata.namespace = Some("ns".into());
        vi.metadata.generation = Some(4);
        vi
    }

    fn node(id: u64, leader: bool, hash: &str) -> NodeObs {
        NodeObs::answered(StatusResponse {
            node_id: id,
            role: if leader { "leader" } else { "follower" }.into(),
            term: 1,
            members: (0..3)
                .map(|node_id| Member {
                    node_id,
                    addr: String::new(),
                    voter: true,
                })
                .collect(),
            applied: Some(LogId { term: 1, index: 42 }),
            vectors_live: 1000,
            structural_hash: hash.into(),
            last_snapshot_unix_ms: 1_700_000_000_000,
            initialized: true,
            ..StatusResponse::default()
        })
    }

    fn healthy(hash: &str) -> Observed {
        Observed {
            recorded_structural: None,
            shards: vec![ShardObs {
                shard: 0,
                statefulset: Some(StsObs {
                    replicas: 3,
                    update_revision: Some("r".into()),
                    settled: true,
                    storage_size: None,
                    storage_class: None,
                }),
                pods: (0..3)
                    .map(|o| PodObs {
                        name: format!("idx-s0-{o}"),
                        ordinal: o,
                        ready: true,
                        terminating: false,
                        revision: Some("r".into()),
                        created: None,
                        crash_looping: false,
                        drift_message: None,
                        node: node(o.into(), o == 0, hash),
                    })
                    .collect(),
                ..ShardObs::default()
            }],
        }
    }

    fn done() -> Vec<ShardPlan> {
        vec![ShardPlan {
            membership: Step::Done,
            rollout: Step::Done,
        }]
    }

    fn condition<'a>(s: &'a VectorIndexStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn healthy_index_is_running() {
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let s = build(&vi(), &healthy("h"), &done(), None, "h", now);
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(condition(&s, ct::READY).status, "True");
        assert_eq!(condition(&s, ct::DEGRADED).status, "False");
        assert_eq!(s.shards[0].leader.as_deref(), Some("idx-s0-0"));
        assert_eq!(s.shards[0].members, ["idx-s0-0", "idx-s0-1", "idx-s0-2"]);
        assert_eq!(
            s.shards[0].last_snapshot.as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(s.vectors, Some(1000));
        assert_eq!(s.ready.as_deref(), Some("3/3"));
        assert_eq!(s.replicas, Some(3));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=idx,app.kubernetes.io/name=kindex")
        );
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();
        let t2 = Timestamp::from_second(1_700_000_200).unwrap();
        let mut v = vi();
        v.status = Some(build(&v, &healthy("h"), &done(), None, "h", t1));
        let s = build(&v, &healthy("h"), &done(), None, "h", t2);
        assert_eq!(condition(&s, ct::READY).last_transition_time.0, t1);
        let s = build(&v, &healthy("other"), &done(), None, "h", t2);
        assert_eq!(condition(&s, ct::CONFIG_DRIFT).last_transition_time.0, t2);
    }

    #[test]
    fn drift_fails_the_index() {
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let s = build(&vi(), &healthy("bad"), &done(), None, "h", now);
        assert_eq!(s.phase, Some(Phase::Failed));
        let c = condition(&s, ct::CONFIG_DRIFT);
        assert_eq!(c.status, "True");
        assert!(c.message.contains("idx-s0-0 reports structural hash bad"));

        let mut obs = healthy("h");
        let p = &mut obs.shards[0].pods[1];
        p.node = NodeObs::NotRunning;
        p.drift_message =
            Some("structural config drift: the data in /data was built with dimension=4".into());
        let s = build(&vi(), &obs, &done(), None, "h", now);
        assert!(
            condition(&s, ct::CONFIG_DRIFT)
                .message
                .contains("idx-s0-1: structural config drift")
        );
    }

    #[test]
    fn nothing_running_yet_is_creating_without_errors() {
        let obs = Observed {
            recorded_structural: None,
            shards: vec![ShardObs::default()],
        };
        let plans = vec![ShardPlan {
            membership: Step::Wait("shard 0: waiting for pods 0, 1, 2".into()),
            rollout: Step::Done,
        }];
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let s = build(&vi(), &obs, &plans, None, "h", now);
        assert_eq!(s.phase, Some(Phase::Creating));
        assert_eq!(condition(&s, ct::PROGRESSING).status, "True");
        assert_eq!(condition(&s, ct::DEGRADED).status, "False");
        assert_eq!(s.ready.as_deref(), Some("0/3"));
        assert_eq!(s.vectors, None);
    }

    #[test]
    fn unready_pod_without_other_reason_is_degraded() {
        let mut obs = healthy("h");
        obs.shards[0].pods[2].ready = false;
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let s = build(&vi(), &obs, &done(), None, "h", now);
        assert_eq!(s.phase, Some(Phase::Degraded));
        let c = condition(&s, ct::DEGRADED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "PodsNotReady")
        );
        assert!(c.message.ends_with("not ready: idx-s0-2"));
    }

    #[test]
    fn a_diverged_replica_makes_the_index_degraded_naming_it() {
        let mut obs = healthy("h");
        obs.shards[0].pods[1].ready = false;
        if let NodeObs::Answered(st) = &mut obs.shards[0].pods[1].node {
            st.divergence = Some(kindex_proto::Divergence {
                index: 77,
                message: "diverged from the shard leader (node 0) at log index 77".into(),
                ..Default::default()
            });
        }
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let s = build(&vi(), &obs, &done(), None, "h", now);
        assert_eq!(s.phase, Some(Phase::Degraded));
        let c = condition(&s, ct::DEGRADED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ReplicaDiverged")
        );
        assert!(c.message.starts_with("idx-s0-1: diverged"), "{}", c.message);
        assert!(c.message.contains("log index 77"));
    }

    #[test]
    fn invalid_spec_keeps_observations() {
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let mut v = vi();
        v.status = Some(build(&v, &healthy("h"), &done(), None, "h", now));
        let s = invalid(
            &v,
            &["spec.dimension = 0 is out of range 1..=4096".into()],
            now,
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(condition(&s, ct::READY).reason, "InvalidSpec");
        assert!(condition(&s, ct::DEGRADED).message.contains("dimension"));
        assert_eq!(s.shards.len(), 1);
    }
}
