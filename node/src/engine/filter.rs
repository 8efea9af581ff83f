//! Payload filters on top-level JSON payload fields, checked per candidate during graph
//! traversal: `must` (all hold), `mustNot` (none holds) and `should` (at least one holds,
//! when given). A condition is an equality (`match`) or a numeric `range`.
//!
//! The JSON grammar is parsed by hand ([`Filter::from_json`]), not by derived serde: serde's
//! `deny_unknown_fields` does not work together with `flatten`, and a filter that silently
//! ignores a mistyped key returns wrong hits with a 200. Every unknown key, a condition with
//! both `match` and `range`, and a misspelt range bound is refused with its path.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Payloads are JSON objects.
pub type Payload = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MatchValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RangeBounds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Predicate {
    Match(MatchValue),
    Range(RangeBounds),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    pub field: String,
    #[serde(flatten)]
    pub predicate: Predicate,
}

/// `must`: all hold; `must_not`: none holds; `should`: at least one holds (ignored when empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub must: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub must_not: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub should: Vec<Condition>,
}

/// The three clause lists, in the order their JSON keys are documented.
pub const CLAUSES: [&str; 3] = ["must", "mustNot", "should"];
const CONDITION_KEYS: [&str; 3] = ["field", "match", "range"];
const RANGE_KEYS: [&str; 4] = ["gt", "gte", "lt", "lte"];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    /// A JSON filter that does not follow the grammar; `path` names the offending place,
    /// e.g. `must[1].range.gtee`.
    #[error("filter {path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("filter condition {clause}[{index}]: field name is empty")]
    EmptyField { clause: &'static str, index: usize },
    #[error(
        "filter condition {clause}[{index}] on {field:?}: a range needs at least one of gt, gte, lt, lte"
    )]
    EmptyRange {
        clause: &'static str,
        index: usize,
        field: String,
    },
    #[error("filter condition {clause}[{index}] on {field:?}: range bound is not a finite number")]
    NonFiniteBound {
        clause: &'static str,
        index: usize,
        field: String,
    },
    #[error("filter condition {clause}[{index}] on {field:?}: {reason}")]
    Invalid {
        clause: &'static str,
        index: usize,
        field: String,
        reason: String,
    },
    #[error("filter has {0} conditions; the limit is {MAX_CONDITIONS}")]
    TooManyConditions(usize),
}

/// Conditions over all clauses.
pub const MAX_CONDITIONS: usize = 64;

