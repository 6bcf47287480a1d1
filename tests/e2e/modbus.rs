//! modbus end-to-end tests against the running server: every function code and exception, encodings, word orders, writes reaching HTTP, malformed frames, limits.
//!
//! The client here is a minimal raw Modbus TCP client so that tests can send
//! exactly the bytes they mean, malformed ones included.

use std::net::SocketAddr;
use std::time::Duration;

use castpoint::app::App;
use castpoint::config::Config;
use castpoint::points::{
    ModbusField, ModbusRegister, ModbusTable, Protocol, Quality, RegType, Value, WordOrder,
};
use serde_json::Value as J;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::util::{loopback, start, TestApp};

const T: Duration = Duration::from_secs(5);

struct Client {
    s: TcpStream,
    tid: u16,
    unit: u8,
}

/// A response PDU, or the exception code.
type Answer = Result<Vec<u8>, u8>;

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = timeout(T, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Client { s, tid: 0, unit: 1 }
    }

    async fn send_adu(&mut self, unit: u8, pdu: &[u8]) -> u16 {
        self.tid = self.tid.wrapping_add(1);
        let mut adu = Vec::new();
        adu.extend_from_slice(&self.tid.to_be_bytes());
        adu.extend_from_slice(&[0, 0]);
        adu.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        adu.push(unit);
        adu.extend_from_slice(pdu);
        self.s.write_all(&adu).await.expect("send");
        self.tid
    }

    /// Reads one response ADU: (transaction, unit, pdu).
    async fn recv_adu(&mut self) -> (u16, u8, Vec<u8>) {
        let mut h = [0u8; 7];
        timeout(T, self.s.read_exact(&mut h))
            .await
            .expect("answer in time")
            .expect("answer header");
        assert_eq!(&h[2..4], &[0, 0], "protocol id");
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        let mut pdu = vec![0u8; len - 1];
        timeout(T, self.s.read_exact(&mut pdu))
            .await
            .expect("answer in time")
            .expect("answer pdu");
        (u16::from_be_bytes([h[0], h[1]]), h[6], pdu)
    }

    async fn call_unit(&mut self, unit: u8, pdu: &[u8]) -> Answer {
        let tid = self.send_adu(unit, pdu).await;
        let (rt, ru, r) = self.recv_adu().await;
        assert_eq!(rt, tid, "transaction id echoed");
        assert_eq!(ru, unit, "unit id echoed");
        if r[0] == pdu[0] | 0x80 {
            assert_eq!(r.len(), 2, "exception pdu {r:?}");
            return Err(r[1]);
        }
        assert_eq!(r[0], pdu[0], "function code echoed");
        Ok(r)
    }

    async fn call(&mut self, pdu: &[u8]) -> Answer {
        let unit = self.unit;
        self.call_unit(unit, pdu).await
    }

    async fn read_regs(&mut self, fc: u8, addr: u16, qty: u16) -> Result<Vec<u16>, u8> {
        let mut pdu = vec![fc];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&qty.to_be_bytes());
        let r = self.call(&pdu).await?;
        assert_eq!(r[1] as usize, 2 * qty as usize, "byte count");
        assert_eq!(r.len(), 2 + 2 * qty as usize);
        Ok(r[2..]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect())
    }

    async fn read_bits(&mut self, fc: u8, addr: u16, qty: u16) -> Result<Vec<bool>, u8> {
        let mut pdu = vec![fc];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&qty.to_be_bytes());
        let r = self.call(&pdu).await?;
        let n = (qty as usize).div_ceil(8);
        assert_eq!(r[1] as usize, n, "byte count");
        assert_eq!(r.len(), 2 + n);
        Ok((0..qty as usize)
            .map(|i| (r[2 + i / 8] >> (i % 8)) & 1 == 1)
            .collect())
    }

    async fn write_coil(&mut self, addr: u16, raw: u16) -> Answer {
        let mut pdu = vec![0x05];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&raw.to_be_bytes());
        let r = self.call(&pdu).await?;
        assert_eq!(r, pdu, "FC05 echoes the request");
        Ok(r)
    }

    async fn write_reg(&mut self, addr: u16, v: u16) -> Answer {
        let mut pdu = vec![0x06];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&v.to_be_bytes());
        let r = self.call(&pdu).await?;
        assert_eq!(r, pdu, "FC06 echoes the request");
        Ok(r)
    }

    async fn write_regs(&mut self, addr: u16, vals: &[u16]) -> Answer {
        let mut pdu = vec![0x10];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&(vals.len() as u16).to_be_bytes());
        pdu.push((vals.len() * 2) as u8);
        for v in vals {
            pdu.extend_from_slice(&v.to_be_bytes());
        }
        let r = self.call(&pdu).await?;
        assert_eq!(r[1..], pdu[1..5], "FC16 answers address and quantity");
        Ok(r)
    }

    async fn write_coils(&mut self, addr: u16, bits: &[bool]) -> Answer {
        let mut pdu = vec![0x0F];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&(bits.len() as u16).to_be_bytes());
        let mut packed = vec![0u8; bits.len().div_ceil(8)];
        for (i, b) in bits.iter().enumerate() {
            if *b {
                packed[i / 8] |= 1 << (i % 8);
            }
        }
        pdu.push(packed.len() as u8);
        pdu.extend_from_slice(&packed);
        let r = self.call(&pdu).await?;
        assert_eq!(r[1..], pdu[1..5], "FC15 answers address and quantity");
        Ok(r)
    }

    /// Reads until the server closes the connection (EOF or reset).
    async fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match timeout(T, self.s.read(&mut buf))
                .await
                .expect("server closes the connection in time")
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

