use kindex_crds::{
    FilterCondition, FilterRange, PolicyFilter, PolicyKind, PolicySpec, SchemaFieldSpec,
    SchemaFieldType,
};
use kindex_node::policy::command::{PolicyCommand, PolicyOp, Source, parse_policy};
use kindex_node::policy::{COMMAND_VERSION, PolicyStore};
use serde_json::json;

use super::*;

fn spec(name: &str, kind: PolicyKind, max_vectors: Option<u64>) -> PolicySpec {
    PolicySpec {
        max_vectors,
        ..PolicySpec::new(name, kind)
    }
}

/// `shape`: a schema policy with every setting.
fn schema_spec() -> PolicySpec {
    let mut p = PolicySpec {
        max_payload_bytes: Some(4096),
        ..PolicySpec::new("shape", PolicyKind::Schema)
    };
    let rule = |type_, required| SchemaFieldSpec { type_, required };
    p.fields
        .insert("tenant".into(), rule(SchemaFieldType::String, true));
    p.fields
        .insert("year".into(), rule(SchemaFieldType::Integer, false));
    p.fields
        .insert("tags".into(), rule(SchemaFieldType::Array, false));
    p
}

/// `search`: a searchDefaults policy with every setting, and every kind of condition.
fn search_spec() -> PolicySpec {
    let cond = |field: &str, m: Option<Value>, range: Option<FilterRange>| FilterCondition {
        field: field.into(),
        match_: m,
        range,
    };
    PolicySpec {
        max_k: Some(100),
        max_ef_search: Some(256),
        filter: Some(PolicyFilter {
            must: vec![
                cond("lang", Some("en".into()), None),
                cond(
                    "year",
                    None,
                    Some(FilterRange {
                        gte: Some(2020.0),
                        lt: Some(2030.5),
                        ..FilterRange::default()
                    }),
                ),
            ],
            must_not: vec![
                cond("hidden", Some(true.into()), None),
                cond("rank", Some((-3).into()), None),
            ],
        }),
        require_match: vec!["tenant".into(), "region".into()],
        ..PolicySpec::new("search", PolicyKind::SearchDefaults)
    }
}

/// What a shard leader does with a put from the operator: parse it as the Admin API does,
/// write it to the log (encode, decode) and apply it.
fn leader_applies(store: &mut PolicyStore, d: &Desired, log_index: u64) -> u64 {
    let body = parse_policy(&d.policy.to_string())
        .unwrap_or_else(|e| panic!("{}: the node refuses {}: {e}", d.name, d.policy));
    let cmd = PolicyCommand {
        v: COMMAND_VERSION,
        op: PolicyOp::Put,
        name: d.name.clone(),
        policy: Some(body),
        restore: None,
        prune: None,
        expected_version: None,
        source: Source::Resource,
        actor: "kindex-operator".into(),
        stamp_ms: log_index,
    };
    let cmd = PolicyCommand::decode(&cmd.encode()).unwrap();
    store.apply(&cmd, log_index).unwrap()
}

