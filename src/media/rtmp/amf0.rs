//! AMF0 values (RTMP command and data messages): a bounds-checked decoder and the encoder for our replies.

use std::fmt;

/// Nesting limit: objects inside objects deeper than this are refused (a
/// hostile peer could otherwise recurse the decoder off the stack).
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Amf {
    Number(f64),
    Bool(bool),
    String(String),
    /// Object and ECMA array: ordered (key, value) pairs.
    Object(Vec<(String, Amf)>),
    Null,
    Undefined,
    Array(Vec<Amf>),
    Date(f64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmfError(pub String);

impl fmt::Display for AmfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AMF0: {}", self.0)
    }
}

impl Amf {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A property of an object (first match).
    pub fn get(&self, key: &str) -> Option<&Amf> {
        match self {
            Amf::Object(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Decodes every value in `buf` (a command: name, transaction id, ...).
pub fn decode_all(buf: &[u8]) -> Result<Vec<Amf>, AmfError> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while r.pos < buf.len() {
        out.push(r.value(0)?);
    }
    Ok(out)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], AmfError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| AmfError(format!("truncated at byte {}", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, AmfError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, AmfError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, AmfError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, AmfError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn string(&mut self, n: usize) -> Result<String, AmfError> {
        // Lossy: a stream key with invalid UTF-8 simply does not match.
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// Key/value pairs up to the object-end marker (00 00 09).
    fn props(&mut self, depth: usize) -> Result<Vec<(String, Amf)>, AmfError> {
        let mut kv = Vec::new();
        loop {
            let n = usize::from(self.u16()?);
            if n == 0 {
                // Empty key: the object end marker must follow.
                if self.u8()? != 9 {
                    return Err(AmfError("empty property name".into()));
                }
                return Ok(kv);
            }
            let k = self.string(n)?;
            let v = self.value(depth + 1)?;
            kv.push((k, v));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Amf, AmfError> {
        if depth > MAX_DEPTH {
            return Err(AmfError("nesting too deep".into()));
        }
        let at = self.pos;
        Ok(match self.u8()? {
            0 => Amf::Number(self.f64()?),
            1 => Amf::Bool(self.u8()? != 0),
            2 => {
                let n = usize::from(self.u16()?);
                Amf::String(self.string(n)?)
            }
            3 => Amf::Object(self.props(depth)?),
            5 => Amf::Null,
            6 => Amf::Undefined,
            8 => {
                // The count is a hint (often wrong); the end marker rules.
                self.u32()?;
                Amf::Object(self.props(depth)?)
            }
            10 => {
                let n = self.u32()? as usize;
                // Every element is at least one byte: a count larger than
                // what is left is a lie, refused before allocating.
                if n > self.buf.len() - self.pos {
                    return Err(AmfError("strict array count exceeds the message".into()));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(depth + 1)?);
                }
                Amf::Array(v)
            }
            11 => {
                let t = self.f64()?;
                self.u16()?;
                Amf::Date(t)
            }
            12 => {
                let n = self.u32()? as usize;
                Amf::String(self.string(n)?)
            }
            m => {
                return Err(AmfError(format!(
                    "unsupported marker {m:#04x} at byte {at}"
                )))
            }
        })
    }
}

/// Encodes one value.
pub fn encode(v: &Amf, out: &mut Vec<u8>) {
    match v {
        Amf::Number(n) => {
            out.push(0);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        Amf::String(s) => {
            if s.len() <= 0xFFFF {
                out.push(2);
                out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            } else {
                out.push(12);
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            }
            out.extend_from_slice(s.as_bytes());
        }
        Amf::Object(kv) => {
            out.push(3);
            for (k, v) in kv {
                let k = &k.as_bytes()[..k.len().min(0xFFFF)];
                out.extend_from_slice(&(k.len() as u16).to_be_bytes());
                out.extend_from_slice(k);
                encode(v, out);
            }
            out.extend_from_slice(&[0, 0, 9]);
        }
        Amf::Null => out.push(5),
        Amf::Undefined => out.push(6),
        Amf::Array(a) => {
            out.push(10);
            out.extend_from_slice(&(a.len() as u32).to_be_bytes());
            for v in a {
                encode(v, out);
            }
        }
        Amf::Date(t) => {
            out.push(11);
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
}

/// Encodes a sequence of values (a command).
pub fn encode_all(vs: &[Amf]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in vs {
        encode(v, &mut out);
    }
    out
}

/// Shorthand for building objects.
pub fn obj(kv: &[(&str, Amf)]) -> Amf {
    Amf::Object(kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

pub fn s(v: &str) -> Amf {
    Amf::String(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects, ECMA arrays and strict arrays nested 100,000 deep (a 1 MiB
    /// RTMP message holds that many) stop at the limit with an error.
    #[test]
    fn depth_100k_is_a_clean_error() {
        let n = 100_000;
        let object: Vec<u8> = [3u8, 0, 1, b'a'].repeat(n);
        let ecma: Vec<u8> = [8u8, 0, 0, 0, 1, 0, 1, b'a'].repeat(n);
        let strict: Vec<u8> = [10u8, 0, 0, 0, 1].repeat(n);
        for b in [object, ecma, strict] {
            let e = decode_all(&b).expect_err("too deep");
            assert_eq!(e, AmfError("nesting too deep".into()));
        }
        // At the limit it decodes (16 levels under the top value).
        let mut ok = [3u8, 0, 1, b'a'].repeat(MAX_DEPTH);
        ok.push(5);
        ok.extend([0u8, 0, 9].repeat(MAX_DEPTH));
        let v = decode_all(&ok).expect("at the limit");
        assert_eq!(v.len(), 1);
    }
}
