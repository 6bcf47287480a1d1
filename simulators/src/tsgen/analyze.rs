//! Receiver-side TS analysis: packet sync, continuity-counter errors per PID,
//! missing chunks and end-to-end latency from the generator's stamps.
//! Every input byte is untrusted: nothing here indexes past a bound.

use super::{h264, Stamp, SEI_UUID};
use crate::tsgen::ts::{NULL_PID, PACKET, SYNC};
use std::collections::BTreeMap;

/// Reads the transport_private_data stamp of one 188-byte packet, if any.
pub fn read_stamp(packet: &[u8]) -> Option<Stamp> {
    if packet.len() < PACKET || packet[0] != SYNC {
        return None;
    }
    let afc = (packet[3] >> 4) & 0x03;
    if afc & 0b10 == 0 {
        return None;
    }
    let af_len = usize::from(packet[4]);
    // The adaptation field is bytes 5 .. 5 + af_len and cannot pass the packet.
    let af = packet.get(5..5 + af_len)?;
    let (&flags, mut rest) = af.split_first()?;
    if flags & 0x02 == 0 {
        return None;
    }
    let skip = if flags & 0x10 != 0 { 6 } else { 0 }
        + if flags & 0x08 != 0 { 6 } else { 0 }
        + usize::from(flags & 0x04 != 0);
    rest = rest.get(skip..)?;
    let (&len, rest) = rest.split_first()?;
    let private = rest.get(..usize::from(len))?;
    Stamp::decode(private)
}

/// Finds the SEI stamp (user_data_unregistered with [`SEI_UUID`]) in a
/// stretch of H.264 Annex-B bytes, e.g. the payload of a video packet.
pub fn read_stamp_in_payload(payload: &[u8]) -> Option<Stamp> {
    let at = payload
        .windows(SEI_UUID.len())
        .position(|w| w == SEI_UUID)?;
    let after = payload.get(at + SEI_UUID.len()..)?;
    // Up to 12 stamp bytes plus room for emulation-prevention bytes.
    let raw = h264::unescape(&after[..after.len().min(18)]);
    let b = raw.get(..12)?;
    Some(Stamp {
        sent_unix_us: u64::from_be_bytes(b[..8].try_into().ok()?),
        seq: u32::from_be_bytes(b[8..12].try_into().ok()?),
    })
}

/// Continuity state of one PID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidCc {
    pub packets: u64,
    pub cc_errors: u64,
    last_cc: Option<u8>,
}

/// Summary of what a receiver saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnalyzerReport {
    pub packets: u64,
    pub bytes: u64,
    pub null_packets: u64,
    pub cc_errors: u64,
    /// Bytes skipped to find packet sync again.
    pub sync_skipped_bytes: u64,
    /// Chunk stamps whose sequence numbers were skipped (lost datagrams).
    pub missing_chunks: u64,
    pub stamps: u64,
    pub sei_stamps: u64,
    /// Latency percentiles (ms) from chunk stamps, else from SEI stamps.
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p90: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub latency_ms_max: Option<f64>,
}

/// Streaming analyzer; feed it datagrams or arbitrary byte-stream pieces.
#[derive(Debug, Default)]
pub struct TsAnalyzer {
    carry: Vec<u8>,
    packets: u64,
    bytes: u64,
    null_packets: u64,
    sync_skipped: u64,
    pids: BTreeMap<u16, PidCc>,
    last_seq: Option<u32>,
    missing_chunks: u64,
    latencies_us: Vec<i64>,
    sei_latencies_us: Vec<i64>,
}

/// Cap on stored latency samples so a long run cannot grow without bound.
const MAX_SAMPLES: usize = 2_000_000;

