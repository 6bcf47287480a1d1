//! Output tasks: UDP unicast/multicast sender and HTTP-TS server endpoints (one bounded queue per viewer, each viewer started at a keyframe with PAT/PMT first); each drains its own bounded queue. Recordings are in `record.rs`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::join::JoinTracker;
use super::stats::IoStats;
use super::ts::{FrameLoss, TS};

/// 7 TS packets: the customary MPEG-TS-over-UDP datagram (fits a 1500 MTU).
pub const DATAGRAM: usize = 7 * TS;

/// Most datagrams one GSO send may carry: the IP length limit (64 KiB)
/// holds 49 payloads of 1316 bytes.
const GSO_MAX: usize = 65_507 / DATAGRAM;

/// One UDP output's socket, sent on directly by the route task.
pub(crate) struct UdpOut {
    sock: std::net::UdpSocket,
    /// UDP_SEGMENT is set: a send of several datagrams' worth is cut into
    /// 1316-byte datagrams by the kernel, which walks the IP stack once for
    /// all of them instead of once per datagram.
    gso: bool,
    /// The last refused send, while the output is failing: a send error
    /// turns it `up = false` until sends have gone through without one for
    /// `RECOVER_AFTER`.
    failing: Option<Instant>,
}

/// Quiet time after the last send error before a failing UDP output counts
/// as delivering again. Over a network, Linux answers a dead port with at
/// most about one ICMP port-unreachable a second (per destination), so a
/// shorter wait would flap between failed and recovered.
pub(crate) const RECOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// What one chunk's send did.
pub(crate) struct UdpSent {
    /// Bytes of the chunk that did not go out (full socket buffer, or a
    /// send the OS refused).
    pub unsent: usize,
    /// The output failed (with why) or recovered with this chunk.
    pub change: Option<Result<(), String>>,
}

impl UdpOut {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

/// A connected, non-blocking UDP socket for one output. The route task
/// sends on it directly: the kernel's socket buffer is this output's bounded
/// queue (a full one fails with WouldBlock and the datagram is dropped and
/// counted), which saves a task wake-up per datagram per output.
pub(crate) fn udp_sender(dest: SocketAddr, ttl: Option<u32>) -> std::io::Result<UdpOut> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_send_buffer_size(4 << 20);
    let any: SocketAddr = if dest.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    s.bind(&any.into())?;
    if let Some(t) = ttl {
        if dest.ip().is_multicast() {
            s.set_multicast_ttl_v4(t)?;
        } else {
            s.set_ttl_v4(t)?;
        }
    }
    // Connected: the kernel resolves the route once instead of per datagram.
    s.connect(&dest.into())?;
    s.set_nonblocking(true)?;
    // Linux >= 4.18; elsewhere (or refused) every datagram is its own send.
    let gso = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::UdpGsoSegment,
        &(DATAGRAM as i32),
    )
    .is_ok();
    Ok(UdpOut {
        sock: s.into(),
        gso,
        failing: None,
    })
}

/// Sends one chunk on a direct UDP output as 1316-byte datagrams (the last
/// one shorter if the chunk is). A chunk of several datagrams goes out in one
/// GSO send when the socket has it: nothing is ever held back to build a
/// batch, so this only saves work when the input delivered several datagrams
/// at once. A full socket buffer drops the rest of the chunk (whole packets
/// only). A send the OS refuses is counted (`send_errors`, its text kept)
/// and fails the output: the socket is connected, so an ICMP
/// port-unreachable for an earlier datagram comes back as ECONNREFUSED on
/// the next send, which the kernel then does not send. While failing, what
/// does go out is not counted in `bytes`: the receiver refuses it too.
#[inline]
pub(crate) fn udp_send_chunk(out: &mut UdpOut, chunk: &[u8], stats: &IoStats) -> UdpSent {
    let step = if out.gso {
        DATAGRAM * GSO_MAX
    } else {
        DATAGRAM
    };
    let mut sent = UdpSent {
        unsent: 0,
        change: None,
    };
    let mut off = 0;
    let mut ok = 0;
    for part in chunk.chunks(step) {
        off += part.len();
        match out.sock.send(part) {
            Ok(n) => ok += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sent.unsent += chunk.len() - off + part.len();
                break;
            }
            Err(e) => {
                sent.unsent += part.len();
                stats.send_error(&e);
                if out.failing.is_none() {
                    let why = format!("send: {e}");
                    stats.set_error(why.clone());
                    sent.change = Some(Err(why));
                }
                out.failing = Some(Instant::now());
            }
        }
    }
    match out.failing {
        None => stats.add(ok),
        Some(t) if sent.change.is_none() && t.elapsed() >= RECOVER_AFTER => {
            out.failing = None;
            stats.set_up(None);
            stats.add(ok);
            sent.change = Some(Ok(()));
        }
        Some(_) => {}
    }
    sent
}

