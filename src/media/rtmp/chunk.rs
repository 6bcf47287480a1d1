//! RTMP handshake and chunk stream: a sans-IO, bounds-checked chunk decoder (all four header types, extended timestamps, chunk size changes) and the encoder for our messages.

use std::collections::HashMap;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Handshake block size (C1/S1/C2/S2).
pub const HANDSHAKE_LEN: usize = 1536;
/// The only plain RTMP version.
pub const RTMP_VERSION: u8 = 3;

/// Message types (RTMP spec 5.4, 7.1).
pub mod msg {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACK: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const COMMAND_AMF0: u8 = 20;
}

/// The server's answer to C0+C1: S0, S1 (our time, zeros, filler) and S2
/// (an echo of C1), the plain handshake every publisher accepts (ffmpeg and
/// librtmp only verify digests when *playing*). `Err` names the problem.
pub fn handshake_reply(c0c1: &[u8], epoch_ms: u32) -> Result<Vec<u8>, String> {
    let (&c0, c1) = c0c1
        .split_first()
        .ok_or_else(|| "empty handshake".to_string())?;
    if c0 != RTMP_VERSION {
        // 6 and 8 are RTMPE (encrypted), which is not offered.
        return Err(format!(
            "RTMP version {c0} not supported (plain RTMP 3 only)"
        ));
    }
    if c1.len() != HANDSHAKE_LEN {
        return Err(format!(
            "C1 is {} bytes, expected {HANDSHAKE_LEN}",
            c1.len()
        ));
    }
    let mut out = Vec::with_capacity(1 + 2 * HANDSHAKE_LEN);
    out.push(RTMP_VERSION);
    out.extend_from_slice(&epoch_ms.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    // Filler: need not be random for the plain handshake; a cheap
    // xorshift keeps it from being all zeros, which some clients dislike.
    let mut x: u32 = 0x9E37_79B9 ^ epoch_ms;
    for _ in 0..(HANDSHAKE_LEN - 8) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out.extend_from_slice(c1);
    Ok(out)
}

/// One reassembled RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    /// Milliseconds (32-bit, wraps).
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// fmt 1/2/3 on a chunk stream that never had a fmt 0 header.
    NoPreviousHeader(u32),
    MessageTooLarge {
        len: u32,
        max: usize,
    },
    TooManyStreams(usize),
    BufferedTooMuch(usize),
    BadChunkSize(u32),
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::NoPreviousHeader(c) => {
                write!(
                    f,
                    "chunk stream {c}: compressed header without a previous full header"
                )
            }
            ChunkError::MessageTooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
            ChunkError::TooManyStreams(n) => write!(f, "more than {n} chunk streams in use"),
            ChunkError::BufferedTooMuch(n) => {
                write!(f, "more than {n} bytes of partial messages buffered")
            }
            ChunkError::BadChunkSize(n) => write!(f, "chunk size {n} out of range"),
        }
    }
}

/// Decoder limits: everything a peer controls is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message: usize,
    pub max_chunk_size: u32,
    pub max_streams: usize,
    /// Sum of all partial messages held at once.
    pub max_buffered: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 8 << 20,
            max_chunk_size: 1 << 24,
            max_streams: 64,
            max_buffered: 16 << 20,
        }
    }
}

#[derive(Default)]
struct CsState {
    seen: bool,
    timestamp: u32,
    delta: u32,
    len: u32,
    type_id: u8,
    stream_id: u32,
    /// The last header had an extended timestamp, so fmt 3 chunks carry one.
    ext: bool,
    partial: BytesMut,
    /// Bytes of the current message still to come (0: between messages).
    remaining: u32,
}

/// Sans-IO chunk stream decoder: feed bytes, pull whole messages.
pub struct ChunkDecoder {
    limits: Limits,
    chunk_size: u32,
    streams: HashMap<u32, CsState>,
    buffered: usize,
}

impl ChunkDecoder {
    pub fn new(limits: Limits) -> Self {
        ChunkDecoder {
            limits,
            chunk_size: 128,
            streams: HashMap::new(),
            buffered: 0,
        }
    }

