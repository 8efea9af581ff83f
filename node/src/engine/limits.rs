//! Input limits and validation shared by every API (DESIGN §6): bad input is
//! rejected with a precise error before anything changes.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use super::distance::Metric;
use super::filter::{Filter, Payload};

pub const MAX_ID_BYTES: usize = 256;
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
pub const MAX_BATCH: usize = 10_000;
pub const MAX_K: usize = 1_000;
/// A search's own rescoring factor (int8 indexes; accepted and ignored with `none`).
pub const MAX_RESCORE: usize = kindex_common::runtime::MAX_RESCORE as usize;

/// Largest squared Euclidean norm of a vector (stored or query) for the `l2` and `dot`
/// metrics, so that no distance overflows f32 (max ≈ 3.4e38): for l2, |a−b|² ≤
/// (‖a‖+‖b‖)² ≤ 4·1e37; for dot, |a·b| ≤ ‖a‖‖b‖ ≤ 1e37, and every partial sum the SIMD
/// kernels form is bounded the same way. So ‖v‖ ≤ ~3.16e18; components up to ~3e18 are
/// fine, 3e38 is not. Cosine vectors are normalised (in f64) on the way in, so only the zero
/// vector, which has no direction, is refused there.
pub const MAX_SQUARED_NORM: f64 = 1e37;

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
    #[error(
        "point {id:?}: vector norm {norm:e} is too large for the {metric} metric (distances could overflow f32); the limit is {:e}",
        MAX_SQUARED_NORM.sqrt()
    )]
    VectorTooLarge {
        id: String,
        metric: Metric,
        norm: f64,
    },
    #[error("point {id:?}: vector is all zeros; the cosine metric needs a vector with a direction")]
    ZeroVector { id: String },
    #[error(
        "query vector norm {norm:e} is too large for the {metric} metric (distances could overflow f32); the limit is {:e}",
        MAX_SQUARED_NORM.sqrt()
    )]
    QueryTooLarge { metric: Metric, norm: f64 },
    #[error("query vector is all zeros; the cosine metric needs a vector with a direction")]
    QueryZero,
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
    #[error("rescore must be in 1..={MAX_RESCORE}, got {0}")]
    BadRescore(usize),
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

/// Payloads parsed by [`parse_payload`] in this process (see [`payload_parses`]).
static PAYLOAD_PARSES: AtomicU64 = AtomicU64::new(0);

/// How many payloads this process has parsed: a test counts the parses of one write with it
/// (a leader parses a write's payload once, see `api::validate`).
pub fn payload_parses() -> u64 {
    PAYLOAD_PARSES.load(Ordering::Relaxed)
}

/// Parses a payload given as JSON text: must be an object within the size limit. The one
/// function that parses payloads (counted, see [`payload_parses`]).
pub fn parse_payload(id: &str, json: &str) -> Result<Payload, InputError> {
    PAYLOAD_PARSES.fetch_add(1, Ordering::Relaxed);
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

/// Squared Euclidean norm, in f64 (cannot overflow for finite f32 components).
pub fn squared_norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
}

/// Why a (finite) vector cannot be used under `metric`: too large for l2/dot, zero for cosine.
enum Magnitude {
    TooLarge(f64),
    Zero,
}

fn magnitude(metric: Metric, v: &[f32]) -> Option<Magnitude> {
    let sq = squared_norm(v);
    match metric {
        Metric::L2 | Metric::Dot if sq > MAX_SQUARED_NORM => Some(Magnitude::TooLarge(sq.sqrt())),
        Metric::Cosine if sq == 0.0 => Some(Magnitude::Zero),
        _ => None,
    }
}

/// The magnitude checks of points for `metric` (see [`MAX_SQUARED_NORM`]). Made before a
/// write is proposed, not at apply time, so a log written by an older version replays as it
/// was accepted then.
pub fn check_magnitudes<'a>(
    metric: Metric,
    points: impl IntoIterator<Item = &'a PointInput>,
) -> Result<(), InputError> {
    for p in points {
        match magnitude(metric, &p.vector) {
            None => {}
            Some(Magnitude::TooLarge(norm)) => {
                return Err(InputError::VectorTooLarge {
                    id: p.id.clone(),
                    metric,
                    norm,
                });
            }
            Some(Magnitude::Zero) => return Err(InputError::ZeroVector { id: p.id.clone() }),
        }
    }
    Ok(())
}

