//! End-to-end tests of the transcode feature against the running server and real third-party tools.
//!
//! Real ffmpeg everywhere: an ffmpeg lavfi source (H.264 + 5.1 AAC) feeds a
//! UDP input, ffprobe decodes the outputs, an `ffmpeg -listen 1` RTMP
//! server receives pushes, and children are killed by pid.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::engine::stats::EngineSnapshot;
use castpoint::points::{Protocol, Quality, Source, Value};
use tokio::net::UdpSocket;

use crate::util;
use crate::util::{eventually, input_addr, TestApp};

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A live ffmpeg test source: 320x180 H.264 + 5.1 AAC as TS over UDP.
fn source(dest: SocketAddr) -> Proc {
    let c = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:r=48000",
            "-filter_complex",
            "[1:a]pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0[a]",
            "-map",
            "0:v",
            "-map",
            "[a]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-b:v",
            "400k",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-f",
            "mpegts",
            &format!("udp://{dest}?pkt_size=1316"),
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg is installed");
    Proc(c)
}

fn point(app: &App, id: &str) -> castpoint::points::PointState {
    app.db
        .read(app.db.lookup(id).expect("point exists"))
        .expect("state")
}

fn write(app: &App, id: &str, v: Value) {
    let who = Source::new(Protocol::Bacnet, None, None);
    app.db
        .write(app.db.lookup(id).expect("point"), Some(v), 8, &who)
        .expect("write");
}

/// Per-PID continuity check of a UDP output, read continuously in the
/// background (an unread socket would overflow and look like CC errors).
#[derive(Default)]
struct Cc {
    errors: AtomicU64,
    packets: AtomicU64,
}

fn watch_udp(sock: UdpSocket) -> (Arc<Cc>, tokio::task::JoinHandle<()>) {
    let cc = Arc::new(Cc::default());
    let c = cc.clone();
    let h = tokio::spawn(async move {
        let mut last: HashMap<u16, u8> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf).await {
            for p in buf[..n].chunks_exact(188) {
                let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
                if pid == 0x1FFF || p[3] & 0x10 == 0 {
                    continue;
                }
                let v = p[3] & 0x0F;
                if let Some(l) = last.insert(pid, v) {
                    if v != (l + 1) & 0x0F {
                        c.errors.fetch_add(1, Relaxed);
                    }
                }
                c.packets.fetch_add(1, Relaxed);
            }
        }
    });
    (cc, h)
}

