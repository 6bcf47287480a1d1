//! One RTSP session with a camera: OPTIONS, DESCRIBE, SETUP per track, PLAY, then the receive loop (interleaved or UDP RTP), keep-alives and TEARDOWN.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::auth::{self, Authenticator, Credentials};
use super::msg::{self, Frame, Response};
use super::remux::Remux;
use super::rtp::{self, AacDepack, H264Depack, SeqCheck};
use super::sdp::{self, Codec};
use super::{parse_url, RtspSpec, RtspTransport};
use crate::mpegts::feed::Feed;

/// Why a session ended; the text lands in the input's stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtspError {
    Config(String),
    Connect(String),
    Timeout(String),
    Unauthorized {
        method: String,
        had_credentials: bool,
    },
    NotFound(String),
    Status {
        method: String,
        code: u16,
        reason: String,
    },
    Protocol(String),
    Unsupported(String),
}

impl std::fmt::Display for RtspError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RtspError::Config(e) => write!(f, "config: {e}"),
            RtspError::Connect(e) => write!(f, "connect: {e}"),
            RtspError::Timeout(e) => write!(f, "timeout: {e}"),
            RtspError::Unauthorized {
                method,
                had_credentials: true,
            } => write!(f, "401 Unauthorized on {method}: wrong user or password"),
            RtspError::Unauthorized { method, .. } => write!(
                f,
                "401 Unauthorized on {method}: the camera wants credentials (set user and password)"
            ),
            RtspError::NotFound(u) => {
                write!(f, "404 Not Found: {}", crate::redact::redact_url(u))
            }
            RtspError::Status {
                method,
                code,
                reason,
            } => write!(f, "{method} answered {code} {reason}"),
            RtspError::Protocol(e) => write!(f, "protocol: {e}"),
            RtspError::Unsupported(e) => write!(f, "unsupported codec: {e}"),
        }
    }
}

/// The RTSP control connection.
struct Conn {
    sock: TcpStream,
    buf: BytesMut,
    cseq: u32,
    creds: Option<Credentials>,
    auth: Option<Authenticator>,
    session: Option<String>,
    timeout: Duration,
}

impl Conn {
    async fn write_request(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, String)],
    ) -> Result<u32, RtspError> {
        self.cseq += 1;
        let mut h: Vec<(&str, String)> = extra.to_vec();
        if let Some(a) = &mut self.auth {
            h.push(("Authorization", a.header(method, uri)));
        }
        if let Some(s) = &self.session {
            h.push(("Session", s.clone()));
        }
        let req = msg::request(method, uri, self.cseq, &h);
        tokio::time::timeout(self.timeout, self.sock.write_all(&req))
            .await
            .map_err(|_| RtspError::Timeout(format!("sending {method}")))?
            .map_err(|e| RtspError::Connect(format!("sending {method}: {e}")))?;
        Ok(self.cseq)
    }

    /// Reads more bytes into the buffer (cancel-safe).
    async fn fill(&mut self) -> Result<(), RtspError> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        match self.sock.read_buf(&mut self.buf).await {
            Ok(0) => Err(RtspError::Connect(
                "the camera closed the connection".into(),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(RtspError::Connect(format!("read: {e}"))),
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, RtspError> {
        match msg::parse_frame(&self.buf) {
            Ok(Some((f, used))) => {
                let _ = self.buf.split_to(used);
                Ok(Some(f))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(RtspError::Protocol(e.to_string())),
        }
    }

    async fn answer_server_request(&mut self, method: &str, cseq: Option<u32>) {
        // Servers' own keep-alives get a 200, anything else 501.
        let status = if method == "GET_PARAMETER" || method == "OPTIONS" {
            "200 OK"
        } else {
            "501 Not Implemented"
        };
        let r = format!("RTSP/1.0 {status}\r\nCSeq: {}\r\n\r\n", cseq.unwrap_or(0));
        let _ = tokio::time::timeout(self.timeout, self.sock.write_all(r.as_bytes())).await;
    }

    /// Sends a request and waits for its response, answering one 401
    /// challenge with the credentials. Non-2xx answers become errors.
    async fn request(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, String)],
    ) -> Result<Response, RtspError> {
        let mut retried = false;
        loop {
            let cseq = self.write_request(method, uri, extra).await?;
            let resp = self.response(method, cseq).await?;
            if resp.status == 401 {
                let challenge = auth::pick(resp.headers_named("WWW-Authenticate"));
                match (&self.creds, challenge, retried) {
                    (Some(c), Some(ch), false) => {
                        self.auth = Some(Authenticator::new(c.clone(), ch));
                        retried = true;
                        continue;
                    }
                    (c, _, _) => {
                        return Err(RtspError::Unauthorized {
                            method: method.into(),
                            had_credentials: c.is_some(),
                        })
                    }
                }
            }
            return match resp.status {
                200..=299 => Ok(resp),
                404 => Err(RtspError::NotFound(uri.to_string())),
                code => Err(RtspError::Status {
                    method: method.into(),
                    code,
                    reason: resp.reason.clone(),
                }),
            };
        }
    }

    async fn response(&mut self, method: &str, cseq: u32) -> Result<Response, RtspError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            while let Some(f) = self.next_frame()? {
                match f {
                    Frame::Response(r) if r.cseq().is_none_or(|c| c == cseq) => return Ok(r),
                    Frame::Request { method, cseq } => {
                        self.answer_server_request(&method, cseq).await
                    }
                    // Late answers and early RTP before PLAY's answer.
                    _ => {}
                }
            }
            tokio::time::timeout_at(deadline, self.fill())
                .await
                .map_err(|_| RtspError::Timeout(format!("no answer to {method}")))??;
        }
    }
}

