//! Validated per-protocol address maps (from `mappings/*.toml`), resolved to point ids so protocol servers never look up strings.

use super::model::PointId;

/// BACnet object types castpoint publishes for points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BacnetObjectType {
    AnalogInput,
    AnalogValue,
    BinaryOutput,
    BinaryValue,
    MultiStateValue,
}

impl BacnetObjectType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "analog-input" => Self::AnalogInput,
            "analog-value" => Self::AnalogValue,
            "binary-output" => Self::BinaryOutput,
            "binary-value" => Self::BinaryValue,
            "multi-state-value" => Self::MultiStateValue,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AnalogInput => "analog-input",
            Self::AnalogValue => "analog-value",
            Self::BinaryOutput => "binary-output",
            Self::BinaryValue => "binary-value",
            Self::MultiStateValue => "multi-state-value",
        }
    }

    /// Short form used in documents and the seed table (AI0, BO0, MSV1).
    pub fn short(self) -> &'static str {
        match self {
            Self::AnalogInput => "AI",
            Self::AnalogValue => "AV",
            Self::BinaryOutput => "BO",
            Self::BinaryValue => "BV",
            Self::MultiStateValue => "MSV",
        }
    }

    /// Whether objects of this type carry a priority array in castpoint.
    pub fn commandable(self) -> bool {
        matches!(
            self,
            Self::AnalogValue | Self::BinaryOutput | Self::BinaryValue
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BacnetObject {
    pub point: PointId,
    pub object_type: BacnetObjectType,
    pub instance: u32,
    /// BACnet engineering-units name overriding the point's unit.
    pub units: Option<String>,
}

/// One BACnet Trend Log object: the history of one mapped measurement,
/// logging that object's Present_Value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BacnetTrendLog {
    pub point: PointId,
    /// Trend Log instance: the logged object's own instance (TL0 logs AI0).
    pub instance: u32,
    /// The object whose Present_Value the log references.
    pub logged_type: BacnetObjectType,
    pub logged_instance: u32,
}

/// Largest `[trend_log] buffer_size` (records per log): bounds memory.
pub const MAX_TREND_BUFFER: u32 = 100_000;
/// Default `[trend_log] buffer_size`.
pub const DEFAULT_TREND_BUFFER: u32 = 10_000;
/// Default `[trend_log] route_buffer_size`: 1,000 records, <= 48 KiB per
/// route log (docs/route-points.md, "Trend Logs").
pub const DEFAULT_ROUTE_TREND_BUFFER: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BacnetMap {
    /// Publish no-units instead of the 2024 bit-rate units.
    pub bitrate_units_fallback: bool,
    pub objects: Vec<BacnetObject>,
    /// Trend Log objects, in map order of the objects they log.
    pub trend_logs: Vec<BacnetTrendLog>,
    /// Buffer_Size of every Trend Log (records), 1..=[`MAX_TREND_BUFFER`].
    pub trend_buffer_size: u32,
    /// Buffer_Size of the route measurements' Trend Logs,
    /// 0..=[`MAX_TREND_BUFFER`] (0: routes have none).
    pub route_trend_buffer_size: u32,
}

/// Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModbusTable {
    /// 0xxxx, FC01/05/15.
    Coil,
    /// 1xxxx, FC02.
    Discrete,
    /// 3xxxx, FC04.
    Input,
    /// 4xxxx, FC03/06/16/23.
    Holding,
}

impl ModbusTable {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "coil" => Self::Coil,
            "discrete" => Self::Discrete,
            "input" => Self::Input,
            "holding" => Self::Holding,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coil => "coil",
            Self::Discrete => "discrete",
            Self::Input => "input",
            Self::Holding => "holding",
        }
    }

    /// The first 1-based Modicon number of the table (00001, 10001, 30001, 40001).
    pub fn base(self) -> u32 {
        match self {
            Self::Coil => 1,
            Self::Discrete => 10001,
            Self::Input => 30001,
            Self::Holding => 40001,
        }
    }

    pub fn is_bit(self) -> bool {
        matches!(self, Self::Coil | Self::Discrete)
    }
}

/// Register encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegType {
    /// Single bit (coils, discrete inputs).
    Bit,
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl RegType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "u16" => Self::U16,
            "i16" => Self::I16,
            "u32" => Self::U32,
            "i32" => Self::I32,
            "f32" => Self::F32,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bit => "bit",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
        }
    }

    /// Registers (or bits) the type occupies.
    pub fn width(self) -> u16 {
        match self {
            Self::Bit | Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
        }
    }
}

