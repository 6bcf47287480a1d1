//! Encoding latency measured through a child: the wall-clock time from the input video frame with PTS p entering ffmpeg's stdin to the output frame with PTS p (timestamps kept by `-copyts`) leaving its stdout.

use std::collections::VecDeque;
use std::time::Instant;

use crate::mpegts::ts::{self, PsiTracker, TS};

/// Input frames remembered (about 10 s at 50 fps).
const KEEP: usize = 512;
const WRAP: u64 = 1 << 33;

#[derive(Default)]
pub struct LatencyMeter {
    psi_in: PsiTracker,
    psi_out: PsiTracker,
    seen: VecDeque<(u64, Instant)>,
    /// Smoothed latency (ms) and when it was last updated.
    current: Option<(f64, Instant)>,
}

/// PTS of a PES starting in this packet of `pid`, if it carries one.
pub fn pes_pts(p: &[u8], pid: u16) -> Option<u64> {
    if p.len() < TS || ts::pid(p) != pid || !ts::pusi(p) {
        return None;
    }
    let pl = ts::payload(p)?;
    if pl.len() < 14 || pl[0..3] != [0, 0, 1] || pl[7] & 0x80 == 0 {
        return None;
    }
    let b = &pl[9..14];
    Some(
        (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1),
    )
}

/// Distance of two PTS on the 33-bit circle.
fn dist(a: u64, b: u64) -> u64 {
    let d = a.wrapping_sub(b) & (WRAP - 1);
    d.min(WRAP - d)
}

impl std::fmt::Debug for LatencyMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyMeter")
            .field("current", &self.current.map(|c| c.0))
            .finish()
    }
}

impl LatencyMeter {
    pub fn reset(&mut self) {
        *self = LatencyMeter::default();
    }

    /// Bytes written to the child's stdin now.
    pub fn input(&mut self, chunk: &[u8]) {
        self.psi_in.observe(chunk);
        let Some((v, _)) = self.psi_in.video else {
            return;
        };
        let now = Instant::now();
        for p in chunk.chunks_exact(TS) {
            if let Some(pts) = pes_pts(p, v) {
                if self.seen.len() >= KEEP {
                    self.seen.pop_front();
                }
                self.seen.push_back((pts, now));
            }
        }
    }

    /// Bytes read from the child's stdout now.
    pub fn output(&mut self, chunk: &[u8]) {
        self.psi_out.observe(chunk);
        let Some((v, _)) = self.psi_out.video else {
            return;
        };
        let now = Instant::now();
        for p in chunk.chunks_exact(TS) {
            let Some(pts) = pes_pts(p, v) else { continue };
            // Output timestamps are the input's (-copyts) snapped to the
            // output frame grid (rounded to the nearest frame), so the
            // matching input frame is the nearest one within 100 ms; frames
            // are in decode order, so search every remembered one.
            let hit = self
                .seen
                .iter()
                .enumerate()
                .map(|(i, (ip, _))| (i, dist(*ip, pts)))
                .filter(|(_, d)| *d <= 9_000)
                .min_by_key(|(_, d)| *d)
                .map(|(i, _)| i);
            if let Some(i) = hit {
                let ms = now.duration_since(self.seen[i].1).as_secs_f64() * 1000.0;
                let s = match self.current {
                    Some((c, _)) => c * 0.8 + ms * 0.2,
                    None => ms,
                };
                self.current = Some((s, now));
                // Older inputs can no longer match later outputs.
                self.seen.drain(..i);
            }
        }
    }

    /// The smoothed latency, if measured within the last 3 s.
    pub fn current_ms(&self) -> Option<f64> {
        self.current
            .filter(|(_, t)| t.elapsed().as_secs() < 3)
            .map(|(c, _)| (c * 10.0).round() / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pes_packet(pid: u16, pts: u64) -> [u8; TS] {
        let mut p = [0xFFu8; TS];
        p[0] = 0x47;
        p[1] = 0x40 | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x10;
        let h = [
            0,
            0,
            1,
            0xE0,
            0,
            0,
            0x80,
            0x80,
            5,
            (((pts >> 30) as u8 & 7) << 1) | 0x21,
            (pts >> 22) as u8,
            (((pts >> 15) as u8) << 1) | 1,
            (pts >> 7) as u8,
            ((pts as u8) << 1) | 1,
        ];
        p[4..4 + h.len()].copy_from_slice(&h);
        p
    }

    #[test]
    fn pts_roundtrip() {
        for pts in [0u64, 1, 90_000, (1 << 33) - 1, 123_456_789] {
            assert_eq!(pes_pts(&pes_packet(0x100, pts), 0x100), Some(pts));
        }
        assert_eq!(pes_pts(&pes_packet(0x100, 5), 0x101), None);
    }

    #[test]
    fn wrap_distance() {
        assert_eq!(dist(10, 5), 5);
        assert_eq!(dist(5, 10), 5);
        assert_eq!(dist(3, WRAP - 3), 6);
    }

    #[test]
    fn matches_the_nearest_input_frame() {
        let mut m = LatencyMeter::default();
        // No PSI: nothing is measured (the video PID is unknown).
        m.input(&pes_packet(0x100, 128_090));
        assert!(m.seen.is_empty());
        assert_eq!(m.current_ms(), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_packets_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..(TS * 6))) {
            let mut m = LatencyMeter::default();
            m.input(&data);
            m.output(&data);
            for p in data.chunks(TS) {
                let _ = pes_pts(p, 0x100);
            }
        }
    }
}
