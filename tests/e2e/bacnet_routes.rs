//! Issue 20 on BACnet over the wire: route objects and Structured Views at their slot's instances, Route Enable and Input Select commanded through the point's one priority array, and a Database_Revision that survives restarts and grows when the routes change.

use std::path::Path;
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::config::Config;
use castpoint::points::{Protocol, Quality, Value};

use crate::bacnet::{by_position, error_of, rp, wp, Client, Datum, DEVICE, LAST_ITEM};
use crate::util;

const BO: u32 = 4;
const MSV: u32 = 19;
const SV: u32 = 29;
const TL: u32 = 20;
const DEV: u32 = 8;
const OBJECT_LIST: u32 = 76;
const OBJECT_NAME: u32 = 77;
const PV: u32 = 85;
const DATABASE_REVISION: u32 = 155;
const SUBORDINATE_LIST: u32 = 211;

/// Routes `names` ("a" pinned to slot 3), each with two inputs and one
/// HTTP-TS output, on loopback, in `data`.
fn config(names: &[&str], data: &Path) -> Config {
    config_with(names, data, true)
}

/// As `config`; without telemetry the route measurements move only when
/// the test sets them.
fn config_with(names: &[&str], data: &Path, telemetry: bool) -> Config {
    let mut text = format!("[telemetry]\nenabled = {telemetry}\n");
    for name in names {
        let pin = if *name == "a" { "slot = 3\n" } else { "" };
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\n{pin}[[route.input]]\nname = \"gen\"\ntype = \"generator\"\nbitrate = 1000000\n[[route.input]]\nname = \"spare\"\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n[[route.output]]\nname = \"web\"\ntype = \"http\"\npath = \"{name}\"\n"
        ));
    }
    let mut cfg = Config::from_text("test.toml", &text, Path::new(".")).expect("valid config");
    util::loopback(&mut cfg);
    cfg.server.data_dir = data.to_path_buf();
    cfg
}

/// The application-tagged value of a ReadProperty ack (its first octet at
/// index 0 of the returned slice), or the error (class, code).
fn value_of(a: &[u8]) -> Result<&[u8], (u8, u8)> {
    if a[0] == 0x50 {
        return Err(error_of(a));
    }
    assert_eq!(a[0], 0x30, "complex ack: {a:02x?}");
    // invoke, service, [0] object id (5 octets), [1] property id.
    let mut i = 3 + 5;
    i += 1 + usize::from(a[i] & 0x07);
    if a[i] & 0xF8 == 0x28 {
        i += 1 + usize::from(a[i] & 0x07); // [2] array index
    }
    assert_eq!(a[i], 0x3E, "opening tag: {a:02x?}");
    Ok(&a[i + 1..])
}

fn unsigned(v: &[u8]) -> u64 {
    assert!(
        matches!(v[0] & 0xF0, 0x20 | 0x90),
        "unsigned/enumerated: {v:02x?}"
    );
    let n = usize::from(v[0] & 0x07);
    v[1..1 + n].iter().fold(0, |a, b| (a << 8) | u64::from(*b))
}

fn text(v: &[u8]) -> String {
    assert_eq!(v[0] & 0xF0, 0x70, "character string: {v:02x?}");
    let (len, at) = match v[0] & 0x07 {
        5 => (usize::from(v[1]), 2),
        n => (usize::from(n), 1),
    };
    // The first octet is the character set (0: UTF-8).
    String::from_utf8_lossy(&v[at + 1..at + len]).into_owned()
}

async fn read(c: &Client, ty: u32, inst: u32, prop: u32) -> Result<Vec<u8>, (u8, u8)> {
    let a = c.call(&rp(9, ty, inst, prop)).await;
    value_of(&a).map(|v| v.to_vec())
}

async fn name(c: &Client, ty: u32, inst: u32) -> Option<String> {
    read(c, ty, inst, OBJECT_NAME).await.ok().map(|v| text(&v))
}

/// The size of an array property (ReadProperty with array index 0).
async fn size(c: &Client, ty: u32, inst: u32, prop: u32) -> u64 {
    let mut f = rp(10, ty, inst, prop);
    // array index 0: the size (context tag 2).
    f.extend_from_slice(&[0x29, 0x00]);
    let len = f.len() as u16;
    f[2..4].copy_from_slice(&len.to_be_bytes());
    unsigned(value_of(&c.call(&f).await).expect("size"))
}

async fn revision(c: &Client) -> u64 {
    unsigned(
        &read(c, DEV, DEVICE, DATABASE_REVISION)
            .await
            .expect("revision"),
    )
}

