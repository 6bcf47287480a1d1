//! Where a route block's points sit on each protocol (docs/route-points.md): the BACnet object type and instance rule, and the Modbus register layout; pure functions of the route template, shared by the protocol servers, the config check, the REST API and the exports.

use super::routes::RouteTemplate;
use super::{
    BacnetObjectType, Kind, ModbusField, ModbusRegister, ModbusRouteBlocks, ModbusTable, PointDef,
    PointId, RegType, Role, WordOrder,
};

/// Where route objects go: `base + slot x stride + k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceRule {
    pub base: u32,
    pub stride: u32,
}

impl InstanceRule {
    /// Instance of block point `k` of slot `slot`.
    pub fn instance(self, slot: u16, k: usize) -> u64 {
        u64::from(self.base) + u64::from(slot) * u64::from(self.stride) + k as u64
    }
}

/// The BACnet object type of a route template point, and whether it is
/// commandable.
pub fn type_of(def: &PointDef) -> (BacnetObjectType, bool) {
    match (def.writable, def.kind) {
        (true, Kind::Bool) => (BacnetObjectType::BinaryOutput, true),
        (true, Kind::Number) => (BacnetObjectType::AnalogValue, true),
        (true, Kind::Enum) => (BacnetObjectType::MultiStateValue, true),
        (false, Kind::Number) => (BacnetObjectType::AnalogInput, false),
        (false, Kind::Enum) => (BacnetObjectType::MultiStateValue, false),
        (false, Kind::Bool) => (BacnetObjectType::BinaryValue, false),
    }
}

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
