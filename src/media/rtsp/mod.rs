//! RTSP pull inputs (IP cameras): RTSP client, RTP depacketizing, remux to MPEG-TS.
//!
//! A route input `type = "rtsp"` runs [`run_input`]: connect, OPTIONS,
//! DESCRIBE, SETUP every usable track (RTP interleaved on the RTSP TCP
//! connection by default, or UDP), PLAY, then turn RTP into TS chunks for the
//! route: MP2T tracks pass straight through, H.264/AAC go through the native
//! TS muxer. Failures are reported in the input's stats (`error`) with the
//! reason, and the session is re-established with backoff.

pub mod auth;
pub mod msg;
mod remux;
pub mod rtp;
pub mod sdp;
mod session;

use std::net::IpAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::mpegts::feed::Feed;

/// How RTP travels from the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtspTransport {
    /// `$`-interleaved on the RTSP TCP connection (works through NAT and
    /// firewalls, no loss).
    Tcp,
    /// RTP/RTCP on a UDP port pair bound on `udp_bind`.
    Udp,
}

/// One RTSP input as configured.
#[derive(Clone, PartialEq)]
pub struct RtspSpec {
    /// `rtsp://[user[:password]@]host[:port]/path` — userinfo is taken out
    /// before the URL is used on the wire or logged.
    pub url: String,
    pub transport: RtspTransport,
    pub user: Option<String>,
    /// A secret: never logged (see the Debug impl).
    pub password: Option<String>,
    /// Connect / response / no-data timeout.
    pub timeout: Duration,
    /// Local address the UDP client ports are bound on.
    pub udp_bind: IpAddr,
}

impl std::fmt::Debug for RtspSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtspSpec")
            .field("url", &redact_url(&self.url))
            .field("transport", &self.transport)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("udp_bind", &self.udp_bind)
            .finish()
    }
}

/// `url` with the password of its userinfo replaced by `***`, for logs and
/// API answers.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(auth_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The parts of an RTSP URL the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The URL without userinfo: what goes into request lines.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Splits an `rtsp://` URL; `Err` says what is wrong with it.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let u = url::Url::parse(url).map_err(|e| format!("bad RTSP URL: {e}"))?;
    if u.scheme() != "rtsp" {
        return Err(format!(
            "expected an rtsp:// URL, not {}:// (rtsps is not supported)",
            u.scheme()
        ));
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("RTSP URL without a host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = u.port().unwrap_or(554);
    let user = (!u.username().is_empty()).then(|| percent_decode(u.username()));
    let password = u.password().map(percent_decode);
    let mut clean = u.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    Ok(Target {
        host,
        port,
        url: clean.to_string(),
        user,
        password,
    })
}

/// The input task: keeps a session with the camera up until cancelled.
pub(crate) async fn run_input(mut feed: Feed, spec: RtspSpec, cancel: CancellationToken) {
    let shown = redact_url(&spec.url);
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = std::time::Instant::now();
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session::run(&mut feed, &spec, &cancel) => r,
        };
        feed.stats
            .clients
            .store(0, std::sync::atomic::Ordering::Relaxed);
        match r {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("rtsp input {shown}: {e}; retrying in {backoff:?}");
                feed.stats.set_error(e.to_string());
            }
        }
        // A session that played for a while starts the backoff over.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("rtsp://admin:p%40ss@127.0.0.1:8554/cam/1?x=y").unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 8554);
        assert_eq!(t.user.as_deref(), Some("admin"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.url, "rtsp://127.0.0.1:8554/cam/1?x=y");
        assert_eq!(parse_url("rtsp://cam/x").unwrap().port, 554);
        assert!(parse_url("http://cam/x").is_err());
        assert!(parse_url("rtsp:///x").is_err());
        assert_eq!(
            redact_url("rtsp://admin:secret@cam:554/live"),
            "rtsp://admin:***@cam:554/live"
        );
        assert_eq!(redact_url("rtsp://cam/a@b"), "rtsp://cam/a@b");
        assert_eq!(redact_url("rtsp://u@cam/"), "rtsp://u@cam/");
    }
}
