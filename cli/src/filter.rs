//! `--filter` JSON to the proto `Filter`:
//! `{"must": [{"field": "lang", "match": "en"}, {"field": "year", "range": {"gte": 2020}}],
//!   "mustNot": [...], "should": [...]}`.
//!
//! Parsed strictly (unknown keys, floats in `match`, empty ranges are errors)
//! so a typo fails here with a pointed message instead of silently matching
//! everything.

use kindex_node::api::convert;
use kindex_node::engine::filter::Filter;
use kindex_proto as pb;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid --filter: {0}")]
pub struct FilterError(String);

/// The node's own parser (one grammar for the CLI, the HTTP API and the OpenAPI document).
pub fn parse(text: &str) -> Result<pb::Filter, FilterError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FilterError(format!("not JSON: {e}")))?;
    let f = Filter::from_json(&v).map_err(|e| FilterError(e.to_string()))?;
    Ok(convert::filter_out(&f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::condition::Kind;
    use pb::r#match::Value as M;

    fn one(text: &str) -> Kind {
        let f = parse(text).unwrap();
        assert_eq!(f.must.len(), 1);
        f.must[0].kind.clone().unwrap()
    }

    fn m(v: M) -> Kind {
        Kind::Match(pb::Match { value: Some(v) })
    }

    #[test]
    fn accepted_filters() {
        let cases: Vec<(&str, Kind)> = vec![
            (
                r#"{"must":[{"field":"lang","match":"en"}]}"#,
                m(M::Text("en".into())),
            ),
            (r#"{"must":[{"field":"n","match":-3}]}"#, m(M::Integer(-3))),
            (
                r#"{"must":[{"field":"ok","match":true}]}"#,
                m(M::Boolean(true)),
            ),
            (
                r#"{"must":[{"field":"y","range":{"gte":2020,"lt":2024.5}}]}"#,
                Kind::Range(pb::Range {
                    gte: Some(2020.0),
                    lt: Some(2024.5),
                    ..Default::default()
                }),
            ),
            (
                r#"{"must":[{"field":"y","range":{"gt":1,"lte":2}}]}"#,
                Kind::Range(pb::Range {
                    gt: Some(1.0),
                    lte: Some(2.0),
                    ..Default::default()
                }),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(one(text), want, "{text}");
        }
        assert_eq!(parse("{}").unwrap().must.len(), 0);
        assert_eq!(parse(r#"{"must":[]}"#).unwrap().must.len(), 0);
        let two = parse(r#"{"must":[{"field":"a","match":"x"},{"field":"b","range":{"lt":3}}]}"#)
            .unwrap();
        assert_eq!(two.must[1].field, "b");
        let clauses = parse(
            r#"{"mustNot":[{"field":"a","match":"x"}],"should":[{"field":"b","range":{"lt":3}},{"field":"c","match":true}]}"#,
        )
        .unwrap();
        assert_eq!(
            (
                clauses.must.len(),
                clauses.must_not.len(),
                clauses.should.len()
            ),
            (0, 1, 2)
        );
    }

    #[test]
    fn rejected_filters() {
        let cases = [
            ("nope", "not JSON"),
            ("[]", "expected an object"),
            (r#"{"shuld":[]}"#, "unknown key \"shuld\""),
            (r#"{"must":{}}"#, "must be an array"),
            (r#"{"must":[1]}"#, "must[0]: expected an object"),
            (r#"{"must":[{"match":"en"}]}"#, "\"field\" is missing"),
            (
                r#"{"must":[{"field":"","match":"en"}]}"#,
                "field name is empty",
            ),
            (r#"{"must":[{"field":3,"match":"en"}]}"#, "must be a string"),
            (
                r#"{"must":[{"field":"a"}]}"#,
                "needs \"match\" or \"range\"",
            ),
            (
                r#"{"must":[{"field":"a","match":1,"range":{"lt":1}}]}"#,
                "not both",
            ),
            (r#"{"must":[{"field":"a","match":1.5}]}"#, "only integers"),
            (r#"{"must":[{"field":"a","match":null}]}"#, "got null"),
            (
                r#"{"must":[{"field":"a","match":["x"]}]}"#,
                "takes a string",
            ),
            (r#"{"must":[{"field":"a","range":{}}]}"#, "at least one"),
            (
                r#"{"must":[{"field":"a","range":{"ge":1}}]}"#,
                "unknown range bound \"ge\"",
            ),
            (
                r#"{"must":[{"field":"a","range":{"lt":"x"}}]}"#,
                "must be a number",
            ),
            (r#"{"must":[{"field":"a","range":5}]}"#, "must be an object"),
            (
                r#"{"must":[{"field":"x","match":1},{"field":"a","eq":1}]}"#,
                "must[1].eq: unknown key \"eq\"",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e:?} should contain {want:?}");
        }
    }
}
