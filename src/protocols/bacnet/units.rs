//! BACnet engineering units for points: from the point's Haystack unit, or a name given in `mappings/bacnet.toml`.

use crate::points::{BacnetObject, PointDef};

/// no-units (95).
pub const NO_UNITS: u32 = 95;

/// Engineering units castpoint knows by name (ASHRAE 135-2024 Clause 21,
/// BACnetEngineeringUnits). The bit-rate family was added in 135-2024
/// (47929..47932); rusty-bacnet 0.15's table stops at 135-2020, so the
/// numbers are kept here (checked against bacnet-rs 0.3.2's 135-2024 table).
/// Older front-ends show these as an unknown enumeration, hence the
/// `bitrate_units_fallback` option that publishes no-units instead.
const UNITS: &[(&str, u32)] = &[
    ("percent", 98),
    ("milliseconds", 159),
    ("seconds", 73),
    ("minutes", 72),
    ("hours", 71),
    ("days", 70),
    ("no-units", NO_UNITS),
    ("degrees-celsius", 62),
    ("hertz", 27),
    ("watts", 47),
    ("bits-per-second", 47929),
    ("kilobits-per-second", 47930),
    ("megabits-per-second", 47931),
    ("gigabits-per-second", 47932),
];

/// Whether a code is one of the 135-2024 bit-rate units.
pub fn is_bitrate(code: u32) -> bool {
    (47929..=47932).contains(&code)
}

/// Code of a unit name (`"percent"`), or a number given as text (`"98"`).
pub fn by_name(name: &str) -> Option<u32> {
    UNITS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
        .or_else(|| name.parse::<u32>().ok().filter(|n| *n <= 65535))
}

/// Name of a unit code, for documents and the EDE export.
pub fn name_of(code: u32) -> Option<&'static str> {
    UNITS.iter().find(|(_, c)| *c == code).map(|(n, _)| *n)
}

/// Code for a point's Haystack unit symbol.
fn from_haystack(unit: Option<&str>) -> Result<u32, String> {
    Ok(match unit {
        None => NO_UNITS,
        Some("%") => 98,
        Some("ms") => 159,
        Some("s") => 73,
        Some("min") => 72,
        Some("h") => 71,
        Some("day") => 70,
        Some("_Gbps") => 47932,
        Some("_Mbps") => 47931,
        Some(other) => {
            return Err(format!(
                "no BACnet engineering unit for unit {other:?}; name one with `units` in mappings/bacnet.toml"
            ))
        }
    })
}

/// The engineering units an object publishes.
pub fn units_code(def: &PointDef, o: &BacnetObject, bitrate_fallback: bool) -> Result<u32, String> {
    let code = match &o.units {
        Some(n) => by_name(n).ok_or_else(|| {
            format!(
                "mappings.bacnet: object {}{}: unknown units {n:?}",
                o.object_type.short(),
                o.instance
            )
        })?,
        None => from_haystack(def.unit.as_deref())
            .map_err(|e| format!("mappings.bacnet: point {:?}: {e}", def.id))?,
    };
    Ok(if bitrate_fallback && is_bitrate(code) {
        NO_UNITS
    } else {
        code
    })
}
