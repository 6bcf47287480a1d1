//! Native MPEG-TS muxer: H.264 (Annex B) and AAC (ADTS) access units in, whole 188-byte TS packets out.
//!
//! Used by RTMP ingest and RTSP pull: both receive elementary streams and
//! must hand the router MPEG-TS. One program (number 1), PMT on PID 0x1000,
//! H.264 on 0x100, AAC on 0x101. PAT/PMT go out first, before every
//! keyframe and at least every 100 ms; the PCR rides on the video PID (the
//! audio PID when there is no video). Timestamps are 90 kHz and are written
//! modulo 2^33, so callers may pass an ever-growing clock.

use bytes::{BufMut, BytesMut};

/// TS packet size.
pub const TS: usize = 188;
pub const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;
/// PMT stream types.
pub const STREAM_TYPE_H264: u8 = 0x1B;
pub const STREAM_TYPE_AAC_ADTS: u8 = 0x0F;

/// PSI repetition (and PCR) interval upper bound: 100 ms at 90 kHz.
const PSI_INTERVAL: u64 = 9_000;
/// PCR runs this far behind DTS so a decoder model has the frame in its
/// buffer before it is due (a zero lead makes every frame "just in time").
const PCR_LEAD: u64 = 9_000;
const TS_MASK: u64 = (1 << 33) - 1;

/// What the program carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MuxConfig {
    pub video: Option<VideoConfig>,
    pub audio: Option<AacConfig>,
}

/// H.264 parameter sets (raw NAL units, no start codes), inserted before
/// IDR frames whose access unit does not carry them itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VideoConfig {
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

/// AAC AudioSpecificConfig (ISO 14496-3 1.6.2.1), from which the ADTS
/// header of every frame is derived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AacConfig {
    pub asc: Vec<u8>,
}

/// The fields of an AudioSpecificConfig that ADTS can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsParams {
    /// ADTS profile = MPEG-4 audio object type - 1 (0 Main, 1 LC, 2 SSR, 3 LTP).
    pub profile: u8,
    pub sampling_index: u8,
    pub channels: u8,
}

/// MPEG-4 sampling frequency table (index -> Hz).
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl AacConfig {
    /// Validates an AudioSpecificConfig; `Err` says why ADTS cannot carry it.
    pub fn from_asc(asc: &[u8]) -> Result<AacConfig, String> {
        let cfg = AacConfig { asc: asc.to_vec() };
        cfg.adts_params()?;
        Ok(cfg)
    }

    /// The ADTS parameters of this config.
    pub fn adts_params(&self) -> Result<AdtsParams, String> {
        let (&b0, rest) = self
            .asc
            .split_first()
            .ok_or("AudioSpecificConfig is empty")?;
        let &b1 = rest.first().ok_or("AudioSpecificConfig is truncated")?;
        let aot = b0 >> 3;
        let sampling_index = ((b0 & 0x07) << 1) | (b1 >> 7);
        let channels = (b1 >> 3) & 0x0F;
        // HE-AAC (SBR 5, PS 29) signalled explicitly: the core is AAC-LC at
        // the signalled rate, which is what ADTS carries.
        let profile = match aot {
            1..=4 => aot - 1,
            5 | 29 => 1,
            31 => return Err("extended audio object types are not supported".into()),
            _ => return Err(format!("audio object type {aot} cannot be carried in ADTS")),
        };
        if usize::from(sampling_index) >= AAC_RATES.len() {
            return Err(format!(
                "sampling frequency index {sampling_index} has no ADTS code"
            ));
        }
        if channels == 0 || channels > 7 {
            return Err(format!(
                "channel configuration {channels} (program config element) is not supported"
            ));
        }
        Ok(AdtsParams {
            profile,
            sampling_index,
            channels,
        })
    }

    /// Sample rate in Hz.
    pub fn sample_rate(&self) -> Option<u32> {
        let p = self.adts_params().ok()?;
        AAC_RATES.get(usize::from(p.sampling_index)).copied()
    }
}

