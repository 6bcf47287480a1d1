//! bacnet end-to-end tests against the running server: a small raw-UDP BACnet/IP client (so the bytes on the wire are the test's own), COV, priority writes, BBMD NAKs and a malformed-packet suite.

use std::net::SocketAddr;
use std::time::Duration;

use castpoint::points::{Protocol, Quality, Value};
use tokio::net::UdpSocket;
use tokio::time::timeout;

use crate::util;
use crate::util::TestApp;

pub(crate) const DEVICE: u32 = 389_001;
const AI: u32 = 0;
const AV: u32 = 2;
const BO: u32 = 4;
const MSV: u32 = 19;
const PV: u8 = 85;

fn oid(ty: u32, inst: u32) -> [u8; 4] {
    ((ty << 22) | inst).to_be_bytes()
}

/// BVLC Original-Unicast-NPDU around an NPDU + APDU.
fn bvlc(npdu_apdu: &[u8]) -> Vec<u8> {
    let len = (npdu_apdu.len() + 4) as u16;
    let mut v = vec![0x81, 0x0A];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(npdu_apdu);
    v
}

/// A confirmed request (max APDU 1476, no segmentation) with its service data.
fn confirmed(invoke: u8, service: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x01, 0x04, 0x00, 0x05, invoke, service];
    v.extend_from_slice(data);
    bvlc(&v)
}

fn unconfirmed(service: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x01, 0x00, 0x10, service];
    v.extend_from_slice(data);
    bvlc(&v)
}

fn read_property(invoke: u8, ty: u32, inst: u32, prop: u8, index: Option<u32>) -> Vec<u8> {
    let mut d = vec![0x0C];
    d.extend_from_slice(&oid(ty, inst));
    d.extend_from_slice(&[0x19, prop]);
    if let Some(i) = index {
        d.push(0x2C);
        d.extend_from_slice(&i.to_be_bytes());
    }
    confirmed(invoke, 12, &d)
}

fn write_property(invoke: u8, ty: u32, inst: u32, value: &[u8], priority: Option<u8>) -> Vec<u8> {
    let mut d = vec![0x0C];
    d.extend_from_slice(&oid(ty, inst));
    d.extend_from_slice(&[0x19, PV, 0x3E]);
    d.extend_from_slice(value);
    d.push(0x3F);
    if let Some(p) = priority {
        d.extend_from_slice(&[0x49, p]);
    }
    confirmed(invoke, 15, &d)
}

fn real(f: f32) -> Vec<u8> {
    let mut v = vec![0x44];
    v.extend_from_slice(&f.to_be_bytes());
    v
}

pub(crate) struct Client {
    sock: UdpSocket,
    server: SocketAddr,
}

/// The APDU of a reply (NPDU without network layer fields assumed, as the
/// server answers a local peer).
fn apdu(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < 6 || frame[0] != 0x81 {
        return None;
    }
    let control = frame[5];
    if control & 0x80 != 0 {
        return None; // network-layer message
    }
    let mut i = 6;
    if control & 0x20 != 0 {
        // DNET, DLEN, DADR, hop count
        let dlen = *frame.get(i + 2)? as usize;
        i += 3 + dlen + 1;
    }
    if control & 0x08 != 0 {
        let slen = *frame.get(i + 2)? as usize;
        i += 3 + slen;
    }
    frame.get(i..)
}

impl Client {
    pub(crate) async fn new(server: SocketAddr) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        Client { sock, server }
    }

    async fn send(&self, frame: &[u8]) {
        self.sock.send_to(frame, self.server).await.expect("send");
    }

    /// Next datagram within `ms`, if any.
    async fn recv(&self, ms: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        match timeout(Duration::from_millis(ms), self.sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Sends a confirmed request and returns the reply APDU for that invoke id.
    pub(crate) async fn call(&self, frame: &[u8]) -> Vec<u8> {
        let invoke = frame[8];
        self.send(frame).await;
        loop {
            let r = self.recv(3000).await.expect("a reply within 3 s");
            if let Some(a) = apdu(&r) {
                if a.len() >= 2 && a[0] >> 4 != 1 && a[1] == invoke {
                    return a.to_vec();
                }
            }
        }
    }

    async fn read_real(&self, ty: u32, inst: u32) -> f32 {
        let a = self.call(&read_property(7, ty, inst, PV, None)).await;
        assert_eq!(a[0], 0x30, "complex ack: {a:02x?}");
        let pos = a.iter().position(|b| *b == 0x3E).expect("opening tag") + 1;
        assert_eq!(a[pos], 0x44, "REAL: {a:02x?}");
        f32::from_be_bytes([a[pos + 1], a[pos + 2], a[pos + 3], a[pos + 4]])
    }
}

/// (class, code) of an Error PDU.
pub(crate) fn error_of(a: &[u8]) -> (u8, u8) {
    assert_eq!(a[0], 0x50, "error PDU expected: {a:02x?}");
    assert_eq!(a[3], 0x91);
    assert_eq!(a[5], 0x91);
    (a[4], a[6])
}

#[tokio::test]
async fn who_is_read_and_quality_flags() {
    let app = util::start().await;
    let addr = app.addrs.bacnet.expect("bacnet bound");
    assert_ne!(addr.port(), 0, "the real port is reported");
    let c = Client::new(addr).await;

    c.send(&unconfirmed(8, &[])).await;
    let iam = c.recv(2000).await.expect("I-Am");
    let a = apdu(&iam).expect("apdu");
    assert_eq!(&a[..2], &[0x10, 0x00], "I-Am: {a:02x?}");
    assert_eq!(&a[3..7], &oid(8, DEVICE));

    // No source yet: a valid REAL 0.0 with FAULT and NO_SENSOR.
    assert_eq!(c.read_real(AI, 0).await, 0.0);
    let sf = c.call(&read_property(1, AI, 0, 111, None)).await;
    assert!(
        sf.windows(3).any(|w| w == [0x82, 0x04, 0x40]),
        "fault flag: {sf:02x?}"
    );
    let rel = c.call(&read_property(2, AI, 0, 103, None)).await;
    assert!(
        rel.windows(3).any(|w| w == [0x3E, 0x91, 0x01]),
        "no-sensor: {rel:02x?}"
    );

    let id = app.db.lookup("active_streams").expect("point");
    app.db
        .set(id, Some(Value::Number(7.0)), Quality::Ok, None)
        .expect("set");
    assert_eq!(c.read_real(AI, 0).await, 7.0);
    let sf = c.call(&read_property(3, AI, 0, 111, None)).await;
    assert!(
        sf.windows(3).any(|w| w == [0x82, 0x04, 0x00]),
        "no flags: {sf:02x?}"
    );

    // MSV state-text by index; a huge index is INVALID_ARRAY_INDEX (42).
    let st = c.call(&read_property(4, MSV, 0, 110, Some(1))).await;
    assert!(st.windows(2).any(|w| w == *b"OK"), "{st:02x?}");
    let e = c.call(&read_property(5, MSV, 0, 110, Some(u32::MAX))).await;
    assert_eq!(error_of(&e), (2, 42));
    // An index on a non-array property: PROPERTY_IS_NOT_AN_ARRAY (50).
    let e = c.call(&read_property(6, AI, 0, PV, Some(u32::MAX))).await;
    assert_eq!(error_of(&e), (2, 50));
    app.stop().await;
}

#[tokio::test]
async fn writes_share_the_priority_array_with_other_protocols() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let me = c.sock.local_addr().expect("local");
    let id = app.db.lookup("input_select").expect("point");

    let ack = c.call(&write_property(1, AV, 0, &real(2.0), Some(9))).await;
    assert_eq!(&ack[..3], &[0x20, 1, 15], "simple ack: {ack:02x?}");
    let st = app.db.read(id).expect("state");
    assert_eq!(st.value, Some(Value::Number(2.0)));
    let pa = app.db.priority_array(id).expect("pa");
    let slot = pa.slots[8].as_ref().expect("slot 9");
    assert_eq!(slot.who.protocol, Protocol::Bacnet);
    assert_eq!(slot.who.peer, Some(me), "the audit names the BACnet peer");

    // A REST/Modbus write at a more important level wins, and BACnet sees it.
    app.db
        .write(
            id,
            Some(Value::Number(1.0)),
            5,
            &castpoint::points::Source::new(Protocol::Rest, None, None),
        )
        .expect("rest write");
    assert_eq!(c.read_real(AV, 0).await, 1.0);

    // Out of range: PROPERTY (2) / VALUE_OUT_OF_RANGE (37); priority 6:
    // WRITE_ACCESS_DENIED (40); wrong type: INVALID_DATA_TYPE (9).
    let e = c
        .call(&write_property(2, AV, 0, &real(17.0), Some(9)))
        .await;
    assert_eq!(error_of(&e), (2, 37));
    let e = c.call(&write_property(3, AV, 0, &real(2.0), Some(6))).await;
    assert_eq!(error_of(&e), (2, 40));
    let e = c.call(&write_property(4, BO, 0, &real(1.0), Some(9))).await;
    assert_eq!(error_of(&e), (2, 9));
    let e = c.call(&write_property(5, AI, 0, &real(1.0), None)).await;
    assert_eq!(error_of(&e), (2, 40));

    // NULL relinquishes: level 5 gone, 9 (2.0) back in force, then default.
    let ack = c.call(&write_property(6, AV, 0, &[0x00], Some(5))).await;
    assert_eq!(ack[0], 0x20);
    assert_eq!(c.read_real(AV, 0).await, 2.0);
    c.call(&write_property(7, AV, 0, &[0x00], Some(9))).await;
    assert_eq!(c.read_real(AV, 0).await, 0.0);
    app.stop().await;
}

