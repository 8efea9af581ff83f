use super::*;
use crate::observe::{NodeObs, PodObs, StsObs};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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
                    crash: None,
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
    assert_eq!(s.phase, Some(Phase::Ready));
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
fn fewer_ready_voters_than_a_quorum_is_quorum_lost() {
    let mut obs = healthy("h");
    obs.shards[0].pods[1].ready = false;
    obs.shards[0].pods[2].ready = false;
    let now = Timestamp::from_second(1_700_000_100).unwrap();
    let s = build(&vi(), &obs, &done(), None, "h", now);
    assert_eq!(s.phase, Some(Phase::Degraded));
    let c = condition(&s, ct::DEGRADED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "QuorumLost")
    );
    assert!(
        c.message
            .starts_with("shard 0: 1 of 3 voters ready, fewer than a quorum (2)"),
        "{}",
        c.message
    );
    // One of three down keeps the quorum: only PodsNotReady.
    obs.shards[0].pods[1].ready = true;
    let s = build(&vi(), &obs, &done(), None, "h", now);
    assert_eq!(condition(&s, ct::DEGRADED).reason, "PodsNotReady");
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

#[test]
fn a_paused_rollout_is_degraded_not_upgrading() {
    let mut obs = healthy("h");
    obs.shards[0].pods[2].ready = false;
    let msg = "shard 0: rollout paused, pod idx-s0-2 crash-loops with the new pod template \
               (CrashLoopBackOff, 2 restarts, last exit code 1 (Error))";
    let plans = vec![ShardPlan {
        membership: Step::Done,
        rollout: Step::Blocked(msg.into()),
    }];
    let now = Timestamp::from_second(1_700_000_100).unwrap();
    let s = build(&vi(), &obs, &plans, None, "h", now);
    assert_eq!(s.phase, Some(Phase::Degraded));
    let c = condition(&s, ct::DEGRADED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        ("True", "RolloutPaused", msg)
    );
    let p = condition(&s, ct::PROGRESSING);
    assert_eq!(
        (p.status.as_str(), p.reason.as_str(), p.message.as_str()),
        ("False", "RolloutPaused", msg)
    );
    // Still waiting for the restarted pod (not paused): Upgrading.
    let plans = vec![ShardPlan {
        membership: Step::Done,
        rollout: Step::Wait("shard 0: waiting for pod 2 to become ready".into()),
    }];
    let s = build(&vi(), &obs, &plans, None, "h", now);
    assert_eq!(s.phase, Some(Phase::Upgrading));
    assert_eq!(condition(&s, ct::PROGRESSING).reason, "RollingUpdate");
}

#[test]
fn a_full_volume_makes_the_index_degraded_naming_the_pod() {
    let mut obs = healthy("h");
    if let NodeObs::Answered(st) = &mut obs.shards[0].pods[0].node {
        st.volume = Some(kindex_proto::VolumeStatus {
            free_bytes: 1 << 20,
            total_bytes: 64 << 20,
            reserve_bytes: 4 << 20,
            full: true,
            message:
                "volume full on idx-s0-0: 1.0 MiB free of 64.0 MiB, below the reserve of 4.0 MiB"
                    .into(),
        });
    }
    let now = Timestamp::from_second(1_700_000_100).unwrap();
    let s = build(&vi(), &obs, &done(), None, "h", now);
    assert_eq!(s.phase, Some(Phase::Degraded));
    let c = condition(&s, ct::DEGRADED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "VolumeFull")
    );
    assert!(
        c.message
            .starts_with("idx-s0-0 (leader): volume full on idx-s0-0: 1.0 MiB free"),
        "{}",
        c.message
    );
    // Space freed: the report says so and the index is Ready again.
    if let NodeObs::Answered(st) = &mut obs.shards[0].pods[0].node {
        let v = st.volume.as_mut().unwrap();
        v.full = false;
        v.message.clear();
    }
    let s = build(&vi(), &obs, &done(), None, "h", now);
    assert_eq!(s.phase, Some(Phase::Ready));
    assert_eq!(condition(&s, ct::DEGRADED).reason, "AsExpected");
}

/// `status.dataFormat`: the highest any node reported, kept when the nodes report less (a
/// restarted node, or v0.1.0 nodes that report 0); unset while nothing reported one.
#[test]
fn data_format_is_the_highest_ever_reported() {
    let now = Timestamp::from_second(1_700_000_100).unwrap();
    let mut v = vi();
    let mut obs = healthy("h");
    assert_eq!(build(&v, &obs, &done(), None, "h", now).data_format, None);
    let set = |obs: &mut Observed, formats: [u32; 3]| {
        for (p, f) in obs.shards[0].pods.iter_mut().zip(formats) {
            if let NodeObs::Answered(st) = &mut p.node {
                st.data_format = f;
            }
        }
    };
    set(&mut obs, [0, 2, 4]);
    let st = build(&v, &obs, &done(), None, "h", now);
    assert_eq!(st.data_format, Some(4));
    v.status = Some(st);
    set(&mut obs, [0, 2, 0]);
    assert_eq!(
        build(&v, &obs, &done(), None, "h", now).data_format,
        Some(4)
    );
    // An image refusal keeps it too.
    assert_eq!(image_refused(&v, &["x".into()], now).data_format, Some(4));
}

/// A refused image: phase Degraded, the three conditions with reason ImageRefused.
#[test]
fn a_refused_image_is_degraded_with_the_reason() {
    let now = Timestamp::from_second(1_700_000_100).unwrap();
    let st = image_refused(&vi(), &["rollback to x refused: why".into()], now);
    assert_eq!(st.phase, Some(Phase::Degraded));
    for t in [ct::READY, ct::PROGRESSING, ct::DEGRADED] {
        let c = condition(&st, t);
        assert_eq!(c.reason, "ImageRefused");
        assert_eq!(c.message, "rollback to x refused: why");
    }
    assert_eq!(condition(&st, ct::DEGRADED).status, "True");
}

/// The rollout's last restarted pod: no pod is outdated any more (the rollout decides
/// Done), but until that pod is back the index is still Upgrading, not Scaling or Degraded.
#[test]
fn upgrading_until_the_last_restarted_pod_is_back() {
    let now = Timestamp::from_second(1_700_000_100).unwrap();
    let mut obs = healthy("h");
    obs.shards[0].recently_deleted.insert(2);
    // Deleted and not recreated yet, then recreated and not ready yet.
    obs.shards[0].pods.remove(2);
    let s = build(&vi(), &obs, &done(), None, "h", now);
    assert_eq!(s.phase, Some(Phase::Upgrading));
    let p = condition(&s, ct::PROGRESSING);
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("True", "RollingUpdate")
    );
    assert!(
        p.message.contains("waiting for idx-s0-2 to be back"),
        "{}",
        p.message
    );
    let mut obs = healthy("h");
    obs.shards[0].recently_deleted.insert(2);
    obs.shards[0].pods[2].ready = false;
    assert_eq!(
        build(&vi(), &obs, &done(), None, "h", now).phase,
        Some(Phase::Upgrading)
    );
    // Back and ready: Ready.
    obs.shards[0].pods[2].ready = true;
    assert_eq!(
        build(&vi(), &obs, &done(), None, "h", now).phase,
        Some(Phase::Ready)
    );
}
