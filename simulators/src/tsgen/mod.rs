//! Synthetic, decodable MPEG-TS generator with send-time stamps (std + bytes only).
//!
//! The stream is constant-bit-rate: PAT/PMT every 100 ms, an H.264 Baseline
//! video PID (keyframe = AUD + SPS + PPS + IDR with random_access_indicator,
//! otherwise AUD + non-IDR slice; PCR on this PID at least every 35 ms), an
//! AAC-LC ADTS audio PID of silence, and null packets to make up the rate.
//! The picture is a flat colour that changes every GOP with a white square
//! moving across it, so ffplay/VLC show something alive.
//!
//! Latency stamps, two kinds, both read by [`read_stamp`] / [`TsAnalyzer`]:
//! - per chunk: the first non-null packet of every 7-packet chunk carries
//!   `transport_private_data` in its adaptation field: `"CPTS"`, the send
//!   time in microseconds since the Unix epoch (u64 BE) and the chunk
//!   sequence number (u32 BE). Survives any packet-preserving relay.
//! - per picture: an SEI user_data_unregistered message (UUID
//!   [`SEI_UUID`]) with the same layout, so the stamp also survives relays
//!   that re-packetize (e.g. `ffmpeg -c copy`).
//!
//! The caller paces: [`TsGenerator::next_chunk`] returns the next chunk in
//! stream order; send chunk `i` at `start + i * chunk_duration()` (see
//! [`Pacer`]). A built-in demo source is a few lines:
//!
//! ```ignore
//! let mut g = TsGenerator::new(TsConfig { bitrate: 4_000_000, ..Default::default() })?;
//! let mut pacer = Pacer::new(Instant::now(), g.chunk_duration());
//! loop {
//!     tokio::time::sleep_until(pacer.next_deadline().into()).await;
//!     for _ in 0..pacer.due(Instant::now()).min(256) {
//!         feed(g.next_chunk(SystemTime::now())); // 1316 bytes, 7 whole packets
//!         pacer.mark_sent(1);
//!     }
//! }
//! ```

mod analyze;
// The RTSP camera simulator packetizes these pictures itself.
pub(crate) mod h264;
pub mod ts;

pub use analyze::{read_stamp, read_stamp_in_payload, AnalyzerReport, PidCc, TsAnalyzer};

use bytes::Bytes;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ts::{EsQueue, PACKET};

/// Packets per chunk (one UDP datagram / SRT message: 1316 bytes).
pub const CHUNK_PACKETS: usize = 7;
pub const CHUNK_BYTES: usize = CHUNK_PACKETS * PACKET;
/// Magic at the start of a transport_private_data stamp.
pub const STAMP_MAGIC: &[u8; 4] = b"CPTS";
/// UUID of the SEI user_data_unregistered stamp ("castpoint-stamp!").
pub const SEI_UUID: [u8; 16] = *b"castpoint-stamp!";
const STAMP_LEN: usize = 16;

const CLOCK: u64 = 27_000_000;
/// Presentation delay: PTS = send schedule + this, so a frame is complete at
/// the decoder well before it is due.
const PTS_DELAY_90K: u64 = 90 * 150;
const PSI_INTERVAL: u64 = CLOCK / 10;
const PCR_INTERVAL: u64 = CLOCK * 35 / 1000;
const AUDIO_RATE: u64 = 48_000;
const AUDIO_FRAME_SAMPLES: u64 = 1024;

/// Generator settings.
#[derive(Debug, Clone)]
pub struct TsConfig {
    /// Total transport bit rate, bits/s (null packets make it exact).
    pub bitrate: u64,
    /// Video frames per second.
    pub fps: u32,
    /// Keyframe interval in frames.
    pub gop: u32,
    pub transport_stream_id: u16,
    pub program_number: u16,
    pub pmt_pid: u16,
    pub video_pid: u16,
    pub audio_pid: u16,
    /// Pad each picture with a filler NAL so video carries most of the rate
    /// (as a real encoder would) instead of null packets.
    pub video_filler: bool,
}

