//! Issue 16 "points tell the truth" on the API side: uptime is current, `/ws/events/{stream}` serves only real routes and only their events.

use std::path::Path;
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::config::Config;
use futures::{SinkExt, StreamExt};
use serde_json::Value as J;
use tokio_tungstenite::tungstenite::Message;

use crate::util;
use crate::util::TestApp;

async fn next_json<S>(ws: &mut S, within: Duration) -> Option<J>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let end = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(end, ws.next()).await.ok()??.ok()?;
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).ok();
        }
    }
}

#[tokio::test]
async fn uptime_counts_seconds_from_the_first_second() {
    let app = util::start().await;
    let http = app.addrs.http.expect("http");
    let c = reqwest::Client::new();
    let t0 = Instant::now();
    // Telemetry is off in tests: the hourly `uptime` point never gets a
    // value, yet the process has been up and says so.
    loop {
        let s = util::get_json(&c, format!("http://{http}/stats")).await;
        if s["uptime_seconds"].as_u64().is_some_and(|u| u >= 1) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "uptime_seconds stuck at {}",
            s["uptime_seconds"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws/dashboard"))
        .await
        .expect("connect");
    let m = next_json(&mut ws, Duration::from_secs(5))
        .await
        .expect("stats");
    assert_eq!(m["type"], "stats");
    assert!(m["data"]["uptime_seconds"].as_u64().expect("number") >= 1);
    app.stop().await;
}

const TWO_ROUTES: &str = r#"
primary_route = "main"
[[route]]
name = "main"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route]]
name = "other"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "h"
type = "http"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_exist_only_for_routes_and_carry_only_theirs() {
    let mut cfg = Config::from_text("test.toml", TWO_ROUTES, Path::new(".")).expect("valid");
    util::loopback(&mut cfg);
    let app = TestApp::with_config(cfg).await;
    let http = app.addrs.http.expect("http");
    match tokio_tungstenite::connect_async(format!("ws://{http}/ws/events/nope")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a route that does not exist has no event stream"),
    }
    let (mut main, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws/events/main"))
        .await
        .expect("connect main");
    let (mut other, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws/events/other"))
        .await
        .expect("connect other");
    let s = next_json(&mut main, Duration::from_secs(5))
        .await
        .expect("status");
    assert_eq!(
        (s["type"].as_str(), s["stream"].as_str()),
        (Some("status"), Some("main"))
    );
    let s = next_json(&mut other, Duration::from_secs(5))
        .await
        .expect("status");
    assert_eq!(
        (s["type"].as_str(), s["stream"].as_str()),
        (Some("status"), Some("other"))
    );
    // The seed's stream points are the primary route's: not "other"'s.
    assert!(s.get("stream_status").is_none(), "{s}");

    // A point change of the primary route reaches "main" only.
    let c = reqwest::Client::new();
    let r = c
        .post(format!("http://{http}/api/points/recording_enable"))
        .json(&serde_json::json!({"value": true}))
        .send()
        .await
        .expect("post");
    assert!(r.status().is_success(), "{}", r.status());
    loop {
        let m = next_json(&mut main, Duration::from_secs(5))
            .await
            .expect("change");
        assert_eq!(m["stream"], "main", "{m}");
        if m["id"] == "recording_enable" {
            break;
        }
    }
    // A router event of "other" reaches "other" only.
    app.engine
        .set_output_enabled("other", "h", false)
        .await
        .expect("disable output");
    let m = next_json(&mut other, Duration::from_secs(5))
        .await
        .expect("event");
    assert_eq!(m["type"], "event", "{m}");
    assert_eq!(m["route"], "other");
    assert_eq!(m["event"], "output_enabled");
    // Nothing of the other route's leaked into either feed meanwhile:
    // everything queued before the `status` answer is the feed's own.
    for (ws, name) in [(&mut main, "main"), (&mut other, "other")] {
        ws.send(Message::Text("status".into())).await.expect("send");
        loop {
            let m = next_json(ws, Duration::from_secs(5))
                .await
                .expect("message");
            assert_eq!(m["stream"], name, "{name} got {m}");
            if m["type"] == "status" {
                break;
            }
        }
    }
    app.stop().await;
}

fn audit(app: &App, kind: &str) -> Vec<castpoint::persist::AuditEvent> {
    app.store
        .query_audit(&castpoint::persist::AuditFilter {
            kind: Some(kind.into()),
            limit: 200,
            ..Default::default()
        })
        .expect("audit query")
}

#[tokio::test]
async fn refused_rest_writes_and_auth_failures_are_audited() {
    let mut cfg = Config::embedded().expect("embedded");
    util::loopback(&mut cfg);
    // Anonymous reads refused once a user exists, so that one is seen.
    cfg.server.api.anonymous_read = false;
    let app = TestApp::with_config(cfg).await;
    let http = app.addrs.http.expect("http");
    let c = reqwest::Client::new();
    let post = |path: &str, body: &'static str| {
        c.post(format!("http://{http}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Refused before the point database sees them: bad JSON, wrong type,
    // read-only point, unknown point.
    assert_eq!(
        post("/api/points/recording_enable", "{not json")
            .await
            .expect("post")
            .status(),
        400
    );
    assert_eq!(
        post("/api/points/recording_enable", r#"{"value": "maybe"}"#)
            .await
            .expect("post")
            .status(),
        422
    );
    assert_eq!(
        post("/api/points/cpu_usage", r#"{"value": 1}"#)
            .await
            .expect("post")
            .status(),
        405
    );
    assert_eq!(
        post("/api/points/nope", r#"{"value": 1}"#)
            .await
            .expect("post")
            .status(),
        404
    );
    let w = audit(&app, "write");
    for (target, status) in [
        ("recording_enable", "HTTP 400"),
        ("recording_enable", "HTTP 422"),
        ("cpu_usage", "HTTP 405"),
        ("nope", "HTTP 404"),
    ] {
        let e = w
            .iter()
            .find(|e| e.target.as_deref() == Some(target) && e.detail.as_deref() == Some(status))
            .unwrap_or_else(|| panic!("no audit of the refused write {target} {status}: {w:?}"));
        assert!(e.result.starts_with("refused: "), "{e:?}");
        assert_eq!(e.protocol.as_deref(), Some("rest"));
        assert!(
            e.peer
                .as_deref()
                .is_some_and(|p| p.starts_with("127.0.0.1")),
            "{e:?}"
        );
    }

    // Once a user exists: a write without a token (401), a forged token
    // (401, even on a read) and a too-low role (403) are audited; an
    // anonymous read refused for lack of a token is not.
    let users =
        castpoint::auth::Users::new(app.store.clone(), Duration::from_secs(600)).expect("users");
    users
        .add("vera", castpoint::auth::Role::Viewer, "pw-vera-1")
        .expect("add");
    assert_eq!(
        post("/api/points/recording_enable", r#"{"value": true}"#)
            .await
            .expect("post")
            .status(),
        401
    );
    let r = c
        .get(format!("http://{http}/api/points"))
        .bearer_auth("forged.token.here")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("http://{http}/api/points"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("http://{http}/api/auth/login"))
        .json(&serde_json::json!({"username": "vera", "password": "pw-vera-1"}))
        .send()
        .await
        .expect("login");
    let tok = r.json::<J>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = c
        .post(format!("http://{http}/api/points/recording_enable"))
        .bearer_auth(&tok)
        .json(&serde_json::json!({"value": true}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let a = audit(&app, "auth");
    let find = |detail: &str| a.iter().find(|e| e.detail.as_deref() == Some(detail));
    let e = find("POST /api/points/recording_enable -> HTTP 401").expect("401 write audited");
    assert!(e.result.starts_with("refused: "), "{e:?}");
    assert!(
        find("GET /api/points -> HTTP 401").is_some(),
        "forged token audited: {a:?}"
    );
    let e = find("POST /api/points/recording_enable -> HTTP 403").expect("403 audited");
    assert_eq!(e.user.as_deref(), Some("vera"));
    assert_eq!(e.protocol.as_deref(), Some("rest"));
    // One GET 401 (the forged token); the anonymous read is not recorded.
    let gets = a
        .iter()
        .filter(|e| e.detail.as_deref() == Some("GET /api/points -> HTTP 401"))
        .count();
    assert_eq!(gets, 1, "{a:?}");
    app.stop().await;
}

#[test]
fn check_config_refuses_what_run_refuses_and_run_says_degraded() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("castpoint-truth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let check = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        Command::new(env!("CARGO_BIN_EXE_castpoint"))
            .args(["check-config", "--config"])
            .arg(&p)
            .output()
            .expect("check-config")
    };
    for (name, text, key) in [
        ("empty.toml", "", "(file)"),
        (
            "bacnet.toml",
            "[bacnet]\nbroadcst = \"10.0.0.255\"\n",
            "bacnet.broadcst",
        ),
        (
            "haystack.toml",
            "[haystack]\nanonymus_read = true\n",
            "haystack.anonymus_read",
        ),
        (
            "ports.toml",
            "[http]\nbind = \"0.0.0.0:18080\"\n[modbus]\nbind = \"127.0.0.1:18080\"\n",
            "modbus.bind",
        ),
    ] {
        let out = check(name, text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(key), "{name}: {err}");
    }
    // A listener that cannot bind (its port is taken): `run` does not say
    // `ready`, it says `degraded: ...` naming the part.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_castpoint"))
        .args([
            "run",
            "--http",
            "127.0.0.1:0",
            "--bacnet",
            "127.0.0.1:0",
            "--rtmp",
            "127.0.0.1:0",
        ])
        .arg("--modbus")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        // Not a terminal: the log must be plain text even without NO_COLOR.
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut verdict = None;
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        if line == "ready" || line.starts_with("degraded:") {
            verdict = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut log);
    }
    let _ = child.wait();
    let v = verdict.expect("a verdict line");
    assert!(v.starts_with("degraded:") && v.contains("modbus"), "{v}");
    assert!(log.contains("cannot start modbus"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI codes in a piped log: {log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn modbus_values_refused_while_decoding_are_audited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = util::start().await;
    let addr = app.addrs.modbus.expect("modbus");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // FC06 to 40101 (input_select, an enum of a few states) with 999: the
    // value never becomes a point value, the answer is exception 03.
    let adu = [0, 1, 0, 0, 0, 6, 1, 0x06, 0, 100, 0x03, 0xE7];
    s.write_all(&adu).await.expect("send");
    let mut r = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut r))
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(&r[7..9], &[0x86, 0x03], "exception 03");
    let w = audit(&app, "write");
    let e = w
        .iter()
        .find(|e| {
            e.target.as_deref() == Some("input_select") && e.protocol.as_deref() == Some("modbus")
        })
        .unwrap_or_else(|| panic!("refused Modbus write not audited: {w:?}"));
    assert!(e.result.starts_with("refused: "), "{e:?}");
    assert!(
        e.peer
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.1")),
        "{e:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_input_error_names_its_cause() {
    // A port nothing listens on: the error must say why ("connection
    // refused"), not only reqwest's "error sending request".
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let text = format!(
        "[[route]]\nname = \"h\"\n[[route.input]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/x.ts\"\n"
    );
    let mut cfg = Config::from_text("test.toml", &text, Path::new(".")).expect("valid");
    util::loopback(&mut cfg);
    let app = TestApp::with_config(cfg).await;
    let end = Instant::now() + Duration::from_secs(10);
    let err = loop {
        let e = app
            .engine
            .snapshot()
            .route("h")
            .and_then(|r| r.inputs.first().and_then(|i| i.error.clone()));
        if let Some(e) = e {
            break e;
        }
        assert!(Instant::now() < end, "no input error reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(err.to_ascii_lowercase().contains("refused"), "{err}");
    app.stop().await;
}
