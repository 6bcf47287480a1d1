//! Input tasks: UDP unicast/multicast (read with tokio, never through libsrt) and HTTP(S)-TS pull; each turns its bytes into chunks of whole TS packets for the route task.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::ts::{self, Aligner};
/// The chunk hand-over every input uses, in the layer the media adapters
/// share (`crate::mpegts::feed`).
pub(crate) use crate::mpegts::feed::Feed;

/// Binds a non-blocking UDP socket with SO_REUSEADDR and a large receive
/// buffer, joining a multicast group when asked.
pub(crate) fn bind_udp(
    bind: SocketAddr,
    multicast: Option<Ipv4Addr>,
    interface: Ipv4Addr,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    // 4 MiB absorbs ~3 s of a 10 Mbit/s burst if the runtime stalls; the
    // kernel clamps it to rmem_max without failing.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    if let Some(group) = multicast {
        s.join_multicast_v4(&group, &interface)?;
    }
    Ok(s.into())
}

/// Most datagrams read into one chunk: what one GSO send carries.
const COALESCE_MAX: usize = 48;

/// Room for the largest UDP datagram, so none is ever truncated.
const MAX_DATAGRAM: usize = 65_536;

/// Datagrams are received into a zeroed area of this size and handed on as
/// slices of it (no copy); a fresh area is taken when less than one
/// datagram's room is left.
const AREA: usize = 256 * 1024;

/// A UDP input's socket, registered with the runtime's poller only while
/// the task waits for it to become readable. While a paced input sleeps it
/// is not: the poller is edge-triggered, so a registered socket woke a
/// runtime thread for every arriving datagram even though nobody was
/// waiting for it, which undid most of what pacing saves.
enum InSock {
    Plain(std::net::UdpSocket),
    Registered(UdpSocket),
    /// Only between the two (a failed conversion ends the input).
    Gone,
}

impl InSock {
    fn registered(&mut self) -> std::io::Result<&UdpSocket> {
        if let InSock::Plain(_) = self {
            if let InSock::Plain(s) = std::mem::replace(self, InSock::Gone) {
                *self = InSock::Registered(UdpSocket::from_std(s)?);
            }
        }
        match self {
            InSock::Registered(r) => Ok(r),
            _ => Err(std::io::Error::other("socket lost")),
        }
    }

    fn plain(&mut self) -> std::io::Result<()> {
        if let InSock::Registered(_) = self {
            if let InSock::Registered(r) = std::mem::replace(self, InSock::Gone) {
                *self = InSock::Plain(r.into_std()?);
            }
        }
        match self {
            InSock::Plain(_) => Ok(()),
            _ => Err(std::io::Error::other("socket lost")),
        }
    }

    /// Non-blocking receive; through the registration when there is one, so
    /// that a WouldBlock clears its readiness.
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            InSock::Plain(s) => s.recv(buf),
            InSock::Registered(r) => r.try_recv(buf),
            InSock::Gone => Err(std::io::Error::other("socket lost")),
        }
    }
}

/// What a UDP input does before its next read.
#[derive(Clone, Copy)]
enum Next {
    /// Wait until the socket is readable (nothing was there, or the route
    /// wants every datagram at once).
    Readable,
    /// Sleep this long, then take everything queued.
    Pace(Duration),
    /// Read again at once (the last read stopped at its cap).
    Now,
}

