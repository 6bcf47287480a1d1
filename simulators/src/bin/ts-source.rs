//! ts-source: sends the synthetic MPEG-TS (castpoint_sim::tsgen) over UDP,
//! SRT (caller or listener) or to a file, paced in real time, with optional
//! loss, jitter and outage injection for failover and status tests.

use anyhow::{bail, Context};
use bytes::Bytes;
use castpoint_sim::tsgen::{Pacer, TsConfig, TsGenerator};
use castpoint_sim::util::{parse_bitrate, Endpoint};
use clap::Parser;
use futures::SinkExt;
use srt_tokio::options::ByteCount;
use srt_tokio::SrtSocket;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;

#[derive(Parser, Debug)]
#[command(about = "Synthetic MPEG-TS source (H.264 + AAC, stamped for latency) over UDP/SRT/file")]
struct Args {
    /// Destination: udp://HOST:PORT (unicast or multicast), srt://HOST:PORT
    /// (caller; ?streamid=ID), srt://:PORT or srt://ADDR:PORT?mode=listener
    /// (listener, waits for one caller), a file path, or - for stdout.
    dest: String,
    /// Transport bit rate (e.g. 4M, 500k).
    #[arg(long, default_value = "4M", value_parser = parse_bitrate)]
    bitrate: u64,
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Keyframe interval in frames.
    #[arg(long, default_value_t = 25)]
    gop: u32,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Random loss: percentage of loss events per chunk (datagram).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Chunks dropped per loss event (burst length).
    #[arg(long, default_value_t = 1)]
    burst: u32,
    /// Extra send delay per chunk, uniform in 0..JITTER ms (order is kept).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Outage: stop sending at T seconds for N seconds ("T:N"), repeatable.
    /// The stream clock keeps running, as with a real source that blacks out.
    #[arg(long, value_parser = parse_outage)]
    outage: Vec<(f64, f64)>,
    /// SRT latency in ms.
    #[arg(long, default_value_t = 120)]
    srt_latency_ms: u64,
    /// SRT send buffer in bytes: srt-tokio's default (32 packets) stalls
    /// senders at 16-20 Mbit/s.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    srt_send_buffer: u64,
    /// Multicast TTL for udp:// to a group.
    #[arg(long, default_value_t = 1)]
    ttl: u32,
    /// Print a JSON summary on exit instead of text.
    #[arg(long)]
    json: bool,
    /// No real-time pacing (file output: write as fast as possible).
    #[arg(long)]
    no_pace: bool,
}

fn parse_outage(s: &str) -> Result<(f64, f64), String> {
    let (t, n) = s.split_once(':').ok_or("expected T:N seconds")?;
    let t: f64 = t.parse().map_err(|_| format!("bad time {t:?}"))?;
    let n: f64 = n.parse().map_err(|_| format!("bad length {n:?}"))?;
    if !(t >= 0.0 && n > 0.0) {
        return Err("outage needs T >= 0 and N > 0".into());
    }
    Ok((t, n))
}

enum Sink {
    Udp(UdpSocket, std::net::SocketAddr),
    Srt(Box<SrtSocket>),
    File(Box<dyn Write + Send>),
}

impl Sink {
    async fn send(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        match self {
            Sink::Udp(s, to) => {
                // A refused datagram (no receiver yet on loopback) is not fatal
                // for a live source; count-free retry is the next chunk.
                if let Err(e) = s.send_to(&chunk, *to).await {
                    if e.kind() != std::io::ErrorKind::ConnectionRefused {
                        return Err(e.into());
                    }
                }
            }
            // `feed` queues without waiting for a flush of the whole buffer.
            Sink::Srt(s) => s.feed((Instant::now(), chunk)).await.context("SRT send")?,
            Sink::File(f) => f.write_all(&chunk).context("write")?,
        }
        Ok(())
    }

    async fn close(&mut self) {
        match self {
            Sink::Srt(s) => {
                let _ = s.close().await;
            }
            Sink::File(f) => {
                let _ = f.flush();
            }
            Sink::Udp(..) => {}
        }
    }
}

fn srt_builder(a: &Args) -> srt_tokio::SrtSocketBuilder {
    let buf = a.srt_send_buffer;
    SrtSocket::builder()
        .latency(Duration::from_millis(a.srt_latency_ms))
        .set(move |o| o.sender.buffer_size = ByteCount(buf))
}