impl Default for TsConfig {
    fn default() -> Self {
        Self {
            bitrate: 4_000_000,
            fps: 25,
            gop: 25,
            transport_stream_id: 1,
            program_number: 1,
            pmt_pid: 0x1000,
            video_pid: 0x100,
            audio_pid: 0x101,
            video_filler: true,
        }
    }
}

/// Why a configuration cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid TS generator config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl TsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(500_000..=1_000_000_000).contains(&self.bitrate) {
            return Err(ConfigError(format!(
                "bitrate {} bit/s out of range 500000..=1000000000 (pictures need ~300 kbit/s)",
                self.bitrate
            )));
        }
        if !(1..=60).contains(&self.fps) {
            return Err(ConfigError(format!("fps {} out of range 1..=60", self.fps)));
        }
        if !(1..=1000).contains(&self.gop) {
            return Err(ConfigError(format!(
                "gop {} out of range 1..=1000",
                self.gop
            )));
        }
        let pids = [self.pmt_pid, self.video_pid, self.audio_pid];
        for p in pids {
            if !(0x10..=0x1FFE).contains(&p) {
                return Err(ConfigError(format!(
                    "PID {p:#x} out of range 0x10..=0x1FFE"
                )));
            }
        }
        if pids[0] == pids[1] || pids[0] == pids[2] || pids[1] == pids[2] {
            return Err(ConfigError("PIDs must differ".into()));
        }
        Ok(())
    }
}

/// A decoded send stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, microseconds since the Unix epoch.
    pub sent_unix_us: u64,
    /// Chunk sequence number (transport stamps) or picture number (SEI).
    pub seq: u32,
}

impl Stamp {
    pub fn encode(&self) -> [u8; STAMP_LEN] {
        let mut b = [0u8; STAMP_LEN];
        b[..4].copy_from_slice(STAMP_MAGIC);
        b[4..12].copy_from_slice(&self.sent_unix_us.to_be_bytes());
        b[12..16].copy_from_slice(&self.seq.to_be_bytes());
        b
    }

    /// Decodes the 16-byte layout; None unless the magic matches.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b = b.get(..STAMP_LEN)?;
        if &b[..4] != STAMP_MAGIC {
            return None;
        }
        Some(Self {
            sent_unix_us: u64::from_be_bytes(b[4..12].try_into().ok()?),
            seq: u32::from_be_bytes(b[12..16].try_into().ok()?),
        })
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A silent AAC-LC frame, mono 48 kHz: one SCE with max_sfb = 0, then END.
pub(crate) fn adts_silence() -> [u8; 11] {
    let raw = [0x00u8, 0x00, 0x00, 0x07];
    let len = 7 + raw.len();
    let mut f = [0u8; 11];
    f[0] = 0xFF;
    f[1] = 0xF1; // MPEG-4, layer 0, no CRC
                 // profile LC (1), sampling index 3 (48 kHz), channel config 1
    f[2] = (1 << 6) | (3 << 2);
    f[3] = (1 << 6) | ((len >> 11) as u8 & 0x03);
    f[4] = (len >> 3) as u8;
    f[5] = ((len as u8 & 0x07) << 5) | 0x1F; // + buffer fullness 0x7FF
    f[6] = 0xFC;
    f[7..].copy_from_slice(&raw);
    f
}

/// The generator: call [`next_chunk`](Self::next_chunk) once per chunk slot.
pub struct TsGenerator {
    cfg: TsConfig,
    /// Index of the next 188-byte packet slot in stream time.
    slot: u64,
    chunk_seq: u32,
    pat: Vec<u8>,
    pmt: Vec<u8>,
    psi: EsQueue,
    pmt_q: EsQueue,
    pmt_pending: bool,
    next_psi: u64,
    next_pcr: u64,
    video: EsQueue,
    audio: EsQueue,
    next_frame: u64,
    next_audio: u64,
    /// Target size of one picture's PES (bytes) when filling with video.
    video_target: usize,
}

impl TsGenerator {
    pub fn new(cfg: TsConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let pat = ts::pat(cfg.transport_stream_id, cfg.program_number, cfg.pmt_pid);
        let pmt = ts::pmt(
            cfg.program_number,
            cfg.video_pid,
            &[(0x1B, cfg.video_pid), (0x0F, cfg.audio_pid)],
        );
        // Packets per second minus what PSI (20/s), audio (one PES per
        // picture), PCR-only packets and stamps take, with 3% headroom so
        // the video never falls behind; the rest goes to nulls.
        let pps = cfg.bitrate as f64 / (PACKET as f64 * 8.0);
        let video_pps = (pps - 20.0 - 2.0 * f64::from(cfg.fps) - 30.0) * 0.97;
        let per_frame_packets = (video_pps / f64::from(cfg.fps)).max(1.0);
        // Each packet loses ~1/7 of a stamp (18 bytes) to adaptation fields.
        let video_target = (per_frame_packets * (184.0 - 18.0 / 7.0)) as usize;
        Ok(Self {
            slot: 0,
            chunk_seq: 0,
            psi: EsQueue::new(0),
            pmt_q: EsQueue::new(cfg.pmt_pid),
            pmt_pending: false,
            next_psi: 0,
            next_pcr: 0,
            video: EsQueue::new(cfg.video_pid),
            audio: EsQueue::new(cfg.audio_pid),
            next_frame: 0,
            next_audio: 0,
            video_target,
            pat,
            pmt,
            cfg,
        })
    }

