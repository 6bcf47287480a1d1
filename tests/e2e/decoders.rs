//! Hostile input over real sockets (issue 15): deep Zinc, filters and JSON answer error grids / 400 and the server keeps serving (item 1); HLS recovers from hostile timestamps (item 12).

use crate::util::{start, TestApp};

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

/// Issue 15 item 12 over real sockets: a UDP input carrying the simulators'
/// TS with a burst of 150 frames whose DTS jumps +1.9 s each (which pinned
/// `#EXT-X-TARGETDURATION:49` before) — every playlist keeps each EXTINF
/// within its target, and once the burst has left the 4-segment window the
/// playlist is back at the configured 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_recovers_from_hostile_timestamps() {
    use castpoint_sim::tsgen::{TsConfig, TsGenerator};
    use std::time::{Duration, Instant};

    let text = r#"
[[route]]
name = "hh"
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "hls"
type = "hls"
segment = "2s"
window = 4
"#;
    let mut cfg =
        castpoint::config::Config::from_text("test.toml", text, std::path::Path::new("."))
            .expect("valid config");
    crate::util::loopback(&mut cfg);
    let app = TestApp::with_config(cfg).await;
    let http = app.addrs.http.expect("http");
    let end = Instant::now() + Duration::from_secs(5);
    let inp = loop {
        let s = app.engine.snapshot();
        if let Some(a) = s
            .route("hh")
            .and_then(|r| r.inputs.first())
            .and_then(|x| x.local)
        {
            break a;
        }
        assert!(Instant::now() < end, "input never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // 4 s normal, 150 burst frames, then 20 s normal on the moved clock.
    let (a, b, frames) = (100u64, 250u64, 750u64);
    let jump = 19 * 90_000 / 10;
    let cfg = TsConfig {
        bitrate: 1_000_000,
        video_filler: false,
        ..TsConfig::default()
    };
    let vpid = cfg.video_pid;
    let mut g = TsGenerator::new(cfg).expect("generator");
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (mut k, mut sent) = (0u64, 0u64);
    while k < frames {
        let mut c = g.next_chunk(std::time::SystemTime::now()).to_vec();
        for p in c.chunks_exact_mut(188) {
            let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
            if pid == vpid && p[1] & 0x40 != 0 {
                let add = match k {
                    k if k < a => 0,
                    k if k < b => (k - a + 1) * jump,
                    _ => (b - a) * jump,
                };
                castpoint_sim::tsgen::ts::shift_pes_timestamps(p, add);
                k += 1;
            }
        }
        tx.send_to(&c, inp).await.expect("send");
        sent += 1;
        // Media time drives the segmenter, so no real-time pacing: just
        // keep the input's socket buffer from overflowing.
        if sent % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    let end = Instant::now() + Duration::from_secs(30);
    let mut most = 0;
    let last = loop {
        if let Ok(r) = reqwest::get(format!("http://{http}/hls/hh/index.m3u8")).await {
            if r.status().is_success() {
                let m = r.text().await.expect("body");
                let target: u64 = m
                    .lines()
                    .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
                    .and_then(|t| t.parse().ok())
                    .expect("target");
                most = most.max(target);
                for l in m.lines().filter_map(|l| l.strip_prefix("#EXTINF:")) {
                    let d: f64 = l.trim_end_matches(',').parse().expect("extinf");
                    assert!(d.round() as u64 <= target, "{m}");
                }
                let seq: u64 = m
                    .lines()
                    .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
                    .and_then(|t| t.parse().ok())
                    .expect("sequence");
                // Past the burst: several clean 2 s segments in the window.
                if seq > 10 && target == 2 && !m.contains("#EXT-X-DISCONTINUITY\n") {
                    break m;
                }
            }
        }
        assert!(
            Instant::now() < end,
            "TARGETDURATION never recovered (largest seen {most})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(most <= 8, "TARGETDURATION reached {most}");
    assert_eq!(last.matches("#EXTINF:").count(), 4, "{last}");
    app.stop().await;
}
