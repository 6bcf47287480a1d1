//! The HTTP API over the point database: `/health`, the seed endpoints of seed 000, and `/api/points`.

pub mod alarms;
pub mod apikeys;
pub mod auth;
pub mod console;
pub mod exports;
pub mod guard;
pub mod gzip;
pub mod json;
pub mod live;
mod metrics;
pub mod openapi;
pub mod profiles;
pub mod refusals;
pub mod routes;
pub mod users;

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
    /// The durable store (audit log queries); `None` in tests without one.
    pub store: Option<Arc<crate::persist::Store>>,
    /// The shared user store (JWT); `None` = no authentication at all.
    pub users: Option<crate::auth::Users>,
    pub api: auth::ApiConfig,
    /// The router, for the operator route API.
    pub engine: Option<crate::engine::Engine>,
    /// Desired-state documents of the routes, by name (see `routes.rs`).
    pub route_docs: Arc<parking_lot::Mutex<std::collections::BTreeMap<String, serde_json::Value>>>,
    /// `[route_defaults]`: what the keys a route document leaves out mean.
    pub route_defaults: crate::config::routes::RouteDefaults,
    /// Output profiles (config overlaid with stored ones; see `profiles.rs`).
    pub profiles: Option<Arc<profiles::Profiles>>,
    /// What `/api/export/*` is generated from; `None`: not served (503).
    pub exports: Option<Arc<exports::Sources>>,
    /// The alarm runtime (`/api/alarms`, `/api/ws`, `/metrics`).
    pub alarms: Option<crate::alarms::Alarms>,
}

/// A JSON error response: `{"error": "...", "status": 404}`.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn message(&self) -> &str {
        &self.message
    }

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
        WriteError::Storage => StatusCode::SERVICE_UNAVAILABLE,
        WriteError::Denied => StatusCode::FORBIDDEN,
    };
    ApiError::new(status, format!("{point}: {e}"))
}

/// The API router. Protocol routers (Haystack) and engine routes (HTTP-TS,
/// HLS) are merged by the app.
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new()
        .route("/health", get(health))
        .route("/api/points", get(list_points))
        .route("/api/points/{id}", get(get_point).post(post_point))
        .route("/api/points/{id}/history", get(get_history))
        .route("/api/routes/{route}/points", get(route_points))
        .route(
            "/api/routes/{route}/points/{point}",
            get(get_route_point).post(post_route_point),
        )
        .route("/api/audit", get(get_audit))
        .route("/api/auth/login", post(auth::login))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/ws", get(live::ws_points))
        .route("/ws/dashboard", get(live::ws_dashboard))
        .route("/ws/events/{stream}", get(live::ws_events))
        .route("/stats", get(live::stats))
        .route("/metrics", get(live::metrics));
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
                              guard::Authed(caller): guard::Authed,
                              body: axum::body::Bytes| async move {
                            let req = match fixed {
                                // Fixed commands (stream start/stop) ignore any body.
                                Some(v) => Ok(WriteBody {
                                    value: Some(v),
                                    priority: None,
                                }),
                                None => serde_json::from_slice::<serde_json::Value>(&body)
                                    .map_err(|e| {
                                        ApiError::new(
                                            StatusCode::BAD_REQUEST,
                                            format!("invalid JSON body: {e}"),
                                        )
                                    })
                                    .and_then(|b| parse_write_body(&s, id, &b)),
                            };
                            let req = refused_write(&s, id_name(&s, id), peer, &caller, req)?;
                            do_write(&s, id, req, peer, caller)
                        },
                    ),
                );
            }
        }
    }
    r.merge(routes::router())
        .merge(alarms::router())
        .merge(profiles::router())
        .merge(apikeys::router())
        .merge(users::router())
        .merge(exports::router())
        .merge(console::router())
        .with_state(state)
}

async fn health(State(s): State<ApiState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        // Points served: the server's and the present route blocks' (not
        // the reserved, unowned blocks).
        "points": s.db.served_ids().len(),
        "version": env!("CARGO_PKG_VERSION"),
        "commit": crate::GIT_COMMIT,
    }))
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
    Ok(Json(point_json(s, id)))
}

/// The point JSON, with a route point's BACnet object, whose instance rule
/// (`[route_points]`) the API knows from the config.
fn point_json(s: &ApiState, id: PointId) -> serde_json::Value {
    let mut j = json::point_json(&s.db, &s.maps, id);
    if let Some(src) = &s.exports {
        if let Some(b) = json::route_bacnet(&s.db, id, src.bacnet_rule()) {
            j["addresses"]["bacnet"] = json!(b);
        }
    }
    j
}

