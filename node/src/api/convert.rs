//! Wire types (protobuf) to engine and log types and back. Filters are checked here; points
//! by `api::validate`. Nothing panics on bad input.

use kindex_proto as pb;

use crate::engine::filter::{Condition, Filter, FilterError, MatchValue, Predicate, RangeBounds};
use crate::engine::limits::InputError;
use crate::engine::{Hit, StoredPoint};
use crate::raft::PointRecord;

/// The points of a request in their log form (validated by `api::validate`).
pub fn records(points: Vec<pb::Point>) -> Vec<PointRecord> {
    points
        .into_iter()
        .map(|p| PointRecord {
            id: p.id,
            vector: p.vector,
            payload_json: p.payload_json,
        })
        .collect()
}

pub fn filter_in(f: Option<pb::Filter>) -> Result<Filter, InputError> {
    let Some(f) = f else {
        return Ok(Filter::default());
    };
    let f = Filter {
        must: conditions_in("must", f.must)?,
        must_not: conditions_in("mustNot", f.must_not)?,
        should: conditions_in("should", f.should)?,
    };
    f.validate()?;
    Ok(f)
}

fn conditions_in(
    clause: &'static str,
    list: Vec<pb::Condition>,
) -> Result<Vec<Condition>, InputError> {
    let mut out = Vec::with_capacity(list.len());
    for (index, c) in list.into_iter().enumerate() {
        let invalid = |reason: &str| {
            InputError::Filter(FilterError::Invalid {
                clause,
                index,
                field: c.field.clone(),
                reason: reason.to_string(),
            })
        };
        let predicate = match &c.kind {
            None => return Err(invalid("condition has neither match nor range")),
            Some(pb::condition::Kind::Match(m)) => match &m.value {
                None => return Err(invalid("match has no value (text, integer or boolean)")),
                Some(pb::r#match::Value::Text(t)) => Predicate::Match(MatchValue::Text(t.clone())),
                Some(pb::r#match::Value::Integer(i)) => Predicate::Match(MatchValue::Integer(*i)),
                Some(pb::r#match::Value::Boolean(b)) => Predicate::Match(MatchValue::Boolean(*b)),
            },
            Some(pb::condition::Kind::Range(r)) => Predicate::Range(RangeBounds {
                gt: r.gt,
                gte: r.gte,
                lt: r.lt,
                lte: r.lte,
            }),
        };
        out.push(Condition {
            field: c.field,
            predicate,
        });
    }
    Ok(out)
}

/// The wire form of a filter (the HTTP API and the CLI parse filters as JSON into [`Filter`]).
pub fn filter_out(f: &Filter) -> pb::Filter {
    pb::Filter {
        must: conditions_out(&f.must),
        must_not: conditions_out(&f.must_not),
        should: conditions_out(&f.should),
    }
}

fn conditions_out(list: &[Condition]) -> Vec<pb::Condition> {
    list.iter()
        .map(|c| pb::Condition {
            field: c.field.clone(),
            kind: Some(match &c.predicate {
                Predicate::Match(m) => pb::condition::Kind::Match(pb::Match {
                    value: Some(match m {
                        MatchValue::Text(t) => pb::r#match::Value::Text(t.clone()),
                        MatchValue::Integer(i) => pb::r#match::Value::Integer(*i),
                        MatchValue::Boolean(b) => pb::r#match::Value::Boolean(*b),
                    }),
                }),
                Predicate::Range(r) => pb::condition::Kind::Range(pb::Range {
                    gt: r.gt,
                    gte: r.gte,
                    lt: r.lt,
                    lte: r.lte,
                }),
            }),
        })
        .collect()
}

pub fn point_out(p: StoredPoint, with_vector: bool, with_payload: bool) -> pb::Point {
    pb::Point {
        id: p.id,
        vector: if with_vector { p.vector } else { Vec::new() },
        payload_json: if with_payload {
            p.payload.map(|m| serde_json::Value::Object(m).to_string())
        } else {
            None
        },
    }
}

pub fn hit_out(
    h: Hit,
    engine: &crate::engine::Engine,
    with_vector: bool,
    with_payload: bool,
) -> pb::ScoredPoint {
    pb::ScoredPoint {
        vector: if with_vector {
            engine.vector(h.slot).to_vec()
        } else {
            Vec::new()
        },
        payload_json: if with_payload {
            engine
                .payload(h.slot)
                .map(|m| serde_json::Value::Object(m.clone()).to_string())
        } else {
            None
        },
        id: h.id,
        distance: h.distance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_without_kind_is_rejected() {
        let f = pb::Filter {
            must_not: vec![pb::Condition {
                field: "a".into(),
                kind: None,
            }],
            ..Default::default()
        };
        assert!(
            filter_in(Some(f))
                .unwrap_err()
                .to_string()
                .contains("neither match nor range")
        );
        let f = pb::Filter {
            should: vec![pb::Condition {
                field: "a".into(),
                kind: Some(pb::condition::Kind::Match(pb::Match { value: None })),
            }],
            ..Default::default()
        };
        assert!(
            filter_in(Some(f))
                .unwrap_err()
                .to_string()
                .contains("match has no value")
        );
    }

    #[test]
    fn filters_round_trip_through_the_wire_form() {
        let f: Filter = serde_json::from_str(
            r#"{"must":[{"field":"lang","match":"en"},{"field":"n","match":3}],"mustNot":[{"field":"ok","match":true}],"should":[{"field":"year","range":{"gte":2000.0,"lt":2010.0}}]}"#,
        )
        .unwrap();
        assert_eq!(filter_in(Some(filter_out(&f))).unwrap(), f);
    }
}
