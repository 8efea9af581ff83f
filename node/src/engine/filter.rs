//! Payload filters: a conjunction of equality / range conditions on top-level
//! JSON payload fields, checked per candidate during graph traversal.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Payloads are JSON objects.
pub type Payload = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Predicate {
    Match(MatchValue),
    Range(RangeBounds),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub field: String,
    #[serde(flatten)]
    pub predicate: Predicate,
}

/// All conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub must: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("filter condition {index}: field name is empty")]
    EmptyField { index: usize },
    #[error(
        "filter condition {index} on {field:?}: a range needs at least one of gt, gte, lt, lte"
    )]
    EmptyRange { index: usize, field: String },
    #[error("filter condition {index} on {field:?}: range bound is not a finite number")]
    NonFiniteBound { index: usize, field: String },
    #[error("filter condition {index} on {field:?}: {reason}")]
    Invalid {
        index: usize,
        field: String,
        reason: String,
    },
    #[error("filter has {0} conditions; the limit is {MAX_CONDITIONS}")]
    TooManyConditions(usize),
}

pub const MAX_CONDITIONS: usize = 64;

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.must.is_empty()
    }

    pub fn validate(&self) -> Result<(), FilterError> {
        if self.must.len() > MAX_CONDITIONS {
            return Err(FilterError::TooManyConditions(self.must.len()));
        }
        for (index, c) in self.must.iter().enumerate() {
            if c.field.is_empty() {
                return Err(FilterError::EmptyField { index });
            }
            if let Predicate::Range(r) = &c.predicate {
                let bounds = [r.gt, r.gte, r.lt, r.lte];
                if bounds.iter().all(Option::is_none) {
                    return Err(FilterError::EmptyRange {
                        index,
                        field: c.field.clone(),
                    });
                }
                if bounds.iter().flatten().any(|b| !b.is_finite()) {
                    return Err(FilterError::NonFiniteBound {
                        index,
                        field: c.field.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// True if the payload satisfies every condition. A missing payload or
    /// field never matches.
    pub fn matches(&self, payload: Option<&Payload>) -> bool {
        if self.must.is_empty() {
            return true;
        }
        let Some(p) = payload else { return false };
        self.must.iter().all(|c| c.matches(p.get(&c.field)))
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
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Payload {
        v.as_object().cloned().unwrap()
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
    fn match_kinds() {
        let p = payload(json!({"n": 3, "b": true, "s": "x"}));
        let m = |field: &str, v: MatchValue| Filter {
            must: vec![Condition {
                field: field.into(),
                predicate: Predicate::Match(v),
            }],
        };
        assert!(m("n", MatchValue::Integer(3)).matches(Some(&p)));
        assert!(!m("n", MatchValue::Text("3".into())).matches(Some(&p)));
        assert!(m("b", MatchValue::Boolean(true)).matches(Some(&p)));
        assert!(m("s", MatchValue::Text("x".into())).matches(Some(&p)));
    }

    #[test]
    fn invalid_filters_are_rejected() {
        let empty_range = Filter {
            must: vec![Condition {
                field: "a".into(),
                predicate: Predicate::Range(RangeBounds::default()),
            }],
        };
        assert!(matches!(
            empty_range.validate(),
            Err(FilterError::EmptyRange { .. })
        ));
        let no_field = Filter {
            must: vec![Condition {
                field: "".into(),
                predicate: Predicate::Match(MatchValue::Boolean(true)),
            }],
        };
        assert!(matches!(
            no_field.validate(),
            Err(FilterError::EmptyField { .. })
        ));
        assert!(
            serde_json::from_value::<Filter>(json!({"must": [{"field": "a", "match": [1]}]}))
                .is_err()
        );
    }
}
