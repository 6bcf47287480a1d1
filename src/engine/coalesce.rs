//! UDP send coalescing: holds a route's passthrough data for its direct UDP outputs for at most a bounded time, so that one GSO send per output carries several datagrams. The kernel's per-datagram send cost dominates a wide UDP fan-out; pairing datagrams nearly halves it, at the price of a bounded added latency.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::output::DATAGRAM;

/// A route's `udp_coalesce` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coalesce {
    /// Every chunk is sent as it arrives.
    Off,
    /// Hold up to `AUTO_HOLD` when the route has at least `AUTO_MIN_OUTPUTS`
    /// enabled UDP outputs (where the saving is worth the latency).
    #[default]
    Auto,
    /// Hold up to this long, whatever the number of outputs.
    Hold(Duration),
}

/// The hold `auto` uses: at 10 Mbit/s datagrams are ~1.05 ms apart, so
/// this pairs them while keeping the added latency under 2 ms at p99.
pub const AUTO_HOLD: Duration = Duration::from_micros(1500);
/// Fewer UDP outputs than this: `auto` sends at once. Measured with one
/// output at 10 Mbit/s (bench/udp_hold.py, issue 25): a 1 ms hold, which
/// also paces the input (`route::read_pace`), saved about 0.4 % of a core
/// (2.8 -> 2.4 %, within the run-to-run spread) but moved p99 from 0.5 to
/// 4.1 ms, because the runtime's timer rounds sleeps up to whole
/// milliseconds: not worth it as a default.
pub const AUTO_MIN_OUTPUTS: usize = 32;
/// The longest hold a route may ask for.
pub const MAX_HOLD: Duration = Duration::from_millis(20);
/// Enough bytes pending: send now (a GSO send's upper bound is far above;
/// this keeps the burst handed to a receiver modest).
const FLUSH_BYTES: usize = 32 * DATAGRAM;

impl Coalesce {
    /// The hold that applies with `udp_outputs` enabled direct UDP outputs.
    pub fn hold(self, udp_outputs: usize) -> Option<Duration> {
        match self {
            Coalesce::Off => None,
            Coalesce::Auto => (udp_outputs >= AUTO_MIN_OUTPUTS).then_some(AUTO_HOLD),
            Coalesce::Hold(d) => Some(d),
        }
    }
}

/// Pending data for the direct UDP outputs of one stream.
pub struct Coalescer {
    buf: BytesMut,
    /// Arrival of the oldest pending byte.
    first: Option<Instant>,
    last_arrival: Option<Instant>,
    /// Smoothed spacing of arrivals: holding only pays when the next
    /// chunk is expected within the hold.
    gap: Option<Duration>,
    /// The hold in force for what is pending.
    hold: Duration,
    /// What the pending data was fanned out with (flushed when it changes).
    pub tag: (Option<u16>, bool),
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: BytesMut::new(),
            first: None,
            last_arrival: None,
            gap: None,
            hold: Duration::ZERO,
            tag: (None, false),
        }
    }
}