fn syntax(path: impl Into<String>, reason: impl Into<String>) -> FilterError {
    FilterError::Syntax {
        path: path.into(),
        reason: reason.into(),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.must_not.is_empty() && self.should.is_empty()
    }

    /// The clause lists with their JSON names.
    pub fn clauses(&self) -> [(&'static str, &[Condition]); 3] {
        [
            ("must", &self.must),
            ("mustNot", &self.must_not),
            ("should", &self.should),
        ]
    }

    /// Parses the JSON grammar strictly (see the module docs), then [`Self::validate`]s.
    pub fn from_json(v: &Value) -> Result<Filter, FilterError> {
        let Value::Object(top) = v else {
            return Err(syntax(
                "(top level)",
                format!(
                    "expected an object like {{\"must\": [...]}}, got {}",
                    json_kind(v)
                ),
            ));
        };
        if let Some(k) = top.keys().find(|k| !CLAUSES.contains(&k.as_str())) {
            return Err(syntax(
                k.as_str(),
                format!("unknown key {k:?}; a filter has must, mustNot and should"),
            ));
        }
        let mut f = Filter::default();
        for (name, list) in [
            ("must", &mut f.must),
            ("mustNot", &mut f.must_not),
            ("should", &mut f.should),
        ] {
            match top.get(name) {
                None => {}
                Some(Value::Array(a)) => {
                    for (i, c) in a.iter().enumerate() {
                        list.push(condition_from_json(&format!("{name}[{i}]"), c)?);
                    }
                }
                Some(other) => {
                    return Err(syntax(
                        name,
                        format!("must be an array of conditions, got {}", json_kind(other)),
                    ));
                }
            }
        }
        f.validate()?;
        Ok(f)
    }

    pub fn validate(&self) -> Result<(), FilterError> {
        let total = self.must.len() + self.must_not.len() + self.should.len();
        if total > MAX_CONDITIONS {
            return Err(FilterError::TooManyConditions(total));
        }
        for (clause, list) in self.clauses() {
            for (index, c) in list.iter().enumerate() {
                if c.field.is_empty() {
                    return Err(FilterError::EmptyField { clause, index });
                }
                if let Predicate::Range(r) = &c.predicate {
                    let bounds = [r.gt, r.gte, r.lt, r.lte];
                    if bounds.iter().all(Option::is_none) {
                        return Err(FilterError::EmptyRange {
                            clause,
                            index,
                            field: c.field.clone(),
                        });
                    }
                    if bounds.iter().flatten().any(|b| !b.is_finite()) {
                        return Err(FilterError::NonFiniteBound {
                            clause,
                            index,
                            field: c.field.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// True if the payload satisfies the filter. A missing payload or field satisfies no
    /// condition (so it fails `must` and `should`, and passes `mustNot`).
    pub fn matches(&self, payload: Option<&Payload>) -> bool {
        if self.is_empty() {
            return true;
        }
        let get = |c: &Condition| payload.and_then(|p| p.get(&c.field));
        self.must.iter().all(|c| c.matches(get(c)))
            && !self.must_not.iter().any(|c| c.matches(get(c)))
            && (self.should.is_empty() || self.should.iter().any(|c| c.matches(get(c))))
    }
}

fn condition_from_json(path: &str, v: &Value) -> Result<Condition, FilterError> {
    let Value::Object(c) = v else {
        return Err(syntax(
            path,
            format!(
                "expected an object with \"field\" and \"match\" or \"range\", got {}",
                json_kind(v)
            ),
        ));
    };
    if let Some(k) = c.keys().find(|k| !CONDITION_KEYS.contains(&k.as_str())) {
        return Err(syntax(
            format!("{path}.{k}"),
            format!("unknown key {k:?}; a condition has field and one of match, range"),
        ));
    }
    let field = match c.get("field") {
        Some(Value::String(f)) => f.clone(),
        Some(other) => {
            return Err(syntax(
                format!("{path}.field"),
                format!("must be a string, got {}", json_kind(other)),
            ));
        }
        None => return Err(syntax(path, "\"field\" is missing")),
    };
    let predicate = match (c.get("match"), c.get("range")) {
        (Some(_), Some(_)) => {
            return Err(syntax(path, "give either \"match\" or \"range\", not both"));
        }
        (None, None) => return Err(syntax(path, "needs \"match\" or \"range\"")),
        (Some(m), None) => Predicate::Match(match_from_json(&format!("{path}.match"), m)?),
        (None, Some(r)) => Predicate::Range(range_from_json(&format!("{path}.range"), r)?),
    };
    Ok(Condition { field, predicate })
}

fn match_from_json(path: &str, v: &Value) -> Result<MatchValue, FilterError> {
    match v {
        Value::String(s) => Ok(MatchValue::Text(s.clone())),
        Value::Bool(b) => Ok(MatchValue::Boolean(*b)),
        Value::Number(n) => n.as_i64().map(MatchValue::Integer).ok_or_else(|| {
            syntax(
                path,
                format!("{n}: only integers (64-bit) match exactly; use a range for other numbers"),
            )
        }),
        other => Err(syntax(
            path,
            format!(
                "takes a string, an integer or a boolean, got {}",
                json_kind(other)
            ),
        )),
    }
}

fn range_from_json(path: &str, v: &Value) -> Result<RangeBounds, FilterError> {
    let Value::Object(r) = v else {
        return Err(syntax(
            path,
            format!(
                "must be an object with gt, gte, lt, lte, got {}",
                json_kind(v)
            ),
        ));
    };
    let mut out = RangeBounds::default();
    for (k, v) in r {
        let slot = match k.as_str() {
            "gt" => &mut out.gt,
            "gte" => &mut out.gte,
            "lt" => &mut out.lt,
            "lte" => &mut out.lte,
            _ => {
                return Err(syntax(
                    format!("{path}.{k}"),
                    format!("unknown range bound {k:?}; use {}", RANGE_KEYS.join(", ")),
                ));
            }
        };
        *slot = Some(v.as_f64().ok_or_else(|| {
            syntax(
                format!("{path}.{k}"),
                format!("must be a number, got {}", json_kind(v)),
            )
        })?);
    }
    Ok(out)
}

/// JSON filters in request bodies go through the strict parser.
impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Filter::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl Condition {
    fn matches(&self, v: Option<&Value>) -> bool {
        let Some(v) = v else { return false };
        match &self.predicate {
            Predicate::Match(MatchValue::Text(t)) => v.as_str() == Some(t.as_str()),
            Predicate::Match(MatchValue::Integer(i)) => {
                v.as_i64() == Some(*i) || v.as_f64().is_some_and(|f| f == *i as f64)
            }
            Predicate::Match(MatchValue::Boolean(b)) => v.as_bool() == Some(*b),
            Predicate::Range(r) => v.as_f64().is_some_and(|x| {
                r.gt.is_none_or(|b| x > b)
                    && r.gte.is_none_or(|b| x >= b)
                    && r.lt.is_none_or(|b| x < b)
                    && r.lte.is_none_or(|b| x <= b)
            }),
        }
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
