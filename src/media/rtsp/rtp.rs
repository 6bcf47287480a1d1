//! RTP (RFC 3550) packets and depacketizers: H.264 (RFC 6184 single NAL, STAP-A, FU-A), AAC (RFC 3640 AAC-hbr) and the 32-bit timestamp unwrapping to 90 kHz.
//!
//! Input is a camera's packets: untrusted, possibly lost or reordered. A
//! sequence gap inside an access unit drops that whole unit (a decoder fed
//! half a picture shows garbage) and is counted.

/// One parsed RTP packet (header fields we use, payload without padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtp<'a> {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub payload: &'a [u8],
}

/// Parses an RTP packet; `None` for anything that is not RTP version 2 or
/// whose CSRC list, extension or padding do not fit.
pub fn parse(b: &[u8]) -> Option<Rtp<'_>> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let padding = b[0] & 0x20 != 0;
    let extension = b[0] & 0x10 != 0;
    let cc = usize::from(b[0] & 0x0F);
    let mut off = 12 + 4 * cc;
    if extension {
        let ext = b.get(off..off + 4)?;
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = b.len();
    if padding {
        let pad = usize::from(*b.last()?);
        end = end.checked_sub(pad)?;
    }
    let payload = b.get(off..end)?;
    Some(Rtp {
        pt: b[1] & 0x7F,
        marker: b[1] & 0x80 != 0,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        payload,
    })
}

/// Extends 32-bit RTP timestamps across wraps and rescales them to 90 kHz,
/// starting at `base90` for the first packet.
#[derive(Debug, Clone)]
pub struct Clock {
    rate: u64,
    first: Option<u32>,
    last: u32,
    /// Ticks since the first packet (signed: reordering can step back).
    ext: i64,
    base90: u64,
}

impl Clock {
    pub fn new(rate: u32, base90: u64) -> Self {
        Clock {
            rate: u64::from(rate.max(1)),
            first: None,
            last: 0,
            ext: 0,
            base90,
        }
    }

    /// Restarts the timeline: the next timestamp maps to `base90`.
    pub fn rebase(&mut self, base90: u64) {
        *self = Clock::new(self.rate as u32, base90);
    }

    /// 90 kHz time of RTP timestamp `ts`.
    pub fn to_90k(&mut self, ts: u32) -> u64 {
        if self.first.is_none() {
            self.first = Some(ts);
            self.last = ts;
        }
        // The wrapping difference as signed 32-bit is the step, whichever
        // side of a wrap the two timestamps are on.
        let step = i64::from(ts.wrapping_sub(self.last) as i32);
        self.last = ts;
        self.ext += step;
        let ticks = self.ext.max(0) as u128;
        self.base90 + (ticks * 90_000 / u128::from(self.rate)) as u64
    }
}

/// Tracks the RTP sequence number; reports lost packets.
#[derive(Debug, Default, Clone)]
pub struct SeqCheck {
    next: Option<u16>,
}

impl SeqCheck {
    /// Packets missing before `seq` (0 when in order). Late or duplicate
    /// packets also count as a break: they cannot be put back in place.
    pub fn gap(&mut self, seq: u16) -> u16 {
        let g = match self.next {
            None => 0,
            Some(n) => seq.wrapping_sub(n),
        };
        self.next = Some(seq.wrapping_add(1));
        if g >= 0x8000 {
            // Old packet: a break, counted as one.
            1
        } else {
            g
        }
    }
}

/// One H.264 access unit in Annex B form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub pts: u64,
    pub keyframe: bool,
    pub annexb: Vec<u8>,
}

/// Largest access unit accepted (a 4K intra picture is well under this).
const MAX_AU: usize = 8 * 1024 * 1024;

