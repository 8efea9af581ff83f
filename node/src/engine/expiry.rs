//! Which points a retention policy has expired: by ingest stamp (the leader's clock when the
//! write was proposed) or by a timestamp payload field. Used three ways with the same rule:
//! reads hide expired points (with the reading replica's clock), the leader's sweep picks them,
//! and apply re-checks each pruned point against the cutoff in the prune command (so a point
//! re-upserted since the sweep picked it survives).

use serde_json::Value;

use super::filter::Payload;

/// One retention rule at one moment: points older than `before_ms` are expired.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiryRule {
    /// Cutoff, ms since the Unix epoch.
    pub before_ms: u64,
    /// Age measured from this payload field (Unix seconds, a number) instead of the ingest
    /// stamp; points without a numeric value in it fall back to their ingest stamp.
    pub field: Option<String>,
}

/// The retention rules in force, and the stamp of points written before stamps existed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expiry {
    pub rules: Vec<ExpiryRule>,
    /// The ingest time given to points whose slot has no stamp (written by an older build,
    /// before the shard's first stamped entry): the stamp of that first entry. 0: none yet.
    pub unstamped_ms: u64,
}

impl ExpiryRule {
    /// Whether a point with raw ingest `stamp_ms` (0: unstamped) and `payload` is expired.
    pub fn expired(&self, stamp_ms: u64, unstamped_ms: u64, payload: Option<&Payload>) -> bool {
        if let Some(ms) = self
            .field
            .as_deref()
            .and_then(|f| payload?.get(f))
            .and_then(field_ms)
        {
            return ms < self.before_ms as f64;
        }
        let stamp = if stamp_ms == 0 {
            unstamped_ms
        } else {
            stamp_ms
        };
        // A point of unknown age (no stamp and none seen yet) never expires by age.
        stamp != 0 && stamp < self.before_ms
    }
}

/// A timestamp field's value in ms (Unix seconds, integer or fractional).
fn field_ms(v: &Value) -> Option<f64> {
    v.as_f64().filter(|s| s.is_finite()).map(|s| s * 1000.0)
}

impl Expiry {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn expired(&self, stamp_ms: u64, payload: Option<&Payload>) -> bool {
        self.rules
            .iter()
            .any(|r| r.expired(stamp_ms, self.unstamped_ms, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(v: Value) -> Payload {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn ingest_stamp_and_field_rules() {
        let by_stamp = ExpiryRule {
            before_ms: 10_000,
            field: None,
        };
        assert!(by_stamp.expired(9_999, 0, None));
        assert!(!by_stamp.expired(10_000, 0, None));
        // Unstamped: the migration stamp decides; unknown age never expires.
        assert!(by_stamp.expired(0, 5_000, None));
        assert!(!by_stamp.expired(0, 20_000, None));
        assert!(!by_stamp.expired(0, 0, None));

        let by_field = ExpiryRule {
            before_ms: 10_000,
            field: Some("ts".into()),
        };
        let old = payload(serde_json::json!({"ts": 9.5}));
        let new = payload(serde_json::json!({"ts": 10}));
        let text = payload(serde_json::json!({"ts": "9"}));
        assert!(by_field.expired(50_000, 0, Some(&old)));
        assert!(!by_field.expired(1, 0, Some(&new)));
        // Not a number, or missing: the ingest stamp.
        assert!(by_field.expired(1, 0, Some(&text)));
        assert!(!by_field.expired(50_000, 0, None));
    }

    #[test]
    fn any_rule_expires() {
        let e = Expiry {
            rules: vec![
                ExpiryRule {
                    before_ms: 100,
                    field: None,
                },
                ExpiryRule {
                    before_ms: 1_000,
                    field: Some("t".into()),
                },
            ],
            unstamped_ms: 0,
        };
        assert!(e.expired(500, None));
        assert!(!e.expired(5_000, None));
        assert!(Expiry::default().is_empty());
    }
}
