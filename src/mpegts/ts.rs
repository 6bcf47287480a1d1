//! MPEG-TS packet helpers: realignment to 188-byte packets, continuity-counter checking and rewriting, PAT/PMT parsing to find the video PID, and frame-loss accounting.
//!
//! Every function here reads untrusted bytes: all indexing is bounds-checked
//! and the parsers are fuzzed (see the proptests at the bottom).

use bytes::{Buf, BytesMut};

pub const TS: usize = 188;
pub const SYNC: u8 = 0x47;
const NULL_PID: u16 = 0x1FFF;
/// Largest buffer the aligner keeps while hunting for sync: a garbage stream
/// must not grow memory without bound.
const MAX_PENDING: usize = 64 * 1024;

/// PID of one packet (caller guarantees `p.len() >= 4`).
#[inline]
pub fn pid(p: &[u8]) -> u16 {
    (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2])
}

#[inline]
pub fn pusi(p: &[u8]) -> bool {
    p[1] & 0x40 != 0
}

#[inline]
fn has_payload(p: &[u8]) -> bool {
    p[3] & 0x10 != 0
}

/// True when `buf` is a whole number of packets each starting with 0x47
/// (the common case for UDP: 7 packets per datagram), so it can be used as
/// is without copying.
pub fn is_aligned(buf: &[u8]) -> bool {
    !buf.is_empty() && buf.len().is_multiple_of(TS) && buf.chunks_exact(TS).all(|p| p[0] == SYNC)
}

/// Turns an arbitrary byte stream (HTTP body, SRT messages, odd UDP
/// datagrams) into chunks of whole, sync-checked 188-byte packets.
#[derive(Default)]
pub struct Aligner {
    pending: BytesMut,
    /// Bytes thrown away while searching for sync (for diagnostics).
    pub skipped: u64,
}

impl Aligner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the whole packets now available (possibly empty).
    pub fn push(&mut self, data: &[u8]) -> BytesMut {
        if self.pending.is_empty() && is_aligned(data) {
            return BytesMut::from(data);
        }
        self.pending.extend_from_slice(data);
        let mut out = BytesMut::new();
        loop {
            // Find sync: a 0x47 that is followed by another 0x47 one packet
            // later (or that is the last packet we have).
            let mut start = None;
            let p = &self.pending[..];
            for i in 0..p.len() {
                if p[i] != SYNC {
                    continue;
                }
                match p.get(i + TS) {
                    Some(&SYNC) => {
                        start = Some(i);
                        break;
                    }
                    Some(_) => continue,
                    None => {
                        // Nothing after this packet to confirm it with:
                        // take it (the next push re-checks sync) or, if it
                        // is incomplete, keep it for later.
                        start = Some(i);
                        break;
                    }
                }
            }
            match start {
                None => {
                    self.skipped += self.pending.len() as u64;
                    self.pending.clear();
                    break;
                }
                Some(i) => {
                    if i > 0 {
                        self.skipped += i as u64;
                        self.pending.advance(i);
                    }
                }
            }
            // Take every consecutive synced packet.
            let mut n = 0;
            while self.pending.len() >= (n + 1) * TS && self.pending[n * TS] == SYNC {
                n += 1;
            }
            if n == 0 {
                break;
            }
            out.extend_from_slice(&self.pending[..n * TS]);
            self.pending.advance(n * TS);
            if self.pending.len() < TS {
                break;
            }
        }
        if self.pending.len() > MAX_PENDING {
            self.skipped += self.pending.len() as u64;
            self.pending.clear();
        }
        out
    }
}

/// Counts continuity-counter errors per PID on one input.
pub struct CcChecker {
    last: Box<[u8; 8192]>,
}

const CC_UNSEEN: u8 = 0xFF;

impl Default for CcChecker {
    fn default() -> Self {
        CcChecker {
            last: Box::new([CC_UNSEEN; 8192]),
        }
    }
}

