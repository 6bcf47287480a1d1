//! The desired state of the router: routes with their inputs and outputs, as plain validated values (the config and the operator API build these; the engine reconciles toward them).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use super::coalesce::Coalesce;
/// What an adapter interprets is defined by the adapter (like
/// `media::rtsp::RtspSpec`); the engine's spec composes them, so
/// dependencies run engine -> media only.
pub use crate::media::ffmpeg::ProfileRef;
pub use crate::media::rtmp::RtmpInput;

/// Default failover timeout: no data on the active input for this long
/// switches to the next one.
pub const DEFAULT_FAILOVER: Duration = Duration::from_millis(500);
/// Default signal timeout: a route whose active input has delivered
/// nothing for longer than this is not LIVE (Stream Status ERROR, Input
/// Status NO_SIGNAL, not counted in Active Streams).
pub const DEFAULT_SIGNAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Default per-output queue depth, in chunks (a chunk is typically 7 TS
/// packets = one 1316-byte datagram; 512 chunks ~ 0.5 s at 10 Mbit/s).
pub const DEFAULT_QUEUE: usize = 512;

/// Everything the router should be running.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineSpec {
    pub routes: Vec<RouteSpec>,
    /// The route the seed's single-stream command points act on.
    pub primary: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TS packets pass through untouched (CC rewritten at input switches).
    Passthrough,
    /// The active input is also re-encoded by an ffmpeg child (an output
    /// profile); outputs with `source = "auto"` carry the transcoded TS.
    Transcode,
}

/// Which stream an output carries on a transcoding route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputSource {
    /// The transcoded stream while the route transcodes, else the original.
    #[default]
    Auto,
    /// Always the original input stream.
    Passthrough,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    pub enabled: bool,
    pub mode: Mode,
    /// Ordered: index 0 is the primary input, the rest are backups.
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    pub failover_timeout: Duration,
    /// No data from the active input for longer than this: no signal.
    pub signal_timeout: Duration,
    /// Return to a higher-priority input as soon as it delivers again.
    pub switch_back: bool,
    /// The output profile transcoding uses (None: profile 1 / the first).
    pub profile: Option<ProfileRef>,
    /// How long data for direct UDP outputs may be held to batch sends.
    pub udp_coalesce: Coalesce,
    /// Pinned point-block slot (`slot = N`); None: assigned and kept.
    pub slot: Option<u16>,
}

impl RouteSpec {
    pub fn new(name: &str) -> Self {
        RouteSpec {
            name: name.to_string(),
            enabled: true,
            mode: Mode::Passthrough,
            inputs: Vec::new(),
            outputs: Vec::new(),
            failover_timeout: DEFAULT_FAILOVER,
            signal_timeout: DEFAULT_SIGNAL_TIMEOUT,
            switch_back: false,
            profile: None,
            udp_coalesce: Coalesce::Auto,
            slot: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub kind: InputKind,
}

#[cfg(test)]
impl InputSpec {
    /// A unicast UDP input on a free loopback port (the engine's unit tests).
    pub(crate) fn udp_loopback(name: &str) -> InputSpec {
        InputSpec {
            name: name.into(),
            kind: InputKind::Udp {
                bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                multicast: None,
                interface: std::net::Ipv4Addr::UNSPECIFIED,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// UDP unicast (bind address) or multicast (group joined on `interface`).
    Udp {
        bind: SocketAddr,
        multicast: Option<Ipv4Addr>,
        interface: Ipv4Addr,
    },
    /// HTTP or HTTPS MPEG-TS pull; reconnects when the body ends.
    Http {
        url: String,
    },
    Srt(SrtSpec),
    /// The built-in test source (castpoint_sim::tsgen): a decodable H.264 +
    /// AAC stream with latency stamps at `bitrate` bit/s. The demo route
    /// uses it so the server is live with no external source.
    Generator {
        bitrate: u64,
    },
    /// RTMP ingest: publishers to `rtmp://HOST/{app}/{key}` feed this input.
    Rtmp(RtmpInput),
    /// RTSP pull from an IP camera (media::rtsp), remuxed to TS.
    Rtsp(crate::media::rtsp::RtspSpec),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtMode {
    Listener,
    Caller,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SrtSpec {
    pub mode: SrtMode,
    /// Listener: local bind. Caller: remote address.
    pub addr: SocketAddr,
    pub latency: Duration,
    pub passphrase: Option<String>,
    /// 0 (unset: 16 when a passphrase is set), 16, 24 or 32 bytes.
    pub pbkeylen: u8,
    /// Caller: the streamid sent. Listener input: the streamid required.
    pub streamid: Option<String>,
    /// Listener output: streamids allowed to connect (empty = any).
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    pub name: String,
    pub enabled: bool,
    pub kind: OutputKind,
    /// Bounded queue depth in chunks; overflow drops whole chunks.
    pub queue: usize,
    /// Original or transcoded stream (transcoding routes only).
    pub source: OutputSource,
}

/// Where an HLS output keeps its finished segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HlsStore {
    /// Files under `data_dir/hls/{path}/`: the process holds only the
    /// segment in progress, written out every `hls::SPILL` bytes (the
    /// kernel's page cache keeps recent files, and gives the memory back
    /// under pressure).
    #[default]
    Disk,
    /// The whole window in the process's memory (no disk writes).
    Memory,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    Udp {
        dest: SocketAddr,
        /// Multicast TTL (and unicast TTL) when set.
        ttl: Option<u32>,
    },
    /// HTTP-TS served at `/stream/{path}.ts` on the main HTTP port.
    Http {
        path: String,
    },
    /// Rotating TS files under `data_dir/recordings/{route}/`.
    Record {
        segment: Duration,
        keep: usize,
    },
    /// HLS served at `/hls/{path}/index.m3u8`.
    Hls {
        path: String,
        segment: Duration,
        window: usize,
        store: HlsStore,
    },
    Srt(SrtSpec),
    /// RTMP/RTMPS push through an ffmpeg child (`url` + `/` + `key`).
    Rtmp {
        url: String,
        /// The stream key: a secret (never logged, write-only in the API).
        key: Option<String>,
    },
}

impl OutputKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            OutputKind::Udp { .. } => "udp",
            OutputKind::Http { .. } => "http",
            OutputKind::Record { .. } => "record",
            OutputKind::Hls { .. } => "hls",
            OutputKind::Srt(s) if s.mode == SrtMode::Listener => "srt-listener",
            OutputKind::Srt(_) => "srt-caller",
            OutputKind::Rtmp { .. } => "rtmp",
        }
    }
}

impl InputKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            InputKind::Udp { .. } => "udp",
            InputKind::Http { .. } => "http",
            InputKind::Srt(s) if s.mode == SrtMode::Listener => "srt-listener",
            InputKind::Srt(_) => "srt-caller",
            InputKind::Generator { .. } => "generator",
            InputKind::Rtmp(_) => "rtmp",
            InputKind::Rtsp(_) => "rtsp",
        }
    }
}
