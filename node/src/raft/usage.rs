//! Payload usage of a shard replica for the quotas that need it (`maxPayloadBytes`, a
//! `tenantField`): bytes of live payloads, and points and bytes per tenant. Kept only while
//! such a quota is in force; rebuilt from the engine (a scan, at one log index, so the same on
//! every replica) when one appears or a snapshot is installed, and updated by every applied
//! write after that.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;

use serde_json::Value;

use crate::engine::Engine;
use crate::engine::filter::Payload;
use crate::policy::Quota;
use crate::policy::store::QuotaLoad;

/// What one live point counts for: its payload's size as stored, and its tenant values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    pub bytes: u64,
    /// `(field, value)` for each tracked field the payload has.
    pub tenants: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    fields: BTreeSet<String>,
    bytes: u64,
    /// `(field, value)` → (points, bytes).
    tenants: HashMap<(String, String), (u64, u64)>,
}

/// A tenant value as a bucket name: strings as they are, other values as JSON.
fn tenant_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Usage {
    /// Usage of the live points of `engine`, tracking the tenant `fields`.
    pub fn scan(engine: &Engine, fields: BTreeSet<String>) -> Usage {
        let mut u = Usage {
            fields,
            ..Usage::default()
        };
        for slot in engine.live_slots() {
            let share = u.share(engine.payload(slot));
            u.add(&share, 1);
        }
        u
    }

    pub fn fields(&self) -> &BTreeSet<String> {
        &self.fields
    }

    /// What a point with `payload` counts for.
    pub fn share(&self, payload: Option<&Payload>) -> Share {
        let Some(p) = payload else {
            return Share::default();
        };
        Share {
            // A map of JSON values always serializes.
            bytes: serde_json::to_vec(p).map_or(0, |v| v.len() as u64),
            tenants: self
                .fields
                .iter()
                .filter_map(|f| p.get(f).map(|v| (f.clone(), tenant_value(v))))
                .collect(),
        }
    }

    /// Adds (`sign` 1) or removes (`sign` -1) one point's share.
    pub fn add(&mut self, s: &Share, sign: i64) {
        self.bytes = apply(self.bytes, sign * s.bytes as i64);
        for t in &s.tenants {
            let e = self.tenants.entry(t.clone()).or_default();
            e.0 = apply(e.0, sign);
            e.1 = apply(e.1, sign * s.bytes as i64);
            if *e == (0, 0) {
                self.tenants.remove(t);
            }
        }
    }

    /// What quota `q` counts in each bucket a write touches: `changes` are the write's distinct
    /// points, each with the share of the point it replaces (None: a new id) and its own.
    pub fn loads(
        &self,
        q: &Quota,
        live: u64,
        changes: &[(Option<Share>, Share)],
    ) -> Vec<QuotaLoad> {
        match &q.tenant_field {
            None => {
                let add_points = changes.iter().filter(|(old, _)| old.is_none()).count() as u64;
                let add_bytes = changes
                    .iter()
                    .map(|(old, new)| new.bytes as i64 - old.as_ref().map_or(0, |o| o.bytes as i64))
                    .sum();
                vec![QuotaLoad {
                    tenant: None,
                    points: live,
                    add_points,
                    bytes: self.bytes,
                    add_bytes,
                }]
            }
            Some(field) => {
                // Per tenant value of `field`: points and bytes the write adds (a point that moves
                // from one tenant to another leaves the first).
                let mut delta: BTreeMap<String, (i64, i64)> = BTreeMap::new();
                let of = |s: &Share| {
                    s.tenants
                        .iter()
                        .find(|(f, _)| f == field)
                        .map(|(_, v)| v.clone())
                };
                for (old, new) in changes {
                    if let Some(t) = old.as_ref().and_then(of) {
                        let e = delta.entry(t).or_default();
                        e.0 -= 1;
                        e.1 -= old.as_ref().map_or(0, |o| o.bytes as i64);
                    }
                    if let Some(t) = of(new) {
                        let e = delta.entry(t).or_default();
                        e.0 += 1;
                        e.1 += new.bytes as i64;
                    }
                }
                delta
                    .into_iter()
                    .map(|(value, (dp, db))| {
                        let key = (field.clone(), value);
                        let (points, bytes) = self.tenants.get(&key).copied().unwrap_or_default();
                        QuotaLoad {
                            tenant: Some(key),
                            points,
                            add_points: dp.max(0) as u64,
                            bytes,
                            add_bytes: db,
                        }
                    })
                    .collect()
            }
        }
    }
}

fn apply(v: u64, d: i64) -> u64 {
    if d >= 0 {
        v.saturating_add(d as u64)
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(bytes: u64, tenant: Option<&str>) -> Share {
        Share {
            bytes,
            tenants: tenant
                .map(|t| vec![("tenant".to_string(), t.to_string())])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn loads_per_tenant_follow_points_that_move() {
        let mut u = Usage {
            fields: BTreeSet::from(["tenant".to_string()]),
            ..Usage::default()
        };
        u.add(&share(10, Some("a")), 1);
        u.add(&share(20, Some("a")), 1);
        u.add(&share(5, Some("b")), 1);
        u.add(&share(7, None), 1);
        assert_eq!(u.bytes, 42);
        let q = Quota {
            max_vectors: Some(2),
            max_payload_bytes: None,
            tenant_field: Some("tenant".into()),
        };
        // A point moves from a to b, and a new one joins a.
        let changes = [
            (Some(share(10, Some("a"))), share(10, Some("b"))),
            (None, share(3, Some("a"))),
        ];
        let loads = u.loads(&q, 4, &changes);
        let a = loads
            .iter()
            .find(|l| l.tenant.as_ref().unwrap().1 == "a")
            .unwrap();
        let b = loads
            .iter()
            .find(|l| l.tenant.as_ref().unwrap().1 == "b")
            .unwrap();
        assert_eq!(
            (a.points, a.add_points, a.bytes, a.add_bytes),
            (2, 0, 30, -7)
        );
        assert_eq!(
            (b.points, b.add_points, b.bytes, b.add_bytes),
            (1, 1, 5, 10)
        );
        // Shard-wide: one new id, 3 bytes more.
        let shard = Quota {
            tenant_field: None,
            ..q
        };
        let l = &u.loads(&shard, 4, &changes)[0];
        assert_eq!(
            (l.points, l.add_points, l.bytes, l.add_bytes),
            (4, 1, 42, 3)
        );
        u.add(&share(10, Some("a")), -1);
        u.add(&share(20, Some("a")), -1);
        assert!(!u.tenants.contains_key(&("tenant".into(), "a".into())));
    }
}
