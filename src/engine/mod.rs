//! The streaming router: routes of ordered inputs (primary + backups) fanned out to any number of outputs, with failover, hot output management and per-I/O stats.
//!
//! Shape: one task per route owns the input choice, the continuity-counter
//! rewriter and the list of output queues; every input and every output is
//! its own task (SRT ones on blocking threads, since libsrt calls block).
//! The input is read once and each chunk of whole TS packets is a
//! `bytes::Bytes` shared by all outputs; each output has a bounded queue and
//! a full queue drops the chunk for that output only (counted).
//!
//! The [`Engine`] handle is the only way in: the config start-up, the point
//! bridge (`bridge.rs`) and the operator API call the same methods. The
//! engine never knows which protocol asked.

pub mod bridge;
pub mod coalesce;
mod hls;
pub(crate) mod input;
pub mod join;
mod output;
mod record;
mod route;
pub mod spec;
pub mod srt;
pub mod stats;
pub mod ts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::media::ffmpeg::Media;
use route::{OutputSlot, RouteCmd, RouteShared, RouteTask, TranscodeReq};
use spec::{
    EngineSpec, InputKind, InputSpec, Mode, OutputKind, OutputSource, OutputSpec, ProfileRef,
    RouteSpec, SrtMode,
};
use stats::{EngineSnapshot, IoStats};

/// Something that happened in the router (input switch, output added...).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineEvent {
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    pub route: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl EngineEvent {
    pub fn new(route: &str, kind: EventKind) -> Self {
        EngineEvent {
            at: Utc::now(),
            route: route.to_string(),
            kind,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RouteStarted,
    RouteStopped,
    InputSwitched {
        from: Option<usize>,
        to: Option<usize>,
        reason: String,
    },
    OutputAdded {
        output: String,
    },
    OutputRemoved {
        output: String,
    },
    OutputEnabled {
        output: String,
        enabled: bool,
    },
    OutputMoved {
        output: String,
        to: String,
    },
    /// An SRT caller refused by a listener (wrong passphrase, streamid).
    CallerRejected {
        output: String,
        reason: String,
    },
    /// An output stopped working (a recording on a full disk): the error
    /// is also in the output's stats until it recovers.
    OutputFailed {
        output: String,
        error: String,
    },
    /// A failed output works again.
    OutputRecovered {
        output: String,
    },
    /// A caller refused by a listener *input* (a second publisher while
    /// one is connected, a failed handshake: wrong passphrase, a wrong
    /// key length, a refused streamid).
    InputRejected {
        input: String,
        reason: String,
    },
    Restarted,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Event fan-out plus a bounded history for late readers.
#[derive(Clone)]
pub(crate) struct Events {
    tx: broadcast::Sender<EngineEvent>,
    recent: Arc<Mutex<std::collections::VecDeque<EngineEvent>>>,
}

const EVENT_HISTORY: usize = 1000;

impl Events {
    fn new() -> Self {
        Events {
            tx: broadcast::channel(1024).0,
            recent: Arc::new(Mutex::new(std::collections::VecDeque::new())),
        }
    }

    pub fn emit(&self, e: EngineEvent) {
        {
            let mut r = self.recent.lock();
            if r.len() >= EVENT_HISTORY {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        let _ = self.tx.send(e);
    }
}

/// Why an engine operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    #[error("route {0:?} already exists")]
    RouteExists(String),
    #[error("route {route:?} has no output named {output:?}")]
    UnknownOutput { route: String, output: String },
    #[error("route {route:?} already has an output named {output:?}")]
    OutputExists { route: String, output: String },
    #[error("path {0:?} is already served by another output")]
    PathInUse(String),
    #[error("route {route:?} has no input {index}")]
    UnknownInput { route: String, index: usize },
    #[error("the engine is shutting down")]
    Stopped,
}

/// Operator overrides that survive a restart (they come from points).
#[derive(Debug, Clone, Copy)]
struct Overlay {
    stream_enabled: bool,
    forced: Option<usize>,
    /// Transcode Enable (None: the route's configured mode).
    transcode: Option<bool>,
    /// Output Profile (None or 0: the route's configured profile).
    profile: Option<u32>,
    /// Recording Enable (None: each `record` output as configured).
    recording: Option<bool>,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay {
            stream_enabled: true,
            forced: None,
            transcode: None,
            profile: None,
            recording: None,
        }
    }
}

struct RunningRoute {
    cmd: mpsc::Sender<RouteCmd>,
    cancel: CancellationToken,
    inputs: TaskTracker,
    task: JoinHandle<Vec<OutputSlot>>,
    shared: Arc<RouteShared>,
    /// The inputs now running, in priority order (hot input changes).
    running_inputs: Vec<RunningInput>,
    /// Key of the next input spawned (keys are never reused in a route, so
    /// a chunk still queued from a removed input is recognised and dropped).
    next_key: usize,
    /// Kept so inputs added later can feed the route task.
    data_tx: mpsc::Sender<route::InputMsg>,
    /// The data-plane runtime the route's tasks run on.
    rt: Option<tokio::runtime::Handle>,
}

/// The routes' runtimes: one single-threaded tokio runtime per core, each
/// on its own thread; a route's input, route and output tasks all run on
/// one of them (round robin over routes). On the shared multi-threaded
/// runtime every wake-up of an idle worker woke a second one to look for
/// work to steal, so a lightly loaded route cost two threads' context
/// switches per chunk; here a chunk goes from input to outputs on one
/// thread with no hand-off. The control plane (HTTP, protocols, the
/// engine's own commands) stays on the main runtime.
struct DataPlane {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    /// Ends the runtimes' threads when the engine is dropped.
    stop: CancellationToken,
}

impl DataPlane {
    fn new() -> DataPlane {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            match Self::start(i, stop.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    tracing::warn!("route runtime {i}: {e}; routes share the main runtime");
                    break;
                }
            }
        }
        DataPlane {
            handles,
            next: Default::default(),
            stop,
        }
    }

    /// Builds runtime `i` and starts its thread, which runs until `stop`.
    fn start(i: usize, stop: CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("cp-route{i}-blk"))
            .build()?;
        let h = rt.handle().clone();
        // Ends when `stop` is cancelled (the engine's shutdown).
        crate::tasks::spawn_thread(format!("cp-route{i}"), move || {
            rt.block_on(stop.cancelled())
        })?;
        Ok(h)
    }

    /// The runtime for a new route (None: the caller's).
    fn pick(&self) -> Option<tokio::runtime::Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(self.handles[i % self.handles.len()].clone())
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Spawns `fut` on `tracker`, on the route's runtime when it has one.
fn spawn_on<F>(
    tracker: &TaskTracker,
    rt: Option<&tokio::runtime::Handle>,
    fut: F,
) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match rt {
        Some(h) => tracker.spawn_on(fut, h),
        None => tracker.spawn(fut),
    }
}