#[tokio::test]
async fn cov_notification_follows_a_database_change() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let id = app.db.lookup("cpu_usage").expect("point");
    app.db
        .set(id, Some(Value::Number(10.0)), Quality::Ok, None)
        .expect("set");
    // SubscribeCOV: process 9, AI3, unconfirmed, lifetime 60 s.
    let mut d = vec![0x09, 0x09, 0x1C];
    d.extend_from_slice(&oid(AI, 3));
    d.extend_from_slice(&[0x29, 0x00, 0x39, 60]);
    let ack = c.call(&confirmed(1, 5, &d)).await;
    assert_eq!(ack[0], 0x20, "subscribe acked: {ack:02x?}");
    // Initial notification.
    let n = c.recv(2000).await.expect("initial notification");
    assert_eq!(&apdu(&n).expect("apdu")[..2], &[0x10, 0x02]);
    // Below the cov-increment (1.0): no notification.
    app.db
        .set(id, Some(Value::Number(10.5)), Quality::Ok, None)
        .expect("set");
    assert!(c.recv(400).await.is_none(), "0.5 < cov-increment");
    app.db
        .set(id, Some(Value::Number(42.0)), Quality::Ok, None)
        .expect("set");
    // The notification is event-driven; the bound only catches a hang.
    let n = c.recv(10_000).await.expect("a notification");
    let a = apdu(&n).expect("apdu");
    assert_eq!(&a[..2], &[0x10, 0x02]);
    assert!(
        a.windows(5).any(|w| w == real(42.0).as_slice()),
        "new value: {a:02x?}"
    );
    // A quality change alone (status-flags) notifies too.
    app.db
        .set(id, Some(Value::Number(42.0)), Quality::Fault, Some("test"))
        .expect("set");
    let n = c.recv(1000).await.expect("status-flags notification");
    // FAULT set (CPU Usage's alarm also turns FAULT on a bad quality, so
    // IN_ALARM may already be set with it).
    assert!(apdu(&n)
        .expect("apdu")
        .windows(3)
        .any(|w| w[..2] == [0x82, 0x04] && w[2] & 0x40 != 0));
    app.stop().await;
}

#[tokio::test]
async fn bbmd_requests_get_a_nak() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // Read-BDT -> NAK 0x0020; Register-Foreign-Device -> NAK 0x0030.
    for (req, nak) in [
        (vec![0x81, 0x02, 0x00, 0x04], 0x0020u16),
        (vec![0x81, 0x05, 0x00, 0x06, 0x00, 0x3C], 0x0030),
        (vec![0x81, 0x06, 0x00, 0x04], 0x0040),
    ] {
        c.send(&req).await;
        let r = c.recv(2000).await.expect("BVLC-Result");
        assert_eq!(&r[..4], &[0x81, 0x00, 0x00, 0x06], "{r:02x?}");
        assert_eq!(u16::from_be_bytes([r[4], r[5]]), nak);
    }
    app.stop().await;
}

/// Reply classes a malformed datagram may get: silence, Reject, Abort,
/// Error, a BVLC-Result NAK, or a SegmentACK (the answer to a first segment);
/// anything else is a finding.
fn acceptable(reply: &[u8]) -> bool {
    if reply.len() >= 4 && reply[0] == 0x81 && reply[1] == 0x00 {
        return true;
    }
    match apdu(reply) {
        Some(a) if !a.is_empty() => matches!(a[0] >> 4, 4..=7),
        _ => false,
    }
}

#[tokio::test]
async fn malformed_packets_get_reject_abort_error_or_silence() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![0x81]),
        ("not BVLC", vec![0x82, 0x0A, 0x00, 0x04]),
        (
            "BVLC length too long",
            vec![0x81, 0x0A, 0x00, 0x40, 0x01, 0x04],
        ),
        (
            "BVLC length too short",
            vec![0x81, 0x0A, 0x00, 0x02, 0x01, 0x04, 0x00],
        ),
        ("NPDU version 2", bvlc(&[0x02, 0x04, 0x00, 0x05, 1, 12])),
        ("truncated APDU", bvlc(&[0x01, 0x04, 0x00])),
        ("RP without object", confirmed(1, 12, &[])),
        (
            "RP application tag for object",
            confirmed(2, 12, &[0xC4, 0, 0, 0, 0, 0x19, PV]),
        ),
        (
            "RP truncated object id",
            confirmed(3, 12, &[0x0C, 0x00, 0x00]),
        ),
        (
            "RP property length lies",
            confirmed(4, 12, &[0x0C, 0, 0, 0, 0, 0x1D, 0xFF]),
        ),
        (
            "WP 12 bytes (bacnet-rs crasher)",
            confirmed(5, 15, &[0x0C, 0x00, 0x80, 0x00, 0x00, 0x19, PV]),
        ),
        (
            "WP unclosed value",
            confirmed(
                6,
                15,
                &[0x0C, 0x00, 0x80, 0x00, 0x00, 0x19, PV, 0x3E, 0x44, 0x3F],
            ),
        ),
        (
            "RPM unclosed list",
            confirmed(7, 14, &[0x0C, 0, 0, 0, 0, 0x1E, 0x09, PV]),
        ),
        ("unknown confirmed service", confirmed(8, 0x7F, &[0x00])),
        (
            "unknown unconfirmed service",
            unconfirmed(0x55, &[0x01, 0x02]),
        ),
        (
            "segmented request without segments",
            bvlc(&[0x01, 0x04, 0x08, 0x05, 9, 0, 2, 12, 0x0C]),
        ),
        (
            "huge extended tag length",
            confirmed(10, 12, &[0x0D, 0xFE, 0xFF, 0xFF, 0x19, PV]),
        ),
        ("reserved PDU type", bvlc(&[0x01, 0x04, 0xF0, 0x05, 11, 12])),
    ];
    // A deterministic stream of mutated ReadProperty requests (xorshift).
    let base = read_property(12, AV, 0, PV, Some(3));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..500 {
        let mut f = base.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % f.len();
            f[i] = (x >> 32) as u8;
        }
        if x.is_multiple_of(5) {
            let keep = (x >> 8) as usize % f.len();
            f.truncate(keep);
        }
        cases.push(("mutated RP", f));
    }
    for (what, frame) in &cases {
        c.send(frame).await;
        while let Some(r) = c.recv(if *what == "mutated RP" { 5 } else { 300 }).await {
            let ok = acceptable(&r)
                // A mutation may still be a valid request: then any reply is fine.
                || *what == "mutated RP";
            assert!(ok, "{what}: unexpected reply {r:02x?}");
        }
    }
    // Specific answers the standard asks for.
    let a = c.call(&confirmed(20, 0x7F, &[0x00])).await;
    assert_eq!(
        &a[..3],
        &[0x60, 20, 9],
        "Reject unrecognized-service: {a:02x?}"
    );
    // Still serving.
    assert_eq!(c.read_real(AV, 0).await, 0.0);
    app.stop().await;
}

#[tokio::test]
async fn rpm_all_of_every_object_fits_or_is_segmented_or_aborted() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // RPM ALL of every point object in one request, from a client that
    // accepts only 50-octet APDUs and no segments: the answer must be an
    // Abort (segmentation-not-supported / buffer-overflow), not silence.
    let mut d = Vec::new();
    for o in &app.maps.bacnet.objects {
        let ty = match o.object_type.short() {
            "AI" => AI,
            "AV" => AV,
            "BO" => BO,
            _ => MSV,
        };
        d.push(0x0C);
        d.extend_from_slice(&oid(ty, o.instance));
        d.extend_from_slice(&[0x1E, 0x09, 8, 0x1F]);
    }
    let mut v = vec![0x01, 0x04, 0x00, 0x00, 33, 14];
    v.extend_from_slice(&d);
    let a = c.call(&bvlc(&v)).await;
    assert_eq!(a[0] >> 4, 7, "abort: {a:02x?}");
    // segmentation-not-supported (4) or buffer-overflow (1), not out-of-resources.
    assert!(matches!(a[2], 1 | 4), "abort reason: {a:02x?}");
    // The same with 1476 octets and segmentation accepted: a (segmented) ack.
    let mut v = vec![0x01, 0x04, 0x02, 0x75, 34, 14];
    v.extend_from_slice(&d);
    let a = c.call(&bvlc(&v)).await;
    assert_eq!(a[0] >> 4, 3, "complex ack: {:02x?}", &a[..8]);
    app.stop().await;
}

