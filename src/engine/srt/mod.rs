//! SRT inputs and outputs over libsrt (listener and caller, latency, AES-128/192/256 passphrase, streamid access): inputs, connects and accepts on blocking threads (those libsrt calls block), output sends from async tasks on non-blocking sockets.

pub mod ffi;
mod log;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
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
/// cancelled. Returns true when cancelled. `each_second` runs once a second
/// while reading (a listener input refuses callers that slipped past the
/// handshake check meanwhile).
fn read_loop(
    s: &Socket,
    feed: &mut Feed,
    cancel: &CancellationToken,
    peer: Option<SocketAddr>,
    streamid: Option<String>,
    each_second: &mut dyn FnMut(),
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
            each_second();
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

/// Who an SRT input is, for its refusal events and log lines.
pub(crate) struct InputId {
    pub events: Events,
    pub route: String,
    pub input: String,
}

impl InputId {
    /// Counts, logs and reports one refused caller.
    fn refuse(&self, stats: &IoStats, reason: String) {
        stats.rejected.fetch_add(1, Relaxed);
        tracing::warn!(
            route = %self.route,
            "srt input {:?}: refused a caller: {reason}",
            self.input
        );
        self.events.emit(EngineEvent::new(
            &self.route,
            EventKind::InputRejected {
                input: self.input.clone(),
                reason,
            },
        ));
    }
}

/// How long a caller admitted by the listen callback may take to come out
/// of `srt_accept`. libsrt runs the callback *before* it checks the
/// passphrase; a caller that fails that check (wrong or missing
/// passphrase) is refused by libsrt without telling the listener, so an
/// admitted caller that never arrives is counted as refused after this.
const ADMITTED_GRACE: Duration = Duration::from_secs(2);

/// Callers the listen callback admitted and `srt_accept` has not returned
/// yet (see `ADMITTED_GRACE`).
#[derive(Default)]
struct Admitted(Mutex<Vec<(Option<SocketAddr>, Instant)>>);

impl Admitted {
    fn add(&self, peer: Option<SocketAddr>) {
        let mut v = self.0.lock();
        // libsrt repeats the callback for a caller's repeated conclusion
        // handshakes: one entry per caller, aged from the first (a caller
        // retrying a wrong passphrase is counted once per grace period).
        if !v.iter().any(|(p, _)| *p == peer) {
            v.push((peer, Instant::now()));
        }
    }

    fn accepted(&self, peer: Option<SocketAddr>) {
        self.0.lock().retain(|(p, _)| *p != peer);
    }

    /// Callers admitted longer than `ADMITTED_GRACE` ago (removed).
    fn expired(&self) -> Vec<Option<SocketAddr>> {
        let mut out = Vec::new();
        self.0.lock().retain(|(p, t)| {
            let keep = t.elapsed() < ADMITTED_GRACE;
            if !keep {
                out.push(*p);
            }
            keep
        });
        out
    }
}

/// An SRT input (blocking; runs on the blocking pool).
///
/// A listener input takes one publisher at a time: while one is connected,
/// further callers are refused in the handshake (counted in `rejected`,
/// event `input_rejected`, a log line), never parked unseen in libsrt's
/// backlog. A caller whose handshake fails after admission (wrong or
/// missing passphrase) is counted and reported the same way.
pub(crate) fn run_input(feed: Feed, sp: SrtSpec, who: InputId, cancel: CancellationToken) {
    match sp.mode {
        SrtMode::Caller => run_caller_input(feed, sp, cancel),
        SrtMode::Listener => run_listener_input(feed, sp, who, cancel),
    }
}

/// A caller input: connects, reads until the connection ends, reconnects
/// a second later.
fn run_caller_input(mut feed: Feed, sp: SrtSpec, cancel: CancellationToken) {
    loop {
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
                let (peer, sid) = (Some(sp.addr), sp.streamid.clone());
                if read_loop(&s, &mut feed, &cancel, peer, sid, &mut || {}) {
                    return;
                }
            }
            Err(e) => feed.stats.set_error(format!("connect {}: {e}", sp.addr)),
        }
        if nap(&cancel, Duration::from_secs(1)) {
            return;
        }
    }
}

