//! The CRD's CEL rules, evaluated offline by kube's `cel` feature (kube-cel), which
//! applies schema defaults first as the API server does.

use kindex_crds::{
    FilterCondition, FilterRange, Metric, PolicyFilter, PolicyKind, PolicySpec, Quantization,
    SchemaFieldSpec, SchemaFieldType, VectorIndex, VectorIndexSpec,
};
use kube::core::cel::{
    CompiledSchema, ScopeContext, Validator, analyze_rule, compile_schema, validate_cel,
    validate_cel_update,
};
use serde_json::Value;

use super::{demo, example, schema};

type Edit = fn(&mut VectorIndexSpec);

/// Every structural field with an edit that changes it and the message the rule gives.
const STRUCTURAL: &[(&str, Edit)] = &[
    ("dimension is immutable", |s| s.dimension = 768),
    ("metric is immutable", |s| s.metric = Metric::L2),
    ("shards is immutable", |s| s.shards = 2),
    ("quantization is immutable", |s| {
        s.quantization = Quantization::Int8
    }),
    ("hnsw.m is immutable", |s| s.hnsw.m = 32),
    ("hnsw.efConstruction is immutable", |s| {
        s.hnsw.ef_construction = 400
    }),
];

fn messages(errors: &kube::core::cel::ValidationErrors) -> Vec<String> {
    errors.iter().map(|e| e.to_string()).collect()
}