#[tokio::test]
async fn a_port_in_use_is_a_fault_not_a_crash() {
    let first = util::start().await;
    let taken = first.addrs.bacnet.expect("bound");
    let mut cfg = castpoint::config::Config::embedded().expect("config");
    util::loopback(&mut cfg);
    cfg.server.bacnet.bind = taken;
    // Started directly (TestApp would move the bind back to port 0); the
    // data dir is this test's, removed at the end.
    let data = tempfile::tempdir().expect("tmp");
    cfg.server.data_dir = data.path().join("data");
    let second = castpoint::app::App::start(cfg)
        .await
        .expect("the process starts");
    assert_eq!(second.addrs.bacnet, None, "the port was taken by the first");
    let cs = second
        .db
        .read(second.db.lookup("communication_status").expect("point"))
        .expect("state");
    assert_eq!(cs.value, Some(Value::Enum(2)), "Communication Status FAULT");
    assert!(cs.reason.as_deref().unwrap_or("").contains("bacnet"));
    // The first keeps serving.
    let c = Client::new(taken).await;
    assert_eq!(c.read_real(AV, 0).await, 0.0);
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn registers_as_a_foreign_device_and_renews_before_the_ttl() {
    // A stand-in BBMD: accepts every registration and records when it came.
    let bbmd = UdpSocket::bind("127.0.0.1:0").await.expect("bbmd");
    let mut cfg = castpoint::config::Config::embedded().expect("config");
    util::loopback(&mut cfg);
    let bbmd_addr = match bbmd.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        a => panic!("{a} is not IPv4"),
    };
    cfg.server.bacnet.foreign_bbmd = Some(bbmd_addr);
    cfg.server.bacnet.foreign_ttl = 4;
    let app = TestApp::with_config(cfg).await;
    assert!(app.addrs.bacnet.is_some());
    let mut buf = [0u8; 1500];
    let mut registrations = Vec::new();
    let t0 = std::time::Instant::now();
    while registrations.len() < 2 && t0.elapsed() < Duration::from_secs(6) {
        let Ok(Ok((n, from))) = timeout(Duration::from_secs(6), bbmd.recv_from(&mut buf)).await
        else {
            break;
        };
        if n == 6 && buf[..4] == [0x81, 0x05, 0x00, 0x06] {
            assert_eq!(u16::from_be_bytes([buf[4], buf[5]]), 4, "TTL on the wire");
            registrations.push(t0.elapsed());
            bbmd.send_to(&[0x81, 0x00, 0x00, 0x06, 0x00, 0x00], from)
                .await
                .expect("ack");
        }
    }
    assert_eq!(registrations.len(), 2, "registered, then renewed");
    assert!(
        registrations[1] - registrations[0] < Duration::from_secs(4),
        "renewed before the TTL ran out: {registrations:?}"
    );
    app.stop().await;
}

// ------------------------------------------------------------- Trend Logs

const TL: u32 = 20;
const LOG_BUFFER: u8 = 131;

/// One BACnet tag as the test reads it: (tag number, context?, length or
/// opening/closing marker, content).
#[derive(Debug, PartialEq)]
enum Tag<'a> {
    Open(u8),
    Close(u8),
    Prim { num: u8, ctx: bool, data: &'a [u8] },
}

/// Reads one tag at `a[*i..]` (short tag numbers and lengths < 254 only:
/// all a Trend Log record needs).
fn tag<'a>(a: &'a [u8], i: &mut usize) -> Tag<'a> {
    let b = a[*i];
    *i += 1;
    let num = b >> 4;
    let ctx = b & 0x08 != 0;
    match b & 0x07 {
        6 if ctx => return Tag::Open(num),
        7 if ctx => return Tag::Close(num),
        _ => {}
    }
    let mut len = (b & 0x07) as usize;
    if !ctx && num == 1 {
        // Application BOOLEAN carries its value in the length bits.
        return Tag::Prim {
            num,
            ctx,
            data: &a[*i - 1..*i - 1],
        };
    }
    if len == 5 {
        len = a[*i] as usize;
        *i += 1;
    }
    let data = &a[*i..*i + len];
    *i += len;
    Tag::Prim { num, ctx, data }
}

fn uint(d: &[u8]) -> u64 {
    d.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// One decoded Trend Log record: (date, time, datum).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Datum {
    Real(f32),
    Failure(u64, u64),
    Status(u8),
}

/// A ReadRange-ACK: (result flags byte, item count, first sequence number, records).
pub(crate) struct RangeAck {
    pub(crate) flags: u8,
    pub(crate) count: u64,
    pub(crate) first_seq: Option<u64>,
    pub(crate) records: Vec<([u8; 4], [u8; 4], Datum)>,
}

const FIRST_ITEM: u8 = 0x80;
pub(crate) const LAST_ITEM: u8 = 0x40;
const MORE_ITEMS: u8 = 0x20;

fn parse_range_ack(a: &[u8]) -> RangeAck {
    assert_eq!(a[0], 0x30, "complex ack: {a:02x?}");
    assert_eq!(a[2], 26, "ReadRange ack: {a:02x?}");
    let mut i = 3;
    let mut flags = 0;
    let mut count = 0;
    let mut first_seq = None;
    let mut records = Vec::new();
    while i < a.len() {
        match tag(a, &mut i) {
            Tag::Prim {
                num: 3,
                ctx: true,
                data,
            } => flags = data[1],
            Tag::Prim {
                num: 4,
                ctx: true,
                data,
            } => count = uint(data),
            Tag::Prim {
                num: 6,
                ctx: true,
                data,
            } => first_seq = Some(uint(data)),
            Tag::Open(5) => loop {
                // BACnetLogRecord: [0] { date time } [1] { datum } [2] flags?
                match tag(a, &mut i) {
                    Tag::Close(5) => break,
                    Tag::Open(0) => {
                        let Tag::Prim { data: d, .. } = tag(a, &mut i) else {
                            panic!("date")
                        };
                        let Tag::Prim { data: t, .. } = tag(a, &mut i) else {
                            panic!("time")
                        };
                        assert_eq!(tag(a, &mut i), Tag::Close(0));
                        assert_eq!(tag(a, &mut i), Tag::Open(1));
                        let datum = match tag(a, &mut i) {
                            Tag::Prim { num: 2, data, .. } => {
                                Datum::Real(f32::from_be_bytes(data.try_into().expect("REAL")))
                            }
                            Tag::Prim { num: 0, data, .. } => Datum::Status(data[1]),
                            Tag::Open(8) => {
                                let Tag::Prim { data: c, .. } = tag(a, &mut i) else {
                                    panic!()
                                };
                                let Tag::Prim { data: e, .. } = tag(a, &mut i) else {
                                    panic!()
                                };
                                assert_eq!(tag(a, &mut i), Tag::Close(8));
                                Datum::Failure(uint(c), uint(e))
                            }
                            other => panic!("unexpected datum {other:?} in {a:02x?}"),
                        };
                        assert_eq!(tag(a, &mut i), Tag::Close(1));
                        records.push((
                            d.try_into().expect("date"),
                            t.try_into().expect("time"),
                            datum,
                        ));
                    }
                    // Optional status flags of the record.
                    Tag::Prim {
                        num: 2, ctx: true, ..
                    } => {}
                    other => panic!("unexpected {other:?} in {a:02x?}"),
                }
            },
            _ => {}
        }
    }
    RangeAck {
        flags,
        count,
        first_seq,
        records,
    }
}

/// ReadRange of a Trend Log's Log_Buffer; `range` is the encoded range
/// choice. `max_apdu` is the header octet (5 = 1476, 0 = 50 octets).
fn read_range(invoke: u8, inst: u32, range: &[u8], max_apdu: u8) -> Vec<u8> {
    let mut v = vec![0x01, 0x04, 0x00, max_apdu, invoke, 26, 0x0C];
    v.extend_from_slice(&oid(TL, inst));
    v.extend_from_slice(&[0x19, LOG_BUFFER]);
    v.extend_from_slice(range);
    bvlc(&v)
}

