//! Tests of the alarm runtime against a real point database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::points::alarm::{Algorithm, PerTransition};
use crate::points::{DbOptions, Protocol, Quality, Value};

fn db() -> PointDb {
    let c = Config::embedded().expect("embedded");
    PointDb::new(c.points, c.site, DbOptions::default())
}

fn high(limit: f64, delay_ms: u64) -> AlarmSpec {
    AlarmSpec {
        time_delay: Duration::from_millis(delay_ms),
        time_delay_normal: Some(Duration::ZERO),
        ..AlarmSpec::high_limit_for_tests(limit, 1)
    }
}

fn classes() -> HashMap<u32, ClassRules> {
    HashMap::from([(
        1,
        ClassRules {
            priority: PerTransition::all(100),
            ack_required: PerTransition {
                to_offnormal: true,
                to_fault: true,
                to_normal: false,
            },
        },
    )])
}

#[derive(Default)]
struct MemStore {
    transitions: Mutex<Vec<(String, EventState)>>,
    acks: Mutex<Vec<(String, TransitionKind, String)>>,
    fail_acks: std::sync::atomic::AtomicBool,
}

impl AlarmStore for MemStore {
    fn record_transition(&self, rec: &AlarmRecord) -> anyhow::Result<()> {
        self.transitions
            .lock()
            .push((rec.point.clone(), rec.transition.to));
        Ok(())
    }
    fn record_ack(
        &self,
        point: &str,
        kind: TransitionKind,
        _ts: DateTime<Utc>,
        source: &Source,
    ) -> anyhow::Result<()> {
        if self.fail_acks.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("disk full");
        }
        self.acks
            .lock()
            .push((point.to_string(), kind, source.describe()));
        Ok(())
    }
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn set(db: &PointDb, id: PointId, v: f64) {
    db.set(id, Some(Value::Number(v)), Quality::Ok, None)
        .expect("set");
}

#[tokio::test]
async fn a_limit_alarm_is_raised_stored_acknowledged_and_cleared() {
    let db = db();
    let cpu = db.lookup("cpu_usage").expect("cpu");
    let alarms = Alarms::new(db.clone(), vec![(cpu, high(90.0, 0))], classes(), 100);
    let store = Arc::new(MemStore::default());
    alarms.set_store(store.clone());
    let mut events = alarms.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(alarms.clone().run(stop.clone()));

    set(&db, cpu, 50.0);
    set(&db, cpu, 97.0);
    let st = eventually("high limit", || {
        alarms
            .state(cpu)
            .filter(|s| s.event_state == EventState::HighLimit)
    })
    .await;
    assert!(!st.acked.to_offnormal);
    let active = alarms.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].point, "cpu_usage");
    assert_eq!(alarms.counts(), (1, 1));
    match events.recv().await.expect("event") {
        AlarmEvent::Transition(r) => {
            assert_eq!(r.transition.to, EventState::HighLimit);
            assert_eq!(r.transition.value, Some(Value::Number(97.0)));
            assert!(r.transition.notify && r.transition.ack_required);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        store.transitions.lock().as_slice(),
        &[("cpu_usage".to_string(), EventState::HighLimit)]
    );

    // A wrong time stamp is refused and nothing is stored.
    let src = Source::new(Protocol::Rest, None, Some("op".into()));
    let ts = st.time_stamps.to_offnormal.expect("stamp");
    let wrong = ts - chrono::Duration::seconds(1);
    assert!(matches!(
        alarms.acknowledge("cpu_usage", TransitionKind::ToOffnormal, wrong, &src),
        Err(AckFailure::Refused(AckError::InvalidTimeStamp(_)))
    ));
    // A store failure refuses the ack and keeps it unacknowledged.
    store
        .fail_acks
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        alarms.acknowledge("cpu_usage", TransitionKind::ToOffnormal, ts, &src),
        Err(AckFailure::Store(_))
    ));
    assert!(!alarms.state(cpu).expect("state").acked.to_offnormal);
    store
        .fail_acks
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(alarms
        .acknowledge("cpu_usage", TransitionKind::ToOffnormal, ts, &src)
        .expect("ack"));
    assert_eq!(store.acks.lock().len(), 1);
    assert!(store.acks.lock()[0].2.contains("op"));
    assert_eq!(alarms.counts(), (1, 0));
    assert!(matches!(
        alarms.acknowledge("uptime", TransitionKind::ToOffnormal, ts, &src),
        Err(AckFailure::NoAlarm(_))
    ));

    // Back below the limit minus the deadband: NORMAL, not listed.
    set(&db, cpu, 10.0);
    eventually("normal", || {
        alarms
            .state(cpu)
            .filter(|s| s.event_state == EventState::Normal)
    })
    .await;
    assert!(alarms.active().is_empty());
    assert_eq!(alarms.history(10).len(), 2);
    stop.cancel();
    task.await.expect("run");
}

