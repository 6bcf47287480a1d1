//! Unit tests of the point database: priority arrays, quality, coercion, notifications, history, audit.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;

use super::*;

fn num(id: &str, writable: bool, min: f64, max: f64) -> PointDef {
    PointDef {
        id: id.into(),
        name: id.into(),
        description: String::new(),
        role: if writable {
            Role::Command
        } else {
            Role::Measurement
        },
        kind: Kind::Number,
        unit: None,
        min: Some(min),
        max: Some(max),
        integer: false,
        sample_period: Duration::from_secs(1),
        writable,
        states: vec![],
        relinquish_default: if writable {
            Some(Value::Number(min))
        } else {
            None
        },
        cov_increment: 1.0,
        his: true,
        tags: BTreeMap::new(),
        alarm: None,
    }
}

fn boolean(id: &str) -> PointDef {
    PointDef {
        kind: Kind::Bool,
        min: None,
        max: None,
        integer: false,
        relinquish_default: Some(Value::Bool(false)),
        ..num(id, true, 0.0, 1.0)
    }
}

fn status(id: &str) -> PointDef {
    PointDef {
        role: Role::Status,
        kind: Kind::Enum,
        min: None,
        max: None,
        integer: false,
        states: vec!["OK".into(), "WARNING".into(), "FAULT".into()],
        ..num(id, false, 0.0, 0.0)
    }
}

fn site() -> SiteEquip {
    SiteEquip {
        site_id: "s".into(),
        site_dis: "S".into(),
        equip_id: "e".into(),
        equip_dis: "E".into(),
        tz: "UTC".into(),
    }
}

fn db() -> PointDb {
    PointDb::new(
        vec![
            num("meas", false, 0.0, 100.0),
            num("sp", true, 0.0, 16.0),
            boolean("enable"),
            status("st"),
        ],
        site(),
        DbOptions::default(),
    )
}

fn src(p: Protocol) -> Source {
    Source::new(p, Some("127.0.0.1:1234".parse().expect("addr")), None)
}

#[test]
fn measurements_start_unavailable_commands_at_default() {
    let db = db();
    let m = db.read(db.lookup("meas").expect("meas")).expect("state");
    assert_eq!(m.value, None);
    assert_eq!(m.quality, Quality::Unavailable);
    assert!(m.reason.is_some());
    let e = db
        .read(db.lookup("enable").expect("enable"))
        .expect("state");
    assert_eq!(e.value, Some(Value::Bool(false)));
    assert_eq!(e.level, Some(DEFAULT_LEVEL));
    assert_eq!(e.quality, Quality::Ok);
}

#[test]
fn priority_array_resolves_highest_and_relinquishes() {
    let db = db();
    let sp = db.lookup("sp").expect("sp");
    db.write(sp, Some(Value::Number(5.0)), 16, &src(Protocol::Modbus))
        .expect("w16");
    db.write(sp, Some(Value::Number(3.0)), 10, &src(Protocol::Bacnet))
        .expect("w10");
    let st = db.read(sp).expect("st");
    assert_eq!(st.value, Some(Value::Number(3.0)));
    assert_eq!(st.level, Some(10));
    assert_eq!(st.quality, Quality::Ok);
    // Level 8 or above is an operator override.
    db.write(sp, Some(Value::Number(7.0)), 8, &src(Protocol::Haystack))
        .expect("w8");
    assert_eq!(db.read(sp).expect("st").quality, Quality::Overridden);
    let out = db
        .write(sp, None, 8, &src(Protocol::Haystack))
        .expect("rel8");
    assert_eq!(out.old, Some(Value::Number(7.0)));
    assert_eq!(out.new, Some(Value::Number(3.0)));
    db.write(sp, None, 10, &src(Protocol::Bacnet))
        .expect("rel10");
    db.write(sp, None, 16, &src(Protocol::Modbus))
        .expect("rel16");
    let st = db.read(sp).expect("st");
    assert_eq!(st.value, Some(Value::Number(0.0)));
    assert_eq!(st.level, Some(DEFAULT_LEVEL));
    // Level 17 rewrites the default; it cannot be null.
    db.write(sp, Some(Value::Number(2.0)), 17, &src(Protocol::Rest))
        .expect("w17");
    assert_eq!(db.read(sp).expect("st").value, Some(Value::Number(2.0)));
    assert_eq!(
        db.write(sp, None, 17, &src(Protocol::Rest)),
        Err(WriteError::NullDefault)
    );
    let pa = db.priority_array(sp).expect("pa");
    assert!(pa.slots.iter().all(Option::is_none));
    assert_eq!(pa.default, Value::Number(2.0));
}

