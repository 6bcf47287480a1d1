//! The only `unsafe` in castpoint's SRT support: hand-written declarations of the libsrt 1.5 C API (Debian libsrt-openssl-dev) and a small safe wrapper (`Socket`, `Epoll`, stats) over them.
//!
//! Every call takes plain integers/pointers that live for the duration of
//! the call; libsrt copies what it keeps (options, addresses). The listen
//! callback's opaque pointer is the one exception and is documented where
//! it is installed.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::net::SocketAddr;
use std::sync::Once;

use socket2::{SockAddr, SockAddrStorage};

pub type SrtSocket = i32;
const SRT_ERROR: c_int = -1;
const SRT_INVALID_SOCK: SrtSocket = -1;

// Option numbers from srt.h (enum SRT_SOCKOPT).
pub const SRTO_SNDSYN: c_int = 1;
pub const SRTO_RCVSYN: c_int = 2;
pub const SRTO_SNDTIMEO: c_int = 13;
pub const SRTO_RCVTIMEO: c_int = 14;
pub const SRTO_LATENCY: c_int = 23;
pub const SRTO_PASSPHRASE: c_int = 26;
pub const SRTO_PBKEYLEN: c_int = 27;
pub const SRTO_CONNTIMEO: c_int = 36;
pub const SRTO_STREAMID: c_int = 46;
pub const SRTO_ENFORCEDENCRYPTION: c_int = 53;
pub const SRTO_SNDBUF: c_int = 5;

// SRT_SOCKSTATUS
pub const SRTS_CONNECTED: c_int = 5;

// Error codes (major * 1000 + minor).
pub const SRT_EASYNCSND: c_int = 6001;
pub const SRT_EASYNCRCV: c_int = 6002;
pub const SRT_ETIMEOUT: c_int = 6003;

const SRT_EPOLL_IN: c_int = 0x1;
const SRT_EPOLL_ERR: c_int = 0x8;

/// `struct CBytePerfMon` of srt.h 1.5 (field order and types verbatim).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct PerfMon {
    pub ms_timestamp: i64,
    pub pkt_sent_total: i64,
    pub pkt_recv_total: i64,
    pub pkt_snd_loss_total: c_int,
    pub pkt_rcv_loss_total: c_int,
    pub pkt_retrans_total: c_int,
    pub pkt_sent_ack_total: c_int,
    pub pkt_recv_ack_total: c_int,
    pub pkt_sent_nak_total: c_int,
    pub pkt_recv_nak_total: c_int,
    pub us_snd_duration_total: i64,
    pub pkt_snd_drop_total: c_int,
    pub pkt_rcv_drop_total: c_int,
    pub pkt_rcv_undecrypt_total: c_int,
    pub byte_sent_total: u64,
    pub byte_recv_total: u64,
    pub byte_rcv_loss_total: u64,
    pub byte_retrans_total: u64,
    pub byte_snd_drop_total: u64,
    pub byte_rcv_drop_total: u64,
    pub byte_rcv_undecrypt_total: u64,
    pub pkt_sent: i64,
    pub pkt_recv: i64,
    pub pkt_snd_loss: c_int,
    pub pkt_rcv_loss: c_int,
    pub pkt_retrans: c_int,
    pub pkt_rcv_retrans: c_int,
    pub pkt_sent_ack: c_int,
    pub pkt_recv_ack: c_int,
    pub pkt_sent_nak: c_int,
    pub pkt_recv_nak: c_int,
    pub mbps_send_rate: f64,
    pub mbps_recv_rate: f64,
    pub us_snd_duration: i64,
    pub pkt_reorder_distance: c_int,
    pub pkt_rcv_avg_belated_time: f64,
    pub pkt_rcv_belated: i64,
    pub pkt_snd_drop: c_int,
    pub pkt_rcv_drop: c_int,
    pub pkt_rcv_undecrypt: c_int,
    pub byte_sent: u64,
    pub byte_recv: u64,
    pub byte_rcv_loss: u64,
    pub byte_retrans: u64,
    pub byte_snd_drop: u64,
    pub byte_rcv_drop: u64,
    pub byte_rcv_undecrypt: u64,
    pub us_pkt_snd_period: f64,
    pub pkt_flow_window: c_int,
    pub pkt_congestion_window: c_int,
    pub pkt_flight_size: c_int,
    pub ms_rtt: f64,
    pub mbps_bandwidth: f64,
    pub byte_avail_snd_buf: c_int,
    pub byte_avail_rcv_buf: c_int,
    pub mbps_max_bw: f64,
    pub byte_mss: c_int,
    pub pkt_snd_buf: c_int,
    pub byte_snd_buf: c_int,
    pub ms_snd_buf: c_int,
    pub ms_snd_tsbpd_delay: c_int,
    pub pkt_rcv_buf: c_int,
    pub byte_rcv_buf: c_int,
    pub ms_rcv_buf: c_int,
    pub ms_rcv_tsbpd_delay: c_int,
    pub pkt_snd_filter_extra_total: c_int,
    pub pkt_rcv_filter_extra_total: c_int,
    pub pkt_rcv_filter_supply_total: c_int,
    pub pkt_rcv_filter_loss_total: c_int,
    pub pkt_snd_filter_extra: c_int,
    pub pkt_rcv_filter_extra: c_int,
    pub pkt_rcv_filter_supply: c_int,
    pub pkt_rcv_filter_loss: c_int,
    pub pkt_reorder_tolerance: c_int,
    pub pkt_sent_unique_total: i64,
    pub pkt_recv_unique_total: i64,
    pub byte_sent_unique_total: u64,
    pub byte_recv_unique_total: u64,
    pub pkt_sent_unique: i64,
    pub pkt_recv_unique: i64,
    pub byte_sent_unique: u64,
    pub byte_recv_unique: u64,
}