/// Order of the four bytes of a 32-bit value across two registers, named by
/// where the big-endian bytes A B C D land (ABCD = big-endian, high word first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WordOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl WordOrder {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "ABCD" => Self::Abcd,
            "CDAB" => Self::Cdab,
            "BADC" => Self::Badc,
            "DCBA" => Self::Dcba,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Abcd => "ABCD",
            Self::Cdab => "CDAB",
            Self::Badc => "BADC",
            Self::Dcba => "DCBA",
        }
    }

    /// Splits big-endian bytes into two registers in this order.
    pub fn to_registers(self, be: [u8; 4]) -> [u16; 2] {
        let [a, b, c, d] = be;
        let (w0, w1) = match self {
            Self::Abcd => ([a, b], [c, d]),
            Self::Cdab => ([c, d], [a, b]),
            Self::Badc => ([b, a], [d, c]),
            Self::Dcba => ([d, c], [b, a]),
        };
        [u16::from_be_bytes(w0), u16::from_be_bytes(w1)]
    }

    /// Inverse of [`WordOrder::to_registers`].
    pub fn from_registers(self, regs: [u16; 2]) -> [u8; 4] {
        let [p, q] = regs[0].to_be_bytes();
        let [r, s] = regs[1].to_be_bytes();
        match self {
            Self::Abcd => [p, q, r, s],
            Self::Cdab => [r, s, p, q],
            Self::Badc => [q, p, s, r],
            Self::Dcba => [s, r, q, p],
        }
    }
}

/// What a register publishes about its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModbusField {
    /// The point's value (resolved value for commands).
    Value,
    /// The point's quality code (0 ok .. 4 overridden).
    Quality,
    /// 1 when the point's quality is ok (discrete inputs).
    QualityOk,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusRegister {
    pub point: PointId,
    pub table: ModbusTable,
    /// 1-based Modicon number as written in the map (30001).
    pub number: u32,
    /// 0-based protocol offset (number - table base).
    pub offset: u16,
    pub reg_type: RegType,
    /// register = value * scale.
    pub scale: f64,
    pub word_order: WordOrder,
    pub field: ModbusField,
    /// Writes allowed (coil or holding register of a writable point's value).
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModbusMap {
    pub word_order: WordOrder,
    pub write_priority: u8,
    pub registers: Vec<ModbusRegister>,
    /// Where route point blocks go (`[route_blocks]`, issue 20).
    pub route_blocks: ModbusRouteBlocks,
}

/// Route blocks on Modbus: the block of slot `s` starts at protocol offset
/// `base + s * stride` in each table (docs/route-points.md has the layout
/// inside a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModbusRouteBlocks {
    pub enabled: bool,
    pub input_base: u16,
    pub holding_base: u16,
    pub coil_base: u16,
    pub discrete_base: u16,
    pub stride: u16,
}

impl Default for ModbusRouteBlocks {
    fn default() -> Self {
        ModbusRouteBlocks {
            enabled: true,
            input_base: 1000,
            holding_base: 1000,
            coil_base: 1000,
            discrete_base: 1000,
            stride: 100,
        }
    }
}

/// HTTP methods used in the HTTP map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpMethod {
    Get,
    Post,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpEndpoint {
    pub point: PointId,
    pub method: HttpMethod,
    pub path: String,
    /// For POST endpoints with a fixed command (stream start / stop).
    pub value: Option<super::model::Value>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpMap {
    pub endpoints: Vec<HttpEndpoint>,
}

/// All three maps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Maps {
    pub bacnet: BacnetMap,
    pub modbus: ModbusMap,
    pub http: HttpMap,
}

impl Maps {
    /// BACnet short address of a point (`AI0`), for docs and Haystack tags.
    pub fn bacnet_address(&self, id: PointId) -> Option<String> {
        self.bacnet
            .objects
            .iter()
            .find(|o| o.point == id)
            .map(|o| format!("{}{}", o.object_type.short(), o.instance))
    }

    /// Modbus numbers of a point's value registers (`30001`, `30101`, `00001`).
    pub fn modbus_addresses(&self, id: PointId) -> Vec<String> {
        self.modbus
            .registers
            .iter()
            .filter(|r| r.point == id && r.field == ModbusField::Value)
            .map(|r| format!("{:05}", r.number))
            .collect()
    }

    /// HTTP paths of a point (GET first).
    pub fn http_paths(&self, id: PointId) -> Vec<(HttpMethod, String)> {
        let mut v: Vec<_> = self
            .http
            .endpoints
            .iter()
            .filter(|e| e.point == id)
            .map(|e| (e.method, e.path.clone()))
            .collect();
        v.sort_by_key(|(m, _)| *m == HttpMethod::Post);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_orders_round_trip_and_match_names() {
        let be = 1.5f32.to_be_bytes(); // 3F C0 00 00
        assert_eq!(WordOrder::Abcd.to_registers(be), [0x3FC0, 0x0000]);
        assert_eq!(WordOrder::Cdab.to_registers(be), [0x0000, 0x3FC0]);
        assert_eq!(WordOrder::Badc.to_registers(be), [0xC03F, 0x0000]);
        assert_eq!(WordOrder::Dcba.to_registers(be), [0x0000, 0xC03F]);
        for wo in [
            WordOrder::Abcd,
            WordOrder::Cdab,
            WordOrder::Badc,
            WordOrder::Dcba,
        ] {
            let bytes = [1, 2, 3, 4];
            assert_eq!(wo.from_registers(wo.to_registers(bytes)), bytes);
        }
    }
}
