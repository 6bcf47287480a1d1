//! Unit tests of the BACnet adapter: options, units, quality mapping, point objects as views of the database, EDE.

use bacnet_objects::traits::BACnetObject;
use bacnet_types::enums::{ErrorClass, ErrorCode, PropertyIdentifier as P, Reliability};
use bacnet_types::error::Error;
use bacnet_types::primitives::PropertyValue;
use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::points::{DbOptions, Quality};

fn setup() -> (Config, PointDb, Vec<PointObject>) {
    let cfg = Config::embedded().expect("embedded config");
    let db = PointDb::new(cfg.points.clone(), cfg.site.clone(), DbOptions::default());
    let objs = point_objects(&db, &cfg.maps).expect("objects");
    (cfg, db, objs)
}

fn find<'a>(objs: &'a mut [PointObject], name: &str) -> &'a mut PointObject {
    objs.iter_mut()
        .find(|o| o.object_name() == name)
        .expect("object exists")
}

fn code(e: Error) -> (ErrorClass, ErrorCode) {
    match e {
        Error::Remote(bacnet_types::error::RemoteError::Error { class, code }) => (class, code),
        other => panic!("not a BACnet error: {other:?}"),
    }
}

fn options(text: &str) -> Result<BacnetOptions, Vec<String>> {
    crate::config::section_from_str::<BacnetSection>("bacnet", text)
        .map(|s| s.options())
        .map_err(|e| {
            e.0.iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect()
        })
}

#[test]
fn options_parse_and_name_their_keys() {
    let o = options(
        "password = \"secret\"\nbroadcast = \"10.0.0.255\"\nforeign_bbmd = \"10.1.1.1:47808\"\nforeign_ttl = 60",
    )
    .expect("valid");
    assert_eq!(o.password.as_deref(), Some("secret"));
    assert_eq!(o.broadcast, Some(Ipv4Addr::new(10, 0, 0, 255)));
    assert_eq!(o.foreign_ttl, 60);
    let e = options("pasword = \"x\"").expect_err("invalid");
    assert!(e.iter().any(|m| m.starts_with("bacnet.pasword")), "{e:?}");
    let e = options("foreign_ttl = 0\npassword = \"\"").expect_err("invalid");
    assert!(
        e.iter().any(|m| m.starts_with("bacnet.foreign_ttl")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.starts_with("bacnet.password")), "{e:?}");
    let e = options("broadcast = 3").expect_err("invalid");
    assert!(e.iter().any(|m| m.starts_with("bacnet.broadcast")), "{e:?}");
    assert!(e.iter().any(|m| m.starts_with("bacnet.broadcast")), "{e:?}");
}

#[test]
fn broadcast_of_loopback_and_wildcard() {
    assert_eq!(
        broadcast_for(Ipv4Addr::LOCALHOST),
        Ipv4Addr::new(127, 255, 255, 255)
    );
    assert_eq!(broadcast_for(Ipv4Addr::UNSPECIFIED), Ipv4Addr::BROADCAST);
}

/// The embedded configuration binds 0.0.0.0: the device must still publish
/// a concrete unicast address of this host (the stack refuses to register
/// an unspecified one, which kept BACnet down on the default config).
#[test]
fn wildcard_bind_publishes_a_concrete_host_address() {
    let ip = primary_ipv4();
    assert!(!ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast());
    let host: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .expect("interfaces")
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) => Some(a.ip),
            _ => None,
        })
        .collect();
    assert!(host.contains(&ip), "{ip} is not one of {host:?}");
}

#[test]
fn units_follow_the_point_and_the_fallback() {
    let (cfg, db, _) = setup();
    let get = |id: &str, fallback: bool| {
        let pid = db.lookup(id).expect("point");
        let o = cfg
            .maps
            .bacnet
            .objects
            .iter()
            .find(|o| o.point == pid)
            .expect("mapped");
        units::units_code(db.def(pid).expect("def"), o, fallback).expect("units")
    };
    assert_eq!(get("cpu_usage", false), 98);
    assert_eq!(get("encoding_latency", false), 159);
    assert_eq!(get("uptime", false), 71);
    assert_eq!(get("total_bitrate_out", false), 47932);
    assert_eq!(get("total_bitrate_out", true), units::NO_UNITS);
    assert_eq!(get("active_streams", false), units::NO_UNITS);
}

