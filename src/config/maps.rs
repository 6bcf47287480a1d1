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
        trend_buffer_size: trend_buffer_size(file, tl.buffer_size, errs),
        route_trend_buffer_size,
    };
    let mut seen = SeenObjects::default();
    for (i, o) in raw.object.iter().enumerate() {
        let at = At {
            file,
            table: "object",
            i,
        };
        let Some((ot, pid)) = object_address(at, o, pts, &mut seen, errs) else {
            continue;
        };
        let def = pts.def(pid);
        if check_object_fits(at, o, ot, def, errs).is_none() {
            continue;
        }
        let Some(logged) = trend_logged(at, o, def, tl.enabled, &mut seen, errs) else {
            continue;
        };
        if logged {
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

/// `[trend_log] buffer_size` (out of range: reported, the default used).
fn trend_buffer_size(file: &str, n: i64, errs: &mut Errors) -> u32 {
    match u32::try_from(n) {
        Ok(n) if (1..=MAX_TREND_BUFFER).contains(&n) => n,
        _ => {
            errs.push(ConfigError::new(
                file,
                "trend_log.buffer_size".to_string(),
                format!("{n} records: must be 1..={MAX_TREND_BUFFER} (memory is bounded per log)"),
            ));
            DEFAULT_TREND_BUFFER
        }
    }
}

/// What the objects before this one took, by entry index: (type,
/// instance) pairs, points, and Trend Log instances.
#[derive(Default)]
struct SeenObjects {
    addr: HashMap<(BacnetObjectType, u32), usize>,
    point: HashMap<PointId, usize>,
    log: HashMap<u32, usize>,
}

/// An `[[object]]`'s type, instance and point, each valid and not taken
/// by an earlier object.
fn object_address(
    at: At,
    o: &BacnetRaw,
    pts: &PointIndex,
    seen: &mut SeenObjects,
    errs: &mut Errors,
) -> Option<(BacnetObjectType, PointId)> {
    let Some(ot) = BacnetObjectType::parse(&o.object_type) else {
        return at.fail(
            errs,
            "type",
            format!(
                "unknown object type {:?} (analog-input, analog-value, binary-output, binary-value, multi-state-value)",
                o.object_type
            ),
        );
    };
    if o.instance > MAX_INSTANCE {
        return at.fail(
            errs,
            "instance",
            format!("instance {} is above {MAX_INSTANCE}", o.instance),
        );
    }
    let pid = pts.resolve(at.file, at.key("point"), &o.point, errs)?;
    if let Some(j) = seen.addr.insert((ot, o.instance), at.i) {
        return at.fail(
            errs,
            "instance",
            format!(
                "duplicate object {}{} (also object[{j}])",
                ot.short(),
                o.instance
            ),
        );
    }
    if let Some(j) = seen.point.insert(pid, at.i) {
        return at.fail(
            errs,
            "point",
            format!("point {:?} is already mapped by object[{j}]", o.point),
        );
    }
    Some((ot, pid))
}

/// The object type carries the point's kind, and is commandable exactly
/// when the point is writable.
fn check_object_fits(
    at: At,
    o: &BacnetRaw,
    ot: BacnetObjectType,
    def: &PointDef,
    errs: &mut Errors,
) -> Option<()> {
    let type_ok = match ot {
        BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue => def.kind == Kind::Number,
        BacnetObjectType::BinaryOutput | BacnetObjectType::BinaryValue => def.kind == Kind::Bool,
        BacnetObjectType::MultiStateValue => def.kind == Kind::Enum,
    };
    if !type_ok {
        return at.fail(
            errs,
            "type",
            format!(
                "{} cannot carry point {:?} of kind {}",
                ot.as_str(),
                o.point,
                def.kind.as_str()
            ),
        );
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
        return at.fail(errs, "type", msg);
    }
    Some(())
}

/// Whether the object gets a Trend Log: `his` measurements do, unless
/// `trend_log` (or `[trend_log] enabled`) says otherwise. None: a problem
/// (reported), the object is dropped.
fn trend_logged(
    at: At,
    o: &BacnetRaw,
    def: &PointDef,
    enabled: bool,
    seen: &mut SeenObjects,
    errs: &mut Errors,
) -> Option<bool> {
    let loggable = def.his && def.role == Role::Measurement;
    if o.trend_log == Some(true) && !loggable {
        return at.fail(
            errs,
            "trend_log",
            format!(
                "point {:?} is not a `his` measurement: only those have a Trend Log",
                o.point
            ),
        );
    }
    if !(loggable && o.trend_log.unwrap_or(enabled)) {
        return Some(false);
    }
    // TLn logs the object numbered n, so a front-end pairs them by eye; two
    // logged objects of different types with the same instance would give
    // two TLn.
    if let Some(j) = seen.log.insert(o.instance, at.i) {
        return at.fail(
            errs,
            "instance",
            format!(
                "Trend Log TL{} would log both this object and object[{j}] (a Trend Log takes the logged object's instance; set trend_log = false on one)",
                o.instance
            ),
        );
    }
    Some(true)
}

/// Where an entry of a mapping file (`object[i]`, `register[i]`) is, for
/// its errors.
#[derive(Clone, Copy)]
struct At<'a> {
    file: &'a str,
    table: &'static str,
    i: usize,
}

impl At<'_> {
    fn key(self, k: &str) -> String {
        format!("{}[{}].{k}", self.table, self.i)
    }

    fn report(self, errs: &mut Errors, k: &str, msg: impl Into<String>) {
        errs.push(ConfigError::new(self.file, self.key(k), msg.into()));
    }

    /// Reports `msg` at key `k`; `None` so a check can end with it.
    fn fail<T>(self, errs: &mut Errors, k: &str, msg: impl Into<String>) -> Option<T> {
        self.report(errs, k, msg);
        None
    }
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
    let default_wo = modbus_default_word_order(file, &raw.defaults.word_order, errs);
    if !(1..=16).contains(&raw.defaults.write_priority) {
        errs.push(ConfigError::new(
            file,
            "defaults.write_priority",
            "must be a priority 1..=16",
        ));
    }
    let mut map = ModbusMap {
        route_blocks: modbus_route_blocks(file, raw.route_blocks.as_ref(), errs),
        word_order: default_wo,
        write_priority: raw.defaults.write_priority.clamp(1, 16),
        registers: Vec::new(),
    };
    // (table, offset) -> index of the register occupying it, to catch overlaps
    // including the second word of 32-bit values.
    let mut used: BTreeMap<(ModbusTable, u32), usize> = BTreeMap::new();
    for (i, r) in raw.register.iter().enumerate() {
        let at = At {
            file,
            table: "register",
            i,
        };
        let Some(reg) = modbus_register(at, r, pts, default_wo, errs) else {
            continue;
        };
        if claim_registers(at, &reg, &mut used, errs) {
            map.registers.push(reg);
        }
    }
    map.registers.sort_by_key(|r| (r.table, r.offset));
    map
}