impl TsAnalyzer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes with their arrival time (µs since the Unix epoch).
    pub fn feed(&mut self, data: &[u8], recv_unix_us: u64) {
        self.bytes += data.len() as u64;
        if self.carry.is_empty()
            && data.len() % PACKET == 0
            && data.chunks(PACKET).all(|p| p[0] == SYNC)
        {
            for p in data.chunks(PACKET) {
                self.packet(p, recv_unix_us);
            }
            return;
        }
        self.carry.extend_from_slice(data);
        let mut i = 0;
        while i + PACKET <= self.carry.len() {
            if self.carry[i] != SYNC
                || (i + 2 * PACKET <= self.carry.len() && self.carry[i + PACKET] != SYNC)
            {
                i += 1;
                self.sync_skipped += 1;
                continue;
            }
            let p: [u8; PACKET] = match self.carry[i..i + PACKET].try_into() {
                Ok(p) => p,
                Err(_) => break,
            };
            self.packet(&p, recv_unix_us);
            i += PACKET;
        }
        self.carry.drain(..i);
    }

    fn packet(&mut self, p: &[u8], recv_us: u64) {
        self.packets += 1;
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        if pid == NULL_PID {
            self.null_packets += 1;
            return;
        }
        let afc = (p[3] >> 4) & 0x03;
        let cc = p[3] & 0x0F;
        let has_payload = afc & 0b01 != 0;
        let af_len = if afc & 0b10 != 0 {
            usize::from(p[4])
        } else {
            0
        };
        let discontinuity = afc & 0b10 != 0 && af_len > 0 && p[5] & 0x80 != 0;
        let st = self.pids.entry(pid).or_default();
        st.packets += 1;
        if has_payload {
            if let (Some(last), false) = (st.last_cc, discontinuity) {
                // One duplicate packet is allowed (cc == last).
                if cc != last && cc != (last + 1) & 0x0F {
                    st.cc_errors += 1;
                }
            }
            st.last_cc = Some(cc);
        }
        if let Some(s) = read_stamp(p) {
            if let Some(last) = self.last_seq {
                let d = s.seq.wrapping_sub(last);
                if d > 1 && d < 1 << 31 {
                    self.missing_chunks += u64::from(d - 1);
                }
            }
            self.last_seq = Some(s.seq);
            if self.latencies_us.len() < MAX_SAMPLES {
                self.latencies_us
                    .push(recv_us as i64 - s.sent_unix_us as i64);
            }
        }
        let pusi = p[1] & 0x40 != 0;
        if pusi && has_payload {
            let start = if afc & 0b10 != 0 { 5 + af_len } else { 4 };
            if let Some(payload) = p.get(start..) {
                if let Some(s) = read_stamp_in_payload(payload) {
                    if self.sei_latencies_us.len() < MAX_SAMPLES {
                        self.sei_latencies_us
                            .push(recv_us as i64 - s.sent_unix_us as i64);
                    }
                }
            }
        }
    }

    /// Per-PID continuity figures.
    pub fn pids(&self) -> &BTreeMap<u16, PidCc> {
        &self.pids
    }

    /// Raw latency samples in µs (chunk stamps).
    pub fn latencies_us(&self) -> &[i64] {
        &self.latencies_us
    }

    pub fn report(&self) -> AnalyzerReport {
        let src = if self.latencies_us.is_empty() {
            &self.sei_latencies_us
        } else {
            &self.latencies_us
        };
        let mut sorted = src.clone();
        sorted.sort_unstable();
        let pct = |q: f64| -> Option<f64> {
            if sorted.is_empty() {
                return None;
            }
            let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted.get(idx).map(|&us| us as f64 / 1000.0)
        };
        AnalyzerReport {
            packets: self.packets,
            bytes: self.bytes,
            null_packets: self.null_packets,
            cc_errors: self.pids.values().map(|p| p.cc_errors).sum(),
            sync_skipped_bytes: self.sync_skipped,
            missing_chunks: self.missing_chunks,
            stamps: self.latencies_us.len() as u64,
            sei_stamps: self.sei_latencies_us.len() as u64,
            latency_ms_p50: pct(0.5),
            latency_ms_p90: pct(0.9),
            latency_ms_p99: pct(0.99),
            latency_ms_max: pct(1.0),
        }
    }
}
