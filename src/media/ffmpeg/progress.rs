//! Parser of ffmpeg's stderr: `-progress pipe:2` key=value blocks (fps, speed, drops, dups, out_time) and free-text log lines (kept as the last error reason).

/// One completed `-progress` block (`progress=continue|end` closes it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub frame: Option<u64>,
    pub fps: Option<f64>,
    /// Encoding speed relative to real time (1.0 = keeping up).
    pub speed: Option<f64>,
    pub drop_frames: Option<u64>,
    pub dup_frames: Option<u64>,
    /// Output media time in microseconds.
    pub out_time_us: Option<i64>,
    pub bitrate_kbps: Option<f64>,
    pub total_size: Option<u64>,
    /// `progress=end`: ffmpeg is finishing.
    pub end: bool,
}

/// What one stderr line meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A progress key that is not the end of a block.
    Key,
    /// A block ended: the accumulated progress.
    Block(Progress),
    /// A log line (warnings, errors): the text, trimmed.
    Log(String),
    Empty,
}

/// Accumulates `-progress` keys; feed it every stderr line.
#[derive(Debug, Default)]
pub struct ProgressParser {
    cur: Progress,
}

const KEYS: &[&str] = &[
    "frame",
    "fps",
    "bitrate",
    "total_size",
    "out_time_us",
    "out_time_ms",
    "out_time",
    "dup_frames",
    "drop_frames",
    "speed",
    "progress",
];

impl ProgressParser {
    /// Interprets one line (any bytes: invalid UTF-8 is replaced).
    pub fn line(&mut self, raw: &[u8]) -> Line {
        let s = String::from_utf8_lossy(raw);
        let s = s.trim();
        if s.is_empty() {
            return Line::Empty;
        }
        let Some((k, v)) = s.split_once('=') else {
            return Line::Log(s.to_string());
        };
        let (k, v) = (k.trim(), v.trim());
        // Per-stream keys (`stream_0_0_q=...`) are progress too.
        if !KEYS.contains(&k) && !k.starts_with("stream_") {
            return Line::Log(s.to_string());
        }
        match k {
            "frame" => self.cur.frame = v.parse().ok(),
            "fps" => self.cur.fps = v.parse().ok().filter(|x: &f64| x.is_finite()),
            "bitrate" => {
                self.cur.bitrate_kbps = v
                    .trim_end_matches("kbits/s")
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite())
            }
            "total_size" => self.cur.total_size = v.parse().ok(),
            // ffmpeg 5's out_time_ms is really microseconds (a known bug).
            "out_time_us" | "out_time_ms" => {
                if let Ok(x) = v.parse::<i64>() {
                    self.cur.out_time_us = Some(x);
                }
            }
            "dup_frames" => self.cur.dup_frames = v.parse().ok(),
            "drop_frames" => self.cur.drop_frames = v.parse().ok(),
            "speed" => {
                self.cur.speed = v
                    .trim_end_matches('x')
                    .trim()
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            }
            "progress" => {
                let mut p = std::mem::take(&mut self.cur);
                p.end = v == "end";
                return Line::Block(p);
            }
            _ => {}
        }
        Line::Key
    }
}

/// Replaces every secret in `s` by `***` (stream keys in URLs and messages).
pub fn redact(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_string();
    for k in secrets.iter().filter(|k| !k.is_empty()) {
        out = out.replace(k.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_block() {
        let mut p = ProgressParser::default();
        let text = "frame=120\nfps=29.97\nstream_0_0_q=23.0\nbitrate= 850.3kbits/s\ntotal_size=524288\nout_time_us=4000000\nout_time_ms=4000000\nout_time=00:00:04.000000\ndup_frames=2\ndrop_frames=5\nspeed=0.987x\nprogress=continue\n";
        let mut got = None;
        for l in text.lines() {
            if let Line::Block(b) = p.line(l.as_bytes()) {
                got = Some(b);
            }
        }
        let b = got.expect("a block");
        assert_eq!(b.frame, Some(120));
        assert_eq!(b.fps, Some(29.97));
        assert_eq!(b.speed, Some(0.987));
        assert_eq!(b.drop_frames, Some(5));
        assert_eq!(b.dup_frames, Some(2));
        assert_eq!(b.out_time_us, Some(4_000_000));
        assert_eq!(b.bitrate_kbps, Some(850.3));
        assert!(!b.end);
    }

    #[test]
    fn log_lines_and_na_values() {
        let mut p = ProgressParser::default();
        assert_eq!(
            p.line(b"rtmp://x/live/***: Connection refused"),
            Line::Log("rtmp://x/live/***: Connection refused".into())
        );
        assert_eq!(p.line(b"speed=N/A"), Line::Key);
        assert_eq!(p.line(b"bitrate=N/A"), Line::Key);
        match p.line(b"progress=end") {
            Line::Block(b) => {
                assert!(b.end);
                assert_eq!(b.speed, None);
            }
            x => panic!("{x:?}"),
        }
        assert_eq!(p.line(b"   "), Line::Empty);
    }

    #[test]
    fn redacts_keys() {
        let s = redact("rtmp://a/live/abc123: refused abc123", &["abc123".into()]);
        assert_eq!(s, "rtmp://a/live/***: refused ***");
    }

    proptest! {
        #[test]
        fn arbitrary_stderr_never_panics(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..40)) {
            let mut p = ProgressParser::default();
            for l in &lines {
                let _ = p.line(l);
            }
        }

        #[test]
        fn arbitrary_key_values_never_panic(k in "(fps|speed|frame|drop_frames|out_time_us|progress|bitrate)", v in ".{0,30}") {
            let mut p = ProgressParser::default();
            let _ = p.line(format!("{k}={v}").as_bytes());
        }
    }
}
