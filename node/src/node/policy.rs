//! Policy changes (issue 16): validated and stamped by the shard leader, proposed through Raft,
//! applied by every replica's [`crate::policy::PolicyStore`]; and the mixed-version gate.

use std::time::Duration;
use std::time::Instant;

use crate::engine::filter::Filter;
use crate::policy;
use crate::policy::PolicyCommand;
use crate::policy::PolicyOp;
use crate::policy::PolicyStore;
use crate::policy::Source;
use crate::raft::Command;
use crate::raft::NodeId;

use super::*;

/// How recent a member's feature report must be (members report once a second).
const FEATURES_FRESH: Duration = Duration::from_secs(10);

/// A policy change as a client asks for it.
#[derive(Debug, Clone)]
pub struct PolicyChange {
    pub op: PolicyOp,
    pub name: String,
    /// `Put`: the policy as JSON.
    pub policy_json: String,
    /// `Restore`: the version to restore.
    pub restore: u64,
    pub expected_version: Option<u64>,
    pub actor: String,
    pub source: Source,
}

/// What a policy change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyWritten {
    pub version: u64,
    pub applied_index: u64,
}

impl Node {
    /// Records what a member reported it supports (its `ApplyDigest` calls to this leader).
    pub fn record_features(&self, member: NodeId, features: Vec<String>) {
        self.member_features
            .lock()
            .insert(member, (features, Instant::now()));
    }

    /// Whether this node leads its shard.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.node_id)
    }

    /// Refuses unless every other member (voters and learners) recently reported `feature`: an
    /// entry only newer builds apply must not reach a replica of an older build.
    pub(super) fn check_members_support(&self, feature: &str) -> Result<(), NodeError> {
        let m = self.raft_metrics();
        let reports = self.member_features.lock();
        let missing: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.node_id)
            .filter(|id| {
                !reports.get(id).is_some_and(|(f, at)| {
                    at.elapsed() <= FEATURES_FRESH && f.iter().any(|x| x == feature)
                })
            })
            .map(|id| id.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(NodeError::FailedPrecondition(format!(
            "policy changes wait until every replica of shard {} runs a kindex that applies them: \
             node(s) {} did not report \"{feature}\" in the last {}s (an older version, or not \
             reachable); retry once the rollout is done",
            self.shard,
            missing.join(", "),
            FEATURES_FRESH.as_secs()
        )))
    }

    /// Validates, stamps and proposes a policy change; this node must lead (the caller
    /// forwards [`NodeError::NotLeader`] to the leader).
    pub async fn change_policy(&self, c: PolicyChange) -> Result<PolicyWritten, NodeError> {
        self.check_writable()?;
        policy::command::validate_name(&c.name).map_err(NodeError::InvalidArgument)?;
        let body = match c.op {
            PolicyOp::Put => Some(
                policy::command::parse_policy(&c.policy_json)
                    .map_err(NodeError::InvalidArgument)?,
            ),
            PolicyOp::Delete | PolicyOp::Restore => None,
            PolicyOp::Prune => {
                return Err(NodeError::InvalidArgument(
                    "prunes are made by the retention sweep, not asked for".into(),
                ));
            }
        };
        if c.op == PolicyOp::Restore && c.restore == 0 {
            return Err(NodeError::InvalidArgument(
                "restore needs the version to restore (1 or more)".into(),
            ));
        }
        if !self.is_leader() {
            let leader = self.leader().map(|l| l.id);
            return Err(self.not_leader(leader.filter(|id| *id != self.node_id), None));
        }
        self.check_members_support(policy::FEATURE)?;
        if matches!(body, Some(policy::PolicyBody::Retention(_))) {
            self.check_members_support(policy::RETENTION_FEATURE)?;
        }
        let cmd = PolicyCommand {
            v: policy::COMMAND_VERSION,
            op: c.op,
            name: c.name,
            policy: body,
            restore: (c.op == PolicyOp::Restore).then_some(c.restore),
            prune: None,
            expected_version: c.expected_version,
            source: c.source,
            actor: c.actor,
            // The leader's clock is the only time a policy sees (apply reads none).
            stamp_ms: self.now_ms(),
        };
        let r = self
            .propose(&Command::Policy { json: cmd.encode() })
            .await?;
        Ok(PolicyWritten {
            version: r.affected,
            applied_index: r.applied_index,
        })
    }

    /// What a search runs with here under the searchDefaults policies this replica applied:
    /// `ef` capped, the mandatory filter added; refused (and counted) over a cap or without a
    /// required filter field.
    pub fn search_under_policies(
        &self,
        k: usize,
        ef: Option<usize>,
        filter: Filter,
    ) -> Result<(Option<usize>, Filter), NodeError> {
        let rules = self.state.search_rules();
        if rules.is_empty() {
            return Ok((ef, filter));
        }
        let default_ef = self.engine().knobs().ef_search;
        rules.apply(k, ef, default_ef, filter).map_err(|e| {
            self.metrics.policy_search_refusals.inc();
            NodeError::InvalidArgument(e.to_string())
        })
    }

    /// The policy store as this replica applied it.
    pub fn policies(&self) -> PolicyStore {
        self.state.policies()
    }
}
