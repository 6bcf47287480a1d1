//! engine end-to-end tests against the running server: real UDP/HTTP/SRT sockets on loopback, srt-live-transmit and ffprobe as third-party peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::engine::spec::{OutputKind, OutputSpec};
use castpoint::engine::EventKind;
use castpoint::points::{Protocol, Quality, Source, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::util::{eventually, eventually_true, input_addr, output_addr, until_route, TestApp};

const VIDEO: u16 = 0x100;

/// A tiny synthetic MPEG-TS source: PAT, PMT (H.264 on PID 0x100), and video
/// packets whose continuity counters start at `cc0` (so two generators look
/// like two independent encoders), a PES + IDR NAL every 10 packets.
struct Gen {
    cc: HashMap<u16, u8>,
    n: u64,
}

impl Gen {
    fn new(cc0: u8) -> Self {
        let mut cc = HashMap::new();
        for pid in [0u16, 0x1000, VIDEO] {
            cc.insert(pid, cc0 & 0x0F);
        }
        Gen { cc, n: 0 }
    }

    fn pkt(&mut self, pid: u16, pusi: bool, payload: &[u8]) -> [u8; 188] {
        let mut p = [0xFFu8; 188];
        let cc = self.cc.entry(pid).or_insert(0);
        p[0] = 0x47;
        p[1] = ((pid >> 8) as u8 & 0x1F) | if pusi { 0x40 } else { 0 };
        p[2] = pid as u8;
        p[3] = 0x10 | *cc;
        *cc = (*cc + 1) & 0x0F;
        p[4..4 + payload.len()].copy_from_slice(payload);
        p
    }

    /// One datagram of 7 packets.
    fn datagram(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(7 * 188);
        for _ in 0..7 {
            let p = if self.n.is_multiple_of(70) {
                let pat = [
                    0u8, 0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0,
                    0, 0, 0,
                ];
                self.pkt(0, true, &pat)
            } else if self.n % 70 == 1 {
                let pmt = [
                    0u8, 0x02, 0xB0, 0x12, 0x00, 0x01, 0xC1, 0x00, 0x00, 0xE1, 0x00, 0xF0, 0x00,
                    0x1B, 0xE1, 0x00, 0xF0, 0x00, 0, 0, 0, 0,
                ];
                self.pkt(0x1000, true, &pmt)
            } else if self.n % 10 == 2 {
                // PES header + IDR slice NAL.
                let pes = [0u8, 0, 1, 0xE0, 0, 0, 0x80, 0, 0, 0, 0, 0, 1, 0x65];
                self.pkt(VIDEO, true, &pes)
            } else {
                self.pkt(VIDEO, false, &[])
            };
            self.n += 1;
            out.extend_from_slice(&p);
        }
        out
    }
}

/// Counts CC discontinuities per PID of a received stream.
#[derive(Default)]
struct CcCheck {
    last: HashMap<u16, u8>,
    errors: u64,
    packets: u64,
}

impl CcCheck {
    fn feed(&mut self, buf: &[u8]) {
        for p in buf.chunks_exact(188) {
            assert_eq!(p[0], 0x47, "output is not aligned TS");
            let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
            let cc = p[3] & 0x0F;
            if let Some(l) = self.last.insert(pid, cc) {
                if cc != (l + 1) & 0x0F {
                    self.errors += 1;
                }
            }
            self.packets += 1;
        }
    }
}

/// Sends `gen`'s datagrams to `to` every 2 ms until the returned handle is
/// aborted (roughly 5 Mbit/s).
fn source(to: SocketAddr, mut gen: Gen) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        loop {
            let _ = s.send_to(&gen.datagram(), to).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Packets output `name` of `route` has sent so far.
fn output_packets(app: &App, route: &str, name: &str) -> u64 {
    app.engine
        .snapshot()
        .route(route)
        .and_then(|r| r.outputs.iter().find(|o| o.name == name).map(|o| o.packets))
        .unwrap_or(0)
}

/// True once `sock` has been silent for `quiet` (datagrams still in flight
/// are drained first), false if it never is within 10 s: a negative check
/// that a late datagram on a loaded machine cannot fail.
async fn goes_quiet(sock: &UdpSocket, quiet: Duration) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        if tokio::time::timeout(quiet, sock.recv(&mut buf))
            .await
            .is_err()
        {
            return true;
        }
    }
    false
}

/// Receives on `sock` for `d`, returning the CC check of what arrived.
async fn receive(sock: &UdpSocket, d: Duration, cc: &mut CcCheck) {
    let end = tokio::time::Instant::now() + d;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, sock.recv(&mut buf)).await {
        cc.feed(&buf[..n]);
    }
}

