//! The point bridge: drives the engine from the resolved values of the command points (Stream Enable, Input Select, Recording Enable, System Restart) and publishes engine-derived measurements and statuses; the engine itself never sees points or protocols.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::stats::{EngineSnapshot, RouteSnapshot};
use super::Engine;
use crate::points::routes::{RouteDesc, SlotKeeper};
use crate::points::{PointDb, PointId, PointState, Quality, Source, Value, DEFAULT_LEVEL};
use crate::telemetry::status::{
    route_block_status, route_status, RouteSignal, RouteStatus, STARTUP_GRACE,
};

/// Point ids the bridge uses (absent ones are skipped: a custom point list
/// may leave some out).
pub struct Ids {
    stream_enable: Option<PointId>,
    input_select: Option<PointId>,
    recording_enable: Option<PointId>,
    system_restart: Option<PointId>,
    active_streams: Option<PointId>,
    connected_viewers: Option<PointId>,
    total_bitrate_out: Option<PointId>,
    dropped_frames: Option<PointId>,
    encoding_latency: Option<PointId>,
    stream_status: Option<PointId>,
    input_status: Option<PointId>,
    transcode_enable: Option<PointId>,
    output_profile: Option<PointId>,
    encoder_status: Option<PointId>,
    cdn_status: Option<PointId>,
}

impl Ids {
    fn new(db: &PointDb) -> Self {
        Ids {
            stream_enable: db.lookup("stream_enable"),
            input_select: db.lookup("input_select"),
            recording_enable: db.lookup("recording_enable"),
            system_restart: db.lookup("system_restart"),
            active_streams: db.lookup("active_streams"),
            connected_viewers: db.lookup("connected_viewers"),
            total_bitrate_out: db.lookup("total_bitrate_out"),
            dropped_frames: db.lookup("dropped_frames"),
            encoding_latency: db.lookup("encoding_latency"),
            stream_status: db.lookup("stream_status"),
            input_status: db.lookup("input_status"),
            transcode_enable: db.lookup("transcode_enable"),
            output_profile: db.lookup("output_profile"),
            encoder_status: db.lookup("encoder_status"),
            cdn_status: db.lookup("cdn_status"),
        }
    }
}

