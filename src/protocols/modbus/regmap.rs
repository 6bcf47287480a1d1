//! The register map at run time: per-table lookup of mapped registers, and the value <-> register encodings (scale, 16/32-bit, word order, saturation, quality).

use crate::points::{
    ModbusField, ModbusMap, ModbusRegister, ModbusTable, PointDef, PointState, Quality, RegType,
    Value,
};

use super::frame::Exception;

/// Registers of one table sorted by offset, for range lookups by binary search.
#[derive(Debug, Clone, Default)]
pub struct Table {
    regs: Vec<ModbusRegister>,
}

impl Table {
    /// The registers covering every address of `[start, start + qty)`, in
    /// order. The first one may begin before `start` (the second word of a
    /// 32-bit value) and the last may end after the range. Any address in
    /// the range that no register covers is exception 02.
    pub fn span(&self, start: u16, qty: u16) -> Result<&[ModbusRegister], Exception> {
        let start = u32::from(start);
        let end = start + u32::from(qty);
        let first = self
            .regs
            .partition_point(|r| u32::from(r.offset) + u32::from(r.reg_type.width()) <= start);
        let mut next = start;
        let mut last = first;
        for (i, r) in self.regs.iter().enumerate().skip(first) {
            if next >= end {
                break;
            }
            if u32::from(r.offset) > next {
                return Err(Exception::IllegalDataAddress);
            }
            next = u32::from(r.offset) + u32::from(r.reg_type.width());
            last = i + 1;
        }
        if next < end {
            return Err(Exception::IllegalDataAddress);
        }
        self.regs
            .get(first..last)
            .ok_or(Exception::IllegalDataAddress)
    }
}

/// The four tables of the validated map.
#[derive(Debug, Clone, Default)]
pub struct RegisterMap {
    pub coils: Table,
    pub discrete: Table,
    pub input: Table,
    pub holding: Table,
    pub write_priority: u8,
}

impl RegisterMap {
    pub fn new(map: &ModbusMap) -> Self {
        let mut m = RegisterMap {
            write_priority: map.write_priority,
            ..RegisterMap::default()
        };
        for r in &map.registers {
            let t = match r.table {
                ModbusTable::Coil => &mut m.coils,
                ModbusTable::Discrete => &mut m.discrete,
                ModbusTable::Input => &mut m.input,
                ModbusTable::Holding => &mut m.holding,
            };
            t.regs.push(r.clone());
        }
        // The config validator already rejects overlaps; sorting here keeps
        // `span` correct even for a map built by hand (tests).
        for t in [&mut m.coils, &mut m.discrete, &mut m.input, &mut m.holding] {
            t.regs.sort_by_key(|r| r.offset);
        }
        m
    }
}

/// The bit a coil or discrete input shows. A point with no value reads 0;
/// its quality bit / register tells a PLC that 0 is not a real reading.
pub fn encode_bit(reg: &ModbusRegister, st: &PointState) -> bool {
    match reg.field {
        ModbusField::Value => st.value.map(|v| v.as_bool()).unwrap_or(false),
        ModbusField::QualityOk => st.quality == Quality::Ok,
        ModbusField::Quality => st.quality != Quality::Ok,
    }
}

/// The one or two registers a register entry shows (the second word is
/// meaningful only for 32-bit types). Values beyond the type's range
/// saturate at its limits; a missing value reads 0 in integer forms and NaN
/// in f32 (the quality registers say why). An enum point with an N/A state
/// never gets here without a value: the service substitutes that ordinal.
pub fn encode_words(reg: &ModbusRegister, st: &PointState) -> [u16; 2] {
    let x = match reg.field {
        ModbusField::Value => match st.value {
            Some(v) => v.as_f64() * reg.scale,
            None if reg.reg_type == RegType::F32 => f64::NAN,
            None => 0.0,
        },
        ModbusField::Quality => f64::from(st.quality.code()),
        ModbusField::QualityOk => f64::from(u8::from(st.quality == Quality::Ok)),
    };
    encode_number(reg, x)
}