/// RFC 6184 depacketizer (packetization modes 0 and 1).
#[derive(Debug)]
pub struct H264Depack {
    clock: Clock,
    seq: SeqCheck,
    /// NAL units of the access unit being collected (without start codes).
    nals: Vec<Vec<u8>>,
    au_ts: Option<u32>,
    /// The access unit lost a packet: dropped when it completes.
    damaged: bool,
    /// A FU-A in progress (its NAL is the last of `nals`).
    in_fu: bool,
    /// Parameter sets seen in band (replacing the SDP's).
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
    /// Access units dropped because packets were lost.
    pub dropped: u64,
    /// Nothing is emitted before the first IDR (a decoder cannot start
    /// on a P picture, and the TS muxer needs the parameter sets).
    seen_idr: bool,
}

impl H264Depack {
    pub fn new(sps: Vec<Vec<u8>>, pps: Vec<Vec<u8>>, base90: u64) -> Self {
        H264Depack {
            clock: Clock::new(90_000, base90),
            seq: SeqCheck::default(),
            nals: Vec::new(),
            au_ts: None,
            damaged: false,
            in_fu: false,
            sps,
            pps,
            dropped: 0,
            seen_idr: false,
        }
    }

    /// The next access unit's timestamp maps to `base90`.
    pub fn rebase(&mut self, base90: u64) {
        self.clock.rebase(base90);
    }

    fn au_len(&self) -> usize {
        self.nals.iter().map(|n| n.len() + 4).sum()
    }

    fn add_nal(&mut self, nal: &[u8]) {
        if nal.is_empty() {
            return;
        }
        if self.au_len() + nal.len() > MAX_AU {
            self.damaged = true;
            return;
        }
        self.nals.push(nal.to_vec());
    }

    /// Completes the current access unit: `Some` when it is whole and
    /// decodable from here.
    fn flush(&mut self) -> Option<AccessUnit> {
        let ts = self.au_ts.take()?;
        let nals = std::mem::take(&mut self.nals);
        self.in_fu = false;
        let damaged = std::mem::replace(&mut self.damaged, false);
        if nals.is_empty() {
            return None;
        }
        if damaged {
            self.dropped += 1;
            return None;
        }
        let types = || nals.iter().filter_map(|n| n.first()).map(|h| h & 0x1F);
        let keyframe = types().any(|t| t == 5);
        for n in &nals {
            match n.first().map(|h| h & 0x1F) {
                Some(7) if !self.sps.contains(n) => self.sps = vec![n.clone()],
                Some(8) if !self.pps.contains(n) => self.pps = vec![n.clone()],
                _ => {}
            }
        }
        if !types().any(|t| (1..=5).contains(&t)) {
            // Parameter sets or SEI alone: kept for the next picture.
            return None;
        }
        if keyframe {
            self.seen_idr = true;
        }
        if !self.seen_idr || self.sps.is_empty() || self.pps.is_empty() {
            return None;
        }
        let mut annexb = Vec::with_capacity(self.au_len() + 64);
        // Parameter sets before every IDR, so a receiver joining the TS at
        // any keyframe can decode; cameras often send them only in the SDP.
        if keyframe && !types().any(|t| t == 7) {
            for ps in self.sps.iter().chain(self.pps.iter()) {
                annexb.extend_from_slice(&[0, 0, 0, 1]);
                annexb.extend_from_slice(ps);
            }
        }
        for n in &nals {
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(n);
        }
        let pts = self.clock.to_90k(ts);
        Some(AccessUnit {
            pts,
            keyframe,
            annexb,
        })
    }

