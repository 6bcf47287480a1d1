//! Per-input and per-output counters (lock-free atomics written by the data plane) and the serializable snapshots the API, the point bridge and tests read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;

/// Counters of one input or output. The data plane only does relaxed
/// atomic adds; the once-a-second sampler derives bit rates.
#[derive(Default, Debug)]
pub struct IoStats {
    pub bytes: AtomicU64,
    pub packets: AtomicU64,
    pub cc_errors: AtomicU64,
    /// Whole chunks (and the TS packets in them) a slow consumer lost.
    pub dropped_chunks: AtomicU64,
    pub dropped_packets: AtomicU64,
    /// Video frames lost to drops (output) or continuity gaps (input).
    pub frames_lost: AtomicU64,
    /// Peers refused after the handshake (SRT listeners: wrong key length).
    pub rejected: AtomicU64,
    /// Connected clients (HTTP-TS viewers, SRT callers on a listener) or
    /// 1 for a connected SRT caller / sending UDP socket.
    pub clients: AtomicU64,
    pub bitrate_bps: AtomicU64,
    last_bytes: AtomicU64,
    /// Set once the socket is bound/connected; cleared on failure.
    pub up: AtomicBool,
    /// Last error (bind failure, connection refused, ...).
    pub error: Mutex<Option<String>>,
    /// Bound local address (inputs and listeners bound to port 0).
    pub local: Mutex<Option<SocketAddr>>,
    /// SRT statistics per connection (empty for other protocols).
    pub srt: Mutex<Vec<SrtConnStats>>,
    /// The ffmpeg child of an RTMP push output.
    pub ffmpeg: Mutex<Option<std::sync::Arc<crate::media::ffmpeg::child::ChildStats>>>,
    /// The connected publisher (RTMP ingest).
    pub peer: Mutex<Option<SocketAddr>>,
}

impl IoStats {
    #[inline]
    pub fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.packets
            .fetch_add((bytes / super::ts::TS) as u64, Relaxed);
    }

    pub fn dropped(&self, bytes: usize) {
        self.dropped_chunks.fetch_add(1, Relaxed);
        self.dropped_packets
            .fetch_add((bytes / super::ts::TS) as u64, Relaxed);
    }

    pub fn set_error(&self, e: impl Into<String>) {
        self.up.store(false, Relaxed);
        *self.error.lock() = Some(e.into());
    }

    pub fn set_up(&self, local: Option<SocketAddr>) {
        self.up.store(true, Relaxed);
        *self.error.lock() = None;
        if local.is_some() {
            *self.local.lock() = local;
        }
    }

    /// Recomputes the bit rate over `secs` seconds since the last call.
    pub fn sample(&self, secs: f64) {
        let b = self.bytes.load(Relaxed);
        let last = self.last_bytes.swap(b, Relaxed);
        if secs > 0.0 {
            let bps = (b.saturating_sub(last) as f64 * 8.0 / secs) as u64;
            self.bitrate_bps.store(bps, Relaxed);
        }
    }

    pub fn snapshot(&self, name: &str, kind: &str, enabled: bool) -> IoSnapshot {
        IoSnapshot {
            name: name.to_string(),
            kind: kind.to_string(),
            enabled,
            up: self.up.load(Relaxed),
            error: self.error.lock().clone(),
            local: *self.local.lock(),
            bytes: self.bytes.load(Relaxed),
            packets: self.packets.load(Relaxed),
            bitrate_bps: self.bitrate_bps.load(Relaxed),
            cc_errors: self.cc_errors.load(Relaxed),
            dropped_chunks: self.dropped_chunks.load(Relaxed),
            dropped_packets: self.dropped_packets.load(Relaxed),
            frames_lost: self.frames_lost.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            clients: self.clients.load(Relaxed),
            srt: self.srt.lock().clone(),
            ffmpeg: self.ffmpeg.lock().as_ref().map(|c| c.snapshot()),
            peer: *self.peer.lock(),
        }
    }
}

/// What libsrt's `srt_bistats` reports for one connection.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SrtConnStats {
    pub peer: Option<SocketAddr>,
    pub streamid: Option<String>,
    /// AES key length in bytes the connection uses (0 = unencrypted).
    pub pbkeylen: i32,
    pub rtt_ms: f64,
    /// Estimated link bandwidth.
    pub bandwidth_mbps: f64,
    pub send_rate_mbps: f64,
    pub recv_rate_mbps: f64,
    pub pkt_sent: i64,
    pub pkt_recv: i64,
    pub pkt_snd_loss: i32,
    pub pkt_rcv_loss: i32,
    pub pkt_retrans: i32,
    pub pkt_rcv_drop: i32,
    pub pkt_snd_drop: i32,
    pub flight_size: i32,
    pub snd_buf_ms: i32,
    pub rcv_buf_ms: i32,
}

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
    pub srt: Vec<SrtConnStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ffmpeg: Option<crate::media::ffmpeg::child::ChildSnapshot>,
    pub peer: Option<SocketAddr>,
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