/// Encodes an already scaled number. Rust's float-to-int `as` casts saturate
/// at the target's limits and map NaN to 0, which is exactly the documented
/// behaviour; rounding first gives the nearest step instead of truncation.
pub fn encode_number(reg: &ModbusRegister, x: f64) -> [u16; 2] {
    let r = x.round();
    match reg.reg_type {
        RegType::Bit | RegType::U16 => [r as u16, 0],
        RegType::I16 => [(r as i16) as u16, 0],
        RegType::U32 => reg.word_order.to_registers((r as u32).to_be_bytes()),
        RegType::I32 => reg.word_order.to_registers((r as i32).to_be_bytes()),
        // f32 keeps fractions; values beyond f32 become +-inf, never wrap.
        RegType::F32 => reg.word_order.to_registers((x as f32).to_be_bytes()),
    }
}

/// The engineering value a client wrote to a register entry, before the
/// point's own kind and range checks.
pub fn decode_words(reg: &ModbusRegister, w: [u16; 2]) -> Result<f64, Exception> {
    let raw = match reg.reg_type {
        RegType::Bit | RegType::U16 => f64::from(w[0]),
        RegType::I16 => f64::from(w[0] as i16),
        RegType::U32 => f64::from(u32::from_be_bytes(reg.word_order.from_registers(w))),
        RegType::I32 => f64::from(i32::from_be_bytes(reg.word_order.from_registers(w))),
        RegType::F32 => {
            let f = f32::from_be_bytes(reg.word_order.from_registers(w));
            if !f.is_finite() {
                return Err(Exception::IllegalDataValue);
            }
            f64::from(f)
        }
    };
    Ok(raw / reg.scale)
}

