//! Rolling restart of a shard after its pod template changed (`OnDelete` StatefulSets:
//! nothing restarts until the operator deletes a pod). Pure decision, one step.
//!
//! 1. Wait until the StatefulSet controller has seen the current template.
//! 2. An outdated pod that is not serving (not ready, or its node does not answer) is
//!    deleted right away: it adds nothing to availability, and waiting for it would
//!    wedge a rollout that fixes a broken image. Before the Raft group is formed every
//!    outdated pod is in that position (no data to protect).
//! 3. Otherwise every pod must be ready and caught up before the next disruption; a pod
//!    that does not come back within the pod-ready timeout pauses the rollout
//!    (Blocked → Degraded), and so does, at once, an up-to-date pod that crash-loops
//!    (it will not come back by waiting; fixing the template replaces it by step 2).
//! 4. Outdated followers are restarted one at a time (highest ordinal first).
//! 5. Last the leader: leadership is transferred to an up-to-date caught-up voter, and
//!    the old leader is restarted once it is a follower. A single-replica shard has no
//!    one to hand over to: its pod is simply restarted.

use crate::membership::{Action, Limits, Step, coming_back, lag, ordinal};
use crate::observe::{ShardObs, voters};

/// The next rollout step for `shard`, which runs `replicas` pods.
pub fn decide(shard: &ShardObs, limits: &Limits) -> Step {
    let s = shard.shard;
    let Some(sts) = &shard.statefulset else {
        return Step::Done;
    };
    let Some(update) = &sts.update_revision else {
        // No StatefulSet controller has looked at it (e.g. a bare API server).
        return Step::Done;
    };
    let outdated: Vec<_> = shard
        .pods
        .iter()
        .filter(|p| !p.terminating && p.revision.as_ref().is_some_and(|r| r != update))
        .collect();
    if outdated.is_empty() {
        return Step::Done;
    }
    if !sts.settled {
        return Step::Wait(format!(
            "shard {s}: waiting for the StatefulSet controller to observe the new template"
        ));
    }
    let delete = |p: &crate::observe::PodObs| {
        Step::Act(Action::DeletePod {
            shard: s,
            ordinal: p.ordinal,
            pod: p.name.clone(),
        })
    };
    if let Some(p) = outdated
        .iter()
        .find(|p| !shard.initialized() || !p.ready || p.status().is_none())
    {
        return delete(p);
    }

    let Some((leader_pod, leader)) = shard.leader() else {
        return Step::Blocked(format!("shard {s}: rollout paused, no Raft leader"));
    };
    // Every pod must be back, ready and caught up before the next restart.
    for ord in 0..u32::try_from(sts.replicas).unwrap_or(0) {
        let p = shard.pod(ord);
        let ready = p.is_some_and(|p| p.ready && !p.terminating);
        // A pod crash-looping on the new template (a broken image, a bad flag) will not
        // come back by waiting: pause now, naming it, instead of after the timeout.
        if let Some(p) = p.filter(|p| !ready && !p.terminating)
            && let Some(crash) = &p.crash
        {
            return Step::Blocked(format!(
                "shard {s}: rollout paused, pod {} crash-loops with the new pod template ({crash}); \
                 fix the spec (e.g. spec.image) and the rollout resumes",
                p.name
            ));
        }
        let behind = lag(shard, leader, ord);
        if ready && behind.is_some_and(|l| l <= limits.max_lag) {
            continue;
        }
        let what = match (p, behind) {
            (None, _) => "to be recreated".to_owned(),
            (Some(_), Some(l)) if ready => format!("to catch up ({l} entries behind)"),
            _ => "to become ready".to_owned(),
        };
        return if coming_back(shard, ord, limits) {
            Step::Wait(format!("shard {s}: waiting for pod {ord} {what}"))
        } else {
            Step::Blocked(format!(
                "shard {s}: rollout paused, pod {ord} did not come back within {}s (waiting {what})",
                limits.pod_ready_timeout.as_secs()
            ))
        };
    }

    if let Some(p) = outdated
        .iter()
        .filter(|p| p.ordinal != leader_pod.ordinal)
        .max_by_key(|p| p.ordinal)
    {
        return delete(p);
    }
    // Only the leader is outdated.
    let target = voters(leader)
        .into_iter()
        .map(|id| (ordinal(id), id))
        .filter(|&(o, _)| o != leader_pod.ordinal)
        .find(|&(o, id)| {
            shard.pod(o).is_some_and(|p| {
                p.ready
                    && p.revision.as_ref() == Some(update)
                    && p.status().is_some_and(|st| st.node_id == id)
            })
        });
    match target {
        Some((to, to_id)) => Step::Act(Action::TransferLeader {
            shard: s,
            from: leader_pod.ordinal,
            to,
            to_id,
        }),
        None if voters(leader).len() <= 1 => delete(leader_pod),
        None => Step::Wait(format!(
            "shard {s}: no up-to-date voter to take over leadership"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{NodeObs, PodObs, StsObs};
    use k8s_openapi::jiff::Timestamp;
    use kindex_proto::{LogId, Member, StatusResponse};
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000;

    fn limits() -> Limits {
        Limits {
            max_lag: 100,
            pod_ready_timeout: Duration::from_secs(600),
            now: Timestamp::from_second(NOW).unwrap(),
        }
    }

    fn status(id: u64, leader: bool, applied: u64, n: u64) -> StatusResponse {
        StatusResponse {
            node_id: id,
            role: if leader { "leader" } else { "follower" }.into(),
            term: 2,
            members: (0..n)
                .map(|node_id| Member {
                    node_id,
                    addr: String::new(),
                    voter: true,
                })
                .collect(),
            applied: Some(LogId {
                term: 2,
                index: applied,
            }),
            initialized: true,
            ..StatusResponse::default()
        }
    }

    /// `revs[i]` is pod i's revision; `leader` its ordinal; all ready and caught up.
    fn shard(revs: &[&str], leader: u32) -> ShardObs {
        let n = revs.len() as u64;
        ShardObs {
            shard: 0,
            statefulset: Some(StsObs {
                replicas: revs.len() as i32,
                update_revision: Some("new".into()),
                settled: true,
                storage_size: None,
                storage_class: None,
            }),
            pods: revs
                .iter()
                .zip(0u32..)
                .map(|(rev, ord)| PodObs {
                    name: format!("idx-s0-{ord}"),
                    ordinal: ord,
                    ready: true,
                    terminating: false,
                    revision: Some((*rev).into()),
                    created: Some(Timestamp::from_second(NOW - 3600).unwrap()),
                    crash: None,
                    drift_message: None,
                    node: NodeObs::answered(status(ord.into(), ord == leader, 1000, n)),
                })
                .collect(),
            ..ShardObs::default()
        }
    }

    fn deletes(step: Step) -> u32 {
        match step {
            Step::Act(Action::DeletePod { ordinal, .. }) => ordinal,
            other => panic!("expected a pod deletion, got {other:?}"),
        }
    }

    #[test]
    fn up_to_date_shard_does_nothing() {
        assert_eq!(
            decide(&shard(&["new", "new", "new"], 0), &limits()),
            Step::Done
        );
    }

    #[test]
    fn followers_first_highest_ordinal_first() {
        let s = shard(&["old", "old", "old"], 0);
        assert_eq!(deletes(decide(&s, &limits())), 2);
        let s = shard(&["old", "old", "new"], 0);
        assert_eq!(deletes(decide(&s, &limits())), 1);
    }

    #[test]
    fn leader_last_after_transfer() {
        let s = shard(&["old", "new", "new"], 0);
        assert_eq!(
            decide(&s, &limits()),
            Step::Act(Action::TransferLeader {
                shard: 0,
                from: 0,
                to: 1,
                to_id: 1
            })
        );
        // Leadership moved to 1: pod 0 is an outdated follower now.
        let s = shard(&["old", "new", "new"], 1);
        assert_eq!(deletes(decide(&s, &limits())), 0);
    }

    #[test]
    fn single_replica_is_restarted_directly() {
        let s = shard(&["old"], 0);
        assert_eq!(deletes(decide(&s, &limits())), 0);
    }

    #[test]
    fn waits_for_restarted_pod_to_be_ready_and_caught_up() {
        // Pod 2 was restarted 30 s ago and is not ready yet.
        let mut s = shard(&["old", "old", "new"], 0);
        s.pods[2].ready = false;
        s.pods[2].created = Some(Timestamp::from_second(NOW - 30).unwrap());
        assert!(
            matches!(decide(&s, &limits()), Step::Wait(m) if m.contains("pod 2 to become ready"))
        );
        // Ready but 500 entries behind.
        s.pods[2].ready = true;
        s.pods[2].node = NodeObs::answered(status(2, false, 500, 3));
        assert!(matches!(decide(&s, &limits()), Step::Wait(m) if m.contains("500 entries")));
        // Deleted and not recreated yet.
        let mut s = shard(&["old", "old", "new"], 0);
        s.pods.remove(2);
        s.recently_deleted.insert(2);
        assert!(matches!(decide(&s, &limits()), Step::Wait(m) if m.contains("recreated")));
    }

    #[test]
    fn pauses_when_a_pod_does_not_come_back() {
        let mut s = shard(&["old", "old", "new"], 0);
        s.pods[2].ready = false;
        s.pods[2].created = Some(Timestamp::from_second(NOW - 700).unwrap());
        assert!(matches!(decide(&s, &limits()), Step::Blocked(m) if m.contains("paused")));
    }

    #[test]
    fn pauses_at_once_when_the_restarted_pod_crash_loops() {
        let mut s = shard(&["old", "old", "new"], 0);
        s.pods[2].ready = false;
        s.pods[2].node = NodeObs::NotRunning;
        s.pods[2].created = Some(Timestamp::from_second(NOW - 20).unwrap());
        s.pods[2].crash = Some("CrashLoopBackOff, 2 restarts, last exit code 1".into());
        assert!(matches!(decide(&s, &limits()),
            Step::Blocked(m) if m.contains("rollout paused, pod idx-s0-2 crash-loops")
                && m.contains("last exit code 1")));
        // Fixed template: the crash-looping pod is outdated now and replaced first.
        for p in &mut s.pods[..2] {
            p.revision = Some("new".into());
        }
        s.pods[2].revision = Some("broken".into());
        assert_eq!(deletes(decide(&s, &limits())), 2);
    }

    #[test]
    fn outdated_pod_that_is_down_is_replaced_first() {
        let mut s = shard(&["old", "old", "old"], 0);
        s.pods[1].ready = false;
        s.pods[1].node = NodeObs::Unreachable("crash".into());
        assert_eq!(deletes(decide(&s, &limits())), 1);
    }

    #[test]
    fn waits_for_the_statefulset_controller() {
        let mut s = shard(&["old", "old", "old"], 0);
        if let Some(sts) = s.statefulset.as_mut() {
            sts.settled = false;
        }
        assert!(matches!(decide(&s, &limits()), Step::Wait(_)));
    }

    #[test]
    fn uninitialized_shard_restarts_freely() {
        let mut s = shard(&["old", "old", "old"], 9);
        for p in &mut s.pods {
            p.node = NodeObs::answered(StatusResponse::default());
        }
        assert_eq!(deletes(decide(&s, &limits())), 0);
    }
}
