//! The one authorization layer of the HTTP listener: every request (REST, WebSockets, `/stats`, `/metrics`, HTTP-TS `/stream/*`, HLS `/hls/*`) is classified here and refused or let through before any handler runs.
//!
//! Policy (docs/security.md, "What is public"):
//! - Public, always: `GET /health`, `POST /api/auth/login`,
//!   `GET /api/auth/info`, `GET /api/openapi.json` (the operations table
//!   with its roles), and the web console's files (`GET /`, `/console/*`).
//! - `/api/haystack/*`: Haystack authenticates itself (HELLO/SCRAM, its own
//!   bearer tokens); passed through untouched.
//! - Everything else needs a role: the one the OpenAPI table ([`OPS`])
//!   names for the operation, viewer for media and WebSockets, admin for
//!   the points in [`ADMIN_POINTS`]; a path no table knows needs viewer to
//!   read and operator for anything else (and then answers 404/405).
//! - Credentials: `Authorization: Bearer <JWT or API key>`, `X-API-Key:
//!   <key>`, or, on GET only, `?access_token=<JWT or key>` (browsers cannot
//!   set headers on WebSockets, players cannot on media URLs).
//! - No credential: while no user and no API key exists (and `[api]
//!   require_auth` is off) reads are free and writes are accepted from
//!   loopback only (403 naming `castpoint user add` otherwise); once one
//!   exists, anonymous callers may only read, and only with `[api]
//!   anonymous_read`. The audit log is never anonymous (user names, peer
//!   addresses).
//!
//! Handlers learn the caller from the request's [`Authed`] extension.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::auth::Caller;
use super::openapi::OPS;
use super::{ApiError, ApiState};
use crate::auth::Role;
use crate::points::HttpMethod;

/// Points only an admin may command (a restart drops every viewer).
pub const ADMIN_POINTS: &[&str] = &["system_restart"];

/// Reads that are never anonymous, even with `anonymous_read`: the audit
/// log and the alarm history name users, peer addresses and operators'
/// comments.
const NEVER_ANONYMOUS: &[&str] = &["/api/audit", "/api/alarms/history"];

/// Paths outside the OpenAPI table that stream data (viewer to read).
const MEDIA_PREFIXES: &[&str] = &["/stream/", "/hls/"];
const WEBSOCKETS: &[&str] = &["/api/ws", "/ws/dashboard", "/ws/events/{stream}"];

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Public,
    /// Haystack's own authentication applies.
    Haystack,
    Role(Role),
}

/// The authenticated caller of a request (`None`: anonymous, allowed by
/// policy), put there by the guard.
#[derive(Debug, Clone, Default)]
pub struct Authed(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Authed>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Applies the guard to the whole merged router (the app's one call).
pub fn layer(router: Router, state: ApiState) -> Router {
    router.layer(axum::middleware::from_fn_with_state(state, guard))
}

/// `/a/{x}/b` matches `/a/anything/b` (one non-empty segment per `{x}`).
fn matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let var = ts.starts_with('{') && ts.ends_with('}');
                if (var && ps.is_empty()) || (!var && ts != ps) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn role_of(name: &str) -> Need {
    match name {
        "none" => Need::Public,
        "viewer" => Need::Role(Role::Viewer),
        "operator" => Need::Role(Role::Operator),
        _ => Need::Role(Role::Admin),
    }
}

fn admin_point(s: &ApiState, id: crate::points::PointId) -> bool {
    s.db.def(id)
        .is_some_and(|d| ADMIN_POINTS.contains(&d.id.as_str()))
}

/// What `method path` needs.
pub fn need(s: &ApiState, method: &Method, path: &str) -> Need {
    if path == "/api/haystack" || path.starts_with("/api/haystack/") {
        return Need::Haystack;
    }
    // The web console's static files (no data in them).
    if super::console::is_public(method, path) {
        return Need::Public;
    }
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let m = if read {
        "get"
    } else {
        &method.as_str().to_ascii_lowercase()
    };
    // Point commands: admin for the admin points, by id or seed endpoint.
    if !read {
        if let Some(id) = path.strip_prefix("/api/points/") {
            // The router decodes `{id}`: decode the same way, so
            // `%73ystem_restart` is the same point.
            if s.db
                .lookup(&percent_decode(id))
                .is_some_and(|pid| admin_point(s, pid))
            {
                return Need::Role(Role::Admin);
            }
        }
    }
    if let Some(ep) = s.maps.http.endpoints.iter().find(|e| e.path == path) {
        let ep_read = ep.method == HttpMethod::Get;
        if ep_read == read {
            return match ep.method {
                HttpMethod::Get => Need::Role(Role::Viewer),
                HttpMethod::Post if admin_point(s, ep.point) => Need::Role(Role::Admin),
                HttpMethod::Post => Need::Role(Role::Operator),
            };
        }
    }
    if let Some(op) = OPS.iter().find(|o| o.0 == m && matches(o.1, path)) {
        return role_of(op.3);
    }
    if read
        && (MEDIA_PREFIXES.iter().any(|p| path.starts_with(p))
            || WEBSOCKETS.iter().any(|t| matches(t, path)))
    {
        return Need::Role(Role::Viewer);
    }
    Need::Role(if read { Role::Viewer } else { Role::Operator })
}

/// The credential a request carries, if any.
fn credential(req: &Request) -> Option<String> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some((scheme, rest)) = v.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(rest.trim().to_string());
            }
        }
        // Another scheme: presented but unusable (refused below).
        return Some(String::new());
    }
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    if req.method() == Method::GET {
        let q = req.uri().query().unwrap_or("");
        for kv in q.split('&') {
            if let Some(("access_token", v)) = kv.split_once('=') {
                return Some(percent_decode(v));
            }
        }
    }
    None
}