/// Waits for a change of an optional watch; never resolves for a missing
/// point or a closed channel.
async fn changed(rx: &mut Option<watch::Receiver<PointState>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// The one rule for every command point: its value counts only when
/// something was written — at a priority above the relinquish default, or
/// a relinquish default changed from the point file's. A command point
/// with nothing written leaves the route as configured (None).
fn commanded(db: &PointDb, id: Option<PointId>) -> Option<Value> {
    let id = id?;
    let st = db.read(id)?;
    let v = st.value?;
    let default = db.def(id).and_then(|d| d.relinquish_default);
    let written = st.level.is_some_and(|l| l < DEFAULT_LEVEL) || default != Some(v);
    written.then_some(v)
}

/// Runs until `cancel`: applies command points (level-triggered: the
/// current values are applied at start) and publishes measurements every
/// second.
pub async fn run(
    engine: Engine,
    db: PointDb,
    cancel: CancellationToken,
    publish_points: bool,
    mut keeper: SlotKeeper,
) {
    let ids = Ids::new(&db);
    let mut routes = RouteCmds::default();
    let mut changes = db.subscribe();
    let w = |id: Option<PointId>| id.and_then(|i| db.watch(i));
    let mut stream_enable = w(ids.stream_enable);
    let mut input_select = w(ids.input_select);
    let mut recording = w(ids.recording_enable);
    let mut restart = w(ids.system_restart);
    let mut transcode = w(ids.transcode_enable);
    let mut profile = w(ids.output_profile);
    if let (true, Some(id)) = (publish_points, ids.encoding_latency) {
        let _ = db.set(
            id,
            None,
            Quality::Unavailable,
            Some("not applicable in passthrough"),
        );
    }
    sync_blocks(&engine, &db, &mut keeper).await;
    apply_stream_enable(&engine, &db, &ids).await;
    apply_input_select(&engine, &db, &ids).await;
    apply_recording(&engine, &db, &ids).await;
    apply_restart(&engine, &db, ids.system_restart).await;
    apply_transcode(&engine, &db, &ids).await;
    routes.apply(&engine, &db, &ids).await;
    let mut signals = Signals::default();
    if publish_points {
        let snap = engine.snapshot();
        signals.observe(&snap, Instant::now());
        publish(&db, &ids, &snap, &mut signals);
        publish_routes(&db, &snap, &mut signals);
    }
    // Input counters are looked at four times a second (so a lost signal
    // is seen within signal_timeout + 250 ms); points are published once a
    // second. On the process's 250-ms grid, where the telemetry sampler's
    // once-a-second jobs expire in the same timer turn.
    let quarter = Duration::from_millis(250);
    let start = crate::tasks::on_grid(Instant::now(), quarter);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(start), quarter);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed(&mut stream_enable) => apply_stream_enable(&engine, &db, &ids).await,
            _ = changed(&mut input_select) => apply_input_select(&engine, &db, &ids).await,
            _ = changed(&mut recording) => apply_recording(&engine, &db, &ids).await,
            _ = changed(&mut restart) => apply_restart(&engine, &db, ids.system_restart).await,
            _ = changed(&mut transcode) => apply_transcode(&engine, &db, &ids).await,
            _ = changed(&mut profile) => apply_transcode(&engine, &db, &ids).await,
            c = changes.recv() => {
                // A route command point changed (or changes were lost:
                // look at every route, level-triggered).
                let route_cmd = match &c {
                    Ok(c) => db.route_point(c.id).is_some() && db.def(c.id).is_some_and(|d| d.writable),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if route_cmd {
                    routes.apply(&engine, &db, &ids).await;
                }
            }
            _ = tick.tick() => {
                n += 1;
                if publish_points {
                    // The looks between publications need only the inputs'
                    // counters: a full snapshot (every output's statistics
                    // and names) was a quarter of 500 idle routes' CPU.
                    let snap = match n.is_multiple_of(4) {
                        true => engine.snapshot(),
                        false => engine.snapshot_inputs(),
                    };
                    signals.observe(&snap, Instant::now());
                    if n.is_multiple_of(4) {
                        publish(&db, &ids, &snap, &mut signals);
                        publish_routes(&db, &snap, &mut signals);
                    }
                }
                // Routes created, renamed or deleted (REST, reload) get or
                // lose their block within a second; after the publication,
                // so that waiting on the engine's state never delays it.
                if n.is_multiple_of(4) {
                    sync_blocks(&engine, &db, &mut keeper).await;
                    routes.apply(&engine, &db, &ids).await;
                }
            }
        }
    }
}

async fn apply_stream_enable(engine: &Engine, db: &PointDb, ids: &Ids) {
    let Some(route) = engine.primary().await else {
        return;
    };
    let en = effective(db, ids, &route, true).enable;
    if let Err(e) = engine.set_stream_enabled(&route, en).await {
        tracing::warn!("stream_enable: {e}");
    }
}

async fn apply_input_select(engine: &Engine, db: &PointDb, ids: &Ids) {
    let Some(route) = engine.primary().await else {
        return;
    };
    let sel = effective(db, ids, &route, true).input;
    if let Err(e) = engine.select_input(&route, sel).await {
        tracing::warn!("input_select: {e}");
    }
}

/// Recording Enable: a written value turns the primary route's record
/// outputs on/off; nothing written leaves each as configured.
async fn apply_recording(engine: &Engine, db: &PointDb, ids: &Ids) {
    let Some(route) = engine.primary().await else {
        return;
    };
    let rec = effective(db, ids, &route, true).recording;
    if let Err(e) = engine.set_recording(&route, rec).await {
        tracing::warn!("recording_enable: {e}");
    }
}

/// Transcode Enable and Output Profile drive the primary route. A Transcode
/// Enable still at its relinquish default leaves the route in its
/// configured mode (`mode = "transcode"` stays on); a written value
/// overrides it. Output Profile 0 = the route's own configured profile.
async fn apply_transcode(engine: &Engine, db: &PointDb, ids: &Ids) {
    let Some(route) = engine.primary().await else {
        return;
    };
    let (en, prof) = effective(db, ids, &route, true).transcode;
    if let Err(e) = engine.set_transcode(&route, en, prof).await {
        tracing::warn!("transcode_enable/output_profile: {e}");
    }
}

