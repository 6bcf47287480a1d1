//! Per-input and per-output counters (lock-free atomics written by the data plane, the engine's and the media adapters' alike) and the bit-rate meter; the engine turns them into the snapshots the API and the point bridge read.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// Counters of one input or output. The data plane only does relaxed
/// atomic adds; the once-a-second sampler derives bit rates.
#[derive(Default, Debug)]
pub struct IoStats {
    pub bytes: AtomicU64,
    pub packets: AtomicU64,
    pub cc_errors: AtomicU64,
    /// Whole chunks (and the TS packets in them) a slow consumer lost.
    pub dropped_chunks: AtomicU64,
    pub dropped_packets: AtomicU64,
    /// Video frames lost to drops (output) or continuity gaps (input).
    pub frames_lost: AtomicU64,
    /// Peers refused after the handshake (SRT listeners: wrong key length).
    pub rejected: AtomicU64,
    /// Connected clients (HTTP-TS viewers, SRT callers on a listener) or
    /// 1 for a connected SRT caller / sending UDP socket.
    pub clients: AtomicU64,
    pub bitrate_bps: AtomicU64,
    /// How `bitrate_bps` is measured (see `RateMeter`).
    rate: Mutex<RateState>,
    /// Sends the OS refused (a UDP output to a port nobody listens on gets
    /// ECONNREFUSED from the ICMP port-unreachable): not delivered, never
    /// counted in `bytes`.
    pub send_errors: AtomicU64,
    /// The last send error's text (kept after the output recovers).
    pub last_send_error: Mutex<Option<String>>,
    /// Set once the socket is bound/connected; cleared on failure.
    pub up: AtomicBool,
    /// Last error (bind failure, connection refused, ...).
    pub error: Mutex<Option<String>>,
    /// Bound local address (inputs and listeners bound to port 0).
    pub local: Mutex<Option<SocketAddr>>,
    /// SRT statistics per connection (empty for other protocols).
    pub srt: Mutex<Vec<SrtConnStats>>,
    /// The connected publisher (RTMP ingest).
    pub peer: Mutex<Option<SocketAddr>>,
}

impl IoStats {
    #[inline]
    pub fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.packets
            .fetch_add((bytes / super::ts::TS) as u64, Relaxed);
    }

    pub fn dropped(&self, bytes: usize) {
        self.dropped_chunks.fetch_add(1, Relaxed);
        self.dropped_packets
            .fetch_add((bytes / super::ts::TS) as u64, Relaxed);
    }

    pub fn set_error(&self, e: impl Into<String>) {
        self.up.store(false, Relaxed);
        *self.error.lock() = Some(e.into());
    }

    pub fn set_up(&self, local: Option<SocketAddr>) {
        self.up.store(true, Relaxed);
        *self.error.lock() = None;
        if local.is_some() {
            *self.local.lock() = local;
        }
    }

    /// Called once a second: credits the bytes counted since the last call
    /// evenly over that second and recomputes `bitrate_bps` over the
    /// window (`RATE_WINDOW`, ending `lag` ago).
    pub fn sample(&self, now: Instant) {
        let mut guard = self.rate.lock();
        let st = &mut *guard;
        let b = self.bytes.load(Relaxed);
        let lag = st.lag;
        let meter = st
            .meter
            .get_or_insert_with(|| RateMeter::new(now, RATE_WINDOW, lag));
        if let Some(t) = st.last_at {
            // Bytes a producer credited itself (`add_spread`) are already in.
            let fresh = b.saturating_sub(st.last_bytes + st.credited);
            meter.credit(t, now, fresh as f64);
        }
        st.last_at = Some(now);
        st.last_bytes = b;
        st.credited = 0;
        let bps = meter.rate_bps(now.checked_sub(lag).unwrap_or(now));
        self.bitrate_bps.store(bps.round() as u64, Relaxed);
    }

    /// Measures this output's rate over a window ending `lag` ago: for
    /// outputs that credit bytes to the span of stream they carry
    /// (`add_spread`), once every client has had the time to fetch it.
    pub fn set_rate_lag(&self, lag: Duration) {
        let mut st = self.rate.lock();
        st.lag = lag;
        st.meter = Some(RateMeter::new(Instant::now(), RATE_WINDOW, lag));
    }

    /// `bytes` delivered that carry the stream received from `start` to
    /// `end` (an HLS segment served to a client): counted now, credited to
    /// that span for the bit rate, so a client fetching a 2 s segment every
    /// 2 s reads as a steady rate whatever its fetch timing.
    pub fn add_spread(&self, bytes: usize, start: Instant, end: Instant) {
        let mut guard = self.rate.lock();
        let st = &mut *guard;
        // Under the lock, so `sample` sees the bytes and their credit
        // together and never counts them twice.
        self.add(bytes);
        st.credited += bytes as u64;
        let lag = st.lag;
        st.meter
            .get_or_insert_with(|| RateMeter::new(Instant::now(), RATE_WINDOW, lag))
            .credit(start, end, bytes as f64);
    }

    /// A send the OS refused: counted, and its text kept.
    pub fn send_error(&self, e: &std::io::Error) {
        self.send_errors.fetch_add(1, Relaxed);
        *self.last_send_error.lock() = Some(e.to_string());
    }
}

