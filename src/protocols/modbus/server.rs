//! The Modbus TCP listener: accept loop with connection caps (total and per address), one task per connection with an idle timeout, pipelined request framing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::split_frame;
use super::service::Service;
use crate::netlimit::{Caps, Limiter};

/// Per-listener limits from `[modbus]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, in all and per source address; more
    /// are accepted and closed at once so a flood cannot exhaust file
    /// descriptors or memory, and one host cannot lock the others out.
    pub caps: Caps,
    /// A connection that completes no request for this long is closed
    /// (`None`: never). Also bounds how long a truncated frame or a peer
    /// that stops reading its responses can hold a connection slot.
    pub idle_timeout: Option<Duration>,
}

/// Far enough away to mean "never" without overflowing `Instant` arithmetic.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Serves Modbus TCP on a bound listener until `shutdown` is cancelled.
/// Every connection task is spawned on `tasks` and observes `shutdown`.
pub async fn run(
    listener: TcpListener,
    svc: Arc<Service>,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    // Refusals are counted and logged (rate-limited) by the limiter.
    let limiter = Limiter::new("modbus", listener.local_addr().ok(), limits.caps);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                let Ok(permit) = limiter.admit(peer.ip()) else {
                    drop(sock);
                    continue;
                };
                let svc = svc.clone();
                let token = shutdown.clone();
                tasks.spawn(async move {
                    connection(sock, peer, svc, limits.idle_timeout, token).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on accept.
                tracing::warn!("modbus: accept failed: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// One client: answers every complete request in the buffer (clients may
/// pipeline several transactions), writes the answers in one go, then reads
/// more. The input buffer never holds more than one partial frame (<= 260
/// bytes) plus one read, so memory per connection is bounded.
async fn connection(
    mut sock: TcpStream,
    peer: SocketAddr,
    svc: Arc<Service>,
    idle: Option<Duration>,
    shutdown: CancellationToken,
) {
    // Request/response traffic: Nagle would add up to 40 ms per answer.
    let _ = sock.set_nodelay(true);
    let idle = idle.unwrap_or(NEVER);
    let mut input = BytesMut::with_capacity(4096);
    let mut output: Vec<u8> = Vec::with_capacity(1024);
    let mut deadline = Instant::now() + idle;
    loop {
        loop {
            match split_frame(&input) {
                Ok(Some((h, total))) => {
                    let pdu = input.get(super::frame::MBAP_LEN..total).unwrap_or(&[]);
                    let at = output.len();
                    svc.handle(h, pdu, peer, &mut output);
                    // An answer's function code has its high bit set for an
                    // exception; no answer (a unit id not served) is not counted.
                    if let Some(f) = output.get(at + super::frame::MBAP_LEN) {
                        crate::counters::MODBUS_REQUESTS.fetch_add(1, Relaxed);
                        if f & 0x80 != 0 {
                            crate::counters::MODBUS_EXCEPTIONS.fetch_add(1, Relaxed);
                        }
                    }
                    input.advance(total);
                    deadline = Instant::now() + idle;
                }
                Ok(None) => break,
                Err(e) => {
                    // No delimiter to resynchronise on: answer what came
                    // before it, then close, as the spec's MBAP checks say.
                    tracing::debug!(%peer, "modbus: closing connection: {e}");
                    let _ = timeout_at(deadline, sock.write_all(&output)).await;
                    return;
                }
            }
        }
        if !output.is_empty() {
            // A peer that stops reading cannot hold the task past the deadline.
            let wrote = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = timeout_at(Instant::now() + idle, sock.write_all(&output)) => r,
            };
            if !matches!(wrote, Ok(Ok(()))) {
                return;
            }
            output.clear();
        }
        input.reserve(1024);
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = timeout_at(deadline, sock.read_buf(&mut input)) => r,
        };
        match read {
            Err(_) => {
                tracing::debug!(%peer, "modbus: idle timeout");
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}