/// Waits until the server's view lists `n` route views (the first sync
/// after start is debounced).
async fn until_views(c: &Client, want: &[(u32, &str)]) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let mut ok = true;
        for (inst, n) in want {
            ok &= name(c, SV, *inst).await.as_deref() == Some(*n);
        }
        if ok {
            return;
        }
        assert!(Instant::now() < end, "route views {want:?} not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_objects_command_their_route_and_the_revision_survives_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = App::start(config(&["a", "b"], dir.path()))
        .await
        .expect("app starts");
    let c = Client::new(app.addrs.bacnet.expect("bacnet")).await;
    // a pinned to slot 3, b in slot 1: views SV3 / SV1, objects 3000.. / 1000..
    until_views(&c, &[(3, "a"), (1, "b")]).await;
    assert_eq!(name(&c, SV, 0).await.as_deref(), Some("Streaming Server"));
    assert_eq!(name(&c, MSV, 3000).await.as_deref(), Some("a Route Status"));
    assert_eq!(name(&c, BO, 1010).await.as_deref(), Some("b Route Enable"));
    // Object_List: the 39 server objects (3 Notification Classes and the
    // server's view among them), then
    let n = c
        .call(&{
            let mut f = rp(10, DEV, DEVICE, OBJECT_LIST);
            // array index 0: the size (context tag 2).
            f.extend_from_slice(&[0x29, 0x00]);
            let len = f.len() as u16;
            f[2..4].copy_from_slice(&len.to_be_bytes());
            f
        })
        .await;
    // per route its view, 31 objects and 7 Trend Logs.
    assert_eq!(unsigned(value_of(&n).expect("size")), 39 + 2 * 39);
    let r1 = revision(&c).await;
    assert!(r1 >= 1, "a first start serves a new revision");
    // Route Enable of a (BO3010) off at priority 8: the point's array, a
    // stops and b does not.
    let a = c.call(&wp(11, BO, 3010, PV, &[0x91, 0x00], Some(8))).await;
    assert_eq!(a[0], 0x20, "simple ack: {a:02x?}");
    let db = app.db.clone();
    let en = db.lookup("route.3.route_enable").expect("point");
    let pa = db.priority_array(en).expect("commandable");
    assert_eq!(
        pa.slots[7].as_ref().map(|s| s.value),
        Some(Value::Bool(false))
    );
    assert!(db
        .audit_tail(10)
        .iter()
        .any(|w| w.point == "route.3.route_enable" && w.source.protocol == Protocol::Bacnet));
    let end = Instant::now() + Duration::from_secs(15);
    while app.engine.snapshot().route("a").map(|r| r.stream_enabled) != Some(false) {
        assert!(Instant::now() < end, "route a not stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.engine.snapshot().route("b").map(|r| r.stream_enabled),
        Some(true)
    );
    // Input Select (MSV3011, commandable): state 3 = a's second input;
    // 4 names no input of a: VALUE_OUT_OF_RANGE.
    let a = c.call(&wp(12, MSV, 3011, PV, &[0x21, 0x03], Some(8))).await;
    assert_eq!(a[0], 0x20, "simple ack: {a:02x?}");
    let sel = db.lookup("route.3.input_select").expect("point");
    assert_eq!(db.read(sel).and_then(|s| s.value), Some(Value::Enum(3)));
    let a = c.call(&wp(13, MSV, 3011, PV, &[0x21, 0x04], Some(8))).await;
    assert_eq!(error_of(&a), (2, 37), "{a:02x?}");
    // A read-only route object refuses a write with WRITE_ACCESS_DENIED.
    let a = c.call(&wp(14, MSV, 3000, PV, &[0x21, 0x01], Some(8))).await;
    assert_eq!(error_of(&a), (2, 40), "{a:02x?}");
    app.stop().await;

    // Same routes after a restart: the same revision.
    let app = App::start(config(&["a", "b"], dir.path()))
        .await
        .expect("app restarts");
    let c = Client::new(app.addrs.bacnet.expect("bacnet")).await;
    until_views(&c, &[(3, "a"), (1, "b")]).await;
    // Route objects only appear through a sync, and a sync publishes the
    // objects and the revision under one write lock: once both views are
    // served, every sync that could have (wrongly) revised the database for
    // this unchanged set has already done so. No wait needed.
    assert_eq!(revision(&c).await, r1);
    app.stop().await;

    // b removed from the config: its objects are unknown, the revision grows.
    let app = App::start(config(&["a"], dir.path()))
        .await
        .expect("app restarts");
    let c = Client::new(app.addrs.bacnet.expect("bacnet")).await;
    until_views(&c, &[(3, "a")]).await;
    let end = Instant::now() + Duration::from_secs(15);
    while revision(&c).await <= r1 {
        assert!(Instant::now() < end, "revision did not grow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // UNKNOWN_OBJECT (class object 1, code 31).
    assert_eq!(read(&c, BO, 1010, PV).await.err(), Some((1, 31)));
    assert_eq!(read(&c, SV, 1, OBJECT_NAME).await.err(), Some((1, 31)));
    app.stop().await;
}

/// The REAL values of a route Trend Log's records, oldest first (ReadRange
/// of the whole buffer, one answer), and whether it ends on the restart's
/// LOG_INTERRUPTED status.
async fn logged(c: &Client, inst: u32) -> (Vec<f32>, bool) {
    let r = c.read_range(40, inst, &by_position(1, 100)).await;
    assert!(
        r.count == 0 || r.flags & LAST_ITEM != 0,
        "whole buffer in one answer"
    );
    assert_eq!(r.count as usize, r.records.len());
    let reals = r
        .records
        .iter()
        .filter_map(|(_, _, d)| match d {
            Datum::Real(v) => Some(*v),
            _ => None,
        })
        .collect();
    let interrupted = matches!(r.records.last(), Some((_, _, Datum::Status(_))));
    (reals, interrupted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_trend_logs_serve_the_slot_history_across_restarts_and_follow_rest_routes() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = App::start(config_with(&["a"], dir.path(), false))
        .await
        .expect("app starts");
    let c = Client::new(app.addrs.bacnet.expect("bacnet")).await;
    until_views(&c, &[(3, "a")]).await;
    // One Trend Log per his measurement of slot 3 (AI3003..AI3009), at
    // the logged object's instance, listed after the objects in SV3.
    assert_eq!(
        name(&c, TL, 3003).await.as_deref(),
        Some("a Input Bitrate Trend Log")
    );
    assert_eq!(
        name(&c, TL, 3009).await.as_deref(),
        Some("a Route Uptime Trend Log")
    );
    assert_eq!(read(&c, TL, 3010, OBJECT_NAME).await.err(), Some((1, 31)));
    assert_eq!(size(&c, SV, 3, SUBORDINATE_LIST).await, 31 + 7);
    assert_eq!(size(&c, DEV, DEVICE, OBJECT_LIST).await, 39 + 1 + 31 + 7);
    // Samples of route.3.input_bitrate (telemetry off: only these) are
    // logged as the history records them.
    let db = app.db.clone();
    let p = db.lookup("route.3.input_bitrate").expect("point");
    for v in [1.0, 5.0, 9.0] {
        db.set(p, Some(Value::Number(v)), Quality::Ok, None)
            .expect("set");
    }
    let end = Instant::now() + Duration::from_secs(15);
    while logged(&c, 3003).await.0 != [1.0, 5.0, 9.0] {
        assert!(
            Instant::now() < end,
            "TL3003 holds {:?}",
            logged(&c, 3003).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;

    // Restarted over the same data dir: the log is refilled from the
    // slot's stored history, then LOG_INTERRUPTED.
    let app = App::start(config_with(&["a"], dir.path(), false))
        .await
        .expect("app restarts");
    let c = Client::new(app.addrs.bacnet.expect("bacnet")).await;
    until_views(&c, &[(3, "a")]).await;
    assert_eq!(logged(&c, 3003).await, (vec![1.0, 5.0, 9.0], true));

    // A route created over REST gets its logs (lowest free slot: 1) with
    // the route's objects; deleted, they go.
    let base = format!("http://{}", app.addrs.http.expect("http"));
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/routes"))
        .json(&serde_json::json!({
            "name": "n",
            "inputs": [{"name": "g", "type": "udp", "bind": "127.0.0.1:0"}],
            "outputs": [{"name": "o", "type": "http", "path": "n"}]
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    until_views(&c, &[(1, "n")]).await;
    let end = Instant::now() + Duration::from_secs(15);
    while name(&c, TL, 1003).await.as_deref() != Some("n Input Bitrate Trend Log") {
        assert!(Instant::now() < end, "TL1003 not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(size(&c, SV, 1, SUBORDINATE_LIST).await, 31 + 7);
    assert_eq!(size(&c, DEV, DEVICE, OBJECT_LIST).await, 39 + 2 * 39);
    let rev = revision(&c).await;
    let r = http
        .delete(format!("{base}/api/routes/n"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let end = Instant::now() + Duration::from_secs(15);
    while read(&c, TL, 1003, OBJECT_NAME).await.err() != Some((1, 31)) {
        assert!(Instant::now() < end, "TL1003 still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read(&c, TL, 1009, OBJECT_NAME).await.err(), Some((1, 31)));
    assert_eq!(size(&c, DEV, DEVICE, OBJECT_LIST).await, 39 + 1 + 31 + 7);
    assert!(revision(&c).await > rev);
    // Route a's log is untouched.
    assert_eq!(logged(&c, 3003).await, (vec![1.0, 5.0, 9.0], true));
    app.stop().await;
}
