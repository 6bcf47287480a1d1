//! Secret redaction for URLs and free text: passwords in `user:pass@`, RTMP stream keys in the path, and secret query parameters become `***`.
//!
//! Dependency-free on purpose: the API, the engine and the media children
//! all print URLs an operator typed (camera URLs, CDN ingest URLs), and
//! each of them must show the same redacted form. A redacted URL is also
//! what the REST API hands out, so `is_redaction_of` lets a client send a
//! document back unchanged without destroying the secret it cannot see.

/// What every secret is replaced with.
pub const PLACEHOLDER: &str = "***";

/// Query parameters whose values are secrets: any name containing one of
/// these (lower-cased), so `passphrase`, `streamkey`, `wowzatoken`,
/// `auth_token` and `X-Amz-Signature` are all caught.
const SECRET_PARAMS: &[&str] = &["pass", "key", "token", "secret", "auth", "sig", "pwd"];

/// Redacts one URL:
/// - `scheme://user:pass@host/...` -> `scheme://user:***@host/...`;
/// - `rtmp[s|t|e]://host/app/KEY` -> `rtmp://host/app/***`: everything
///   after the application is the stream key (`app/inst/KEY` included),
///   the form YouTube/Twitch/Facebook show, and every query value of an
///   RTMP URL is part of it too (Facebook's `?s_bl=..&a=..`);
/// - secret query parameters (`?passphrase=`, `?key=`, ...) -> `=***`.
///
/// Text that is not a URL is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return url.to_string();
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{PLACEHOLDER}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    // Split the tail into path, query and fragment.
    let (before_frag, frag) = match tail.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (tail, None),
    };
    let (path, query) = match before_frag.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_frag, None),
    };
    let rtmp = scheme.to_ascii_lowercase().starts_with("rtmp");
    let path = if rtmp {
        // "/app" stays; "/app/KEY" (or "/app/inst/KEY") hides the rest.
        let mut segs = path.splitn(3, '/');
        let _ = segs.next();
        match (segs.next(), segs.next()) {
            (Some(app), Some(k)) if !k.is_empty() => format!("/{app}/{PLACEHOLDER}"),
            _ => path.to_string(),
        }
    } else {
        path.to_string()
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_query(q, rtmp));
    }
    if let Some(f) = frag {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn redact_query(q: &str, all: bool) -> String {
    q.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !v.is_empty() && (all || is_secret_param(k)) => {
                format!("{k}={PLACEHOLDER}")
            }
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Schemes recognised inside text even when other letters precede them
/// (longest first, so `rtmps` wins over `rtmp`).
const KNOWN_SCHEMES: &[&str] = &[
    "rtmps", "rtmpt", "rtmpe", "rtmp", "rtsps", "rtsp", "https", "http", "srt",
];

fn is_secret_param(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| n.contains(s))
}

/// Redacts every URL inside free text (log lines, error messages, ffmpeg's
/// stderr): a URL starts at `scheme://` and ends at whitespace or a quote;
/// a trailing `:`/`,`/`;`/`)`/`.` belongs to the sentence (ffmpeg writes
/// "URL: Input/output error").
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let start = scheme_start(rest, i);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || "\"'<>`".contains(c))
            .map_or(rest.len(), |j| i + j);
        // A URL ends where a known scheme starts the next one:
        // "x://rtmp://h/app/KEY" (or a bare "://" before it) is two, and the
        // second one's key must not ride inside the first, which is no RTMP
        // URL. Any other "://" stays inside (a passphrase may hold one).
        let end = rest[i + 3..end]
            .match_indices("://")
            .find_map(|(j, _)| known_scheme_start(rest, i + 3 + j))
            .map_or(end, |s| s.max(i + 3));
        let end = start
            + rest[start..end]
                .trim_end_matches([':', ',', ';', ')', '.'])
                .len();
        let end = end.max(i + 3);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Where the URL whose `://` is at `i` in `text` starts: back over the
/// scheme's characters, but text glued to a known scheme ("xrtmp://")
/// must not hide it: the URL starts at the longest known scheme that ends
/// the word.
fn scheme_start(text: &str, i: usize) -> usize {
    known_scheme_start(text, i).unwrap_or_else(|| word_start(text, i))
}

/// Where the known scheme ending right before `i` starts, if one does.
fn known_scheme_start(text: &str, i: usize) -> Option<usize> {
    let word = text[word_start(text, i)..i].to_ascii_lowercase();
    KNOWN_SCHEMES
        .iter()
        .find(|k| word.ends_with(*k))
        .map(|k| i - k.len())
}

/// Start of the run of scheme characters that ends at `i`.
fn word_start(text: &str, i: usize) -> usize {
    text[..i]
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(*c)))
        .map_or(0, |(j, c)| j + c.len_utf8())
}