#[repr(C)]
struct EpollEvent {
    fd: SrtSocket,
    events: c_int,
}

type ListenCallback = unsafe extern "C" fn(
    opaq: *mut c_void,
    ns: SrtSocket,
    hsversion: c_int,
    peeraddr: *const SockAddrStorage,
    streamid: *const c_char,
) -> c_int;

#[link(name = "srt")]
extern "C" {
    fn srt_startup() -> c_int;
    fn srt_create_socket() -> SrtSocket;
    fn srt_close(u: SrtSocket) -> c_int;
    fn srt_bind(u: SrtSocket, name: *const SockAddrStorage, namelen: c_int) -> c_int;
    fn srt_bind_acquire(u: SrtSocket, udpsock: c_int) -> c_int;
    fn srt_listen(u: SrtSocket, backlog: c_int) -> c_int;
    fn srt_accept(u: SrtSocket, addr: *mut SockAddrStorage, addrlen: *mut c_int) -> SrtSocket;
    fn srt_connect(u: SrtSocket, name: *const SockAddrStorage, namelen: c_int) -> c_int;
    fn srt_setsockflag(u: SrtSocket, opt: c_int, optval: *const c_void, optlen: c_int) -> c_int;
    fn srt_getsockflag(u: SrtSocket, opt: c_int, optval: *mut c_void, optlen: *mut c_int) -> c_int;
    fn srt_getsockname(u: SrtSocket, name: *mut SockAddrStorage, namelen: *mut c_int) -> c_int;
    fn srt_getsockstate(u: SrtSocket) -> c_int;
    fn srt_sendmsg2(u: SrtSocket, buf: *const c_char, len: c_int, mctrl: *mut c_void) -> c_int;
    fn srt_recvmsg(u: SrtSocket, buf: *mut c_char, len: c_int) -> c_int;
    fn srt_getlasterror(errno_loc: *mut c_int) -> c_int;
    fn srt_getlasterror_str() -> *const c_char;
    fn srt_clearlasterror();
    fn srt_bistats(u: SrtSocket, perf: *mut PerfMon, clear: c_int, instantaneous: c_int) -> c_int;
    fn srt_listen_callback(lsn: SrtSocket, hook: ListenCallback, opaque: *mut c_void) -> c_int;
    fn srt_getrejectreason(u: SrtSocket) -> c_int;
    fn srt_rejectreason_str(id: c_int) -> *const c_char;
    fn srt_epoll_create() -> c_int;
    fn srt_epoll_add_usock(eid: c_int, u: SrtSocket, events: *const c_int) -> c_int;
    fn srt_epoll_uwait(eid: c_int, fds: *mut EpollEvent, fds_size: c_int, timeout: i64) -> c_int;
    fn srt_epoll_release(eid: c_int) -> c_int;
    fn srt_setloglevel(ll: c_int);
    fn srt_setlogflags(flags: c_int);
    fn srt_setloghandler(opaque: *mut c_void, handler: Option<LogHandler>);
}