/// One change to 95 against a 90 high limit with a 150-ms delay, and
/// nothing else: only the deadline can raise the alarm. With `waiting`,
/// the change comes once `run` waits for changes and the start-up grace
/// is a minute, so the changed point's own deadline must be the one that
/// fires (not the next full look at the grace's end).
async fn one_change_raises_after_its_delay(waiting: bool) {
    let db = db();
    let cpu = db.lookup("cpu_usage").expect("cpu");
    let alarms = Alarms::new(db.clone(), vec![(cpu, high(90.0, 150))], classes(), 100);
    if waiting {
        alarms.set_startup_grace(Duration::from_secs(60));
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(alarms.clone().run(stop.clone()));
    if waiting {
        // `run` sets this before its first evaluation and then waits for
        // changes; this single-threaded runtime runs it while we wait here.
        eventually("run waiting", || {
            alarms.inner.grace_until.lock().is_some().then_some(())
        })
        .await;
    }
    set(&db, cpu, 95.0);
    eventually("high limit after the delay", || {
        alarms
            .state(cpu)
            .filter(|s| s.event_state == EventState::HighLimit)
    })
    .await;
    stop.cancel();
    task.await.expect("run");
}

/// Whether `run` sees the change as a change or in its start-up
/// evaluation, the deadline alone raises the alarm.
#[tokio::test]
async fn a_time_delay_fires_without_another_change() {
    one_change_raises_after_its_delay(false).await;
}

#[tokio::test]
async fn a_time_delay_set_by_a_change_fires_at_its_own_deadline() {
    one_change_raises_after_its_delay(true).await;
}

/// An alarm storm: 100 routes lose their input at once. Every transition
/// is in the durable history (none dropped), and a webhook receives them
/// at its bounded rate, all of them.
#[tokio::test]
async fn a_storm_of_100_routes_is_stored_whole_and_notified_at_a_bounded_rate() {
    use crate::points::routes::BlockInfo;
    let c = Config::embedded().expect("embedded");
    let db = PointDb::with_routes(c.points, c.site, DbOptions::default(), c.route_template);
    let mut points = Vec::new();
    for slot in 1..=100u16 {
        assert!(db.open_block(
            slot,
            BlockInfo {
                route: format!("r{slot}"),
                inputs: vec!["in".into()],
                outputs: vec![],
            },
        ));
        let id = db
            .block_point(slot, "route_status", None)
            .expect("route_status");
        db.set(id, Some(Value::Enum(1)), Quality::Ok, None)
            .expect("live");
        points.push(id);
    }
    let spec = no_signal();
    let alarms = Alarms::new(
        db.clone(),
        points.iter().map(|p| (*p, spec.clone())).collect(),
        classes(),
        10,
    );
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(crate::persist::Store::open(dir.path(), 100_000).expect("store"));
    alarms.set_store(Arc::new(crate::persist::alarms::SqliteAlarmStore::new(
        store.clone(),
        Some(db.clone()),
        crate::persist::alarms::DEFAULT_HISTORY_RETENTION,
    )));
    // A webhook receiver on loopback, counting arrivals.
    let got = Arc::new(Mutex::new(Vec::<std::time::Instant>::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            let g = g.clone();
            async move {
                g.lock().push(std::time::Instant::now());
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let stop = CancellationToken::new();
    let mut hook = webhook::Webhook::new(url);
    hook.max_rate = 50.0;
    let tracker = tokio_util::task::TaskTracker::new();
    let stats = webhook::spawn(
        alarms.clone(),
        HashMap::from([(1, hook)]),
        stop.clone(),
        &tracker,
    );
    let task = tokio::spawn(alarms.clone().run(stop.clone()));
    eventually("runtime started", || {
        (alarms.counts() == (0, 0)).then_some(())
    })
    .await;
    for id in &points {
        db.set(*id, Some(Value::Enum(2)), Quality::Ok, None)
            .expect("no signal");
    }
    eventually("100 active", || (alarms.counts().0 == 100).then_some(())).await;
    // Durable: every transition is in SQLite, although the in-memory
    // history keeps only 10.
    assert_eq!(store.alarm_history_count().expect("count"), 100);
    assert_eq!(alarms.history(1000).len(), 10);
    let routes: std::collections::HashSet<String> = store
        .query_alarm_history(&crate::persist::alarms::AlarmHistoryFilter {
            limit: 1000,
            ..Default::default()
        })
        .expect("history")
        .into_iter()
        .filter_map(|r| r.route)
        .collect();
    assert_eq!(routes.len(), 100, "each row names its route");
    // Notified at a bounded rate: 100 posts at 50/s take about 2 s.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while got.lock().len() < 100 {
        assert!(
            std::time::Instant::now() < end,
            "{} posts",
            got.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = got.lock().clone();
    let span = t[99] - t[0];
    assert!(span >= Duration::from_millis(99 * 20 - 100), "{span:?}");
    let dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 0);
    stop.cancel();
    task.await.expect("run");
}

/// Route Status in alarm at NO_SIGNAL (2), class 1, no delay.
fn no_signal() -> AlarmSpec {
    AlarmSpec {
        algorithm: Algorithm::ChangeOfState {
            alarm_values: vec![Value::Enum(2)],
        },
        fault_values: vec![],
        fault_on_bad_quality: false,
        time_delay: Duration::ZERO,
        time_delay_normal: None,
        event_enable: PerTransition::all(true),
        notification_class: 1,
    }
}

/// A database with route blocks and an alarm runtime over every slot's
/// Route Status (NO_SIGNAL is the alarm value), with `store`.
fn route_runtime(store: Option<Arc<dyn AlarmStore>>) -> (PointDb, Alarms) {
    let c = Config::embedded().expect("embedded");
    let db = PointDb::with_routes(c.points, c.site, DbOptions::default(), c.route_template);
    let spec = no_signal();
    let points = (1..=4u16)
        .filter_map(|slot| db.block_point(slot, "route_status", None))
        .map(|p| (p, spec.clone()))
        .collect();
    let alarms = Alarms::new(db.clone(), points, classes(), 100);
    if let Some(s) = store {
        alarms.set_store(s);
    }
    (db, alarms)
}

fn open(db: &PointDb, slot: u16, route: &str) -> PointId {
    use crate::points::routes::BlockInfo;
    assert!(db.open_block(
        slot,
        BlockInfo {
            route: route.into(),
            inputs: vec!["in".into()],
            outputs: vec![],
        },
    ));
    db.block_point(slot, "route_status", None)
        .expect("route_status")
}

async fn next_transition(rx: &mut broadcast::Receiver<AlarmEvent>) -> AlarmRecord {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a transition within 10 s")
            .expect("event");
        if let AlarmEvent::Transition(r) = ev {
            return r;
        }
    }
}

/// Deleting a route with an active alarm ends it with a to-NORMAL
/// transition that names the route (webhooks, the history and BACnet
/// recipients see it close); before, the state was dropped silently.
#[tokio::test]
async fn a_deleted_route_closes_its_active_alarm() {
    let (db, alarms) = route_runtime(None);
    let mut rx = alarms.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(alarms.clone().run(stop.clone()));
    let id = open(&db, 3, "cam");
    db.set(id, Some(Value::Enum(2)), Quality::Ok, None)
        .expect("no signal");
    let r = next_transition(&mut rx).await;
    assert_eq!(
        (r.transition.to, r.route.as_deref()),
        (EventState::Offnormal, Some("cam"))
    );
    db.close_block(3);
    let r = next_transition(&mut rx).await;
    assert_eq!(r.transition.to, EventState::Normal);
    assert_eq!(r.route.as_deref(), Some("cam"));
    assert_eq!(r.transition.reason, "route deleted");
    assert!(
        !r.transition.ack_required,
        "nobody can acknowledge a deleted route's point"
    );
    assert_eq!(alarms.state(id), Some(AlarmState::default()));
    assert_eq!(alarms.counts(), (0, 0));
    stop.cancel();
    task.await.expect("run");
}

/// A route deleted and another created in its slot between two looks of
/// the runtime: the old route's alarm is closed under its name and the new
/// route starts from NORMAL. Before, the new route inherited the active,
/// unacknowledged event of the old one.
#[tokio::test]
async fn the_next_route_in_a_slot_never_inherits_an_alarm() {
    let (db, alarms) = route_runtime(None);
    let mut rx = alarms.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(alarms.clone().run(stop.clone()));
    let id = open(&db, 3, "cam");
    db.set(id, Some(Value::Enum(2)), Quality::Ok, None)
        .expect("no signal");
    assert_eq!(
        next_transition(&mut rx).await.transition.to,
        EventState::Offnormal
    );
    // Back to back, as the slot keeper does for a swap.
    db.close_block(3);
    let id2 = open(&db, 3, "studio");
    assert_eq!(id, id2, "same slot, same point");
    db.set(id, Some(Value::Enum(1)), Quality::Ok, None)
        .expect("live");
    let r = next_transition(&mut rx).await;
    assert_eq!(
        (r.transition.to, r.route.as_deref()),
        (EventState::Normal, Some("cam"))
    );
    eventually("studio judged from NORMAL", || {
        let st = alarms.state(id)?;
        (st == AlarmState::default()).then_some(())
    })
    .await;
    assert_eq!(alarms.counts(), (0, 0), "nothing active, nothing unacked");
    stop.cancel();
    task.await.expect("run");
}

/// A state stored for route `cam` in slot 3 and restored after `cam` was
/// removed: when `studio` gets slot 3 it starts from NORMAL.
#[tokio::test]
async fn a_restored_state_waits_for_its_own_route_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(crate::persist::Store::open(dir.path(), 1000).expect("store"));
    let sqlite = |db: &PointDb| -> Arc<dyn AlarmStore> {
        Arc::new(crate::persist::alarms::SqliteAlarmStore::new(
            store.clone(),
            Some(db.clone()),
            100,
        ))
    };
    {
        let (db, alarms) = route_runtime(None);
        alarms.set_store(sqlite(&db));
        let id = open(&db, 3, "cam");
        db.set(id, Some(Value::Enum(2)), Quality::Ok, None)
            .expect("no signal");
        alarms.evaluate_all();
        assert_eq!(
            alarms.state(id).map(|s| s.event_state),
            Some(EventState::Offnormal)
        );
    }
    let (db, alarms) = route_runtime(None);
    alarms.set_store(sqlite(&db));
    let states = store.alarm_states().expect("states");
    assert_eq!(states.len(), 1);
    for (p, st, route) in states {
        assert_eq!(route.as_deref(), Some("cam"));
        alarms.restore(db.lookup_any(&p).expect("point"), st, route);
    }
    let id = open(&db, 3, "studio");
    db.set(id, Some(Value::Enum(1)), Quality::Ok, None)
        .expect("live");
    alarms.evaluate_all();
    assert_eq!(alarms.state(id), Some(AlarmState::default()));
    assert!(
        store.alarm_states().expect("states").is_empty(),
        "the stored row is gone"
    );
    // Its own route gets it back: cam in slot 3 after a restart.
    let (db, alarms) = route_runtime(None);
    let id = open(&db, 3, "cam");
    alarms.restore(
        id,
        AlarmState::restore(
            EventState::Offnormal,
            PerTransition {
                to_offnormal: Some(Utc::now()),
                to_fault: None,
                to_normal: None,
            },
            PerTransition {
                to_offnormal: false,
                to_fault: true,
                to_normal: true,
            },
            Some(Value::Enum(2)),
        ),
        Some("cam".into()),
    );
    db.set(id, Some(Value::Enum(2)), Quality::Ok, None)
        .expect("no signal");
    alarms.evaluate_all();
    let st = alarms.state(id).expect("state");
    assert_eq!(st.event_state, EventState::Offnormal);
    assert!(!st.acked.to_offnormal, "cam's own unacked alarm is kept");
}

/// A point without a good value at start-up is not FAULT before the grace
/// ends (telemetry and the engine start after the alarms), and is FAULT
/// once it ends if still without one. Before, every restart raised an
/// ack-required FAULT for Server Status and Communication Status.
#[tokio::test]
async fn start_up_grace_before_judging_a_point_without_a_value() {
    let db = db();
    let ss = db.lookup("server_status").expect("server_status");
    let spec = AlarmSpec {
        algorithm: Algorithm::None,
        fault_values: vec![],
        fault_on_bad_quality: true,
        time_delay: Duration::ZERO,
        time_delay_normal: None,
        event_enable: PerTransition::all(true),
        notification_class: 1,
    };
    let alarms = Alarms::new(db.clone(), vec![(ss, spec)], classes(), 100);
    alarms.set_startup_grace(Duration::from_millis(400));
    let mut rx = alarms.subscribe();
    let stop = CancellationToken::new();
    let started = Utc::now();
    let task = tokio::spawn(alarms.clone().run(stop.clone()));
    // No source yet: FAULT comes, but not before the grace is over.
    let r = next_transition(&mut rx).await;
    assert_eq!(r.transition.to, EventState::Fault);
    let after = r.transition.at - started;
    assert!(
        after >= chrono::Duration::milliseconds(400),
        "FAULT {after} after start"
    );
    stop.cancel();
    task.await.expect("run");

    // A value within the grace: no FAULT at all.
    let db2 = self::db();
    let ss2 = db2.lookup("server_status").expect("server_status");
    let alarms = Alarms::new(
        db2.clone(),
        vec![(ss2, alarms.spec(ss).expect("spec").clone())],
        classes(),
        100,
    );
    alarms.set_startup_grace(Duration::from_millis(400));
    let stop = CancellationToken::new();
    let task = tokio::spawn(alarms.clone().run(stop.clone()));
    let states = db2.def(ss2).map(|d| d.states.len()).unwrap_or(0);
    assert!(states > 0, "server_status is a multi-state point");
    db2.set(ss2, Some(Value::Enum(1)), Quality::Ok, None)
        .expect("ok");
    // Past the grace (a deadline the runtime wakes for), still NORMAL.
    eventually("grace over", || {
        (alarms.inner.grace_until.lock().is_none()).then_some(())
    })
    .await;
    assert_eq!(alarms.state(ss2), Some(AlarmState::default()));
    stop.cancel();
    task.await.expect("run");
}
