//! Object sizes that follow the observed membership: the StatefulSet's replicas and the
//! voters the PDB protects.

use std::collections::BTreeSet;

use crate::observe::{ShardObs, voters};

/// Replicas of the shard's StatefulSet: `spec.replicas`, but never fewer than needed to
/// keep every pod that is still a Raft voter. When the membership is unknown (no
/// leader), the current size is kept: growing is safe, shrinking blindly is not.
pub fn statefulset_replicas(shard: &ShardObs, replicas: u32) -> i32 {
    let spec = replicas as i32;
    let highest = |ids: &BTreeSet<u64>| {
        ids.iter()
            .map(|&id| super::ordinal(id))
            .max()
            .and_then(|o| i32::try_from(o).ok())
            .map_or(0, |o| o + 1)
    };
    if let Some((_, leader)) = shard.leader() {
        return spec.max(highest(&voters(leader)));
    }
    let seen: BTreeSet<u64> = shard
        .pods
        .iter()
        .filter_map(|p| p.status())
        .flat_map(voters)
        .collect();
    let current = shard.statefulset.as_ref().map_or(spec, |s| s.replicas);
    spec.max(highest(&seen)).max(current)
}

/// Voters the PDB protects: the smaller of the desired and the current voter count.
pub fn pdb_voters(shard: &ShardObs, replicas: u32) -> u32 {
    match shard.leader() {
        Some((_, l)) => replicas.min(voters(l).len() as u32).max(1),
        None => replicas,
    }
}