#[test]
fn same_slot_is_shared_across_protocols() {
    let db = db();
    let sp = db.lookup("sp").expect("sp");
    db.write(sp, Some(Value::Number(4.0)), 8, &src(Protocol::Bacnet))
        .expect("bacnet");
    db.write(sp, Some(Value::Number(6.0)), 8, &src(Protocol::Haystack))
        .expect("haystack");
    let pa = db.priority_array(sp).expect("pa");
    let slot = pa.slots[7].as_ref().expect("slot 8");
    assert_eq!(slot.value, Value::Number(6.0));
    assert_eq!(slot.who.protocol, Protocol::Haystack);
    assert_eq!(pa.slots.iter().flatten().count(), 1);
}

#[test]
fn writes_are_validated() {
    let db = db();
    let sp = db.lookup("sp").expect("sp");
    let en = db.lookup("enable").expect("enable");
    let m = db.lookup("meas").expect("meas");
    let s = src(Protocol::Rest);
    assert_eq!(
        db.write(sp, Some(Value::Number(17.0)), 10, &s),
        Err(WriteError::OutOfRange)
    );
    assert_eq!(
        db.write(sp, Some(Value::Number(f64::NAN)), 10, &s),
        Err(WriteError::OutOfRange)
    );
    assert_eq!(
        db.write(sp, Some(Value::Number(1.0)), 0, &s),
        Err(WriteError::InvalidPriority)
    );
    assert_eq!(
        db.write(sp, Some(Value::Number(1.0)), 18, &s),
        Err(WriteError::InvalidPriority)
    );
    assert_eq!(
        db.write(m, Some(Value::Number(1.0)), 10, &s),
        Err(WriteError::NotWritable)
    );
    assert_eq!(
        db.write(PointId(999), Some(Value::Number(1.0)), 10, &s),
        Err(WriteError::UnknownPoint)
    );
    assert_eq!(
        db.write(en, Some(Value::Number(2.0)), 10, &s),
        Err(WriteError::OutOfRange)
    );
    assert_eq!(
        db.write(en, Some(Value::Enum(1)), 10, &s),
        Err(WriteError::TypeMismatch)
    );
    // 0/1 numbers coerce to bool (Modbus, BACnet REAL writes).
    db.write(en, Some(Value::Number(1.0)), 10, &s)
        .expect("coerce");
    assert_eq!(db.read(en).expect("st").value, Some(Value::Bool(true)));
    // A fractional REAL within range is a legal set-point.
    db.write(sp, Some(Value::Number(0.75)), 10, &s)
        .expect("0.75");
    assert_eq!(db.read(sp).expect("st").value, Some(Value::Number(0.75)));
}

#[test]
fn every_write_is_audited_refused_ones_too() {
    let db = db();
    let mut rx = db.subscribe_writes();
    let sp = db.lookup("sp").expect("sp");
    let s = src(Protocol::Modbus);
    db.write(sp, Some(Value::Number(3.0)), 10, &s).expect("ok");
    let _ = db.write(sp, Some(Value::Number(300.0)), 10, &s);
    let a = db.audit_tail(10);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].old, Some(Value::Number(0.0)));
    assert_eq!(a[0].new, Some(Value::Number(3.0)));
    assert!(a[0].result.is_ok());
    assert_eq!(a[1].result, Err(WriteError::OutOfRange));
    assert_eq!(a[1].source.protocol, Protocol::Modbus);
    assert_eq!(rx.try_recv().expect("first").priority, 10);
    assert!(rx.try_recv().is_ok());
}

