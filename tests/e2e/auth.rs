//! REST authentication end to end: open while no user exists, then JWT with roles (viewer refused, operator allowed).

use std::time::Duration;

use castpoint::auth::Role;
use castpoint::auth::Users;
use serde_json::Value as J;

use crate::util::start;

#[tokio::test]
async fn writes_need_a_token_of_the_right_role_once_users_exist() {
    let app = start().await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let write = |token: Option<String>| {
        let mut r = c
            .post(format!("{base}/api/points/recording_enable"))
            .json(&serde_json::json!({"value": true}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // No users yet: the demo is open.
    assert_eq!(write(None).await.expect("post").status(), 200);
    let users = Users::new(app.store.clone(), Duration::from_secs(600)).expect("users");
    users
        .add("olivia", Role::Operator, "operator-pw")
        .expect("add");
    users
        .add("victor", Role::Viewer, "viewer-pw-1")
        .expect("add");
    // Now closed for writes, open for reads (anonymous_read default).
    let r = write(None).await.expect("post");
    assert_eq!(r.status(), 401);
    let j: J = r.json().await.expect("json");
    assert!(j["error"].as_str().expect("error").contains("login"));
    assert_eq!(
        c.get(format!("{base}/api/points"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    let login = |u: &'static str, p: &'static str| {
        c.post(format!("{base}/api/auth/login"))
            .json(&serde_json::json!({"username": u, "password": p}))
            .send()
    };
    assert_eq!(
        login("olivia", "wrong-password")
            .await
            .expect("login")
            .status(),
        401
    );
    let lj: J = login("victor", "viewer-pw-1")
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let viewer = lj["token"].as_str().expect("token").to_string();
    assert_eq!(lj["role"], "viewer");
    assert_eq!(write(Some(viewer)).await.expect("post").status(), 403);
    let oj: J = login("olivia", "operator-pw")
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let op = oj["token"].as_str().expect("token").to_string();
    let r = write(Some(op.clone())).await.expect("post");
    assert_eq!(r.status(), 200);
    // The audit names the user.
    let pt: J = crate::util::get_json(&c, format!("{base}/api/points/recording_enable")).await;
    assert!(pt["priority_array"]["slots"][11]["who"]
        .as_str()
        .expect("who")
        .ends_with("(olivia)"));
    assert_eq!(
        write(Some("not.a.token".into()))
            .await
            .expect("post")
            .status(),
        401
    );
    // Removing the user revokes the token.
    users.remove("olivia").expect("rm");
    assert_eq!(write(Some(op)).await.expect("post").status(), 401);
    app.stop().await;
}