fn signed(n: i32) -> Vec<u8> {
    let mut v = vec![0x34];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn unsigned(n: u32) -> Vec<u8> {
    let mut v = vec![0x24];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

pub(crate) fn by_position(index: u32, count: i32) -> Vec<u8> {
    [vec![0x3E], unsigned(index), signed(count), vec![0x3F]].concat()
}

fn by_sequence(seq: u32, count: i32) -> Vec<u8> {
    [vec![0x6E], unsigned(seq), signed(count), vec![0x6F]].concat()
}

fn by_time(date: [u8; 4], time: [u8; 4], count: i32) -> Vec<u8> {
    let mut v = vec![0x7E, 0xA4];
    v.extend_from_slice(&date);
    v.push(0xB4);
    v.extend_from_slice(&time);
    v.extend_from_slice(&signed(count));
    v.push(0x7F);
    v
}

/// BACnet date/time octets of an instant (the device runs at UTC).
fn stamp(at: chrono::DateTime<chrono::Utc>) -> ([u8; 4], [u8; 4]) {
    use chrono::{Datelike, Timelike};
    (
        [
            (at.year() - 1900) as u8,
            at.month() as u8,
            at.day() as u8,
            at.weekday().number_from_monday() as u8,
        ],
        [
            at.hour() as u8,
            at.minute() as u8,
            at.second() as u8,
            (at.nanosecond() / 10_000_000) as u8,
        ],
    )
}

impl Client {
    /// An Unsigned property (Record_Count and the like).
    async fn read_unsigned(&self, ty: u32, inst: u32, prop: u8) -> u64 {
        let a = self.call(&read_property(9, ty, inst, prop, None)).await;
        assert_eq!(a[0], 0x30, "complex ack: {a:02x?}");
        let pos = a.iter().position(|b| *b == 0x3E).expect("opening tag") + 1;
        let mut i = pos;
        match tag(&a, &mut i) {
            Tag::Prim {
                num: 2,
                ctx: false,
                data,
            } => uint(data),
            other => panic!("not Unsigned: {other:?} in {a:02x?}"),
        }
    }

    pub(crate) async fn read_range(&self, invoke: u8, inst: u32, range: &[u8]) -> RangeAck {
        parse_range_ack(&self.call(&read_range(invoke, inst, range, 5)).await)
    }
}

#[tokio::test]
async fn trend_log_read_range_serves_the_point_history() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bacnet bound")).await;
    // cpu_usage is AI3, logged by TL3; period 30 s, COV_Increment 1.
    let id = app.db.lookup("cpu_usage").expect("point");
    let tl = 3;
    for v in [10.0, 20.0, 30.0, 40.0, 50.0] {
        app.db
            .set(id, Some(Value::Number(v)), Quality::Ok, None)
            .expect("set");
        // Distinct hundredths, so each record has its own timestamp.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The source stops: a failure record, no number.
    app.db
        .set(
            id,
            Some(Value::Number(50.0)),
            Quality::Stale,
            Some("source stopped"),
        )
        .expect("stale");
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Back with the same value: the history has no new sample, the log
    // records the value again so it does not end on the failure.
    app.db
        .set(id, Some(Value::Number(50.4)), Quality::Ok, None)
        .expect("ok");
    tokio::time::sleep(Duration::from_millis(30)).await;
    app.db
        .set(id, Some(Value::Number(60.0)), Quality::Ok, None)
        .expect("set");

    util::eventually(
        "8 records in the log",
        Duration::from_secs(10),
        async || (c.read_unsigned(TL, tl, 141).await >= 8).then_some(()),
    )
    .await;
    assert_eq!(c.read_unsigned(TL, tl, 141).await, 8, "Record_Count");
    assert_eq!(c.read_unsigned(TL, tl, 145).await, 8, "Total_Record_Count");
    assert_eq!(c.read_unsigned(TL, tl, 126).await, 10_000, "Buffer_Size");
    assert_eq!(
        c.read_unsigned(TL, tl, 134).await,
        3000,
        "Log_Interval: 30 s"
    );
    // Log_Enable TRUE, Stop_When_Full FALSE (application BOOLEAN 0x11 / 0x10).
    let en = c.call(&read_property(10, TL, tl, 133, None)).await;
    assert!(en.windows(3).any(|w| w == [0x3E, 0x11, 0x3F]), "{en:02x?}");
    let swf = c.call(&read_property(11, TL, tl, 144, None)).await;
    assert!(
        swf.windows(3).any(|w| w == [0x3E, 0x10, 0x3F]),
        "{swf:02x?}"
    );
    // Log_DeviceObjectProperty: AI3, Present_Value.
    let r = c.call(&read_property(12, TL, tl, 132, None)).await;
    let mut want = vec![0x0C];
    want.extend_from_slice(&oid(AI, 3));
    want.extend_from_slice(&[0x19, PV]);
    assert!(r.windows(want.len()).any(|w| w == want), "{r:02x?}");
    // Log_Buffer is ReadRange-only: READ_ACCESS_DENIED (27).
    let e = c.call(&read_property(13, TL, tl, LOG_BUFFER, None)).await;
    assert_eq!(error_of(&e), (2, 27));
    // Trend Logs are configuration: writes refused.
    let mut wp = vec![0x0C];
    wp.extend_from_slice(&oid(TL, tl));
    wp.extend_from_slice(&[0x19, 133, 0x3E, 0x10, 0x3F]);
    let e = c.call(&confirmed(14, 15, &wp)).await;
    // Trend Logs are configuration: PROPERTY / WRITE_ACCESS_DENIED (40).
    assert_eq!(error_of(&e), (2, 40), "Log_Enable write refused");

    let his = app.db.history(
        id,
        chrono::Utc::now() - chrono::Duration::hours(1),
        chrono::Utc::now() + chrono::Duration::seconds(1),
    );
    // 50.4 is within COV_Increment (1) of 50: not a history sample, only
    // the log's recovery record.
    let values: Vec<f64> = his.iter().map(|s| s.value.as_f64()).collect();
    assert_eq!(values, [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);

    // MORE_ITEMS means "matched but did not fit" (Clause 15.8.1.3.3), and
    // only By Sequence Number / By Time answers carry firstSequenceNumber.
    // By position, first three: FIRST_ITEM.
    let r = c.read_range(20, tl, &by_position(1, 3)).await;
    assert_eq!((r.flags, r.count, r.first_seq), (FIRST_ITEM, 3, None));
    for (k, rec) in r.records.iter().enumerate() {
        let (d, t) = stamp(his[k].at);
        assert_eq!(
            *rec,
            (d, t, Datum::Real(his[k].value.as_f64() as f32)),
            "record {k}"
        );
    }
    // By position backwards from the last: LAST_ITEM.
    let r = c.read_range(21, tl, &by_position(8, -4)).await;
    assert_eq!((r.flags, r.count, r.first_seq), (LAST_ITEM, 4, None));
    let data: Vec<&Datum> = r.records.iter().map(|x| &x.2).collect();
    assert_eq!(
        data,
        [
            &Datum::Real(50.0),
            &Datum::Failure(7, 30), // COMMUNICATION / TIMEOUT
            &Datum::Real(50.4),
            &Datum::Real(60.0)
        ]
    );
    // By sequence number from 6 on: 6..8, LAST_ITEM only.
    let r = c.read_range(22, tl, &by_sequence(6, 10)).await;
    assert_eq!((r.flags, r.count, r.first_seq), (LAST_ITEM, 3, Some(6)));
    // By time: records newer than a reference between samples 2 and 3.
    let mid = his[1].at + (his[2].at - his[1].at) / 2;
    let (d, t) = stamp(mid);
    let r = c.read_range(23, tl, &by_time(d, t, 2)).await;
    assert_eq!((r.flags, r.count, r.first_seq), (0, 2, Some(3)));
    assert_eq!(r.records[0].2, Datum::Real(30.0));
    assert_eq!(r.records[0].0, stamp(his[2].at).0);
    assert_eq!(r.records[0].1, stamp(his[2].at).1);
    // Whole buffer, all flags: FIRST_ITEM | LAST_ITEM, no MORE_ITEMS.
    let r = c.read_range(24, tl, &by_position(1, 100)).await;
    assert_eq!((r.flags, r.count), (FIRST_ITEM | LAST_ITEM, 8));
    // Nothing at a position past the end: an empty page, no flags.
    let r = c.read_range(25, tl, &by_position(50, 3)).await;
    assert_eq!((r.flags, r.count, r.records.len()), (0, 0, 0));

    // A client that takes 50-octet APDUs and no segments gets what fits,
    // with MORE_ITEMS, never a truncated record.
    let a = c.call(&read_range(26, tl, &by_position(1, 8), 0)).await;
    assert!(a.len() <= 50, "fits the client's APDU: {} octets", a.len());
    let r = parse_range_ack(&a);
    assert!(r.count >= 1 && r.count < 8, "a partial page: {}", r.count);
    assert_eq!(r.flags & (FIRST_ITEM | MORE_ITEMS), FIRST_ITEM | MORE_ITEMS);
    assert_eq!(r.records.len() as u64, r.count);
    app.stop().await;
}

#[tokio::test]
async fn malformed_read_ranges_get_an_answer_and_the_log_keeps_serving() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bacnet bound")).await;
    let id = app.db.lookup("cpu_usage").expect("point");
    app.db
        .set(id, Some(Value::Number(5.0)), Quality::Ok, None)
        .expect("set");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("no range", read_range(1, 3, &[], 5)),
        ("count 0", read_range(2, 3, &by_position(1, 0), 5)),
        ("index 0", read_range(3, 3, &by_position(0, 5), 5)),
        (
            "huge index",
            read_range(4, 3, &by_position(u32::MAX, -5), 5),
        ),
        ("sequence 0", read_range(5, 3, &by_sequence(0, 5), 5)),
        (
            "count i32::MIN",
            read_range(6, 3, &by_position(1, i32::MIN), 5),
        ),
        (
            "deprecated byTime [4]",
            read_range(7, 3, &[0x4E, 0x21, 0x01, 0x31, 0x01, 0x4F], 5),
        ),
        (
            "unclosed range",
            read_range(8, 3, &[0x3E, 0x21, 0x01, 0x31, 0x01], 5),
        ),
        (
            "unspecified time",
            read_range(9, 3, &by_time([0xFF; 4], [0xFF; 4], 3), 5),
        ),
        ("unknown log", read_range(10, 77, &by_position(1, 1), 5)),
    ];
    // ReadRange of a non-list property (AI3 Present_Value).
    let mut v = vec![0x01, 0x04, 0x00, 0x05, 11, 26, 0x0C];
    v.extend_from_slice(&oid(AI, 3));
    v.extend_from_slice(&[0x19, PV]);
    v.extend_from_slice(&by_position(1, 1));
    cases.push(("not a list", bvlc(&v)));
    // Random bytes after a valid object and property, from a fixed seed so
    // a failure replays.
    let mut x: u32 = 0x2545_F491;
    for k in 0..100u8 {
        let mut body = Vec::new();
        for _ in 0..(k % 24) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            body.push(x as u8);
        }
        cases.push(("random range", read_range(100 + k, 3, &body, 5)));
    }
    for (what, frame) in &cases {
        let a = c.call(frame).await;
        // Complex ack, Error, Reject or Abort: always an answer.
        assert!(
            matches!(a[0] >> 4, 3 | 5 | 6 | 7),
            "{what}: unexpected reply {a:02x?}"
        );
    }
    // Still serving, and the log is intact.
    let r = c.read_range(99, 3, &by_position(1, 10)).await;
    assert_eq!((r.count, r.records[0].2.clone()), (1, Datum::Real(5.0)));
    app.stop().await;
}

