//! SRT inputs and outputs over libsrt (listener and caller, latency, AES-128/192/256 passphrase, streamid access), run on blocking threads since every libsrt call blocks.

pub mod ffi;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::input::Feed;
use super::output::DATAGRAM;
use super::spec::{SrtMode, SrtSpec};
use super::stats::{IoStats, SrtConnStats};
use super::ts::Aligner;
use super::{EngineEvent, EventKind, Events};
use ffi::{Epoll, Socket, SrtError};

/// Applies the spec's options to a socket before bind/connect (accepted
/// sockets inherit them from the listener).
fn configure(s: &Socket, sp: &SrtSpec, caller: bool) -> Result<(), SrtError> {
    s.set_i32(ffi::SRTO_LATENCY, sp.latency.as_millis().min(60_000) as i32)?;
    if let Some(p) = &sp.passphrase {
        s.set_str(ffi::SRTO_PASSPHRASE, p)?;
        if sp.pbkeylen != 0 {
            s.set_i32(ffi::SRTO_PBKEYLEN, i32::from(sp.pbkeylen))?;
        }
    }
    // Refuse unencrypted peers when we encrypt, and vice versa (the
    // default, made explicit).
    s.set_bool(ffi::SRTO_ENFORCEDENCRYPTION, true)?;
    if caller {
        if let Some(id) = &sp.streamid {
            s.set_str(ffi::SRTO_STREAMID, id)?;
        }
        s.set_i32(ffi::SRTO_CONNTIMEO, 3000)?;
    }
    Ok(())
}

fn conn_stats(s: &Socket, peer: Option<SocketAddr>, streamid: Option<String>) -> SrtConnStats {
    let p = s.stats().unwrap_or_default();
    SrtConnStats {
        peer,
        streamid,
        pbkeylen: s.get_i32(ffi::SRTO_PBKEYLEN).unwrap_or(0),
        rtt_ms: p.ms_rtt,
        bandwidth_mbps: p.mbps_bandwidth,
        send_rate_mbps: p.mbps_send_rate,
        recv_rate_mbps: p.mbps_recv_rate,
        pkt_sent: p.pkt_sent_total,
        pkt_recv: p.pkt_recv_total,
        pkt_snd_loss: p.pkt_snd_loss_total,
        pkt_rcv_loss: p.pkt_rcv_loss_total,
        pkt_retrans: p.pkt_retrans_total,
        pkt_rcv_drop: p.pkt_rcv_drop_total,
        pkt_snd_drop: p.pkt_snd_drop_total,
        flight_size: p.pkt_flight_size,
        snd_buf_ms: p.ms_snd_buf,
        rcv_buf_ms: p.ms_rcv_buf,
    }
}

/// Sleeps up to `d`, returning early (true) when cancelled.
fn nap(cancel: &CancellationToken, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.is_cancelled() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cancel.is_cancelled()
}

/// Reads one connected SRT socket into the route until it breaks or we are
/// cancelled. Returns true when cancelled.
fn read_loop(
    s: &Socket,
    feed: &mut Feed,
    cancel: &CancellationToken,
    peer: Option<SocketAddr>,
    streamid: Option<String>,
) -> bool {
    // Short receive timeout so that cancellation is noticed.
    let _ = s.set_i32(ffi::SRTO_RCVTIMEO, 100);
    feed.stats.clients.store(1, Relaxed);
    let mut aligner = Aligner::new();
    let mut buf = vec![0u8; 1500];
    let mut last_stats = Instant::now();
    let cancelled = loop {
        if cancel.is_cancelled() {
            break true;
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            *feed.stats.srt.lock() = vec![conn_stats(s, peer, streamid.clone())];
        }
        match s.recv(&mut buf) {
            Ok(n) => {
                let chunk = aligner.push(&buf[..n.min(buf.len())]);
                if !feed.push_blocking(chunk) {
                    break true;
                }
            }
            Err(e) if e.code == ffi::SRT_EASYNCRCV || e.code == ffi::SRT_ETIMEOUT => {}
            Err(e) => {
                tracing::info!("srt input: connection ended: {e}");
                break false;
            }
        }
    };
    feed.stats.clients.store(0, Relaxed);
    feed.stats.srt.lock().clear();
    cancelled
}