pub fn check_query(
    dim: usize,
    metric: Metric,
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
    match magnitude(metric, vector) {
        None => {}
        Some(Magnitude::TooLarge(norm)) => return Err(InputError::QueryTooLarge { metric, norm }),
        Some(Magnitude::Zero) => return Err(InputError::QueryZero),
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

/// A search's own `rescore`, when it gives one: 1..=[`MAX_RESCORE`] (the runtime knob's
/// range).
pub fn check_rescore(rescore: Option<usize>) -> Result<(), InputError> {
    match rescore {
        Some(r) if !(1..=MAX_RESCORE).contains(&r) => Err(InputError::BadRescore(r)),
        _ => Ok(()),
    }
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
            check_query(2, Metric::L2, &[1.0, 2.0], 0, None, &f),
            Err(InputError::BadK(0))
        );
        assert_eq!(
            check_query(2, Metric::L2, &[1.0, 2.0], MAX_K + 1, None, &f),
            Err(InputError::BadK(MAX_K + 1))
        );
        assert!(check_query(2, Metric::L2, &[1.0], 1, None, &f).is_err());
        assert!(check_query(2, Metric::L2, &[1.0, f32::NAN], 1, None, &f).is_err());
        assert_eq!(
            check_query(2, Metric::L2, &[1.0, 2.0], 1, Some(0), &f),
            Err(InputError::BadEf(0))
        );
        assert!(check_query(2, Metric::L2, &[1.0, 2.0], 10, Some(64), &f).is_ok());
    }

    #[test]
    fn rescore_range() {
        assert_eq!(check_rescore(None), Ok(()));
        assert_eq!(check_rescore(Some(1)), Ok(()));
        assert_eq!(check_rescore(Some(MAX_RESCORE)), Ok(()));
        assert_eq!(check_rescore(Some(0)), Err(InputError::BadRescore(0)));
        assert_eq!(
            check_rescore(Some(MAX_RESCORE + 1)).map_err(|e| e.to_string()),
            Err("rescore must be in 1..=100, got 101".into())
        );
    }

    /// 3e38 is finite but was accepted before: l2/dot distances came back as JSON null and
    /// cosine stored an all-zero vector.
    #[test]
    fn huge_and_zero_vectors_are_refused() {
        let f = Filter::default();
        for metric in [Metric::L2, Metric::Dot] {
            let e = check_magnitudes(metric, &[p("big", vec![3e38, 0.0])])
                .unwrap_err()
                .to_string();
            assert!(e.contains("\"big\"") && e.contains("too large"), "{e}");
            let e = check_query(2, metric, &[0.0, 3e38], 1, None, &f).unwrap_err();
            assert!(matches!(e, InputError::QueryTooLarge { .. }), "{e}");
            // Zero vectors are fine for l2 and dot.
            check_magnitudes(metric, &[p("z", vec![0.0, 0.0])]).unwrap();
        }
        // Cosine takes any finite magnitude (normalised in f64) but not zero.
        check_magnitudes(Metric::Cosine, &[p("big", vec![3e38, 3e38])]).unwrap();
        check_magnitudes(Metric::Cosine, &[p("tiny", vec![1e-45, 0.0])]).unwrap();
        let e = check_magnitudes(Metric::Cosine, &[p("z", vec![0.0, -0.0])]).unwrap_err();
        assert_eq!(e, InputError::ZeroVector { id: "z".into() });
        assert_eq!(
            check_query(2, Metric::Cosine, &[0.0, 0.0], 1, None, &f),
            Err(InputError::QueryZero)
        );
    }

    /// At the limit, the largest possible distance of every metric is still finite, with
    /// the kernels this CPU uses and the scalar ones.
    #[test]
    fn distances_at_the_limit_stay_finite() {
        use super::super::distance::DistanceFn;
        let dim = 384;
        // Every component equal, norm just under the limit; b points the other way.
        let c = ((MAX_SQUARED_NORM / dim as f64).sqrt() * 0.999_999) as f32;
        let a = vec![c; dim];
        let b = vec![-c; dim];
        check_magnitudes(Metric::L2, &[p("a", a.clone()), p("b", b.clone())]).unwrap();
        for metric in [Metric::L2, Metric::Dot] {
            for d in [DistanceFn::new(metric), DistanceFn::scalar(metric)] {
                for (x, y) in [(&a, &b), (&a, &a), (&b, &b)] {
                    let v = d.distance(x, y);
                    assert!(v.is_finite(), "{metric}: {v}");
                }
            }
        }
        // Just over the limit is refused.
        let over = vec![c * 1.001; dim];
        assert!(check_magnitudes(Metric::Dot, &[p("o", over)]).is_err());
    }
}