    /// Feeds one packet; returns the access units it completes (at most two:
    /// the previous one on a timestamp change, this one on the marker bit).
    pub fn push(&mut self, p: &Rtp<'_>) -> Vec<AccessUnit> {
        let mut out = Vec::new();
        let lost = self.seq.gap(p.seq);
        if self.au_ts.is_some_and(|t| t != p.ts) {
            // A new picture started without the last one's marker.
            if lost > 0 {
                self.damaged = true;
            }
            out.extend(self.flush());
        } else if lost > 0 {
            self.damaged = true;
        }
        if self.au_ts.is_none() {
            self.au_ts = Some(p.ts);
            self.clock.to_90k(p.ts);
        }
        let pl = p.payload;
        let Some(&h) = pl.first() else {
            return out;
        };
        let ty = h & 0x1F;
        match ty {
            1..=23 => {
                self.in_fu = false;
                self.add_nal(pl);
            }
            24 => {
                // STAP-A: 16-bit size + NAL, repeated.
                self.in_fu = false;
                let mut rest = &pl[1..];
                while rest.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let Some(nal) = rest.get(2..2 + n) else {
                        self.damaged = true;
                        break;
                    };
                    self.add_nal(nal);
                    rest = &rest[2 + n..];
                }
            }
            28 => {
                let Some(&fu) = pl.get(1) else {
                    self.damaged = true;
                    return out;
                };
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                let data = &pl[2..];
                if start {
                    let mut nal = Vec::with_capacity(data.len() + 1);
                    nal.push((h & 0xE0) | (fu & 0x1F));
                    nal.extend_from_slice(data);
                    self.add_nal(&nal);
                    self.in_fu = true;
                } else if self.in_fu && !self.damaged {
                    let fits = self.au_len() + data.len() <= MAX_AU;
                    match (fits, self.nals.last_mut()) {
                        (true, Some(last)) => last.extend_from_slice(data),
                        _ => self.damaged = true,
                    }
                } else {
                    // A middle fragment whose start we never saw.
                    self.damaged = true;
                }
                if end {
                    self.in_fu = false;
                }
            }
            _ => {
                // STAP-B, MTAP, FU-B (interleaved mode) or reserved: not
                // decodable in mode 0/1; the unit cannot be trusted.
                self.damaged = true;
            }
        }
        if p.marker {
            out.extend(self.flush());
        }
        out
    }
}

/// One raw AAC frame (no ADTS header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacFrame {
    pub pts: u64,
    pub data: Vec<u8>,
}

/// RFC 3640 AAC-hbr depacketizer.
#[derive(Debug)]
pub struct AacDepack {
    clock: Clock,
    seq: SeqCheck,
    size_len: u8,
    index_len: u8,
    delta_len: u8,
    /// A fragmented frame being collected: (rtp ts, declared size, bytes).
    frag: Option<(u32, usize, Vec<u8>)>,
    pub dropped: u64,
}

/// Reads `n` bits MSB-first.
struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: u8) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.b.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }
}

impl AacDepack {
    pub fn new(clock: u32, size_len: u8, index_len: u8, delta_len: u8, base90: u64) -> Self {
        AacDepack {
            clock: Clock::new(clock, base90),
            seq: SeqCheck::default(),
            size_len,
            index_len,
            delta_len,
            frag: None,
            dropped: 0,
        }
    }

    /// The next frame's timestamp maps to `base90`.
    pub fn rebase(&mut self, base90: u64) {
        self.clock.rebase(base90);
    }

