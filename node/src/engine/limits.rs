//! Input limits and validation shared by every API (DESIGN §6): bad input is
//! rejected with a precise error before anything changes.

use super::filter::{Filter, Payload};

pub const MAX_ID_BYTES: usize = 256;
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
pub const MAX_BATCH: usize = 10_000;
pub const MAX_K: usize = 1_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("point {index}: id is empty")]
    EmptyId { index: usize },
    #[error("point {index}: id is {len} bytes; the limit is {MAX_ID_BYTES}")]
    IdTooLong { index: usize, len: usize },
    #[error("point {id:?}: vector has {got} dimensions; the index has {expected}")]
    WrongDimension {
        id: String,
        expected: usize,
        got: usize,
    },
    #[error(
        "point {id:?}: vector component {position} is {value} (NaN and infinity are not allowed)"
    )]
    NonFinite {
        id: String,
        position: usize,
        value: f32,
    },
    #[error("point {id:?}: payload is {len} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge { id: String, len: usize },
    #[error("point {id:?}: payload is not a JSON object: {reason}")]
    BadPayload { id: String, reason: String },
    #[error("batch has {0} items; the limit is {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("batch is empty")]
    EmptyBatch,
    #[error("query vector has {got} dimensions; the index has {expected}")]
    QueryDimension { expected: usize, got: usize },
    #[error("query vector component {position} is {value} (NaN and infinity are not allowed)")]
    QueryNonFinite { position: usize, value: f32 },
    #[error("k must be in 1..={MAX_K}, got {0}")]
    BadK(usize),
    #[error("efSearch must be in 1..=4096, got {0}")]
    BadEf(usize),
    #[error(transparent)]
    Filter(#[from] super::filter::FilterError),
}

/// A point as received, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PointInput {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload: Option<Payload>,
}

pub fn check_batch_len(n: usize) -> Result<(), InputError> {
    match n {
        0 => Err(InputError::EmptyBatch),
        n if n > MAX_BATCH => Err(InputError::BatchTooLarge(n)),
        _ => Ok(()),
    }
}

pub fn check_id(index: usize, id: &str) -> Result<(), InputError> {
    if id.is_empty() {
        return Err(InputError::EmptyId { index });
    }
    if id.len() > MAX_ID_BYTES {
        return Err(InputError::IdTooLong {
            index,
            len: id.len(),
        });
    }
    Ok(())
}

/// Parses a payload given as JSON text: must be an object within the size limit.
pub fn parse_payload(id: &str, json: &str) -> Result<Payload, InputError> {
    if json.len() > MAX_PAYLOAD_BYTES {
        return Err(InputError::PayloadTooLarge {
            id: id.to_string(),
            len: json.len(),
        });
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(other) => Err(InputError::BadPayload {
            id: id.to_string(),
            reason: format!("got {}", json_kind(&other)),
        }),
        Err(e) => Err(InputError::BadPayload {
            id: id.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

pub fn check_point(index: usize, dim: usize, p: &PointInput) -> Result<(), InputError> {
    check_id(index, &p.id)?;
    if p.vector.len() != dim {
        return Err(InputError::WrongDimension {
            id: p.id.clone(),
            expected: dim,
            got: p.vector.len(),
        });
    }
    if let Some((position, &value)) = p.vector.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(InputError::NonFinite {
            id: p.id.clone(),
            position,
            value,
        });
    }
    if let Some(payload) = &p.payload {
        let len = serde_json::to_string(payload)
            .map(|s| s.len())
            .unwrap_or(usize::MAX);
        if len > MAX_PAYLOAD_BYTES {
            return Err(InputError::PayloadTooLarge {
                id: p.id.clone(),
                len,
            });
        }
    }
    Ok(())
}

pub fn check_points(dim: usize, points: &[PointInput]) -> Result<(), InputError> {
    check_batch_len(points.len())?;
    points
        .iter()
        .enumerate()
        .try_for_each(|(i, p)| check_point(i, dim, p))
}

pub fn check_query(
    dim: usize,
    vector: &[f32],
    k: usize,
    ef: Option<usize>,
    filter: &Filter,
) -> Result<(), InputError> {
    if vector.len() != dim {
        return Err(InputError::QueryDimension {
            expected: dim,
            got: vector.len(),
        });
    }
    if let Some((position, &value)) = vector.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(InputError::QueryNonFinite { position, value });
    }
    if k == 0 || k > MAX_K {
        return Err(InputError::BadK(k));
    }
    if let Some(ef) = ef
        && !(1..=4096).contains(&ef)
    {
        return Err(InputError::BadEf(ef));
    }
    filter.validate()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, v: Vec<f32>) -> PointInput {
        PointInput {
            id: id.into(),
            vector: v,
            payload: None,
        }
    }

    #[test]
    fn bad_points_table() {
        let long = "x".repeat(300);
        let cases: Vec<(PointInput, &str)> = vec![
            (p("", vec![1.0, 2.0]), "id is empty"),
            (p(&long, vec![1.0, 2.0]), "300 bytes"),
            (p("a", vec![1.0]), "has 1 dimensions; the index has 2"),
            (p("a", vec![1.0, f32::NAN]), "component 1 is NaN"),
            (p("a", vec![f32::INFINITY, 1.0]), "component 0 is inf"),
        ];
        for (point, msg) in cases {
            let err = check_points(2, &[point]).unwrap_err().to_string();
            assert!(err.contains(msg), "{err:?} should contain {msg:?}");
        }
        assert_eq!(check_points(2, &[]), Err(InputError::EmptyBatch));
        let many: Vec<_> = (0..MAX_BATCH + 1)
            .map(|i| p(&i.to_string(), vec![0.0, 0.0]))
            .collect();
        assert_eq!(
            check_points(2, &many),
            Err(InputError::BatchTooLarge(MAX_BATCH + 1))
        );
    }

    #[test]
    fn payload_parsing() {
        assert!(parse_payload("a", r#"{"x": 1}"#).is_ok());
        assert!(
            parse_payload("a", "[1]")
                .unwrap_err()
                .to_string()
                .contains("an array")
        );
        assert!(
            parse_payload("a", "{")
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
        let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(MAX_PAYLOAD_BYTES));
        assert!(matches!(
            parse_payload("a", &big),
            Err(InputError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn bad_queries() {
        let f = Filter::default();
        assert_eq!(
            check_query(2, &[1.0, 2.0], 0, None, &f),
            Err(InputError::BadK(0))
        );
        assert_eq!(
            check_query(2, &[1.0, 2.0], MAX_K + 1, None, &f),
            Err(InputError::BadK(MAX_K + 1))
        );
        assert!(check_query(2, &[1.0], 1, None, &f).is_err());
        assert!(check_query(2, &[1.0, f32::NAN], 1, None, &f).is_err());
        assert_eq!(
            check_query(2, &[1.0, 2.0], 1, Some(0), &f),
            Err(InputError::BadEf(0))
        );
        assert!(check_query(2, &[1.0, 2.0], 10, Some(64), &f).is_ok());
    }
}