    /// Applies the peer's Set Chunk Size (before the next chunk is decoded).
    pub fn set_chunk_size(&mut self, n: u32) -> Result<(), ChunkError> {
        // The top bit must be zero; 1 would make every chunk a header.
        if n == 0 || n > self.limits.max_chunk_size || n > 0x7FFF_FFFF {
            return Err(ChunkError::BadChunkSize(n));
        }
        self.chunk_size = n;
        Ok(())
    }

    /// Abort Message: drops the partial message of one chunk stream.
    pub fn abort(&mut self, csid: u32) {
        if let Some(s) = self.streams.get_mut(&csid) {
            self.buffered -= s.partial.len();
            s.partial = BytesMut::new();
            s.remaining = 0;
        }
    }

    /// Decodes chunks from the front of `buf` until a message completes
    /// (`Ok(Some)`) or more bytes are needed (`Ok(None)`); consumed bytes
    /// are removed from `buf`, an incomplete chunk is left in place.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.one_chunk(buf)? {
                Step::NeedMore => return Ok(None),
                Step::Progress => continue,
                Step::Done(m) => return Ok(Some(m)),
            }
        }
    }

    fn one_chunk(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        let b = &buf[..];
        let Some((fmt, csid, mut pos)) = basic_header(b) else {
            return Ok(Step::NeedMore);
        };
        let hlen = [11, 7, 3, 0][usize::from(fmt)];
        let Some(h) = b.get(pos..pos + hlen) else {
            return Ok(Step::NeedMore);
        };
        pos += hlen;
        let u24 = |o: usize| u32::from(h[o]) << 16 | u32::from(h[o + 1]) << 8 | u32::from(h[o + 2]);
        if !self.streams.contains_key(&csid) {
            if fmt != 0 {
                return Err(ChunkError::NoPreviousHeader(csid));
            }
            if self.streams.len() >= self.limits.max_streams {
                return Err(ChunkError::TooManyStreams(self.limits.max_streams));
            }
        }
        let prev = self.streams.get(&csid);
        let prev_ext = prev.is_some_and(|p| p.ext);
        let mid_message = prev.is_some_and(|p| p.remaining > 0);
        // The 3-byte timestamp field (fmt 0/1/2); fmt 3 repeats the last.
        let ts_field = (fmt < 3).then(|| u24(0));
        let ext = match ts_field {
            Some(t) => t == 0xFF_FFFF,
            None => prev_ext,
        };
        let mut ext_ts = None;
        if ext {
            let Some(e) = b.get(pos..pos + 4) else {
                return Ok(Step::NeedMore);
            };
            ext_ts = Some(u32::from_be_bytes([e[0], e[1], e[2], e[3]]));
            pos += 4;
        }
        // Header fields as they will be after this chunk.
        let (len, type_id) = if fmt <= 1 {
            (u24(3), h[6])
        } else {
            prev.map(|p| (p.len, p.type_id)).unwrap_or((0, 0))
        };
        if len as usize > self.limits.max_message {
            return Err(ChunkError::MessageTooLarge {
                len,
                max: self.limits.max_message,
            });
        }
        // A new header (fmt 0-2) mid-message abandons the partial message
        // (what librtmp does); fmt 3 continues it.
        let continuing = fmt == 3 && mid_message;
        let remaining = if continuing {
            prev.map(|p| p.remaining).unwrap_or(0)
        } else {
            len
        };
        let take = remaining.min(self.chunk_size) as usize;
        if b.len() < pos + take {
            return Ok(Step::NeedMore);
        }
        // Whole chunk present: commit.
        if !continuing && self.buffered + len as usize > self.limits.max_buffered {
            return Err(ChunkError::BufferedTooMuch(self.limits.max_buffered));
        }
        let st = self.streams.entry(csid).or_default();
        if !continuing {
            self.buffered -= st.partial.len();
            st.begin(fmt, h, ext_ts.or(ts_field), len, type_id);
        }
        st.seen = true;
        if fmt < 3 {
            st.ext = ext;
        }
        buf.advance(pos);
        st.partial.extend_from_slice(&buf[..take]);
        buf.advance(take);
        self.buffered += take;
        st.remaining -= take as u32;
        if st.remaining > 0 {
            return Ok(Step::Progress);
        }
        let payload = std::mem::take(&mut st.partial).freeze();
        self.buffered -= payload.len();
        Ok(Step::Done(Message {
            csid,
            timestamp: st.timestamp,
            type_id: st.type_id,
            stream_id: st.stream_id,
            payload,
        }))
    }
}

