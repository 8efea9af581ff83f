//! OpenAPI 3 description of the HTTP API, served at `/openapi.json`.

use serde_json::{Value, json};

pub fn document() -> Value {
    let index =
        json!({"name": "index", "in": "path", "required": true, "schema": {"type": "string"}});
    let error = json!({"description": "Invalid input or unknown index",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let consistency_q = json!({"name": "consistency", "in": "query", "required": false,
        "schema": {"type": "string", "enum": ["eventual", "session", "linearizable"]}});
    let ok = |schema: &str| json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "kindex", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Sharded, replicated vector index. Distances: smaller is closer."},
        "paths": {
            "/v1/indexes/{index}": {"get": {"summary": "Index info and limits", "parameters": [index], "responses": {"200": ok("Info"), "404": error}}},
            "/v1/indexes/{index}/points": {"post": {"summary": "Upsert a batch of points", "parameters": [index], "requestBody": body("UpsertRequest"), "responses": {"200": ok("WriteReply"), "400": error}}},
            "/v1/indexes/{index}/points/get": {"post": {"summary": "Get points by id", "parameters": [index], "requestBody": body("IdsRequest"), "responses": {"200": ok("Points"), "400": error}}},
            "/v1/indexes/{index}/points/delete": {"post": {"summary": "Delete points by id", "parameters": [index], "requestBody": body("DeleteRequest"), "responses": {"200": ok("WriteReply"), "400": error}}},
            "/v1/indexes/{index}/search": {"post": {"summary": "k nearest neighbours", "parameters": [index], "requestBody": body("SearchRequest"), "responses": {"200": ok("SearchReply"), "400": error}}},
            "/v1/indexes/{index}/count": {"get": {"summary": "Live vectors over all shards", "parameters": [index, consistency_q], "responses": {"200": {"description": "OK"}, "404": error}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition"}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Point": {"type": "object", "required": ["id", "vector"], "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 256},
                "vector": {"type": "array", "items": {"type": "number"}},
                "payload": {"type": "object", "nullable": true}}},
            "UpsertRequest": {"type": "object", "required": ["points"], "properties": {"points": {"type": "array", "maxItems": 10000, "items": {"$ref": "#/components/schemas/Point"}}}},
            "IdsRequest": {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array", "maxItems": 10000, "items": {"type": "string"}}, "withVectors": {"type": "boolean"}, "withPayload": {"type": "boolean"},
                "consistency": {"$ref": "#/components/schemas/Consistency"}, "token": {"$ref": "#/components/schemas/Token"}}},
            "DeleteRequest": {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array", "maxItems": 10000, "items": {"type": "string"}}}},
            "Consistency": {"type": "string", "enum": ["eventual", "session", "linearizable"],
                "description": "Absent: each shard's leader (read-your-writes); session: a replica that applied the token; eventual: any replica."},
            "Token": {"type": "object", "description": "Returned by writes; pass to reads for session consistency.",
                "properties": {"shards": {"type": "array", "items": {"type": "object", "properties": {"shard": {"type": "integer"}, "appliedIndex": {"type": "integer"}}}}}},
            "Points": {"type": "object", "properties": {"points": {"type": "array", "items": {"$ref": "#/components/schemas/Point"}}}},
            "WriteReply": {"type": "object", "properties": {"affected": {"type": "integer"}, "token": {"$ref": "#/components/schemas/Token"}}},
            "Condition": {"type": "object", "required": ["field"], "properties": {
                "field": {"type": "string"},
                "match": {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]},
                "range": {"type": "object", "properties": {"gt": {"type": "number"}, "gte": {"type": "number"}, "lt": {"type": "number"}, "lte": {"type": "number"}}}}},
            "SearchRequest": {"type": "object", "required": ["vector", "k"], "properties": {
                "vector": {"type": "array", "items": {"type": "number"}},
                "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                "efSearch": {"type": "integer", "minimum": 1, "maximum": 4096},
                "filter": {"type": "object", "properties": {"must": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}}}},
                "withVectors": {"type": "boolean"}, "withPayload": {"type": "boolean"},
                "consistency": {"$ref": "#/components/schemas/Consistency"}, "token": {"$ref": "#/components/schemas/Token"}}},
            "SearchReply": {"type": "object", "properties": {"hits": {"type": "array", "items": {"type": "object"}},
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
}
