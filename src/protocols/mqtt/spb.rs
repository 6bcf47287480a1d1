//! Sparkplug B payload codec: the `Payload`/`Metric`/`PropertySet` protobuf messages of `sparkplug_b.proto` (spB 3.0), hand-written and bounded.
//!
//! Why hand-written rather than prost-generated: castpoint needs a small
//! subset (scalar metrics and flat property sets), the decoder sees
//! untrusted bytes from any client of the broker (NCMD/DCMD), and a decoder
//! with no recursion, no dependency and explicit bounds is easy to fuzz
//! (fuzz/fuzz_targets/spb_payload.rs builds this very file). Everything the
//! decoder does not use (DataSet, Template, MetaData, nested property sets,
//! extensions) is skipped by its length, never parsed, so no input can make
//! it recurse. Std only on purpose (see fuzz/src/lib.rs).

/// Largest number of metrics one decoded payload may hold; more is refused
/// (the MQTT layer bounds the payload's bytes, this its allocations).
pub const MAX_METRICS: usize = 4096;
/// Largest number of properties one decoded metric may hold.
pub const MAX_PROPERTIES: usize = 64;

/// Sparkplug B data types (spB 3.0 §6.4.16) castpoint publishes or accepts.
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
}

/// One metric or property value (the scalar arms of the proto's `oneof`).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// `int_value` (uint32 on the wire; Int8/16/32 are two's complement).
    Int(u32),
    /// `long_value` (uint64 on the wire; Int64 is two's complement).
    Long(u64),
    Float(f32),
    Double(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
}