#[test]
fn quality_maps_to_flags_and_reliability() {
    let (_, db, mut objs) = setup();
    let cpu = db.lookup("cpu_usage").expect("point");
    let ai = find(&mut objs, "CPU Usage");
    // No source yet: a valid REAL, FAULT set, NO_SENSOR.
    assert_eq!(
        ai.read_property(P::PRESENT_VALUE, None).expect("pv"),
        PropertyValue::Real(0.0)
    );
    assert_eq!(
        ai.read_property(P::STATUS_FLAGS, None).expect("sf"),
        PropertyValue::BitString {
            unused_bits: 4,
            data: vec![0x40]
        }
    );
    assert_eq!(
        ai.read_property(P::RELIABILITY, None).expect("rel"),
        PropertyValue::Enumerated(Reliability::NO_SENSOR.to_raw())
    );
    db.set(cpu, Some(Value::Number(42.5)), Quality::Ok, None)
        .expect("set");
    assert_eq!(
        ai.read_property(P::PRESENT_VALUE, None).expect("pv"),
        PropertyValue::Real(42.5)
    );
    assert_eq!(
        ai.read_property(P::STATUS_FLAGS, None).expect("sf"),
        PropertyValue::BitString {
            unused_bits: 4,
            data: vec![0]
        }
    );
    db.set(cpu, Some(Value::Number(42.5)), Quality::Stale, Some("late"))
        .expect("set");
    assert_eq!(
        ai.read_property(P::RELIABILITY, None).expect("rel"),
        PropertyValue::Enumerated(Reliability::COMMUNICATION_FAILURE.to_raw())
    );
}

#[test]
fn commandable_writes_go_through_the_priority_array() {
    let (_, db, mut objs) = setup();
    let pid = db.lookup("input_select").expect("point");
    let av = find(&mut objs, "Input Select");
    av.write_property(P::PRESENT_VALUE, None, PropertyValue::Real(3.0), Some(9))
        .expect("write 3.0");
    assert_eq!(
        av.read_property(P::PRESENT_VALUE, None).expect("pv"),
        PropertyValue::Real(3.0)
    );
    assert_eq!(
        av.read_property(P::PRIORITY_ARRAY, Some(9)).expect("slot"),
        PropertyValue::Real(3.0)
    );
    assert_eq!(
        av.read_property(P::CURRENT_COMMAND_PRIORITY, None)
            .expect("ccp"),
        PropertyValue::Unsigned(9)
    );
    let pa = db.priority_array(pid).expect("pa");
    assert_eq!(
        pa.slots[8].as_ref().map(|s| s.value),
        Some(Value::Number(3.0))
    );
    assert_eq!(
        pa.slots[8].as_ref().map(|s| s.who.protocol),
        Some(Protocol::Bacnet)
    );
    // Out of range (0..16), wrong type, priority 6, read-only property.
    let e = av.write_property(P::PRESENT_VALUE, None, PropertyValue::Real(17.0), Some(9));
    assert_eq!(
        code(e.expect_err("range")),
        (ErrorClass::PROPERTY, ErrorCode::VALUE_OUT_OF_RANGE)
    );
    let e = av.write_property(
        P::PRESENT_VALUE,
        None,
        PropertyValue::Enumerated(1),
        Some(9),
    );
    assert_eq!(
        code(e.expect_err("type")),
        (ErrorClass::PROPERTY, ErrorCode::INVALID_DATA_TYPE)
    );
    let e = av.write_property(P::PRESENT_VALUE, None, PropertyValue::Real(1.0), Some(6));
    assert_eq!(
        code(e.expect_err("p6")),
        (ErrorClass::PROPERTY, ErrorCode::WRITE_ACCESS_DENIED)
    );
    let e = av.write_property(
        P::OBJECT_NAME,
        None,
        PropertyValue::CharacterString("x".into()),
        None,
    );
    assert_eq!(
        code(e.expect_err("ro")),
        (ErrorClass::PROPERTY, ErrorCode::WRITE_ACCESS_DENIED)
    );
    // NULL relinquishes; the default is back.
    av.write_property(P::PRESENT_VALUE, None, PropertyValue::Null, Some(9))
        .expect("relinquish");
    assert_eq!(
        av.read_property(P::PRESENT_VALUE, None).expect("pv"),
        PropertyValue::Real(0.0)
    );
    assert_eq!(
        av.read_property(P::PRIORITY_ARRAY, Some(9)).expect("slot"),
        PropertyValue::Null
    );
    // A write from another protocol shows in the BACnet priority array.
    db.write(
        pid,
        Some(Value::Number(3.0)),
        12,
        &Source::new(Protocol::Modbus, None, None),
    )
    .expect("modbus write");
    assert_eq!(
        av.read_property(P::PRIORITY_ARRAY, Some(12)).expect("slot"),
        PropertyValue::Real(3.0)
    );
    assert_eq!(
        av.read_property(P::PRESENT_VALUE, None).expect("pv"),
        PropertyValue::Real(3.0)
    );
}

