//! Point definitions and values: the protocol-neutral vocabulary every part of castpoint speaks.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The state name an enum point reads while it is unavailable.
pub const NA_STATE: &str = "N/A";

/// Index of a point in the database. Protocol maps resolve point ids to this
/// once at start-up so the hot paths (Modbus at ~100k req/s) never hash strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointId(pub u16);

impl PointId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What the point is to a building-automation system. Decides the BACnet
/// object family and the Haystack `sensor` / `cmd` / `sp` marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A measurement the server produces (read-only).
    Measurement,
    /// A command a BMS writes (binary or analog set-point).
    Command,
    /// A derived status (enumerated, read-only).
    Status,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Measurement => "measurement",
            Role::Command => "command",
            Role::Status => "status",
        }
    }
}

/// Data type of a point's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Bool,
    Enum,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Number => "number",
            Kind::Bool => "bool",
            Kind::Enum => "enum",
        }
    }
}

/// A point value. Enum values are 1-based ordinals into the point's state
/// list (BACnet multi-state present-value is 1-based and the seed wants the
/// same number on every protocol, so 1 = first state everywhere).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Number(f64),
    Bool(bool),
    Enum(u16),
}

impl Value {
    pub fn kind(&self) -> Kind {
        match self {
            Value::Number(_) => Kind::Number,
            Value::Bool(_) => Kind::Bool,
            Value::Enum(_) => Kind::Enum,
        }
    }

    /// Numeric view used by encoders that only carry numbers (Modbus registers,
    /// BACnet REAL): bool is 0/1, enum its ordinal.
    pub fn as_f64(&self) -> f64 {
        match *self {
            Value::Number(n) => n,
            Value::Bool(b) => {
                if b {
                    1.0
                } else {
                    0.0
                }
            }
            Value::Enum(e) => f64::from(e),
        }
    }

    pub fn as_bool(&self) -> bool {
        match *self {
            Value::Number(n) => n != 0.0,
            Value::Bool(b) => b,
            Value::Enum(e) => e != 0,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Enum(e) => write!(f, "#{e}"),
        }
    }
}

/// Quality of a point's current value. Every protocol maps it: BACnet
/// status-flags + reliability, Haystack `curStatus`, Modbus quality registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quality {
    /// Fresh value from a working source.
    Ok,
    /// The source has not refreshed the value within its expected period.
    Stale,
    /// The source reports an error; the value (if any) is the last good one.
    Fault,
    /// There is no source for this value (no GPU, feature not running, or not
    /// applicable in the current mode). The value is absent, never invented.
    Unavailable,
    /// A command point whose value is held by a priority-array write above
    /// the relinquish default (an operator override is in force).
    Overridden,
}

impl Quality {
    pub const ALL: [Quality; 5] = [
        Quality::Ok,
        Quality::Stale,
        Quality::Fault,
        Quality::Unavailable,
        Quality::Overridden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Ok => "ok",
            Quality::Stale => "stale",
            Quality::Fault => "fault",
            Quality::Unavailable => "unavailable",
            Quality::Overridden => "overridden",
        }
    }

    /// Stable numeric code, published in the Modbus quality registers.
    pub fn code(self) -> u16 {
        match self {
            Quality::Ok => 0,
            Quality::Stale => 1,
            Quality::Fault => 2,
            Quality::Unavailable => 3,
            Quality::Overridden => 4,
        }
    }
}

/// A Haystack tag value attached to a point definition (markers and simple
/// scalars; refs and computed tags such as curVal are added by the Haystack layer).
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    Marker,
    Str(String),
    Number(f64),
    Bool(bool),
}