/// The window every bit rate is measured over: long enough that a steady
/// stream read once a second varies by far less than 1%, short enough to
/// follow a change within a few seconds.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Default, Debug)]
struct RateState {
    meter: Option<RateMeter>,
    last_at: Option<Instant>,
    last_bytes: u64,
    /// Bytes credited by `add_spread` since the last sample.
    credited: u64,
    lag: Duration,
}

/// Resolution of a `RateMeter`'s history.
const BUCKET: Duration = Duration::from_millis(100);

/// A windowed bit-rate estimator, sans-IO: bytes are credited to the span of
/// time they belong to (a second of a counter, the stretch of stream an HLS
/// segment carries), spread evenly over it in 100 ms buckets, and the rate
/// is what falls inside the window. Crediting a burst to the time it
/// represents rather than the moment it was delivered is what keeps a
/// bursty delivery of a constant stream steady.
#[derive(Debug)]
pub struct RateMeter {
    born: Instant,
    window: Duration,
    /// Bytes per bucket, oldest first; the last is bucket `head`.
    buckets: VecDeque<f64>,
    /// Index (since `born`) of the newest bucket.
    head: u64,
    /// Buckets kept: the window plus the lag it is read with.
    keep: usize,
}

impl RateMeter {
    /// A meter read over `window`, at most `lag` in the past.
    pub fn new(born: Instant, window: Duration, lag: Duration) -> Self {
        let keep = ((window + lag).as_nanos() / BUCKET.as_nanos()) as usize + 2;
        RateMeter {
            born,
            window,
            buckets: VecDeque::from(vec![0.0]),
            head: 0,
            keep,
        }
    }

    fn index(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.born).as_nanos() / BUCKET.as_nanos()) as u64
    }

    fn bucket_start(&self, i: u64) -> Instant {
        self.born + BUCKET * (i as u32)
    }

    fn advance(&mut self, i: u64) {
        while self.head < i {
            self.head += 1;
            self.buckets.push_back(0.0);
            if self.buckets.len() > self.keep {
                self.buckets.pop_front();
            }
        }
    }

    /// `bytes` spread evenly over `[start, end]` (`start == end`: at one
    /// instant). What falls before the kept history is forgotten.
    pub fn credit(&mut self, start: Instant, end: Instant, bytes: f64) {
        // NaN and nothing both credit nothing.
        if bytes.is_nan() || bytes <= 0.0 || end < start {
            return;
        }
        let start = start.max(self.born);
        let end = end.max(start);
        let last = self.index(end);
        self.advance(last);
        let oldest = self.head + 1 - self.buckets.len() as u64;
        let span = (end - start).as_secs_f64();
        if span <= 0.0 {
            if last >= oldest {
                let k = (last - oldest) as usize;
                self.buckets[k] += bytes;
            }
            return;
        }
        for i in self.index(start).max(oldest)..=last {
            let b0 = self.bucket_start(i).max(start);
            let b1 = (self.bucket_start(i) + BUCKET).min(end);
            if b1 > b0 {
                let k = (i - oldest) as usize;
                self.buckets[k] += bytes * (b1 - b0).as_secs_f64() / span;
            }
        }
    }

    /// Bits per second over the window ending at `at` (shorter while the
    /// meter is younger than the window).
    pub fn rate_bps(&self, at: Instant) -> f64 {
        let from = at
            .checked_sub(self.window)
            .unwrap_or(self.born)
            .max(self.born);
        if at <= from {
            return 0.0;
        }
        let oldest = self.head + 1 - self.buckets.len() as u64;
        let mut sum = 0.0;
        for i in self.index(from).max(oldest)..=self.index(at).min(self.head) {
            let b = self.buckets[(i - oldest) as usize];
            if i == self.head {
                // The newest bucket holds only what was credited up to
                // now: all of it is inside the window.
                sum += b;
                continue;
            }
            let s = self.bucket_start(i);
            let lo = s.max(from);
            let hi = (s + BUCKET).min(at);
            if hi > lo {
                sum += b * (hi - lo).as_secs_f64() / BUCKET.as_secs_f64();
            }
        }
        sum * 8.0 / (at - from).as_secs_f64()
    }
}

