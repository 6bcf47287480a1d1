//! Haystack HTTP end to end: SCRAM login, ops, filters, pointWrite sharing BACnet's priority array, hisRead ranges, watches, formats and malformed input — all over real sockets.

use std::time::Duration;

use base64::Engine as _;
use castpoint::auth::Role;
use castpoint::config::Config;
use castpoint::points::{Protocol, Quality, Sample, Source, Value};
use castpoint::protocols::haystack::auth::user_entry;
use chrono::{TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value as J;
use sha2::{Digest, Sha256};

use crate::util::{loopback, TestApp};

const OP_PW: &str = "op-secret";
const VIEW_PW: &str = "view-secret";

/// Starts castpoint with an operator and a viewer, plus extra `[haystack]` keys.
async fn start_with(extra: &str) -> (TestApp, String) {
    let mut cfg = Config::embedded().expect("embedded config");
    loopback(&mut cfg);
    let users = format!(
        "{}{}",
        user_entry("op", Role::Operator, OP_PW, 4096).expect("entry"),
        user_entry("viewer", Role::Viewer, VIEW_PW, 4096).expect("entry")
    )
    .replace("[[haystack.user]]", "[[user]]");
    let text = format!("{extra}\n{users}");
    cfg.server.haystack = castpoint::config::section_from_str("haystack", &text).expect("haystack");
    let app = TestApp::with_config(cfg).await;
    let base = format!(
        "http://{}/api/haystack",
        app.addrs.http.expect("http bound")
    );
    (app, base)
}

async fn start() -> (TestApp, String) {
    start_with("").await
}

fn b64(b: &[u8], url: bool) -> String {
    if url {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
    }
}

fn unb64(s: &str) -> Vec<u8> {
    let t = s.trim().replace('-', "+").replace('_', "/");
    let t = t.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(t)
        .expect("server base64")
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac key");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn param<'a>(h: &'a str, name: &str) -> &'a str {
    h.split([',', ' '])
        .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {h}"))
}

/// Logs in with HELLO -> SCRAM (an independent client-side implementation)
/// and returns the bearer token, or the HTTP status that stopped it.
async fn login(base: &str, user: &str, pw: &str, url: bool) -> Result<String, u16> {
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{base}/about"))
        .header(
            "Authorization",
            format!("HELLO username={}", b64(user.as_bytes(), url)),
        )
        .send()
        .await
        .expect("hello");
    assert_eq!(r.status(), 401);
    let h = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(h.contains("hash=SHA-256"), "{h}");
    let token = param(&h, "handshakeToken").to_string();
    let cnonce = "0123456789abcdef01234567";
    let c1_bare = format!("n={user},r={cnonce}");
    let r = c
        .get(format!("{base}/about"))
        .header(
            "Authorization",
            format!(
                "SCRAM handshakeToken={token}, data={}",
                b64(format!("n,,{c1_bare}").as_bytes(), url)
            ),
        )
        .send()
        .await
        .expect("first");
    if r.status() != 401 {
        return Err(r.status().as_u16());
    }
    let h = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    let s1 = String::from_utf8(unb64(param(&h, "data"))).expect("utf8");
    let attr = |k: &str| {
        s1.split(',')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .expect("attr")
            .to_string()
    };
    let nonce = attr("r");
    assert!(nonce.starts_with(cnonce));
    let salt = unb64(&attr("s"));
    let iters: u32 = attr("i").parse().expect("iterations");
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(pw.as_bytes(), &salt, iters, &mut salted);
    let ck = hmac(&salted, b"Client Key");
    let sk = Sha256::digest(&ck);
    let without = format!("c=biws,r={nonce}");
    let am = format!("{c1_bare},{s1},{without}");
    let sig = hmac(&sk, am.as_bytes());
    let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    let fin = format!("{without},p={}", b64(&proof, url));
    let r = c
        .get(format!("{base}/about"))
        .header(
            "Authorization",
            format!(
                "SCRAM handshakeToken={token}, data={}",
                b64(fin.as_bytes(), url)
            ),
        )
        .send()
        .await
        .expect("final");
    if r.status() != 200 {
        return Err(r.status().as_u16());
    }
    let info = r.headers()["authentication-info"]
        .to_str()
        .expect("ascii")
        .to_string();
    // The server proves it knows the password too.
    let server_key = hmac(&salted, b"Server Key");
    let expect = hmac(&server_key, am.as_bytes());
    let v = String::from_utf8(unb64(param(&info, "data"))).expect("utf8");
    assert_eq!(unb64(v.strip_prefix("v=").expect("v=")), expect);
    Ok(param(&info, "authToken").to_string())
}

/// A logged-in Haystack client speaking Zinc or JSON.
struct Hs {
    base: String,
    token: Option<String>,
    c: reqwest::Client,
}

impl Hs {
    async fn new(base: &str, user: &str, pw: &str) -> Hs {
        let token = login(base, user, pw, false).await.expect("login");
        Hs {
            base: base.to_string(),
            token: Some(token),
            c: reqwest::Client::new(),
        }
    }

    fn anon(base: &str) -> Hs {
        Hs {
            base: base.to_string(),
            token: None,
            c: reqwest::Client::new(),
        }
    }

    fn req(&self, m: reqwest::Method, op: &str) -> reqwest::RequestBuilder {
        let mut r = self.c.request(m, format!("{}/{op}", self.base));
        if let Some(t) = &self.token {
            r = r.header("Authorization", format!("BEARER authToken={t}"));
        }
        r
    }

    /// POSTs a Zinc request grid, asks for JSON back.
    async fn post(&self, op: &str, zinc: &str) -> (u16, J) {
        let r = self
            .req(reqwest::Method::POST, op)
            .header("Content-Type", "text/zinc")
            .header("Accept", "application/json")
            .body(zinc.to_string())
            .send()
            .await
            .expect("post");
        let st = r.status().as_u16();
        let text = r.text().await.expect("body");
        (st, serde_json::from_str(&text).unwrap_or(J::String(text)))
    }

    async fn ok(&self, op: &str, zinc: &str) -> J {
        let (st, j) = self.post(op, zinc).await;
        assert_eq!(st, 200, "{op}: {j}");
        assert!(j["meta"].get("err").is_none(), "{op} error grid: {j}");
        j
    }

    async fn err(&self, op: &str, zinc: &str) -> String {
        let (st, j) = self.post(op, zinc).await;
        assert_eq!(st, 200, "{op}: {j}");
        assert!(
            j["meta"].get("err").is_some(),
            "{op} expected an error grid: {j}"
        );
        j["meta"]["dis"].as_str().expect("dis").to_string()
    }

    async fn read(&self, filter: &str) -> Vec<J> {
        let q = filter.replace('\\', "\\\\").replace('"', "\\\"");
        let j = self
            .ok("read", &format!("ver:\"3.0\"\nfilter\n\"{q}\"\n"))
            .await;
        j["rows"].as_array().expect("rows").clone()
    }
}

fn ids(rows: &[J]) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| r["id"]["val"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn scram_login_bearer_and_refusals() {
    // A short lifetime so expiry is observable; long enough that a debug
    // build's PBKDF2 on a loaded 2-core machine cannot expire the token
    // between login and first use (it did with 1 s).
    let (app, base) = start_with("token_ttl = \"3s\"").await;
    // No credentials and no anonymous mode: 401.
    let r = reqwest::get(format!("{base}/about")).await.expect("get");
    assert_eq!(r.status(), 401);
    // Wrong password and unknown user fail at the proof: 403.
    assert_eq!(login(&base, "op", "bad", false).await, Err(403));
    assert_eq!(login(&base, "nobody", "x", false).await, Err(403));
    // Both base64 alphabets log in (the token used below is taken last).
    let _t2 = login(&base, "op", OP_PW, true).await.expect("url");
    // Taken before the login, so the token cannot be older than this.
    let issued = std::time::Instant::now();
    let t1 = login(&base, "op", OP_PW, false).await.expect("std");
    let c = reqwest::Client::new();
    let about = |t: String| {
        c.get(format!("{base}/about"))
            .header("Authorization", format!("BEARER authToken={t}"))
            .send()
    };
    let r = about(t1.clone()).await.expect("about");
    assert_eq!(r.status(), 200);
    let z = r.text().await.expect("zinc");
    assert!(z.starts_with("ver:\"3.0\"\n"), "{z}");
    assert!(z.contains("\"op\""), "whoami in about: {z}");
    assert_eq!(about("bogus".into()).await.expect("bogus").status(), 403);
    // Tokens expire: 403 tells the client to authenticate again. Asked
    // until it happens (bounded), and never before the lifetime is over.
    let deadline = issued + Duration::from_secs(15);
    loop {
        let s = about(t1.clone()).await.expect("expired").status();
        if s == 403 {
            assert!(
                issued.elapsed() >= Duration::from_millis(2900),
                "expired early"
            );
            break;
        }
        assert_eq!(s, 200);
        assert!(std::time::Instant::now() < deadline, "token never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn read_filters_cover_the_grammar() {
    let (app, base) = start().await;
    let hs = Hs::new(&base, "viewer", VIEW_PW).await;
    let db = app.db.clone();
    let cpu = db.lookup("cpu_usage").expect("cpu");
    db.set(cpu, Some(Value::Number(75.0)), Quality::Ok, None)
        .expect("set");
    let n = |f: &'static str| {
        let hs = &hs;
        async move { hs.read(f).await.len() }
    };
    assert_eq!(n("point").await, 23);
    assert_eq!(n("site or equip").await, 2);
    assert_eq!(n("sensor").await, 17);
    assert_eq!(n("point and (cmd or sp)").await, 6);
    assert_eq!(n("point and not writable").await, 17);
    assert_eq!(n("not point").await, 2);
    assert_eq!(n("kind == \"Bool\"").await, 4);
    assert_eq!(n("enum").await, 7);
    assert_eq!(n("unit == \"_Gbps\"").await, 2);
    assert_eq!(n("point and his and kind != \"Str\"").await, 16);
    assert_eq!(n("curVal > 50%").await, 1);
    assert_eq!(n("curVal >= 75% and curVal <= 75%").await, 1);
    assert_eq!(n("unit and curVal < 50%").await, 0);
    // Unitless numbers compare with any unit; different units never do.
    assert_eq!(n("curVal < 50").await, 2);
    assert_eq!(n("curVal > 1ms").await, 0);
    assert_eq!(n("curVal > \"A\"").await, 1);
    assert_eq!(n("maxVal >= 100000").await, 2);
    assert_eq!(n("equipRef->siteRef->dis == \"castpoint site\"").await, 23);
    assert_eq!(n("equipRef->videoStreamingServer").await, 23);
    assert_eq!(n("equipRef->siteRef->nope").await, 0);
    assert_eq!(n("curStatus == \"unknown\" and sensor").await, 15);
    assert_eq!(n("writable and writeLevel == 17").await, 6);
    assert_eq!(n("id == @active_streams").await, 1);
    let r = hs.read("bacnetCur == \"AI0\"").await;
    assert_eq!(ids(&r), ["active_streams"]);
    assert_eq!(
        r[0]["modbusAddr"].as_str().map(|s| s.starts_with("30001")),
        Some(true)
    );
    // The measured value, its unit and status.
    let cpu = hs.read("castpointId == \"cpu_usage\"").await;
    assert_eq!(cpu[0]["curVal"]["val"], 75.0);
    assert_eq!(cpu[0]["curVal"]["unit"], "%");
    assert_eq!(cpu[0]["curStatus"], "ok");
    let gpu = hs.read("castpointId == \"gpu_usage\"").await;
    assert!(
        gpu[0].get("curVal").is_none(),
        "no invented value: {}",
        gpu[0]
    );
    assert!(gpu[0]["curErr"].is_string());
    // Enums publish the state name.
    let ss = db.lookup("server_status").expect("ss");
    db.set(ss, Some(Value::Enum(2)), Quality::Ok, None)
        .expect("set");
    let s = hs.read("castpointId == \"server_status\"").await;
    assert_eq!(s[0]["curVal"], "WARNING");
    assert_eq!(s[0]["enum"], "OK,WARNING,FAULT");
    assert_eq!(s[0]["kind"], "Str");
    // limit
    let j = hs
        .ok("read", "ver:\"3.0\"\nfilter,limit\n\"point\",3\n")
        .await;
    assert_eq!(j["rows"].as_array().expect("rows").len(), 3);
    // Bad filters are error grids.
    for bad in [
        "point and (",
        "==",
        "curVal > ",
        "a->",
        "\u{00e9}\u{1F600} or",
    ] {
        let q = bad.replace('"', "\\\"");
        let e = hs
            .err("read", &format!("ver:\"3.0\"\nfilter\n\"{q}\"\n"))
            .await;
        assert!(e.contains("filter"), "{e}");
    }
    app.stop().await;
}

#[tokio::test]
async fn read_by_ids_get_and_json_requests() {
    let (app, base) = start().await;
    let hs = Hs::new(&base, "viewer", VIEW_PW).await;
    let j = hs
        .ok("read", "ver:\"3.0\"\nid\n@site\n@nope\n@stream_enable\n")
        .await;
    let rows = j["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["id"]["val"], "site");
    assert_eq!(rows[1], serde_json::json!({}));
    assert_eq!(rows[2]["curVal"], true);
    assert!(rows[2]["writable"].is_object());
    assert!(rows[2]["cmd"].is_object());
    // GET with query parameters.
    let r = hs
        .req(reqwest::Method::GET, "read?id=@input_select")
        .header("Accept", "application/json")
        .send()
        .await
        .expect("get");
    let j: J = r.json().await.expect("json");
    assert_eq!(j["rows"][0]["sp"]["_kind"], "marker");
    // A Haystack JSON request grid.
    let body = serde_json::json!({
        "_kind": "grid", "meta": {"ver": "3.0"}, "cols": [{"name": "filter"}],
        "rows": [{"filter": "site"}]
    });
    let r = hs
        .req(reqwest::Method::POST, "read")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ct"),
        "text/zinc; charset=utf-8"
    );
    let z = r.text().await.expect("zinc");
    assert!(z.contains("@site"), "{z}");
    app.stop().await;
}

#[tokio::test]
async fn point_write_shares_bacnet_priority_array() {
    let (app, base) = start().await;
    let op = Hs::new(&base, "op", OP_PW).await;
    let db = app.db.clone();
    let pid = db.lookup("input_select").expect("input_select");
    // A BACnet write at priority 8 shows as Haystack level 8.
    let bacnet = Source::new(Protocol::Bacnet, None, None);
    db.write(pid, Some(Value::Number(2.0)), 8, &bacnet)
        .expect("bacnet write");
    let arr = op
        .ok("pointWrite", "ver:\"3.0\"\nid\n@input_select\n")
        .await;
    let rows = arr["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 17);
    assert_eq!(rows[7]["level"], 8);
    assert_eq!(rows[7]["val"], 2);
    assert!(rows[7]["who"].as_str().expect("who").contains("bacnet"));
    assert_eq!(rows[16]["level"], 17);
    assert_eq!(rows[16]["val"], 0);
    // A Haystack level-8 write replaces the same slot.
    op.ok(
        "pointWrite",
        "ver:\"3.0\"\nid,level,val\n@input_select,8,5\n",
    )
    .await;
    let pa = db.priority_array(pid).expect("pa");
    let slot = pa.slots[7].as_ref().expect("slot 8");
    assert_eq!(slot.value, Value::Number(5.0));
    assert_eq!(slot.who.protocol, Protocol::Haystack);
    assert_eq!(slot.who.user.as_deref(), Some("op"));
    assert!(slot.who.peer.is_some());
    assert_eq!(db.read(pid).expect("state").value, Some(Value::Number(5.0)));
    // Relinquish (null val) falls back to the default; level 17 sets it.
    op.ok(
        "pointWrite",
        "ver:\"3.0\"\nid,level,val\n@input_select,8,N\n",
    )
    .await;
    op.ok(
        "pointWrite",
        "ver:\"3.0\"\nid,level,val\n@input_select,17,4\n",
    )
    .await;
    assert_eq!(db.read(pid).expect("state").value, Some(Value::Number(4.0)));
    let rec = op.read("castpointId == \"input_select\"").await;
    assert_eq!(rec[0]["writeLevel"], 17);
    assert_eq!(rec[0]["curVal"], 4);
    // Bool command.
    op.ok(
        "pointWrite",
        "ver:\"3.0\"\nid,level,val\n@stream_enable,10,F\n",
    )
    .await;
    let se = db.lookup("stream_enable").expect("se");
    assert_eq!(db.read(se).expect("state").value, Some(Value::Bool(false)));
    // Refusals are error grids.
    for (req, why) in [
        ("@input_select,0,1", "level"),
        ("@input_select,18,1", "level"),
        ("@input_select,8,99", "range"),
        ("@input_select,8,\"x\"", "Number"),
        ("@input_select,17,N", "null"),
        ("@cpu_usage,8,1", "not writable"),
        ("@nope,8,1", "unknown"),
    ] {
        let e = op
            .err("pointWrite", &format!("ver:\"3.0\"\nid,level,val\n{req}\n"))
            .await;
        assert!(e.contains(why), "{req}: {e}");
    }
    // A viewer may read the array but not write.
    let viewer = Hs::new(&base, "viewer", VIEW_PW).await;
    viewer
        .ok("pointWrite", "ver:\"3.0\"\nid\n@input_select\n")
        .await;
    let e = viewer
        .err(
            "pointWrite",
            "ver:\"3.0\"\nid,level,val\n@input_select,8,1\n",
        )
        .await;
    assert!(e.contains("permission"), "{e}");
    app.stop().await;
}

#[tokio::test]
async fn anonymous_read_never_writes() {
    let (app, base) = start_with("anonymous_read = true").await;
    let anon = Hs::anon(&base);
    assert_eq!(anon.read("point").await.len(), 23);
    let (st, _) = anon
        .post(
            "pointWrite",
            "ver:\"3.0\"\nid,level,val\n@input_select,8,1\n",
        )
        .await;
    assert_eq!(st, 401);
    let (st, _) = anon
        .post(
            "invokeAction",
            "ver:\"3.0\" id:@streaming-server action:\"restart\"\nempty\n",
        )
        .await;
    assert_eq!(st, 401);
    let pid = app.db.lookup("input_select").expect("pid");
    assert!(app.db.priority_array(pid).expect("pa").slots[7].is_none());
    app.stop().await;
}

#[tokio::test]
async fn his_read_ranges() {
    let (app, base) = start().await;
    let hs = Hs::new(&base, "viewer", VIEW_PW).await;
    let db = app.db.clone();
    let pid = db.lookup("connected_viewers").expect("viewers");
    let now = Utc::now();
    let today = now.date_naive();
    let yday = today.pred_opt().expect("yesterday");
    let at =
        |d: chrono::NaiveDate, h: u32| Utc.from_utc_datetime(&d.and_hms_opt(h, 0, 0).expect("t"));
    for (t, v) in [
        (at(yday, 1), 10.0),
        (at(yday, 2), 20.0),
        (at(today, 0), 30.0),
    ] {
        db.insert_history(
            pid,
            Sample {
                at: t,
                value: Value::Number(v),
            },
        );
    }
    // And one live sample through set().
    db.set(pid, Some(Value::Number(40.0)), Quality::Ok, None)
        .expect("set");
    let his = |range: String| {
        let hs = &hs;
        async move {
            let j = hs
                .ok(
                    "hisRead",
                    &format!("ver:\"3.0\"\nid,range\n@connected_viewers,\"{range}\"\n"),
                )
                .await;
            j["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| r["val"].as_f64().expect("val"))
                .collect::<Vec<f64>>()
        }
    };
    assert_eq!(his("yesterday".into()).await, [10.0, 20.0]);
    assert_eq!(his("today".into()).await, [30.0, 40.0]);
    assert_eq!(his(yday.to_string()).await, [10.0, 20.0]);
    assert_eq!(
        his(format!("{yday},{today}")).await,
        [10.0, 20.0, 30.0, 40.0]
    );
    let a = at(yday, 2).to_rfc3339();
    let b = at(today, 0).to_rfc3339();
    assert_eq!(his(format!("{a} UTC,{b} UTC")).await, [20.0]);
    assert_eq!(his(format!("{b} UTC")).await, [30.0, 40.0]);
    // Several ids: ts + v0, v1 columns with id meta.
    let j = hs
        .ok(
            "hisRead",
            "ver:\"3.0\" range:\"today\"\nid\n@connected_viewers\n@active_streams\n",
        )
        .await;
    assert_eq!(j["cols"][1]["meta"]["id"]["val"], "connected_viewers");
    assert_eq!(j["cols"][2]["name"], "v1");
    for bad in [
        "ver:\"3.0\"\nid,range\n@connected_viewers,\"someday\"\n",
        "ver:\"3.0\"\nid,range\n@nope,\"today\"\n",
        "ver:\"3.0\"\nid\n@connected_viewers\n",
    ] {
        hs.err("hisRead", bad).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn watches_poll_changes_and_expire() {
    let (app, base) = start().await;
    let hs = Hs::new(&base, "viewer", VIEW_PW).await;
    let db = app.db.clone();
    let j = hs
        .ok(
            "watchSub",
            "ver:\"3.0\" watchDis:\"test\" lease:30s\nid\n@cpu_usage\n@stream_enable\n@nope\n",
        )
        .await;
    let wid = j["meta"]["watchId"].as_str().expect("watchId").to_string();
    assert_eq!(j["rows"].as_array().expect("rows").len(), 3);
    let poll = |refresh: bool| {
        let hs = &hs;
        let wid = wid.clone();
        async move {
            let r = if refresh { " refresh" } else { "" };
            let j = hs
                .ok(
                    "watchPoll",
                    &format!("ver:\"3.0\" watchId:\"{wid}\"{r}\nempty\n"),
                )
                .await;
            ids(j["rows"].as_array().expect("rows"))
        }
    };
    assert!(poll(false).await.is_empty());
    let cpu = db.lookup("cpu_usage").expect("cpu");
    db.set(cpu, Some(Value::Number(12.0)), Quality::Ok, None)
        .expect("set");
    // A point outside the watch changing is not reported.
    let mem = db.lookup("memory_usage").expect("mem");
    db.set(mem, Some(Value::Number(12.0)), Quality::Ok, None)
        .expect("set");
    assert_eq!(poll(false).await, ["cpu_usage"]);
    assert!(poll(false).await.is_empty());
    assert_eq!(poll(true).await, ["cpu_usage", "stream_enable"]);
    // Another user cannot poll this watch.
    let other = Hs::new(&base, "op", OP_PW).await;
    other
        .err(
            "watchPoll",
            &format!("ver:\"3.0\" watchId:\"{wid}\"\nempty\n"),
        )
        .await;
    // Remove one record, then close.
    hs.ok(
        "watchUnsub",
        &format!("ver:\"3.0\" watchId:\"{wid}\"\nid\n@stream_enable\n"),
    )
    .await;
    assert_eq!(poll(true).await, ["cpu_usage"]);
    hs.ok(
        "watchUnsub",
        &format!("ver:\"3.0\" watchId:\"{wid}\" close\nempty\n"),
    )
    .await;
    hs.err(
        "watchPoll",
        &format!("ver:\"3.0\" watchId:\"{wid}\"\nempty\n"),
    )
    .await;
    // Leases expire.
    let j = hs
        .ok(
            "watchSub",
            "ver:\"3.0\" watchDis:\"short\" lease:1s\nid\n@cpu_usage\n",
        )
        .await;
    let wid = j["meta"]["watchId"].as_str().expect("watchId").to_string();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let e = hs
        .err(
            "watchPoll",
            &format!("ver:\"3.0\" watchId:\"{wid}\"\nempty\n"),
        )
        .await;
    assert!(e.contains("expired"), "{e}");
    // Closed and expired watches free their places: many subscribe/close
    // cycles never lock the user out.
    for _ in 0..50 {
        let j = hs
            .ok(
                "watchSub",
                "ver:\"3.0\" watchDis:\"cycle\"\nid\n@cpu_usage\n",
            )
            .await;
        let wid = j["meta"]["watchId"].as_str().expect("watchId").to_string();
        hs.ok(
            "watchUnsub",
            &format!("ver:\"3.0\" watchId:\"{wid}\" close\nempty\n"),
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn invoke_action_restart_and_nav() {
    let (app, base) = start().await;
    let op = Hs::new(&base, "op", OP_PW).await;
    let j = op
        .ok(
            "invokeAction",
            "ver:\"3.0\" id:@streaming-server action:\"restart\"\nempty\n",
        )
        .await;
    assert_eq!(j["rows"][0]["level"], 16);
    // System Restart is a trigger: the action wrote true at level 16 (in the
    // audit, as the Haystack user), and the router consumed it.
    let wrote = app.db.audit_tail(50).into_iter().any(|r| {
        r.point == "system_restart"
            && r.priority == 16
            && r.requested == Some(Value::Bool(true))
            && r.source.user.as_deref() == Some("op")
            && r.result.is_ok()
    });
    assert!(wrote, "restart write audited");
    op.err(
        "invokeAction",
        "ver:\"3.0\" id:@site action:\"restart\"\nempty\n",
    )
    .await;
    op.err(
        "invokeAction",
        "ver:\"3.0\" id:@streaming-server action:\"explode\"\nempty\n",
    )
    .await;
    // nav: site -> equip -> points.
    let j = op.ok("nav", "ver:\"3.0\"\nempty\n").await;
    assert_eq!(j["rows"][0]["navId"]["val"], "site");
    let j = op.ok("nav", "ver:\"3.0\"\nnavId\n@site\n").await;
    assert_eq!(j["rows"][0]["navId"]["val"], "streaming-server");
    let j = op
        .ok("nav", "ver:\"3.0\"\nnavId\n@streaming-server\n")
        .await;
    assert_eq!(j["rows"].as_array().expect("rows").len(), 23);
    app.stop().await;
}

#[tokio::test]
async fn formats_negotiation_and_malformed_input() {
    let (app, base) = start().await;
    let hs = Hs::new(&base, "viewer", VIEW_PW).await;
    let get = |op: &str, accept: &str| {
        hs.req(reqwest::Method::GET, op)
            .header("Accept", accept.to_string())
            .send()
    };
    // JSON v3 on request, CSV, Zinc default.
    let r = get(
        "read?filter=castpointId==\"cpu_usage\"",
        "application/json; version=3",
    )
    .await
    .expect("v3");
    let j: J = r.json().await.expect("json");
    assert_eq!(j["rows"][0]["point"], "m:");
    assert!(j["rows"][0]["id"]
        .as_str()
        .expect("id")
        .starts_with("r:cpu_usage"));
    let r = get("ops", "text/csv").await.expect("csv");
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/csv"));
    let csv = r.text().await.expect("csv");
    assert!(csv.starts_with("name,summary\n"), "{csv}");
    let r = get("formats", "image/png").await.expect("406");
    assert_eq!(r.status(), 406);
    // Routing and method errors are HTTP codes.
    assert_eq!(get("nope", "text/zinc").await.expect("404").status(), 404);
    let r = get("pointWrite", "text/zinc").await.expect("405");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = hs
        .req(reqwest::Method::PUT, "read")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 405);
    let r = hs
        .req(reqwest::Method::POST, "read")
        .header("Content-Type", "image/png")
        .body("x")
        .send()
        .await
        .expect("415");
    assert_eq!(r.status(), 415);
    // Malformed request grids are error grids, never 500.
    for (ct, body) in [
        ("text/zinc", "ver:\"3.0\"\nfilter\n\"unterminated\n"),
        ("text/zinc", "not zinc at all {{{"),
        ("text/zinc", "ver:\"9.9\"\na,b\n1\n"),
        ("text/zinc", "\u{00ff}\u{00fe}\0\0"),
        ("application/json", "{\"_kind\":\"grid\",\"rows\":"),
        ("application/json", "[1,2,3]"),
        ("application/json", "{\"_kind\":\"number\",\"val\":\"x\"}"),
    ] {
        let r = hs
            .req(reqwest::Method::POST, "read")
            .header("Content-Type", ct)
            .header("Accept", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200, "{body}");
        let j: J = r.json().await.expect("json");
        assert!(j["meta"]["err"].is_object(), "{body}: {j}");
    }
    // Invalid UTF-8 body.
    let r = hs
        .req(reqwest::Method::POST, "read")
        .header("Content-Type", "text/zinc")
        .body(vec![0xff, 0xfe, 0x80])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("zinc").contains(" err"));
    // close ends the session.
    hs.ok("close", "ver:\"3.0\"\nempty\n").await;
    let (st, _) = hs.post("about", "").await;
    assert_eq!(st, 403);
    app.stop().await;
}

/// Issue 16 item 8: pointWrites refused before the point database sees
/// them (level, timed override, value type, the caller's role) are audited
/// with protocol, peer and user, like the database's own refusals.
#[tokio::test]
async fn point_writes_refused_before_the_database_are_audited() {
    let (app, base) = start().await;
    let op = Hs::new(&base, "op", OP_PW).await;
    let viewer = Hs::new(&base, "viewer", VIEW_PW).await;
    for req in [
        "@input_select,0,1",
        "@input_select,18,1",
        "@input_select,8,\"x\"",
    ] {
        op.err("pointWrite", &format!("ver:\"3.0\"\nid,level,val\n{req}\n"))
            .await;
    }
    op.err(
        "pointWrite",
        "ver:\"3.0\"\nid,level,val,duration\n@input_select,8,1,5min\n",
    )
    .await;
    viewer
        .err(
            "pointWrite",
            "ver:\"3.0\"\nid,level,val\n@input_select,8,1\n",
        )
        .await;
    let refused: Vec<_> = app
        .db
        .audit_tail(10_000)
        .iter()
        .filter(|r| r.source.protocol == Protocol::Haystack && r.result.is_err())
        .map(|r| {
            (
                r.point.clone(),
                r.source.user.clone(),
                r.source.peer.is_some(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(refused
        .iter()
        .all(|(p, _, peer)| p == "input_select" && *peer));
    assert_eq!(refused[4].1.as_deref(), Some("viewer"));
    assert_eq!(refused[0].1.as_deref(), Some("op"));
    app.stop().await;
}
