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

use crate::points::routes::RouteTemplate;
use crate::points::{
    Kind, ModbusField, ModbusRegister, ModbusRouteBlocks, ModbusTable, PointId, RegType, Role,
    WordOrder,
};

/// The registers of every reserved slot; `first` is the id of slot 1's
/// first point (the number of server points). Err names what does not fit.
pub fn route_registers(
    tpl: &RouteTemplate,
    first: usize,
    rb: &ModbusRouteBlocks,
    word_order: WordOrder,
) -> Result<Vec<ModbusRegister>, String> {
    if !rb.enabled {
        return Ok(Vec::new());
    }
    let layout = tpl.layout();
    let stride = u32::from(rb.stride);
    // Per table: (relative offset, block index, type, field, writable).
    let mut rel: Vec<(ModbusTable, u32, usize, RegType, ModbusField, bool)> = Vec::new();
    let (mut inp, mut hold, mut coil) = (0u32, 0u32, 0u32);
    for (k, &(t, _)) in layout.iter().enumerate() {
        let d = &tpl.points[t].def;
        match (d.role, d.kind) {
            (Role::Measurement, Kind::Number) => {
                rel.push((
                    ModbusTable::Input,
                    inp,
                    k,
                    RegType::F32,
                    ModbusField::Value,
                    false,
                ));
                inp += 2;
            }
            (Role::Command, Kind::Bool) => {
                rel.push((
                    ModbusTable::Coil,
                    coil,
                    k,
                    RegType::Bit,
                    ModbusField::Value,
                    true,
                ));
                coil += 1;
            }
            (Role::Command, _) => {
                rel.push((
                    ModbusTable::Holding,
                    hold,
                    k,
                    RegType::U16,
                    ModbusField::Value,
                    true,
                ));
                hold += 1;
            }
            (_, Kind::Bool) => {
                rel.push((
                    ModbusTable::Discrete,
                    0,
                    k,
                    RegType::Bit,
                    ModbusField::Value,
                    false,
                ));
            }
            _ => {
                rel.push((
                    ModbusTable::Holding,
                    hold,
                    k,
                    RegType::U16,
                    ModbusField::Value,
                    false,
                ));
                hold += 1;
            }
        }
    }
    // Quality codes right after the measurements: one block of a table is
    // one contiguous read.
    let q0 = inp;
    let n = layout.len() as u32;
    if q0 + n > stride || hold > stride || coil > stride || n > stride {
        return Err(format!(
            "route_blocks.stride {stride} is too small for the route template ({inp} measurement registers, {n} quality registers from +{q0}, {hold} holding, {coil} coils)"
        ));
    }
    // Status bools (none in the shipped template) have no register of
    // their own: their discrete "value" entry above is dropped; the
    // quality bits below cover every point.
    rel.retain(|r| !(r.0 == ModbusTable::Discrete && r.4 == ModbusField::Value));
    for k in 0..layout.len() {
        rel.push((
            ModbusTable::Input,
            q0 + k as u32,
            k,
            RegType::U16,
            ModbusField::Quality,
            false,
        ));
        rel.push((
            ModbusTable::Discrete,
            k as u32,
            k,
            RegType::Bit,
            ModbusField::QualityOk,
            false,
        ));
    }
    let mut out = Vec::with_capacity(rel.len() * usize::from(tpl.max_slots));
    for slot in 1..=u32::from(tpl.max_slots) {
        for &(table, off, k, reg_type, field, writable) in &rel {
            let base = u32::from(match table {
                ModbusTable::Input => rb.input_base,
                ModbusTable::Holding => rb.holding_base,
                ModbusTable::Coil => rb.coil_base,
                ModbusTable::Discrete => rb.discrete_base,
            });
            let offset = base + slot * stride + off;
            let offset = u16::try_from(offset + u32::from(reg_type.width()) - 1)
                .map(|_| offset as u16)
                .map_err(|_| {
                    format!(
                        "route slot {slot} does not fit the {} table (base {base} + slot x stride {stride} beyond offset 65535): lower [route_points] max_routes or the stride",
                        table.as_str()
                    )
                })?;
            let id = first + (slot as usize - 1) * layout.len() + k;
            out.push(ModbusRegister {
                point: PointId(u16::try_from(id).map_err(|_| "too many points".to_string())?),
                table,
                number: modicon6(table) + u32::from(offset),
                offset,
                reg_type,
                scale: 1.0,
                word_order,
                field,
                writable,
            });
        }
    }
    Ok(out)
}

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

/// 6-digit Modicon base of a table (route blocks lie beyond the 5-digit
/// numbers' 9,999 registers): 000001, 100001, 300001, 400001.
pub fn modicon6(table: ModbusTable) -> u32 {
    match table {
        ModbusTable::Coil => 1,
        ModbusTable::Discrete => 100_001,
        ModbusTable::Input => 300_001,
        ModbusTable::Holding => 400_001,
    }
}