/// What a route is commanded to do, from its own block's command points
/// and, for the primary route, the server-level ones (docs/route-points.md):
/// the route streams only while both Stream Enable and its Route Enable are
/// on; for Input Select, Recording Enable, Transcode Enable and Output
/// Profile the route's own point wins when something is written to it,
/// else the server's point applies. Nothing written anywhere = as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub enable: bool,
    pub input: Option<usize>,
    pub recording: Option<bool>,
    pub transcode: (Option<bool>, Option<u32>),
}

fn route_cmd(db: &PointDb, slot: Option<u16>, tid: &str) -> Option<Value> {
    commanded(db, db.block_point(slot?, tid, None))
}

/// The command values in force for `route` (see [`Effective`]).
pub fn effective(db: &PointDb, ids: &Ids, route: &str, primary: bool) -> Effective {
    let slot = db.slot_of(route);
    let server = |id: Option<PointId>| if primary { commanded(db, id) } else { None };
    let enable = server(ids.stream_enable).is_none_or(|v| v.as_bool())
        && route_cmd(db, slot, "route_enable").is_none_or(|v| v.as_bool());
    // Route Input Select: 1 = Auto, 1 + N = input N. Server Input Select:
    // 0 = automatic, N = input N.
    let input = match route_cmd(db, slot, "input_select") {
        Some(v) => {
            let n = v.as_f64();
            (n >= 2.0).then(|| n as usize - 2)
        }
        None => server(ids.input_select)
            .map(|v| v.as_f64())
            .filter(|n| *n >= 1.0)
            .map(|n| n as usize - 1),
    };
    let recording = route_cmd(db, slot, "recording_enable")
        .or_else(|| server(ids.recording_enable))
        .map(|v| v.as_bool());
    let en = route_cmd(db, slot, "transcode_enable")
        .or_else(|| server(ids.transcode_enable))
        .map(|v| v.as_bool());
    let profile_of = |id: Option<PointId>| {
        id.and_then(|id| db.read(id)?.value)
            .map(|v| v.as_f64())
            .filter(|n| *n >= 1.0)
            .map(|n| n as u32)
    };
    let prof =
        profile_of(slot.and_then(|s| db.block_point(s, "output_profile", None))).or_else(|| {
            if primary {
                profile_of(ids.output_profile)
            } else {
                None
            }
        });
    Effective {
        enable,
        input,
        recording,
        transcode: (en, prof),
    }
}

/// What the bridge last applied to each route from the route points, so
/// that a tick applies only what changed.
#[derive(Default)]
struct RouteCmds {
    applied: HashMap<String, Effective>,
    /// Configured `enabled` of outputs whose Output Enable was written:
    /// what a relinquish puts back.
    configured: HashMap<(String, String), bool>,
}