/// What libsrt's `srt_bistats` reports for one connection.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SrtConnStats {
    pub peer: Option<SocketAddr>,
    pub streamid: Option<String>,
    /// AES key length in bytes the connection uses (0 = unencrypted).
    pub pbkeylen: i32,
    pub rtt_ms: f64,
    /// Estimated link bandwidth.
    pub bandwidth_mbps: f64,
    pub send_rate_mbps: f64,
    pub recv_rate_mbps: f64,
    pub pkt_sent: i64,
    pub pkt_recv: i64,
    pub pkt_snd_loss: i32,
    pub pkt_rcv_loss: i32,
    pub pkt_retrans: i32,
    pub pkt_rcv_drop: i32,
    pub pkt_snd_drop: i32,
    pub flight_size: i32,
    pub snd_buf_ms: i32,
    pub rcv_buf_ms: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: f64 = 10e6;

    /// (max - min) / mean of the samples.
    fn spread(v: &[f64]) -> f64 {
        let max = v.iter().cloned().fold(f64::MIN, f64::max);
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        (max - min) / (v.iter().sum::<f64>() / v.len() as f64)
    }

    /// A 10 Mbit/s stream cut into 2 s segments, fetched by `clients`
    /// players each up to 1.5 s after the cut (varying), read once a second
    /// for a minute the way the engine reads an HLS output.
    fn hls_minute(clients: u32) -> (Vec<f64>, Vec<f64>) {
        let t0 = Instant::now();
        let lag = Duration::from_secs(5);
        let s = IoStats::default();
        s.set_rate_lag(lag);
        let seg = 2.0;
        let bytes = (RATE / 8.0 * seg) as usize;
        // (fetch time, segment start, segment end)
        let mut fetches = Vec::new();
        for c in 0..clients {
            for k in 0..40u32 {
                let start = f64::from(k) * seg;
                let jitter = f64::from((k * 7 + c * 3) % 15) / 10.0;
                fetches.push((start + seg + jitter, start, start + seg));
            }
        }
        fetches.sort_by(|a, b| a.0.total_cmp(&b.0));
        let at = |x: f64| t0 + Duration::from_secs_f64(x);
        let (mut rates, mut naive) = (Vec::new(), Vec::new());
        let mut next = 0;
        let mut last_bytes = 0;
        for sec in 1..=70u32 {
            let now = f64::from(sec);
            while next < fetches.len() && fetches[next].0 <= now {
                let (_, a, b) = fetches[next];
                s.add_spread(bytes, at(a), at(b));
                next += 1;
            }
            s.sample(at(now));
            // Warm-up: the lag plus the window.
            if sec > 12 && sec <= 72 {
                rates.push(s.bitrate_bps.load(Relaxed) as f64);
                let b = s.bytes.load(Relaxed);
                naive.push((b - last_bytes) as f64 * 8.0);
            }
            last_bytes = s.bytes.load(Relaxed);
        }
        (rates, naive)
    }

    #[test]
    fn segment_bursts_of_a_constant_stream_read_steady() {
        let (rates, naive) = hls_minute(1);
        eprintln!(
            "1 client: windowed spread {:.3}%, per-second count spread {:.0}%",
            spread(&rates) * 100.0,
            spread(&naive) * 100.0
        );
        // Counting bytes in the second they were delivered swings between
        // nothing and twice the rate (the symptom of issue 16).
        assert!(spread(&naive) > 1.0, "{naive:?}");
        assert!(spread(&rates) < 0.02, "{rates:?}");
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        assert!((mean - RATE).abs() < RATE * 0.01, "{mean}");
    }

    #[test]
    fn clients_out_of_phase_add_up_steadily() {
        let (rates, _) = hls_minute(3);
        eprintln!("3 clients: spread {:.3}%", spread(&rates) * 100.0);
        assert!(spread(&rates) < 0.02, "{rates:?}");
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        assert!((mean - 3.0 * RATE).abs() < RATE * 0.03, "{mean}");
    }

    #[test]
    fn a_counter_read_with_jittered_ticks_is_steady_and_falls_to_zero_when_idle() {
        let t0 = Instant::now();
        let s = IoStats::default();
        let mut rates = Vec::new();
        let mut sent = 0.0;
        for sec in 0..60u32 {
            // The sampler's tick wanders by up to 40 ms.
            let now = f64::from(sec) + f64::from((sec * 13) % 5) * 0.01;
            let due = RATE / 8.0 * now;
            s.add((due - sent) as usize);
            sent += ((due - sent) as usize) as f64;
            s.sample(t0 + Duration::from_secs_f64(now));
            if sec >= 6 {
                rates.push(s.bitrate_bps.load(Relaxed) as f64);
            }
        }
        eprintln!("counter: spread {:.3}%", spread(&rates) * 100.0);
        assert!(spread(&rates) < 0.02, "{rates:?}");
        // The source stops: within the window the rate reads zero.
        for sec in 60..67u32 {
            s.sample(t0 + Duration::from_secs(u64::from(sec)));
        }
        assert_eq!(s.bitrate_bps.load(Relaxed), 0);
    }

    #[test]
    fn a_young_meter_reads_the_rate_so_far_not_a_diluted_one() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0, RATE_WINDOW, Duration::ZERO);
        let t1 = t0 + Duration::from_secs(1);
        m.credit(t0, t1, RATE / 8.0);
        let r = m.rate_bps(t1);
        assert!((r - RATE).abs() < RATE * 0.01, "{r}");
        // Credits before the kept history, or empty, change nothing.
        m.credit(t0, t0, 0.0);
        assert_eq!(m.rate_bps(t1), r);
    }
}