// ------------------------------------------------- issue 18: conformance

const TREND_LOG: u32 = 20;
const NETWORK_PORT: u32 = 56;
const PASSWORD: &str = "e2e-pw";

/// castpoint with extra `[bacnet]` keys (password, write policy).
async fn start_with(bacnet: &str) -> TestApp {
    let mut cfg = castpoint::config::Config::embedded().expect("config");
    util::loopback(&mut cfg);
    // The section as the test writes it, on the loopback bind.
    let text = format!("bind = \"{}\"\n{bacnet}", cfg.server.bacnet.bind);
    cfg.server.bacnet = castpoint::config::section_from_str("bacnet", &text).expect("bacnet");
    TestApp::with_config(cfg).await
}

/// A context-tagged property identifier (1 or 2 octets).
fn prop_tag(tag: u8, prop: u32) -> Vec<u8> {
    if prop < 256 {
        vec![(tag << 4) | 0x09, prop as u8]
    } else {
        vec![(tag << 4) | 0x0A, (prop >> 8) as u8, prop as u8]
    }
}

pub(crate) fn rp(invoke: u8, ty: u32, inst: u32, prop: u32) -> Vec<u8> {
    let mut d = vec![0x0C];
    d.extend_from_slice(&oid(ty, inst));
    d.extend(prop_tag(1, prop));
    confirmed(invoke, 12, &d)
}

pub(crate) fn wp(
    invoke: u8,
    ty: u32,
    inst: u32,
    prop: u32,
    value: &[u8],
    priority: Option<u8>,
) -> Vec<u8> {
    let mut d = vec![0x0C];
    d.extend_from_slice(&oid(ty, inst));
    d.extend(prop_tag(1, prop));
    d.push(0x3E);
    d.extend_from_slice(value);
    d.push(0x3F);
    if let Some(p) = priority {
        d.extend_from_slice(&[0x49, p]);
    }
    confirmed(invoke, 15, &d)
}

/// A context- or application-tagged character string (ANSI X3.4).
fn char_string(tag_octet: u8, s: &str) -> Vec<u8> {
    let len = s.len() as u8 + 1;
    let mut v = if len <= 4 {
        vec![tag_octet | len]
    } else {
        vec![tag_octet | 5, len]
    };
    v.push(0x00);
    v.extend_from_slice(s.as_bytes());
    v
}

/// The confirmed service choice of a BACnetServicesSupported bit (Clause
/// 21, 135-2020: bits 0..=20 are the confirmed choices of the same number;
/// the later confirmed services were appended after the unconfirmed ones).
fn confirmed_choice(bit: u32) -> Option<u8> {
    match bit {
        0..=20 => Some(bit as u8),
        35 => Some(26), // readRange
        37 => Some(27), // lifeSafetyOperation
        38 => Some(28), // subscribeCOVProperty
        39 => Some(29), // getEventInformation
        41 => Some(30), // subscribeCOVPropertyMultiple
        42 => Some(31), // confirmedCOVNotificationMultiple
        44 => Some(32), // confirmedAuditNotification
        45 => Some(33), // auditLogQuery
        _ => None,
    }
}

/// The set bits of the bit string in a ReadProperty-ACK (0-based, MSB first).
fn bits_of(a: &[u8]) -> Vec<u32> {
    assert_eq!(a[0], 0x30, "complex ack: {a:02x?}");
    let open = a.iter().position(|b| *b == 0x3E).expect("opening tag") + 1;
    assert_eq!(a[open] >> 4, 8, "bit string: {a:02x?}");
    let (len, start) = match a[open] & 0x07 {
        5 => (a[open + 1] as usize, open + 2),
        n => (n as usize, open + 1),
    };
    let unused = a[start] as usize;
    let data = &a[start + 1..start + len];
    let total = data.len() * 8 - unused;
    (0..total)
        .filter(|n| data[n / 8] & (0x80 >> (n % 8)) != 0)
        .map(|n| n as u32)
        .collect()
}

