//! The web console (issue 22): plain HTML, CSS and JavaScript modules embedded in the binary, served at `/` and `/console/*` without a token; the pages use only the REST API and WebSocket feeds, with the caller's own JWT.
//!
//! No build step and no third-party code: `cargo build` alone produces the
//! console, and the first load is the few files below (docs/console.md has
//! the measured weight). Serving the assets without a token is safe because
//! they hold no data: everything the page shows comes from API calls that
//! keep their own authorization (`guard.rs`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, ApiState};

/// (file name, content type, bytes). `index.html` is also served at `/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("console/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("console/api.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("console/views.js"),
    ),
    (
        "preview.js",
        "text/javascript; charset=utf-8",
        include_str!("console/preview.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("console/favicon.svg"),
    ),
];

/// Only same-origin scripts, styles and connections (the REST API and its
/// WebSockets); nothing inline, nothing from elsewhere, never framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { asset(&h, "index.html") }),
        )
        .route(
            "/console/{file}",
            get(|h: HeaderMap, Path(f): Path<String>| async move { asset(&h, &f) }),
        )
        .route("/api/auth/info", get(info))
}

/// The console's files are public (they hold no data); every API call the
/// pages make keeps its own authorization.
pub fn is_public(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD) && (path == "/" || path.starts_with("/console/"))
}

/// A validator from the content: a reload costs a 304, and a new binary's
/// files are never served stale from a cache. The gzip form has its own.
fn etag(body: &str, gz: bool) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(body.as_bytes());
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    if gz {
        format!("\"{hex}-gz\"")
    } else {
        format!("\"{hex}\"")
    }
}

/// The gzip form of every asset, compressed once on first use.
fn gzipped(i: usize) -> &'static [u8] {
    static GZ: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    GZ.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| super::gzip::gzip(a.2.as_bytes()))
            .collect()
    })
    .get(i)
    .map_or(&[], Vec::as_slice)
}

/// Whether the client takes gzip (`Accept-Encoding: gzip`, not `q=0`).
fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q0 = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q0
        })
}

fn asset(h: &HeaderMap, name: &str) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.0 == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no console file {name:?}"))
            .into_response();
    };
    let (_, ctype, body) = ASSETS[i];
    let gz = accepts_gzip(h);
    let tag = etag(body, gz);
    let fresh = h
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gz {
        (
            [
                (header::CONTENT_TYPE, ctype),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gzipped(i),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, ctype)], body).into_response()
    };
    let hd = r.headers_mut();
    hd.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        hd.insert(header::ETAG, v);
    }
    // Revalidate every time: the files change with the binary.
    hd.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    hd.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    hd.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    hd.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /api/auth/info` (public): what a login page needs to know before
/// anyone has logged in — whether any user or API key exists (if not, how
/// to add one) and whether anonymous reads are allowed.
async fn info(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let users = match &s.users {
        Some(u) => {
            let u = u.clone();
            tokio::task::spawn_blocking(move || u.has_credentials())
                .await
                .unwrap_or(true)
        }
        None => false,
    };
    Json(json!({
        "users": users,
        "auth": s.users.is_some(),
        "require_auth": s.api.require_auth,
        "anonymous_read": s.api.anonymous_read && !s.api.require_auth,
        "add_user": "castpoint user add NAME --role admin",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_unknown_names_are_404() {
        for (name, ctype, body) in ASSETS {
            let r = asset(&HeaderMap::new(), name);
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], *ctype);
            assert!(!body.is_empty());
        }
        assert_eq!(
            asset(&HeaderMap::new(), "../Cargo.toml").status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_matching_etag_answers_304() {
        let first = asset(&HeaderMap::new(), "app.js");
        let tag = first.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(asset(&h, "app.js").status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn gzip_is_served_when_accepted_and_not_when_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
        let r = asset(&h, "views.js");
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(r.headers()[header::ETAG]
            .to_str()
            .unwrap_or("")
            .ends_with("-gz\""));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0"),
        );
        let r = asset(&h, "views.js");
        assert!(!r.headers().contains_key(header::CONTENT_ENCODING));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn only_reads_of_console_paths_are_public() {
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::GET, "/console/app.js"));
        assert!(!is_public(&Method::POST, "/"));
        assert!(!is_public(&Method::GET, "/api/points"));
        assert!(!is_public(&Method::GET, "/consoles"));
    }

    #[test]
    fn the_first_load_stays_far_below_300_kb() {
        // Uncompressed, so the bound holds whatever the transfer encoding.
        let total: usize = ASSETS.iter().map(|a| a.2.len()).sum();
        assert!(total < 150_000, "console assets are {total} bytes");
        let gz: usize = (0..ASSETS.len()).map(|i| gzipped(i).len()).sum();
        assert!(gz < total / 2, "gzip: {gz} of {total} bytes");
    }
}