/// `[defaults] word_order`; an unknown one is reported and ABCD used.
fn modbus_default_word_order(file: &str, s: &str, errs: &mut Errors) -> WordOrder {
    WordOrder::parse(s).unwrap_or_else(|| {
        errs.push(ConfigError::new(
            file,
            "defaults.word_order",
            format!("unknown word order {s:?} (ABCD, CDAB, BADC, DCBA)"),
        ));
        WordOrder::Abcd
    })
}

/// `[route_blocks]`: the defaults, each key the file gives replacing one.
fn modbus_route_blocks(
    file: &str,
    raw: Option<&RouteBlocksRaw>,
    errs: &mut Errors,
) -> crate::points::ModbusRouteBlocks {
    let d = crate::points::ModbusRouteBlocks::default();
    let Some(rb) = raw else {
        return d;
    };
    let route_blocks = crate::points::ModbusRouteBlocks {
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
    route_blocks
}

/// One `[[register]]` entry, checked on its own (overlaps with the others
/// are `claim_registers`'): the first problem is reported and the entry
/// dropped.
fn modbus_register(
    at: At,
    r: &ModbusRaw,
    pts: &PointIndex,
    default_wo: WordOrder,
    errs: &mut Errors,
) -> Option<ModbusRegister> {
    let Some(table) = ModbusTable::parse(&r.table) else {
        return at.fail(
            errs,
            "table",
            format!(
                "unknown table {:?} (coil, discrete, input, holding)",
                r.table
            ),
        );
    };
    let base = table.base();
    if r.address < base || r.address - base > 65535 {
        return at.fail(
            errs,
            "address",
            format!(
                "address {} is outside the {} table ({:05}..{:05})",
                r.address,
                table.as_str(),
                base,
                base + 65535
            ),
        );
    }
    let offset = r.address - base;
    let pid = pts.resolve(at.file, at.key("point"), &r.point, errs)?;
    let def = pts.def(pid);
    let field = modbus_field(at, r.field.as_deref(), errs)?;
    let reg_type = modbus_reg_type(at, table, r.reg_type.as_deref(), errs)?;
    let scale = r.scale.unwrap_or(1.0);
    if !scale.is_finite() || scale == 0.0 {
        return at.fail(errs, "scale", "scale must be a finite, non-zero number");
    }
    let word_order = match r.word_order.as_deref() {
        None => default_wo,
        Some(s) => match WordOrder::parse(s) {
            Some(w) => w,
            None => {
                return at.fail(
                    errs,
                    "word_order",
                    format!("unknown word order {s:?} (ABCD, CDAB, BADC, DCBA)"),
                )
            }
        },
    };
    if table == ModbusTable::Coil && !def.writable {
        return at.fail(
            errs,
            "point",
            format!(
                "coils are writable but point {:?} is read-only (map it to a discrete input)",
                r.point
            ),
        );
    }
    if !table_carries(table, field, def.kind) {
        return at.fail(
            errs,
            "table",
            format!(
                "a {} cannot carry the {} of point {:?} (kind {})",
                table.as_str(),
                r.field.as_deref().unwrap_or("value"),
                r.point,
                def.kind.as_str()
            ),
        );
    }
    let writable = match table {
        ModbusTable::Coil => true,
        ModbusTable::Holding => def.writable && field == ModbusField::Value,
        _ => false,
    };
    if offset + u32::from(reg_type.width()) > 65536 {
        return at.fail(
            errs,
            "address",
            "a 32-bit value cannot start at the table's last register",
        );
    }
    Some(ModbusRegister {
        point: pid,
        table,
        number: r.address,
        offset: offset as u16,
        reg_type,
        scale,
        word_order,
        field,
        writable,
    })
}

/// `field`: what of the point the register carries (default its value).
fn modbus_field(at: At, s: Option<&str>, errs: &mut Errors) -> Option<ModbusField> {
    match s {
        None | Some("value") => Some(ModbusField::Value),
        Some("quality") => Some(ModbusField::Quality),
        Some("ok") => Some(ModbusField::QualityOk),
        Some(other) => at.fail(
            errs,
            "field",
            format!("unknown field {other:?} (value, quality, ok)"),
        ),
    }
}

/// `type`: none in the bit tables, else one of the register types
/// (default u16).
fn modbus_reg_type(
    at: At,
    table: ModbusTable,
    s: Option<&str>,
    errs: &mut Errors,
) -> Option<RegType> {
    if table.is_bit() {
        return match s {
            Some(_) => at.fail(errs, "type", "bit tables (coil, discrete) take no type"),
            None => Some(RegType::Bit),
        };
    }
    match s.map(RegType::parse) {
        Some(Some(t)) => Some(t),
        None => Some(RegType::U16),
        Some(None) => at.fail(
            errs,
            "type",
            format!(
                "unknown type {:?} (u16, i16, u32, i32, f32)",
                s.unwrap_or("")
            ),
        ),
    }
}

/// Which table/field combinations make sense for a point of `kind`.
fn table_carries(table: ModbusTable, field: ModbusField, kind: Kind) -> bool {
    match (table, field) {
        (ModbusTable::Coil, ModbusField::Value) => kind == Kind::Bool,
        (ModbusTable::Coil, _) => false,
        (ModbusTable::Discrete, ModbusField::Value) => kind == Kind::Bool,
        (ModbusTable::Discrete, ModbusField::QualityOk) => true,
        (ModbusTable::Discrete, ModbusField::Quality) => false,
        (_, ModbusField::QualityOk) => false,
        (_, ModbusField::Quality) => true,
        (_, ModbusField::Value) => true,
    }
}

/// Marks the registers `reg` occupies (both words of a 32-bit value) as
/// entry `at.i`'s; false, with the error, when one is already taken.
fn claim_registers(
    at: At,
    reg: &ModbusRegister,
    used: &mut BTreeMap<(ModbusTable, u32), usize>,
    errs: &mut Errors,
) -> bool {
    let offset = u32::from(reg.offset);
    let width = u32::from(reg.reg_type.width());
    let clash = (0..width)
        .rev()
        .find_map(|k| used.get(&(reg.table, offset + k)));
    if let Some(j) = clash {
        at.report(
            errs,
            "address",
            format!(
                "{:05} overlaps register[{j}] in the {} table",
                reg.number,
                reg.table.as_str()
            ),
        );
        return false;
    }
    for k in 0..width {
        used.insert((reg.table, offset + k), at.i);
    }
    true
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