/// `SRT_LOG_HANDLER_FN` of srt.h / logging_api.h.
type LogHandler = unsafe extern "C" fn(
    opaque: *mut c_void,
    level: c_int,
    file: *const c_char,
    line: c_int,
    area: *const c_char,
    message: *const c_char,
);

// SRT_LOGF_DISABLE_* of logging_api.h: the handler gets the bare message
// (tracing adds time, level and line end itself).
const SRT_LOGF_DISABLE_TIME: c_int = 1;
const SRT_LOGF_DISABLE_THREADNAME: c_int = 2;
const SRT_LOGF_DISABLE_SEVERITY: c_int = 4;
const SRT_LOGF_DISABLE_EOL: c_int = 8;

/// libsrt's log lines go to tracing through the rate limiter of
/// `super::log` instead of straight to stderr.
///
/// # Safety
/// Called by libsrt with `message` null or a NUL-terminated string valid
/// for the duration of the call; nothing else is read.
unsafe extern "C" fn log_handler(
    _opaque: *mut c_void,
    level: c_int,
    _file: *const c_char,
    _line: c_int,
    _area: *const c_char,
    message: *const c_char,
) {
    if message.is_null() {
        return;
    }
    // SAFETY: see the function's contract: libsrt's message is a valid C
    // string for this call, copied before returning.
    let msg = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    // A panic must not unwind into C (it would abort the process).
    let _ = std::panic::catch_unwind(|| {
        // With every prefix flag off, libsrt still starts the line with
        // its separator (": "); the message names its function already.
        super::log::forward(level, msg.trim_start_matches([':', ' ']).trim_end())
    });
}

static INIT: Once = Once::new();

/// Starts libsrt once per process (it spawns its own GC thread).
pub fn startup() {
    INIT.call_once(|| {
        // SAFETY: srt_startup has no preconditions and Once serialises it;
        // the log handler is a plain function (no opaque pointer, null
        // passed) that libsrt may call from any of its threads, which
        // `log_handler` allows.
        unsafe {
            srt_setloghandler(std::ptr::null_mut(), Some(log_handler));
            srt_setlogflags(
                SRT_LOGF_DISABLE_TIME
                    | SRT_LOGF_DISABLE_THREADNAME
                    | SRT_LOGF_DISABLE_SEVERITY
                    | SRT_LOGF_DISABLE_EOL,
            );
            srt_startup();
            // LOG_ERR (3): real errors only (a rejected handshake is one).
            srt_setloglevel(3);
        }
    });
}

/// libsrt's last error on this thread: (code, message).
pub fn last_error() -> (i32, String) {
    // SAFETY: srt_getlasterror accepts a null errno pointer; the string is a
    // thread-local owned by libsrt, valid until the next call on this
    // thread, and we copy it at once.
    unsafe {
        let code = srt_getlasterror(std::ptr::null_mut());
        let p = srt_getlasterror_str();
        let msg = if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        srt_clearlasterror();
        (code, msg)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for SrtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (srt {})", self.message, self.code)
    }
}

impl std::error::Error for SrtError {}

fn err() -> SrtError {
    let (code, message) = last_error();
    SrtError { code, message }
}

/// An owned SRT socket, closed on drop.
#[derive(Debug)]
pub struct Socket(SrtSocket);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own this socket id; closing an already-broken socket
        // is allowed and only returns an error.
        unsafe {
            srt_close(self.0);
        }
    }
}

impl Socket {
    pub fn new() -> Result<Socket, SrtError> {
        startup();
        // SAFETY: no arguments; returns a new id or SRT_INVALID_SOCK.
        let s = unsafe { srt_create_socket() };
        if s == SRT_INVALID_SOCK {
            return Err(err());
        }
        Ok(Socket(s))
    }

    pub fn id(&self) -> SrtSocket {
        self.0
    }

    pub fn set_i32(&self, opt: c_int, v: i32) -> Result<(), SrtError> {
        // SAFETY: optval points to a live i32 for the duration of the call
        // and optlen is its size; libsrt copies the value.
        let r = unsafe {
            srt_setsockflag(
                self.0,
                opt,
                (&v as *const i32).cast(),
                std::mem::size_of::<i32>() as c_int,
            )
        };
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(())
    }

