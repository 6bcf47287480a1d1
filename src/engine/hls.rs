//! HLS output: TS segments cut on keyframes (H.264 IDR / HEVC IRAP found by parsing the video PID's NAL units), each starting with PAT+PMT, timed by the video's DTS (media time, not arrival time), served from memory with a sliding m3u8 playlist that marks input switches as discontinuities.

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
use super::ts::{self, PsiCache, TS};
use super::Engine;

struct Segment {
    seq: u64,
    secs: f64,
    data: Bytes,
    /// Timestamps do not continue from the previous segment (input switch).
    discontinuity: bool,
    at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct Window {
    segments: VecDeque<Segment>,
    /// Discontinuities that have slid out of the window
    /// (EXT-X-DISCONTINUITY-SEQUENCE).
    disc_seq: u64,
    /// Largest rounded EXTINF so far: the target duration never shrinks
    /// between playlist reloads.
    target: u64,
}

#[derive(Default)]
pub(crate) struct HlsStream {
    window: Mutex<Window>,
}

pub(crate) type HlsRegistry = Arc<RwLock<HashMap<String, Arc<HlsStream>>>>;

impl HlsStream {
    fn playlist(&self) -> Option<String> {
        let w = self.window.lock();
        let first = w.segments.front()?;
        let mut m = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
            w.target, first.seq, w.disc_seq
        );
        for s in w.segments.iter() {
            if s.discontinuity {
                m.push_str("#EXT-X-DISCONTINUITY\n");
            }
            m.push_str(&format!(
                "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{:.3},\n{}.ts\n",
                s.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                s.secs,
                s.seq
            ));
        }
        Some(m)
    }

    fn push(&self, seg: Segment, window: usize, min_target: u64) {
        let mut w = self.window.lock();
        // RFC 8216: each EXTINF rounded to the nearest integer <= target.
        w.target = w.target.max(min_target).max(seg.secs.round() as u64).max(1);
        w.segments.push_back(seg);
        while w.segments.len() > window {
            if w.segments.pop_front().is_some_and(|s| s.discontinuity) {
                w.disc_seq += 1;
            }
        }
    }

    fn segment(&self, seq: u64) -> Option<Bytes> {
        self.window
            .lock()
            .segments
            .iter()
            .find(|s| s.seq == seq)
            .map(|s| s.data.clone())
    }
}

/// A finished segment.
pub(crate) struct Cut {
    /// Media duration (video DTS of the next segment's keyframe minus this
    /// one's), or arrival time for streams without video timestamps.
    pub secs: f64,
    pub data: Bytes,
    pub discontinuity: bool,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A video timestamp step larger than this (forward) or going back more
/// than `MAX_BACK` is an input switch to an unrelated clock, not B-frame
/// reordering or a short stall.
const MAX_FWD: i64 = 5 * 90_000;
const MAX_BACK: i64 = 90_000;

/// The segment in progress.
struct Open {
    arrived: Instant,
    at: chrono::DateTime<chrono::Utc>,
    /// DTS of the keyframe it starts with.
    dts: Option<u64>,
    discontinuity: bool,
}

/// Cuts the stream into segments; sans-IO so it can be tested directly.
pub(crate) struct Segmenter {
    psi: PsiCache,
    cur: BytesMut,
    open: Option<Open>,
    /// Latest video DTS and the last positive frame step (both 90 kHz).
    last_dts: Option<u64>,
    step: u64,
    /// The next segment follows a timestamp discontinuity.
    pending_disc: bool,
    target: Duration,
}

impl Segmenter {
    pub fn new(target: Duration) -> Self {
        Segmenter {
            psi: PsiCache::default(),
            cur: BytesMut::new(),
            open: None,
            last_dts: None,
            step: 0,
            pending_disc: false,
            target,
        }
    }

    fn header(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(1 << 20);
        if let Some(h) = self.psi.header() {
            b.extend_from_slice(&h);
        }
        b
    }

    /// Follows the video DTS through a chunk; returns the media end time of
    /// the segment in progress when the clock jumps (an input switch).
    fn track_dts(&mut self, chunk: &[u8], video_pid: u16) -> Option<Option<u64>> {
        let mut jumped = None;
        for p in chunk.chunks_exact(TS) {
            if ts::pid(p) != video_pid {
                continue;
            }
            let Some((_, dts)) = ts::pes_timestamps(p) else {
                continue;
            };
            if let Some(l) = self.last_dts {
                let d = ts::ts_delta(l, dts);
                if !(-MAX_BACK..=MAX_FWD).contains(&d) {
                    if jumped.is_none() {
                        jumped = Some(Some(l.wrapping_add(self.step) & ((1 << 33) - 1)));
                    }
                } else if d > 0 {
                    self.step = d as u64;
                }
            }
            self.last_dts = Some(dts);
        }
        jumped
    }