impl RouteCmds {
    async fn apply(&mut self, engine: &Engine, db: &PointDb, ids: &Ids) {
        if db.route_template().is_none() {
            return;
        }
        let spec = engine.desired().await;
        self.applied
            .retain(|n, _| spec.routes.iter().any(|r| &r.name == n));
        for r in &spec.routes {
            let primary = spec.primary.as_deref() == Some(r.name.as_str());
            let want = effective(db, ids, &r.name, primary);
            // A route seen for the first time is as configured (nothing
            // to undo): only what differs from that is applied, so start-up
            // and new routes are not disturbed by no-op commands.
            let had = Some(self.applied.get(&r.name).cloned().unwrap_or(Effective {
                enable: true,
                input: None,
                recording: None,
                transcode: (None, None),
            }));
            if had.as_ref().map(|h| h.enable) != Some(want.enable) {
                if let Err(e) = engine.set_stream_enabled(&r.name, want.enable).await {
                    tracing::warn!("route {}: route_enable: {e}", r.name);
                }
            }
            if had.as_ref().map(|h| h.input) != Some(want.input) {
                if let Err(e) = engine.select_input(&r.name, want.input).await {
                    tracing::warn!("route {}: input_select: {e}", r.name);
                }
            }
            if had.as_ref().map(|h| h.recording) != Some(want.recording) {
                if let Err(e) = engine.set_recording(&r.name, want.recording).await {
                    tracing::warn!("route {}: recording_enable: {e}", r.name);
                }
            }
            if had.as_ref().map(|h| h.transcode) != Some(want.transcode) {
                let (en, prof) = want.transcode;
                if let Err(e) = engine.set_transcode(&r.name, en, prof).await {
                    tracing::warn!("route {}: transcode_enable/output_profile: {e}", r.name);
                }
            }
            self.applied.insert(r.name.clone(), want);
            // Output Enable: compared with the desired state itself, so a
            // route replaced through the API is brought back in line.
            let Some(slot) = db.slot_of(&r.name) else {
                continue;
            };
            for (k, o) in r.outputs.iter().enumerate() {
                let Ok(n) = u16::try_from(k + 1) else { break };
                let Some(pid) = db.block_point(slot, "output_enable", Some(n)) else {
                    continue;
                };
                let key = (r.name.clone(), o.name.clone());
                let want = match commanded(db, Some(pid)) {
                    Some(v) => {
                        self.configured.entry(key).or_insert(o.enabled);
                        v.as_bool()
                    }
                    None => match self.configured.remove(&key) {
                        Some(c) => c,
                        None => continue,
                    },
                };
                if o.enabled != want {
                    if let Err(e) = engine.set_output_enabled(&r.name, &o.name, want).await {
                        tracing::warn!("route {}: output_enable {}: {e}", r.name, o.name);
                    }
                }
            }
        }
    }
}

/// The route descriptions slot assignment works from.
pub fn route_descs(spec: &super::spec::EngineSpec) -> Vec<RouteDesc> {
    spec.routes
        .iter()
        .map(|r| RouteDesc {
            name: r.name.clone(),
            pinned: r.slot,
            inputs: r.inputs.iter().map(|i| i.name.clone()).collect(),
            outputs: r.outputs.iter().map(|o| o.name.clone()).collect(),
        })
        .collect()
}

/// Gives every desired route its block (and frees those of routes gone).
pub async fn sync_blocks(engine: &Engine, db: &PointDb, keeper: &mut SlotKeeper) {
    if db.route_template().is_none() {
        return;
    }
    let spec = engine.desired().await;
    keeper.sync(db, &route_descs(&spec));
}

/// System Restart is a trigger: when it resolves to true the router is
/// rebuilt from the desired state, then the requesting slot is relinquished
/// so the point reads false again.
async fn apply_restart(engine: &Engine, db: &PointDb, id: Option<PointId>) {
    let Some(id) = id else { return };
    let Some(st) = db.read(id) else { return };
    if st.value != Some(Value::Bool(true)) {
        return;
    }
    tracing::info!("system_restart: rebuilding the router");
    engine.restart().await;
    let level = st.level.unwrap_or(DEFAULT_LEVEL);
    let r = if level >= DEFAULT_LEVEL {
        // Someone made "true" the relinquish default: put it back.
        db.write(
            id,
            Some(Value::Bool(false)),
            DEFAULT_LEVEL,
            &Source::internal(),
        )
    } else {
        db.write(id, None, level, &Source::internal())
    };
    if let Err(e) = r {
        tracing::warn!("system_restart: cannot relinquish level {level}: {e}");
    }
}

/// What the bridge has seen of each running route: when it appeared (its
/// start), whether it has had a signal since, and per input when its byte
/// counter last grew. Liveness is judged from the input counters the data
/// plane already keeps, so the route task pays nothing for it.
#[derive(Debug, Default)]
pub struct Signals {
    routes: HashMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    since: Instant,
    had_signal: bool,
    /// (input name, bytes at the last look, when they last grew).
    inputs: Vec<(String, u64, Option<Instant>)>,
}