/// `ListPolicies`'s store JSON, as the operator reads it.
fn listed(store: &PolicyStore) -> Value {
    serde_json::from_slice(&store.to_bytes()).unwrap()
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

/// `per-tenant`: a quota per value of the payload field `tenant`, both limits set.
fn tenant_quota_spec() -> PolicySpec {
    PolicySpec {
        max_payload_bytes: Some(1_000_001),
        tenant_field: Some("tenant".into()),
        ..spec("per-tenant", PolicyKind::Quota, Some(10_001))
    }
}

/// `events`: retention by the payload field `created`, and a count.
fn timestamp_retention_spec() -> PolicySpec {
    PolicySpec {
        max_age_seconds: Some(86_400),
        timestamp_field: Some("created".into()),
        ..spec("events", PolicyKind::Retention, Some(9))
    }
}

#[test]
fn index_wide_limits_are_split_over_the_shards_and_ages_are_not() {
    let mut payload = spec("bytes", PolicyKind::Quota, None);
    payload.max_payload_bytes = Some(10);
    let mut old = spec("old", PolicyKind::Retention, Some(5));
    old.max_age_seconds = Some(3600);
    let ageless = PolicySpec {
        timestamp_field: Some("created".into()),
        ..spec("ageless", PolicyKind::Retention, Some(5))
    };
    let (d, unsupported) = desired(
        &[
            spec("cap", PolicyKind::Quota, Some(1001)),
            old,
            payload,
            spec("empty", PolicyKind::Retention, None),
            tenant_quota_spec(),
            timestamp_retention_spec(),
            ageless,
        ],
        2,
    );
    let policy = |name: &str| d.iter().find(|x| x.name == name).map(|x| x.policy.clone());
    assert_eq!(
        policy("cap"),
        Some(json!({"kind": "quota", "maxVectors": 501}))
    );
    assert_eq!(
        policy("old"),
        Some(json!({"kind": "retention", "maxAgeSeconds": 3600, "maxVectors": 3}))
    );
    assert_eq!(
        policy("bytes"),
        Some(json!({"kind": "quota", "maxPayloadBytes": 5}))
    );
    // Per tenant: each shard allows each tenant its share of both limits.
    assert_eq!(
        policy("per-tenant"),
        Some(json!({
            "kind": "quota",
            "maxVectors": 5001,
            "maxPayloadBytes": 500_001,
            "tenantField": "tenant",
        }))
    );
    // The timestamp field and the age the same on every shard; the count split.
    assert_eq!(
        policy("events"),
        Some(json!({
            "kind": "retention",
            "maxAgeSeconds": 86_400,
            "timestampField": "created",
            "maxVectors": 5,
        }))
    );
    assert_eq!(unsupported.len(), 2, "{unsupported:?}");
    assert!(
        unsupported[0].starts_with("empty: a retention"),
        "{unsupported:?}"
    );
    assert_eq!(
        unsupported[1], "ageless: timestampField needs maxAgeSeconds",
        "{unsupported:?}"
    );
    assert!(policy("ageless").is_none());
    // The node reads and reports each one back unchanged (no new version on re-sync).
    for x in &d {
        let body = kindex_node::policy::command::parse_policy(&x.policy.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", x.name));
        assert_eq!(serde_json::to_value(&body).unwrap(), x.policy, "{}", x.name);
    }
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

#[test]
fn schema_and_search_defaults_go_to_every_shard_unchanged_in_the_nodes_json() {
    let (d, unsupported) = desired(&[schema_spec(), search_spec()], 3);
    assert!(unsupported.is_empty(), "{unsupported:?}");
    // Pinned: field names and casing as the node's PolicyBody reads them (no split over the
    // 3 shards; schema always lists `fields` and every rule its `required`).
    assert_eq!(
        d,
        vec![
            Desired {
                name: "shape".into(),
                policy: json!({
                    "kind": "schema",
                    "fields": {
                        "tags": {"type": "array", "required": false},
                        "tenant": {"type": "string", "required": true},
                        "year": {"type": "integer", "required": false},
                    },
                    "maxPayloadBytes": 4096,
                }),
            },
            Desired {
                name: "search".into(),
                policy: json!({
                    "kind": "searchDefaults",
                    "maxK": 100,
                    "maxEfSearch": 256,
                    "filter": {
                        "must": [
                            {"field": "lang", "match": "en"},
                            {"field": "year", "range": {"gte": 2020.0, "lt": 2030.5}},
                        ],
                        "mustNot": [
                            {"field": "hidden", "match": true},
                            {"field": "rank", "match": -3},
                        ],
                    },
                    "requireMatch": ["tenant", "region"],
                }),
            },
        ]
    );
    // Settings left out stay out (the node's defaults), and a schema without fields still
    // lists them, as the node reports it.
    let bare = [
        PolicySpec {
            max_payload_bytes: Some(10),
            ..PolicySpec::new("bytes", PolicyKind::Schema)
        },
        PolicySpec {
            max_k: Some(5),
            ..PolicySpec::new("k", PolicyKind::SearchDefaults)
        },
    ];
    let (d, _) = desired(&bare, 2);
    assert_eq!(
        d[0].policy,
        json!({"kind": "schema", "fields": {}, "maxPayloadBytes": 10})
    );
    assert_eq!(d[1].policy, json!({"kind": "searchDefaults", "maxK": 5}));
}

/// The node's own parser, store and listing: what the operator sends is accepted, and once
/// applied the operator sees it in force, so a re-applied resource or a restarted operator
/// sends nothing and makes no version.
#[test]
fn what_the_operator_sends_the_node_applies_and_reports_back_as_in_force() {
    let mut specs = vec![
        schema_spec(),
        search_spec(),
        spec("cap", PolicyKind::Quota, Some(1000)),
        PolicySpec {
            max_payload_bytes: Some(10),
            ..PolicySpec::new("bytes", PolicyKind::Schema)
        },
        PolicySpec {
            max_ef_search: Some(64),
            ..PolicySpec::new("ef", PolicyKind::SearchDefaults)
        },
        tenant_quota_spec(),
        timestamp_retention_spec(),
    ];
    let (d, _) = desired(&specs, 4);
    let mut store = PolicyStore::default();
    let changes = plan(&d, &listed(&store)).unwrap();
    assert_eq!(changes.len(), d.len());
    for (i, p) in d.iter().enumerate() {
        assert_eq!(leader_applies(&mut store, p, i as u64 + 1), 1, "{}", p.name);
        // The node reports back exactly what was sent.
        let v = &listed(&store)["policies"][&p.name]["versions"][0];
        assert_eq!(v["policy"], p.policy, "{}", p.name);
    }
    // In force: nothing to send (the next reconcile, a restarted operator).
    assert_eq!(plan(&d, &listed(&store)).unwrap(), vec![]);
    // Sending it again anyway makes no version either.
    for p in &d {
        assert_eq!(leader_applies(&mut store, p, 99), 1, "{}", p.name);
    }
    // A changed spec is one put, and the new content is in force after it.
    specs[1].max_k = Some(50);
    let (d, _) = desired(&specs, 4);
    let changes = plan(&d, &listed(&store)).unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let Change::Put { name, policy } = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!((name.as_str(), &policy["maxK"]), ("search", &json!(50)));
    let changed = Desired {
        name: name.clone(),
        policy: policy.clone(),
    };
    assert_eq!(leader_applies(&mut store, &changed, 100), 2);
    assert_eq!(plan(&d, &listed(&store)).unwrap(), vec![]);
    // So is a changed tenant or timestamp field, each put once.
    specs[5].tenant_field = Some("org".into());
    specs[6].timestamp_field = Some("updated".into());
    let (d, _) = desired(&specs, 4);
    let changes = plan(&d, &listed(&store)).unwrap();
    let names: Vec<&str> = changes.iter().map(Change::name).collect();
    assert_eq!(names, ["per-tenant", "events"], "{changes:?}");
    for (i, c) in changes.iter().enumerate() {
        let Change::Put { name, policy } = c else {
            panic!("{changes:?}")
        };
        let put = Desired {
            name: name.clone(),
            policy: policy.clone(),
        };
        assert_eq!(
            leader_applies(&mut store, &put, 101 + i as u64),
            2,
            "{name}"
        );
    }
    assert_eq!(plan(&d, &listed(&store)).unwrap(), vec![]);
}