/// Converts a written number into the point's value, applying the same
/// kind and range rules as every other protocol; refusals are exception 03.
pub fn to_point_value(def: &PointDef, x: f64) -> Result<Value, Exception> {
    // `coerce` takes 0/1 for bool points and exact ordinals for enum points,
    // so a scaled register that lands between two states is refused, not rounded.
    def.coerce(Value::Number(x))
        .map_err(|_| Exception::IllegalDataValue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::points::{PointId, WordOrder};
    use chrono::Utc;

    fn reg(offset: u16, t: RegType, scale: f64, wo: WordOrder) -> ModbusRegister {
        ModbusRegister {
            point: PointId(0),
            table: ModbusTable::Input,
            number: 30001 + u32::from(offset),
            offset,
            reg_type: t,
            scale,
            word_order: wo,
            field: ModbusField::Value,
            writable: false,
        }
    }

    fn state(v: Option<f64>, q: Quality) -> PointState {
        PointState {
            value: v.map(Value::Number),
            quality: q,
            reason: None,
            updated: Utc::now(),
            level: None,
        }
    }

    #[test]
    fn saturates_never_wraps() {
        let ok = Quality::Ok;
        let u16r = reg(0, RegType::U16, 1.0, WordOrder::Abcd);
        assert_eq!(encode_words(&u16r, &state(Some(100_000.0), ok))[0], 65535);
        assert_eq!(encode_words(&u16r, &state(Some(-5.0), ok))[0], 0);
        let i16r = reg(0, RegType::I16, 1.0, WordOrder::Abcd);
        assert_eq!(encode_words(&i16r, &state(Some(40_000.0), ok))[0], 0x7FFF);
        assert_eq!(encode_words(&i16r, &state(Some(-40_000.0), ok))[0], 0x8000);
        let scaled = reg(0, RegType::U16, 100.0, WordOrder::Abcd);
        assert_eq!(encode_words(&scaled, &state(Some(12.345), ok))[0], 1235);
        assert_eq!(encode_words(&scaled, &state(Some(700.0), ok))[0], 65535);
        let u32r = reg(0, RegType::U32, 1.0, WordOrder::Abcd);
        assert_eq!(
            encode_words(&u32r, &state(Some(999_999.0), ok)),
            [0x000F, 0x423F]
        );
        assert_eq!(
            encode_words(&u32r, &state(Some(1e12), ok)),
            [0xFFFF, 0xFFFF]
        );
        let i32r = reg(0, RegType::I32, 1.0, WordOrder::Cdab);
        assert_eq!(
            encode_words(&i32r, &state(Some(-1e12), ok)),
            [0x0000, 0x8000]
        );
    }

    #[test]
    fn missing_values_and_quality() {
        let f = reg(0, RegType::F32, 1.0, WordOrder::Abcd);
        let w = encode_words(&f, &state(None, Quality::Unavailable));
        assert!(f32::from_be_bytes(WordOrder::Abcd.from_registers(w)).is_nan());
        let u = reg(0, RegType::U16, 1.0, WordOrder::Abcd);
        assert_eq!(encode_words(&u, &state(None, Quality::Unavailable))[0], 0);
        let mut q = u.clone();
        q.field = ModbusField::Quality;
        assert_eq!(encode_words(&q, &state(None, Quality::Unavailable))[0], 3);
        assert_eq!(encode_words(&q, &state(Some(1.0), Quality::Stale))[0], 1);
    }

    #[test]
    fn words_round_trip_in_every_order() {
        for wo in [
            WordOrder::Abcd,
            WordOrder::Cdab,
            WordOrder::Badc,
            WordOrder::Dcba,
        ] {
            for t in [RegType::U32, RegType::I32, RegType::F32] {
                let r = reg(0, t, 1.0, wo);
                let w = encode_number(&r, 70_000.0);
                assert_eq!(decode_words(&r, w), Ok(70_000.0), "{wo:?} {t:?}");
            }
        }
        let f = reg(0, RegType::F32, 1.0, WordOrder::Abcd);
        assert_eq!(
            decode_words(&f, [0x7FC0, 0]),
            Err(Exception::IllegalDataValue)
        );
    }

    /// Enum ordinals and set-points out of range are 03 through the same
    /// `coerce` every protocol uses (no enum point is writable in the seed
    /// map, so this is where the enum rule is pinned).
    #[test]
    fn written_values_follow_the_point_rules() {
        let c = crate::config::Config::embedded().expect("embedded config");
        let def = |id: &str| c.points.iter().find(|p| p.id == id).expect("point");
        let st = def("server_status");
        assert_eq!(to_point_value(st, 2.0), Ok(Value::Enum(2)));
        for bad in [0.0, 4.0, 1.5, -1.0, 65536.0] {
            assert_eq!(
                to_point_value(st, bad),
                Err(Exception::IllegalDataValue),
                "{bad}"
            );
        }
        let sel = def("input_select");
        assert_eq!(to_point_value(sel, 16.0), Ok(Value::Number(16.0)));
        assert_eq!(to_point_value(sel, 17.0), Err(Exception::IllegalDataValue));
        let en = def("stream_enable");
        assert_eq!(to_point_value(en, 1.0), Ok(Value::Bool(true)));
        assert_eq!(to_point_value(en, 2.0), Err(Exception::IllegalDataValue));
    }

    #[test]
    fn spans_find_gaps_and_split_32_bit_values() {
        let map = ModbusMap {
            registers: vec![
                reg(0, RegType::U16, 1.0, WordOrder::Abcd),
                reg(1, RegType::F32, 1.0, WordOrder::Abcd),
                reg(5, RegType::U16, 1.0, WordOrder::Abcd),
            ],
            ..ModbusMap::default()
        };
        let m = RegisterMap::new(&map);
        assert_eq!(m.input.span(0, 3).map(|s| s.len()), Ok(2));
        assert_eq!(m.input.span(2, 1).map(|s| s[0].offset), Ok(1));
        assert_eq!(m.input.span(0, 4), Err(Exception::IllegalDataAddress));
        assert_eq!(m.input.span(3, 1), Err(Exception::IllegalDataAddress));
        assert_eq!(m.input.span(5, 1).map(|s| s.len()), Ok(1));
        assert_eq!(m.input.span(5, 2), Err(Exception::IllegalDataAddress));
        assert_eq!(m.input.span(65535, 1), Err(Exception::IllegalDataAddress));
        assert_eq!(m.holding.span(0, 1), Err(Exception::IllegalDataAddress));
    }
}