fn modbus_addr(app: &App) -> SocketAddr {
    app.addrs.modbus.expect("modbus bound")
}

fn set(app: &App, id: &str, v: Value) {
    let pid = app.db.lookup(id).expect("point");
    app.db.set(pid, Some(v), Quality::Ok, None).expect("set");
}

async fn http_point(app: &App, id: &str) -> J {
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    reqwest::get(format!("{base}/api/points/{id}"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

fn f32_of(wo: WordOrder, w: &[u16]) -> f32 {
    f32::from_be_bytes(wo.from_registers([w[0], w[1]]))
}

#[tokio::test]
async fn seed_addresses_read_exact_values() {
    let app = start().await;
    set(&app, "active_streams", Value::Number(3.0));
    set(&app, "connected_viewers", Value::Number(100_000.0));
    set(&app, "total_bitrate_out", Value::Number(12.345));
    set(&app, "server_status", Value::Enum(2));
    set(&app, "stream_status", Value::Enum(1));
    let mut c = Client::connect(modbus_addr(&app)).await;
    // 30001-30003: FC04 offsets 0..3; viewers saturate at 65535, Gbps x100.
    assert_eq!(c.read_regs(0x04, 0, 3).await, Ok(vec![3, 65535, 1235]));
    // 40001-40002: FC03 offsets 0..2, enum ordinals (2 = WARNING, 1 = LIVE).
    assert_eq!(c.read_regs(0x03, 0, 2).await, Ok(vec![2, 1]));
    // 00001: Stream Enable, relinquish default true.
    assert_eq!(c.read_bits(0x01, 0, 1).await, Ok(vec![true]));
    // The full-precision block keeps what the 16-bit block saturates.
    let w = c.read_regs(0x04, 100, 6).await.expect("f32 block");
    assert_eq!(f32_of(WordOrder::Abcd, &w[0..2]), 3.0);
    assert_eq!(f32_of(WordOrder::Abcd, &w[2..4]), 100_000.0);
    assert_eq!(f32_of(WordOrder::Abcd, &w[4..6]), 12.345);
    // Reading only the second word of a 32-bit value is allowed.
    assert_eq!(c.read_regs(0x04, 103, 1).await, Ok(vec![w[3]]));
    // Unit ids 0 and 255 are served by default too.
    for unit in [0u8, 255] {
        let r = c.call_unit(unit, &[0x04, 0, 0, 0, 1]).await.expect("read");
        assert_eq!(r, [0x04, 2, 0, 3]);
    }
    app.stop().await;
}

#[tokio::test]
async fn quality_registers_and_bits_tell_missing_from_zero() {
    let app = start().await;
    let mut c = Client::connect(modbus_addr(&app)).await;
    // No telemetry source in this test: measurements are unavailable.
    assert_eq!(c.read_regs(0x04, 0, 1).await, Ok(vec![0]));
    let w = c.read_regs(0x04, 100, 2).await.expect("f32");
    assert!(
        f32_of(WordOrder::Abcd, &w).is_nan(),
        "unavailable f32 is NaN"
    );
    assert_eq!(c.read_regs(0x04, 200, 1).await, Ok(vec![3]));
    assert_eq!(c.read_bits(0x02, 0, 1).await, Ok(vec![false]));
    set(&app, "active_streams", Value::Number(0.0));
    assert_eq!(c.read_regs(0x04, 0, 1).await, Ok(vec![0]));
    assert_eq!(c.read_regs(0x04, 200, 1).await, Ok(vec![0]));
    assert_eq!(c.read_bits(0x02, 0, 1).await, Ok(vec![true]));
    let pid = app.db.lookup("active_streams").expect("point");
    app.db
        .set(pid, Some(Value::Number(0.0)), Quality::Stale, Some("late"))
        .expect("set");
    assert_eq!(c.read_regs(0x04, 200, 1).await, Ok(vec![1]));
    assert_eq!(c.read_bits(0x02, 0, 1).await, Ok(vec![false]));
    // The whole quality block (23 points) and discrete block in one read each.
    let q = c.read_regs(0x04, 200, 23).await.expect("quality block");
    assert_eq!(q[0], 1);
    // communication_status is set at start-up: quality ok.
    assert_eq!(q[22], 0);
    let bits = c.read_bits(0x02, 0, 23).await.expect("ok bits");
    assert!(bits[22]);
    assert!(!bits[0]);
    app.stop().await;
}

#[tokio::test]
async fn coil_write_flips_stream_enable_visible_over_http() {
    let app = start().await;
    let mut c = Client::connect(modbus_addr(&app)).await;
    assert_eq!(http_point(&app, "stream_enable").await["value"], true);
    c.write_coil(0, 0x0000).await.expect("FC05 off");
    assert_eq!(c.read_bits(0x01, 0, 1).await, Ok(vec![false]));
    let p = http_point(&app, "stream_enable").await;
    assert_eq!(p["value"], false, "{p}");
    assert_eq!(p["level"], 10, "written at the map's priority: {p}");
    // The audit trail names Modbus and the peer.
    let last = app.db.audit_tail(1);
    assert_eq!(last[0].source.protocol, Protocol::Modbus);
    assert_eq!(
        last[0].source.peer,
        Some(c.s.local_addr().expect("local addr"))
    );
    c.write_coil(0, 0xFF00).await.expect("FC05 on");
    assert_eq!(http_point(&app, "stream_enable").await["value"], true);
    // FC15 over all four coils.
    c.write_coils(0, &[false, true, true, false])
        .await
        .expect("FC15");
    assert_eq!(
        c.read_bits(0x01, 0, 4).await,
        Ok(vec![false, true, true, false])
    );
    assert_eq!(http_point(&app, "stream_enable").await["value"], false);
    assert_eq!(http_point(&app, "recording_enable").await["value"], true);
    app.stop().await;
}

#[tokio::test]
async fn holding_register_writes_fc06_fc16_fc23() {
    let app = start().await;
    let mut c = Client::connect(modbus_addr(&app)).await;
    // 40101 Input Select, 40102 Output Profile (offsets 100, 101).
    c.write_reg(100, 5).await.expect("FC06");
    assert_eq!(c.read_regs(0x03, 100, 2).await, Ok(vec![5, 0]));
    assert_eq!(http_point(&app, "input_select").await["value"], 5.0);
    c.write_regs(100, &[3, 7]).await.expect("FC16");
    assert_eq!(c.read_regs(0x03, 100, 2).await, Ok(vec![3, 7]));
    assert_eq!(http_point(&app, "output_profile").await["value"], 7.0);
    // FC23: write 40102 = 9, read 40101..40102 after the write.
    let r = c
        .call(&[0x17, 0, 100, 0, 2, 0, 101, 0, 1, 2, 0, 9])
        .await
        .expect("FC23");
    assert_eq!(r, [0x17, 4, 0, 3, 0, 9]);
    // FC23 reading the statuses while writing a set-point.
    set(&app, "server_status", Value::Enum(3));
    let r = c
        .call(&[0x17, 0, 0, 0, 1, 0, 100, 0, 1, 2, 0, 1])
        .await
        .expect("FC23");
    assert_eq!(r, [0x17, 2, 0, 3]);
    assert_eq!(http_point(&app, "input_select").await["value"], 1.0);
    app.stop().await;
}

#[tokio::test]
async fn every_exception() {
    let app = start().await;
    let mut c = Client::connect(modbus_addr(&app)).await;
    // 01: unknown function, unknown MEI type.
    assert_eq!(c.call(&[0x08, 0, 0, 0, 0]).await, Err(0x01));
    assert_eq!(c.call(&[0x2B, 0x0D, 1, 0]).await, Err(0x01));
    // 02: write to read-only (statuses at 40001, via FC06, FC16 and FC23).
    assert_eq!(c.write_reg(0, 1).await, Err(0x02));
    assert_eq!(c.write_regs(0, &[1, 1]).await, Err(0x02));
    assert_eq!(
        c.call(&[0x17, 0, 100, 0, 1, 0, 0, 0, 1, 2, 0, 1]).await,
        Err(0x02)
    );
    // 02: any unmapped address inside the range, in every table.
    // 30009..30012
    assert_eq!(c.read_regs(0x04, 8, 4).await, Err(0x02));
    assert_eq!(c.read_regs(0x04, 10, 1).await, Err(0x02));
    // 40007..40008
    assert_eq!(c.read_regs(0x03, 6, 2).await, Err(0x02));
    assert_eq!(c.read_regs(0x03, 0, 125).await, Err(0x02));
    assert_eq!(c.read_bits(0x01, 3, 2).await, Err(0x02));
    assert_eq!(c.read_bits(0x02, 22, 2).await, Err(0x02));
    assert_eq!(c.read_bits(0x01, 65535, 1).await, Err(0x02));
    assert_eq!(c.write_coil(4, 0xFF00).await, Err(0x02));
    assert_eq!(c.write_coils(3, &[true, true]).await, Err(0x02));
    assert_eq!(c.write_reg(102, 1).await, Err(0x02));
    assert_eq!(c.write_regs(101, &[1, 1]).await, Err(0x02));
    // 02: address + quantity beyond the 16-bit address space.
    assert_eq!(c.read_regs(0x04, 65535, 2).await, Err(0x02));
    // 03: quantities out of spec.
    assert_eq!(c.call(&[0x03, 0, 0, 0, 126]).await, Err(0x03));
    assert_eq!(c.call(&[0x04, 0, 0, 0, 0]).await, Err(0x03));
    // 2001 bits
    assert_eq!(c.call(&[0x01, 0, 0, 0x07, 0xD1]).await, Err(0x03));
    assert_eq!(c.call(&[0x02, 0, 0, 0x07, 0xD1]).await, Err(0x03));
    // 124 registers cannot fit a 253-byte PDU: the quantity field alone says it.
    assert_eq!(c.call(&[0x10, 0, 100, 0, 124, 248]).await, Err(0x03));
    assert_eq!(
        c.call(&[0x17, 0, 100, 0, 126, 0, 100, 0, 1, 2, 0, 1]).await,
        Err(0x03)
    );
    assert_eq!(
        c.call(&[0x17, 0, 100, 0, 1, 0, 100, 0, 122, 244]).await,
        Err(0x03)
    );
    let mut fc15 = vec![0x0F, 0, 0, 0x07, 0xB1, 247];
    fc15.extend_from_slice(&[0u8; 247]);
    // 1969 coils
    assert_eq!(c.call(&fc15).await, Err(0x03));
    // 03: byte count disagreeing with the quantity (the tokio-modbus FC15 panic).
    assert_eq!(c.call(&[0x0F, 0, 0, 0x07, 0xB0, 1, 0xFF]).await, Err(0x03));
    assert_eq!(c.call(&[0x10, 0, 100, 0, 2, 2, 0, 1]).await, Err(0x03));
    assert_eq!(c.call(&[0x10, 0, 100, 0x80, 0, 0]).await, Err(0x03));
    // truncated PDU
    assert_eq!(c.call(&[0x03, 0, 0]).await, Err(0x03));
    // 03: invalid values: coil not FF00/0000, set-points out of range.
    assert_eq!(c.write_coil(0, 0x0001).await, Err(0x03));
    assert_eq!(c.write_coil(0, 0xFFFF).await, Err(0x03));
    // input_select 0..16
    assert_eq!(c.write_reg(100, 17).await, Err(0x03));
    // output_profile 0..64
    assert_eq!(c.write_reg(101, 65).await, Err(0x03));
    // A refused multi-write changes nothing (checked before the first write).
    assert_eq!(c.write_regs(100, &[4, 65]).await, Err(0x03));
    assert_eq!(c.read_regs(0x03, 100, 2).await, Ok(vec![0, 0]));
    // 03: device identification code out of 1..=4; 02: unknown object.
    assert_eq!(c.call(&[0x2B, 0x0E, 0, 0]).await, Err(0x03));
    assert_eq!(c.call(&[0x2B, 0x0E, 4, 0x80]).await, Err(0x02));
    // 0x0B: unit id not served.
    assert_eq!(c.call_unit(7, &[0x04, 0, 0, 0, 1]).await, Err(0x0B));
    assert_eq!(c.call_unit(2, &[0x05, 0, 0, 0xFF, 0]).await, Err(0x0B));
    // After all of that, the same connection still answers.
    assert!(c.read_regs(0x04, 0, 3).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn device_identification_fc43_14() {
    let app = start().await;
    let mut c = Client::connect(modbus_addr(&app)).await;
    let r = c.call(&[0x2B, 0x0E, 1, 0]).await.expect("basic");
    assert_eq!(r[1..7], [0x0E, 1, 0x82, 0, 0, 3]);
    let mut objs = Vec::new();
    let mut i = 7;
    while i < r.len() {
        let (id, n) = (r[i], r[i + 1] as usize);
        objs.push((
            id,
            String::from_utf8(r[i + 2..i + 2 + n].to_vec()).expect("utf8"),
        ));
        i += 2 + n;
    }
    assert_eq!(
        objs,
        [
            (0, "castpoint".to_string()),
            (1, "castpoint-gw".to_string()),
            (2, env!("CARGO_PKG_VERSION").to_string())
        ]
    );
    let r = c.call(&[0x2B, 0x0E, 2, 0]).await.expect("regular");
    assert_eq!(r[6], 5);
    let r = c.call(&[0x2B, 0x0E, 4, 1]).await.expect("individual");
    assert_eq!(
        r[6..],
        [1, 1, 12, b'c', b'a', b's', b't', b'p', b'o', b'i', b'n', b't', b'-', b'g', b'w'][..]
    );
    app.stop().await;
}

/// A map with 32-bit registers in every word order, writable ones included.
fn word_order_config() -> Config {
    let mut cfg = Config::embedded().expect("embedded config");
    loopback(&mut cfg);
    let pid = |id: &str| {
        cfg.points
            .iter()
            .position(|p| p.id == id)
            .map(|i| castpoint::points::PointId(i as u16))
            .expect("point")
    };
    let orders = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];
    let mut extra = Vec::new();
    for (i, wo) in orders.iter().enumerate() {
        let off = 300 + 2 * i as u16;
        extra.push(ModbusRegister {
            point: pid("connected_viewers"),
            table: ModbusTable::Input,
            number: 30001 + u32::from(off),
            offset: off,
            reg_type: RegType::F32,
            scale: 1.0,
            word_order: *wo,
            field: ModbusField::Value,
            writable: false,
        });
        // Writable 32-bit set-points: u32, i32 and f32 over Input Select.
        let hoff = 200 + 2 * i as u16;
        extra.push(ModbusRegister {
            point: pid("input_select"),
            table: ModbusTable::Holding,
            number: 40001 + u32::from(hoff),
            offset: hoff,
            reg_type: [RegType::U32, RegType::I32, RegType::F32, RegType::F32][i],
            scale: 1.0,
            word_order: *wo,
            field: ModbusField::Value,
            writable: true,
        });
    }
    extra.push(ModbusRegister {
        point: pid("dropped_frames"),
        table: ModbusTable::Input,
        number: 30309,
        offset: 308,
        reg_type: RegType::I16,
        scale: 1.0,
        word_order: WordOrder::Abcd,
        field: ModbusField::Value,
        writable: false,
    });
    cfg.maps.modbus.registers.extend(extra);
    cfg.maps
        .modbus
        .registers
        .sort_by_key(|r| (r.table, r.offset));
    cfg
}

#[tokio::test]
async fn float_word_orders_and_32_bit_writes() {
    let app = TestApp::with_config(word_order_config()).await;
    set(&app, "connected_viewers", Value::Number(123_456.5));
    set(&app, "dropped_frames", Value::Number(999_999.0));
    let mut c = Client::connect(modbus_addr(&app)).await;
    let w = c.read_regs(0x04, 300, 8).await.expect("four f32");
    let be = 123_456.5f32.to_be_bytes();
    assert_eq!(w[0..2], WordOrder::Abcd.to_registers(be));
    assert_eq!(w[2..4], WordOrder::Cdab.to_registers(be));
    assert_eq!(w[4..6], WordOrder::Badc.to_registers(be));
    assert_eq!(w[6..8], WordOrder::Dcba.to_registers(be));
    // Explicit bytes for the record: 123456.5f32 = 0x47F1_2040.
    assert_eq!(w[0..2], [0x47F1, 0x2040]);
    assert_eq!(w[2..4], [0x2040, 0x47F1]);
    assert_eq!(w[4..6], [0xF147, 0x4020]);
    assert_eq!(w[6..8], [0x4020, 0xF147]);
    // i16 saturates at 32767, never wraps.
    assert_eq!(c.read_regs(0x04, 308, 1).await, Ok(vec![0x7FFF]));
    // Writable u32 ABCD at 40201, i32 CDAB at 40203, f32 BADC 40205, f32 DCBA 40207.
    c.write_regs(200, &[0, 12]).await.expect("u32 write");
    assert_eq!(http_point(&app, "input_select").await["value"], 12.0);
    assert_eq!(c.read_regs(0x03, 200, 2).await, Ok(vec![0, 12]));
    c.write_regs(202, &[13, 0]).await.expect("i32 CDAB write");
    assert_eq!(http_point(&app, "input_select").await["value"], 13.0);
    c.write_regs(204, &WordOrder::Badc.to_registers(14f32.to_be_bytes()))
        .await
        .expect("f32 BADC write");
    assert_eq!(http_point(&app, "input_select").await["value"], 14.0);
    c.write_regs(206, &WordOrder::Dcba.to_registers(15f32.to_be_bytes()))
        .await
        .expect("f32 DCBA write");
    assert_eq!(http_point(&app, "input_select").await["value"], 15.0);
    // Every view of the point reads the same value in its own encoding.
    let all = c.read_regs(0x03, 200, 8).await.expect("read back");
    assert_eq!(all[0..2], [0, 15]);
    assert_eq!(all[2..4], [15, 0]);
    assert_eq!(all[4..6], WordOrder::Badc.to_registers(15f32.to_be_bytes()));
    // 03: half of a 32-bit value, through FC06, FC16 or FC23.
    assert_eq!(c.write_reg(200, 1).await, Err(0x03));
    assert_eq!(c.write_reg(201, 1).await, Err(0x03));
    assert_eq!(c.write_regs(201, &[0, 1]).await, Err(0x03));
    assert_eq!(c.write_regs(200, &[0, 1, 0]).await, Err(0x03));
    assert_eq!(
        c.call(&[0x17, 0, 200, 0, 1, 0, 201, 0, 1, 2, 0, 1]).await,
        Err(0x03)
    );
    // 03: out of range through 32 bits (17 > 16), NaN float.
    assert_eq!(c.write_regs(200, &[0, 17]).await, Err(0x03));
    assert_eq!(c.write_regs(200, &[1, 0]).await, Err(0x03));
    assert_eq!(c.write_regs(204, &[0xC07F, 0]).await, Err(0x03));
    assert_eq!(http_point(&app, "input_select").await["value"], 15.0);
    app.stop().await;
}

#[tokio::test]
async fn pipelined_and_truncated_frames() {
    let app = start().await;
    set(&app, "active_streams", Value::Number(42.0));
    let mut c = Client::connect(modbus_addr(&app)).await;
    // Two requests in one segment: two answers, in order.
    let req = |tid: u8| [0, tid, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 1];
    let mut both = req(1).to_vec();
    both.extend_from_slice(&req(2));
    c.s.write_all(&both).await.expect("send");
    for tid in [1u16, 2] {
        let (t, _, pdu) = c.recv_adu().await;
        assert_eq!((t, pdu), (tid, vec![0x04, 2, 0, 42]));
    }
    // A frame delivered byte by byte is answered once it is whole.
    for b in req(3) {
        c.s.write_all(&[b]).await.expect("send");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (t, _, pdu) = c.recv_adu().await;
    assert_eq!((t, pdu), (3, vec![0x04, 2, 0, 42]));
    app.stop().await;
}

#[tokio::test]
async fn malformed_frames_close_only_their_connection() {
    let app = start().await;
    set(&app, "active_streams", Value::Number(7.0));
    let addr = modbus_addr(&app);
    let mut good = Client::connect(addr).await;
    assert_eq!(good.read_regs(0x04, 0, 1).await, Ok(vec![7]));
    let bad_headers: [&[u8]; 5] = [
        &[0, 1, 0, 1, 0, 6, 1, 0x04, 0, 0, 0, 1], // protocol id 1
        &[0, 1, 0, 0, 0, 0, 1],                   // length 0
        &[0, 1, 0, 0, 0, 1, 1],                   // length 1 (no function code)
        &[0, 1, 0, 0, 0, 255, 1],                 // length 255
        &[0, 1, 0, 0, 0xFF, 0xFF],                // absurd length, header cut short
    ];
    for h in bad_headers {
        let mut b = Client::connect(addr).await;
        b.s.write_all(h).await.expect("send");
        b.expect_closed().await;
        assert_eq!(good.read_regs(0x04, 0, 1).await, Ok(vec![7]), "{h:?}");
    }
    // A valid request followed by a bad header on the same connection: the
    // valid one is answered before the connection closes.
    let mut b = Client::connect(addr).await;
    let mut bytes = vec![0, 9, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 1];
    bytes.extend_from_slice(&[0, 10, 0, 7, 0, 6, 1]);
    b.s.write_all(&bytes).await.expect("send");
    let (t, _, pdu) = b.recv_adu().await;
    assert_eq!((t, pdu), (9, vec![0x04, 2, 0, 7]));
    b.expect_closed().await;
    // Random garbage from many clients at once, some of it valid framing.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut junk = Vec::new();
    for i in 0..40 {
        let n = (next() % 300) as usize;
        let mut v: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        if i % 2 == 0 && v.len() >= 7 {
            // Valid MBAP framing around a random PDU reaches the decoder.
            v[2] = 0;
            v[3] = 0;
            let len = (v.len() - 6).min(254) as u16;
            v[4..6].copy_from_slice(&len.to_be_bytes());
        }
        junk.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s.write_all(&v).await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = timeout(T, s.read_to_end(&mut sink)).await;
        }));
    }
    for j in junk {
        j.await.expect("junk client");
    }
    assert_eq!(good.read_regs(0x04, 0, 1).await, Ok(vec![7]));
    let mut fresh = Client::connect(addr).await;
    assert_eq!(fresh.read_regs(0x04, 0, 1).await, Ok(vec![7]));
    app.stop().await;
}

#[tokio::test]
async fn connection_limit_idle_timeout_and_unit_ids_from_config() {
    let mut cfg = Config::embedded().expect("embedded config");
    loopback(&mut cfg);
    cfg.server.modbus.max_connections = 2;
    cfg.server.modbus.idle_timeout = Duration::from_millis(400);
    cfg.server.modbus.unit_ids = vec![17];
    let app = TestApp::with_config(cfg).await;
    let addr = modbus_addr(&app);
    let mut a = Client::connect(addr).await;
    a.unit = 17;
    let mut b = Client::connect(addr).await;
    b.unit = 17;
    assert!(a.read_regs(0x04, 0, 1).await.is_ok());
    assert!(b.read_regs(0x04, 0, 1).await.is_ok());
    assert_eq!(a.call_unit(1, &[0x04, 0, 0, 0, 1]).await, Err(0x0B));
    // A third connection is closed at once.
    let mut third = Client::connect(addr).await;
    third.expect_closed().await;
    // An idle connection (here: a truncated frame that never completes) is
    // closed after the idle timeout, and frees its slot.
    a.s.write_all(&[0, 1, 0, 0, 0, 6, 17, 0x04])
        .await
        .expect("send");
    let t0 = std::time::Instant::now();
    a.expect_closed().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    b.expect_closed().await;
    let mut c = Client::connect(addr).await;
    c.unit = 17;
    assert!(c.read_regs(0x04, 0, 1).await.is_ok());
    app.stop().await;
}

/// Connects from a chosen loopback source address (Linux routes all of
/// 127/8 to lo, so 127.0.0.2 is a second "host" on the same machine).
async fn connect_from(addr: SocketAddr, src: &str) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(src.parse().expect("ip"), 0))
        .expect("bind source address");
    let s = timeout(T, sock.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    Client { s, tid: 0, unit: 1 }
}

#[tokio::test]
async fn one_address_holding_its_share_does_not_lock_out_another() {
    // Defaults: max_connections = 64, max_connections_per_ip = 8.
    let app = start().await;
    let addr = modbus_addr(&app);
    // 127.0.0.1 opens every slot of the listener; only its share is served.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..64 {
        let mut c = Client::connect(addr).await;
        let tid = c.send_adu(1, &[0x04, 0, 0, 0, 1]).await;
        let mut h = [0u8; 7];
        match timeout(T, c.s.read_exact(&mut h)).await {
            Ok(Ok(_)) => {
                assert_eq!(u16::from_be_bytes([h[0], h[1]]), tid);
                let len = u16::from_be_bytes([h[4], h[5]]) as usize;
                let mut pdu = vec![0u8; len - 1];
                c.s.read_exact(&mut pdu).await.expect("pdu");
                held.push(c);
            }
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("a refused connection is closed at once, not left hanging"),
        }
    }
    assert_eq!(held.len(), 8, "one address gets max_connections_per_ip");
    assert_eq!(refused, 56);
    // A second host is still served while the first holds its share.
    let mut other = connect_from(addr, "127.0.0.2").await;
    assert!(other.read_regs(0x04, 0, 1).await.is_ok());
    // The held connections are still served too.
    assert!(held[0].read_regs(0x04, 0, 1).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn write_allow_refuses_other_sources_with_exception_01_and_audits_the_peer() {
    let mut cfg = Config::embedded().expect("embedded config");
    loopback(&mut cfg);
    cfg.server.modbus.write_allow = vec!["127.0.0.2/32".into()];
    let app = TestApp::with_config(cfg).await;
    let addr = modbus_addr(&app);
    assert_eq!(http_point(&app, "stream_enable").await["value"], true);
    // From 127.0.0.1: refused with exception 01 (illegal function), and
    // nothing changes; reads still work.
    let mut denied = Client::connect(addr).await;
    assert_eq!(denied.call(&[0x05, 0, 0, 0, 0]).await, Err(0x01));
    assert_eq!(denied.call(&[0x10, 0, 100, 0, 1, 2, 0, 5]).await, Err(0x01));
    assert_eq!(denied.read_bits(0x01, 0, 1).await, Ok(vec![true]));
    assert_eq!(http_point(&app, "stream_enable").await["value"], true);
    // The refusal is audited with the peer, in the durable audit log.
    let peer = denied.s.local_addr().expect("local addr").to_string();
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    let audit: J = reqwest::get(format!("{base}/api/audit?target=stream_enable"))
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let events = audit["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["protocol"] == "modbus"
            && e["peer"] == J::String(peer.clone())
            && e["result"] != "ok"),
        "refusal audited with peer {peer}: {audit}"
    );
    // From 127.0.0.2: accepted.
    let mut allowed = connect_from(addr, "127.0.0.2").await;
    allowed
        .write_coil(0, 0x0000)
        .await
        .expect("FC05 from 127.0.0.2");
    assert_eq!(http_point(&app, "stream_enable").await["value"], false);
    app.stop().await;
}

#[test]
fn check_config_rejects_a_bad_write_allow_network() {
    let base = std::path::Path::new(".");
    let e = Config::from_text(
        "c.toml",
        "[modbus]\nwrite_allow = [\"10.0.0.0/33\"]\nmax_connections_per_ip = 0\n",
        base,
    )
    .err()
    .map(|e| e.to_string())
    .expect("refused");
    assert!(e.contains("c.toml: modbus.write_allow[0]: "), "{e}");
    assert!(e.contains("c.toml: modbus.max_connections_per_ip: "), "{e}");
    let ok = Config::from_text(
        "c.toml",
        "[modbus]\nread_only = true\nwrite_allow = [\"192.0.2.0/24\", \"::1\"]\nmax_connections_per_ip = 4\n",
        base,
    );
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
}