impl Signals {
    /// Takes one look at the counters at `now`.
    pub fn observe(&mut self, s: &EngineSnapshot, now: Instant) {
        self.routes.retain(|n, _| s.route(n).is_some());
        for r in &s.routes {
            // A counter that went backwards belongs to a rebuilt route
            // (System Restart, route replaced): it starts over.
            let restarted = self.routes.get(&r.name).is_some_and(|seen| {
                r.inputs.iter().any(|i| {
                    seen.inputs
                        .iter()
                        .any(|(n, b, _)| *n == i.name && i.bytes < *b)
                })
            });
            let seen = match self.routes.get_mut(&r.name) {
                Some(seen) if !restarted => seen,
                _ => {
                    self.routes.insert(
                        r.name.clone(),
                        Seen {
                            since: now,
                            had_signal: false,
                            inputs: Vec::new(),
                        },
                    );
                    match self.routes.get_mut(&r.name) {
                        Some(seen) => seen,
                        None => continue,
                    }
                }
            };
            let mut forwarded = false;
            let inputs = r
                .inputs
                .iter()
                .enumerate()
                .map(|(k, i)| {
                    let grew = match seen.inputs.iter().find(|(n, _, _)| *n == i.name) {
                        Some((_, b, _)) => i.bytes > *b,
                        // First look (or an input added at run time):
                        // bytes already counted arrived just now.
                        None => i.bytes > 0,
                    };
                    let last = if grew {
                        Some(now)
                    } else {
                        seen.inputs
                            .iter()
                            .find(|(n, _, _)| *n == i.name)
                            .and_then(|(_, _, l)| *l)
                    };
                    forwarded |= grew && r.active_input == Some(k);
                    (i.name.clone(), i.bytes, last)
                })
                .collect();
            seen.inputs = inputs;
            // Counted here, at every look, so that even a short burst
            // between two publications ends the start-up grace.
            if forwarded {
                seen.had_signal = true;
            }
        }
    }

    /// The inputs of [`route_status`] for route `r` at `now`; records that
    /// the route has had a signal.
    pub fn signal(&mut self, r: &RouteSnapshot, timeout: Duration, now: Instant) -> RouteSignal {
        let (uptime, data_age, had) = match self.routes.get_mut(&r.name) {
            Some(seen) => {
                // The forwarded input: the active one, which is the forced
                // one while Input Select forces an input (even a silent one).
                let age = r
                    .active_input
                    .and_then(|a| r.inputs.get(a))
                    .and_then(|i| seen.inputs.iter().find(|(n, _, _)| *n == i.name))
                    .and_then(|(_, _, last)| *last)
                    .map(|t| now.saturating_duration_since(t));
                if age.is_some_and(|a| a <= timeout) {
                    seen.had_signal = true;
                }
                (
                    now.saturating_duration_since(seen.since),
                    age,
                    seen.had_signal,
                )
            }
            None => (Duration::ZERO, None, false),
        };
        RouteSignal {
            stream_enabled: r.stream_enabled,
            data_age,
            signal_timeout: timeout,
            uptime,
            had_signal: had,
            inputs_failed: !r.inputs.is_empty()
                && r.inputs.iter().all(|i| i.error.is_some() && !i.up),
        }
    }
}

/// Engine-wide figures the measurement points carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub active_streams: f64,
    pub viewers: f64,
    pub bitrate_out_gbps: f64,
    pub dropped_frames: f64,
    /// Stream Status and Input Status of the primary route.
    pub primary: Option<RouteStatus>,
}

/// Derives the measurements from one snapshot; each route's signal is
/// judged by the `signal_timeout` it runs with (its snapshot's settings).
pub fn derive(s: &EngineSnapshot, signals: &mut Signals, now: Instant) -> Derived {
    let mut d = Derived {
        active_streams: 0.0,
        viewers: 0.0,
        bitrate_out_gbps: 0.0,
        dropped_frames: 0.0,
        primary: None,
    };
    for r in &s.routes {
        let st = route_status(&signals.signal(r, r.settings.signal_timeout, now));
        // Only routes that are LIVE (media arriving, streaming on) count.
        if st.live {
            d.active_streams += 1.0;
        }
        d.dropped_frames += r.input_frames_lost as f64;
        // Frames ffmpeg dropped while transcoding count too.
        if let Some(t) = &r.transcode {
            d.dropped_frames += t.ffmpeg.drop_frames as f64;
        }
        for o in &r.outputs {
            d.dropped_frames += o.frames_lost as f64;
            if o.kind == "http" || o.kind == "srt-listener" {
                d.viewers += o.clients as f64;
            }
            if o.kind != "record" {
                d.bitrate_out_gbps += o.bitrate_bps as f64 / 1e9;
            }
        }
        if s.primary.as_deref() == Some(r.name.as_str()) {
            d.primary = Some(st);
        }
    }
    d
}

