//! `spec.policies` → the policy store of every shard (issue 16, docs/policies.md).
//!
//! Pure: [`desired`] turns the spec into the policies each shard should apply (index-wide
//! `maxVectors` and quota `maxPayloadBytes` split over the shards, per tenant when the quota
//! has a `tenantField`; retention `maxAgeSeconds` and `timestampField`, `schema` and
//! `searchDefaults` unchanged on every shard), [`plan`] compares them with a shard's store (as
//! its leader reports it, `ListPolicies`) and lists the changes. The reconciler sends them to the
//! shard leader with `from_resource` set, so people cannot change these policies through the
//! API, and the operator never touches policies made through the API. Content already in
//! force makes no change: re-applying an unchanged resource or restarting the operator makes
//! no new version. For that the JSON sent is exactly what the node reports back for it (its
//! `PolicyBody` serialized: `schema` always has `fields`, every field rule its `required`),
//! or the operator would send it again on every reconcile.

#[cfg(test)]
mod tests;

use kindex_crds::{FilterCondition, PolicyFilter, PolicyKind, PolicySpec};
use serde_json::{Map, Value, json};

/// A policy one shard should apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub policy: Value,
}

/// A change to send to a shard leader.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put { name: String, policy: Value },
    Delete { name: String },
}

impl Change {
    pub fn name(&self) -> &str {
        match self {
            Change::Put { name, .. } | Change::Delete { name } => name,
        }
    }
}

/// What each shard should apply, and the policies of the spec nodes cannot enforce yet (by
/// name, with why): those are not sent, and `PoliciesSynced` says so.
pub fn desired(spec: &[PolicySpec], shards: u32) -> (Vec<Desired>, Vec<String>) {
    let mut out = Vec::new();
    let mut unsupported = Vec::new();
    for p in spec {
        // Index-wide limits: every shard gets its share, rounded up (docs/policies.md).
        let share = |n: u64| n.div_ceil(u64::from(shards.max(1)));
        match p.kind {
            PolicyKind::Quota if p.max_vectors.is_none() && p.max_payload_bytes.is_none() => {
                unsupported.push(format!(
                    "{}: a quota needs maxVectors and/or maxPayloadBytes",
                    p.name
                ))
            }
            PolicyKind::Quota => {
                let mut body = json!({"kind": "quota"});
                if let Some(max) = p.max_vectors {
                    body["maxVectors"] = share(max).into();
                }
                if let Some(max) = p.max_payload_bytes {
                    body["maxPayloadBytes"] = share(max).into();
                }
                // With a tenant field the shard's share holds per tenant: a tenant's points
                // are spread over the shards by id like all others.
                if let Some(field) = &p.tenant_field {
                    body["tenantField"] = field.as_str().into();
                }
                out.push(Desired {
                    name: p.name.clone(),
                    policy: body,
                });
            }
            PolicyKind::Retention if p.max_age_seconds.is_none() && p.max_vectors.is_none() => {
                unsupported.push(format!(
                    "{}: a retention policy needs maxAgeSeconds and/or maxVectors",
                    p.name
                ))
            }
            // The node refuses it (nothing to measure the field's age against); validation
            // already reports it as InvalidSpec, this keeps it from being sent regardless.
            PolicyKind::Retention if p.timestamp_field.is_some() && p.max_age_seconds.is_none() => {
                unsupported.push(format!("{}: timestampField needs maxAgeSeconds", p.name))
            }
            PolicyKind::Retention => {
                let mut body = json!({"kind": "retention"});
                if let Some(age) = p.max_age_seconds {
                    body["maxAgeSeconds"] = age.into();
                }
                if let Some(field) = &p.timestamp_field {
                    body["timestampField"] = field.as_str().into();
                }
                if let Some(max) = p.max_vectors {
                    body["maxVectors"] = share(max).into();
                }
                out.push(Desired {
                    name: p.name.clone(),
                    policy: body,
                });
            }
            // Per point and per search: every shard gets the same policy.
            PolicyKind::Schema => out.push(Desired {
                name: p.name.clone(),
                policy: schema_json(p),
            }),
            PolicyKind::SearchDefaults => out.push(Desired {
                name: p.name.clone(),
                policy: search_defaults_json(p),
            }),
        }
    }
    (out, unsupported)
}