/// One running input task of a route.
struct RunningInput {
    key: usize,
    spec: InputSpec,
    stats: Arc<IoStats>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

struct EngState {
    desired: EngineSpec,
    running: HashMap<String, RunningRoute>,
    overlay: HashMap<String, Overlay>,
    /// Join handles of output tasks by (route, output), awaited at teardown
    /// so that sockets are released before a rebuild binds them again.
    output_tasks: HashMap<(String, String), JoinHandle<()>>,
}

struct Inner {
    data_dir: PathBuf,
    cancel: CancellationToken,
    tasks: TaskTracker,
    state: tokio::sync::Mutex<EngState>,
    /// Read by the sampler and snapshots without touching `state`.
    shared: RwLock<Vec<Arc<RouteShared>>>,
    /// Copy of `desired.primary` readable without the async lock.
    primary: RwLock<Option<String>>,
    http: output::HttpRegistry,
    hls: hls::HlsRegistry,
    /// RTMP ingest: route inputs waiting for publishers, by app and key.
    rtmp: crate::media::rtmp::Registry,
    events: Events,
    /// ffmpeg path and output profiles (`[media]`, `[[profile]]`); None
    /// until the app sets them: transcoding waits for them and RTMP
    /// outputs start their child once they are known.
    media: tokio::sync::watch::Sender<Option<Arc<Media>>>,
    dp: DataPlane,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone (e.g. a runtime shutting down without
        // `stop`): release blocking SRT threads waiting on the token.
        self.cancel.cancel();
    }
}

/// Cheap-clone handle to the router.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine with no routes; `apply` gives it some. Its tasks stop when
    /// `shutdown` is cancelled (then call `stop` to wait for them).
    pub fn new(data_dir: PathBuf, shutdown: &CancellationToken) -> Engine {
        let e = Engine {
            inner: Arc::new(Inner {
                data_dir,
                cancel: shutdown.child_token(),
                tasks: TaskTracker::new(),
                state: tokio::sync::Mutex::new(EngState {
                    desired: EngineSpec::default(),
                    running: HashMap::new(),
                    overlay: HashMap::new(),
                    output_tasks: HashMap::new(),
                }),
                shared: RwLock::new(Vec::new()),
                primary: RwLock::new(None),
                http: Default::default(),
                hls: Default::default(),
                rtmp: Default::default(),
                events: Events::new(),
                media: tokio::sync::watch::channel(None).0,
                dp: DataPlane::new(),
            }),
        };
        // Once-a-second bit-rate sampler.
        let weak = Arc::downgrade(&e.inner);
        let cancel = e.inner.cancel.clone();
        e.inner.tasks.spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = t.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                for r in inner.shared.read().iter() {
                    for s in r.stats_list() {
                        s.sample(now);
                    }
                }
            }
        });
        e
    }

    /// The RTMP ingest registry the RTMP server hands publishers to.
    pub fn rtmp_registry(&self) -> crate::media::rtmp::Registry {
        self.inner.rtmp.clone()
    }

    /// Where recordings go (`<data_dir>/recordings/<route>/`).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    /// Events as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.inner.events.tx.subscribe()
    }

    /// The last events (up to 1000), oldest first.
    pub fn recent_events(&self) -> Vec<EngineEvent> {
        self.inner.events.recent.lock().iter().cloned().collect()
    }

    /// Counters of every running route.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            routes: self
                .inner
                .shared
                .read()
                .iter()
                .map(|r| r.snapshot())
                .collect(),
            primary: self.inner.primary.read().clone(),
        }
    }

    /// The desired state (what a restart rebuilds).
    pub async fn desired(&self) -> EngineSpec {
        self.inner.state.lock().await.desired.clone()
    }

    pub async fn primary(&self) -> Option<String> {
        self.inner.state.lock().await.desired.primary.clone()
    }

    /// Makes the running router match `spec`: routes that are new start,
    /// routes gone stop, changed routes restart; unchanged ones are left
    /// alone (applying twice is a no-op).
    pub async fn apply(&self, spec: EngineSpec) {
        let mut st = self.inner.state.lock().await;
        let old = std::mem::replace(&mut st.desired, spec.clone());
        *self.inner.primary.write() = spec.primary.clone();
        for r in &old.routes {
            let keep = spec.routes.iter().any(|n| n == r);
            if !keep {
                self.stop_route(&mut st, &r.name).await;
            }
        }
        for r in &spec.routes {
            if !st.running.contains_key(&r.name) && r.enabled {
                self.start_route(&mut st, r.clone());
            }
        }
    }

    /// Tears every route down and rebuilds the router from the desired state.
    pub async fn restart(&self) {
        let mut st = self.inner.state.lock().await;
        let names: Vec<String> = st.running.keys().cloned().collect();
        for n in names {
            self.stop_route(&mut st, &n).await;
        }
        let routes = st.desired.routes.clone();
        for r in routes.into_iter().filter(|r| r.enabled) {
            self.start_route(&mut st, r);
        }
        self.inner
            .events
            .emit(EngineEvent::new("*", EventKind::Restarted));
    }

    /// Stops everything and waits for every task to end.
    pub async fn stop(&self) {
        {
            let mut st = self.inner.state.lock().await;
            let names: Vec<String> = st.running.keys().cloned().collect();
            for n in names {
                self.stop_route(&mut st, &n).await;
            }
        }
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    pub async fn add_route(&self, spec: RouteSpec) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        if st.desired.routes.iter().any(|r| r.name == spec.name) {
            return Err(EngineError::RouteExists(spec.name));
        }
        for o in &spec.outputs {
            check_path_free(&st.desired, &o.kind, None)?;
        }
        st.desired.routes.push(spec.clone());
        if spec.enabled {
            self.start_route(&mut st, spec);
        }
        Ok(())
    }

    pub async fn remove_route(&self, name: &str) -> Result<RouteSpec, EngineError> {
        let mut st = self.inner.state.lock().await;
        let pos = st
            .desired
            .routes
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| EngineError::UnknownRoute(name.to_string()))?;
        let r = st.desired.routes.remove(pos);
        self.stop_route(&mut st, name).await;
        Ok(r)
    }

    /// Adds an output to a route while it streams.
    pub async fn add_output(&self, route: &str, spec: OutputSpec) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let r = find_route(&st.desired, route)?;
        if r.outputs.iter().any(|o| o.name == spec.name) {
            return Err(EngineError::OutputExists {
                route: route.to_string(),
                output: spec.name,
            });
        }
        check_path_free(&st.desired, &spec.kind, None)?;
        if let Some(r) = st.desired.routes.iter_mut().find(|r| r.name == route) {
            r.outputs.push(spec.clone());
        }
        if let Some(rt) = st.running.get(route) {
            let tracker_cancel = self.inner.cancel.child_token();
            let cmd = rt.cmd.clone();
            let (slot, handle) =
                self.spawn_output(route, spec.clone(), tracker_cancel, rt.rt.as_ref());
            st.output_tasks
                .insert((route.to_string(), spec.name.clone()), handle);
            let _ = cmd.send(RouteCmd::AddOutput(Box::new(slot))).await;
        }
        self.inner.events.emit(EngineEvent::new(
            route,
            EventKind::OutputAdded { output: spec.name },
        ));
        Ok(())
    }

    /// Removes an output; its task stops and its socket closes.
    pub async fn remove_output(&self, route: &str, name: &str) -> Result<OutputSpec, EngineError> {
        let mut st = self.inner.state.lock().await;
        let spec = take_output(&mut st.desired, route, name)?;
        if let Some(slot) = self.detach(&st, route, name).await {
            slot.cancel.cancel();
        }
        if let Some(h) = st
            .output_tasks
            .remove(&(route.to_string(), name.to_string()))
        {
            let _ = h.await;
        }
        self.inner.events.emit(EngineEvent::new(
            route,
            EventKind::OutputRemoved {
                output: name.to_string(),
            },
        ));
        Ok(spec)
    }

    pub async fn set_output_enabled(
        &self,
        route: &str,
        name: &str,
        enabled: bool,
    ) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let r = find_route_mut(&mut st.desired, route)?;
        let o = r
            .outputs
            .iter_mut()
            .find(|o| o.name == name)
            .ok_or_else(|| EngineError::UnknownOutput {
                route: route.to_string(),
                output: name.to_string(),
            })?;
        o.enabled = enabled;
        if let Some(rt) = st.running.get(route) {
            let (tx, rx) = oneshot::channel();
            let _ = rt
                .cmd
                .send(RouteCmd::SetOutputEnabled(name.to_string(), enabled, tx))
                .await;
            let _ = rx.await;
        }
        self.inner.events.emit(EngineEvent::new(
            route,
            EventKind::OutputEnabled {
                output: name.to_string(),
                enabled,
            },
        ));
        Ok(())
    }

    /// Moves an output to another route without restarting it (its socket,
    /// its viewers and its counters stay).
    pub async fn move_output(&self, from: &str, name: &str, to: &str) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let target = find_route(&st.desired, to)?;
        if target.outputs.iter().any(|o| o.name == name) {
            return Err(EngineError::OutputExists {
                route: to.to_string(),
                output: name.to_string(),
            });
        }
        let spec = take_output(&mut st.desired, from, name)?;
        if let Some(r) = st.desired.routes.iter_mut().find(|r| r.name == to) {
            r.outputs.push(spec.clone());
        }
        let slot = self.detach(&st, from, name).await;
        let handle = st
            .output_tasks
            .remove(&(from.to_string(), name.to_string()));
        match (slot, st.running.get(to)) {
            (Some(slot), Some(rt)) => {
                let _ = rt.cmd.send(RouteCmd::AddOutput(slot)).await;
                if let Some(h) = handle {
                    st.output_tasks
                        .insert((to.to_string(), name.to_string()), h);
                }
            }
            (Some(slot), None) => {
                // Target not running: the output rests until it starts.
                slot.cancel.cancel();
                if let Some(h) = handle {
                    let _ = h.await;
                }
            }
            (None, Some(rt)) => {
                let cmd = rt.cmd.clone();
                let (slot, h) =
                    self.spawn_output(to, spec, self.inner.cancel.child_token(), rt.rt.as_ref());
                st.output_tasks
                    .insert((to.to_string(), name.to_string()), h);
                let _ = cmd.send(RouteCmd::AddOutput(Box::new(slot))).await;
            }
            (None, None) => {}
        }
        self.inner.events.emit(EngineEvent::new(
            from,
            EventKind::OutputMoved {
                output: name.to_string(),
                to: to.to_string(),
            },
        ));
        Ok(())
    }

    /// Input Select: `None` = automatic failover, `Some(i)` = force input i.
    pub async fn select_input(&self, route: &str, input: Option<usize>) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let r = find_route(&st.desired, route)?;
        if let Some(i) = input {
            if i >= r.inputs.len() {
                return Err(EngineError::UnknownInput {
                    route: route.to_string(),
                    index: i,
                });
            }
        }
        st.overlay.entry(route.to_string()).or_default().forced = input;
        if let Some(rt) = st.running.get(route) {
            let _ = rt.cmd.send(RouteCmd::SelectInput(input)).await;
        }
        Ok(())
    }

    /// Stream Enable: starts/stops feeding a route's viewer-facing outputs
    /// (recordings follow Recording Enable only).
    pub async fn set_stream_enabled(&self, route: &str, en: bool) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        find_route(&st.desired, route)?;
        st.overlay
            .entry(route.to_string())
            .or_default()
            .stream_enabled = en;
        if let Some(rt) = st.running.get(route) {
            let _ = rt.cmd.send(RouteCmd::SetStreamEnabled(en)).await;
        }
        Ok(())
    }

    /// Recording Enable: turns the route's `record` outputs on or off; a
    /// route without one gets a default recording output (`recording`,
    /// 10-minute files under `data_dir/recordings/<route>/`).
    pub async fn set_recording(&self, route: &str, en: Option<bool>) -> Result<(), EngineError> {
        let has = {
            let mut st = self.inner.state.lock().await;
            st.overlay.entry(route.to_string()).or_default().recording = en;
            // The configuration is left as it is: `None` puts every record
            // output back to its configured `enabled`.
            let r = find_route(&st.desired, route)?;
            let want: Vec<(String, bool)> = r
                .outputs
                .iter()
                .filter(|o| matches!(o.kind, OutputKind::Record { .. }))
                .map(|o| (o.name.clone(), en.unwrap_or(o.enabled)))
                .collect();
            let has = !want.is_empty();
            if let Some(rt) = st.running.get(route) {
                let (tx, rx) = oneshot::channel();
                let _ = rt.cmd.send(RouteCmd::SetRecording(want, tx)).await;
                let _ = rx.await;
            }
            has
        };
        if en == Some(true) && !has {
            // Configured disabled, enabled by the written point: when it is
            // relinquished the route goes back to not recording.
            self.add_output(
                route,
                OutputSpec {
                    name: "recording".into(),
                    enabled: false,
                    kind: OutputKind::Record {
                        segment: Duration::from_secs(600),
                        keep: 0,
                    },
                    queue: spec::DEFAULT_QUEUE * 4,
                    source: OutputSource::Auto,
                },
            )
            .await?;
            let st = self.inner.state.lock().await;
            if let Some(rt) = st.running.get(route) {
                let (tx, rx) = oneshot::channel();
                let want = vec![("recording".to_string(), true)];
                let _ = rt.cmd.send(RouteCmd::SetRecording(want, tx)).await;
                let _ = rx.await;
            }
        }
        Ok(())
    }

    /// Sets the ffmpeg path and output profiles; transcoding routes restart
    /// their transcoder with the new settings (RTMP outputs pick them up
    /// when they next start).
    pub async fn set_media(&self, media: Media) {
        self.inner.media.send_replace(Some(Arc::new(media)));
        let st = self.inner.state.lock().await;
        for r in &st.desired.routes {
            if let Some(rt) = st.running.get(&r.name) {
                let ov = st.overlay.get(&r.name).copied().unwrap_or_default();
                let _ = rt
                    .cmd
                    .send(RouteCmd::SetTranscode(self.transcode_req(r, &ov)))
                    .await;
            }
        }
    }

    /// Transcode Enable and Output Profile of a route: `enabled` None =
    /// the route's configured mode; `profile` None or 0 = its configured
    /// profile. Passthrough outputs keep running across the switch.
    pub async fn set_transcode(
        &self,
        route: &str,
        enabled: Option<bool>,
        profile: Option<u32>,
    ) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let spec = find_route(&st.desired, route)?.clone();
        let ov = {
            let o = st.overlay.entry(route.to_string()).or_default();
            o.transcode = enabled;
            o.profile = profile.filter(|p| *p > 0);
            *o
        };
        if let Some(rt) = st.running.get(route) {
            let _ = rt
                .cmd
                .send(RouteCmd::SetTranscode(self.transcode_req(&spec, &ov)))
                .await;
        }
        Ok(())
    }

    fn transcode_req(&self, spec: &RouteSpec, ov: &Overlay) -> Option<TranscodeReq> {
        if !ov.transcode.unwrap_or(spec.mode == Mode::Transcode) {
            return None;
        }
        let media = self.inner.media.borrow().clone()?;
        let pref = ov.profile.map(ProfileRef::Number).or(spec.profile.clone());
        Some(TranscodeReq {
            profile: media.resolve(pref.as_ref()),
            media,
        })
    }

    /// HTTP-TS (`/stream/{name}.ts`) and HLS (`/hls/{name}/...`) endpoints,
    /// merged into the main HTTP server by the app.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/stream/{file}", get(http_ts))
            .route("/hls/{path}/{file}", get(hls::serve))
            .with_state(self.clone())
    }

    // ---------------------------------------------------------------- internals

    /// Takes an output's slot out of its running route.
    async fn detach(&self, st: &EngState, route: &str, name: &str) -> Option<Box<OutputSlot>> {
        let rt = st.running.get(route)?;
        let (tx, rx) = oneshot::channel();
        rt.cmd
            .send(RouteCmd::RemoveOutput(name.to_string(), tx))
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    fn spawn_output(
        &self,
        route: &str,
        spec: OutputSpec,
        cancel: CancellationToken,
        rt: Option<&tokio::runtime::Handle>,
    ) -> (OutputSlot, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(spec.queue.max(1));
        let stats = Arc::new(IoStats::default());
        let s = stats.clone();
        let c = cancel.clone();
        let t = &self.inner.tasks;
        let mut direct = None;
        let mut enabled_tx = None;
        let handle = match &spec.kind {
            OutputKind::Udp { dest, ttl } => {
                match output::udp_sender(*dest, *ttl) {
                    Ok(sock) => {
                        s.set_up(sock.local_addr().ok());
                        s.clients.store(1, std::sync::atomic::Ordering::Relaxed);
                        direct = Some(route::Direct::Udp(Box::new(sock)));
                    }
                    Err(e) => {
                        tracing::error!("udp output {dest}: {e}");
                        s.set_error(format!("{dest}: {e}"));
                    }
                }
                drop(rx);
                spawn_on(t, rt, output::run_udp(c))
            }
            OutputKind::Http { path } => spawn_on(
                t,
                rt,
                output::run_http(rx, path.clone(), self.inner.http.clone(), spec.queue, s, c),
            ),
            OutputKind::Record { segment, keep } => spawn_on(
                t,
                rt,
                record::Recorder {
                    dir: self.inner.data_dir.join("recordings").join(route),
                    route: route.to_string(),
                    output: spec.name.clone(),
                    segment: *segment,
                    keep: *keep,
                    stats: s,
                    events: self.inner.events.clone(),
                }
                .run(rx, c),
            ),
            OutputKind::Hls {
                path,
                segment,
                window,
                store,
            } => spawn_on(
                t,
                rt,
                hls::run(
                    rx,
                    path.clone(),
                    self.inner.hls.clone(),
                    *segment,
                    *window,
                    (*store == spec::HlsStore::Disk)
                        .then(|| self.inner.data_dir.join("hls").join(path)),
                    s,
                    c,
                ),
            ),
            OutputKind::Srt(sp) if sp.mode == SrtMode::Listener => {
                let (ev, route, name) = (
                    self.inner.events.clone(),
                    route.to_string(),
                    spec.name.clone(),
                );
                let (out, task) = srt::listener_output(sp.clone(), s, c, ev, route, name);
                direct = out.map(route::Direct::Srt);
                drop(rx);
                spawn_on(t, rt, task)
            }
            OutputKind::Srt(sp) => spawn_on(t, rt, srt::run_caller_output(rx, sp.clone(), s, c)),
            OutputKind::Rtmp { url, key } => {
                let media = self.inner.media.subscribe();
                let (en_tx, en_rx) = tokio::sync::watch::channel(spec.enabled);
                enabled_tx = Some(en_tx);
                // A key typed inside `url` (the form CDNs show) is split
                // off so it reaches ffmpeg through the private preset file
                // too, never its command line.
                let (url, key) = match key.as_deref().filter(|k| !k.is_empty()) {
                    Some(k) => (url.clone(), Some(k.to_string())),
                    None => match crate::media::ffmpeg::profile::split_rtmp_key(url) {
                        Some((base, k)) => (base, Some(k)),
                        None => (url.clone(), None),
                    },
                };
                let (url, key) = (&url, &key);
                let target = crate::media::ffmpeg::profile::rtmp_target(url, key.as_deref());
                spawn_on(
                    t,
                    rt,
                    crate::media::ffmpeg::run_rtmp_push(
                        media,
                        en_rx,
                        url.clone(),
                        target,
                        key.clone(),
                        format!("rtmp:{route}/{}", spec.name),
                        rx,
                        s,
                        c,
                    ),
                )
            }
        };
        (
            OutputSlot {
                spec,
                tx,
                stats,
                cancel,
                loss: Default::default(),
                direct,
                enabled_tx,
            },
            handle,
        )
    }

    /// Spawns one input task on the route's tracker. `key` identifies the
    /// input's chunks to the route task for as long as it runs, whatever
    /// its position after hot input changes.
    #[allow(clippy::too_many_arguments)]
    fn spawn_input(
        &self,
        route: &str,
        tracker: &TaskTracker,
        rt: Option<&tokio::runtime::Handle>,
        key: usize,
        inp: &InputSpec,
        tx: mpsc::Sender<route::InputMsg>,
        route_cancel: &CancellationToken,
        pace: &Arc<AtomicU64>,
    ) -> RunningInput {
        let stats = Arc::new(IoStats::default());
        let feed = input::Feed::new(key, tx, stats.clone(), pace.clone());
        let cancel = route_cancel.child_token();
        let c = cancel.clone();
        let handle = match &inp.kind {
            InputKind::Udp {
                bind,
                multicast,
                interface,
            } => {
                let (b, m, i) = (*bind, *multicast, *interface);
                spawn_on(tracker, rt, async move {
                    input::run_udp(feed, b, m, i, c).await
                })
            }
            InputKind::Http { url } => {
                let url = url.clone();
                spawn_on(
                    tracker,
                    rt,
                    async move { input::run_http(feed, url, c).await },
                )
            }
            InputKind::Srt(sp) => {
                let who = srt::InputId {
                    events: self.inner.events.clone(),
                    route: route.to_string(),
                    input: inp.name.clone(),
                };
                let sp = sp.clone();
                tracker.spawn_blocking(move || srt::run_input(feed, sp, who, c))
            }
            InputKind::Generator { bitrate } => {
                let b = *bitrate;
                spawn_on(tracker, rt, async move {
                    input::run_generator(feed, b, c).await
                })
            }
            InputKind::Rtmp(r) => {
                let (r, reg) = (r.clone(), self.inner.rtmp.clone());
                spawn_on(tracker, rt, async move {
                    crate::media::rtmp::run_input(feed, r, reg, c).await
                })
            }
            InputKind::Rtsp(sp) => {
                let sp = sp.clone();
                spawn_on(tracker, rt, async move {
                    crate::media::rtsp::run_input(feed, sp, c).await
                })
            }
        };
        RunningInput {
            key,
            spec: inp.clone(),
            stats,
            cancel,
            handle,
        }
    }

    /// Replaces a route's inputs while it streams: inputs whose spec is
    /// unchanged keep running (the source is never interrupted), removed
    /// ones stop (their sockets are released before new ones bind), new
    /// ones start; the outputs never notice unless the active input itself
    /// was removed, which is then a failover like any other.
    pub async fn set_inputs(&self, route: &str, inputs: Vec<InputSpec>) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        find_route_mut(&mut st.desired, route)?.inputs = inputs.clone();
        let Some(rt) = st.running.get_mut(route) else {
            return Ok(());
        };
        let mut old = std::mem::take(&mut rt.running_inputs);
        let mut kept: Vec<Option<RunningInput>> = Vec::with_capacity(inputs.len());
        for spec in &inputs {
            match old.iter().position(|o| o.spec == *spec) {
                Some(p) => kept.push(Some(old.remove(p))),
                None => kept.push(None),
            }
        }
        for o in &old {
            o.cancel.cancel();
        }
        for o in old {
            let _ = o.handle.await;
        }
        let mut now_running = Vec::with_capacity(inputs.len());
        for (spec, k) in inputs.iter().zip(kept) {
            let ri = match k {
                Some(ri) => ri,
                None => {
                    let key = rt.next_key;
                    rt.next_key += 1;
                    let pace = &rt.shared.read_pace_us;
                    let h = rt.rt.clone();
                    self.spawn_input(
                        route,
                        &rt.inputs,
                        h.as_ref(),
                        key,
                        spec,
                        rt.data_tx.clone(),
                        &rt.cancel,
                        pace,
                    )
                }
            };
            now_running.push(ri);
        }
        *rt.shared.inputs.lock() = now_running
            .iter()
            .map(|r| {
                (
                    r.spec.name.clone(),
                    r.spec.kind.type_name(),
                    r.stats.clone(),
                )
            })
            .collect();
        let keys: Vec<usize> = now_running.iter().map(|r| r.key).collect();
        rt.running_inputs = now_running;
        let (tx, rx) = oneshot::channel();
        let _ = rt.cmd.send(RouteCmd::SetInputs(keys, tx)).await;
        let _ = rx.await;
        Ok(())
    }

    fn start_route(&self, st: &mut EngState, spec: RouteSpec) {
        let rt = self.inner.dp.pick();
        let cancel = self.inner.cancel.child_token();
        let inputs = TaskTracker::new();
        // Room for ~1 s of 10 Mbit/s datagrams if the route task stalls.
        let (data_tx, data_rx) = mpsc::channel(1024);
        // Set by the route task from its outputs (see `RouteShared`).
        let pace = Arc::new(AtomicU64::new(0));
        let running_inputs: Vec<RunningInput> = spec
            .inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| {
                self.spawn_input(
                    &spec.name,
                    &inputs,
                    rt.as_ref(),
                    i,
                    inp,
                    data_tx.clone(),
                    &cancel,
                    &pace,
                )
            })
            .collect();
        let in_stats = running_inputs
            .iter()
            .map(|r| {
                (
                    r.spec.name.clone(),
                    r.spec.kind.type_name(),
                    r.stats.clone(),
                )
            })
            .collect();
        inputs.close();
        let mut slots = Vec::new();
        let recording = st.overlay.get(&spec.name).and_then(|o| o.recording);
        for o in &spec.outputs {
            let mut o = o.clone();
            // A written Recording Enable outlives a route restart.
            if let (Some(en), OutputKind::Record { .. }) = (recording, &o.kind) {
                o.enabled = en;
            }
            let (slot, h) = self.spawn_output(
                &spec.name,
                o.clone(),
                self.inner.cancel.child_token(),
                rt.as_ref(),
            );
            st.output_tasks
                .insert((spec.name.clone(), o.name.clone()), h);
            slots.push(slot);
        }
        let ov = st.overlay.get(&spec.name).copied().unwrap_or_default();
        let shared = Arc::new(RouteShared {
            name: spec.name.clone(),
            enabled: spec.enabled,
            inputs: Mutex::new(in_stats),
            outputs: Mutex::new(Vec::new()),
            active: (-1).into(),
            forced: (-1).into(),
            stream_enabled: true.into(),
            switches: 0.into(),
            video_pid: (-1).into(),
            input_frames_lost: 0.into(),
            transcode: Mutex::new(None),
            read_pace_us: pace,
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let task = RouteTask {
            shared: shared.clone(),
            timeout: spec.failover_timeout,
            switch_back: spec.switch_back,
            outputs: slots,
            events: self.inner.events.clone(),
            stream_enabled: ov.stream_enabled,
            forced: ov.forced.filter(|&f| f < spec.inputs.len()),
            tasks: self.inner.tasks.clone(),
            cancel: cancel.clone(),
            tc: Default::default(),
            coalesce: spec.udp_coalesce,
            udp: Default::default(),
        };
        // Queued before the task runs: it transcodes from its first chunk.
        if let Some(req) = self.transcode_req(&spec, &ov) {
            let _ = cmd_tx.try_send(RouteCmd::SetTranscode(Some(req)));
        }
        let c = cancel.clone();
        let handle = spawn_on(&self.inner.tasks, rt.as_ref(), async move {
            task.run(data_rx, cmd_rx, c).await
        });
        self.inner.shared.write().push(shared.clone());
        st.running.insert(
            spec.name.clone(),
            RunningRoute {
                cmd: cmd_tx,
                cancel,
                inputs,
                task: handle,
                shared,
                next_key: spec.inputs.len(),
                running_inputs,
                data_tx,
                rt,
            },
        );
        self.inner
            .events
            .emit(EngineEvent::new(&spec.name, EventKind::RouteStarted));
    }

    async fn stop_route(&self, st: &mut EngState, name: &str) {
        let Some(rt) = st.running.remove(name) else {
            return;
        };
        rt.cancel.cancel();
        let slots = rt.task.await.unwrap_or_default();
        let names: Vec<String> = slots.iter().map(|s| s.spec.name.clone()).collect();
        for s in &slots {
            s.cancel.cancel();
        }
        // Dropping the queues ends outputs blocked on them (SRT threads).
        drop(slots);
        for n in names {
            if let Some(h) = st.output_tasks.remove(&(name.to_string(), n)) {
                let _ = h.await;
            }
        }
        rt.inputs.wait().await;
        self.inner
            .shared
            .write()
            .retain(|s| !Arc::ptr_eq(s, &rt.shared));
        self.inner
            .events
            .emit(EngineEvent::new(name, EventKind::RouteStopped));
    }
}