enum Step {
    NeedMore,
    Progress,
    Done(Message),
}

/// A chunk's basic header: (fmt, chunk stream id, its length in bytes:
/// 1, 2 or 3); None while it is incomplete.
fn basic_header(b: &[u8]) -> Option<(u8, u32, usize)> {
    let b0 = *b.first()?;
    let fmt = b0 >> 6;
    let (csid, len) = match b0 & 0x3F {
        0 => (64 + u32::from(*b.get(1)?), 2),
        1 => (64 + u32::from(*b.get(1)?) + 256 * u32::from(*b.get(2)?), 3),
        c => (u32::from(c), 1),
    };
    Some((fmt, csid, len))
}

impl CsState {
    /// A message starts on this chunk stream with a chunk of header format
    /// `fmt` (message header `h`, timestamp or delta `ts`: the extended
    /// one when present): its timestamp, length and type.
    fn begin(&mut self, fmt: u8, h: &[u8], ts: Option<u32>, len: u32, type_id: u8) {
        self.partial = BytesMut::with_capacity((len as usize).min(64 * 1024));
        match fmt {
            0 => {
                self.timestamp = ts.unwrap_or(0);
                self.delta = 0;
                self.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
            }
            1 | 2 => {
                self.delta = ts.unwrap_or(0);
                self.timestamp = self.timestamp.wrapping_add(self.delta);
            }
            _ => {
                // fmt 3 starting a new message: same delta again.
                self.timestamp = self.timestamp.wrapping_add(self.delta);
            }
        }
        self.len = len;
        self.type_id = type_id;
        self.remaining = len;
    }
}

/// Chunk stream encoder for our messages: a full (fmt 0) header on the
/// first chunk, fmt 3 continuations, extended timestamps when needed.
pub struct ChunkEncoder {
    pub chunk_size: usize,
}

impl ChunkEncoder {
    pub fn new() -> Self {
        ChunkEncoder { chunk_size: 128 }
    }

    pub fn write(&self, out: &mut BytesMut, m: &Message) {
        let csid = m.csid.clamp(2, 65599);
        let ext = m.timestamp >= 0xFF_FFFF;
        let basic = |out: &mut BytesMut, fmt: u8| {
            if csid < 64 {
                out.put_u8(fmt << 6 | csid as u8);
            } else if csid < 320 {
                out.put_u8(fmt << 6);
                out.put_u8((csid - 64) as u8);
            } else {
                out.put_u8(fmt << 6 | 1);
                out.put_u16_le((csid - 64) as u16);
            }
        };
        basic(out, 0);
        let t = if ext { 0xFF_FFFF } else { m.timestamp };
        out.put_uint(u64::from(t), 3);
        out.put_uint(m.payload.len() as u64, 3);
        out.put_u8(m.type_id);
        out.put_u32_le(m.stream_id);
        if ext {
            out.put_u32(m.timestamp);
        }
        let mut first = true;
        for c in m.payload.chunks(self.chunk_size.max(1)) {
            if !first {
                basic(out, 3);
                if ext {
                    out.put_u32(m.timestamp);
                }
            }
            out.put_slice(c);
            first = false;
        }
    }
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

/// A protocol control or command message on the usual chunk streams.
pub fn control(type_id: u8, payload: Vec<u8>) -> Message {
    Message {
        csid: 2,
        timestamp: 0,
        type_id,
        stream_id: 0,
        payload: payload.into(),
    }
}
