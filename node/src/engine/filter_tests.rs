//! Unit tests of the filter grammar and matching (`filter.rs`).

use super::*;
use serde_json::json;

fn payload(v: Value) -> Payload {
    v.as_object().cloned().unwrap()
}

fn parse(v: Value) -> Result<Filter, String> {
    Filter::from_json(&v).map_err(|e| e.to_string())
}

#[test]
fn conditions_are_conjunctive() {
    let f: Filter = serde_json::from_value(json!({"must": [
        {"field": "lang", "match": "en"},
        {"field": "year", "range": {"gte": 2000, "lt": 2010}}
    ]}))
    .unwrap();
    f.validate().unwrap();
    assert!(f.matches(Some(&payload(json!({"lang": "en", "year": 2005})))));
    assert!(!f.matches(Some(&payload(json!({"lang": "en", "year": 2010})))));
    assert!(!f.matches(Some(&payload(json!({"lang": "de", "year": 2005})))));
    assert!(!f.matches(Some(&payload(json!({"year": 2005})))));
    assert!(!f.matches(None));
    assert!(Filter::default().matches(None));
}

#[test]
fn must_not_excludes_and_should_needs_one() {
    let f = parse(json!({
        "mustNot": [{"field": "lang", "match": "de"}],
        "should": [{"field": "year", "range": {"lt": 2000}}, {"field": "tag", "match": true}]
    }))
    .unwrap();
    let p = |v: Value| f.matches(Some(&payload(v)));
    assert!(p(json!({"lang": "en", "year": 1990})));
    assert!(p(json!({"lang": "en", "tag": true, "year": 2020})));
    assert!(!p(json!({"lang": "de", "year": 1990})), "mustNot excludes");
    assert!(!p(json!({"lang": "en", "year": 2020})), "no should holds");
    // A missing field satisfies no condition: mustNot passes, should fails.
    let only_not = parse(json!({"mustNot": [{"field": "lang", "match": "de"}]})).unwrap();
    assert!(only_not.matches(Some(&payload(json!({})))));
    assert!(only_not.matches(None));
    assert!(!f.matches(None));
}

#[test]
fn match_kinds() {
    let p = payload(json!({"n": 3, "b": true, "s": "x"}));
    let m = |field: &str, v: MatchValue| Filter {
        must: vec![Condition {
            field: field.into(),
            predicate: Predicate::Match(v),
        }],
        ..Default::default()
    };
    assert!(m("n", MatchValue::Integer(3)).matches(Some(&p)));
    assert!(!m("n", MatchValue::Text("3".into())).matches(Some(&p)));
    assert!(m("b", MatchValue::Boolean(true)).matches(Some(&p)));
    assert!(m("s", MatchValue::Text("x".into())).matches(Some(&p)));
}

