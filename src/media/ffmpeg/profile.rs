//! Output profiles (`[[profile]]` tables: codec, encoder, size, rate, bit rate, GOP, preset, audio, audio matrix) and the ffmpeg argument lists built from them (transcode and RTMP push).

use super::matrix::{self, Track, TrackSpec};
use crate::section::{Num, Problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Hevc,
    /// Video passes through untouched (audio-only work such as a matrix).
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderPref {
    /// NVENC when a usable GPU was found at start-up, else software.
    Auto,
    Nvenc,
    Software,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    Copy,
    None,
}

/// Which encoder a child actually uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    Nvenc,
    Software,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The Output Profile point's value selecting this profile.
    pub number: u32,
    pub name: String,
    pub video: VideoCodec,
    pub encoder: EncoderPref,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    /// Video bit rate, bit/s.
    pub bitrate: u64,
    /// Key-frame interval in frames.
    pub gop: Option<u32>,
    pub preset: Option<String>,
    pub audio: AudioCodec,
    pub audio_bitrate: u64,
    /// Audio matrix: output tracks (empty: the source's first track as is).
    pub tracks: Vec<Track>,
}

const X264_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];

/// x264 preset names -> NVENC p1..p7 (fastest to slowest), so one profile
/// works on both encoders.
fn nvenc_preset(p: &str) -> &'static str {
    match p {
        "ultrafast" | "superfast" | "p1" => "p1",
        "veryfast" | "p2" => "p2",
        "faster" | "p3" => "p3",
        "fast" | "p4" => "p4",
        "medium" | "p5" => "p5",
        "slow" | "p6" => "p6",
        _ => "p7",
    }
}

/// One `[[profile]]` table as written (also the operator API's document).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileTable {
    /// Required: 1..=64, the Output Profile point's value.
    pub number: u32,
    pub name: Option<String>,
    pub video: Option<String>,
    pub encoder: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<Num>,
    pub bitrate: Option<u64>,
    pub gop: Option<u32>,
    pub preset: Option<String>,
    pub audio: Option<String>,
    pub audio_bitrate: Option<u64>,
    #[serde(default)]
    pub audio_track: Vec<TrackTable>,
}

/// One `[[profile.audio_track]]` (docs/transcode.md).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackTable {
    pub layout: Option<String>,
    pub downmix: Option<String>,
    pub extract: Option<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    /// One gain for every channel, or one per channel.
    pub gain_db: Option<Gains>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Gains {
    One(Num),
    Each(Vec<Num>),
}

