//! Issue 20 "every route is equipment": per-route point blocks appear and disappear with routes, keep their slot across restarts and reorders, and their commands act on their route only.

use std::path::Path;
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::config::Config;
use castpoint::points::{PointDb, Protocol, Source, Value};
use serde_json::json;

use crate::util;

fn routes(order: &[&str], data_dir: Option<&Path>) -> Config {
    routes_with(order, data_dir, "")
}

fn routes_with(order: &[&str], data_dir: Option<&Path>, extra: &str) -> Config {
    let mut text = format!("[telemetry]\nenabled = true\n{extra}\n");
    for name in order {
        let pin = if *name == "a" { "slot = 3\n" } else { "" };
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\n{pin}[[route.input]]\nname = \"gen\"\ntype = \"generator\"\nbitrate = 1000000\n[[route.input]]\nname = \"spare\"\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n[[route.output]]\nname = \"web\"\ntype = \"http\"\npath = \"{name}\"\n"
        ));
    }
    let mut cfg = Config::from_text("test.toml", &text, Path::new(".")).expect("valid config");
    util::loopback(&mut cfg);
    if let Some(d) = data_dir {
        cfg.server.data_dir = d.to_path_buf();
    }
    cfg
}

/// Waits until `f` holds, failing with `what` after 15 s.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn value(db: &PointDb, id: &str) -> Option<Value> {
    db.read(db.lookup(id)?)?.value
}

