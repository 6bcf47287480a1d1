//! The OpenAPI 3.0 document of the REST API (`GET /api/openapi.json`), built from the running configuration: point ids, seed endpoints from the HTTP map, and the operation table below.

use serde_json::{json, Map, Value as J};

use super::ApiState;
use crate::points::HttpMethod;

/// (method, path, summary, role needed, request schema, success status, response schema)
type Op = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    &'static str,
);

/// Every operator operation. `tests/interop/test_openapi.py` checks that
/// each one answers on the running server (no 404/405), so this table and
/// the router cannot drift apart unnoticed.
pub const OPS: &[Op] = &[
    (
        "get",
        "/health",
        "Liveness and version",
        "none",
        None,
        200,
        "Object",
    ),
    (
        "get",
        "/api/points",
        "Every point with value, status, tags and addresses",
        "viewer",
        None,
        200,
        "PointList",
    ),
    (
        "get",
        "/api/points/{id}",
        "One point",
        "viewer",
        None,
        200,
        "Point",
    ),
    (
        "post",
        "/api/points/{id}",
        "Command a point through its priority array (admin for system_restart)",
        "operator",
        Some("Write"),
        200,
        "Point",
    ),
    (
        "get",
        "/api/points/{id}/history",
        "History samples (from/to RFC 3339; max: at most N samples, each interval's lowest and highest)",
        "viewer",
        None,
        200,
        "History",
    ),
    (
        "get",
        "/api/audit",
        "Audit events, newest first (from, to, kind, target, source, before, limit)",
        "viewer",
        None,
        200,
        "AuditPage",
    ),
    (
        "get",
        "/api/alarms",
        "Alarms that are not NORMAL or await an acknowledgement, with the counts (docs/alarms.md)",
        "viewer",
        None,
        200,
        "AlarmList",
    ),
    (
        "get",
        "/api/alarms/history",
        "Alarm transitions with their acks, newest first (point, route, since, until, state, before, limit)",
        "viewer",
        None,
        200,
        "AlarmHistory",
    ),
    (
        "post",
        "/api/alarms/{point}/ack",
        "Acknowledge a transition of a point's alarm (time_stamp exact or \"latest\"; stored and audited)",
        "operator",
        Some("AlarmAck"),
        200,
        "AlarmState",
    ),
    (
        "post",
        "/api/auth/login",
        "Exchange a user name and password for a JWT",
        "none",
        Some("Login"),
        200,
        "Token",
    ),
    (
        "get",
        "/api/auth/info",
        "Whether any user or API key exists (else how to add one) and whether anonymous reads are allowed (the web console's login page)",
        "none",
        None,
        200,
        "AuthInfo",
    ),
    (
        "get",
        "/api/routes",
        "Routes with their documents and live stats",
        "viewer",
        None,
        200,
        "RouteList",
    ),
    (
        "post",
        "/api/routes",
        "Create a route (hot)",
        "admin",
        Some("Route"),
        201,
        "Route",
    ),
    (
        "get",
        "/api/routes/{route}",
        "One route",
        "viewer",
        None,
        200,
        "Route",
    ),
    (
        "get",
        "/api/routes/{route}/points",
        "The route's point block (docs/route-points.md)",
        "viewer",
        None,
        200,
        "RoutePoints",
    ),
    (
        "get",
        "/api/routes/{route}/points/{point}",
        "One point of the route's block, by template id (output points: id.N)",
        "viewer",
        None,
        200,
        "Point",
    ),
    (
        "post",
        "/api/routes/{route}/points/{point}",
        "Command a point of the route's block through its priority array",
        "operator",
        Some("Write"),
        200,
        "Point",
    ),
    (
        "put",
        "/api/routes/{route}",
        "Replace a route; a document with another name renames it (the route keeps its point slot and commands)",
        "admin",
        Some("Route"),
        200,
        "Route",
    ),
    (
        "delete",
        "/api/routes/{route}",
        "Delete a route",
        "admin",
        None,
        204,
        "Empty",
    ),
    (
        "get",
        "/api/routes/{route}/inputs",
        "Inputs of a route",
        "viewer",
        None,
        200,
        "ItemList",
    ),
    (
        "post",
        "/api/routes/{route}/inputs",
        "Add an input (rebuilds the route's inputs)",
        "admin",
        Some("Item"),
        200,
        "Route",
    ),
    (
        "get",
        "/api/routes/{route}/inputs/{name}",
        "One input",
        "viewer",
        None,
        200,
        "Item",
    ),
    (
        "delete",
        "/api/routes/{route}/inputs/{name}",
        "Remove an input",
        "admin",
        None,
        200,
        "Route",
    ),
    (
        "get",
        "/api/routes/{route}/outputs",
        "Outputs of a route",
        "viewer",
        None,
        200,
        "ItemList",
    ),
    (
        "post",
        "/api/routes/{route}/outputs",
        "Add an output (hot)",
        "admin",
        Some("Item"),
        201,
        "Item",
    ),
    (
        "get",
        "/api/routes/{route}/outputs/{name}",
        "One output",
        "viewer",
        None,
        200,
        "Item",
    ),
    (
        "put",
        "/api/routes/{route}/outputs/{name}",
        "Replace an output (hot)",
        "admin",
        Some("Item"),
        200,
        "Item",
    ),
    (
        "delete",
        "/api/routes/{route}/outputs/{name}",
        "Remove an output (hot)",
        "admin",
        None,
        204,
        "Empty",
    ),
    (
        "post",
        "/api/routes/{route}/outputs/{name}/enable",
        "Enable an output (hot)",
        "operator",
        None,
        200,
        "Item",
    ),
    (
        "post",
        "/api/routes/{route}/outputs/{name}/disable",
        "Disable an output (hot)",
        "operator",
        None,
        200,
        "Item",
    ),
    (
        "post",
        "/api/routes/{route}/outputs/{name}/move",
        "Move an output to another route (hot)",
        "admin",
        Some("Move"),
        200,
        "Object",
    ),
    (
        "get",
        "/api/profiles",
        "Output profiles (config overlaid with stored changes)",
        "viewer",
        None,
        200,
        "ProfileList",
    ),
    (
        "get",
        "/api/profiles/{number}",
        "One output profile",
        "viewer",
        None,
        200,
        "Profile",
    ),
    (
        "put",
        "/api/profiles/{number}",
        "Create or replace an output profile (transcoders pick it up at once)",
        "admin",
        Some("Profile"),
        200,
        "Profile",
    ),
    (
        "delete",
        "/api/profiles/{number}",
        "Delete an output profile no route names",
        "admin",
        None,
        200,
        "Object",
    ),
    (
        "get",
        "/stats",
        "Service statistics (seed 004)",
        "viewer",
        None,
        200,
        "Object",
    ),
    (
        "get",
        "/metrics",
        "Prometheus text exposition",
        "viewer",
        None,
        200,
        "Text",
    ),
    (
        "get",
        "/api/openapi.json",
        "This document",
        "none",
        None,
        200,
        "Object",
    ),
    (
        "get",
        "/api/apikeys",
        "API keys (names, roles, creation times; never the keys)",
        "admin",
        None,
        200,
        "ApiKeyList",
    ),
    (
        "post",
        "/api/apikeys",
        "Create an API key; the answer is the only time the key is shown",
        "admin",
        Some("ApiKeyNew"),
        201,
        "ApiKeyCreated",
    ),
    (
        "delete",
        "/api/apikeys/{name}",
        "Revoke an API key",
        "admin",
        None,
        204,
        "Empty",
    ),
    (
        "get",
        "/api/users",
        "Users (names and roles; never passwords)",
        "admin",
        None,
        200,
        "UserList",
    ),
    (
        "post",
        "/api/users",
        "Add a user (same rules as `castpoint user add`; 409 if the name exists)",
        "admin",
        Some("UserNew"),
        201,
        "User",
    ),
    (
        "put",
        "/api/users/{name}",
        "Change a user's role and/or reset its password (revokes its tokens; the last admin cannot be demoted)",
        "admin",
        Some("UserChange"),
        200,
        "User",
    ),
    (
        "delete",
        "/api/users/{name}",
        "Remove a user (revokes its tokens; the last admin cannot be removed)",
        "admin",
        None,
        204,
        "Empty",
    ),
    (
        "get",
        "/api/export/ede.csv",
        "BACnet EDE file (as `castpoint export ede`)",
        "viewer",
        None,
        200,
        "Csv",
    ),
    (
        "get",
        "/api/export/ede-states.csv",
        "BACnet EDE state texts (the EDE file's companion)",
        "viewer",
        None,
        200,
        "Csv",
    ),
    (
        "get",
        "/api/export/modbus-map.csv",
        "Modbus register map with every reserved route slot (as `castpoint export modbus-map --format csv`)",
        "viewer",
        None,
        200,
        "Csv",
    ),
    (
        "get",
        "/api/export/modbus-map.md",
        "Modbus register map as Markdown (as `castpoint export modbus-map`)",
        "viewer",
        None,
        200,
        "Markdown",
    ),
];

