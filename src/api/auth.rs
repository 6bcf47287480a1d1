//! REST authentication: `POST /api/auth/login` issues a JWT; handlers ask `authorize` for the role they need.
//!
//! Policy: while no user exists (a fresh demo), the API is open and says so
//! in the log; as soon as `castpoint user add` has created one, every write
//! needs a bearer token of a role that may do it, and reads need one unless
//! `[api] anonymous_read` is on. `[api] require_auth = true` closes it from
//! the start.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::json;

use super::{ApiError, ApiState};
use crate::auth::Claims;
use crate::config::{parse_duration, ConfigError};
use crate::protocols::haystack::auth::Role;

/// `[api]` settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub require_auth: bool,
    pub anonymous_read: bool,
    pub token_ttl: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            require_auth: false,
            anonymous_read: true,
            token_ttl: std::time::Duration::from_secs(3600),
        }
    }
}

impl ApiConfig {
    pub fn parse(file: &str, t: Option<&toml::Value>) -> Result<ApiConfig, Vec<ConfigError>> {
        let mut c = ApiConfig::default();
        let Some(t) = t else { return Ok(c) };
        let Some(t) = t.as_table() else {
            return Err(vec![ConfigError::new(file, "api", "expected a table")]);
        };
        let mut errs = Vec::new();
        for (k, v) in t {
            let key = format!("api.{k}");
            match k.as_str() {
                "require_auth" => match v.as_bool() {
                    Some(b) => c.require_auth = b,
                    None => errs.push(ConfigError::new(file, key, "expected true or false")),
                },
                "anonymous_read" => match v.as_bool() {
                    Some(b) => c.anonymous_read = b,
                    None => errs.push(ConfigError::new(file, key, "expected true or false")),
                },
                "token_ttl" => match v.as_str().and_then(parse_duration) {
                    Some(d) if d.as_secs() >= 60 => c.token_ttl = d,
                    _ => errs.push(ConfigError::new(
                        file,
                        key,
                        "expected a duration of at least 1min",
                    )),
                },
                _ => errs.push(ConfigError::new(file, key, "unknown key")),
            }
        }
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(errs)
        }
    }
}

/// Who is calling: `None` = anonymous (allowed by policy).
pub type Caller = Option<Claims>;

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, msg.to_string())
}

/// Checks the bearer token against the role an operation needs.
pub fn authorize(s: &ApiState, headers: &HeaderMap, need: Role) -> Result<Caller, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(users) = &s.users else {
        return Ok(None);
    };
    if let Some(token) = bearer {
        let c = users.verify_token(token).map_err(unauthorized)?;
        if c.role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "role {} may not do this (needs {})",
                    c.role.as_str(),
                    need.as_str()
                ),
            ));
        }
        return Ok(Some(c));
    }
    let closed = s.api.require_auth || !users.is_empty();
    if !closed || (need == Role::Viewer && s.api.anonymous_read) {
        return Ok(None);
    }
    Err(unauthorized(
        "a bearer token is required: POST /api/auth/login",
    ))
}

/// `POST /api/auth/login {"username": "...", "password": "..."}`.
pub async fn login(
    State(s): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users = s
        .users
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no user store"))?;
    let b: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let (Some(user), Some(pw)) = (
        b.get("username").and_then(|v| v.as_str()),
        b.get("password").and_then(|v| v.as_str()),
    ) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "expected {\"username\": \"...\", \"password\": \"...\"}",
        ));
    };
    // Same answer for unknown users and wrong passwords.
    let role = users
        .verify(user, pw)
        .ok_or_else(|| unauthorized("invalid username or password"))?;
    let token = users.issue(user, role);
    Ok(Json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": users.token_ttl.as_secs(),
        "role": role.as_str(),
    })))
}