#[test]
fn audit_is_bounded() {
    let db = PointDb::new(
        vec![num("sp", true, 0.0, 16.0)],
        site(),
        DbOptions {
            audit_cap: 5,
            ..DbOptions::default()
        },
    );
    let sp = db.lookup("sp").expect("sp");
    for i in 0..12 {
        db.write(
            sp,
            Some(Value::Number(f64::from(i % 16))),
            10,
            &Source::internal(),
        )
        .expect("w");
    }
    let a = db.audit_tail(100);
    assert_eq!(a.len(), 5);
    assert_eq!(a[4].new, Some(Value::Number(11.0)));
}

#[test]
fn change_notifications_reach_many_subscribers_and_watches() {
    let db = db();
    let mut a = db.subscribe();
    let mut b = db.subscribe();
    let m = db.lookup("meas").expect("meas");
    let mut w = db.watch(m).expect("watch");
    db.set(m, Some(Value::Number(42.0)), Quality::Ok, None)
        .expect("set");
    let ca = a.try_recv().expect("a");
    let cb = b.try_recv().expect("b");
    assert_eq!(ca.id, m);
    assert_eq!(ca.seq, cb.seq);
    assert_eq!(ca.state.value, Some(Value::Number(42.0)));
    assert!(w.has_changed().expect("watch alive"));
    assert_eq!(w.borrow_and_update().value, Some(Value::Number(42.0)));
    // The same value again notifies nobody.
    db.set(m, Some(Value::Number(42.0)), Quality::Ok, None)
        .expect("set");
    assert!(a.try_recv().is_err());
    // A quality change does.
    db.set(m, None, Quality::Fault, Some("sensor gone"))
        .expect("set");
    let c = a.try_recv().expect("fault");
    assert_eq!(c.state.quality, Quality::Fault);
    assert_eq!(c.state.reason.as_deref(), Some("sensor gone"));
}

#[test]
fn set_refuses_commands_and_wrong_types() {
    let db = db();
    let sp = db.lookup("sp").expect("sp");
    let st = db.lookup("st").expect("st");
    assert_eq!(
        db.set(sp, Some(Value::Number(1.0)), Quality::Ok, None),
        Err(WriteError::NotWritable)
    );
    assert_eq!(
        db.set(st, Some(Value::Enum(4)), Quality::Ok, None),
        Err(WriteError::OutOfRange)
    );
    assert_eq!(
        db.set(st, Some(Value::Bool(true)), Quality::Ok, None),
        Err(WriteError::TypeMismatch)
    );
    db.set(st, Some(Value::Enum(3)), Quality::Ok, None)
        .expect("FAULT");
    assert_eq!(db.def(st).expect("def").state_name(3), Some("FAULT"));
    // Measurements beyond the seed's typical range keep their true value.
    let m = db.lookup("meas").expect("meas");
    db.set(m, Some(Value::Number(250.0)), Quality::Ok, None)
        .expect("beyond range");
    assert_eq!(db.read(m).expect("st").value, Some(Value::Number(250.0)));
}

