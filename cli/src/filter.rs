//! `--filter` JSON to the proto `Filter`:
//! `{"must": [{"field": "lang", "match": "en"}, {"field": "year", "range": {"gte": 2020}}]}`.
//!
//! Parsed strictly (unknown keys, floats in `match`, empty ranges are errors)
//! so a typo fails here with a pointed message instead of silently matching
//! everything.

use kindex_proto as pb;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid --filter: {0}")]
pub struct FilterError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

pub fn parse(text: &str) -> Result<pb::Filter, FilterError> {
    let v: Value = serde_json::from_str(text).map_err(|e| FilterError(format!("not JSON: {e}")))?;
    let Value::Object(top) = v else {
        return err(r#"expected an object like {"must": [...]}"#);
    };
    if let Some(k) = top.keys().find(|k| *k != "must") {
        return err(format!(
            "unknown key {k:?}; only \"must\" (all conditions hold) is supported"
        ));
    }
    let must = match top.get("must") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, c)| condition(i, c))
            .collect::<Result<_, _>>()?,
        Some(_) => return err("\"must\" must be an array of conditions"),
    };
    Ok(pb::Filter { must })
}

fn condition(i: usize, c: &Value) -> Result<pb::Condition, FilterError> {
    let at = |msg: String| FilterError(format!("condition {i}: {msg}"));
    let Value::Object(c) = c else {
        return Err(at(
            "expected an object with \"field\" and \"match\" or \"range\"".into(),
        ));
    };
    let field = match c.get("field") {
        Some(Value::String(f)) if !f.is_empty() => f.clone(),
        Some(Value::String(_)) => return Err(at("\"field\" is empty".into())),
        Some(_) => return Err(at("\"field\" must be a string".into())),
        None => return Err(at("\"field\" is missing".into())),
    };
    if let Some(k) = c
        .keys()
        .find(|k| !matches!(k.as_str(), "field" | "match" | "range"))
    {
        return Err(at(format!("unknown key {k:?}")));
    }
    let kind = match (c.get("match"), c.get("range")) {
        (Some(m), None) => pb::condition::Kind::Match(match_value(m).map_err(at)?),
        (None, Some(Value::Object(r))) => pb::condition::Kind::Range(range(r).map_err(at)?),
        (None, Some(_)) => return Err(at("\"range\" must be an object with gt/gte/lt/lte".into())),
        (Some(_), Some(_)) => {
            return Err(at("give either \"match\" or \"range\", not both".into()));
        }
        (None, None) => return Err(at("needs \"match\" or \"range\"".into())),
    };
    Ok(pb::Condition {
        field,
        kind: Some(kind),
    })
}

fn match_value(m: &Value) -> Result<pb::Match, String> {
    use pb::r#match::Value as M;
    let v = match m {
        Value::String(s) => M::Text(s.clone()),
        Value::Bool(b) => M::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => M::Integer(i),
            None => {
                return Err(format!(
                    "match {n}: only integers match exactly; use a range for other numbers"
                ));
            }
        },
        other => {
            return Err(format!(
                "match takes a string, an integer or a boolean, got {other}"
            ));
        }
    };
    Ok(pb::Match { value: Some(v) })
}

fn range(r: &Map<String, Value>) -> Result<pb::Range, String> {
    let mut out = pb::Range::default();
    for (k, v) in r {
        let x = v
            .as_f64()
            .ok_or_else(|| format!("range bound {k:?} must be a number, got {v}"))?;
        match k.as_str() {
            "gt" => out.gt = Some(x),
            "gte" => out.gte = Some(x),
            "lt" => out.lt = Some(x),
            "lte" => out.lte = Some(x),
            other => {
                return Err(format!(
                    "unknown range bound {other:?}; use gt, gte, lt, lte"
                ));
            }
        }
    }
    if r.is_empty() {
        return Err("a range needs at least one of gt, gte, lt, lte".into());
    }
    Ok(out)
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
    }

    #[test]
    fn rejected_filters() {
        let cases = [
            ("nope", "not JSON"),
            ("[]", "expected an object"),
            (r#"{"should":[]}"#, "unknown key \"should\""),
            (r#"{"must":{}}"#, "must be an array"),
            (r#"{"must":[1]}"#, "condition 0: expected an object"),
            (r#"{"must":[{"match":"en"}]}"#, "\"field\" is missing"),
            (
                r#"{"must":[{"field":"","match":"en"}]}"#,
                "\"field\" is empty",
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
            (r#"{"must":[{"field":"a","match":["x"]}]}"#, "match takes"),
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
                "condition 1: unknown key \"eq\"",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e:?} should contain {want:?}");
        }
    }
}