/// Validates every `[[profile]]` table; problems name `profile[i].key`.
pub fn parse_profiles(tables: &[ProfileTable], errs: &mut Vec<Problem>) -> Vec<Profile> {
    let mut out: Vec<Profile> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let at = format!("profile[{i}]");
        if let Some(p) = parse_one(&at, t, errs) {
            if out.iter().any(|o| o.number == p.number) {
                errs.push(Problem::new(
                    format!("{at}.number"),
                    format!("duplicate profile number {}", p.number),
                ));
            } else if out.iter().any(|o| o.name == p.name) {
                errs.push(Problem::new(
                    format!("{at}.name"),
                    format!("duplicate profile name {:?}", p.name),
                ));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn parse_one(at: &str, t: &ProfileTable, errs: &mut Vec<Problem>) -> Option<Profile> {
    let before = errs.len();
    let mut k = Keys { at, errs };
    if !(1..=64).contains(&t.number) {
        k.e(
            "number",
            "expected an integer 1..=64 (the Output Profile point's value)".into(),
        );
    }
    let number = t.number;
    let name = t.name.clone().unwrap_or_else(|| format!("profile{number}"));
    let (video, encoder) = video_codec(t, &mut k);
    let (width, height, fps) = picture(t, &mut k);
    let bitrate = k
        .int("bitrate", t.bitrate, 50_000, 200_000_000)
        .unwrap_or(2_000_000);
    let gop = k
        .int("gop", t.gop.map(u64::from), 1, 1000)
        .map(|g| g as u32);
    let preset = t.preset.clone();
    if let Some(p) = &preset {
        check_preset(p, &mut k)?;
    }
    if video == VideoCodec::Copy
        && (width.is_some() || height.is_some() || fps.is_some() || gop.is_some())
    {
        k.e(
            "video",
            "video = \"copy\" cannot change width, height, fps or gop".into(),
        );
    }
    let (audio, audio_bitrate, tracks) = audio(t, &mut k);
    if errs.len() > before {
        return None;
    }
    Some(Profile {
        number,
        name,
        video,
        encoder,
        width,
        height,
        fps,
        bitrate,
        gop,
        preset,
        audio,
        audio_bitrate,
        tracks,
    })
}

/// The problems of one `[[profile]]` table, at its keys.
struct Keys<'a> {
    at: &'a str,
    errs: &'a mut Vec<Problem>,
}

impl Keys<'_> {
    fn e(&mut self, k: &str, m: String) {
        self.errs.push(Problem::new(format!("{}.{k}", self.at), m));
    }

    /// An optional integer in `lo..=hi` (out of range: reported, None).
    fn int(&mut self, k: &str, v: Option<u64>, lo: u64, hi: u64) -> Option<u64> {
        let v = v?;
        if (lo..=hi).contains(&v) {
            Some(v)
        } else {
            self.e(k, format!("expected an integer {lo}..={hi}"));
            None
        }
    }
}

/// `video` and `encoder` (an unknown one is reported; the default stands
/// in for it).
fn video_codec(t: &ProfileTable, k: &mut Keys) -> (VideoCodec, EncoderPref) {
    let video = match t.video.as_deref() {
        None | Some("h264") => VideoCodec::H264,
        Some("hevc") | Some("h265") => VideoCodec::Hevc,
        Some("copy") => VideoCodec::Copy,
        Some(x) => {
            k.e(
                "video",
                format!("unknown video codec {x:?} (h264, hevc, copy)"),
            );
            VideoCodec::H264
        }
    };
    let encoder = match t.encoder.as_deref() {
        None | Some("auto") => EncoderPref::Auto,
        Some("nvenc") => EncoderPref::Nvenc,
        Some("software") => EncoderPref::Software,
        Some(x) => {
            k.e(
                "encoder",
                format!("unknown encoder {x:?} (auto, nvenc, software)"),
            );
            EncoderPref::Auto
        }
    };
    (video, encoder)
}

/// `width`, `height` (even: 4:2:0 chroma needs them) and `fps`.
fn picture(t: &ProfileTable, k: &mut Keys) -> (Option<u32>, Option<u32>, Option<f64>) {
    let width = k
        .int("width", t.width.map(u64::from), 16, 7680)
        .map(|w| w as u32);
    let height = k
        .int("height", t.height.map(u64::from), 16, 4320)
        .map(|h| h as u32);
    for (key, v) in [("width", width), ("height", height)] {
        if v.is_some_and(|v| v % 2 != 0) {
            k.e(key, "must be even (4:2:0 video)".into());
        }
    }
    let fps = match t.fps.map(|f| f.get()) {
        None => None,
        Some(f) if (1.0..=240.0).contains(&f) => Some(f),
        Some(_) => {
            k.e("fps", "expected a frame rate 1..=240".into());
            None
        }
    };
    (width, height, fps)
}

/// `preset`: an x264 name or NVENC's p1..p7.
fn check_preset(p: &str, k: &mut Keys) -> Option<()> {
    let nv = p.len() == 2 && p.starts_with('p') && ('1'..='7').contains(&p.chars().nth(1)?);
    if !X264_PRESETS.contains(&p) && !nv {
        k.e(
            "preset",
            format!(
                "unknown preset {p:?} ({} or p1..p7)",
                X264_PRESETS.join(", ")
            ),
        );
    }
    Some(())
}

/// `audio`, `audio_bitrate` and the audio matrix (`[[profile.audio_track]]`,
/// AAC only, at most 8 tracks).
fn audio(t: &ProfileTable, k: &mut Keys) -> (AudioCodec, u64, Vec<Track>) {
    let audio = match t.audio.as_deref() {
        None | Some("aac") => AudioCodec::Aac,
        Some("copy") => AudioCodec::Copy,
        Some("none") => AudioCodec::None,
        Some(x) => {
            k.e(
                "audio",
                format!("unknown audio codec {x:?} (aac, copy, none)"),
            );
            AudioCodec::Aac
        }
    };
    let audio_bitrate = k
        .int("audio_bitrate", t.audio_bitrate, 8_000, 1_024_000)
        .unwrap_or(128_000);
    let mut tracks = Vec::new();
    if audio != AudioCodec::Aac && !t.audio_track.is_empty() {
        k.e(
            "audio_track",
            "an audio matrix needs audio = \"aac\" (it re-encodes)".into(),
        );
    }
    for (j, tt) in t.audio_track.iter().enumerate() {
        let mut e = |key: &str, m: String| k.e(key, m);
        if let Some(tr) = parse_track(tt, &format!("audio_track[{j}]"), &mut e) {
            tracks.push(tr);
        }
    }
    if tracks.len() > 8 {
        k.e("audio_track", "at most 8 audio tracks".into());
    }
    (audio, audio_bitrate, tracks)
}

fn parse_track(t: &TrackTable, at: &str, e: &mut dyn FnMut(&str, String)) -> Option<Track> {
    let spec = TrackSpec {
        layout: t.layout.clone(),
        downmix: t.downmix.clone(),
        extract: t.extract.clone(),
        channels: t.channels.clone(),
        gain_db: match &t.gain_db {
            None => Vec::new(),
            Some(Gains::One(g)) => vec![g.get()],
            Some(Gains::Each(v)) => v.iter().map(|g| g.get()).collect(),
        },
    };
    match matrix::build(&spec) {
        Ok(t) => Some(t),
        Err((k, m)) => {
            e(&format!("{at}.{k}"), m);
            None
        }
    }
}

/// Common head of every child's command line: quiet logs, machine-readable
/// progress on stderr twice a second, TS on stdin with a short probe.
fn head(args: &mut Vec<String>) {
    for a in [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-nostats",
        "-progress",
        "pipe:2",
        "-stats_period",
        "0.5",
        "-probesize",
        "1000000",
        "-analyzeduration",
        "1000000",
    ] {
        args.push(a.into());
    }
}

fn push(args: &mut Vec<String>, xs: &[&str]) {
    args.extend(xs.iter().map(|s| s.to_string()));
}

impl Profile {
    /// The encoder this profile uses given whether NVENC is usable.
    pub fn encoder_for(&self, nvenc_ok: bool) -> Encoder {
        match self.encoder {
            EncoderPref::Software => Encoder::Software,
            EncoderPref::Auto | EncoderPref::Nvenc if nvenc_ok => Encoder::Nvenc,
            _ => Encoder::Software,
        }
    }

    /// ffmpeg arguments for a transcode child: TS on stdin, TS on stdout.
    /// Input timestamps are kept (`-copyts`, no mux delay) so that output
    /// PTS can be matched to input PTS for the latency measurement.
    pub fn transcode_args(&self, enc: Encoder) -> Vec<String> {
        let mut a = Vec::new();
        head(&mut a);
        push(&mut a, &["-copyts", "-f", "mpegts", "-i", "pipe:0"]);
        let (graph, maps) = self.filter_graph();
        if !graph.is_empty() {
            a.push("-filter_complex".into());
            a.push(graph.join(";"));
        }
        for m in maps {
            a.push("-map".into());
            a.push(m);
        }
        self.video_codec_args(enc, &mut a);
        self.video_rate_args(&mut a);
        match self.audio {
            AudioCodec::None => {}
            AudioCodec::Copy => push(&mut a, &["-c:a", "copy"]),
            AudioCodec::Aac => {
                let ab = self.audio_bitrate.to_string();
                push(&mut a, &["-c:a", "aac", "-b:a", &ab]);
            }
        }
        push(
            &mut a,
            &[
                "-muxdelay",
                "0",
                "-muxpreload",
                "0",
                "-flush_packets",
                "1",
                "-f",
                "mpegts",
                "pipe:1",
            ],
        );
        a
    }

    /// The `-filter_complex` chains (scaling and frame rate; the audio
    /// matrix, split once per track) and the `-map`s of the outputs, video
    /// first.
    fn filter_graph(&self) -> (Vec<String>, Vec<String>) {
        let mut graph: Vec<String> = Vec::new();
        let mut vf: Vec<String> = Vec::new();
        if let (Some(w), Some(h)) = (self.width, self.height) {
            vf.push(format!("scale={w}:{h}"));
        } else if let Some(w) = self.width {
            vf.push(format!("scale={w}:-2"));
        } else if let Some(h) = self.height {
            vf.push(format!("scale=-2:{h}"));
        }
        if let Some(f) = self.fps {
            vf.push(format!("fps={f}"));
        }
        let mut maps = Vec::new();
        if self.video != VideoCodec::Copy && !vf.is_empty() {
            graph.push(format!("[0:v:0]{}[v]", vf.join(",")));
            maps.push("[v]".to_string());
        } else {
            maps.push("0:v:0?".to_string());
        }
        match (self.audio, self.tracks.len()) {
            (AudioCodec::None, _) => {}
            (_, 0) => maps.push("0:a:0?".into()),
            (_, 1) => {
                graph.push(format!("[0:a:0]{}[a0]", self.tracks[0].pan()));
                maps.push("[a0]".into());
            }
            (_, n) => {
                let labels: String = (0..n).map(|i| format!("[s{i}]")).collect();
                graph.push(format!("[0:a:0]asplit={n}{labels}"));
                for (i, t) in self.tracks.iter().enumerate() {
                    graph.push(format!("[s{i}]{}[a{i}]", t.pan()));
                    maps.push(format!("[a{i}]"));
                }
            }
        }
        (graph, maps)
    }

    /// `-c:v` and its encoder's low-latency settings.
    fn video_codec_args(&self, enc: Encoder, a: &mut Vec<String>) {
        let preset = self.preset.as_deref();
        match (self.video, enc) {
            (VideoCodec::Copy, _) => push(a, &["-c:v", "copy"]),
            (v, Encoder::Nvenc) => {
                let c = if v == VideoCodec::Hevc {
                    "hevc_nvenc"
                } else {
                    "h264_nvenc"
                };
                push(
                    a,
                    &[
                        "-c:v",
                        c,
                        "-preset",
                        nvenc_preset(preset.unwrap_or("p2")),
                        "-tune",
                        "ll",
                        "-rc",
                        "cbr",
                        "-zerolatency",
                        "1",
                        "-bf",
                        "0",
                    ],
                );
            }
            (v, Encoder::Software) => {
                let p = match preset {
                    Some(p) if X264_PRESETS.contains(&p) => p,
                    _ => "veryfast",
                };
                if v == VideoCodec::Hevc {
                    push(
                        a,
                        &[
                            "-c:v",
                            "libx265",
                            "-preset",
                            p,
                            "-tune",
                            "zerolatency",
                            "-x265-params",
                            "log-level=error",
                        ],
                    );
                } else {
                    push(
                        a,
                        &["-c:v", "libx264", "-preset", p, "-tune", "zerolatency"],
                    );
                }
            }
        }
    }

    /// Constant bit rate and a fixed GOP (default two seconds) of an
    /// encoded video; nothing for `copy`.
    fn video_rate_args(&self, a: &mut Vec<String>) {
        if self.video == VideoCodec::Copy {
            return;
        }
        let b = self.bitrate.to_string();
        let gop = self
            .gop
            .unwrap_or_else(|| (self.fps.unwrap_or(25.0) * 2.0).round() as u32)
            .to_string();
        let buf = (self.bitrate * 2).to_string();
        push(
            a,
            &[
                "-b:v",
                &b,
                "-maxrate",
                &b,
                "-bufsize",
                &buf,
                "-g",
                &gop,
                "-keyint_min",
                &gop,
                "-sc_threshold",
                "0",
                "-pix_fmt",
                "yuv420p",
            ],
        );
    }
}

/// ffmpeg arguments for an RTMP(S) push: TS on stdin, stream copy to FLV
/// (ffmpeg inserts aac_adtstoasc for AAC from TS by itself).
/// `preset`: a file holding `rtmp_playpath=KEY` (see `run_rtmp_push`), so
/// that the key is not on the command line.
pub fn rtmp_push_args(target: &str, preset: Option<&str>) -> Vec<String> {
    let mut a = Vec::new();
    head(&mut a);
    push(
        &mut a,
        &[
            "-f",
            "mpegts",
            "-i",
            "pipe:0",
            "-map",
            "0:v:0?",
            "-map",
            "0:a:0?",
            "-c",
            "copy",
            "-flvflags",
            "no_duration_filesize",
            "-rtmp_live",
            "live",
        ],
    );
    if let Some(p) = preset {
        push(&mut a, &["-fpre", p]);
    }
    push(&mut a, &["-f", "flv", target]);
    a
}

/// The ingest URL of an RTMP preset.
pub fn rtmp_preset(name: &str) -> Option<&'static str> {
    match name {
        "youtube" => Some("rtmp://a.rtmp.youtube.com/live2"),
        "twitch" => Some("rtmp://live.twitch.tv/app"),
        "facebook" => Some("rtmps://live-api-s.facebook.com:443/rtmp"),
        _ => None,
    }
}