#[test]
fn read_only_objects_refuse_present_value_writes() {
    let (_, _, mut objs) = setup();
    let ai = find(&mut objs, "Active Streams");
    let e = ai.write_property(P::PRESENT_VALUE, None, PropertyValue::Real(1.0), None);
    assert_eq!(
        code(e.expect_err("ro")),
        (ErrorClass::PROPERTY, ErrorCode::WRITE_ACCESS_DENIED)
    );
    let msv = find(&mut objs, "Server Status");
    assert_eq!(
        msv.read_property(P::NUMBER_OF_STATES, None).expect("n"),
        PropertyValue::Unsigned(3)
    );
    assert_eq!(
        msv.read_property(P::STATE_TEXT, Some(2)).expect("text"),
        PropertyValue::CharacterString("WARNING".into())
    );
    let e = msv.read_property(P::STATE_TEXT, Some(4_000_000_000));
    assert_eq!(
        code(e.expect_err("index")),
        (ErrorClass::PROPERTY, ErrorCode::INVALID_ARRAY_INDEX)
    );
    let e = msv.read_property(P::PRESENT_VALUE, Some(1));
    assert_eq!(
        code(e.expect_err("not array")),
        (ErrorClass::PROPERTY, ErrorCode::PROPERTY_IS_NOT_AN_ARRAY)
    );
}

#[test]
fn every_listed_property_reads() {
    let (_, _, objs) = setup();
    for o in &objs {
        for p in o.property_list().iter() {
            o.read_property(*p, None)
                .unwrap_or_else(|e| panic!("{} {p:?}: {e}", o.object_name()));
        }
        for p in o.required_properties().iter() {
            assert!(
                o.property_list().contains(p),
                "{} lists {p:?}",
                o.object_name()
            );
        }
    }
}

/// The property set is computed once per object (objects.rs `props`):
/// `with_commandable` after construction must still change what is listed
/// and what reads, both ways (a route's Input Select is a commandable
/// Multi-state Value, routes.rs).
#[test]
fn commandable_set_after_construction_changes_the_property_set() {
    let (_, db, _) = setup();
    let point = db.lookup("input_status").expect("point");
    let def = db.def(point).expect("def");
    let make = || {
        PointObject::new(
            db.clone(),
            point,
            def,
            crate::points::BacnetObjectType::MultiStateValue,
            2,
            0,
        )
        .expect("object")
    };
    for commandable in [true, false] {
        let o = make().with_commandable(commandable);
        for p in [
            P::PRIORITY_ARRAY,
            P::RELINQUISH_DEFAULT,
            P::CURRENT_COMMAND_PRIORITY,
        ] {
            assert_eq!(o.property_list().contains(&p), commandable, "{p:?}");
            assert_eq!(o.read_property(p, None).is_ok(), commandable, "{p:?}");
        }
        let o = o.with_commandable(!commandable);
        assert_eq!(o.property_list().contains(&P::PRIORITY_ARRAY), !commandable);
    }
}

