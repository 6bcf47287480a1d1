//! Derived status points tell the truth (issue 16): a forced idle input is not LIVE, a route starting up is not an ERROR, and an encoder or CDN that does not exist reads N/A on REST, Modbus and BACnet.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::points::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::util::{self, eventually, input_addr, TestApp};

/// A live primary input and an idle backup, both on ephemeral ports.
/// Telemetry on (the bridge publishes router points only then) with
/// resource faults out of reach, so only the route can fault the server.
const TWO: &str = r#"
primary_route = "main"
[telemetry]
gpu = "none"
cpu_fault = 200
mem_fault = 200
disk_fault = 200
[[route]]
name = "main"
failover_timeout = "300ms"
[[route.input]]
name = "live"
type = "udp"
bind = "127.0.0.1:0"
[[route.input]]
name = "backup"
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "web"
type = "http"
path = "main"
"#;

/// One Modbus TCP request (unit 1) over a raw socket; the reply's PDU.
async fn modbus(addr: SocketAddr, pdu: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("modbus connect");
    let mut adu = vec![0, 1, 0, 0, 0, pdu.len() as u8 + 1, 1];
    adu.extend_from_slice(pdu);
    s.write_all(&adu).await.expect("send");
    let mut head = [0u8; 7];
    s.read_exact(&mut head).await.expect("mbap");
    let len = usize::from(u16::from_be_bytes([head[4], head[5]])) - 1;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("pdu");
    body
}

/// FC03/FC04 of one register (`fc`, 0-based offset).
async fn modbus_reg(addr: SocketAddr, fc: u8, offset: u16) -> u16 {
    let [a, b] = offset.to_be_bytes();
    let r = modbus(addr, &[fc, a, b, 0, 1]).await;
    assert_eq!(r[0], fc, "no exception: {r:?}");
    u16::from_be_bytes([r[2], r[3]])
}

async fn rest(app: &App, id: &str) -> serde_json::Value {
    let http = app.addrs.http.expect("http");
    crate::util::get_json(
        &reqwest::Client::new(),
        format!("http://{http}/api/points/{id}"),
    )
    .await
}

fn value(app: &App, id: &str) -> Option<Value> {
    app.db
        .read(app.db.lookup(id).expect("point"))
        .and_then(|s| s.value)
}