#[test]
fn all_rules_compile_and_fit_the_cost_budget() {
    fn walk(node: &CompiledSchema, path: &str, problems: &mut Vec<String>, rules: &mut usize) {
        for rule in &node.validations {
            match rule {
                Ok(compiled) => {
                    *rules += 1;
                    for w in analyze_rule(&compiled.rule.rule, node, ScopeContext::CrdValidation) {
                        problems.push(format!("{path}: {}: {}", w.rule, w.message));
                    }
                }
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        for (name, child) in &node.properties {
            walk(child, &format!("{path}.{name}"), problems, rules);
        }
        if let Some(items) = &node.items {
            walk(items, &format!("{path}[]"), problems, rules);
        }
        if let Some(values) = &node.additional_properties {
            walk(values, &format!("{path}{{}}"), problems, rules);
        }
    }
    let (mut problems, mut rules) = (Vec::new(), 0);
    walk(&compile_schema(&schema()), "", &mut problems, &mut rules);
    assert!(problems.is_empty(), "{problems:#?}");
    // 6 immutability + 5 presence + 1 interval + 12 policy + 2 filter rules, a range rule in
    // each of must and mustNot, the admission rules: 2 on metadata.name, image,
    // storage.size, resources.limits and .requests; and peerTls set at creation.
    assert_eq!(rules, 35);
}

/// The API server's CEL does not see a property without a type (`x-kubernetes-preserve-
/// unknown-fields` alone, like a filter's `match`): a rule naming one does not compile there
/// ("undefined field"), although kube's offline CEL accepts it. No rule may name one.
#[test]
fn no_rule_names_an_untyped_property() {
    fn walk(node: &Value, path: &str, problems: &mut Vec<String>) {
        let Value::Object(map) = node else { return };
        let untyped: Vec<&String> = map
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, p)| {
                p.get("type").is_none() && p.get("x-kubernetes-int-or-string").is_none()
            })
            .map(|(name, _)| name)
            .collect();
        for rule in map
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r["rule"].as_str())
        {
            for name in &untyped {
                if rule.contains(&format!("self.{name}")) {
                    problems.push(format!("{path}: {rule:?} names untyped {name}"));
                }
            }
        }
        for (key, child) in map {
            match child {
                Value::Object(_) => walk(child, &format!("{path}.{key}"), problems),
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, &format!("{path}.{key}[{i}]"), problems);
                    }
                }
                _ => {}
            }
        }
    }
    let mut problems = Vec::new();
    walk(&schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn valid_objects_pass_on_create() {
    validate_cel(&demo()).expect("demo");
    validate_cel(&example("production.yaml")).expect("production");
}

#[test]
fn changing_a_structural_field_is_rejected() {
    for (message, edit) in STRUCTURAL {
        let old = demo();
        let mut new = old.clone();
        edit(&mut new.spec);
        let errors = validate_cel_update(&new, &old).expect_err(message);
        assert_eq!(messages(&errors).len(), 1, "{message}: {errors:?}");
        assert!(errors[0].message.contains(message), "{message}: {errors:?}");
    }
}

/// `binary` is a valid value at creation, and moving between quantizations is refused
/// both ways.
#[test]
fn binary_quantization_is_accepted_at_creation_and_immutable() {
    let mut binary = demo();
    binary.spec.quantization = Quantization::Binary;
    validate_cel(&binary).expect("binary on create");
    let mut int8 = demo();
    int8.spec.quantization = Quantization::Int8;
    for (old, new) in [(&int8, &binary), (&binary, &int8), (&binary, &demo())] {
        let errors = validate_cel_update(new, old).expect_err("quantization changed");
        assert!(
            errors[0].message.contains("quantization is immutable"),
            "{errors:?}"
        );
    }
}

#[test]
fn updates_that_keep_a_structural_field_are_accepted_for_it() {
    let old = demo();
    for (kept, _) in STRUCTURAL {
        // Change every *other* structural field: the kept field's rule must stay quiet.
        let mut new = old.clone();
        for (message, edit) in STRUCTURAL {
            if message != kept {
                edit(&mut new.spec);
            }
        }
        let errors = validate_cel_update(&new, &old).expect_err("others changed");
        assert!(
            errors.iter().all(|e| !e.message.contains(kept)),
            "{kept}: {errors:?}"
        );
        assert_eq!(errors.len(), STRUCTURAL.len() - 1);
    }
}

#[test]
fn peer_tls_is_set_at_creation() {
    const MESSAGE: &str = "peerTls.enabled is set when the index is created";
    let on = |enabled: Option<bool>| {
        let mut vi = demo();
        vi.spec.peer_tls = enabled.map(|enabled| kindex_crds::PeerTlsSpec { enabled });
        vi
    };
    // Unset and `enabled: false` are the same; an unchanged setting passes.
    for (old, new) in [
        (None, Some(false)),
        (Some(false), None),
        (Some(true), Some(true)),
    ] {
        validate_cel_update(&on(new), &on(old)).expect("no switch");
    }
    for (old, new) in [
        (None, Some(true)),
        (Some(true), Some(false)),
        (Some(true), None),
    ] {
        let errors = validate_cel_update(&on(new), &on(old)).expect_err("a switch");
        assert!(
            errors.iter().any(|e| e.message.contains(MESSAGE)),
            "{old:?} -> {new:?}: {errors:?}"
        );
    }
}

#[test]
fn runtime_changes_are_accepted() {
    let old = example("production.yaml");
    validate_cel_update(&old, &old).expect("no-op update");

    let mut new = old.clone();
    let s = &mut new.spec;
    s.replicas = 5;
    s.hnsw.ef_search = 512;
    s.indexing.threads = 0;
    s.indexing.batch_size = 64;
    s.indexing.queue_capacity = 1;
    s.snapshots.interval = "1h30m".into();
    s.snapshots.keep = 10;
    s.storage.retain_on_delete = false;
    s.image = Some("registry.example/kindex-node:0.2.0".into());
    s.policies.clear();
    validate_cel_update(&new, &old).expect("runtime knobs may change");
}

fn without(mut value: Value, path: &[&str]) -> Value {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut node = &mut value;
    for key in parents {
        node = &mut node[*key];
    }
    node.as_object_mut().expect("object").remove(*last);
    value
}

/// Removes every `default:` so only the presence rules stand between a dropped field
/// and acceptance (as if a default were ever taken out of the schema).
fn strip_defaults(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("default");
            map.values_mut().for_each(strip_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_defaults),
        _ => {}
    }
}