/// Tokens are URL-safe already; decoding covers clients that escape anyway.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn unauthorized(msg: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// The message remote writers get while no user exists.
pub const NO_USER_MESSAGE: &str = "no user exists yet, so only loopback clients may change anything: on the server run `castpoint user add NAME --role admin` (password on stdin), then log in with POST /api/auth/login";

/// Every response of the listener, counted by surface and status class
/// (`castpoint_http_responses_total`), then the authorization itself.
async fn guard(state: State<ApiState>, req: Request, next: Next) -> Response {
    let surface = crate::counters::http_surface(req.uri().path());
    let resp = authorize(state, req, next).await;
    crate::counters::http(surface, resp.status().as_u16());
    resp
}

async fn authorize(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let need_role = match need(&s, req.method(), &path) {
        Need::Public | Need::Haystack => return next.run(req).await,
        Need::Role(r) => r,
    };
    let Some(users) = &s.users else {
        // No user store at all (embedding without persistence): open.
        return next.run(req).await;
    };
    let method = req.method().clone();
    let write = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // Refusals worth an audit record (api/refusals.rs has the rule):
    // rejected credentials, too-low roles, and refused writes.
    let refuse = |resp: Response, user: Option<String>, reason: &str, audit: bool| {
        if let (true, Some(store)) = (audit, &s.store) {
            let src = crate::points::Source::new(crate::points::Protocol::Rest, peer, user);
            let detail = format!("{method} {path} -> HTTP {}", resp.status().as_u16());
            super::refusals::record(store, "auth", &path, &src, reason, &detail);
        }
        resp
    };
    let caller = match credential(&req) {
        Some(c) => {
            let u = users.clone();
            // API keys are a database lookup: keep it off the runtime.
            let verified = tokio::task::spawn_blocking(move || u.verify_bearer(&c))
                .await
                .unwrap_or(Err("verification failed"));
            match verified {
                Ok(claims) => Some(claims),
                Err(e) => return refuse(unauthorized(e), None, e, true),
            }
        }
        None => None,
    };
    match &caller {
        Some(c) if c.role < need_role => {
            let msg = format!(
                "role {} may not do this (needs {})",
                c.role.as_str(),
                need_role.as_str()
            );
            let resp = ApiError::new(StatusCode::FORBIDDEN, msg.clone()).into_response();
            return refuse(resp, Some(c.user.clone()), &msg, true);
        }
        Some(_) => {}
        None => {
            let anon_read_ok = need_role == Role::Viewer && !NEVER_ANONYMOUS.contains(&&*path);
            let (u, require) = (users.clone(), s.api.require_auth);
            let closed = require
                || tokio::task::spawn_blocking(move || u.has_credentials())
                    .await
                    .unwrap_or(true);
            if !closed {
                let loopback = peer.is_some_and(|p| p.ip().is_loopback());
                if !anon_read_ok && !loopback {
                    let resp =
                        ApiError::new(StatusCode::FORBIDDEN, NO_USER_MESSAGE).into_response();
                    return refuse(resp, None, "remote write while no user exists", write);
                }
            } else if !(anon_read_ok && s.api.anonymous_read) {
                let msg = "a bearer token or API key is required: POST /api/auth/login";
                return refuse(unauthorized(msg), None, "no credential", write);
            }
        }
    }
    req.extensions_mut().insert(Authed(caller));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn templates_match_one_segment_per_variable() {
        assert!(matches("/api/points/{id}", "/api/points/x"));
        assert!(!matches("/api/points/{id}", "/api/points/"));
        assert!(!matches("/api/points/{id}", "/api/points/x/history"));
        assert!(matches("/hls/{p}/{f}", "/hls/a/b.ts"));
        assert!(!matches("/api/ws", "/api/wsx"));
    }
}