impl CcChecker {
    /// Returns the number of discontinuities in `chunk` (whole packets).
    pub fn check(&mut self, chunk: &[u8]) -> u64 {
        let mut errs = 0;
        for p in chunk.chunks_exact(TS) {
            let pid = pid(p);
            if pid == NULL_PID || !has_payload(p) {
                continue;
            }
            let cc = p[3] & 0x0F;
            let last = self.last[usize::from(pid)];
            // A discontinuity_indicator announces a legitimate jump.
            let disc = p[3] & 0x20 != 0 && p[4] > 0 && p.get(5).is_some_and(|f| f & 0x80 != 0);
            if last != CC_UNSEEN && cc != (last + 1) & 0x0F && cc != last && !disc {
                errs += 1;
            }
            self.last[usize::from(pid)] = cc;
        }
        errs
    }

    pub fn reset(&mut self) {
        self.last.fill(CC_UNSEEN);
    }
}

/// Rewrites continuity counters on the route's output so that a switch of
/// input is invisible to downstream decoders: within one input the offset
/// per PID stays fixed (so the source's own CC behaviour, duplicates and
/// gaps, passes through), and at a switch each PID continues from the last
/// counter the downstream saw.
#[derive(Clone)]
pub struct CcRewriter {
    /// Per PID: bit 7 = seen on output; low nibble = last output CC.
    last_out: Box<[u8; 8192]>,
    offset: Box<[u8; 8192]>,
    /// Per PID: needs a new offset (set for all PIDs at a switch).
    resync: Box<[bool; 8192]>,
}

impl Default for CcRewriter {
    fn default() -> Self {
        CcRewriter {
            last_out: Box::new([0; 8192]),
            offset: Box::new([0; 8192]),
            resync: Box::new([false; 8192]),
        }
    }
}

impl CcRewriter {
    /// Call when the route switches input.
    pub fn switched(&mut self) {
        self.resync.fill(true);
    }

    /// Rewrites CCs in place (`chunk` is whole packets).
    pub fn rewrite(&mut self, chunk: &mut [u8]) {
        for p in chunk.chunks_exact_mut(TS) {
            let pid = usize::from(pid(p));
            if pid == usize::from(NULL_PID) {
                continue;
            }
            let cc = p[3] & 0x0F;
            let seen = self.last_out[pid] & 0x80 != 0;
            if self.resync[pid] {
                if !has_payload(p) {
                    // Keep the last counter for adaptation-only packets.
                    if seen {
                        let out = self.last_out[pid] & 0x0F;
                        p[3] = (p[3] & 0xF0) | out;
                    }
                    continue;
                }
                self.resync[pid] = false;
                self.offset[pid] = if seen {
                    ((self.last_out[pid] & 0x0F) + 1).wrapping_sub(cc) & 0x0F
                } else {
                    0
                };
            }
            let out = (cc + self.offset[pid]) & 0x0F;
            p[3] = (p[3] & 0xF0) | out;
            self.last_out[pid] = 0x80 | out;
        }
    }
}

/// Stream types that carry video in a PMT (MPEG-1/2, MPEG-4, H.264, HEVC).
fn is_video_stream_type(t: u8) -> bool {
    matches!(t, 0x01 | 0x02 | 0x10 | 0x1B | 0x24)
}

/// Learns the video PID (and its stream type) from PAT and PMT.
#[derive(Default, Clone)]
pub struct PsiTracker {
    pmt_pid: Option<u16>,
    pub video: Option<(u16, u8)>,
}

impl PsiTracker {
    pub fn pmt_pid(&self) -> Option<u16> {
        self.pmt_pid
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        for p in chunk.chunks_exact(TS) {
            let pid = pid(p);
            if !pusi(p) {
                continue;
            }
            if pid == 0 {
                if let Some(s) = section(p) {
                    self.pmt_pid = parse_pat(s);
                }
            } else if Some(pid) == self.pmt_pid {
                if let Some(s) = section(p) {
                    if let Some(v) = parse_pmt(s) {
                        self.video = Some(v);
                    }
                }
            }
        }
    }
}

