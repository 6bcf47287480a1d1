//! Operator route API end to end: CRUD with JWT roles (admin-only changes), hot output changes, secrets write-only, desired state surviving a restart.

use std::time::Duration;

use castpoint::auth::Role;
use castpoint::auth::Users;
use castpoint::config::Config;
use serde_json::{json, Value as J};

use crate::util::{loopback, TestApp};

async fn login(c: &reqwest::Client, base: &str, u: &str, p: &str) -> String {
    let j: J = c
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": u, "password": p}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    j["token"].as_str().expect("token").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_crud_with_roles_and_restart() {
    let app = TestApp::start().await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let users = Users::new(app.store.clone(), Duration::from_secs(600)).expect("users");
    // Route changes are admin-only (issue 15); the user keeps its name.
    users.add("op", Role::Admin, "operator-pw").expect("op");
    users
        .add("view", Role::Viewer, "viewer-pw1")
        .expect("viewer");
    let c = reqwest::Client::new();
    let op = login(&c, &base, "op", "operator-pw").await;
    let view = login(&c, &base, "view", "viewer-pw1").await;
    let route = json!({
        "name": "lobby",
        "inputs": [{"name": "cam", "type": "srt", "mode": "listener", "addr": "127.0.0.1:0",
                    "passphrase": "very secret phrase", "pbkeylen": 16}],
        "outputs": [{"name": "web", "type": "http", "path": "lobby"}]
    });
    // No token, viewer token: refused. Operator: created.
    let r = c
        .post(format!("{base}/api/routes"))
        .json(&route)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{base}/api/routes"))
        .bearer_auth(&view)
        .json(&route)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("{base}/api/routes"))
        .bearer_auth(&op)
        .json(&route)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let created: J = r.json().await.expect("json");
    // Secrets are write-only.
    assert_eq!(created["inputs"][0]["passphrase"], "***");
    assert!(!created.to_string().contains("very secret phrase"));
    // Invalid documents get a 422 naming the key; duplicates a 409.
    let r = c
        .post(format!("{base}/api/routes"))
        .bearer_auth(&op)
        .json(&json!({"name": "bad", "inputs": [{"type": "udp"}]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422);
    let e: J = r.json().await.expect("json");
    assert!(e["error"].as_str().expect("error").contains("bind"), "{e}");
    let r = c
        .post(format!("{base}/api/routes"))
        .bearer_auth(&op)
        .json(&route)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 409);
    // Hot output management.
    let r = c
        .post(format!("{base}/api/routes/lobby/outputs"))
        .bearer_auth(&op)
        .json(&json!({"name": "feed", "type": "udp", "dest": "127.0.0.1:9"}))
        .send()
        .await
        .expect("add output");
    assert_eq!(r.status(), 201);
    let r = c
        .post(format!("{base}/api/routes/lobby/outputs/feed/disable"))
        .bearer_auth(&op)
        .send()
        .await
        .expect("disable");
    assert_eq!(r.status(), 200);
    let outs: J = crate::util::get_json(&c, format!("{base}/api/routes/lobby/outputs")).await;
    assert_eq!(outs.as_array().expect("outputs").len(), 2);
    assert_eq!(outs[1]["enabled"], false);
    let r = c
        .delete(format!("{base}/api/routes/lobby/outputs/web"))
        .bearer_auth(&op)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    // The audit has every change, with the user (never read anonymously).
    let audit: J = c
        .get(format!("{base}/api/audit?kind=route&target=lobby"))
        .bearer_auth(&op)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let ev = audit["events"].as_array().expect("events");
    assert_eq!(ev.len(), 4, "{audit}");
    assert_eq!(ev[0]["user"], "op");
    assert_eq!(ev[0]["detail"], "remove output");

    // Restart on the same data dir: the desired state is back.
    let app = app.restart(Config::embedded().expect("config")).await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let op = login(&c, &base, "op", "operator-pw").await;
    let r: J = crate::util::get_json(&c, format!("{base}/api/routes/lobby")).await;
    assert_eq!(r["outputs"].as_array().expect("outputs").len(), 1);
    assert_eq!(r["outputs"][0]["name"], "feed");
    assert_eq!(r["outputs"][0]["enabled"], false);
    assert!(app
        .engine
        .desired()
        .await
        .routes
        .iter()
        .any(|r| r.name == "lobby"));
    let r = c
        .delete(format!("{base}/api/routes/lobby"))
        .bearer_auth(&op)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert!(!app
        .engine
        .desired()
        .await
        .routes
        .iter()
        .any(|r| r.name == "lobby"));
    app.stop().await;
}