/// `url` + `/` + `key` (the key is a path segment of RTMP URLs).
pub fn rtmp_target(url: &str, key: Option<&str>) -> String {
    match key.filter(|k| !k.is_empty()) {
        Some(k) => format!("{}/{k}", url.trim_end_matches('/')),
        None => url.to_string(),
    }
}

/// Splits the stream key off an RTMP URL written in the CDN form
/// `rtmp[s]://host[:port]/app/KEY[?query]`: `(url without the key, KEY
/// with its query)`, so a key typed inside `url` takes the same private
/// path to ffmpeg as a separate `key` (ffmpeg's `rtmp_playpath` is exactly
/// what follows the application). Other shapes (no key, `app/inst/KEY`)
/// are left whole: guessing the application there could misroute the push.
pub fn split_rtmp_key(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.to_ascii_lowercase().starts_with("rtmp") {
        return None;
    }
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    let (path_only, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let segs: Vec<&str> = path_only[1..].split('/').collect();
    match segs.as_slice() {
        [app, key] if !app.is_empty() && !key.is_empty() => {
            let key = match query {
                Some(q) => format!("{key}?{q}"),
                None => key.to_string(),
            };
            Some((format!("{scheme}://{authority}/{app}"), key))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_inside_cdn_urls_are_split_off() {
        assert_eq!(
            split_rtmp_key("rtmp://a.rtmp.youtube.com/live2/abcd-efgh"),
            Some(("rtmp://a.rtmp.youtube.com/live2".into(), "abcd-efgh".into()))
        );
        assert_eq!(
            split_rtmp_key("rtmps://fb.example:443/rtmp/FB-1?s_bl=1&a=x"),
            Some((
                "rtmps://fb.example:443/rtmp".into(),
                "FB-1?s_bl=1&a=x".into()
            ))
        );
        assert_eq!(split_rtmp_key("rtmp://h/live"), None);
        assert_eq!(split_rtmp_key("rtmp://h/live/"), None);
        assert_eq!(split_rtmp_key("rtmp://h/app/inst/k"), None);
        assert_eq!(split_rtmp_key("srt://h:1/live/k"), None);
        // Joined again, the split gives back the URL that was configured.
        let u = "rtmp://h:1935/live/k3y?x=1";
        let (base, key) = split_rtmp_key(u).expect("split");
        assert_eq!(rtmp_target(&base, Some(&key)), u);
    }

    fn load(s: &str) -> Result<Vec<Profile>, Vec<crate::config::ConfigError>> {
        let c = crate::config::Config::from_text("t.toml", s, std::path::Path::new("."))
            .map_err(|e| e.0)?;
        let mut errs = Vec::new();
        Ok(parse_profiles(&c.server.profile, &mut errs))
    }

    #[test]
    fn full_profile_builds_expected_args() {
        let p = load(
            r#"
[[profile]]
number = 2
name = "sd"
width = 640
height = 360
fps = 25
bitrate = 800000
gop = 50
preset = "ultrafast"
audio_bitrate = 96000
[[profile.audio_track]]
downmix = "stereo"
[[profile.audio_track]]
extract = "FC"
gain_db = 3
"#,
        )
        .expect("valid");
        let a = p[0].transcode_args(Encoder::Software).join(" ");
        assert!(a.contains("-copyts -f mpegts -i pipe:0"), "{a}");
        assert!(a.contains("[0:v:0]scale=640:360,fps=25[v]"), "{a}");
        assert!(a.contains("[0:a:0]asplit=2[s0][s1]"), "{a}");
        assert!(a.contains("[s1]pan=mono|c0=1.4125*FC[a1]"), "{a}");
        assert!(a.contains("-map [v] -map [a0] -map [a1]"), "{a}");
        assert!(
            a.contains("-c:v libx264 -preset ultrafast -tune zerolatency"),
            "{a}"
        );
        assert!(
            a.contains("-b:v 800000 -maxrate 800000 -bufsize 1600000 -g 50"),
            "{a}"
        );
        assert!(a.contains("-c:a aac -b:a 96000"), "{a}");
        assert!(a.ends_with("-f mpegts pipe:1"), "{a}");
        let n = p[0].transcode_args(Encoder::Nvenc).join(" ");
        assert!(n.contains("-c:v h264_nvenc -preset p1 -tune ll"), "{n}");
    }

    /// The whole command line of each codec, encoder, scaling and audio
    /// case, word for word (kept identical through the split of
    /// `transcode_args` into steps).
    #[test]
    fn transcode_args_are_pinned_word_for_word() {
        let cases = [
            "[[profile]]\nnumber = 1\n",
            "[[profile]]\nnumber = 1\nvideo = \"hevc\"\nwidth = 1280\npreset = \"p5\"\n",
            "[[profile]]\nnumber = 1\nheight = 720\nfps = 50\naudio = \"copy\"\n",
            "[[profile]]\nnumber = 1\nvideo = \"copy\"\naudio = \"none\"\n",
            "[[profile]]\nnumber = 1\ngop = 10\n[[profile.audio_track]]\ndownmix = \"stereo\"\n",
        ];
        let mut got = String::new();
        for c in cases {
            let p = load(c).expect("valid");
            for enc in [Encoder::Software, Encoder::Nvenc] {
                got.push_str(&p[0].transcode_args(enc).join(" "));
                got.push('\n');
            }
        }
        assert_eq!(got, PINNED_ARGS);
    }

    const PINNED_ARGS: &str = concat!(
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -map 0:v:0? -map 0:a:0? -c:v libx264 -preset veryfast -tune zerolatency -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128000 -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -map 0:v:0? -map 0:a:0? -c:v h264_nvenc -preset p2 -tune ll -rc cbr -zerolatency 1 -bf 0 -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128000 -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -filter_complex [0:v:0]scale=1280:-2[v] -map [v] -map 0:a:0? -c:v libx265 -preset veryfast -tune zerolatency -x265-params log-level=error -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128000 -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -filter_complex [0:v:0]scale=1280:-2[v] -map [v] -map 0:a:0? -c:v hevc_nvenc -preset p5 -tune ll -rc cbr -zerolatency 1 -bf 0 -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128000 -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -filter_complex [0:v:0]scale=-2:720,fps=50[v] -map [v] -map 0:a:0? -c:v libx264 -preset veryfast -tune zerolatency -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 100 -keyint_min 100 -sc_threshold 0 -pix_fmt yuv420p -c:a copy -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -filter_complex [0:v:0]scale=-2:720,fps=50[v] -map [v] -map 0:a:0? -c:v h264_nvenc -preset p2 -tune ll -rc cbr -zerolatency 1 -bf 0 -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 100 -keyint_min 100 -sc_threshold 0 -pix_fmt yuv420p -c:a copy -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -map 0:v:0? -c:v copy -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -map 0:v:0? -c:v copy -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -filter_complex [0:a:0]pan=stereo|c0=1*FL+0.7071*FC+0.7071*BL+0.7071*SL|c1=1*FR+0.7071*FC+0.7071*BR+0.7071*SR[a0] -map 0:v:0? -map [a0] -c:v libx264 -preset veryfast -tune zerolatency -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 10 -keyint_min 10 -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128000 -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    "-hide_banner -nostdin -loglevel warning -nostats -progress pipe:2 -stats_period 0.5 -probesize 1000000 -analyzeduration 1000000 -copyts -f mpegts -i pipe:0 -filter_complex [0:a:0]pan=stereo|c0=1*FL+0.7071*FC+0.7071*BL+0.7071*SL|c1=1*FR+0.7071*FC+0.7071*BR+0.7071*SR[a0] -map 0:v:0? -map [a0] -c:v h264_nvenc -preset p2 -tune ll -rc cbr -zerolatency 1 -bf 0 -b:v 2000000 -maxrate 2000000 -bufsize 4000000 -g 10 -keyint_min 10 -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128000 -muxdelay 0 -muxpreload 0 -flush_packets 1 -f mpegts pipe:1\n",
    );

    /// Every key's problem of a `[[profile]]` table, word for word and in
    /// order (kept identical through the split of `parse_one`).
    #[test]
    fn profile_problems_are_pinned_in_order() {
        #[derive(serde::Deserialize)]
        struct Doc {
            profile: Vec<ProfileTable>,
        }
        let doc: Doc = toml::from_str(
            r#"
[[profile]]
number = 0
video = "vp9"
encoder = "quicksync"
width = 641
height = 8
fps = 500
bitrate = 1
gop = 0
preset = "p9"
audio = "opus"
audio_bitrate = 1
[[profile.audio_track]]
extract = "CENTRE"

[[profile]]
number = 2
video = "copy"
width = 640
audio = "copy"
[[profile.audio_track]]
downmix = "stereo"
"#,
        )
        .expect("tables");
        let mut errs = Vec::new();
        let p = parse_profiles(&doc.profile, &mut errs);
        assert!(p.is_empty());
        let got: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect();
        assert_eq!(got, PINNED_PROBLEMS);
    }

    const PINNED_PROBLEMS: [&str; 14] = [
        "profile[0].number: expected an integer 1..=64 (the Output Profile point's value)",
        "profile[0].video: unknown video codec \"vp9\" (h264, hevc, copy)",
        "profile[0].encoder: unknown encoder \"quicksync\" (auto, nvenc, software)",
        "profile[0].height: expected an integer 16..=4320",
        "profile[0].width: must be even (4:2:0 video)",
        "profile[0].fps: expected a frame rate 1..=240",
        "profile[0].bitrate: expected an integer 50000..=200000000",
        "profile[0].gop: expected an integer 1..=1000",
        "profile[0].preset: unknown preset \"p9\" (ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow or p1..p7)",
        "profile[0].audio: unknown audio codec \"opus\" (aac, copy, none)",
        "profile[0].audio_bitrate: expected an integer 8000..=1024000",
        "profile[0].audio_track[0].channels: \"CENTRE\": unknown channel \"CENTRE\" (known: FL, FR, FC, LFE, BL, BR, FLC, FRC, BC, SL, SR, TC, TFL, TFC, TFR, TBL, TBC, TBR, DL, DR, WL, WR, SDL, SDR, LFE2)",
        "profile[1].video: video = \"copy\" cannot change width, height, fps or gop",
        "profile[1].audio_track: an audio matrix needs audio = \"aac\" (it re-encodes)",
    ];

    #[test]
    fn defaults_and_copy() {
        let p =
            load("[[profile]]\nnumber = 1\nvideo = \"copy\"\naudio = \"none\"\n").expect("valid");
        let a = p[0].transcode_args(Encoder::Software).join(" ");
        assert!(a.contains("-map 0:v:0? -c:v copy"), "{a}");
        assert!(!a.contains("-c:a"), "{a}");
        assert_eq!(p[0].name, "profile1");
        assert_eq!(p[0].encoder_for(true), Encoder::Nvenc);
        let sw = load("[[profile]]\nnumber = 1\nencoder = \"software\"\n").expect("valid");
        assert_eq!(sw[0].encoder_for(true), Encoder::Software);
        assert_eq!(sw[0].encoder_for(false), Encoder::Software);
    }

    #[test]
    fn errors_name_profile_keys() {
        let e = load(
            r#"
[[profile]]
number = 1
video = "vp9"
width = 641
color = 1
[[profile.audio_track]]
extract = "CENTRE"
[[profile]]
number = 1
name = "dup"
audio = "copy"
[[profile.audio_track]]
downmix = "stereo"
"#,
        )
        .expect_err("invalid");
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"profile[0].video"), "{keys:?}");
        assert!(keys.contains(&"profile[0].width"), "{keys:?}");
        assert!(keys.contains(&"profile[0].color"), "{keys:?}");
        assert!(
            keys.contains(&"profile[0].audio_track[0].channels"),
            "{keys:?}"
        );
        assert!(keys.contains(&"profile[1].audio_track"), "{keys:?}");
        let msg = e
            .iter()
            .find(|x| x.key == "profile[0].audio_track[0].channels")
            .map(|x| x.message.clone())
            .unwrap_or_default();
        assert!(msg.contains("unknown channel \"CENTRE\""), "{msg}");
    }

    #[test]
    fn rtmp_targets_and_args() {
        assert_eq!(
            rtmp_target("rtmp://h/live/", Some("k1")),
            "rtmp://h/live/k1"
        );
        assert_eq!(rtmp_target("rtmp://h/live/x", None), "rtmp://h/live/x");
        assert_eq!(rtmp_preset("twitch"), Some("rtmp://live.twitch.tv/app"));
        let a = rtmp_push_args("rtmp://h/live/k1", None).join(" ");
        assert!(a.contains("-f mpegts -i pipe:0"), "{a}");
        assert!(
            a.ends_with(
                "-c copy -flvflags no_duration_filesize -rtmp_live live -f flv rtmp://h/live/k1"
            ),
            "{a}"
        );
        // The key comes from a preset file: the URL on the command line
        // has none.
        let a = rtmp_push_args("rtmp://h/live", Some("/p/push.ffpreset")).join(" ");
        assert!(
            a.ends_with("-fpre /p/push.ffpreset -f flv rtmp://h/live"),
            "{a}"
        );
    }
}
