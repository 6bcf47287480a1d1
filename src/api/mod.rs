//! The HTTP API over the point database: `/health`, the seed endpoints of seed 000, and `/api/points`.

pub mod json;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::points::{HttpMethod, Maps, PointDb, PointId, Protocol, Source, Value, WriteError};

/// Shared state of the API handlers (cheap to clone).
#[derive(Clone)]
pub struct ApiState {
    pub db: PointDb,
    pub maps: Arc<Maps>,
    /// Priority REST writes occupy.
    pub write_priority: u8,
}

/// A JSON error response: `{"error": "...", "status": 404}`.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "status": self.status.as_u16()});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        }
        r
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), format!("invalid JSON body: {}", r.body_text()))
    }
}

/// Maps a point-database refusal to the HTTP status a REST client expects.
pub fn write_error(e: WriteError, point: &str) -> ApiError {
    let status = match e {
        WriteError::UnknownPoint => StatusCode::NOT_FOUND,
        WriteError::NotWritable => StatusCode::METHOD_NOT_ALLOWED,
        WriteError::InvalidPriority
        | WriteError::TypeMismatch
        | WriteError::OutOfRange
        | WriteError::NullDefault => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, format!("{point}: {e}"))
}

/// The API router. Protocol routers (Haystack) and engine routes (HTTP-TS,
/// HLS) are merged by the app.
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new()
        .route("/health", get(health))
        .route("/api/points", get(list_points))
        .route("/api/points/{id}", get(get_point).post(post_point));
    // The seed endpoints come from mappings/http.toml so that the map is the
    // one place that decides them; /api/points/{id} is served generically.
    for ep in &state.maps.http.endpoints {
        if ep.path.starts_with("/api/points/") {
            continue;
        }
        let id = ep.point;
        match ep.method {
            HttpMethod::Get => {
                r = r.route(
                    &ep.path,
                    get(move |State(s): State<ApiState>| async move { point_response(&s, id) }),
                );
            }
            HttpMethod::Post => {
                let fixed = ep.value;
                r = r.route(
                    &ep.path,
                    post(
                        move |State(s): State<ApiState>,
                              ConnectInfo(peer): ConnectInfo<SocketAddr>,
                              body: axum::body::Bytes| async move {
                            let req = match fixed {
                                // Fixed commands (stream start/stop) ignore any body.
                                Some(v) => WriteBody {
                                    value: Some(v),
                                    priority: None,
                                },
                                None => {
                                    let b: serde_json::Value = serde_json::from_slice(&body)
                                        .map_err(|e| {
                                            ApiError::new(
                                                StatusCode::BAD_REQUEST,
                                                format!("invalid JSON body: {e}"),
                                            )
                                        })?;
                                    parse_write_body(&s, id, &b)?
                                }
                            };
                            do_write(&s, id, req, peer)
                        },
                    ),
                );
            }
        }
    }
    r.with_state(state)
}

async fn health(State(s): State<ApiState>) -> impl IntoResponse {
    Json(json!({"status": "ok", "points": s.db.len(), "version": env!("CARGO_PKG_VERSION")}))
}

async fn list_points(State(s): State<ApiState>) -> impl IntoResponse {
    let v: Vec<_> =
        s.db.ids()
            .map(|id| json::point_json(&s.db, &s.maps, id))
            .collect();
    Json(serde_json::Value::Array(v))
}

fn lookup(s: &ApiState, id: &str) -> Result<PointId, ApiError> {
    s.db.lookup(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown point {id:?}")))
}

fn point_response(s: &ApiState, id: PointId) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json::point_json(&s.db, &s.maps, id)))
}

async fn get_point(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pid = lookup(&s, &id)?;
    point_response(&s, pid)
}

struct WriteBody {
    value: Option<Value>,
    priority: Option<u8>,
}

/// Reads `{"value": ..., "priority": N}`; `value: null` relinquishes.
fn parse_write_body(
    s: &ApiState,
    id: PointId,
    b: &serde_json::Value,
) -> Result<WriteBody, ApiError> {
    let def =
        s.db.def(id)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown point"))?;
    let obj = b.as_object().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object like {\"value\": true, \"priority\": 8}",
        )
    })?;
    for k in obj.keys() {
        if k != "value" && k != "priority" {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown field {k:?} (expected \"value\" and optional \"priority\")"),
            ));
        }
    }
    let raw = obj.get("value").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing field \"value\" (null relinquishes)",
        )
    })?;
    let value = json::value_from_json(def, raw)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {m}", def.id)))?;
    let priority = match obj.get("priority") {
        None | Some(serde_json::Value::Null) => None,
        Some(p) => Some(
            p.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .filter(|n| (1..=17).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "priority must be an integer 1..=16 (17 = relinquish default)",
                    )
                })?,
        ),
    };
    Ok(WriteBody { value, priority })
}

fn do_write(
    s: &ApiState,
    id: PointId,
    req: WriteBody,
    peer: SocketAddr,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = s.db.def(id).map(|d| d.id.clone()).unwrap_or_default();
    let src = Source::new(Protocol::Rest, Some(peer), None);
    let prio = req.priority.unwrap_or(s.write_priority);
    s.db.write(id, req.value, prio, &src)
        .map_err(|e| write_error(e, &name))?;
    Ok(Json(json::point_json(&s.db, &s.maps, id)))
}

async fn post_point(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pid = lookup(&s, &id)?;
    if s.db.def(pid).is_some_and(|d| !d.writable) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{id}: point is not writable"),
        ));
    }
    let Json(b) = body?;
    let req = parse_write_body(&s, pid, &b)?;
    do_write(&s, pid, req, peer)
}