impl AdtsParams {
    /// The 7-byte ADTS header (no CRC) of a raw frame of `len` bytes, or
    /// `None` when the frame is too long for ADTS's 13-bit length.
    pub fn header(&self, len: usize) -> Option<[u8; 7]> {
        let fl = len + 7;
        if fl > 0x1FFF {
            return None;
        }
        let fl = fl as u16;
        Some([
            0xFF,
            0xF1,
            (self.profile << 6) | (self.sampling_index << 2) | (self.channels >> 2),
            ((self.channels & 3) << 6) | (fl >> 11) as u8,
            (fl >> 3) as u8,
            (((fl & 7) as u8) << 5) | 0x1F,
            0xFC,
        ])
    }
}

/// Iterates over the NAL units of an Annex B buffer (start codes of 3 or 4
/// bytes; bytes before the first start code are ignored).
pub fn annexb_nals(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = find_start(buf, 0).map(|(_, e)| e);
    std::iter::from_fn(move || {
        let start = pos?;
        match find_start(buf, start) {
            Some((s, e)) => {
                pos = Some(e);
                // A 4-byte start code's leading zero belongs to no NAL.
                let mut end = s;
                while end > start && buf[end - 1] == 0 {
                    end -= 1;
                }
                Some(&buf[start..end])
            }
            None => {
                pos = None;
                Some(&buf[start..])
            }
        }
    })
}

/// Position of the next `00 00 01` at or after `from`: (its start, the byte after it).
fn find_start(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= buf.len() {
        // Skip fast: the third byte of a start code is 1; anything > 1
        // there cannot begin one within the next 3 bytes.
        let b2 = buf[i + 2];
        if b2 > 1 {
            i += 3;
        } else if b2 == 1 && buf[i] == 0 && buf[i + 1] == 0 {
            return Some((i, i + 3));
        } else {
            i += 1;
        }
    }
    None
}

/// The muxer. Feed it access units; it appends whole TS packets to `out`.
pub struct TsMuxer {
    cfg: MuxConfig,
    adts: Option<AdtsParams>,
    pmt_version: u8,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    cc_audio: u8,
    /// Timestamp (90 kHz) of the last PAT/PMT; `None` before the first.
    last_psi: Option<u64>,
    last_pcr: Option<u64>,
    scratch: Vec<u8>,
}

impl TsMuxer {
    pub fn new(cfg: MuxConfig) -> Self {
        let adts = cfg.audio.as_ref().and_then(|a| a.adts_params().ok());
        TsMuxer {
            cfg,
            adts,
            pmt_version: 0,
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
            cc_audio: 0,
            last_psi: None,
            last_pcr: None,
            scratch: Vec::with_capacity(64 * 1024),
        }
    }

    pub fn config(&self) -> &MuxConfig {
        &self.cfg
    }

    /// Replaces the configuration mid-stream (a new sequence header):
    /// continuity counters carry on, the PMT version is bumped when the set
    /// of streams changes, and PAT/PMT are repeated with the next frame.
    pub fn update(&mut self, cfg: MuxConfig) {
        if cfg.video.is_some() != self.cfg.video.is_some()
            || cfg.audio.is_some() != self.cfg.audio.is_some()
        {
            self.pmt_version = (self.pmt_version + 1) & 0x1F;
        }
        self.adts = cfg.audio.as_ref().and_then(|a| a.adts_params().ok());
        self.cfg = cfg;
        self.last_psi = None;
    }

    fn pcr_pid(&self) -> u16 {
        if self.cfg.video.is_some() || self.cfg.audio.is_none() {
            VIDEO_PID
        } else {
            AUDIO_PID
        }
    }

