//! The engine's HTTP endpoints: HTTP-TS (`/stream/{name}.ts`) and HLS (`/hls/{path}/{file}`), merged into the main HTTP server by the app.

use super::*;

impl Engine {
    /// HTTP-TS (`/stream/{name}.ts`) and HLS (`/hls/{name}/...`) endpoints,
    /// merged into the main HTTP server by the app.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/stream/{file}", get(http_ts))
            .route("/hls/{path}/{file}", get(hls::serve))
            .with_state(self.clone())
    }
}

/// `GET /stream/{name}.ts`: a live MPEG-TS body, one bounded queue per viewer.
pub(super) async fn http_ts(State(e): State<Engine>, Path(file): Path<String>) -> Response {
    let Some(name) = file.strip_suffix(".ts") else {
        return (StatusCode::NOT_FOUND, "expected /stream/<name>.ts").into_response();
    };
    let ep = e.inner.http.read().get(name).cloned();
    let Some(ep) = ep else {
        return (StatusCode::NOT_FOUND, format!("no stream {name:?}")).into_response();
    };
    let body = axum::body::Body::from_stream(ep.subscribe());
    (
        [
            (header::CONTENT_TYPE, "video/mp2t"),
            (header::CACHE_CONTROL, "no-cache, no-store"),
        ],
        body,
    )
        .into_response()
}