impl Coalescer {
    /// The time by which pending data must be sent, if any is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.first.map(|f| f + self.hold)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes what is pending.
    pub fn take(&mut self) -> Option<Bytes> {
        self.first = None;
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    /// A chunk arrived at `now`: returns what should be sent now (the chunk
    /// itself, or everything pending with it), or None when it is held.
    pub fn push(&mut self, chunk: &Bytes, now: Instant, hold: Option<Duration>) -> Option<Bytes> {
        if let Some(l) = self.last_arrival {
            let g = now.saturating_duration_since(l);
            // EWMA with weight 1/8: steady against jitter, follows a rate
            // change within a few dozen chunks.
            self.gap = Some(match self.gap {
                Some(a) => (a * 7 + g) / 8,
                None => g,
            });
        }
        self.last_arrival = Some(now);
        let Some(hold) = hold else {
            return self.send_now(chunk);
        };
        let next_in = self.gap.unwrap_or(Duration::MAX);
        if self.buf.is_empty() {
            // Hold only if a partner is expected in time, and the chunk is
            // not already a batch.
            if next_in >= hold || chunk.len() >= 2 * DATAGRAM {
                return Some(chunk.clone());
            }
            self.buf.extend_from_slice(chunk);
            self.first = Some(now);
            self.hold = hold;
            return None;
        }
        self.buf.extend_from_slice(chunk);
        let age = self
            .first
            .map_or(Duration::ZERO, |f| now.saturating_duration_since(f));
        // Send when one more chunk would make the oldest wait too long, or
        // when enough is pending.
        if age.saturating_add(next_in) >= hold || self.buf.len() >= FLUSH_BYTES {
            return self.take();
        }
        None
    }

    /// No coalescing: whatever is pending goes out first, in order.
    fn send_now(&mut self, chunk: &Bytes) -> Option<Bytes> {
        if self.buf.is_empty() {
            return Some(chunk.clone());
        }
        self.buf.extend_from_slice(chunk);
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(n: usize) -> Bytes {
        vec![0x47u8; n * DATAGRAM].into()
    }

    #[test]
    fn pairs_evenly_paced_datagrams_within_the_hold() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        let step = Duration::from_micros(1050);
        let hold = Some(AUTO_HOLD);
        let mut sent = Vec::new();
        for i in 0..20u32 {
            if let Some(b) = c.push(&dg(1), t0 + step * i, hold) {
                sent.push((i, b.len() / DATAGRAM));
            }
        }
        // The first two arrive before the spacing is known; from then on
        // every send carries two datagrams, and nothing waits past the hold.
        assert!(sent[2..].iter().all(|&(_, n)| n == 2), "{sent:?}");
        let total: usize = sent.iter().map(|s| s.1).sum::<usize>() + c.buf.len() / DATAGRAM;
        assert_eq!(total, 20);
        assert!(c.deadline().is_none_or(|d| d <= t0 + step * 19 + AUTO_HOLD));
    }

    #[test]
    fn sparse_input_and_batches_are_not_held() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        let hold = Some(AUTO_HOLD);
        // 5 ms apart (about 2 Mbit/s): waiting would buy nothing.
        for i in 0..10u32 {
            let b = c.push(&dg(1), t0 + Duration::from_millis(5) * i, hold);
            assert_eq!(b.map(|b| b.len()), Some(DATAGRAM), "chunk {i}");
        }
        // A chunk that is already several datagrams goes at once, even
        // when chunks come close together.
        let mut c = Coalescer::default();
        c.push(&dg(1), t0, hold);
        let b = c.push(&dg(3), t0 + Duration::from_micros(100), hold);
        assert_eq!(b.map(|b| b.len()), Some(3 * DATAGRAM));
    }

    #[test]
    fn high_rates_batch_more_but_never_past_the_hold_or_the_byte_cap() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        let step = Duration::from_micros(100);
        let mut biggest = 0;
        let mut pending_since = None;
        for i in 0..500u32 {
            let now = t0 + step * i;
            match c.push(&dg(1), now, Some(Duration::from_millis(2))) {
                Some(b) => {
                    biggest = biggest.max(b.len());
                    if let Some(s) = pending_since.take() {
                        assert!(now - s < Duration::from_millis(2));
                    }
                }
                None => {
                    pending_since.get_or_insert(now);
                }
            }
        }
        assert!(
            biggest > 2 * DATAGRAM && biggest <= FLUSH_BYTES,
            "{biggest}"
        );
    }

    #[test]
    fn off_and_auto_below_the_output_threshold_send_at_once() {
        assert_eq!(Coalesce::Off.hold(100), None);
        assert_eq!(Coalesce::Auto.hold(0), None);
        assert_eq!(Coalesce::Auto.hold(AUTO_MIN_OUTPUTS - 1), None);
        assert_eq!(Coalesce::Auto.hold(AUTO_MIN_OUTPUTS), Some(AUTO_HOLD));
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        for i in 0..5u32 {
            assert!(c
                .push(&dg(1), t0 + Duration::from_micros(100) * i, None)
                .is_some());
        }
    }
}
