//! Listener hardening end to end: a slowloris flood against the real binary under a low open-file limit, and HTTPS with certificate reload.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use castpoint::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::util::{loopback, TestApp};

/// Runs the real binary under `ulimit -n {nofile}` (soft and hard, so it
/// cannot raise it) with `config`; the addresses it bound are in
/// `listening`.
fn spawn_limited(nofile: u32, config: &std::path::Path) -> TestApp {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_castpoint"))
        .args(["run", "--config"])
        .arg(config);
    TestApp::spawn(cmd).unwrap_or_else(|(s, e)| panic!("castpoint: {s}: {e}"))
}

async fn connect_from(addr: SocketAddr, src: &str) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.parse().expect("ip"), 0))?;
    sock.connect(addr).await
}

/// A plain HTTP/1.1 GET over a fresh connection from `src`: status, body.
async fn get(addr: SocketAddr, src: &str, path: &str) -> Option<(u16, String)> {
    let mut s = timeout(Duration::from_secs(10), connect_from(addr, src))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

async fn get_status(addr: SocketAddr, src: &str, path: &str) -> Option<u16> {
    get(addr, src, path).await.map(|(s, _)| s)
}

/// 600 half-sent requests from one address against a castpoint limited to
/// 512 open files (before the fix: every listener stopped accepting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_flood_is_capped_and_timed_out_and_other_listeners_live() {
    // This process holds the flood's 600 client sockets itself.
    castpoint::netlimit::raise_fd_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("castpoint.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"data_dir = "{}"
[http]
bind = "127.0.0.1:0"
max_connections = 200
max_connections_per_ip = 150
header_read_timeout = "2s"
[bacnet]
bind = "127.0.0.1:0"
[modbus]
bind = "127.0.0.1:0"
[rtmp]
bind = "127.0.0.1:0"
[telemetry]
enabled = false
"#,
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let p = spawn_limited(512, &cfg);
    let http = p.listening["http"];
    let (modbus, rtmp) = (p.listening["modbus"], p.listening["rtmp"]);

    // The flood: each connection sends half a request head and stops.
    let mut flood = Vec::new();
    for _ in 0..600 {
        let mut s = connect_from(http, "127.0.0.1").await.expect("connect");
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
        flood.push((s, Instant::now()));
    }
    // Each flood connection is closed: the refused ones at once, the
    // admitted ones (one address's share) when the header timeout fires.
    let watchers: Vec<_> = flood
        .into_iter()
        .map(|(mut s, sent)| {
            tokio::spawn(async move {
                let mut b = [0u8; 256];
                loop {
                    match timeout(Duration::from_secs(60), s.read(&mut b)).await {
                        Err(_) => return None,
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(sent.elapsed()),
                        Ok(Ok(_)) => {}
                    }
                }
            })
        })
        .collect();

    // (b) While the flood holds its connections, another address is served.
    assert_eq!(
        get_status(http, "127.0.0.2", "/health").await,
        Some(200),
        "a fresh client is answered during the flood"
    );
    // Refusals are counted (the flood's connections beyond its share).
    let (_, metrics) = get(http, "127.0.0.2", "/metrics").await.expect("metrics");
    let key = format!(
        "castpoint_connections_refused_total{{listener=\"http\",addr=\"{http}\",reason=\"per_ip\"}}"
    );
    let refused = crate::util::metric_value(&metrics, &key)
        .unwrap_or_else(|| panic!("{key} in /metrics:\n{metrics}"));
    assert!(refused >= 400, "{refused} refused per address");
    // (c) Modbus and RTMP still accept and answer.
    let mut m = timeout(Duration::from_secs(10), TcpStream::connect(modbus))
        .await
        .expect("modbus connect in time")
        .expect("modbus connect");
    m.write_all(&[0, 1, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 1])
        .await
        .expect("modbus send");
    let mut h = [0u8; 9];
    timeout(Duration::from_secs(10), m.read_exact(&mut h))
        .await
        .expect("modbus answers in time")
        .expect("modbus answer");
    assert_eq!((h[0], h[1], h[7]), (0, 1, 0x04), "{h:?}");
    let mut r = timeout(Duration::from_secs(10), TcpStream::connect(rtmp))
        .await
        .expect("rtmp connect in time")
        .expect("rtmp connect");
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(7u8, 1536));
    r.write_all(&c0c1).await.expect("rtmp C0+C1");
    let mut s0 = [0u8; 1];
    timeout(Duration::from_secs(10), r.read_exact(&mut s0))
        .await
        .expect("rtmp S0 in time")
        .expect("rtmp S0");
    assert_eq!(s0[0], 3, "RTMP version 3");

    // (a) Every flood connection is closed; the ones held by the server
    // (its per-address share, 150) only after the 2 s header timeout.
    let mut held = 0;
    for w in watchers {
        let open_for = w.await.expect("watcher").expect("flood connection closed");
        if open_for >= Duration::from_millis(1900) {
            held += 1;
        }
    }
    eprintln!("flood: {held} of 600 connections held until the header timeout");
    assert!(
        (1..=150).contains(&held),
        "{held} connections held until the header timeout"
    );
    // The flooding address is served again once its connections are gone.
    assert_eq!(get_status(http, "127.0.0.1", "/health").await, Some(200));
}

fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

fn https_client(trust: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(trust.as_bytes()).expect("pem"))
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test]
async fn https_serves_and_reloads_its_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_cert, old_key) = self_signed();
    std::fs::write(&cert, &old_cert).expect("cert");
    std::fs::write(&key, &old_key).expect("key");
    let mut cfg = Config::embedded().expect("embedded config");
    loopback(&mut cfg);
    cfg.server.http.tls_cert = Some(cert.clone());
    cfg.server.http.tls_key = Some(key.clone());
    let app = TestApp::with_config(cfg).await;
    let addr = app.addrs.http.expect("http bound");
    let url = format!("https://localhost:{}/health", addr.port());

    let old = https_client(&old_cert, addr);
    let r = old.get(&url).send().await.expect("GET /health over https");
    assert_eq!(r.status(), 200);
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(reqwest::get(format!("http://{addr}/health")).await.is_err());

    // Renew the certificate and reload (what SIGHUP does; the signal itself
    // is tested against the real binary in tests/interop/test_tls.py).
    let (new_cert, new_key) = self_signed();
    std::fs::write(&cert, &new_cert).expect("cert");
    std::fs::write(&key, &new_key).expect("key");
    assert!(castpoint::httpd::reload_all() >= 1);
    // A new connection sees the new certificate...
    let new = https_client(&new_cert, addr);
    assert_eq!(new.get(&url).send().await.expect("new cert").status(), 200);
    assert!(
        https_client(&old_cert, addr)
            .get(&url)
            .send()
            .await
            .is_err(),
        "a new connection no longer gets the old certificate"
    );
    // ...while the connection opened before the reload goes on (this client
    // trusts only the old certificate, so it can only be that connection).
    assert_eq!(old.get(&url).send().await.expect("kept").status(), 200);

    // A broken file on reload keeps the current certificate.
    std::fs::write(&key, "not a key").expect("key");
    castpoint::httpd::reload_all();
    assert_eq!(
        https_client(&new_cert, addr)
            .get(&url)
            .send()
            .await
            .expect("still the new cert")
            .status(),
        200
    );
    app.stop().await;
}

#[test]
fn check_config_reports_tls_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, k) = self_signed();
    let (_, other_key) = self_signed();
    std::fs::write(dir.path().join("c.pem"), c).expect("cert");
    std::fs::write(dir.path().join("k.pem"), other_key).expect("key");
    let e = Config::from_text(
        "castpoint.toml",
        "[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        dir.path(),
    )
    .err()
    .map(|e| e.to_string())
    .expect("mismatched key refused");
    assert!(e.contains("castpoint.toml: http.tls_key: "), "{e}");
    std::fs::write(dir.path().join("k.pem"), k).expect("key");
    assert!(Config::from_text(
        "castpoint.toml",
        "[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        dir.path(),
    )
    .is_ok());
    let e = Config::from_text(
        "castpoint.toml",
        "[http]\ntls_cert = \"c.pem\"\n",
        dir.path(),
    )
    .err()
    .map(|e| e.to_string())
    .expect("cert without key refused");
    assert!(e.contains("http.tls_key"), "{e}");
}