fn stream_enabled(app: &App, route: &str) -> Option<bool> {
    app.engine.snapshot().route(route).map(|r| r.stream_enabled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_blocks_follow_routes_keep_slots_and_command_their_route_only() {
    let cfg = routes(&["a", "b"], None);
    let data = cfg.server.data_dir.clone();
    let app = App::start(cfg).await.expect("app starts");
    let db = app.db.clone();
    // Pinned slot 3 for a, the lowest free (1) for b; blocks exist at start.
    assert_eq!(db.slot_of("a"), Some(3));
    assert_eq!(db.slot_of("b"), Some(1));
    assert!(db.lookup("route.3.route_status").is_some());
    assert!(db.lookup("route.1.output_enable.1").is_some());
    assert!(
        db.lookup("route.2.route_status").is_none(),
        "slot 2 is free"
    );
    // Input Select shows the route's own inputs.
    let sel = db.lookup("route.3.input_select").expect("input_select");
    assert_eq!(db.state_names(sel)[..3], ["Auto", "gen", "spare"]);
    // Both routes go LIVE from their generator.
    until("both routes LIVE", || {
        value(&db, "route.3.route_status") == Some(Value::Enum(1))
            && value(&db, "route.1.route_status") == Some(Value::Enum(1))
    })
    .await;
    until(
        "input bitrate measured",
        || matches!(value(&db, "route.3.input_bitrate"), Some(Value::Number(n)) if n > 0.1),
    )
    .await;
    assert_eq!(value(&db, "route.3.active_input"), Some(Value::Enum(1)));
    // Route Enable of a (priority 8, as a BMS operator): a stops, b does not.
    let src = Source::new(Protocol::Rest, None, Some("test".into()));
    let re = db.lookup("route.3.route_enable").expect("route_enable");
    db.write(re, Some(Value::Bool(false)), 8, &src)
        .expect("write accepted");
    until("route a stopped", || {
        stream_enabled(&app, "a") == Some(false)
    })
    .await;
    until("Route Status STOPPED", || {
        value(&db, "route.3.route_status") == Some(Value::Enum(3))
    })
    .await;
    assert_eq!(stream_enabled(&app, "b"), Some(true));
    assert_eq!(value(&db, "route.1.route_status"), Some(Value::Enum(1)));
    // Input 4 does not exist on this route (2 inputs): refused; the
    // write is audited like every other.
    assert!(db.write(sel, Some(Value::Enum(4)), 8, &src).is_err());
    db.write(sel, Some(Value::Enum(3)), 8, &src)
        .expect("force spare");
    until("route a forced to its spare input", || {
        app.engine
            .snapshot()
            .route("a")
            .is_some_and(|r| r.forced_input == Some(1))
    })
    .await;
    app.stop().await;

    // Restart with the routes reordered and a new route first: a keeps its
    // pin, b its stored slot, c gets the free one; a's commands survive.
    let app = App::start(routes(&["c", "b", "a"], Some(&data)))
        .await
        .expect("restart");
    let db = app.db.clone();
    assert_eq!(db.slot_of("a"), Some(3));
    assert_eq!(db.slot_of("b"), Some(1));
    assert_eq!(db.slot_of("c"), Some(2));
    assert_eq!(value(&db, "route.3.route_enable"), Some(Value::Bool(false)));
    // History is kept per slot and survives the restart.
    let ib = db.lookup("route.3.input_bitrate").expect("input_bitrate");
    assert!(
        !db.history(ib, chrono::DateTime::UNIX_EPOCH, chrono::Utc::now())
            .is_empty(),
        "route history restored"
    );
    until("route a still stopped after restart", || {
        stream_enabled(&app, "a") == Some(false)
    })
    .await;
    assert_eq!(stream_enabled(&app, "c"), Some(true));

    // REST delete of b frees slot 1 live; a route created next takes it and
    // inherits nothing of b's commands.
    let ob = db.lookup("route.1.output_enable.1").expect("b output 1");
    db.write(ob, Some(Value::Bool(false)), 8, &src)
        .expect("disable b's output");
    until("b's output disabled", || {
        app.engine
            .snapshot()
            .route("b")
            .and_then(|r| r.outputs.first().map(|o| !o.enabled))
            == Some(true)
    })
    .await;
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let r = c
        .delete(format!("{base}/api/routes/b"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    until("slot 1 freed", || {
        db.lookup("route.1.route_status").is_none()
    })
    .await;
    assert!(db.write(ob, Some(Value::Bool(true)), 8, &src).is_err());
    let r = c
        .post(format!("{base}/api/routes"))
        .json(&json!({
            "name": "d",
            "inputs": [{"name": "g", "type": "generator", "bitrate": 1000000}],
            "outputs": [{"name": "o", "type": "http", "path": "d"}]
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    until("d gets slot 1", || db.slot_of("d") == Some(1)).await;
    assert_eq!(
        value(&db, "route.1.output_enable.1"),
        Some(Value::Bool(true))
    );
    until("d LIVE", || {
        value(&db, "route.1.route_status") == Some(Value::Enum(1))
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn pinned_slots_are_validated_by_check_config() {
    let text = "[[route]]\nname = \"x\"\nslot = 5\n[[route.input]]\ntype = \"generator\"\n[[route]]\nname = \"y\"\nslot = 5\n[[route.input]]\ntype = \"generator\"\n";
    let e = Config::from_text("t.toml", text, Path::new(".")).expect_err("shared pin");
    assert!(e.to_string().contains("route[1].slot"), "{e}");
    let text = "[route_points]\nmax_routes = 4\n[[route]]\nname = \"x\"\nslot = 5\n[[route.input]]\ntype = \"generator\"\n";
    let e = Config::from_text("t.toml", text, Path::new(".")).expect_err("out of range");
    assert!(e.to_string().contains("outside 1..=4"), "{e}");
}

/// The server's Stream Enable acts on the primary route, and so does the
/// primary route's own Route Enable: the route streams only while both are
/// on, whichever was written last (docs/route-points.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_route_streams_only_while_stream_enable_and_route_enable_are_on() {
    let mut cfg = routes(&["a", "b"], None);
    cfg.server.primary_route = Some("a".into());
    let app = App::start(cfg).await.expect("app starts");
    let db = app.db.clone();
    let src = Source::new(Protocol::Bacnet, None, None);
    let se = db.lookup("stream_enable").expect("stream_enable");
    let re = db.lookup("route.3.route_enable").expect("route_enable");
    until("a streams", || stream_enabled(&app, "a") == Some(true)).await;
    db.write(re, Some(Value::Bool(false)), 8, &src)
        .expect("route off");
    until("a stopped by Route Enable", || {
        stream_enabled(&app, "a") == Some(false)
    })
    .await;
    // Stream Enable written on does not override the route's own off.
    db.write(se, Some(Value::Bool(true)), 8, &src)
        .expect("server on");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stream_enabled(&app, "a"), Some(false));
    db.write(re, None, 8, &src).expect("relinquish route off");
    until("a streams again", || {
        stream_enabled(&app, "a") == Some(true)
    })
    .await;
    db.write(se, Some(Value::Bool(false)), 8, &src)
        .expect("server off");
    until("a stopped by Stream Enable", || {
        stream_enabled(&app, "a") == Some(false)
    })
    .await;
    // Route Enable written on does not override the server's off either.
    db.write(re, Some(Value::Bool(true)), 8, &src)
        .expect("route on");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stream_enabled(&app, "a"), Some(false));
    assert_eq!(stream_enabled(&app, "b"), Some(true), "b is not primary");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_metrics_serve_each_route_block() {
    let app = App::start(routes(&["a", "b"], None)).await.expect("starts");
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let j = util::get_json(&c, format!("{base}/api/routes/a/points")).await;
    assert_eq!(j["slot"], 3);
    let points = j["points"].as_array().expect("points");
    let tpl_len = app.db.block_ids(3).len();
    assert_eq!(points.len(), tpl_len);
    assert!(points
        .iter()
        .all(|p| p["id"].as_str().is_some_and(|i| i.starts_with("route.3."))));
    let sel = util::get_json(&c, format!("{base}/api/routes/a/points/input_select")).await;
    assert_eq!(sel["states"][1], "gen");
    assert_eq!(sel["route"]["name"], "a");
    let out = util::get_json(&c, format!("{base}/api/routes/a/points/output_enable.1")).await;
    assert_eq!(out["route"]["output_name"], "web");
    // Write by the route's input name, at a BMS operator's level.
    let r = c
        .post(format!("{base}/api/routes/a/points/input_select"))
        .json(&json!({"value": "spare", "priority": 8}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let p: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        (p["value"].as_u64(), p["state"].as_str()),
        (Some(3), Some("spare"))
    );
    until("a forced to spare", || {
        app.engine
            .snapshot()
            .route("a")
            .is_some_and(|r| r.forced_input == Some(1))
    })
    .await;
    assert_eq!(
        app.engine.snapshot().route("b").map(|r| r.forced_input),
        Some(None),
        "b untouched"
    );
    for (url, want) in [
        (format!("{base}/api/routes/nope/points"), 404),
        (format!("{base}/api/routes/a/points/nope"), 404),
        (format!("{base}/api/points/route.2.route_status"), 404),
    ] {
        assert_eq!(
            c.get(&url).send().await.expect("get").status(),
            want,
            "{url}"
        );
    }
    let r = c
        .post(format!("{base}/api/routes/a/points/route_status"))
        .json(&json!({"value": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 405, "statuses are read-only");
    // Prometheus: route points carry route/slot labels, output points an
    // output label.
    until("route a published", || {
        value(&app.db, "route.3.output_status.1").is_some()
    })
    .await;
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains(r#"castpoint_point_quality{point="route.3.route_status",route="a",slot="3"}"#),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l
            .starts_with(r#"castpoint_point_value{point="route.3.output_status.1""#)
            && l.contains(r#"output="web""#)),
        "{m}"
    );
    assert!(m.contains(r#"state="spare",route="a""#), "{m}");
    assert!(!m.contains("route.2."), "free slots are not exported");
    let one = util::get_json(&c, format!("{base}/api/routes/a")).await;
    assert_eq!(one["point_slot"], 3);
    app.stop().await;
}

/// POSTs a Zinc grid to a Haystack op, JSON back (anonymous read allowed).
async fn hs(c: &reqwest::Client, base: &str, op: &str, zinc: &str) -> serde_json::Value {
    let r = c
        .post(format!("{base}/api/haystack/{op}"))
        .header("Content-Type", "text/zinc")
        .header("Accept", "application/json")
        .body(zinc.to_string())
        .send()
        .await
        .expect("haystack");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

fn hs_ids(j: &serde_json::Value) -> Vec<String> {
    j["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"]["val"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haystack_serves_one_equip_per_route_and_watches_see_removals() {
    let cfg = routes_with(&["a", "b"], None, "[haystack]\nanonymous_read = true\n");
    let app = App::start(cfg).await.expect("starts");
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let read = |filter: &str| format!("ver:\"3.0\"\nfilter\n\"{}\"\n", filter.replace('"', "\\\""));
    // One equip per route besides the server's, referencing it.
    let eq = hs(&c, &base, "read", &read("equip")).await;
    let mut ids = hs_ids(&eq);
    ids.sort();
    assert_eq!(ids, ["route.1", "route.3", "streaming-server"], "{eq}");
    // Route 3's points: equipRef to its equip, Haystack 4 tags.
    let pts = hs(&c, &base, "read", &read("point and equipRef==@route.3")).await;
    let n = app.db.block_ids(3).len();
    assert_eq!(hs_ids(&pts).len(), n, "{pts}");
    let sel = pts["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["id"]["val"] == "route.3.input_select")
        .expect("input_select")
        .clone();
    assert!(
        sel.get("cmd").is_some() && sel.get("writable").is_some(),
        "{sel}"
    );
    assert!(
        sel["enum"]
            .as_str()
            .is_some_and(|e| e.starts_with("Auto,gen,spare")),
        "{sel}"
    );
    assert_eq!(sel["siteRef"]["val"], "site");
    // Enum values of input states read by the route's own input names.
    until("route a forwards gen", || {
        value(&app.db, "route.3.active_input") == Some(Value::Enum(1))
    })
    .await;
    let ai = hs(
        &c,
        &base,
        "read",
        "ver:\"3.0\"\nid\n@route.3.active_input\n",
    )
    .await;
    assert_eq!(ai["rows"][0]["curVal"], "gen", "{ai}");
    // Nav: site -> server equip -> route equips -> points.
    let nav = hs(&c, &base, "nav", "ver:\"3.0\"\nnavId\n@streaming-server\n").await;
    assert!(hs_ids(&nav).contains(&"route.3".to_string()), "{nav}");
    let nav = hs(&c, &base, "nav", "ver:\"3.0\"\nnavId\n@route.3\n").await;
    assert_eq!(hs_ids(&nav).len(), n);
    // A watch on route b's status; deleting b reports the point removed.
    let w = hs(
        &c,
        &base,
        "watchSub",
        "ver:\"3.0\" watchDis:\"t\"\nid\n@route.1.route_status\n",
    )
    .await;
    let wid = w["meta"]["watchId"].as_str().expect("watchId").to_string();
    let r = c
        .delete(format!("{base}/api/routes/b"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    until("slot 1 freed", || {
        app.db.lookup("route.1.route_status").is_none()
    })
    .await;
    let poll = hs(
        &c,
        &base,
        "watchPoll",
        &format!("ver:\"3.0\" watchId:\"{wid}\"\nempty\n"),
    )
    .await;
    let rows = poll["rows"].as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|r| r["id"]["val"] == "route.1.route_status" && r.get("removed").is_some()),
        "{poll}"
    );
    let eq = hs(&c, &base, "read", &read("equip")).await;
    assert!(!hs_ids(&eq).contains(&"route.1".to_string()));
    app.stop().await;
}

/// Issue 20 "a slot never changes for its route ... across renames": a REST
/// rename (PUT with another name) keeps the route's slot and its block's
/// commands, also after a restart; a rename onto a taken name changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_rename_keeps_the_slot_and_the_commands() {
    let cfg = routes(&["b"], None);
    let data = cfg.server.data_dir.clone();
    let app = App::start(cfg).await.expect("app starts");
    let db = app.db.clone();
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let doc = |name: &str| {
        json!({
            "name": name,
            "inputs": [{"name": "g", "type": "generator", "bitrate": 1000000}],
            "outputs": [{"name": "o", "type": "http", "path": "x"}]
        })
    };
    let r = c
        .post(format!("{base}/api/routes"))
        .json(&doc("x"))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    until("x gets slot 2", || db.slot_of("x") == Some(2)).await;
    let src = Source::new(Protocol::Rest, None, Some("test".into()));
    let re = db.lookup("route.2.route_enable").expect("route_enable");
    db.write(re, Some(Value::Bool(false)), 8, &src)
        .expect("stop x");
    until("x stopped", || stream_enabled(&app, "x") == Some(false)).await;

    // Onto a taken name: refused, nothing moves.
    let r = c
        .put(format!("{base}/api/routes/x"))
        .json(&doc("b"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 409, "{:?}", r.text().await);
    assert_eq!(db.slot_of("x"), Some(2));
    assert!(db.pending_renames().is_empty());
    // The primary route (the file's first) keeps the name the file gives it.
    let mut bdoc = doc("bb");
    bdoc["outputs"][0]["path"] = json!("b");
    let r = c
        .put(format!("{base}/api/routes/b"))
        .json(&bdoc)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 409, "{:?}", r.text().await);
    assert_eq!(db.slot_of("b"), Some(1));

    let r = c
        .put(format!("{base}/api/routes/x"))
        .json(&doc("y"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    until("y holds slot 2", || {
        db.slot_of("y") == Some(2) && db.slot_of("x").is_none()
    })
    .await;
    let pa = db.read(re).expect("route_enable state");
    assert_eq!(pa.value, Some(Value::Bool(false)), "command kept");
    assert_eq!(pa.level, Some(8));
    until("y stays stopped by its Route Enable", || {
        stream_enabled(&app, "y") == Some(false)
    })
    .await;
    let r = c
        .get(format!("{base}/api/routes/x"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    app.stop().await;

    let app = App::start(routes(&["b"], Some(&data)))
        .await
        .expect("restart");
    let db = app.db.clone();
    assert_eq!(db.slot_of("y"), Some(2));
    assert_eq!(db.slot_of("x"), None);
    assert_eq!(value(&db, "route.2.route_enable"), Some(Value::Bool(false)));
    app.stop().await;
}