/// A status point's (ordinal, reason), or why it is unavailable.
pub type StatusValue = Result<(u16, Option<String>), String>;

/// (ordinal, reason) of Encoder Status and the Encoding Latency of the
/// primary route; `Err(reason)` where there is nothing to report.
pub fn encoder(s: &EngineSnapshot) -> (StatusValue, Result<f64, String>) {
    let Some(r) = s.primary.as_deref().and_then(|p| s.route(p)) else {
        let why = "primary route not running".to_string();
        return (Err(why.clone()), Err(why));
    };
    let Some(t) = &r.transcode else {
        let why = "passthrough: no encoder running".to_string();
        return (Err(why.clone()), Err(why));
    };
    let status = match t.status {
        "overload" => (2, t.reason.clone()),
        "fault" => (3, t.reason.clone()),
        "starting" => (1, Some("transcoder starting".into())),
        _ => (1, None),
    };
    let latency = match t.ffmpeg.latency_ms {
        Some(ms) => Ok(ms),
        None if t.status == "fault" => Err(format!(
            "transcoder fault: {}",
            t.reason.clone().unwrap_or_default()
        )),
        None => Err("transcoder running: no input frame matched at its output yet".into()),
    };
    (Ok(status), latency)
}

/// CDN Status: CONNECTED (1) when every enabled RTMP output is connected,
/// else DISCONNECTED (2) naming the failing ones; Err when there are none.
pub fn cdn(s: &EngineSnapshot) -> StatusValue {
    let mut n = 0;
    let mut bad = Vec::new();
    for r in &s.routes {
        for o in r.outputs.iter().filter(|o| o.kind == "rtmp" && o.enabled) {
            n += 1;
            if !o.up {
                bad.push(format!(
                    "{}/{}: {}",
                    r.name,
                    o.name,
                    o.error.as_deref().unwrap_or("disconnected")
                ));
            }
        }
    }
    match (n, bad.is_empty()) {
        (0, _) => Err("no RTMP outputs".into()),
        (_, true) => Ok((1, None)),
        (_, false) => Ok((2, Some(bad.join("; ")))),
    }
}

fn publish(db: &PointDb, ids: &Ids, s: &EngineSnapshot, signals: &mut Signals) {
    let status = |id: Option<PointId>, r: StatusValue| {
        let Some(id) = id else { return };
        let _ = match r {
            Ok((v, why)) => db.set(id, Some(Value::Enum(v)), Quality::Ok, why.as_deref()),
            Err(why) => db.set(id, None, Quality::Unavailable, Some(&why)),
        };
    };
    let (enc, lat) = encoder(s);
    status(ids.encoder_status, enc);
    status(ids.cdn_status, cdn(s));
    if let Some(id) = ids.encoding_latency {
        let _ = match lat {
            Ok(ms) => db.set(id, Some(Value::Number(ms)), Quality::Ok, None),
            Err(why) => db.set(id, None, Quality::Unavailable, Some(&why)),
        };
    }
    let now = Instant::now();
    let d = derive(s, signals, now);
    let set = |id: Option<PointId>, v: Value| {
        if let Some(id) = id {
            let _ = db.set(id, Some(v), Quality::Ok, None);
        }
    };
    set(ids.active_streams, Value::Number(d.active_streams));
    set(ids.connected_viewers, Value::Number(d.viewers));
    set(
        ids.total_bitrate_out,
        Value::Number((d.bitrate_out_gbps * 1e6).round() / 1e6),
    );
    set(ids.dropped_frames, Value::Number(d.dropped_frames));
    match d.primary {
        Some(st) => {
            match st.stream {
                Some(v) => set(ids.stream_status, Value::Enum(v)),
                None => {
                    if let Some(id) = ids.stream_status {
                        let why = format!(
                            "route starting: no signal yet (start-up grace {} s)",
                            STARTUP_GRACE.as_secs()
                        );
                        let _ = db.set(id, None, Quality::Unavailable, Some(&why));
                    }
                }
            }
            set(ids.input_status, Value::Enum(st.input));
        }
        None => {
            // No primary route running (none configured, or disabled).
            let why = match &s.primary {
                Some(p) => format!("primary route {p:?} is not running"),
                None => "no route configured".to_string(),
            };
            for id in [ids.stream_status, ids.input_status].into_iter().flatten() {
                let _ = db.set(id, None, Quality::Unavailable, Some(&why));
            }
        }
    }
}

