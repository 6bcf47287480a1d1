//! Live feeds: WebSocket `/api/ws` (point changes and writes as they happen), seed 004's `/ws/dashboard` and `/ws/events/{stream}`, `GET /stats` and Prometheus `GET /metrics`.

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value as J};
use tokio::sync::broadcast::error::RecvError;

use super::json::{point_json, value_json};
use super::ApiState;
use crate::points::{PointDb, PointId, PointState, Value};

/// Compact JSON of one change (the full point JSON is in the snapshot).
fn change_json(db: &PointDb, id: PointId, st: &PointState, seq: u64) -> J {
    let def = db.def(id);
    let mut o = json!({
        "type": "point",
        "seq": seq,
        "id": def.map(|d| d.id.as_str()),
        "value": value_json(st.value),
        "status": st.quality.as_str(),
        "reason": st.reason.as_deref(),
        "updated": st.updated.to_rfc3339(),
    });
    if let (Some(Value::Enum(e)), Some(d)) = (st.value, def) {
        // A route's input states carry its own input names, as in the
        // snapshot's point JSON (not the template's "Input N").
        o["state"] = if db.route_point(id).is_some() {
            json!(db.state_names(id).get(usize::from(e).wrapping_sub(1)))
        } else {
            json!(d.state_name(e))
        };
    }
    o
}

fn snapshot(s: &ApiState) -> J {
    let pts: Vec<J> =
        s.db.ids()
            .map(|id| point_json(&s.db, &s.maps, id))
            .collect();
    json!({"type": "snapshot", "points": pts})
}

pub async fn ws_points(ws: WebSocketUpgrade, State(s): State<ApiState>) -> impl IntoResponse {
    ws.on_upgrade(move |sock| points_feed(sock, s))
}