#[tokio::test]
async fn event_services_list_the_alarms_and_logs_do_not_claim_reporting() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // Telemetry is off: CPU Usage (AI3) has no source, and its alarm
    // (fault_on_bad_quality) puts it in FAULT at once. GetEventInformation
    // (29) lists it (Clause 13.12): a ComplexACK, More_Events FALSE.
    let ai3 = {
        let mut v = vec![0x0C];
        v.extend(oid(AI, 3));
        v
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let a = loop {
        let a = c.call(&confirmed(1, 29, &[])).await;
        assert_eq!(a[..4], [0x30, 1, 29, 0x0E], "{a:02x?}");
        assert_eq!(a[a.len() - 3..], [0x0F, 0x19, 0x00], "{a:02x?}");
        if a.windows(5).any(|w| w == ai3.as_slice()) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "AI3 not listed: {a:02x?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Right after AI3: its Event_State [1] FAULT (1), then
    // Acknowledged_Transitions [2] with to-fault clear (class 3 needs no
    // ack: all three set).
    let at = a
        .windows(5)
        .position(|w| w == ai3.as_slice())
        .expect("listed")
        + 5;
    assert_eq!(a[at..at + 2], [0x19, 0x01], "{a:02x?}");
    // Event_State, Status_Flags (IN_ALARM + FAULT), Notification_Class 3.
    let e = c.call(&rp(2, AI, 3, 36)).await;
    assert_eq!(e[e.len() - 3..], [0x91, 0x01, 0x3F], "{e:02x?}");
    let f = c.call(&rp(3, AI, 3, 111)).await;
    assert_eq!(f[f.len() - 4..], [0x82, 0x04, 0xC0, 0x3F], "{f:02x?}");
    let n = c.call(&rp(4, AI, 3, 17)).await;
    assert_eq!(n[n.len() - 3..], [0x21, 0x03, 0x3F], "{n:02x?}");
    // Paging: Last_Received_Object_Identifier [0] = AI3 answers from the
    // objects after it (Server Status, MSV0, is in FAULT too: no source).
    let mut after = vec![0x0C];
    after.extend(oid(AI, 3));
    let p = c.call(&confirmed(9, 29, &after)).await;
    assert_eq!(p[..4], [0x30, 9, 29, 0x0E], "{p:02x?}");
    assert!(!p.windows(5).any(|w| w == ai3.as_slice()), "{p:02x?}");
    let mut msv0 = vec![0x0C];
    msv0.extend(oid(19, 0));
    assert!(p.windows(5).any(|w| w == msv0.as_slice()), "{p:02x?}");
    // GetAlarmSummary (3) lists it too.
    let s = c.call(&confirmed(5, 3, &[])).await;
    assert_eq!(s[..3], [0x30, 5, 3], "{s:02x?}");
    let mut ai3_app = vec![0xC4];
    ai3_app.extend(oid(AI, 3));
    assert!(s.windows(5).any(|w| w == ai3_app.as_slice()), "{s:02x?}");
    // AcknowledgeAlarm of its to-fault transition with a time stamp that
    // is not the transition's: SERVICES (5) / INVALID_TIME_STAMP (14).
    let mut d = vec![0x09, 0x01, 0x1C];
    d.extend(oid(AI, 3));
    d.extend([0x29, 0x01, 0x3E, 0x19, 0x01, 0x3F]);
    d.extend(char_string(0x48, "x"));
    d.extend([0x5E, 0x19, 0x01, 0x5F]);
    let e = c.call(&confirmed(6, 0, &d)).await;
    assert_eq!(error_of(&e), (5, 14), "{e:02x?}");
    // The refusal is in the audit log like a refused write: who, and why.
    let me = c.sock.local_addr().expect("local addr").to_string();
    let base = format!("http://{}", app.addrs.http.expect("http bound"));
    let audit: serde_json::Value = reqwest::get(format!("{base}/api/audit?kind=alarm-ack"))
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let events = audit["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["protocol"] == "bacnet"
            && e["peer"] == serde_json::Value::String(me.clone())
            && e["result"] == "refused"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("invalid-time-stamp"))),
        "refused ack audited with peer {me}: {audit}"
    );
    // The Trend Logs do not advertise intrinsic reporting they cannot do:
    // Notification_Class (17) and Event_Enable (35) are unknown properties.
    for (i, prop) in [17u32, 35, 0, 130].into_iter().enumerate() {
        let e = c.call(&rp(10 + i as u8, TREND_LOG, 3, prop)).await;
        assert_eq!(error_of(&e), (2, 32), "TL3 property {prop}: {e:02x?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn protocol_object_types_supported_lists_the_served_types_only() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let a = c.call(&rp(1, 8, DEVICE, 96)).await;
    // AI 0, AV 2, BO 4, Device 8, Notification Class 15, MSV 19, Trend Log
    // 20, Structured View 29 (the server's view and the routes', issue 20),
    // Network Port 56: the types of the Object_List and of route objects,
    // nothing else.
    assert_eq!(bits_of(&a), [0, 2, 4, 8, 15, 19, 20, 29, 56], "{a:02x?}");
    app.stop().await;
}

/// A minimal well-formed request for each confirmed service the device may
/// claim (Clause 21 encodings), by service choice.
fn request_for(service: u32) -> Option<Vec<u8>> {
    let dev = oid(8, DEVICE);
    let ai0 = oid(AI, 0);
    let mut d = Vec::new();
    match service {
        // AcknowledgeAlarm: process 1, AI0, TO_OFFNORMAL, time stamps by
        // sequence number, source "x".
        0 => {
            d.extend([0x09, 0x01, 0x1C]);
            d.extend(ai0);
            d.extend([0x29, 0x01, 0x3E, 0x19, 0x01, 0x3F]);
            d.extend(char_string(0x48, "x"));
            d.extend([0x5E, 0x19, 0x01, 0x5F]);
        }
        // ConfirmedEventNotification (ack-notification, no values).
        2 => {
            d.extend([0x09, 0x01, 0x1C]);
            d.extend(oid(8, 1));
            d.push(0x2C);
            d.extend(ai0);
            d.extend([0x3E, 0x19, 0x01, 0x3F, 0x49, 0x01, 0x59, 0x01, 0x69, 0x00]);
            d.extend([0x89, 0x02, 0xB9, 0x00]);
        }
        3 | 29 => {}
        4 => d.extend([0x09, 0x00]),
        // SubscribeCOV cancellation.
        5 => {
            d.extend([0x09, 0x05, 0x1C]);
            d.extend(ai0);
        }
        // AtomicReadFile / AtomicWriteFile, stream access, File 0.
        6 => {
            d.push(0xC4);
            d.extend(oid(10, 0));
            d.extend([0x0E, 0x31, 0x00, 0x21, 0x01, 0x0F]);
        }
        7 => {
            d.push(0xC4);
            d.extend(oid(10, 0));
            d.extend([0x0E, 0x31, 0x00, 0x61, 0x78, 0x0F]);
        }
        // Add/RemoveListElement: one REAL to AI0's Present_Value.
        8 | 9 => {
            d.push(0x0C);
            d.extend(ai0);
            d.extend([0x19, PV, 0x3E]);
            d.extend(real(1.0));
            d.push(0x3F);
        }
        // CreateObject of an analog value.
        10 => d.extend([0x0E, 0x09, 0x02, 0x0F]),
        // DeleteObject AV0.
        11 => {
            d.push(0xC4);
            d.extend(oid(AV, 0));
        }
        12 => {
            d.push(0x0C);
            d.extend(dev);
            d.extend([0x19, 77]);
        }
        14 => {
            d.push(0x0C);
            d.extend(dev);
            d.extend([0x1E, 0x09, 77, 0x1F]);
        }
        // WriteProperty / WPM of AI0's Present_Value (not commandable).
        15 => {
            d.push(0x0C);
            d.extend(ai0);
            d.extend([0x19, PV, 0x3E]);
            d.extend(real(1.0));
            d.push(0x3F);
        }
        16 => {
            d.push(0x0C);
            d.extend(ai0);
            d.extend([0x1E, 0x09, PV, 0x2E]);
            d.extend(real(1.0));
            d.extend([0x2F, 0x1F]);
        }
        // DeviceCommunicationControl enable, with the password.
        17 => {
            d.extend([0x19, 0x00]);
            d.extend(char_string(0x28, PASSWORD));
        }
        // ConfirmedTextMessage from device 1, normal priority, "x".
        19 => {
            d.push(0x0C);
            d.extend(oid(8, 1));
            d.extend([0x29, 0x00]);
            d.extend(char_string(0x38, "x"));
        }
        // ReinitializeDevice WARMSTART with the password.
        20 => {
            d.extend([0x09, 0x01]);
            d.extend(char_string(0x18, PASSWORD));
        }
        // ReadRange of TL3's Log_Buffer, whole.
        26 => {
            d.push(0x0C);
            d.extend(oid(TREND_LOG, 3));
            d.extend([0x19, 131]);
        }
        // LifeSafetyOperation: process 1, source "x", SILENCE, AI0.
        27 => {
            d.extend([0x09, 0x01]);
            d.extend(char_string(0x18, "x"));
            d.extend([0x29, 0x01, 0x3C]);
            d.extend(ai0);
        }
        // SubscribeCOVProperty cancellation.
        28 => {
            d.extend([0x09, 0x05, 0x1C]);
            d.extend(ai0);
            d.extend([0x4E, 0x09, PV, 0x4F]);
        }
        // SubscribeCOVPropertyMultiple: process 5, unconfirmed, 60 s,
        // max delay 1 s, one reference.
        30 => {
            d.extend([0x09, 0x05, 0x19, 0x00, 0x29, 0x3C, 0x39, 0x01, 0x4E, 0x0C]);
            d.extend(ai0);
            d.extend([0x1E, 0x0E, 0x09, PV, 0x0F, 0x29, 0x00, 0x1F, 0x4F]);
        }
        // ConfirmedAuditNotification: one notification, device 1 to this
        // device, operation READ (0).
        32 => {
            d.extend([0x0E, 0x2E, 0x0C]);
            d.extend(oid(8, 1));
            d.extend([0x2F, 0x49, 0x00, 0xAE, 0x0C]);
            d.extend(dev);
            d.extend([0xAF, 0x0F]);
        }
        // AuditLogQuery of Audit Log 0, by target this device, 10 records.
        33 => {
            d.push(0x0C);
            d.extend(oid(61, 0));
            d.extend([0x1E, 0x0E, 0x0C]);
            d.extend(dev);
            d.extend([0x79, 0x00, 0x0F, 0x1F, 0x39, 0x0A]);
        }
        _ => return None,
    }
    Some(d)
}

/// Why an answer means "not executed", if it does: Reject
/// UNRECOGNIZED_SERVICE (9), Error SERVICES (5) / SERVICE_REQUEST_DENIED
/// (29) or OPTIONAL_FUNCTIONALITY_NOT_SUPPORTED (45).
fn refused_as_unsupported(a: &[u8]) -> Option<String> {
    match a.first().map(|b| b >> 4) {
        Some(6) if a.get(2) == Some(&9) => Some("Reject unrecognized-service".into()),
        Some(5) => {
            // Error, or a structured error with the class/code in [0].
            let at = if a.get(3) == Some(&0x0E) { 4 } else { 3 };
            let (class, code) = (*a.get(at + 1)?, *a.get(at + 3)?);
            (class == 5 && matches!(code, 29 | 45)).then(|| format!("Error services/{code}"))
        }
        _ => None,
    }
}

#[tokio::test]
async fn every_claimed_confirmed_service_is_executed() {
    let app = start_with(&format!("password = \"{PASSWORD}\"")).await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let claimed = bits_of(&c.call(&rp(1, 8, DEVICE, 97)).await);
    eprintln!("Protocol_Services_Supported bits: {claimed:?}");
    let mut refused = Vec::new();
    let mut tried = 0;
    for (n, bit) in claimed.iter().enumerate() {
        let Some(service) = confirmed_choice(*bit) else {
            continue; // unconfirmed services: below
        };
        let data = request_for(u32::from(service)).expect("a request for every confirmed service");
        tried += 1;
        let invoke = 10 + n as u8;
        let a = c.call(&confirmed(invoke, service, &data)).await;
        eprintln!("service {service}: {a:02x?}");
        if let Some(why) = refused_as_unsupported(&a) {
            refused.push((service, why));
        }
    }
    assert!(
        tried >= 20,
        "{tried} confirmed services claimed: {claimed:?}"
    );
    // The stack sets Protocol_Services_Supported from its fixed
    // EXECUTED_SERVICES; castpoint executes every one of them, CreateObject
    // and ConfirmedAuditNotification included (answered by castpoint's
    // transport filter, docs/bacnet-pics.md).
    assert_eq!(refused, [], "claimed but refused");
    // Who-Is (8) and Who-Has (7) are answered.
    assert!(claimed.contains(&34) && claimed.contains(&33));
    c.send(&unconfirmed(8, &[])).await;
    assert!(c.recv(2000).await.is_some(), "I-Am");
    app.stop().await;
}

#[tokio::test]
async fn writes_to_missing_objects_and_read_only_properties_use_the_standard_errors() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // A missing object: OBJECT (1) / UNKNOWN_OBJECT (31), like RP and WPM.
    let e = c.call(&wp(1, AV, 99, 85, &real(1.0), Some(10))).await;
    assert_eq!(error_of(&e), (1, 31), "{e:02x?}");
    let e = c.call(&rp(2, AV, 99, 85)).await;
    assert_eq!(error_of(&e), (1, 31), "{e:02x?}");
    // Read-only properties of the Device, Network Port and Trend Log:
    // PROPERTY (2) / WRITE_ACCESS_DENIED (40). Trend Log Enable (133) and
    // Record_Count (141) are refused too (a documented deviation).
    let name = char_string(0x70, "x");
    let cases: [(u32, u32, u32, Vec<u8>); 8] = [
        (8, DEVICE, 77, name.clone()),
        (8, DEVICE, 28, name.clone()),
        (8, DEVICE, 62, vec![0x21, 50]),
        (NETWORK_PORT, 1, 77, name.clone()),
        // Description: the stack's port object would take it; castpoint
        // holds it read-only and says so the standard way.
        (NETWORK_PORT, 1, 28, name.clone()),
        (TREND_LOG, 3, 77, name.clone()),
        (TREND_LOG, 3, 133, vec![0x10]),
        (TREND_LOG, 3, 141, vec![0x21, 0x00]),
    ];
    for (i, (ty, inst, prop, v)) in cases.iter().enumerate() {
        let e = c.call(&wp(3 + i as u8, *ty, *inst, *prop, v, None)).await;
        assert_eq!(
            error_of(&e),
            (2, 40),
            "{ty}/{inst} property {prop}: {e:02x?}"
        );
    }
    // A property the object does not have: UNKNOWN_PROPERTY (32).
    let e = c.call(&wp(20, 8, DEVICE, 85, &real(1.0), None)).await;
    assert_eq!(error_of(&e), (2, 32), "{e:02x?}");
    // The Device and the log are unchanged.
    let a = c.call(&rp(21, 8, DEVICE, 77)).await;
    assert!(a.windows(9).any(|w| w == b"castpoint"), "{a:02x?}");
    let a = c.call(&rp(22, TREND_LOG, 3, 133)).await;
    assert!(a.windows(3).any(|w| w == [0x3E, 0x11, 0x3F]), "{a:02x?}");
    app.stop().await;
}