/// ffprobe's view of a live URL: (codec, width, height, channels) per stream.
fn probe(url: &str) -> Vec<(String, u64, u64, u64)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "5000000",
            "-show_entries",
            "stream=codec_name,width,height,channels",
            "-of",
            "json",
            url,
        ])
        .output()
        .expect("ffprobe is installed");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    j["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["codec_name"].as_str().unwrap_or("").to_string(),
                        s["width"].as_u64().unwrap_or(0),
                        s["height"].as_u64().unwrap_or(0),
                        s["channels"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn transcode_pid(s: &EngineSnapshot, route: &str) -> Option<u32> {
    s.route(route)?.transcode.as_ref()?.ffmpeg.pid
}

const PROFILES: &str = r#"
[[profile]]
number = 1
name = "tiny"
width = 256
height = 144
fps = 25
gop = 25
bitrate = 300000
preset = "ultrafast"
audio_bitrate = 64000
[[profile.audio_track]]
downmix = "stereo"
[[profile.audio_track]]
extract = "FC"
gain_db = -3
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcode_profile_matrix_toggle_and_child_kill() {
    let pass_sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let auto_sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let text = format!(
        r#"primary_route = "tc"
{PROFILES}
[[route]]
name = "tc"
mode = "transcode"
profile = "tiny"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "web"
type = "http"
path = "tc"
[[route.output]]
name = "orig"
type = "udp"
dest = "{}"
source = "passthrough"
[[route.output]]
name = "auto"
type = "udp"
dest = "{}"
"#,
        pass_sock.local_addr().expect("addr"),
        auto_sock.local_addr().expect("addr"),
    );
    let app = TestApp::with_telemetry(&text).await;
    let _src = source(input_addr(&app, "tc", 0).await);
    let (pass_cc, h1) = watch_udp(pass_sock);
    let (auto_cc, h2) = watch_udp(auto_sock);
    let http = app.addrs.http.expect("http");
    let url = format!("http://{http}/stream/tc.ts");

    // The transcoded output decodes at the profile's size, with the audio
    // matrix's two tracks: a stereo downmix and the mono centre channel.
    eventually("transcoder progress", Duration::from_secs(20), async || {
        let s = app.engine.snapshot();
        let t = s.route("tc")?.transcode.clone()?;
        (t.status == "ok").then_some(())
    })
    .await;
    // No GPU here: encoder = "auto" fell back to software (with a logged
    // reason); on a machine with a usable NVENC it would say so.
    let enc = app
        .engine
        .snapshot()
        .route("tc")
        .and_then(|r| r.transcode.as_ref()?.encoder.clone());
    if Path::new("/dev/nvidia0").exists() {
        assert!(enc.is_some(), "{enc:?}");
    } else {
        assert_eq!(enc.as_deref(), Some("software (libx264)"));
    }
    let streams = probe(&url);
    assert!(
        streams.contains(&("h264".into(), 256, 144, 0)),
        "{streams:?}"
    );
    assert!(streams.contains(&("aac".into(), 0, 0, 2)), "{streams:?}");
    assert!(streams.contains(&("aac".into(), 0, 0, 1)), "{streams:?}");
    // Encoder Status OK, Encoding Latency measured through the child.
    eventually("encoder status OK", Duration::from_secs(10), async || {
        (point(&app, "encoder_status").value == Some(Value::Enum(1))).then_some(())
    })
    .await;
    let lat = eventually("encoding latency", Duration::from_secs(10), async || {
        let st = point(&app, "encoding_latency");
        (st.quality == Quality::Ok).then_some(st.value)
    })
    .await;
    let ms = lat.map(|v| v.as_f64()).unwrap_or(-1.0);
    assert!(ms > 0.0 && ms < 5000.0, "latency {ms} ms");
    eprintln!("encoding latency through the child: {ms} ms");

    // Transcode Enable off: the auto outputs carry the original, the
    // passthrough output never stops; latency becomes Unavailable.
    write(&app, "transcode_enable", Value::Bool(false));
    eventually("transcode off", Duration::from_secs(10), async || {
        app.engine
            .snapshot()
            .route("tc")?
            .transcode
            .is_none()
            .then_some(())
    })
    .await;
    eventually("latency unavailable", Duration::from_secs(10), async || {
        (point(&app, "encoding_latency").quality == Quality::Unavailable).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let streams = probe(&url);
    assert!(
        streams.contains(&("h264".into(), 320, 180, 0)),
        "original after off: {streams:?}"
    );
    // And on again.
    write(&app, "transcode_enable", Value::Bool(true));
    eventually("transcoding again", Duration::from_secs(20), async || {
        let s = app.engine.snapshot();
        (s.route("tc")?.transcode.as_ref()?.status == "ok").then_some(())
    })
    .await;
    let streams = probe(&url);
    assert!(
        streams.contains(&("h264".into(), 256, 144, 0)),
        "transcoded after on: {streams:?}"
    );

    // SIGKILL the child: a new one delivers again within 3 s.
    let snap = app.engine.snapshot();
    let pid = transcode_pid(&snap, "tc").expect("child pid");
    let out_before = snap
        .route("tc")
        .and_then(|r| r.transcode.as_ref())
        .map(|t| t.ffmpeg.out_bytes);
    let auto_cc_before_kill = auto_cc.errors.load(Relaxed);
    let killed = Instant::now();
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    eventually("transcoder restored", Duration::from_secs(10), async || {
        let s = app.engine.snapshot();
        let t = s.route("tc")?.transcode.clone()?;
        let fresh = t.ffmpeg.pid.is_some_and(|p| p != pid)
            && t.ffmpeg.progress_age_ms.is_some_and(|a| a < 1000)
            && Some(t.ffmpeg.out_bytes) > out_before;
        fresh.then_some(())
    })
    .await;
    let restored = killed.elapsed();
    let t = app
        .engine
        .snapshot()
        .route("tc")
        .and_then(|r| r.transcode.clone())
        .expect("tc");
    assert_eq!(t.ffmpeg.restarts, 1, "{t:?}");
    eprintln!("transcode child restored {restored:?} after SIGKILL");

    // The passthrough output ran through all of it without a CC error.
    let (pe, pp) = (pass_cc.errors.load(Relaxed), pass_cc.packets.load(Relaxed));
    assert!(pp > 1000, "passthrough output got {pp} packets");
    assert_eq!(pe, 0, "passthrough CC errors");
    eprintln!(
        "auto output: {} packets, {auto_cc_before_kill} CC errors across the on/off/on switches, {} in all (the SIGKILL cuts the transcoded stream mid-run)",
        auto_cc.packets.load(Relaxed),
        auto_cc.errors.load(Relaxed)
    );
    assert!(auto_cc.packets.load(Relaxed) > 1000);
    // Auto outputs keep their counters continuous across every switch
    // between the original and the transcoded stream.
    assert_eq!(
        auto_cc_before_kill, 0,
        "auto output CC errors across switches"
    );
    h1.abort();
    h2.abort();
    // A graceful shutdown kills and reaps the child.
    let last = transcode_pid(&app.engine.snapshot(), "tc").expect("pid");
    app.stop().await;
    assert!(!alive(last), "transcode child {last} outlived the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ffmpeg_faults_but_passthrough_flows() {
    let out = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let text = format!(
        r#"primary_route = "m"
{PROFILES}
[media]
ffmpeg = "/nonexistent/ffmpeg"
[[route]]
name = "m"
mode = "transcode"
[[route.input]]
type = "generator"
bitrate = 1000000
[[route.output]]
name = "auto"
type = "udp"
dest = "{}"
[[route.output]]
name = "cdn"
type = "rtmp"
url = "rtmp://127.0.0.1:9/live"
key = "secret-key-1"
"#,
        out.local_addr().expect("addr")
    );
    let app = TestApp::with_telemetry(&text).await;
    let (cc, h) = watch_udp(out);
    let st = eventually("encoder FAULT", Duration::from_secs(10), async || {
        let st = point(&app, "encoder_status");
        (st.value == Some(Value::Enum(3))).then_some(st)
    })
    .await;
    let why = st.reason.as_deref().unwrap_or("");
    assert!(why.contains("cannot run ffmpeg"), "{why}");
    assert!(why.contains("/nonexistent/ffmpeg"), "{why}");
    assert_eq!(
        point(&app, "encoding_latency").quality,
        Quality::Unavailable
    );
    // DISCONNECTED reads "m/cdn: connecting" until the push's first start
    // fails, then names the cause: wait for the cause (the stress caught
    // the test reading the reason in between).
    eventually(
        "CDN DISCONNECTED naming the missing ffmpeg",
        Duration::from_secs(10),
        async || {
            let st = point(&app, "cdn_status");
            let why = st.reason.as_deref().unwrap_or("");
            (st.value == Some(Value::Enum(2))
                && why.contains("m/cdn")
                && why.contains("cannot run ffmpeg"))
            .then_some(())
        },
    )
    .await;
    // The auto output falls back to the original stream.
    eventually("passthrough data", Duration::from_secs(10), async || {
        (cc.packets.load(Relaxed) > 500).then_some(())
    })
    .await;
    let json = serde_json::to_string(&app.engine.snapshot()).expect("json");
    assert!(!json.contains("secret-key-1"), "stream key leaked: {json}");
    h.abort();
    app.stop().await;
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// `ffmpeg -listen 1` as a one-shot RTMP server writing what it receives.
fn rtmp_server(port: u16, key: &str, file: &Path) -> Proc {
    let c = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-listen",
            "1",
            "-i",
            &format!("rtmp://127.0.0.1:{port}/live/{key}"),
            "-c",
            "copy",
            "-f",
            "mpegts",
            "-y",
        ])
        .arg(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg is installed");
    Proc(c)
}

fn cdn(app: &App) -> (Option<Value>, String) {
    let st = point(app, "cdn_status");
    (
        st.value,
        st.reason.map(|r| r.to_string()).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_push_reconnects_after_listener_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_tcp_port();
    let dead = free_tcp_port();
    let key = "k3y-s3cret";
    let text = format!(
        r#"
primary_route = "r"
[[route]]
name = "r"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "good"
type = "rtmp"
url = "rtmp://127.0.0.1:{port}/live"
key = "{key}"
[[route.output]]
name = "dead"
type = "rtmp"
preset = "custom"
url = "rtmp://127.0.0.1:{dead}/live"
key = "other"
"#
    );
    // No head start for the server: a push that finds it not yet listening
    // is restarted with backoff, and "good connected" waits for that.
    let server = rtmp_server(port, key, &dir.path().join("a.ts"));
    let app = TestApp::with_telemetry(&text).await;
    let _src = source(input_addr(&app, "r", 0).await);
    // One destination failing never affects another.
    eventually("good connected", Duration::from_secs(15), async || {
        let s = app.engine.snapshot();
        let o = s
            .route("r")?
            .outputs
            .iter()
            .find(|o| o.name == "good")?
            .clone();
        o.up.then_some(())
    })
    .await;
    eventually(
        "CDN names only the dead output",
        Duration::from_secs(10),
        async || {
            let (v, why) = cdn(&app);
            (v == Some(Value::Enum(2)) && why.contains("r/dead") && !why.contains("r/good"))
                .then_some(())
        },
    )
    .await;
    app.engine.remove_output("r", "dead").await.expect("remove");
    eventually("CDN CONNECTED", Duration::from_secs(10), async || {
        (cdn(&app).0 == Some(Value::Enum(1))).then_some(())
    })
    .await;
    // The listener goes away: DISCONNECTED; it comes back: CONNECTED.
    drop(server);
    eventually("CDN DISCONNECTED", Duration::from_secs(10), async || {
        let (v, why) = cdn(&app);
        (v == Some(Value::Enum(2)) && why.contains("r/good")).then_some(())
    })
    .await;
    let _server2 = rtmp_server(port, key, &dir.path().join("b.ts"));
    eventually("CDN CONNECTED again", Duration::from_secs(20), async || {
        (cdn(&app).0 == Some(Value::Enum(1))).then_some(())
    })
    .await;
    // The listening ffmpeg probes its FLV input for ~2 s before it writes
    // anything (longer on a loaded machine): poll the file, don't guess.
    let file = dir.path().join("b.ts").display().to_string();
    let end = Instant::now() + Duration::from_secs(20);
    let streams = loop {
        let streams = probe(&file);
        if streams.iter().any(|s| s.0 == "h264" && s.1 == 320) || Instant::now() > end {
            break streams;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        streams.iter().any(|s| s.0 == "h264" && s.1 == 320),
        "second listener decodes: {streams:?}"
    );
    let s = app.engine.snapshot();
    let o = s
        .route("r")
        .and_then(|r| r.outputs.iter().find(|o| o.name == "good"))
        .expect("out");
    let f = o.ffmpeg.as_ref().expect("child stats");
    assert!(f.restarts >= 1, "{f:?}");
    let json = serde_json::to_string(&s).expect("json");
    assert!(!json.contains(key), "stream key leaked: {json}");
    app.stop().await;
}

/// Tagged processes of a castpoint: (pid, tag).
fn tagged_children_of(owner: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let want = format!("CASTPOINT_CHILD={owner}:");
        if env
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(want.as_bytes()))
            && alive(pid)
        {
            v.push(pid);
        }
    }
    v
}

/// Running (not gone, not a zombie waiting for its reaper).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_die_with_castpoint_and_stale_ones_are_reaped() {
    // 1. The real binary with a transcoding route: SIGKILL it, its ffmpeg
    //    child ends on its own (stdin EOF).
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"data_dir = "{}"
{PROFILES}
[http]
bind = "127.0.0.1:0"
[bacnet]
enabled = false
[modbus]
enabled = false
[telemetry]
enabled = false
[[route]]
name = "t"
mode = "transcode"
[[route.input]]
type = "generator"
bitrate = 1000000
"#,
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let mut cp = Command::new(env!("CARGO_BIN_EXE_castpoint"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("castpoint binary");
    let owner = cp.id();
    let kids = eventually(
        "castpoint's ffmpeg child",
        Duration::from_secs(15),
        async || {
            let k = tagged_children_of(owner);
            (!k.is_empty()).then_some(k)
        },
    )
    .await;
    cp.kill().expect("SIGKILL castpoint");
    let _ = cp.wait();
    eventually(
        "orphaned ffmpeg gone",
        Duration::from_secs(10),
        async || (!kids.iter().any(|p| alive(*p))).then_some(()),
    )
    .await;

    // 2. A stale tagged process whose castpoint is gone (an orphan that
    //    ignores stdin) is killed when a castpoint starts.
    let out = Command::new("sh")
        .args(["-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"])
        .env("CASTPOINT_CHILD", "4194304:transcode:stale")
        .output()
        .expect("sh");
    let stale: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(stale));
    let app = util::start().await;
    eventually("stale child reaped", Duration::from_secs(10), async || {
        (!alive(stale)).then_some(())
    })
    .await;
    app.stop().await;
}

/// Issue 17 item 3: every new transcoder child restarts its continuity
/// counters. A `copy` profile restarts within the 2 s stall timeout, so
/// the auto outputs never fall back to the original stream in between:
/// they must still re-base their counters at the new child's first packet
/// (they used to keep the old child's offsets: a jump on every PID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcoder_restart_keeps_auto_output_counters_continuous() {
    let auto_sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let text = format!(
        r#"
[[profile]]
number = 1
name = "same"
video = "copy"
audio = "copy"
[[route]]
name = "rs"
mode = "transcode"
profile = "same"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "auto"
type = "udp"
dest = "{}"
"#,
        auto_sock.local_addr().expect("addr"),
    );
    let app = TestApp::with_telemetry(&text).await;
    // 50 fps with a keyframe every 10 frames: a new child finds its
    // stream parameters and first keyframe quickly, inside the 2 s stall
    // timeout (with 1 s GOPs it often took longer, and the fallback to the
    // original stream re-based the counters anyway).
    let dest = input_addr(&app, "rs", 0).await;
    let _src = Proc(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg("testsrc2=size=320x180:rate=50")
            .args(["-f", "lavfi", "-i", "sine=f=440:r=48000"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-g", "10", "-b:v", "400k", "-c:a", "aac", "-f", "mpegts"])
            .arg(format!("udp://{dest}?pkt_size=1316"))
            .stdin(Stdio::null())
            .spawn()
            .expect("ffmpeg is installed"),
    );
    let (auto_cc, h) = watch_udp(auto_sock);
    let progress = |app: &App| {
        let s = app.engine.snapshot();
        let t = s.route("rs")?.transcode.clone()?;
        let fresh = t.ffmpeg.progress_age_ms.is_some_and(|a| a < 1000) && t.ffmpeg.out_bytes > 0;
        fresh.then_some((t.ffmpeg.pid?, t.ffmpeg.out_bytes))
    };
    eventually("transcoder progress", Duration::from_secs(20), async || {
        progress(&app)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut fast = 0;
    for round in 0..4 {
        let (pid, out) = eventually("a running child", Duration::from_secs(10), async || {
            progress(&app)
        })
        .await;
        let st = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        let killed = Instant::now();
        eventually(
            "a new child delivering",
            Duration::from_secs(10),
            async || progress(&app).filter(|(p, o)| *p != pid && *o > out),
        )
        .await;
        let took = killed.elapsed();
        eprintln!("round {round}: new child delivering {took:?} after SIGKILL");
        if took < Duration::from_millis(1800) {
            fast += 1;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (errors, packets) = (auto_cc.errors.load(Relaxed), auto_cc.packets.load(Relaxed));
    assert!(packets > 1000, "auto output got {packets} packets");
    // A restart that beats the stall timeout exercises the re-basing at a
    // new child; on a loaded machine every restart may be slower, which is
    // no failure of castpoint (the CC check below holds either way).
    if fast == 0 {
        eprintln!("note: every restart took longer than the stall timeout; re-basing not exercised this run");
    }
    // A restart slower than the stall timeout falls back to the original
    // stream for a while; gaps the input itself had (UDP from the source
    // ffmpeg on a loaded machine) then reach the output truthfully. What
    // castpoint must not do is add gaps of its own (a stress run at load 17
    // saw 6 in 6386 packets with two slow restarts).
    let upstream = app
        .engine
        .snapshot()
        .route("rs")
        .map_or(0, |r| r.inputs[0].cc_errors);
    assert!(
        errors <= upstream,
        "auto output: {errors} CC errors in {packets} packets across 4 transcoder restarts (input saw {upstream})"
    );
    h.abort();
    app.stop().await;
}

/// Live children of this process tagged with exactly `label`.
fn children_labelled(label: &str) -> Vec<u32> {
    let want = format!("CASTPOINT_CHILD={}:{label}", std::process::id());
    tagged_children_of(std::process::id())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
        })
        .collect()
}

/// Issue 17 item 5: a disabled RTMP push output runs no ffmpeg child (it
/// used to start one anyway); enabling it starts one that delivers,
/// disabling it again stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_rtmp_push_output_runs_no_child() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_tcp_port();
    let dead = free_tcp_port();
    let key = "dis-k3y";
    let text = format!(
        r#"
[[route]]
name = "dis"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "cdn"
type = "rtmp"
url = "rtmp://127.0.0.1:{port}/live"
key = "{key}"
enabled = false
[[route.output]]
name = "embedded"
type = "rtmp"
preset = "custom"
url = "rtmp://127.0.0.1:{dead}/live/emb3dd3d-k3y"
[[route]]
name = "back"
[[route.input]]
type = "rtmp"
key = "0wn-ingest-k3y"
[[route.output]]
type = "udp"
dest = "127.0.0.1:9"
"#
    );
    let _server = rtmp_server(port, key, &dir.path().join("a.ts"));
    let app = TestApp::with_telemetry(&text).await;
    let _src = source(input_addr(&app, "dis", 0).await);
    let label = "rtmp:dis/cdn";
    let output = |app: &App| {
        app.engine
            .snapshot()
            .route("dis")
            .and_then(|r| r.outputs.iter().find(|o| o.name == "cdn").cloned())
            .expect("output")
    };
    // Data flows on the route for a while: still no child.
    eventually("input data", Duration::from_secs(10), async || {
        let s = app.engine.snapshot();
        (s.route("dis")?.inputs[0].bytes > 200_000).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        children_labelled(label),
        Vec::<u32>::new(),
        "a disabled output runs ffmpeg"
    );
    let o = output(&app);
    assert!(
        o.ffmpeg
            .as_ref()
            .is_none_or(|f| f.pid.is_none() && !f.running),
        "{o:?}"
    );
    assert_eq!(o.error.as_deref(), Some("disabled"), "{o:?}");

    // Enabled: a child starts and connects.
    app.engine
        .set_output_enabled("dis", "cdn", true)
        .await
        .expect("enable");
    eventually("the push connected", Duration::from_secs(20), async || {
        output(&app).up.then_some(())
    })
    .await;
    let pids = children_labelled(label);
    assert_eq!(pids.len(), 1, "{pids:?}");

    // Disabled again: the child is stopped and reaped.
    app.engine
        .set_output_enabled("dis", "cdn", false)
        .await
        .expect("disable");
    // The output reports the push down once it has reaped the child: the
    // child dies (a zombie already counts as gone) a moment before that,
    // so both are waited for together (asserting the report right after
    // the child vanished failed once under load with `up: true`).
    eventually(
        "the child gone and the push down",
        Duration::from_secs(10),
        async || {
            let o = output(&app);
            (children_labelled(label).is_empty() && !alive(pids[0]) && !o.up && o.clients == 0)
                .then_some(())
        },
    )
    .await;
    let o = output(&app);
    assert!(
        o.ffmpeg.as_ref().is_none_or(|f| !f.running),
        "a stopped child still reads as running: {o:?}"
    );

    // Issue 15 item 10: a key inside the URL never shows in what ffmpeg's
    // errors turn into (output error, last log line).
    let emb = eventually(
        "the embedded-key push to fail",
        Duration::from_secs(20),
        async || {
            let s = app.engine.snapshot();
            let o = s
                .route("dis")?
                .outputs
                .iter()
                .find(|o| o.name == "embedded")?
                .clone();
            let f = o.ffmpeg.clone()?;
            let text = format!("{:?} {:?} {:?}", o.error, f.error, f.last_log);
            text.contains("rtmp://").then_some(text)
        },
    )
    .await;
    // (ffmpeg no longer even sees the key in its URL: it is split off into
    // the preset file, so its errors name `.../live` only.)
    assert!(!emb.contains("emb3dd3d-k3y"), "key leaked: {emb}");
    assert!(emb.contains("/live"), "{emb}");

    // Issue 15 item 10: a stream key (here typed inside the URL; a separate
    // `key` goes the same way) reaches ffmpeg through a private preset
    // file, not its command line (readable by any local user). Our own RTMP
    // ingest, which refuses unknown keys, is the server.
    let own_key = "0wn-ingest-k3y";
    let rtmp = app.addrs.rtmp.expect("rtmp listener");
    app.engine
        .add_output(
            "dis",
            castpoint::engine::spec::OutputSpec {
                name: "own".into(),
                enabled: true,
                kind: castpoint::engine::spec::OutputKind::Rtmp {
                    // The key inside the URL, the form CDNs show: it must
                    // take the private path too.
                    url: format!("rtmp://{rtmp}/live/{own_key}"),
                    key: None,
                },
                queue: castpoint::engine::spec::DEFAULT_QUEUE,
                source: castpoint::engine::spec::OutputSource::Auto,
            },
        )
        .await
        .expect("add output");
    eventually(
        "our ingest receiving the push",
        Duration::from_secs(20),
        async || {
            let s = app.engine.snapshot();
            let i = s.route("back")?.inputs.first()?.clone();
            (i.clients == 1 && i.bytes > 50_000).then_some(())
        },
    )
    .await;
    let pids = children_labelled("rtmp:dis/own");
    assert_eq!(pids.len(), 1, "{pids:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        !cmdline.contains(own_key),
        "the key is on the command line: {cmdline}"
    );
    // The key file: owner-only, in an owner-only directory, gone when the
    // server stops.
    let preset = cmdline
        .split_whitespace()
        .skip_while(|a| *a != "-fpre")
        .nth(1)
        .map(std::path::PathBuf::from)
        .expect("-fpre FILE");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&preset), 0o600);
    assert_eq!(mode(preset.parent().expect("dir")), 0o700);
    app.stop().await;
    assert!(!preset.exists(), "{preset:?} outlived the server");
}

/// Reads `count` input registers (FC04) from 30001 + `offset` with one raw
/// Modbus TCP request.
async fn read_input_registers(addr: SocketAddr, offset: u16, count: u16) -> Vec<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("modbus");
    let mut req = vec![0, 1, 0, 0, 0, 6, 1, 4];
    req.extend_from_slice(&offset.to_be_bytes());
    req.extend_from_slice(&count.to_be_bytes());
    s.write_all(&req).await.expect("send");
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.expect("mbap");
    assert_eq!(head[7], 4, "exception {:?}", head);
    let mut body = vec![0u8; usize::from(head[8])];
    s.read_exact(&mut body).await.expect("registers");
    body.chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect()
}

/// Issue 17 item 8: from the moment transcoding starts until the first
/// frame is matched through the child, Encoding Latency is unavailable on
/// every surface (REST/point: no value, quality unavailable; Modbus: the
/// documented "no value" encoding — quality code 3, 0 in the u16 register,
/// NaN in the f32 one, quality bit 0), and never a plausible 0 with good
/// quality; the first good sample is a real, positive latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_latency_is_unavailable_until_the_first_matched_frame() {
    let text = format!(
        r#"primary_route = "tc"
{PROFILES}
[[route]]
name = "tc"
mode = "transcode"
profile = "tiny"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "web"
type = "http"
path = "tc"
"#
    );
    let app = TestApp::with_telemetry(&text).await;
    let modbus = app.addrs.modbus.expect("modbus listener");
    let _src = source(input_addr(&app, "tc", 0).await);
    // Before the first match: unavailable everywhere (checked at least
    // once over Modbus while it is so).
    let mut modbus_checked = false;
    let first_ok = eventually(
        "a measured encoding latency",
        Duration::from_secs(30),
        async || {
            let st = point(&app, "encoding_latency");
            if st.quality == Quality::Ok {
                return Some(st.value);
            }
            assert!(st.value.is_none(), "a value without good quality: {st:?}");
            None
        },
    );
    // Sample Modbus concurrently while the point is still unavailable.
    let probe_modbus = async {
        for _ in 0..100 {
            if point(&app, "encoding_latency").quality == Quality::Ok {
                break;
            }
            let u16_reg = read_input_registers(modbus, 7, 1).await[0];
            let f32_regs = read_input_registers(modbus, 114, 2).await;
            let quality = read_input_registers(modbus, 207, 1).await[0];
            if point(&app, "encoding_latency").quality != Quality::Ok {
                assert_eq!(quality, 3, "quality code while unavailable");
                assert_eq!(u16_reg, 0);
                let f = f32::from_bits((u32::from(f32_regs[0]) << 16) | u32::from(f32_regs[1]));
                assert!(f.is_nan(), "f32 register while unavailable: {f}");
                modbus_checked = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (v, ()) = tokio::join!(first_ok, probe_modbus);
    assert!(
        modbus_checked,
        "never saw the unavailable state over Modbus"
    );
    let ms = v.map(|v| v.as_f64()).unwrap_or(-1.0);
    assert!(ms > 0.0 && ms < 5000.0, "first latency {ms} ms");
    app.stop().await;
}