    pub fn push(&mut self, p: &Rtp<'_>) -> Vec<AacFrame> {
        let mut out = Vec::new();
        if self.seq.gap(p.seq) > 0 && self.frag.take().is_some() {
            self.dropped += 1;
        }
        let pl = p.payload;
        if pl.len() < 2 {
            return out;
        }
        let hdr_bits = usize::from(u16::from_be_bytes([pl[0], pl[1]]));
        let hdr_bytes = hdr_bits.div_ceil(8);
        let Some(headers) = pl.get(2..2 + hdr_bytes) else {
            return out;
        };
        let mut data = &pl[2 + hdr_bytes..];
        let mut bits = Bits { b: headers, pos: 0 };
        let mut sizes = Vec::new();
        let per = usize::from(self.size_len) + usize::from(self.index_len);
        while bits.pos + per <= hdr_bits && sizes.len() < 512 {
            let idx_len = if sizes.is_empty() {
                self.index_len
            } else {
                self.delta_len
            };
            let (Some(size), Some(_)) = (bits.read(self.size_len), bits.read(idx_len)) else {
                break;
            };
            sizes.push(size as usize);
        }
        if let Some((ts, want, mut buf)) = self.frag.take() {
            // Continuation of a fragmented frame: the payload is its bytes.
            if ts == p.ts && sizes.len() == 1 {
                buf.extend_from_slice(data);
                if buf.len() >= want {
                    buf.truncate(want);
                    out.push(AacFrame {
                        pts: self.clock.to_90k(ts),
                        data: buf,
                    });
                } else if !p.marker {
                    self.frag = Some((ts, want, buf));
                } else {
                    self.dropped += 1;
                }
                return out;
            }
            self.dropped += 1;
        }
        for (i, size) in sizes.iter().enumerate() {
            let ts = p.ts.wrapping_add(1024 * i as u32);
            if data.len() < *size {
                if sizes.len() == 1 && !p.marker {
                    self.frag = Some((p.ts, *size, data.to_vec()));
                } else {
                    self.dropped += 1;
                }
                break;
            }
            out.push(AacFrame {
                pts: self.clock.to_90k(ts),
                data: data[..*size].to_vec(),
            });
            data = &data[*size..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x80, 96 | if marker { 0x80 } else { 0 }];
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3, 4]);
        b.extend_from_slice(payload);
        b
    }

    const SPS: &[u8] = &[0x67, 0x42, 0xC0, 0x1E];
    const PPS: &[u8] = &[0x68, 0xCE, 0x06, 0xE2];

    #[test]
    fn rtp_header_variants() {
        let p = pkt(7, 9, true, &[1, 2, 3]);
        let r = parse(&p).unwrap();
        assert_eq!(
            (r.pt, r.marker, r.seq, r.ts, r.payload),
            (96, true, 7, 9, &[1u8, 2, 3][..])
        );
        // Padding of 2 and one CSRC.
        let mut q = pkt(1, 1, false, &[0, 0, 0, 0, 5, 6, 0, 2]);
        q[0] = 0x80 | 0x20 | 1;
        assert_eq!(parse(&q).unwrap().payload, &[5, 6]);
        assert!(parse(&[0x40; 20]).is_none());
    }

    #[test]
    fn clock_wraps_and_rescales() {
        let mut c = Clock::new(48_000, 1000);
        assert_eq!(c.to_90k(u32::MAX - 479), 1000);
        // 960 ticks later across the wrap = 20 ms = 1800 at 90 kHz.
        assert_eq!(c.to_90k(480), 2800);
    }

    #[test]
    fn h264_stap_fu_and_gap() {
        let mut d = H264Depack::new(vec![SPS.to_vec()], vec![PPS.to_vec()], 0);
        // P before any IDR: dropped silently (not counted as loss).
        assert!(d
            .push(&parse(&pkt(1, 0, true, &[0x41, 1, 2])).unwrap())
            .is_empty());
        // STAP-A with SPS+PPS, then an IDR in 3 FU-A fragments.
        let mut stap = vec![24];
        for n in [SPS, PPS] {
            stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
            stap.extend_from_slice(n);
        }
        assert!(d
            .push(&parse(&pkt(2, 3000, false, &stap)).unwrap())
            .is_empty());
        d.push(&parse(&pkt(3, 3000, false, &[0x7C, 0x85, 0xAA])).unwrap());
        d.push(&parse(&pkt(4, 3000, false, &[0x7C, 0x05, 0xBB])).unwrap());
        let au = d.push(&parse(&pkt(5, 3000, true, &[0x7C, 0x45, 0xCC])).unwrap());
        assert_eq!(au.len(), 1);
        assert!(au[0].keyframe);
        assert_eq!(au[0].pts, 3000);
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(SPS);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(PPS);
        want.extend_from_slice(&[0, 0, 0, 1, 0x65, 0xAA, 0xBB, 0xCC]);
        assert_eq!(au[0].annexb, want);
        // Next picture loses its middle fragment: dropped and counted.
        d.push(&parse(&pkt(6, 6000, false, &[0x5C, 0x81, 1])).unwrap());
        let au = d.push(&parse(&pkt(8, 6000, true, &[0x5C, 0x41, 3])).unwrap());
        assert!(au.is_empty());
        assert_eq!(d.dropped, 1);
        // The one after is whole again.
        let au = d.push(&parse(&pkt(9, 9000, true, &[0x41, 9])).unwrap());
        assert_eq!(au[0].annexb, vec![0, 0, 0, 1, 0x41, 9]);
        assert!(!au[0].keyframe);
    }

    #[test]
    fn h264_without_sdp_parameter_sets_waits_for_in_band_ones() {
        let mut d = H264Depack::new(vec![], vec![], 0);
        assert!(d
            .push(&parse(&pkt(1, 0, true, &[0x65, 1])).unwrap())
            .is_empty());
        d.push(&parse(&pkt(2, 10, false, SPS)).unwrap());
        d.push(&parse(&pkt(3, 10, false, PPS)).unwrap());
        let au = d.push(&parse(&pkt(4, 10, true, &[0x65, 2])).unwrap());
        assert_eq!(au.len(), 1);
        assert!(au[0].keyframe);
    }

    #[test]
    fn aac_hbr_two_frames_and_a_fragment() {
        let mut d = AacDepack::new(48_000, 13, 3, 3, 0);
        // Two AU headers (16 bits each): sizes 3 and 2.
        let mut pl = vec![0, 32];
        pl.extend_from_slice(&((3u16 << 3).to_be_bytes()));
        pl.extend_from_slice(&((2u16 << 3).to_be_bytes()));
        pl.extend_from_slice(&[1, 2, 3, 4, 5]);
        let f = d.push(&parse(&pkt(1, 0, true, &pl)).unwrap());
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].pts, &f[0].data[..]), (0, &[1u8, 2, 3][..]));
        assert_eq!((f[1].pts, &f[1].data[..]), (1920, &[4u8, 5][..]));
        // A 4-byte frame split over two packets.
        let mut a = vec![0, 16];
        a.extend_from_slice(&((4u16 << 3).to_be_bytes()));
        let mut b = a.clone();
        a.extend_from_slice(&[7, 7]);
        b.extend_from_slice(&[8, 8]);
        assert!(d.push(&parse(&pkt(2, 2048, false, &a)).unwrap()).is_empty());
        let f = d.push(&parse(&pkt(3, 2048, true, &b)).unwrap());
        assert_eq!(f[0].data, vec![7, 7, 8, 8]);
    }

    proptest! {
        #[test]
        fn depacketizers_never_panic(
            pkts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40)
        ) {
            let mut h = H264Depack::new(vec![SPS.to_vec()], vec![PPS.to_vec()], 0);
            let mut a = AacDepack::new(48_000, 13, 3, 3, 0);
            let mut a2 = AacDepack::new(44_100, 16, 8, 0, 0);
            for b in &pkts {
                if let Some(p) = parse(b) {
                    h.push(&p);
                    a.push(&p);
                    a2.push(&p);
                }
            }
        }

        #[test]
        fn h264_payloads_with_valid_headers_never_panic(
            pkts in proptest::collection::vec(
                (any::<u16>(), 0u32..4, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)),
                0..60)
        ) {
            let mut h = H264Depack::new(vec![SPS.to_vec()], vec![PPS.to_vec()], 0);
            for (seq, ts, m, pl) in &pkts {
                let b = pkt(*seq, ts * 3000, *m, pl);
                if let Some(p) = parse(&b) {
                    for au in h.push(&p) {
                        prop_assert!(au.annexb.starts_with(&[0, 0, 0, 1]));
                    }
                }
            }
        }
    }
}