/// `components.schemas`: one function per family of schemas (a single
/// json! this size would also hit the macro recursion limit).
fn schemas(s: &ApiState) -> J {
    // The server's points by name; route points (issue 20) by their id
    // pattern, since blocks come and go with routes.
    let ids: Vec<&str> =
        s.db.ids()
            .filter_map(|id| s.db.def(id))
            .map(|d| d.id.as_str())
            .collect();
    let mut all = Map::new();
    for family in [
        common_schemas(),
        point_schemas(&ids),
        route_schemas(),
        auth_schemas(),
        alarm_schemas(),
    ] {
        if let J::Object(m) = family {
            all.extend(m);
        }
    }
    J::Object(all)
}

/// Generic bodies and the error body.
fn common_schemas() -> J {
    json!({
        "Object": {"type": "object", "additionalProperties": true},
        "Empty": {"type": "object"},
        "Text": {"type": "string"},
        "Error": {"type": "object", "required": ["error", "status"], "properties": {
            "error": {"type": "string"}, "status": {"type": "integer"}}}
    })
}

/// Points, their values, writes, history and the audit trail; `ids`: the
/// server's point ids.
fn point_schemas(ids: &[&str]) -> J {
    // OpenAPI 3.0 ignores `nullable` without a `type` beside it (3.0.3
    // clarification), so null goes on one branch of the `oneOf`: exactly
    // one branch then matches null, as `oneOf` requires.
    let value = json!({"description": "The value; null when the point has no fresh value (status says why).",
        "oneOf": [{"type": "number", "nullable": true}, {"type": "boolean"}, {"type": "string"}]});
    json!({
        "PointId": {"type": "string", "anyOf": [
            {"enum": ids},
            {"pattern": "^route\\.[0-9]+\\.[a-z0-9_-]+(\\.[0-9]+)?$"}]},
        "RoutePoints": {"type": "object", "required": ["route", "slot", "points"], "properties": {
            "route": {"type": "string"},
            "slot": {"type": "integer", "minimum": 1},
            "points": {"$ref": "#/components/schemas/PointList"}}},
        "Point": {"type": "object", "required": ["id", "name", "kind", "status"], "properties": {
            "id": {"$ref": "#/components/schemas/PointId"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "role": {"type": "string", "enum": ["measurement", "command", "status"]},
            "kind": {"type": "string", "enum": ["number", "bool", "enum"]},
            "value": value,
            "state": {"type": "string"},
            "unit": {"type": "string", "nullable": true},
            "status": {"type": "string", "enum": ["ok", "stale", "fault", "unavailable", "overridden"]},
            "reason": {"type": "string"},
            "updated": {"type": "string", "format": "date-time"},
            "writable": {"type": "boolean"},
            "level": {"type": "integer", "minimum": 1, "maximum": 17},
            "addresses": {"type": "object", "properties": {
                "bacnet": {"type": "string", "nullable": true},
                "modbus": {"type": "array", "items": {"type": "string"}},
                "http": {"type": "array", "items": {"type": "string"}}}},
            "priority_array": {"type": "object"}}},
        "PointList": {"type": "array", "items": {"$ref": "#/components/schemas/Point"}},
        "Write": {"type": "object", "required": ["value"], "properties": {
            "value": value,
            "priority": {"type": "integer", "minimum": 1, "maximum": 17}}},
        "History": {"type": "object", "properties": {
            "id": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
            "samples": {"type": "array", "items": {"type": "object", "properties": {
                "t": {"type": "string", "format": "date-time"}, "v": value}}}}},
        "AuditPage": {"type": "object", "properties": {
            "events": {"type": "array", "items": {"type": "object"}},
            "next": {"type": "integer", "nullable": true}}}
    })
}

/// Routes, their inputs and outputs, and transcoding profiles.
fn route_schemas() -> J {
    json!({
        "Item": {"type": "object", "required": ["type"], "additionalProperties": true,
            "description": "An input or output: the keys of a [[route.input]] / [[route.output]] table (docs/routes.md). Secrets are write-only.",
            "properties": {"name": {"type": "string"}, "type": {"type": "string"}}},
        "ItemList": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
        "Route": {"type": "object", "required": ["name"], "additionalProperties": true,
            "description": "The keys of a [[route]] table (docs/routes.md), with inputs/outputs arrays.",
            "properties": {
                "name": {"type": "string"},
                "enabled": {"type": "boolean"},
                "inputs": {"$ref": "#/components/schemas/ItemList"},
                "outputs": {"$ref": "#/components/schemas/ItemList"},
                "effective": {"type": "object", "readOnly": true,
                    "description": "What the route runs with: its own failover_timeout, signal_timeout, switch_back and udp_coalesce, else [route_defaults]'s (docs/routes.md). Answers only; PUT ignores it.",
                    "properties": {
                        "failover_timeout": {"type": "string"},
                        "signal_timeout": {"type": "string"},
                        "switch_back": {"type": "boolean"},
                        "udp_coalesce": {"type": "string"}}}}},
        "RouteList": {"type": "object", "properties": {
            "routes": {"type": "array", "items": {"$ref": "#/components/schemas/Route"}},
            "primary": {"type": "string", "nullable": true}}},
        "Profile": {"type": "object", "additionalProperties": true,
            "description": "The keys of a [[profile]] table (docs/transcode.md).",
            "properties": {
                "number": {"type": "integer", "minimum": 1, "maximum": 64},
                "name": {"type": "string"}}},
        "ProfileList": {"type": "object", "properties": {
            "profiles": {"type": "array", "items": {"$ref": "#/components/schemas/Profile"}}}},
        "Move": {"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}}
    })
}

/// Logins, tokens, users and API keys.
fn auth_schemas() -> J {
    json!({
        "Login": {"type": "object", "required": ["username", "password"], "properties": {
            "username": {"type": "string"}, "password": {"type": "string", "format": "password"}}},
        "Token": {"type": "object", "properties": {
            "token": {"type": "string"}, "token_type": {"type": "string"},
            "expires_in": {"type": "integer"}, "role": {"type": "string"}}},
        "AuthInfo": {"type": "object", "required": ["users", "anonymous_read"], "properties": {
            "users": {"type": "boolean", "description": "a user or API key exists (logins and tokens are in force)"},
            "auth": {"type": "boolean", "description": "a user store exists at all"},
            "require_auth": {"type": "boolean"},
            "anonymous_read": {"type": "boolean"},
            "add_user": {"type": "string", "description": "the command that adds the first user, run on the server"}}},
        "ApiKeyList": {"type": "object", "properties": {
            "apikeys": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"},
                "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
                "created": {"type": "string", "format": "date-time"}}}}}},
        "ApiKeyNew": {"type": "object", "required": ["name", "role"], "properties": {
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}}},
        "ApiKeyCreated": {"type": "object", "properties": {
            "name": {"type": "string"},
            "role": {"type": "string"},
            "key": {"type": "string", "description": "Shown once; use as `Authorization: Bearer <key>` or `X-API-Key: <key>`."}}},
        "User": {"type": "object", "required": ["name", "role"], "properties": {
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}}},
        "UserList": {"type": "object", "required": ["users"], "properties": {
            "users": {"type": "array", "items": {"$ref": "#/components/schemas/User"}}}},
        "UserNew": {"type": "object", "required": ["name", "role", "password"], "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
            "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
            "password": {"type": "string", "format": "password", "minLength": 8}}},
        "UserChange": {"type": "object", "description": "At least one of role and password.", "properties": {
            "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
            "password": {"type": "string", "format": "password", "minLength": 8}}}
    })
}