    pub fn set_bool(&self, opt: c_int, v: bool) -> Result<(), SrtError> {
        // libsrt's boolean options take a C++ bool (1 byte).
        let b: u8 = u8::from(v);
        // SAFETY: optval points to a live byte, optlen 1; libsrt copies it.
        let r = unsafe { srt_setsockflag(self.0, opt, (&b as *const u8).cast(), 1) };
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(())
    }

    pub fn set_str(&self, opt: c_int, v: &str) -> Result<(), SrtError> {
        // SAFETY: optval points to v's bytes (no NUL needed: the length is
        // passed) which live for the call; libsrt copies them.
        let r = unsafe { srt_setsockflag(self.0, opt, v.as_ptr().cast(), v.len() as c_int) };
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(())
    }

    pub fn get_i32(&self, opt: c_int) -> Option<i32> {
        let mut v: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as c_int;
        // SAFETY: v and len are live locals; libsrt writes at most len bytes.
        let r = unsafe { srt_getsockflag(self.0, opt, (&mut v as *mut i32).cast(), &mut len) };
        (r != SRT_ERROR).then_some(v)
    }

    pub fn streamid(&self) -> Option<String> {
        let mut buf = [0u8; 1024];
        let mut len = buf.len() as c_int;
        // SAFETY: buf is a live 1024-byte buffer and len says so; libsrt
        // writes at most len bytes and sets len to the string length.
        let r =
            unsafe { srt_getsockflag(self.0, SRTO_STREAMID, buf.as_mut_ptr().cast(), &mut len) };
        if r == SRT_ERROR {
            return None;
        }
        let n = usize::try_from(len).ok()?.min(buf.len());
        let s = String::from_utf8_lossy(&buf[..n])
            .trim_end_matches('\0')
            .to_string();
        (!s.is_empty()).then_some(s)
    }

    pub fn bind(&self, addr: SocketAddr) -> Result<(), SrtError> {
        let sa = SockAddr::from(addr);
        // SAFETY: sa is a valid sockaddr of sa.len() bytes alive for the call.
        let r = unsafe { srt_bind(self.0, sa.as_ptr(), sa.len() as c_int) };
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(())
    }