/// An SRT input (blocking; runs on the blocking pool).
pub(crate) fn run_input(mut feed: Feed, sp: SrtSpec, cancel: CancellationToken) {
    match sp.mode {
        SrtMode::Caller => loop {
            if cancel.is_cancelled() {
                return;
            }
            let r = Socket::new().and_then(|s| {
                configure(&s, &sp, true)?;
                s.connect(sp.addr)?;
                Ok(s)
            });
            match r {
                Ok(s) => {
                    feed.stats.set_up(s.local_addr());
                    if read_loop(&s, &mut feed, &cancel, Some(sp.addr), sp.streamid.clone()) {
                        return;
                    }
                }
                Err(e) => feed.stats.set_error(format!("connect {}: {e}", sp.addr)),
            }
            if nap(&cancel, Duration::from_secs(1)) {
                return;
            }
        },
        SrtMode::Listener => {
            let want = sp.streamid.clone();
            let setup = || -> Result<(Socket, Epoll, ffi::ListenHook), SrtError> {
                let l = Socket::new()?;
                configure(&l, &sp, false)?;
                let hook = l.set_listen_callback(move |_peer, sid| match &want {
                    Some(w) => sid == Some(w.as_str()),
                    None => true,
                })?;
                l.bind(sp.addr)?;
                l.listen(1)?;
                let ep = Epoll::new()?;
                ep.add_in(&l)?;
                Ok((l, ep, hook))
            };
            let (l, ep, hook) = match setup() {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("srt input listener {}: {e}", sp.addr);
                    feed.stats.set_error(format!("listen {}: {e}", sp.addr));
                    return;
                }
            };
            feed.stats.set_up(l.local_addr());
            while !cancel.is_cancelled() {
                if !ep.wait(100) {
                    continue;
                }
                let Ok((s, peer)) = l.accept() else { continue };
                if !key_ok(&s, &sp, &feed.stats) {
                    continue;
                }
                let sid = s.streamid();
                if read_loop(&s, &mut feed, &cancel, peer, sid) {
                    break;
                }
            }
            drop(ep);
            drop(l);
            drop(hook);
        }
    }
}

/// libsrt lets the *sending* side's key length win: a caller that sends into
/// our listener input imposes its length, so castpoint closes it after the
/// handshake (counted in `rejected`) to make "AES-256 only" mean it. A
/// caller that receives from our listener output is told our length in the
/// handshake and adopts it (libsrt logs "PBKEYLEN conflict - OVERRIDDEN"):
/// it cannot downgrade, and the length it was configured with never goes on
/// the wire, so there is nothing to reject; the check still guards it.
fn key_ok(s: &Socket, sp: &SrtSpec, stats: &IoStats) -> bool {
    if sp.passphrase.is_none() || sp.pbkeylen == 0 {
        return true;
    }
    match s.get_i32(ffi::SRTO_PBKEYLEN) {
        Some(k) if k == i32::from(sp.pbkeylen) => true,
        other => {
            tracing::warn!(
                "srt: rejecting caller with key length {other:?} (want {})",
                sp.pbkeylen
            );
            stats.rejected.fetch_add(1, Relaxed);
            false
        }
    }
}

struct Caller {
    sock: Socket,
    peer: Option<SocketAddr>,
    streamid: Option<String>,
    dead: bool,
}

/// Waits for the next chunk or cancellation, from a blocking thread.
fn next_chunk(
    rt: &tokio::runtime::Handle,
    rx: &mut mpsc::Receiver<Bytes>,
    cancel: &CancellationToken,
) -> Option<Bytes> {
    rt.block_on(async {
        tokio::select! {
            _ = cancel.cancelled() => None,
            c = rx.recv() => c,
        }
    })
}

