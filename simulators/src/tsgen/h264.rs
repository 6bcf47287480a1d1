//! A tiny H.264 Baseline "encoder" for synthetic pictures that real decoders show.
//!
//! It never transforms pixels: an IDR picture is one flat background colour
//! (I_PCM macroblocks where a colour is set, Intra16x16 DC prediction with no
//! residual everywhere else, which copies the neighbours' colour), plus a white
//! square; P pictures skip every macroblock except the two the moving square
//! touches, which are I_PCM. The result is a few hundred bytes per picture,
//! decodes in ffmpeg/VLC without errors and shows visible motion, so the demo
//! has a real picture without shipping a codec.

/// Frame geometry: 640x368 coded, cropped to 640x360.
pub(crate) const WIDTH_MBS: u32 = 40;
pub(crate) const HEIGHT_MBS: u32 = 23;
const CROP_BOTTOM_UNITS: u32 = 4; // 2 luma rows per unit in 4:2:0 => 8 rows
/// log2(MaxFrameNum) = 8: frame_num is an 8-bit field.
const LOG2_MAX_FRAME_NUM: u32 = 8;

/// A Y'CbCr colour (video range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Yuv(pub u8, pub u8, pub u8);

pub(crate) const WHITE: Yuv = Yuv(235, 128, 128);
/// Background colours, one per GOP, so keyframes are visible to a person.
pub(crate) const PALETTE: [Yuv; 6] = [
    Yuv(41, 240, 110),  // blue
    Yuv(145, 54, 34),   // green
    Yuv(81, 90, 240),   // red
    Yuv(106, 202, 222), // magenta
    Yuv(170, 166, 16),  // cyan
    Yuv(210, 16, 146),  // yellow
];

/// Big-endian bit writer for RBSP syntax (u(n), ue(v), se(v)).
pub(crate) struct BitWriter {
    buf: Vec<u8>,
    cur: u8,
    nbits: u8,
}

impl BitWriter {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(64),
            cur: 0,
            nbits: 0,
        }
    }

    pub(crate) fn bit(&mut self, b: bool) {
        self.cur = (self.cur << 1) | u8::from(b);
        self.nbits += 1;
        if self.nbits == 8 {
            self.buf.push(self.cur);
            self.cur = 0;
            self.nbits = 0;
        }
    }

    pub(crate) fn u(&mut self, n: u32, v: u32) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }

    /// Exp-Golomb unsigned.
    pub(crate) fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        for _ in 1..len {
            self.bit(false);
        }
        for i in (0..len).rev() {
            self.bit((x >> i) & 1 == 1);
        }
    }

    /// Exp-Golomb signed.
    pub(crate) fn se(&mut self, v: i32) {
        let k = if v > 0 {
            (v as u32) * 2 - 1
        } else {
            v.unsigned_abs() * 2
        };
        self.ue(k);
    }

    pub(crate) fn align_zero(&mut self) {
        while self.nbits != 0 {
            self.bit(false);
        }
    }

    fn fill(&mut self, v: u8, n: usize) {
        debug_assert_eq!(self.nbits, 0);
        self.buf.resize(self.buf.len() + n, v);
    }

    /// rbsp_trailing_bits and the finished RBSP.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        self.align_zero();
        self.buf
    }
}

/// Appends one Annex-B NAL unit (4-byte start code) with emulation prevention.
pub(crate) fn push_nal(out: &mut Vec<u8>, ref_idc: u8, nal_type: u8, rbsp: &[u8]) {
    out.extend_from_slice(&[0, 0, 0, 1, (ref_idc << 5) | nal_type]);
    let mut zeros = 0u32;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
}

