//! HTTP API end to end: seed endpoints, /api/points, writes and their errors.

use serde_json::Value as J;

use crate::util::start;

#[tokio::test]
async fn points_list_has_23_points_with_addresses() {
    let app = start().await;
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    let v: J = reqwest::get(format!("{base}/api/points"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let a = v.as_array().expect("array");
    assert_eq!(a.len(), 23);
    for p in a {
        assert!(p["addresses"]["bacnet"].is_string(), "{p}");
        assert!(
            !p["addresses"]["modbus"]
                .as_array()
                .expect("modbus")
                .is_empty(),
            "{p}"
        );
        assert!(
            !p["addresses"]["http"].as_array().expect("http").is_empty(),
            "{p}"
        );
        assert!(p["status"].is_string());
    }
    let streams = a
        .iter()
        .find(|p| p["id"] == "active_streams")
        .expect("active_streams");
    assert_eq!(streams["addresses"]["bacnet"], "AI0");
    assert_eq!(streams["addresses"]["modbus"][0], "30001");
    app.stop().await;
}

#[tokio::test]
async fn stream_start_stop_round_trip() {
    let app = start().await;
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/api/stream/stop"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let p: J = crate::util::get_json(&c, format!("{base}/api/points/stream_enable")).await;
    assert_eq!(p["value"], false);
    assert_eq!(p["priority_array"]["slots"][11]["value"], false);
    assert!(p["priority_array"]["slots"][11]["who"]
        .as_str()
        .expect("who")
        .starts_with("rest 127.0.0.1:"));
    c.post(format!("{base}/api/stream/start"))
        .send()
        .await
        .expect("post");
    let p: J = crate::util::get_json(&c, format!("{base}/api/points/stream_enable")).await;
    assert_eq!(p["value"], true);
    app.stop().await;
}

#[tokio::test]
async fn bad_writes_get_json_4xx() {
    let app = start().await;
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    let c = reqwest::Client::new();
    let cases: Vec<(&str, &str, u16)> = vec![
        ("input_select", r#"{"value": 99}"#, 422),
        ("input_select", r#"{"value": "x"}"#, 422),
        ("input_select", r#"{"value": 2, "priority": 0}"#, 422),
        ("input_select", r#"{"value": 2, "prio": 3}"#, 400),
        ("input_select", r#"[1]"#, 400),
        ("input_select", r#"{"value": "#, 400),
        ("cpu_usage", r#"{"value": 1}"#, 405),
        ("nope", r#"{"value": 1}"#, 404),
    ];
    for (id, body, want) in cases {
        let r = c
            .post(format!("{base}/api/points/{id}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), want, "{id} {body}");
        let j: J = r.json().await.expect("json error body");
        assert!(j["error"].is_string(), "{j}");
    }
    // A priority-8 write overrides, null relinquishes.
    let r: J = c
        .post(format!("{base}/api/points/input_select"))
        .json(&serde_json::json!({"value": 3, "priority": 8}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(r["value"], 3.0);
    assert_eq!(r["status"], "overridden");
    let r: J = c
        .post(format!("{base}/api/points/input_select"))
        .json(&serde_json::json!({"value": null, "priority": 8}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(r["value"], 0.0);
    assert_eq!(r["status"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn measurements_without_source_are_unavailable() {
    let app = start().await;
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    let v: J = reqwest::get(format!("{base}/api/points/gpu_usage"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    // No invented numbers: either a real value with ok, or null with a non-ok status.
    if v["value"].is_null() {
        assert_ne!(v["status"], "ok");
    }
    app.stop().await;
}
