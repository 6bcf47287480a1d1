//! End-to-end tests of the rtsp feature against the running server and real third-party tools.
//!
//! The camera is castpoint_sim::rtsp_camera (itself checked with ffprobe
//! here); routes pull it over TCP-interleaved and UDP RTP, and ffprobe
//! decodes what the router's outputs send.

use std::process::Command;
use std::time::Duration;

use castpoint::app::App;
use castpoint::engine::stats::IoSnapshot;
use castpoint_sim::rtsp_camera::{Camera, CameraConfig};

use crate::util::{until_route, TestApp};

async fn camera(user: Option<&str>, password: Option<&str>) -> Camera {
    Camera::start(CameraConfig {
        user: user.map(str::to_string),
        password: password.map(str::to_string),
        // A G.711 track the router must skip without failing.
        pcmu: true,
        ..CameraConfig::default()
    })
    .await
    .expect("camera binds")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn input(app: &App, route: &str, i: usize) -> IoSnapshot {
    app.engine
        .snapshot()
        .route(route)
        .and_then(|r| r.inputs.get(i).cloned())
        .expect("route input")
}

/// What ffprobe makes of `secs` seconds of `url`.
#[derive(Debug, Default)]
struct Probe {
    codec: String,
    width: u32,
    height: u32,
    frames: u64,
    cc_errors: usize,
    /// ffprobe's warnings, shown when an assertion fails.
    stderr: String,
}

fn ffprobe(url: &str, secs: u32, extra: &[&str]) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "warning"])
        .args(extra)
        .args(["-read_intervals", &format!("%+{secs}")])
        .args(["-select_streams", "v:0", "-count_packets"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_packets",
            "-of",
            "default=nw=1",
            url,
        ])
        .output()
        .expect("ffprobe is installed");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let mut p = Probe {
        cc_errors: stderr.matches("ontinuity").count(),
        stderr,
        ..Probe::default()
    };
    for l in stdout.lines() {
        match l.split_once('=') {
            Some(("codec_name", v)) => p.codec = v.to_string(),
            Some(("width", v)) => p.width = v.parse().unwrap_or(0),
            Some(("height", v)) => p.height = v.parse().unwrap_or(0),
            Some(("nb_read_packets", v)) => p.frames = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    p
}

fn assert_decodes(name: &str, p: &Probe, min_frames: u64) {
    let why = format!("{name}: {p:?}; ffprobe said: {}", p.stderr);
    assert_eq!(
        (p.codec.as_str(), p.width, p.height),
        ("h264", 640, 360),
        "{why}"
    );
    assert!(p.frames >= min_frames, "{why}");
    assert_eq!(p.cc_errors, 0, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_camera_decodes_with_ffprobe_over_tcp_and_udp() {
    let cam = camera(None, None).await;
    let url = cam.url("stream");
    let p = tokio::task::spawn_blocking(move || {
        let tcp = ffprobe(&url, 2, &["-rtsp_transport", "tcp"]);
        let udp = ffprobe(&url, 2, &["-rtsp_transport", "udp"]);
        (tcp, udp)
    })
    .await
    .expect("probe");
    assert_decodes("ffprobe tcp", &p.0, 25);
    assert_decodes("ffprobe udp", &p.1, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_over_tcp_udp_and_mp2t_reaches_outputs_decodable() {
    let cam = camera(None, None).await;
    let udp_out = free_udp_port();
    let text = format!(
        r#"
[[route]]
name = "tcp"
[[route.input]]
type = "rtsp"
url = "{u}"
[[route.output]]
name = "http"
type = "http"

[[route]]
name = "udp"
[[route.input]]
type = "rtsp"
url = "{u}"
transport = "udp"
udp_bind = "127.0.0.1"
[[route.output]]
type = "udp"
dest = "127.0.0.1:{udp_out}"

[[route]]
name = "ts"
[[route.input]]
type = "rtsp"
url = "{u}.ts"
[[route.output]]
type = "http"
"#,
        u = cam.url("stream")
    );
    let app = TestApp::from_toml(&text).await;
    for r in ["tcp", "udp", "ts"] {
        until_route(&app, r, "input never up", |s| {
            s.inputs[0].up && s.inputs[0].bytes > 0 && s.active_input == Some(0)
        })
        .await;
    }
    let http = app.addrs.http.expect("http");
    let urls = [
        ("tcp->http", format!("http://{http}/stream/tcp.ts")),
        ("udp->udp", format!("udp://127.0.0.1:{udp_out}")),
        ("mp2t->http", format!("http://{http}/stream/ts.ts")),
    ];
    let probes: Vec<_> = urls
        .into_iter()
        .map(|(n, u)| tokio::task::spawn_blocking(move || (n, ffprobe(&u, 4, &[]))))
        .collect();
    for p in probes {
        let (name, p) = p.await.expect("probe");
        assert_decodes(name, &p, 60);
    }
    for r in ["tcp", "udp", "ts"] {
        let i = input(&app, r, 0);
        assert_eq!(i.kind, "rtsp");
        assert_eq!((i.cc_errors, i.frames_lost), (0, 0), "{r}: {i:?}");
        assert!(i.error.is_none(), "{r}: {i:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_success_and_clear_errors_for_bad_credentials() {
    let cam = camera(Some("admin"), Some("s3cret")).await;
    let u = cam.url("stream");
    let with_userinfo = u.replacen("rtsp://", "rtsp://admin:s3cret@", 1);
    let text = format!(
        r#"
[[route]]
name = "good"
[[route.input]]
type = "rtsp"
url = "{with_userinfo}"
[[route.output]]
type = "http"

[[route]]
name = "keys"
[[route.input]]
type = "rtsp"
url = "{u}"
user = "admin"
password = "s3cret"
[[route.output]]
type = "http"

[[route]]
name = "wrong"
[[route.input]]
type = "rtsp"
url = "{u}"
user = "admin"
password = "guess"
[[route.output]]
type = "http"

[[route]]
name = "none"
[[route.input]]
type = "rtsp"
url = "{u}"
[[route.output]]
type = "http"

[[route]]
name = "missing"
[[route.input]]
type = "rtsp"
url = "{u}/../nope"
user = "admin"
password = "s3cret"
[[route.output]]
type = "http"
"#
    );
    let app = TestApp::from_toml(&text).await;
    until_route(&app, "wrong", "no 401 error", |s| {
        s.inputs[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("401") && e.contains("wrong user or password"))
    })
    .await;
    until_route(&app, "none", "no 401 error", |s| {
        s.inputs[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("401") && e.contains("credentials"))
    })
    .await;
    until_route(&app, "missing", "no 404 error", |s| {
        s.inputs[0]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("404"))
    })
    .await;
    // The failing routes do not disturb the good ones.
    for r in ["good", "keys"] {
        until_route(&app, r, "not flowing", |s| {
            s.inputs[0].up && s.inputs[0].bytes > 100_000 && s.active_input == Some(0)
        })
        .await;
    }
    let http = app.addrs.http.expect("http");
    let url = format!("http://{http}/stream/good.ts");
    let p = tokio::task::spawn_blocking(move || ffprobe(&url, 3, &[]))
        .await
        .expect("probe");
    assert_decodes("digest", &p, 40);
    for r in ["wrong", "none", "missing"] {
        let i = input(&app, r, 0);
        assert!(!i.up && i.bytes == 0, "{r}: {i:?}");
        assert!(!format!("{i:?}").contains("s3cret"));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_loss_fails_over_to_backup_and_returns_after_reconnect() {
    let cam = camera(None, None).await;
    let addr = cam.addr;
    let udp_out = free_udp_port();
    let text = format!(
        r#"
[[route]]
name = "cam"
switch_back = true
[[route.input]]
name = "camera"
type = "rtsp"
url = "{}"
timeout = "2s"
[[route.input]]
name = "backup"
type = "generator"
bitrate = 1000000
[[route.output]]
type = "udp"
dest = "127.0.0.1:{udp_out}"
"#,
        cam.url("stream")
    );
    let app = TestApp::from_toml(&text).await;
    until_route(&app, "cam", "camera never active", |s| {
        s.active_input == Some(0) && s.inputs[0].up
    })
    .await;
    cam.stop();
    until_route(&app, "cam", "no failover to the backup", |s| {
        s.active_input == Some(1)
    })
    .await;
    until_route(&app, "cam", "camera loss not reported", |s| {
        !s.inputs[0].up && s.inputs[0].error.is_some()
    })
    .await;
    // The camera comes back on the same address.
    let cam = Camera::start(CameraConfig {
        bind: addr,
        ..CameraConfig::default()
    })
    .await
    .expect("camera rebinds");
    until_route(&app, "cam", "did not return to the camera", |s| {
        s.active_input == Some(0) && s.inputs[0].up
    })
    .await;
    cam.stop();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_a_session_the_camera_would_expire() {
    // The camera drops a playing session silent for 2 s; the client must
    // send GET_PARAMETER within that (every timeout/2).
    let cam = Camera::start(CameraConfig {
        session_timeout: 2,
        ..CameraConfig::default()
    })
    .await
    .expect("camera");
    let text = format!(
        r#"
[[route]]
name = "ka"
[[route.input]]
type = "rtsp"
url = "{}"
[[route.output]]
type = "http"
"#,
        cam.url("stream")
    );
    let app = TestApp::from_toml(&text).await;
    until_route(&app, "ka", "never up", |s| s.inputs[0].up).await;
    let before = input(&app, "ka", 0).bytes;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let i = input(&app, "ka", 0);
    assert!(i.up && i.error.is_none(), "{i:?}");
    // ~2 Mbit/s for 5 s without a reconnect gap.
    assert!(i.bytes - before > 900_000, "{i:?}");
    let ka = cam.keepalives.load(std::sync::atomic::Ordering::Relaxed);
    assert!(ka >= 3, "only {ka} keep-alives in 5 s");
    app.stop().await;
}

#[test]
fn api_documents_hide_camera_passwords() {
    let doc = serde_json::json!({"input": [{
        "type": "rtsp",
        "url": "rtsp://admin:s3cret@cam:554/live",
        "user": "admin",
        "password": "s3cret"
    }]});
    let shown = castpoint::api::routes::redact(&doc).to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("rtsp://admin:***@cam:554/live"), "{shown}");
}
