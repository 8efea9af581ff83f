//! The policy store of one shard replica: applied in log order, the same on every replica.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use super::command::PolicyBody;
use super::command::PolicyCommand;
use super::command::PolicyOp;
use super::command::Quota;
use super::command::Source;
use super::retention::Retention;
use super::schema::Schema;
use super::search::SearchRules;
use crate::engine::Expiry;
use crate::engine::ExpiryRule;
use crate::engine::filter::Payload;

/// Versions kept per policy (older ones are dropped; their numbers are never reused).
pub const KEEP_VERSIONS: usize = 10;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStore {
    /// The shard's clock: the highest leader stamp applied (ms since the Unix epoch). Never goes
    /// back, even when a leader with a slower clock takes over.
    pub clock_ms: u64,
    /// The ingest time of points stored without a stamp (by an older build): the clock when
    /// the shard applied its first stamped entry (0: none yet; such points never expire by
    /// age until then).
    #[serde(default)]
    pub unstamped_ms: u64,
    pub policies: BTreeMap<String, PolicyHistory>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyHistory {
    /// The newest version's number (versions count from 1).
    pub latest: u64,
    /// The last [`KEEP_VERSIONS`] versions, oldest first.
    pub versions: Vec<PolicyVersion>,
    pub counters: Counters,
}

/// One version of a policy, with its audit fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVersion {
    pub version: u64,
    pub op: PolicyOp,
    /// The content; `None`: deleted (restorable while an older version is kept).
    pub policy: Option<PolicyBody>,
    /// `Restore`: the version whose content this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
    pub source: Source,
    pub actor: String,
    /// The proposing leader's stamp.
    pub stamp_ms: u64,
    pub log_index: u64,
}

/// Replicated counters: every replica counts the same applies, and snapshots carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Writes checked against the policy.
    pub evaluated: u64,
    pub allowed: u64,
    pub rejected: u64,
    /// Log index of the last write the policy refused, or of its last prune that removed
    /// points (0: none).
    pub last_fired_index: u64,
    /// retention: points its prunes removed.
    #[serde(default)]
    pub pruned: u64,
}

/// Why a policy command changed nothing (the same on every replica).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error("{0}")]
    NotFound(String),
    /// `expectedVersion` did not match, or the policy belongs to the other source.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// An upsert a quota refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quota policy {name:?} (version {version}) allows at most {limit} {unit} {scope}; it holds {live} and the write adds {adds}"
)]
pub struct QuotaExceeded {
    pub name: String,
    pub version: u64,
    pub limit: u64,
    pub live: u64,
    pub adds: u64,
    /// `vectors` or `payload bytes`.
    pub unit: &'static str,
    /// `in this shard`, or `for tenant "a" (field "tenant") in this shard`.
    pub scope: String,
}

/// What one quota counts in one bucket (the shard, or one tenant), and what a write changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaLoad {
    /// `(field, value)` of the tenant; `None`: the whole shard.
    pub tenant: Option<(String, String)>,
    pub points: u64,
    /// New points the write adds to the bucket (replacing a point in it adds none).
    pub add_points: u64,
    pub bytes: u64,
    /// Payload bytes the write adds to the bucket (negative: it frees some).
    pub add_bytes: i64,
}

impl QuotaLoad {
    /// The first limit of `q` this load breaks.
    fn exceeds(&self, name: &str, version: u64, q: &Quota) -> Option<QuotaExceeded> {
        let scope = match &self.tenant {
            None => "in this shard".to_string(),
            Some((f, v)) => format!("for tenant {v:?} (field {f:?}) in this shard"),
        };
        let err = |limit, live, adds, unit| QuotaExceeded {
            name: name.to_string(),
            version,
            limit,
            live,
            adds,
            unit,
            scope: scope.clone(),
        };
        if let Some(max) = q.max_vectors
            && self.add_points > 0
            && self.points.saturating_add(self.add_points) > max
        {
            return Some(err(max, self.points, self.add_points, "vectors"));
        }
        if let Some(max) = q.max_payload_bytes
            && self.add_bytes > 0
            && self.bytes.saturating_add(self.add_bytes as u64) > max
        {
            return Some(err(max, self.bytes, self.add_bytes as u64, "payload bytes"));
        }
        None
    }
}