/// A listener input: one publisher at a time (see `run_input`).
fn run_listener_input(mut feed: Feed, sp: SrtSpec, who: InputId, cancel: CancellationToken) {
    let who = Arc::new(who);
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admitted = Arc::new(Admitted::default());
    let (l, ep, hook) = match listen(&sp, &who, &busy, &admitted, &feed.stats) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("srt input listener {}: {e}", sp.addr);
            feed.stats.set_error(format!("listen {}: {e}", sp.addr));
            return;
        }
    };
    feed.stats.set_up(l.local_addr());
    let stats = feed.stats.clone();
    let failed_handshakes = || {
        for peer in admitted.expired() {
            who.refuse(
                &stats,
                format!(
                    "{peer:?} failed the handshake after admission (wrong or missing passphrase, or encryption mismatch)"
                ),
            );
        }
    };
    while !cancel.is_cancelled() {
        failed_handshakes();
        // Polled (see ACCEPT_TICK_MS): a backup input waiting for
        // its caller costs ~20 wake-ups a second, not ~170.
        if !ep.wait(0) {
            std::thread::sleep(Duration::from_millis(u64::from(ACCEPT_TICK_MS)));
            continue;
        }
        let Ok((s, peer)) = l.accept() else { continue };
        admitted.accepted(peer);
        if !key_ok(&s, &sp) {
            who.refuse(
                &feed.stats,
                format!("key length from {peer:?} differs from {}", sp.pbkeylen),
            );
            continue;
        }
        let sid = s.streamid();
        tracing::info!("srt input {}: publisher {peer:?} connected", sp.addr);
        busy.store(true, Relaxed);
        // Two callers admitted within one accept tick: the later
        // one is closed here rather than left in the backlog.
        let mut each_second = || {
            failed_handshakes();
            while ep.wait(0) {
                let Ok((extra, p)) = l.accept() else { break };
                admitted.accepted(p);
                drop(extra);
                who.refuse(
                    &stats,
                    format!("{p:?}: a publisher is already connected (one per listener input)"),
                );
            }
        };
        let cancelled = read_loop(&s, &mut feed, &cancel, peer, sid, &mut each_second);
        busy.store(false, Relaxed);
        if cancelled {
            break;
        }
    }
    drop(ep);
    drop(l);
    drop(hook);
}

/// The listener of a listener input, its poller and its handshake hook:
/// refuses callers with another streamid than `sp`'s, and every caller
/// while a publisher is connected (`busy`); notes those it admits.
fn listen(
    sp: &SrtSpec,
    who: &Arc<InputId>,
    busy: &Arc<std::sync::atomic::AtomicBool>,
    admitted: &Arc<Admitted>,
    stats: &Arc<IoStats>,
) -> Result<(Socket, Epoll, ffi::ListenHook), SrtError> {
    let want = sp.streamid.clone();
    let l = Socket::new()?;
    configure(&l, sp, false)?;
    let (who, busy, admitted, stats) = (who.clone(), busy.clone(), admitted.clone(), stats.clone());
    let hook = l.set_listen_callback(move |peer, sid| {
        if let Some(w) = &want {
            if sid != Some(w.as_str()) {
                who.refuse(
                    &stats,
                    format!("streamid {sid:?} from {peer:?} not allowed"),
                );
                return false;
            }
        }
        if busy.load(Relaxed) {
            who.refuse(
                &stats,
                format!("{peer:?}: a publisher is already connected (one per listener input)"),
            );
            return false;
        }
        admitted.add(peer);
        true
    })?;
    l.bind(sp.addr)?;
    l.listen(1)?;
    let ep = Epoll::new()?;
    ep.add_in(&l)?;
    Ok((l, ep, hook))
}

/// libsrt lets the *sending* side's key length win: a caller that sends into
/// our listener input imposes its length, so castpoint closes it after the
/// handshake (counted in `rejected`) to make "AES-256 only" mean it. A
/// caller that receives from our listener output is told our length in the
/// handshake and adopts it (libsrt logs "PBKEYLEN conflict - OVERRIDDEN"):
/// it cannot downgrade, and the length it was configured with never goes on
/// the wire, so there is nothing to reject; the check still guards it.
fn key_ok(s: &Socket, sp: &SrtSpec) -> bool {
    if sp.passphrase.is_none() || sp.pbkeylen == 0 {
        return true;
    }
    matches!(s.get_i32(ffi::SRTO_PBKEYLEN), Some(k) if k == i32::from(sp.pbkeylen))
}

