//! Route point blocks on Modbus (issue 20): the registers of every reserved route slot, generated from the route template by fixed rules, at `base + slot * stride` in each table.
//!
//! Inside a block (offsets from the block's start, points in block id
//! order, see docs/route-points.md):
//! - input registers: every number measurement as f32 (two registers,
//!   the map's default word order) from +0, then the quality code of
//!   every block point (contiguous: one read covers the table's block);
//! - holding registers: every status and every number/enum command as u16
//!   from +0 (statuses read-only, commands writable; an unavailable status
//!   reads its "N/A" ordinal, as on the server's registers);
//! - coils: every bool command from +0;
//! - discrete inputs: the "quality ok" bit of every block point from +0.
//!
//! Registers of every slot are generated once at start (ids never move);
//! the service refuses those of a free slot with exception 02.

/// The register layout itself is a pure rule of the route template: it
/// lives in the point database, shared with the REST API and the config.
pub use crate::points::route_addresses::{modicon6, route_registers};
use crate::points::{ModbusRegister, ModbusTable};

/// The first register of `table` that two entries both occupy, if any.
pub fn overlap(regs: &[ModbusRegister]) -> Option<(ModbusTable, u32)> {
    for table in [
        ModbusTable::Input,
        ModbusTable::Holding,
        ModbusTable::Coil,
        ModbusTable::Discrete,
    ] {
        let mut v: Vec<(u32, u32)> = regs
            .iter()
            .filter(|r| r.table == table)
            .map(|r| (u32::from(r.offset), u32::from(r.reg_type.width())))
            .collect();
        v.sort_unstable();
        for w in v.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Some((table, table.base() + w[1].0));
            }
        }
    }
    None
}