/// An upsert a schema policy refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema policy {name:?} (version {version}): {reason}")]
pub struct SchemaViolation {
    pub name: String,
    pub version: u64,
    pub reason: String,
}

/// Why a policy refused an upsert (the whole entry; nothing of it is stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error(transparent)]
    Schema(#[from] SchemaViolation),
}

/// One upserted point as the schema sees it.
#[derive(Debug, Clone, Copy)]
pub struct WritePoint<'a> {
    pub id: &'a str,
    pub payload: Option<&'a Payload>,
    /// Length of the payload's JSON text in the log entry.
    pub payload_bytes: usize,
}

impl PolicyHistory {
    pub fn current(&self) -> Option<&PolicyVersion> {
        self.versions.last()
    }

    /// The live content: the newest version unless it is a deletion.
    pub fn active(&self) -> Option<&PolicyBody> {
        self.current().and_then(|v| v.policy.as_ref())
    }

    fn push(&mut self, mut v: PolicyVersion) -> u64 {
        self.latest += 1;
        v.version = self.latest;
        self.versions.push(v);
        if self.versions.len() > KEEP_VERSIONS {
            let drop = self.versions.len() - KEEP_VERSIONS;
            self.versions.drain(..drop);
        }
        self.latest
    }
}

impl PolicyStore {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Moves the shard's clock to a leader stamp (never back). Every stamped entry goes through
    /// here before it is applied; the first one also dates the unstamped points.
    pub fn observe(&mut self, stamp_ms: u64) -> u64 {
        self.clock_ms = self.clock_ms.max(stamp_ms);
        if self.unstamped_ms == 0 {
            self.unstamped_ms = self.clock_ms;
        }
        self.clock_ms
    }

    /// Whether the store holds nothing a snapshot must carry.
    pub fn is_blank(&self) -> bool {
        self.policies.is_empty() && self.clock_ms == 0
    }

    /// The retention policies in force, by name.
    pub fn retentions(&self) -> impl Iterator<Item = (&String, &PolicyHistory, &Retention)> {
        self.policies.iter().filter_map(|(n, h)| match h.active() {
            Some(PolicyBody::Retention(r)) => Some((n, h, r)),
            _ => None,
        })
    }

    pub fn has_retention(&self) -> bool {
        self.retentions().next().is_some()
    }

    /// What reads hide at `now_ms` (the reading replica's clock).
    pub fn expiry_at(&self, now_ms: u64) -> Expiry {
        Expiry {
            rules: self
                .retentions()
                .filter_map(|(_, _, r)| r.rule_at(now_ms))
                .collect(),
            unstamped_ms: self.unstamped_ms,
        }
    }

    /// Checks a prune command against the policy in force when it is applied (log order: a
    /// policy changed since the sweep picked the points wins). Returns the rule each listed
    /// point is re-checked with, and how many points at most may go (`live`: points in the
    /// shard). Deterministic: the command's stamp is the only time.
    pub fn plan_prune(
        &mut self,
        cmd: &PolicyCommand,
        live: u64,
    ) -> Result<(ExpiryRule, u64), PolicyRefusal> {
        let stamp = self.observe(cmd.stamp_ms);
        let name = &cmd.name;
        let Some(prune) = &cmd.prune else {
            return Err(PolicyRefusal::Invalid(format!(
                "policy {name:?}: prune without points"
            )));
        };
        let Some((_, _, r)) = self.retentions().find(|(n, _, _)| *n == name) else {
            return Err(PolicyRefusal::NotFound(format!(
                "no retention policy {name:?} in force to prune for"
            )));
        };
        let mut rule = prune.rule();
        let limit = match (&prune.field, r.rule_at(stamp)) {
            // By count: only what is beyond the limit now.
            _ if prune.by_count => live.saturating_sub(r.max_vectors.unwrap_or(u64::MAX)),
            // By age: never past the policy's cutoff at the command's stamp.
            (field, Some(now)) if *field == now.field => {
                rule.before_ms = rule.before_ms.min(now.before_ms);
                u64::MAX
            }
            // The policy changed its measure since: prune nothing.
            _ => 0,
        };
        Ok((rule, limit))
    }

