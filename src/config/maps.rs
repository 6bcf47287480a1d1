//! Parses and validates the protocol mapping files (`mappings/bacnet.toml`, `modbus.toml`, `http.toml`) against the point list.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::points::toml_to_value;
use super::{ConfigError, Errors};
use crate::points::{
    BacnetMap, BacnetObject, BacnetObjectType, BacnetTrendLog, HttpEndpoint, HttpMap, HttpMethod,
    Kind, ModbusField, ModbusMap, ModbusRegister, ModbusTable, PointDef, PointId, RegType, Role,
    WordOrder, DEFAULT_ROUTE_TREND_BUFFER, DEFAULT_TREND_BUFFER, MAX_TREND_BUFFER,
};

/// Point ids by name, for resolving mapping references.
pub struct PointIndex<'a> {
    pub defs: &'a [PointDef],
    by_id: HashMap<&'a str, PointId>,
}

impl<'a> PointIndex<'a> {
    pub fn new(defs: &'a [PointDef]) -> Self {
        let by_id = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), PointId(i as u16)))
            .collect();
        PointIndex { defs, by_id }
    }

    fn resolve(&self, file: &str, key: String, id: &str, errs: &mut Errors) -> Option<PointId> {
        let r = self.by_id.get(id).copied();
        if r.is_none() {
            errs.push(ConfigError::new(file, key, format!("unknown point {id:?}")));
        }
        r
    }

    fn def(&self, id: PointId) -> &PointDef {
        &self.defs[id.index()]
    }
}

// ------------------------------------------------------------------ BACnet

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BacnetFile {
    #[serde(default)]
    options: BacnetOptions,
    #[serde(default)]
    trend_log: TrendLogOptions,
    #[serde(default)]
    object: Vec<BacnetRaw>,
}

/// `[trend_log]`: one Trend Log object per mapped `his` measurement.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrendLogOptions {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_trend_buffer")]
    buffer_size: i64,
    /// Records per route measurement's log (0: routes have no Trend Logs).
    #[serde(default = "default_route_trend_buffer")]
    route_buffer_size: i64,
}

