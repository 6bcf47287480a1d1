//! MPEG-TS building blocks: CRC-32/MPEG-2, PAT/PMT sections, PES headers and
//! the packetizer that cuts an elementary-stream buffer into 188-byte packets.

pub const PACKET: usize = 188;
pub const SYNC: u8 = 0x47;
pub const NULL_PID: u16 = 0x1FFF;

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init all ones, no reflection, no xor-out).
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

/// A PSI section from table_id, the 16-bit id field and the body after
/// last_section_number; appends the CRC.
fn section(table_id: u8, id: u16, version: u8, body: &[u8]) -> Vec<u8> {
    let len = 5 + body.len() + 4; // after section_length: id..last_section + body + crc
    let mut s = Vec::with_capacity(3 + len);
    s.push(table_id);
    s.push(0xB0 | ((len >> 8) as u8 & 0x0F)); // syntax indicator, '0', reserved
    s.push(len as u8);
    s.extend_from_slice(&id.to_be_bytes());
    s.push(0xC1 | ((version & 0x1F) << 1)); // reserved, version, current_next
    s.push(0); // section_number
    s.push(0); // last_section_number
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

pub fn pat(transport_stream_id: u16, program: u16, pmt_pid: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(4);
    body.extend_from_slice(&program.to_be_bytes());
    body.extend_from_slice(&(0xE000 | pmt_pid).to_be_bytes());
    section(0x00, transport_stream_id, 0, &body)
}

/// PMT: PCR on `pcr_pid`, streams as (stream_type, pid).
pub fn pmt(program: u16, pcr_pid: u16, streams: &[(u8, u16)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(0xE000 | pcr_pid).to_be_bytes());
    body.extend_from_slice(&0xF000u16.to_be_bytes()); // program_info_length 0
    for &(st, pid) in streams {
        body.push(st);
        body.extend_from_slice(&(0xE000 | pid).to_be_bytes());
        body.extend_from_slice(&0xF000u16.to_be_bytes()); // ES_info_length 0
    }
    section(0x02, program, 0, &body)
}

fn put_ts(out: &mut Vec<u8>, prefix: u8, ts: u64) {
    let ts = ts & 0x1_FFFF_FFFF;
    out.push((prefix << 4) | (((ts >> 30) as u8 & 0x07) << 1) | 1);
    out.extend_from_slice(&((((ts >> 15) as u16 & 0x7FFF) << 1) | 1).to_be_bytes());
    out.extend_from_slice(&(((ts as u16 & 0x7FFF) << 1) | 1).to_be_bytes());
}

/// PES header. `payload_len` None = unbounded (allowed for video in TS).
pub fn pes_header(
    stream_id: u8,
    pts: u64,
    dts: Option<u64>,
    payload_len: Option<usize>,
) -> Vec<u8> {
    let hdr_data = if dts.is_some() { 10 } else { 5 };
    let mut h = Vec::with_capacity(9 + hdr_data);
    h.extend_from_slice(&[0, 0, 1, stream_id]);
    let len = payload_len
        .map(|l| 3 + hdr_data + l)
        .filter(|&l| l <= 0xFFFF)
        .unwrap_or(0);
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h.push(0x84); // '10', not scrambled, data_alignment_indicator
    match dts {
        Some(dts) => {
            h.push(0xC0);
            h.push(10);
            put_ts(&mut h, 0b0011, pts);
            put_ts(&mut h, 0b0001, dts);
        }
        None => {
            h.push(0x80);
            h.push(5);
            put_ts(&mut h, 0b0010, pts);
        }
    }
    h
}

/// Fields that go into one packet's adaptation field.
#[derive(Default, Clone, Copy)]
pub struct AfOpts<'a> {
    pub random_access: bool,
    /// PCR in 27 MHz ticks.
    pub pcr: Option<u64>,
    pub private: Option<&'a [u8]>,
}

