//! One PodDisruptionBudget per shard, keeping a Raft quorum through voluntary
//! disruptions (node drains).
//!
//! `maxUnavailable = voters - quorum(voters)`, except that it is never below 1: a
//! budget that allows no disruption at all (1 or 2 voters, which have no fault
//! tolerance to protect anyway) would block every node drain and cluster upgrade
//! forever. The operator warns about 1 and even replica counts separately.
//! `unhealthyPodEvictionPolicy: AlwaysAllow` lets a drain evict a crash-looping pod,
//! which serves nothing, even when the budget is used up.

use super::{labels, owned_meta};
use crate::validate::ValidIndex;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Majority of `n` voters.
pub fn quorum(n: u32) -> u32 {
    n / 2 + 1
}

/// Voters that may be down at once without losing the quorum (at least 1, see above).
pub fn max_unavailable(voters: u32) -> u32 {
    voters.saturating_sub(quorum(voters)).max(1)
}

pub fn build_pdb(vi: &ValidIndex, shard: u32, voters: u32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(
            vi,
            labels::pdb_name(&vi.name, shard),
            labels::shard_labels(&vi.name, shard),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(voters) as i32)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::shard_selector(&vi.name, shard)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_a_quorum() {
        let table = [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3)];
        for (voters, want) in table {
            assert_eq!(max_unavailable(voters), want, "{voters} voters");
        }
    }
}
