//! viewers: N concurrent MPEG-TS receivers (HTTP-TS, HLS, UDP, SRT caller or
//! listener) that report bit rate, gaps, continuity-counter errors, lost
//! chunks and end-to-end latency percentiles from ts-source's stamps.

use anyhow::{bail, Context};
use castpoint_sim::tsgen::{unix_us, AnalyzerReport, TsAnalyzer};
use castpoint_sim::util::{fmt_opt, markdown_table, Endpoint};
use clap::Parser;
use futures::StreamExt;
use serde::Serialize;
use srt_tokio::SrtSocket;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::watch;

#[derive(Parser, Debug, Clone)]
#[command(about = "Concurrent MPEG-TS viewers reporting bit rate, gaps, CC errors and latency")]
struct Args {
    /// Sources: http://... (TS over HTTP; .m3u8 = HLS), udp://ADDR:PORT
    /// (bind; a multicast group is joined), srt://HOST:PORT[?streamid=ID]
    /// (caller), srt://:PORT (listener, one caller).
    #[arg(required = true)]
    urls: Vec<String>,
    /// Receivers per URL.
    #[arg(short = 'n', long, default_value_t = 1)]
    count: usize,
    /// Seconds to receive.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// A silence longer than this (ms) counts as a gap.
    #[arg(long, default_value_t = 250)]
    gap_ms: u64,
    /// SRT latency (ms).
    #[arg(long, default_value_t = 120)]
    srt_latency_ms: u64,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// Exit non-zero unless every viewer received data.
    #[arg(long)]
    require_data: bool,
}

#[derive(Debug, Serialize)]
struct ViewerResult {
    id: usize,
    url: String,
    error: Option<String>,
    bytes: u64,
    seconds: f64,
    bitrate_mbps: f64,
    gaps: u64,
    max_gap_ms: f64,
    reconnects: u64,
    packets: u64,
    cc_errors: u64,
    missing_chunks: u64,
    stamps: u64,
    latency_ms_p50: Option<f64>,
    latency_ms_p90: Option<f64>,
    latency_ms_p99: Option<f64>,
    latency_ms_max: Option<f64>,
    first_byte_ms: Option<f64>,
}

/// Per-viewer receive state.
struct Rx {
    an: TsAnalyzer,
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    gap: Duration,
    gaps: u64,
    max_gap: Duration,
    reconnects: u64,
}

impl Rx {
    fn new(gap: Duration) -> Self {
        Self {
            an: TsAnalyzer::new(),
            start: Instant::now(),
            first: None,
            last: None,
            gap,
            gaps: 0,
            max_gap: Duration::ZERO,
            reconnects: 0,
        }
    }

