//! Redaction of secrets inside URLs for log lines and status texts of the media and engine code: RTMP stream keys (`rtmp://host/app/KEY`), user:password in URLs, and secret-looking query parameters.
//!
//! RTMP push URLs carry the stream key as the path segment after the
//! application, and ffmpeg repeats the URL in its error messages: anything
//! logged or shown from a child goes through `redact_urls`. The API redacts
//! its own documents separately.

/// Query parameters whose values are secrets (matched as substrings of the
/// lower-cased name: `passphrase`, `streamkey`, `auth_token`, ...).
const SECRET_PARAMS: &[&str] = &["pass", "key", "token", "secret", "auth", "sig", "pwd"];

/// Schemes whose URLs are redacted wherever they appear in a text.
const SCHEMES: &[&str] = &[
    "rtmp://", "rtmps://", "rtmpt://", "rtmpe://", "rtsp://", "rtsps://", "srt://", "http://",
    "https://",
];

/// Redacts one URL: the userinfo's password, for RTMP every path segment
/// after the application (the stream key), and secret query values.
pub fn redact_url(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rtmp = lower.starts_with("rtmp");
    let (main, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let rest = &main[scheme_end.min(main.len())..];
    let (authority, path) = match rest.find('/') {
        Some(p) => (&rest[..p], &rest[p..]),
        None => (rest, ""),
    };
    let authority = match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or("");
            format!("{user}:***@{}", &authority[at + 1..])
        }
        None => authority.to_string(),
    };
    let path = if rtmp {
        // "/app" stays; "/app/KEY" (or "/app/inst/KEY") hides the rest.
        let mut segs = path.splitn(3, '/');
        let _ = segs.next();
        match (segs.next(), segs.next()) {
            (Some(app), Some(k)) if !k.is_empty() => format!("/{app}/***"),
            _ => path.to_string(),
        }
    } else {
        path.to_string()
    };
    let mut out = format!("{}{authority}{path}", &url[..scheme_end]);
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => {
                    let kl = k.to_ascii_lowercase();
                    if rtmp || SECRET_PARAMS.iter().any(|s| kl.contains(s)) {
                        format!("{k}=***")
                    } else {
                        kv.to_string()
                    }
                }
                None => kv.to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// Redacts every URL of a known scheme inside free text (a log line, an
/// ffmpeg error message). A URL ends at whitespace or a quote.
pub fn redact_urls(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while pos < text.len() {
        let next = SCHEMES
            .iter()
            .filter_map(|s| lower[pos..].find(s).map(|i| pos + i))
            .min();
        let Some(start) = next else { break };
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(text.len(), |e| start + e);
        // A trailing ':' or ',' belongs to the sentence (ffmpeg writes
        // "URL: Input/output error").
        let url_end = text[start..end]
            .trim_end_matches([':', ',', ';', ')', '.'])
            .len()
            + start;
        out.push_str(&text[pos..start]);
        out.push_str(&redact_url(&text[start..url_end]));
        pos = url_end;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rtmp_keys_and_secrets_are_hidden() {
        assert_eq!(
            redact_url("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl"),
            "rtmp://a.rtmp.youtube.com/live2/***"
        );
        assert_eq!(
            redact_url("rtmps://h:443/app/inst/KEY"),
            "rtmps://h:443/app/***"
        );
        assert_eq!(redact_url("rtmp://h/live"), "rtmp://h/live");
        assert_eq!(redact_url("rtmp://h/live/"), "rtmp://h/live/");
        assert_eq!(
            redact_url("rtmp://h/live/k?token=t0k"),
            "rtmp://h/live/***?token=***"
        );
        assert_eq!(
            redact_url("rtsp://admin:hunter2@cam/stream1"),
            "rtsp://admin:***@cam/stream1"
        );
        assert_eq!(
            redact_url("srt://1.2.3.4:9000?passphrase=secretsecret&latency=200"),
            "srt://1.2.3.4:9000?passphrase=***&latency=200"
        );
        assert_eq!(redact_url("http://h/x.ts"), "http://h/x.ts");
    }

    #[test]
    fn urls_inside_text_are_found() {
        let line =
            "[tcp] rtmp://127.0.0.1:1935/live/s3cr3t: Input/output error (see 'rtmp://h/a/k2')";
        let r = redact_urls(line);
        assert!(!r.contains("s3cr3t") && !r.contains("k2"), "{r}");
        assert_eq!(
            r,
            "[tcp] rtmp://127.0.0.1:1935/live/***: Input/output error (see 'rtmp://h/a/***')"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("RTMP://H/A/K"), "RTMP://H/A/***");
    }

    proptest! {
        #[test]
        fn never_panics_and_hides_rtmp_keys(pre in ".{0,20}", key in "[A-Za-z0-9_-]{4,30}", post in "[ :,].{0,20}") {
            let s = format!("{pre}rtmp://host/live/{key}{post}");
            let r = redact_urls(&s);
            prop_assert!(r.contains("rtmp://host/live/***"), "{}", r);
            let _ = redact_urls(&pre);
            let _ = redact_url(&pre);
        }
    }
}