/// A property of a metric (`PropertySet` key and `PropertyValue`).
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    pub key: String,
    pub datatype: u32,
    /// `None` with `is_null` on the wire, or a value castpoint skips.
    pub value: Option<Val>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metric {
    pub name: Option<String>,
    pub alias: Option<u64>,
    pub timestamp: Option<u64>,
    pub datatype: Option<u32>,
    pub is_historical: bool,
    pub is_transient: bool,
    pub is_null: bool,
    pub properties: Vec<Property>,
    /// `None`: no value arm, or a complex one (DataSet, Template) skipped.
    pub value: Option<Val>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Payload {
    pub timestamp: Option<u64>,
    pub metrics: Vec<Metric>,
    pub seq: Option<u64>,
}

/// Why bytes are not a Sparkplug B payload castpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    VarintOverflow,
    /// A wire type protobuf does not define, or a deprecated group.
    BadWireType(u8),
    /// A field with the wrong wire type for its number.
    WrongWireType(u32),
    BadUtf8,
    TooManyMetrics,
    TooManyProperties,
    /// Field number 0 (invalid in protobuf).
    ZeroField,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated protobuf"),
            DecodeError::VarintOverflow => write!(f, "varint longer than 64 bits"),
            DecodeError::BadWireType(t) => write!(f, "unsupported wire type {t}"),
            DecodeError::WrongWireType(n) => write!(f, "field {n} has the wrong wire type"),
            DecodeError::BadUtf8 => write!(f, "string is not UTF-8"),
            DecodeError::TooManyMetrics => write!(f, "more than {MAX_METRICS} metrics"),
            DecodeError::TooManyProperties => {
                write!(f, "more than {MAX_PROPERTIES} properties in a metric")
            }
            DecodeError::ZeroField => write!(f, "field number 0"),
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------- encoding

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_u64(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_bool(out: &mut Vec<u8>, field: u32, v: bool) {
    put_u64(out, field, u64::from(v));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes a value arm: `base` is the field number of `int_value` (3 in
/// PropertyValue, 10 in Metric); the arms follow in the proto's order.
fn put_val(out: &mut Vec<u8>, base: u32, v: &Val) {
    match v {
        Val::Int(n) => put_u64(out, base, u64::from(*n)),
        Val::Long(n) => put_u64(out, base + 1, *n),
        Val::Float(x) => {
            put_key(out, base + 2, 5);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Val::Double(x) => {
            put_key(out, base + 3, 1);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Val::Bool(b) => put_bool(out, base + 4, *b),
        Val::Str(s) => put_bytes(out, base + 5, s.as_bytes()),
        // Only metrics have a bytes arm (16); properties never carry bytes.
        Val::Bytes(b) => put_bytes(out, base + 6, b),
    }
}

fn encode_property_set(props: &[Property]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in props {
        put_bytes(&mut out, 1, p.key.as_bytes());
    }
    for p in props {
        let mut pv = Vec::new();
        put_u64(&mut pv, 1, u64::from(p.datatype));
        match &p.value {
            Some(v) => put_val(&mut pv, 3, v),
            None => put_bool(&mut pv, 2, true),
        }
        put_bytes(&mut out, 2, &pv);
    }
    out
}

fn encode_metric(m: &Metric) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(n) = &m.name {
        put_bytes(&mut out, 1, n.as_bytes());
    }
    if let Some(a) = m.alias {
        put_u64(&mut out, 2, a);
    }
    if let Some(t) = m.timestamp {
        put_u64(&mut out, 3, t);
    }
    if let Some(d) = m.datatype {
        put_u64(&mut out, 4, u64::from(d));
    }
    if m.is_historical {
        put_bool(&mut out, 5, true);
    }
    if m.is_transient {
        put_bool(&mut out, 6, true);
    }
    if m.is_null || m.value.is_none() {
        put_bool(&mut out, 7, true);
    }
    if !m.properties.is_empty() {
        put_bytes(&mut out, 9, &encode_property_set(&m.properties));
    }
    if let (Some(v), false) = (&m.value, m.is_null) {
        put_val(&mut out, 10, v);
    }
    out
}

impl Payload {
    /// Protobuf bytes of this payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(t) = self.timestamp {
            put_u64(&mut out, 1, t);
        }
        for m in &self.metrics {
            put_bytes(&mut out, 2, &encode_metric(m));
        }
        if let Some(s) = self.seq {
            put_u64(&mut out, 3, s);
        }
        out
    }

    /// Decodes untrusted bytes (bounded: no recursion, at most
    /// [`MAX_METRICS`] metrics of at most [`MAX_PROPERTIES`] properties).
    pub fn decode(buf: &[u8]) -> Result<Payload, DecodeError> {
        let mut p = Payload::default();
        let mut r = Reader { buf, pos: 0 };
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 0) => p.timestamp = Some(r.varint()?),
                (2, 2) => {
                    if p.metrics.len() >= MAX_METRICS {
                        return Err(DecodeError::TooManyMetrics);
                    }
                    p.metrics.push(decode_metric(r.bytes()?)?);
                }
                (3, 0) => p.seq = Some(r.varint()?),
                (1..=3, _) => return Err(DecodeError::WrongWireType(field)),
                _ => r.skip(wire)?,
            }
        }
        Ok(p)
    }
}

// ---------------------------------------------------------------- decoding

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            // The tenth byte may only carry the 64th bit.
            if i == 9 && b > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    /// The next field key, or `None` at the end of the buffer.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        let wire = (k & 7) as u8;
        let field = u32::try_from(k >> 3).map_err(|_| DecodeError::VarintOverflow)?;
        if field == 0 {
            return Err(DecodeError::ZeroField);
        }
        Ok(Some((field, wire)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::BadUtf8)
    }

    fn fixed32(&mut self) -> Result<[u8; 4], DecodeError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn fixed64(&mut self) -> Result<[u8; 8], DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            // 3/4 are the deprecated groups: no Sparkplug message uses
            // them, and skipping one would need a nesting walk.
            w => Err(DecodeError::BadWireType(w)),
        }
    }

    /// A value arm whose `int_value` is field `base`; `None` if `field` is
    /// not one of the scalar arms.
    fn val(&mut self, field: u32, wire: u8, base: u32) -> Result<Option<Val>, DecodeError> {
        let want = match field.checked_sub(base) {
            Some(0 | 1 | 4) => 0,
            Some(2) => 5,
            Some(3) => 1,
            Some(5 | 6) => 2,
            _ => return Ok(None),
        };
        if wire != want {
            return Err(DecodeError::WrongWireType(field));
        }
        Ok(Some(match field - base {
            // int_value is uint32: protobuf truncates a wider varint.
            0 => Val::Int(self.varint()? as u32),
            1 => Val::Long(self.varint()?),
            2 => Val::Float(f32::from_le_bytes(self.fixed32()?)),
            3 => Val::Double(f64::from_le_bytes(self.fixed64()?)),
            4 => Val::Bool(self.varint()? != 0),
            5 => Val::Str(self.string()?),
            _ => Val::Bytes(self.bytes()?.to_vec()),
        }))
    }
}

