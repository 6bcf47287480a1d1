//! Hostile nesting over real sockets (issue 15 item 1): deep Zinc, filters and JSON answer error grids / 400 and the server keeps serving.

use crate::util::start;

/// Every deep request below, then proof the process is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_refused_and_the_server_keeps_serving() {
    // The embedded config: anonymous Haystack reads on, no user (REST open),
    // exactly what an unauthenticated attacker meets on a fresh install.
    let app = start().await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let hs = format!("{base}/api/haystack");

    // The one-line crash: `read?id=` and 4,000 `[` (raw and %-encoded),
    // and a filter of 4,000 `(`.
    for q in [
        format!("read?id={}", "[".repeat(4000)),
        format!("read?id={}", "%5B".repeat(4000)),
        format!("read?filter={}point", "%28".repeat(4000)),
    ] {
        let r = c
            .get(format!("{hs}/{q}"))
            .header("Accept", "text/zinc")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{}", &q[..20]);
        let z = r.text().await.expect("body");
        let meta = z.lines().next().unwrap_or_default();
        assert!(
            meta.starts_with("ver:\"3.0\"") && meta.contains(" err "),
            "{z}"
        );
        assert!(z.contains("nesting deeper than 64"), "{z}");
    }

    // Deep request grids: Zinc dicts 5,000 deep, nested grids 2,000 deep,
    // lists 100,000 deep; Haystack JSON 100,000 deep.
    let zinc = |cell: String| format!("ver:\"3.0\"\nid\n{cell}\n");
    for (ct, body, why) in [
        (
            "text/zinc",
            zinc("{a:".repeat(5000)),
            "nesting deeper than 64",
        ),
        (
            "text/zinc",
            zinc("<<\nver:\"3.0\"\nv\n".repeat(2000)),
            "nesting deeper than 64",
        ),
        (
            "text/zinc",
            zinc("[".repeat(100_000)),
            "nesting deeper than 64",
        ),
        ("application/json", "[".repeat(100_000), "recursion limit"),
    ] {
        let r = c
            .post(format!("{hs}/read"))
            .header("Content-Type", ct)
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200, "{ct}");
        let j: serde_json::Value = r.json().await.expect("json");
        let dis = j["meta"]["dis"].as_str().unwrap_or_default();
        assert!(j["meta"]["err"].is_object() && dis.contains(why), "{j}");
    }

    // REST JSON bodies (serde_json's recursion limit): 400, not a crash.
    for (m, path) in [
        (reqwest::Method::POST, "/api/routes"),
        (reqwest::Method::PUT, "/api/routes/lobby"),
        (reqwest::Method::POST, "/api/auth/login"),
        (reqwest::Method::PUT, "/api/profiles/1"),
        (reqwest::Method::POST, "/api/points/input_select"),
    ] {
        let r = c
            .request(m, format!("{base}{path}"))
            .header("Content-Type", "application/json")
            .body("[".repeat(100_000))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400, "{path}");
        let t = r.text().await.expect("body");
        assert!(t.contains("recursion limit"), "{path}: {t}");
    }

    // Still serving: the REST API and a real Haystack read.
    let r = c
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{hs}/read?filter=point"))
        .header("Accept", "application/json")
        .send()
        .await
        .expect("read");
    let j: serde_json::Value = r.json().await.expect("json");
    assert!(j["rows"].as_array().is_some_and(|r| !r.is_empty()), "{j}");
    app.stop().await;
}
