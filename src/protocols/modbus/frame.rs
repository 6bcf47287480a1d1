//! Modbus TCP framing of untrusted bytes: MBAP header splitting, bounds-checked request PDU decoding, response and exception encoding.
//!
//! Nothing here panics on any input: every index is checked, every length is
//! compared before it is used, and quantities are validated against the spec
//! limits before any allocation sized by them. The proptest fuzz tests at the
//! bottom hold that line.

/// MBAP header length: transaction id (2), protocol id (2), length (2), unit id (1).
pub const MBAP_LEN: usize = 7;
/// Largest MBAP `length` field: unit id + a 253-byte PDU.
pub const MAX_MBAP_LENGTH: u16 = 254;
/// Smallest MBAP `length` field: unit id + function code.
pub const MIN_MBAP_LENGTH: u16 = 2;

/// Spec limits (Modbus Application Protocol v1.1b3, section 6).
pub const MAX_READ_BITS: u16 = 2000;
pub const MAX_READ_REGS: u16 = 125;
pub const MAX_WRITE_BITS: u16 = 1968;
pub const MAX_WRITE_REGS: u16 = 123;
/// FC23's write quantity is smaller than FC16's: the request also carries the read fields.
pub const MAX_RW_WRITE_REGS: u16 = 121;

/// MEI type of Read Device Identification (FC43/14).
pub const MEI_READ_DEVICE_ID: u8 = 0x0E;

/// Modbus exception codes castpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    IllegalFunction = 0x01,
    IllegalDataAddress = 0x02,
    IllegalDataValue = 0x03,
    ServerDeviceFailure = 0x04,
    /// Used for unit ids castpoint does not answer for.
    GatewayTargetFailed = 0x0B,
}

/// The MBAP fields a response echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mbap {
    pub transaction: u16,
    pub unit: u8,
}

/// Why an MBAP header cannot be framed. The stream cannot be resynchronised
/// after one (there is no frame delimiter in Modbus TCP), so the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadMbap {
    ProtocolId(u16),
    Length(u16),
}

impl std::fmt::Display for BadMbap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadMbap::ProtocolId(p) => write!(f, "MBAP protocol id {p} (must be 0)"),
            BadMbap::Length(l) => write!(
                f,
                "MBAP length {l} (must be {MIN_MBAP_LENGTH}..={MAX_MBAP_LENGTH})"
            ),
        }
    }
}

/// Finds the first complete frame in `buf`: `Ok(None)` while more bytes are
/// needed, `Ok(Some((header, total_len)))` when `buf[MBAP_LEN..total_len]` is
/// a whole PDU.
pub fn split_frame(buf: &[u8]) -> Result<Option<(Mbap, usize)>, BadMbap> {
    let Some(h) = buf.get(..MBAP_LEN) else {
        // Reject a bad protocol id or length as soon as those bytes are in,
        // so a peer cannot park a connection on a header that can never frame.
        if let Some(p) = buf.get(2..4) {
            let pid = u16::from_be_bytes([p[0], p[1]]);
            if pid != 0 {
                return Err(BadMbap::ProtocolId(pid));
            }
        }
        if let Some(l) = buf.get(4..6) {
            check_length(u16::from_be_bytes([l[0], l[1]]))?;
        }
        return Ok(None);
    };
    let pid = u16::from_be_bytes([h[2], h[3]]);
    if pid != 0 {
        return Err(BadMbap::ProtocolId(pid));
    }
    let len = u16::from_be_bytes([h[4], h[5]]);
    check_length(len)?;
    // len counts the unit id, which is already inside the 7-byte header.
    let total = MBAP_LEN + usize::from(len) - 1;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Mbap {
            transaction: u16::from_be_bytes([h[0], h[1]]),
            unit: h[6],
        },
        total,
    )))
}

fn check_length(len: u16) -> Result<(), BadMbap> {
    if (MIN_MBAP_LENGTH..=MAX_MBAP_LENGTH).contains(&len) {
        Ok(())
    } else {
        Err(BadMbap::Length(len))
    }
}