    /// Binds to an already bound UDP socket, which libsrt takes over (it
    /// closes it with the multiplexer). Unlike `bind`, this always gives
    /// the socket a multiplexer of its own (its own send and receive
    /// threads), even when other SRT sockets use the same port through
    /// SO_REUSEPORT.
    pub fn bind_acquire(&self, udp: std::net::UdpSocket) -> Result<(), SrtError> {
        use std::os::fd::IntoRawFd;
        let fd = udp.into_raw_fd();
        // SAFETY: fd is an open, bound UDP socket whose ownership we give
        // up here; libsrt keeps it open and closes it itself.
        let r = unsafe { srt_bind_acquire(self.0, fd) };
        if r == SRT_ERROR {
            // On failure libsrt did not attach it; close it ourselves.
            // SAFETY: fd came from into_raw_fd above and is still ours.
            drop(unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            return Err(err());
        }
        Ok(())
    }

    pub fn listen(&self, backlog: i32) -> Result<(), SrtError> {
        // SAFETY: plain integers.
        let r = unsafe { srt_listen(self.0, backlog) };
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(())
    }

    pub fn connect(&self, addr: SocketAddr) -> Result<(), SrtError> {
        let sa = SockAddr::from(addr);
        // SAFETY: sa is a valid sockaddr of sa.len() bytes alive for the call.
        let r = unsafe { srt_connect(self.0, sa.as_ptr(), sa.len() as c_int) };
        if r == SRT_ERROR {
            let mut e = err();
            // SAFETY: plain integer; returns a static string.
            let reason = unsafe { srt_getrejectreason(self.0) };
            if reason > 0 {
                // SAFETY: srt_rejectreason_str returns a pointer to a static
                // NUL-terminated string (or a generic one for unknown ids).
                let s = unsafe { CStr::from_ptr(srt_rejectreason_str(reason)) };
                e.message = format!("{} ({})", e.message, s.to_string_lossy());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Accepts a pending caller (the listener must be readable).
    pub fn accept(&self) -> Result<(Socket, Option<SocketAddr>), SrtError> {
        // SAFETY: try_init gives a zeroed sockaddr_storage and its size;
        // srt_accept writes at most that many bytes and the actual length.
        let r = unsafe {
            SockAddr::try_init(|st, len| {
                let mut l = *len as c_int;
                let s = srt_accept(self.0, st, &mut l);
                *len = l as _;
                if s == SRT_INVALID_SOCK {
                    Err(std::io::Error::other("accept"))
                } else {
                    Ok(s)
                }
            })
        };
        match r {
            Ok((s, addr)) => Ok((Socket(s), addr.as_socket())),
            Err(_) => Err(err()),
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as in accept: a zeroed storage of the given size.
        let r = unsafe {
            SockAddr::try_init(|st, len| {
                let mut l = *len as c_int;
                let rc = srt_getsockname(self.0, st, &mut l);
                *len = l as _;
                if rc == SRT_ERROR {
                    Err(std::io::Error::other("getsockname"))
                } else {
                    Ok(())
                }
            })
        };
        r.ok().and_then(|(_, a)| a.as_socket())
    }

    pub fn connected(&self) -> bool {
        // SAFETY: plain integer.
        unsafe { srt_getsockstate(self.0) == SRTS_CONNECTED }
    }

    /// Sends one message (≤ 1316 bytes in live mode).
    pub fn send(&self, data: &[u8]) -> Result<usize, SrtError> {
        match self.sendmsg(data) {
            SRT_ERROR => Err(err()),
            r => Ok(r as usize),
        }
    }

    /// Sends one message without building an error message: the hot
    /// path of a non-blocking (SRTO_SNDSYN false) socket, where a full
    /// send buffer (SRT_EASYNCSND) is routine. Err carries libsrt's code.
    pub fn try_send(&self, data: &[u8]) -> Result<usize, i32> {
        let r = self.sendmsg(data);
        if r == SRT_ERROR {
            // SAFETY: a null errno pointer is allowed; clearing resets the
            // thread-local error state.
            let code = unsafe {
                let c = srt_getlasterror(std::ptr::null_mut());
                srt_clearlasterror();
                c
            };
            return Err(code);
        }
        Ok(r as usize)
    }

    fn sendmsg(&self, data: &[u8]) -> c_int {
        // SAFETY: data is a live slice of data.len() bytes; a null mctrl
        // means default message control.
        unsafe {
            srt_sendmsg2(
                self.0,
                data.as_ptr().cast(),
                data.len() as c_int,
                std::ptr::null_mut(),
            )
        }
    }

    /// Receives one message into `buf`; Ok(0) never happens in live mode.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, SrtError> {
        // SAFETY: buf is a live writable slice; libsrt writes at most len.
        let r = unsafe { srt_recvmsg(self.0, buf.as_mut_ptr().cast(), buf.len() as c_int) };
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(r as usize)
    }

    pub fn stats(&self) -> Option<PerfMon> {
        let mut p = PerfMon::default();
        // SAFETY: p is a live, properly laid out CBytePerfMon.
        let r = unsafe { srt_bistats(self.0, &mut p, 0, 1) };
        (r != SRT_ERROR).then_some(p)
    }

    /// Installs a listen callback that accepts or rejects each caller by
    /// its streamid before the handshake completes.
    ///
    /// The returned guard owns the callback's state and must outlive the
    /// listener socket: drop the `Socket` first (libsrt stops calling the
    /// hook once the listener is closed).
    pub fn set_listen_callback<F>(&self, f: F) -> Result<ListenHook, SrtError>
    where
        F: Fn(Option<SocketAddr>, Option<&str>) -> bool + Send + Sync + 'static,
    {
        let boxed: Box<HookFn> = Box::new(Box::new(f));
        let raw = Box::into_raw(boxed);
        // SAFETY: `raw` stays valid until the ListenHook is dropped, which
        // the caller guarantees happens after the listener is closed; the
        // trampoline only reads through it.
        let r = unsafe { srt_listen_callback(self.0, trampoline, raw.cast()) };
        let hook = ListenHook(raw);
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(hook)
    }
}

type HookFn = Box<dyn Fn(Option<SocketAddr>, Option<&str>) -> bool + Send + Sync>;

/// Owner of a listen callback's state (see `set_listen_callback`).
pub struct ListenHook(*mut HookFn);

// SAFETY: the pointee is Send + Sync (required by set_listen_callback).
unsafe impl Send for ListenHook {}

impl Drop for ListenHook {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::into_raw in
        // set_listen_callback and is freed exactly once, here.
        unsafe { drop(Box::from_raw(self.0)) }
    }
}

/// libsrt's listen callback: hands the caller's address and streamid to the
/// Rust closure installed by `set_listen_callback`.
///
/// # Safety
/// Called by libsrt with `opaq` the `HookFn` pointer from
/// `set_listen_callback` (alive while the listener exists), `peer` null or a
/// sockaddr of the listener's family, `streamid` null or a NUL-terminated
/// string, each valid for the duration of the call.
unsafe extern "C" fn trampoline(
    opaq: *mut c_void,
    _ns: SrtSocket,
    _hsversion: c_int,
    peer: *const SockAddrStorage,
    streamid: *const c_char,
) -> c_int {
    // SAFETY: opaq is the HookFn pointer installed by set_listen_callback,
    // alive while the listener exists.
    let f = unsafe { &*(opaq as *const HookFn) };
    let sid = if streamid.is_null() {
        None
    } else {
        // SAFETY: libsrt passes a NUL-terminated streamid string valid for
        // the duration of the callback.
        unsafe { CStr::from_ptr(streamid) }.to_str().ok()
    };
    let peer = if peer.is_null() {
        None
    } else {
        // SAFETY: libsrt passes a sockaddr of the listener's family; we
        // copy at most sockaddr_storage bytes into an owned SockAddr.
        unsafe {
            let family = (*(peer as *const libc_sa::SaFamily)).0;
            let len = if i32::from(family) == libc_sa::AF_INET6 {
                28
            } else {
                16
            };
            let mut st = SockAddrStorage::zeroed();
            std::ptr::copy_nonoverlapping(
                peer.cast::<u8>(),
                (&mut st as *mut SockAddrStorage).cast::<u8>(),
                len,
            );
            SockAddr::new(st, len as _).as_socket()
        }
    };
    // A panic must not unwind into C.
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f(peer, sid.filter(|s| !s.is_empty()))
    }))
    .unwrap_or(false);
    if ok {
        0
    } else {
        -1
    }
}