#[test]
fn ede_lists_device_and_every_object() {
    let (cfg, _, _) = setup();
    let classes = alarms::class_defs(&[]);
    let (ede, states) = ede::export(
        &cfg.server.bacnet,
        &cfg.points,
        &cfg.maps,
        &classes,
        "2025-01-01",
    );
    assert!(ede.contains("VERSION_OF_LAYOUT;2.3"));
    let rows: Vec<&str> = ede
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(";389001;"))
        .collect();
    // Device, Network Port, point objects, Trend Logs, Notification
    // Classes: the Object_List.
    assert_eq!(
        rows.len(),
        2 + cfg.maps.bacnet.objects.len() + cfg.maps.bacnet.trend_logs.len() + classes.len()
    );
    assert!(rows
        .iter()
        .any(|r| r.starts_with("notification_class_1;389001;Stream alarms;15;1;")));
    // CPU Usage's alarm limit is the EDE's hi-limit.
    assert!(
        rows.iter()
            .any(|r| r.starts_with("cpu_usage;") && r.contains(";Y;90;;")),
        "{rows:?}"
    );
    // The object types the EDE lists are the ones the Device claims in
    // Protocol_Object_Types_Supported (AI, AV, BO, Device, NC, MSV, TL, NP).
    let mut types: Vec<u32> = rows
        .iter()
        .filter_map(|r| r.split(';').nth(3)?.parse().ok())
        .collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types, [0, 2, 4, 8, 15, 19, 20, 56]);
    assert!(rows
        .iter()
        .any(|r| r.starts_with("total_bitrate_out;389001;Total Bitrate Out;0;2;")));
    // TL3 logs AI3.
    assert!(
        rows.iter().any(|r| r.starts_with(
            "cpu_usage_trend;389001;CPU Usage Trend Log;20;3;history of AI3 (CPU Usage);"
        )),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.split(';').count() == 16), "{rows:?}");
    assert!(states.contains(";OK;WARNING;FAULT"));
}

#[test]
fn ede_lists_each_route_s_trend_logs_after_its_objects() {
    let text = "[[route]]\nname = \"cam\"\nslot = 3\n[[route.input]]\nname = \"in\"\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n";
    let mut cfg = Config::from_text("c.toml", text, std::path::Path::new(".")).expect("config");
    let rows = |cfg: &Config| -> Vec<String> {
        let (ede, _) = crate::exports::ede_of_config(cfg, "2025-01-01");
        ede.lines()
            .filter(|l| l.starts_with("route.3"))
            .map(str::to_string)
            .collect()
    };
    let r = rows(&cfg);
    let logs: Vec<&String> = r.iter().filter(|l| l.contains(";20;")).collect();
    assert_eq!(logs.len(), 7, "{r:?}");
    assert!(logs[0].starts_with(
        "route.3.input_bitrate_trend;389001;cam Input Bitrate Trend Log;20;3003;history of AI3003 (cam Input Bitrate);"
    ), "{logs:?}");
    assert!(logs[6].contains(";20;3009;history of AI3009 (cam Route Uptime);"));
    // After the route's view and its 31 objects.
    assert_eq!(r.len(), 1 + 31 + 7);
    assert!(r[32..].iter().all(|l| l.contains(";20;")));
    assert!(r.iter().all(|l| l.split(';').count() == 16), "{r:?}");
    cfg.maps.bacnet.route_trend_buffer_size = 0;
    assert_eq!(rows(&cfg).len(), 1 + 31);
}

