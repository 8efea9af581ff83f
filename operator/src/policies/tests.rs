use kindex_crds::{PolicyKind, PolicySpec};
use serde_json::json;

use super::*;

fn spec(name: &str, kind: PolicyKind, max_vectors: Option<u64>) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        kind,
        max_age_seconds: None,
        max_vectors,
        max_payload_bytes: None,
    }
}

fn store(entries: &[(&str, Value, &str)]) -> Value {
    let mut policies = serde_json::Map::new();
    for (name, policy, source) in entries {
        policies.insert(
            (*name).into(),
            json!({"latest": 1, "versions": [{"version": 1, "policy": policy, "source": source}]}),
        );
    }
    json!({"clockMs": 0, "policies": policies})
}

#[test]
fn an_index_wide_quota_is_split_over_the_shards_and_unsupported_kinds_are_named() {
    let mut payload = spec("bytes", PolicyKind::Quota, None);
    payload.max_payload_bytes = Some(10);
    let (d, unsupported) = desired(
        &[
            spec("cap", PolicyKind::Quota, Some(1001)),
            spec("old", PolicyKind::Retention, Some(5)),
            payload,
        ],
        2,
    );
    assert_eq!(
        d,
        vec![Desired {
            name: "cap".into(),
            policy: json!({"kind": "quota", "maxVectors": 501})
        }]
    );
    assert_eq!(unsupported.len(), 2);
    assert!(
        unsupported[0].starts_with("old: retention"),
        "{unsupported:?}"
    );
    assert!(
        unsupported[1].contains("maxPayloadBytes"),
        "{unsupported:?}"
    );
}

#[test]
fn what_is_in_force_makes_no_change_and_the_rest_is_put_or_deleted() {
    let (d, _) = desired(&[spec("cap", PolicyKind::Quota, Some(100))], 1);
    let empty = json!({"clockMs": 0, "policies": {}});
    assert_eq!(
        plan(&d, &empty).unwrap(),
        vec![Change::Put {
            name: "cap".into(),
            policy: json!({"kind": "quota", "maxVectors": 100})
        }]
    );
    // In force: nothing to do (re-applied resource, restarted operator).
    let synced = store(&[(
        "cap",
        json!({"kind": "quota", "maxVectors": 100}),
        "resource",
    )]);
    assert_eq!(plan(&d, &synced).unwrap(), vec![]);
    // Changed limit; a deleted version of ours is put again.
    let old = store(&[(
        "cap",
        json!({"kind": "quota", "maxVectors": 90}),
        "resource",
    )]);
    assert_eq!(plan(&d, &old).unwrap().len(), 1);
    let deleted = store(&[("cap", Value::Null, "api")]);
    assert_eq!(plan(&d, &deleted).unwrap().len(), 1);
    // Ours but no longer in the spec: deleted; the API's: left alone.
    let extra = store(&[
        (
            "gone",
            json!({"kind": "quota", "maxVectors": 1}),
            "resource",
        ),
        ("mine", json!({"kind": "quota", "maxVectors": 1}), "api"),
    ]);
    assert_eq!(
        plan(&[], &extra).unwrap(),
        vec![Change::Delete {
            name: "gone".into()
        }]
    );
}

#[test]
fn a_name_the_api_owns_is_a_conflict() {
    let (d, _) = desired(&[spec("cap", PolicyKind::Quota, Some(100))], 1);
    let theirs = store(&[("cap", json!({"kind": "quota", "maxVectors": 7}), "api")]);
    let e = plan(&d, &theirs).unwrap_err();
    assert!(e[0].contains("Admin API"), "{e:?}");
}