fn find_route<'a>(d: &'a EngineSpec, name: &str) -> Result<&'a RouteSpec, EngineError> {
    d.routes
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| EngineError::UnknownRoute(name.to_string()))
}

fn find_route_mut<'a>(d: &'a mut EngineSpec, name: &str) -> Result<&'a mut RouteSpec, EngineError> {
    d.routes
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or_else(|| EngineError::UnknownRoute(name.to_string()))
}

fn take_output(d: &mut EngineSpec, route: &str, name: &str) -> Result<OutputSpec, EngineError> {
    let r = find_route_mut(d, route)?;
    let pos = r
        .outputs
        .iter()
        .position(|o| o.name == name)
        .ok_or_else(|| EngineError::UnknownOutput {
            route: route.to_string(),
            output: name.to_string(),
        })?;
    Ok(r.outputs.remove(pos))
}

fn check_path_free(d: &EngineSpec, k: &OutputKind, _skip: Option<&str>) -> Result<(), EngineError> {
    let key = |k: &OutputKind| match k {
        OutputKind::Http { path } => Some(format!("/stream/{path}.ts")),
        OutputKind::Hls { path, .. } => Some(format!("/hls/{path}/")),
        _ => None,
    };
    let Some(want) = key(k) else { return Ok(()) };
    if d.routes
        .iter()
        .flat_map(|r| r.outputs.iter())
        .any(|o| key(&o.kind).as_deref() == Some(want.as_str()))
    {
        return Err(EngineError::PathInUse(want));
    }
    Ok(())
}

/// `GET /stream/{name}.ts`: a live MPEG-TS body, one bounded queue per viewer.
async fn http_ts(State(e): State<Engine>, Path(file): Path<String>) -> Response {
    let Some(name) = file.strip_suffix(".ts") else {
        return (StatusCode::NOT_FOUND, "expected /stream/<name>.ts").into_response();
    };
    let ep = e.inner.http.read().get(name).cloned();
    let Some(ep) = ep else {
        return (StatusCode::NOT_FOUND, format!("no stream {name:?}")).into_response();
    };
    let body = axum::body::Body::from_stream(ep.subscribe());
    (
        [
            (header::CONTENT_TYPE, "video/mp2t"),
            (header::CACHE_CONTROL, "no-cache, no-store"),
        ],
        body,
    )
        .into_response()
}