/// The latest single-packet PAT and PMT of a stream, so that a consumer
/// joining mid-stream (an HTTP-TS viewer, an HLS segment) can be started
/// with them: a decoder needs both before it can use anything else.
/// Sections spanning several packets are not cached (rare for one program).
#[derive(Default, Clone)]
pub struct PsiCache {
    pub psi: PsiTracker,
    pat: Option<[u8; TS]>,
    pmt: Option<[u8; TS]>,
}

impl PsiCache {
    pub fn observe(&mut self, chunk: &[u8]) {
        self.psi.observe(chunk);
        for p in chunk.chunks_exact(TS) {
            if !pusi(p) {
                continue;
            }
            let pid = pid(p);
            let slot = if pid == 0 {
                &mut self.pat
            } else if Some(pid) == self.psi.pmt_pid {
                &mut self.pmt
            } else {
                continue;
            };
            let mut copy = [0u8; TS];
            copy.copy_from_slice(p);
            *slot = Some(copy);
        }
    }

    /// PAT then PMT, as last seen. Their continuity counters are the ones
    /// the stream used, so the next PAT/PMT a joiner gets continues them.
    pub fn header(&self) -> Option<[u8; 2 * TS]> {
        let (pat, pmt) = (self.pat?, self.pmt?);
        let mut h = [0u8; 2 * TS];
        h[..TS].copy_from_slice(&pat);
        h[TS..].copy_from_slice(&pmt);
        Some(h)
    }
}

/// The PSI section that starts in this packet (payload after pointer field).
pub fn section(p: &[u8]) -> Option<&[u8]> {
    let payload = payload(p)?;
    let ptr = usize::from(*payload.first()?);
    payload.get(1 + ptr..)
}

/// The payload bytes of one packet, skipping the adaptation field.
pub fn payload(p: &[u8]) -> Option<&[u8]> {
    if p.len() < TS || p[0] != SYNC || !has_payload(p) {
        return None;
    }
    let mut off = 4;
    if p[3] & 0x20 != 0 {
        off += 1 + usize::from(p[4]);
    }
    p.get(off..TS)
}

/// First program's PMT PID from a PAT section.
fn parse_pat(s: &[u8]) -> Option<u16> {
    if *s.first()? != 0x00 {
        return None;
    }
    let len = usize::from(u16::from(*s.get(1)? & 0x0F) << 8 | u16::from(*s.get(2)?));
    let end = (3 + len).saturating_sub(4).min(s.len());
    let mut i = 8;
    while i + 4 <= end {
        let program = u16::from(s[i]) << 8 | u16::from(s[i + 1]);
        let pid = u16::from(s[i + 2] & 0x1F) << 8 | u16::from(s[i + 3]);
        if program != 0 {
            return Some(pid);
        }
        i += 4;
    }
    None
}

/// First video elementary stream (PID, stream type) of a PMT section.
fn parse_pmt(s: &[u8]) -> Option<(u16, u8)> {
    if *s.first()? != 0x02 {
        return None;
    }
    let len = usize::from(u16::from(*s.get(1)? & 0x0F) << 8 | u16::from(*s.get(2)?));
    let end = (3 + len).saturating_sub(4).min(s.len());
    let pil = usize::from(u16::from(*s.get(10)? & 0x0F) << 8 | u16::from(*s.get(11)?));
    let mut i = 12 + pil;
    while i + 5 <= end {
        let st = s[i];
        let pid = u16::from(s[i + 1] & 0x1F) << 8 | u16::from(s[i + 2]);
        let esil = usize::from(u16::from(s[i + 3] & 0x0F) << 8 | u16::from(s[i + 4]));
        if is_video_stream_type(st) {
            return Some((pid, st));
        }
        i += 5 + esil;
    }
    None
}

/// Counts video frames lost: a frame starts at each payload_unit_start on the
/// video PID, so a CC gap or a dropped chunk that touches a frame loses that
/// frame (counted once even if several chunks of it are lost).
#[derive(Default)]
pub struct FrameLoss {
    /// The frame in progress has already been counted as lost.
    current_lost: bool,
}

