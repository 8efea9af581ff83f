//! OpenAPI 3 description of the HTTP API, served at `/openapi.json`.

use serde_json::{Value, json};

pub fn document() -> Value {
    let index =
        json!({"name": "index", "in": "path", "required": true, "schema": {"type": "string"}});
    let error = |what: &str| {
        json!({"description": what,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let consistency_q = json!({"name": "consistency", "in": "query", "required": false,
        "schema": {"type": "string", "enum": ["eventual", "session", "linearizable"]}});
    let ok = |schema: &str| json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    // Every operation: its own answers, plus the one error shape for everything else
    // (unknown route or method, oversized body, unavailable shard, ...).
    let op =
        |summary: &str, params: Value, body: Option<Value>, ok: Value, errors: &[(&str, &str)]| {
            let mut responses =
                json!({"200": ok, "default": error("Any other error (same shape)")});
            for (code, what) in errors {
                responses[*code] = error(what);
            }
            let mut o = json!({"summary": summary, "parameters": params, "responses": responses});
            if let Some(b) = body {
                o["requestBody"] = b;
            }
            o
        };
    let write_errors = [
        ("400", "Invalid input: nothing was written"),
        ("404", "Unknown index"),
        ("413", "Request body over the limit"),
        (
            "503",
            "No shard leader right now; retry (writes are idempotent)",
        ),
    ];
    let read_errors = [
        ("400", "Invalid input"),
        ("404", "Unknown index"),
        ("503", "A shard could not answer; retry"),
    ];
    json!({
        "openapi": "3.0.3",
        "info": {"title": "kindex", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Sharded, replicated vector index. Distances: smaller is closer. \
                     Every error answer is application/json with the Error schema. Request \
                     objects admit no other keys than the documented ones."},
        "paths": {
            "/v1/indexes/{index}": {"get": op("Index info and limits", json!([index]), None, ok("Info"), &[("404", "Unknown index")])},
            "/v1/indexes/{index}/points": {"post": op("Upsert a batch of points", json!([index]), Some(body("UpsertRequest")), ok("WriteReply"), &write_errors)},
            "/v1/indexes/{index}/points/get": {"post": op("Get points by id", json!([index]), Some(body("IdsRequest")), ok("Points"), &read_errors)},
            "/v1/indexes/{index}/points/delete": {"post": op("Delete points by id", json!([index]), Some(body("DeleteRequest")), ok("WriteReply"), &write_errors)},
            "/v1/indexes/{index}/search": {"post": op("k nearest neighbours", json!([index]), Some(body("SearchRequest")), ok("SearchReply"), &read_errors)},
            "/v1/indexes/{index}/count": {"get": op("Live vectors over all shards", json!([index, consistency_q]), None, ok("Count"), &read_errors)},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {"200": {"description": "ready", "content": {"text/plain": {"schema": {"type": "string"}}}}, "503": error("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Point": {"type": "object", "additionalProperties": false, "required": ["id", "vector"], "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 256},
                "vector": {"type": "array", "items": {"type": "number"},
                    "description": "Finite components. l2 and dot: Euclidean norm at most 3.16e18 (no distance can overflow f32); cosine: not all zeros."},
                "payload": {"type": "object", "nullable": true}}},
            "UpsertRequest": {"type": "object", "additionalProperties": false, "required": ["points"], "properties": {"points": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"$ref": "#/components/schemas/Point"}}}},
            "IdsRequest": {"type": "object", "additionalProperties": false, "required": ["ids"], "properties": {"ids": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"type": "string"}}, "withVectors": {"type": "boolean"}, "withPayload": {"type": "boolean"},
                "consistency": {"$ref": "#/components/schemas/Consistency"}, "token": {"$ref": "#/components/schemas/Token"}}},
            "DeleteRequest": {"type": "object", "additionalProperties": false, "required": ["ids"], "properties": {"ids": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"type": "string", "minLength": 1, "maxLength": 256}}}},
            "Consistency": {"type": "string", "enum": ["eventual", "session", "linearizable"],
                "description": "Absent: each shard's leader (read-your-writes); session: a replica that applied the token; eventual: any replica."},
            "Token": {"type": "object", "additionalProperties": false, "required": ["shards"],
                "description": "Returned by writes; pass to reads for session consistency. A token of another index or shard layout, or naming a log index beyond a shard leader's log, is refused (400). Tokens without index/shardCount (issued before 0.2) are accepted.",
                "properties": {
                    "index": {"type": "string"},
                    "shardCount": {"type": "integer", "minimum": 0},
                    "shards": {"type": "array", "items": {"type": "object", "additionalProperties": false, "required": ["shard", "appliedIndex"],
                        "properties": {"shard": {"type": "integer", "minimum": 0}, "appliedIndex": {"type": "integer", "minimum": 0}}}}}},
            "Points": {"type": "object", "properties": {"points": {"type": "array", "items": {"type": "object"}}}},
            "WriteReply": {"type": "object", "properties": {"affected": {"type": "integer"}, "token": {"$ref": "#/components/schemas/Token"}}},
            "Count": {"type": "object", "properties": {"count": {"type": "integer"}}},
            "Filter": {"type": "object", "additionalProperties": false,
                "description": "Every must condition holds, no mustNot condition holds, and (when given) at least one should condition holds. A missing payload field satisfies no condition. At most 64 conditions.",
                "properties": {
                    "must": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}},
                    "mustNot": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}},
                    "should": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}}}},
            "Condition": {"oneOf": [
                {"type": "object", "additionalProperties": false, "required": ["field", "match"], "properties": {
                    "field": {"type": "string", "minLength": 1},
                    "match": {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]}}},
                {"type": "object", "additionalProperties": false, "required": ["field", "range"], "properties": {
                    "field": {"type": "string", "minLength": 1},
                    "range": {"$ref": "#/components/schemas/Range"}}}]},
            "Range": {"type": "object", "additionalProperties": false, "minProperties": 1, "properties": {
                "gt": {"type": "number"}, "gte": {"type": "number"}, "lt": {"type": "number"}, "lte": {"type": "number"}}},
            "SearchRequest": {"type": "object", "additionalProperties": false, "required": ["vector", "k"], "properties": {
                "vector": {"type": "array", "items": {"type": "number"}},
                "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                "efSearch": {"type": "integer", "minimum": 1, "maximum": 4096},
                "rescore": {"type": "integer", "minimum": 1, "maximum": 100,
                    "description": "int8 indexes: re-rank the best rescore × k graph candidates with the f32 vectors (default: the runtime knob rescore); ignored without quantization."},
                "filter": {"$ref": "#/components/schemas/Filter"},
                "withVectors": {"type": "boolean"}, "withPayload": {"type": "boolean"},
                "consistency": {"$ref": "#/components/schemas/Consistency"}, "token": {"$ref": "#/components/schemas/Token"}}},
            "SearchReply": {"type": "object", "properties": {
                "hits": {"type": "array", "items": {"type": "object", "required": ["id", "distance"],
                    "properties": {"id": {"type": "string"}, "distance": {"type": "number"}}}},
                "failures": {"type": "array", "description": "Shards that did not answer; the hits are then partial.",
                    "items": {"type": "object", "properties": {"shard": {"type": "integer"}, "message": {"type": "string"}}}}}},
            "Info": {"type": "object"}
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_reads_take_consistency() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling {r}"
            );
        }
        for schema in ["SearchRequest", "IdsRequest"] {
            let props = &doc["components"]["schemas"][schema]["properties"];
            assert!(props.get("consistency").is_some() && props.get("token").is_some());
        }
        let count = &doc["paths"]["/v1/indexes/{index}/count"]["get"]["parameters"];
        assert_eq!(count[1]["name"], "consistency");
    }

    /// Every object a client sends is closed (`additionalProperties: false`), as the server
    /// refuses unknown keys: walks every schema reachable from a request body.
    #[test]
    fn request_objects_admit_no_other_keys() {
        fn walk(doc: &Value, v: &Value, seen: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let name = r.trim_start_matches("#/components/schemas/").to_string();
                        if !seen.contains(&name) {
                            seen.push(name.clone());
                            walk(doc, &doc["components"]["schemas"][&name], seen);
                        }
                        return;
                    }
                    if m.get("type") == Some(&json!("object")) && m.contains_key("properties") {
                        assert_eq!(
                            m.get("additionalProperties"),
                            Some(&json!(false)),
                            "open object: {v}"
                        );
                    }
                    m.values().for_each(|x| walk(doc, x, seen));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x, seen)),
                _ => {}
            }
        }
        let doc = document();
        let mut seen = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                if let Some(b) = op.get("requestBody") {
                    walk(&doc, b, &mut seen);
                }
            }
        }
        for name in [
            "Filter",
            "Condition",
            "Range",
            "Token",
            "Point",
            "SearchRequest",
        ] {
            assert!(seen.iter().any(|s| s == name), "{name} not reached");
        }
    }
}