impl AfOpts<'_> {
    /// Bytes the adaptation field needs, length byte included (0 = none).
    fn size(&self) -> usize {
        if !self.random_access && self.pcr.is_none() && self.private.is_none() {
            return 0;
        }
        2 + if self.pcr.is_some() { 6 } else { 0 } + self.private.map_or(0, |p| 1 + p.len())
    }
}

/// Writes one packet: header, adaptation field (padded with stuffing so the
/// payload exactly fills the rest) and as much of `payload` as fits. Returns
/// how many payload bytes were taken. `payload` empty = adaptation-only.
pub fn write_packet(
    out: &mut [u8; PACKET],
    pid: u16,
    pusi: bool,
    cc: u8,
    af: AfOpts<'_>,
    payload: &[u8],
) -> usize {
    let af_min = af.size();
    let room = PACKET - 4 - af_min;
    let take = payload.len().min(room);
    // Adaptation field grows to absorb what the payload leaves unused.
    let af_total = PACKET - 4 - take;
    let has_af = af_total > 0;
    let has_payload = take > 0;
    let afc = match (has_af, has_payload) {
        (true, true) => 0b11,
        (true, false) => 0b10,
        (false, _) => 0b01,
    };
    out[0] = SYNC;
    out[1] = (u8::from(pusi) << 6) | ((pid >> 8) as u8 & 0x1F);
    out[2] = pid as u8;
    out[3] = (afc << 4) | (cc & 0x0F);
    let mut i = 4;
    if has_af {
        out[i] = (af_total - 1) as u8;
        i += 1;
        if af_total > 1 {
            let flags = (u8::from(af.random_access) << 6)
                | (u8::from(af.pcr.is_some()) << 4)
                | (u8::from(af.private.is_some()) << 1);
            out[i] = flags;
            i += 1;
            if let Some(pcr) = af.pcr {
                let base = (pcr / 300) & 0x1_FFFF_FFFF;
                let ext = (pcr % 300) as u16;
                out[i] = (base >> 25) as u8;
                out[i + 1] = (base >> 17) as u8;
                out[i + 2] = (base >> 9) as u8;
                out[i + 3] = (base >> 1) as u8;
                out[i + 4] = (((base & 1) as u8) << 7) | 0x7E | ((ext >> 8) as u8 & 1);
                out[i + 5] = ext as u8;
                i += 6;
            }
            if let Some(p) = af.private {
                out[i] = p.len() as u8;
                out[i + 1..i + 1 + p.len()].copy_from_slice(p);
                i += 1 + p.len();
            }
            let end = 4 + af_total;
            out[i..end].fill(0xFF);
            i = end;
        }
    }
    out[i..i + take].copy_from_slice(&payload[..take]);
    take
}

/// A null packet (PID 0x1FFF, payload only, as the standard requires).
pub fn null_packet(out: &mut [u8; PACKET]) {
    out[0] = SYNC;
    out[1] = 0x1F;
    out[2] = 0xFF;
    out[3] = 0x10;
    out[4..].fill(0xFF);
}

/// One elementary stream being cut into packets lazily, so that per-packet
/// decisions (PCR, stamp) are made at the moment the packet is sent.
pub struct EsQueue {
    pub pid: u16,
    cc: u8,
    data: Vec<u8>,
    pos: usize,
    random_access: bool,
}

