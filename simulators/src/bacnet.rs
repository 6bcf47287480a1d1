//! A small, bounds-checked BACnet/IP client codec: the few services the bms
//! poller uses (Who-Is/I-Am, ReadProperty(Multiple), WriteProperty,
//! SubscribeCOV and COV notifications). Every decoder takes untrusted bytes
//! and returns an error instead of panicking.

use std::fmt;

pub const PROP_PRESENT_VALUE: u32 = 85;
pub const PROP_OBJECT_NAME: u32 = 77;
pub const PROP_STATUS_FLAGS: u32 = 111;

pub const SVC_SUBSCRIBE_COV: u8 = 5;
pub const SVC_READ_PROPERTY: u8 = 12;
pub const SVC_READ_PROPERTY_MULTIPLE: u8 = 14;
pub const SVC_WRITE_PROPERTY: u8 = 15;

/// BACnet object types used here (the numeric enumeration of clause 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub object_type: u16,
    pub instance: u32,
}

impl ObjectId {
    pub const ANALOG_INPUT: u16 = 0;
    pub const ANALOG_VALUE: u16 = 2;
    pub const BINARY_OUTPUT: u16 = 4;
    pub const BINARY_VALUE: u16 = 5;
    pub const DEVICE: u16 = 8;
    pub const MULTI_STATE_VALUE: u16 = 19;

    pub fn new(object_type: u16, instance: u32) -> Self {
        Self {
            object_type,
            instance,
        }
    }

    fn encode(&self) -> [u8; 4] {
        ((u32::from(self.object_type) << 22) | (self.instance & 0x3F_FFFF)).to_be_bytes()
    }

    fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let b: [u8; 4] = b
            .try_into()
            .map_err(|_| DecodeError("object identifier length"))?;
        let v = u32::from_be_bytes(b);
        Ok(Self::new((v >> 22) as u16, v & 0x3F_FFFF))
    }

    /// Short name: AI0, AV1, BO2, BV3, MSV4, DEV5, or type:instance.
    pub fn short(&self) -> String {
        let t = match self.object_type {
            Self::ANALOG_INPUT => "AI",
            Self::ANALOG_VALUE => "AV",
            Self::BINARY_OUTPUT => "BO",
            Self::BINARY_VALUE => "BV",
            Self::MULTI_STATE_VALUE => "MSV",
            Self::DEVICE => "DEV",
            t => return format!("{t}:{}", self.instance),
        };
        format!("{t}{}", self.instance)
    }

    /// Parses "AI0", "bo3", "msv6", "av1", "bv2".
    pub fn parse_short(s: &str) -> Option<Self> {
        let s = s.to_ascii_uppercase();
        let split = s.find(|c: char| c.is_ascii_digit())?;
        let (t, n) = s.split_at(split);
        let object_type = match t {
            "AI" => Self::ANALOG_INPUT,
            "AV" => Self::ANALOG_VALUE,
            "BO" => Self::BINARY_OUTPUT,
            "BV" => Self::BINARY_VALUE,
            "MSV" => Self::MULTI_STATE_VALUE,
            "DEV" => Self::DEVICE,
            _ => return None,
        };
        Some(Self::new(
            object_type,
            n.parse().ok().filter(|&i| i <= 0x3F_FFFF)?,
        ))
    }
}

/// An application-tagged value.
#[derive(Debug, Clone, PartialEq)]
pub enum AppValue {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Real(f32),
    Double(f64),
    Enumerated(u32),
    Str(String),
    BitString(Vec<bool>),
    ObjectId(ObjectId),
    /// Octet string, date, time: kept raw.
    Other(u8, Vec<u8>),
}

impl fmt::Display for AppValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppValue::Null => write!(f, "null"),
            AppValue::Bool(b) => write!(f, "{b}"),
            AppValue::Unsigned(v) => write!(f, "{v}"),
            AppValue::Signed(v) => write!(f, "{v}"),
            AppValue::Real(v) => write!(f, "{v}"),
            AppValue::Double(v) => write!(f, "{v}"),
            AppValue::Enumerated(v) => write!(f, "{v}"),
            AppValue::Str(s) => write!(f, "{s}"),
            AppValue::BitString(b) => {
                write!(
                    f,
                    "{}",
                    b.iter()
                        .map(|&x| if x { '1' } else { '0' })
                        .collect::<String>()
                )
            }
            AppValue::ObjectId(o) => write!(f, "{}", o.short()),
            AppValue::Other(t, b) => write!(f, "tag{t}:{}B", b.len()),
        }
    }
}