/// Publishes every present route block: its statuses and measurements from
/// the route's snapshot (docs/route-points.md says how each is derived).
fn publish_routes(db: &PointDb, s: &EngineSnapshot, signals: &mut Signals) {
    let now = Instant::now();
    for (slot, info) in db.blocks() {
        let b = Block { db, slot };
        let Some(r) = s.route(&info.route) else {
            b.publish_stopped(&info.route);
            continue;
        };
        let sig = signals.signal(r, r.settings.signal_timeout, now);
        let st = route_status(&sig);
        match route_block_status(&sig) {
            Some(v) => b.set("route_status", Some(Value::Enum(v)), None),
            None => b.set(
                "route_status",
                None,
                Some(&format!(
                    "route starting: no signal yet (start-up grace {} s)",
                    STARTUP_GRACE.as_secs()
                )),
            ),
        }
        b.set("input_status", Some(Value::Enum(st.input)), None);
        let max_inputs = db.route_template().map_or(0, |t| usize::from(t.max_inputs));
        match r.active_input {
            Some(a) if a < max_inputs => {
                b.set("active_input", Some(Value::Enum(a as u16 + 1)), None)
            }
            Some(_) => b.set(
                "active_input",
                None,
                Some("input beyond [route_points] max_inputs"),
            ),
            None => b.set("active_input", None, Some("no input active")),
        }
        b.publish_counters(r);
        b.set(
            "route_uptime",
            Some(Value::Number(sig.uptime.as_secs() as f64)),
            None,
        );
        b.publish_outputs(&info.outputs, r);
    }
}

/// One route block's points, as the bridge writes them.
struct Block<'a> {
    db: &'a PointDb,
    slot: u16,
}