enum Depack {
    H264(H264Depack),
    Aac(AacDepack),
    Mp2t(SeqCheck),
}

struct Track {
    depack: Depack,
    /// Interleaved RTP channel (TCP).
    channel: u8,
    /// RTP socket (UDP); RTCP's is kept open so the port pair stays ours.
    udp: Option<(UdpSocket, UdpSocket)>,
}

/// Binds an even/odd UDP port pair (RTP, RTCP) on `ip`.
async fn bind_pair(ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..32 {
        let a = UdpSocket::bind((ip, 0)).await?;
        let p = a.local_addr()?.port();
        let pair = if p % 2 == 0 {
            UdpSocket::bind((ip, p + 1)).await.map(|b| (a, b))
        } else {
            UdpSocket::bind((ip, p - 1)).await.map(|b| (b, a))
        };
        if let Ok((rtp, rtcp)) = pair {
            // Room for bursts of a keyframe at high bit rates.
            let _ = socket2::SockRef::from(&rtp).set_recv_buffer_size(4 << 20);
            return Ok((rtp, rtcp));
        }
    }
    Err(std::io::Error::other("no free even/odd UDP port pair"))
}

/// A `key=a-b` parameter of a Transport header.
fn transport_range(t: &str, key: &str) -> Option<(u16, u16)> {
    t.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(key) {
            return None;
        }
        let (a, b) = v.split_once('-').unwrap_or((v, v));
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    })
}

