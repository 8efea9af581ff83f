//! The divergence guard: a replica that applied something else than the leader at some log
//! index says so loudly instead of silently serving different answers (issue 12).
//!
//! Every replica keeps a running digest of what it applied ([`crate::raft::digest`]). Once a
//! second, a follower sends its (index, digest) to the leader's Admin `ApplyDigest`, which answers
//! with its own digest at that index. Different values at the same index mean the two applied
//! different entries: the follower records the divergence (sticky until the replica is
//! rebuilt), logs an error, sets `kindex_raft_diverged` to 1, reports it in Admin `Status`
//! (the operator turns it into `Degraded`), and `/readyz` fails, so Services stop sending it
//! reads. The leader itself is never marked: the guard trusts the leader's log, as Raft does.
//! Peers: etcd's corruption check compares hashes across members.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kindex_proto as pb;
use parking_lot::Mutex;

use crate::node::Node;
use crate::raft::NodeId;
use crate::raft::digest::ApplyDigest;
use crate::raft::digest::Comparison;
use crate::raft::digest::compare;

/// How often a follower compares its digest with the leader's.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A digest mismatch with the leader, found at `index` (the chains differ from some index at or
/// before it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Divergence {
    pub index: u64,
    pub ours: u64,
    pub leader: u64,
    pub leader_id: NodeId,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "diverged from the shard leader (node {}) at or before log index {}: apply digest {:016x} here, {:016x} on the leader; this replica must be rebuilt (wipe its volume)",
            self.leader_id, self.index, self.ours, self.leader
        )
    }
}

impl From<Divergence> for pb::Divergence {
    fn from(d: Divergence) -> Self {
        pb::Divergence {
            index: d.index,
            ours: d.ours,
            leader: d.leader,
            leader_id: d.leader_id,
            message: d.to_string(),
        }
    }
}

pub fn digest_to_pb(d: ApplyDigest) -> pb::ApplyDigest {
    pb::ApplyDigest {
        index: d.index,
        value: d.value,
        base: d.base,
    }
}

pub fn digest_from_pb(d: &pb::ApplyDigest) -> ApplyDigest {
    ApplyDigest {
        index: d.index,
        value: d.value,
        base: d.base,
    }
}

/// What the guard found on this replica.
#[derive(Debug, Default)]
pub struct Guard {
    found: Mutex<Option<Divergence>>,
}

impl Guard {
    pub fn found(&self) -> Option<Divergence> {
        *self.found.lock()
    }

    /// Records the first divergence found (later ones add nothing: the replica is already
    /// known to be wrong from that index on).
    fn record(&self, d: Divergence) -> bool {
        let mut found = self.found.lock();
        if found.is_some() {
            return false;
        }
        *found = Some(d);
        true
    }
}

/// The leader's answer to this node's `ApplyDigest` request, compared with our own digest.
pub fn judge(ours: ApplyDigest, reply: &pb::ApplyDigestResponse) -> Comparison {
    if !reply.is_leader {
        return Comparison::Incomparable;
    }
    compare(Some(ours), reply.at_index.as_ref().map(digest_from_pb))
}

/// Compares once with the leader (no-op on the leader or without one).
pub async fn check_once(node: &Node) -> Comparison {
    let Some(leader) = node.leader() else {
        return Comparison::Incomparable;
    };
    let Some(addr) = leader.admin.filter(|_| leader.id != node.node_id) else {
        return Comparison::Incomparable;
    };
    let ours = node.apply_digest();
    let reply = match node.admin_client(&addr) {
        Ok(mut client) => {
            let mut req = tonic::Request::new(pb::ApplyDigestRequest {
                node_id: node.node_id,
                digest: Some(digest_to_pb(ours)),
                // Also how the leader learns what this build supports (mixed versions).
                features: vec![
                    crate::policy::FEATURE.to_string(),
                    crate::policy::RETENTION_FEATURE.to_string(),
                ],
            });
            req.set_timeout(Duration::from_secs(2));
            client.apply_digest(req).await.map(|r| r.into_inner())
        }
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    let outcome = match &reply {
        Ok(r) => judge(ours, r),
        Err(_) => Comparison::Incomparable,
    };
    let label = match (&reply, outcome) {
        (Err(_), _) => "error",
        (_, Comparison::Equal) => "equal",
        (_, Comparison::Diverged { .. }) => "diverged",
        (_, Comparison::Incomparable) => "incomparable",
    };
    node.metrics.digest_checks.with_label_values(&[label]).inc();
    if let Comparison::Diverged { ours: o, leader: l } = outcome {
        let d = Divergence {
            index: ours.index,
            ours: o,
            leader: l,
            leader_id: leader.id,
        };
        if node.divergence.record(d) {
            node.metrics.diverged.set(1);
            tracing::error!(index = d.index, leader = d.leader_id, "{d}");
        }
    }
    outcome
}

/// Runs [`check_once`] every [`CHECK_EVERY`] while the node's Raft runs.
pub fn spawn(node: Arc<Node>) {
    let weak = Arc::downgrade(&node);
    drop(node);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let Some(node) = weak.upgrade() else { return };
            if node.is_stopping() {
                return;
            }
            check_once(&node).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(is_leader: bool, at: Option<(u64, u64)>) -> pb::ApplyDigestResponse {
        pb::ApplyDigestResponse {
            node_id: 0,
            is_leader,
            at_index: at.map(|(index, value)| pb::ApplyDigest {
                index,
                value,
                base: 0,
            }),
            current: None,
        }
    }

    #[test]
    fn only_the_leaders_digest_at_the_same_index_decides() {
        let ours = ApplyDigest {
            index: 7,
            value: 42,
            base: 0,
        };
        assert_eq!(judge(ours, &reply(true, Some((7, 42)))), Comparison::Equal);
        assert_eq!(
            judge(ours, &reply(true, Some((7, 43)))),
            Comparison::Diverged {
                ours: 42,
                leader: 43
            }
        );
        assert_eq!(
            judge(ours, &reply(false, Some((7, 43)))),
            Comparison::Incomparable,
            "a node that is no longer leader does not judge"
        );
        assert_eq!(judge(ours, &reply(true, None)), Comparison::Incomparable);
    }

    #[test]
    fn the_first_divergence_sticks() {
        let g = Guard::default();
        let d = Divergence {
            index: 3,
            ours: 1,
            leader: 2,
            leader_id: 0,
        };
        assert!(g.record(d));
        assert!(!g.record(Divergence { index: 9, ..d }));
        assert_eq!(g.found(), Some(d));
        assert!(d.to_string().contains("at or before log index 3"));
    }
}
