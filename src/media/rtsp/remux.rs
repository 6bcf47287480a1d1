//! Depacketized camera tracks -> MPEG-TS: MP2T payloads pass through the aligner, H.264 access units and AAC frames go through the shared native muxer (`media::tsmux`).

use bytes::BytesMut;

use super::rtp::{AacFrame, AccessUnit};
use crate::media::tsmux::{AacConfig, MuxConfig, TsMuxer, VideoConfig};
use crate::mpegts::ts::Aligner;

/// Builds the route's TS from whatever tracks the session set up.
pub(super) struct Remux {
    mux: Option<TsMuxer>,
    /// The session has a video track: the muxer waits for its parameter
    /// sets (audio alone would start a program without video in its PMT).
    want_video: bool,
    audio: Option<AacConfig>,
    aligner: Aligner,
    out: BytesMut,
}

impl Remux {
    pub fn new(want_video: bool, audio_asc: Option<&[u8]>) -> Self {
        Remux {
            mux: None,
            want_video,
            audio: audio_asc.and_then(|a| AacConfig::from_asc(a).ok()),
            aligner: Aligner::new(),
            out: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// MP2T payload (RFC 2250: whole 188-byte packets).
    pub fn ts(&mut self, payload: &[u8]) {
        let b = self.aligner.push(payload);
        self.out.extend_from_slice(&b);
    }

    pub fn video(&mut self, au: &AccessUnit, sps: &[Vec<u8>], pps: &[Vec<u8>]) {
        let cfg = MuxConfig {
            video: Some(VideoConfig {
                sps: sps.to_vec(),
                pps: pps.to_vec(),
            }),
            audio: self.audio.clone(),
        };
        match &mut self.mux {
            None => self.mux = Some(TsMuxer::new(cfg)),
            // New parameter sets in band (resolution change): the muxer
            // repeats PAT/PMT and inserts the new ones before IDRs.
            Some(m) if m.config() != &cfg => m.update(cfg),
            Some(_) => {}
        }
        if let Some(m) = &mut self.mux {
            // RTP carries presentation time only; cameras' H.264 profiles
            // for RTSP have no B-frames, so DTS = PTS.
            m.push_video(au.pts, au.pts, au.keyframe, &au.annexb, &mut self.out);
        }
    }

    pub fn audio(&mut self, f: &AacFrame) {
        if self.mux.is_none() && !self.want_video && self.audio.is_some() {
            self.mux = Some(TsMuxer::new(MuxConfig {
                video: None,
                audio: self.audio.clone(),
            }));
        }
        if let Some(m) = &mut self.mux {
            m.push_audio(f.pts, &f.data, &mut self.out);
        }
    }

    /// TS produced since the last call.
    pub fn take(&mut self) -> BytesMut {
        self.out.split()
    }
}
