//! Admin REST for users (`/api/users`): list, add, change role, reset password, remove — what `castpoint user add|list|remove` does on the server, for the web console's Users page.
//!
//! The user store is the one REST JWT and Haystack SCRAM share
//! (`src/auth/`); validation is its own (`Users::add`: names of 1-64
//! characters of a-z, 0-9, '.', '_', '-', '@', passwords of at least 8), so
//! the API and the CLI refuse the same things. Every change is audited
//! (kind `user`, never the password). A password travels only in the body
//! of a request to this admin-only API, as at login; use TLS off the
//! machine (docs/security.md). Two refusals the CLI does not make, since a
//! browser session could lock every admin out of the API: removing or
//! demoting the last admin is refused (409).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value as J};

use super::guard::Authed;
use super::routes::audit_change;
use super::{ApiError, ApiState};
use crate::auth::{Role, Users};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/users", get(list).post(create))
        .route(
            "/api/users/{name}",
            axum::routing::put(change).delete(remove),
        )
}

fn users(s: &ApiState) -> Result<&Users, ApiError> {
    s.users
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no user store"))
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn body(raw: &[u8], allowed: &[&str]) -> Result<serde_json::Map<String, J>, ApiError> {
    let b: J = serde_json::from_slice(raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let J::Object(o) = b else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object",
        ));
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown field {k:?} (expected {})", allowed.join(", ")),
        ));
    }
    Ok(o)
}

fn role_of(v: &J) -> Result<Role, ApiError> {
    v.as_str().and_then(Role::parse).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "role: expected viewer, operator or admin",
        )
    })
}

fn password_of(v: &J) -> Result<&str, ApiError> {
    v.as_str().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "password: expected a string",
        )
    })
}

/// The store's refusal of a name or password, as the CLI prints it.
fn invalid(e: anyhow::Error) -> ApiError {
    let m = e.to_string();
    if m.starts_with("user names") || m.starts_with("passwords") {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m)
    } else {
        internal(e)
    }
}

fn role_now(u: &Users, name: &str) -> Result<Option<String>, ApiError> {
    Ok(u.list()
        .map_err(internal)?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r))
}

/// Held over each change's check and write: two admins removing or
/// demoting each other at once would both pass `keeps_an_admin` and leave
/// none, and two creations of one name would both pass the exists check
/// (the second silently replacing the first). No await happens under it.
static CHANGES: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Refuses a change that leaves no admin (the API would be locked to the CLI).
fn keeps_an_admin(u: &Users, name: &str) -> Result<(), ApiError> {
    let admins = u
        .list()
        .map_err(internal)?
        .into_iter()
        .filter(|(n, r)| r == "admin" && n != name)
        .count();
    if admins == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} is the last admin: add another admin first"),
        ));
    }
    Ok(())
}

async fn list(State(s): State<ApiState>) -> Result<Json<J>, ApiError> {
    let list: Vec<J> = users(&s)?
        .list()
        .map_err(internal)?
        .into_iter()
        .map(|(name, role)| json!({"name": name, "role": role}))
        .collect();
    Ok(Json(json!({ "users": list })))
}

/// `POST /api/users {"name", "role", "password"}` -> 201; 409 if the name exists.
async fn create(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<J>), ApiError> {
    let o = body(&raw, &["name", "role", "password"])?;
    let (Some(name), Some(role), Some(pw)) = (
        o.get("name").and_then(J::as_str),
        o.get("role"),
        o.get("password"),
    ) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "expected {\"name\": \"...\", \"role\": \"viewer|operator|admin\", \"password\": \"...\"}",
        ));
    };
    let (role, pw) = (role_of(role)?, password_of(pw)?);
    let u = users(&s)?;
    let _serial = CHANGES.lock();
    if role_now(u, name)?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a user named {name:?} exists (change its role or reset its password)"),
        ));
    }
    u.add(name, role, pw).map_err(invalid)?;
    if let Some(store) = &s.store {
        let what = format!("add user {name} ({})", role.as_str());
        audit_change(store, "user", Some(name), &what, peer, &caller);
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": name, "role": role.as_str()})),
    ))
}

/// `PUT /api/users/{name} {"role"?, "password"?}`: change the role, reset
/// the password, or both. Either revokes the user's tokens.
async fn change(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<J>, ApiError> {
    let o = body(&raw, &["role", "password"])?;
    if o.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "expected {\"role\": \"viewer|operator|admin\"} and/or {\"password\": \"...\"}",
        ));
    }
    let role = o.get("role").map(role_of).transpose()?;
    let pw = o.get("password").map(password_of).transpose()?;
    let u = users(&s)?;
    let _serial = CHANGES.lock();
    let Some(current) = role_now(u, &name)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no user {name:?}"),
        ));
    };
    let role = role.unwrap_or_else(|| Role::parse(&current).unwrap_or(Role::Viewer));
    if current == "admin" && role != Role::Admin {
        keeps_an_admin(u, &name)?;
    }
    let what = match pw {
        // A new password writes the user again (new keys, new epoch).
        Some(pw) => {
            u.add(&name, role, pw).map_err(invalid)?;
            if role.as_str() == current {
                format!("reset the password of user {name}")
            } else {
                format!(
                    "reset the password of user {name} and change its role to {}",
                    role.as_str()
                )
            }
        }
        None => {
            if !u.set_role(&name, role).map_err(internal)? {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no user {name:?}"),
                ));
            }
            format!("change the role of user {name} to {}", role.as_str())
        }
    };
    if let Some(store) = &s.store {
        audit_change(store, "user", Some(&name), &what, peer, &caller);
    }
    Ok(Json(json!({"name": name, "role": role.as_str()})))
}

async fn remove(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let u = users(&s)?;
    let _serial = CHANGES.lock();
    match role_now(u, &name)? {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no user {name:?}"),
            ))
        }
        Some(r) if r == "admin" => keeps_an_admin(u, &name)?,
        Some(_) => {}
    }
    if !u.remove(&name).map_err(internal)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no user {name:?}"),
        ));
    }
    if let Some(store) = &s.store {
        let what = format!("remove user {name}");
        audit_change(store, "user", Some(&name), &what, peer, &caller);
    }
    Ok(StatusCode::NO_CONTENT)
}
