//! The `retention` policy: points expire by age (ingest stamp, or a timestamp payload field)
//! and/or beyond a count (oldest first). Expired points are hidden from reads at once (each
//! replica with its own clock) and removed by the leader's sweep through Raft: bounded
//! [`Prune`] commands that apply re-checks point by point.

use serde::Deserialize;
use serde::Serialize;

use crate::engine::ExpiryRule;

/// Most points one prune command removes (one in flight per shard): a sweep never holds the
/// log for long, so writes keep flowing during a mass expiry.
pub const MAX_PRUNE_POINTS: usize = 10_000;

/// Longest accepted `maxAgeSeconds` (100 years): a larger age is a unit mistake.
const MAX_AGE_SECONDS: u64 = 100 * 365 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retention {
    /// Points older than this expire: hidden from reads at once, removed by the next sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    /// Age from this payload field (Unix seconds, a number) instead of the ingest time; a point
    /// without a number there ages from its ingest time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_field: Option<String>,
    /// Most points kept in the shard: the sweep removes the oldest (by ingest time) beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vectors: Option<u64>,
}

impl Retention {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_age_seconds.is_none() && self.max_vectors.is_none() {
            return Err("a retention policy needs maxAgeSeconds and/or maxVectors".into());
        }
        match self.max_age_seconds {
            Some(0) => return Err("retention maxAgeSeconds must be at least 1".into()),
            Some(s) if s > MAX_AGE_SECONDS => {
                return Err(format!(
                    "retention maxAgeSeconds {s} is over 100 years; it is in seconds"
                ));
            }
            _ => {}
        }
        if self.max_vectors == Some(0) {
            return Err("retention maxVectors must be at least 1".into());
        }
        match &self.timestamp_field {
            Some(f) if f.is_empty() => Err("retention timestampField is empty".into()),
            Some(_) if self.max_age_seconds.is_none() => {
                Err("retention timestampField needs maxAgeSeconds".into())
            }
            _ => Ok(()),
        }
    }

    /// The age rule at `now_ms`, if the policy has one.
    pub fn rule_at(&self, now_ms: u64) -> Option<ExpiryRule> {
        let age = self.max_age_seconds?;
        Some(ExpiryRule {
            before_ms: now_ms.saturating_sub(age.saturating_mul(1000)),
            field: self.timestamp_field.clone(),
        })
    }
}

/// What the sweep removes: the listed points that are still expired when the command is
/// applied. A point re-upserted after the sweep picked it has a new stamp and survives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prune {
    /// Each point is removed only if older than this (ms since the Unix epoch) by the rule's
    /// measure (`field`, else its ingest stamp).
    pub before_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Picked by `maxVectors` (oldest first): apply removes only as many as the shard holds
    /// beyond the limit then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_count: bool,
    /// Oldest first when `by_count`.
    pub ids: Vec<String>,
}

impl Prune {
    pub fn rule(&self) -> ExpiryRule {
        ExpiryRule {
            before_ms: self.before_ms,
            field: self.field.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(json: &str) -> Result<(), String> {
        serde_json::from_str::<Retention>(json)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(r(r#"{"maxAgeSeconds":60}"#).is_ok());
        assert!(r(r#"{"maxVectors":5}"#).is_ok());
        assert!(r(r#"{"maxAgeSeconds":60,"timestampField":"ts","maxVectors":9}"#).is_ok());
        assert!(r(r#"{}"#).unwrap_err().contains("maxAgeSeconds and/or"));
        assert!(
            r(r#"{"maxAgeSeconds":0}"#)
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            r(r#"{"maxAgeSeconds":99999999999}"#)
                .unwrap_err()
                .contains("100 years")
        );
        assert!(
            r(r#"{"maxVectors":3,"timestampField":"ts"}"#)
                .unwrap_err()
                .contains("needs maxAgeSeconds")
        );
        assert!(r(r#"{"maxAgeSecs":3}"#).unwrap_err().contains("maxAgeSecs"));
    }

    #[test]
    fn the_rule_cuts_at_now_minus_age() {
        let p = Retention {
            max_age_seconds: Some(10),
            timestamp_field: None,
            max_vectors: None,
        };
        assert_eq!(p.rule_at(60_000).map(|r| r.before_ms), Some(50_000));
        assert_eq!(p.rule_at(5).map(|r| r.before_ms), Some(0));
        let count_only = Retention {
            max_age_seconds: None,
            max_vectors: Some(3),
            ..p
        };
        assert!(count_only.rule_at(60_000).is_none());
    }
}
