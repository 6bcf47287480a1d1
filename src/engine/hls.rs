//! HLS output: TS segments cut on keyframes (H.264 IDR / HEVC IRAP found by parsing the video PID's NAL units), each starting with PAT+PMT, served from memory with a sliding m3u8 playlist.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::IoStats;
use super::ts::{self, PsiTracker, TS};
use super::Engine;

struct Segment {
    seq: u64,
    secs: f64,
    data: Bytes,
}

#[derive(Default)]
pub(crate) struct HlsStream {
    segments: Mutex<VecDeque<Segment>>,
}

pub(crate) type HlsRegistry = Arc<RwLock<HashMap<String, Arc<HlsStream>>>>;

impl HlsStream {
    fn playlist(&self) -> Option<String> {
        let segs = self.segments.lock();
        let first = segs.front()?;
        let target = segs.iter().map(|s| s.secs).fold(1.0f64, f64::max).ceil() as u64;
        let mut m = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{}\n",
            first.seq
        );
        for s in segs.iter() {
            m.push_str(&format!("#EXTINF:{:.3},\n{}.ts\n", s.secs, s.seq));
        }
        Some(m)
    }

    fn segment(&self, seq: u64) -> Option<Bytes> {
        self.segments
            .lock()
            .iter()
            .find(|s| s.seq == seq)
            .map(|s| s.data.clone())
    }
}

/// Cuts the stream into segments; sans-IO so it can be tested directly.
pub(crate) struct Segmenter {
    psi: PsiTracker,
    pat: Option<[u8; TS]>,
    pmt: Option<[u8; TS]>,
    cur: BytesMut,
    started: Option<Instant>,
    target: Duration,
}

impl Segmenter {
    pub fn new(target: Duration) -> Self {
        Segmenter {
            psi: PsiTracker::default(),
            pat: None,
            pmt: None,
            cur: BytesMut::new(),
            started: None,
            target,
        }
    }

    fn remember_psi(&mut self, chunk: &[u8]) {
        for p in chunk.chunks_exact(TS) {
            if !ts::pusi(p) {
                continue;
            }
            let pid = ts::pid(p);
            let mut copy = [0u8; TS];
            copy.copy_from_slice(p);
            if pid == 0 {
                self.pat = Some(copy);
            } else if Some(pid) == self.psi.pmt_pid() {
                self.pmt = Some(copy);
            }
        }
    }

    fn header(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(1 << 20);
        if let (Some(pat), Some(pmt)) = (self.pat, self.pmt) {
            b.extend_from_slice(&pat);
            b.extend_from_slice(&pmt);
        }
        b
    }

    /// Feeds a chunk; returns a finished segment (duration, bytes) if one
    /// was cut.
    pub fn push(&mut self, chunk: &[u8], now: Instant) -> Option<(f64, Bytes)> {
        self.psi.observe(chunk);
        self.remember_psi(chunk);
        let cut = match self.psi.video {
            Some((pid, st)) => ts::keyframe_start(chunk, pid, st),
            // No video: cut on time at chunk boundaries.
            None => Some(0),
        };
        let Some(started) = self.started else {
            // Wait for the first keyframe (and PSI) to start segment 0.
            if let Some(off) = cut {
                if self.pat.is_some() && self.pmt.is_some() {
                    self.cur = self.header();
                    self.cur.extend_from_slice(&chunk[off..]);
                    self.started = Some(now);
                }
            }
            return None;
        };
        let elapsed = now.duration_since(started);
        // Cut at a keyframe once the target is reached; a stream without
        // keyframes is cut anyway at 3x the target so memory stays bounded.
        let at = match cut {
            Some(off) if elapsed >= self.target => Some(off),
            _ if elapsed >= self.target * 3 => Some(0),
            _ => None,
        };
        match at {
            Some(off) => {
                self.cur.extend_from_slice(&chunk[..off]);
                let fresh = self.header();
                let done = std::mem::replace(&mut self.cur, fresh).freeze();
                self.cur.extend_from_slice(&chunk[off..]);
                self.started = Some(now);
                Some((elapsed.as_secs_f64(), done))
            }
            None => {
                self.cur.extend_from_slice(chunk);
                None
            }
        }
    }
}

pub(crate) async fn run(
    mut rx: mpsc::Receiver<Bytes>,
    path: String,
    registry: HlsRegistry,
    segment: Duration,
    window: usize,
    stats: Arc<IoStats>,
    cancel: CancellationToken,
) {
    let stream = Arc::new(HlsStream::default());
    {
        let mut r = registry.write();
        if r.contains_key(&path) {
            stats.set_error(format!("/hls/{path}/ is already served"));
            return;
        }
        r.insert(path.clone(), stream.clone());
    }
    stats.set_up(None);
    let mut seg = Segmenter::new(segment);
    let mut seq = 0u64;
    loop {
        let c = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => c,
        };
        let Some(chunk) = c else { break };
        if let Some((secs, data)) = seg.push(&chunk, Instant::now()) {
            stats.add(data.len());
            let mut s = stream.segments.lock();
            s.push_back(Segment { seq, secs, data });
            seq += 1;
            while s.len() > window {
                s.pop_front();
            }
        }
    }
    let mut r = registry.write();
    if r.get(&path).is_some_and(|s| Arc::ptr_eq(s, &stream)) {
        r.remove(&path);
    }
}

/// `GET /hls/{path}/index.m3u8` and `GET /hls/{path}/{seq}.ts`.
pub(crate) async fn serve(
    State(e): State<Engine>,
    Path((path, file)): Path<(String, String)>,
) -> Response {
    let s = e.inner.hls.read().get(&path).cloned();
    let Some(s) = s else {
        return (StatusCode::NOT_FOUND, format!("no HLS stream {path:?}")).into_response();
    };
    if file == "index.m3u8" {
        return match s.playlist() {
            Some(p) => (
                [
                    (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                p,
            )
                .into_response(),
            // No complete segment yet: clients retry.
            None => (StatusCode::NOT_FOUND, "no segment yet").into_response(),
        };
    }
    let seq = file.strip_suffix(".ts").and_then(|n| n.parse::<u64>().ok());
    match seq.and_then(|n| s.segment(n)) {
        Some(b) => ([(header::CONTENT_TYPE, "video/mp2t")], b).into_response(),
        None => (StatusCode::NOT_FOUND, "no such segment").into_response(),
    }
}