async fn get_point(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pid = lookup(&s, &id)?;
    point_response(&s, pid)
}

/// The slot of a route with a point block, or 404.
fn route_slot(s: &ApiState, route: &str) -> Result<u16, ApiError> {
    s.db.slot_of(route).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route named {route:?} with a point block"),
        )
    })
}

/// `route_enable` or `output_enable.2` of a route, as a database id.
fn route_point_id(s: &ApiState, route: &str, point: &str) -> Result<String, ApiError> {
    let slot = route_slot(s, route)?;
    let (tid, out) = match point.rsplit_once('.') {
        Some((t, n)) => match n.parse::<u16>() {
            Ok(n) => (t, Some(n)),
            Err(_) => (point, None),
        },
        None => (point, None),
    };
    s.db.block_point(slot, tid, out)
        .and_then(|id| s.db.def(id))
        .map(|d| d.id.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("route {route:?} has no point {point:?}"),
            )
        })
}

async fn route_points(
    State(s): State<ApiState>,
    Path(route): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let slot = route_slot(&s, &route)?;
    let points: Vec<_> =
        s.db.block_ids(slot)
            .into_iter()
            .map(|id| point_json(&s, id))
            .collect();
    Ok(Json(
        json!({"route": route, "slot": slot, "points": points}),
    ))
}

async fn get_route_point(
    State(s): State<ApiState>,
    Path((route, point)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = route_point_id(&s, &route, &point)?;
    point_response(&s, lookup(&s, &id)?)
}

async fn post_route_point(
    State(s): State<ApiState>,
    Path((route, point)): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
    caller: guard::Authed,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = route_point_id(&s, &route, &point)?;
    post_point(State(s), Path(id), peer, caller, body).await
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
    // A route's input states are named after its inputs (issue 20).
    let named;
    let raw = match raw.as_str() {
        Some(name) if def.kind == crate::points::Kind::Enum && s.db.route_point(id).is_some() => {
            match s
                .db
                .state_names(id)
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name))
            {
                Some(i) => {
                    named = json!(i + 1);
                    &named
                }
                None => raw,
            }
        }
        _ => raw,
    };
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
    caller: auth::Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = s.db.def(id).map(|d| d.id.clone()).unwrap_or_default();
    let src = Source::new(Protocol::Rest, Some(peer), caller.map(|c| c.user));
    let prio = req.priority.unwrap_or(s.write_priority);
    s.db.write(id, req.value, prio, &src)
        .map_err(|e| write_error(e, &name))?;
    Ok(Json(point_json(s, id)))
}

async fn post_point(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    guard::Authed(caller): guard::Authed,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Every refusal before the database sees the write is audited here
    // (the database audits its own refusals).
    let checked = lookup(&s, &id).and_then(|pid| {
        if s.db.def(pid).is_some_and(|d| !d.writable) {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{id}: point is not writable"),
            ));
        }
        let Json(b) = body?;
        Ok((pid, parse_write_body(&s, pid, &b)?))
    });
    let (pid, req) = refused_write(&s, id.clone(), peer, &caller, checked)?;
    do_write(&s, pid, req, peer, caller)
}

fn id_name(s: &ApiState, id: PointId) -> String {
    s.db.def(id).map(|d| d.id.clone()).unwrap_or_default()
}

/// Audits a REST write refused before it reached `PointDb::write` (bad
/// JSON, wrong type, unknown or read-only point) and passes the result on.
fn refused_write<T>(
    s: &ApiState,
    target: String,
    peer: SocketAddr,
    caller: &auth::Caller,
    r: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let (Err(e), Some(store)) = (&r, &s.store) {
        let src = Source::new(
            Protocol::Rest,
            Some(peer),
            caller.as_ref().map(|c| c.user.clone()),
        );
        refusals::record(
            store,
            "write",
            &target,
            &src,
            e.message(),
            &format!("HTTP {}", e.status.as_u16()),
        );
    }
    r
}

fn parse_time(k: &str, v: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{k}: expected an RFC 3339 time such as 2026-01-31T12:00:00Z ({e})"),
            )
        })
}