    /// Counts a prune of `name` that listed `listed` points and removed `removed`.
    pub fn count_pruned(&mut self, name: &str, listed: u64, removed: u64, log_index: u64) {
        if let Some(h) = self.policies.get_mut(name) {
            h.counters.evaluated += listed;
            h.counters.pruned += removed;
            if removed > 0 {
                h.counters.last_fired_index = log_index;
            }
        }
    }

    /// Applies one committed policy command at `log_index`: `Ok(version)` is the newest version
    /// of the policy afterwards. Deterministic: no clock, no I/O.
    pub fn apply(&mut self, cmd: &PolicyCommand, log_index: u64) -> Result<u64, PolicyRefusal> {
        self.observe(cmd.stamp_ms);
        let name = &cmd.name;
        let h = self.policies.get(name);
        let latest = h.map_or(0, |h| h.latest);
        if let Some(expected) = cmd.expected_version
            && expected != latest
        {
            return Err(PolicyRefusal::Conflict(format!(
                "policy {name:?}: expected version {expected}, but the newest is {latest}; read it again and retry"
            )));
        }
        let current = h.and_then(PolicyHistory::current);
        if let Some(cur) = current.filter(|c| c.policy.is_some() && c.source != cmd.source) {
            return Err(PolicyRefusal::Conflict(match cur.source {
                Source::Resource => format!(
                    "policy {name:?} is managed by the VectorIndex resource (spec.policies); change it there"
                ),
                Source::Api => format!(
                    "policy {name:?} was made through the Admin API; the VectorIndex resource cannot change it (delete it through the API first, or use another name)"
                ),
            }));
        }
        let active = current.and_then(|c| c.policy.clone());
        let content = match cmd.op {
            PolicyOp::Put => {
                let Some(p) = cmd.policy.clone() else {
                    return Err(PolicyRefusal::Invalid(format!(
                        "policy {name:?}: put without a policy"
                    )));
                };
                // Re-applying what is in force makes no version (an operator re-sync, a retry).
                if active.as_ref() == Some(&p) {
                    return Ok(latest);
                }
                Some((Some(p), None))
            }
            PolicyOp::Delete => {
                if active.is_none() {
                    return Err(PolicyRefusal::NotFound(format!(
                        "no policy {name:?} to delete"
                    )));
                }
                Some((None, None))
            }
            PolicyOp::Restore => {
                let v = cmd.restore.unwrap_or(0);
                let kept = h
                    .and_then(|h| h.versions.iter().find(|x| x.version == v))
                    .and_then(|x| x.policy.clone());
                let Some(p) = kept else {
                    return Err(PolicyRefusal::NotFound(format!(
                        "policy {name:?} has no version {v} with content to restore (the last {KEEP_VERSIONS} versions are kept; a deletion has none)"
                    )));
                };
                Some((Some(p), Some(v)))
            }
            // The state machine applies prunes (`plan_prune`): they touch points, not versions.
            PolicyOp::Prune => {
                return Err(PolicyRefusal::Invalid(format!(
                    "policy {name:?}: a prune is not a policy change"
                )));
            }
        };
        let Some((policy, restored_from)) = content else {
            return Ok(latest);
        };
        let version = PolicyVersion {
            version: 0,
            op: cmd.op,
            policy,
            restored_from,
            source: cmd.source,
            actor: cmd.actor.clone(),
            stamp_ms: cmd.stamp_ms,
            log_index,
        };
        Ok(self.policies.entry(name.clone()).or_default().push(version))
    }

    /// The quotas in force, by name.
    fn quotas(&self) -> impl Iterator<Item = (&String, &PolicyHistory, &Quota)> {
        self.policies.iter().filter_map(|(n, h)| match h.active() {
            Some(PolicyBody::Quota(q)) => Some((n, h, q)),
            _ => None,
        })
    }