    /// Writes PAT and PMT when due (first call, forced, or 100 ms passed).
    fn maybe_psi(&mut self, now: u64, force: bool, out: &mut BytesMut) {
        let due = match self.last_psi {
            None => true,
            Some(t) => force || now.wrapping_sub(t) & TS_MASK >= PSI_INTERVAL,
        };
        if !due {
            return;
        }
        self.last_psi = Some(now);
        // PAT: program 1 -> PMT_PID.
        let mut s = Vec::with_capacity(32);
        s.extend_from_slice(&[0x00, 0xB0, 0x00, 0x00, 0x01, 0xC1, 0x00, 0x00]);
        s.extend_from_slice(&[0x00, 0x01, 0xE0 | (PMT_PID >> 8) as u8, PMT_PID as u8]);
        finish_section(&mut s);
        write_psi(out, 0, &mut self.cc_pat, &s);
        // PMT.
        let pcr = self.pcr_pid();
        let mut s = Vec::with_capacity(48);
        s.extend_from_slice(&[
            0x02,
            0xB0,
            0x00,
            0x00,
            0x01,
            0xC1 | (self.pmt_version << 1),
            0x00,
            0x00,
            0xE0 | (pcr >> 8) as u8,
            pcr as u8,
            0xF0,
            0x00,
        ]);
        if self.cfg.video.is_some() {
            s.extend_from_slice(&[
                STREAM_TYPE_H264,
                0xE0 | (VIDEO_PID >> 8) as u8,
                VIDEO_PID as u8,
                0xF0,
                0x00,
            ]);
        }
        if self.cfg.audio.is_some() {
            s.extend_from_slice(&[
                STREAM_TYPE_AAC_ADTS,
                0xE0 | (AUDIO_PID >> 8) as u8,
                AUDIO_PID as u8,
                0xF0,
                0x00,
            ]);
        }
        finish_section(&mut s);
        write_psi(out, PMT_PID, &mut self.cc_pmt, &s);
    }

    /// One H.264 access unit (Annex B). An access unit delimiter is added
    /// when missing, and SPS/PPS from the config before an IDR that lacks
    /// them, so every keyframe is a clean entry point.
    pub fn push_video(
        &mut self,
        pts: u64,
        dts: u64,
        keyframe: bool,
        annexb: &[u8],
        out: &mut BytesMut,
    ) {
        if annexb.is_empty() {
            return;
        }
        self.maybe_psi(dts, keyframe, out);
        let mut has_aud = false;
        let mut has_sps = false;
        let mut has_idr = false;
        for (i, nal) in annexb_nals(annexb).enumerate() {
            match nal.first().map(|b| b & 0x1F) {
                Some(9) if i == 0 => has_aud = true,
                Some(7) => has_sps = true,
                Some(5) => has_idr = true,
                _ => {}
            }
        }
        let mut es = std::mem::take(&mut self.scratch);
        es.clear();
        if !has_aud {
            // primary_pic_type 7 (any slice type).
            es.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
        }
        if (keyframe || has_idr) && !has_sps {
            if let Some(v) = &self.cfg.video {
                for n in v.sps.iter().chain(v.pps.iter()) {
                    es.extend_from_slice(&[0, 0, 0, 1]);
                    es.extend_from_slice(n);
                }
            }
        }
        es.extend_from_slice(annexb);
        let pcr = self.pcr_due(dts, VIDEO_PID, true);
        let mut cc = self.cc_video;
        write_pes(
            out,
            VIDEO_PID,
            &mut cc,
            0xE0,
            pts,
            (pts != dts).then_some(dts),
            &es,
            pcr,
            keyframe,
        );
        self.cc_video = cc;
        self.scratch = es;
    }

