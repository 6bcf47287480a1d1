//! Webhook tests against a real HTTP receiver on 127.0.0.1:0: delivery with retries, the bounded queue, the rate limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value as J;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::points::alarm::{AlarmSpec, ClassRules, PerTransition, TransitionKind};
use crate::points::{DbOptions, PointDb, PointId, Protocol, Quality, Source, Value};

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(Instant, J)>>,
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
    /// Never answer (a receiver that hangs).
    hang: AtomicBool,
}

async fn receive(State(r): State<Arc<Receiver>>, body: String) -> StatusCode {
    if r.hang.load(SeqCst) {
        std::future::pending::<()>().await;
    }
    if r.fail_first
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let j: J = serde_json::from_str(&body).unwrap_or(J::Null);
    r.got.lock().push((Instant::now(), j));
    StatusCode::NO_CONTENT
}

async fn receiver() -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (r, url)
}

fn runtime() -> (PointDb, PointId, Alarms) {
    let c = Config::embedded().expect("embedded");
    let db = PointDb::new(c.points, c.site, DbOptions::default());
    let cpu = db.lookup("cpu_usage").expect("cpu");
    let spec = AlarmSpec::high_limit_for_tests(90.0, 7);
    let classes = HashMap::from([(
        7,
        ClassRules {
            priority: PerTransition::all(80),
            ack_required: PerTransition {
                to_offnormal: true,
                to_fault: true,
                to_normal: false,
            },
        },
    )]);
    let alarms = Alarms::new(db.clone(), vec![(cpu, spec)], classes, 1000);
    (db, cpu, alarms)
}

fn set(db: &PointDb, alarms: &Alarms, id: PointId, v: f64) {
    db.set(id, Some(Value::Number(v)), Quality::Ok, None)
        .expect("set");
    alarms.evaluate_all();
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn transitions_and_acks_are_posted_with_retries() {
    let (r, url) = receiver().await;
    r.fail_first.store(2, SeqCst);
    let (db, cpu, alarms) = runtime();
    let stop = CancellationToken::new();
    let mut hook = Webhook::new(url);
    hook.retry_delay = Duration::from_millis(20);
    let stats = spawn(
        alarms.clone(),
        HashMap::from([(7, hook)]),
        stop.clone(),
        &tokio_util::task::TaskTracker::new(),
    );
    set(&db, &alarms, cpu, 95.0);
    eventually("the transition", || r.got.lock().len() == 1).await;
    let j = r.got.lock()[0].1.clone();
    assert_eq!(j["type"], "alarm");
    assert_eq!(j["point"], "cpu_usage");
    assert_eq!(j["to"], "high-limit");
    assert_eq!(j["transition"], "to-offnormal");
    assert_eq!(j["notification_class"], 7);
    assert_eq!(j["value"], 95.0);
    assert_eq!(j["ack_required"], true);
    assert_eq!(stats.retried.load(SeqCst), 2);
    // `sent` counts once the worker read the answer, just after the
    // receiver recorded it.
    eventually("counted as sent", || stats.sent.load(SeqCst) == 1).await;

    let ts = alarms
        .state(cpu)
        .and_then(|s| s.time_stamps.to_offnormal)
        .expect("stamp");
    let who = Source::new(Protocol::Rest, None, Some("bob".into()));
    alarms
        .acknowledge("cpu_usage", TransitionKind::ToOffnormal, ts, &who)
        .expect("ack");
    eventually("the ack", || r.got.lock().len() == 2).await;
    let j = r.got.lock()[1].1.clone();
    assert_eq!(j["type"], "alarm-ack");
    assert_eq!(j["user"], "bob");
    assert_eq!(j["protocol"], "rest");
    assert_eq!(j["state"]["acked"]["to-offnormal"], true);
    assert_eq!(stats.dropped.load(SeqCst), 0);
    stop.cancel();
}

#[tokio::test]
async fn a_hung_receiver_fills_the_bounded_queue_and_drops_are_counted() {
    let (r, url) = receiver().await;
    r.hang.store(true, SeqCst);
    let (db, cpu, alarms) = runtime();
    let stop = CancellationToken::new();
    let mut hook = Webhook::new(url);
    hook.queue = 2;
    hook.retries = 0;
    hook.timeout = Duration::from_secs(30);
    let stats = spawn(
        alarms.clone(),
        HashMap::from([(7, hook)]),
        stop.clone(),
        &tokio_util::task::TaskTracker::new(),
    );
    let t0 = Instant::now();
    for i in 0..20 {
        set(&db, &alarms, cpu, if i % 2 == 0 { 95.0 } else { 10.0 });
        // Let the dispatcher take each event off the broadcast, so the
        // drops are the queue's, not the broadcast's.
        tokio::task::yield_now().await;
    }
    // The alarms never waited for the webhook.
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(alarms.history(100).len(), 20);
    // At most one POST in flight and two queued: the other 17 (18 if the
    // worker had not taken the first yet) are dropped, counted.
    eventually("drops counted", || stats.dropped.load(SeqCst) >= 17).await;
    let d = stats.dropped.load(SeqCst);
    assert!((17..=18).contains(&d), "{d}");
    assert_eq!(stats.sent.load(SeqCst), 0);
    stop.cancel();
}

#[tokio::test]
async fn posts_are_rate_limited() {
    let (r, url) = receiver().await;
    let (db, cpu, alarms) = runtime();
    let stop = CancellationToken::new();
    let mut hook = Webhook::new(url);
    hook.max_rate = 10.0;
    let stats = spawn(
        alarms.clone(),
        HashMap::from([(7, hook)]),
        stop.clone(),
        &tokio_util::task::TaskTracker::new(),
    );
    for i in 0..6 {
        set(&db, &alarms, cpu, if i % 2 == 0 { 95.0 } else { 10.0 });
        tokio::task::yield_now().await;
    }
    eventually("six posts", || r.got.lock().len() == 6).await;
    let span = {
        let got = r.got.lock();
        got[5].0 - got[0].0
    };
    // Five gaps of 100 ms at 10 per second (a little slack for timers).
    assert!(span >= Duration::from_millis(450), "{span:?}");
    // Counted when the worker has read the answer, which can be just after
    // the receiver recorded the request (a race seen in CI: 5 of 6).
    eventually("six counted as sent", || stats.sent.load(SeqCst) == 6).await;
    stop.cancel();
}

#[test]
fn config_problems_are_named() {
    assert!(Webhook::new("http://127.0.0.1:9/x").problems().is_empty());
    let mut h = Webhook::new("ftp://x");
    h.queue = 0;
    h.max_rate = 0.0;
    let keys: Vec<&str> = h.problems().iter().map(|p| p.0).collect();
    assert_eq!(keys, ["webhook", "webhook_queue", "webhook_rate"]);
}