impl EsQueue {
    pub fn new(pid: u16) -> Self {
        Self {
            pid,
            cc: 0,
            data: Vec::new(),
            pos: 0,
            random_access: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Queues a whole PES packet (header + payload); must be empty.
    pub fn start(&mut self, pes: Vec<u8>, random_access: bool) {
        debug_assert!(self.is_empty());
        self.data = pes;
        self.pos = 0;
        self.random_access = random_access;
    }

    pub fn next_packet(
        &mut self,
        out: &mut [u8; PACKET],
        pcr: Option<u64>,
        private: Option<&[u8]>,
    ) {
        let first = self.pos == 0;
        let af = AfOpts {
            random_access: first && self.random_access,
            pcr,
            private,
        };
        let took = write_packet(out, self.pid, first, self.cc, af, &self.data[self.pos..]);
        self.pos += took;
        self.cc = (self.cc + 1) & 0x0F;
    }

    /// Adaptation-only packet carrying a PCR and/or a stamp; does not
    /// advance the continuity counter, as the standard requires.
    pub fn af_packet(&self, out: &mut [u8; PACKET], pcr: Option<u64>, private: Option<&[u8]>) {
        let af = AfOpts {
            random_access: false,
            pcr,
            private,
        };
        // CC of an adaptation-only packet repeats the previous payload packet's.
        write_packet(
            out,
            self.pid,
            false,
            self.cc.wrapping_sub(1) & 0x0F,
            af,
            &[],
        );
    }

    /// A one-packet section (PSI) with pointer_field 0.
    pub fn section_packet(
        &mut self,
        out: &mut [u8; PACKET],
        section: &[u8],
        private: Option<&[u8]>,
    ) {
        let mut payload = Vec::with_capacity(1 + section.len());
        payload.push(0); // pointer_field
        payload.extend_from_slice(section);
        // Pad with 0xFF so the section is followed by stuffing bytes rather
        // than adaptation-field stuffing (either is legal; this is common).
        let af_len = AfOpts {
            private,
            ..Default::default()
        }
        .size();
        payload.resize(PACKET - 4 - af_len, 0xFF);
        let af = AfOpts {
            private,
            ..Default::default()
        };
        write_packet(out, self.pid, true, self.cc, af, &payload);
        self.cc = (self.cc + 1) & 0x0F;
    }
}

/// Moves the PTS and DTS of the PES header starting in TS packet `p` by
/// `add` (90 kHz, wrapping at 33 bits), keeping the marker bits: test
/// streams with timestamp jumps and discontinuities. A packet that starts
/// no PES is left alone.
pub fn shift_pes_timestamps(p: &mut [u8], add: u64) {
    if p.len() < 5 || p[1] & 0x40 == 0 {
        return;
    }
    let mut off = 4;
    if p[3] & 0x20 != 0 {
        off += 1 + usize::from(p[4]);
    }
    let Some(pl) = p.get_mut(off..) else { return };
    if pl.len() < 19 || pl[0..3] != [0, 0, 1] {
        return;
    }
    let flags = pl[7] >> 6;
    let rw = |b: &mut [u8]| {
        let t = (u64::from(b[0] >> 1) & 0x07) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1);
        let t = t.wrapping_add(add) & ((1 << 33) - 1);
        b[0] = (b[0] & 0xF0) | (((t >> 30) as u8 & 0x07) << 1) | 1;
        b[1] = (t >> 22) as u8;
        b[2] = (((t >> 15) as u8 & 0x7F) << 1) | 1;
        b[3] = (t >> 7) as u8;
        b[4] = ((t as u8 & 0x7F) << 1) | 1;
    };
    if flags & 0b10 != 0 {
        rw(&mut pl[9..14]);
    }
    if flags == 0b11 {
        rw(&mut pl[14..19]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_known_pat() {
        // The check value of CRC-32/MPEG-2 over "123456789".
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
        // A section with its CRC appended has a CRC of zero.
        let s = pat(1, 1, 0x1000);
        assert_eq!(crc32_mpeg2(&s), 0);
    }

    #[test]
    fn packet_fills_exactly() {
        let mut p = [0u8; PACKET];
        for n in [0usize, 1, 100, 182, 183, 184, 185, 1000] {
            let data = vec![0xAB; n];
            let took = write_packet(&mut p, 0x100, true, 3, AfOpts::default(), &data);
            assert_eq!(took, n.min(184));
            assert_eq!(p[0], SYNC);
            if took < 184 {
                assert_eq!(p[3] >> 4, if took == 0 { 0b10 } else { 0b11 });
                assert_eq!(usize::from(p[4]) + 1 + took + 4, PACKET);
            }
        }
    }
}