fn decode_metric(buf: &[u8]) -> Result<Metric, DecodeError> {
    let mut m = Metric::default();
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => m.name = Some(r.string()?),
            (2, 0) => m.alias = Some(r.varint()?),
            (3, 0) => m.timestamp = Some(r.varint()?),
            (4, 0) => m.datatype = Some(r.varint()? as u32),
            (5, 0) => m.is_historical = r.varint()? != 0,
            (6, 0) => m.is_transient = r.varint()? != 0,
            (7, 0) => m.is_null = r.varint()? != 0,
            (9, 2) => m.properties = decode_property_set(r.bytes()?)?,
            (1..=7 | 9, _) => return Err(DecodeError::WrongWireType(field)),
            // In a PropertyValue the bytes arm does not exist; in a Metric
            // it is field 16, which `val` maps from base 10.
            (10..=16, _) => m.value = r.val(field, wire, 10)?,
            _ => r.skip(wire)?,
        }
    }
    Ok(m)
}

/// A flat property set: keys and values pair up by position. Nested sets
/// (`propertyset_value`, `propertysets_value`) are skipped, not parsed.
fn decode_property_set(buf: &[u8]) -> Result<Vec<Property>, DecodeError> {
    let mut keys = Vec::new();
    let mut vals: Vec<(u32, Option<Val>)> = Vec::new();
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => {
                if keys.len() >= MAX_PROPERTIES {
                    return Err(DecodeError::TooManyProperties);
                }
                keys.push(r.string()?);
            }
            (2, 2) => {
                if vals.len() >= MAX_PROPERTIES {
                    return Err(DecodeError::TooManyProperties);
                }
                vals.push(decode_property_value(r.bytes()?)?);
            }
            (1 | 2, _) => return Err(DecodeError::WrongWireType(field)),
            _ => r.skip(wire)?,
        }
    }
    Ok(keys
        .into_iter()
        .zip(vals)
        .map(|(key, (datatype, value))| Property {
            key,
            datatype,
            value,
        })
        .collect())
}