/// True when `shown` is what [`redact_url`] makes of `secret` and differs
/// from it: a client sent the redacted form back, meaning "unchanged".
pub fn is_redaction_of(shown: &str, secret: &str) -> bool {
    shown != secret && shown.contains(PLACEHOLDER) && redact_url(secret) == shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_passwords_are_hidden() {
        assert_eq!(
            redact_url("rtsp://admin:secret@cam:554/live"),
            "rtsp://admin:***@cam:554/live"
        );
        assert_eq!(redact_url("rtsp://cam/a@b"), "rtsp://cam/a@b");
        assert_eq!(redact_url("rtsp://u@cam/"), "rtsp://u@cam/");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn rtmp_stream_keys_in_the_path_are_hidden() {
        assert_eq!(
            redact_url("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-1234"),
            "rtmp://a.rtmp.youtube.com/live2/***"
        );
        assert_eq!(
            redact_url("rtmps://live-api-s.facebook.com:443/rtmp/FB-123?s_bl=1&s_sc=2"),
            "rtmps://live-api-s.facebook.com:443/rtmp/***?s_bl=***&s_sc=***"
        );
        // One segment is only the application: nothing to hide.
        assert_eq!(redact_url("rtmp://host/live"), "rtmp://host/live");
        assert_eq!(redact_url("rtmp://host/live/"), "rtmp://host/live/");
        // Other schemes keep their paths.
        assert_eq!(redact_url("http://h/a/b"), "http://h/a/b");
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        assert_eq!(
            redact_url("srt://1.2.3.4:9000?mode=caller&passphrase=very+secret&streamid=x"),
            "srt://1.2.3.4:9000?mode=caller&passphrase=***&streamid=x"
        );
        assert_eq!(
            redact_url("https://h/p?KEY=abc#frag"),
            "https://h/p?KEY=***#frag"
        );
    }

    #[test]
    fn text_with_urls_is_redacted_in_place() {
        assert_eq!(
            redact_text("push to rtmp://h/live/KEY failed: \"rtsp://u:p@c/x\" gone"),
            "push to rtmp://h/live/*** failed: \"rtsp://u:***@c/x\" gone"
        );
        assert_eq!(redact_text("no urls here"), "no urls here");
        assert_eq!(redact_text("://odd"), "://odd");
    }

    #[test]
    fn a_redaction_sent_back_is_recognised() {
        let k = "rtmp://h/live/KEY";
        assert!(is_redaction_of("rtmp://h/live/***", k));
        assert!(!is_redaction_of(k, k));
        assert!(!is_redaction_of("rtmp://other/live/***", k));
    }

    #[test]
    fn every_segment_after_the_application_and_query_values_of_rtmp() {
        assert_eq!(
            redact_url("rtmps://h:443/app/inst/KEY"),
            "rtmps://h:443/app/***"
        );
        assert_eq!(
            redact_url("rtmp://h/live/k?token=t0k"),
            "rtmp://h/live/***?token=***"
        );
        assert_eq!(
            redact_url("srt://1.2.3.4:9000?passphrase=secretsecret&latency=200&wowzatoken=x"),
            "srt://1.2.3.4:9000?passphrase=***&latency=200&wowzatoken=***"
        );
        assert_eq!(redact_url("http://h/x.ts"), "http://h/x.ts");
    }

    #[test]
    fn urls_inside_ffmpeg_lines_are_found() {
        let line =
            "[tcp] rtmp://127.0.0.1:1935/live/s3cr3t: Input/output error (see 'rtmp://h/a/k2')";
        assert_eq!(
            redact_text(line),
            "[tcp] rtmp://127.0.0.1:1935/live/***: Input/output error (see 'rtmp://h/a/***')"
        );
        assert_eq!(redact_text("RTMP://H/A/K"), "RTMP://H/A/***");
        assert_eq!(redact_text("end rtmp://h/a/k."), "end rtmp://h/a/***.");
    }

    /// Found by `hides_rtmp_keys_in_any_text` in the issue-19 stress: text
    /// ending in `://` right before a URL swallowed it into a URL with no
    /// scheme, which was left as it was, key and all.
    #[test]
    fn a_url_right_after_another_scheme_separator_is_still_redacted() {
        assert_eq!(
            redact_text("://rtmp://host/live/A0_A:"),
            "://rtmp://host/live/***:"
        );
        assert_eq!(
            redact_text("a://rtmp://host/live/KEY"),
            "a://rtmp://host/live/***"
        );
        assert_eq!(
            redact_text("x srt://h:1?passphrase=p://rtsp://u:pw@cam/s"),
            "x srt://h:1?passphrase=***rtsp://u:***@cam/s"
        );
        assert_eq!(redact_text(":// ://"), ":// ://");
        // A "://" that starts no known scheme stays inside the URL.
        assert_eq!(
            redact_text("srt://h:1?passphrase=ab://cd x"),
            "srt://h:1?passphrase=*** x"
        );
    }

    proptest::proptest! {
        #[test]
        fn hides_rtmp_keys_in_any_text(pre in ".{0,20}", key in "[A-Za-z0-9_-]{4,30}", post in "[ :,].{0,20}") {
            let r = redact_text(&format!("{pre}rtmp://host/live/{key}{post}"));
            proptest::prop_assert!(r.contains("rtmp://host/live/***"), "{}", r);
        }

        /// The case the stress found, on purpose: scheme-like text (`x://`,
        /// bare `://`, a known scheme's letters) right before the URL.
        #[test]
        fn hides_rtmp_keys_after_scheme_like_text(
            pre in "([a-z]{0,5}://|rtmp|[ :/?=a-z]){0,6}",
            key in "[A-Za-z0-9_-]{4,30}",
            post in "[ :,].{0,20}",
        ) {
            let r = redact_text(&format!("{pre}rtmp://host/live/{key}{post}"));
            proptest::prop_assert!(
                r.contains("rtmp://host/live/***") && !r.contains(&format!("live/{key}")),
                "{}",
                r
            );
        }

        #[test]
        fn never_panics(s in ".*") {
            let _ = redact_url(&s);
            let _ = redact_text(&s);
        }
    }
}