struct Caller {
    sock: Arc<Socket>,
    peer: Option<SocketAddr>,
    streamid: Option<String>,
    dead: bool,
}

/// Waits for the next chunk or cancellation.
async fn next_chunk(rx: &mut mpsc::Receiver<Bytes>, cancel: &CancellationToken) -> Option<Bytes> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        c = rx.recv() => c,
    }
}

/// Most bytes gathered into one burst (~48 live-mode messages).
const BURST_BYTES: usize = 64 * 1024;

/// How long data for an SRT output may be gathered before it is handed to
/// libsrt (the read pace of a UDP input feeding it, the burst of a caller
/// output): a fifth of the SRT latency, at most 10 ms. Handing libsrt one
/// datagram at a time woke its send thread (and ours) for every 1316
/// bytes: at 10 Mbit/s ~1,900 context switches a second on the send
/// thread alone, the bulk of the cost of a single caller; with 5 ms
/// batches a caller still cost ~1.2x an srt-live-transmit relay, with
/// 10 ms the same (which is what srt-live-transmit's few-ms input polling
/// amounts to). The delay is added before libsrt timestamps the packets,
/// so it never eats into the receiver's latency window (retransmissions
/// keep their full budget); it adds at most this much end-to-end delay and
/// output jitter, which the decoder's buffer absorbs.
pub(crate) fn burst_window(sp: &SrtSpec) -> Duration {
    (sp.latency / 5).min(Duration::from_millis(10))
}

/// Waits for the next chunk, then gathers what else arrives within
/// `window` (or up to BURST_BYTES) into `burst`. False when the output
/// must stop (cancelled or the route dropped its sender); a partial burst
/// is still returned for sending.
async fn next_burst(
    rx: &mut mpsc::Receiver<Bytes>,
    cancel: &CancellationToken,
    window: Duration,
    burst: &mut Vec<Bytes>,
) -> bool {
    burst.clear();
    let Some(first) = next_chunk(rx, cancel).await else {
        return false;
    };
    let mut bytes = first.len();
    burst.push(first);
    if window.is_zero() {
        return true;
    }
    let deadline = tokio::time::Instant::now() + window;
    while bytes < BURST_BYTES {
        // Take what is already queued without arming a timer.
        let c = match rx.try_recv() {
            Ok(c) => Some(c),
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
            Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => None,
                c = rx.recv() => match c {
                    Some(c) => Some(c),
                    None => return false,
                },
            },
        };
        let Some(c) = c else { break };
        bytes += c.len();
        burst.push(c);
    }
    true
}

/// Sends `chunk` to one non-blocking socket as live-mode messages of whole
/// TS packets. Ok(false): libsrt's send buffer is full, so the rest of the
/// chunk is dropped (counted) and the stream stays parseable. Err: the
/// connection is broken.
fn send_chunk(s: &Socket, chunk: &[u8], stats: &IoStats) -> Result<bool, i32> {
    for dg in chunk.chunks(DATAGRAM) {
        match s.try_send(dg) {
            Ok(n) => stats.add(n),
            Err(ffi::SRT_EASYNCSND) => {
                stats.dropped(chunk.len());
                return Ok(false);
            }
            Err(code) => return Err(code),
        }
    }
    Ok(true)
}

