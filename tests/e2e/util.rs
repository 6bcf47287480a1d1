//! Shared helpers for end-to-end tests: start castpoint in-process on ephemeral ports, or spawn the real binary.

use castpoint::app::App;
use castpoint::config::Config;

/// Starts castpoint in-process with every listener on 127.0.0.1:0 and
/// telemetry off, so tests that set points by hand are not raced by the
/// sampler (telemetry's own tests turn it on).
pub async fn start() -> App {
    let mut cfg = Config::embedded().expect("embedded config is valid");
    loopback(&mut cfg);
    App::start(cfg).await.expect("app starts")
}

/// Turns telemetry off in a config that has no `[telemetry]` of its own.
pub fn quiet(cfg: &mut Config) {
    if !cfg.server.written.contains("telemetry") {
        cfg.server.telemetry.enabled = false;
    }
}

/// Moves every bind of a config to an ephemeral loopback port, in a fresh
/// data dir, with telemetry off unless the config configures it.
pub fn loopback(cfg: &mut Config) {
    quiet(cfg);
    // The embedded demo route binds a fixed port (its UDP backup input):
    // tests declare the routes they need themselves.
    cfg.server.routes.retain(|r| r.spec.name != "demo");
    if cfg.server.primary_route.as_deref() == Some("demo") {
        cfg.server.primary_route = None;
    }
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    cfg.server.http.bind = any;
    cfg.server.bacnet.bind = any;
    cfg.server.modbus.bind = any;
    cfg.server.rtmp.bind = any;
    let dir = std::env::temp_dir().join(format!(
        "castpoint-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    cfg.server.data_dir = dir;
}

/// GET a URL and parse the JSON body (the request must succeed).
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    c.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json body")
}
