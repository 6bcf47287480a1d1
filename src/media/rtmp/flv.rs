//! FLV tag bodies as RTMP carries them: AVC (sequence header -> SPS/PPS, length-prefixed NALUs -> Annex B, composition time) and AAC (sequence header -> ASC, raw frames); other codecs are refused with a reason.

/// What one audio or video message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// AVCDecoderConfigurationRecord: parameter sets and NALU length size.
    AvcConfig {
        sps: Vec<Vec<u8>>,
        pps: Vec<Vec<u8>>,
        nalu_len: u8,
    },
    /// One access unit, already converted to Annex B.
    Video {
        keyframe: bool,
        /// Composition time offset (PTS - DTS) in ms.
        cts: i32,
        annexb: Vec<u8>,
    },
    AacConfig(Vec<u8>),
    /// A sequence header that cannot be used (empty, no SPS/PPS): real
    /// relays send these (Debian's ffmpeg 5.1 relaying ADTS AAC from TS
    /// sends an empty AAC one before the real one), so the session waits
    /// for a usable one instead of refusing the publish.
    BadConfig(String),
    Audio(Vec<u8>),
    /// Nothing to mux (end of sequence, video info frames, empty bodies).
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// FLV video codec ids.
fn video_codec_name(id: u8) -> &'static str {
    match id {
        2 => "Sorenson H.263",
        3 => "Screen video",
        4 => "VP6",
        5 => "VP6 alpha",
        6 => "Screen video 2",
        7 => "H.264",
        12 => "HEVC (legacy FLV id 12)",
        _ => "unknown",
    }
}

/// Parses a video message. `nalu_len` comes from the last AVC config.
pub fn video(body: &[u8], nalu_len: u8) -> Result<Tag, Unsupported> {
    let Some(&b0) = body.first() else {
        return Ok(Tag::Skip);
    };
    if b0 & 0x80 != 0 {
        // Enhanced RTMP: IsExHeader, then a FourCC (hvc1, av01, vp09...).
        let fourcc = body
            .get(1..5)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default();
        return Err(Unsupported(format!(
            "enhanced RTMP video ({fourcc:?}) is not supported; publish H.264 (AVC)"
        )));
    }
    let frame_type = b0 >> 4;
    let codec = b0 & 0x0F;
    if codec != 7 {
        return Err(Unsupported(format!(
            "video codec {} (FLV id {codec}) is not supported; publish H.264 (AVC)",
            video_codec_name(codec)
        )));
    }
    if frame_type == 5 {
        return Ok(Tag::Skip);
    }
    let (Some(&pkt), Some(c)) = (body.get(1), body.get(2..5)) else {
        return Err(Unsupported("truncated AVC video tag".into()));
    };
    // Signed 24-bit composition time.
    let cts = ((i32::from(c[0]) << 24 | i32::from(c[1]) << 16 | i32::from(c[2]) << 8) >> 8)
        .clamp(-60_000, 60_000);
    let data = &body[5..];
    match pkt {
        // An unusable AVC sequence header is not fatal: wait for the next.
        0 => Ok(avc_config(data).unwrap_or_else(|Unsupported(why)| Tag::BadConfig(why))),
        1 => {
            let annexb = length_to_annexb(data, nalu_len)?;
            if annexb.is_empty() {
                return Ok(Tag::Skip);
            }
            Ok(Tag::Video {
                keyframe: frame_type == 1,
                cts,
                annexb,
            })
        }
        _ => Ok(Tag::Skip),
    }
}

fn avc_config(d: &[u8]) -> Result<Tag, Unsupported> {
    let bad = |w: &str| Unsupported(format!("bad AVC sequence header: {w}"));
    if d.len() < 6 {
        return Err(bad("too short"));
    }
    if d[0] != 1 {
        return Err(bad("configurationVersion is not 1"));
    }
    let nalu_len = (d[4] & 3) + 1;
    if nalu_len == 3 {
        return Err(bad("3-byte NALU lengths"));
    }
    let mut pos = 5;
    let sets = |count_mask: u8, pos: &mut usize| -> Result<Vec<Vec<u8>>, Unsupported> {
        let n = d.get(*pos).ok_or_else(|| bad("truncated"))? & count_mask;
        *pos += 1;
        let mut v = Vec::new();
        for _ in 0..n {
            let l = d.get(*pos..*pos + 2).ok_or_else(|| bad("truncated"))?;
            let l = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let s = d
                .get(*pos + 2..*pos + 2 + l)
                .ok_or_else(|| bad("parameter set overruns the record"))?;
            if !s.is_empty() {
                v.push(s.to_vec());
            }
            *pos += 2 + l;
        }
        Ok(v)
    };
    let sps = sets(0x1F, &mut pos)?;
    let pps = sets(0xFF, &mut pos)?;
    if sps.is_empty() || pps.is_empty() {
        return Err(bad("no SPS or no PPS"));
    }
    Ok(Tag::AvcConfig { sps, pps, nalu_len })
}

/// Length-prefixed NAL units (AVCC) to Annex B with 4-byte start codes.
pub fn length_to_annexb(mut d: &[u8], nalu_len: u8) -> Result<Vec<u8>, Unsupported> {
    let n = usize::from(nalu_len);
    if !matches!(n, 1 | 2 | 4) {
        return Err(Unsupported(format!("NALU length size {n}")));
    }
    let mut out = Vec::with_capacity(d.len() + 16);
    while !d.is_empty() {
        let Some(l) = d.get(..n) else {
            return Err(Unsupported("truncated NALU length".into()));
        };
        let len = l.iter().fold(0usize, |a, &b| a << 8 | usize::from(b));
        let Some(nal) = d.get(n..n + len) else {
            return Err(Unsupported(format!(
                "NALU of {len} bytes overruns the video tag ({} left)",
                d.len() - n
            )));
        };
        if !nal.is_empty() {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        d = &d[n + len..];
    }
    Ok(out)
}

fn audio_codec_name(id: u8) -> &'static str {
    match id {
        0 => "linear PCM",
        1 => "ADPCM",
        2 => "MP3",
        3 => "linear PCM (LE)",
        4..=6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        9 => "enhanced RTMP audio",
        11 => "Speex",
        14 => "MP3 8 kHz",
        _ => "unknown",
    }
}

/// Parses an audio message.
pub fn audio(body: &[u8]) -> Result<Tag, Unsupported> {
    let Some(&b0) = body.first() else {
        return Ok(Tag::Skip);
    };
    let fmt = b0 >> 4;
    if fmt != 10 {
        return Err(Unsupported(format!(
            "audio codec {} (FLV id {fmt}) is not supported; publish AAC",
            audio_codec_name(fmt)
        )));
    }
    match body.get(1) {
        Some(0) if body.len() > 2 => Ok(Tag::AacConfig(body[2..].to_vec())),
        Some(0) => Ok(Tag::BadConfig("empty AAC sequence header".into())),
        Some(1) if body.len() > 2 => Ok(Tag::Audio(body[2..].to_vec())),
        _ => Ok(Tag::Skip),
    }
}