/// Register values carried in a request, still as big-endian bytes (no
/// allocation on the hot path; the length is checked at decode time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Words<'a>(&'a [u8]);

impl<'a> Words<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() < 2
    }

    pub fn get(&self, i: usize) -> Option<u16> {
        let b = self.0.get(2 * i..2 * i + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Packed coil values of an FC15 request, LSB of the first byte = first coil.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits<'a> {
    bytes: &'a [u8],
    count: u16,
}

impl<'a> Bits<'a> {
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn get(&self, i: usize) -> Option<bool> {
        if i >= usize::from(self.count) {
            return None;
        }
        self.bytes.get(i / 8).map(|b| (b >> (i % 8)) & 1 == 1)
    }
}

/// A decoded, validated request. Quantities are within the spec limits and
/// `addr + qty` fits the 16-bit address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    ReadCoils {
        addr: u16,
        qty: u16,
    },
    ReadDiscreteInputs {
        addr: u16,
        qty: u16,
    },
    ReadHoldingRegisters {
        addr: u16,
        qty: u16,
    },
    ReadInputRegisters {
        addr: u16,
        qty: u16,
    },
    WriteSingleCoil {
        addr: u16,
        value: bool,
    },
    WriteSingleRegister {
        addr: u16,
        value: u16,
    },
    WriteMultipleCoils {
        addr: u16,
        bits: Bits<'a>,
    },
    WriteMultipleRegisters {
        addr: u16,
        words: Words<'a>,
    },
    ReadWriteMultipleRegisters {
        read_addr: u16,
        read_qty: u16,
        write_addr: u16,
        words: Words<'a>,
    },
    ReadDeviceId {
        code: u8,
        object: u8,
    },
}

fn u16_at(pdu: &[u8], i: usize) -> Option<u16> {
    pdu.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Quantity within `1..=max` (else 03), then the range inside the address
/// space (else 02): the order of checks in the spec's state diagrams.
fn check_range(addr: u16, qty: u16, max: u16) -> Result<(), Exception> {
    if qty == 0 || qty > max {
        return Err(Exception::IllegalDataValue);
    }
    if u32::from(addr) + u32::from(qty) > 0x1_0000 {
        return Err(Exception::IllegalDataAddress);
    }
    Ok(())
}

/// A fixed-size request: exactly `n` bytes after the function code.
fn fixed(pdu: &[u8], n: usize) -> Result<(), Exception> {
    if pdu.len() == 1 + n {
        Ok(())
    } else {
        Err(Exception::IllegalDataValue)
    }
}

/// Decodes a request PDU (function code first). Errors are the exception
/// to answer with; a PDU whose length disagrees with its function's layout is
/// answered with 03 (the spec's "illegal data value" covers a request whose
/// byte count or structure is wrong).
pub fn decode_request(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    let Some(&fc) = pdu.first() else {
        return Err(Exception::IllegalFunction);
    };
    match fc {
        0x01..=0x04 => decode_read(pdu, fc),
        0x05 => decode_write_coil(pdu),
        0x06 => decode_write_register(pdu),
        0x0F => decode_write_coils(pdu),
        0x10 => decode_write_registers(pdu),
        0x17 => decode_read_write(pdu),
        0x2B => decode_device_id(pdu),
        _ => Err(Exception::IllegalFunction),
    }
}

/// 01-04: read coils, discrete inputs, holding or input registers.
fn decode_read(pdu: &[u8], fc: u8) -> Result<Request<'_>, Exception> {
    fixed(pdu, 4)?;
    let addr = u16_at(pdu, 1).ok_or(Exception::IllegalDataValue)?;
    let qty = u16_at(pdu, 3).ok_or(Exception::IllegalDataValue)?;
    let max = if fc <= 0x02 {
        MAX_READ_BITS
    } else {
        MAX_READ_REGS
    };
    check_range(addr, qty, max)?;
    Ok(match fc {
        0x01 => Request::ReadCoils { addr, qty },
        0x02 => Request::ReadDiscreteInputs { addr, qty },
        0x03 => Request::ReadHoldingRegisters { addr, qty },
        _ => Request::ReadInputRegisters { addr, qty },
    })
}

