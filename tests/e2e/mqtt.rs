//! MQTT edge node end-to-end: a broker that is down or that accepts TCP and never answers (no CONNACK) disturbs neither the other protocols nor shutdown.
//!
//! The Sparkplug conversation itself is tested against a real broker
//! (Mosquitto) and host (pysparkplug) in tests/interop/test_mqtt.py.

use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::config::Config;

use crate::util::loopback;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_silent_broker_disturbs_nothing_else() {
    // A "broker" that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    // And a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);

    let mut cfg = Config::embedded().unwrap();
    loopback(&mut cfg);
    let section: castpoint::protocols::mqtt::MqttSection = toml::from_str(&format!(
        "enabled = true\nbrokers = [\"mqtt://127.0.0.1:{dead_port}\", \"mqtt://{silent_addr}\"]\n\
         reconnect_max = \"1s\"\nedge_node_id = \"e2e\"\n"
    ))
    .unwrap();
    cfg.mqtt = Some(
        castpoint::protocols::mqtt::MqttConfig::resolve(&section, std::path::Path::new("."))
            .expect("valid [mqtt]"),
    );
    let app = App::start(cfg).await.expect("app starts");
    assert!(app.faults.is_empty(), "not degraded: {:?}", app.faults);
    let status = app.mqtt.clone().expect("mqtt enabled");

    let c = reqwest::Client::new();
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    // REST reads and writes answer promptly while the node cannot connect.
    for v in 1..=5 {
        let t = Instant::now();
        let r = c
            .post(format!("{base}/api/points/input_select"))
            .json(&serde_json::json!({ "value": v }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let j: serde_json::Value = c
            .get(format!("{base}/api/points/input_select"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(j["value"], serde_json::json!(v as f64));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert!(!status.online.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(status.births.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Shutdown does not wait for the broker.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stops within 10 s with a silent broker");
    assert!(t.elapsed() < Duration::from_secs(10));
    held.abort();
}