async fn recv_on(t: Option<&Track>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match t.and_then(|t| t.udp.as_ref()) {
        Some((s, _)) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Runs one session until it fails (`Err`) or is cancelled / the route is
/// gone (`Ok`): connect, DESCRIBE, SETUP each chosen track, PLAY, then
/// stream.
pub(super) async fn run(
    feed: &mut Feed,
    spec: &RtspSpec,
    cancel: &CancellationToken,
) -> Result<(), RtspError> {
    let (mut c, url, peer_ip) = connect(spec).await?;
    let opts = c.request("OPTIONS", &url, &[]).await?;
    let get_parameter = opts
        .header("Public")
        .is_some_and(|p| p.split(',').any(|m| m.trim() == "GET_PARAMETER"));
    let (sdp, base) = describe(&mut c, &url).await?;
    let chosen = choose_tracks(&sdp, &url)?;
    let setup = setup_tracks(&mut c, spec, &base, &chosen).await?;
    let play_url = sdp::resolve_control(&base, sdp.control.as_deref());
    let play = c
        .request("PLAY", &play_url, &[("Range", "npt=0.000-".into())])
        .await?;
    let keepalive_every = keepalive_period(
        play.header("Session")
            .and_then(|s| msg::session_id(s).1)
            .or(setup.session_timeout),
    );
    feed.stats.set_up(None);
    feed.stats.clients.store(1, Relaxed);
    tracing::info!(
        "rtsp input {}: playing {} track(s) over {:?}",
        crate::redact::redact_url(&url),
        setup.tracks.len(),
        spec.transport
    );
    let playing = Playing {
        remux: Remux::new(setup.want_video, setup.audio_asc.as_deref()),
        started: vec![false; setup.tracks.len()],
        tracks: setup.tracks,
        start: Instant::now(),
        last_data: Instant::now(),
        lost_reported: 0,
    };
    let session = Session {
        play_url,
        keepalive_every,
        keepalive_method: if get_parameter {
            "GET_PARAMETER"
        } else {
            "OPTIONS"
        },
        peer_ip,
    };
    stream(c, playing, feed, spec, cancel, &session).await
}

/// Opens the control connection; returns it with the URL to request and
/// the camera's address (RTP over UDP is accepted from it only).
async fn connect(spec: &RtspSpec) -> Result<(Conn, String, Option<IpAddr>), RtspError> {
    let target = parse_url(&spec.url).map_err(RtspError::Config)?;
    let user = spec.user.clone().or(target.user.clone());
    let password = spec.password.clone().or(target.password.clone());
    let creds = user.map(|user| Credentials {
        user,
        password: password.unwrap_or_default(),
    });
    let hostport = format!("{}:{}", target.host, target.port);
    let sock = tokio::time::timeout(spec.timeout, TcpStream::connect(&hostport))
        .await
        .map_err(|_| RtspError::Timeout(format!("connecting to {hostport}")))?
        .map_err(|e| RtspError::Connect(format!("{hostport}: {e}")))?;
    let _ = sock.set_nodelay(true);
    let peer_ip = sock.peer_addr().ok().map(|a| a.ip());
    let c = Conn {
        sock,
        buf: BytesMut::with_capacity(128 * 1024),
        cseq: 0,
        creds,
        auth: None,
        session: None,
        timeout: spec.timeout,
    };
    Ok((c, target.url.clone(), peer_ip))
}

/// DESCRIBE: the session description and the base URL its controls are
/// relative to.
async fn describe(c: &mut Conn, url: &str) -> Result<(sdp::Sdp, String), RtspError> {
    let desc = c
        .request("DESCRIBE", url, &[("Accept", "application/sdp".into())])
        .await?;
    let text = std::str::from_utf8(&desc.body)
        .map_err(|_| RtspError::Protocol("SDP is not UTF-8".into()))?;
    let sdp = sdp::parse(text).map_err(|e| RtspError::Protocol(e.to_string()))?;
    let base = desc
        .header("Content-Base")
        .or(desc.header("Content-Location"))
        .unwrap_or(url)
        .to_string();
    Ok((sdp, base))
}

/// Chooses the tracks to play: an MP2T track alone (it already is the
/// whole program), else the first H.264 and the first AAC; the others are
/// logged as skipped. No playable track is an error naming why.
fn choose_tracks(sdp: &sdp::Sdp, url: &str) -> Result<Vec<(sdp::Media, Codec)>, RtspError> {
    let mut chosen: Vec<(sdp::Media, Codec)> = Vec::new();
    let mut skipped = Vec::new();
    let codecs: Vec<_> = sdp.media.iter().map(|m| (m.clone(), m.codec())).collect();
    if let Some(m) = codecs.iter().find(|(_, c)| *c == Codec::Mp2t) {
        chosen.push(m.clone());
    } else {
        for (m, codec) in &codecs {
            match codec {
                Codec::H264 { .. }
                    if !chosen.iter().any(|(_, c)| matches!(c, Codec::H264 { .. })) =>
                {
                    chosen.push((m.clone(), codec.clone()))
                }
                Codec::Aac { .. }
                    if !chosen.iter().any(|(_, c)| matches!(c, Codec::Aac { .. })) =>
                {
                    chosen.push((m.clone(), codec.clone()))
                }
                Codec::Unsupported(r) => skipped.push(r.clone()),
                _ => skipped.push(format!("{}: a second track of that kind", m.kind)),
            }
        }
    }
    for r in &skipped {
        tracing::info!(
            "rtsp input {}: skipping track ({r})",
            crate::redact::redact_url(url)
        );
    }
    if chosen.is_empty() {
        return Err(RtspError::Unsupported(if skipped.is_empty() {
            "the SDP has no media".into()
        } else {
            skipped.join("; ")
        }));
    }
    Ok(chosen)
}

/// What SETUP gave: the tracks with their depacketisers and transports,
/// and what the remuxer needs to know up front.
struct Setup {
    tracks: Vec<Track>,
    want_video: bool,
    audio_asc: Option<Vec<u8>>,
    /// The session timeout the first SETUP answer named (seconds).
    session_timeout: Option<u64>,
}

/// SETUP of each chosen track over the configured transport.
async fn setup_tracks(
    c: &mut Conn,
    spec: &RtspSpec,
    base: &str,
    chosen: &[(sdp::Media, Codec)],
) -> Result<Setup, RtspError> {
    let mut out = Setup {
        tracks: Vec::new(),
        want_video: false,
        audio_asc: None,
        session_timeout: None,
    };
    for (i, (m, codec)) in chosen.iter().enumerate() {
        let ch = (2 * i) as u8;
        let setup_url = sdp::resolve_control(base, m.control.as_deref());
        let mut udp = None;
        let transport = match spec.transport {
            RtspTransport::Tcp => format!("RTP/AVP/TCP;unicast;interleaved={}-{}", ch, ch + 1),
            RtspTransport::Udp => {
                let pair = bind_pair(spec.udp_bind)
                    .await
                    .map_err(|e| RtspError::Connect(format!("UDP ports: {e}")))?;
                let p = pair.0.local_addr().map(|a| a.port()).unwrap_or(0);
                udp = Some(pair);
                format!("RTP/AVP;unicast;client_port={}-{}", p, p + 1)
            }
        };
        let r = c
            .request("SETUP", &setup_url, &[("Transport", transport)])
            .await?;
        if c.session.is_none() {
            let (id, timeout) = msg::session_id(r.header("Session").unwrap_or_default());
            out.session_timeout = timeout;
            if id.is_empty() {
                return Err(RtspError::Protocol("SETUP answer has no Session".into()));
            }
            c.session = Some(id);
        }
        let t = r.header("Transport").unwrap_or_default();
        let channel = transport_range(t, "interleaved").map_or(ch, |(a, _)| a as u8);
        if spec.transport == RtspTransport::Udp && t.contains("/TCP") {
            return Err(RtspError::Protocol(
                "asked for UDP, the camera answered TCP".into(),
            ));
        }
        let depack = match codec {
            Codec::H264 { sps, pps } => {
                out.want_video = true;
                Depack::H264(H264Depack::new(sps.clone(), pps.clone(), 0))
            }
            Codec::Aac {
                asc,
                clock,
                size_length,
                index_length,
                index_delta_length,
            } => {
                out.audio_asc = Some(asc.clone());
                Depack::Aac(AacDepack::new(
                    *clock,
                    *size_length,
                    *index_length,
                    *index_delta_length,
                    0,
                ))
            }
            _ => Depack::Mp2t(SeqCheck::default()),
        };
        out.tracks.push(Track {
            depack,
            channel,
            udp,
        });
    }
    Ok(out)
}

/// What the playing session keeps of its set-up.
struct Session {
    /// The aggregate URL (keep-alives, TEARDOWN).
    play_url: String,
    /// A keep-alive request every half session timeout.
    keepalive_every: Duration,
    keepalive_method: &'static str,
    /// RTP over UDP is accepted from the camera's address only.
    peer_ip: Option<IpAddr>,
}

/// The playing session's media state.
struct Playing {
    tracks: Vec<Track>,
    remux: Remux,
    /// Whether each track has had its first packet (and was rebased).
    started: Vec<bool>,
    /// PLAY time: tracks start on a common 90 kHz timeline from here.
    start: Instant,
    last_data: Instant,
    /// Frames lost already added to the feed's counter.
    lost_reported: u64,
}

impl Playing {
    /// Depacketises one RTP packet of track `i` into the remuxer.
    fn packet(&mut self, i: usize, data: &[u8]) {
        let Some(p) = rtp::parse(data) else { return };
        self.last_data = Instant::now();
        let Some(t) = self.tracks.get_mut(i) else {
            return;
        };
        if !self.started[i] {
            // Each track's first RTP timestamp maps to its arrival time
            // since PLAY (cameras' RTP clocks have unrelated random
            // offsets; RTCP sender reports are not used).
            self.started[i] = true;
            let b = 90_000 + (self.start.elapsed().as_micros() as u64 * 9 / 100);
            match &mut t.depack {
                Depack::H264(d) => d.rebase(b),
                Depack::Aac(d) => d.rebase(b),
                Depack::Mp2t(_) => {}
            }
        }
        match &mut t.depack {
            Depack::H264(d) => {
                for au in d.push(&p) {
                    self.remux.video(&au, &d.sps, &d.pps);
                }
            }
            Depack::Aac(d) => {
                for f in d.push(&p) {
                    self.remux.audio(&f);
                }
            }
            Depack::Mp2t(seq) => {
                let _ = seq.gap(p.seq);
                self.remux.ts(p.payload);
            }
        }
    }

    /// Frames the depacketisers dropped since the last call.
    fn newly_lost(&mut self) -> u64 {
        let lost: u64 = self
            .tracks
            .iter()
            .map(|t| match &t.depack {
                Depack::H264(d) => d.dropped,
                _ => 0,
            })
            .sum();
        let new = lost.saturating_sub(self.lost_reported);
        self.lost_reported = self.lost_reported.max(lost);
        new
    }
}

/// Streams until cancelled (TEARDOWN, `Ok`), the route is gone (`Ok`) or
/// the session fails (no data for the timeout, a broken connection).
async fn stream(
    mut c: Conn,
    mut pl: Playing,
    feed: &mut Feed,
    spec: &RtspSpec,
    cancel: &CancellationToken,
    se: &Session,
) -> Result<(), RtspError> {
    let (play_url, peer_ip) = (se.play_url.as_str(), se.peer_ip);
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + se.keepalive_every,
        se.keepalive_every,
    );
    let mut check = tokio::time::interval(Duration::from_millis(250));
    let mut ubuf0 = vec![0u8; 65536];
    let mut ubuf1 = vec![0u8; 65536];
    loop {
        // RTP packets that arrived this round: (track, bytes).
        let mut got: Vec<(usize, bytes::Bytes)> = Vec::new();
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    c.write_request("TEARDOWN", play_url, &[]),
                ).await;
                return Ok(());
            }
            r = c.fill() => {
                r?;
                while let Some(f) = c.next_frame()? {
                    match f {
                        Frame::Interleaved { channel, data } => {
                            if let Some(i) = pl.tracks.iter().position(|t| t.channel == channel) {
                                got.push((i, data));
                            }
                        }
                        Frame::Request { method, cseq } => c.answer_server_request(&method, cseq).await,
                        Frame::Response(r) if r.status >= 300 => {
                            tracing::debug!(
                                "rtsp input {}: keep-alive answered {}",
                                crate::redact::redact_url(play_url),
                                r.status
                            );
                        }
                        Frame::Response(_) => {}
                    }
                }
            }
            r = recv_on(pl.tracks.first(), &mut ubuf0) => {
                if let Ok((n, from)) = r {
                    if peer_ip.is_none_or(|p| p == from.ip()) {
                        got.push((0, bytes::Bytes::copy_from_slice(&ubuf0[..n])));
                    }
                }
            }
            r = recv_on(pl.tracks.get(1), &mut ubuf1) => {
                if let Ok((n, from)) = r {
                    if peer_ip.is_none_or(|p| p == from.ip()) {
                        got.push((1, bytes::Bytes::copy_from_slice(&ubuf1[..n])));
                    }
                }
            }
            _ = keepalive.tick() => {
                c.write_request(se.keepalive_method, play_url, &[]).await?;
            }
            _ = check.tick() => {
                if pl.last_data.elapsed() > spec.timeout {
                    return Err(RtspError::Timeout(format!(
                        "no RTP data for {} ms", spec.timeout.as_millis()
                    )));
                }
            }
        }
        for (i, data) in got {
            pl.packet(i, &data);
        }
        let lost = pl.newly_lost();
        if lost > 0 {
            feed.stats.frames_lost.fetch_add(lost, Relaxed);
        }
        let out = pl.remux.take();
        if !out.is_empty() && !feed.push(out).await {
            return Ok(());
        }
    }
}

