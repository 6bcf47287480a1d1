//! Durability end to end: SIGKILL the real binary during a burst of acknowledged writes, restart it, and find every acknowledged command in force.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;

use crate::util::{eventually_true, run_command, TestApp};

/// The real binary on `data` (kept across the kill and the restart).
fn spawn(data: &std::path::Path) -> TestApp {
    TestApp::spawn(run_command(data)).unwrap_or_else(|(s, e)| panic!("castpoint: {s}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_write_burst_loses_no_acknowledged_command() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = spawn(dir.path());
    let c = reqwest::Client::new();
    // A burst of writes on two points; remember the last acknowledged one.
    let base = p.http_base();
    let acks = Arc::new(AtomicU64::new(0));
    let burst = tokio::spawn({
        let c = c.clone();
        let acks = acks.clone();
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
                    Ok(r) if r.status() == 200 => {
                        last_ack = Some((i, v));
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break, // killed
                }
            }
            last_ack
        }
    });
    // Kill in the middle of the burst, whatever the machine's speed.
    eventually_true("50 acknowledged writes", Duration::from_secs(30), || {
        acks.load(Ordering::Relaxed) >= 50
    })
    .await;
    // SIGKILL: no shutdown path runs.
    p.child().kill().expect("kill -9");
    let _ = p.child().wait();
    let (n, last) = burst
        .await
        .expect("burst")
        .expect("some writes acknowledged");
    assert!(n > 10, "only {n} writes before the kill");
    let p2 = spawn(dir.path());
    let pt: J =
        crate::util::get_json(&c, format!("{}/api/points/input_select", p2.http_base())).await;
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
        format!(
            "{}/api/audit?target=input_select&limit=1000",
            p2.http_base()
        ),
    )
    .await;
    assert!(audit["events"].as_array().expect("events").len() >= 10);
    drop(p2); // kills the child
}
