//! RTSP camera simulator: an RTSP 1.0 server (RFC 2326) streaming the tsgen H.264 picture (+ AAC silence) as RTP over TCP-interleaved or UDP, with optional Digest auth, like an IP camera.
//!
//! Paths: `/{path}` serves H.264 (RFC 6184: STAP-A for SPS+PPS, FU-A for
//! large NAL units) and AAC (RFC 3640 AAC-hbr); `/{path}.ts` serves the
//! tsgen MPEG-TS as one MP2T track (RFC 2250). Every picture carries the
//! tsgen SEI send stamp, so latency through a relay can be measured with
//! `tsgen::TsAnalyzer`. Independent of castpoint: validated with ffprobe.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use md5::{Digest as _, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::tsgen::{self, h264, Pacer, Stamp, TsConfig, TsGenerator, SEI_UUID};

/// What the camera serves.
#[derive(Debug, Clone)]
pub struct CameraConfig {
    pub bind: SocketAddr,
    /// Stream path without the leading '/'.
    pub path: String,
    pub fps: u32,
    pub gop: u32,
    /// Video bit rate: pictures are padded with filler NAL units to it.
    pub bitrate: u64,
    pub audio: bool,
    /// Digest credentials required when set.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Announced in `Session: id;timeout=N`.
    pub session_timeout: u32,
    /// Also announce a G.711 PCMU track (never sent), as many cameras do:
    /// clients must skip what they cannot use.
    pub pcmu: bool,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            path: "stream".into(),
            fps: 25,
            gop: 25,
            bitrate: 2_000_000,
            audio: true,
            user: None,
            password: None,
            session_timeout: 60,
            pcmu: false,
        }
    }
}