/// (Stream Status, Input Status) over Modbus and BACnet, Active Streams
/// over Modbus, once all of them (and the point database) agree on `want`.
async fn statuses_become(app: &App, want: (u16, u16, u16), secs: u64) {
    let mb = app.addrs.modbus.expect("modbus");
    let bn = app.addrs.bacnet.expect("bacnet");
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = (
            modbus_reg(mb, 3, 1).await,
            modbus_reg(mb, 3, 2).await,
            modbus_reg(mb, 4, 0).await,
        );
        let b = (util::bacnet_msv(bn, 1).await, util::bacnet_msv(bn, 2).await);
        let db = (
            value(app, "stream_status"),
            value(app, "input_status"),
            value(app, "active_streams"),
        );
        if m == want
            && b == (u32::from(want.0), u32::from(want.1))
            && db
                == (
                    Some(Value::Enum(want.0)),
                    Some(Value::Enum(want.1)),
                    Some(Value::Number(f64::from(want.2))),
                )
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "after {secs} s: modbus {m:?}, bacnet {b:?}, db {db:?}; want stream/input/active = {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes an HTTP-TS viewer of `/stream/main.ts` receives in `d`.
async fn viewer_bytes(app: &App, d: Duration) -> usize {
    let http = app.addrs.http.expect("http");
    let mut s = TcpStream::connect(http).await.expect("connect");
    s.write_all(b"GET /stream/main.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("req");
    let mut head = vec![0u8; 4096];
    let n = s.read(&mut head).await.expect("head");
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body_start = text.find("\r\n\r\n").map_or(n, |i| i + 4);
    let mut total = n - body_start;
    let end = Instant::now() + d;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(k)) = tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
        if k == 0 {
            break;
        }
        total += k;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_an_idle_backup_is_no_signal_not_live() {
    let app = TestApp::from_toml(TWO).await;
    let live = input_addr(&app, "main", 0).await;
    input_addr(&app, "main", 1).await;
    let stop = CancellationToken::new();
    let src = util::ts_source(live, 2_000_000, stop.clone());
    statuses_become(&app, (1, 1, 1), 8).await;

    // A BMS forces the idle backup: Modbus FC06 40101 (Input Select) = 2.
    let mb = app.addrs.modbus.expect("modbus");
    let r = modbus(mb, &[0x06, 0, 100, 0, 2]).await;
    assert_eq!(r, [0x06, 0, 100, 0, 2], "write echoed");
    eventually("backup forced", Duration::from_secs(10), async || {
        (app.engine.snapshot().route("main")?.active_input == Some(1)).then_some(())
    })
    .await;
    // Stream Status ERROR (no signal while enabled), Input Status
    // NO_SIGNAL, Active Streams 0, within signal_timeout + a publish.
    statuses_become(&app, (3, 2, 0), 4).await;
    let got = viewer_bytes(&app, Duration::from_millis(1500)).await;
    assert_eq!(got, 0, "a viewer of the forced idle input got data");
    // Still not LIVE a while later (the forced input stays silent).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(value(&app, "stream_status"), Some(Value::Enum(3)));

    // Unforced (automatic): LIVE again.
    let r = modbus(mb, &[0x06, 0, 100, 0, 0]).await;
    assert_eq!(r, [0x06, 0, 100, 0, 0], "write echoed");
    statuses_become(&app, (1, 1, 1), 5).await;
    assert!(viewer_bytes(&app, Duration::from_millis(1500)).await > 0);
    stop.cancel();
    let _ = src.await;
    app.stop().await;
}

/// A route with no source yet is "starting" for the start-up grace, not an
/// ERROR: Stream Status N/A (4 on Modbus and BACnet), Input Status
/// NO_SIGNAL, Server Status never FAULT; after the grace, ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_error_within_the_start_up_grace() {
    // Taken before the start, so the route's grace cannot have begun
    // earlier than this: a slow start-up only shortens what is checked.
    let t0 = Instant::now();
    let app = TestApp::from_toml(TWO).await;
    let mb = app.addrs.modbus.expect("modbus");
    let bn = app.addrs.bacnet.expect("bacnet");
    let grace = castpoint::telemetry::status::STARTUP_GRACE;
    let mut saw_na = false;
    // Up to a second short of the grace (slack for a loaded machine).
    while t0.elapsed() + Duration::from_secs(1) < grace {
        let stream = value(&app, "stream_status");
        let server = value(&app, "server_status");
        assert_ne!(stream, Some(Value::Enum(3)), "ERROR at {:?}", t0.elapsed());
        assert_ne!(server, Some(Value::Enum(3)), "FAULT at {:?}", t0.elapsed());
        assert_ne!(value(&app, "input_status"), Some(Value::Enum(3)));
        if stream.is_none() && t0.elapsed() > Duration::from_millis(1500) {
            assert_eq!(modbus_reg(mb, 3, 1).await, 4, "Modbus N/A");
            assert_eq!(util::bacnet_msv(bn, 1).await, 4, "BACnet N/A");
            let j = rest(&app, "stream_status").await;
            assert_eq!(j["state"], "N/A", "{j}");
            saw_na = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_na, "Stream Status never read N/A during the grace");
    // After the grace, no signal while enabled is an ERROR.
    eventually(
        "ERROR after the grace",
        Duration::from_secs(10),
        async || (value(&app, "stream_status") == Some(Value::Enum(3))).then_some(()),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_encoder_and_cdn_read_n_a_on_every_protocol() {
    let app = TestApp::from_toml(TWO).await;
    let mb = app.addrs.modbus.expect("modbus");
    let bn = app.addrs.bacnet.expect("bacnet");
    // (point, Modbus holding offset, BACnet MSV instance, N/A ordinal)
    for (id, reg, msv, na) in [("encoder_status", 3, 3, 4), ("cdn_status", 4, 4, 3)] {
        let j = eventually(
            &format!("{id} published"),
            Duration::from_secs(10),
            async || {
                let j = rest(&app, id).await;
                (j["status"] == "unavailable" && j["reason"].is_string()).then_some(j)
            },
        )
        .await;
        assert!(j["value"].is_null(), "{j}");
        assert_eq!(j["state"], "N/A", "{j}");
        assert_eq!(
            j["states"].as_array().and_then(|a| a.last()),
            Some(&"N/A".into())
        );
        assert_eq!(modbus_reg(mb, 3, reg).await, na, "{id} on Modbus");
        assert_eq!(
            util::bacnet_msv(bn, msv).await,
            u32::from(na),
            "{id} on BACnet"
        );
    }
    app.stop().await;
}