proptest! {
    /// Whatever a peer writes (any datatype, index, priority), a point object
    /// answers Ok or a BACnet error, never panics, and the database keeps a
    /// value of the point's kind within range.
    #[test]
    fn writes_never_panic(kind in 0u8..8, f in any::<f32>(), u in any::<u64>(), idx in proptest::option::of(any::<u32>()), prio in proptest::option::of(any::<u8>()), which in 0usize..23, prop in 0u32..200) {
        let (_, db, mut objs) = setup();
        let v = match kind {
            0 => PropertyValue::Null,
            1 => PropertyValue::Real(f),
            2 => PropertyValue::Enumerated(u as u32),
            3 => PropertyValue::Unsigned(u),
            4 => PropertyValue::Boolean(u % 2 == 0),
            5 => PropertyValue::Double(f64::from(f)),
            6 => PropertyValue::CharacterString(format!("{u}")),
            _ => PropertyValue::Signed(u as i32),
        };
        let n = objs.len();
        let o = &mut objs[which % n];
        let _ = o.write_property(P::from_raw(prop), idx, v.clone(), prio);
        let _ = o.write_property(P::PRESENT_VALUE, idx, v, prio);
        let _ = o.read_property(P::from_raw(prop), idx);
        for id in db.ids() {
            if let (Some(def), Some(st)) = (db.def(id), db.read(id)) {
                if let Some(val) = st.value {
                    prop_assert!(def.check_value(&val).is_ok());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Fuzz target for every decoder of untrusted bytes on castpoint's
    /// BACnet path (the stack's NPDU/APDU and service-request decoders the
    /// server runs on each datagram): arbitrary bytes give Ok or Err, never
    /// a panic. The stack was fuzzed upstream with 48M inputs; this keeps a
    /// CI-sized check on the pinned version castpoint ships.
    #[test]
    fn request_decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        use bacnet_services as s;
        let b = bytes::Bytes::from(data.clone());
        let _ = bacnet_encoding::npdu::decode_npdu(b.clone());
        let _ = bacnet_encoding::apdu::decode_apdu(b);
        let _ = s::read_property::ReadPropertyRequest::decode(&data);
        let _ = s::write_property::WritePropertyRequest::decode(&data);
        let _ = s::rpm::ReadPropertyMultipleRequest::decode(&data);
        let _ = s::wpm::WritePropertyMultipleRequest::decode(&data);
        let _ = s::cov::SubscribeCOVRequest::decode(&data);
        let _ = s::who_is::WhoIsRequest::decode(&data);
        let _ = s::device_mgmt::DeviceCommunicationControlRequest::decode(&data);
        let _ = s::device_mgmt::ReinitializeDeviceRequest::decode(&data);
        let _ = s::device_mgmt::TimeSynchronizationRequest::decode(&data);
    }
}

#[test]
fn a_network_command_is_not_a_local_override() {
    // Clause 12: OVERRIDDEN is a local (hand) override; castpoint has none.
    assert_eq!(
        objects::quality_flags(Quality::Overridden),
        (false, false, Reliability::NO_FAULT_DETECTED)
    );
}

#[test]
fn the_write_policy_keys_are_bacnet_options() {
    let o = options("read_only = true\nwrite_allow = [\"192.0.2.0/24\"]").expect("valid");
    assert!(o.write_policy.read_only);
    assert_eq!(o.write_policy.write_allow.len(), 1);
    let e = options("read_only = 1").expect_err("invalid");
    assert!(e.iter().any(|m| m.starts_with("bacnet.read_only")), "{e:?}");
    let e = options("write_allow = [\"x\"]").expect_err("invalid");
    assert!(
        e.iter().any(|m| m.starts_with("bacnet.write_allow[0]")),
        "{e:?}"
    );
}

#[test]
fn object_types_supported_has_one_bit_per_served_type() {
    use bacnet_types::enums::ObjectType;
    let oids = [
        ObjectIdentifier::new(ObjectType::ANALOG_VALUE, 1).expect("oid"),
        ObjectIdentifier::new(ObjectType::DEVICE, 7).expect("oid"),
        ObjectIdentifier::new(ObjectType::ANALOG_VALUE, 2).expect("oid"),
        ObjectIdentifier::new(ObjectType::NETWORK_PORT, 1).expect("oid"),
    ];
    let types = served_types(&oids);
    assert_eq!(
        types,
        [
            ObjectType::ANALOG_VALUE,
            ObjectType::DEVICE,
            ObjectType::NETWORK_PORT
        ]
    );
    // Bits 2, 8, 56: eight octets, 7 unused bits after bit 56.
    let mut data = vec![0u8; 8];
    data[0] = 0x20;
    data[1] = 0x80;
    data[7] = 0x80;
    assert_eq!(
        config_objects::object_types_bits(&types),
        PropertyValue::BitString {
            unused_bits: 7,
            data
        }
    );
}

#[test]
fn device_uuid_is_made_once_with_mode_0600() {
    let dir = std::env::temp_dir().join(format!("castpoint-uuid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = device_uuid(&dir).expect("made");
    assert_ne!(a, [0u8; 16]);
    assert_eq!(a[6] >> 4, 4);
    assert_eq!(a[8] >> 6, 2);
    assert_eq!(device_uuid(&dir).expect("kept"), a);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(dir.join(DEVICE_UUID_FILE)).expect("file");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    std::fs::write(dir.join(DEVICE_UUID_FILE), "not hex\n").expect("write");
    assert!(
        device_uuid(&dir).is_err(),
        "a damaged file is an error, not a new id"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_reports_bad_bacnet_keys() {
    // What `castpoint check-config` runs: the extra [bacnet] keys are
    // validated with the others, not only when the server starts.
    let text = "[bacnet]\nwrite_allow = [\"10.0.0.0/33\"]\nread_only = \"yes\"\npasword = \"x\"\n";
    let e = match Config::from_text("c.toml", text, std::path::Path::new(".")) {
        Ok(_) => panic!("bad [bacnet] keys accepted"),
        Err(e) => e,
    };
    let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "bacnet.write_allow[0]",
        "bacnet.read_only",
        "bacnet.pasword",
    ] {
        assert!(keys.contains(&k), "{k} not reported: {e}");
    }
    let ok = "[bacnet]\nwrite_allow = [\"192.0.2.0/24\"]\nread_only = false\n";
    assert!(Config::from_text("c.toml", ok, std::path::Path::new(".")).is_ok());
}

// ---- Intrinsic reporting (alarms.rs): the object is a view of Alarms.

mod alarm_view {
    use std::collections::HashMap;
    use std::time::Duration;

    use bacnet_objects::event::{EventStateChange, EventTransition, EventTransitionCommit};
    use bacnet_types::enums::{EventState as BState, EventType};
    use bacnet_types::primitives::BACnetTimeStamp;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::alarms::{AlarmEvent, Alarms};
    use crate::points::alarm::{AlarmSpec, Algorithm, ClassRules, PerTransition};
    use crate::points::BacnetObjectType;

    fn spec() -> AlarmSpec {
        AlarmSpec {
            algorithm: Algorithm::ChangeOfState {
                alarm_values: vec![Value::Enum(2), Value::Enum(3)],
            },
            fault_values: vec![],
            fault_on_bad_quality: false,
            time_delay: Duration::ZERO,
            time_delay_normal: Some(Duration::from_secs(2)),
            event_enable: PerTransition::all(true),
            notification_class: 1,
        }
    }

    fn rules() -> ClassRules {
        ClassRules {
            priority: PerTransition {
                to_offnormal: 64,
                to_fault: 64,
                to_normal: 200,
            },
            ack_required: PerTransition {
                to_offnormal: true,
                to_fault: true,
                to_normal: false,
            },
        }
    }

    fn bits(v: PropertyValue) -> u8 {
        match v {
            PropertyValue::BitString { data, .. } => data[0],
            other => panic!("not a bit string: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_alarm_is_proposed_committed_and_acknowledged_through_the_object() {
        let (_cfg, db, mut objs) = setup();
        let point = db.lookup("input_status").expect("point");
        let alarms = Alarms::new(
            db.clone(),
            vec![(point, spec())],
            HashMap::from([(1, rules())]),
            100,
        );
        let mut events = alarms.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn(alarms.clone().run(stop.clone()));
        let acks = Arc::new(alarms::AckSources::default());
        let obj = find(&mut objs, "Input Status");
        let oid = obj.object_identifier();
        let link = Arc::new(alarms::AlarmLink::new(
            alarms.clone(),
            point,
            "input_status".into(),
            spec(),
            u32::from_be_bytes(oid.encode()),
            Arc::clone(&acks),
        ));
        let mut obj = PointObject::new(
            db.clone(),
            point,
            db.def(point).expect("def"),
            BacnetObjectType::MultiStateValue,
            2,
            0,
        )
        .expect("object")
        .with_alarm(Arc::clone(&link));
        let list = obj.property_list();
        for p in [
            P::EVENT_ENABLE,
            P::ACKED_TRANSITIONS,
            P::NOTIFY_TYPE,
            P::EVENT_TIME_STAMPS,
            P::NOTIFICATION_CLASS,
            P::EVENT_DETECTION_ENABLE,
            P::ALARM_VALUES,
            P::FAULT_VALUES,
            P::TIME_DELAY,
            P::TIME_DELAY_NORMAL,
        ] {
            assert!(list.contains(&p), "{p:?} advertised");
        }
        assert_eq!(
            obj.read_property(P::ALARM_VALUES, None).unwrap(),
            PropertyValue::List(vec![PropertyValue::Unsigned(2), PropertyValue::Unsigned(3)])
        );
        assert_eq!(
            obj.read_property(P::TIME_DELAY_NORMAL, None).unwrap(),
            PropertyValue::Unsigned(2)
        );
        // Configuration: read-only from the network.
        let e = obj
            .write_property(P::TIME_DELAY, None, PropertyValue::Unsigned(9), None)
            .unwrap_err();
        assert_eq!(
            code(e),
            (ErrorClass::PROPERTY, ErrorCode::WRITE_ACCESS_DENIED)
        );
        assert!(obj.evaluate_intrinsic_reporting().is_none(), "nothing yet");

        // NO_SIGNAL: Alarms makes the transition; the link queues it.
        db.set(point, Some(Value::Enum(2)), Quality::Ok, None)
            .unwrap();
        let rec = loop {
            match tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("a transition")
                .expect("feed")
            {
                AlarmEvent::Transition(r) => break r,
                AlarmEvent::Ack { .. } => {}
            }
        };
        // The object already shows it (a view), before the stack took it.
        assert_eq!(
            obj.read_property(P::EVENT_STATE, None).unwrap(),
            PropertyValue::Enumerated(2)
        );
        assert_eq!(
            bits(obj.read_property(P::STATUS_FLAGS, None).unwrap()) & 0x80,
            0x80,
            "IN_ALARM"
        );
        assert_eq!(
            bits(obj.read_property(P::ACKED_TRANSITIONS, None).unwrap()),
            0x60,
            "to-offnormal awaits its ack"
        );
        link.enqueue(&rec);
        let p = obj.evaluate_intrinsic_reporting().expect("a proposal");
        assert_eq!(
            p.change,
            EventStateChange {
                from: BState::NORMAL,
                to: BState::OFFNORMAL
            }
        );
        assert_eq!(p.event_type, EventType::CHANGE_OF_STATE);
        assert!(p.distribute);
        // The stack's commit takes it off the queue (a mismatched one is
        // refused and stays).
        let commit = |from, to, coordinate| EventTransitionCommit {
            change: EventStateChange { from, to },
            coordinate,
            ack_required: true,
            timestamp: BACnetTimeStamp::SequenceNumber(0),
            message_text: None,
        };
        assert!(obj
            .commit_event_transition_internal(commit(
                BState::NORMAL,
                BState::FAULT,
                EventTransition::ToFault
            ))
            .is_err());
        obj.commit_event_transition_internal(commit(
            BState::NORMAL,
            BState::OFFNORMAL,
            EventTransition::ToOffnormal,
        ))
        .expect("commit");
        assert!(obj.tick_intrinsic_reporting().is_none(), "taken once");
        // Event_Time_Stamps[1] is Alarms' time stamp; Event_Message_Texts
        // says why.
        let ts = alarms::time_stamp(Some(rec.transition.at));
        assert_eq!(
            obj.read_property(P::EVENT_TIME_STAMPS, Some(1)).unwrap(),
            alarms::time_stamp_value(Some(rec.transition.at))
        );
        let PropertyValue::CharacterString(text) =
            obj.read_property(P::EVENT_MESSAGE_TEXTS, Some(1)).unwrap()
        else {
            panic!("no text");
        };
        assert!(text.starts_with("input_status: "), "{text}");

        // AcknowledgeAlarm: the wrong state or time stamp is refused.
        let e = obj
            .acknowledge_alarm_correlated_detailed_internal(
                BState::OFFNORMAL,
                &BACnetTimeStamp::SequenceNumber(1),
            )
            .unwrap_err();
        assert_eq!(
            code(e),
            (ErrorClass::SERVICES, ErrorCode::INVALID_TIME_STAMP)
        );
        let e = obj
            .acknowledge_alarm_correlated_detailed_internal(BState::NORMAL, &ts)
            .unwrap_err();
        assert_eq!(
            code(e),
            (ErrorClass::SERVICES, ErrorCode::INVALID_TIME_STAMP),
            "no to-normal transition yet"
        );
        acks.note(
            u32::from_be_bytes(oid.encode()),
            Some("127.0.0.1:47809".parse().unwrap()),
            Some("operator 7".into()),
        );
        let change = obj
            .acknowledge_alarm_correlated_detailed_internal(BState::OFFNORMAL, &ts)
            .expect("acknowledged");
        assert_eq!(
            change,
            Some(EventStateChange {
                from: BState::NORMAL,
                to: BState::OFFNORMAL
            }),
            "the ACK_NOTIFICATION's transition"
        );
        // One truth: Alarms holds the ack, with who made it.
        assert!(alarms.state(point).unwrap().acked.to_offnormal);
        assert_eq!(
            bits(obj.read_property(P::ACKED_TRANSITIONS, None).unwrap()),
            0xE0
        );
        let who = loop {
            match events.recv().await.expect("feed") {
                AlarmEvent::Ack { source, .. } => break source,
                AlarmEvent::Transition(_) => {}
            }
        };
        assert_eq!(who.protocol, Protocol::Bacnet);
        assert_eq!(who.user.as_deref(), Some("operator 7"));
        assert_eq!(who.peer, Some("127.0.0.1:47809".parse().unwrap()));
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn limits_of_an_analog_alarm_read_as_configured() {
        let (_cfg, db, _objs) = setup();
        let point = db.lookup("cpu_usage").expect("point");
        let spec = AlarmSpec {
            algorithm: Algorithm::OutOfRange {
                high_limit: Some(90.0),
                low_limit: None,
                deadband: 5.0,
            },
            fault_values: vec![],
            fault_on_bad_quality: true,
            time_delay: Duration::from_secs(60),
            time_delay_normal: None,
            event_enable: PerTransition {
                to_offnormal: true,
                to_fault: false,
                to_normal: true,
            },
            notification_class: 3,
        };
        let alarms = Alarms::new(db.clone(), vec![(point, spec.clone())], HashMap::new(), 10);
        let link = Arc::new(alarms::AlarmLink::new(
            alarms,
            point,
            "cpu_usage".into(),
            spec,
            0,
            Arc::new(alarms::AckSources::default()),
        ));
        let obj = PointObject::new(
            db.clone(),
            point,
            db.def(point).expect("def"),
            BacnetObjectType::AnalogInput,
            0,
            98,
        )
        .expect("object")
        .with_alarm(link);
        let r = |p| obj.read_property(p, None).unwrap();
        assert_eq!(r(P::HIGH_LIMIT), PropertyValue::Real(90.0));
        assert_eq!(r(P::DEADBAND), PropertyValue::Real(5.0));
        // BACnetLimitEnable {low-limit-enable, high-limit-enable}: high only.
        assert_eq!(bits(r(P::LIMIT_ENABLE)), 0x40);
        assert_eq!(bits(r(P::EVENT_ENABLE)), 0xA0);
        assert_eq!(r(P::NOTIFICATION_CLASS), PropertyValue::Unsigned(3));
        assert_eq!(r(P::TIME_DELAY), PropertyValue::Unsigned(60));
        assert_eq!(r(P::TIME_DELAY_NORMAL), PropertyValue::Unsigned(60));
        assert_eq!(r(P::NOTIFY_TYPE), PropertyValue::Enumerated(0));
        // Never a transition: the unspecified date and time.
        assert_eq!(
            obj.read_property(P::EVENT_TIME_STAMPS, Some(2)).unwrap(),
            alarms::time_stamp_value(None)
        );
        assert_eq!(
            obj.read_property(P::EVENT_TIME_STAMPS, Some(0)).unwrap(),
            PropertyValue::Unsigned(3)
        );
        let e = obj.read_property(P::HIGH_LIMIT, Some(1)).unwrap_err();
        assert_eq!(
            code(e),
            (ErrorClass::PROPERTY, ErrorCode::PROPERTY_IS_NOT_AN_ARRAY)
        );
        // A Multi-state-only property is not an analog's.
        let e = obj.read_property(P::ALARM_VALUES, None).unwrap_err();
        assert_eq!(code(e), (ErrorClass::PROPERTY, ErrorCode::UNKNOWN_PROPERTY));
    }
}