#[test]
fn history_is_bounded_ordered_and_cov_filtered() {
    let db = PointDb::new(
        vec![num("meas", false, 0.0, 100.0)],
        site(),
        DbOptions {
            history_cap: 3,
            ..DbOptions::default()
        },
    );
    let m = db.lookup("meas").expect("meas");
    for v in [1.0, 1.5, 3.0, 5.0, 7.0, 9.0] {
        db.set(m, Some(Value::Number(v)), Quality::Ok, None)
            .expect("set");
    }
    // 1.5 is within the cov increment (1.0) of 1.0, so not recorded; the cap keeps the newest 3.
    let from = Utc::now() - chrono::Duration::hours(1);
    let to = Utc::now() + chrono::Duration::hours(1);
    let h = db.history(m, from, to);
    let vals: Vec<f64> = h.iter().map(|s| s.value.as_f64()).collect();
    assert_eq!(vals, vec![5.0, 7.0, 9.0]);
    assert!(h.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(db
        .history(m, to, to + chrono::Duration::hours(1))
        .is_empty());
}

#[test]
fn stale_after_missed_periods() {
    let db = db();
    let m = db.lookup("meas").expect("meas");
    db.set(m, Some(Value::Number(1.0)), Quality::Ok, None)
        .expect("set");
    assert_eq!(db.expire(Utc::now()), 0);
    let later = Utc::now() + chrono::Duration::seconds(10);
    assert_eq!(db.expire(later), 1);
    let st = db.read(m).expect("st");
    assert_eq!(st.quality, Quality::Stale);
    assert_eq!(st.value, Some(Value::Number(1.0)));
    // Commands and statuses never go stale through this path.
    assert_eq!(db.expire(later), 0);
}

#[test]
fn restore_priority_array_validates() {
    let db = db();
    let sp = db.lookup("sp").expect("sp");
    let mut pa = db.priority_array(sp).expect("pa");
    pa.slots[3] = Some(SlotValue {
        value: Value::Number(9.0),
        who: Source::internal(),
        at: Utc::now(),
    });
    db.restore_priority_array(sp, pa.clone()).expect("restore");
    let st = db.read(sp).expect("st");
    assert_eq!(st.value, Some(Value::Number(9.0)));
    assert_eq!(st.quality, Quality::Overridden);
    pa.slots[3] = Some(SlotValue {
        value: Value::Number(99.0),
        who: Source::internal(),
        at: Utc::now(),
    });
    assert_eq!(
        db.restore_priority_array(sp, pa),
        Err(WriteError::OutOfRange)
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever sequence of writes arrives, the resolved value is the
        /// highest-priority non-null slot or the default, and is in range.
        #[test]
        fn resolution_matches_model(ops in proptest::collection::vec((1u8..=16, proptest::option::of(0.0f64..=16.0)), 0..64)) {
            let db = db();
            let sp = db.lookup("sp").expect("sp");
            let mut model: [Option<f64>; 16] = [None; 16];
            for (p, v) in ops {
                db.write(sp, v.map(Value::Number), p, &Source::internal()).expect("valid write");
                model[usize::from(p) - 1] = v;
            }
            let want = model.iter().flatten().next().copied().unwrap_or(0.0);
            prop_assert_eq!(db.read(sp).expect("st").value, Some(Value::Number(want)));
        }
    }
}

struct Failing;
impl Persister for Failing {
    fn persist(&self, _: &WriteRecord, pa: Option<(&str, &PriorityArray)>) -> Result<(), String> {
        if pa.is_some() {
            Err("disk full".into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_command_that_cannot_be_stored_is_not_applied() {
    let db = db();
    db.set_persister(std::sync::Arc::new(Failing));
    let sp = db.lookup("sp").expect("sp");
    assert_eq!(
        db.write(sp, Some(Value::Number(3.0)), 10, &Source::internal()),
        Err(WriteError::Storage)
    );
    let st = db.read(sp).expect("st");
    assert_eq!(st.value, Some(Value::Number(0.0)));
    assert!(db
        .priority_array(sp)
        .expect("pa")
        .slots
        .iter()
        .all(Option::is_none));
    assert_eq!(db.audit_tail(1)[0].result, Err(WriteError::Storage));
}

#[test]
fn write_policy_refuses_and_audits_per_protocol() {
    use crate::points::{Protocol, WritePolicy};
    let db = db();
    let sp = db.lookup("sp").expect("sp");
    let policy = WritePolicy {
        read_only: false,
        write_allow: vec!["192.0.2.10/32".parse().expect("cidr")],
    };
    db.set_write_policy(Protocol::Modbus, policy);
    let outsider = Source::new(
        Protocol::Modbus,
        Some("192.0.2.11:5000".parse().expect("addr")),
        None,
    );
    assert_eq!(
        db.write(sp, Some(Value::Number(3.0)), 10, &outsider),
        Err(WriteError::Denied)
    );
    let a = db.audit_tail(1);
    assert_eq!(a[0].result, Err(WriteError::Denied));
    assert_eq!(a[0].source.peer, outsider.peer);
    let supervisor = Source::new(
        Protocol::Modbus,
        Some("192.0.2.10:5000".parse().expect("addr")),
        None,
    );
    assert!(db
        .write(sp, Some(Value::Number(3.0)), 10, &supervisor)
        .is_ok());
    // Other protocols are untouched by the Modbus policy.
    let bacnet = Source::new(
        Protocol::Bacnet,
        Some("192.0.2.11:47808".parse().expect("addr")),
        None,
    );
    assert!(db.write(sp, Some(Value::Number(4.0)), 10, &bacnet).is_ok());
    db.set_write_policy(
        Protocol::Bacnet,
        WritePolicy {
            read_only: true,
            write_allow: vec![],
        },
    );
    assert_eq!(
        db.write(sp, Some(Value::Number(5.0)), 10, &bacnet),
        Err(WriteError::Denied)
    );
    // castpoint's own writes are never subject to a protocol policy.
    assert!(db
        .write(sp, Some(Value::Number(5.0)), 10, &Source::internal())
        .is_ok());
}

fn route_db() -> PointDb {
    use super::routes::{RouteTemplate, TemplatePoint};
    let t = |def: PointDef, per_output: bool, states_from_inputs: bool| TemplatePoint {
        def,
        per_output,
        states_from_inputs,
    };
    let sel = PointDef {
        role: Role::Command,
        writable: true,
        states: vec!["Auto".into()],
        relinquish_default: Some(Value::Enum(1)),
        ..status("input_select")
    };
    PointDb::with_routes(
        vec![num("meas", false, 0.0, 100.0)],
        site(),
        DbOptions::default(),
        Some(RouteTemplate {
            equip_dis: "Route".into(),
            equip_tags: BTreeMap::new(),
            points: vec![
                t(status("route_status"), false, false),
                t(boolean("output_enable"), true, false),
                t(sel, false, true),
            ],
            max_slots: 4,
            max_outputs: 2,
            max_inputs: 3,
        }),
    )
}

#[test]
fn route_blocks_have_fixed_ids_and_are_served_only_while_owned() {
    use super::routes::BlockInfo;
    let db = route_db();
    // 1 server point + 4 slots x (2 plain + 2 outputs x 1).
    assert_eq!(db.len(), 1 + 4 * 4);
    assert_eq!(db.ids().count(), 1);
    let id = db.lookup_any("route.3.output_enable.2").expect("reserved");
    assert_eq!(
        db.block_point(3, "output_enable", Some(2)),
        Some(id),
        "block_point and the id agree"
    );
    let rp = db.route_point(id).expect("a route point");
    assert_eq!((rp.slot, rp.output), (3, Some(2)));
    assert!(db.lookup("route.3.output_enable.2").is_none(), "absent");
    let w = src(Protocol::Bacnet);
    assert_eq!(
        db.write(id, Some(Value::Bool(true)), 8, &w),
        Err(WriteError::UnknownPoint)
    );
    assert!(db.open_block(
        3,
        BlockInfo {
            route: "cam".into(),
            inputs: vec!["main".into(), "backup".into()],
            outputs: vec!["web".into()],
        },
    ));
    assert_eq!(db.slot_of("cam"), Some(3));
    assert_eq!(db.lookup("route.3.output_enable.2"), Some(id));
    assert_eq!(db.route_ids().len(), 4);
    db.write(id, Some(Value::Bool(true)), 8, &w)
        .expect("served now");
    // Input Select: Auto + the route's inputs; input 3 is not the route's.
    let sel = db.lookup("route.3.input_select").expect("sel");
    assert_eq!(
        db.state_names(sel),
        ["Auto", "main", "backup", "Input 3 (unused)"]
    );
    db.write(sel, Some(Value::Enum(3)), 8, &w).expect("backup");
    assert_eq!(
        db.write(sel, Some(Value::Enum(4)), 8, &w),
        Err(WriteError::OutOfRange)
    );
    // Freed: not served, and the commands are back at their defaults.
    let cmds = db.close_block(3);
    assert_eq!(cmds.len(), 3, "{cmds:?}");
    assert!(db.lookup("route.3.input_select").is_none());
    assert_eq!(
        db.read(sel).and_then(|s| s.value),
        Some(Value::Enum(1)),
        "nothing inherited by the slot's next owner"
    );
    assert!(db
        .priority_array(id)
        .is_some_and(|pa| pa.slots.iter().all(Option::is_none)));
}