/// Sends a snapshot, then every change and write. A client too slow for
/// the broadcast buffer gets a fresh snapshot instead of stalling writers.
async fn points_feed(mut sock: WebSocket, s: ApiState) {
    // Subscribe before the snapshot so no change falls between the two.
    let mut changes = s.db.subscribe();
    let mut writes = s.db.subscribe_writes();
    let mut events = s.engine.as_ref().map(|e| e.subscribe());
    let mut alarm_events = s.alarms.as_ref().map(|a| a.subscribe());
    // Router stats (bitrate, drops, clients, SRT RTT/loss/buffers) once a
    // second, as seed 001's dashboards expect.
    let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
    if send(&mut sock, &snapshot(&s)).await.is_err() {
        return;
    }
    loop {
        let msg = tokio::select! {
            _ = stats_tick.tick(), if s.engine.is_some() => match &s.engine {
                // Router errors may quote an output URL with its key.
                Some(e) => json!({"type": "stats", "router": super::routes::redact(&serde_json::to_value(e.snapshot()).unwrap_or(J::Null))}),
                None => continue,
            },
            ev = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match ev {
                Ok(ev) => {
                    let mut j = super::routes::redact(&serde_json::to_value(&ev).unwrap_or(J::Null));
                    j["type"] = json!("event");
                    j
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => { events = None; continue }
            },
            ev = async {
                match alarm_events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match (ev, &s.alarms) {
                (Ok(ev), Some(a)) => crate::alarms::json::event_json(a, &ev),
                // Missed alarm events: the list says where things stand.
                (Err(RecvError::Lagged(_)), Some(a)) => json!({
                    "type": "alarms",
                    "alarms": a.active().iter().map(|x| crate::alarms::json::summary_json(a, x)).collect::<Vec<_>>(),
                }),
                (Err(RecvError::Closed), _) | (_, None) => { alarm_events = None; continue }
            },
            c = changes.recv() => match c {
                Ok(c) => change_json(&s.db, c.id, &c.state, c.seq),
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!("websocket client lagged by {n} changes; resending snapshot");
                    snapshot(&s)
                }
                Err(RecvError::Closed) => return,
            },
            w = writes.recv() => match w {
                Ok(w) => json!({
                    "type": "write",
                    "point": w.point,
                    "priority": w.priority,
                    "value": value_json(w.requested),
                    "old": value_json(w.old),
                    "new": value_json(w.new),
                    "source": w.source.describe(),
                    "result": match &w.result { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
                    "at": w.at.to_rfc3339(),
                }),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            m = sock.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(Message::Text(t))) if t.as_str() == "ping" => json!({"type": "pong"}),
                Some(Ok(Message::Text(t))) if t.as_str() == "snapshot" => snapshot(&s),
                Some(Ok(_)) => continue,
            },
        };
        if send(&mut sock, &msg).await.is_err() {
            return;
        }
    }
}

async fn send(sock: &mut WebSocket, v: &J) -> Result<(), axum::Error> {
    sock.send(Message::Text(v.to_string().into())).await
}

fn num(db: &PointDb, id: &str) -> J {
    db.lookup(id)
        .and_then(|i| db.read(i))
        .and_then(|s| s.value)
        .map(|v| json!(v.as_f64()))
        .unwrap_or(J::Null)
}

fn state_name(db: &PointDb, id: &str) -> J {
    let Some(pid) = db.lookup(id) else {
        return J::Null;
    };
    match (db.read(pid).and_then(|s| s.value), db.def(pid)) {
        (Some(Value::Enum(e)), Some(d)) => json!(d.state_name(e)),
        _ => J::Null,
    }
}

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Records the process start; `main` calls it first thing (and
/// `App::start` again for embedders), only the first call counts.
pub fn mark_start() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// Time since [`mark_start`] (zero if it was never called).
pub fn uptime() -> Duration {
    STARTED.get().map(|t| t.elapsed()).unwrap_or_default()
}

/// The service statistics of seed 004 (`/stats`) plus castpoint's statuses.
fn stats_json(s: &ApiState) -> J {
    let db = &s.db;
    json!({
        "active_streams": num(db, "active_streams"),
        "total_viewers": num(db, "connected_viewers"),
        "total_bitrate_gbps": num(db, "total_bitrate_out"),
        // From the process clock, not the `uptime` point: that point is
        // sampled hourly (in hours), so it read 0 for the first hour.
        "uptime_seconds": uptime().as_secs(),
        "cpu_percent": num(db, "cpu_usage"),
        "memory_percent": num(db, "memory_usage"),
        "gpu_percent": num(db, "gpu_usage"),
        "network_gbps": num(db, "network_throughput"),
        "dropped_frames": num(db, "dropped_frames"),
        "server_status": state_name(db, "server_status"),
        "stream_status": state_name(db, "stream_status"),
    })
}

pub async fn stats(State(s): State<ApiState>) -> impl IntoResponse {
    Json(stats_json(&s))
}

pub async fn ws_dashboard(ws: WebSocketUpgrade, State(s): State<ApiState>) -> impl IntoResponse {
    ws.on_upgrade(move |sock| dashboard(sock, s))
}

/// `{"type": "stats", "data": {...}}` every second and on request
/// (`status`); `ping` answers `pong` (seed 004's keepalive).
async fn dashboard(mut sock: WebSocket, s: ApiState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            _ = tick.tick() => json!({"type": "stats", "data": stats_json(&s)}),
            m = sock.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(Message::Text(t))) if t.as_str() == "ping" => json!({"type": "pong"}),
                Some(Ok(Message::Text(t))) if t.as_str() == "status" => {
                    json!({"type": "stats", "data": stats_json(&s)})
                }
                Some(Ok(_)) => continue,
            },
        };
        if send(&mut sock, &msg).await.is_err() {
            return;
        }
    }
}

/// Points whose changes are events of a stream.
const STREAM_POINTS: &[&str] = &[
    "stream_status",
    "input_status",
    "stream_enable",
    "input_select",
    "recording_enable",
    "active_streams",
    "connected_viewers",
    "dropped_frames",
];

