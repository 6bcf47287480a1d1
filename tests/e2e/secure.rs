//! Secure by default (issue 15), end to end over real sockets: one authorization layer over every HTTP route, WebSocket tokens, admin-only operations, loopback-only writes until a user exists, API keys, login backoff and revocation, secrets that survive a fetch-and-write-back, and per-client Haystack watch quotas.

use std::net::SocketAddr;
use std::time::Duration;

use castpoint::api::{guard, ApiState};
use castpoint::app::App;
use castpoint::auth::Role;
use castpoint::auth::Users;
use castpoint::config::Config;
use futures::StreamExt;
use serde_json::{json, Value as J};

use crate::util::{loopback, TestApp};

/// Starts castpoint with extra `[api]` and `[haystack]` keys.
async fn start_with(api: &str, haystack: &str) -> TestApp {
    let mut cfg = Config::embedded().expect("embedded config");
    loopback(&mut cfg);
    cfg.server.api = castpoint::config::section_from_str("api", api).expect("api toml");
    cfg.server.haystack =
        castpoint::config::section_from_str("haystack", haystack).expect("haystack toml");
    TestApp::with_config(cfg).await
}

fn base(app: &App) -> String {
    format!("http://{}", app.addrs.http.expect("http"))
}

fn users(app: &App) -> Users {
    Users::new(app.store.clone(), Duration::from_secs(600)).expect("users")
}

async fn login(c: &reqwest::Client, base: &str, u: &str, p: &str) -> reqwest::Response {
    c.post(format!("{base}/api/auth/login"))
        .json(&json!({"username": u, "password": p}))
        .send()
        .await
        .expect("login")
}

async fn token(c: &reqwest::Client, base: &str, u: &str, p: &str) -> String {
    let r = login(c, base, u, p).await;
    assert_eq!(r.status(), 200, "login {u}");
    let j: J = r.json().await.expect("json");
    j["token"].as_str().expect("token").to_string()
}

/// Paths that stay public (docs/security.md, "What is public").
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/health"),
    ("post", "/api/auth/login"),
    ("get", "/api/openapi.json"),
    ("get", "/api/auth/info"),
    // The web console's files (no data in them; the API keeps its auth).
    ("get", "/"),
    ("get", "/console/app.js"),
];

