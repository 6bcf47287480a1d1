//! Durability end to end: SIGKILL the real binary during a burst of acknowledged writes, restart it, and find every acknowledged command in force.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value as J;

struct Proc {
    child: Child,
    http: String,
}

fn spawn(data: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_castpoint"))
        .args([
            "run",
            "--http",
            "127.0.0.1:0",
            "--bacnet",
            "127.0.0.1:0",
            "--modbus",
            "127.0.0.1:0",
            "--rtmp",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn castpoint");
    let out = child.stdout.take().expect("stdout");
    let mut http = None;
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() == 3 && parts[0] == "listening" && parts[1] == "http" {
            http = Some(format!("http://{}", parts[2]));
        }
        if line == "ready" {
            break;
        }
    }
    Proc {
        child,
        http: http.expect("http address printed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_write_burst_loses_no_acknowledged_command() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = spawn(dir.path());
    let c = reqwest::Client::new();
    // A burst of writes on two points; remember the last acknowledged one.
    let base = p.http.clone();
    let burst = tokio::spawn({
        let c = c.clone();
        async move {
            let mut last_ack: Option<(u64, u64)> = None;
            for i in 0..100_000u64 {
                let v = i % 17;
                let r = c
                    .post(format!("{base}/api/points/input_select"))
                    .json(&serde_json::json!({"value": v, "priority": 9}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => last_ack = Some((i, v)),
                    _ => break, // killed
                }
            }
            last_ack
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    // SIGKILL: no shutdown path runs.
    p.child.kill().expect("kill -9");
    let _ = p.child.wait();
    let (n, last) = burst
        .await
        .expect("burst")
        .expect("some writes acknowledged");
    assert!(n > 10, "only {n} writes before the kill");
    let mut p2 = spawn(dir.path());
    let pt: J = crate::util::get_json(&c, format!("{}/api/points/input_select", p2.http)).await;
    // The last acknowledged write is in force. (A write in flight when the
    // process died may also have landed: then it is the one after.)
    let got = pt["priority_array"]["slots"][8]["value"]
        .as_f64()
        .expect("slot 9 value");
    assert!(
        got == last as f64 || got == ((n + 1) % 17) as f64,
        "slot 9 = {got}, last acknowledged {last} (write #{n})"
    );
    let audit: J = crate::util::get_json(
        &c,
        format!("{}/api/audit?target=input_select&limit=1000", p2.http),
    )
    .await;
    assert!(audit["events"].as_array().expect("events").len() >= 10);
    let _ = p2.child.kill();
    let _ = p2.child.wait();
}