fn decode_property_value(buf: &[u8]) -> Result<(u32, Option<Val>), DecodeError> {
    let mut dt = 0;
    let mut v = None;
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 0) => dt = r.varint()? as u32,
            (2, 0) => {
                if r.varint()? != 0 {
                    v = None;
                }
            }
            (1 | 2, _) => return Err(DecodeError::WrongWireType(field)),
            (3..=8, _) => v = r.val(field, wire, 3)?,
            _ => r.skip(wire)?,
        }
    }
    Ok((dt, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Payload {
        Payload {
            timestamp: Some(1_700_000_000_000),
            seq: Some(7),
            metrics: vec![
                Metric {
                    name: Some("cpu_usage".into()),
                    alias: Some(1001),
                    timestamp: Some(1_700_000_000_001),
                    datatype: Some(datatype::DOUBLE),
                    properties: vec![
                        Property {
                            key: "engUnit".into(),
                            datatype: datatype::STRING,
                            value: Some(Val::Str("%".into())),
                        },
                        Property {
                            key: "Quality".into(),
                            datatype: datatype::INT32,
                            value: Some(Val::Int(192)),
                        },
                    ],
                    value: Some(Val::Double(12.5)),
                    ..Default::default()
                },
                Metric {
                    name: Some("bdSeq".into()),
                    datatype: Some(datatype::INT64),
                    value: Some(Val::Long(3)),
                    ..Default::default()
                },
                Metric {
                    alias: Some(4),
                    is_historical: true,
                    is_null: true,
                    ..Default::default()
                },
                Metric {
                    alias: Some(5),
                    datatype: Some(datatype::FLOAT),
                    value: Some(Val::Float(-1.5)),
                    ..Default::default()
                },
                Metric {
                    alias: Some(6),
                    datatype: Some(datatype::BOOLEAN),
                    value: Some(Val::Bool(true)),
                    ..Default::default()
                },
                Metric {
                    name: Some("s".into()),
                    datatype: Some(datatype::STRING),
                    value: Some(Val::Str("été".into())),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
    }

    /// Bytes protoc's encoder produces for a known message (checked by
    /// hand against the wire format): timestamp=1, one metric named "a"
    /// of type Boolean with value true, seq=0.
    #[test]
    fn matches_protobuf_wire_format() {
        let p = Payload {
            timestamp: Some(1),
            seq: Some(0),
            metrics: vec![Metric {
                name: Some("a".into()),
                datatype: Some(datatype::BOOLEAN),
                value: Some(Val::Bool(true)),
                ..Default::default()
            }],
        };
        let want = [
            0x08, 0x01, // timestamp
            0x12, 0x07, // metric, 7 bytes
            0x0a, 0x01, b'a', // name
            0x20, 0x0b, // datatype 11
            0x70, 0x01, // boolean_value (field 14)
            0x18, 0x00, // seq
        ];
        assert_eq!(p.encode(), want);
    }

    /// An NCMD encoded by Google's protobuf runtime (pysparkplug 0.6,
    /// the fuzz seed): decoded field by field.
    #[test]
    fn decodes_what_google_protobuf_encodes() {
        let p = Payload::decode(include_bytes!("../../../fuzz/seeds/spb_payload/ncmd")).unwrap();
        let got: Vec<_> = p
            .metrics
            .iter()
            .map(|m| (m.name.as_deref(), m.alias, m.datatype, m.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some("input_select"),
                    None,
                    Some(datatype::DOUBLE),
                    Some(Val::Double(4.0))
                ),
                (
                    Some("Node Control/Rebirth"),
                    None,
                    Some(datatype::BOOLEAN),
                    Some(Val::Bool(true))
                ),
                (
                    Some("server_status"),
                    None,
                    Some(datatype::STRING),
                    Some(Val::Str("OK".into()))
                ),
                // Int8 -1 travels as a uint32 0xff in int_value.
                (None, Some(1010), Some(datatype::INT8), Some(Val::Int(0xff))),
            ]
        );
        assert!(p.timestamp.is_some());
    }

    #[test]
    fn hostile_inputs_are_errors_not_panics() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (vec![0x08], DecodeError::Truncated),
            (vec![0x08, 0xff], DecodeError::Truncated),
            (
                vec![0x08; 1].into_iter().chain([0xff; 10]).collect(),
                DecodeError::VarintOverflow,
            ),
            (
                vec![
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                DecodeError::VarintOverflow,
            ),
            // A metric claiming 2^63 bytes.
            (
                vec![0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                DecodeError::Truncated,
            ),
            // A metric claiming more bytes than there are.
            (vec![0x12, 0x05, 0x0a], DecodeError::Truncated),
            // Groups (wire types 3/4) and the undefined 6/7.
            (vec![0x2b], DecodeError::BadWireType(3)),
            (vec![0x2e], DecodeError::BadWireType(6)),
            // Field 0.
            (vec![0x00, 0x00], DecodeError::ZeroField),
            // Metrics sent as a varint.
            (vec![0x10, 0x01], DecodeError::WrongWireType(2)),
            // A name that is not UTF-8.
            (
                vec![0x12, 0x04, 0x0a, 0x02, 0xc3, 0x28],
                DecodeError::BadUtf8,
            ),
            // double_value with a varint wire type.
            (vec![0x12, 0x02, 0x68, 0x01], DecodeError::WrongWireType(13)),
            // A truncated double.
            (vec![0x12, 0x03, 0x69, 0x00, 0x00], DecodeError::Truncated),
            // A field key whose number does not fit 32 bits.
            (
                vec![0xf8, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00],
                DecodeError::VarintOverflow,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(Payload::decode(&bytes), Err(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn too_many_metrics_and_properties_are_refused() {
        let mut buf = Vec::new();
        for _ in 0..=MAX_METRICS {
            buf.extend_from_slice(&[0x12, 0x00]);
        }
        assert_eq!(Payload::decode(&buf), Err(DecodeError::TooManyMetrics));
        let mut ps = Vec::new();
        for _ in 0..=MAX_PROPERTIES {
            ps.extend_from_slice(&[0x0a, 0x01, b'k']);
        }
        let mut m = Vec::new();
        put_bytes(&mut m, 9, &ps);
        let mut buf = Vec::new();
        put_bytes(&mut buf, 2, &m);
        assert_eq!(Payload::decode(&buf), Err(DecodeError::TooManyProperties));
    }

    /// Deeply nested property sets, DataSets and Templates are skipped by
    /// length, never walked: 100,000 levels decode in one pass.
    #[test]
    fn deep_nesting_is_skipped_not_recursed() {
        // PropertyValue { propertyset_value (9) = PropertySet { values (2)
        // = PropertyValue { ... } } }, 100,000 levels, written outside-in
        // from precomputed lengths (building it inside-out copies O(n²)).
        const LEVELS: usize = 100_000;
        let vlen = |n: u64| {
            let mut b = Vec::new();
            put_varint(&mut b, n);
            b.len() as u64
        };
        // pv[i]: bytes of the PropertyValue at depth i (counted from the
        // innermost, which is empty).
        let mut pv = vec![0u64; LEVELS + 1];
        for i in 1..=LEVELS {
            let set = 1 + vlen(pv[i - 1]) + pv[i - 1];
            pv[i] = 1 + vlen(set) + set;
        }
        let mut inner = Vec::with_capacity(pv[LEVELS] as usize);
        for i in (1..=LEVELS).rev() {
            let set = 1 + vlen(pv[i - 1]) + pv[i - 1];
            put_key(&mut inner, 9, 2);
            put_varint(&mut inner, set);
            put_key(&mut inner, 2, 2);
            put_varint(&mut inner, pv[i - 1]);
        }
        assert_eq!(inner.len() as u64, pv[LEVELS]);
        let mut set = Vec::new();
        put_bytes(&mut set, 1, b"deep");
        put_bytes(&mut set, 2, &inner);
        let mut m = Vec::new();
        put_bytes(&mut m, 9, &set);
        put_bytes(&mut m, 17, &inner); // a "DataSet"
        let mut buf = Vec::new();
        put_bytes(&mut buf, 2, &m);
        let p = Payload::decode(&buf).unwrap();
        assert_eq!(p.metrics[0].properties[0].key, "deep");
        assert_eq!(p.metrics[0].properties[0].value, None);
        assert_eq!(p.metrics[0].value, None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep (the fuzz target does the real work):
        // every prefix and every single-byte mutation of a valid payload.
        let good = sample().encode();
        for n in 0..=good.len() {
            let _ = Payload::decode(&good[..n]);
        }
        for i in 0..good.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = b;
                let _ = Payload::decode(&m);
            }
        }
    }
}
