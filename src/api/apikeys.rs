//! Admin REST for API keys (`/api/apikeys`): long-lived, named, role-scoped credentials for scripts and integrations, shown once at creation and kept only as SHA-256.
//!
//! A key is used like a token: `Authorization: Bearer <key>` or
//! `X-API-Key: <key>`; writes made with it are audited as `apikey:NAME`.
//! Creation and removal are audited (kind `apikey`). The guard requires
//! admin for every operation here (the OpenAPI table says so).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Value as J};

use super::guard::Authed;
use super::routes::audit_change;
use super::{ApiError, ApiState};
use crate::auth::Role;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/apikeys", get(list).post(create))
        .route("/api/apikeys/{name}", delete(remove))
}

fn users(s: &ApiState) -> Result<&crate::auth::Users, ApiError> {
    s.users
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no user store"))
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn list(State(s): State<ApiState>) -> Result<Json<J>, ApiError> {
    let keys: Vec<J> = users(&s)?
        .apikey_list()
        .map_err(internal)?
        .into_iter()
        .map(|k| json!({"name": k.name, "role": k.role, "created": k.created}))
        .collect();
    Ok(Json(json!({ "apikeys": keys })))
}

/// `POST /api/apikeys {"name": "ci", "role": "operator"}` -> 201 with the
/// key, the only time it is shown.
async fn create(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<J>), ApiError> {
    let b: J = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let (Some(name), Some(role)) = (
        b.get("name").and_then(J::as_str),
        b.get("role").and_then(J::as_str),
    ) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "expected {\"name\": \"...\", \"role\": \"viewer|operator|admin\"}",
        ));
    };
    let role = Role::parse(role).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "role: expected viewer, operator or admin",
        )
    })?;
    let u = users(&s)?;
    let key = u.apikey_add(name, role).map_err(|e| {
        let status = if e.to_string().contains("exists") {
            StatusCode::CONFLICT
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        ApiError::new(status, e.to_string())
    })?;
    if let Some(store) = &s.store {
        let what = format!("create API key {name} ({})", role.as_str());
        audit_change(store, "apikey", Some(name), &what, peer, &caller);
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": name, "role": role.as_str(), "key": key})),
    ))
}

async fn remove(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !users(&s)?.apikey_remove(&name).map_err(internal)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no API key {name:?}"),
        ));
    }
    if let Some(store) = &s.store {
        let what = format!("remove API key {name}");
        audit_change(store, "apikey", Some(&name), &what, peer, &caller);
    }
    Ok(StatusCode::NO_CONTENT)
}
