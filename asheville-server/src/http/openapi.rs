//! The OpenAPI 3 document of `/v1/openapi.json`, built from the route
//! table (so a route cannot be missing from it) plus what each route takes
//! and answers. The integration tests check that every status the server
//! answered for a route is documented for it.

use serde_json::{Value, json};

use super::routes::ROUTES;

fn q(name: &str, schema: Value, about: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": about})
}

fn p(name: &str, about: &str) -> Value {
    let schema = match name {
        "id" => json!({"type": "string", "pattern": "^[0-9]{1,19}$"}),
        "period" => json!({"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"}),
        "name" => json!({"type": "string", "pattern": NAME}),
        _ => json!({"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema, "description": about})
}

/// Tenant, user and source names.
const NAME: &str = "^[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,63}$";
/// Meter names.
const METER: &str = "^[a-z0-9_]+(\\.[a-z0-9_]+)+$";

/// A JSON body; every one of them refuses unknown fields.
fn json_body(mut schema: Value) -> Value {
    schema["additionalProperties"] = json!(false);
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn obj() -> Value {
    json!({"type": "object"})
}

/// What a route takes and answers: parameters, request body, success responses (status, about, schema).
type Details = (
    Vec<Value>,
    Option<Value>,
    Vec<(&'static str, &'static str, Value)>,
);

fn details(name: &str) -> Details {
    let int = json!({"type": "integer", "minimum": 0});
    let bytes = json!({"type": "string", "format": "binary"});
    let ok_json = |s: Value| vec![("200", "OK", s)];
    match name {
        "status_page" => (
            vec![],
            None,
            vec![("200", "The status page (HTML)", json!({"type": "string"}))],
        ),
        "healthz" | "readyz" => (vec![], None, ok_json(obj())),
        "metrics" => (
            vec![],
            None,
            vec![("200", "Prometheus text", json!({"type": "string"}))],
        ),
        "openapi" => (vec![], None, ok_json(obj())),
        "put_file" => (
            vec![p("path", "File path in the tenant")],
            Some(
                json!({"required": true, "content": {"application/octet-stream": {"schema": bytes}}}),
            ),
            vec![(
                "201",
                "Stored",
                json!({"$ref": "#/components/schemas/FileVersion"}),
            )],
        ),
        "get_file" | "head_file" => (
            vec![
                p("path", "File path in the tenant"),
                q(
                    "versions",
                    json!({"type": "string"}),
                    "List the versions instead",
                ),
                q("version", int.clone(), "This version instead of the latest"),
            ],
            None,
            vec![
                ("200", "The file", bytes.clone()),
                ("206", "The requested range", bytes),
                ("304", "Not modified (If-None-Match)", obj()),
            ],
        ),
        "delete_file" => (
            vec![p("path", "File path")],
            None,
            vec![("204", "Deleted", obj())],
        ),
        "tree" => (
            vec![
                q("path", json!({"type": "string"}), "Directory (default /)"),
                q(
                    "depth",
                    json!({"type": "integer", "minimum": 1, "maximum": 64}),
                    "Levels",
                ),
                q(
                    "cursor",
                    json!({"type": "string"}),
                    "From the previous page",
                ),
                q(
                    "limit",
                    json!({"type": "integer", "minimum": 1, "maximum": 10000}),
                    "Entries per page",
                ),
            ],
            None,
            ok_json(
                json!({"type": "object", "properties": {"entries": {"type": "array"}, "cursor": {"type": ["string", "null"]}}}),
            ),
        ),
        "put_chunk" => (
            vec![],
            Some(
                json!({"required": true, "content": {"application/octet-stream": {"schema": bytes.clone()}}}),
            ),
            vec![
                (
                    "201",
                    "Stored; `id` is the tenant's keyed BLAKE3 of the bytes",
                    obj(),
                ),
                ("200", "Already stored", obj()),
            ],
        ),
        "get_chunk" => (
            vec![
                json!({"name": "id", "in": "path", "required": true, "description": "Chunk id",
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}),
            ],
            None,
            vec![("200", "The chunk's bytes", bytes.clone())],
        ),
        "add_source" => (
            vec![],
            Some(json_body(
                json!({"type": "object", "required": ["name", "kind"], "properties": {
                "name": {"type": "string", "pattern": NAME}, "user": {"type": "string", "pattern": NAME},
                "kind": {"type": "object", "description": "{\"type\":\"bucket\",\"store\":{...}} or {\"type\":\"local_dir\",\"path\":...} (admin.sources)"},
                "target": {"type": "string"}, "every_secs": int.clone()}}),
            )),
            vec![("201", "Added", obj())],
        ),
        "list_sources" | "list_syncs" => (
            vec![q(
                "user",
                json!({"type": "string"}),
                "Another user (admin.users)",
            )],
            None,
            ok_json(obj()),
        ),
        "delete_source" => (
            vec![
                p("name", "Source name"),
                q("user", json!({"type": "string"}), "Another user"),
            ],
            None,
            vec![("204", "Removed", obj())],
        ),
        "create_sync" => (
            vec![],
            Some(json_body(json!({"type": "object", "properties": {
                "user": {"type": "string"}, "sources": {"type": "array", "items": {"type": "string"}}}}))),
            vec![("202", "Queued durably; Location names the job", obj())],
        ),
        "get_sync" | "cancel_sync" | "restart_sync" => {
            (vec![p("id", "Job id")], None, ok_json(obj()))
        }
        "events" => (
            vec![
                q(
                    "after",
                    int.clone(),
                    "Resume after this event sequence number",
                ),
                q(
                    "access_token",
                    json!({"type": "string"}),
                    "The token (browsers cannot send headers on websockets)",
                ),
            ],
            None,
            vec![("101", "Switching to the websocket of JSON events", obj())],
        ),
        "usage" => (
            vec![
                q(
                    "meter",
                    json!({"type": "string", "pattern": METER}),
                    "Meter name",
                ),
                q("from", json!({"type": "string"}), "ns or YYYY-MM-DD"),
                q("to", json!({"type": "string"}), "ns or YYYY-MM-DD"),
                q(
                    "granularity",
                    json!({"type": "string", "enum": ["hour", "day", "month"]}),
                    "Rows per",
                ),
                q(
                    "dims",
                    json!({"type": "string"}),
                    "One dimension, like user=alice",
                ),
                q(
                    "cursor",
                    json!({"type": "string"}),
                    "From the previous page",
                ),
                q(
                    "limit",
                    json!({"type": "integer", "minimum": 1, "maximum": 10000}),
                    "Rows",
                ),
            ],
            None,
            ok_json(obj()),
        ),
        "invoice" => (
            vec![p("period", "YYYY-MM")],
            None,
            vec![(
                "200",
                "The invoice (JSON, or CSV with Accept: text/csv)",
                obj(),
            )],
        ),
        "create_tenant" => (
            vec![],
            Some(json_body(
                json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}),
            )),
            vec![("201", "Created", obj())],
        ),
        "list_tenants" | "list_tokens" => (vec![], None, ok_json(obj())),
        "create_token" => (
            vec![],
            Some(json_body(
                json!({"type": "object", "required": ["user", "permissions"], "properties": {
                "user": {"type": "string", "pattern": NAME}, "name": {"type": "string"},
                "permissions": {"type": "array", "minItems": 1, "items": {"type": "string",
                    "pattern": "^(\\*|[a-z0-9_]+(\\.[a-z0-9_]+)*\\.([a-z0-9_]+|\\*))$"}},
                "expires_in_secs": int.clone()}}),
            )),
            vec![("201", "Created; `token` is shown only here", obj())],
        ),
        "revoke_token" => (
            vec![p("id", "Token id")],
            None,
            vec![("204", "Revoked", obj())],
        ),
        "put_object" => (
            vec![p("key", "Object key")],
            Some(
                json!({"required": true, "content": {"application/octet-stream": {"schema": bytes}}}),
            ),
            vec![("204", "Stored", obj())],
        ),
        "get_object" => (
            vec![p("key", "Object key")],
            None,
            vec![
                ("200", "The object", bytes.clone()),
                ("206", "The range", bytes),
            ],
        ),
        "head_object" => (
            vec![p("key", "Object key")],
            None,
            vec![("200", "Exists", obj())],
        ),
        "delete_object" => (
            vec![p("key", "Object key")],
            None,
            vec![("204", "Deleted", obj())],
        ),
        "list_objects" => (
            vec![
                q("prefix", json!({"type": "string"}), "Key prefix"),
                q("after", json!({"type": "string"}), "Keys after this one"),
                q(
                    "limit",
                    json!({"type": "integer", "minimum": 1, "maximum": 10000}),
                    "Objects",
                ),
            ],
            None,
            ok_json(obj()),
        ),
        _ => (vec![], None, ok_json(obj())),
    }
}

/// Error statuses every authenticated route may answer, and the others.
const AUTH_ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Bad input (code: bad_request, invalid_input, bad_json, unsupported)",
    ),
    ("401", "No or a bad token (code: unauthenticated)"),
    (
        "403",
        "Missing permission or over quota (code: forbidden, quota_exceeded)",
    ),
    ("404", "Not found (code: not_found)"),
    (
        "409",
        "Already exists or conflicts (code: already_exists, conflict)",
    ),
    (
        "413",
        "Body over the route's limit (code: payload_too_large)",
    ),
    (
        "416",
        "Range outside the file (code: range_not_satisfiable)",
    ),
    ("426", "Not a websocket upgrade (code: websocket_required)"),
    (
        "429",
        "Over the tenant's request rate (code: rate_limited; Retry-After)",
    ),
    (
        "500",
        "Server-side failure (code: internal, integrity, ...)",
    ),
    (
        "503",
        "Backends unavailable (code: unavailable, insufficient_backends)",
    ),
];

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let (params, body, ok) = details(r.name);
        let mut responses = serde_json::Map::new();
        for (code, about, schema) in ok {
            let ctype = match (r.name, code) {
                ("status_page", _) => "text/html",
                ("metrics", _) => "text/plain",
                ("get_file" | "get_chunk" | "get_object", "200" | "206") => {
                    "application/octet-stream"
                }
                _ => "application/json",
            };
            let content = if code == "204" || code == "304" || code == "101" || r.method == "HEAD" {
                json!({})
            } else {
                json!({ ctype: {"schema": schema} })
            };
            responses.insert(
                code.into(),
                json!({"description": about, "content": content}),
            );
        }
        let errors: &[(&str, &str)] = if r.permission.is_some() {
            AUTH_ERRORS
        } else {
            &[("500", "Server-side failure"), ("503", "Not ready")]
        };
        for (code, about) in errors {
            responses.insert(
                (*code).into(),
                json!({"description": about, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        let mut op = json!({
            "operationId": r.name,
            "parameters": params,
            "responses": responses,
        });
        if let Some(b) = body {
            op["requestBody"] = b;
        }
        match r.permission {
            Some(perm) => {
                op["security"] = json!([{"bearer": []}]);
                op["description"] = json!(format!("Needs the permission `{perm}` in the tenant."));
            }
            None => op["security"] = json!([]),
        }
        let entry = paths.entry(r.pattern).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Asheville",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Encrypted, deduplicated, erasure-coded storage over many backends. \
                Every error is {\"error\":{\"code\",\"message\"}} with a stable code. \
                The tenant is the token's, or the one the Host is mapped to, or X-Asheville-Tenant \
                for tokens with grants in it."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "FileVersion": {"type": "object", "required": ["path", "version", "size", "etag"], "properties": {
                    "path": {"type": "string"}, "version": {"type": "integer"}, "size": {"type": "integer"},
                    "mtime_ns": {"type": "integer"}, "mode": {"type": "integer"},
                    "created_ns": {"type": "integer"}, "etag": {"type": "string"}}}
            }
        },
        "paths": paths,
    })
}