async fn open(a: &Args) -> anyhow::Result<Sink> {
    Ok(match Endpoint::parse(&a.dest)? {
        Endpoint::Udp(to) => {
            let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = UdpSocket::bind(bind).await?;
            if to.ip().is_multicast() {
                s.set_multicast_ttl_v4(a.ttl)?;
            }
            Sink::Udp(s, to)
        }
        Endpoint::SrtCaller { addr, stream_id } => {
            let s = srt_builder(a)
                .call(addr, stream_id.as_deref())
                .await
                .with_context(|| format!("SRT call {addr}"))?;
            Sink::Srt(Box::new(s))
        }
        Endpoint::SrtListener { addr } => {
            // Bind first so port 0 can be reported before a caller arrives.
            let udp = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?;
            let local = udp.local_addr()?;
            println!("listening srt {local}");
            std::io::stdout().flush()?;
            let s = srt_builder(a)
                .local(local)
                .socket(udp)
                .listen()
                .await
                .context("SRT listen")?;
            Sink::Srt(Box::new(s))
        }
        Endpoint::File(p) if p == "-" => Sink::File(Box::new(std::io::stdout())),
        Endpoint::File(p) => Sink::File(Box::new(std::io::BufWriter::new(
            std::fs::File::create(&p).with_context(|| format!("create {p}"))?,
        ))),
        Endpoint::Http(_) => bail!("ts-source does not serve HTTP; use udp:// or srt://"),
    })
}

#[derive(Default)]
struct Counters {
    generated: u64,
    sent: u64,
    lost: u64,
    /// Of `lost`, those after the last chunk sent: no receiver can tell
    /// them from the end of the stream.
    lost_tail: u64,
    outage: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors print as one line (with their causes), never a backtrace.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ts-source: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    if !(0.0..=100.0).contains(&a.loss) || a.jitter_ms < 0.0 || a.burst == 0 {
        bail!("--loss must be 0..100, --jitter-ms >= 0, --burst >= 1");
    }
    let mut gen = TsGenerator::new(TsConfig {
        bitrate: a.bitrate,
        fps: a.fps,
        gop: a.gop,
        ..Default::default()
    })?;
    let mut sink = open(&a).await?;
    let interval = gen.chunk_duration();
    let start = Instant::now();
    let mut pacer = Pacer::new(start, interval);
    if a.no_pace && a.duration.is_none() {
        // Unpaced output without a duration would never end.
        bail!("--no-pace needs --duration (stream seconds)");
    }
    // Wall-clock end when paced; stream-time end (below) when not.
    let end = a
        .duration
        .filter(|_| !a.no_pace)
        .map(|d| start + Duration::from_secs_f64(d));
    let mut c = Counters::default();
    let mut burst_left = 0u32;
    let mut last_send = start;
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    'outer: loop {
        if !a.no_pace {
            tokio::select! {
                _ = tokio::time::sleep_until(pacer.next_deadline().into()) => {}
                _ = &mut shutdown => break,
            }
        }
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        // After a scheduling hiccup send what is due back to back (bounded),
        // so the average rate stays exact.
        let due = if a.no_pace {
            64
        } else {
            pacer.due(now).clamp(1, 256)
        };
        for _ in 0..due {
            let deadline = pacer.next_deadline();
            pacer.mark_sent(1);
            let chunk = gen.next_chunk(SystemTime::now());
            c.generated += 1;
            let t = deadline.saturating_duration_since(start).as_secs_f64();
            if a.outage.iter().any(|&(at, len)| t >= at && t < at + len) {
                c.outage += 1;
                continue;
            }
            if burst_left > 0 {
                burst_left -= 1;
                c.lost += 1;
                c.lost_tail += 1;
                continue;
            }
            if a.loss > 0.0 && fastrand::f64() * 100.0 < a.loss {
                burst_left = a.burst - 1;
                c.lost += 1;
                c.lost_tail += 1;
                continue;
            }
            if a.jitter_ms > 0.0 {
                // Delay, never reorder: each chunk leaves no earlier than the
                // one before it.
                let at = (deadline
                    + Duration::from_secs_f64(fastrand::f64() * a.jitter_ms / 1000.0))
                .max(last_send);
                tokio::time::sleep_until(at.into()).await;
                last_send = at;
            }
            if let Err(e) = sink.send(chunk).await {
                eprintln!("ts-source: send failed: {e:#}");
                break 'outer;
            }
            c.sent += 1;
            c.lost_tail = 0;
        }
        if a.no_pace {
            let stream_secs = pacer.sent() as f64 * interval.as_secs_f64();
            if a.duration.is_some_and(|d| stream_secs >= d) {
                break;
            }
        }
    }
    sink.close().await;
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "chunks_generated": c.generated, "chunks_sent": c.sent, "chunks_lost": c.lost,
                "chunks_lost_tail": c.lost_tail,
                "chunks_outage": c.outage, "frames": gen.frames(), "seconds": secs,
                "bitrate_bps": a.bitrate,
            })
        );
    } else {
        eprintln!(
            "ts-source: {} chunks generated, {} sent, {} dropped (loss), {} dropped (outage), {} frames, {:.1} s",
            c.generated,
            c.sent,
            c.lost,
            c.outage,
            gen.frames(),
            secs
        );
    }
    Ok(())
}
