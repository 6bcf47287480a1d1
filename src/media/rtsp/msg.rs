//! RTSP 1.0 wire format (RFC 2326): request building, response parsing and the `$`-interleaved RTP framing that shares the TCP connection.
//!
//! Everything here reads bytes from a camera, which is untrusted: sizes are
//! bounded, nothing indexes past the buffer, and the parser is fuzzed.

use bytes::Bytes;

/// Header section larger than this is refused (cameras send a few hundred bytes).
pub const MAX_HEAD: usize = 64 * 1024;
/// Body (SDP) larger than this is refused.
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header of that name (WWW-Authenticate may repeat).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn cseq(&self) -> Option<u32> {
        self.header("CSeq").and_then(|v| v.trim().parse().ok())
    }
}

/// One unit read off the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Response(Response),
    /// A request from the server (e.g. its own GET_PARAMETER keep-alive or
    /// ANNOUNCE); the method and CSeq are kept so it can be answered.
    Request {
        method: String,
        cseq: Option<u32>,
    },
    /// `$` channel, length, RTP/RTCP packet.
    Interleaved {
        channel: u8,
        data: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgError(pub String);

impl std::fmt::Display for MsgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad RTSP message: {}", self.0)
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses the next frame at the start of `buf`: `Ok(Some((frame, used)))`,
/// `Ok(None)` when more bytes are needed, `Err` when the stream is not RTSP.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, MsgError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == b'$' {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if buf.len() < 4 + len {
            return Ok(None);
        }
        return Ok(Some((
            Frame::Interleaved {
                channel: buf[1],
                data: Bytes::copy_from_slice(&buf[4..4 + len]),
            },
            4 + len,
        )));
    }
    if !first.is_ascii_alphabetic() {
        return Err(MsgError(format!(
            "unexpected byte {first:#04x} where a message should start"
        )));
    }
    let Some(head_end) = find_head_end(&buf[..buf.len().min(MAX_HEAD + 4)]) else {
        if buf.len() > MAX_HEAD {
            return Err(MsgError(format!("header section over {MAX_HEAD} bytes")));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| MsgError("header section is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(MsgError(format!("header line without ':': {line:?}")));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len = match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
    {
        None => 0,
        Some((_, v)) => v
            .parse::<usize>()
            .map_err(|_| MsgError(format!("bad Content-Length {v:?}")))?,
    };
    if len > MAX_BODY {
        return Err(MsgError(format!("body of {len} bytes is over {MAX_BODY}")));
    }
    if buf.len() < head_end + len {
        return Ok(None);
    }
    let body = Bytes::copy_from_slice(&buf[head_end..head_end + len]);
    let used = head_end + len;
    if let Some(rest) = start.strip_prefix("RTSP/") {
        // "RTSP/1.0 200 OK"
        let mut parts = rest.splitn(3, ' ');
        let _version = parts.next();
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..1000).contains(s))
            .ok_or_else(|| MsgError(format!("bad status line {start:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        return Ok(Some((
            Frame::Response(Response {
                status,
                reason,
                headers,
                body,
            }),
            used,
        )));
    }
    let mut parts = start.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let _uri = parts.next();
    if parts.next().is_none_or(|v| !v.starts_with("RTSP/")) {
        return Err(MsgError(format!("bad start line {start:?}")));
    }
    let cseq = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("CSeq"))
        .and_then(|(_, v)| v.parse().ok());
    Ok(Some((Frame::Request { method, cseq }, used)))
}

/// Serializes a request. `headers` must not contain CR/LF (they come from
/// our own code and the SDP, which is checked).
pub fn request(method: &str, uri: &str, cseq: u32, headers: &[(&str, String)]) -> Vec<u8> {
    let mut s = format!("{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\nUser-Agent: castpoint\r\n");
    for (k, v) in headers {
        let v: String = v.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// The `Session` header value without its `;timeout=` parameter, and the
/// timeout in seconds when given.
pub fn session_id(v: &str) -> (String, Option<u64>) {
    let mut parts = v.split(';');
    let id = parts.next().unwrap_or_default().trim().to_string();
    let timeout = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| v.trim().parse().ok())?
    });
    (id, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn response_with_body_and_interleaved_after_it() {
        let mut b = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        b.extend_from_slice(&[b'$', 1, 0, 2, 9, 9]);
        let (f, n) = parse_frame(&b).unwrap().unwrap();
        let Frame::Response(r) = f else { panic!() };
        assert_eq!(
            (r.status, r.cseq(), &r.body[..]),
            (200, Some(2), &b"abc"[..])
        );
        let (f, m) = parse_frame(&b[n..]).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Interleaved {
                channel: 1,
                data: Bytes::from_static(&[9, 9])
            }
        );
        assert_eq!(n + m, b.len());
        // Every strict prefix asks for more bytes.
        for i in 0..n {
            assert_eq!(parse_frame(&b[..i]).unwrap(), None, "prefix {i}");
        }
    }

    #[test]
    fn server_request_and_garbage() {
        let b = b"GET_PARAMETER rtsp://x/ RTSP/1.0\r\nCSeq: 7\r\n\r\n";
        let (f, _) = parse_frame(b).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Request {
                method: "GET_PARAMETER".into(),
                cseq: Some(7)
            }
        );
        assert!(parse_frame(b"\x00\x01junk").is_err());
        assert!(parse_frame(b"RTSP/1.0 abc OK\r\n\r\n").is_err());
        assert!(parse_frame(b"RTSP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n").is_err());
    }

    #[test]
    fn session_header() {
        assert_eq!(
            session_id("12345678;timeout=60"),
            ("12345678".into(), Some(60))
        );
        assert_eq!(session_id("abc"), ("abc".into(), None));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_frame(&b);
        }

        #[test]
        fn mutated_responses_never_panic(
            cut in 0usize..200, flip in 0usize..200, byte in any::<u8>()
        ) {
            let mut b = b"RTSP/1.0 401 Unauthorized\r\nCSeq: 3\r\nWWW-Authenticate: Digest realm=\"x\", nonce=\"y\"\r\nContent-Length: 4\r\n\r\nbody".to_vec();
            let i = flip % b.len();
            b[i] = byte;
            b.truncate(cut.max(1));
            let _ = parse_frame(&b);
        }
    }
}