pub async fn ws_events(
    ws: WebSocketUpgrade,
    Path(stream): Path<String>,
    State(s): State<ApiState>,
) -> axum::response::Response {
    // Only routes that exist (running or not) have events; the seed's
    // stream points describe the primary route alone.
    let (known, primary) = match &s.engine {
        Some(e) => {
            let d = e.desired().await;
            (d.routes.iter().any(|r| r.name == stream), d.primary)
        }
        None => (false, None),
    };
    if !known {
        return super::ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("no route {stream:?}"),
        )
        .into_response();
    }
    let is_primary = primary.as_deref() == Some(stream.as_str());
    ws.on_upgrade(move |sock| stream_events(sock, s, stream, is_primary))
        .into_response()
}

/// The status message of one route: the seed's points for the primary
/// route, the router's own counters for the others.
fn stream_status(s: &ApiState, stream: &str, is_primary: bool) -> J {
    if is_primary {
        return json!({
            "type": "status",
            "stream": stream,
            "stream_status": state_name(&s.db, "stream_status"),
            "input_status": state_name(&s.db, "input_status"),
            "viewers": num(&s.db, "connected_viewers"),
        });
    }
    let route = s.engine.as_ref().and_then(|e| {
        e.snapshot()
            .route(stream)
            .map(|r| super::routes::redact(&serde_json::to_value(r).unwrap_or(J::Null)))
    });
    json!({
        "type": "status",
        "stream": stream,
        "running": route.is_some(),
        "route": route,
    })
}

/// Events of one route: its status on connect and on `status`, then its
/// router events (failover, outputs, restarts) and, for the primary route,
/// every change of a stream point. Other routes' events never appear.
async fn stream_events(mut sock: WebSocket, s: ApiState, stream: String, is_primary: bool) {
    let ids: Vec<PointId> = if is_primary {
        STREAM_POINTS
            .iter()
            .filter_map(|p| s.db.lookup(p))
            .collect()
    } else {
        Vec::new()
    };
    let mut changes = s.db.subscribe();
    let mut events = s.engine.as_ref().map(|e| e.subscribe());
    if send(&mut sock, &stream_status(&s, &stream, is_primary))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let msg = tokio::select! {
            c = changes.recv() => match c {
                Ok(c) if ids.contains(&c.id) => {
                    let mut j = change_json(&s.db, c.id, &c.state, c.seq);
                    j["stream"] = json!(stream);
                    j
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => stream_status(&s, &stream, is_primary),
                Err(RecvError::Closed) => return,
            },
            ev = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match ev {
                Ok(ev) if ev.route == stream || ev.route == "*" => {
                    let mut j = super::routes::redact(&serde_json::to_value(&ev).unwrap_or(J::Null));
                    j["type"] = json!("event");
                    j["stream"] = json!(stream);
                    j
                }
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => { events = None; continue }
            },
            m = sock.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(Message::Text(t))) if t.as_str() == "ping" => json!({"type": "pong"}),
                Some(Ok(Message::Text(t))) if t.as_str() == "status" => {
                    stream_status(&s, &stream, is_primary)
                }
                Some(Ok(_)) => continue,
            },
        };
        if send(&mut sock, &msg).await.is_err() {
            return;
        }
    }
}