/// Half the session timeout the camera named (RFC 2326 12.37: 60 s when it
/// names none), between 1 s and 30 min. The camera's number is untrusted:
/// `timeout=18446744073709551615` once made `Instant::now() + period`
/// overflow and panic the input task.
fn keepalive_period(session_timeout: Option<u64>) -> Duration {
    Duration::from_secs(session_timeout.unwrap_or(60).clamp(2, 3600)) / 2
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_camera_names_any_session_timeout_without_harm() {
        use super::keepalive_period;
        use std::time::Duration;
        for t in [None, Some(0), Some(1), Some(60), Some(u64::MAX)] {
            let p = keepalive_period(t);
            assert!(
                (Duration::from_secs(1)..=Duration::from_secs(1800)).contains(&p),
                "{t:?}: {p:?}"
            );
            // What the session loop does with it.
            let _ = tokio::time::Instant::now() + p;
        }
        assert_eq!(keepalive_period(None), Duration::from_secs(30));
    }
    use super::*;

    #[test]
    fn transport_ranges() {
        let t = "RTP/AVP/TCP;unicast;interleaved=2-3;ssrc=1";
        assert_eq!(transport_range(t, "interleaved"), Some((2, 3)));
        let u = "RTP/AVP;unicast;client_port=5000-5001;server_port=6970-6971";
        assert_eq!(transport_range(u, "server_port"), Some((6970, 6971)));
        assert_eq!(transport_range(u, "interleaved"), None);
    }

    #[test]
    fn error_texts_name_the_cause() {
        let e = RtspError::Unauthorized {
            method: "DESCRIBE".into(),
            had_credentials: true,
        };
        assert!(e.to_string().contains("401") && e.to_string().contains("wrong"));
        assert!(RtspError::NotFound("rtsp://h/x".into())
            .to_string()
            .starts_with("404"));
    }
}