/// Output profiles through `/api/profiles`: validated with the file's
/// parser, stored, audited, refused while a route names them, and still
/// there (or still gone) after a restart on the same data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_crud_validates_persists_and_protects_used_profiles() {
    let mut cfg = Config::embedded().expect("config");
    loopback(&mut cfg);
    let p1 = toml::from_str(
        "number = 1\nname = \"sd\"\nvideo = \"h264\"\nwidth = 640\nheight = 360\nbitrate = 1000000",
    )
    .expect("profile toml");
    cfg.server.profile = vec![p1];
    let restart_cfg = cfg.clone();
    let app = TestApp::with_config(cfg).await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let list = crate::util::get_json(&c, format!("{base}/api/profiles")).await;
    assert_eq!(
        list["profiles"].as_array().map(|a| a.len()),
        Some(1),
        "{list}"
    );
    assert_eq!(list["profiles"][0]["name"], "sd");

    // Create profile 2; a bad key or a duplicate name is a 422 naming it.
    let hd =
        json!({"name": "hd", "video": "h264", "width": 1280, "height": 720, "bitrate": 3000000});
    let r = c
        .put(format!("{base}/api/profiles/2"))
        .json(&hd)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let r = c
        .put(format!("{base}/api/profiles/3"))
        .json(&json!({"name": "x", "width": "wide"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 422);
    let msg = r.text().await.expect("body");
    assert!(msg.contains("width"), "{msg}");
    let r = c
        .put(format!("{base}/api/profiles/3"))
        .json(&json!({"name": "hd"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 422, "duplicate name accepted");
    let r = c
        .put(format!("{base}/api/profiles/2"))
        .json(&json!({"number": 5, "name": "hd"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 422, "number mismatch accepted");
    let r = c
        .get(format!("{base}/api/profiles/99"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);

    // A route naming profile 1 protects it from deletion.
    let route = json!({
        "name": "lobby", "mode": "passthrough", "profile": 1,
        "inputs": [{"name": "in", "type": "udp", "bind": "127.0.0.1:0"}],
        "outputs": [{"name": "web", "type": "http", "path": "lobby"}]
    });
    let r = c
        .post(format!("{base}/api/routes"))
        .json(&route)
        .send()
        .await
        .expect("post route");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let r = c
        .delete(format!("{base}/api/profiles/1"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 409);
    // Changing profile 1 (a config profile) is stored as an override.
    let r = c
        .put(format!("{base}/api/profiles/1"))
        .json(
            &json!({"name": "sd", "video": "h264", "width": 480, "height": 270, "bitrate": 800000}),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let audit = crate::util::get_json(&c, format!("{base}/api/audit?kind=profile")).await;
    let n = audit["events"].as_array().map(|a| a.len()).unwrap_or(0);
    assert!(n >= 2, "profile changes audited: {audit}");

    // Same data dir: the stored profiles win over the file.
    let app = app.restart(restart_cfg.clone()).await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let one = crate::util::get_json(&c, format!("{base}/api/profiles/1")).await;
    assert_eq!(one["width"], 480, "{one}");
    let two = crate::util::get_json(&c, format!("{base}/api/profiles/2")).await;
    assert_eq!(two["name"], "hd");
    let r = c
        .delete(format!("{base}/api/profiles/2"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 200);
    let app = app.restart(restart_cfg).await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let list = crate::util::get_json(&c, format!("{base}/api/profiles")).await;
    let names: Vec<&str> = list["profiles"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["sd"], "{list}");
    app.stop().await;
}

/// `[route_defaults]` reaches every kind of route: the file's, one created
/// over REST, and the stored ones started again after a restart (which
/// then follow a changed default); a route's own key wins throughout. The
/// `effective` object is read back from the engine's running routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_defaults_apply_to_file_and_api_routes() {
    let cfg = |hold: &str| {
        let text = format!(
            "[route_defaults]\nudp_coalesce = \"{hold}\"\nfailover_timeout = \"2s\"\n\
             [[route]]\nname = \"file\"\n\
             [[route.input]]\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n"
        );
        Config::from_text("test.toml", &text, std::path::Path::new(".")).expect("valid config")
    };
    let app = crate::util::TestApp::with_config(cfg("20ms")).await;
    let base = app.http_base();
    let c = reqwest::Client::new();
    let input = json!([{"type": "udp", "bind": "127.0.0.1:0"}]);
    for doc in [
        json!({"name": "api", "inputs": input}),
        json!({"name": "own", "udp_coalesce": "off", "switch_back": true, "inputs": input}),
    ] {
        let r = c
            .post(format!("{base}/api/routes"))
            .json(&doc)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201, "{doc}");
    }
    let effective = |r: &J| {
        let e = &r["effective"];
        (
            e["udp_coalesce"].as_str().unwrap_or("?").to_string(),
            e["failover_timeout"].as_str().unwrap_or("?").to_string(),
            e["signal_timeout"].as_str().unwrap_or("?").to_string(),
            e["switch_back"].as_bool(),
        )
    };
    let want = |hold: &str, back| {
        (
            hold.to_string(),
            "2s".to_string(),
            "1s".to_string(),
            Some(back),
        )
    };
    for (name, hold, back) in [
        ("file", "20ms", false),
        ("api", "20ms", false),
        ("own", "off", true),
    ] {
        let r = crate::util::get_json(&c, format!("{base}/api/routes/{name}")).await;
        assert_eq!(effective(&r), want(hold, back), "{name}: {r}");
        // Read only: the document as written does not gain the defaults.
        assert!(r.get("failover_timeout").is_none(), "{name}: {r}");
    }
    // A PUT of what GET answered keeps following the defaults.
    let got = crate::util::get_json(&c, format!("{base}/api/routes/api")).await;
    let r = c
        .put(format!("{base}/api/routes/api"))
        .json(&got)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);

    // Restart with another default: the stored routes follow it unless they
    // write their own key.
    let app = app.restart(cfg("5ms")).await;
    let base = app.http_base();
    let list = crate::util::get_json(&c, format!("{base}/api/routes")).await;
    let routes = list["routes"].as_array().expect("routes");
    for (name, hold, back) in [
        ("file", "5ms", false),
        ("api", "5ms", false),
        ("own", "off", true),
    ] {
        let r = routes
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {list}"));
        assert_eq!(effective(r), want(hold, back), "{name}: {r}");
    }
    app.stop().await;
}