    fn data(&mut self, b: &[u8]) {
        let now = Instant::now();
        if let Some(last) = self.last {
            let d = now - last;
            if d > self.gap {
                self.gaps += 1;
            }
            self.max_gap = self.max_gap.max(d);
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.an.feed(b, unix_us(SystemTime::now()));
    }

    fn finish(self, id: usize, url: &str, error: Option<String>) -> ViewerResult {
        let r: AnalyzerReport = self.an.report();
        let secs = match (self.first, self.last) {
            (Some(f), Some(l)) if l > f => (l - f).as_secs_f64(),
            _ => 0.0,
        };
        ViewerResult {
            id,
            url: url.to_string(),
            error,
            bytes: r.bytes,
            seconds: secs,
            bitrate_mbps: if secs > 0.0 {
                r.bytes as f64 * 8.0 / secs / 1e6
            } else {
                0.0
            },
            gaps: self.gaps,
            max_gap_ms: self.max_gap.as_secs_f64() * 1000.0,
            reconnects: self.reconnects,
            packets: r.packets,
            cc_errors: r.cc_errors,
            missing_chunks: r.missing_chunks,
            stamps: r.stamps + r.sei_stamps,
            latency_ms_p50: r.latency_ms_p50,
            latency_ms_p90: r.latency_ms_p90,
            latency_ms_p99: r.latency_ms_p99,
            latency_ms_max: r.latency_ms_max,
            first_byte_ms: self.first.map(|f| (f - self.start).as_secs_f64() * 1000.0),
        }
    }
}

async fn udp_socket(addr: SocketAddr, shared: bool) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if shared {
        // Several viewers on one multicast group share the port.
        s.set_reuse_address(true)?;
    }
    s.set_recv_buffer_size(4 << 20).ok();
    let bind: SocketAddr = if addr.ip().is_multicast() {
        SocketAddr::new(
            if addr.is_ipv4() {
                [0, 0, 0, 0].into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    s.bind(&bind.into())
        .with_context(|| format!("bind {bind}"))?;
    s.set_nonblocking(true)?;
    let u = UdpSocket::from_std(s.into())?;
    match addr.ip() {
        std::net::IpAddr::V4(g) if g.is_multicast() => {
            u.join_multicast_v4(g, [0, 0, 0, 0].into())?
        }
        std::net::IpAddr::V6(g) if g.is_multicast() => u.join_multicast_v6(&g, 0)?,
        _ => {}
    }
    Ok(u)
}

async fn run_udp(
    sock: UdpSocket,
    rx: &mut Rx,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => { let (n, _) = r?; rx.data(&buf[..n]); }
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn run_srt(
    sock: &mut SrtSocket,
    rx: &mut Rx,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    loop {
        tokio::select! {
            m = sock.next() => match m {
                Some(Ok((_, b))) => rx.data(&b),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(false),
            },
            _ = stop.changed() => return Ok(true),
        }
    }
}

async fn run_http(url: &str, rx: &mut Rx, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    loop {
        match client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(mut resp) => loop {
                tokio::select! {
                    c = resp.chunk() => match c {
                        Ok(Some(b)) => rx.data(&b),
                        Ok(None) | Err(_) => break,
                    },
                    _ = stop.changed() => return Ok(()),
                }
            },
            Err(e) if rx.first.is_none() && rx.reconnects > 20 => return Err(e.into()),
            Err(_) => {}
        }
        // Ended or refused: reconnect (a failover test expects it), briefly backed off.
        rx.reconnects += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// HLS: polls the media playlist and fetches each new segment once (a
/// master playlist is followed to its first variant).
async fn run_hls(url: &str, rx: &mut Rx, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut playlist = reqwest::Url::parse(url)?;
    let mut seen = std::collections::VecDeque::<String>::new();
    loop {
        let text = client
            .get(playlist.clone())
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        if let Some(v) = text
            .lines()
            .skip_while(|l| !l.starts_with("#EXT-X-STREAM-INF"))
            .nth(1)
        {
            playlist = playlist.join(v.trim())?;
            continue;
        }
        let target: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(2.0);
        for seg in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if seen.iter().any(|s| s == seg) {
                continue;
            }
            let body = client
                .get(playlist.join(seg)?)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            rx.data(&body);
            seen.push_back(seg.to_string());
            if seen.len() > 256 {
                seen.pop_front();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64((target / 2.0).clamp(0.2, 5.0))) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn viewer(
    id: usize,
    url: String,
    a: Args,
    shared_udp: bool,
    mut stop: watch::Receiver<bool>,
) -> ViewerResult {
    let mut rx = Rx::new(Duration::from_millis(a.gap_ms));
    let res: anyhow::Result<()> = async {
        match Endpoint::parse(&url)? {
            Endpoint::Http(u) if u.split('?').next().is_some_and(|p| p.ends_with(".m3u8")) => {
                run_hls(&u, &mut rx, &mut stop).await
            }
            Endpoint::Http(u) => run_http(&u, &mut rx, &mut stop).await,
            Endpoint::Udp(addr) => {
                run_udp(udp_socket(addr, shared_udp).await?, &mut rx, stop.clone()).await
            }
            Endpoint::SrtCaller { addr, stream_id } => loop {
                let call = SrtSocket::builder()
                    .latency(Duration::from_millis(a.srt_latency_ms))
                    .call(addr, stream_id.as_deref());
                let sock = tokio::select! {
                    s = call => s,
                    _ = stop.changed() => return Ok(()),
                };
                match sock {
                    Ok(mut s) => {
                        if run_srt(&mut s, &mut rx, &mut stop).await? {
                            let _ = futures::SinkExt::close(&mut s).await;
                            return Ok(());
                        }
                    }
                    Err(e) if rx.first.is_none() && rx.reconnects > 20 => return Err(e.into()),
                    Err(_) => {}
                }
                rx.reconnects += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return Ok(()),
                }
            },
            Endpoint::SrtListener { addr } => {
                let udp = UdpSocket::bind(addr).await?;
                let local = udp.local_addr()?;
                println!("listening srt {local}");
                let listen = SrtSocket::builder()
                    .latency(Duration::from_millis(a.srt_latency_ms))
                    .local(local)
                    .socket(udp)
                    .listen();
                let mut s = tokio::select! {
                    s = listen => s?,
                    _ = stop.changed() => return Ok(()),
                };
                run_srt(&mut s, &mut rx, &mut stop).await.map(|_| ())
            }
            Endpoint::File(f) => bail!("viewers read from the network, not files ({f})"),
        }
    }
    .await;
    rx.finish(id, &url, res.err().map(|e| format!("{e:#}")))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors print as one line (with their causes), never a backtrace.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viewers: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.count == 0 || a.duration <= 0.0 {
        bail!("--count and --duration must be positive");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    let mut id = 0;
    for url in &a.urls {
        if let Endpoint::Udp(addr) = Endpoint::parse(url)? {
            if a.count > 1 && !addr.ip().is_multicast() {
                bail!(
                    "{url}: several viewers can share only a multicast group, not a unicast port"
                );
            }
        }
        for _ in 0..a.count {
            set.spawn(viewer(
                id,
                url.clone(),
                a.clone(),
                a.count > 1,
                stop_rx.clone(),
            ));
            id += 1;
        }
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(a.duration)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.context("viewer task")?);
    }
    results.sort_by_key(|r| r.id);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.url.clone(),
                    format!("{:.2}", r.bitrate_mbps),
                    format!("{:.1}", r.bytes as f64 / 1e6),
                    r.gaps.to_string(),
                    format!("{:.0}", r.max_gap_ms),
                    r.cc_errors.to_string(),
                    r.missing_chunks.to_string(),
                    fmt_opt(r.latency_ms_p50, 1),
                    fmt_opt(r.latency_ms_p90, 1),
                    fmt_opt(r.latency_ms_p99, 1),
                    fmt_opt(r.latency_ms_max, 1),
                    r.reconnects.to_string(),
                    r.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            markdown_table(
                &[
                    "#",
                    "source",
                    "Mbit/s",
                    "MB",
                    "gaps",
                    "max gap ms",
                    "CC err",
                    "lost chunks",
                    "lat p50 ms",
                    "p90",
                    "p99",
                    "max",
                    "reconnects",
                    "error",
                ],
                &rows
            )
        );
    }
    if a.require_data && results.iter().any(|r| r.bytes == 0) {
        bail!("some viewers received nothing");
    }
    Ok(())
}
