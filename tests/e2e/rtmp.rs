//! RTMP ingest end-to-end: a real ffmpeg publishing like OBS feeds a route whose SRT output srt-live-transmit relays and ffprobe decodes; wrong keys, double publishers and publisher loss (failover) against the running server.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint_sim::tsgen::TsAnalyzer;
use tokio::net::UdpSocket;

use crate::util::{eventually_true, TestApp};

const KEY: &str = "obs-k3y-s3cret";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// ffmpeg publishing like OBS: x264 zerolatency + AAC over RTMP (FLV).
fn publish(rtmp: SocketAddr, key: &str, secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x180:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", &secs.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", "25", "-c:a", "aac", "-b:a", "128k", "-f", "flv"])
        .arg(format!("rtmp://{rtmp}/live/{key}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg is installed")
}

/// Waits for a child to exit (killing it after `d`); true when it succeeded.
async fn exit_ok(c: &mut Child, d: Duration) -> Option<bool> {
    let end = Instant::now() + d;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st.success());
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn input_snapshot(app: &App, route: &str, i: usize) -> castpoint::engine::stats::IoSnapshot {
    app.engine.snapshot().route(route).expect("route").inputs[i].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_like_publisher_reaches_srt_viewer_and_bad_publishers_are_refused() {
    let app = TestApp::from_toml(&format!(
        r#"
[[route]]
name = "obs"
[[route.input]]
name = "studio"
type = "rtmp"
key = "{KEY}"
[[route.output]]
name = "srt"
type = "srt"
mode = "listener"
addr = "127.0.0.1:0"
"#
    ))
    .await;
    let rtmp = app.addrs.rtmp.expect("rtmp listener bound");
    let http = app.addrs.http.expect("http");
    // Before any publisher: the input is up and shows where to publish.
    eventually_true("the input to register", Duration::from_secs(5), || {
        let s = input_snapshot(&app, "obs", 0);
        s.up && s.local == Some(rtmp) && s.clients == 0
    })
    .await;
    // The key is write-only in the API.
    let doc = reqwest::get(format!("http://{http}/api/routes/obs"))
        .await
        .expect("GET route")
        .text()
        .await
        .expect("body");
    assert!(!doc.contains(KEY) && doc.contains("\"rtmp\""), "{doc}");

    let _good = Kill(publish(rtmp, KEY, 12));
    eventually_true("the publisher to connect", Duration::from_secs(10), || {
        let s = input_snapshot(&app, "obs", 0);
        s.clients == 1 && s.bytes > 0
    })
    .await;
    let s = input_snapshot(&app, "obs", 0);
    assert_eq!(s.kind, "rtmp");
    assert!(s.peer.is_some_and(|p| p.ip().is_loopback()), "{s:?}");

    // A wrong key and a second publisher on the live key are refused
    // (ffmpeg exits non-zero) while the first one keeps flowing.
    let mut wrong = publish(rtmp, "not-the-key", 5);
    let mut second = publish(rtmp, KEY, 5);
    assert_eq!(
        exit_ok(&mut wrong, Duration::from_secs(10)).await,
        Some(false)
    );
    assert_eq!(
        exit_ok(&mut second, Duration::from_secs(10)).await,
        Some(false)
    );

    // srt-live-transmit pulls the SRT listener output and relays it to us.
    let srt = loop {
        let o = app.engine.snapshot().route("obs").expect("route").outputs[0].clone();
        if let Some(a) = o.local {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let _slt = Kill(
        Command::new("srt-live-transmit")
            .arg(format!("srt://{srt}"))
            .arg(format!("udp://{}", sink.local_addr().expect("addr")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("srt-live-transmit is installed (srt-tools)"),
    );
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), sink.recv(&mut buf)).await
        {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got.len() > 50 * 188, "only {} bytes relayed", got.len());
    let mut an = TsAnalyzer::new();
    an.feed(&got, 0);
    let cc: u64 = an.pids().values().map(|p| p.cc_errors).sum();
    assert_eq!(cc, 0, "continuity errors: {:?}", an.pids());
    let s = input_snapshot(&app, "obs", 0);
    assert_eq!(s.cc_errors, 0);
    assert_eq!(s.clients, 1, "refusals must not disturb the publisher");
    assert!(s.bitrate_bps > 50_000, "{s:?}");

    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("relayed.ts");
    std::fs::write(&f, &got).expect("write");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .args([
            "stream=codec_name,width,height,sample_rate,nb_read_frames",
            "-of",
            "compact",
        ])
        .arg(&f)
        .output()
        .expect("ffprobe");
    let p = String::from_utf8_lossy(&out.stdout);
    assert!(p.contains("codec_name=h264|width=320|height=180"), "{p}");
    assert!(
        p.contains("codec_name=aac") && p.contains("sample_rate=48000"),
        "{p}"
    );
    let frames: u64 = p
        .lines()
        .find(|l| l.contains("h264"))
        .and_then(|l| l.rsplit("nb_read_frames=").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(frames >= 50, "{frames} video frames decoded: {p}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_leaving_fails_over_to_backup_and_back() {
    let app = TestApp::from_toml(&format!(
        r#"
[[route]]
name = "fo"
failover_timeout = "500ms"
switch_back = true
[[route.input]]
name = "studio"
type = "rtmp"
app = "studio"
key = "{KEY}"
[[route.input]]
name = "slate"
type = "generator"
bitrate = 500000
[[route.output]]
name = "u"
type = "udp"
dest = "127.0.0.1:9"
"#
    ))
    .await;
    let rtmp = app.addrs.rtmp.expect("rtmp");
    let active = |app: &App| {
        app.engine
            .snapshot()
            .route("fo")
            .and_then(|r| r.active_input)
    };
    // No publisher yet: the generator backup is on air.
    eventually_true("backup on air", Duration::from_secs(5), || {
        active(&app) == Some(1)
    })
    .await;
    // The key is registered for app "studio", not "live": refused.
    let mut c = publish(rtmp, KEY, 2);
    assert_eq!(exit_ok(&mut c, Duration::from_secs(10)).await, Some(false));
    let video_only = || {
        Command::new("ffmpeg")
            .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=320x180:rate=25")
            .args([
                "-t",
                "3",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "25",
            ])
            .args(["-f", "flv"])
            .arg(format!("rtmp://{rtmp}/studio/{KEY}"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ffmpeg")
    };
    // Twice: the publisher comes back and the route switches back to it.
    for round in 0..2 {
        let mut c = video_only();
        eventually_true("the RTMP input on air", Duration::from_secs(10), || {
            active(&app) == Some(0)
        })
        .await;
        assert_eq!(exit_ok(&mut c, Duration::from_secs(15)).await, Some(true));
        let left = Instant::now();
        eventually_true(
            "failover after the publisher left",
            Duration::from_secs(10),
            || active(&app) == Some(1),
        )
        .await;
        eprintln!(
            "round {round}: failover {:?} after the publisher left",
            left.elapsed()
        );
        let s = input_snapshot(&app, "fo", 0);
        assert_eq!(s.clients, 0);
        assert!(s.peer.is_none());
        // One muxer per input: a new publisher continues the CCs.
        assert_eq!(s.cc_errors, 0, "round {round}");
    }
    app.stop().await;
}

/// Hostile or broken peers get closed connections, never a stuck or
/// crashed server: wrong handshake version, an oversized message, garbage
/// chunk headers, and silence past `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_dropped_and_the_server_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let app = TestApp::from_toml(
        "[rtmp]\nidle_timeout = \"3s\"\nmax_message = 65536\n\
         [[route]]\nname = \"r\"\n[[route.input]]\ntype = \"rtmp\"\nkey = \"k\"\n\
         [[route.output]]\ntype = \"udp\"\ndest = \"127.0.0.1:9\"\n",
    )
    .await;
    let rtmp = app.addrs.rtmp.expect("rtmp");
    /// Handshakes, sends `after`, and returns how long until the server closed.
    async fn session(rtmp: SocketAddr, after: &[u8]) -> Duration {
        let mut s = TcpStream::connect(rtmp).await.expect("connect");
        let mut c0c1 = vec![3u8];
        c0c1.extend(std::iter::repeat_n(7u8, 1536));
        s.write_all(&c0c1).await.expect("c0c1");
        let mut s012 = vec![0u8; 1 + 2 * 1536];
        s.read_exact(&mut s012).await.expect("s0s1s2");
        assert_eq!(s012[0], 3);
        assert_eq!(&s012[1537..], &c0c1[1..], "S2 echoes C1");
        s.write_all(&s012[1..1537]).await.expect("c2");
        s.write_all(after).await.expect("send");
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("server did not close the connection"),
            }
        }
    }
    // Declares a 16 MiB message (over max_message): closed at once.
    let big = [0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0];
    // "At once" is "well before the 3 s idle timeout could have fired",
    // which holds on a loaded machine too.
    let at_once = Duration::from_secs(2);
    assert!(session(rtmp, &big).await < at_once);
    // A compressed header on a chunk stream never opened.
    assert!(session(rtmp, &[0x45, 0, 0, 0, 0, 0, 1, 9]).await < at_once);
    // A command that is not AMF0.
    let mut bad = vec![0x03, 0, 0, 0, 0, 0, 4, 20, 0, 0, 0, 0];
    bad.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    assert!(session(rtmp, &bad).await < at_once);
    // Silence: closed by the idle timeout, not before (a lower bound load
    // cannot break; the upper one only catches a hang).
    let quiet = session(rtmp, &[]).await;
    assert!(
        quiet >= Duration::from_millis(2900) && quiet < Duration::from_secs(30),
        "{quiet:?}"
    );
    // RTMPE (version 6) is refused during the handshake.
    let mut s = TcpStream::connect(rtmp).await.expect("connect");
    let mut c = vec![6u8];
    c.extend(std::iter::repeat_n(0u8, 1536));
    s.write_all(&c).await.expect("c0c1");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Still serving: a fresh handshake works and the input is untouched.
    assert!(session(rtmp, &big).await < at_once);
    assert_eq!(input_snapshot(&app, "r", 0).clients, 0);
    app.stop().await;
}

/// Reads `d` of the HTTP-TS output at `url` and returns ffprobe's compact
/// per-stream packet counts of what arrived.
async fn probe_http_ts(url: &str, d: Duration) -> String {
    let mut got = Vec::new();
    let end = Instant::now() + d;
    if let Ok(mut resp) = reqwest::get(url).await {
        while Instant::now() < end {
            match tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await {
                Ok(Ok(Some(c))) => got.extend_from_slice(&c),
                Ok(_) => break,
                Err(_) => {}
            }
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("got.ts");
    std::fs::write(&f, &got).expect("write");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_packets", "-show_entries"])
        .args(["stream=codec_name,nb_read_packets", "-of", "compact"])
        .arg(&f)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets ffprobe counted for `codec` in `probe_http_ts`'s output.
fn packets_of(probe: &str, codec: &str) -> u64 {
    probe
        .lines()
        .find(|l| l.contains(&format!("codec_name={codec}|")))
        .and_then(|l| l.rsplit("nb_read_packets=").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Issue 17 item 1: real encoders and relays publish as they do in the
/// field. Debian's ffmpeg 5.1 relaying a TS with ADTS AAC (`-c copy -f
/// flv`) sends an empty AAC sequence header before the real one (it used
/// to close the publish); GStreamer's rtmp2sink sends its metadata again
/// every second. Every publisher must come out of the HTTP-TS output as
/// decodable H.264 + AAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_and_encoders_from_the_field_publish() {
    let app = TestApp::from_toml(&format!(
        r#"
[[route]]
name = "field"
[[route.input]]
name = "ingest"
type = "rtmp"
key = "{KEY}"
[[route.output]]
name = "web"
type = "http"
path = "field"
"#
    ))
    .await;
    let rtmp = app.addrs.rtmp.expect("rtmp");
    let url = format!("http://{}/stream/field.ts", app.addrs.http.expect("http"));
    let dir = tempfile::tempdir().expect("tmp");
    // A TS file as a contribution feed would carry it: H.264 + ADTS AAC.
    let src = dir.path().join("src.ts");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x180:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", "12", "-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-g", "25", "-c:a", "aac", "-f", "mpegts"])
        .arg(&src)
        .status()
        .expect("ffmpeg is installed");
    assert!(st.success());
    let target = format!("rtmp://{rtmp}/live/{KEY}");
    let relay = || {
        Command::new("ffmpeg")
            .args(["-loglevel", "error", "-re", "-i"])
            .arg(&src)
            .args(["-c", "copy", "-f", "flv", &target])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ffmpeg")
    };
    let gst = || {
        let pipeline = format!(
            "videotestsrc is-live=true num-buffers=300 ! video/x-raw,width=320,height=180,framerate=25/1 \
             ! x264enc tune=zerolatency key-int-max=25 speed-preset=ultrafast ! h264parse \
             ! flvmux name=m streamable=true ! rtmp2sink location={target} \
             audiotestsrc is-live=true num-buffers=560 ! audio/x-raw,rate=48000 ! voaacenc ! aacparse ! m."
        );
        Command::new("gst-launch-1.0")
            .arg("-q")
            .args(pipeline.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0 is installed (gstreamer1.0-tools, -plugins-bad/-ugly)")
    };
    let publishers: [(&str, &dyn Fn() -> Child); 2] = [
        ("ffmpeg -c copy relay of TS", &relay),
        ("GStreamer rtmp2sink", &gst),
    ];
    for (what, start) in publishers {
        let mut p = Kill(start());
        eventually_true(what, Duration::from_secs(15), || {
            let s = input_snapshot(&app, "field", 0);
            s.clients == 1 && s.bytes > 50_000
        })
        .await;
        let probe = probe_http_ts(&url, Duration::from_secs(3)).await;
        assert!(
            packets_of(&probe, "h264") >= 25 && packets_of(&probe, "aac") >= 25,
            "{what}: {probe}"
        );
        assert_eq!(
            p.0.try_wait().ok().flatten().map(|s| s.success()),
            None,
            "{what}: the publisher was cut off"
        );
        assert_eq!(
            exit_ok(&mut p.0, Duration::from_secs(20)).await,
            Some(true),
            "{what}"
        );
        eventually_true("the publisher gone", Duration::from_secs(5), || {
            input_snapshot(&app, "field", 0).clients == 0
        })
        .await;
    }
    app.stop().await;
}