/// Each case the issue lists, refused with the key and its path (all accepted, and so
/// silently ignored, by the derived serde parser this replaced).
#[test]
fn unknown_keys_are_refused_with_their_path() {
    let cases = [
        (
            json!({"mst": [{"field": "a", "match": 1}]}),
            "filter mst: unknown key \"mst\"",
        ),
        (
            json!({"must": [{"field": "a", "match": 1, "boost": 2}]}),
            "filter must[0].boost: unknown key \"boost\"",
        ),
        (
            json!({"must": [{"field": "a", "match": 1}, {"field": "y", "match": 2, "range": {"lt": 3}}]}),
            "filter must[1]: give either \"match\" or \"range\", not both",
        ),
        (
            json!({"must": [{"field": "y", "range": {"gte": 1, "lte": 5, "ltee": 3}}]}),
            "filter must[0].range.ltee: unknown range bound \"ltee\"",
        ),
        (
            json!({"mustNot": [{"field": "a", "range": {"gt": 1, "lt": 2, "x": 0}}]}),
            "filter mustNot[0].range.x: unknown range bound",
        ),
        (
            json!({"should": [{"field": "a", "eq": 1}]}),
            "filter should[0].eq: unknown key",
        ),
    ];
    for (v, want) in cases {
        let e = parse(v.clone()).unwrap_err();
        assert!(e.contains(want), "{v}: {e:?} should contain {want:?}");
        // The same refusal through serde (request bodies).
        let e = serde_json::from_value::<Filter>(v.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{v}: {e:?} should contain {want:?}");
    }
}

#[test]
fn malformed_filters_are_refused() {
    let cases = [
        (json!([]), "expected an object"),
        (json!({"must": {}}), "filter must: must be an array"),
        (json!({"must": [1]}), "must[0]: expected an object"),
        (json!({"must": [{"match": "en"}]}), "\"field\" is missing"),
        (
            json!({"must": [{"field": 3, "match": "en"}]}),
            "must be a string",
        ),
        (
            json!({"must": [{"field": "", "match": "en"}]}),
            "field name is empty",
        ),
        (
            json!({"must": [{"field": "a"}]}),
            "needs \"match\" or \"range\"",
        ),
        (
            json!({"must": [{"field": "a", "match": 1.5}]}),
            "only integers",
        ),
        (json!({"must": [{"field": "a", "match": null}]}), "got null"),
        (
            json!({"must": [{"field": "a", "match": [1]}]}),
            "got an array",
        ),
        (
            json!({"must": [{"field": "a", "range": {}}]}),
            "at least one of",
        ),
        (
            json!({"must": [{"field": "a", "range": {"lt": "x"}}]}),
            "must be a number",
        ),
        (
            json!({"must": [{"field": "a", "range": 5}]}),
            "must be an object",
        ),
    ];
    for (v, want) in cases {
        let e = parse(v.clone()).unwrap_err();
        assert!(e.contains(want), "{v}: {e:?} should contain {want:?}");
    }
    let many: Vec<Value> = (0..=MAX_CONDITIONS)
        .map(|i| json!({"field": format!("f{i}"), "match": 1}))
        .collect();
    assert!(
        parse(json!({"should": many}))
            .unwrap_err()
            .contains("limit")
    );
}

#[test]
fn serialised_filters_parse_back() {
    let f = parse(json!({
        "must": [{"field": "lang", "match": "en"}],
        "mustNot": [{"field": "n", "range": {"gte": 1.5}}],
        "should": [{"field": "ok", "match": false}]
    }))
    .unwrap();
    assert_eq!(parse(serde_json::to_value(&f).unwrap()).unwrap(), f);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop::sample::select(vec![
                "must", "mustNot", "should", "field", "match", "range", "gt", "lte", "x"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "must", "mustNot", "should", "field", "match", "range", "gt", "gte", "lt",
                        "lte", "mst"
                    ])
                    .prop_map(String::from),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_condition() -> impl Strategy<Value = Value> {
        let field = "[a-z]{1,6}";
        prop_oneof![
            (
                field,
                prop_oneof![
                    "[a-z]{0,4}".prop_map(Value::from),
                    any::<i64>().prop_map(Value::from),
                    any::<bool>().prop_map(Value::from)
                ]
            )
                .prop_map(|(f, m)| json!({"field": f, "match": m})),
            (
                field,
                prop::collection::btree_map(
                    prop::sample::select(vec!["gt", "gte", "lt", "lte"]).prop_map(String::from),
                    -1e6f64..1e6,
                    1..4
                )
            )
                .prop_map(|(f, r)| json!({"field": f, "range": r})),
        ]
    }

    fn arb_filter() -> impl Strategy<Value = Value> {
        let list = || prop::collection::vec(arb_condition(), 0..4);
        (list(), list(), list()).prop_map(|(a, b, c)| json!({"must": a, "mustNot": b, "should": c}))
    }

    proptest! {
        /// Any JSON: an answer (a filter or an error), never a panic.
        #[test]
        fn any_json_is_parsed_or_refused(v in arb_json()) {
            let _ = Filter::from_json(&v);
        }

        /// Grammatical filters parse, serialise back to themselves, and adding one
        /// unknown key anywhere (top level, a condition, a range) makes them refused
        /// with that key in the message.
        #[test]
        fn grammatical_filters_parse_and_unknown_keys_are_refused(
            v in arb_filter(),
            key in "[a-z]{1,6}z",
            spot in 0usize..3,
        ) {
            let f = Filter::from_json(&v).unwrap();
            prop_assert_eq!(Filter::from_json(&serde_json::to_value(&f).unwrap()).unwrap(), f);
            let mut bad = v.clone();
            let target = match spot {
                0 => Some(&mut bad),
                1 => bad["must"].as_array_mut().and_then(|a| a.first_mut()),
                _ => bad["should"].as_array_mut().and_then(|a| a.first_mut()).and_then(|c| c.get_mut("range")),
            };
            if let Some(Value::Object(m)) = target {
                m.insert(key.clone(), json!(1));
                let e = Filter::from_json(&bad).unwrap_err().to_string();
                prop_assert!(e.contains(&key), "{} for {}", e, bad);
            }
        }
    }
}