impl Default for TrendLogOptions {
    fn default() -> Self {
        TrendLogOptions {
            enabled: true,
            buffer_size: i64::from(DEFAULT_TREND_BUFFER),
            route_buffer_size: i64::from(DEFAULT_ROUTE_TREND_BUFFER),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_trend_buffer() -> i64 {
    i64::from(DEFAULT_TREND_BUFFER)
}

fn default_route_trend_buffer() -> i64 {
    i64::from(DEFAULT_ROUTE_TREND_BUFFER)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BacnetOptions {
    #[serde(default)]
    bitrate_units_fallback: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BacnetRaw {
    point: String,
    #[serde(rename = "type")]
    object_type: String,
    instance: u32,
    units: Option<String>,
    /// Per-object override of `[trend_log] enabled` (only `his` measurements).
    trend_log: Option<bool>,
}

/// Largest BACnet object instance (22 bits, 4194303 is "unconfigured").
const MAX_INSTANCE: u32 = 4_194_302;

pub fn parse_bacnet(file: &str, text: &str, pts: &PointIndex, errs: &mut Errors) -> BacnetMap {
    let raw: BacnetFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            errs.push(ConfigError::from_toml(file, text, &e));
            return BacnetMap::default();
        }
    };
    let tl = &raw.trend_log;
    let trend_buffer_size = match u32::try_from(tl.buffer_size) {
        Ok(n) if (1..=MAX_TREND_BUFFER).contains(&n) => n,
        _ => {
            errs.push(ConfigError::new(
                file,
                "trend_log.buffer_size".to_string(),
                format!(
                    "{} records: must be 1..={MAX_TREND_BUFFER} (memory is bounded per log)",
                    tl.buffer_size
                ),
            ));
            DEFAULT_TREND_BUFFER
        }
    };
    let route_trend_buffer_size = match u32::try_from(tl.route_buffer_size) {
        Ok(n) if n <= MAX_TREND_BUFFER => n,
        _ => {
            errs.push(ConfigError::new(
                file,
                "trend_log.route_buffer_size".to_string(),
                format!(
                    "{} records: must be 0..={MAX_TREND_BUFFER} (0: no route Trend Logs)",
                    tl.route_buffer_size
                ),
            ));
            DEFAULT_ROUTE_TREND_BUFFER
        }
    };
    let mut map = BacnetMap {
        bitrate_units_fallback: raw.options.bitrate_units_fallback,
        objects: Vec::new(),
        trend_logs: Vec::new(),
        trend_buffer_size,
        route_trend_buffer_size,
    };
    let mut seen_log: HashMap<u32, usize> = HashMap::new();
    let mut seen_addr: HashMap<(BacnetObjectType, u32), usize> = HashMap::new();
    let mut seen_point: HashMap<PointId, usize> = HashMap::new();
    for (i, o) in raw.object.iter().enumerate() {
        let key = |k: &str| format!("object[{i}].{k}");
        let Some(ot) = BacnetObjectType::parse(&o.object_type) else {
            errs.push(ConfigError::new(
                file,
                key("type"),
                format!(
                    "unknown object type {:?} (analog-input, analog-value, binary-output, binary-value, multi-state-value)",
                    o.object_type
                ),
            ));
            continue;
        };
        if o.instance > MAX_INSTANCE {
            errs.push(ConfigError::new(
                file,
                key("instance"),
                format!("instance {} is above {MAX_INSTANCE}", o.instance),
            ));
            continue;
        }
        let Some(pid) = pts.resolve(file, key("point"), &o.point, errs) else {
            continue;
        };
        if let Some(j) = seen_addr.insert((ot, o.instance), i) {
            errs.push(ConfigError::new(
                file,
                key("instance"),
                format!(
                    "duplicate object {}{} (also object[{j}])",
                    ot.short(),
                    o.instance
                ),
            ));
            continue;
        }
        if let Some(j) = seen_point.insert(pid, i) {
            errs.push(ConfigError::new(
                file,
                key("point"),
                format!("point {:?} is already mapped by object[{j}]", o.point),
            ));
            continue;
        }
        let def = pts.def(pid);
        let type_ok = match ot {
            BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue => {
                def.kind == Kind::Number
            }
            BacnetObjectType::BinaryOutput | BacnetObjectType::BinaryValue => {
                def.kind == Kind::Bool
            }
            BacnetObjectType::MultiStateValue => def.kind == Kind::Enum,
        };
        if !type_ok {
            errs.push(ConfigError::new(
                file,
                key("type"),
                format!(
                    "{} cannot carry point {:?} of kind {}",
                    ot.as_str(),
                    o.point,
                    def.kind.as_str()
                ),
            ));
            continue;
        }
        if ot.commandable() != def.writable {
            let msg = if ot.commandable() {
                format!(
                    "{} is commandable but point {:?} is read-only (use analog-input or multi-state-value)",
                    ot.as_str(),
                    o.point
                )
            } else {
                format!(
                    "{} is read-only but point {:?} is a command (use binary-output or analog-value)",
                    ot.as_str(),
                    o.point
                )
            };
            errs.push(ConfigError::new(file, key("type"), msg));
            continue;
        }
        let loggable = def.his && def.role == Role::Measurement;
        if o.trend_log == Some(true) && !loggable {
            errs.push(ConfigError::new(
                file,
                key("trend_log"),
                format!(
                    "point {:?} is not a `his` measurement: only those have a Trend Log",
                    o.point
                ),
            ));
            continue;
        }
        if loggable && o.trend_log.unwrap_or(tl.enabled) {
            // TLn logs the object numbered n, so a front-end pairs them by
            // eye; two logged objects of different types with the same
            // instance would give two TLn.
            if let Some(j) = seen_log.insert(o.instance, i) {
                errs.push(ConfigError::new(
                    file,
                    key("instance"),
                    format!(
                        "Trend Log TL{} would log both this object and object[{j}] (a Trend Log takes the logged object's instance; set trend_log = false on one)",
                        o.instance
                    ),
                ));
                continue;
            }
            map.trend_logs.push(BacnetTrendLog {
                point: pid,
                instance: o.instance,
                logged_type: ot,
                logged_instance: o.instance,
            });
        }
        map.objects.push(BacnetObject {
            point: pid,
            object_type: ot,
            instance: o.instance,
            units: o.units.clone(),
        });
    }
    map
}

// ------------------------------------------------------------------ Modbus

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModbusFile {
    #[serde(default)]
    defaults: ModbusDefaults,
    #[serde(default)]
    register: Vec<ModbusRaw>,
    route_blocks: Option<RouteBlocksRaw>,
}

/// `[route_blocks]`: protocol offsets (0-based) of the route blocks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBlocksRaw {
    enabled: Option<bool>,
    input_base: Option<u16>,
    holding_base: Option<u16>,
    coil_base: Option<u16>,
    discrete_base: Option<u16>,
    stride: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModbusDefaults {
    #[serde(default = "abcd")]
    word_order: String,
    #[serde(default = "ten")]
    write_priority: u8,
}

impl Default for ModbusDefaults {
    fn default() -> Self {
        ModbusDefaults {
            word_order: abcd(),
            write_priority: ten(),
        }
    }
}

fn abcd() -> String {
    "ABCD".into()
}
fn ten() -> u8 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModbusRaw {
    point: String,
    table: String,
    address: u32,
    #[serde(rename = "type")]
    reg_type: Option<String>,
    scale: Option<f64>,
    word_order: Option<String>,
    field: Option<String>,
}

pub fn parse_modbus(file: &str, text: &str, pts: &PointIndex, errs: &mut Errors) -> ModbusMap {
    let raw: ModbusFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            errs.push(ConfigError::from_toml(file, text, &e));
            return ModbusMap::default();
        }
    };
    let default_wo = match WordOrder::parse(&raw.defaults.word_order) {
        Some(w) => w,
        None => {
            errs.push(ConfigError::new(
                file,
                "defaults.word_order",
                format!(
                    "unknown word order {:?} (ABCD, CDAB, BADC, DCBA)",
                    raw.defaults.word_order
                ),
            ));
            WordOrder::Abcd
        }
    };
    if !(1..=16).contains(&raw.defaults.write_priority) {
        errs.push(ConfigError::new(
            file,
            "defaults.write_priority",
            "must be a priority 1..=16",
        ));
    }
    let mut route_blocks = crate::points::ModbusRouteBlocks::default();
    if let Some(rb) = &raw.route_blocks {
        let d = route_blocks;
        route_blocks = crate::points::ModbusRouteBlocks {
            enabled: rb.enabled.unwrap_or(d.enabled),
            input_base: rb.input_base.unwrap_or(d.input_base),
            holding_base: rb.holding_base.unwrap_or(d.holding_base),
            coil_base: rb.coil_base.unwrap_or(d.coil_base),
            discrete_base: rb.discrete_base.unwrap_or(d.discrete_base),
            stride: rb.stride.unwrap_or(d.stride),
        };
        if route_blocks.stride == 0 {
            errs.push(ConfigError::new(
                file,
                "route_blocks.stride",
                "must be at least 1",
            ));
        }
    }
    let mut map = ModbusMap {
        route_blocks,
        word_order: default_wo,
        write_priority: raw.defaults.write_priority.clamp(1, 16),
        registers: Vec::new(),
    };
    // (table, offset) -> index of the register occupying it, to catch overlaps
    // including the second word of 32-bit values.
    let mut used: BTreeMap<(ModbusTable, u32), usize> = BTreeMap::new();
    for (i, r) in raw.register.iter().enumerate() {
        let key = |k: &str| format!("register[{i}].{k}");
        let Some(table) = ModbusTable::parse(&r.table) else {
            errs.push(ConfigError::new(
                file,
                key("table"),
                format!(
                    "unknown table {:?} (coil, discrete, input, holding)",
                    r.table
                ),
            ));
            continue;
        };
        let base = table.base();
        if r.address < base || r.address - base > 65535 {
            errs.push(ConfigError::new(
                file,
                key("address"),
                format!(
                    "address {} is outside the {} table ({:05}..{:05})",
                    r.address,
                    table.as_str(),
                    base,
                    base + 65535
                ),
            ));
            continue;
        }
        let offset = r.address - base;
        let Some(pid) = pts.resolve(file, key("point"), &r.point, errs) else {
            continue;
        };
        let def = pts.def(pid);
        let field = match r.field.as_deref() {
            None | Some("value") => ModbusField::Value,
            Some("quality") => ModbusField::Quality,
            Some("ok") => ModbusField::QualityOk,
            Some(other) => {
                errs.push(ConfigError::new(
                    file,
                    key("field"),
                    format!("unknown field {other:?} (value, quality, ok)"),
                ));
                continue;
            }
        };
        let reg_type = if table.is_bit() {
            if r.reg_type.is_some() {
                errs.push(ConfigError::new(
                    file,
                    key("type"),
                    "bit tables (coil, discrete) take no type",
                ));
                continue;
            }
            RegType::Bit
        } else {
            match r.reg_type.as_deref().map(RegType::parse) {
                Some(Some(t)) => t,
                None => RegType::U16,
                Some(None) => {
                    errs.push(ConfigError::new(
                        file,
                        key("type"),
                        format!(
                            "unknown type {:?} (u16, i16, u32, i32, f32)",
                            r.reg_type.as_deref().unwrap_or("")
                        ),
                    ));
                    continue;
                }
            }
        };
        let scale = r.scale.unwrap_or(1.0);
        if !scale.is_finite() || scale == 0.0 {
            errs.push(ConfigError::new(
                file,
                key("scale"),
                "scale must be a finite, non-zero number",
            ));
            continue;
        }
        let word_order = match r.word_order.as_deref() {
            None => default_wo,
            Some(s) => match WordOrder::parse(s) {
                Some(w) => w,
                None => {
                    errs.push(ConfigError::new(
                        file,
                        key("word_order"),
                        format!("unknown word order {s:?} (ABCD, CDAB, BADC, DCBA)"),
                    ));
                    continue;
                }
            },
        };
        if table == ModbusTable::Coil && !def.writable {
            errs.push(ConfigError::new(
                file,
                key("point"),
                format!(
                    "coils are writable but point {:?} is read-only (map it to a discrete input)",
                    r.point
                ),
            ));
            continue;
        }
        // Which table/field combinations make sense for the point.
        let kind_ok = match (table, field) {
            (ModbusTable::Coil, ModbusField::Value) => def.kind == Kind::Bool,
            (ModbusTable::Coil, _) => false,
            (ModbusTable::Discrete, ModbusField::Value) => def.kind == Kind::Bool,
            (ModbusTable::Discrete, ModbusField::QualityOk) => true,
            (ModbusTable::Discrete, ModbusField::Quality) => false,
            (_, ModbusField::QualityOk) => false,
            (_, ModbusField::Quality) => true,
            (_, ModbusField::Value) => true,
        };
        if !kind_ok {
            errs.push(ConfigError::new(
                file,
                key("table"),
                format!(
                    "a {} cannot carry the {} of point {:?} (kind {})",
                    table.as_str(),
                    r.field.as_deref().unwrap_or("value"),
                    r.point,
                    def.kind.as_str()
                ),
            ));
            continue;
        }
        let writable = match table {
            ModbusTable::Coil => true,
            ModbusTable::Holding => def.writable && field == ModbusField::Value,
            _ => false,
        };
        let width = u32::from(reg_type.width());
        if offset + width > 65536 {
            errs.push(ConfigError::new(
                file,
                key("address"),
                "a 32-bit value cannot start at the table's last register",
            ));
            continue;
        }
        let mut clash = None;
        for k in 0..width {
            if let Some(j) = used.get(&(table, offset + k)) {
                clash = Some(*j);
            }
        }
        if let Some(j) = clash {
            errs.push(ConfigError::new(
                file,
                key("address"),
                format!(
                    "{:05} overlaps register[{j}] in the {} table",
                    r.address,
                    table.as_str()
                ),
            ));
            continue;
        }
        for k in 0..width {
            used.insert((table, offset + k), i);
        }
        map.registers.push(ModbusRegister {
            point: pid,
            table,
            number: r.address,
            offset: offset as u16,
            reg_type,
            scale,
            word_order,
            field,
            writable,
        });
    }
    map.registers.sort_by_key(|r| (r.table, r.offset));
    map
}

// -------------------------------------------------------------------- HTTP

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    #[serde(default)]
    endpoint: Vec<HttpRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpRaw {
    point: String,
    method: String,
    path: String,
    value: Option<toml::Value>,
}

pub fn parse_http(file: &str, text: &str, pts: &PointIndex, errs: &mut Errors) -> HttpMap {
    let raw: HttpFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            errs.push(ConfigError::from_toml(file, text, &e));
            return HttpMap::default();
        }
    };
    let mut map = HttpMap::default();
    let mut seen: HashMap<(HttpMethod, String), usize> = HashMap::new();
    for (i, e) in raw.endpoint.iter().enumerate() {
        let key = |k: &str| format!("endpoint[{i}].{k}");
        let method = match e.method.to_ascii_uppercase().as_str() {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            other => {
                errs.push(ConfigError::new(
                    file,
                    key("method"),
                    format!("unknown method {other:?} (GET or POST)"),
                ));
                continue;
            }
        };
        if !e.path.starts_with("/api/")
            || e.path.contains(['{', '}', ' ', '?', '#'])
            || e.path.contains("//")
        {
            errs.push(ConfigError::new(
                file,
                key("path"),
                format!(
                    "path {:?} must start with /api/ and be a plain path",
                    e.path
                ),
            ));
            continue;
        }
        let Some(pid) = pts.resolve(file, key("point"), &e.point, errs) else {
            continue;
        };
        let def = pts.def(pid);
        if let Some(j) = seen.insert((method, e.path.clone()), i) {
            errs.push(ConfigError::new(
                file,
                key("path"),
                format!("duplicate {} {} (also endpoint[{j}])", e.method, e.path),
            ));
            continue;
        }
        let value = match (method, &e.value) {
            (HttpMethod::Post, _) if !def.writable => {
                errs.push(ConfigError::new(
                    file,
                    key("method"),
                    format!("POST writes, but point {:?} is read-only", e.point),
                ));
                continue;
            }
            (HttpMethod::Post, Some(v)) => match toml_to_value(v).map(|x| def.coerce(x)) {
                Some(Ok(v)) => Some(v),
                _ => {
                    errs.push(ConfigError::new(
                        file,
                        key("value"),
                        format!(
                            "value {v} does not match point {:?} (kind {})",
                            e.point,
                            def.kind.as_str()
                        ),
                    ));
                    continue;
                }
            },
            (HttpMethod::Post, None) => None,
            (HttpMethod::Get, Some(_)) => {
                errs.push(ConfigError::new(
                    file,
                    key("value"),
                    "only POST endpoints take a value",
                ));
                continue;
            }
            (HttpMethod::Get, None) => None,
        };
        map.endpoints.push(HttpEndpoint {
            point: pid,
            method,
            path: e.path.clone(),
            value,
        });
    }
    map
}
