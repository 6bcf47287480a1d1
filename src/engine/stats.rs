//! The serializable snapshots of the router the API, the point bridge and tests read: every input's and output's counters (kept in `crate::mpegts::stats`, where the media adapters write them too), with the ffmpeg children the engine runs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::media::ffmpeg::child::{ChildSnapshot, ChildStats};
/// The counters live in the layer the media adapters share; these paths
/// stay for the engine's own modules and the API.
pub use crate::mpegts::stats::{IoStats, SrtConnStats};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IoSnapshot {
    pub name: String,
    pub kind: String,
    pub enabled: bool,
    pub up: bool,
    pub error: Option<String>,
    pub local: Option<SocketAddr>,
    pub bytes: u64,
    pub packets: u64,
    pub bitrate_bps: u64,
    pub cc_errors: u64,
    pub dropped_chunks: u64,
    pub dropped_packets: u64,
    pub frames_lost: u64,
    pub rejected: u64,
    pub clients: u64,
    /// Sends the OS refused (not counted in `bytes`).
    pub send_errors: u64,
    pub last_send_error: Option<String>,
    pub srt: Vec<SrtConnStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ffmpeg: Option<ChildSnapshot>,
    pub peer: Option<SocketAddr>,
}

/// The route-level settings a route runs with (its own keys, else
/// `[route_defaults]`'s, else the built-in ones). Kept typed and `Copy`,
/// since every snapshot carries them (four times a second for every route
/// in the point bridge); serialized as a route document writes them
/// ("500ms", "auto").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSettings {
    pub failover_timeout: std::time::Duration,
    pub signal_timeout: std::time::Duration,
    pub switch_back: bool,
    pub udp_coalesce: super::coalesce::Coalesce,
}

impl RouteSettings {
    pub fn of(spec: &super::spec::RouteSpec) -> RouteSettings {
        RouteSettings {
            failover_timeout: spec.failover_timeout,
            signal_timeout: spec.signal_timeout,
            switch_back: spec.switch_back,
            udp_coalesce: spec.udp_coalesce,
        }
    }
}

impl Serialize for RouteSettings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use super::coalesce::Coalesce;
        use crate::section::format_duration;
        use serde::ser::SerializeStruct;
        let coalesce = match self.udp_coalesce {
            Coalesce::Auto => "auto".to_string(),
            Coalesce::Off => "off".to_string(),
            Coalesce::Hold(d) => format_duration(d),
        };
        let mut m = s.serialize_struct("RouteSettings", 4)?;
        m.serialize_field("failover_timeout", &format_duration(self.failover_timeout))?;
        m.serialize_field("signal_timeout", &format_duration(self.signal_timeout))?;
        m.serialize_field("switch_back", &self.switch_back)?;
        m.serialize_field("udp_coalesce", &coalesce)?;
        m.end()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteSnapshot {
    pub name: String,
    pub enabled: bool,
    /// Index of the input being forwarded (None: no signal).
    pub active_input: Option<usize>,
    /// Input Select forcing (None = automatic failover).
    pub forced_input: Option<usize>,
    pub stream_enabled: bool,
    pub switches: u64,
    pub video_pid: Option<u16>,
    /// Video frames damaged by continuity gaps of the forwarded input.
    pub input_frames_lost: u64,
    pub inputs: Vec<IoSnapshot>,
    pub outputs: Vec<IoSnapshot>,
    /// The route's transcoder while transcoding is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcode: Option<crate::media::ffmpeg::TranscodeSnapshot>,
    /// Answered by the route API as the document's `effective` object,
    /// not among the live counters.
    #[serde(skip)]
    pub settings: RouteSettings,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct EngineSnapshot {
    pub routes: Vec<RouteSnapshot>,
    pub primary: Option<String>,
}

impl EngineSnapshot {
    pub fn route(&self, name: &str) -> Option<&RouteSnapshot> {
        self.routes.iter().find(|r| r.name == name)
    }
}

impl IoSnapshot {
    /// What `io` reads now, for the input or output `name` of type `kind`;
    /// `ffmpeg` is the child behind an RTMP push output (the engine keeps
    /// it beside the output's counters: `media::ffmpeg` fills it).
    pub fn of(
        io: &IoStats,
        name: &str,
        kind: &str,
        enabled: bool,
        ffmpeg: Option<&ChildStats>,
    ) -> IoSnapshot {
        IoSnapshot {
            name: name.to_string(),
            kind: kind.to_string(),
            enabled,
            up: io.up.load(Relaxed),
            error: io.error.lock().clone(),
            local: *io.local.lock(),
            bytes: io.bytes.load(Relaxed),
            packets: io.packets.load(Relaxed),
            bitrate_bps: io.bitrate_bps.load(Relaxed),
            cc_errors: io.cc_errors.load(Relaxed),
            dropped_chunks: io.dropped_chunks.load(Relaxed),
            dropped_packets: io.dropped_packets.load(Relaxed),
            frames_lost: io.frames_lost.load(Relaxed),
            rejected: io.rejected.load(Relaxed),
            clients: io.clients.load(Relaxed),
            send_errors: io.send_errors.load(Relaxed),
            last_send_error: io.last_send_error.lock().clone(),
            srt: io.srt.lock().clone(),
            ffmpeg: ffmpeg.map(ChildStats::snapshot),
            peer: *io.peer.lock(),
        }
    }
}
