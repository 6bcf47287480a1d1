//! Shared helpers for end-to-end tests: start castpoint in-process on ephemeral ports, or spawn the real binary.

use castpoint::app::App;
use castpoint::config::Config;

/// Starts castpoint in-process with every listener on 127.0.0.1:0.
pub async fn start() -> App {
    let mut cfg = Config::embedded().expect("embedded config is valid");
    loopback(&mut cfg);
    App::start(cfg).await.expect("app starts")
}

/// Moves every bind of a config to an ephemeral loopback port.
pub fn loopback(cfg: &mut Config) {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    cfg.server.http.bind = any;
    cfg.server.bacnet.bind = any;
    cfg.server.modbus.bind = any;
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
