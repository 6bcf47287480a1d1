//! The Modbus request handler: executes decoded requests against the point database through the register map and writes response or exception PDUs.
//!
//! It is synchronous and does no I/O, so one function answers one request
//! ADU; the connection loop in `server.rs` owns the sockets.

use std::net::SocketAddr;

use crate::points::{
    ModbusMap, ModbusRegister, PointDb, PointId, PointState, Protocol, Source, Value, WriteError,
};

use super::frame::{
    begin_adu, decode_request, finish_adu, push_exception, Bits, Exception, Mbap, Request, Words,
    MEI_READ_DEVICE_ID,
};
use super::regmap::{decode_words, encode_bit, encode_words, to_point_value, RegisterMap, Table};

/// Read Device Identification objects (FC43/14), id -> value.
const VENDOR_NAME: &str = "castpoint";
const PRODUCT_CODE: &str = "castpoint-gw";
const PRODUCT_NAME: &str = "castpoint streaming router and BMS gateway";
const MODEL_NAME: &str = "castpoint";
/// Conformity level 0x82: regular identification, stream and individual access.
const CONFORMITY: u8 = 0x82;

fn device_objects() -> [(u8, &'static str); 5] {
    [
        (0x00, VENDOR_NAME),
        (0x01, PRODUCT_CODE),
        (0x02, env!("CARGO_PKG_VERSION")),
        (0x04, PRODUCT_NAME),
        (0x05, MODEL_NAME),
    ]
}

/// Everything a request needs: the database, the map and the unit ids served.
pub struct Service {
    db: PointDb,
    map: RegisterMap,
    /// Indexed by unit id: O(1) on the hot path.
    units: [bool; 256],
    /// The alarm summary block (input registers 60000..), when alarms run.
    alarm_block: Option<super::alarms::AlarmBlock>,
    /// Input-register offsets the map uses (to keep the block clear of it).
    input_ends: (u32, u32),
}

impl Service {
    pub fn new(db: PointDb, map: &ModbusMap, unit_ids: &[u8]) -> Self {
        let mut units = [false; 256];
        for &u in unit_ids {
            units[usize::from(u)] = true;
        }
        // Route blocks (issue 20): every reserved slot's registers, served
        // only while a route owns the slot.
        let mut full = map.clone();
        if let Some(tpl) = db.route_template() {
            match super::routes::route_registers(
                tpl,
                db.ids().count(),
                &map.route_blocks,
                map.word_order,
            ) {
                Ok(regs) => full.registers.extend(regs),
                Err(e) => tracing::error!("modbus: no route blocks: {e}"),
            }
        }
        let input_ends = full
            .registers
            .iter()
            .filter(|r| r.table == crate::points::ModbusTable::Input)
            .fold((u32::MAX, 0), |(lo, hi), r| {
                let o = u32::from(r.offset);
                (lo.min(o), hi.max(o + u32::from(r.reg_type.width())))
            });
        Service {
            db,
            map: RegisterMap::new(&full),
            units,
            alarm_block: None,
            input_ends,
        }
    }

    /// Serves the alarm summary block (docs/modbus-map.md, "Alarm
    /// summary") unless a register of the map lies in its range.
    pub fn with_alarms(mut self, alarms: crate::alarms::Alarms) -> Self {
        use super::alarms::{AlarmBlock, BASE, LEN};
        let (lo, hi) = self.input_ends;
        let (b0, b1) = (u32::from(BASE), u32::from(BASE) + u32::from(LEN));
        if lo < b1 && hi > b0 {
            tracing::error!(
                "modbus: the register map reaches input registers {b0}..{b1}: no alarm summary block (lower [route_points] max_routes or the route block stride)"
            );
            return self;
        }
        self.alarm_block = Some(AlarmBlock::new(alarms));
        self
    }

    /// Answers one request (header + PDU), appending the whole response ADU
    /// to `out`. Every request gets exactly one answer: a response or an exception.
    pub fn handle(&self, h: Mbap, pdu: &[u8], peer: SocketAddr, out: &mut Vec<u8>) {
        let start = begin_adu(out, h);
        let body = out.len();
        let fc = pdu.first().copied().unwrap_or(0);
        let res = if self.units[usize::from(h.unit)] {
            decode_request(pdu).and_then(|req| self.execute(req, pdu, peer, out))
        } else {
            Err(Exception::GatewayTargetFailed)
        };
        if let Err(e) = res {
            out.truncate(body);
            push_exception(out, fc, e);
        }
        finish_adu(out, start);
    }

    fn state(&self, id: PointId) -> Result<PointState, Exception> {
        self.db.read(id).ok_or(Exception::ServerDeviceFailure)
    }

    /// A request touching a free route block is refused as a whole, like
    /// an unmapped address (02).
    fn present<'m>(&self, regs: &'m [ModbusRegister]) -> Result<&'m [ModbusRegister], Exception> {
        if regs.iter().all(|r| self.db.is_present(r.point)) {
            Ok(regs)
        } else {
            Err(Exception::IllegalDataAddress)
        }
    }

    /// Answers one decoded request into `out` (the response PDU); Err is
    /// the exception to answer with instead.
    fn execute(
        &self,
        req: Request<'_>,
        pdu: &[u8],
        peer: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), Exception> {
        match req {
            Request::ReadCoils { addr, qty } => {
                self.read_bits(0x01, &self.map.coils, addr, qty, out)
            }
            Request::ReadDiscreteInputs { addr, qty } => {
                self.read_bits(0x02, &self.map.discrete, addr, qty, out)
            }
            Request::ReadHoldingRegisters { addr, qty } => {
                out.push(0x03);
                self.read_words(&self.map.holding, addr, qty, out)
            }
            Request::ReadInputRegisters { addr, qty } => self.read_input(addr, qty, out),
            Request::WriteSingleCoil { addr, value } => {
                self.write_coil(addr, value, peer)?;
                out.extend_from_slice(pdu);
                Ok(())
            }
            Request::WriteSingleRegister { addr, value } => {
                self.write_register(addr, value, peer)?;
                out.extend_from_slice(pdu);
                Ok(())
            }
            Request::WriteMultipleCoils { addr, bits } => self.write_coils(addr, bits, peer, out),
            Request::WriteMultipleRegisters { addr, words } => {
                self.write_registers(addr, words, peer, out)
            }
            Request::ReadWriteMultipleRegisters {
                read_addr,
                read_qty,
                write_addr,
                words,
            } => self.read_write(read_addr, read_qty, write_addr, words, peer, out),
            Request::ReadDeviceId { code, object } => {
                // Individual access to an object castpoint does not have is 02.
                if code == 4 && !device_objects().iter().any(|(id, _)| *id == object) {
                    return Err(Exception::IllegalDataAddress);
                }
                self.device_id(code, object, out);
                Ok(())
            }
        }
    }

    /// FC04: the alarm block when the read falls on it, the input table
    /// otherwise.
    fn read_input(&self, addr: u16, qty: u16, out: &mut Vec<u8>) -> Result<(), Exception> {
        if let Some(block) = &self.alarm_block {
            if super::alarms::AlarmBlock::touches(addr, qty) {
                // Nothing is mapped next to the block: a read
                // that leaves it covers unmapped addresses (02).
                if !super::alarms::AlarmBlock::within(addr, qty) {
                    return Err(Exception::IllegalDataAddress);
                }
                out.push(0x04);
                // qty <= 125 (checked by the decoder).
                out.push((2 * qty) as u8);
                for w in block.read(addr, qty) {
                    out.extend_from_slice(&w.to_be_bytes());
                }
                return Ok(());
            }
        }
        out.push(0x04);
        self.read_words(&self.map.input, addr, qty, out)
    }

    /// FC05: writes one coil (the response echoes the request).
    fn write_coil(&self, addr: u16, value: bool, peer: SocketAddr) -> Result<(), Exception> {
        let coils = &self.map.coils;
        let (reg, v) = self.audited(
            coils,
            addr,
            peer,
            (|| {
                let reg = self.writable_one(coils, addr)?;
                Ok((reg, self.value_of(reg, if value { 1.0 } else { 0.0 })?))
            })(),
        )?;
        self.commit(&[(reg.point, v)], peer)
    }

    /// FC06: writes one 16-bit holding register (the response echoes the
    /// request).
    fn write_register(&self, addr: u16, value: u16, peer: SocketAddr) -> Result<(), Exception> {
        let holding = &self.map.holding;
        let (reg, v) = self.audited(
            holding,
            addr,
            peer,
            (|| {
                let reg = self.writable_one(holding, addr)?;
                // FC06 on either word of a 32-bit value would half-write it.
                if reg.reg_type.width() != 1 {
                    return Err(Exception::IllegalDataValue);
                }
                Ok((reg, self.value_of(reg, decode_words(reg, [value, 0])?)?))
            })(),
        )?;
        self.commit(&[(reg.point, v)], peer)
    }

    /// FC15: writes the coils `bits` from `addr`.
    fn write_coils(
        &self,
        addr: u16,
        bits: Bits<'_>,
        peer: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), Exception> {
        let writes = self.audited(&self.map.coils, addr, peer, self.plan_coils(addr, bits))?;
        self.commit(&writes, peer)?;
        out.push(0x0F);
        out.extend_from_slice(&addr.to_be_bytes());
        out.extend_from_slice(&(bits.len() as u16).to_be_bytes());
        Ok(())
    }

    /// FC16: writes the holding registers `words` from `addr`.
    fn write_registers(
        &self,
        addr: u16,
        words: Words<'_>,
        peer: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), Exception> {
        let writes = self.audited(
            &self.map.holding,
            addr,
            peer,
            self.plan_registers(addr, words),
        )?;
        self.commit(&writes, peer)?;
        out.push(0x10);
        out.extend_from_slice(&addr.to_be_bytes());
        out.extend_from_slice(&(words.len() as u16).to_be_bytes());
        Ok(())
    }

    /// FC23: writes `words` at `write_addr`, then reads the holding
    /// registers of the read range.
    fn read_write(
        &self,
        read_addr: u16,
        read_qty: u16,
        write_addr: u16,
        words: Words<'_>,
        peer: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), Exception> {
        // Validate the read range before writing, so a request that
        // would be refused as a whole has no side effect.
        self.present(self.map.holding.span(read_addr, read_qty)?)?;
        let writes = self.audited(
            &self.map.holding,
            write_addr,
            peer,
            self.plan_registers(write_addr, words),
        )?;
        self.commit(&writes, peer)?;
        // The spec performs the write before the read.
        out.push(0x17);
        self.read_words(&self.map.holding, read_addr, read_qty, out)
    }

    fn read_bits(
        &self,
        fc: u8,
        table: &Table,
        addr: u16,
        qty: u16,
        out: &mut Vec<u8>,
    ) -> Result<(), Exception> {
        let regs = self.present(table.span(addr, qty)?)?;
        out.push(fc);
        let nbytes = usize::from(qty).div_ceil(8);
        // qty <= 2000, so nbytes <= 250 fits the byte-count byte.
        out.push(nbytes as u8);
        let base = out.len();
        out.resize(base + nbytes, 0);
        for reg in regs {
            // Bit tables have width 1, so every register of the span is in range.
            let i = usize::from(reg.offset.wrapping_sub(addr));
            if encode_bit(reg, &self.state(reg.point)?) {
                if let Some(b) = out.get_mut(base + i / 8) {
                    *b |= 1 << (i % 8);
                }
            }
        }
        Ok(())
    }

    fn read_words(
        &self,
        table: &Table,
        addr: u16,
        qty: u16,
        out: &mut Vec<u8>,
    ) -> Result<(), Exception> {
        let regs = self.present(table.span(addr, qty)?)?;
        // qty <= 125, so 2 * qty <= 250 fits the byte-count byte.
        out.push((2 * qty) as u8);
        let start = u32::from(addr);
        let end = start + u32::from(qty);
        for reg in regs {
            let mut st = self.state(reg.point)?;
            if st.value.is_none() {
                // An unavailable enum point reads its "N/A" state's ordinal
                // (documented in the map), never 0 or a real state.
                st.value = self
                    .db
                    .def(reg.point)
                    .and_then(|d| d.na_state())
                    .map(Value::Enum);
            }
            let w = encode_words(reg, &st);
            for (k, word) in w.iter().take(usize::from(reg.reg_type.width())).enumerate() {
                let a = u32::from(reg.offset) + k as u32;
                if (start..end).contains(&a) {
                    out.extend_from_slice(&word.to_be_bytes());
                }
            }
        }
        Ok(())
    }

    /// Audits a write refused before it reaches the point database (a
    /// value that does not decode: 03; a read-only register: 02) against
    /// the point mapped at `addr`; an address nothing is mapped at has no
    /// point to audit.
    fn audited<T>(
        &self,
        table: &Table,
        addr: u16,
        peer: SocketAddr,
        r: Result<T, Exception>,
    ) -> Result<T, Exception> {
        if let Err(e) = &r {
            let point = table
                .span(addr, 1)
                .ok()
                .and_then(|v| v.first().map(|r| r.point))
                // A free route block's point has nothing to audit against.
                .filter(|id| self.db.is_present(*id));
            if let Some(id) = point {
                let err = match e {
                    Exception::IllegalDataAddress => WriteError::NotWritable,
                    _ => WriteError::OutOfRange,
                };
                let src = Source::new(Protocol::Modbus, Some(peer), None);
                self.db
                    .audit_refused(id, self.map.write_priority, &src, err);
            }
        }
        r
    }

    /// The single mapped, writable register at `addr`: unmapped or read-only is 02.
    fn writable_one<'m>(
        &self,
        table: &'m Table,
        addr: u16,
    ) -> Result<&'m ModbusRegister, Exception> {
        let reg = self
            .present(table.span(addr, 1)?)?
            .first()
            .ok_or(Exception::IllegalDataAddress)?;
        if !reg.writable {
            return Err(Exception::IllegalDataAddress);
        }
        Ok(reg)
    }

    fn value_of(&self, reg: &ModbusRegister, x: f64) -> Result<Value, Exception> {
        let def = self
            .db
            .def(reg.point)
            .ok_or(Exception::ServerDeviceFailure)?;
        to_point_value(def, x)
    }

    /// Checks every coil of an FC15 before anything is written, so a refused
    /// request changes nothing.
    fn plan_coils(&self, addr: u16, bits: Bits<'_>) -> Result<Vec<(PointId, Value)>, Exception> {
        let regs = self.present(self.map.coils.span(addr, bits.len() as u16)?)?;
        if regs.iter().any(|r| !r.writable) {
            return Err(Exception::IllegalDataAddress);
        }
        let mut writes = Vec::with_capacity(regs.len());
        for reg in regs {
            let bit = bits
                .get(usize::from(reg.offset.wrapping_sub(addr)))
                .ok_or(Exception::IllegalDataValue)?;
            writes.push((reg.point, self.value_of(reg, if bit { 1.0 } else { 0.0 })?));
        }
        Ok(writes)
    }

    /// Checks every register of an FC16/FC23 write before anything is
    /// written: read-only or unmapped is 02; a 32-bit value cut by either end
    /// of the range, or a value the point refuses, is 03.
    fn plan_registers(
        &self,
        addr: u16,
        words: Words<'_>,
    ) -> Result<Vec<(PointId, Value)>, Exception> {
        let qty = words.len() as u16;
        let regs = self.present(self.map.holding.span(addr, qty)?)?;
        if regs.iter().any(|r| !r.writable) {
            return Err(Exception::IllegalDataAddress);
        }
        let start = u32::from(addr);
        let end = start + u32::from(qty);
        let mut writes = Vec::with_capacity(regs.len());
        for reg in regs {
            let first = u32::from(reg.offset);
            let width = u32::from(reg.reg_type.width());
            if first < start || first + width > end {
                return Err(Exception::IllegalDataValue);
            }
            let i = (first - start) as usize;
            let w0 = words.get(i).ok_or(Exception::IllegalDataValue)?;
            let w1 = if width == 2 {
                words.get(i + 1).ok_or(Exception::IllegalDataValue)?
            } else {
                0
            };
            let x = decode_words(reg, [w0, w1])?;
            writes.push((reg.point, self.value_of(reg, x)?));
        }
        Ok(writes)
    }

    /// Writes through the point database at the configured priority, exactly
    /// as a BACnet or Haystack write would reach the router.
    fn commit(&self, writes: &[(PointId, Value)], peer: SocketAddr) -> Result<(), Exception> {
        let src = Source::new(Protocol::Modbus, Some(peer), None);
        for (id, v) in writes {
            self.db
                .write(*id, Some(*v), self.map.write_priority, &src)
                .map_err(|e| match e {
                    WriteError::NotWritable => Exception::IllegalDataAddress,
                    // [modbus] read_only / write_allow: the usual answer of
                    // write-protected Modbus devices.
                    WriteError::Denied => Exception::IllegalFunction,
                    WriteError::TypeMismatch | WriteError::OutOfRange => {
                        Exception::IllegalDataValue
                    }
                    WriteError::UnknownPoint
                    | WriteError::InvalidPriority
                    | WriteError::NullDefault
                    | WriteError::Storage => Exception::ServerDeviceFailure,
                })?;
        }
        Ok(())
    }

    /// FC43/14 response body. Stream access (codes 1-3) is cumulative
    /// (basic, + regular, + extended) and restarts at object 0 when asked for
    /// an object it does not have, as the spec says; every object fits one PDU.
    fn device_id(&self, code: u8, object: u8, out: &mut Vec<u8>) {
        let objs = device_objects();
        let last = match code {
            1 => 0x02,
            2 => 0x7F,
            _ => 0xFF,
        };
        let chosen: Vec<(u8, &str)> = if code == 4 {
            objs.iter()
                .copied()
                .filter(|(id, _)| *id == object)
                .collect()
        } else {
            let from = if objs.iter().any(|(id, _)| *id == object && *id <= last) {
                object
            } else {
                0
            };
            objs.iter()
                .copied()
                .filter(|(id, _)| (from..=last).contains(id))
                .collect()
        };
        out.extend_from_slice(&[0x2B, MEI_READ_DEVICE_ID, code, CONFORMITY, 0x00, 0x00]);
        out.push(chosen.len() as u8);
        for (id, v) in chosen {
            out.push(id);
            out.push(v.len() as u8);
            out.extend_from_slice(v.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::points::{DbOptions, PointDb};
    use proptest::prelude::*;

    fn service() -> Service {
        let c = Config::embedded().expect("embedded config");
        let db = PointDb::new(c.points.clone(), c.site.clone(), DbOptions::default());
        Service::new(db, &c.maps.modbus, &[0, 1, 255])
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 50200))
    }

    /// Answers one PDU and checks the answer is one well-formed ADU echoing
    /// the transaction, unit and function code (or its exception form).
    fn answer(svc: &Service, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let h = Mbap {
            transaction: 0xBEEF,
            unit,
        };
        svc.handle(h, pdu, peer(), &mut out);
        let (rh, total) = crate::protocols::modbus::frame::split_frame(&out)
            .expect("valid MBAP")
            .expect("complete");
        assert_eq!(total, out.len());
        assert_eq!(rh, h);
        let fc = pdu.first().copied().unwrap_or(0);
        assert!(out[7] == fc || out[7] == fc | 0x80, "{pdu:?} -> {out:?}");
        out[7..].to_vec()
    }

    #[test]
    fn unit_ids_and_device_identification() {
        let svc = service();
        assert_eq!(answer(&svc, 7, &[0x04, 0, 0, 0, 1]), [0x84, 0x0B]);
        assert_eq!(answer(&svc, 255, &[0x04, 0, 0, 0, 1])[..2], [0x04, 2]);
        let r = answer(&svc, 1, &[0x2B, 0x0E, 1, 0]);
        assert_eq!(r[..7], [0x2B, 0x0E, 1, CONFORMITY, 0, 0, 3]);
        assert_eq!(r[7..9], [0, 9]);
        assert_eq!(&r[9..18], b"castpoint");
        let r = answer(&svc, 1, &[0x2B, 0x0E, 4, 2]);
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(r[6..9], [1, 2, v.len() as u8]);
        assert_eq!(&r[9..], v.as_bytes());
        assert_eq!(answer(&svc, 1, &[0x2B, 0x0E, 4, 0x03]), [0xAB, 0x02]);
        // Stream access from an object it does not have restarts at 0.
        assert_eq!(answer(&svc, 1, &[0x2B, 0x0E, 2, 0x42])[6], 5);
    }

    /// The alarm summary block follows the alarm runtime: counts, the
    /// active and unacknowledged bits, and 02 for a read that leaves it.
    #[test]
    fn the_alarm_block_shows_counts_and_bits() {
        use crate::alarms::Alarms;
        use crate::points::alarm::{AlarmSpec, ClassRules, TransitionKind};
        let c = Config::embedded().expect("embedded config");
        let db = PointDb::new(c.points.clone(), c.site.clone(), DbOptions::default());
        let cpu = db.lookup("cpu_usage").expect("cpu");
        let mem = db.lookup("memory_usage").expect("mem");
        let spec = AlarmSpec::high_limit_for_tests(90.0, 1);
        let rules = ClassRules::acked_for_tests();
        // Given in reverse: the bits follow point-id order, not this one.
        let alarms = Alarms::new(
            db.clone(),
            vec![(mem, spec.clone()), (cpu, spec)],
            std::collections::HashMap::from([(1, rules)]),
            10,
        );
        let svc = Service::new(db.clone(), &c.maps.modbus, &[1]).with_alarms(alarms.clone());
        let read = |addr: u16, qty: u16| {
            let mut pdu = vec![0x04];
            pdu.extend_from_slice(&addr.to_be_bytes());
            pdu.extend_from_slice(&qty.to_be_bytes());
            answer(&svc, 1, &pdu)
        };
        assert_eq!(read(60_000, 3), [0x04, 6, 0, 0, 0, 0, 0, 2]);
        // memory_usage (point index after cpu_usage) goes high: bit 1.
        let mi = usize::from(mem.index() > cpu.index());
        db.set(
            mem,
            Some(crate::points::Value::Number(95.0)),
            crate::points::Quality::Ok,
            None,
        )
        .expect("set");
        alarms.evaluate_all();
        assert_eq!(read(60_000, 3), [0x04, 6, 0, 1, 0, 1, 0, 2]);
        let bit = (1u16 << mi).to_be_bytes();
        assert_eq!(read(60_016, 1), [0x04, 2, bit[0], bit[1]]);
        assert_eq!(read(60_144, 1), [0x04, 2, bit[0], bit[1]]);
        // Acknowledged: still active, no longer unacknowledged.
        let ts = alarms
            .state(mem)
            .and_then(|s| s.time_stamps.to_offnormal)
            .expect("stamp");
        alarms
            .acknowledge(
                "memory_usage",
                TransitionKind::ToOffnormal,
                ts,
                &Source::internal(),
            )
            .expect("ack");
        assert_eq!(read(60_000, 2), [0x04, 4, 0, 1, 0, 0]);
        assert_eq!(read(60_144, 1), [0x04, 2, 0, 0]);
        // The whole block's first 125 registers in one read; its edges.
        assert_eq!(read(60_000, 125).len(), 2 + 250);
        assert_eq!(read(60_271, 1).len(), 4);
        assert_eq!(read(59_999, 2), [0x84, 0x02]);
        assert_eq!(read(60_271, 2), [0x84, 0x02]);
        // Without alarms the block is not there.
        assert_eq!(
            answer(&service(), 1, &[0x04, 0xEA, 0x60, 0, 1]),
            [0x84, 0x02]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

        /// Any request the framer can deliver gets exactly one well-formed
        /// answer and never panics (writes included: a random FC05/06/15/16/23
        /// may hit a writable point, which is fine).
        #[test]
        fn any_request_gets_one_answer(
            unit in prop::sample::select(vec![0u8, 1, 2, 255]),
            fc in prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 15, 16, 23, 43, 0x80, 0x11]),
            addr in prop_oneof![0u16..8, 95u16..130, 195u16..230, any::<u16>()],
            qty in prop_oneof![0u16..16, any::<u16>()],
            tail in proptest::collection::vec(any::<u8>(), 0..250),
        ) {
            static SVC: std::sync::OnceLock<Service> = std::sync::OnceLock::new();
            let svc = SVC.get_or_init(service);
            let mut pdu = vec![fc];
            pdu.extend_from_slice(&addr.to_be_bytes());
            pdu.extend_from_slice(&qty.to_be_bytes());
            pdu.extend_from_slice(&tail);
            pdu.truncate(253);
            answer(svc, unit, &pdu);
        }
    }
}