impl AppValue {
    /// A number for tables and comparisons (enumerations as their value).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            AppValue::Bool(b) => Some(f64::from(u8::from(b))),
            AppValue::Unsigned(v) => Some(v as f64),
            AppValue::Signed(v) => Some(v as f64),
            AppValue::Real(v) => Some(f64::from(v)),
            AppValue::Double(v) => Some(v),
            AppValue::Enumerated(v) => Some(f64::from(v)),
            _ => None,
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BACnet decode: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

// ------------------------------------------------------------------ encoding

fn tag_header(out: &mut Vec<u8>, number: u8, context: bool, len: usize) {
    let class = if context { 0x08 } else { 0 };
    let (first, ext) = if number <= 14 {
        (number << 4, None)
    } else {
        (0xF0, Some(number))
    };
    if len <= 4 {
        out.push(first | class | len as u8);
        out.extend(ext);
    } else {
        out.push(first | class | 5);
        out.extend(ext);
        if len <= 253 {
            out.push(len as u8);
        } else if len <= 0xFFFF {
            out.push(254);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(255);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn unsigned_bytes(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(7);
    b[skip..].to_vec()
}

fn ctx_unsigned(out: &mut Vec<u8>, number: u8, v: u64) {
    let b = unsigned_bytes(v);
    tag_header(out, number, true, b.len());
    out.extend_from_slice(&b);
}

fn ctx_object(out: &mut Vec<u8>, number: u8, o: ObjectId) {
    tag_header(out, number, true, 4);
    out.extend_from_slice(&o.encode());
}

fn open(out: &mut Vec<u8>, number: u8) {
    out.push((number << 4) | 0x0E);
}

fn close(out: &mut Vec<u8>, number: u8) {
    out.push((number << 4) | 0x0F);
}

/// Encodes an application-tagged value (the types a write needs).
pub fn encode_app(out: &mut Vec<u8>, v: &AppValue) {
    match v {
        AppValue::Null => out.push(0x00),
        AppValue::Bool(b) => out.push(0x10 | u8::from(*b)),
        AppValue::Unsigned(x) => {
            let b = unsigned_bytes(*x);
            tag_header(out, 2, false, b.len());
            out.extend_from_slice(&b);
        }
        AppValue::Signed(x) => {
            let b = x.to_be_bytes();
            // Shortest two's-complement form.
            let mut skip = 0;
            while skip < 7
                && ((b[skip] == 0 && b[skip + 1] & 0x80 == 0)
                    || (b[skip] == 0xFF && b[skip + 1] & 0x80 != 0))
            {
                skip += 1;
            }
            tag_header(out, 3, false, 8 - skip);
            out.extend_from_slice(&b[skip..]);
        }
        AppValue::Real(x) => {
            out.push(0x44);
            out.extend_from_slice(&x.to_be_bytes());
        }
        AppValue::Double(x) => {
            out.extend_from_slice(&[0x55, 8]);
            out.extend_from_slice(&x.to_be_bytes());
        }
        AppValue::Enumerated(x) => {
            let b = unsigned_bytes(u64::from(*x));
            tag_header(out, 9, false, b.len());
            out.extend_from_slice(&b);
        }
        AppValue::Str(s) => {
            tag_header(out, 7, false, s.len() + 1);
            out.push(0); // UTF-8
            out.extend_from_slice(s.as_bytes());
        }
        AppValue::BitString(bits) => {
            let nbytes = bits.len().div_ceil(8);
            tag_header(out, 8, false, nbytes + 1);
            out.push((nbytes * 8 - bits.len()) as u8);
            for chunk in bits.chunks(8) {
                let mut byte = 0u8;
                for (i, &b) in chunk.iter().enumerate() {
                    byte |= u8::from(b) << (7 - i);
                }
                out.push(byte);
            }
        }
        AppValue::ObjectId(o) => {
            out.push(0xC4);
            out.extend_from_slice(&o.encode());
        }
        AppValue::Other(t, b) => {
            tag_header(out, *t, false, b.len());
            out.extend_from_slice(b);
        }
    }
}

/// BVLC Original-Unicast/Broadcast-NPDU around an NPDU + APDU.
fn bvlc(broadcast: bool, expecting_reply: bool, apdu: &[u8]) -> Vec<u8> {
    let len = 4 + 2 + apdu.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[0x81, if broadcast { 0x0B } else { 0x0A }]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[0x01, if expecting_reply { 0x04 } else { 0x00 }]);
    out.extend_from_slice(apdu);
    out
}

fn confirmed(invoke: u8, service: u8, body: &[u8]) -> Vec<u8> {
    // Unsegmented request, we accept up to 1476-byte APDUs, no segments.
    let mut apdu = vec![0x00, 0x05, invoke, service];
    apdu.extend_from_slice(body);
    bvlc(false, true, &apdu)
}

/// Who-Is, optionally limited to one device instance.
pub fn who_is(broadcast: bool, instance: Option<u32>) -> Vec<u8> {
    let mut apdu = vec![0x10, 0x08];
    if let Some(i) = instance {
        ctx_unsigned(&mut apdu, 0, u64::from(i));
        ctx_unsigned(&mut apdu, 1, u64::from(i));
    }
    bvlc(broadcast, false, &apdu)
}

pub fn read_property(invoke: u8, obj: ObjectId, prop: u32) -> Vec<u8> {
    let mut b = Vec::new();
    ctx_object(&mut b, 0, obj);
    ctx_unsigned(&mut b, 1, u64::from(prop));
    confirmed(invoke, SVC_READ_PROPERTY, &b)
}

pub fn read_property_multiple(invoke: u8, reqs: &[(ObjectId, Vec<u32>)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (obj, props) in reqs {
        ctx_object(&mut b, 0, *obj);
        open(&mut b, 1);
        for &p in props {
            ctx_unsigned(&mut b, 0, u64::from(p));
        }
        close(&mut b, 1);
    }
    confirmed(invoke, SVC_READ_PROPERTY_MULTIPLE, &b)
}

pub fn write_property(
    invoke: u8,
    obj: ObjectId,
    prop: u32,
    value: &AppValue,
    priority: Option<u8>,
) -> Vec<u8> {
    let mut b = Vec::new();
    ctx_object(&mut b, 0, obj);
    ctx_unsigned(&mut b, 1, u64::from(prop));
    open(&mut b, 3);
    encode_app(&mut b, value);
    close(&mut b, 3);
    if let Some(p) = priority {
        ctx_unsigned(&mut b, 4, u64::from(p));
    }
    confirmed(invoke, SVC_WRITE_PROPERTY, &b)
}

/// SubscribeCOV; `lifetime` None with `cancel` = cancellation.
pub fn subscribe_cov(
    invoke: u8,
    process_id: u32,
    obj: ObjectId,
    confirmed_notify: bool,
    lifetime_s: Option<u32>,
) -> Vec<u8> {
    let mut b = Vec::new();
    ctx_unsigned(&mut b, 0, u64::from(process_id));
    ctx_object(&mut b, 1, obj);
    if let Some(l) = lifetime_s {
        b.extend_from_slice(&[0x29, u8::from(confirmed_notify)]);
        ctx_unsigned(&mut b, 3, u64::from(l));
    }
    confirmed(invoke, SVC_SUBSCRIBE_COV, &b)
}

/// SimpleACK for a confirmed COV notification we received.
pub fn simple_ack(invoke: u8, service: u8) -> Vec<u8> {
    bvlc(false, false, &[0x20, invoke, service])
}

// ------------------------------------------------------------------ decoding

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    App { number: u8, lvt: u32 },
    Ctx { number: u8, len: usize },
    Open(u8),
    Close(u8),
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self.b.get(self.pos).ok_or(DecodeError("truncated"))?;
        self.pos += 1;
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError("length overflow"))?;
        let s = self.b.get(self.pos..end).ok_or(DecodeError("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn tag(&mut self) -> Result<Tag, DecodeError> {
        let first = self.u8()?;
        let mut number = first >> 4;
        if number == 0x0F {
            number = self.u8()?;
        }
        let context = first & 0x08 != 0;
        let lvt = first & 0x07;
        if context && lvt == 6 {
            return Ok(Tag::Open(number));
        }
        if context && lvt == 7 {
            return Ok(Tag::Close(number));
        }
        let len = if lvt == 5 {
            match self.u8()? {
                254 => u32::from(u16::from_be_bytes([self.u8()?, self.u8()?])),
                255 => u32::from_be_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]),
                n => u32::from(n),
            }
        } else {
            u32::from(lvt)
        };
        Ok(if context {
            Tag::Ctx {
                number,
                len: len as usize,
            }
        } else {
            Tag::App { number, lvt: len }
        })
    }

    fn peek_tag(&mut self) -> Result<Tag, DecodeError> {
        let save = self.pos;
        let t = self.tag();
        self.pos = save;
        t
    }

    fn app_value(&mut self, number: u8, lvt: u32) -> Result<AppValue, DecodeError> {
        if number == 1 {
            // Boolean: the value is in the tag itself.
            return Ok(AppValue::Bool(lvt != 0));
        }
        let data = self.take(lvt as usize)?;
        Ok(match number {
            0 => AppValue::Null,
            2 => AppValue::Unsigned(be_unsigned(data)?),
            3 => AppValue::Signed(be_signed(data)?),
            4 => AppValue::Real(f32::from_be_bytes(
                data.try_into().map_err(|_| DecodeError("REAL length"))?,
            )),
            5 => AppValue::Double(f64::from_be_bytes(
                data.try_into().map_err(|_| DecodeError("Double length"))?,
            )),
            7 => {
                let (&charset, s) = data.split_first().ok_or(DecodeError("empty string"))?;
                match charset {
                    0 => AppValue::Str(String::from_utf8_lossy(s).into_owned()),
                    _ => AppValue::Other(7, data.to_vec()),
                }
            }
            8 => {
                let (&unused, bytes) = data.split_first().ok_or(DecodeError("empty bit string"))?;
                let total = (bytes.len() * 8)
                    .checked_sub(usize::from(unused))
                    .ok_or(DecodeError("bit string"))?;
                AppValue::BitString(
                    (0..total)
                        .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
                        .collect(),
                )
            }
            9 => AppValue::Enumerated(
                u32::try_from(be_unsigned(data)?)
                    .map_err(|_| DecodeError("enumerated too large"))?,
            ),
            12 => AppValue::ObjectId(ObjectId::decode(data)?),
            n => AppValue::Other(n, data.to_vec()),
        })
    }

    fn ctx_unsigned(&mut self, want: u8) -> Result<u64, DecodeError> {
        match self.tag()? {
            Tag::Ctx { number, len } if number == want => be_unsigned(self.take(len)?),
            _ => Err(DecodeError("expected context unsigned")),
        }
    }

    fn ctx_object(&mut self, want: u8) -> Result<ObjectId, DecodeError> {
        match self.tag()? {
            Tag::Ctx { number, len } if number == want => ObjectId::decode(self.take(len)?),
            _ => Err(DecodeError("expected context object identifier")),
        }
    }

    fn expect_open(&mut self, want: u8) -> Result<(), DecodeError> {
        match self.tag()? {
            Tag::Open(n) if n == want => Ok(()),
            _ => Err(DecodeError("expected opening tag")),
        }
    }

    /// Application values up to the closing tag `want`; constructed
    /// (context-tagged) content is skipped, nesting tracked.
    fn values_until_close(&mut self, want: u8) -> Result<Vec<AppValue>, DecodeError> {
        let mut out = Vec::new();
        let mut depth = 0u32;
        loop {
            match self.tag()? {
                Tag::Close(n) if depth == 0 && n == want => return Ok(out),
                Tag::Close(_) => {
                    depth = depth.checked_sub(1).ok_or(DecodeError("unbalanced tags"))?
                }
                Tag::Open(_) => {
                    depth += 1;
                    if depth > 32 {
                        return Err(DecodeError("nesting too deep"));
                    }
                }
                Tag::Ctx { len, .. } => {
                    self.take(len)?;
                }
                Tag::App { number, lvt } => {
                    let v = self.app_value(number, lvt)?;
                    if depth == 0 {
                        out.push(v);
                    }
                }
            }
        }
    }
}

fn be_unsigned(d: &[u8]) -> Result<u64, DecodeError> {
    if d.is_empty() || d.len() > 8 {
        return Err(DecodeError("unsigned length"));
    }
    Ok(d.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
}

fn be_signed(d: &[u8]) -> Result<i64, DecodeError> {
    let u = be_unsigned(d)?;
    let shift = 64 - 8 * d.len() as u32;
    Ok(((u << shift) as i64) >> shift)
}

/// One property result of a ReadPropertyMultiple-ACK.
#[derive(Debug, Clone, PartialEq)]
pub struct PropResult {
    pub property: u32,
    /// Values, or the BACnet error (class, code).
    pub value: Result<Vec<AppValue>, (u32, u32)>,
}

/// A COV notification's values.
#[derive(Debug, Clone, PartialEq)]
pub struct CovNotification {
    pub process_id: u32,
    pub device: ObjectId,
    pub object: ObjectId,
    pub time_remaining: u64,
    pub values: Vec<(u32, Vec<AppValue>)>,
}

/// A decoded datagram from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Apdu {
    IAm {
        device: ObjectId,
        max_apdu: u64,
        vendor: u64,
    },
    ComplexAck {
        invoke: u8,
        service: u8,
        body: Vec<u8>,
    },
    SimpleAck {
        invoke: u8,
        service: u8,
    },
    Error {
        invoke: u8,
        service: u8,
        class: u32,
        code: u32,
    },
    Reject {
        invoke: u8,
        reason: u8,
    },
    Abort {
        invoke: u8,
        reason: u8,
    },
    Cov {
        confirmed_invoke: Option<u8>,
        notification: CovNotification,
    },
    /// Anything else (other services, segmented ACKs, network messages).
    Other(&'static str),
}

/// Decodes BVLC + NPDU + APDU.
pub fn decode(datagram: &[u8]) -> Result<Apdu, DecodeError> {
    let mut r = Reader::new(datagram);
    if r.u8()? != 0x81 {
        return Err(DecodeError("not BVLC/IP"));
    }
    let func = r.u8()?;
    let len = usize::from(u16::from_be_bytes([r.u8()?, r.u8()?]));
    if len != datagram.len() {
        return Err(DecodeError("BVLC length mismatch"));
    }
    match func {
        0x0A | 0x0B => {}
        0x04 => {
            r.take(6)?; // Forwarded-NPDU: original source B/IP address
        }
        _ => return Ok(Apdu::Other("BVLC function")),
    }
    if r.u8()? != 0x01 {
        return Err(DecodeError("NPDU version"));
    }
    let control = r.u8()?;
    if control & 0x80 != 0 {
        return Ok(Apdu::Other("network layer message"));
    }
    if control & 0x20 != 0 {
        r.take(2)?;
        let dlen = r.u8()?;
        r.take(usize::from(dlen))?;
    }
    if control & 0x08 != 0 {
        r.take(2)?;
        let slen = r.u8()?;
        r.take(usize::from(slen))?;
    }
    if control & 0x20 != 0 {
        r.u8()?; // hop count
    }
    let first = r.u8()?;
    match first >> 4 {
        0x0 => {
            // Confirmed request: only COV notifications are expected.
            if first & 0x08 != 0 {
                return Ok(Apdu::Other("segmented request"));
            }
            r.u8()?;
            let invoke = r.u8()?;
            let service = r.u8()?;
            if service != 1 {
                return Ok(Apdu::Other("confirmed service"));
            }
            Ok(Apdu::Cov {
                confirmed_invoke: Some(invoke),
                notification: cov_body(&mut r)?,
            })
        }
        0x1 => match r.u8()? {
            0 => {
                let device = match r.tag()? {
                    Tag::App { number: 12, lvt: 4 } => ObjectId::decode(r.take(4)?)?,
                    _ => return Err(DecodeError("I-Am device identifier")),
                };
                let max_apdu = match r.tag()? {
                    Tag::App { number: 2, lvt } => be_unsigned(r.take(lvt as usize)?)?,
                    _ => return Err(DecodeError("I-Am max APDU")),
                };
                match r.tag()? {
                    Tag::App { number: 9, lvt } => {
                        r.take(lvt as usize)?;
                    }
                    _ => return Err(DecodeError("I-Am segmentation")),
                }
                let vendor = match r.tag()? {
                    Tag::App { number: 2, lvt } => be_unsigned(r.take(lvt as usize)?)?,
                    _ => return Err(DecodeError("I-Am vendor")),
                };
                Ok(Apdu::IAm {
                    device,
                    max_apdu,
                    vendor,
                })
            }
            2 => Ok(Apdu::Cov {
                confirmed_invoke: None,
                notification: cov_body(&mut r)?,
            }),
            _ => Ok(Apdu::Other("unconfirmed service")),
        },
        0x2 => Ok(Apdu::SimpleAck {
            invoke: r.u8()?,
            service: r.u8()?,
        }),
        0x3 => {
            if first & 0x08 != 0 {
                return Ok(Apdu::Other("segmented ComplexACK"));
            }
            let invoke = r.u8()?;
            let service = r.u8()?;
            let body = r.take(datagram.len() - r.pos)?.to_vec();
            Ok(Apdu::ComplexAck {
                invoke,
                service,
                body,
            })
        }
        0x5 => {
            let invoke = r.u8()?;
            let service = r.u8()?;
            let enum_val = |r: &mut Reader<'_>| -> Result<u32, DecodeError> {
                match r.tag()? {
                    Tag::App { number: 9, lvt } => {
                        u32::try_from(be_unsigned(r.take(lvt as usize)?)?)
                            .map_err(|_| DecodeError("error enum"))
                    }
                    _ => Err(DecodeError("error class/code")),
                }
            };
            // Some services wrap the error in an opening tag 0.
            if let Ok(Tag::Open(0)) = r.peek_tag() {
                r.tag()?;
            }
            let class = enum_val(&mut r)?;
            let code = enum_val(&mut r)?;
            Ok(Apdu::Error {
                invoke,
                service,
                class,
                code,
            })
        }
        0x6 => Ok(Apdu::Reject {
            invoke: r.u8()?,
            reason: r.u8()?,
        }),
        0x7 => Ok(Apdu::Abort {
            invoke: r.u8()?,
            reason: r.u8()?,
        }),
        _ => Ok(Apdu::Other("PDU type")),
    }
}

fn cov_body(r: &mut Reader<'_>) -> Result<CovNotification, DecodeError> {
    let process_id = u32::try_from(r.ctx_unsigned(0)?).map_err(|_| DecodeError("process id"))?;
    let device = r.ctx_object(1)?;
    let object = r.ctx_object(2)?;
    let time_remaining = r.ctx_unsigned(3)?;
    r.expect_open(4)?;
    let mut values = Vec::new();
    loop {
        match r.peek_tag()? {
            Tag::Close(4) => break,
            _ => {
                let prop =
                    u32::try_from(r.ctx_unsigned(0)?).map_err(|_| DecodeError("property id"))?;
                if let Tag::Ctx { number: 1, .. } = r.peek_tag()? {
                    r.ctx_unsigned(1)?; // array index
                }
                r.expect_open(2)?;
                let v = r.values_until_close(2)?;
                if let Tag::Ctx { number: 3, .. } = r.peek_tag()? {
                    r.ctx_unsigned(3)?; // priority
                }
                values.push((prop, v));
            }
        }
    }
    Ok(CovNotification {
        process_id,
        device,
        object,
        time_remaining,
        values,
    })
}

/// Parses a ReadPropertyMultiple-ACK body.
pub fn parse_rpm_ack(body: &[u8]) -> Result<Vec<(ObjectId, Vec<PropResult>)>, DecodeError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    while !r.done() {
        let obj = r.ctx_object(0)?;
        r.expect_open(1)?;
        let mut props = Vec::new();
        loop {
            if let Tag::Close(1) = r.peek_tag()? {
                r.tag()?;
                break;
            }
            let property =
                u32::try_from(r.ctx_unsigned(2)?).map_err(|_| DecodeError("property id"))?;
            if let Tag::Ctx { number: 3, .. } = r.peek_tag()? {
                r.ctx_unsigned(3)?;
            }
            let value = match r.tag()? {
                Tag::Open(4) => Ok(r.values_until_close(4)?),
                Tag::Open(5) => {
                    let vals = r.values_until_close(5)?;
                    match vals.as_slice() {
                        [AppValue::Enumerated(c), AppValue::Enumerated(k)] => Err((*c, *k)),
                        _ => return Err(DecodeError("property access error")),
                    }
                }
                _ => return Err(DecodeError("expected property value or error")),
            };
            props.push(PropResult { property, value });
            if props.len() > 10_000 {
                return Err(DecodeError("too many properties"));
            }
        }
        out.push((obj, props));
    }
    Ok(out)
}