    pub fn config(&self) -> &TsConfig {
        &self.cfg
    }

    /// Stream time one chunk covers at the configured bit rate.
    pub fn chunk_duration(&self) -> Duration {
        Duration::from_nanos((CHUNK_BYTES as u64 * 8 * 1_000_000_000) / self.cfg.bitrate)
    }

    /// Chunks produced so far.
    pub fn chunks(&self) -> u64 {
        self.slot / CHUNK_PACKETS as u64
    }

    /// Pictures produced so far.
    pub fn frames(&self) -> u64 {
        self.next_frame
    }

    fn slot_time(&self, slot: u64) -> u64 {
        ((u128::from(slot) * PACKET as u128 * 8 * u128::from(CLOCK)) / u128::from(self.cfg.bitrate))
            as u64
    }

    fn frame_time(&self, n: u64) -> u64 {
        n * CLOCK / u64::from(self.cfg.fps)
    }

    fn audio_time(&self, a: u64) -> u64 {
        a * AUDIO_FRAME_SAMPLES * CLOCK / AUDIO_RATE
    }

    /// The next 7 packets (1316 bytes) in stream order, stamped with `now`.
    /// Every chunk carries a stamp (an adaptation-only packet on the video
    /// PID when the chunk would otherwise be all null packets).
    pub fn next_chunk(&mut self, now: SystemTime) -> Bytes {
        let stamp = Stamp {
            sent_unix_us: unix_us(now),
            seq: self.chunk_seq,
        };
        self.chunk_seq = self.chunk_seq.wrapping_add(1);
        let stamp_bytes = stamp.encode();
        let mut stamped = false;
        let mut out = Vec::with_capacity(CHUNK_BYTES);
        for _ in 0..CHUNK_PACKETS {
            let mut p = [0u8; PACKET];
            let private = (!stamped).then_some(&stamp_bytes[..]);
            let used = self.next_packet(&mut p, private, stamp.sent_unix_us);
            stamped |= used;
            out.extend_from_slice(&p);
        }
        Bytes::from(out)
    }

