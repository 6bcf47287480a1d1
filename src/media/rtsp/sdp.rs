//! SDP (RFC 4566) as cameras send it in DESCRIBE answers: media sections, rtpmap, fmtp (H.264 sprop-parameter-sets, AAC config) and control URLs.

use base64::Engine as _;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sdp {
    /// Session-level `a=control`.
    pub control: Option<String>,
    pub media: Vec<Media>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Media {
    /// "video", "audio", "application".
    pub kind: String,
    pub proto: String,
    /// First payload type of the `m=` line (the one we set up).
    pub pt: u8,
    /// `a=rtpmap` of that payload type: encoding name, clock rate, channels.
    pub encoding: Option<String>,
    pub clock_rate: Option<u32>,
    pub channels: Option<u16>,
    /// `a=fmtp` parameters of that payload type, keys lower-cased.
    pub fmtp: Vec<(String, String)>,
    pub control: Option<String>,
}

impl Media {
    pub fn fmtp(&self, key: &str) -> Option<&str> {
        self.fmtp
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpError(pub String);

impl std::fmt::Display for SdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad SDP: {}", self.0)
    }
}

/// Most media sections a description may have: a camera offers a few; the
/// RTSP body limit (1 MiB) would otherwise allow ~50,000 `m=` lines, each
/// kept and walked by the session.
pub const MAX_MEDIA: usize = 64;

/// Parses a session description. Line-based and flat (nothing nests), so
/// hostile input costs at most one pass over the text.
pub fn parse(text: &str) -> Result<Sdp, SdpError> {
    let mut sdp = Sdp::default();
    let mut saw_version = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some((t, v)) = line.split_once('=') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(SdpError(format!("line without '=': {line:?}")));
        };
        match t {
            "v" => saw_version = true,
            "m" => {
                if sdp.media.len() >= MAX_MEDIA {
                    return Err(SdpError(format!("more than {MAX_MEDIA} media sections")));
                }
                let mut f = v.split_whitespace();
                let kind = f.next().unwrap_or_default().to_string();
                let _port = f.next();
                let proto = f.next().unwrap_or_default().to_string();
                let pt = f
                    .next()
                    .and_then(|p| p.parse::<u8>().ok())
                    .filter(|p| *p < 128)
                    .ok_or_else(|| SdpError(format!("m= line without a payload type: {v:?}")))?;
                sdp.media.push(Media {
                    kind,
                    proto,
                    pt,
                    ..Media::default()
                });
            }
            "a" => {
                let (name, value) = v.split_once(':').unwrap_or((v, ""));
                let value = value.trim();
                match (name, sdp.media.last_mut()) {
                    ("control", None) => sdp.control = Some(value.to_string()),
                    ("control", Some(m)) => m.control = Some(value.to_string()),
                    ("rtpmap", Some(m)) => {
                        let Some((pt, map)) = value.split_once(' ') else {
                            continue;
                        };
                        if pt.trim().parse::<u8>().ok() != Some(m.pt) {
                            continue;
                        }
                        let mut p = map.trim().split('/');
                        m.encoding = p.next().map(str::to_string);
                        m.clock_rate = p.next().and_then(|c| c.parse().ok());
                        m.channels = p.next().and_then(|c| c.parse().ok());
                    }
                    ("fmtp", Some(m)) => {
                        let Some((pt, params)) = value.split_once(' ') else {
                            continue;
                        };
                        if pt.trim().parse::<u8>().ok() != Some(m.pt) {
                            continue;
                        }
                        m.fmtp = params
                            .split(';')
                            .filter_map(|kv| {
                                let (k, v) = kv.split_once('=')?;
                                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            })
                            .collect();
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !saw_version {
        return Err(SdpError("no v= line".into()));
    }
    Ok(sdp)
}

/// What a media section carries, as far as the remuxer is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    H264 {
        sps: Vec<Vec<u8>>,
        pps: Vec<Vec<u8>>,
    },
    /// MPEG-4 AAC, RFC 3640 AAC-hbr mode.
    Aac {
        asc: Vec<u8>,
        clock: u32,
        size_length: u8,
        index_length: u8,
        index_delta_length: u8,
    },
    /// MPEG-2 TS over RTP (RFC 2250).
    Mp2t,
    /// Anything else, with the reason it is skipped.
    Unsupported(String),
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Media {
    pub fn codec(&self) -> Codec {
        let enc = self.encoding.as_deref().unwrap_or_default();
        let describe = || {
            if enc.is_empty() {
                format!("{} payload type {}", self.kind, self.pt)
            } else {
                format!("{} {enc}", self.kind)
            }
        };
        if enc.eq_ignore_ascii_case("H264") {
            if self.fmtp("packetization-mode").is_some_and(|m| m == "2") {
                return Codec::Unsupported(format!(
                    "{}: H.264 interleaved packetization-mode=2",
                    describe()
                ));
            }
            let (mut sps, mut pps) = (Vec::new(), Vec::new());
            for ps in self
                .fmtp("sprop-parameter-sets")
                .unwrap_or_default()
                .split(',')
            {
                let Ok(nal) = base64::engine::general_purpose::STANDARD.decode(ps.trim()) else {
                    continue;
                };
                match nal.first().map(|h| h & 0x1F) {
                    Some(7) => sps.push(nal),
                    Some(8) => pps.push(nal),
                    _ => {}
                }
            }
            return Codec::H264 { sps, pps };
        }
        if enc.eq_ignore_ascii_case("MP2T") || (enc.is_empty() && self.pt == 33) {
            return Codec::Mp2t;
        }
        if enc.eq_ignore_ascii_case("mpeg4-generic") {
            let mode = self.fmtp("mode").unwrap_or_default();
            if !mode.eq_ignore_ascii_case("AAC-hbr") {
                return Codec::Unsupported(format!("{}: mode {mode:?} (only AAC-hbr)", describe()));
            }
            let n = |k: &str, d: u8| self.fmtp(k).and_then(|v| v.parse::<u8>().ok()).unwrap_or(d);
            let asc = self.fmtp("config").and_then(hex).unwrap_or_default();
            let (size_length, index_length, index_delta_length) = (
                n("sizelength", 13),
                n("indexlength", 3),
                n("indexdeltalength", 3),
            );
            if asc.len() < 2 || size_length == 0 || size_length > 16 || index_length > 8 {
                return Codec::Unsupported(format!("{}: missing or bad AAC config", describe()));
            }
            return Codec::Aac {
                asc,
                clock: self.clock_rate.unwrap_or(0).max(1),
                size_length,
                index_length,
                index_delta_length: index_delta_length.min(8),
            };
        }
        Codec::Unsupported(format!("{}: codec not supported", describe()))
    }
}

/// The URL a track's SETUP goes to: an absolute control URL as is, a
/// relative one appended to the base (Content-Base / Content-Location /
/// request URL), `*` or none meaning the base itself.
pub fn resolve_control(base: &str, control: Option<&str>) -> String {
    match control.map(str::trim) {
        None | Some("") | Some("*") => base.to_string(),
        // `get`, not slicing: a camera's control attribute may put a
        // multi-byte character across byte 7 or 8 (found by the sdp fuzz
        // target: slicing panicked there).
        Some(c)
            if c.len() > 7
                && c.get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case("rtsp://")) =>
        {
            c.to_string()
        }
        Some(c)
            if c.len() > 8
                && c.get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("rtsps://")) =>
        {
            c.to_string()
        }
        Some(c) => {
            if base.ends_with('/') {
                format!("{base}{}", c.trim_start_matches('/'))
            } else {
                format!("{base}/{}", c.trim_start_matches('/'))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Fuzz regression: a control value with a multi-byte character
    /// across byte 7 ("tra\u{1d2}...") panicked in `resolve_control`.
    #[test]
    fn control_urls_with_multibyte_characters_resolve() {
        let c = "tra\u{1d2}\u{bfd9}ck";
        assert_eq!(
            super::resolve_control("rtsp://h/p/", Some(c)),
            format!("rtsp://h/p/{c}")
        );
        assert_eq!(
            super::resolve_control("rtsp://h/p", Some("rtsp\u{e9}://x")),
            "rtsp://h/p/rtsp\u{e9}://x"
        );
    }

    use super::*;
    use proptest::prelude::*;

    const CAM: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=Media Presentation\r\nt=0 0\r\na=control:*\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
a=fmtp:96 profile-level-id=42c01e;packetization-mode=1;sprop-parameter-sets=Z0LAHtkA,aM4G4g==\r\n\
a=control:trackID=1\r\n\
m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n\
a=fmtp:97 streamtype=5; profile-level-id=15; mode=AAC-hbr; config=1188; SizeLength=13; IndexLength=3; IndexDeltaLength=3\r\n\
a=control:rtsp://10.0.0.5/live/trackID=2\r\n\
m=audio 0 RTP/AVP 0\r\na=control:trackID=3\r\n";

    #[test]
    fn camera_sdp() {
        let s = parse(CAM).unwrap();
        assert_eq!(s.control.as_deref(), Some("*"));
        assert_eq!(s.media.len(), 3);
        let Codec::H264 { sps, pps } = s.media[0].codec() else {
            panic!("{:?}", s.media[0].codec())
        };
        assert_eq!((sps[0][0] & 0x1F, pps[0][0] & 0x1F), (7, 8));
        assert_eq!(
            s.media[1].codec(),
            Codec::Aac {
                asc: vec![0x11, 0x88],
                clock: 48000,
                size_length: 13,
                index_length: 3,
                index_delta_length: 3
            }
        );
        assert!(
            matches!(s.media[2].codec(), Codec::Unsupported(r) if r.contains("payload type 0"))
        );
        let base = "rtsp://10.0.0.5/live/";
        assert_eq!(
            resolve_control(base, s.media[0].control.as_deref()),
            "rtsp://10.0.0.5/live/trackID=1"
        );
        assert_eq!(
            resolve_control("rtsp://10.0.0.5/live", Some("trackID=1")),
            "rtsp://10.0.0.5/live/trackID=1"
        );
        assert_eq!(
            resolve_control(base, s.media[1].control.as_deref()),
            "rtsp://10.0.0.5/live/trackID=2"
        );
        assert_eq!(resolve_control(base, Some("*")), base);
        let ts = parse("v=0\nm=video 0 RTP/AVP 33\n").unwrap();
        assert_eq!(ts.media[0].codec(), Codec::Mp2t);
    }

    /// SDP does not nest, but "depth 100,000" of anything that looks like
    /// nesting, or that many media sections, is a clean answer.
    #[test]
    fn depth_100k_and_many_media_are_clean() {
        let deep = format!(
            "v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 sprop-parameter-sets={};x={}\na=control:{}\n",
            "[".repeat(100_000),
            "{".repeat(100_000),
            "(".repeat(100_000)
        );
        let s = parse(&deep).expect("flat text parses");
        // Whatever it makes of the garbage parameter sets, it answers.
        let _ = s.media[0].codec();
        assert_eq!(s.media[0].control.as_deref().map(str::len), Some(100_000));
        let many = format!("v=0\n{}", "m=video 0 RTP/AVP 96\n".repeat(100_000));
        let e = parse(&many).expect_err("too many media");
        assert!(e.to_string().contains("more than 64 media sections"), "{e}");
        let ok = format!("v=0\n{}", "m=video 0 RTP/AVP 96\n".repeat(MAX_MEDIA));
        assert_eq!(parse(&ok).expect("64 is fine").media.len(), MAX_MEDIA);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,400}") {
            if let Ok(sdp) = parse(&s) {
                for m in &sdp.media {
                    let _ = m.codec();
                    let _ = resolve_control("rtsp://h/p", m.control.as_deref());
                }
            }
        }

        #[test]
        fn mutated_camera_sdp_never_panics(i in 0usize..700, c in any::<char>()) {
            let mut s: Vec<char> = CAM.chars().collect();
            let i = i % s.len();
            s[i] = c;
            let s: String = s.into_iter().collect();
            if let Ok(sdp) = parse(&s) {
                for m in &sdp.media {
                    let _ = m.codec();
                }
            }
        }
    }
}