/// The task of a direct UDP output only holds its place until removed, so
/// that every output has a task the engine can stop and await.
pub(crate) async fn run_udp(cancel: CancellationToken) {
    cancel.cancelled().await;
}

/// One HTTP-TS endpoint: the viewers of `/stream/{path}.ts`.
pub(crate) struct HttpEndpoint {
    clients: Mutex<Vec<Client>>,
    pub stats: Arc<IoStats>,
    queue: usize,
}

struct Client {
    tx: mpsc::Sender<Bytes>,
    /// Not started yet: waiting for the next random access point.
    joined: Option<Instant>,
    loss: FrameLoss,
}

pub(crate) type HttpRegistry = Arc<RwLock<HashMap<String, Arc<HttpEndpoint>>>>;

pub(crate) async fn run_http(
    mut rx: mpsc::Receiver<Bytes>,
    path: String,
    registry: HttpRegistry,
    queue: usize,
    stats: Arc<IoStats>,
    cancel: CancellationToken,
) {
    let ep = Arc::new(HttpEndpoint {
        clients: Mutex::new(Vec::new()),
        stats: stats.clone(),
        queue,
    });
    {
        let mut r = registry.write();
        if r.contains_key(&path) {
            stats.set_error(format!("path /stream/{path}.ts is already served"));
            return;
        }
        r.insert(path.clone(), ep.clone());
    }
    stats.set_up(None);
    // One cancellation future for the whole loop: a fresh one per turn
    // registered and removed a waiter under the token's locks each time,
    // a measurable share of a busy data plane (issue 25).
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut joins = JoinTracker::default();
    loop {
        // Data first, the token when the queue is empty (as `hls::run`).
        let chunk = tokio::select! {
            biased;
            c = rx.recv() => c,
            _ = &mut cancelled => break,
        };
        let Some(chunk) = chunk else { break };
        let mut clients = ep.clients.lock();
        let waiting = clients.iter().any(|c| c.joined.is_some());
        let join = joins.next(&chunk, waiting);
        let video = joins.video();
        let now = Instant::now();
        clients.retain_mut(|c| {
            let data = match c.joined {
                None => chunk.clone(),
                Some(t) => match join.as_ref().and_then(|j| j.pick(now - t, video)) {
                    Some(b) => b,
                    None => return !c.tx.is_closed(),
                },
            };
            let len = data.len();
            match c.tx.try_send(data) {
                Ok(()) => {
                    if c.joined.take().is_none() {
                        if let Some((v, _)) = video {
                            c.loss.delivered(&chunk, v);
                        }
                    }
                    stats.add(len);
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // This viewer is slow: it loses the chunk (whole
                    // packets, so its TS stays parseable), nobody else does.
                    stats.dropped(chunk.len());
                    if let Some((v, _)) = video {
                        let n = c.loss.dropped(&chunk, v);
                        stats.frames_lost.fetch_add(n, Relaxed);
                    }
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
    let mut r = registry.write();
    if r.get(&path).is_some_and(|e| Arc::ptr_eq(e, &ep)) {
        r.remove(&path);
    }
}

/// Decrements the viewer count when a response body is dropped.
struct ViewerGuard(Arc<IoStats>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Relaxed);
    }
}

impl HttpEndpoint {
    /// A new viewer: its own bounded queue, as a body stream.
    pub fn subscribe(
        self: &Arc<Self>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
        let (tx, rx) = mpsc::channel(self.queue.max(16));
        self.clients.lock().push(Client {
            tx,
            joined: Some(Instant::now()),
            loss: FrameLoss::default(),
        });
        self.stats.clients.fetch_add(1, Relaxed);
        let guard = ViewerGuard(self.stats.clone());
        futures::stream::unfold((rx, guard), |(mut rx, g)| async move {
            rx.recv().await.map(|b| (Ok(b), (rx, g)))
        })
    }
}