/// The first field of a sockaddr on Linux (`sa_family_t`, u16).
mod libc_sa {
    #[repr(C)]
    pub struct SaFamily(pub u16);
    pub const AF_INET6: i32 = 10;
}

/// An SRT epoll set (waits on SRT sockets only; UDP inputs never go here).
pub struct Epoll(c_int);

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own this epoll id.
        unsafe {
            srt_epoll_release(self.0);
        }
    }
}

impl Epoll {
    pub fn new() -> Result<Epoll, SrtError> {
        startup();
        // SAFETY: no arguments.
        let e = unsafe { srt_epoll_create() };
        if e < 0 {
            return Err(err());
        }
        Ok(Epoll(e))
    }

    /// Watches `s` for readability (accept on listeners) and errors.
    pub fn add_in(&self, s: &Socket) -> Result<(), SrtError> {
        let ev = SRT_EPOLL_IN | SRT_EPOLL_ERR;
        // SAFETY: ev is a live int for the call.
        let r = unsafe { srt_epoll_add_usock(self.0, s.0, &ev) };
        if r == SRT_ERROR {
            return Err(err());
        }
        Ok(())
    }

    /// Waits up to `ms` milliseconds and writes the ids of ready sockets
    /// into `ready`; returns how many it wrote.
    pub fn ready(&self, ms: i64, ready: &mut [SrtSocket]) -> usize {
        let mut evs = [const { EpollEvent { fd: 0, events: 0 } }; 16];
        // SAFETY: evs is a live array of 16 events and we pass its length.
        let n = unsafe { srt_epoll_uwait(self.0, evs.as_mut_ptr(), evs.len() as c_int, ms) };
        if n <= 0 {
            let _ = last_error();
            return 0;
        }
        let n = (n as usize).min(evs.len()).min(ready.len());
        for (r, e) in ready.iter_mut().zip(&evs[..n]) {
            *r = e.fd;
        }
        n
    }

    /// True when a watched socket is ready within `ms` milliseconds.
    pub fn wait(&self, ms: i64) -> bool {
        let mut evs = [
            EpollEvent { fd: 0, events: 0 },
            EpollEvent { fd: 0, events: 0 },
        ];
        // SAFETY: evs is a live array of 2 events and we pass its length.
        let n = unsafe { srt_epoll_uwait(self.0, evs.as_mut_ptr(), evs.len() as c_int, ms) };
        if n <= 0 {
            // Timeouts set an error code; clear it so it does not confuse
            // the next real error.
            let _ = last_error();
        }
        n > 0
    }
}
