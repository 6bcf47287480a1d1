//! `castpoint status`: a human summary of a running server (routes, outputs, alarms, points out of order), read from its REST API.
//!
//! It is a client of the public API only (`/health`, `/api/routes`,
//! `/api/points`, `/api/alarms`), so it shows exactly what any other client
//! would see and needs no access to the data dir. The HTTP client is a few
//! lines of HTTP/1.1 over `std::net` on purpose: the server's own
//! dependencies carry no HTTP client, and `status` must not pull one in
//! (nor TLS: for an HTTPS-only listener use curl; the command says so).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value as J;

/// A response larger than this is not a castpoint API document.
const MAX_RESPONSE: u64 = 32 << 20;

/// Where the server is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    token: Option<String>,
}

impl Target {
    /// Parses `http://host[:port]` (default port 8080, the embedded
    /// configuration's). A trailing `/` is accepted; paths are not.
    pub fn parse(url: &str, token: Option<String>) -> Result<Target, String> {
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(format!(
                "{url}: `castpoint status` speaks plain HTTP only; for an HTTPS listener use \
                 curl (e.g. curl -s {url}/api/routes)"
            ));
        } else {
            url
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("{url}: expected http://HOST[:PORT]"));
        }
        // `[::1]:8080`, `host:8080`, `host`.
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{url}: bad port {p:?}"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (rest.trim_start_matches('[').trim_end_matches(']'), 8080),
        };
        Ok(Target {
            host: host.to_string(),
            port,
            token,
        })
    }

    fn url(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    /// GET `path`; returns the status code and the (de-chunked) body.
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.url()))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.url()))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("{}: {e} (is castpoint running?)", self.url()))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.port
        );
        if let Some(t) = &self.token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .map_err(|e| format!("{}{path}: {e}", self.url()))?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(|e| format!("{}{path}: {e}", self.url()))?;
        parse_response(&raw).map_err(|e| format!("{}{path}: {e}", self.url()))
    }

    fn get_json(&self, path: &str) -> Result<(u16, J), String> {
        let (code, body) = self.get(path)?;
        let v = serde_json::from_slice(&body).unwrap_or(J::Null);
        Ok((code, v))
    }
}