impl FrameLoss {
    /// Accounts for a chunk that was lost (dropped) on the way to a consumer.
    /// Returns the number of frames newly lost.
    pub fn dropped(&mut self, chunk: &[u8], video_pid: u16) -> u64 {
        let mut n = 0;
        for p in chunk.chunks_exact(TS) {
            if pid(p) != video_pid || !has_payload(p) {
                continue;
            }
            if pusi(p) {
                // A new frame starts inside what was lost.
                n += 1;
                self.current_lost = true;
            } else if !self.current_lost {
                n += 1;
                self.current_lost = true;
            }
        }
        n
    }

    /// Accounts for a chunk that was delivered.
    pub fn delivered(&mut self, chunk: &[u8], video_pid: u16) {
        for p in chunk.chunks_exact(TS) {
            if pid(p) == video_pid && pusi(p) {
                self.current_lost = false;
            }
        }
    }
}

/// Counts frames damaged by continuity gaps on the video PID of an input.
#[derive(Default)]
pub struct VideoGapCounter {
    last_cc: Option<u8>,
    current_lost: bool,
}

impl VideoGapCounter {
    pub fn observe(&mut self, chunk: &[u8], video_pid: u16) -> u64 {
        let mut n = 0;
        for p in chunk.chunks_exact(TS) {
            if pid(p) != video_pid || !has_payload(p) {
                continue;
            }
            let cc = p[3] & 0x0F;
            if pusi(p) {
                self.current_lost = false;
            }
            if let Some(l) = self.last_cc {
                if cc != (l + 1) & 0x0F && cc != l && !self.current_lost {
                    n += 1;
                    self.current_lost = true;
                }
            }
            self.last_cc = Some(cc);
        }
        n
    }
}

/// Finds whether a chunk starts an H.264 IDR access unit on `video_pid`
/// (NAL type 5) or an HEVC IRAP (types 16..=21): the HLS segmenter cuts there.
/// Returns the byte offset of the packet that starts the keyframe's PES.
pub fn keyframe_start(chunk: &[u8], video_pid: u16, stream_type: u8) -> Option<usize> {
    for (i, p) in chunk.chunks_exact(TS).enumerate() {
        if pid(p) != video_pid || !pusi(p) {
            continue;
        }
        let Some(pl) = payload(p) else { continue };
        // PES header: 00 00 01 sid len(2) flags(2) hdr_len
        if pl.len() < 9 || pl[0..3] != [0, 0, 1] {
            continue;
        }
        let start = 9 + usize::from(pl[8]);
        let Some(es) = pl.get(start..) else { continue };
        if has_keyframe_nal(es, stream_type) {
            return Some(i * TS);
        }
    }
    None
}

/// PTS and DTS (90 kHz, 33 bits) of the PES header that starts in packet
/// `p`, if it has them (DTS defaults to the PTS when absent).
pub fn pes_timestamps(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() < 4 || !pusi(p) {
        return None;
    }
    let pl = payload(p)?;
    if pl.get(0..3)? != [0, 0, 1] {
        return None;
    }
    let flags = *pl.get(7)? >> 6;
    let ts = |at: usize| -> Option<u64> {
        let b = pl.get(at..at + 5)?;
        // Each of the three parts is followed by a marker bit.
        if b[0] & 1 == 0 || b[2] & 1 == 0 || b[4] & 1 == 0 {
            return None;
        }
        Some(
            (u64::from(b[0] >> 1) & 0x07) << 30
                | u64::from(b[1]) << 22
                | u64::from(b[2] >> 1) << 15
                | u64::from(b[3]) << 7
                | u64::from(b[4] >> 1),
        )
    };
    match flags {
        0b10 => ts(9).map(|pts| (pts, pts)),
        0b11 => Some((ts(9)?, ts(14)?)),
        _ => None,
    }
}