    /// One raw AAC frame (no ADTS header); it is wrapped in ADTS from the
    /// config. Frames are dropped when there is no usable audio config.
    pub fn push_audio(&mut self, pts: u64, raw_aac: &[u8], out: &mut BytesMut) {
        let Some(p) = self.adts else { return };
        let Some(h) = p.header(raw_aac.len()) else {
            return;
        };
        self.maybe_psi(pts, false, out);
        let mut es = std::mem::take(&mut self.scratch);
        es.clear();
        es.extend_from_slice(&h);
        es.extend_from_slice(raw_aac);
        let pcr = if self.pcr_pid() == AUDIO_PID {
            self.pcr_due(pts, AUDIO_PID, true)
        } else {
            // Video carries the PCR; a slow video stream (or a paused
            // one) must not leave the PCR gap over 100 ms.
            if let Some(pcr) = self.pcr_due(pts, VIDEO_PID, false) {
                write_pcr_only(out, VIDEO_PID, self.cc_video, pcr);
            }
            None
        };
        let mut cc = self.cc_audio;
        write_pes(out, AUDIO_PID, &mut cc, 0xC0, pts, None, &es, pcr, false);
        self.cc_audio = cc;
        self.scratch = es;
    }

    /// The PCR to write now, if one is due: with every video frame on the
    /// PCR PID (`always`), else only when the last one is ~90 ms old. A PCR
    /// never steps back a little (audio interleaved ahead of video); a jump
    /// back of over a second is a new timeline and is taken.
    fn pcr_due(&mut self, dts: u64, pid: u16, always: bool) -> Option<u64> {
        if pid != self.pcr_pid() {
            return None;
        }
        let pcr = dts.wrapping_sub(PCR_LEAD) & TS_MASK;
        if let Some(l) = self.last_pcr {
            let ahead = pcr.wrapping_sub(l) & TS_MASK;
            let behind = l.wrapping_sub(pcr) & TS_MASK;
            if ahead > TS_MASK / 2 && behind < 90_000 {
                return None;
            }
            if !always && ahead < PSI_INTERVAL * 9 / 10 {
                return None;
            }
        }
        self.last_pcr = Some(pcr);
        Some(pcr)
    }
}

/// Sets section_length and appends the CRC.
fn finish_section(s: &mut Vec<u8>) {
    // section_length counts from after the length field through the CRC.
    let len = s.len() - 3 + 4;
    s[1] = 0xB0 | ((len >> 8) as u8 & 0x0F);
    s[2] = len as u8;
    let crc = crc32_mpeg2(s);
    s.extend_from_slice(&crc.to_be_bytes());
}

fn write_psi(out: &mut BytesMut, pid: u16, cc: &mut u8, section: &[u8]) {
    out.reserve(TS);
    out.put_u8(0x47);
    out.put_u8(0x40 | (pid >> 8) as u8);
    out.put_u8(pid as u8);
    out.put_u8(0x10 | *cc);
    *cc = (*cc + 1) & 0x0F;
    out.put_u8(0); // pointer_field
    let n = section.len().min(TS - 5);
    out.put_slice(&section[..n]);
    out.put_bytes(0xFF, TS - 5 - n);
}

/// An adaptation-field-only packet carrying a PCR (its CC does not advance:
/// packets without payload repeat the last CC).
fn write_pcr_only(out: &mut BytesMut, pid: u16, next_cc: u8, pcr: u64) {
    out.reserve(TS);
    out.put_u8(0x47);
    out.put_u8((pid >> 8) as u8);
    out.put_u8(pid as u8);
    out.put_u8(0x20 | (next_cc.wrapping_sub(1) & 0x0F));
    out.put_u8(183);
    out.put_u8(0x10);
    put_pcr(out, pcr);
    out.put_bytes(0xFF, TS - 12);
}

fn put_pcr(out: &mut BytesMut, base: u64) {
    let b = base & TS_MASK;
    out.put_u8((b >> 25) as u8);
    out.put_u8((b >> 17) as u8);
    out.put_u8((b >> 9) as u8);
    out.put_u8((b >> 1) as u8);
    // Low base bit, 6 reserved bits, extension (0) high bit.
    out.put_u8((((b & 1) as u8) << 7) | 0x7E);
    out.put_u8(0);
}