/// A running camera; dropping it (or [`Camera::stop`]) closes every socket.
pub struct Camera {
    pub addr: SocketAddr,
    /// GET_PARAMETER / OPTIONS requests received while playing.
    pub keepalives: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Camera {
    pub async fn start(cfg: CameraConfig) -> std::io::Result<Camera> {
        let l = TcpListener::bind(cfg.bind).await?;
        let addr = l.local_addr()?;
        let cfg = Arc::new(cfg);
        let keepalives = Arc::new(AtomicU64::new(0));
        let ka = keepalives.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task
            // drops it, which aborts them all (a camera losing power).
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    r = l.accept() => {
                        if let Ok((s, peer)) = r {
                            conns.spawn(serve(s, peer, addr, cfg.clone(), ka.clone()));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Camera {
            addr,
            keepalives,
            task,
        })
    }

    /// `rtsp://addr/path` (no credentials).
    pub fn url(&self, path: &str) -> String {
        format!("rtsp://{}/{}", self.addr, path)
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Request {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one request (or skips one `$` frame: clients send RTCP that way).
/// `Ok(None)`: need more bytes.
fn parse_request(buf: &[u8]) -> Result<Option<(Option<Request>, usize)>, String> {
    if buf.first() == Some(&b'$') {
        if buf.len() < 4 {
            return Ok(None);
        }
        let n = 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        return Ok((buf.len() >= n).then_some((None, n)));
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 16384 {
            Err("request head too large".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split(' ');
    let method = start.next().unwrap_or_default().to_string();
    let uri = start.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < end + 4 + body {
        return Ok(None);
    }
    Ok(Some((
        Some(Request {
            method,
            uri,
            headers,
        }),
        end + 4 + body,
    )))
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest_params(v: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let v = v.trim_start_matches("Digest").trim();
    for part in v.split(',') {
        if let Some((k, x)) = part.split_once('=') {
            m.insert(
                k.trim().to_ascii_lowercase(),
                x.trim().trim_matches('"').to_string(),
            );
        }
    }
    m
}

/// RFC 2617 check of an `Authorization: Digest ...` header.
fn digest_ok(cfg: &CameraConfig, nonce: &str, method: &str, auth: Option<&str>) -> bool {
    let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) else {
        return true;
    };
    let Some(a) = auth.filter(|a| a.starts_with("Digest ")) else {
        return false;
    };
    let p = digest_params(a);
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    if get("username") != user || get("nonce") != nonce {
        return false;
    }
    let ha1 = md5_hex(&format!("{user}:{}:{pass}", get("realm")));
    let ha2 = md5_hex(&format!("{method}:{}", get("uri")));
    let want = if get("qop") == "auth" {
        md5_hex(&format!(
            "{ha1}:{nonce}:{}:{}:auth:{ha2}",
            get("nc"),
            get("cnonce")
        ))
    } else {
        md5_hex(&format!("{ha1}:{nonce}:{ha2}"))
    };
    get("response") == want
}

/// Where one track's RTP goes.
#[derive(Clone)]
enum Dest {
    Tcp(u8),
    Udp(Arc<UdpSocket>, SocketAddr),
}

/// Aborts its task when dropped: a connection's writer and media tasks
/// die with the connection task (also when the camera is stopped).
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const REALM: &str = "castpoint-sim";
/// RTP payload size limit (fits a 1500-byte MTU with headers).
const MTU: usize = 1400;

async fn serve(
    sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: Arc<CameraConfig>,
    keepalives: Arc<AtomicU64>,
) {
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(4096);
    let mut writer = Abort(tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
    }));
    let nonce = format!("{:016x}", fastrand::u64(..));
    let session = format!("{:08X}", fastrand::u32(..));
    let mut dests: Vec<Option<Dest>> = vec![None, None, None];
    let mut media: Option<Abort> = None;
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 8192];
    'conn: loop {
        // Like a camera, expire a playing session that sends no request
        // (keep-alive) within its announced timeout.
        let limit = if media.is_some() {
            Duration::from_secs(u64::from(cfg.session_timeout.max(1)))
        } else {
            Duration::from_secs(3600)
        };
        let n = match tokio::time::timeout(limit, rd.read(&mut tmp)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        loop {
            let (req, used) = match parse_request(&buf) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(_) => break 'conn,
            };
            buf.drain(..used);
            let Some(req) = req else { continue };
            let cseq = req.header("CSeq").unwrap_or("0").to_string();
            let reply = |status: &str, extra: &str, body: &str| {
                let mut s = format!(
                    "RTSP/1.0 {status}\r\nCSeq: {cseq}\r\nServer: castpoint-sim\r\n{extra}"
                );
                if !body.is_empty() {
                    s.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                s.push_str("\r\n");
                s.push_str(body);
                Bytes::from(s)
            };
            if req.method != "OPTIONS"
                && !digest_ok(&cfg, &nonce, &req.method, req.header("Authorization"))
            {
                let h = format!(
                    "WWW-Authenticate: Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5\r\n"
                );
                let _ = tx.send(reply("401 Unauthorized", &h, "")).await;
                continue;
            }
            // Path after host:port, without query and track suffix.
            let path = req
                .uri
                .split_once("://")
                .and_then(|(_, r)| r.split_once('/'))
                .map(|(_, p)| p)
                .unwrap_or("")
                .split('?')
                .next()
                .unwrap_or("")
                .to_string();
            let ts_mode = path.starts_with(&format!("{}.ts", cfg.path));
            let known = path == cfg.path || path.starts_with(&format!("{}/", cfg.path)) || ts_mode;
            let sess = format!("Session: {session};timeout={}\r\n", cfg.session_timeout);
            if media.is_some() && matches!(req.method.as_str(), "GET_PARAMETER" | "OPTIONS") {
                keepalives.fetch_add(1, Ordering::Relaxed);
            }
            let out = match req.method.as_str() {
                "OPTIONS" => reply(
                    "200 OK",
                    "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n",
                    "",
                ),
                _ if !known => reply("404 Not Found", "", ""),
                "DESCRIBE" => {
                    let base = format!("rtsp://{local}/{}/", path.trim_end_matches('/'));
                    let sdp = sdp(&cfg, ts_mode, local.ip());
                    reply(
                        "200 OK",
                        &format!("Content-Type: application/sdp\r\nContent-Base: {base}\r\n"),
                        &sdp,
                    )
                }
                "SETUP" => {
                    // trackID=2 is the PCMU track: set up, never sent.
                    let track = req
                        .uri
                        .rsplit_once("trackID=")
                        .and_then(|(_, n)| n.parse::<usize>().ok())
                        .unwrap_or(0)
                        .min(2);
                    let t = req.header("Transport").unwrap_or_default().to_string();
                    let range = |key: &str| {
                        t.split(';').find_map(|p| {
                            let (k, v) = p.split_once('=')?;
                            (k.trim() == key).then_some(())?;
                            let (a, _) = v.split_once('-').unwrap_or((v, v));
                            a.trim().parse::<u16>().ok()
                        })
                    };
                    if t.contains("RTP/AVP/TCP") {
                        let ch = range("interleaved").unwrap_or(2 * track as u16) as u8;
                        dests[track] = Some(Dest::Tcp(ch));
                        let h = format!(
                            "Transport: RTP/AVP/TCP;unicast;interleaved={}-{}\r\n{sess}",
                            ch,
                            ch.wrapping_add(1)
                        );
                        reply("200 OK", &h, "")
                    } else if let Some(cp) = range("client_port") {
                        match UdpSocket::bind((local.ip(), 0)).await {
                            Ok(u) => {
                                let sp = u.local_addr().map(|a| a.port()).unwrap_or(0);
                                dests[track] =
                                    Some(Dest::Udp(Arc::new(u), SocketAddr::new(peer.ip(), cp)));
                                let h = format!(
                                    "Transport: RTP/AVP;unicast;client_port={}-{};server_port={}-{}\r\n{sess}",
                                    cp,
                                    cp.wrapping_add(1),
                                    sp,
                                    sp.wrapping_add(1)
                                );
                                reply("200 OK", &h, "")
                            }
                            Err(_) => reply("500 Internal Server Error", "", ""),
                        }
                    } else {
                        reply("461 Unsupported Transport", "", "")
                    }
                }
                "PLAY" => {
                    if media.is_none() && dests.iter().any(Option::is_some) {
                        media = Some(Abort(tokio::spawn(stream(
                            cfg.clone(),
                            ts_mode,
                            dests.clone(),
                            tx.clone(),
                        ))));
                    }
                    reply("200 OK", &format!("{sess}Range: npt=0.000-\r\n"), "")
                }
                "GET_PARAMETER" => reply("200 OK", &sess, ""),
                "TEARDOWN" => {
                    let _ = tx.send(reply("200 OK", "", "")).await;
                    break 'conn;
                }
                _ => reply("501 Not Implemented", "", ""),
            };
            if tx.send(out).await.is_err() {
                break 'conn;
            }
        }
    }
    drop(media);
    drop(tx);
    // Let the writer flush the last answer (TEARDOWN's 200).
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer.0).await;
}

fn sdp(cfg: &CameraConfig, ts_mode: bool, ip: IpAddr) -> String {
    use base64::Engine as _;
    let mut s = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=castpoint-sim camera\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=control:*\r\n"
    );
    if ts_mode {
        s.push_str("m=video 0 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\na=control:trackID=0\r\n");
        return s;
    }
    let mut ps = Vec::new();
    h264::sps(&mut ps, cfg.fps);
    h264::pps(&mut ps);
    let nals: Vec<&[u8]> = split_annexb(&ps).collect();
    let b64 = |n: &[u8]| base64::engine::general_purpose::STANDARD.encode(n);
    let (sps, pps) = (
        nals.first().copied().unwrap_or_default(),
        nals.get(1).copied().unwrap_or_default(),
    );
    let pli = sps.get(1..4).map_or("42c01e".to_string(), |b| {
        b.iter().map(|x| format!("{x:02x}")).collect()
    });
    s.push_str(&format!(
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
         a=fmtp:96 packetization-mode=1;profile-level-id={pli};sprop-parameter-sets={},{}\r\n\
         a=framerate:{}\r\na=control:trackID=0\r\n",
        b64(sps),
        b64(pps),
        cfg.fps
    ));
    if cfg.audio {
        s.push_str(
            "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 mpeg4-generic/48000/1\r\n\
             a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1188\r\n\
             a=control:trackID=1\r\n",
        );
    }
    if cfg.pcmu {
        s.push_str("m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=2\r\n");
    }
    s
}

/// NAL units (without start codes) of an Annex B buffer.
fn split_annexb(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= b.len() {
        if b[i] == 0 && b[i + 1] == 0 && b[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut v = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut e = starts.get(k + 1).map_or(b.len(), |n| n - 3);
        // Trim the extra zero of a 4-byte start code.
        while e > s && b[e - 1] == 0 && starts.get(k + 1).is_some() {
            e -= 1;
        }
        v.push(&b[s..e]);
    }
    v.into_iter()
}

struct RtpOut {
    pt: u8,
    seq: u16,
    ssrc: u32,
    dest: Dest,
}

impl RtpOut {
    async fn send(&mut self, tx: &mpsc::Sender<Bytes>, ts: u32, marker: bool, payload: &[u8]) {
        let mut p = Vec::with_capacity(16 + payload.len());
        if let Dest::Tcp(ch) = self.dest {
            p.push(b'$');
            p.push(ch);
            p.extend_from_slice(&((12 + payload.len()) as u16).to_be_bytes());
        }
        p.push(0x80);
        p.push(self.pt | if marker { 0x80 } else { 0 });
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        match &self.dest {
            // A client that does not read loses packets, like a camera's
            // full send buffer; the connection stays up.
            Dest::Tcp(_) => {
                let _ = tx.try_send(Bytes::from(p));
            }
            Dest::Udp(s, to) => {
                let _ = s.send_to(&p, to).await;
            }
        }
    }
}

/// Packetizes one access unit (RFC 6184): SPS+PPS in one STAP-A, small
/// NAL units alone, large ones in FU-A fragments; marker on the last.
async fn send_au(out: &mut RtpOut, tx: &mpsc::Sender<Bytes>, ts: u32, au: &[u8]) {
    let nals: Vec<&[u8]> = split_annexb(au).filter(|n| !n.is_empty()).collect();
    let mut i = 0;
    while i < nals.len() {
        let last = |j: usize| j + 1 == nals.len();
        let ty = nals[i][0] & 0x1F;
        if ty == 7 && nals.get(i + 1).is_some_and(|n| n[0] & 0x1F == 8) {
            let mut stap = vec![(nals[i][0] & 0x60) | 24];
            for n in &nals[i..i + 2] {
                stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
                stap.extend_from_slice(n);
            }
            out.send(tx, ts, last(i + 1), &stap).await;
            i += 2;
            continue;
        }
        let n = nals[i];
        if n.len() <= MTU {
            out.send(tx, ts, last(i), n).await;
        } else {
            let ind = (n[0] & 0xE0) | 28;
            let body = &n[1..];
            let chunks: Vec<&[u8]> = body.chunks(MTU - 2).collect();
            for (k, c) in chunks.iter().enumerate() {
                let mut fu = Vec::with_capacity(c.len() + 2);
                let mut h = n[0] & 0x1F;
                if k == 0 {
                    h |= 0x80;
                }
                if k + 1 == chunks.len() {
                    h |= 0x40;
                }
                fu.push(ind);
                fu.push(h);
                fu.extend_from_slice(c);
                out.send(tx, ts, last(i) && k + 1 == chunks.len(), &fu)
                    .await;
            }
        }
        i += 1;
    }
}

async fn stream(
    cfg: Arc<CameraConfig>,
    ts_mode: bool,
    dests: Vec<Option<Dest>>,
    tx: mpsc::Sender<Bytes>,
) {
    let mk = |pt, d: &Option<Dest>| {
        d.clone().map(|dest| RtpOut {
            pt,
            seq: fastrand::u16(..),
            ssrc: fastrand::u32(..),
            dest,
        })
    };
    if ts_mode {
        let Some(mut out) = mk(33, &dests[0]) else {
            return;
        };
        let Ok(mut g) = TsGenerator::new(TsConfig {
            bitrate: cfg.bitrate.max(500_000),
            fps: cfg.fps,
            gop: cfg.gop,
            ..TsConfig::default()
        }) else {
            return;
        };
        let mut pacer = Pacer::new(Instant::now(), g.chunk_duration());
        let start = Instant::now();
        loop {
            tokio::time::sleep_until(pacer.next_deadline().into()).await;
            let due = pacer.due(Instant::now()).clamp(1, 256);
            for _ in 0..due {
                let c = g.next_chunk(SystemTime::now());
                let ts = (start.elapsed().as_micros() as u64 * 9 / 100) as u32;
                out.send(&tx, ts, false, &c).await;
            }
            pacer.mark_sent(due);
        }
    }
    let mut video = mk(96, &dests[0]);
    let mut audio = if cfg.audio { mk(97, &dests[1]) } else { None };
    let vbase = fastrand::u32(..);
    let abase = fastrand::u32(..);
    let fps = u64::from(cfg.fps.max(1));
    let gop = u64::from(cfg.gop.max(1));
    let target = (cfg.bitrate / 8 / fps) as usize;
    let raw_aac = tsgen::adts_silence();
    let start = Instant::now();
    let mut next_audio = 0u64;
    for n in 0u64.. {
        let due = start + Duration::from_micros(n * 1_000_000 / fps);
        tokio::time::sleep_until(due.into()).await;
        if let Some(v) = &mut video {
            let stamp = Stamp {
                sent_unix_us: tsgen::unix_us(SystemTime::now()),
                seq: n as u32,
            }
            .encode();
            let mut pic = h264::picture(n, gop, cfg.fps, Some((&SEI_UUID, &stamp[4..]))).bytes;
            if target > pic.len() + 8 {
                let pad = target - pic.len() - 8;
                h264::filler(&mut pic, pad);
            }
            let ts = vbase.wrapping_add((n * 90_000 / fps) as u32);
            send_au(v, &tx, ts, &pic).await;
        }
        // Audio frames (1024 samples at 48 kHz) up to the next picture.
        let until = (n + 1) * 48_000 / fps;
        while next_audio * 1024 < until {
            if let Some(a) = &mut audio {
                let raw = &raw_aac[7..];
                let mut pl = vec![0, 16];
                pl.extend_from_slice(&((raw.len() as u16) << 3).to_be_bytes());
                pl.extend_from_slice(raw);
                let ts = abase.wrapping_add((next_audio * 1024) as u32);
                a.send(&tx, ts, true, &pl).await;
            }
            next_audio += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_annexb_and_checks_digest() {
        let b = [0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 3];
        let v: Vec<&[u8]> = split_annexb(&b).collect();
        assert_eq!(v, vec![&[0x67, 1][..], &[0x68, 2], &[0x65, 3]]);
        let cfg = CameraConfig {
            user: Some("admin".into()),
            password: Some("pw".into()),
            ..CameraConfig::default()
        };
        let ha1 = md5_hex("admin:castpoint-sim:pw");
        let ha2 = md5_hex("DESCRIBE:rtsp://h/s");
        let r = md5_hex(&format!("{ha1}:n1:{ha2}"));
        let h = format!("Digest username=\"admin\", realm=\"castpoint-sim\", nonce=\"n1\", uri=\"rtsp://h/s\", response=\"{r}\"");
        assert!(digest_ok(&cfg, "n1", "DESCRIBE", Some(&h)));
        assert!(!digest_ok(&cfg, "n2", "DESCRIBE", Some(&h)));
        assert!(!digest_ok(&cfg, "n1", "DESCRIBE", None));
    }
}