/// An SRT caller output. Sends run on the async task that receives the
/// chunks (the socket is non-blocking, so `srt_sendmsg2` only copies into
/// libsrt's send buffer and never waits); only connecting runs on a
/// blocking thread. (Listener outputs are sent to by the route task: see
/// `listener_output`.)
pub(crate) async fn run_caller_output(
    mut rx: mpsc::Receiver<Bytes>,
    sp: SrtSpec,
    stats: Arc<IoStats>,
    cancel: CancellationToken,
) {
    let mut sock: Option<Arc<Socket>> = None;
    let mut last_try: Option<Instant> = None;
    let mut last_stats = Instant::now();
    let window = burst_window(&sp);
    let mut burst = Vec::new();
    loop {
        let more = next_burst(&mut rx, &cancel, window, &mut burst).await;
        if burst.is_empty() {
            break;
        }
        if sock.is_none() && last_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_try = Some(Instant::now());
            let sp2 = sp.clone();
            // srt_connect blocks up to SRTO_CONNTIMEO.
            let r = tokio::task::spawn_blocking(move || {
                let s = Socket::new()?;
                configure(&s, &sp2, true)?;
                s.connect(sp2.addr)?;
                // Connected: from now on a full send buffer drops chunks
                // (counted) instead of stalling the task.
                s.set_bool(ffi::SRTO_SNDSYN, false)?;
                Ok::<_, SrtError>(s)
            })
            .await;
            match r {
                Ok(Ok(s)) => {
                    stats.set_up(s.local_addr());
                    stats.clients.store(1, Relaxed);
                    sock = Some(Arc::new(s));
                }
                Ok(Err(e)) => stats.set_error(format!("connect {}: {e}", sp.addr)),
                Err(e) => stats.set_error(format!("connect {}: {e}", sp.addr)),
            }
        }
        let Some(s) = &sock else { continue };
        if let Err(code) = burst
            .iter()
            .try_for_each(|c| send_chunk(s, c, &stats).map(drop))
        {
            let msg = SrtError {
                code,
                message: "connection lost".into(),
            };
            tracing::info!("srt output {}: {msg}", sp.addr);
            stats.set_error(msg.to_string());
            stats.clients.store(0, Relaxed);
            stats.srt.lock().clear();
            sock = None;
            continue;
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            let (s, sid) = (s.clone(), sp.streamid.clone());
            let addr = sp.addr;
            // srt_bistats takes libsrt locks the send thread also takes.
            if let Ok(v) =
                tokio::task::spawn_blocking(move || conn_stats(&s, Some(addr), sid)).await
            {
                *stats.srt.lock() = vec![v];
            }
        }
        if !more {
            break;
        }
    }
    stats.clients.store(0, Relaxed);
}

/// How many libsrt multiplexers (each one UDP socket with its own send and
/// receive thread) a listener output spreads its callers over: four per
/// core, 4 to 16. libsrt sends every packet of a multiplexer from one
/// thread; with one of them, 50 callers at 10 Mbit/s (47,500 packets/s)
/// kept that thread runnable all the time, and on a busy machine the
/// scheduler gave it ~20% of a core: the send buffers filled to libsrt's
/// 1 s drop threshold. The kernel spreads callers over the sockets by
/// address hash, unevenly (random ports: some sockets get well over 1/K),
/// hence more sockets than cores: on 2 cores, 8 kept p50 at 64-112 ms
/// where 4 ranged 108-1020 ms. An idle multiplexer costs ~0.1% of a core
/// (its receive thread polls).
fn listener_muxes() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (4 * n.get()).clamp(4, 16))
}