/// The protocol-neutral definition of one point (from `points/*.toml`).
#[derive(Debug, Clone)]
pub struct PointDef {
    /// Stable machine id (`active_streams`), used in URLs, Haystack ids and logs.
    pub id: String,
    /// English display name from the seed (`Active Streams`).
    pub name: String,
    /// The seed's French description, kept verbatim.
    pub description: String,
    pub role: Role,
    pub kind: Kind,
    /// Haystack unit symbol (`%`, `ms`, `h`) or a documented custom `_Gbps`.
    pub unit: Option<String>,
    /// Typical range from the seed; writes outside it are refused.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Number points that only take whole values (an input or profile
    /// number): a fractional write is refused on every protocol.
    pub integer: bool,
    /// How often the source samples this point.
    pub sample_period: Duration,
    pub writable: bool,
    /// Enum state names; ordinal 1 is `states[0]`.
    pub states: Vec<String>,
    /// Value in force when every priority slot is empty (command points).
    pub relinquish_default: Option<Value>,
    /// Change that counts as a change for COV subscribers and history.
    pub cov_increment: f64,
    /// Whether samples are kept in history (Haystack `his`).
    pub his: bool,
    /// Extra Haystack tags from the definition file.
    pub tags: BTreeMap<String, TagValue>,
    /// The point's intrinsic alarm (`[point.alarm]`), if it has one.
    pub alarm: Option<super::alarm::AlarmSpec>,
}

impl PointDef {
    /// Name of an enum ordinal, if it is one of this point's states.
    /// The ordinal of the point's "N/A" state (points/streaming-server.toml):
    /// what protocols that must show a state number (BACnet Present_Value,
    /// Modbus registers) show while the point has no value, so that an
    /// unavailable status never reads as a real state.
    pub fn na_state(&self) -> Option<u16> {
        let i = self.states.iter().position(|s| s == NA_STATE)?;
        u16::try_from(i + 1).ok()
    }

    pub fn state_name(&self, ordinal: u16) -> Option<&str> {
        if ordinal == 0 {
            return None;
        }
        self.states
            .get(usize::from(ordinal) - 1)
            .map(String::as_str)
    }

    /// Ordinal of a state by name (case-insensitive), 1-based.
    pub fn state_ordinal(&self, name: &str) -> Option<u16> {
        self.states
            .iter()
            .position(|s| s.eq_ignore_ascii_case(name))
            .and_then(|i| u16::try_from(i + 1).ok())
    }

    /// Checks a value against this point's type and range. Used by every
    /// write path so that all protocols refuse the same things.
    pub fn check_value(&self, v: &Value) -> Result<(), ValueError> {
        match (self.kind, v) {
            (Kind::Number, Value::Number(n)) => {
                if !n.is_finite() {
                    return Err(ValueError::OutOfRange);
                }
                if self.min.is_some_and(|m| *n < m) || self.max.is_some_and(|m| *n > m) {
                    return Err(ValueError::OutOfRange);
                }
                if self.integer && n.fract() != 0.0 {
                    return Err(ValueError::OutOfRange);
                }
                Ok(())
            }
            (Kind::Bool, Value::Bool(_)) => Ok(()),
            (Kind::Enum, Value::Enum(e)) => {
                if *e >= 1 && usize::from(*e) <= self.states.len() {
                    Ok(())
                } else {
                    Err(ValueError::OutOfRange)
                }
            }
            _ => Err(ValueError::TypeMismatch),
        }
    }

    /// Converts a loosely typed value (a protocol that only carries numbers)
    /// into this point's kind: 0/1 to bool, ordinals to enum.
    pub fn coerce(&self, v: Value) -> Result<Value, ValueError> {
        let out = match (self.kind, v) {
            (Kind::Number, Value::Number(_))
            | (Kind::Bool, Value::Bool(_))
            | (Kind::Enum, Value::Enum(_)) => v,
            (Kind::Bool, Value::Number(n)) if n == 0.0 || n == 1.0 => Value::Bool(n == 1.0),
            (Kind::Enum, Value::Number(n)) if n.fract() == 0.0 && (1.0..=65535.0).contains(&n) => {
                Value::Enum(n as u16)
            }
            (Kind::Number, Value::Bool(b)) => Value::Number(if b { 1.0 } else { 0.0 }),
            (Kind::Bool, Value::Number(_)) | (Kind::Enum, Value::Number(_)) => {
                return Err(ValueError::OutOfRange)
            }
            _ => return Err(ValueError::TypeMismatch),
        };
        self.check_value(&out)?;
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("value has the wrong type for this point")]
    TypeMismatch,
    #[error("value is outside the point's range")]
    OutOfRange,
}

/// The site and equip records the points belong to (Haystack `siteRef` /
/// `equipRef`; BACnet device name and location).
#[derive(Debug, Clone)]
pub struct SiteEquip {
    pub site_id: String,
    pub site_dis: String,
    pub equip_id: String,
    pub equip_dis: String,
    pub tz: String,
}