/// A `schema` policy as the node's `PolicyBody` reads and reports it.
fn schema_json(p: &PolicySpec) -> Value {
    let fields: Map<String, Value> = p
        .fields
        .iter()
        .map(|(name, rule)| {
            let rule = json!({"type": rule.type_.as_str(), "required": rule.required});
            (name.clone(), rule)
        })
        .collect();
    let mut body = json!({"kind": "schema", "fields": fields});
    if let Some(max) = p.max_payload_bytes {
        body["maxPayloadBytes"] = max.into();
    }
    body
}

/// A `searchDefaults` policy as the node's `PolicyBody` reads and reports it (absent
/// settings left out; the node keeps the filter as sent).
fn search_defaults_json(p: &PolicySpec) -> Value {
    let mut body = json!({"kind": "searchDefaults"});
    if let Some(k) = p.max_k {
        body["maxK"] = k.into();
    }
    if let Some(ef) = p.max_ef_search {
        body["maxEfSearch"] = ef.into();
    }
    if let Some(f) = &p.filter {
        body["filter"] = filter_json(f);
    }
    if !p.require_match.is_empty() {
        body["requireMatch"] = p.require_match.clone().into();
    }
    body
}

/// The search API's filter grammar (`{"must": [{"field": ..., "match": ...}], ...}`).
fn filter_json(f: &PolicyFilter) -> Value {
    let list = |conditions: &[FilterCondition]| -> Value {
        conditions.iter().map(condition_json).collect()
    };
    let mut out = Map::new();
    if !f.must.is_empty() {
        out.insert("must".into(), list(&f.must));
    }
    if !f.must_not.is_empty() {
        out.insert("mustNot".into(), list(&f.must_not));
    }
    Value::Object(out)
}

fn condition_json(c: &FilterCondition) -> Value {
    let mut out = json!({"field": c.field});
    if let Some(m) = &c.match_ {
        out["match"] = m.clone();
    }
    if let Some(r) = &c.range {
        let mut bounds = Map::new();
        for (name, bound) in [("gt", r.gt), ("gte", r.gte), ("lt", r.lt), ("lte", r.lte)] {
            if let Some(b) = bound {
                bounds.insert(name.into(), b.into());
            }
        }
        out["range"] = Value::Object(bounds);
    }
    out
}

/// The changes that make a shard's store (`ListPolicies`'s JSON) apply `desired`, or the
/// names the resource cannot own because a policy of that name was made through the API.
pub fn plan(desired: &[Desired], store: &Value) -> Result<Vec<Change>, Vec<String>> {
    let policies = store["policies"].as_object();
    let current =
        |name: &str| -> Option<&Value> { policies?.get(name)?.get("versions")?.as_array()?.last() };
    let mut changes = Vec::new();
    let mut conflicts = Vec::new();
    for d in desired {
        match current(&d.name) {
            Some(v) if !v["policy"].is_null() && v["source"] != "resource" => conflicts.push(format!(
                "{}: a policy of this name was made through the Admin API; delete it there or rename the policy in spec.policies",
                d.name
            )),
            Some(v) if v["policy"] == d.policy => {}
            _ => changes.push(Change::Put {
                name: d.name.clone(),
                policy: d.policy.clone(),
            }),
        }
    }
    // Policies the resource made and no longer lists: soft-deleted (restorable).
    for (name, _) in policies.into_iter().flatten() {
        let Some(v) = current(name) else { continue };
        let ours = v["source"] == "resource" && !v["policy"].is_null();
        if ours && !desired.iter().any(|d| &d.name == name) {
            changes.push(Change::Delete { name: name.clone() });
        }
    }
    if conflicts.is_empty() {
        Ok(changes)
    } else {
        Err(conflicts)
    }
}
