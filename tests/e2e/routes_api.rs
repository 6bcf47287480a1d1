//! Operator route API end to end: CRUD with JWT roles, hot output changes, secrets write-only, desired state surviving a restart.

use std::time::Duration;

use castpoint::app::App;
use castpoint::auth::Users;
use castpoint::config::Config;
use castpoint::protocols::haystack::auth::Role;
use serde_json::{json, Value as J};

use crate::util::loopback;

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
    let mut cfg = Config::embedded().expect("config");
    loopback(&mut cfg);
    let data = cfg.server.data_dir.clone();
    let app = App::start(cfg).await.expect("start");
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let users = Users::new(app.store.clone(), Duration::from_secs(600)).expect("users");
    users.add("op", Role::Operator, "operator-pw").expect("op");
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
    // The audit has every change, with the user.
    let audit: J =
        crate::util::get_json(&c, format!("{base}/api/audit?kind=route&target=lobby")).await;
    let ev = audit["events"].as_array().expect("events");
    assert_eq!(ev.len(), 4, "{audit}");
    assert_eq!(ev[0]["user"], "op");
    assert_eq!(ev[0]["detail"], "remove output");
    app.stop().await;

    // Restart on the same data dir: the desired state is back.
    let mut cfg = Config::embedded().expect("config");
    loopback(&mut cfg);
    cfg.server.data_dir = data;
    let app = App::start(cfg).await.expect("restart");
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