/// Binds `n` UDP sockets to `addr` with SO_REUSEPORT, so that the kernel
/// spreads callers over them by address hash (a caller's packets always
/// reach the same one). A plain bind first keeps "address in use" an
/// error, as with one socket, and resolves port 0.
fn reuseport_udp(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Type};
    let addr = std::net::UdpSocket::bind(addr)?.local_addr()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = socket2::Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        match s.bind(&addr.into()) {
            Ok(()) => out.push(s.into()),
            // Extra sockets are an optimisation: fewer is still correct.
            Err(e) if i > 0 => {
                tracing::warn!("srt listener {addr}: {n} send threads wanted, {i} bound: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The listening half of a listener output: K UDP sockets on one port (see
/// `listener_muxes`), each handed to an SRT listener of its own, and so to
/// a libsrt multiplexer (a send and a receive thread), only once a caller's
/// handshake reaches it. An idle multiplexer's receive thread wakes every
/// 10 ms whether or not it has callers (~0.1% of a core each); creating
/// them lazily keeps a single-caller output at one multiplexer while 50
/// callers still spread over all K. All K sockets are bound from the start
/// so that the kernel's hash of a caller to a socket never changes (a
/// socket joining the group later would move established callers).
/// Multiplexers are never closed while the output runs, for the same
/// reason.
struct Listeners {
    /// Bound sockets of the group that no caller has reached yet; their
    /// first datagram (a handshake) waits in the socket buffer until the
    /// accept thread hands the socket to libsrt, and the caller repeats
    /// it every 250 ms anyway.
    idle: Vec<std::net::UdpSocket>,
    socks: Vec<Socket>,
    ep: Epoll,
    hooks: Vec<ffi::ListenHook>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        // The hooks must outlive their listeners (see set_listen_callback).
        self.socks.clear();
        self.hooks.clear();
    }
}

/// Everything an SRT listener of a listener output needs to admit callers.
struct Admit<'a> {
    sp: &'a SrtSpec,
    stats: &'a Arc<IoStats>,
    events: &'a Events,
    route: &'a str,
    name: &'a str,
}

impl Listeners {
    /// Hands one bound UDP socket of the group to a new SRT listener.
    fn activate(&mut self, udp: std::net::UdpSocket, a: &Admit) -> Result<(), SrtError> {
        let l = Socket::new()?;
        configure(&l, a.sp, false)?;
        let allow = a.sp.allow.clone();
        let (ev, r2, n2, st2) = (
            a.events.clone(),
            a.route.to_string(),
            a.name.to_string(),
            a.stats.clone(),
        );
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
        self.hooks.push(hook);
        l.bind_acquire(udp)?;
        l.listen(64)?;
        self.ep.add_in(&l)?;
        self.socks.push(l);
        Ok(())
    }

    /// Waits up to `ms` for a handshake on a socket libsrt does not read
    /// yet, then hands every such socket to libsrt.
    fn wake_idle(&mut self, ms: u16, a: &Admit) {
        use nix::poll::{poll, PollFd, PollFlags};
        if self.idle.is_empty() {
            std::thread::sleep(Duration::from_millis(u64::from(ms)));
            return;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = self
                .idle
                .iter()
                .map(|u| PollFd::new(std::os::fd::AsFd::as_fd(u), PollFlags::POLLIN))
                .collect();
            if poll(&mut fds, ms).is_err() {
                return;
            }
            fds.iter().map(|f| f.any().unwrap_or(false)).collect()
        };
        let idle = std::mem::take(&mut self.idle);
        for (udp, r) in idle.into_iter().zip(ready) {
            if !r {
                self.idle.push(udp);
                continue;
            }
            if let Err(e) = self.activate(udp, a) {
                // That share of callers cannot connect; the others can.
                tracing::error!("srt output {}: listener: {e}", a.sp.addr);
                a.stats.set_error(format!("listen {}: {e}", a.sp.addr));
            }
        }
    }
}

/// Binds the listener output's port (all K sockets; none is handed to
/// libsrt yet).
fn listen_output(sp: &SrtSpec) -> Result<Listeners, SrtError> {
    let udp = reuseport_udp(sp.addr, listener_muxes()).map_err(|e| SrtError {
        code: e.raw_os_error().unwrap_or(0),
        message: e.to_string(),
    })?;
    Ok(Listeners {
        idle: udp,
        socks: Vec::new(),
        ep: Epoll::new()?,
        hooks: Vec::new(),
    })
}

/// How often accept threads (listener outputs and inputs) look for callers
/// libsrt has connected: a connected caller waits at most this long for
/// its first packet, or to be read. Waiting in `srt_epoll_uwait` instead
/// cost ~170 wake-ups a second (libsrt re-checks every few ms).
const ACCEPT_TICK_MS: u16 = 50;

/// Admits callers and refreshes their stats once a second until
/// cancelled; the route task never waits on it beyond a short lock.
fn accept_loop(
    mut ls: Listeners,
    callers: &Mutex<Vec<Caller>>,
    a: &Admit,
    cancel: &CancellationToken,
) {
    let mut last_stats = Instant::now();
    let mut ready = [0; 16];
    while !cancel.is_cancelled() {
        ls.wake_idle(ACCEPT_TICK_MS, a);
        let n = ls.ep.ready(0, &mut ready);
        for id in &ready[..n] {
            let Some(l) = ls.socks.iter().find(|l| l.id() == *id) else {
                continue;
            };
            let Ok((s, peer)) = l.accept() else { continue };
            if !key_ok(&s, a.sp) {
                tracing::warn!(
                    "srt output {}: rejecting caller {peer:?}: key length differs from {}",
                    a.sp.addr,
                    a.sp.pbkeylen
                );
                a.stats.rejected.fetch_add(1, Relaxed);
                a.events.emit(EngineEvent::new(
                    a.route,
                    EventKind::CallerRejected {
                        output: a.name.to_string(),
                        reason: format!("key length from {peer:?} differs from {}", a.sp.pbkeylen),
                    },
                ));
                continue;
            }
            // A slow caller must not block the others: its sends fail
            // fast and it loses the chunk.
            let _ = s.set_bool(ffi::SRTO_SNDSYN, false);
            let streamid = s.streamid();
            tracing::info!("srt output {}: caller {peer:?} {streamid:?}", a.sp.addr);
            callers.lock().push(Caller {
                sock: Arc::new(s),
                peer,
                streamid,
                dead: false,
            });
        }
        if last_stats.elapsed() >= Duration::from_millis(1000) {
            last_stats = Instant::now();
            let live: Vec<_> = {
                let mut c = callers.lock();
                c.retain(|c| !c.dead && c.sock.connected());
                a.stats.clients.store(c.len() as u64, Relaxed);
                c.iter()
                    .map(|c| (c.sock.clone(), c.peer, c.streamid.clone()))
                    .collect()
            };
            // Outside the lock: srt_bistats waits on libsrt's own locks.
            let v = live
                .into_iter()
                .map(|(s, peer, sid)| conn_stats(&s, peer, sid))
                .collect();
            *a.stats.srt.lock() = v;
        }
    }
    drop(ls);
}

/// A listener output's connected callers. The route task sends to them
/// itself (`route::Direct::Srt`); the accept thread adds callers and
/// prunes broken ones.
pub(crate) struct ListenerOut {
    callers: Mutex<Vec<Caller>>,
    stats: Arc<IoStats>,
}

impl ListenerOut {
    /// Sends one chunk to every live caller: a non-blocking copy into each
    /// caller's libsrt send buffer. A caller whose buffer is full loses the
    /// rest of the chunk (whole TS packets, counted) and no other caller
    /// waits for it. False when any caller lost data.
    pub fn send(&self, chunk: &[u8]) -> bool {
        let mut all = true;
        let mut c = self.callers.lock();
        for caller in c.iter_mut().filter(|c| !c.dead) {
            match send_chunk(&caller.sock, chunk, &self.stats) {
                Ok(true) => {}
                Ok(false) => all = false,
                Err(_) => caller.dead = true,
            }
        }
        all
    }
}

/// Binds a listener output (synchronously, so that the engine knows at
/// once whether the port is taken) and returns its callers, for the route
/// task, and the output's task, which admits callers until cancelled.
pub(crate) fn listener_output(
    sp: SrtSpec,
    stats: Arc<IoStats>,
    cancel: CancellationToken,
    events: Events,
    route: String,
    name: String,
) -> (
    Option<Arc<ListenerOut>>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let ls = match listen_output(&sp) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("srt output listener {}: {e}", sp.addr);
            stats.set_error(format!("listen {}: {e}", sp.addr));
            return (None, futures::future::Either::Left(async {}));
        }
    };
    stats.set_up(ls.idle.first().and_then(|u| u.local_addr().ok()));
    let out = Arc::new(ListenerOut {
        callers: Mutex::new(Vec::new()),
        stats: stats.clone(),
    });
    let o = out.clone();
    let task = async move {
        let (o2, stats2) = (o.clone(), stats.clone());
        let acceptor = tokio::task::spawn_blocking(move || {
            let a = Admit {
                sp: &sp,
                stats: &stats2,
                events: &events,
                route: &route,
                name: &name,
            };
            accept_loop(ls, &o2.callers, &a, &cancel)
        });
        let _ = acceptor.await;
        o.callers.lock().clear();
        stats.clients.store(0, Relaxed);
    };
    (Some(out), futures::future::Either::Right(task))
}
