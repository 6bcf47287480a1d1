//! One RTMP connection: handshake, the command exchange of a publisher (connect, releaseStream, FCPublish, createStream, publish, deleteStream), and media handed to the claimed route input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::amf0::{self, obj, s, Amf};
use super::chunk::{self, msg, ChunkDecoder, ChunkEncoder, Limits, Message, HANDSHAKE_LEN};
use super::flv::{self, Tag};
use super::{Event, Publisher, Refusal, Registry, RtmpConfig};
use crate::media::tsmux::{AacConfig, MuxConfig, VideoConfig};

/// Our outgoing chunk size (announced with Set Chunk Size).
const OUT_CHUNK: u32 = 4096;
/// Window we ask the peer to acknowledge.
const WINDOW: u32 = 2_500_000;

struct Session<'a> {
    peer: SocketAddr,
    reg: &'a Registry,
    dec: ChunkDecoder,
    enc: ChunkEncoder,
    out: BytesMut,
    app: Option<String>,
    publisher: Option<Publisher>,
    /// Message stream id of the publish (replies go there).
    stream_id: u32,
    bytes_in: u64,
    last_ack: u64,
    peer_window: Option<u32>,
    // Media state.
    nalu_len: u8,
    video: Option<VideoConfig>,
    audio: Option<AacConfig>,
    config_sent: Option<MuxConfig>,
    seen_keyframe: bool,
    /// Unusable sequence headers already logged (see `unusable_header`).
    header_warned: Vec<String>,
    /// The last metadata logged (see `on_data`).
    last_meta: Option<String>,
    last_ts: Option<u32>,
    clock: i64,
    /// Set when the session must end after flushing replies.
    closing: Option<String>,
}

pub(super) async fn run(
    mut sock: TcpStream,
    peer: SocketAddr,
    reg: Registry,
    cfg: &RtmpConfig,
    cancel: CancellationToken,
) -> Result<(), String> {
    let idle = cfg.idle_timeout;
    let io = |e: std::io::Error| e.to_string();
    // Handshake: C0+C1 in, S0+S1+S2 out, C2 in.
    let mut c0c1 = vec![0u8; 1 + HANDSHAKE_LEN];
    timed(idle, &cancel, sock.read_exact(&mut c0c1))
        .await?
        .map_err(io)?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u32)
        .unwrap_or(0);
    let reply = chunk::handshake_reply(&c0c1, epoch)?;
    sock.write_all(&reply).await.map_err(io)?;
    let mut c2 = vec![0u8; HANDSHAKE_LEN];
    timed(idle, &cancel, sock.read_exact(&mut c2))
        .await?
        .map_err(io)?;

    let mut st = Session {
        peer,
        reg: &reg,
        dec: ChunkDecoder::new(Limits {
            max_message: cfg.max_message,
            max_buffered: cfg.max_message * 2,
            ..Limits::default()
        }),
        enc: ChunkEncoder::new(),
        out: BytesMut::new(),
        app: None,
        publisher: None,
        stream_id: 1,
        bytes_in: 0,
        last_ack: 0,
        peer_window: None,
        nalu_len: 4,
        video: None,
        audio: None,
        config_sent: None,
        seen_keyframe: false,
        header_warned: Vec::new(),
        last_meta: None,
        last_ts: None,
        clock: 0,
        closing: None,
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let r = async {
        loop {
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            let n = timed(idle, &cancel, sock.read_buf(&mut buf))
                .await?
                .map_err(io)?;
            if n == 0 {
                return Ok(());
            }
            st.bytes_in += n as u64;
            while let Some(m) = st.dec.decode(&mut buf).map_err(|e| e.to_string())? {
                st.handle(m).await?;
                if st.closing.is_some() {
                    break;
                }
            }
            st.maybe_ack();
            if !st.out.is_empty() {
                sock.write_all(&st.out).await.map_err(io)?;
                st.out.clear();
            }
            if let Some(why) = st.closing.take() {
                // Let the client read the refusal before the socket closes.
                let _ = sock.shutdown().await;
                return Err(why);
            }
        }
    }
    .await;
    st.end(r.as_ref().err().cloned()).await;
    r
}

/// `fut` with the idle timeout and shutdown.
async fn timed<T>(
    idle: Duration,
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::select! {
        _ = cancel.cancelled() => Err("server shutting down".into()),
        r = tokio::time::timeout(idle, fut) => r.map_err(|_| format!("no data for {idle:?}")),
    }
}

