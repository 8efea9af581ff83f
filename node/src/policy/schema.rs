//! The `schema` policy: payload fields a write must carry, their JSON types, and the largest
//! payload. Checked when an upsert is applied (the same verdict on every replica: the payload
//! text is in the log entry) and pre-checked by the leader for a fast error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

use crate::engine::filter::Payload;

/// Fields one schema policy may list.
pub const MAX_FIELDS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schema {
    /// Top-level payload fields by name. A listed field that is present must have its type;
    /// a `required` one must be present in every upserted point.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldRule>,
    /// Largest payload of one point, in bytes of its JSON text as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldRule {
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    /// Any JSON number.
    Number,
    /// A JSON number without a fraction that fits 64 bits.
    Integer,
    Boolean,
    Array,
    Object,
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
            FieldType::Array => "array",
            FieldType::Object => "object",
        }
    }

    fn holds(self, v: &Value) -> bool {
        match self {
            FieldType::String => v.is_string(),
            FieldType::Number => v.is_number(),
            FieldType::Integer => v.is_i64() || v.is_u64(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Array => v.is_array(),
            FieldType::Object => v.is_object(),
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number with a fraction",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Schema {
    /// Checks a schema given by a user.
    pub fn validate(&self) -> Result<(), String> {
        if self.fields.is_empty() && self.max_payload_bytes.is_none() {
            return Err("a schema policy needs fields and/or maxPayloadBytes".into());
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(format!(
                "a schema policy lists {} fields; at most {MAX_FIELDS}",
                self.fields.len()
            ));
        }
        if let Some(name) = self.fields.keys().find(|n| n.is_empty()) {
            return Err(format!("schema field name {name:?} is empty"));
        }
        if self.max_payload_bytes == Some(0) {
            return Err("schema maxPayloadBytes must be at least 1".into());
        }
        Ok(())
    }

    /// Whether one point's payload (`payload`, parsed from `payload_bytes` bytes of JSON text)
    /// follows the schema; the error names the point and the field.
    pub fn check(
        &self,
        id: &str,
        payload: Option<&Payload>,
        payload_bytes: usize,
    ) -> Result<(), String> {
        if let Some(max) = self.max_payload_bytes
            && payload_bytes as u64 > max
        {
            return Err(format!(
                "point {id:?}: payload is {payload_bytes} bytes; at most {max} are allowed"
            ));
        }
        for (name, rule) in &self.fields {
            match payload.and_then(|p| p.get(name)) {
                // An explicit null is an absent value (filters treat it so too).
                None | Some(Value::Null) if rule.required => {
                    return Err(format!(
                        "point {id:?}: payload field {name:?} ({}) is required",
                        rule.ty.name()
                    ));
                }
                None | Some(Value::Null) => {}
                Some(v) if !rule.ty.holds(v) => {
                    return Err(format!(
                        "point {id:?}: payload field {name:?} must be {} {}, got {}",
                        if rule.ty == FieldType::Integer || rule.ty == FieldType::Array {
                            "an"
                        } else {
                            "a"
                        },
                        rule.ty.name(),
                        json_type(v)
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(json: &str) -> Schema {
        serde_json::from_str(json).unwrap()
    }

    fn payload(json: &str) -> Payload {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn required_fields_and_types_are_checked_naming_the_field() {
        let s = schema(
            r#"{"fields":{"tenant":{"type":"string","required":true},"n":{"type":"integer"}}}"#,
        );
        assert!(s.validate().is_ok());
        assert!(
            s.check("a", Some(&payload(r#"{"tenant":"x"}"#)), 14)
                .is_ok()
        );
        assert!(
            s.check("a", Some(&payload(r#"{"tenant":"x","n":3}"#)), 20)
                .is_ok()
        );
        let e = s.check("a", Some(&payload(r#"{"n":3}"#)), 7).unwrap_err();
        assert!(e.contains("\"tenant\"") && e.contains("required"), "{e}");
        let e = s.check("a", None, 0).unwrap_err();
        assert!(e.contains("\"tenant\""), "{e}");
        let e = s
            .check("a", Some(&payload(r#"{"tenant":"x","n":3.5}"#)), 20)
            .unwrap_err();
        assert!(
            e.contains("\"n\"") && e.contains("an integer") && e.contains("fraction"),
            "{e}"
        );
        let e = s
            .check("a", Some(&payload(r#"{"tenant":7}"#)), 12)
            .unwrap_err();
        assert!(e.contains("must be a string, got an integer"), "{e}");
        let e = s
            .check("a", Some(&payload(r#"{"tenant":null}"#)), 15)
            .unwrap_err();
        assert!(e.contains("required"), "{e}");
    }

    #[test]
    fn payload_size_is_capped() {
        let s = schema(r#"{"maxPayloadBytes":10}"#);
        assert!(s.check("a", None, 10).is_ok());
        let e = s.check("a", None, 11).unwrap_err();
        assert!(e.contains("11 bytes") && e.contains("at most 10"), "{e}");
    }

    #[test]
    fn empty_or_misspelt_schemas_are_refused() {
        assert!(schema("{}").validate().is_err());
        assert!(schema(r#"{"maxPayloadBytes":0}"#).validate().is_err());
        assert!(serde_json::from_str::<Schema>(r#"{"field":{}}"#).is_err());
        assert!(serde_json::from_str::<Schema>(r#"{"fields":{"a":{"type":"text"}}}"#).is_err());
    }
}
