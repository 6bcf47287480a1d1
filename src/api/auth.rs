//! REST authentication: `[api]` settings and `POST /api/auth/login`, which issues a JWT (with per-address and per-user backoff); the policy itself is enforced by `guard.rs`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::Json;
use serde_json::json;

use super::{ApiError, ApiState};
use crate::auth::Claims;

/// `[api]` settings: the section type lives in `config` (the API sits above
/// it: it re-validates route and profile documents with config's parsers).
pub use crate::config::api::ApiConfig;

/// Who is calling: `None` = anonymous (allowed by policy).
pub type Caller = Option<Claims>;

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, msg.to_string())
}

/// Audits a finished login (REST or Haystack): kind `login`, the user as
/// target, result `ok` or `failed`. A failed audit write is logged only.
pub fn audit_login(
    store: &crate::persist::Store,
    protocol: crate::points::Protocol,
    user: &str,
    peer: std::net::IpAddr,
    ok: bool,
) {
    let src = crate::points::Source::new(
        protocol,
        Some(std::net::SocketAddr::new(peer, 0)),
        Some(user.to_string()),
    );
    let (result, detail) = if ok {
        ("ok", "login")
    } else {
        ("failed", "wrong user name or password")
    };
    if let Err(e) = store.record_event("login", Some(user), &src, result, detail) {
        tracing::warn!("login not audited: {e}");
    }
    if !ok {
        tracing::warn!(
            "failed {} login for {user:?} from {peer}",
            protocol.as_str()
        );
    }
}

/// `POST /api/auth/login {"username": "...", "password": "..."}`.
///
/// Failures back off per client address and per user (429 with
/// `Retry-After` while they do), are audited and counted in `/metrics`.
pub async fn login(
    State(s): State<ApiState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
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
    let keys = crate::throttle::keys(peer.ip(), user);
    let keys = [keys[0].as_str(), keys[1].as_str()];
    if let Some(wait) = users.throttle.check(&keys) {
        let secs = wait.as_secs().max(1);
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins; retry in {secs} s"),
        )
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(r);
    }
    // Same answer, and the same key-derivation work, for unknown users
    // and wrong passwords. The derivation is CPU work: off the runtime.
    let (u2, name, pw2) = (users.clone(), user.to_string(), pw.to_string());
    let role = tokio::task::spawn_blocking(move || u2.verify(&name, &pw2))
        .await
        .ok()
        .flatten();
    let ok = role.is_some();
    if let Some(store) = &s.store {
        audit_login(store, crate::points::Protocol::Rest, user, peer.ip(), ok);
    }
    let Some(role) = role else {
        users.throttle.failed(&keys);
        crate::throttle::REST_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(unauthorized("invalid username or password"));
    };
    users.throttle.succeeded(&keys);
    let token = users.issue(user, role);
    Ok(Json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": users.token_ttl.as_secs(),
        "role": role.as_str(),
    }))
    .into_response())
}