fn put_ts(out: &mut Vec<u8>, prefix: u8, t: u64) {
    let t = t & TS_MASK;
    out.push((prefix << 4) | (((t >> 29) as u8) & 0x0E) | 1);
    out.push((t >> 22) as u8);
    out.push(((t >> 14) as u8 & 0xFE) | 1);
    out.push((t >> 7) as u8);
    out.push(((t << 1) as u8 & 0xFE) | 1);
}

/// Packetizes one PES. `es` is the elementary stream payload.
#[allow(clippy::too_many_arguments)]
fn write_pes(
    out: &mut BytesMut,
    pid: u16,
    cc: &mut u8,
    stream_id: u8,
    pts: u64,
    dts: Option<u64>,
    es: &[u8],
    pcr: Option<u64>,
    random_access: bool,
) {
    let mut hdr = Vec::with_capacity(19);
    hdr.extend_from_slice(&[0, 0, 1, stream_id, 0, 0]);
    let hlen: usize = if dts.is_some() { 10 } else { 5 };
    // data_alignment_indicator: every PES starts an access unit.
    hdr.push(0x84);
    hdr.push(if dts.is_some() { 0xC0 } else { 0x80 });
    hdr.push(hlen as u8);
    match dts {
        Some(d) => {
            put_ts(&mut hdr, 0x3, pts);
            put_ts(&mut hdr, 0x1, d);
        }
        None => put_ts(&mut hdr, 0x2, pts),
    }
    let plen = 3 + hlen + es.len();
    // Video may exceed 16 bits: 0 means "unbounded" (video PIDs only).
    let plen = if plen <= 0xFFFF { plen as u16 } else { 0 };
    hdr[4] = (plen >> 8) as u8;
    hdr[5] = plen as u8;

    let total = hdr.len() + es.len();
    out.reserve(total.div_ceil(TS - 4 - 8) * TS + TS);
    let mut off = 0usize;
    let mut first = true;
    while off < total {
        let remaining = total - off;
        // Adaptation field contents (beyond its length byte) on the first packet.
        let mut af_body = 0usize;
        let mut flags = 0u8;
        if first {
            if let Some(_p) = pcr {
                flags |= 0x10;
                af_body = 1 + 6;
            }
            if random_access {
                flags |= 0x40;
                af_body = af_body.max(1);
            }
        }
        let mut af_total = if af_body > 0 { 1 + af_body } else { 0 };
        let space = TS - 4 - af_total;
        let take = remaining.min(space);
        let stuffing = space - take;
        if stuffing > 0 {
            if af_total == 0 {
                // A 1-byte stuffing is an adaptation field of length 0.
                af_total = stuffing;
                af_body = stuffing - 1;
            } else {
                af_total += stuffing;
                af_body += stuffing;
            }
        }
        out.put_u8(0x47);
        out.put_u8(if first { 0x40 } else { 0 } | (pid >> 8) as u8);
        out.put_u8(pid as u8);
        out.put_u8(if af_total > 0 { 0x30 } else { 0x10 } | *cc);
        *cc = (*cc + 1) & 0x0F;
        if af_total > 0 {
            out.put_u8(af_body as u8);
            if af_body > 0 {
                out.put_u8(flags);
                let mut used = 1;
                if let (true, Some(p)) = (first, pcr) {
                    put_pcr(out, p);
                    used += 6;
                }
                out.put_bytes(0xFF, af_body - used);
            }
        }
        // Copy `take` bytes of header+es starting at `off`.
        let mut n = take;
        let mut o = off;
        if o < hdr.len() {
            let h = (hdr.len() - o).min(n);
            out.put_slice(&hdr[o..o + h]);
            n -= h;
            o += h;
        }
        if n > 0 {
            let s = o - hdr.len();
            out.put_slice(&es[s..s + n]);
        }
        off += take;
        first = false;
    }
}

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init all ones, no reflection).
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests;