#[tokio::test]
async fn a_network_command_is_not_a_local_override() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // Priority 8 (manual operator) from the network: shown in
    // Priority_Array and Current_Command_Priority, not as OVERRIDDEN.
    let ack = c.call(&wp(1, AV, 0, 85, &real(3.0), Some(8))).await;
    assert_eq!(ack[0], 0x20, "{ack:02x?}");
    let id = app.db.lookup("input_select").expect("point");
    assert_eq!(
        app.db.read(id).expect("state").quality,
        Quality::Overridden,
        "the database's own notion is unchanged"
    );
    let sf = c.call(&rp(2, AV, 0, 111)).await;
    assert!(
        sf.windows(3).any(|w| w == [0x82, 0x04, 0x00]),
        "no OVERRIDDEN flag: {sf:02x?}"
    );
    let ccp = c.call(&rp(3, AV, 0, 431)).await;
    assert!(ccp.windows(3).any(|w| w == [0x3E, 0x21, 8]), "{ccp:02x?}");
    c.call(&wp(4, AV, 0, 85, &[0x00], Some(8))).await;
    app.stop().await;
}

#[tokio::test]
async fn each_who_is_gets_an_i_am_even_in_quick_succession() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // Three Who-Is from the same requester within a few milliseconds (a
    // retry), then a ranged one: one I-Am each.
    let ranged = {
        let mut d = vec![0x0B];
        d.extend_from_slice(&DEVICE.to_be_bytes()[1..]);
        d.push(0x1B);
        d.extend_from_slice(&DEVICE.to_be_bytes()[1..]);
        unconfirmed(8, &d)
    };
    for f in [
        unconfirmed(8, &[]),
        unconfirmed(8, &[]),
        unconfirmed(8, &[]),
        ranged,
    ] {
        c.send(&f).await;
    }
    let mut iams = 0;
    while let Some(r) = c.recv(1500).await {
        if apdu(&r).is_some_and(|a| a.starts_with(&[0x10, 0x00])) {
            iams += 1;
        }
        if iams == 4 {
            break;
        }
    }
    assert_eq!(iams, 4, "one I-Am per Who-Is");
    app.stop().await;
}

#[tokio::test]
async fn device_uuid_is_made_once_and_kept() {
    let cfg = castpoint::config::Config::embedded().expect("config");
    let app = TestApp::with_config(cfg.clone()).await;
    let dir = app.data_dir();
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let read_uuid = |a: Vec<u8>| -> Vec<u8> {
        let pos = a
            .windows(2)
            .position(|w| w == [0x3E, 0x65])
            .filter(|p| a.get(p + 2) == Some(&16))
            .expect("16-octet OCTET STRING");
        a[pos + 3..pos + 19].to_vec()
    };
    let first = read_uuid(c.call(&rp(1, 8, DEVICE, 507)).await);
    assert_ne!(first, [0u8; 16]);
    assert_eq!(first[6] >> 4, 4, "RFC 4122 version 4");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(dir.join("device-uuid")).expect("file");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let app = app.restart(cfg).await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    assert_eq!(read_uuid(c.call(&rp(2, 8, DEVICE, 507)).await), first);
    app.stop().await;
}