impl Block<'_> {
    /// Sets template point `tid` (not per output): a value, or unavailable
    /// with the reason.
    fn set(&self, tid: &str, v: Option<Value>, why: Option<&str>) {
        if let Some(id) = self.db.block_point(self.slot, tid, None) {
            let _ = match v {
                Some(v) => self.db.set(id, Some(v), Quality::Ok, None),
                None => self.db.set(id, None, Quality::Unavailable, why),
            };
        }
    }

    /// How many per-output points the block has.
    fn max_outputs(&self) -> u16 {
        self.db.route_template().map_or(0, |t| t.max_outputs)
    }

    /// A route configured disabled (or not started yet): STOPPED, and no
    /// counters to report.
    fn publish_stopped(&self, route: &str) {
        let why = format!("route {route} is not running");
        self.set("route_status", Some(Value::Enum(3)), None);
        for tid in [
            "input_status",
            "active_input",
            "input_bitrate",
            "output_bitrate",
            "viewers",
            "dropped_frames",
            "continuity_errors",
            "failover_count",
            "route_uptime",
        ] {
            self.set(tid, None, Some(&why));
        }
        for n in 1..=self.max_outputs() {
            if let Some(id) = self.db.block_point(self.slot, "output_status", Some(n)) {
                let _ = self.db.set(id, None, Quality::Unavailable, Some(&why));
            }
        }
    }

    /// The running route's rates and counters.
    fn publish_counters(&self, r: &RouteSnapshot) {
        let mbps = |bps: u64| Value::Number((bps as f64 / 1e6 * 1e4).round() / 1e4);
        let in_bps = r
            .active_input
            .and_then(|a| r.inputs.get(a))
            .map_or(0, |i| i.bitrate_bps);
        self.set("input_bitrate", Some(mbps(in_bps)), None);
        let out_bps: u64 = r
            .outputs
            .iter()
            .filter(|o| o.kind != "record")
            .map(|o| o.bitrate_bps)
            .sum();
        self.set("output_bitrate", Some(mbps(out_bps)), None);
        let viewers: u64 = r
            .outputs
            .iter()
            .filter(|o| o.kind == "http" || o.kind == "srt-listener")
            .map(|o| o.clients)
            .sum();
        self.set("viewers", Some(Value::Number(viewers as f64)), None);
        let mut dropped =
            r.input_frames_lost + r.outputs.iter().map(|o| o.frames_lost).sum::<u64>();
        if let Some(t) = &r.transcode {
            dropped += t.ffmpeg.drop_frames;
        }
        self.set("dropped_frames", Some(Value::Number(dropped as f64)), None);
        let cc: u64 = r.inputs.iter().map(|i| i.cc_errors).sum();
        self.set("continuity_errors", Some(Value::Number(cc as f64)), None);
        self.set(
            "failover_count",
            Some(Value::Number(r.switches as f64)),
            None,
        );
    }

    /// Output Status of each output slot: the block's n-th output name
    /// (`names`) as the running route reports it.
    fn publish_outputs(&self, names: &[String], r: &RouteSnapshot) {
        for n in 1..=self.max_outputs() {
            let Some(id) = self.db.block_point(self.slot, "output_status", Some(n)) else {
                continue;
            };
            let o = names
                .get(usize::from(n) - 1)
                .and_then(|name| r.outputs.iter().find(|o| &o.name == name));
            let _ = match o {
                None => self
                    .db
                    .set(id, None, Quality::Unavailable, Some("no such output")),
                Some(o) if !o.enabled => self.db.set(id, Some(Value::Enum(2)), Quality::Ok, None),
                Some(o) if o.error.is_some() || !o.up => self.db.set(
                    id,
                    Some(Value::Enum(3)),
                    Quality::Ok,
                    o.error.as_deref().or(Some("not up")),
                ),
                Some(_) => self.db.set(id, Some(Value::Enum(1)), Quality::Ok, None),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spec::{EngineSpec, InputSpec, RouteSpec};

    /// Each route's signal is judged by its own `signal_timeout`, which the
    /// bridge reads from the route's snapshot: two routes fed once, looked
    /// at (on a synthetic clock) 2 s later, one with 200 ms and one with
    /// 60 s. The default (1 s) for both would make neither live.
    #[tokio::test]
    async fn each_route_is_judged_by_its_own_signal_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = CancellationToken::new();
        let e = Engine::new(dir.path().to_path_buf(), &token);
        let route = |name: &str, timeout_ms: u64| {
            let mut r = RouteSpec::new(name);
            r.signal_timeout = Duration::from_millis(timeout_ms);
            r.inputs.push(InputSpec::udp_loopback("in"));
            r
        };
        e.apply(EngineSpec {
            routes: vec![route("short", 200), route("long", 60_000)],
            primary: None,
        })
        .await;
        // Seven null TS packets to each input, until both have counted
        // them and made their input active.
        let mut pkt = [0xffu8; 188];
        pkt[..4].copy_from_slice(&[0x47, 0x1f, 0xff, 0x10]);
        let dgram = pkt.repeat(7);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let deadline = Instant::now() + Duration::from_secs(10);
        let snap = loop {
            let s = e.snapshot();
            let fed = |r: &RouteSnapshot| r.active_input == Some(0) && r.inputs[0].bytes > 0;
            if s.routes.len() == 2 && s.routes.iter().all(fed) {
                break s;
            }
            for r in &s.routes {
                if let Some(a) = r.inputs.first().and_then(|i| i.local) {
                    tx.send_to(&dgram, a).expect("send");
                }
            }
            assert!(Instant::now() < deadline, "inputs never fed: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut signals = Signals::default();
        let t0 = Instant::now();
        signals.observe(&snap, t0);
        let later = t0 + Duration::from_secs(2);
        let d = derive(&snap, &mut signals, later);
        assert_eq!(d.active_streams, 1.0, "only the 60-s route is live");
        let long = snap.route("long").expect("long");
        let short = snap.route("short").expect("short");
        let live = |r: &RouteSnapshot, s: &mut Signals| {
            route_status(&s.signal(r, r.settings.signal_timeout, later)).live
        };
        assert!(live(long, &mut signals) && !live(short, &mut signals));
        token.cancel();
        e.stop().await;
    }
}
