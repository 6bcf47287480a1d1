//! Input tasks: UDP unicast/multicast (read with tokio, never through libsrt) and HTTP(S)-TS pull; each turns its bytes into chunks of whole TS packets for the route task.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::route::InputMsg;
use super::stats::IoStats;
use super::ts::{self, Aligner, CcChecker};

/// Shared plumbing of every input: counts, checks continuity, and hands
/// chunks to the route.
pub(crate) struct Feed {
    pub idx: usize,
    pub tx: mpsc::Sender<InputMsg>,
    pub stats: Arc<IoStats>,
    pub cc: CcChecker,
    /// The route's read pace in µs (see `route::read_pace`).
    pub pace: Arc<std::sync::atomic::AtomicU64>,
}

impl Feed {
    pub fn new(
        idx: usize,
        tx: mpsc::Sender<InputMsg>,
        stats: Arc<IoStats>,
        pace: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Feed {
            idx,
            tx,
            stats,
            cc: CcChecker::default(),
            pace,
        }
    }

    /// Waits out the route's read pace (nothing when it is zero). False
    /// when cancelled.
    pub async fn pace(&self, cancel: &CancellationToken) -> bool {
        let us = self.pace.load(std::sync::atomic::Ordering::Relaxed);
        if us == 0 {
            return true;
        }
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(Duration::from_micros(us)) => true,
        }
    }

    /// Returns false when the route is gone.
    pub async fn push(&mut self, data: BytesMut) -> bool {
        if data.is_empty() {
            return true;
        }
        self.account(&data);
        self.tx
            .send(InputMsg {
                idx: self.idx,
                data,
            })
            .await
            .is_ok()
    }

    /// Same, from a blocking (libsrt) thread.
    pub fn push_blocking(&mut self, data: BytesMut) -> bool {
        if data.is_empty() {
            return true;
        }
        self.account(&data);
        self.tx
            .blocking_send(InputMsg {
                idx: self.idx,
                data,
            })
            .is_ok()
    }

    fn account(&mut self, data: &[u8]) {
        self.stats.add(data.len());
        let e = self.cc.check(data);
        if e > 0 {
            self.stats.cc_errors.fetch_add(e, Relaxed);
        }
    }
}

/// Binds a UDP socket with SO_REUSEADDR and a large receive buffer, joining
/// a multicast group when asked.
pub(crate) fn bind_udp(
    bind: SocketAddr,
    multicast: Option<Ipv4Addr>,
    interface: Ipv4Addr,
) -> std::io::Result<UdpSocket> {
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
    UdpSocket::from_std(s.into())
}

/// Most datagrams read into one chunk: what one GSO send carries.
const COALESCE_MAX: usize = 48;

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
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut aligner = Aligner::new();
    loop {
        if buf.capacity() - buf.len() < 65536 {
            buf.reserve(256 * 1024);
        }
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = sock.recv_buf(&mut buf) => r,
        };
        match r {
            Ok(_) => {
                // Fast path: datagrams of whole packets are used as they are,
                // and the ones already waiting in the socket join them in
                // one chunk (never waiting for more): a burst then costs the
                // route one hand-over and each UDP output one GSO send.
                let mut odd = None;
                let mut n = 1;
                if ts::is_aligned(&buf) {
                    while n < COALESCE_MAX {
                        // Room for any datagram, so none is truncated.
                        if buf.capacity() - buf.len() < 65536 {
                            buf.reserve(256 * 1024);
                        }
                        let before = buf.len();
                        match sock.try_recv_buf(&mut buf) {
                            Ok(_) if ts::is_aligned(&buf[before..]) => n += 1,
                            Ok(_) => {
                                odd = Some(buf.split_off(before));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                let dg = buf.split();
                let chunk = if ts::is_aligned(&dg) {
                    dg
                } else {
                    aligner.push(&dg)
                };
                if !feed.push(chunk).await {
                    return;
                }
                if let Some(o) = odd {
                    if !feed.push(aligner.push(&o)).await {
                        return;
                    }
                }
                // Let a few ms of datagrams gather when every output can
                // wait for them (one wake-up for several datagrams); never
                // when the socket still held more than one read takes.
                if n < COALESCE_MAX && !feed.pace(&cancel).await {
                    return;
                }
            }
            Err(e) => {
                // ICMP errors and the like: keep reading.
                tracing::debug!("udp input {bind}: {e}");
                buf.clear();
            }
        }
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
            let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
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
                tracing::warn!("http input {url}: {e}; retrying in 1 s");
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
            return;
        }
    };
    let mut pacer = Pacer::new(std::time::Instant::now(), g.chunk_duration());
    loop {
        let deadline = tokio::time::Instant::from_std(pacer.next_deadline());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // After a stall, catch up a bounded burst rather than flooding.
        let due = pacer.due(std::time::Instant::now()).min(256);
        for _ in 0..due {
            let chunk = g.next_chunk(std::time::SystemTime::now());
            if !feed.push(BytesMut::from(&chunk[..])).await {
                return;
            }
        }
        pacer.mark_sent(due.max(1));
    }
}
