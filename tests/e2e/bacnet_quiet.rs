//! BACnet on a quiet network, end to end: the real binary takes point changes with no BACnet client anywhere, and still turns the stack's dispatch loop after them, which is what joins their finished tasks (issue 25: without it each change kept about 16 KB for good, 1.9 MB/s at 500 routes; bench/bacnet_quiet.py measures that memory).

use std::time::Duration;

use crate::util::{eventually, run_command, TestApp};

/// One sample of the child's `/metrics`, by exact series name.
async fn metric(c: &reqwest::Client, base: &str, series: &str) -> Option<u64> {
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    crate::util::metric_value(&text, series)
}

// A child process: the counters are process-wide, and other tests in this
// process send Who-Is of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_changes_turn_the_stack_with_no_bacnet_traffic() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = TestApp::spawn(run_command(dir.path()))
        .unwrap_or_else(|(s, e)| panic!("castpoint: {s}: {e}"));
    let base = p.http_base();
    let c = reqwest::Client::new();
    // Nothing reaches the stack from outside: every Who-Is it counts is a
    // turn frame (start-up made some already: the points' first values).
    let who_is = "castpoint_bacnet_discovery_total{event=\"who_is_received\"}";
    let i_am = "castpoint_bacnet_discovery_total{event=\"i_am_sent\"}";
    let turns0 = metric(&c, &base, "castpoint_bacnet_turn_frames_total")
        .await
        .expect("turn frames counted");
    let answered0 = metric(&c, &base, i_am).await.expect("I-Am counted");
    // Point changes the stack is handed (Input Select is a BACnet object).
    let mut i = 0u64;
    let (turns, received) = eventually(
        "a turn frame counted by the stack's own Who-Is counter",
        Duration::from_secs(30),
        async || {
            i += 1;
            let r = c
                .post(format!("{base}/api/points/input_select"))
                .json(&serde_json::json!({"value": 1 + i % 3, "priority": 9}))
                .send()
                .await
                .ok()?;
            assert_eq!(r.status(), 200, "write {i}");
            let changes = metric(&c, &base, "castpoint_bacnet_local_changes_total").await?;
            let turns = metric(&c, &base, "castpoint_bacnet_turn_frames_total").await?;
            let received = metric(&c, &base, who_is).await?;
            (changes > 0 && turns > turns0 && received > turns0).then_some((turns, received))
        },
    )
    .await;
    // Every Who-Is the stack saw is one of castpoint's: none was answered.
    assert!(received <= turns, "{received} Who-Is, {turns} turn frames");
    assert_eq!(
        metric(&c, &base, i_am).await,
        Some(answered0),
        "a turn frame was answered"
    );
    p.stop().await;
}
