use super::*;
use crate::membership::Action;
use crate::status::ShardPlan;

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
