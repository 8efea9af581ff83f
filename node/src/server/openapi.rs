//! OpenAPI 3 description of the HTTP API, served at `/openapi.json`.

use serde_json::{Value, json};

pub fn document() -> Value {
    let index =
        json!({"name": "index", "in": "path", "required": true, "schema": {"type": "string"}});
    let error = json!({"description": "Invalid input or unknown index",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let ok = |schema: &str| json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "kindex", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Sharded, replicated vector index. Distances: smaller is closer."},
        "paths": {
            "/v1/indexes/{index}": {"get": {"summary": "Index info and limits", "parameters": [index], "responses": {"200": ok("Info"), "404": error}}},
            "/v1/indexes/{index}/points": {"post": {"summary": "Upsert a batch of points", "parameters": [index], "requestBody": body("UpsertRequest"), "responses": {"200": ok("WriteReply"), "400": error}}},
            "/v1/indexes/{index}/points/get": {"post": {"summary": "Get points by id", "parameters": [index], "requestBody": body("IdsRequest"), "responses": {"200": ok("Points"), "400": error}}},
            "/v1/indexes/{index}/points/delete": {"post": {"summary": "Delete points by id", "parameters": [index], "requestBody": body("IdsRequest"), "responses": {"200": ok("WriteReply"), "400": error}}},
            "/v1/indexes/{index}/search": {"post": {"summary": "k nearest neighbours", "parameters": [index], "requestBody": body("SearchRequest"), "responses": {"200": ok("SearchReply"), "400": error}}},
            "/v1/indexes/{index}/count": {"get": {"summary": "Live vectors", "parameters": [index], "responses": {"200": {"description": "OK"}, "404": error}}},
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
            "IdsRequest": {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array", "items": {"type": "string"}}, "withVectors": {"type": "boolean"}, "withPayload": {"type": "boolean"}}},
            "Points": {"type": "object", "properties": {"points": {"type": "array", "items": {"$ref": "#/components/schemas/Point"}}}},
            "WriteReply": {"type": "object", "properties": {"affected": {"type": "integer"}, "token": {"type": "object"}}},
            "Condition": {"type": "object", "required": ["field"], "properties": {
                "field": {"type": "string"},
                "match": {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]},
                "range": {"type": "object", "properties": {"gt": {"type": "number"}, "gte": {"type": "number"}, "lt": {"type": "number"}, "lte": {"type": "number"}}}}},
            "SearchRequest": {"type": "object", "required": ["vector", "k"], "properties": {
                "vector": {"type": "array", "items": {"type": "number"}},
                "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                "efSearch": {"type": "integer", "minimum": 1, "maximum": 4096},
                "filter": {"type": "object", "properties": {"must": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}}}},
                "withVectors": {"type": "boolean"}, "withPayload": {"type": "boolean"}}},
            "SearchReply": {"type": "object", "properties": {"hits": {"type": "array", "items": {"type": "object"}}, "failures": {"type": "array", "items": {"type": "object"}}}},
            "Info": {"type": "object"}
        }}
    })
}
