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
    let rel = block_registers(tpl, u32::from(rb.stride))?;
    slot_registers(tpl, first, rb, word_order, &rel)
}

/// One register of a route block, relative to the block's start in its
/// table: the same for every slot.
#[derive(Debug, Clone, Copy)]
struct BlockReg {
    table: ModbusTable,
    /// Offset from the slot's block start in `table`.
    off: u32,
    /// Index of the point in the template layout.
    k: usize,
    reg_type: RegType,
    field: ModbusField,
    writable: bool,
}

impl BlockReg {
    fn new(
        table: ModbusTable,
        off: u32,
        k: usize,
        reg_type: RegType,
        field: ModbusField,
        writable: bool,
    ) -> Self {
        Self {
            table,
            off,
            k,
            reg_type,
            field,
            writable,
        }
    }
}

/// The registers of one block (values, then quality codes and bits), or
/// Err when they do not fit the stride.
fn block_registers(tpl: &RouteTemplate, stride: u32) -> Result<Vec<BlockReg>, String> {
    let layout = tpl.layout();
    let (mut rel, inp, hold, coil) = value_registers(tpl, &layout);
    // Quality codes right after the measurements: one block of a table is
    // one contiguous read.
    let q0 = inp;
    let n = layout.len() as u32;
    if q0 + n > stride || hold > stride || coil > stride || n > stride {
        return Err(format!(
            "route_blocks.stride {stride} is too small for the route template ({inp} measurement registers, {n} quality registers from +{q0}, {hold} holding, {coil} coils)"
        ));
    }
    for k in 0..layout.len() {
        rel.push(BlockReg::new(
            ModbusTable::Input,
            q0 + k as u32,
            k,
            RegType::U16,
            ModbusField::Quality,
            false,
        ));
        rel.push(BlockReg::new(
            ModbusTable::Discrete,
            k as u32,
            k,
            RegType::Bit,
            ModbusField::QualityOk,
            false,
        ));
    }
    Ok(rel)
}

/// The value register of each layout point, by role and kind, with the
/// number of input, holding and coil registers they take.
fn value_registers(
    tpl: &RouteTemplate,
    layout: &[(usize, Option<u16>)],
) -> (Vec<BlockReg>, u32, u32, u32) {
    let mut rel = Vec::new();
    let (mut inp, mut hold, mut coil) = (0u32, 0u32, 0u32);
    for (k, &(t, _)) in layout.iter().enumerate() {
        let d = &tpl.points[t].def;
        let (table, reg_type, writable) = match (d.role, d.kind) {
            (Role::Measurement, Kind::Number) => (ModbusTable::Input, RegType::F32, false),
            (Role::Command, Kind::Bool) => (ModbusTable::Coil, RegType::Bit, true),
            (Role::Command, _) => (ModbusTable::Holding, RegType::U16, true),
            // Status bools (none in the shipped template) have no register
            // of their own: the quality bits cover every point.
            (_, Kind::Bool) => continue,
            _ => (ModbusTable::Holding, RegType::U16, false),
        };
        let next = match table {
            ModbusTable::Input => &mut inp,
            ModbusTable::Coil => &mut coil,
            _ => &mut hold,
        };
        rel.push(BlockReg::new(
            table,
            *next,
            k,
            reg_type,
            ModbusField::Value,
            writable,
        ));
        *next += u32::from(reg_type.width());
    }
    (rel, inp, hold, coil)
}

/// The block registers `rel` laid out for every slot, or Err when a slot
/// lies beyond a table's last offset or a point id beyond u16.
fn slot_registers(
    tpl: &RouteTemplate,
    first: usize,
    rb: &ModbusRouteBlocks,
    word_order: WordOrder,
    rel: &[BlockReg],
) -> Result<Vec<ModbusRegister>, String> {
    let stride = u32::from(rb.stride);
    let per_slot = tpl.layout().len();
    let mut out = Vec::with_capacity(rel.len() * usize::from(tpl.max_slots));
    for slot in 1..=u32::from(tpl.max_slots) {
        for r in rel {
            let table = r.table;
            let base = u32::from(match table {
                ModbusTable::Input => rb.input_base,
                ModbusTable::Holding => rb.holding_base,
                ModbusTable::Coil => rb.coil_base,
                ModbusTable::Discrete => rb.discrete_base,
            });
            let offset = base + slot * stride + r.off;
            let offset = u16::try_from(offset + u32::from(r.reg_type.width()) - 1)
                .map(|_| offset as u16)
                .map_err(|_| {
                    format!(
                        "route slot {slot} does not fit the {} table (base {base} + slot x stride {stride} beyond offset 65535): lower [route_points] max_routes or the stride",
                        table.as_str()
                    )
                })?;
            let id = first + (slot as usize - 1) * per_slot + r.k;
            out.push(ModbusRegister {
                point: PointId(u16::try_from(id).map_err(|_| "too many points".to_string())?),
                table,
                number: modicon6(table) + u32::from(offset),
                offset,
                reg_type: r.reg_type,
                scale: 1.0,
                word_order,
                field: r.field,
                writable: r.writable,
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
