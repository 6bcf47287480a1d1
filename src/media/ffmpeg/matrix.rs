//! Audio matrix of an output profile: output tracks built from source channels (standard 5.1/7.1 downmix, single-channel extraction, explicit mixes) with per-channel gain, validated at load and compiled to ffmpeg `pan` filters.

/// Source channel names ffmpeg's `pan` filter understands.
pub const CHANNELS: &[&str] = &[
    "FL", "FR", "FC", "LFE", "BL", "BR", "FLC", "FRC", "BC", "SL", "SR", "TC", "TFL", "TFC", "TFR",
    "TBL", "TBC", "TBR", "DL", "DR", "WL", "WR", "SDL", "SDR", "LFE2",
];

/// Output layouts and their channel counts.
pub const LAYOUTS: &[(&str, usize)] = &[
    ("mono", 1),
    ("stereo", 2),
    ("2.1", 3),
    ("3.0", 3),
    ("quad", 4),
    ("4.0", 4),
    ("5.0", 5),
    ("5.1", 6),
    ("6.1", 7),
    ("7.1", 8),
];

/// ITU-R BS.775 stereo downmix (centre and surrounds at -3 dB, LFE
/// omitted); both back and side pairs are listed so 5.1, 5.1(side) and 7.1
/// sources all fold in (`pan` ignores channels the source lacks).
const DOWNMIX_STEREO: [&str; 2] = [
    "FL+0.7071*FC+0.7071*BL+0.7071*SL",
    "FR+0.7071*FC+0.7071*BR+0.7071*SR",
];
/// Mono: the stereo downmix summed at -6 dB each side.
const DOWNMIX_MONO: &str = "0.5*FL+0.5*FR+0.7071*FC+0.3536*BL+0.3536*BR+0.3536*SL+0.3536*SR";

/// One term of a channel mix: `coef * CHANNEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub coef: f64,
    pub channel: String,
}

/// One output audio track.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub layout: String,
    /// One mix per output channel.
    pub mix: Vec<Vec<Term>>,
}

/// Parses one mix expression: `FL + 0.707*FC - 0.5*BL` (coefficients
/// optional, channel names from [`CHANNELS`]).
pub fn parse_mix(s: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err("empty mix".into());
    }
    // Split on + and - while keeping the sign with the term.
    let mut parts: Vec<(f64, String)> = Vec::new();
    let mut sign = 1.0;
    let mut cur = String::new();
    for c in compact.chars() {
        if (c == '+' || c == '-') && !cur.is_empty() && !cur.ends_with(['e', 'E', '*']) {
            parts.push((sign, std::mem::take(&mut cur)));
            sign = if c == '-' { -1.0 } else { 1.0 };
        } else if (c == '+' || c == '-') && cur.is_empty() {
            sign = if c == '-' { -sign } else { sign };
        } else {
            cur.push(c);
        }
    }
    if cur.is_empty() {
        return Err(format!("{s:?}: dangling operator"));
    }
    parts.push((sign, cur));
    for (sign, p) in parts {
        let (coef, ch) = match p.split_once('*') {
            Some((c, ch)) => {
                let c: f64 = c
                    .parse()
                    .map_err(|_| format!("{s:?}: {c:?} is not a number"))?;
                (c, ch)
            }
            None => (1.0, p.as_str()),
        };
        if !coef.is_finite() || coef.abs() > 16.0 {
            return Err(format!("{s:?}: coefficient {coef} out of range (-16..16)"));
        }
        let up = ch.to_ascii_uppercase();
        if !CHANNELS.contains(&up.as_str()) {
            return Err(format!(
                "{s:?}: unknown channel {ch:?} (known: {})",
                CHANNELS.join(", ")
            ));
        }
        terms.push(Term {
            coef: sign * coef,
            channel: up,
        });
    }
    Ok(terms)
}

/// The ways a track can be described in config.
#[derive(Debug, Clone, Default)]
pub struct TrackSpec {
    pub layout: Option<String>,
    /// "stereo" or "mono": standard downmix.
    pub downmix: Option<String>,
    /// One source channel as a mono track (e.g. "FC" for commentary).
    pub extract: Option<String>,
    /// Explicit mixes, one per output channel.
    pub channels: Vec<String>,
    /// Per output channel gain in dB (empty: 0 dB; one value: every channel).
    pub gain_db: Vec<f64>,
}