#[test]
fn removing_a_structural_field_is_rejected() {
    let mut old = demo();
    old.spec.shards = 2;
    old.spec.hnsw.m = 32;
    old.spec.hnsw.ef_construction = 400;
    old.spec.quantization = Quantization::Int8;
    let old = serde_json::to_value(&old).expect("json");

    let mut bare = schema();
    strip_defaults(&mut bare);
    let cases: &[(&[&str], &str)] = &[
        (&["spec", "shards"], "shards"),
        (&["spec", "quantization"], "quantization"),
        (&["spec", "hnsw"], "hnsw"),
        (&["spec", "hnsw", "m"], "hnsw.m"),
        (&["spec", "hnsw", "efConstruction"], "hnsw.efConstruction"),
    ];
    for (path, field) in cases {
        let new = without(old.clone(), path);
        // With defaults (the real API server): the dropped field comes back at its
        // default, which differs from the old value, so the immutability rule fires.
        let errors = Validator::new()
            .validate(&schema(), &new, Some(&old))
            .expect_err(field);
        assert!(
            messages(&errors).iter().any(|m| m.contains("is immutable")),
            "{field}: {errors:?}"
        );
        // Without defaults the presence rule alone rejects the removal.
        let errors = Validator::new()
            .validate(&bare, &new, Some(&old))
            .expect_err(field);
        let expected = format!("{field} cannot be removed once set");
        assert!(
            messages(&errors).iter().any(|m| m.contains(&expected)),
            "{field}: {errors:?}"
        );
    }
}

#[test]
fn dropping_a_field_that_holds_its_default_is_accepted() {
    // Re-applying minimal.yaml-style objects that omit hnsw must keep working.
    let old = serde_json::to_value(demo()).expect("json");
    let new = without(old.clone(), &["spec", "hnsw"]);
    Validator::new()
        .validate(&schema(), &new, Some(&old))
        .expect("defaults refill the same values");
}