/// At most `max` samples of `v` for a chart: the lowest and the highest of
/// each of `max / 2` equal runs, in time order, so peaks survive thinning.
fn thin(v: Vec<crate::points::Sample>, max: usize) -> Vec<crate::points::Sample> {
    if v.len() <= max {
        return v;
    }
    let run = v.len().div_ceil((max / 2).max(1));
    let mut out = Vec::with_capacity(max);
    for c in v.chunks(run) {
        let by = |a: &&crate::points::Sample, b: &&crate::points::Sample| {
            a.value.as_f64().total_cmp(&b.value.as_f64())
        };
        let (Some(lo), Some(hi)) = (c.iter().min_by(by), c.iter().max_by(by)) else {
            continue;
        };
        let (a, b) = if lo.at <= hi.at { (lo, hi) } else { (hi, lo) };
        out.push(*a);
        if a != b {
            out.push(*b);
        }
    }
    out
}

/// `GET /api/points/{id}/history?from=&to=&max=` (RFC 3339; default: last
/// 24 h; `max`: at most that many samples, for charts).
async fn get_history(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pid = lookup(&s, &id)?;
    let now = chrono::Utc::now();
    let mut from = now - chrono::Duration::hours(24);
    let mut to = now + chrono::Duration::seconds(1);
    let mut max = None;
    for (k, v) in &q {
        match k.as_str() {
            "from" => from = parse_time(k, v)?,
            "to" => to = parse_time(k, v)?,
            "max" => {
                max = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (2..=100_000).contains(n))
                        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "max: 2..=100000"))?,
                )
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {k:?} (from, to, max)"),
                ))
            }
        }
    }
    if from >= to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "from must be before to",
        ));
    }
    let mut raw = s.db.history(pid, from, to);
    if let Some(m) = max {
        raw = thin(raw, m);
    }
    let samples: Vec<serde_json::Value> = raw
        .into_iter()
        .map(|x| json!({"t": x.at.to_rfc3339(), "v": json::value_json(Some(x.value))}))
        .collect();
    Ok(Json(
        json!({"id": id, "from": from.to_rfc3339(), "to": to.to_rfc3339(), "samples": samples}),
    ))
}

/// `GET /api/audit?from=&to=&kind=&target=&source=&before=&limit=`, newest
/// first; `next` is the `before` of the following page.
async fn get_audit(
    State(s): State<ApiState>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = s
        .store
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no audit store"))?;
    let mut f = crate::persist::AuditFilter {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in &q {
        match k.as_str() {
            "from" => f.from = Some(parse_time(k, v)?),
            "to" => f.to = Some(parse_time(k, v)?),
            "kind" => f.kind = Some(v.clone()),
            "target" | "route" | "point" => f.target = Some(v.clone()),
            "source" | "protocol" => f.source = Some(v.clone()),
            "before" => f.before_id = Some(before_param(v, "an event id")?),
            "limit" => f.limit = limit_param(v)?,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown parameter {k:?} (from, to, kind, target, source, before, limit)"
                    ),
                ))
            }
        }
    }
    let events = store
        .query_audit(&f)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let next = if events.len() == f.limit {
        events.last().map(|e| e.id)
    } else {
        None
    };
    let list: Vec<_> = events.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({"events": list, "next": next})))
}

/// `before=<id>` of a paged list (audit, alarm history).
pub(crate) fn before_param(v: &str, what: &str) -> Result<i64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("before: expected {what}")))
}

/// `limit=<n>` of a paged list: 1..=1000.
pub(crate) fn limit_param(v: &str) -> Result<usize, ApiError> {
    v.parse()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "limit: 1..=1000"))
}

#[cfg(test)]
mod tests {
    use super::thin;
    use crate::points::{Sample, Value};

    #[test]
    fn thinning_keeps_each_runs_extremes_in_time_order() {
        let t0 = chrono::Utc::now();
        let v: Vec<Sample> = (0..1000)
            .map(|i| Sample {
                at: t0 + chrono::Duration::seconds(i),
                // One spike the chart must still show.
                value: Value::Number(if i == 537 { 99.0 } else { (i % 10) as f64 }),
            })
            .collect();
        let t = thin(v.clone(), 100);
        assert!(t.len() <= 100, "{}", t.len());
        assert!(t.iter().any(|s| s.value == Value::Number(99.0)));
        assert!(t.windows(2).all(|w| w[0].at < w[1].at));
        assert_eq!(thin(v[..50].to_vec(), 100).len(), 50);
    }
}
