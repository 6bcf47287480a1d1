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
    // The state changes first; the transition reaches the history once the
    // store has written it (an fsync, slow on a loaded machine).
    let route_kinds = || -> Vec<TransitionKind> {
        alarms
            .history(10)
            .iter()
            .filter(|r| r.point == "route.1.route_status")
            .map(|r| r.transition.kind)
            .collect()
    };
    let kinds = eventually("to-normal in the history", long, async || {
        let k = route_kinds();
        (k.len() >= 2).then_some(k)
    })
    .await;
    assert_eq!(
        kinds,
        [TransitionKind::ToOffnormal, TransitionKind::ToNormal]
    );
    app.stop().await;
}

/// `/api/ws` pushes alarm transitions and acknowledgements as they happen,
/// beside the point changes (issue 21, "pushed on /api/ws").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pushes_alarm_transitions_and_acks() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = util::start().await;
    let (db, alarms) = (app.db.clone(), app.alarms.clone());
    let ss = db.lookup("server_status").expect("server_status");
    // Telemetry off: Server Status has no source, FAULT once the start-up
    // grace (5 s, docs/alarms.md) is over.
    eventually("server_status FAULT", Duration::from_secs(10), async || {
        (alarms.state(ss)?.event_state == EventState::Fault).then_some(())
    })
    .await;
    let http = app.addrs.http.expect("http");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/api/ws"))
        .await
        .expect("connect");
    async fn next_of<S>(ws: &mut S, ty: &str) -> serde_json::Value
    where
        S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        for _ in 0..200 {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("message within 10 s")
                .expect("open")
                .expect("message");
            if let Message::Text(t) = m {
                let j: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                if j["type"] == ty {
                    return j;
                }
            }
        }
        panic!("no {ty} message");
    }
    assert_eq!(next_of(&mut ws, "snapshot").await["type"], "snapshot");
    // A source again: the fault clears, NORMAL at once.
    db.set(
        ss,
        Some(Value::Enum(1)),
        castpoint::points::Quality::Ok,
        None,
    )
    .expect("set");
    let t = next_of(&mut ws, "alarm").await;
    assert_eq!(t["point"], "server_status");
    assert_eq!(t["from"], "fault");
    assert_eq!(t["to"], "normal");
    assert_eq!(t["transition"], "to-normal");
    assert_eq!(t["notification_class"], 2);
    // The to-fault transition still waits for its ack: acknowledge it
    // over REST and see the ack pushed, with who.
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/alarms/server_status/ack"))
        .json(&serde_json::json!({"transition": "to-fault", "time_stamp": "latest", "comment": "seen"}))
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), 200);
    let a = next_of(&mut ws, "alarm-ack").await;
    assert_eq!(a["point"], "server_status");
    assert_eq!(a["transition"], "to-fault");
    assert_eq!(a["protocol"], "rest");
    assert_eq!(a["state"]["acked"]["to-fault"], true);
    app.stop().await;
}

/// A `[[notification_class]]` webhook configured in castpoint.toml gets
/// the class's transitions and acks as JSON POSTs (docs/alarms.md,
/// "Webhooks"), from a receiver on 127.0.0.1:0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_webhook_receives_transitions_and_acks() {
    let got = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<serde_json::Value>::new()));
    let g = got.clone();
    let app_rx = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let g = g.clone();
            async move {
                g.lock()
                    .push(serde_json::from_str(&body).unwrap_or_default());
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app_rx).await;
    });
    // Class 2 (server alarms) with a webhook; telemetry off, so Server
    // Status has no source and goes to FAULT at start.
    let app = TestApp::from_toml(&format!(
        "[[notification_class]]\nid = 2\nname = \"Server alarms\"\npriority = [96, 96, 200]\nack_required = [\"to-offnormal\", \"to-fault\"]\nwebhook = \"{url}\"\nwebhook_retries = 1\n"
    ))
    .await;
    let long = Duration::from_secs(20);
    let t = eventually("the FAULT posted", long, async || {
        got.lock()
            .iter()
            .find(|j| j["type"] == "alarm" && j["point"] == "server_status")
            .cloned()
    })
    .await;
    assert_eq!(t["to"], "fault");
    assert_eq!(t["notification_class"], 2);
    assert_eq!(t["priority"], 96);
    // Other classes have no webhook: nothing of theirs is posted.
    assert!(got.lock().iter().all(|j| j["notification_class"] == 2));
    let src = Source::new(Protocol::Rest, None, Some("eve".into()));
    let ss = app.db.lookup("server_status").expect("ss");
    let at = app
        .alarms
        .state(ss)
        .and_then(|s| s.time_stamps.to_fault)
        .expect("stamp");
    assert!(matches!(
        app.alarms
            .acknowledge("server_status", TransitionKind::ToFault, at, &src),
        Ok(true)
    ));
    let a = eventually("the ack posted", long, async || {
        got.lock()
            .iter()
            .find(|j| j["type"] == "alarm-ack")
            .cloned()
    })
    .await;
    assert_eq!(a["user"], "eve");
    assert_eq!(a["point"], "server_status");
    app.stop().await;
}