/// With users and `anonymous_read = false`, every route of the OpenAPI
/// document, the seed endpoints, media, `/stats`, `/metrics` and every
/// WebSocket answers 401 without a token (before: all reads answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_when_anonymous_read_is_off() {
    let app = start_with("anonymous_read = false", "").await;
    let b = base(&app);
    users(&app)
        .add("ada", Role::Admin, "admin-password")
        .expect("add");
    let c = reqwest::Client::new();
    let doc: J = c
        .get(format!("{b}/api/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let mut checked = 0;
    let mut probes: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            probes.push((method.clone(), path.clone()));
        }
    }
    for extra in [
        "/metrics",
        "/stats",
        "/api/streams",
        "/api/stream",
        "/api/audit",
        "/api/points/stream_enable/history",
        "/stream/lobby.ts",
        "/hls/lobby/index.m3u8",
        "/api/ws",
        "/ws/dashboard",
        "/ws/events/lobby",
        "/no/such/path",
        "/",
        "/console/app.js",
    ] {
        probes.push(("get".into(), extra.into()));
    }
    for (method, path) in &probes {
        let concrete = path
            .replace("{id}", "stream_enable")
            .replace("{number}", "1")
            .replace("{stream}", "lobby")
            .replace("{route}", "r")
            .replace("{name}", "x");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = c
            .request(m, format!("{b}{concrete}"))
            .json(&json!({}))
            .send()
            .await
            .expect("request");
        let public = PUBLIC.iter().any(|(pm, pp)| pm == method && pp == path);
        if public {
            assert_ne!(r.status(), 401, "{method} {path} is public");
        } else {
            assert_eq!(r.status(), 401, "{method} {path} answered anonymously");
            assert!(
                r.headers().contains_key("www-authenticate"),
                "{method} {path}"
            );
        }
        checked += 1;
    }
    assert!(checked > 40, "walked {checked} operations");
    // Haystack keeps its own authentication (no anonymous_read there).
    let r = c
        .get(format!("{b}/api/haystack/about"))
        .send()
        .await
        .expect("hs");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "HELLO");

    // WebSockets: refused without a token; a token in the query (what a
    // browser can do) or the header opens them.
    let http = app.addrs.http.expect("http");
    for p in ["/api/ws", "/ws/dashboard", "/ws/events/lobby"] {
        match tokio_tungstenite::connect_async(format!("ws://{http}{p}")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{p}")
            }
            other => panic!("{p}: expected 401, got {:?}", other.map(|_| ())),
        }
    }
    let t = token(&c, &b, "ada", "admin-password").await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}/api/ws?access_token={t}"))
            .await
            .expect("ws with access_token");
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("snapshot in time")
        .expect("message")
        .expect("ok");
    assert!(first.to_text().expect("text").contains("snapshot"));
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{http}/ws/dashboard")
        .into_client_request()
        .expect("req");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {t}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("ws with bearer header");
    // The same token opens the reads it was refused before.
    let r = c
        .get(format!("{b}/metrics"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{b}/api/points?access_token={t}"))
        .send()
        .await
        .expect("points");
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// Operator may command points but not change routes, profiles, API keys
/// or restart the system; admin may; viewer may only read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_only_operations_refuse_operators() {
    let app = start_with("", "").await;
    let b = base(&app);
    let u = users(&app);
    u.add("ada", Role::Admin, "admin-password").expect("admin");
    u.add("otto", Role::Operator, "operator-pw").expect("op");
    u.add("vic", Role::Viewer, "viewer-pw-1").expect("viewer");
    let c = reqwest::Client::new();
    let admin = token(&c, &b, "ada", "admin-password").await;
    let op = token(&c, &b, "otto", "operator-pw").await;
    let view = token(&c, &b, "vic", "viewer-pw-1").await;
    let route = json!({"name": "r1", "inputs": [{"name": "a", "type": "udp", "bind": "127.0.0.1:0"}],
                       "outputs": [{"name": "web", "type": "http", "path": "r1"}]});
    let send = |m: reqwest::Method, p: &str, t: &str, body: J| {
        c.request(m, format!("{b}{p}"))
            .bearer_auth(t)
            .json(&body)
            .send()
    };
    use reqwest::Method as M;
    for (m, p, body) in [
        (M::POST, "/api/routes", route.clone()),
        (
            M::POST,
            "/api/apikeys",
            json!({"name": "k", "role": "viewer"}),
        ),
        (M::GET, "/api/apikeys", json!({})),
        (
            M::PUT,
            "/api/profiles/7",
            json!({"name": "p7", "video_codec": "copy"}),
        ),
        (
            M::POST,
            "/api/points/system_restart",
            json!({"value": true}),
        ),
        (
            M::POST,
            "/api/points/%73ystem_restart",
            json!({"value": true}),
        ),
    ] {
        let r = send(m.clone(), p, &op, body).await.expect("send");
        assert_eq!(r.status(), 403, "operator {m} {p}");
    }
    let r = send(
        M::POST,
        "/api/points/recording_enable",
        &op,
        json!({"value": true}),
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 200, "operators command points");
    let r = send(
        M::POST,
        "/api/points/recording_enable",
        &view,
        json!({"value": true}),
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 403, "viewers only read");
    let r = send(M::POST, "/api/routes", &admin, route)
        .await
        .expect("send");
    assert_eq!(r.status(), 201, "admin creates routes");
    let r = send(
        M::POST,
        "/api/routes/r1/outputs/web/disable",
        &op,
        json!({}),
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 200, "operators switch outputs");
    let r = send(M::DELETE, "/api/routes/r1", &op, json!({}))
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = send(M::DELETE, "/api/routes/r1", &admin, json!({}))
        .await
        .expect("send");
    assert_eq!(r.status(), 204);
    app.stop().await;
}

/// A listener that reports every connection as coming from a remote
/// address, so the loopback-only rule can be tested without sending
/// traffic off the machine.
struct RemotePeer(tokio::net::TcpListener);

impl axum::serve::Listener for RemotePeer {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((s, _)) = self.0.accept().await {
                return (s, "203.0.113.7:40000".parse().expect("addr"));
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// While no user exists, writes come from loopback only: a remote caller
/// gets 403 with the command that fixes it (before: anyone could write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_writes_are_refused_until_a_user_exists() {
    use axum::serve::ListenerExt;
    let app = start_with("", "").await;
    let state = ApiState {
        db: app.db.clone(),
        maps: app.maps.clone(),
        write_priority: 12,
        store: Some(app.store.clone()),
        users: Some(users(&app)),
        api: Default::default(),
        engine: Some(app.engine.clone()),
        route_docs: Default::default(),
        route_defaults: Default::default(),
        profiles: None,
        exports: None,
        alarms: Some(app.alarms.clone()),
    };
    let router = guard::layer(castpoint::api::router(state.clone()), state);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let remote = l.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let svc = router.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(RemotePeer(l).tap_io(|_| {}), svc).await;
    });
    let c = reqwest::Client::new();
    let r = c
        .post(format!("http://{remote}/api/points/recording_enable"))
        .json(&json!({"value": true}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let j: J = r.json().await.expect("json");
    assert!(
        j["error"]
            .as_str()
            .expect("error")
            .contains("castpoint user add NAME --role admin"),
        "{j}"
    );
    // Remote reads still work; the audit log is not for strangers.
    let r = c
        .get(format!("http://{remote}/api/points"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("http://{remote}/api/audit"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    // The real listener's loopback clients keep writing (the demo, tests).
    let r = c
        .post(format!("{}/api/points/recording_enable", base(&app)))
        .json(&json!({"value": true}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    server.abort();
    app.stop().await;
}

/// Wrong passwords back off per address and per user (429 + Retry-After),
/// are audited and counted in /metrics; a password change or removal
/// revokes the user's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_are_audited_and_counted() {
    let app = start_with("", "").await;
    let b = base(&app);
    let u = users(&app);
    u.add("ada", Role::Admin, "admin-password").expect("add");
    let c = reqwest::Client::new();
    let admin = token(&c, &b, "ada", "admin-password").await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(login(&c, &b, "ada", "not-the-password").await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(&codes[..5], &[401; 5], "{codes:?}");
    assert!(codes[5..].contains(&429), "no backoff: {codes:?}");
    let limited = statuses.iter().find(|r| r.status() == 429).expect("a 429");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // While backing off even the right password waits.
    assert_eq!(login(&c, &b, "ada", "admin-password").await.status(), 429);
    // Counted and audited.
    let m = c
        .get(format!("{b}/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = m
        .lines()
        .find(|l| l.starts_with("castpoint_login_failures_total{protocol=\"rest\"}"))
        .expect("counter");
    let n: u64 = line.rsplit(' ').next().expect("n").parse().expect("num");
    assert!(n >= 5, "{line}");
    assert!(m.contains("castpoint_login_throttled_total"));
    let audit: J = c
        .get(format!("{b}/api/audit?kind=login&limit=50"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let failed = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e.to_string().contains("failed"))
        .count();
    assert!(failed >= 5, "{audit}");
    // Revocation: a password change ends the old token at once.
    let r = c
        .get(format!("{b}/api/apikeys"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    u.add("ada", Role::Admin, "new-admin-password")
        .expect("change password");
    let r = c
        .get(format!("{b}/api/apikeys"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401, "old token survived a password change");
    app.stop().await;
}

/// API keys: created by an admin (shown once), used as a bearer or an
/// X-API-Key header, never listed, audited as `apikey:NAME`, revocable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_work_are_audited_and_revocable() {
    let app = start_with("anonymous_read = false", "").await;
    let b = base(&app);
    users(&app)
        .add("ada", Role::Admin, "admin-password")
        .expect("add");
    let c = reqwest::Client::new();
    let admin = token(&c, &b, "ada", "admin-password").await;
    let r = c
        .post(format!("{b}/api/apikeys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "ci", "role": "operator"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let j: J = r.json().await.expect("json");
    let key = j["key"].as_str().expect("key").to_string();
    let r = c
        .post(format!("{b}/api/apikeys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "ci", "role": "viewer"}))
        .send()
        .await
        .expect("dup");
    assert_eq!(r.status(), 409);
    let listed = c
        .get(format!("{b}/api/apikeys"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert!(listed.contains("\"ci\"") && !listed.contains(&key));
    let r = c
        .post(format!("{b}/api/points/recording_enable"))
        .header("X-API-Key", &key)
        .json(&json!({"value": true}))
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 200);
    let pt: J = r.json().await.expect("json");
    assert!(pt.to_string().contains("apikey:ci"), "{pt}");
    let r = c
        .get(format!("{b}/api/points"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("read");
    assert_eq!(r.status(), 200);
    // Operator-scoped: no admin operations.
    let r = c
        .get(format!("{b}/api/apikeys"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 403);
    let r = c
        .delete(format!("{b}/api/apikeys/ci"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{b}/api/points"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("read");
    assert_eq!(r.status(), 401);
    let audit = app
        .store
        .query_audit(&castpoint::persist::AuditFilter {
            kind: Some("apikey".into()),
            limit: 10,
            ..Default::default()
        })
        .expect("audit");
    assert_eq!(audit.len(), 2, "create and remove audited");
    app.stop().await;
}

/// GET a route and PUT the same document back: every secret (SRT
/// passphrase, RTMP key, camera password, key inside a URL) is kept, and
/// none of them is ever shown (before: `***` stored as the RTMP key, 422
/// for the SRT passphrase, the URL's key echoed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_route_written_back_keeps_its_secrets() {
    let app = start_with("", "").await;
    let b = base(&app);
    let c = reqwest::Client::new();
    let route = json!({
        "name": "r",
        "inputs": [
            {"name": "cam", "type": "srt", "mode": "listener", "addr": "127.0.0.1:0",
             "passphrase": "very secret phrase", "pbkeylen": 16},
            {"name": "ipcam", "type": "rtsp", "url": "rtsp://viewer:campassword@127.0.0.1:9/live"}
        ],
        "outputs": [
            {"name": "yt", "type": "rtmp", "url": "rtmp://127.0.0.1:9/live2/URLKEY-1234",
             "key": "SEPARATE-KEY-5678", "enabled": false},
            {"name": "web", "type": "http", "path": "r"}
        ]
    });
    let r = c
        .post(format!("{b}/api/routes"))
        .json(&route)
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let secrets = [
        "very secret phrase",
        "campassword",
        "URLKEY-1234",
        "SEPARATE-KEY-5678",
    ];
    let fetched: J = c
        .get(format!("{b}/api/routes/r"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    for s in secrets {
        assert!(!fetched.to_string().contains(s), "{s} shown: {fetched}");
    }
    assert_eq!(fetched["outputs"][0]["url"], "rtmp://127.0.0.1:9/live2/***");
    let r = c
        .put(format!("{b}/api/routes/r"))
        .json(&fetched)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // One output written back on its own, too.
    let out: J = c
        .get(format!("{b}/api/routes/r/outputs/yt"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let r = c
        .put(format!("{b}/api/routes/r/outputs/yt"))
        .json(&out)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let stored = app
        .store
        .routes()
        .expect("routes")
        .into_iter()
        .find(|(n, _)| n == "r")
        .and_then(|(_, d)| d)
        .expect("stored doc");
    let text = stored.to_string();
    for s in secrets {
        assert!(text.contains(s), "{s} lost: {text}");
    }
    assert!(!text.contains("***"), "placeholder stored: {text}");
    // A placeholder with no secret behind it is refused, not stored.
    let r = c
        .post(format!("{b}/api/routes/r/outputs"))
        .json(&json!({"name": "tw", "type": "rtmp", "url": "rtmp://127.0.0.1:9/app", "key": "***"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422);
    app.stop().await;
}

/// Anonymous Haystack clients no longer share one watch quota: a client
/// that used up its 32 watches does not lock out another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haystack_watch_quota_is_per_client() {
    let app = start_with("", "anonymous_read = true").await;
    let url = format!("{}/api/haystack/watchSub", base(&app));
    let sub = |c: reqwest::Client| {
        let url = url.clone();
        async move {
            c.post(url)
                .header("content-type", "text/zinc")
                .header("accept", "application/json")
                .body("ver:\"3.0\" watchDis:\"q\"\nid\n@cpu_usage\n")
                .send()
                .await
                .expect("watchSub")
                .json::<J>()
                .await
                .expect("json")
        }
    };
    let a = reqwest::Client::new();
    for i in 0..castpoint::protocols::haystack::watch::MAX_WATCHES_PER_USER {
        let j = sub(a.clone()).await;
        assert!(j["meta"]["watchId"].is_string(), "watch {i}: {j}");
    }
    let j = sub(a.clone()).await;
    assert!(!j["meta"]["err"].is_null(), "33rd watch of one client: {j}");
    // Another client (another loopback address) still gets watches.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let j = sub(other).await;
    assert!(j["meta"]["watchId"].is_string(), "other client: {j}");
    app.stop().await;
}