impl Session<'_> {
    fn send(&mut self, m: Message) {
        self.enc.write(&mut self.out, &m);
    }

    fn command(&mut self, stream_id: u32, vals: &[Amf]) {
        let payload = amf0::encode_all(vals);
        self.send(Message {
            csid: 3,
            timestamp: 0,
            type_id: msg::COMMAND_AMF0,
            stream_id,
            payload: payload.into(),
        });
    }

    fn on_status(&mut self, level: &str, code: &str, description: &str) {
        let sid = self.stream_id;
        self.command(
            sid,
            &[
                s("onStatus"),
                Amf::Number(0.0),
                Amf::Null,
                obj(&[
                    ("level", s(level)),
                    ("code", s(code)),
                    ("description", s(description)),
                ]),
            ],
        );
    }

    fn maybe_ack(&mut self) {
        if let Some(w) = self.peer_window {
            if self.bytes_in - self.last_ack >= u64::from(w) {
                self.last_ack = self.bytes_in;
                let n = self.bytes_in as u32;
                self.send(chunk::control(msg::ACK, n.to_be_bytes().to_vec()));
            }
        }
    }

    async fn end(&mut self, reason: Option<String>) {
        if let Some(p) = self.publisher.take() {
            let why = reason.filter(|r| r.starts_with("refused:"));
            p.send(Event::End(why)).await;
        }
    }

    async fn handle(&mut self, m: Message) -> Result<(), String> {
        let p = &m.payload[..];
        let be32 = |p: &[u8]| {
            p.get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match m.type_id {
            msg::SET_CHUNK_SIZE => {
                let n = be32(p).ok_or("short Set Chunk Size")?;
                self.dec.set_chunk_size(n).map_err(|e| e.to_string())?;
            }
            msg::ABORT => {
                if let Some(c) = be32(p) {
                    self.dec.abort(c);
                }
            }
            msg::WINDOW_ACK_SIZE => {
                // A zero window would mean "ack every byte": clamp.
                self.peer_window = be32(p).map(|w| w.max(4096));
            }
            // Ping request (6) -> ping response (7) with the same time.
            msg::USER_CONTROL if p.len() >= 6 && p[..2] == [0, 6] => {
                let mut r = vec![0, 7];
                r.extend_from_slice(&p[2..6]);
                self.send(chunk::control(msg::USER_CONTROL, r));
            }
            msg::COMMAND_AMF0 => self.on_command(p, m.stream_id).await?,
            // AMF3 command: a format byte, then AMF0 values.
            msg::COMMAND_AMF3 if !p.is_empty() => self.on_command(&p[1..], m.stream_id).await?,
            msg::DATA_AMF0 => self.on_data(p),
            msg::DATA_AMF3 if !p.is_empty() => self.on_data(&p[1..]),
            msg::VIDEO | msg::AUDIO => self.on_media(&m).await?,
            _ => {}
        }
        Ok(())
    }

    /// One AMF0 command: a method per command (NetConnection and
    /// NetStream as OBS, ffmpeg and hardware encoders send them).
    async fn on_command(&mut self, p: &[u8], msid: u32) -> Result<(), String> {
        let v = amf0::decode_all(p).map_err(|e| e.to_string())?;
        let name = v.first().and_then(Amf::as_str).unwrap_or("").to_string();
        let txn = v.get(1).and_then(Amf::as_f64).unwrap_or(0.0);
        match name.as_str() {
            "connect" => self.on_connect(&v, txn),
            "releaseStream" | "FCPublish" | "FCUnpublish" | "_checkbw" => {
                if name == "FCUnpublish" {
                    self.unpublish().await;
                }
                if txn != 0.0 {
                    self.command(
                        0,
                        &[s("_result"), Amf::Number(txn), Amf::Null, Amf::Undefined],
                    );
                }
            }
            "createStream" => {
                self.command(
                    0,
                    &[
                        s("_result"),
                        Amf::Number(txn),
                        Amf::Null,
                        Amf::Number(f64::from(self.stream_id)),
                    ],
                );
            }
            "publish" => {
                let key = v.get(3).and_then(Amf::as_str).unwrap_or("").to_string();
                self.on_publish(&key, msid).await?;
            }
            "deleteStream" | "closeStream" => self.unpublish().await,
            "play" | "play2" => {
                self.on_status(
                    "error",
                    "NetStream.Play.Failed",
                    "this server ingests only; playback is not offered",
                );
                self.closing = Some("play refused (ingest only)".into());
            }
            _ => self.unknown_command(txn),
        }
        Ok(())
    }

    /// `connect`: remembers the application, sets the window, bandwidth
    /// and chunk size, and answers NetConnection.Connect.Success.
    fn on_connect(&mut self, v: &[Amf], txn: f64) {
        let app = v
            .get(2)
            .and_then(|o| o.get("app"))
            .and_then(Amf::as_str)
            .unwrap_or("");
        // "live/" and "live?token" both name app "live".
        let app = app.split('?').next().unwrap_or("").trim_matches('/');
        tracing::info!("rtmp {}: connect app {app:?}", self.peer);
        self.app = Some(app.to_string());
        self.send(chunk::control(
            msg::WINDOW_ACK_SIZE,
            WINDOW.to_be_bytes().to_vec(),
        ));
        let mut bw = WINDOW.to_be_bytes().to_vec();
        bw.push(2); // dynamic
        self.send(chunk::control(msg::SET_PEER_BANDWIDTH, bw));
        self.send(chunk::control(
            msg::SET_CHUNK_SIZE,
            OUT_CHUNK.to_be_bytes().to_vec(),
        ));
        self.enc.chunk_size = OUT_CHUNK as usize;
        self.command(
            0,
            &[
                s("_result"),
                Amf::Number(txn),
                obj(&[
                    ("fmsVer", s("FMS/3,0,1,123")),
                    ("capabilities", Amf::Number(31.0)),
                ]),
                obj(&[
                    ("level", s("status")),
                    ("code", s("NetConnection.Connect.Success")),
                    ("description", s("Connection succeeded.")),
                    ("objectEncoding", Amf::Number(0.0)),
                ]),
            ],
        );
    }

    /// `publish`: claims the (app, stream key) route input, or refuses
    /// with NetStream.Publish.BadName and closes.
    async fn on_publish(&mut self, key: &str, msid: u32) -> Result<(), String> {
        if msid != 0 {
            self.stream_id = msid;
        }
        let key = key.split('?').next().unwrap_or("");
        let Some(app) = self.app.clone() else {
            self.on_status("error", "NetStream.Publish.BadName", "connect first");
            self.closing = Some("publish before connect".into());
            return Ok(());
        };
        if self.publisher.is_some() {
            self.on_status("error", "NetStream.Publish.BadName", "already publishing");
            return Ok(());
        }
        match self.reg.claim(&app, key) {
            Ok(p) => {
                // Stream Begin on the publish stream.
                let mut sb = vec![0, 0];
                sb.extend_from_slice(&self.stream_id.to_be_bytes());
                self.send(chunk::control(msg::USER_CONTROL, sb));
                self.on_status("status", "NetStream.Publish.Start", "Publishing started.");
                tracing::info!("rtmp {}: publishing on app {app:?}", self.peer);
                if !p.send(Event::Start(self.peer)).await {
                    return Err("route input went away".into());
                }
                self.publisher = Some(p);
            }
            Err(Refusal::UnknownKey) => {
                // Never log the key itself: it is a secret.
                self.on_status(
                    "error",
                    "NetStream.Publish.BadName",
                    "unknown stream key for this application",
                );
                self.closing = Some(format!(
                    "publish refused: unknown stream key for app {app:?}"
                ));
            }
            Err(Refusal::AlreadyPublishing) => {
                self.on_status(
                    "error",
                    "NetStream.Publish.BadName",
                    "stream key already publishing",
                );
                self.closing = Some(format!(
                    "publish refused: stream key on app {app:?} already publishing"
                ));
            }
        }
        Ok(())
    }

    /// A command we do not implement: `_error` NetConnection.Call.Failed
    /// when the sender waits for an answer (a transaction id), else
    /// nothing.
    fn unknown_command(&mut self, txn: f64) {
        if txn != 0.0 {
            self.command(
                0,
                &[
                    s("_error"),
                    Amf::Number(txn),
                    Amf::Null,
                    obj(&[
                        ("level", s("error")),
                        ("code", s("NetConnection.Call.Failed")),
                        ("description", s("unknown command")),
                    ]),
                ],
            );
        }
    }

    /// A sequence header we cannot use: logged once per distinct reason
    /// (a relay may repeat it), the publish goes on and the next usable
    /// header is taken.
    fn unusable_header(&mut self, why: &str) {
        if self.header_warned.iter().any(|w| w == why) {
            return;
        }
        if self.header_warned.len() < 8 {
            self.header_warned.push(why.to_string());
        }
        tracing::warn!(
            "rtmp {}: ignoring an unusable sequence header ({why}); waiting for the next one",
            self.peer
        );
    }

    async fn unpublish(&mut self) {
        if let Some(p) = self.publisher.take() {
            tracing::info!("rtmp {}: unpublished", self.peer);
            p.send(Event::End(None)).await;
        }
    }

    fn on_data(&mut self, p: &[u8]) {
        // @setDataFrame onMetaData {...}: informative only (the tags
        // themselves decide what is muxed), logged for operators.
        let Ok(v) = amf0::decode_all(p) else { return };
        if let Some(md) = v.iter().find(|x| matches!(x, Amf::Object(_))) {
            let num = |k: &str| md.get(k).and_then(Amf::as_f64).unwrap_or(0.0);
            let text = format!(
                "{}x{} @ {} fps, video codec {:?}, audio codec {:?}",
                num("width"),
                num("height"),
                num("framerate"),
                md.get("videocodecid"),
                md.get("audiocodecid"),
            );
            // GStreamer's rtmp2sink repeats its metadata every second:
            // logged when it changes.
            if self.last_meta.as_deref() != Some(text.as_str()) {
                tracing::info!("rtmp {}: metadata {text}", self.peer);
                self.last_meta = Some(text);
            }
        }
    }

    async fn on_media(&mut self, m: &Message) -> Result<(), String> {
        // Sequence headers are kept even when they come before the publish
        // is answered (some encoders send them right after createStream);
        // frames before the publish are dropped.
        let tag = if m.type_id == msg::VIDEO {
            flv::video(&m.payload, self.nalu_len)
        } else {
            flv::audio(&m.payload)
        };
        if self.publisher.is_none() && !matches!(tag, Ok(Tag::AvcConfig { .. } | Tag::AacConfig(_)))
        {
            return Ok(());
        }
        let tag = match tag {
            Ok(t) => t,
            Err(flv::Unsupported(why)) => {
                self.on_status("error", "NetStream.Publish.Rejected", &why);
                self.closing = Some(format!("refused: {why}"));
                if let Some(p) = &self.publisher {
                    p.stats().set_error(format!("publisher refused: {why}"));
                }
                return Ok(());
            }
        };
        // Unwrap the 32-bit millisecond clock (signed steps: audio and
        // video interleave slightly out of order).
        let step = match self.last_ts {
            Some(l) => i64::from(m.timestamp.wrapping_sub(l) as i32),
            None => 0,
        };
        self.last_ts = Some(m.timestamp);
        self.clock += step;
        let dts = self.clock * 90;
        let ev = match tag {
            Tag::AvcConfig { sps, pps, nalu_len } => {
                self.nalu_len = nalu_len;
                self.video = Some(VideoConfig { sps, pps });
                return Ok(());
            }
            Tag::AacConfig(asc) => {
                match AacConfig::from_asc(&asc) {
                    Ok(a) => self.audio = Some(a),
                    // Relays send empty or placeholder headers before the
                    // real one: keep waiting (audio frames are dropped
                    // until a usable header arrives).
                    Err(why) => self.unusable_header(&format!("AAC config: {why}")),
                }
                return Ok(());
            }
            Tag::BadConfig(why) => {
                self.unusable_header(&why);
                return Ok(());
            }
            Tag::Skip => return Ok(()),
            Tag::Video {
                keyframe,
                cts,
                annexb,
            } => {
                if self.video.is_none() {
                    return Ok(());
                }
                // Decoding starts at a keyframe.
                self.seen_keyframe |= keyframe;
                if !self.seen_keyframe {
                    return Ok(());
                }
                Event::Video {
                    pts: dts + i64::from(cts) * 90,
                    dts,
                    key: keyframe,
                    annexb,
                }
            }
            Tag::Audio(raw) => {
                if self.audio.is_none() {
                    return Ok(());
                }
                Event::Audio { pts: dts, raw }
            }
        };
        let cfg = MuxConfig {
            video: self.video.clone(),
            audio: self.audio.clone(),
        };
        let Some(p) = &self.publisher else {
            return Ok(());
        };
        if self.config_sent.as_ref() != Some(&cfg) {
            if !p.send(Event::Config(cfg.clone())).await {
                return Err("route input went away".into());
            }
            self.config_sent = Some(cfg);
        }
        if !p.send(ev).await {
            return Err("route input went away".into());
        }
        Ok(())
    }
}