/// Removes emulation-prevention bytes (00 00 03 -> 00 00).
pub(crate) fn unescape(ebsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ebsp.len());
    let mut zeros = 0u32;
    for &b in ebsp {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

pub(crate) fn aud(out: &mut Vec<u8>, idr: bool) {
    // primary_pic_type 0 = I only, 1 = I and P.
    let mut w = BitWriter::new();
    w.u(3, if idr { 0 } else { 1 });
    push_nal(out, 0, 9, &w.finish());
}

pub(crate) fn sps(out: &mut Vec<u8>, fps: u32) {
    let mut w = BitWriter::new();
    w.u(8, 66); // profile_idc: Baseline
    w.u(8, 0xC0); // constraint_set0/1: also Constrained Baseline-compatible
    w.u(8, 30); // level 3.0
    w.ue(0); // seq_parameter_set_id
    w.ue(LOG2_MAX_FRAME_NUM - 4);
    w.ue(2); // pic_order_cnt_type 2: output order = decode order, no B
    w.ue(1); // max_num_ref_frames
    w.bit(false); // gaps_in_frame_num_value_allowed_flag
    w.ue(WIDTH_MBS - 1);
    w.ue(HEIGHT_MBS - 1);
    w.bit(true); // frame_mbs_only_flag
    w.bit(true); // direct_8x8_inference_flag
    w.bit(true); // frame_cropping_flag
    w.ue(0);
    w.ue(0);
    w.ue(0);
    w.ue(CROP_BOTTOM_UNITS);
    w.bit(true); // vui_parameters_present_flag
    w.bit(false); // aspect_ratio_info_present_flag
    w.bit(false); // overscan_info_present_flag
    w.bit(false); // video_signal_type_present_flag
    w.bit(false); // chroma_loc_info_present_flag
    w.bit(true); // timing_info_present_flag
    w.u(32, 1); // num_units_in_tick
    w.u(32, fps * 2); // time_scale (two ticks per frame)
    w.bit(true); // fixed_frame_rate_flag
    w.bit(false); // nal_hrd_parameters_present_flag
    w.bit(false); // vcl_hrd_parameters_present_flag
    w.bit(false); // pic_struct_present_flag
    w.bit(true); // bitstream_restriction_flag: tell decoders not to buffer
    w.bit(true); // motion_vectors_over_pic_boundaries_flag
    w.ue(0); // max_bytes_per_pic_denom
    w.ue(0); // max_bits_per_mb_denom
    w.ue(16); // log2_max_mv_length_horizontal
    w.ue(16); // log2_max_mv_length_vertical
    w.ue(0); // max_num_reorder_frames
    w.ue(1); // max_dec_frame_buffering
    push_nal(out, 3, 7, &w.finish());
}

pub(crate) fn pps(out: &mut Vec<u8>) {
    let mut w = BitWriter::new();
    w.ue(0); // pic_parameter_set_id
    w.ue(0); // seq_parameter_set_id
    w.bit(false); // entropy_coding_mode_flag: CAVLC
    w.bit(false); // bottom_field_pic_order_in_frame_present_flag
    w.ue(0); // num_slice_groups_minus1
    w.ue(0); // num_ref_idx_l0_default_active_minus1
    w.ue(0); // num_ref_idx_l1_default_active_minus1
    w.bit(false); // weighted_pred_flag
    w.u(2, 0); // weighted_bipred_idc
    w.se(0); // pic_init_qp_minus26
    w.se(0); // pic_init_qs_minus26
    w.se(0); // chroma_qp_index_offset
    w.bit(true); // deblocking_filter_control_present_flag
    w.bit(false); // constrained_intra_pred_flag
    w.bit(false); // redundant_pic_cnt_present_flag
    push_nal(out, 3, 8, &w.finish());
}

/// SEI user_data_unregistered carrying the castpoint send stamp.
pub(crate) fn sei_stamp(out: &mut Vec<u8>, uuid: &[u8; 16], payload: &[u8]) {
    let mut rbsp = Vec::with_capacity(2 + 16 + payload.len() + 1);
    rbsp.push(5); // payloadType: user_data_unregistered
    let size = 16 + payload.len();
    debug_assert!(size < 255);
    rbsp.push(size as u8);
    rbsp.extend_from_slice(uuid);
    rbsp.extend_from_slice(payload);
    rbsp.push(0x80); // rbsp_trailing_bits
    push_nal(out, 0, 6, &rbsp);
}

/// Filler data NAL unit (type 12) of about `n` payload bytes, used to reach
/// the configured bit rate with video bytes rather than only null packets.
pub(crate) fn filler(out: &mut Vec<u8>, n: usize) {
    // 0xFF..0x80 never needs emulation prevention, so the payload is
    // written whole rather than byte by byte through `push_nal`: filler is
    // most of a picture's bytes, and this loop was the generator input's
    // largest cost (17 % of a 100-route generator-only profile, issue 25).
    out.extend_from_slice(&[0, 0, 0, 1, 12]);
    out.resize(out.len() + n, 0xFF);
    out.push(0x80);
}

fn pcm(w: &mut BitWriter, c: Yuv) {
    w.align_zero(); // pcm_alignment_zero_bit
    w.fill(c.0, 256);
    w.fill(c.1, 64);
    w.fill(c.2, 64);
}

/// coeff_token for TotalCoeff = 0, TrailingOnes = 0 (Table 9-5).
fn coeff_token_zero(w: &mut BitWriter, nc: u32) {
    match nc {
        0..=1 => w.u(1, 0b1),
        2..=3 => w.u(2, 0b11),
        4..=7 => w.u(4, 0b1111),
        _ => w.u(6, 0b000011),
    }
}

/// Where the moving square is on frame `n`.
pub(crate) fn square_at(n: u64) -> (u32, u32) {
    ((n % u64::from(WIDTH_MBS)) as u32, HEIGHT_MBS / 2)
}

/// IDR slice: background everywhere, the square at `sq`.
pub(crate) fn idr_slice(out: &mut Vec<u8>, idr_pic_id: u32, bg: Yuv, sq: (u32, u32)) {
    let mut w = BitWriter::new();
    w.ue(0); // first_mb_in_slice
    w.ue(7); // slice_type: I (all slices)
    w.ue(0); // pic_parameter_set_id
    w.u(LOG2_MAX_FRAME_NUM, 0); // frame_num
    w.ue(idr_pic_id);
    w.bit(false); // no_output_of_prior_pics_flag
    w.bit(false); // long_term_reference_flag
    w.se(0); // slice_qp_delta
    w.ue(1); // disable_deblocking_filter_idc: nothing to smooth
             // I_PCM macroblocks: (0,0) seeds the background for DC prediction; the
             // square; and background right of and below it so DC prediction does not
             // smear the square's white into its neighbours.
    let pcm_at = |x: u32, y: u32| -> Option<Yuv> {
        if (x, y) == sq {
            Some(WHITE)
        } else if (x, y) == (0, 0) || (x, y) == (sq.0 + 1, sq.1) || (x, y) == (sq.0, sq.1 + 1) {
            Some(bg)
        } else {
            None
        }
    };
    for y in 0..HEIGHT_MBS {
        for x in 0..WIDTH_MBS {
            if let Some(c) = pcm_at(x, y) {
                w.ue(25); // mb_type I_PCM
                pcm(&mut w, c);
                continue;
            }
            // I_16x16_2_0_0: DC prediction, no chroma/luma coefficients.
            w.ue(3);
            w.ue(0); // intra_chroma_pred_mode: DC
            w.se(0); // mb_qp_delta
                     // nC for the Intra16x16 DC block: I_PCM neighbours count as 16
                     // coefficients, the others have none (8.2.1 / 9.2.1).
            let na = (x > 0).then(|| if pcm_at(x - 1, y).is_some() { 16 } else { 0 });
            let nb = (y > 0).then(|| if pcm_at(x, y - 1).is_some() { 16 } else { 0 });
            let nc = match (na, nb) {
                (Some(a), Some(b)) => (a + b + 1) >> 1,
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => 0,
            };
            coeff_token_zero(&mut w, nc);
        }
    }
    push_nal(out, 3, 5, &w.finish());
}

/// P slice: every macroblock skipped (copied) except `coded`, which are
/// I_PCM in the given colours. `coded` must be sorted by address, unique.
pub(crate) fn p_slice(out: &mut Vec<u8>, frame_num: u32, coded: &[(u32, Yuv)]) {
    let mut w = BitWriter::new();
    w.ue(0); // first_mb_in_slice
    w.ue(5); // slice_type: P (all slices)
    w.ue(0); // pic_parameter_set_id
    w.u(
        LOG2_MAX_FRAME_NUM,
        frame_num & ((1 << LOG2_MAX_FRAME_NUM) - 1),
    );
    w.bit(false); // num_ref_idx_active_override_flag
    w.bit(false); // ref_pic_list_modification_flag_l0
    w.bit(false); // adaptive_ref_pic_marking_mode_flag: sliding window
    w.se(0); // slice_qp_delta
    w.ue(1); // disable_deblocking_filter_idc
    let total = WIDTH_MBS * HEIGHT_MBS;
    let mut next = 0;
    for &(addr, c) in coded {
        w.ue(addr - next); // mb_skip_run
        w.ue(5 + 25); // mb_type: I_PCM in a P slice
        pcm(&mut w, c);
        next = addr + 1;
    }
    if next < total {
        w.ue(total - next);
    }
    push_nal(out, 2, 1, &w.finish());
}

/// One access unit's NAL units (without the stamp SEI and filler).
pub(crate) struct Picture {
    pub(crate) bytes: Vec<u8>,
}

/// Builds frame `n` of a stream whose keyframes come every `gop` frames.
pub(crate) fn picture(n: u64, gop: u64, fps: u32, stamp: Option<(&[u8; 16], &[u8])>) -> Picture {
    let idr = n % gop == 0;
    let gop_index = n / gop;
    let bg = PALETTE[(gop_index % PALETTE.len() as u64) as usize];
    let mut out = Vec::with_capacity(2048);
    aud(&mut out, idr);
    if idr {
        sps(&mut out, fps);
        pps(&mut out);
    }
    if let Some((uuid, payload)) = stamp {
        sei_stamp(&mut out, uuid, payload);
    }
    let sq = square_at(n);
    if idr {
        idr_slice(&mut out, (gop_index % 65536) as u32, bg, sq);
    } else {
        let old = square_at(n - 1);
        let addr = |(x, y): (u32, u32)| y * WIDTH_MBS + x;
        let mut coded = vec![(addr(sq), WHITE)];
        if old != sq {
            coded.push((addr(old), bg));
        }
        coded.sort_by_key(|c| c.0);
        p_slice(&mut out, (n % gop) as u32, &coded);
    }
    Picture { bytes: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_is_the_escaped_nal_it_stands_for() {
        for n in [0, 1, 2, 3, 187, 4000] {
            let mut fast = vec![9];
            filler(&mut fast, n);
            let mut rbsp = vec![0xFF; n];
            rbsp.push(0x80);
            let mut slow = vec![9];
            push_nal(&mut slow, 0, 12, &rbsp);
            assert_eq!(fast, slow, "n = {n}");
        }
    }

    #[test]
    fn exp_golomb_codes() {
        let mut w = BitWriter::new();
        w.ue(0); // 1
        w.ue(1); // 010
        w.ue(2); // 011
        w.ue(3); // 00100
        w.se(-1); // ue(2) = 011
        w.align_zero();
        // 1 010 011 0 | 0100 011 0
        assert_eq!(w.finish(), vec![0b1010_0110, 0b0100_0110, 0x80]);
    }

    #[test]
    fn emulation_prevention_round_trips() {
        let rbsp = [0u8, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 0xFF, 0, 0];
        let mut out = Vec::new();
        push_nal(&mut out, 0, 6, &rbsp);
        let body = &out[5..];
        assert!(!body.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2));
        assert_eq!(unescape(body), rbsp);
    }

    #[test]
    fn keyframes_carry_sps_pps_and_idr() {
        let types = |b: &[u8]| -> Vec<u8> {
            b.windows(4)
                .enumerate()
                .filter(|(_, w)| *w == [0, 0, 0, 1])
                .map(|(i, _)| b[i + 4] & 0x1F)
                .collect()
        };
        let key = picture(50, 25, 25, None);
        assert_eq!(types(&key.bytes), vec![9, 7, 8, 5]);
        let p = picture(51, 25, 25, None);
        assert_eq!(types(&p.bytes), vec![9, 1]);
    }
}