const TWO_INPUTS: &str = r#"
primary_route = "main"
[[route]]
name = "main"
switch_back = true
failover_timeout = "300ms"
[[route.input]]
name = "primary"
type = "udp"
bind = "127.0.0.1:0"
[[route.input]]
name = "backup"
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "http"
type = "http"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_backup_and_back_keeps_continuity_counters() {
    let out = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let text = format!(
        "{TWO_INPUTS}[[route.output]]\nname = \"udp\"\ntype = \"udp\"\ndest = \"{}\"\n",
        out.local_addr().expect("addr")
    );
    let app = TestApp::with_telemetry(&text).await;
    let mut events = app.engine.subscribe();
    let a = input_addr(&app, "main", 0).await;
    let b = input_addr(&app, "main", 1).await;
    let src_a = source(a, Gen::new(0));
    let src_b = source(b, Gen::new(9));
    // Read the output the whole time: a socket left unread while the test
    // waits for events overflows its kernel buffer, and that loss would
    // look like a continuity error of the router.
    let stop_rx = tokio_util::sync::CancellationToken::new();
    let rx_task = {
        let (out, stop) = (out.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut cc = CcCheck::default();
            let mut buf = vec![0u8; 65536];
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return cc,
                    r = out.recv(&mut buf) => match r {
                        Ok(n) => cc.feed(&buf[..n]),
                        Err(_) => return cc,
                    },
                }
            }
        })
    };
    // The primary is forwarded and the output is receiving.
    until_route(&app, "main", "primary active, output sending", |r| {
        r.active_input == Some(0) && r.outputs.iter().any(|o| o.name == "udp" && o.packets > 200)
    })
    .await;
    // Kill the primary mid-stream: the backup takes over after the 300 ms
    // failover timeout (the exact timing is unit-tested in engine::route;
    // here only a hang or a gross delay fails).
    src_a.abort();
    let killed = Instant::now();
    let switched = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a switch event")
            .expect("event");
        if let EventKind::InputSwitched { to: Some(1), .. } = ev.kind {
            break killed.elapsed();
        }
    };
    assert!(
        switched < Duration::from_secs(5),
        "failover took {switched:?}"
    );
    // The backup carries the stream for a while before the primary returns.
    let at_switch = output_packets(&app, "main", "udp");
    until_route(&app, "main", "the backup carrying 200 packets", |r| {
        r.outputs
            .iter()
            .any(|o| o.name == "udp" && o.packets > at_switch + 200)
    })
    .await;
    // The primary comes back: switch-back after it is stable.
    let src_a = source(a, Gen::new(4));
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a switch-back event")
            .expect("event");
        if let EventKind::InputSwitched { to: Some(0), .. } = ev.kind {
            break;
        }
    }
    // The primary carries the stream again, and there is enough in all for
    // the continuity check below.
    let at_back = output_packets(&app, "main", "udp");
    until_route(
        &app,
        "main",
        "the primary carrying 200 packets again",
        |r| {
            r.outputs
                .iter()
                .any(|o| o.name == "udp" && o.packets > (at_back + 200).max(2000))
        },
    )
    .await;
    src_a.abort();
    src_b.abort();
    stop_rx.cancel();
    let cc = rx_task.await.expect("receiver");
    assert!(cc.packets > 1000, "only {} packets arrived", cc.packets);
    // Three sources with unrelated counters, two switches: no CC errors
    // downstream (the UDP loopback itself loses nothing at 5 Mbit/s).
    assert_eq!(cc.errors, 0, "continuity errors after switches");
    let snap = app.engine.snapshot();
    let r = snap.route("main").expect("route");
    // Two switches, or three when the backup's first datagram happened to
    // arrive before the primary's at start-up (then switch-back to primary).
    assert!((2..=3).contains(&r.switches), "switches: {}", r.switches);
    assert_eq!(
        r.outputs
            .iter()
            .find(|o| o.name == "udp")
            .expect("udp")
            .dropped_chunks,
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_viewer_drops_without_delaying_udp_output() {
    let out = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let text = format!(
        r#"
[[route]]
name = "r"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "slow"
type = "http"
queue = 4
[[route.output]]
name = "udp"
type = "udp"
dest = "{}"
queue = 60000
"#,
        out.local_addr().expect("addr")
    );
    let app = TestApp::with_telemetry(&text).await;
    let http = app.addrs.http.expect("http bound");
    let inp = input_addr(&app, "r", 0).await;
    // A viewer that asks for the stream and never reads it.
    let mut viewer = tokio::net::TcpStream::connect(http).await.expect("connect");
    viewer
        .write_all(b"GET /stream/r.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    until_route(&app, "r", "the viewer attached", |r| {
        r.outputs.iter().any(|o| o.name == "slow" && o.clients == 1)
    })
    .await;
    let src = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut g = Gen::new(0);
    let mut sent = 0u64;
    // ~40 MB: far more than socket buffers and a 4-chunk queue hold.
    for i in 0..30_000u32 {
        let d = g.datagram();
        src.send_to(&d, inp).await.expect("send");
        sent += d.len() as u64;
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Everything the input read has reached the UDP output.
    let r = until_route(&app, "r", "the UDP output caught up with the input", |r| {
        let udp = r.outputs.iter().find(|o| o.name == "udp");
        udp.is_some_and(|u| u.bytes == r.inputs[0].bytes) && r.inputs[0].bytes > sent / 2
    })
    .await;
    let slow = r.outputs.iter().find(|o| o.name == "slow").expect("slow");
    let udp = r.outputs.iter().find(|o| o.name == "udp").expect("udp");
    let input = &r.inputs[0];
    assert_eq!(slow.clients, 1);
    assert!(
        slow.dropped_chunks > 0,
        "the stalled viewer dropped nothing"
    );
    assert_eq!(slow.dropped_packets % 7, 0);
    // Every dropped chunk holds video packets of the synthetic source, so
    // frames are lost too, and they reach the Dropped Frames point.
    assert!(
        slow.frames_lost > 0,
        "no frames counted for the slow viewer"
    );
    // A lost frame lost at least one of its packets.
    assert!(slow.frames_lost <= slow.dropped_packets);
    let id = app.db.lookup("dropped_frames").expect("point");
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let v = app.db.read(id).and_then(|s| s.value);
        if let Some(Value::Number(n)) = v {
            if n >= slow.frames_lost as f64 {
                break;
            }
        }
        assert!(Instant::now() < end, "Dropped Frames stayed at {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(udp.dropped_chunks, 0, "the UDP output lost chunks");
    assert_eq!(udp.bytes, input.bytes, "UDP output got less than the input");
    assert!(
        input.bytes > sent / 2,
        "input read {} of {sent}",
        input.bytes
    );
    drop(viewer);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_burst_arrives_as_whole_1316_byte_datagrams_in_order() {
    // A burst is coalesced by the input and sent with UDP GSO by the output:
    // the receiver must still see one 7-packet datagram per input datagram.
    let out = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let text = format!(
        "[[route]]\nname = \"b\"\n[[route.input]]\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n\
         [[route.output]]\nname = \"u\"\ntype = \"udp\"\ndest = \"{}\"\n",
        out.local_addr().expect("addr")
    );
    let app = TestApp::with_telemetry(&text).await;
    let inp = input_addr(&app, "b", 0).await;
    let mut g = Gen::new(0);
    let sent: Vec<Vec<u8>> = (0..120).map(|_| g.datagram()).collect();
    let bursts = sent.clone();
    // Sent while the receiver below reads (an unread socket buffer holds
    // fewer than 100 such datagrams).
    let sender = tokio::spawn(async move {
        let src = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for burst in bursts.chunks(40) {
            for d in burst {
                src.send_to(d, inp).await.expect("send");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = vec![0u8; 65536];
    for (i, want) in sent.iter().enumerate() {
        let n = tokio::time::timeout(Duration::from_secs(3), out.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("datagram {i} never arrived"))
            .expect("recv");
        assert_eq!(n, 1316, "datagram {i} has {n} bytes");
        assert_eq!(&buf[..n], &want[..], "datagram {i} differs");
    }
    sender.await.expect("sender");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_coalescing_delivers_every_datagram_in_order_and_flushes_the_tail() {
    // Held data for direct UDP outputs goes out with the next chunk or when
    // its hold runs out: a source that stops mid-batch must not strand its
    // last datagrams, and nothing may be reordered, cut or duplicated.
    let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let text = format!(
        "[[route]]\nname = \"c\"\nudp_coalesce = \"20ms\"\n\
         [[route.input]]\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n\
         [[route.output]]\nname = \"a\"\ntype = \"udp\"\ndest = \"{}\"\n\
         [[route.output]]\nname = \"b\"\ntype = \"udp\"\ndest = \"{}\"\n",
        a.local_addr().expect("addr"),
        b.local_addr().expect("addr")
    );
    let app = TestApp::with_telemetry(&text).await;
    let inp = input_addr(&app, "c", 0).await;
    let mut g = Gen::new(0);
    let sent: Vec<Vec<u8>> = (0..150).map(|_| g.datagram()).collect();
    let paced = sent.clone();
    // Evenly paced well inside the hold (a thread: tokio's timer is too
    // coarse for sub-millisecond spacing), then silence.
    let sender = std::thread::spawn(move || {
        let src = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for d in &paced {
            src.send_to(d, inp).expect("send");
            std::thread::sleep(Duration::from_micros(400));
        }
    });
    // Both read at once: an unread socket buffer holds fewer than 100.
    let readers: Vec<_> = [("a", a), ("b", b)]
        .into_iter()
        .map(|(name, sock)| {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                for (i, want) in sent.iter().enumerate() {
                    let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
                        .await
                        .unwrap_or_else(|_| panic!("{name}: datagram {i} never arrived"))
                        .expect("recv");
                    assert_eq!(n, 1316, "{name}: datagram {i} has {n} bytes");
                    assert_eq!(&buf[..n], &want[..], "{name}: datagram {i} differs");
                }
            })
        })
        .collect();
    for r in readers {
        r.await.expect("reader");
    }
    sender.join().expect("sender");
    // The receivers have every datagram; the counters follow the sends and
    // may trail them by a moment on a loaded machine.
    let r = until_route(&app, "c", "every output counted 150 datagrams", |r| {
        r.outputs.iter().all(|o| o.bytes >= 150 * 1316)
    })
    .await;
    for o in &r.outputs {
        assert_eq!(o.bytes, 150 * 1316, "{}: {o:?}", o.name);
        assert_eq!(o.dropped_chunks, 0, "{}", o.name);
    }
    app.stop().await;
}

/// A route `name` from one UDP input to one HTTP-TS output `web`, with
/// `extra` route keys.
fn udp_to_http(name: &str, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\n{extra}\n[[route.input]]\ntype = \"udp\"\n\
         bind = \"127.0.0.1:0\"\n[[route.output]]\nname = \"web\"\ntype = \"http\"\n"
    )
}

/// An HTTP-TS output lets its route's UDP input read at a pace (it sleeps
/// between reads with its socket off the poller): nothing may be lost or
/// reordered across pacing, and an input that went silent must wake on its
/// next datagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_udp_input_loses_nothing_and_wakes_after_silence() {
    let app = TestApp::with_telemetry(&udp_to_http("p", "failover_timeout = \"100ms\"")).await;
    let http = app.addrs.http.expect("http bound");
    let inp = input_addr(&app, "p", 0).await;
    let got = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let viewer = {
        let got = got.clone();
        tokio::spawn(async move {
            let mut resp = reqwest::get(format!("http://{http}/stream/p.ts"))
                .await
                .expect("GET");
            while let Ok(Some(c)) = resp.chunk().await {
                got.lock().expect("lock").extend_from_slice(&c);
            }
        })
    };
    until_route(&app, "p", "the viewer attached", |r| {
        r.outputs.iter().any(|o| o.clients == 1)
    })
    .await;
    let src = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut g = Gen::new(0);
    let mut sent = 0u64;
    let burst = |n: usize, g: &mut Gen| (0..n).map(|_| g.datagram()).collect::<Vec<_>>();
    for d in burst(300, &mut g) {
        sent += d.len() as u64;
        src.send_to(&d, inp).await.expect("send");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    // Silence: the route loses its input; the input's socket waits for
    // readability again. Wait for that, and for the viewer to have all of
    // the first burst (its byte count stops moving).
    until_route(&app, "p", "the input lost", |r| r.active_input.is_none()).await;
    let mut prev = usize::MAX;
    let before = eventually(
        "the first burst delivered",
        Duration::from_secs(10),
        async || {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = got.lock().expect("lock").len();
            let stable = n == prev;
            prev = n;
            stable.then_some(n)
        },
    )
    .await;
    assert!(before > 0, "the viewer got nothing from the first burst");
    let second = burst(200, &mut g);
    for d in &second {
        sent += d.len() as u64;
        src.send_to(d, inp).await.expect("send");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let want = before + second.iter().map(Vec::len).sum::<usize>();
    let r = until_route(&app, "p", "the input read every datagram", |r| {
        r.inputs[0].bytes >= sent
    })
    .await;
    assert_eq!(r.inputs[0].bytes, sent, "the input lost datagrams");
    eventually_true(
        "the viewer got the second burst",
        Duration::from_secs(10),
        || got.lock().expect("lock").len() >= want,
    )
    .await;
    let body = got.lock().expect("lock").clone();
    assert_eq!(
        body.len() - before,
        second.iter().map(Vec::len).sum::<usize>(),
        "the viewer did not get exactly the burst after the silence"
    );
    assert_eq!(
        &body[before..],
        &second.concat()[..],
        "reordered or altered"
    );
    let mut cc = CcCheck::default();
    cc.feed(&body);
    assert_eq!(cc.errors, 0, "CC gaps in the viewer's stream");
    viewer.abort();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_viewer_joins_at_a_keyframe_with_pat_and_pmt_first() {
    let app = TestApp::with_telemetry(&udp_to_http("j", "")).await;
    let http = app.addrs.http.expect("http bound");
    let inp = input_addr(&app, "j", 0).await;
    let src = source(inp, Gen::new(3));
    // Let PSI be learned, then join mid-stream several times: each viewer
    // must see PAT, PMT, then the PES that starts an IDR.
    until_route(&app, "j", "PSI learned", |r| r.video_pid.is_some()).await;
    for _ in 0..3 {
        let mut resp = reqwest::get(format!("http://{http}/stream/j.ts"))
            .await
            .expect("GET");
        let mut body = Vec::new();
        while body.len() < 4 * 188 {
            let c = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
                .await
                .expect("data within 5 s")
                .expect("body");
            body.extend_from_slice(&c.expect("stream ended"));
        }
        let pid =
            |i: usize| (u16::from(body[i * 188 + 1] & 0x1F) << 8) | u16::from(body[i * 188 + 2]);
        let pusi = |i: usize| body[i * 188 + 1] & 0x40 != 0;
        assert_eq!((pid(0), pusi(0)), (0, true), "first packet is not a PAT");
        assert_eq!((pid(1), pusi(1)), (0x1000, true), "second is not the PMT");
        assert_eq!(
            (pid(2), pusi(2)),
            (VIDEO, true),
            "third does not start video"
        );
        assert_eq!(
            body[2 * 188 + 4 + 13],
            0x65,
            "the first picture is not an IDR"
        );
        let mut cc = CcCheck::default();
        cc.feed(&body[..body.len() / 188 * 188]);
        assert_eq!(cc.errors, 0, "the joiner's stream has CC gaps");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    src.abort();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_add_disable_move_and_remove_outputs() {
    let text = r#"
[[route]]
name = "one"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route]]
name = "two"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
"#;
    let app = TestApp::with_telemetry(text).await;
    let in1 = input_addr(&app, "one", 0).await;
    let in2 = input_addr(&app, "two", 0).await;
    let s1 = source(in1, Gen::new(0));
    // Route two carries a different PID so the receiver can tell them apart.
    let s2 = tokio::spawn(async move {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut p = [0xFFu8; 188 * 7];
        for (i, c) in p.chunks_exact_mut(188).enumerate() {
            c[0] = 0x47;
            c[1] = 0x02;
            c[2] = 0x00;
            c[3] = 0x10 | (i as u8);
        }
        let mut cc = 0u8;
        loop {
            for c in p.chunks_exact_mut(188) {
                c[3] = 0x10 | cc;
                cc = (cc + 1) & 0x0F;
            }
            let _ = s.send_to(&p, in2).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let spec = OutputSpec {
        name: "hot".into(),
        enabled: true,
        kind: OutputKind::Udp {
            dest: rx.local_addr().expect("addr"),
            ttl: None,
        },
        queue: 256,
        source: Default::default(),
    };
    app.engine
        .add_output("one", spec.clone())
        .await
        .expect("add");
    let pids = |buf: &[u8]| -> Vec<u16> {
        buf.chunks_exact(188)
            .map(|p| (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]))
            .collect()
    };
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
        .await
        .expect("data after hot add")
        .expect("recv");
    assert!(!pids(&buf[..n]).contains(&0x200));
    // Duplicate names are refused.
    assert!(app.engine.add_output("one", spec).await.is_err());
    // Disable: nothing arrives.
    app.engine
        .set_output_enabled("one", "hot", false)
        .await
        .expect("disable");
    assert!(
        goes_quiet(&rx, Duration::from_millis(400)).await,
        "a disabled output still sends"
    );
    app.engine
        .set_output_enabled("one", "hot", true)
        .await
        .expect("enable");
    let local_before = output_addr(&app, "one", "hot").await;
    // Move to route two: same socket, route two's packets.
    app.engine
        .move_output("one", "hot", "two")
        .await
        .expect("move");
    // Datagrams route one sent before the move may still be in flight:
    // wait for route two's.
    let (n, from) = eventually(
        "route two's data after the move",
        Duration::from_secs(10),
        async || {
            let (n, from) = tokio::time::timeout(Duration::from_secs(1), rx.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            pids(&buf[..n])
                .iter()
                .all(|&p| p == 0x200)
                .then_some((n, from))
        },
    )
    .await;
    assert!(
        pids(&buf[..n]).iter().all(|&p| p == 0x200),
        "route two's stream after the move"
    );
    assert_eq!(
        from, local_before,
        "the output kept its socket across the move"
    );
    let d = app.engine.desired().await;
    assert!(d.routes[1].outputs.iter().any(|o| o.name == "hot"));
    assert!(d.routes[0].outputs.is_empty());
    // Remove: the output disappears and stops sending.
    app.engine
        .remove_output("two", "hot")
        .await
        .expect("remove");
    assert!(
        goes_quiet(&rx, Duration::from_millis(400)).await,
        "a removed output still sends"
    );
    assert!(app.engine.remove_output("two", "hot").await.is_err());
    s1.abort();
    s2.abort();
    app.stop().await;
}

async fn wait_point(app: &App, id: &str, want: Value) {
    let pid = app.db.lookup(id).expect("point");
    eventually(
        &format!("{id} = {want:?}"),
        Duration::from_secs(10),
        async || (app.db.read(pid).and_then(|s| s.value) == Some(want)).then_some(()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_points_drive_the_primary_route() {
    let out = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let text = format!(
        "{TWO_INPUTS}[[route.output]]\nname = \"udp\"\ntype = \"udp\"\ndest = \"{}\"\n",
        out.local_addr().expect("addr")
    );
    let app = TestApp::with_telemetry(&text).await;
    let who = Source::new(Protocol::Modbus, None, None);
    let a = input_addr(&app, "main", 0).await;
    let b = input_addr(&app, "main", 1).await;
    let sa = source(a, Gen::new(0));
    let sb = source(b, Gen::new(3));
    wait_point(&app, "stream_status", Value::Enum(1)).await;
    wait_point(&app, "input_status", Value::Enum(1)).await;
    wait_point(&app, "active_streams", Value::Number(1.0)).await;
    let lat = app
        .db
        .read(app.db.lookup("encoding_latency").expect("pt"))
        .expect("st");
    assert_eq!(lat.quality, Quality::Unavailable);
    assert!(lat.value.is_none());

    // A viewer on HTTP-TS counts as a connected viewer.
    let http = app.addrs.http.expect("http");
    let mut viewer = tokio::net::TcpStream::connect(http).await.expect("connect");
    viewer
        .write_all(b"GET /stream/main.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("req");
    let mut head = vec![0u8; 4096];
    let n = viewer.read(&mut head).await.expect("read");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    wait_point(&app, "connected_viewers", Value::Number(1.0)).await;
    drop(viewer);
    wait_point(&app, "connected_viewers", Value::Number(0.0)).await;

    // Stream Enable off: outputs stop, Stream Status STOPPED.
    let se = app.db.lookup("stream_enable").expect("pt");
    app.db
        .write(se, Some(Value::Bool(false)), 10, &who)
        .expect("write");
    wait_point(&app, "stream_status", Value::Enum(2)).await;
    let mut buf = vec![0u8; 65536];
    assert!(
        goes_quiet(&out, Duration::from_millis(400)).await,
        "stream disabled but data still flows"
    );
    app.db.write(se, None, 10, &who).expect("relinquish");
    wait_point(&app, "stream_status", Value::Enum(1)).await;
    tokio::time::timeout(Duration::from_secs(1), out.recv(&mut buf))
        .await
        .expect("data again")
        .expect("recv");

    // Input Select 2 forces the backup.
    let is = app.db.lookup("input_select").expect("pt");
    app.db
        .write(is, Some(Value::Number(2.0)), 10, &who)
        .expect("write");
    let end = Instant::now() + Duration::from_secs(2);
    while app.engine.snapshot().route("main").expect("r").active_input != Some(1) {
        assert!(Instant::now() < end, "input select 2 not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.db
        .write(is, Some(Value::Number(0.0)), 10, &who)
        .expect("write");

    // Recording Enable writes TS files under data_dir/recordings/main.
    let re = app.db.lookup("recording_enable").expect("pt");
    app.db
        .write(re, Some(Value::Bool(true)), 10, &who)
        .expect("write");
    until_route(&app, "main", "100 kB recorded", |r| {
        r.outputs
            .iter()
            .any(|o| o.kind == "record" && o.bytes > 100_000)
    })
    .await;
    app.db
        .write(re, Some(Value::Bool(false)), 10, &who)
        .expect("write");
    let snap = app.engine.snapshot();
    let rec = snap
        .route("main")
        .and_then(|r| r.outputs.iter().find(|o| o.kind == "record"))
        .expect("a recording output")
        .clone();
    assert!(rec.bytes > 100_000, "recorded only {} bytes", rec.bytes);
    // Relinquished: the route is as configured again, i.e. the output the
    // write added stays off (it never turns back on within a second).
    let rec_on = |app: &App| {
        app.engine
            .snapshot()
            .route("main")
            .and_then(|r| r.outputs.iter().find(|o| o.kind == "record").cloned())
            .is_some_and(|o| o.enabled)
    };
    let end = Instant::now() + Duration::from_secs(5);
    while rec_on(&app) {
        assert!(Instant::now() < end, "Recording Enable false left it on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.db.write(re, None, 10, &who).expect("relinquish");
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(
            !rec_on(&app),
            "relinquished Recording Enable left the recording on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // System Restart rebuilds the router and relinquishes its slot.
    let sr = app.db.lookup("system_restart").expect("pt");
    let mut events = app.engine.subscribe();
    app.db
        .write(sr, Some(Value::Bool(true)), 8, &who)
        .expect("write");
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(3), events.recv())
            .await
            .expect("restart event")
            .expect("event");
        if ev.kind == EventKind::Restarted {
            break;
        }
    }
    wait_point(&app, "system_restart", Value::Bool(false)).await;
    let pa = app.db.priority_array(sr).expect("pa");
    assert!(pa.slots[7].is_none(), "slot 8 not relinquished");
    // The rebuilt route binds again (port 0 in this config: new ports)
    // and streams once the sources follow.
    sa.abort();
    sb.abort();
    let ev = app.engine.recent_events();
    assert!(ev.iter().any(|e| e.kind == EventKind::RouteStopped));
    let a2 = input_addr(&app, "main", 0).await;
    let sa = source(a2, Gen::new(0));
    let end = Instant::now() + Duration::from_secs(3);
    while app.engine.snapshot().route("main").expect("r").active_input != Some(0) {
        assert!(Instant::now() < end, "rebuilt route does not stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_point(&app, "stream_status", Value::Enum(1)).await;
    sa.abort();
    wait_point(&app, "input_status", Value::Enum(2)).await;
    wait_point(&app, "stream_status", Value::Enum(3)).await;
    app.stop().await;
}

// ------------------------------------------------------------------ SRT

/// A loopback UDP socket with a 4 MiB receive buffer (the kernel's
/// `rmem_max` here), so a test task the scheduler starves for a while does
/// not lose datagrams.
fn big_rx_socket() -> UdpSocket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    s.set_recv_buffer_size(4 << 20).expect("SO_RCVBUF");
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
        .expect("bind");
    s.set_nonblocking(true).expect("nonblocking");
    UdpSocket::from_std(s.into()).expect("tokio socket")
}

fn slt(args: &[&str]) -> Child {
    Command::new("srt-live-transmit")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("srt-live-transmit is installed (apt install srt-tools)")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port()
}

/// Runs an srt-live-transmit caller from our SRT listener output `srt` to a
/// local UDP socket and returns what it relays within `d`.
async fn pull_via_slt(url: String, d: Duration) -> CcCheck {
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let _c = Kill(slt(&[
        &url,
        &format!("udp://{}", sink.local_addr().expect("addr")),
    ]));
    let mut cc = CcCheck::default();
    receive(&sink, d, &mut cc).await;
    cc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_interop_with_srt_live_transmit() {
    let ours_in = free_udp_port();
    let slt_listen = free_udp_port();
    let text = format!(
        r#"
[[route]]
name = "s"
[[route.input]]
type = "srt"
mode = "listener"
addr = "127.0.0.1:{ours_in}"
passphrase = "correcthorsebattery"
pbkeylen = 32
[[route.output]]
name = "lst"
type = "srt"
mode = "listener"
addr = "127.0.0.1:0"
passphrase = "anothersecretphrase"
pbkeylen = 16
allow = ["viewer"]
[[route.output]]
name = "plain"
type = "srt"
mode = "listener"
addr = "127.0.0.1:0"
[[route.output]]
name = "push"
type = "srt"
mode = "caller"
addr = "127.0.0.1:{slt_listen}"
passphrase = "callersidesecret"
pbkeylen = 24
latency = "1s"
"#
    );
    let app = TestApp::with_telemetry(&text).await;
    // 0. A caller offering AES-128 to our AES-256 listener input is refused
    //    (as the sender its key length would otherwise win).
    let weak_port = free_udp_port();
    let weak = Kill(slt(&[
        &format!("udp://127.0.0.1:{weak_port}"),
        &format!("srt://127.0.0.1:{ours_in}?passphrase=correcthorsebattery&pbkeylen=16"),
    ]));
    // The source sends continuously, so srt-live-transmit needs no head
    // start; the refusal is what this waits for.
    let wsrc = source(
        format!("127.0.0.1:{weak_port}").parse().expect("addr"),
        Gen::new(0),
    );
    until_route(&app, "s", "the AES-128 caller refused", |r| {
        r.inputs[0].rejected >= 1
    })
    .await;
    wsrc.abort();
    drop(weak);
    let i0 = app.engine.snapshot().route("s").expect("r").inputs[0].clone();
    assert_eq!(
        i0.bytes, 0,
        "a caller with the wrong key length delivered data"
    );
    assert!(i0.rejected >= 1, "the AES-128 caller was not counted");
    // 1. srt-live-transmit caller (AES-256) into our listener input.
    let feed_port = free_udp_port();
    let _feeder = Kill(slt(&[
        &format!("udp://127.0.0.1:{feed_port}"),
        &format!("srt://127.0.0.1:{ours_in}?passphrase=correcthorsebattery&pbkeylen=32"),
    ]));
    let src = source(
        format!("127.0.0.1:{feed_port}").parse().expect("addr"),
        Gen::new(0),
    );
    // An external process's handshake and key exchange: the shared 15-s
    // route wait (a 5-s one ran out once in the issue-19 stress, at load 4).
    until_route(&app, "s", "data from the SRT caller", |r| {
        r.active_input == Some(0)
    })
    .await;
    let lst = output_addr(&app, "s", "lst").await;
    let plain = output_addr(&app, "s", "plain").await;

    // 2. Our caller (AES-192) into srt-live-transmit's listener. A 1 s SRT
    // latency and a 4 MiB receive buffer on the last UDP leg let the path
    // ride out scheduling stalls of a loaded machine (the stress runs saw
    // 9 gaps in 7875 packets with 200 ms and the default buffer).
    let back = big_rx_socket();
    let _sltl = Kill(slt(&[
        &format!(
            "srt://:{slt_listen}?mode=listener&passphrase=callersidesecret&pbkeylen=24&latency=1000"
        ),
        &format!("udp://{}", back.local_addr().expect("addr")),
    ]));
    let mut cc = CcCheck::default();
    receive(&back, Duration::from_secs(4), &mut cc).await;
    assert!(
        cc.packets > 500,
        "our caller delivered {} packets",
        cc.packets
    );
    // Loopback through two srt-live-transmit processes on a loaded 2-core
    // machine can lose a datagram on their UDP legs; what reached our input
    // is counted there, and the relay adds no gaps of its own.
    let upstream = app.engine.snapshot().route("s").expect("r").inputs[0].cc_errors;
    assert!(
        cc.errors <= upstream + cc.packets / 1000,
        "our caller path: {} CC errors in {} packets (input saw {upstream})",
        cc.errors,
        cc.packets
    );

    // 3. Ten srt-live-transmit callers at once on the plain listener, plus
    //    a wrong passphrase and a wrong key length on the encrypted one.
    let mut sinks = Vec::new();
    let mut kids = Vec::new();
    for _ in 0..10 {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        kids.push(Kill(slt(&[
            &format!("srt://{plain}"),
            &format!("udp://{}", s.local_addr().expect("addr")),
        ])));
        sinks.push(s);
    }
    let good = pull_via_slt(
        format!("srt://{lst}?passphrase=anothersecretphrase&pbkeylen=16&streamid=viewer"),
        Duration::from_secs(4),
    );
    let bad_pass = pull_via_slt(
        format!("srt://{lst}?passphrase=nottherightone&pbkeylen=16&streamid=viewer"),
        Duration::from_secs(4),
    );
    // A receiving caller asking for AES-256 from the AES-128 listener: the
    // sender's (our) length wins in libsrt's handshake, so it is served at
    // the configured AES-128 and cannot downgrade or upset anyone.
    let other_len = pull_via_slt(
        format!("srt://{lst}?passphrase=anothersecretphrase&pbkeylen=32&streamid=viewer"),
        Duration::from_secs(4),
    );
    let bad_sid = pull_via_slt(
        format!("srt://{lst}?passphrase=anothersecretphrase&pbkeylen=16&streamid=intruder"),
        Duration::from_secs(4),
    );
    // The ten sinks are read at the same time, so their socket buffers
    // never overflow in the test itself.
    let tens = futures::future::join_all(sinks.iter().map(|s| async move {
        let mut cc = CcCheck::default();
        receive(s, Duration::from_secs(4), &mut cc).await;
        cc
    }));
    let lst_stats = async {
        // Sampled while the callers above are connected.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let snap = app.engine.snapshot();
        let r = snap.route("s").expect("r");
        r.outputs
            .iter()
            .find(|o| o.name == "lst")
            .cloned()
            .expect("lst")
    };
    let (good, bad_pass, bad_sid, other_len, tens, lst_stats) =
        tokio::join!(good, bad_pass, bad_sid, other_len, tens, lst_stats);
    assert!(good.packets > 500, "the good caller got {}", good.packets);
    assert_eq!(good.errors, 0);
    assert!(other_len.packets > 500, "got {}", other_len.packets);
    assert_eq!(lst_stats.clients, 2, "good + AES-256-asking callers");
    assert!(
        lst_stats.srt.iter().all(|c| c.pbkeylen == 16),
        "a caller got another key length: {:?}",
        lst_stats.srt
    );
    // Counted per refused handshake (the caller keeps retrying).
    assert!(
        lst_stats.rejected >= 1,
        "the refused streamid is not counted"
    );
    assert_eq!(bad_pass.packets, 0, "a wrong passphrase got data");
    assert_eq!(bad_sid.packets, 0, "a refused streamid got data");
    let snap = app.engine.snapshot();
    let r = snap.route("s").expect("r");
    let p = r.outputs.iter().find(|o| o.name == "plain").expect("plain");
    assert_eq!(p.clients, 10, "callers on the plain listener");
    assert_eq!(p.srt.len(), 10);
    assert!(p.srt.iter().all(|c| c.pkt_sent > 0));
    let i = &r.inputs[0];
    assert_eq!(i.srt.len(), 1);
    assert!(i.srt[0].pkt_recv > 0);
    assert!(i.srt[0].rtt_ms >= 0.0);
    for cc in &tens {
        assert!(
            cc.packets > 500,
            "one of the 10 callers starved: {}",
            cc.packets
        );
        assert_eq!(cc.errors, 0);
    }
    drop(kids);
    src.abort();
    app.stop().await;
}

// ------------------------------------------------------------------ ffprobe

/// Decodes `url` with ffprobe for a few seconds; returns (video frames,
/// continuity errors reported by the demuxer).
fn ffprobe_frames(url: &str, secs: u32) -> (u64, u64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "warning",
            "-rw_timeout",
            "5000000",
            "-read_intervals",
            &format!("%+{secs}"),
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .expect("ffprobe is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let frames = stdout
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<u64>().ok())
        .next()
        .unwrap_or(0);
    let cc = stderr.matches("Continuity check failed").count() as u64
        + stderr.matches("continuity").count() as u64;
    (frames, cc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_decodes_every_output_type_across_a_failover() {
    let udp_out = free_udp_port();
    let text = format!(
        r#"
[[route]]
name = "tv"
switch_back = false
[[route.input]]
name = "main"
type = "udp"
bind = "127.0.0.1:0"
[[route.input]]
name = "backup"
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "udp"
type = "udp"
dest = "127.0.0.1:{udp_out}"
[[route.output]]
name = "http"
type = "http"
[[route.output]]
name = "srt"
type = "srt"
mode = "listener"
addr = "127.0.0.1:0"
[[route.output]]
name = "hls"
type = "hls"
segment = "1s"
[[route.output]]
name = "rec"
type = "record"
segment = "1min"
"#
    );
    let app = TestApp::with_telemetry(&text).await;
    let a = input_addr(&app, "tv", 0).await;
    let b = input_addr(&app, "tv", 1).await;
    let ff = |port: u16, secs: u32| {
        Command::new("ffmpeg")
            .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
            .arg("testsrc=size=320x240:rate=25")
            .args(["-f", "lavfi", "-i", "sine", "-c:v", "libx264", "-g", "25"])
            .args([
                "-preset",
                "ultrafast",
                "-c:a",
                "aac",
                "-t",
                &secs.to_string(),
            ])
            .args([
                "-f",
                "mpegts",
                &format!("udp://127.0.0.1:{port}?pkt_size=1316"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("ffmpeg is installed")
    };
    // Recording Enable governs the primary route's record outputs.
    let re = app.db.lookup("recording_enable").expect("pt");
    app.db
        .write(re, Some(Value::Bool(true)), 10, &Source::internal())
        .expect("write");
    let primary = Kill(ff(a.port(), 30));
    let _backup = Kill(ff(b.port(), 30));
    let srt = output_addr(&app, "tv", "srt").await;
    let http = app.addrs.http.expect("http");
    // Wait for the first HLS segment (x264 starts slowly on a busy machine).
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let r = reqwest::get(format!("http://{http}/hls/tv/index.m3u8")).await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < end, "no HLS playlist");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Kill the primary while everything is being probed.
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(primary);
    });
    let urls = [
        format!("udp://127.0.0.1:{udp_out}"),
        format!("http://{http}/stream/tv.ts"),
        format!("srt://{srt}"),
        format!("http://{http}/hls/tv/index.m3u8"),
    ];
    let probes: Vec<_> = urls
        .iter()
        .map(|u| {
            let u = u.clone();
            tokio::task::spawn_blocking(move || (u.clone(), ffprobe_frames(&u, 7)))
        })
        .collect();
    for p in probes {
        let (url, (frames, cc)) = p.await.expect("probe");
        assert!(frames >= 50, "{url}: only {frames} video frames decoded");
        assert_eq!(cc, 0, "{url}: continuity errors");
    }
    killer.await.expect("killer");
    let snap = app.engine.snapshot();
    let r = snap.route("tv").expect("route");
    assert_eq!(r.active_input, Some(1), "did not fail over to the backup");
    // The recording decodes too.
    let dir = app_data_dir(&app).join("recordings").join("tv");
    let file = std::fs::read_dir(&dir)
        .expect("recordings dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ts"))
        .expect("a recording");
    let (frames, cc) = ffprobe_frames(&file.display().to_string(), 60);
    assert!(frames >= 100, "recording has {frames} frames");
    assert_eq!(cc, 0, "recording has continuity errors");
    app.stop().await;
}

fn app_data_dir(app: &App) -> std::path::PathBuf {
    app.engine.data_dir().to_path_buf()
}

/// Inputs change hot: adding a backup and removing an idle one never
/// touches the active input or the outputs (no switch event, no gap, no
/// CC error); removing the active input is a failover to the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_input_changes_leave_the_active_input_and_outputs_alone() {
    let out = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let text = format!(
        r#"
[[route]]
name = "main"
failover_timeout = "300ms"
[[route.input]]
name = "primary"
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "udp"
type = "udp"
dest = "{}"
"#,
        out.local_addr().expect("addr")
    );
    let app = TestApp::with_telemetry(&text).await;
    let mut events = app.engine.subscribe();
    let a = input_addr(&app, "main", 0).await;
    let src_a = source(a, Gen::new(0));
    let stop_rx = tokio_util::sync::CancellationToken::new();
    // Receives the whole time, recording the longest silence.
    let rx_task = {
        let (out, stop) = (out.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut cc = CcCheck::default();
            let mut buf = vec![0u8; 65536];
            let mut last: Option<Instant> = None;
            let mut gap = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return (cc, gap),
                    r = out.recv(&mut buf) => match r {
                        Ok(n) => {
                            let now = Instant::now();
                            if let Some(l) = last {
                                gap = gap.max(now - l);
                            }
                            last = Some(now);
                            cc.feed(&buf[..n]);
                        }
                        Err(_) => return (cc, gap),
                    },
                }
            }
        })
    };
    until_route(&app, "main", "the primary forwarded", |r| {
        r.active_input == Some(0) && r.outputs.iter().any(|o| o.name == "udp" && o.packets > 100)
    })
    .await;
    let desired = app.engine.desired().await;
    let primary = desired.routes[0].inputs[0].clone();
    let mut backup = primary.clone();
    backup.name = "backup".into();
    // The start-up switch (none -> primary) is not what this test is about.
    while events.try_recv().is_ok() {}
    // Add a backup (hot), feed it, then remove it again.
    app.engine
        .set_inputs("main", vec![primary.clone(), backup.clone()])
        .await
        .expect("add input");
    let b = input_addr(&app, "main", 1).await;
    assert_eq!(
        input_addr(&app, "main", 0).await,
        a,
        "primary was restarted"
    );
    let src_b = source(b, Gen::new(9));
    let r = until_route(&app, "main", "the backup receiving", |r| {
        r.inputs.len() == 2 && r.inputs[1].packets > 0
    })
    .await;
    assert_eq!(r.active_input, Some(0));
    assert_eq!(r.inputs.len(), 2);
    assert!(r.inputs[1].packets > 0, "backup input receives");
    app.engine
        .set_inputs("main", vec![primary.clone()])
        .await
        .expect("remove idle input");
    src_b.abort();
    // A negative check needs a window: a switch would come within one
    // failover timeout of the change; watch for a few.
    until_route(&app, "main", "the idle input gone", |r| r.inputs.len() == 1).await;
    let seen = output_packets(&app, "main", "udp");
    until_route(&app, "main", "200 more packets out", |r| {
        r.outputs
            .iter()
            .any(|o| o.name == "udp" && o.packets > seen + 200)
    })
    .await;
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev.kind, EventKind::InputSwitched { .. }),
            "hot change of an idle input switched inputs: {ev:?}"
        );
    }
    // Removing the active input (backup fed) is a failover.
    app.engine
        .set_inputs("main", vec![primary.clone(), backup.clone()])
        .await
        .expect("add input");
    let b = input_addr(&app, "main", 1).await;
    let src_b = source(b, Gen::new(5));
    until_route(&app, "main", "the new backup receiving", |r| {
        r.inputs.len() == 2 && r.inputs[1].packets > 0
    })
    .await;
    app.engine
        .set_inputs("main", vec![backup.clone()])
        .await
        .expect("remove active input");
    let switched = loop {
        let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("a switch event")
            .expect("event");
        if let EventKind::InputSwitched { to: Some(0), .. } = ev.kind {
            break true;
        }
    };
    assert!(switched);
    // Enough in all for the continuity check below.
    let seen = output_packets(&app, "main", "udp");
    until_route(&app, "main", "200 more packets out", |r| {
        r.outputs
            .iter()
            .any(|o| o.name == "udp" && o.packets > (seen + 200).max(2000))
    })
    .await;
    src_a.abort();
    src_b.abort();
    stop_rx.cancel();
    let (cc, gap) = rx_task.await.expect("receiver");
    assert!(cc.packets > 1000, "only {} packets", cc.packets);
    assert_eq!(cc.errors, 0, "continuity errors across input changes");
    assert!(
        // Loose on a shared machine: a stall of the route would be seconds.
        gap < Duration::from_millis(1500),
        "output silent for {gap:?}"
    );
    let snap = app.engine.snapshot();
    assert_eq!(snap.route("main").expect("route").inputs[0].name, "backup");
    app.stop().await;
}

/// (first video packet is a keyframe, duration from PTS) of a TS file by
/// ffprobe: last PTS + its duration - first PTS.
fn ffprobe_segment(path: &Path) -> (bool, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts_time,duration_time,flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pts = Vec::new();
    let mut first_key = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(p), Some(d)) = (
            f.first().and_then(|x| x.parse::<f64>().ok()),
            f.get(1).and_then(|x| x.parse::<f64>().ok()),
        ) else {
            continue;
        };
        if first_key.is_none() {
            first_key = Some(f.get(2).is_some_and(|x| x.starts_with('K')));
        }
        pts.push((p, d));
    }
    let lo = pts.iter().map(|x| x.0).fold(f64::MAX, f64::min);
    let hi = pts.iter().map(|x| x.0 + x.1).fold(f64::MIN, f64::max);
    (first_key.unwrap_or(false), hi - lo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_extinf_matches_ffprobe_durations_and_segments_start_at_keyframes() {
    let text = r#"
[[route]]
name = "h"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "hls"
type = "hls"
segment = "2s"
"#;
    let app = TestApp::with_telemetry(text).await;
    let inp = input_addr(&app, "h", 0).await;
    let http = app.addrs.http.expect("http");
    // 25 fps with a keyframe every 0.6 s: cuts land at 2.4 s of media.
    let _ff = Kill(
        Command::new("ffmpeg")
            .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
            .arg("testsrc=size=320x240:rate=25")
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "15"])
            .args(["-t", "30", "-f", "mpegts"])
            .arg(format!("udp://{inp}?pkt_size=1316"))
            .stdin(Stdio::null())
            .spawn()
            .expect("ffmpeg is installed"),
    );
    let end = Instant::now() + Duration::from_secs(25);
    let playlist = loop {
        if let Ok(r) = reqwest::get(format!("http://{http}/hls/h/index.m3u8")).await {
            if r.status().is_success() {
                let t = r.text().await.expect("body");
                if t.matches("#EXTINF:").count() >= 3 {
                    break t;
                }
            }
        }
        assert!(Instant::now() < end, "no 3 HLS segments in 25 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        playlist.starts_with("#EXTM3U\n#EXT-X-VERSION:3\n"),
        "{playlist}"
    );
    let target: f64 = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .and_then(|v| v.parse().ok())
        .expect("target duration");
    assert!(playlist.contains("#EXT-X-MEDIA-SEQUENCE:"), "{playlist}");
    let dir = tempfile::tempdir().expect("tmp");
    let lines: Vec<&str> = playlist.lines().collect();
    let mut checked = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(v) = l.strip_prefix("#EXTINF:") else {
            continue;
        };
        let extinf: f64 = v.trim_end_matches(',').parse().expect("EXTINF");
        let name = lines[i + 1];
        let body = reqwest::get(format!("http://{http}/hls/h/{name}"))
            .await
            .expect("GET")
            .bytes()
            .await
            .expect("segment");
        let f = dir.path().join(name);
        std::fs::write(&f, &body).expect("write");
        let (key, dur) = ffprobe_segment(&f);
        assert!(key, "{name} does not start with a keyframe");
        assert!(
            (dur - extinf).abs() <= 0.04 + 1e-6,
            "{name}: EXTINF {extinf} but ffprobe says {dur}"
        );
        assert!(extinf.round() <= target);
        assert!(
            (extinf - 2.4).abs() < 0.05,
            "{name}: not cut on media time: {extinf}"
        );
        checked += 1;
    }
    assert!(checked >= 3);
    app.stop().await;
}

/// The `input_rejected` events of `route` so far (as JSON, so that the
/// test reads what the API's event feed shows).
fn input_rejections(app: &App, route: &str) -> Vec<String> {
    app.engine
        .recent_events()
        .iter()
        .filter(|e| e.route == route)
        .filter_map(|e| serde_json::to_value(e).ok())
        .filter(|j| j["event"] == "input_rejected")
        .map(|j| j["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Issue 17 items 2 and 4: a busy SRT listener input refuses a second
/// caller in the handshake (it used to be "connected" into libsrt's backlog
/// and stream into nothing), and a caller with a wrong passphrase (refused
/// by libsrt after our listen callback admitted it) is counted and
/// reported too; the publisher on air never notices either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_listener_input_refuses_second_caller_and_wrong_passphrase() {
    let port = free_udp_port();
    let app = TestApp::with_telemetry(&format!(
        r#"
[[route]]
name = "busy"
[[route.input]]
name = "contribution"
type = "srt"
mode = "listener"
addr = "127.0.0.1:{port}"
passphrase = "correcthorsebattery"
pbkeylen = 16
[[route.output]]
type = "udp"
dest = "127.0.0.1:9"
"#
    ))
    .await;
    let input = |app: &App| app.engine.snapshot().route("busy").expect("r").inputs[0].clone();
    let caller = |pass: &str, pbkeylen: u32| {
        let feed = free_udp_port();
        let k = Kill(slt(&[
            &format!("udp://127.0.0.1:{feed}"),
            &format!("srt://127.0.0.1:{port}?passphrase={pass}&pbkeylen={pbkeylen}"),
        ]));
        (
            k,
            format!("127.0.0.1:{feed}")
                .parse::<SocketAddr>()
                .expect("addr"),
        )
    };
    // The publisher.
    // Sources send continuously: the callers need no head start.
    let (_first, feed) = caller("correcthorsebattery", 16);
    let src = source(feed, Gen::new(0));
    let end = Instant::now() + Duration::from_secs(10);
    while !(input(&app).clients == 1 && input(&app).bytes > 100_000) {
        assert!(Instant::now() < end, "the first caller never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(input(&app).rejected, 0);
    // A second caller with the right passphrase, and one offering another
    // key length, while the first one publishes: refused, counted, reported.
    let (second, feed2) = caller("correcthorsebattery", 16);
    let (third, feed3) = caller("correcthorsebattery", 32);
    let src2 = source(feed2, Gen::new(5));
    let src3 = source(feed3, Gen::new(7));
    let end = Instant::now() + Duration::from_secs(10);
    while input(&app).rejected < 2 || input_rejections(&app, "busy").len() < 2 {
        assert!(
            Instant::now() < end,
            "second callers not refused: rejected = {}, events {:?}",
            input(&app).rejected,
            input_rejections(&app, "busy")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = input_rejections(&app, "busy");
    assert!(ev.iter().any(|r| r.contains("already connected")), "{ev:?}");
    let i = input(&app);
    assert_eq!(i.clients, 1, "{i:?}");
    assert_eq!(i.cc_errors, 0, "the publisher on air was disturbed");
    src2.abort();
    src3.abort();
    drop(second);
    drop(third);

    // The publisher leaves; a caller with a wrong passphrase is refused by
    // libsrt, and that refusal is counted and reported as well.
    src.abort();
    drop(_first);
    let end = Instant::now() + Duration::from_secs(15);
    while input(&app).clients != 0 {
        assert!(Instant::now() < end, "the publisher never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = input(&app).rejected;
    let (_bad, feed4) = caller("nottherightphrase", 16);
    let src4 = source(feed4, Gen::new(3));
    let end = Instant::now() + Duration::from_secs(10);
    while input(&app).rejected <= before {
        assert!(
            Instant::now() < end,
            "the wrong passphrase was not counted (rejected = {before})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = input_rejections(&app, "busy");
    assert!(ev.iter().any(|r| r.contains("passphrase")), "{ev:?}");
    let i = input(&app);
    assert_eq!(i.clients, 0, "a wrong passphrase got connected: {i:?}");
    src4.abort();
    app.stop().await;
}

/// Issue 17 item 7: one rule for every command point — nothing written
/// leaves the configuration alone. Recording Enable at its relinquish
/// default (false) used to switch off a `record` output configured
/// `enabled = true` on the primary route; a written value overrides it,
/// relinquishing it restores the configured state. Connected Viewers and
/// Total Bitrate Out say in `/api/points` that they update every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritten_recording_enable_keeps_the_configured_record_output() {
    let app = TestApp::with_telemetry(
        r#"
primary_route = "rec"
[[route]]
name = "rec"
[[route.input]]
type = "generator"
bitrate = 500000
[[route.output]]
name = "archive"
type = "record"
enabled = true
"#,
    )
    .await;
    let archive = |app: &App| {
        app.engine
            .snapshot()
            .route("rec")
            .and_then(|r| r.outputs.iter().find(|o| o.name == "archive").cloned())
            .expect("archive")
    };
    let until_enabled = |want: bool| {
        let app = &app;
        async move {
            let end = Instant::now() + Duration::from_secs(5);
            while archive(app).enabled != want {
                assert!(Instant::now() < end, "archive enabled != {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The bridge has applied every command point once it publishes.
    let end = Instant::now() + Duration::from_secs(5);
    while app
        .db
        .read(app.db.lookup("active_streams").expect("point"))
        .and_then(|s| s.value)
        .is_none()
    {
        assert!(Instant::now() < end, "the bridge never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the record output has written data, the bridge has had its
    // chance to turn it off: it must still be on.
    eventually_true("the record output writing", Duration::from_secs(10), || {
        archive(&app).bytes > 0
    })
    .await;
    let a = archive(&app);
    assert!(
        a.enabled,
        "nothing written, yet the record output is off: {a:?}"
    );
    // Written false: off; relinquished: back to the configured `true`.
    let id = app.db.lookup("recording_enable").expect("point");
    let who = Source::new(Protocol::Modbus, None, None);
    app.db
        .write(id, Some(Value::Bool(false)), 8, &who)
        .expect("write");
    until_enabled(false).await;
    app.db.write(id, None, 8, &who).expect("relinquish");
    until_enabled(true).await;

    let http = app.addrs.http.expect("http");
    let doc: serde_json::Value = reqwest::get(format!("http://{http}/api/points"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let list = doc
        .as_array()
        .or_else(|| doc["points"].as_array())
        .cloned()
        .unwrap_or_default();
    for id in ["connected_viewers", "total_bitrate_out"] {
        let p = list.iter().find(|p| p["id"] == id).expect(id);
        assert_eq!(p["period_s"], 1.0, "{id}: {p}");
    }
    app.stop().await;
}

/// Issue 17 item 6: an HLS viewer concatenates the segments of the
/// playlist; every segment starts with PAT and PMT (copies of the last
/// ones sent, renumbered by the output so that their counters run on by
/// one, issue 25 item 3) and every PID's counters run on across segment
/// boundaries. Investigated for the "one CC error at start" report:
/// not reproduced; kept as a regression test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_segments_continue_every_pids_counters() {
    let app = TestApp::with_telemetry(
        r#"
[[route]]
name = "h"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
type = "hls"
path = "h"
segment = "1s"
window = 6
"#,
    )
    .await;
    let src = source(input_addr(&app, "h", 0).await, Gen::new(0));
    let base = format!("http://{}/hls/h/", app.addrs.http.expect("http"));
    let c = reqwest::Client::new();
    let mut names = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while names.len() < 4 {
        assert!(Instant::now() < end, "fewer than 4 HLS segments: {names:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(r) = c.get(format!("{base}index.m3u8")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        names = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
    }
    let mut an = castpoint_sim::tsgen::TsAnalyzer::new();
    for n in &names {
        let body = c
            .get(format!("{base}{n}"))
            .send()
            .await
            .expect("segment")
            .bytes()
            .await
            .expect("body");
        assert!(body.len() >= 2 * 188 && body[0] == 0x47, "{n}");
        let pid = |p: &[u8]| (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        assert_eq!(pid(&body[..188]), 0, "{n} does not start with the PAT");
        an.feed(&body, 0);
    }
    let r = an.report();
    assert!(r.packets > 1000, "{r:?}");
    assert_eq!(
        r.cc_errors,
        0,
        "CC errors across {names:?}: {:?}",
        an.pids()
    );
    src.abort();
    app.stop().await;
}

/// Issue 25 (HLS memory): an HLS output keeps its finished segments as
/// files under `<data dir>/hls/<path>/` (the default `store = "disk"`):
/// the files are exactly the playlist's segments (plus the one in
/// progress), what is served is what is on disk, slid-out segments are
/// deleted, and `store = "memory"` writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_segments_live_on_disk_in_a_window_of_files() {
    let app = TestApp::with_telemetry(
        r#"
[[route]]
name = "h"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "disk"
type = "hls"
path = "d"
segment = "1s"
window = 3
[[route.output]]
name = "mem"
type = "hls"
path = "m"
segment = "1s"
window = 3
store = "memory"
"#,
    )
    .await;
    let src = source(input_addr(&app, "h", 0).await, Gen::new(0));
    let http = app.addrs.http.expect("http");
    let dir = app.data_dir().join("hls").join("d");
    let c = reqwest::Client::new();
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    // Wait until segments have slid out (the first is number 0).
    let end = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        assert!(Instant::now() < end, "the window never slid");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(r) = c
            .get(format!("http://{http}/hls/d/index.m3u8"))
            .send()
            .await
        else {
            continue;
        };
        let n = names(&r.text().await.unwrap_or_default());
        if n.len() == 3 && n[0] != "0.ts" && n[0] != "1.ts" {
            break n;
        }
    };
    let body = c
        .get(format!("http://{http}/hls/d/{}", listed[0]))
        .send()
        .await
        .expect("segment")
        .bytes()
        .await
        .expect("body");
    assert!(body.len() > 2 * 188 && body[0] == 0x47, "{}", body.len());
    // The segment's file holds what was served (unless it slid out since).
    if let Ok(f) = std::fs::read(dir.join(&listed[0])) {
        assert_eq!(f, body.to_vec(), "{}", listed[0]);
    }
    // Every file is a listed segment, the one in progress, or (for a
    // moment) one that just slid out: never more than the window + 2.
    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("hls dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(files.len() <= 3 + 2, "{files:?}");
    assert!(!files.iter().any(|f| f == "0.ts"), "0.ts kept: {files:?}");
    for f in &files {
        assert!(f == "part.ts" || f.ends_with(".ts"), "{files:?}");
    }
    // The memory store serves without files.
    let m = c
        .get(format!("http://{http}/hls/m/index.m3u8"))
        .send()
        .await
        .expect("playlist")
        .text()
        .await
        .expect("text");
    assert!(!names(&m).is_empty(), "{m}");
    assert!(!app.data_dir().join("hls").join("m").exists());
    // Removing the output removes its directory before the call returns:
    // an output started on the same path next finds none of its files.
    app.engine.remove_output("h", "disk").await.expect("remove");
    assert!(!dir.exists(), "{} left behind", dir.display());
    src.abort();
    app.stop().await;
}

/// A segment write that fails (here: the segment directory removed under
/// castpoint, as a cleanup job or a full disk would) leaves a playlist a
/// player can follow: sequence numbers without a gap (RFC 8216 6.2.1), the
/// first segment after the loss marked EXT-X-DISCONTINUITY, no listed
/// segment without its head (each starts with a PAT), the directory made
/// again, and the output back up once writes succeed. Before, the failed
/// batch's numbers were skipped and the next segment was listed without
/// its head, with no discontinuity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_on_disk_recovers_from_a_failed_write_without_a_gap() {
    let app = TestApp::with_telemetry(
        r#"
[[route]]
name = "h"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "disk"
type = "hls"
path = "d"
segment = "1s"
window = 8
"#,
    )
    .await;
    let src = source(input_addr(&app, "h", 0).await, Gen::new(0));
    let http = app.addrs.http.expect("http");
    let dir = app.data_dir().join("hls").join("d");
    let c = reqwest::Client::new();
    let playlist = || async {
        let r = c
            .get(format!("http://{http}/hls/d/index.m3u8"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        r.text().await.ok()
    };
    let seqs = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_suffix(".ts")?.parse().ok())
            .collect()
    };
    let end = Instant::now() + Duration::from_secs(30);
    let before = loop {
        assert!(Instant::now() < end, "no second segment");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(p) = playlist().await {
            if seqs(&p).len() >= 2 {
                break seqs(&p);
            }
        }
    };
    // A plain file where the directory was: every write fails (ENOTDIR)
    // until it goes.
    std::fs::remove_dir_all(&dir).expect("remove the segment directory");
    std::fs::write(&dir, b"in the way").expect("a file in the way");
    let output = || {
        app.engine.snapshot().route("h").and_then(|r| {
            r.outputs
                .iter()
                .find(|o| o.name == "disk")
                .map(|o| (o.up, o.error.clone()))
        })
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !matches!(output(), Some((false, Some(_)))) {
        assert!(
            Instant::now() < end,
            "the failed write is not reported: {:?}",
            output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = seqs(&playlist().await.expect("playlist"))
        .last()
        .copied()
        .expect("listed");
    assert!(last >= *before.last().expect("listed"));
    std::fs::remove_file(&dir).expect("out of the way");
    // Wait for two segments written after the loss.
    let end = Instant::now() + Duration::from_secs(30);
    let text = loop {
        assert!(Instant::now() < end, "no segments after the failed write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(p) = playlist().await {
            if seqs(&p).iter().filter(|s| **s > last).count() >= 2 {
                break p;
            }
        }
    };
    let listed = seqs(&text);
    for w in listed.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap in the sequence numbers:\n{text}");
    }
    let media_seq: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")?
                .trim()
                .parse()
                .ok()
        })
        .expect("media sequence");
    assert_eq!(media_seq, listed[0], "{text}");
    // Some segment after `last` was lost; the first one listed after the
    // loss is discontinuous.
    let lines: Vec<&str> = text.lines().collect();
    let first_after = lines
        .iter()
        .position(|l| l.strip_suffix(".ts").and_then(|n| n.parse::<u64>().ok()) == Some(last + 1))
        .expect("the segment after the loss is listed");
    assert!(
        lines[..first_after]
            .iter()
            .rev()
            .take_while(|l| !l.ends_with(".ts"))
            .any(|l| *l == "#EXT-X-DISCONTINUITY"),
        "no discontinuity before {}.ts:\n{text}",
        last + 1
    );
    for s in listed.iter().filter(|s| **s > last) {
        let body = c
            .get(format!("http://{http}/hls/d/{s}.ts"))
            .send()
            .await
            .expect("segment")
            .bytes()
            .await
            .expect("body");
        // A PAT first: sync byte, PUSI set, PID 0.
        assert!(
            body.len() >= 188 && body[0] == 0x47 && body[1] == 0x40 && body[2] == 0x00,
            "{s}.ts starts {:02x?}",
            &body[..body.len().min(4)]
        );
    }
    assert!(dir.is_dir(), "the segment directory is made again");
    // The output is up again (it read as failed while writes failed).
    assert_eq!(output(), Some((true, None)), "the HLS output stays failed");
    src.abort();
    app.stop().await;
}