    /// The schemas in force, by name.
    fn schemas(&self) -> impl Iterator<Item = (&String, &PolicyHistory, &Schema)> {
        self.policies.iter().filter_map(|(n, h)| match h.active() {
            Some(PolicyBody::Schema(s)) => Some((n, h, s)),
            _ => None,
        })
    }

    pub fn has_schema(&self) -> bool {
        self.schemas().next().is_some()
    }

    /// Whether every point of an upsert follows every schema in force (the first violation,
    /// in policy name order, then point order). Pure: the leader's pre-check.
    pub fn check_schema(&self, points: &[WritePoint<'_>]) -> Result<(), SchemaViolation> {
        for (name, h, schema) in self.schemas() {
            for p in points {
                schema
                    .check(p.id, p.payload, p.payload_bytes)
                    .map_err(|reason| SchemaViolation {
                        name: name.clone(),
                        version: h.latest,
                        reason,
                    })?;
            }
        }
        Ok(())
    }

    /// [`Self::check_schema`] at apply time, counting the outcome in every schema's counters.
    pub fn admit_schema(
        &mut self,
        points: &[WritePoint<'_>],
        log_index: u64,
    ) -> Result<(), SchemaViolation> {
        let verdict = self.check_schema(points);
        let names: Vec<String> = self.schemas().map(|(n, _, _)| n.clone()).collect();
        self.count(names, verdict.as_ref().err().map(|e| &e.name), log_index);
        verdict
    }

    /// Counts one evaluated write in the counters of `names`; `refused_by` refused it.
    fn count(&mut self, names: Vec<String>, refused_by: Option<&String>, log_index: u64) {
        for name in names {
            let Some(h) = self.policies.get_mut(&name) else {
                continue;
            };
            let c = &mut h.counters;
            c.evaluated += 1;
            if refused_by == Some(&name) {
                c.rejected += 1;
                c.last_fired_index = log_index;
            } else if refused_by.is_none() {
                c.allowed += 1;
            }
        }
    }

    /// The searchDefaults policies in force, combined.
    pub fn search_rules(&self) -> SearchRules {
        let mut rules = SearchRules::default();
        for (name, h) in &self.policies {
            if let Some(PolicyBody::SearchDefaults(d)) = h.active() {
                rules.add(name, h.latest, d);
            }
        }
        rules
    }

    pub fn has_quota(&self) -> bool {
        self.quotas().next().is_some()
    }

    /// Whether some quota in force needs the shard's payload usage (bytes, per tenant).
    pub fn quotas_need_usage(&self) -> bool {
        self.quotas().any(|(_, _, q)| q.needs_usage())
    }

    /// The tenant fields of the quotas in force.
    pub fn tenant_fields(&self) -> std::collections::BTreeSet<String> {
        self.quotas()
            .filter_map(|(_, _, q)| q.tenant_field.clone())
            .collect()
    }

    /// Whether a write is within every quota (the first one it breaks, by name): `loads` gives
    /// what each quota counts in the buckets the write touches. Pure: the leader's pre-check.
    pub fn check(&self, loads: &dyn Fn(&Quota) -> Vec<QuotaLoad>) -> Result<(), QuotaExceeded> {
        for (name, h, q) in self.quotas() {
            if let Some(e) = loads(q).iter().find_map(|l| l.exceeds(name, h.latest, q)) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`Self::check`] at apply time, counting the outcome in every quota's counters.
    pub fn admit(
        &mut self,
        loads: &dyn Fn(&Quota) -> Vec<QuotaLoad>,
        log_index: u64,
    ) -> Result<(), QuotaExceeded> {
        let verdict = self.check(loads);
        let names: Vec<String> = self.quotas().map(|(n, _, _)| n.clone()).collect();
        self.count(names, verdict.as_ref().err().map(|e| &e.name), log_index);
        verdict
    }

    /// A checksum of the whole store (policies, versions, audit fields, counters, clock), equal
    /// on replicas that applied the same log.
    pub fn checksum(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.to_bytes())
    }

    /// The snapshot section's payload (JSON: small, and readable with `kindex inspect`).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Maps with string keys, integers and strings always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PolicyStore, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("policy section is not valid: {e}"))
    }
}

#[cfg(test)]
mod tests;