fn alarm_schemas() -> J {
    json!({
        "AlarmState": {"type": "object", "properties": {
            "point": {"type": "string"},
            "state": {"type": "string", "enum": ["normal", "offnormal", "high-limit", "low-limit", "fault"]},
            "acked": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "time_stamps": {"type": "object", "additionalProperties": {"type": "string", "format": "date-time", "nullable": true}},
            "unacked": {"type": "array", "items": {"type": "string", "enum": ["to-offnormal", "to-fault", "to-normal"]}},
            "acknowledged": {"type": "boolean", "description": "false when it was already acknowledged"}}},
        "AlarmList": {"type": "object", "properties": {
            "active": {"type": "integer"},
            "unacked": {"type": "integer"},
            "alarms": {"type": "array", "items": {"type": "object", "properties": {
                "point": {"type": "string"},
                "name": {"type": "string", "nullable": true},
                "route": {"type": "string", "nullable": true},
                "notification_class": {"type": "integer"},
                "state": {"type": "string"},
                "acked": {"type": "object"},
                "time_stamps": {"type": "object"},
                "unacked": {"type": "array", "items": {"type": "string"}},
                "status": {"type": "string"},
                "value_state": {"type": "string", "nullable": true},
                "value": {"description": "The point's value now: a number, a bool, an enum's ordinal (value_state: its name) or null."}}}}}},
        "AlarmHistory": {"type": "object", "properties": {
            "transitions": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "point": {"type": "string"},
                "route": {"type": "string", "nullable": true},
                "from": {"type": "string"},
                "to": {"type": "string"},
                "transition": {"type": "string"},
                "notify": {"type": "boolean"},
                "ack_required": {"type": "boolean"},
                "priority": {"type": "integer"},
                "value": {"type": "string", "nullable": true},
                "reason": {"type": "string"},
                "ack": {"type": "object", "nullable": true, "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "protocol": {"type": "string"},
                    "peer": {"type": "string", "nullable": true},
                    "user": {"type": "string", "nullable": true},
                    "comment": {"type": "string", "nullable": true}}}}}},
            "next": {"type": "integer", "nullable": true}}},
        "AlarmAck": {"type": "object", "required": ["transition", "time_stamp"], "properties": {
            "transition": {"type": "string", "enum": ["to-offnormal", "to-fault", "to-normal"]},
            "time_stamp": {"type": "string", "description": "The transition's time stamp exactly as /api/alarms shows it (RFC 3339), or \"latest\"."},
            "comment": {"type": "string", "maxLength": 1000}}}
    })
}