/// Parses a ReadProperty-ACK body: the value(s).
pub fn parse_rp_ack(body: &[u8]) -> Result<(ObjectId, u32, Vec<AppValue>), DecodeError> {
    let mut r = Reader::new(body);
    let obj = r.ctx_object(0)?;
    let prop = u32::try_from(r.ctx_unsigned(1)?).map_err(|_| DecodeError("property id"))?;
    if let Tag::Ctx { number: 2, .. } = r.peek_tag()? {
        r.ctx_unsigned(2)?;
    }
    r.expect_open(3)?;
    Ok((obj, prop, r.values_until_close(3)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn who_is_bytes() {
        assert_eq!(
            who_is(false, None),
            vec![0x81, 0x0A, 0, 8, 1, 0, 0x10, 0x08]
        );
    }

    #[test]
    fn rpm_request_bytes() {
        let p = read_property_multiple(7, &[(ObjectId::new(0, 1), vec![PROP_PRESENT_VALUE])]);
        // BVLC, NPDU expecting reply, confirmed RPM invoke 7, AI1 { PV }.
        assert_eq!(
            p,
            vec![0x81, 0x0A, 0, 19, 1, 4, 0, 5, 7, 14, 0x0C, 0, 0, 0, 1, 0x1E, 0x09, 85, 0x1F]
        );
    }

    #[test]
    fn decodes_rpm_ack_with_error() {
        // AI0 PV = 12.5; AI1 PV -> error (object, unknown-object)
        let mut body = vec![0x0C, 0, 0, 0, 0, 0x1E, 0x29, 85, 0x4E, 0x44];
        body.extend_from_slice(&12.5f32.to_be_bytes());
        body.extend_from_slice(&[
            0x4F, 0x1F, 0x0C, 0, 0, 0, 1, 0x1E, 0x29, 85, 0x5E, 0x91, 1, 0x91, 31, 0x5F, 0x1F,
        ]);
        let r = parse_rpm_ack(&body).expect("decode");
        assert_eq!(r[0].1[0].value, Ok(vec![AppValue::Real(12.5)]));
        assert_eq!(r[1].1[0].value, Err((1, 31)));
    }

    #[test]
    fn app_values_round_trip() {
        for v in [
            AppValue::Null,
            AppValue::Bool(true),
            AppValue::Unsigned(70000),
            AppValue::Signed(-200),
            AppValue::Signed(127),
            AppValue::Real(0.75),
            AppValue::Double(-1.5),
            AppValue::Enumerated(1),
            AppValue::Str("Stream Enable".into()),
            AppValue::BitString(vec![false, true, false, false]),
            AppValue::ObjectId(ObjectId::new(19, 6)),
        ] {
            let mut b = Vec::new();
            encode_app(&mut b, &v);
            let mut r = Reader::new(&b);
            let Tag::App { number, lvt } = r.tag().expect("tag") else {
                panic!("not app")
            };
            assert_eq!(r.app_value(number, lvt).expect("value"), v);
            assert!(r.done());
        }
    }

    #[test]
    fn short_names() {
        assert_eq!(ObjectId::parse_short("msv6"), Some(ObjectId::new(19, 6)));
        assert_eq!(ObjectId::new(4, 3).short(), "BO3");
        assert_eq!(ObjectId::parse_short("XX1"), None);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&data);
            let _ = parse_rpm_ack(&data);
            let _ = parse_rp_ack(&data);
            // Valid envelope, random APDU.
            let mut d = vec![0x81, 0x0A, 0, 0, 1, 0];
            d.extend_from_slice(&data);
            let n = d.len() as u16;
            d[2..4].copy_from_slice(&n.to_be_bytes());
            let _ = decode(&d);
        }
    }
}