#[tokio::test]
async fn reinitialize_sets_the_last_restart_reason() {
    let app = start_with(&format!("password = \"{PASSWORD}\"")).await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let reason = |a: &[u8]| -> u8 {
        let pos = a.iter().position(|b| *b == 0x3E).expect("value");
        assert_eq!(a[pos + 1], 0x91, "{a:02x?}");
        a[pos + 2]
    };
    assert_eq!(reason(&c.call(&rp(1, 8, DEVICE, 196)).await), 0, "unknown");
    let mut d = vec![0x09, 0x01];
    d.extend(char_string(0x18, PASSWORD));
    let ack = c.call(&confirmed(2, 20, &d)).await;
    assert_eq!(ack, [0x20, 2, 20]);
    assert_eq!(
        reason(&c.call(&rp(3, 8, DEVICE, 196)).await),
        2,
        "warmstart"
    );
    let mut d = vec![0x09, 0x00];
    d.extend(char_string(0x18, PASSWORD));
    c.call(&confirmed(4, 20, &d)).await;
    assert_eq!(
        reason(&c.call(&rp(5, 8, DEVICE, 196)).await),
        1,
        "coldstart"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_write_policy_refuses_sources_outside_write_allow() {
    for (policy, why) in [
        ("write_allow = [\"192.0.2.0/24\"]", "source not allowed"),
        ("read_only = true", "read only"),
    ] {
        let app = start_with(policy).await;
        let c = Client::new(app.addrs.bacnet.expect("bound")).await;
        let e = c.call(&wp(1, AV, 0, 85, &real(3.0), Some(10))).await;
        assert_eq!(error_of(&e), (2, 40), "{why}: {e:02x?}");
        let id = app.db.lookup("input_select").expect("point");
        assert_eq!(
            app.db.read(id).expect("state").value,
            Some(Value::Number(0.0))
        );
        let audit = app.db.audit_tail(10);
        let last = audit.last().expect("the refusal is audited");
        assert_eq!(last.point, "input_select");
        assert_eq!(last.result, Err(castpoint::points::WriteError::Denied));
        assert_eq!(last.source.protocol, Protocol::Bacnet);
        assert_eq!(last.source.peer, c.sock.local_addr().ok(), "{why}");
        app.stop().await;
    }
    // An allowed source writes.
    let app = start_with("write_allow = [\"127.0.0.0/8\"]").await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let ack = c.call(&wp(1, AV, 0, 85, &real(3.0), Some(10))).await;
    assert_eq!(ack[0], 0x20, "{ack:02x?}");
    app.stop().await;
}

#[tokio::test]
async fn integer_points_refuse_fractional_values() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // Input Select is a whole input number: 2.5 is VALUE_OUT_OF_RANGE (37).
    let e = c.call(&wp(1, AV, 0, 85, &real(2.5), Some(10))).await;
    assert_eq!(error_of(&e), (2, 37), "{e:02x?}");
    let ack = c.call(&wp(2, AV, 0, 85, &real(2.0), Some(10))).await;
    assert_eq!(ack[0], 0x20, "{ack:02x?}");
    // The model refuses it for every protocol (REST, Haystack, Modbus).
    let id = app.db.lookup("input_select").expect("point");
    let src = castpoint::points::Source::new(Protocol::Rest, None, None);
    assert_eq!(
        app.db.write(id, Some(Value::Number(2.5)), 11, &src).err(),
        Some(castpoint::points::WriteError::OutOfRange)
    );
    c.call(&wp(3, AV, 0, 85, &[0x00], Some(10))).await;
    app.stop().await;
}

/// Issue 16 item 8: writes BACnet refuses before the point database sees
/// them (wrong datatype, priority 6, a read-only object, a read-only
/// property) are audited with the requester, like the database's own.
#[tokio::test]
async fn writes_refused_before_the_database_are_audited_with_the_peer() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let me = c.sock.local_addr().expect("local");
    let refused = |app: &castpoint::app::App| {
        app.db
            .audit_tail(10_000)
            .iter()
            .filter(|r| r.source.protocol == Protocol::Bacnet && r.result.is_err())
            .map(|r| (r.point.clone(), r.priority, r.source.peer))
            .collect::<Vec<_>>()
    };
    assert!(refused(&app).is_empty());
    let e = c.call(&write_property(1, BO, 0, &real(1.0), Some(9))).await;
    assert_eq!(error_of(&e), (2, 9));
    let e = c.call(&write_property(2, AV, 0, &real(2.0), Some(6))).await;
    assert_eq!(error_of(&e), (2, 40));
    let e = c.call(&write_property(3, AI, 0, &real(1.0), None)).await;
    assert_eq!(error_of(&e), (2, 40));
    let e = c
        .call(&wp(4, AV, 0, 77, &char_string(0x70, "x"), None))
        .await;
    assert_eq!(error_of(&e), (2, 40));
    let r = refused(&app);
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(r.iter().all(|(_, _, peer)| *peer == Some(me)), "{r:?}");
    assert_eq!(r[0].1, 9);
    assert_eq!(r[1].1, 6);
    app.stop().await;
}

/// A Reject PDU's (invoke id, reason), if `a` is one.
fn reject_of(a: &[u8]) -> Option<(u8, u8)> {
    (a.len() == 3 && a[0] == 0x60).then(|| (a[1], a[2]))
}

#[tokio::test]
async fn undefined_enumerations_in_dcc_and_reinitialize_are_rejected() {
    let app = start_with(&format!("password = \"{PASSWORD}\"")).await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    // DeviceCommunicationControl enable-disable 7 (defined: 0..=2), with and
    // without the password and a time duration: Reject UNDEFINED_ENUMERATION
    // (8), Clause 18.9 / 20.1.8, before any password check.
    let mut d = vec![0x19, 0x07];
    d.extend(char_string(0x28, PASSWORD));
    let a = c.call(&confirmed(1, 17, &d)).await;
    assert_eq!(reject_of(&a), Some((1, 8)), "DCC 7: {a:02x?}");
    let a = c.call(&confirmed(2, 17, &[0x09, 0x05, 0x19, 0x03])).await;
    assert_eq!(reject_of(&a), Some((2, 8)), "DCC 3, no password: {a:02x?}");
    // ReinitializeDevice state 9 (defined: 0..=7).
    let mut d = vec![0x09, 0x09];
    d.extend(char_string(0x18, PASSWORD));
    let a = c.call(&confirmed(3, 20, &d)).await;
    assert_eq!(reject_of(&a), Some((3, 8)), "RD 9: {a:02x?}");
    let a = c.call(&confirmed(4, 20, &[0x09, 0x08])).await;
    assert_eq!(reject_of(&a), Some((4, 8)), "RD 8, no password: {a:02x?}");
    // Defined values still reach the stack: DCC enable and RD WARMSTART with
    // the password are executed, a wrong password is refused.
    let mut d = vec![0x19, 0x00];
    d.extend(char_string(0x28, PASSWORD));
    assert_eq!(c.call(&confirmed(5, 17, &d)).await, [0x20, 5, 17]);
    let mut d = vec![0x09, 0x01];
    d.extend(char_string(0x18, PASSWORD));
    assert_eq!(c.call(&confirmed(6, 20, &d)).await, [0x20, 6, 20]);
    let mut d = vec![0x09, 0x01];
    d.extend(char_string(0x18, "wrong"));
    let a = c.call(&confirmed(7, 20, &d)).await;
    assert_eq!(a[0], 0x50, "wrong password: {a:02x?}");
    // A request routed to the device (SNET 7, SADR 0x42) is answered back
    // through the router it came from: DNET 7, DADR 0x42, hop count 255.
    let f = bvlc(&[
        0x01, 0x0C, 0x00, 0x07, 0x01, 0x42, 0x00, 0x05, 8, 17, 0x19, 0x07,
    ]);
    c.send(&f).await;
    let r = c.recv(3000).await.expect("routed reply");
    assert_eq!(
        r.get(4..),
        Some(&[0x01, 0x20, 0x00, 0x07, 0x01, 0x42, 0xFF, 0x60, 8, 8][..]),
        "{r:02x?}"
    );
    // The device keeps serving.
    assert!(c.read_real(AI, 0).await.is_finite());
    app.stop().await;
}

#[tokio::test]
async fn create_object_is_refused_as_dynamic_creation_not_supported() {
    let app = util::start().await;
    let c = Client::new(app.addrs.bacnet.expect("bound")).await;
    let count = |a: &[u8]| a[a.len() - 3..].to_vec();
    let before = count(&c.call(&read_property(1, 8, DEVICE, 76, Some(0))).await);
    // CreateObject-Error: [0] { OBJECT (1), DYNAMIC_CREATION_NOT_SUPPORTED
    // (4) }, [1] first-failed-element-number 0 (Clause 15.3.1.3.1), by
    // object type (analog-value), by identifier, with initial values.
    let expected = |invoke: u8| vec![0x50, invoke, 10, 0x0E, 0x91, 1, 0x91, 4, 0x0F, 0x19, 0x00];
    let by_type = [0x0E, 0x09, 0x02, 0x0F];
    assert_eq!(c.call(&confirmed(2, 10, &by_type)).await, expected(2));
    let mut by_id = vec![0x0E, 0x1C];
    by_id.extend(oid(AV, 77));
    by_id.push(0x0F);
    assert_eq!(c.call(&confirmed(3, 10, &by_id)).await, expected(3));
    let mut with_values = by_type.to_vec();
    with_values.extend([0x1E, 0x09, 77, 0x2E]);
    with_values.extend(char_string(0x70, "made"));
    with_values.extend([0x2F, 0x1F]);
    assert_eq!(c.call(&confirmed(4, 10, &with_values)).await, expected(4));
    // Nothing was created.
    let after = count(&c.call(&read_property(5, 8, DEVICE, 76, Some(0))).await);
    assert_eq!(before, after, "Object_List length");
    let e = c.call(&rp(6, AV, 77, 85)).await;
    assert_eq!(error_of(&e), (1, 31), "{e:02x?}");
    // A malformed CreateObject is still the stack's to reject (or ignore).
    c.send(&confirmed(7, 10, &[0x0E, 0x0F])).await;
    if let Some(r) = c.recv(2000).await {
        assert_ne!(apdu(&r), Some(&expected(7)[..]), "{r:02x?}");
    }
    app.stop().await;
}
