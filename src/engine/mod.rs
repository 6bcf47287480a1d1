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
//!
//! This file holds the handle, its state and the whole-spec operations;
//! `hot.rs` the hot changes, `spawn.rs` task spawning, `dataplane.rs` the
//! route runtimes, `events.rs` the events, `http.rs` the HTTP endpoints.

pub mod bridge;
pub mod coalesce;
mod dataplane;
mod events;
mod hls;
mod hot;
mod http;
pub(crate) mod input;
mod output;
mod record;
mod route;
mod spawn;
pub mod spec;
pub mod srt;
pub mod stats;
/// The TS plumbing lives in its own layer (`crate::mpegts`), shared with
/// the media adapters; these paths stay for the engine's own modules.
pub use crate::mpegts::{join, ts};

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

use dataplane::{spawn_on, DataPlane};
pub(crate) use events::Events;
pub use events::{EngineEvent, EventKind};

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

/// Removes `<data_dir>/hls` before any output runs. An HLS output empties
/// its own directory when it starts and removes it when it stops, but after
/// a crash (kill -9, power loss) the directories of outputs that no longer
/// exist would stay on disk for good; no output is running yet, so every
/// segment there is stale.
fn sweep_hls_dirs(data_dir: &std::path::Path) {
    let root = data_dir.join("hls");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return;
    };
    let n = dirs.count();
    match std::fs::remove_dir_all(&root) {
        Ok(()) if n > 0 => {
            tracing::info!(
                "removed {n} stale HLS segment directories under {}",
                root.display()
            )
        }
        Ok(()) => {}
        Err(e) => tracing::warn!(
            "stale HLS segments under {} not removed: {e}",
            root.display()
        ),
    }
}

impl Engine {
    /// An engine with no routes; `apply` gives it some. Its tasks stop when
    /// `shutdown` is cancelled (then call `stop` to wait for them).
    pub fn new(data_dir: PathBuf, shutdown: &CancellationToken) -> Engine {
        sweep_hls_dirs(&data_dir);
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
        self.snapshot_with(true)
    }

    /// Every route with its inputs only: no outputs, no transcoder (see
    /// `RouteShared::snapshot_with`).
    pub fn snapshot_inputs(&self) -> EngineSnapshot {
        self.snapshot_with(false)
    }

    fn snapshot_with(&self, outputs: bool) -> EngineSnapshot {
        EngineSnapshot {
            routes: self
                .inner
                .shared
                .read()
                .iter()
                .map(|r| r.snapshot_with(outputs))
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

    // ---------------------------------------------------------------- internals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_engine_sweeps_stale_hls_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stale = dir.path().join("hls").join("gone-route");
        std::fs::create_dir_all(&stale).expect("mkdir");
        std::fs::write(stale.join("7.ts"), [0x47u8; 188]).expect("segment");
        std::fs::write(dir.path().join("keep.db"), b"x").expect("other file");
        let token = CancellationToken::new();
        let _e = Engine::new(dir.path().to_path_buf(), &token);
        assert!(!dir.path().join("hls").exists(), "stale segments removed");
        assert!(dir.path().join("keep.db").exists(), "nothing else touched");
        // No hls directory at all: nothing to do, no error.
        let _e2 = Engine::new(dir.path().to_path_buf(), &token);
        token.cancel();
    }

    /// The bridge's looks between publications: every route and input of
    /// a full snapshot, with its counters and active input, and no outputs.
    #[tokio::test]
    async fn an_inputs_snapshot_is_the_full_one_without_outputs() {
        use spec::{InputSpec, OutputKind, OutputSource, OutputSpec};
        let dir = tempfile::tempdir().expect("tempdir");
        let token = CancellationToken::new();
        let e = Engine::new(dir.path().to_path_buf(), &token);
        let mut r = RouteSpec::new("r");
        r.inputs.push(InputSpec::udp_loopback("in"));
        r.outputs.push(OutputSpec {
            name: "out".into(),
            enabled: true,
            kind: OutputKind::Udp {
                dest: "127.0.0.1:9".parse().expect("addr"),
                ttl: None,
            },
            queue: spec::DEFAULT_QUEUE,
            source: OutputSource::Auto,
        });
        e.apply(EngineSpec {
            routes: vec![r],
            primary: None,
        })
        .await;
        // The route task lists its outputs once it runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        let full = loop {
            let s = e.snapshot();
            if s.routes.first().is_some_and(|r| r.outputs.len() == 1) {
                break s;
            }
            assert!(Instant::now() < deadline, "outputs never listed: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let inputs = e.snapshot_inputs();
        let (f, i) = (&full.routes[0], &inputs.routes[0]);
        assert!(i.outputs.is_empty() && i.transcode.is_none(), "{i:?}");
        assert_eq!(
            (&i.name, i.active_input, i.inputs.len()),
            (&f.name, f.active_input, 1)
        );
        assert_eq!(i.inputs[0].name, f.inputs[0].name);
        assert_eq!(i.inputs[0].bytes, f.inputs[0].bytes);
        token.cancel();
        e.stop().await;
    }
}
