//! RTMP ingest: the RTMP server OBS-like encoders publish to (`rtmp://HOST:1935/live/KEY`), remuxed to MPEG-TS for any route.
//!
//! Native Rust end to end (no ffmpeg in the data path): `chunk` (handshake
//! and chunk stream), `amf0` (commands), `flv` (AVC/AAC tag bodies) and
//! `session` (one publisher connection) feed [`crate::media::tsmux`].
//!
//! A route input `type = "rtmp"` registers its (app, key) in the engine's
//! [`Registry`]; the server hands a publish for that app/key to it. Only
//! registered keys can publish; a second publisher on a live key is
//! refused. When the publisher leaves, the input simply stops delivering and
//! the route fails over like for any other silent input.

pub mod amf0;
pub mod chunk;
pub mod flv;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tsmux::{MuxConfig, TsMuxer};
use crate::mpegts::feed::Feed;
use crate::mpegts::stats::IoStats;
use crate::section::{Problem, Section};

/// `[rtmp]` in castpoint.toml.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Concurrent connections (publishers and handshakes); more are closed.
    pub max_connections: usize,
    /// Concurrent connections from one source address.
    pub max_connections_per_ip: usize,
    /// A connection silent this long is closed (a stalled publisher).
    #[serde(with = "crate::section::duration")]
    pub idle_timeout: Duration,
    /// Largest RTMP message accepted (a keyframe); bounds memory per peer.
    pub max_message: usize,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 1935)),
            max_connections: 64,
            max_connections_per_ip: 8,
            idle_timeout: Duration::from_secs(10),
            max_message: 8 << 20,
        }
    }
}

impl RtmpConfig {
    /// The listener caps this section asks for.
    pub fn caps(&self) -> crate::netlimit::Caps {
        crate::netlimit::Caps {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }

    /// The same config with the caps `netlimit::fit_caps` settled on.
    pub fn with_caps(self, caps: crate::netlimit::Caps) -> RtmpConfig {
        RtmpConfig {
            max_connections: caps.max_connections,
            max_connections_per_ip: caps.max_connections_per_ip,
            ..self
        }
    }
}

impl Section for RtmpConfig {
    fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        crate::section::range("max_connections", self.max_connections, 1, 10_000, &mut p);
        let per_ip = self.max_connections_per_ip;
        crate::section::range("max_connections_per_ip", per_ip, 1, 10_000, &mut p);
        if !(64 * 1024..=16 << 20).contains(&self.max_message) {
            p.push(Problem::new(
                "max_message",
                "expected bytes 65536..=16777216",
            ));
        }
        let t = self.idle_timeout;
        if t < Duration::from_secs(1) || t > Duration::from_secs(600) {
            let m = "expected a duration between \"1s\" and \"10m\"";
            p.push(Problem::new("idle_timeout", m));
        }
        p
    }
}

/// What a publisher session sends its route input. Timestamps are 90 kHz
/// on the session's own (unwrapped) clock; the input maps them onto one
/// continuous timeline across publishers.
#[derive(Debug)]
pub(crate) enum Event {
    Start(SocketAddr),
    Config(MuxConfig),
    Video {
        pts: i64,
        dts: i64,
        key: bool,
        annexb: Vec<u8>,
    },
    Audio {
        pts: i64,
        raw: Vec<u8>,
    },
    /// The publisher left (or was refused mid-stream: the reason).
    End(Option<String>),
}

struct Endpoint {
    tx: mpsc::Sender<Event>,
    busy: AtomicBool,
    stats: Arc<IoStats>,
}

#[derive(Default)]
struct RegInner {
    endpoints: HashMap<(String, String), Arc<Endpoint>>,
    /// The listener's state: bound address, or why it is not running.
    server: Option<Result<SocketAddr, String>>,
}

/// Route inputs waiting for publishers, by (app, stream key). Cheap clone.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<RegInner>>,
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    UnknownKey,
    AlreadyPublishing,
}

/// A claimed input: frees it when dropped.
pub(crate) struct Publisher {
    ep: Arc<Endpoint>,
}

impl Publisher {
    /// Returns false when the input is gone (route stopped).
    pub async fn send(&self, ev: Event) -> bool {
        self.ep.tx.send(ev).await.is_ok()
    }

    pub fn stats(&self) -> &IoStats {
        &self.ep.stats
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.ep.busy.store(false, Relaxed);
    }
}

/// Unregisters an input when its task ends.
struct Registration {
    reg: Registry,
    key: (String, String),
    ep: Arc<Endpoint>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut g = self.reg.inner.lock();
        if g.endpoints
            .get(&self.key)
            .is_some_and(|e| Arc::ptr_eq(e, &self.ep))
        {
            g.endpoints.remove(&self.key);
        }
    }
}

impl Registry {
    fn register(
        &self,
        app: &str,
        key: &str,
        stats: Arc<IoStats>,
    ) -> Result<(Registration, mpsc::Receiver<Event>), String> {
        let mut g = self.inner.lock();
        let k = (app.to_string(), key.to_string());
        if g.endpoints.contains_key(&k) {
            return Err(format!(
                "another route input already uses this stream key on app {app:?}"
            ));
        }
        let (tx, rx) = mpsc::channel(256);
        let ep = Arc::new(Endpoint {
            tx,
            busy: AtomicBool::new(false),
            stats,
        });
        g.endpoints.insert(k.clone(), ep.clone());
        Ok((
            Registration {
                reg: self.clone(),
                key: k,
                ep,
            },
            rx,
        ))
    }

