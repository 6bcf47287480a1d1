//! Issue 21 wiring: the shipped alarm specs reach the running server, a route whose input goes silent raises its Route Status alarm, the ack is checked against the transition's time stamp, and the return to media clears it.

use std::path::Path;
use std::time::Duration;

use castpoint::config::Config;
use castpoint::points::alarm::{EventState, TransitionKind};
use castpoint::points::{Protocol, Source, Value};

use crate::util::{self, eventually, TestApp};

fn config() -> Config {
    let text = "[telemetry]\nenabled = true\n[[route]]\nname = \"a\"\n[[route.input]]\nname = \"gen\"\ntype = \"generator\"\nbitrate = 1000000\n[[route.input]]\nname = \"spare\"\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n[[route.output]]\nname = \"web\"\ntype = \"http\"\npath = \"a\"\n";
    let mut cfg = Config::from_text("test.toml", text, Path::new(".")).expect("valid config");
    util::loopback(&mut cfg);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_route_raises_its_alarm_and_clears_it_when_media_returns() {
    let app = TestApp::with_config(config()).await;
    let (db, alarms) = (app.db.clone(), app.alarms.clone());
    let status = db.lookup("route.1.route_status").expect("route block");
    let long = Duration::from_secs(20);
    eventually("route LIVE", long, async || {
        (db.read(status)?.value == Some(Value::Enum(1))).then_some(())
    })
    .await;
    assert_eq!(
        alarms.state(status).map(|s| s.event_state),
        Some(EventState::Normal)
    );
    // Reserved blocks of free slots carry specs but never alarms.
    let free = db.lookup_any("route.2.route_status").expect("reserved");
    assert!(alarms.spec(free).is_some());
    assert!(alarms
        .active()
        .iter()
        .all(|a| !a.point.starts_with("route.2.")));

    // Force the silent spare input: NO_SIGNAL after signal_timeout, and
    // the alarm (time delay 0) right after it.
    let src = Source::new(Protocol::Rest, None, Some("test".into()));
    let sel = db.lookup("route.1.input_select").expect("input_select");
    db.write(sel, Some(Value::Enum(3)), 8, &src)
        .expect("force spare");
    let st = eventually("Route Status alarm", long, async || {
        let s = alarms.state(status)?;
        (s.event_state == EventState::Offnormal).then_some(s)
    })
    .await;
    // Class 1 needs an ack of to-offnormal.
    assert!(!st.acked.to_offnormal);
    let at = st.time_stamps.to_offnormal.expect("time stamped");
    let listed = alarms.active();
    let a = listed
        .iter()
        .find(|a| a.point == "route.1.route_status")
        .expect("listed as active");
    assert_eq!(a.notification_class, 1);
    // An ack must name the transition's exact time stamp (135 13.5).
    let wrong = at - chrono::Duration::seconds(1);
    assert!(alarms
        .acknowledge(
            "route.1.route_status",
            TransitionKind::ToOffnormal,
            wrong,
            &src
        )
        .is_err());
    assert!(matches!(
        alarms.acknowledge(
            "route.1.route_status",
            TransitionKind::ToOffnormal,
            at,
            &src
        ),
        Ok(true)
    ));
    assert!(matches!(
        alarms.acknowledge(
            "route.1.route_status",
            TransitionKind::ToOffnormal,
            at,
            &src
        ),
        Ok(false)
    ));
    assert!(alarms.state(status).is_some_and(|s| s.acked.to_offnormal));

    // Back to Auto: the generator is live again and, after
    // Time_Delay_Normal, the alarm returns to NORMAL.
    db.write(sel, None, 8, &src).expect("relinquish");
    eventually("alarm back to normal", long, async || {
        (alarms.state(status)?.event_state == EventState::Normal).then_some(())
    })
    .await;
    let h = alarms.history(10);
    let kinds: Vec<_> = h
        .iter()
        .filter(|r| r.point == "route.1.route_status")
        .map(|r| r.transition.kind)
        .collect();
    assert_eq!(
        kinds,
        [TransitionKind::ToOffnormal, TransitionKind::ToNormal]
    );
    app.stop().await;
}