/// An SRT output (blocking; runs on the blocking pool).
pub(crate) fn run_output(
    mut rx: mpsc::Receiver<Bytes>,
    sp: SrtSpec,
    stats: Arc<IoStats>,
    cancel: CancellationToken,
    events: Events,
    route: String,
    name: String,
) {
    let rt = tokio::runtime::Handle::current();
    match sp.mode {
        SrtMode::Caller => {
            let mut sock: Option<Socket> = None;
            let mut last_try: Option<Instant> = None;
            let mut last_stats = Instant::now();
            while let Some(chunk) = next_chunk(&rt, &mut rx, &cancel) {
                if sock.is_none() && last_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    last_try = Some(Instant::now());
                    let r = Socket::new().and_then(|s| {
                        configure(&s, &sp, true)?;
                        s.set_i32(ffi::SRTO_SNDTIMEO, 1000)?;
                        s.connect(sp.addr)?;
                        Ok(s)
                    });
                    match r {
                        Ok(s) => {
                            stats.set_up(s.local_addr());
                            stats.clients.store(1, Relaxed);
                            sock = Some(s);
                        }
                        Err(e) => stats.set_error(format!("connect {}: {e}", sp.addr)),
                    }
                }
                let Some(s) = &sock else { continue };
                for dg in chunk.chunks(DATAGRAM) {
                    match s.send(dg) {
                        Ok(n) => stats.add(n),
                        Err(e) => {
                            tracing::info!("srt output {}: {e}", sp.addr);
                            stats.set_error(e.to_string());
                            stats.clients.store(0, Relaxed);
                            stats.srt.lock().clear();
                            sock = None;
                            break;
                        }
                    }
                }
                if let Some(s) = &sock {
                    if last_stats.elapsed() >= Duration::from_secs(1) {
                        last_stats = Instant::now();
                        *stats.srt.lock() = vec![conn_stats(s, Some(sp.addr), sp.streamid.clone())];
                    }
                }
            }
            stats.clients.store(0, Relaxed);
        }
        SrtMode::Listener => run_listener_output(&rt, rx, sp, stats, cancel, events, route, name),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_listener_output(
    rt: &tokio::runtime::Handle,
    mut rx: mpsc::Receiver<Bytes>,
    sp: SrtSpec,
    stats: Arc<IoStats>,
    cancel: CancellationToken,
    events: Events,
    route: String,
    name: String,
) {
    let allow = sp.allow.clone();
    let ev = events.clone();
    let (r2, n2, st2) = (route.clone(), name.clone(), stats.clone());
    let setup = || -> Result<(Socket, Epoll, ffi::ListenHook), SrtError> {
        let l = Socket::new()?;
        configure(&l, &sp, false)?;
        let hook = l.set_listen_callback(move |peer, sid| {
            let ok = allow.is_empty() || sid.is_some_and(|s| allow.iter().any(|a| a == s));
            if !ok {
                st2.rejected.fetch_add(1, Relaxed);
                ev.emit(EngineEvent::new(
                    &r2,
                    EventKind::CallerRejected {
                        output: n2.clone(),
                        reason: format!("streamid {sid:?} from {peer:?} not allowed"),
                    },
                ));
            }
            ok
        })?;
        l.bind(sp.addr)?;
        l.listen(64)?;
        let ep = Epoll::new()?;
        ep.add_in(&l)?;
        Ok((l, ep, hook))
    };
    let (l, ep, hook) = match setup() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("srt output listener {}: {e}", sp.addr);
            stats.set_error(format!("listen {}: {e}", sp.addr));
            return;
        }
    };
    stats.set_up(l.local_addr());
    let callers: Mutex<Vec<Caller>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Acceptor: admits callers and refreshes their stats; the sender
        // below never waits on it.
        scope.spawn(|| {
            let mut last_stats = Instant::now();
            while !cancel.is_cancelled() && !done.load(Relaxed) {
                if ep.wait(100) {
                    if let Ok((s, peer)) = l.accept() {
                        if key_ok(&s, &sp, &stats) {
                            // A slow caller must not block the others:
                            // its sends fail fast and it loses the chunk.
                            let _ = s.set_bool(ffi::SRTO_SNDSYN, false);
                            let streamid = s.streamid();
                            tracing::info!("srt output {}: caller {peer:?} {streamid:?}", sp.addr);
                            callers.lock().push(Caller {
                                sock: s,
                                peer,
                                streamid,
                                dead: false,
                            });
                        } else {
                            events.emit(EngineEvent::new(
                                &route,
                                EventKind::CallerRejected {
                                    output: name.clone(),
                                    reason: format!(
                                        "key length from {peer:?} differs from {}",
                                        sp.pbkeylen
                                    ),
                                },
                            ));
                        }
                    }
                }
                if last_stats.elapsed() >= Duration::from_millis(1000) {
                    last_stats = Instant::now();
                    let mut c = callers.lock();
                    c.retain(|c| !c.dead && c.sock.connected());
                    stats.clients.store(c.len() as u64, Relaxed);
                    let v: Vec<_> = c
                        .iter()
                        .map(|c| conn_stats(&c.sock, c.peer, c.streamid.clone()))
                        .collect();
                    drop(c);
                    *stats.srt.lock() = v;
                }
            }
        });
        while let Some(chunk) = next_chunk(rt, &mut rx, &cancel) {
            let mut c = callers.lock();
            for caller in c.iter_mut().filter(|c| !c.dead) {
                for dg in chunk.chunks(DATAGRAM) {
                    match caller.sock.send(dg) {
                        Ok(n) => stats.add(n),
                        Err(e) if e.code == ffi::SRT_EASYNCSND => {
                            stats.dropped(chunk.len());
                            break;
                        }
                        Err(_) => {
                            caller.dead = true;
                            break;
                        }
                    }
                }
            }
        }
        done.store(true, Relaxed);
    });
    callers.lock().clear();
    stats.clients.store(0, Relaxed);
    drop(ep);
    drop(l);
    drop(hook);
}