/// `b - a` on the 33-bit 90 kHz clock, as a signed difference (wrap-safe).
pub fn ts_delta(a: u64, b: u64) -> i64 {
    const WRAP: i64 = 1 << 33;
    let d = (b as i64 - a as i64).rem_euclid(WRAP);
    if d >= WRAP / 2 {
        d - WRAP
    } else {
        d
    }
}

/// Scans an elementary-stream fragment for NAL start codes.
fn has_keyframe_nal(es: &[u8], stream_type: u8) -> bool {
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            let h = es[i + 3];
            let key = match stream_type {
                0x1B => h & 0x1F == 5,
                0x24 => (16..=21).contains(&((h >> 1) & 0x3F)),
                _ => false,
            };
            if key {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(pid: u16, cc: u8, pusi: bool) -> [u8; TS] {
        let mut p = [0xFFu8; TS];
        p[0] = SYNC;
        p[1] = ((pid >> 8) as u8 & 0x1F) | if pusi { 0x40 } else { 0 };
        p[2] = pid as u8;
        p[3] = 0x10 | (cc & 0x0F);
        p
    }

    #[test]
    fn aligner_finds_sync_after_garbage_and_split_reads() {
        let mut stream = vec![1u8, 2, 3, 0x47, 9];
        for i in 0..10 {
            stream.extend_from_slice(&pkt(100, i, false));
        }
        let mut a = Aligner::new();
        let mut got = Vec::new();
        for part in stream.chunks(50) {
            got.extend_from_slice(&a.push(part));
        }
        assert_eq!(got.len(), 10 * TS);
        assert!(is_aligned(&got));
        assert_eq!(a.skipped, 5);
    }

    #[test]
    fn cc_checker_counts_gaps_not_duplicates() {
        let mut c = CcChecker::default();
        let mut buf = Vec::new();
        for cc in [0u8, 1, 1, 2, 5, 6] {
            buf.extend_from_slice(&pkt(256, cc, false));
        }
        assert_eq!(c.check(&buf), 1);
    }

    #[test]
    fn rewriter_makes_a_switch_continuous() {
        let mut r = CcRewriter::default();
        let mut chk = CcChecker::default();
        let mut a: Vec<u8> = (0..5).flat_map(|cc| pkt(256, cc, false)).collect();
        r.rewrite(&mut a);
        assert_eq!(chk.check(&a), 0);
        r.switched();
        let mut b: Vec<u8> = (9..14).flat_map(|cc| pkt(256, cc, false)).collect();
        r.rewrite(&mut b);
        assert_eq!(chk.check(&b), 0);
        assert_eq!(b[3] & 0x0F, 5);
    }

    #[test]
    fn psi_finds_h264_video_pid() {
        // PAT: program 1 -> PMT PID 0x1000
        let mut pat = pkt(0, 0, true);
        let sec = [
            0x00, 0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0, 0, 0,
            0,
        ];
        pat[4..4 + sec.len()].copy_from_slice(&sec);
        let mut pmt = pkt(0x1000, 0, true);
        let sec = [
            0x00, 0x02, 0xB0, 0x17, 0x00, 0x01, 0xC1, 0x00, 0x00, 0xE1, 0x00, 0xF0, 0x00, 0x0F,
            0xE1, 0x01, 0xF0, 0x00, 0x1B, 0xE1, 0x00, 0xF0, 0x00, 0, 0, 0, 0,
        ];
        pmt[4..4 + sec.len()].copy_from_slice(&sec);
        let mut t = PsiTracker::default();
        t.observe(&pat);
        t.observe(&pmt);
        assert_eq!(t.video, Some((0x100, 0x1B)));
    }

    #[test]
    fn frame_loss_counts_each_frame_once() {
        let mut f = FrameLoss::default();
        let chunk: Vec<u8> = [pkt(256, 0, true), pkt(256, 1, false)].concat();
        assert_eq!(f.dropped(&chunk, 256), 1);
        let cont: Vec<u8> = [pkt(256, 2, false)].concat();
        assert_eq!(f.dropped(&cont, 256), 0);
        f.delivered(&pkt(256, 3, true), 256);
        assert_eq!(f.dropped(&cont, 256), 1);
    }

    /// A video packet starting a PES with the given PTS (and DTS).
    pub(crate) fn pes_pkt(pid: u16, cc: u8, pts: u64, dts: Option<u64>) -> [u8; TS] {
        let mut p = pkt(pid, cc, true);
        let enc = |prefix: u8, t: u64| {
            [
                (prefix << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1,
                (t >> 22) as u8,
                (((t >> 15) as u8) << 1) | 1,
                (t >> 7) as u8,
                ((t as u8) << 1) | 1,
            ]
        };
        let mut h = vec![0, 0, 1, 0xE0, 0, 0, 0x80];
        match dts {
            None => {
                h.extend_from_slice(&[0x80, 5]);
                h.extend_from_slice(&enc(0b0010, pts));
            }
            Some(d) => {
                h.extend_from_slice(&[0xC0, 10]);
                h.extend_from_slice(&enc(0b0011, pts));
                h.extend_from_slice(&enc(0b0001, d));
            }
        }
        h.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        p[4..4 + h.len()].copy_from_slice(&h);
        p
    }

    #[test]
    fn pes_timestamps_round_trip_and_wrap() {
        let big = (1u64 << 33) - 5;
        assert_eq!(
            pes_timestamps(&pes_pkt(256, 0, 123_456, None)),
            Some((123_456, 123_456))
        );
        assert_eq!(
            pes_timestamps(&pes_pkt(256, 0, big, Some(big - 3600))),
            Some((big, big - 3600))
        );
        assert_eq!(pes_timestamps(&pkt(256, 0, true)), None);
        assert_eq!(ts_delta(big, 10), 15);
        assert_eq!(ts_delta(10, big), -15);
        assert_eq!(ts_delta(0, 90_000), 90_000);
    }

    proptest! {
        #[test]
        fn aligner_never_panics_and_emits_whole_packets(data in proptest::collection::vec(any::<u8>(), 0..3000), cut in 1usize..500) {
            let mut a = Aligner::new();
            for part in data.chunks(cut) {
                let out = a.push(part);
                prop_assert!(out.is_empty() || is_aligned(&out));
            }
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..(TS * 4))) {
            let mut t = PsiTracker::default();
            let n = data.len() / TS * TS;
            let mut chunk = data[..n].to_vec();
            for p in chunk.chunks_exact_mut(TS) { p[0] = SYNC; }
            t.observe(&chunk);
            let _ = keyframe_start(&chunk, 256, 0x1B);
            let _ = keyframe_start(&chunk, 256, 0x24);
            let _ = CcChecker::default().check(&chunk);
            let _ = FrameLoss::default().dropped(&chunk, 256);
            let _ = VideoGapCounter::default().observe(&chunk, 256);
            for p in chunk.chunks_exact(TS) {
                let _ = pes_timestamps(p);
            }
            let mut pc = PsiCache::default();
            pc.observe(&chunk);
            let _ = pc.header();
            CcRewriter::default().rewrite(&mut chunk);
            let _ = section(&data);
            let _ = payload(&data);
        }

        #[test]
        fn rewriter_output_is_continuous_across_switches(ccs in proptest::collection::vec(0u8..16, 1..40), switch_at in 0usize..40) {
            // A continuous source whose start CC is random, switched to
            // another continuous source: the output never has a gap.
            let mut r = CcRewriter::default();
            let mut chk = CcChecker::default();
            let start = ccs[0];
            for i in 0..ccs.len() {
                if i == switch_at { r.switched(); }
                let base = if i >= switch_at { ccs[ccs.len() - 1] } else { start };
                let mut p = pkt(300, base.wrapping_add(i as u8) & 0x0F, false);
                r.rewrite(&mut p);
                prop_assert_eq!(chk.check(&p), 0);
            }
        }
    }
}