pub(crate) async fn run_udp(
    mut feed: Feed,
    bind: SocketAddr,
    multicast: Option<Ipv4Addr>,
    interface: Ipv4Addr,
    cancel: CancellationToken,
) {
    let sock = match bind_udp(bind, multicast, interface) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("udp input {bind}: {e}");
            feed.stats.set_error(format!("bind {bind}: {e}"));
            return;
        }
    };
    feed.stats.set_up(sock.local_addr().ok());
    let mut sock = InSock::Plain(sock);
    let mut area = BytesMut::new();
    let mut aligner = Aligner::new();
    // One cancellation future for the whole loop: a fresh one per turn
    // registered and removed a waiter under the token's locks each time,
    // a measurable share of a busy data plane (issue 25).
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut next = Next::Readable;
    loop {
        let r = match next {
            Next::Readable => match sock.registered() {
                Ok(reg) => tokio::select! {
                    _ = &mut cancelled => return,
                    r = reg.readable() => r,
                },
                Err(e) => Err(e),
            },
            Next::Pace(d) => match sock.plain() {
                Ok(()) => tokio::select! {
                    _ = &mut cancelled => return,
                    _ = tokio::time::sleep(d) => Ok(()),
                },
                Err(e) => Err(e),
            },
            Next::Now => Ok(()),
        };
        if let Err(e) = r {
            tracing::error!("udp input {bind}: {e}");
            feed.stats.set_error(format!("{bind}: {e}"));
            return;
        }
        // Take everything already queued (never waiting for more): a burst
        // then costs the route one hand-over and each UDP output one GSO
        // send. Datagrams of whole packets are used as they are; an odd
        // one ends the chunk and goes through the aligner.
        let mut n = 0;
        let mut filled = 0;
        let mut odd = None;
        while n < COALESCE_MAX {
            if area.len() - filled < MAX_DATAGRAM {
                if filled > 0 {
                    break;
                }
                area = BytesMut::zeroed(AREA);
            }
            match sock.recv(&mut area[filled..filled + MAX_DATAGRAM]) {
                Ok(len) => {
                    n += 1;
                    if ts::is_aligned(&area[filled..filled + len]) {
                        filled += len;
                    } else {
                        odd = Some(len);
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors and the like: reported once, keep reading.
                    tracing::debug!("udp input {bind}: {e}");
                    n += 1;
                }
            }
        }
        if filled > 0 && !feed.push(area.split_to(filled)).await {
            return;
        }
        if let Some(len) = odd {
            let o = area.split_to(len);
            if !feed.push(aligner.push(&o)).await {
                return;
            }
        }
        // Let a few ms of datagrams gather when every output can wait for
        // them (one wake-up for several datagrams); never when the socket
        // held more than one read takes.
        next = if n >= COALESCE_MAX || (filled > 0 && area.len() < MAX_DATAGRAM) {
            Next::Now
        } else if n == 0 {
            Next::Readable
        } else {
            match feed.pace() {
                d if d.is_zero() => Next::Readable,
                d => Next::Pace(d),
            }
        };
    }
}
pub(crate) async fn run_http(mut feed: Feed, url: String, cancel: CancellationToken) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            feed.stats.set_error(format!("http client: {e}"));
            return;
        }
    };
    loop {
        let attempt = async {
            let resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?; // the cause chain, not just "error sending request"
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            feed.stats.set_up(None);
            feed.stats.clients.store(1, Relaxed);
            let mut body = resp.bytes_stream();
            let mut aligner = Aligner::new();
            // A silent server must not hold the input forever: the route
            // fails over on its own, this only recycles the connection.
            while let Ok(next) = tokio::time::timeout(Duration::from_secs(10), body.next()).await {
                match next {
                    Some(Ok(b)) => {
                        let chunk = aligner.push(&b);
                        if !feed.push(chunk).await {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("stream ended".to_string()),
                }
            }
            Err("no data for 10 s".to_string())
        };
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        feed.stats.clients.store(0, Relaxed);
        match r {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    "http input {}: {e}; retrying in 1 s",
                    crate::redact::redact_text(&url)
                );
                feed.stats.set_error(e);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The built-in test source: paces the simulators' TS generator in real
/// time into the route, as if a UDP source were sending it.
pub(crate) async fn run_generator(mut feed: Feed, bitrate: u64, cancel: CancellationToken) {
    use castpoint_sim::tsgen::{Pacer, TsConfig, TsGenerator};
    let mut g = match TsGenerator::new(TsConfig {
        bitrate,
        ..TsConfig::default()
    }) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("generator input: {}", e.0);
            feed.stats.set_error(e.0);
            return;
        }
    };
    // Up like a bound UDP input: it produces from now on (it read "down"
    // for as long as it ran, while delivering the route's media).
    feed.stats.set_up(None);
    // One cancellation future for the whole loop: a fresh one per turn
    // registered and removed a waiter under the token's locks each time,
    // a measurable share of a busy data plane (issue 25).
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut pacer = Pacer::new(std::time::Instant::now(), g.chunk_duration());
    let mut last_wake = tokio::time::Instant::now();
    loop {
        // Read like a paced UDP input (`run_udp`'s `Next::Pace`): when every
        // output tolerates a delay, wake once per pace and hand on what is
        // due as one batch; otherwise every chunk as it falls due.
        let deadline =
            tokio::time::Instant::from_std(pacer.next_deadline()).max(last_wake + feed.pace());
        tokio::select! {
            _ = &mut cancelled => return,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        last_wake = tokio::time::Instant::now();
        // After a stall, catch up a bounded burst rather than flooding.
        let due = pacer.due(std::time::Instant::now()).min(256);
        let mut left = due;
        while left > 0 {
            let n = left.min(COALESCE_MAX as u64);
            let mut batch = BytesMut::with_capacity(n as usize * castpoint_sim::tsgen::CHUNK_BYTES);
            for _ in 0..n {
                batch.extend_from_slice(&g.next_chunk(std::time::SystemTime::now()));
            }
            if !feed.push(batch).await {
                return;
            }
            left -= n;
        }
        pacer.mark_sent(due.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpegts::stats::IoStats;
    use castpoint_sim::tsgen::CHUNK_BYTES;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Runs the generator at 10 Mbit/s (a chunk every ~1.05 ms) with the
    /// route's read pace at `pace` until `chunks` chunks came; returns the
    /// hand-overs' sizes in chunks.
    async fn generator_batches(pace: Duration, chunks: usize) -> Vec<usize> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let pace_us = Arc::new(AtomicU64::new(pace.as_micros() as u64));
        let feed = Feed::new(0, tx, Arc::new(IoStats::default()), pace_us);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_generator(feed, 10_000_000, cancel.clone()));
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < chunks {
            let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the generator hands on data")
                .expect("channel open");
            assert_eq!(m.data.len() % CHUNK_BYTES, 0, "whole chunks only");
            assert!(ts::is_aligned(&m.data), "whole TS packets");
            sizes.push(m.data.len() / CHUNK_BYTES);
        }
        cancel.cancel();
        let _ = task.await;
        sizes
    }

    /// A route whose outputs all tolerate a delay gets the generator's
    /// chunks in batches, one per pace, as a paced UDP input reads them;
    /// nothing is lost or cut.
    #[tokio::test]
    async fn a_paced_generator_hands_on_batches() {
        let sizes = generator_batches(Duration::from_millis(10), 200).await;
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        // 10 ms of 1.05-ms chunks: about 9.5 per hand-over (more when the
        // machine is slow to wake the task, never fewer on average).
        assert!(mean >= 5.0, "mean batch {mean:.1} chunks: {sizes:?}");
    }
}