/// Prometheus text exposition: every point as `castpoint_point_value` and
/// `castpoint_point_quality`, enums also as a state-set gauge.
pub async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let mut out = String::with_capacity(8192);
    // The Prometheus "info" idiom: a constant 1 whose labels say which
    // build answers, so a dashboard can show (and alert on) mixed versions.
    let _ = writeln!(
        out,
        "# HELP castpoint_build_info Version and git commit of the running binary.\n# TYPE castpoint_build_info gauge\ncastpoint_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::GIT_COMMIT
    );
    // The server's points, then every present route block's: those carry
    // `route` (and `slot`) labels, output points an `output` label too.
    if let Some(a) = &s.alarms {
        super::metrics::alarms(&mut out, a);
    }
    let ids = s.db.served_ids();
    let labels: Vec<String> = ids.iter().map(|&id| route_labels(&s.db, id)).collect();
    out.push_str("# HELP castpoint_point_value Current value of a point (bool 0/1, enum ordinal 1..N).\n# TYPE castpoint_point_value gauge\n");
    for (k, &id) in ids.iter().enumerate() {
        let (Some(d), Some(st)) = (s.db.def(id), s.db.read(id)) else {
            continue;
        };
        if let Some(v) = st.value {
            let _ = writeln!(
                out,
                "castpoint_point_value{{point=\"{}\",role=\"{}\",unit=\"{}\"{}}} {}",
                d.id,
                d.role.as_str(),
                d.unit.as_deref().unwrap_or(""),
                labels[k],
                v.as_f64()
            );
        }
    }
    out.push_str("# HELP castpoint_point_quality Quality of a point: 0 ok, 1 stale, 2 fault, 3 unavailable, 4 overridden.\n# TYPE castpoint_point_quality gauge\n");
    for (k, &id) in ids.iter().enumerate() {
        if let (Some(d), Some(st)) = (s.db.def(id), s.db.read(id)) {
            let _ = writeln!(
                out,
                "castpoint_point_quality{{point=\"{}\"{}}} {}",
                d.id,
                labels[k],
                st.quality.code()
            );
        }
    }
    out.push_str("# HELP castpoint_point_state Enum points as a state set (1 for the current state).\n# TYPE castpoint_point_state gauge\n");
    for (k, &id) in ids.iter().enumerate() {
        if let (Some(d), Some(st)) = (s.db.def(id), s.db.read(id)) {
            if d.states.is_empty() {
                continue;
            }
            for (i, name) in s.db.state_names(id).iter().enumerate() {
                let on = st.value == Some(Value::Enum((i + 1) as u16));
                let _ = writeln!(
                    out,
                    "castpoint_point_state{{point=\"{}\",state=\"{}\"{}}} {}",
                    d.id,
                    prom_escape(name),
                    labels[k],
                    u8::from(on)
                );
            }
        }
    }
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP castpoint_login_failures_total Failed logins (wrong user name or password) since start.\n# TYPE castpoint_login_failures_total counter\ncastpoint_login_failures_total{{protocol=\"rest\"}} {}\ncastpoint_login_failures_total{{protocol=\"haystack\"}} {}",
        crate::throttle::REST_FAILURES.load(Relaxed),
        crate::throttle::HAYSTACK_FAILURES.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP castpoint_login_throttled_total Login attempts refused unverified while their address or user was backing off.\n# TYPE castpoint_login_throttled_total counter\ncastpoint_login_throttled_total {}",
        crate::throttle::THROTTLED.load(Relaxed),
    );
    // Connection caps of the TCP listeners (src/netlimit.rs).
    out.push_str(&crate::netlimit::prometheus());
    // The router per route/input/output/SRT connection, and the process.
    if let Some(e) = &s.engine {
        super::metrics::engine(&mut out, &e.snapshot());
    }
    super::metrics::process(&mut out);
    // Requests, errors and sessions of every protocol server.
    out.push_str(&crate::counters::prometheus());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn prom_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `,route="cam",slot="3"[,output="web"]` for a route point, "" otherwise.
fn route_labels(db: &crate::points::PointDb, id: crate::points::PointId) -> String {
    let Some(rp) = db.route_point(id) else {
        return String::new();
    };
    let info = db.block(rp.slot);
    let route = info.as_ref().map_or("", |i| i.route.as_str());
    let mut l = format!(",route=\"{}\",slot=\"{}\"", prom_escape(route), rp.slot);
    if let Some(n) = rp.output {
        let name = info
            .as_ref()
            .and_then(|i| i.outputs.get(usize::from(n) - 1))
            .map_or(String::new(), |o| prom_escape(o));
        let _ = write!(l, ",output=\"{name}\",output_number=\"{n}\"");
    }
    l
}