/// 05: write single coil (FF00 on, 0000 off, nothing else).
fn decode_write_coil(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    fixed(pdu, 4)?;
    let addr = u16_at(pdu, 1).ok_or(Exception::IllegalDataValue)?;
    let value = match u16_at(pdu, 3) {
        Some(0xFF00) => true,
        Some(0x0000) => false,
        _ => return Err(Exception::IllegalDataValue),
    };
    Ok(Request::WriteSingleCoil { addr, value })
}

/// 06: write single register.
fn decode_write_register(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    fixed(pdu, 4)?;
    let addr = u16_at(pdu, 1).ok_or(Exception::IllegalDataValue)?;
    let value = u16_at(pdu, 3).ok_or(Exception::IllegalDataValue)?;
    Ok(Request::WriteSingleRegister { addr, value })
}

/// 0F: write multiple coils.
fn decode_write_coils(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    let addr = u16_at(pdu, 1).ok_or(Exception::IllegalDataValue)?;
    let qty = u16_at(pdu, 3).ok_or(Exception::IllegalDataValue)?;
    let count = *pdu.get(5).ok_or(Exception::IllegalDataValue)?;
    if qty == 0 || qty > MAX_WRITE_BITS || usize::from(count) != usize::from(qty).div_ceil(8) {
        return Err(Exception::IllegalDataValue);
    }
    let bytes = pdu.get(6..).ok_or(Exception::IllegalDataValue)?;
    if bytes.len() != usize::from(count) {
        return Err(Exception::IllegalDataValue);
    }
    check_range(addr, qty, MAX_WRITE_BITS)?;
    Ok(Request::WriteMultipleCoils {
        addr,
        bits: Bits { bytes, count: qty },
    })
}

/// 10: write multiple registers.
fn decode_write_registers(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    let addr = u16_at(pdu, 1).ok_or(Exception::IllegalDataValue)?;
    let qty = u16_at(pdu, 3).ok_or(Exception::IllegalDataValue)?;
    let count = *pdu.get(5).ok_or(Exception::IllegalDataValue)?;
    if qty == 0 || qty > MAX_WRITE_REGS || usize::from(count) != 2 * usize::from(qty) {
        return Err(Exception::IllegalDataValue);
    }
    let bytes = pdu.get(6..).ok_or(Exception::IllegalDataValue)?;
    if bytes.len() != usize::from(count) {
        return Err(Exception::IllegalDataValue);
    }
    check_range(addr, qty, MAX_WRITE_REGS)?;
    Ok(Request::WriteMultipleRegisters {
        addr,
        words: Words(bytes),
    })
}

/// 17: read/write multiple registers.
fn decode_read_write(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    let read_addr = u16_at(pdu, 1).ok_or(Exception::IllegalDataValue)?;
    let read_qty = u16_at(pdu, 3).ok_or(Exception::IllegalDataValue)?;
    let write_addr = u16_at(pdu, 5).ok_or(Exception::IllegalDataValue)?;
    let write_qty = u16_at(pdu, 7).ok_or(Exception::IllegalDataValue)?;
    let count = *pdu.get(9).ok_or(Exception::IllegalDataValue)?;
    if read_qty == 0
        || read_qty > MAX_READ_REGS
        || write_qty == 0
        || write_qty > MAX_RW_WRITE_REGS
        || usize::from(count) != 2 * usize::from(write_qty)
    {
        return Err(Exception::IllegalDataValue);
    }
    let bytes = pdu.get(10..).ok_or(Exception::IllegalDataValue)?;
    if bytes.len() != usize::from(count) {
        return Err(Exception::IllegalDataValue);
    }
    check_range(read_addr, read_qty, MAX_READ_REGS)?;
    check_range(write_addr, write_qty, MAX_RW_WRITE_REGS)?;
    Ok(Request::ReadWriteMultipleRegisters {
        read_addr,
        read_qty,
        write_addr,
        words: Words(bytes),
    })
}