    /// Fills one packet slot; returns whether `private` was written into it.
    fn next_packet(&mut self, p: &mut [u8; PACKET], private: Option<&[u8]>, now_us: u64) -> bool {
        let t = self.slot_time(self.slot);
        self.slot += 1;
        if self.pmt_pending {
            self.pmt_pending = false;
            let pmt = std::mem::take(&mut self.pmt);
            self.pmt_q.section_packet(p, &pmt, private);
            self.pmt = pmt;
            return private.is_some();
        }
        if t >= self.next_psi {
            self.next_psi += PSI_INTERVAL;
            self.pmt_pending = true;
            let pat = std::mem::take(&mut self.pat);
            self.psi.section_packet(p, &pat, private);
            self.pat = pat;
            return private.is_some();
        }
        if self.video.is_empty() && t >= self.frame_time(self.next_frame) {
            self.build_frame(now_us);
        }
        // PCR: the byte carrying the PCR base leaves ~10 bytes into the slot.
        let pcr_due = t >= self.next_pcr;
        let pcr_value = t + (10 * 8 * CLOCK) / self.cfg.bitrate;
        if pcr_due && self.video.is_empty() {
            self.next_pcr = t + PCR_INTERVAL;
            self.video.af_packet(p, Some(pcr_value), private);
            return private.is_some();
        }
        if !self.audio.is_empty() {
            self.audio.next_packet(p, None, private);
            return private.is_some();
        }
        if !self.video.is_empty() {
            let pcr = pcr_due.then_some(pcr_value);
            if pcr_due {
                self.next_pcr = t + PCR_INTERVAL;
            }
            self.video.next_packet(p, pcr, private);
            return private.is_some();
        }
        if private.is_some() {
            // Nothing to send but the chunk has no stamp yet: an
            // adaptation-only packet on the video PID carries it, so every
            // chunk is stamped and lost chunks are countable.
            self.video.af_packet(p, None, private);
            return true;
        }
        ts::null_packet(p);
        false
    }

    fn build_frame(&mut self, now_us: u64) {
        let n = self.next_frame;
        self.next_frame += 1;
        let gop = u64::from(self.cfg.gop);
        let key = n % gop == 0;
        let sei = Stamp {
            sent_unix_us: now_us,
            seq: n as u32,
        }
        .encode();
        let pic = h264::picture(n, gop, self.cfg.fps, Some((&SEI_UUID, &sei[4..])));
        let mut es = pic.bytes;
        if self.cfg.video_filler {
            // 19-byte PES header, 6 bytes of filler NAL framing.
            let want = self.video_target.saturating_sub(es.len() + 19 + 6);
            if want > 0 {
                h264::filler(&mut es, want);
            }
        }
        let dts = (n * 90_000 / u64::from(self.cfg.fps)) + PTS_DELAY_90K;
        let mut pes = ts::pes_header(0xE0, dts, Some(dts), None);
        pes.extend_from_slice(&es);
        self.video.start(pes, key);

        // Audio frames whose time falls before the next picture.
        let until = self.frame_time(self.next_frame);
        let first = self.next_audio;
        let mut payload = Vec::new();
        while self.audio_time(self.next_audio) < until {
            payload.extend_from_slice(&adts_silence());
            self.next_audio += 1;
        }
        if !payload.is_empty() && self.audio.is_empty() {
            let pts = first * AUDIO_FRAME_SAMPLES * 90_000 / AUDIO_RATE + PTS_DELAY_90K;
            let mut pes = ts::pes_header(0xC0, pts, None, Some(payload.len()));
            pes.extend_from_slice(&payload);
            self.audio.start(pes, true);
        }
    }
}

/// Real-time pacing for chunk `i` at `start + i * interval`.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    interval: Duration,
    sent: u64,
}

impl Pacer {
    pub fn new(start: Instant, interval: Duration) -> Self {
        Self {
            start,
            interval,
            sent: 0,
        }
    }

    /// When the next chunk is due.
    pub fn next_deadline(&self) -> Instant {
        let nanos = u128::from(self.sent) * self.interval.as_nanos();
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many chunks are due at `now` and not yet sent.
    pub fn due(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let total = (elapsed / self.interval.as_nanos().max(1)) as u64 + 1;
        total.saturating_sub(self.sent)
    }

    pub fn mark_sent(&mut self, n: u64) {
        self.sent += n;
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Blocking helper: sleeps until the next chunk is due.
    pub fn wait_blocking(&self) {
        let d = self.next_deadline();
        let now = Instant::now();
        if d > now {
            std::thread::sleep(d - now);
        }
    }
}

#[cfg(test)]
mod tests;