fn operation(
    path: &str,
    summary: &str,
    role: &str,
    req: Option<&str>,
    status: u16,
    resp: &str,
) -> J {
    let mut op = Map::new();
    op.insert("summary".into(), json!(summary));
    op.insert("description".into(), json!(format!("Role needed: {role}.")));
    let params: Vec<J> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if !params.is_empty() {
        op.insert("parameters".into(), J::Array(params));
    }
    if let Some(r) = req {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{r}")}}}}),
        );
    }
    let body = match resp {
        "Empty" => json!({"description": "done"}),
        "Text" => {
            json!({"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}})
        }
        "Csv" => {
            json!({"description": "a file (Content-Disposition names it)", "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}}})
        }
        "Markdown" => {
            json!({"description": "a file (Content-Disposition names it)", "content": {"text/markdown": {"schema": {"type": "string", "format": "binary"}}}})
        }
        r => {
            json!({"description": "ok", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{r}")}}}})
        }
    };
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = Map::new();
    responses.insert(status.to_string(), body);
    if role != "none" {
        responses.insert(
            "401".into(),
            json!({"description": "no or invalid credential", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
        responses.insert(
            "403".into(),
            json!({"description": "role too low, or a remote write while no user exists", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    if path == "/api/auth/login" {
        responses.insert(
            "429".into(),
            json!({"description": "too many failed logins from this address or for this user (Retry-After)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    responses.insert("default".into(), err);
    op.insert("responses".into(), J::Object(responses));
    if role == "none" {
        op.insert("security".into(), json!([]));
    }
    J::Object(op)
}

/// Builds the document.
pub fn document(s: &ApiState) -> J {
    let mut paths: Map<String, J> = Map::new();
    let mut add = |path: &str, method: &str, op: J| {
        let e = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        if let Some(o) = e.as_object_mut() {
            o.insert(method.to_string(), op);
        }
    };
    for (m, p, summary, role, req, status, resp) in OPS {
        add(p, m, operation(p, summary, role, *req, *status, resp));
    }
    // The seed endpoints of mappings/http.toml, as configured.
    for ep in &s.maps.http.endpoints {
        if ep.path.starts_with("/api/points/") {
            continue;
        }
        let name =
            s.db.def(ep.point)
                .map(|d| d.name.clone())
                .unwrap_or_default();
        match ep.method {
            HttpMethod::Get => add(
                &ep.path,
                "get",
                operation(
                    &ep.path,
                    &format!("{name} (seed endpoint)"),
                    "viewer",
                    None,
                    200,
                    "Point",
                ),
            ),
            HttpMethod::Post => add(
                &ep.path,
                "post",
                operation(
                    &ep.path,
                    &format!("Command {name} (seed endpoint)"),
                    match s.db.def(ep.point) {
                        Some(d) if super::guard::ADMIN_POINTS.contains(&d.id.as_str()) => "admin",
                        _ => "operator",
                    },
                    None,
                    200,
                    "Point",
                ),
            ),
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "castpoint operator API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Points (seed 000), routes (seed 001), audit and history. Haystack is served separately under /api/haystack (Haystack 4 REST, its own SCRAM authentication). Every operation names the role it needs; public: /health, /api/auth/login, /api/openapi.json. While no user or API key exists, writes are accepted from loopback only (403 otherwise). Failed logins back off per address and per user (429 with Retry-After).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(s),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or API key",
                    "description": "A JWT from POST /api/auth/login, or an API key (cpk_...)."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "accessToken": {"type": "apiKey", "in": "query", "name": "access_token",
                    "description": "GET only: for WebSockets (/api/ws, /ws/dashboard, /ws/events/{stream}) and media URLs (/stream/*, /hls/*), where clients cannot set headers."},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {"accessToken": []}],
    })
}

pub async fn serve(axum::extract::State(s): axum::extract::State<ApiState>) -> axum::Json<J> {
    axum::Json(document(&s))
}