#[test]
fn snapshot_interval_must_be_at_least_one_second() {
    let mut vi = demo();
    vi.spec.snapshots.interval = "500ms".into();
    let errors = validate_cel(&vi).expect_err("500ms");
    assert!(errors[0].message.contains("at least 1s"), "{errors:?}");
    for ok in ["1s", "90s", "1h30m", "1500ms"] {
        vi.spec.snapshots.interval = ok.into();
        validate_cel(&vi).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
}

#[test]
fn policy_rules() {
    let policy = |kind, age, vectors, bytes| PolicySpec {
        max_age_seconds: age,
        max_vectors: vectors,
        max_payload_bytes: bytes,
        ..PolicySpec::new("p", kind)
    };
    use PolicyKind::{Quota, Retention, Schema, SearchDefaults};
    let typed = SchemaFieldSpec {
        type_: SchemaFieldType::String,
        required: true,
    };
    let with_fields = |kind| {
        let mut p = PolicySpec::new("p", kind);
        p.fields.insert("tenant".into(), typed.clone());
        p
    };
    let search = |edit: fn(&mut PolicySpec)| {
        let mut p = PolicySpec::new("p", SearchDefaults);
        edit(&mut p);
        p
    };
    let cond = |field: &str, m: Option<Value>, range: Option<FilterRange>| FilterCondition {
        field: field.into(),
        match_: m,
        range,
    };
    let filter = |must: Vec<FilterCondition>| PolicyFilter {
        must,
        must_not: vec![],
    };
    let gt = Some(FilterRange {
        gt: Some(1.0),
        ..FilterRange::default()
    });
    let cases = [
        (policy(Retention, Some(60), None, None), None),
        (policy(Retention, None, Some(10), None), None),
        (policy(Quota, None, Some(10), Some(10)), None),
        (
            policy(Retention, None, None, None),
            Some("needs maxAgeSeconds"),
        ),
        (
            policy(Retention, Some(60), None, Some(1)),
            Some("quota and schema policies only"),
        ),
        (policy(Quota, None, None, None), Some("needs maxVectors")),
        (
            policy(Quota, Some(60), Some(1), None),
            Some("retention policies only"),
        ),
        (with_fields(Schema), None),
        (policy(Schema, None, None, Some(10)), None),
        (
            policy(Schema, None, None, None),
            Some("schema policy needs fields"),
        ),
        (
            policy(Schema, None, Some(10), Some(10)),
            Some("maxVectors applies to quota and retention policies only"),
        ),
        (
            with_fields(Quota),
            Some("fields applies to schema policies only"),
        ),
        (search(|p| p.max_k = Some(10)), None),
        (search(|p| p.max_ef_search = Some(10)), None),
        (search(|p| p.require_match = vec!["tenant".into()]), None),
        (
            search(|_| {}),
            Some("searchDefaults policy needs maxK, maxEfSearch, filter and/or requireMatch"),
        ),
        (
            search(|p| p.max_payload_bytes = Some(10)),
            Some("maxPayloadBytes applies to quota and schema policies only"),
        ),
        (
            PolicySpec {
                max_k: Some(10),
                ..policy(Quota, None, Some(10), None)
            },
            Some("apply to searchDefaults policies only"),
        ),
        (
            search(|p| p.filter = Some(PolicyFilter::default())),
            Some("filter needs must and/or mustNot"),
        ),
        // timestampField: retention only, and only with an age to measure.
        (
            PolicySpec {
                timestamp_field: Some("created".into()),
                ..policy(Retention, Some(60), Some(10), None)
            },
            None,
        ),
        (
            PolicySpec {
                timestamp_field: Some("created".into()),
                ..policy(Retention, None, Some(10), None)
            },
            Some("timestampField needs maxAgeSeconds"),
        ),
        (
            PolicySpec {
                timestamp_field: Some("created".into()),
                ..policy(Quota, None, Some(10), None)
            },
            Some("timestampField applies to retention policies only"),
        ),
        // tenantField: quota only, and a quota still needs a limit.
        (
            PolicySpec {
                tenant_field: Some("tenant".into()),
                ..policy(Quota, None, Some(10), None)
            },
            None,
        ),
        (
            PolicySpec {
                tenant_field: Some("tenant".into()),
                ..policy(Quota, None, None, Some(10))
            },
            None,
        ),
        (
            PolicySpec {
                tenant_field: Some("tenant".into()),
                ..policy(Quota, None, None, None)
            },
            Some("a quota policy needs maxVectors and/or maxPayloadBytes"),
        ),
        (
            PolicySpec {
                tenant_field: Some("tenant".into()),
                ..policy(Retention, Some(60), None, None)
            },
            Some("tenantField applies to quota policies only"),
        ),
        (
            PolicySpec {
                tenant_field: Some("tenant".into()),
                ..with_fields(Schema)
            },
            Some("tenantField applies to quota policies only"),
        ),
    ];
    // Filters: a range needs a bound, a filter at most 16 conditions. (Exactly one of match
    // and range is the operator's check only, see `FilterCondition`.)
    let filters = [
        (filter(vec![cond("t", Some("a".into()), None)]), None),
        (filter(vec![cond("n", None, gt)]), None),
        (
            filter(vec![cond("n", None, Some(FilterRange::default()))]),
            Some("at least one of gt, gte, lt, lte"),
        ),
        (
            PolicyFilter {
                must: vec![cond("a", Some(1.into()), None); 10],
                must_not: vec![cond("b", Some(true.into()), None); 7],
            },
            Some("at most 16 conditions"),
        ),
    ];
    let cases = cases.into_iter().chain(filters.into_iter().map(|(f, e)| {
        (
            PolicySpec {
                filter: Some(f),
                ..PolicySpec::new("p", SearchDefaults)
            },
            e,
        )
    }));
    for (p, expected) in cases {
        let mut vi: VectorIndex = demo();
        vi.spec.policies = vec![p.clone()];
        match (validate_cel(&vi), expected) {
            (Ok(()), None) => {}
            (Err(errors), Some(needle)) => {
                assert!(
                    errors.iter().any(|e| e.message.contains(needle)),
                    "{p:?}: {errors:?}"
                );
            }
            (result, _) => panic!("{p:?}: expected {expected:?}, got {result:?}"),
        }
        // validate() agrees with the CEL rules.
        assert_eq!(
            kindex_crds::validate(&vi.spec).is_ok(),
            expected.is_none(),
            "{p:?}"
        );
    }
}

/// An empty `timestampField` or `tenantField` is refused by the schema (minLength, which
/// the API server checks and kube's offline CEL does not), as the nodes and `validate` do.
#[test]
fn timestamp_and_tenant_fields_are_non_empty_strings() {
    let policy = &schema()["properties"]["spec"]["properties"]["policies"]["items"];
    for name in ["timestampField", "tenantField"] {
        let field = &policy["properties"][name];
        assert_eq!(field["type"], "string", "{name}: {field}");
        assert_eq!(field["minLength"], 1, "{name}: {field}");
        assert_eq!(field["maxLength"], 256, "{name}: {field}");
        let description = field["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{name} has a description");
    }
    let mut vi = demo();
    vi.spec.policies = vec![PolicySpec {
        max_vectors: Some(10),
        tenant_field: Some(String::new()),
        ..PolicySpec::new("p", PolicyKind::Quota)
    }];
    let errors = kindex_crds::validate(&vi.spec).expect_err("empty tenantField");
    assert!(
        errors[0]
            .to_string()
            .starts_with("spec.policies[p].tenantField: a payload field name"),
        "{errors:?}"
    );
}

/// What the operator refuses (its Rust validation, its index-name check), the API server
/// refuses too, with a message naming the field.
#[test]
fn admission_refuses_what_the_operator_refuses() {
    type Case = (&'static str, fn(&mut VectorIndex), &'static str);
    let cases: &[Case] = &[
        (
            "storage 0",
            |v| v.spec.storage.size.0 = "0".into(),
            "storage.size must be greater than zero",
        ),
        (
            "storage 0.0Gi",
            |v| v.spec.storage.size.0 = "0.0Gi".into(),
            "storage.size must be greater than zero",
        ),
        (
            "image with a space",
            |v| v.spec.image = Some("kindex/node :1".into()),
            "image must be a container image reference",
        ),
        (
            "image with a tab",
            |v| v.spec.image = Some("kindex/node\t".into()),
            "image must be a container image reference",
        ),
        (
            "image upper-case path",
            |v| v.spec.image = Some("ghcr.io/Kindex/node".into()),
            "image must be a container image reference",
        ),
        (
            "image empty tag",
            |v| v.spec.image = Some("kindex/node:".into()),
            "image must be a container image reference",
        ),
        (
            "image short digest",
            |v| v.spec.image = Some("kindex/node@sha256:abc".into()),
            "image must be a container image reference",
        ),
        (
            "name of 41",
            |v| v.metadata.name = Some("a".repeat(41)),
            "metadata.name must be at most 40 characters",
        ),
        (
            "name starting with a digit",
            |v| v.metadata.name = Some("1st".into()),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "name with a dot",
            |v| v.metadata.name = Some("a.b".into()),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "name ending with -",
            |v| v.metadata.name = Some("ab-".into()),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "limits not a quantity",
            |v| v.spec.resources = Some(resources("limits", "memory", "lots")),
            "resources.limits must be a quantity",
        ),
        (
            "requests not a quantity",
            |v| v.spec.resources = Some(resources("requests", "cpu", "1 core")),
            "resources.requests must be a quantity",
        ),
    ];
    for (what, edit, message) in cases {
        let mut vi = demo();
        edit(&mut vi);
        let errors = validate_cel(&vi).expect_err(what);
        assert!(
            errors.iter().any(|e| e.message.contains(message)),
            "{what}: {errors:?}"
        );
        // Where the operator's own validation covers the field, it refuses as well.
        if what.starts_with("storage") || what.starts_with("image with") {
            assert!(kindex_crds::validate(&vi.spec).is_err(), "{what}");
        }
    }
    let good: &[fn(&mut VectorIndex)] = &[
        |v| v.spec.storage.size.0 = "0.5Gi".into(),
        |v| v.spec.storage.size.0 = "1".into(),
        |v| v.spec.image = Some("node".into()),
        |v| v.spec.image = Some("localhost:5000/kindex-node".into()),
        |v| v.spec.image = Some("ghcr.io/kindex/kindex-node:0.1.0-rc.1".into()),
        |v| v.spec.image = Some(format!("kindex/node:1@sha256:{}", "a".repeat(64))),
        |v| v.metadata.name = Some("a".repeat(40)),
        |v| v.metadata.name = Some("a-1".into()),
        |v| v.spec.resources = Some(resources("limits", "memory", "4Gi")),
        |v| v.spec.resources = Some(resources("requests", "cpu", "500m")),
    ];
    for (i, edit) in good.iter().enumerate() {
        let mut vi = demo();
        edit(&mut vi);
        validate_cel(&vi).unwrap_or_else(|e| panic!("good case {i}: {e:?}"));
    }
}

fn resources(
    which: &str,
    name: &str,
    value: &str,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let map = [(name.to_string(), Quantity(value.into()))]
        .into_iter()
        .collect();
    let mut r = k8s_openapi::api::core::v1::ResourceRequirements::default();
    if which == "limits" {
        r.limits = Some(map);
    } else {
        r.requests = Some(map);
    }
    r
}