    fn finish(&mut self, end_dts: Option<u64>, now: Instant, tail: &[u8]) -> Option<Cut> {
        let open = self.open.take()?;
        self.cur.extend_from_slice(tail);
        let media = match (open.dts, end_dts) {
            (Some(a), Some(b)) if ts::ts_delta(a, b) > 0 => {
                Some(ts::ts_delta(a, b) as f64 / 90_000.0)
            }
            _ => None,
        };
        let secs = media.unwrap_or_else(|| now.duration_since(open.arrived).as_secs_f64());
        let fresh = self.header();
        Some(Cut {
            secs,
            data: std::mem::replace(&mut self.cur, fresh).freeze(),
            discontinuity: open.discontinuity,
            at: open.at,
        })
    }

    fn start(&mut self, chunk: &[u8], off: usize, dts: Option<u64>, now: Instant) {
        self.cur = self.header();
        self.cur.extend_from_slice(&chunk[off..]);
        self.open = Some(Open {
            arrived: now,
            at: chrono::Utc::now(),
            dts,
            discontinuity: std::mem::take(&mut self.pending_disc),
        });
    }

    /// Feeds a chunk; returns a finished segment if one was cut.
    pub fn push(&mut self, chunk: &[u8], now: Instant) -> Option<Cut> {
        self.psi.observe(chunk);
        let video = self.psi.psi.video;
        let mut done = None;
        if let Some((pid, _)) = video {
            if let Some(end) = self.track_dts(chunk, pid) {
                // The whole chunk is the new input's (chunks come from one
                // input): close the segment before it, start the next one at
                // the new input's first keyframe, marked discontinuous.
                done = self.finish(end, now, &[]);
                self.open = None;
                self.cur.clear();
                self.pending_disc = true;
            }
        }
        let cut = match video {
            Some((pid, st)) => ts::keyframe_start(chunk, pid, st).map(|off| {
                let dts = chunk
                    .get(off..off + TS)
                    .and_then(ts::pes_timestamps)
                    .map(|t| t.1);
                (off, dts)
            }),
            // No video: cut on arrival time at chunk boundaries.
            None => Some((0, None)),
        };
        let Some(open) = &self.open else {
            // Wait for a keyframe (and PSI) to start a segment.
            if let Some((off, dts)) = cut {
                if self.psi.header().is_some() {
                    self.start(chunk, off, dts, now);
                }
            }
            return done;
        };
        let arrived = now.duration_since(open.arrived);
        let media_reached = |dts: Option<u64>| match (open.dts, dts) {
            (Some(a), Some(b)) => ts::ts_delta(a, b) >= self.target.as_millis() as i64 * 90,
            _ => arrived >= self.target,
        };
        // Cut at a keyframe once the target is reached; a stream without
        // keyframes is cut anyway at 3x the target so memory stays bounded.
        match cut {
            Some((off, dts)) if media_reached(dts) => {
                let c = self.finish(dts, now, &chunk[..off]);
                self.start(chunk, off, dts, now);
                c
            }
            _ if arrived >= self.target * 3 => {
                let c = self.finish(None, now, &[]);
                self.start(chunk, 0, None, now);
                c
            }
            _ => {
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
    let min_target = segment.as_secs_f64().round() as u64;
    let mut seq = 0u64;
    loop {
        let c = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => c,
        };
        let Some(chunk) = c else { break };
        if let Some(c) = seg.push(&chunk, Instant::now()) {
            stats.add(c.data.len());
            let seg = Segment {
                seq,
                secs: c.secs,
                data: c.data,
                discontinuity: c.discontinuity,
                at: c.at,
            };
            stream.push(seg, window, min_target);
            seq += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    const V: u16 = 0x100;

    fn pkt(pid: u16, cc: u8, pusi: bool, payload: &[u8]) -> [u8; TS] {
        let mut p = [0xFFu8; TS];
        p[0] = ts::SYNC;
        p[1] = ((pid >> 8) as u8 & 0x1F) | if pusi { 0x40 } else { 0 };
        p[2] = pid as u8;
        p[3] = 0x10 | (cc & 0x0F);
        p[4..4 + payload.len()].copy_from_slice(payload);
        p
    }

    fn psi() -> Vec<u8> {
        let pat = [
            0u8, 0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0, 0, 0, 0,
        ];
        let pmt = [
            0u8, 0x02, 0xB0, 0x12, 0x00, 0x01, 0xC1, 0x00, 0x00, 0xE1, 0x00, 0xF0, 0x00, 0x1B,
            0xE1, 0x00, 0xF0, 0x00, 0, 0, 0, 0,
        ];
        [pkt(0, 0, true, &pat), pkt(0x1000, 0, true, &pmt)].concat()
    }

    /// One frame as a chunk: a PES with `dts` (PTS 2 frames later, as with
    /// B-frames), an IDR when `key`, else a non-IDR slice.
    fn frame(dts: u64, key: bool) -> Vec<u8> {
        let mut p = ts::tests::pes_pkt(V, 0, dts + 7200, Some(dts));
        if !key {
            // NAL type 1 (non-IDR slice) instead of 5.
            let i = p.iter().rposition(|&b| b == 0x65).expect("nal");
            p[i] = 0x41;
        }
        [p.to_vec(), pkt(V, 1, false, &[]).to_vec()].concat()
    }

    /// 25 fps, a keyframe every `gop` frames, starting at `dts0`.
    fn feed(s: &mut Segmenter, dts0: u64, frames: u64, gop: u64, cuts: &mut Vec<Cut>) {
        let t0 = Instant::now();
        for i in 0..frames {
            let mut chunk = if i % gop == 0 { psi() } else { Vec::new() };
            chunk.extend_from_slice(&frame(dts0 + i * 3600, i % gop == 0));
            // Arrival time deliberately unrelated to media time (a burst).
            if let Some(c) = s.push(&chunk, t0) {
                cuts.push(c);
            }
        }
    }

    #[test]
    fn durations_come_from_media_time_and_cuts_are_at_keyframes() {
        let mut s = Segmenter::new(Duration::from_secs(2));
        let mut cuts = Vec::new();
        // 1 s GOPs: cuts every 2 s of media even though it all arrives at once.
        feed(&mut s, 900_000, 25 * 7, 25, &mut cuts);
        assert_eq!(cuts.len(), 3);
        for c in &cuts {
            assert!((c.secs - 2.0).abs() < 1e-9, "{}", c.secs);
            assert!(!c.discontinuity);
            // PAT, PMT, then the IDR's PES.
            assert_eq!(ts::pid(&c.data[..]), 0);
            assert_eq!(ts::pid(&c.data[TS..]), 0x1000);
            let key = &c.data[2 * TS..3 * TS];
            assert_eq!(ts::keyframe_start(key, V, 0x1B), Some(0));
        }
    }

    #[test]
    fn a_clock_jump_closes_the_segment_and_marks_the_next_discontinuous() {
        let mut s = Segmenter::new(Duration::from_secs(2));
        let mut cuts = Vec::new();
        // 3.5 s of one input (a 2 s segment, then 1.5 s in progress) ...
        feed(&mut s, 900_000, 25 * 3 + 12, 25, &mut cuts);
        // ... then another input whose clock is far away, wrapping the
        // 33-bit counter on the way.
        feed(&mut s, (1 << 33) - 90_000, 25 * 5, 25, &mut cuts);
        assert_eq!(
            cuts.len(),
            4,
            "{:?}",
            cuts.iter().map(|c| c.secs).collect::<Vec<_>>()
        );
        assert!((cuts[0].secs - 2.0).abs() < 1e-9);
        // The interrupted segment ends one frame after its last DTS.
        assert!((cuts[1].secs - 1.48).abs() < 1e-9, "{}", cuts[1].secs);
        assert!(!cuts[1].discontinuity);
        assert!(cuts[2].discontinuity);
        assert!((cuts[2].secs - 2.0).abs() < 1e-9, "{}", cuts[2].secs);
        assert!(!cuts[3].discontinuity);
    }

    #[test]
    fn playlist_has_version_sequences_and_discontinuity_tags() {
        let st = HlsStream::default();
        let at = chrono::Utc::now();
        for (seq, d) in [(0u64, false), (1, true), (2, false), (3, false)] {
            let seg = Segment {
                seq,
                secs: if seq == 2 { 2.6 } else { 2.0 },
                data: Bytes::new(),
                discontinuity: d,
                at,
            };
            st.push(seg, 2, 2);
        }
        let m = st.playlist().expect("playlist");
        assert!(
            m.starts_with("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n"),
            "{m}"
        );
        assert!(m.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{m}");
        // The discontinuity of segment 1 slid out of the window.
        assert!(m.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{m}");
        assert!(!m.contains("#EXT-X-DISCONTINUITY\n"), "{m}");
        assert!(m.contains("#EXTINF:2.600,\n2.ts\n"), "{m}");
    }
}
