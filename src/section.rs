//! The vocabulary every part's config section shares: `Problem` (a key path and a message), the `Section` trait, durations, and serde helpers; dependency-free, so parts never import `config`.
//!
//! A part owns its section type (`#[derive(Deserialize)]` with
//! `#[serde(default, deny_unknown_fields)]`, defaults in `Default`) and
//! its semantic rules in [`Section::validate`]. `config` deserialises each
//! section of the file once and prefixes the problems with the file and
//! the section's key (`castpoint.toml: modbus.unit_ids[3]: ...`).

use std::time::Duration;

/// One semantic problem in a section, keyed relative to the section root
/// (`"bind"`, `"user[1].role"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same problem one level down: `at` + `.` + key (or `at[i]`).
    pub fn under(self, at: &str) -> Problem {
        Problem {
            key: join(at, &self.key),
            message: self.message,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A section table as a JSON document with the keys it was written with:
/// absent (`None`) keys are left out, at every level, so a table read back
/// from the document means the same.
pub fn to_doc<T: serde::Serialize>(t: &T) -> Option<serde_json::Value> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(t).ok()?;
    strip(&mut v);
    Some(v)
}

/// Joins key paths: `a` + `b` = `a.b`, `a` + `[1].b` = `a[1].b`.
pub fn join(at: &str, key: &str) -> String {
    match (at.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => at.to_string(),
        _ if key.starts_with('[') => format!("{at}{key}"),
        _ => format!("{at}.{key}"),
    }
}

/// A config section: its type's `Default` is the section's meaning when
/// absent; `validate` reports the semantic rules serde cannot express
/// (ranges, keys that go together). Parsing already refused unknown keys
/// and wrong types.
pub trait Section {
    fn validate(&self) -> Vec<Problem> {
        Vec::new()
    }
}

/// Parses "250ms", "1s", "30s", "1min", "5m", "1h", "7d".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// A duration as `parse_duration` reads it back: whole seconds as "2s",
/// anything else in milliseconds ("500ms", "1.5ms").
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_secs_f64() * 1000.0)
    }
}

/// Checks an integer-like value against an inclusive range.
pub fn range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
    out: &mut Vec<Problem>,
) {
    if v < lo || v > hi {
        out.push(Problem::new(
            key,
            format!("expected an integer {lo}..={hi}"),
        ));
    }
}

/// `#[serde(with = "crate::section::duration")]`: a duration string
/// ("500ms", "60s", "5min"); serialised back in milliseconds.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} (e.g. \"500ms\", \"60s\", \"5min\")"
            ))
        })
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", v.as_millis()))
    }
}

/// `#[serde(default, with = "crate::section::opt_duration")]`.
pub mod opt_duration {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::duration::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

/// A number written as an integer or a float, kept as written (so a
/// document serialised back reads the same).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Num {
    I(i64),
    F(f64),
}

impl<'de> serde::Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(Num::I(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                i64::try_from(v).map(Num::I).map_err(E::custom)
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
                Ok(Num::F(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Num {
    pub fn get(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

/// `#[serde(deserialize_with = "crate::section::number")]`: an integer
/// or a float (`cpu_warn = 85` or `85.5`).
pub fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    <Num as serde::Deserialize>::deserialize(d).map(Num::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_key_paths() {
        assert_eq!(join("route[0]", "output[1].url"), "route[0].output[1].url");
        assert_eq!(join("profile", "[2].name"), "profile[2].name");
        assert_eq!(join("", "bind"), "bind");
        assert_eq!(join("http", ""), "http");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5min"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    /// What `format_duration` writes reads back as the same duration.
    #[test]
    fn formatted_durations_read_back() {
        for (d, text) in [
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_millis(20), "20ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Some(d), "{text}");
        }
    }
}