/// Splits an HTTP/1.1 response into status and body, undoing chunked
/// transfer encoding.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated response")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "response head is not text")?;
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("bad status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    if !chunked {
        return Ok((code, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size = std::str::from_utf8(&rest[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or("bad chunk size")?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Ok((code, out));
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// Fetches everything and renders the summary. `Err` when the server cannot
/// be reached or refuses the credentials.
pub fn run(target: &Target) -> Result<String, String> {
    let (code, health) = target.get_json("/health")?;
    if code != 200 {
        return Err(format!("{}/health answered HTTP {code}", target.url()));
    }
    let (code, routes) = target.get_json("/api/routes")?;
    if code == 401 || code == 403 {
        return Err(format!(
            "{}/api/routes answered HTTP {code}: pass a token or API key with --token \
             (or CASTPOINT_TOKEN)",
            target.url()
        ));
    }
    let (_, points) = target.get_json("/api/points")?;
    let alarms = match target.get_json("/api/alarms") {
        Ok((200, a)) => Some(a),
        _ => None,
    };
    Ok(render(
        &target.url(),
        &health,
        &routes,
        &points,
        alarms.as_ref(),
    ))
}

fn mbps(bps: Option<f64>) -> String {
    match bps {
        Some(b) => format!("{:.1} Mbit/s", b / 1e6),
        None => "-".into(),
    }
}

/// The summary text, from the API's documents (pure, unit-tested).
pub fn render(url: &str, health: &J, routes: &J, points: &J, alarms: Option<&J>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "castpoint {} at {url}: {} ({} points)",
        health["version"].as_str().unwrap_or("?"),
        health["status"].as_str().unwrap_or("?"),
        health["points"].as_u64().unwrap_or(0),
    );
    let empty = Vec::new();
    let pts = points.as_array().unwrap_or(&empty);
    let show = |id: &str| show_point(pts, id);
    let _ = writeln!(
        o,
        "server: {}  cpu {}  memory {}  gpu {}  uptime {}",
        show("server_status"),
        show("cpu_usage"),
        show("memory_usage"),
        show("gpu_usage"),
        show("uptime"),
    );
    let list = routes["routes"].as_array().unwrap_or(&empty);
    let _ = writeln!(
        o,
        "routes: {} (primary {})",
        list.len(),
        routes["primary"].as_str().unwrap_or("none")
    );
    for r in list {
        render_route(&mut o, r);
    }
    render_alarms(&mut o, alarms);
    render_bad_points(&mut o, pts);
    o
}

/// A point's value as the summary shows it: `-` when there is no such
/// point, `n/a` when it has no value.
fn show_point(pts: &[J], id: &str) -> String {
    let Some(p) = pts.iter().find(|p| p["id"] == id) else {
        return "-".into();
    };
    if p["status"] == "unavailable" || p["value"].is_null() {
        return "n/a".into();
    }
    if let Some(s) = p["state"].as_str() {
        return s.into();
    }
    match (p["value"].as_f64(), p["unit"].as_str()) {
        (Some(v), Some(u)) => format!("{v:.1} {u}"),
        (Some(v), None) => format!("{v}"),
        _ => "-".into(),
    }
}

/// One route's line and one line per output.
fn render_route(o: &mut String, r: &J) {
    let empty = Vec::new();
    let st = &r["stats"];
    let inputs = r["inputs"].as_array().unwrap_or(&empty);
    let active = st["active_input"]
        .as_u64()
        .and_then(|i| inputs.get(i as usize))
        .and_then(|i| i["name"].as_str())
        .unwrap_or("none");
    let in_bps = st["inputs"]
        .as_array()
        .and_then(|v| v.get(st["active_input"].as_u64().unwrap_or(0) as usize))
        .and_then(|i| i["bitrate_bps"].as_f64());
    let forced = st["forced_input"]
        .as_str()
        .map(|f| format!(" (forced {f})"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "  {}  {}  input {active}{forced}  in {}",
        r["name"].as_str().unwrap_or("?"),
        if st["enabled"].as_bool().unwrap_or(false) {
            "enabled"
        } else {
            "disabled"
        },
        mbps(in_bps),
    );
    for out in st["outputs"].as_array().unwrap_or(&empty) {
        render_output(o, out);
    }
}

fn render_output(o: &mut String, out: &J) {
    let state = if !out["enabled"].as_bool().unwrap_or(true) {
        "off".to_string()
    } else if let Some(e) = out["error"].as_str() {
        format!("ERROR {e}")
    } else if out["up"].as_bool().unwrap_or(false) {
        "up".to_string()
    } else {
        "down".to_string()
    };
    let _ = writeln!(
        o,
        "    {} {}  {state}  {}  {} clients  {} send errors",
        out["kind"].as_str().unwrap_or("?"),
        out["name"].as_str().unwrap_or("?"),
        mbps(out["bitrate_bps"].as_f64()),
        out["clients"].as_u64().unwrap_or(0),
        out["send_errors"].as_u64().unwrap_or(0),
    );
}

/// The active alarms (`alarms` is None when the server has no alarm API).
fn render_alarms(o: &mut String, alarms: Option<&J>) {
    match alarms.and_then(|a| a.as_array().or_else(|| a["alarms"].as_array())) {
        Some(a) if a.is_empty() => o.push_str("alarms: none active\n"),
        Some(a) => {
            let _ = writeln!(o, "alarms: {} active", a.len());
            for al in a {
                let _ = writeln!(
                    o,
                    "  {} {}",
                    al["point"].as_str().or(al["id"].as_str()).unwrap_or("?"),
                    al["state"].as_str().unwrap_or("?")
                );
            }
        }
        None => o.push_str("alarms: this server has no alarm API\n"),
    }
}

/// The points whose status is not `ok`.
fn render_bad_points(o: &mut String, pts: &[J]) {
    let bad: Vec<_> = pts
        .iter()
        .filter(|p| p["status"].as_str().is_some_and(|s| s != "ok"))
        .collect();
    if bad.is_empty() {
        o.push_str("points out of order: none\n");
    } else {
        let _ = writeln!(o, "points out of order: {}", bad.len());
        for p in bad {
            let _ = writeln!(
                o,
                "  {} ({}): {}",
                p["name"].as_str().unwrap_or("?"),
                p["id"].as_str().unwrap_or("?"),
                p["status"].as_str().unwrap_or("?"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_parse_with_default_port_and_ipv6() {
        let t = Target::parse("http://127.0.0.1:9000/", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        let t = Target::parse("localhost", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("localhost", 8080));
        let t = Target::parse("http://[::1]:8081", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8081));
        assert_eq!(t.url(), "http://[::1]:8081");
        assert!(Target::parse("https://x", None)
            .unwrap_err()
            .contains("curl"));
        assert!(Target::parse("http://x:99999", None).is_err());
        assert!(Target::parse("http://x/api", None).is_err());
    }

    #[test]
    fn chunked_and_plain_bodies() {
        let (c, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").unwrap();
        assert_eq!((c, b.as_slice()), (200, &b"hi"[..]));
        let (c, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((c, b.as_slice()), (404, &b"abcde"[..]));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .is_err()
        );
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn summary_names_routes_outputs_and_points_out_of_order() {
        let health = json!({"status": "ok", "points": 2, "version": "9.9.9"});
        let routes = json!({"primary": "demo", "routes": [{
            "name": "demo",
            "inputs": [{"name": "cam"}, {"name": "backup"}],
            "stats": {"enabled": true, "active_input": 1, "forced_input": "backup",
                "inputs": [{"bitrate_bps": 0.0}, {"bitrate_bps": 4000000.0}],
                "outputs": [
                    {"kind": "udp", "name": "lan", "enabled": true, "up": false, "error": "connection refused", "bitrate_bps": 0.0, "clients": 0, "send_errors": 7},
                    {"kind": "record", "name": "archive", "enabled": false, "up": false}
                ]}
        }]});
        let points = json!([
            {"id": "server_status", "name": "Server Status", "status": "ok", "value": 1, "state": "OK"},
            {"id": "gpu_usage", "name": "GPU Usage", "status": "unavailable", "value": null, "unit": "%"}
        ]);
        let s = render("http://h:1", &health, &routes, &points, None);
        assert!(
            s.starts_with("castpoint 9.9.9 at http://h:1: ok (2 points)"),
            "{s}"
        );
        assert!(s.contains("server: OK"), "{s}");
        assert!(s.contains("gpu n/a"), "{s}");
        assert!(
            s.contains("demo  enabled  input backup (forced backup)  in 4.0 Mbit/s"),
            "{s}"
        );
        assert!(s.contains("udp lan  ERROR connection refused"), "{s}");
        assert!(s.contains("7 send errors"), "{s}");
        assert!(s.contains("record archive  off"), "{s}");
        assert!(s.contains("alarms: this server has no alarm API"), "{s}");
        assert!(
            s.contains("points out of order: 1\n  GPU Usage (gpu_usage): unavailable"),
            "{s}"
        );
        let s = render("u", &health, &routes, &points, Some(&json!([])));
        assert!(s.contains("alarms: none active"), "{s}");
    }
}