/// 2B/0E: read device identification.
fn decode_device_id(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    // Other MEI types (CANopen general reference, 13) are not served.
    if pdu.get(1) != Some(&MEI_READ_DEVICE_ID) {
        return Err(Exception::IllegalFunction);
    }
    fixed(pdu, 3)?;
    let code = *pdu.get(2).ok_or(Exception::IllegalDataValue)?;
    let object = *pdu.get(3).ok_or(Exception::IllegalDataValue)?;
    if !(1..=4).contains(&code) {
        return Err(Exception::IllegalDataValue);
    }
    Ok(Request::ReadDeviceId { code, object })
}

/// Starts a response ADU in `out`; [`finish_adu`] fills in the length.
pub fn begin_adu(out: &mut Vec<u8>, h: Mbap) -> usize {
    let start = out.len();
    out.extend_from_slice(&h.transaction.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.push(h.unit);
    start
}

/// Writes the MBAP length of the ADU begun at `start`.
pub fn finish_adu(out: &mut [u8], start: usize) {
    // Responses are at most 253 PDU bytes by construction (quantities are
    // capped at decode), so the length always fits; saturate regardless.
    let len = u16::try_from(out.len().saturating_sub(start + 6)).unwrap_or(u16::MAX);
    if let Some(b) = out.get_mut(start + 4..start + 6) {
        b.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends an exception PDU.
pub fn push_exception(out: &mut Vec<u8>, fc: u8, e: Exception) {
    out.push(fc | 0x80);
    out.push(e as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_frames_and_waits_for_truncated_ones() {
        let f = [0x12, 0x34, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 3];
        assert_eq!(
            split_frame(&f),
            Ok(Some((
                Mbap {
                    transaction: 0x1234,
                    unit: 1
                },
                12
            )))
        );
        for n in 0..f.len() {
            assert_eq!(split_frame(&f[..n]), Ok(None), "prefix {n}");
        }
        assert_eq!(split_frame(&[0, 1, 0, 1]), Err(BadMbap::ProtocolId(1)));
        assert_eq!(split_frame(&[0, 1, 0, 0, 0, 1]), Err(BadMbap::Length(1)));
        assert_eq!(
            split_frame(&[0, 1, 0, 0, 0, 255, 1]),
            Err(BadMbap::Length(255))
        );
        assert_eq!(
            split_frame(&[0, 1, 0, 0, 0xFF, 0xFF]),
            Err(BadMbap::Length(0xFFFF))
        );
    }

    #[test]
    fn decodes_every_function_and_refuses_bad_quantities() {
        assert_eq!(
            decode_request(&[0x04, 0, 0, 0, 10]),
            Ok(Request::ReadInputRegisters { addr: 0, qty: 10 })
        );
        assert_eq!(
            decode_request(&[0x03, 0, 0, 0, 126]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x01, 0, 0, 0x07, 0xD1]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x02, 0xFF, 0xFF, 0, 2]),
            Err(Exception::IllegalDataAddress)
        );
        assert_eq!(
            decode_request(&[0x05, 0, 0, 0x12, 0x34]),
            Err(Exception::IllegalDataValue)
        );
        // FC15 with a quantity beyond its byte count: the tokio-modbus panic.
        assert_eq!(
            decode_request(&[0x0F, 0, 0, 0, 100, 1, 0xFF]),
            Err(Exception::IllegalDataValue)
        );
        let r = decode_request(&[0x0F, 0, 0, 0, 10, 2, 0b0000_0101, 0b10]).expect("fc15");
        let Request::WriteMultipleCoils { bits, .. } = r else {
            panic!("{r:?}")
        };
        let v: Vec<_> = (0..bits.len()).filter_map(|i| bits.get(i)).collect();
        assert_eq!(
            v,
            [true, false, true, false, false, false, false, false, false, true]
        );
        // FC16 whose quantity * 2 overflows 8 bits / u16 arithmetic.
        assert_eq!(
            decode_request(&[0x10, 0, 0, 0x80, 0x00, 0, 0]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x10, 0, 0, 0, 124, 248]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x17, 0, 0, 0, 1, 0, 0, 0, 122, 244]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x2B, 0x0E, 1, 0]),
            Ok(Request::ReadDeviceId { code: 1, object: 0 })
        );
        assert_eq!(
            decode_request(&[0x2B, 0x0D, 1, 0]),
            Err(Exception::IllegalFunction)
        );
        assert_eq!(
            decode_request(&[0x2B, 0x0E, 5, 0]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x08, 0, 0]),
            Err(Exception::IllegalFunction)
        );
        assert_eq!(
            decode_request(&[0x03, 0, 0]),
            Err(Exception::IllegalDataValue)
        );
    }

    fn check_request_invariants(pdu: &[u8], r: &Request<'_>) {
        let within = |addr: u16, qty: u16, max: u16| {
            assert!(qty >= 1 && qty <= max, "{pdu:?}");
            assert!(u32::from(addr) + u32::from(qty) <= 0x1_0000, "{pdu:?}");
        };
        match *r {
            Request::ReadCoils { addr, qty } | Request::ReadDiscreteInputs { addr, qty } => {
                within(addr, qty, MAX_READ_BITS)
            }
            Request::ReadHoldingRegisters { addr, qty }
            | Request::ReadInputRegisters { addr, qty } => within(addr, qty, MAX_READ_REGS),
            Request::WriteMultipleCoils { addr, bits } => {
                within(addr, bits.len() as u16, MAX_WRITE_BITS);
                for i in 0..bits.len() {
                    assert!(bits.get(i).is_some(), "{pdu:?}");
                }
            }
            Request::WriteMultipleRegisters { addr, words } => {
                within(addr, words.len() as u16, MAX_WRITE_REGS);
                assert!(words.get(words.len() - 1).is_some());
            }
            Request::ReadWriteMultipleRegisters {
                read_addr,
                read_qty,
                write_addr,
                words,
            } => {
                within(read_addr, read_qty, MAX_READ_REGS);
                within(write_addr, words.len() as u16, MAX_RW_WRITE_REGS);
            }
            Request::WriteSingleCoil { .. }
            | Request::WriteSingleRegister { .. }
            | Request::ReadDeviceId { .. } => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8_000, ..ProptestConfig::default() })]

        /// Any bytes: the framer never panics, never claims more than it has.
        #[test]
        fn split_frame_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, total))) = split_frame(&buf) {
                prop_assert!(total <= buf.len());
                prop_assert!((MBAP_LEN + 1..=MBAP_LEN + 253).contains(&total));
            }
        }

        /// Any PDU: decoding never panics and what it accepts is within spec.
        #[test]
        fn decode_never_panics(pdu in proptest::collection::vec(any::<u8>(), 0..260)) {
            if let Ok(r) = decode_request(&pdu) {
                check_request_invariants(&pdu, &r);
            }
        }

        /// PDUs shaped like real requests (valid function code, random
        /// fields) reach the deeper checks far more often than random bytes.
        #[test]
        fn decode_structured_never_panics(
            fc in prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 15, 16, 23, 43]),
            head in proptest::collection::vec(any::<u8>(), 0..10),
            count in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..255),
        ) {
            let mut pdu = vec![fc];
            pdu.extend_from_slice(&head);
            pdu.push(count);
            pdu.extend_from_slice(&tail);
            if let Ok(r) = decode_request(&pdu) {
                check_request_invariants(&pdu, &r);
            }
        }
    }
}