/// Validates a track description; errors are messages for the caller to
/// attach to the right config key.
pub fn build(t: &TrackSpec) -> Result<Track, (&'static str, String)> {
    let given = [
        t.downmix.is_some(),
        t.extract.is_some(),
        !t.channels.is_empty(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err((
            "downmix",
            "give exactly one of downmix, extract or channels".into(),
        ));
    }
    let (layout, mixes): (String, Vec<String>) = if let Some(d) = &t.downmix {
        match d.as_str() {
            "stereo" => (
                "stereo".into(),
                DOWNMIX_STEREO.iter().map(|s| s.to_string()).collect(),
            ),
            "mono" => ("mono".into(), vec![DOWNMIX_MONO.into()]),
            x => return Err(("downmix", format!("unknown downmix {x:?} (stereo, mono)"))),
        }
    } else if let Some(c) = &t.extract {
        ("mono".into(), vec![c.clone()])
    } else {
        let n = t.channels.len();
        let layout = match &t.layout {
            Some(l) => l.clone(),
            None => LAYOUTS
                .iter()
                .find(|(_, c)| *c == n)
                .map(|(l, _)| l.to_string())
                .unwrap_or_default(),
        };
        (layout, t.channels.clone())
    };
    let Some(&(_, count)) = LAYOUTS.iter().find(|(l, _)| *l == layout) else {
        return Err((
            "layout",
            format!(
                "unknown layout {layout:?} (one of: {})",
                LAYOUTS.iter().map(|l| l.0).collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    if let Some(l) = &t.layout {
        if *l != layout {
            return Err((
                "layout",
                format!("{l:?} does not match the {layout} this track produces"),
            ));
        }
    }
    if mixes.len() != count {
        return Err((
            "channels",
            format!(
                "layout {layout} has {count} channels, {} mixes given",
                mixes.len()
            ),
        ));
    }
    let gains: Vec<f64> = match t.gain_db.len() {
        0 => vec![0.0; count],
        1 => vec![t.gain_db[0]; count],
        n if n == count => t.gain_db.clone(),
        n => {
            return Err((
                "gain_db",
                format!("{n} gains for {count} output channels (give 1 or {count})"),
            ))
        }
    };
    if let Some(g) = gains.iter().find(|g| !(-60.0..=24.0).contains(*g)) {
        return Err(("gain_db", format!("{g} dB out of range (-60..24)")));
    }
    let mut mix = Vec::new();
    for (m, g) in mixes.iter().zip(gains) {
        let k = 10f64.powf(g / 20.0);
        let terms = parse_mix(m).map_err(|e| ("channels", e))?;
        mix.push(
            terms
                .into_iter()
                .map(|t| Term {
                    coef: t.coef * k,
                    channel: t.channel,
                })
                .collect(),
        );
    }
    Ok(Track { layout, mix })
}

impl Track {
    pub fn channels(&self) -> usize {
        self.mix.len()
    }

    /// The `pan` filter for this track, e.g.
    /// `pan=stereo|c0=1*FL+0.7071*FC|c1=...`.
    pub fn pan(&self) -> String {
        let mut s = format!("pan={}", self.layout);
        for (i, terms) in self.mix.iter().enumerate() {
            s.push_str(&format!("|c{i}="));
            for (j, t) in terms.iter().enumerate() {
                let c = format!("{:.4}", t.coef);
                let c = c.trim_end_matches('0').trim_end_matches('.');
                if j > 0 && t.coef >= 0.0 {
                    s.push('+');
                }
                s.push_str(&format!("{c}*{}", t.channel));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TrackSpec {
        TrackSpec::default()
    }

    #[test]
    fn stereo_downmix_compiles_to_standard_coefficients() {
        let t = build(&TrackSpec {
            downmix: Some("stereo".into()),
            ..spec()
        })
        .expect("valid");
        assert_eq!(
            t.pan(),
            "pan=stereo|c0=1*FL+0.7071*FC+0.7071*BL+0.7071*SL|c1=1*FR+0.7071*FC+0.7071*BR+0.7071*SR"
        );
    }

    #[test]
    fn extraction_with_gain() {
        let t = build(&TrackSpec {
            extract: Some("fc".into()),
            gain_db: vec![6.0],
            ..spec()
        })
        .expect("valid");
        assert_eq!(t.layout, "mono");
        assert_eq!(t.pan(), "pan=mono|c0=1.9953*FC");
    }

    #[test]
    fn explicit_mix_with_negative_terms() {
        let t = build(&TrackSpec {
            channels: vec!["FL - 0.5*SL".into(), "-FR+2*LFE".into()],
            gain_db: vec![0.0, -6.0],
            ..spec()
        })
        .expect("valid");
        assert_eq!(t.layout, "stereo");
        assert_eq!(
            t.pan(),
            "pan=stereo|c0=1*FL-0.5*SL|c1=-0.5012*FR+1.0024*LFE"
        );
    }

    #[test]
    fn errors_are_clear() {
        let e = build(&TrackSpec {
            extract: Some("CENTER".into()),
            ..spec()
        })
        .expect_err("unknown channel");
        assert_eq!(e.0, "channels");
        assert!(e.1.contains("unknown channel \"CENTER\""), "{}", e.1);
        let e = build(&TrackSpec {
            channels: vec!["FL".into(), "FR".into()],
            layout: Some("5.1".into()),
            ..spec()
        })
        .expect_err("count");
        assert!(e.1.contains("6 channels, 2 mixes"), "{}", e.1);
        let e = build(&TrackSpec {
            downmix: Some("stereo".into()),
            gain_db: vec![0.0, 0.0, 0.0],
            ..spec()
        })
        .expect_err("gains");
        assert_eq!(e.0, "gain_db");
        assert!(build(&spec()).is_err());
        assert!(parse_mix("FL+").is_err());
        assert!(parse_mix("x*FL").is_err());
        assert!(parse_mix("99*FL").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_mix_never_panics(s in ".{0,40}") {
            let _ = parse_mix(&s);
        }
    }
}