    /// Hands the input for app/key to a publisher.
    pub(crate) fn claim(&self, app: &str, key: &str) -> Result<Publisher, Refusal> {
        let g = self.inner.lock();
        let ep = g
            .endpoints
            .get(&(app.to_string(), key.to_string()))
            .ok_or(Refusal::UnknownKey)?;
        if ep.busy.swap(true, Relaxed) {
            return Err(Refusal::AlreadyPublishing);
        }
        Ok(Publisher { ep: ep.clone() })
    }

    /// Records the listener's state (inputs show it while no one publishes).
    pub fn set_server(&self, state: Result<SocketAddr, String>) {
        let mut g = self.inner.lock();
        // Inputs started before the listener learn where to publish now.
        for ep in g.endpoints.values() {
            match &state {
                Ok(a) => ep.stats.set_up(Some(*a)),
                Err(e) => ep.stats.set_error(format!("rtmp server not running: {e}")),
            }
        }
        g.server = Some(state);
    }

    fn server(&self) -> Option<Result<SocketAddr, String>> {
        self.inner.lock().server.clone()
    }
}

/// Binds the listener (`Err`: why not, for the app's faults).
pub async fn bind(cfg: &RtmpConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(cfg.bind).await
}

/// Accepts publishers until `cancel`; each connection is a task on `tasks`.
pub async fn serve(
    listener: TcpListener,
    cfg: RtmpConfig,
    reg: Registry,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    // Refusals are counted and logged (rate-limited) by the limiter.
    let limiter = crate::netlimit::Limiter::new("rtmp", listener.local_addr().ok(), cfg.caps());
    loop {
        let (sock, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("rtmp accept: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = limiter.admit(peer.ip()) else {
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let (reg, cfg, c) = (reg.clone(), cfg.clone(), cancel.clone());
        tasks.spawn(async move {
            let _permit = permit;
            match session::run(sock, peer, reg, &cfg, c).await {
                Ok(()) => tracing::info!("rtmp {peer}: closed"),
                Err(e) => tracing::warn!("rtmp {peer}: {e}"),
            }
        });
    }
}

/// An RTMP ingest point. The stream key is a secret: `Debug` hides it.
#[derive(Clone, PartialEq)]
pub struct RtmpInput {
    pub app: String,
    pub key: String,
}

impl std::fmt::Debug for RtmpInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpInput")
            .field("app", &self.app)
            .field("key", &"***")
            .finish()
    }
}

/// First output timestamp (90 kHz): 10 s leaves room for B-frame PTS
/// offsets and audio that starts a little before video.
const TIMELINE_START: i64 = 10 * 90_000;

/// The route input: waits for publishers on app/key and muxes what they
/// send into TS for the route. One muxer (and one timeline) for the input's
/// whole life, so a publisher reconnecting continues the stream without
/// continuity errors or timestamp jumps.
pub(crate) async fn run_input(
    mut feed: Feed,
    spec: RtmpInput,
    reg: Registry,
    cancel: CancellationToken,
) {
    let stats = feed.stats.clone();
    let (_registration, mut rx) = match reg.register(&spec.app, &spec.key, stats.clone()) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("rtmp input (app {}): {e}", spec.app);
            stats.set_error(e);
            return;
        }
    };
    match reg.server() {
        Some(Ok(addr)) => stats.set_up(Some(addr)),
        Some(Err(e)) => stats.set_error(format!("rtmp server not running: {e}")),
        // Not known yet (the server binds after the first routes start).
        None => stats.set_up(None),
    }
    let mut mux: Option<TsMuxer> = None;
    let mut out = BytesMut::with_capacity(64 * 1024);
    // Output = input + offset; set at each session's first timestamp.
    let mut offset: Option<i64> = None;
    let mut last_dts = TIMELINE_START - 3600;
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        match ev {
            Event::Start(peer) => {
                offset = None;
                *stats.peer.lock() = Some(peer);
                stats.clients.store(1, Relaxed);
                if let Some(Ok(addr)) = reg.server() {
                    stats.set_up(Some(addr));
                }
            }
            Event::Config(cfg) => match &mut mux {
                Some(m) if m.config() == &cfg => {}
                Some(m) => m.update(cfg),
                None => mux = Some(TsMuxer::new(cfg)),
            },
            Event::Video {
                pts,
                dts,
                key,
                annexb,
            } => {
                let Some(m) = &mut mux else { continue };
                let off = *offset.get_or_insert(last_dts + 3600 - dts);
                let d = dts + off;
                last_dts = last_dts.max(d);
                m.push_video((pts + off) as u64, d as u64, key, &annexb, &mut out);
            }
            Event::Audio { pts, raw } => {
                let Some(m) = &mut mux else { continue };
                let off = *offset.get_or_insert(last_dts + 3600 - pts);
                let p = pts + off;
                last_dts = last_dts.max(p);
                m.push_audio(p as u64, &raw, &mut out);
            }
            Event::End(reason) => {
                stats.clients.store(0, Relaxed);
                *stats.peer.lock() = None;
                if let Some(r) = reason {
                    stats.set_error(r);
                }
            }
        }
        // Chunks of 7 packets, like a UDP input, so output queues and drop
        // accounting behave the same for every input type.
        while !out.is_empty() {
            let n = out.len().min(7 * super::tsmux::TS);
            if !feed.push(out.split_to(n)).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
