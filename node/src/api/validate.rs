//! Request validation, once per request, against the limits table (`engine::limits`).
//!
//! An upsert is validated where it enters a node (the coordinator for a client request, the
//! shard-local service for a request from another node), and what passed is carried as
//! [`ValidPoint`]s to the Raft proposal: nothing validates or parses it again on the way. The
//! payload JSON is parsed here ([`limits::parse_payload`]) and the parsed payload travels with
//! the point, so applying the entry on the leader does not parse it again either
//! (`raft::EngineState::remember_payloads`).

use kindex_proto as pb;

use crate::engine::PointInput;
use crate::engine::distance::Metric;
use crate::engine::filter::Payload;
use crate::engine::limits;
use crate::engine::limits::InputError;
use crate::raft::PointRecord;

/// A point of an upsert that passed validation: the engine input (payload parsed) and the
/// payload's JSON text as received (what the Raft log carries).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPoint {
    input: PointInput,
    payload_json: Option<String>,
}

impl ValidPoint {
    pub fn id(&self) -> &str {
        &self.input.id
    }

    /// The parsed payload and its JSON text.
    pub fn payload(&self) -> Option<(&str, &Payload)> {
        self.payload_json
            .as_deref()
            .zip(self.input.payload.as_ref())
    }

    /// The point as the Raft log carries it.
    pub fn record(&self) -> PointRecord {
        PointRecord {
            id: self.input.id.clone(),
            vector: self.input.vector.clone(),
            payload_json: self.payload_json.clone(),
        }
    }

    /// The point as sent to another node.
    pub fn into_wire(self) -> pb::Point {
        pb::Point {
            id: self.input.id,
            vector: self.input.vector,
            payload_json: self.payload_json,
        }
    }
}

/// The checks an upsert must pass before it is proposed: batch size, ids, dimensions, finite
/// components, payloads (a JSON object within the size limit; parsed here, once), and the
/// magnitudes for `metric` (made here only, see [`limits::check_magnitudes`]). A batch that
/// passes is never rejected at apply time for its input.
pub fn upsert(
    dim: usize,
    metric: Metric,
    records: Vec<PointRecord>,
) -> Result<Vec<ValidPoint>, InputError> {
    let points = records
        .into_iter()
        .map(|r| {
            let payload = match &r.payload_json {
                Some(json) => Some(limits::parse_payload(&r.id, json)?),
                None => None,
            };
            Ok(ValidPoint {
                input: PointInput {
                    id: r.id,
                    vector: r.vector,
                    payload,
                },
                payload_json: r.payload_json,
            })
        })
        .collect::<Result<Vec<_>, InputError>>()?;
    limits::check_batch_len(points.len())?;
    points
        .iter()
        .enumerate()
        .try_for_each(|(i, p)| limits::check_point(i, dim, &p.input))?;
    limits::check_magnitudes(metric, points.iter().map(|p| &p.input))?;
    Ok(points)
}

/// The checks a delete must pass before it is proposed: batch size and ids.
pub fn delete(ids: &[String]) -> Result<(), InputError> {
    limits::check_batch_len(ids.len())?;
    ids.iter()
        .enumerate()
        .try_for_each(|(i, id)| limits::check_id(i, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, vector: Vec<f32>, payload: Option<&str>) -> PointRecord {
        PointRecord {
            id: id.into(),
            vector,
            payload_json: payload.map(str::to_string),
        }
    }

    #[test]
    fn payload_must_be_an_object() {
        let e = upsert(1, Metric::L2, vec![rec("a", vec![1.0], Some("[]"))]).unwrap_err();
        assert!(matches!(e, InputError::BadPayload { .. }), "{e}");
    }

    #[test]
    fn a_valid_point_keeps_its_log_form_and_its_parsed_payload() {
        let r = rec("a", vec![1.0, 2.0], Some(r#"{"x":1}"#));
        let v = upsert(2, Metric::L2, vec![r.clone()]).unwrap();
        assert_eq!(v[0].record(), r);
        let (json, payload) = v[0].payload().unwrap();
        assert_eq!(json, r#"{"x":1}"#);
        assert_eq!(payload["x"], 1);
    }

    #[test]
    fn the_whole_batch_is_checked() {
        let ok = rec("a", vec![1.0], None);
        for bad in [
            rec("", vec![1.0], None),
            rec("b", vec![1.0, 2.0], None),
            rec("b", vec![f32::NAN], None),
            rec("b", vec![0.0], None),
        ] {
            assert!(
                upsert(1, Metric::Cosine, vec![ok.clone(), bad.clone()]).is_err(),
                "{bad:?}"
            );
        }
        assert!(upsert(1, Metric::Cosine, Vec::new()).is_err());
        assert!(delete(&[]).is_err());
        assert!(delete(&[String::new()]).is_err());
        assert!(delete(&["a".into()]).is_ok());
    }
}
