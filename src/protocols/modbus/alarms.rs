//! The Modbus alarm summary block: input registers at a fixed offset (60000, Modicon 360001) holding the active and unacknowledged alarm counts and one bit per alarm-capable point, read from the alarm runtime at each request.
//!
//! Layout (offsets from [`BASE`]; docs/modbus-map.md, "Alarm summary"):
//! - +0: points whose alarm is not NORMAL (active count);
//! - +1: points with a transition awaiting its acknowledgement;
//! - +2: alarm-capable points `N` (how many bits below mean something);
//! - +3..+15: reserved, read 0;
//! - +16..+143: "active" bits: point `i` (0-based, in point-id order: the
//!   server's points, then route slot 1's, slot 2's, ...) is bit `i % 16`
//!   (LSB first) of register `+16 + i / 16`;
//! - +144..+271: "unacknowledged" bits, the same way from +144.
//!
//! So 2048 points fit ([`MAX_POINTS`]; more are counted in +0/+1 but have
//! no bit). The block is far above the seed map (offsets < 1000) and the
//! route blocks (1000 + 128 x 100 by default): `Service::new` disables it,
//! loudly, if a configured map reaches it.

use crate::alarms::Alarms;
use crate::points::alarm::{EventState, TransitionKind};
use crate::points::PointId;

/// First input register of the block (protocol offset).
pub const BASE: u16 = 60_000;
/// Registers in the block.
pub const LEN: u16 = 272;
/// Offset of the active bits, and of the unacknowledged bits.
pub const ACTIVE_BITS: u16 = 16;
pub const UNACKED_BITS: u16 = 144;
/// Points with a bit of their own.
pub const MAX_POINTS: usize = 2048;

/// The block over the alarm runtime.
pub struct AlarmBlock {
    alarms: Alarms,
    /// The alarm-capable points, in point-id order.
    points: Vec<PointId>,
}

impl AlarmBlock {
    pub fn new(alarms: Alarms) -> AlarmBlock {
        let mut points: Vec<PointId> = alarms.points().map(|(p, _)| p).collect();
        points.sort_by_key(|p| p.index());
        if points.len() > MAX_POINTS {
            tracing::warn!(
                "modbus alarm block: {} alarm-capable points, only the first {MAX_POINTS} have a bit (the counts include all)",
                points.len()
            );
        }
        AlarmBlock { alarms, points }
    }

    /// Whether a register range (input registers) touches the block.
    pub fn touches(addr: u16, qty: u16) -> bool {
        let (a, end) = (u32::from(addr), u32::from(addr) + u32::from(qty));
        a < u32::from(BASE) + u32::from(LEN) && end > u32::from(BASE)
    }

    /// Whether the range lies inside the block.
    pub fn within(addr: u16, qty: u16) -> bool {
        addr >= BASE && u32::from(addr) + u32::from(qty) <= u32::from(BASE) + u32::from(LEN)
    }

    /// The whole block now.
    pub fn words(&self) -> Vec<u16> {
        let mut w = vec![0u16; usize::from(LEN)];
        let (active, unacked) = self.alarms.counts();
        let sat = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        w[0] = sat(active);
        w[1] = sat(unacked);
        w[2] = sat(self.points.len());
        for (i, p) in self.points.iter().take(MAX_POINTS).enumerate() {
            // A free route slot's points have no alarm (bits 0).
            let Some(st) = self
                .alarms
                .state(*p)
                .filter(|_| self.alarms.db().is_present(*p))
            else {
                continue;
            };
            let bit = 1u16 << (i % 16);
            if st.event_state != EventState::Normal {
                w[usize::from(ACTIVE_BITS) + i / 16] |= bit;
            }
            if TransitionKind::ALL.iter().any(|k| !st.acked.get(*k)) {
                w[usize::from(UNACKED_BITS) + i / 16] |= bit;
            }
        }
        w
    }

    /// Registers `addr .. addr + qty` (inside the block: check [`within`](Self::within)).
    pub fn read(&self, addr: u16, qty: u16) -> Vec<u16> {
        let from = usize::from(addr.saturating_sub(BASE));
        let to = (from + usize::from(qty)).min(usize::from(LEN));
        self.words()[from..to].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(AlarmBlock::within(BASE, 125));
        assert!(AlarmBlock::within(BASE + LEN - 1, 1));
        assert!(!AlarmBlock::within(BASE + LEN - 1, 2));
        assert!(!AlarmBlock::within(BASE - 1, 2));
        assert!(AlarmBlock::touches(BASE - 1, 2));
        assert!(AlarmBlock::touches(BASE + LEN - 1, 5));
        assert!(!AlarmBlock::touches(BASE - 10, 10));
        assert!(!AlarmBlock::touches(BASE + LEN, 10));
        assert!(!AlarmBlock::touches(65_535, 1));
    }
}
