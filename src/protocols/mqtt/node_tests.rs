//! Table tests of the sans-IO edge node: births, report by exception, seq/bdSeq, store-and-forward and command writes, with no broker.

use super::*;
use crate::config::Config;
use crate::points::routes::BlockInfo;
use crate::points::{DbOptions, Quality};

fn db_with(extra: Vec<PointDef>) -> PointDb {
    let cfg = Config::embedded().expect("embedded config");
    let mut points = cfg.points;
    points.extend(extra);
    PointDb::new(points, cfg.site, DbOptions::default())
}

fn node(db: &PointDb) -> Node {
    Node::new(db.clone(), "g", "n1", 10, 5)
}

fn decode(o: &Out) -> Payload {
    Payload::decode(&o.payload).expect("own payload decodes")
}

fn metric<'a>(p: &'a Payload, name: &str) -> &'a Metric {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn nbirth_has_every_point_bdseq_and_rebirth() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    let b = n.next_bdseq();
    assert_eq!(b, 0);
    let out = n.births(b);
    assert_eq!(out.len(), 1, "no devices today");
    assert_eq!(out[0].topic, "spBv1.0/g/NBIRTH/n1");
    let p = decode(&out[0]);
    assert_eq!(p.seq, Some(0));
    assert_eq!(p.metrics.len(), db.len() + 2);
    assert_eq!(metric(&p, BDSEQ).value, Some(Val::Long(0)));
    assert_eq!(metric(&p, REBIRTH).value, Some(Val::Bool(false)));
    for id in db.ids() {
        let def = db.def(id).unwrap();
        let m = metric(&p, &def.id);
        assert_eq!(m.alias, Some(ALIAS_BASE + u64::from(id.0)));
        assert_eq!(m.datatype, Some(point_datatype(def)));
        let prop = |k: &str| m.properties.iter().find(|p| p.key == k).map(|p| &p.value);
        assert_eq!(
            prop("engUnit").cloned(),
            def.unit.as_ref().map(|u| Some(Val::Str(u.clone())))
        );
        assert_eq!(
            prop("description"),
            Some(&Some(Val::Str(def.description.clone())))
        );
        assert_eq!(prop("readOnly"), Some(&Some(Val::Bool(!def.writable))));
        let st = db.read(id).unwrap();
        // Unavailable points are null, never a made-up value.
        assert_eq!(m.is_null, st.value.is_none(), "{}", def.id);
    }
}

#[test]
fn bdseq_increments_per_connect_and_wraps() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    let seen: Vec<u64> = (0..258).map(|_| n.next_bdseq()).collect();
    assert_eq!(&seen[..3], &[0, 1, 2]);
    assert_eq!(seen[255], 255);
    assert_eq!(seen[256], 0);
    let d = decode(&n.ndeath(7));
    assert_eq!(metric(&d, BDSEQ).value, Some(Val::Long(7)));
    assert_eq!(d.seq, None, "NDEATH carries no seq");
}

#[test]
fn seq_runs_0_to_255_and_wraps_and_birth_resets_it() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    n.births(0);
    let id = db.lookup("cpu_usage").unwrap();
    let h = Held {
        id,
        at_ms: 1,
        value: Some(Value::Number(1.0)),
        quality: Quality::Ok,
        route: None,
    };
    let seqs: Vec<u64> = (0..300)
        .map(|_| {
            decode(&n.data(std::slice::from_ref(&h), false)[0])
                .seq
                .unwrap()
        })
        .collect();
    assert_eq!(seqs[0], 1, "NBIRTH took 0");
    assert_eq!(seqs[254], 255);
    assert_eq!(seqs[255], 0);
    let b = n.births(0);
    assert_eq!(decode(&b[0]).seq, Some(0));
}

#[test]
fn report_by_exception_uses_the_cov_increment() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    let id = db.lookup("cpu_usage").unwrap(); // cov_increment 1
    let st = |v: f64, q: Quality| PointState {
        value: Some(Value::Number(v)),
        quality: q,
        reason: None,
        updated: chrono::Utc::now(),
        level: None,
    };
    assert!(n.exceeds(id, &st(10.0, Quality::Ok)), "from unavailable");
    assert!(!n.exceeds(id, &st(10.5, Quality::Ok)));
    assert!(!n.exceeds(id, &st(10.9, Quality::Ok)));
    assert!(n.exceeds(id, &st(11.0, Quality::Ok)));
    assert!(n.exceeds(id, &st(11.0, Quality::Stale)), "quality change");
    let none = PointState {
        value: None,
        quality: Quality::Stale,
        reason: None,
        updated: chrono::Utc::now(),
        level: None,
    };
    assert!(n.exceeds(id, &none), "value lost");
}

#[test]
fn store_and_forward_is_bounded_and_flushed_as_historical() {
    let db = db_with(vec![]);
    let mut n = node(&db); // bound 5
    n.births(0);
    let id = db.lookup("cpu_usage").unwrap();
    for i in 0..8 {
        n.hold(Held {
            id,
            at_ms: 1000 + i,
            value: Some(Value::Number(i as f64)),
            quality: Quality::Ok,
            route: None,
        });
    }
    assert_eq!(n.held(), 5);
    assert_eq!(n.dropped, 3);
    let out = n.drain_history();
    assert_eq!(n.held(), 0);
    let p = decode(&out[0]);
    assert_eq!(out[0].topic, "spBv1.0/g/NDATA/n1");
    // The oldest were dropped; the rest keep their order and timestamps.
    let got: Vec<(u64, bool, Option<Val>)> = p
        .metrics
        .iter()
        .map(|m| (m.timestamp.unwrap(), m.is_historical, m.value.clone()))
        .collect();
    let want: Vec<(u64, bool, Option<Val>)> = (3..8)
        .map(|i| (1000 + i, true, Some(Val::Double(i as f64))))
        .collect();
    assert_eq!(got, want);
}

fn ncmd(metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(1),
        seq: None,
        metrics,
    }
    .encode()
}

fn audit_last(db: &PointDb) -> Arc<crate::points::WriteRecord> {
    db.audit_tail(1).pop().expect("an audit record")
}

use std::sync::Arc;

#[test]
fn ncmd_writes_through_the_database_at_the_configured_priority() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    let id = db.lookup("input_select").unwrap();
    let o = n.command(
        None,
        &ncmd(vec![Metric {
            name: Some("input_select".into()),
            datatype: Some(datatype::DOUBLE),
            value: Some(Val::Double(3.0)),
            ..Default::default()
        }]),
    );
    assert_eq!(o.writes, 1);
    assert_eq!(db.read(id).unwrap().value, Some(Value::Number(3.0)));
    let pa = db.priority_array(id).unwrap();
    assert_eq!(pa.slots[9].as_ref().unwrap().value, Value::Number(3.0));
    let rec = audit_last(&db);
    assert_eq!(rec.source.protocol, Protocol::Mqtt);
    assert_eq!(rec.priority, 10);
    assert!(rec.result.is_ok());
    // By alias, with an Int32 datatype; then a null relinquishes.
    n.command(
        None,
        &ncmd(vec![Metric {
            alias: Some(ALIAS_BASE + u64::from(id.0)),
            datatype: Some(datatype::INT32),
            value: Some(Val::Int(5)),
            ..Default::default()
        }]),
    );
    assert_eq!(db.read(id).unwrap().value, Some(Value::Number(5.0)));
    n.command(
        None,
        &ncmd(vec![Metric {
            name: Some("input_select".into()),
            is_null: true,
            ..Default::default()
        }]),
    );
    assert!(db.priority_array(id).unwrap().slots[9].is_none());
}

#[test]
fn ncmd_refusals_are_audited() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    // A read-only metric.
    let o = n.command(
        None,
        &ncmd(vec![Metric {
            name: Some("cpu_usage".into()),
            value: Some(Val::Double(1.0)),
            ..Default::default()
        }]),
    );
    assert_eq!(o.refused, 1);
    let rec = audit_last(&db);
    assert_eq!(rec.point, "cpu_usage");
    assert_eq!(rec.result, Err(WriteError::NotWritable));
    assert_eq!(rec.source.protocol, Protocol::Mqtt);
    // Out of range (input_select is 0..=16), a string to a number point,
    // an Int8 -1.
    for (v, dt, e) in [
        (Val::Double(99.0), datatype::DOUBLE, WriteError::OutOfRange),
        (
            Val::Str("x".into()),
            datatype::STRING,
            WriteError::TypeMismatch,
        ),
        (Val::Int(0xff), datatype::INT8, WriteError::OutOfRange),
    ] {
        n.command(
            None,
            &ncmd(vec![Metric {
                name: Some("input_select".into()),
                datatype: Some(dt),
                value: Some(v),
                ..Default::default()
            }]),
        );
        assert_eq!(audit_last(&db).result, Err(e));
    }
    // Garbage, an unknown name and an unknown alias change nothing.
    let before = db.audit_tail(100).len();
    assert_eq!(n.command(None, b"\xff\xff\xff").refused, 1);
    let o = n.command(
        None,
        &ncmd(vec![
            Metric {
                name: Some("nope".into()),
                value: Some(Val::Bool(true)),
                ..Default::default()
            },
            Metric {
                alias: Some(u64::MAX),
                value: Some(Val::Bool(true)),
                ..Default::default()
            },
        ]),
    );
    assert_eq!(o.refused, 2);
    assert_eq!(db.audit_tail(100).len(), before);
}

#[test]
fn rebirth_is_recognised_by_name_or_alias() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    let by_name = n.command(
        None,
        &ncmd(vec![Metric {
            name: Some(REBIRTH.into()),
            datatype: Some(datatype::BOOLEAN),
            value: Some(Val::Bool(true)),
            ..Default::default()
        }]),
    );
    assert!(by_name.rebirth);
    let by_alias = n.command(
        None,
        &ncmd(vec![Metric {
            alias: Some(1),
            value: Some(Val::Bool(true)),
            ..Default::default()
        }]),
    );
    assert!(by_alias.rebirth);
    let false_ = n.command(
        None,
        &ncmd(vec![Metric {
            name: Some(REBIRTH.into()),
            value: Some(Val::Bool(false)),
            ..Default::default()
        }]),
    );
    assert!(!false_.rebirth);
}

fn routes_db() -> PointDb {
    let cfg = Config::embedded().expect("embedded config");
    PointDb::with_routes(
        cfg.points,
        cfg.site,
        DbOptions::default(),
        Some(cfg.route_template.expect("embedded route template")),
    )
}

fn info(route: &str, inputs: &[&str]) -> BlockInfo {
    BlockInfo {
        route: route.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec!["web".into()],
    }
}

fn dcmd(n: &mut Node, dev: &str, m: Metric) -> CmdOutcome {
    n.command(Some(dev), &ncmd(vec![m]))
}

fn bool_metric(name: &str, v: bool) -> Metric {
    Metric {
        name: Some(name.into()),
        datatype: Some(datatype::BOOLEAN),
        value: Some(Val::Bool(v)),
        ..Default::default()
    }
}

/// Every route that owns a slot is a device `route-<slot>`: DBIRTH after
/// the NBIRTH (one seq counter), every point of its block as a metric
/// named relative to the device, with the route's name; the NBIRTH keeps
/// the server's points only.
#[test]
fn route_blocks_are_devices_in_the_births() {
    let db = routes_db();
    assert!(db.open_block(3, info("cam-north", &["main", "backup"])));
    assert!(db.open_block(1, info("cam-south", &["main"])));
    let mut n = node(&db);
    let out = n.births(4);
    let topics: Vec<&str> = out.iter().map(|o| o.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "spBv1.0/g/NBIRTH/n1",
            "spBv1.0/g/DBIRTH/n1/route-1",
            "spBv1.0/g/DBIRTH/n1/route-3"
        ]
    );
    let nb = decode(&out[0]);
    assert_eq!(nb.metrics.len(), db.ids().count() + 2, "server points only");
    let d3 = decode(&out[2]);
    assert_eq!(
        (decode(&out[1]).seq, d3.seq),
        (Some(1), Some(2)),
        "one seq across N and D messages"
    );
    assert_eq!(
        metric(&d3, ROUTE_NAME).value,
        Some(Val::Str("cam-north".into()))
    );
    let block = db.block_ids(3);
    assert_eq!(d3.metrics.len(), block.len() + 1);
    for id in block {
        let def = db.def(id).unwrap();
        let rp = db.route_point(id).unwrap();
        let tid = def.id.split('.').nth(2).unwrap();
        let name = match rp.output {
            None => tid.to_string(),
            Some(o) => format!("output/{o}/{tid}"),
        };
        let m = metric(&d3, &name);
        assert_eq!(m.alias, Some(ALIAS_BASE + u64::from(id.0)), "{name}");
        assert_eq!(m.datatype, Some(point_datatype(def)));
        let prop = |k: &str| {
            m.properties
                .iter()
                .find(|p| p.key == k)
                .and_then(|p| p.value.clone())
        };
        assert_eq!(prop("pointId"), Some(Val::Str(def.id.clone())));
        assert_eq!(prop("description"), Some(Val::Str(def.description.clone())));
        assert_eq!(prop("engUnit"), def.unit.clone().map(Val::Str));
        assert_eq!(prop("readOnly"), Some(Val::Bool(!def.writable)));
        if def.kind == Kind::Enum {
            assert_eq!(prop("states"), Some(Val::Str(db.state_names(id).join("|"))));
        }
    }
    let sel = metric(&d3, "input_select")
        .properties
        .iter()
        .find(|p| p.key == "states")
        .and_then(|p| p.value.clone());
    assert!(
        matches!(&sel, Some(Val::Str(s)) if s.starts_with("Auto|main|backup|")),
        "{sel:?}"
    );
    // A Rebirth (births again) re-sends the NBIRTH and every DBIRTH.
    assert_eq!(n.births(4).len(), 3);
}

/// DCMD writes a route's writable metrics through the database (priority,
/// source mqtt, audited), refuses read-only ones (audited), and reaches
/// only the points of the device it is addressed to.
#[test]
fn dcmd_writes_route_points_of_its_device_only() {
    let db = routes_db();
    db.open_block(2, info("two", &["a", "b"]));
    db.open_block(1, info("one", &["a"]));
    let mut n = node(&db);
    n.births(0);
    let en2 = db.lookup("route.2.route_enable").unwrap();
    let en1 = db.lookup("route.1.route_enable").unwrap();
    let o = dcmd(&mut n, "route-2", bool_metric("route_enable", false));
    assert_eq!((o.writes, o.refused), (1, 0));
    assert_eq!(db.read(en2).unwrap().value, Some(Value::Bool(false)));
    assert_eq!(db.read(en2).unwrap().level, Some(10));
    assert_eq!(db.read(en1).unwrap().value, Some(Value::Bool(true)));
    let a = audit_last(&db);
    assert_eq!(a.point, "route.2.route_enable");
    assert_eq!(a.source.protocol, Protocol::Mqtt);
    assert_eq!(a.result, Ok(()));
    // By alias, and a per-output metric by its folder name.
    let o = dcmd(
        &mut n,
        "route-2",
        Metric {
            alias: Some(ALIAS_BASE + u64::from(en2.0)),
            datatype: Some(datatype::BOOLEAN),
            value: Some(Val::Bool(true)),
            ..Default::default()
        },
    );
    assert_eq!(o.writes, 1);
    assert_eq!(db.read(en2).unwrap().value, Some(Value::Bool(true)));
    dcmd(
        &mut n,
        "route-2",
        bool_metric("output/1/output_enable", false),
    );
    let out1 = db.lookup("route.2.output_enable.1").unwrap();
    assert_eq!(db.read(out1).unwrap().value, Some(Value::Bool(false)));
    // Input Select by the route's own input name.
    let o = dcmd(
        &mut n,
        "route-2",
        Metric {
            name: Some("input_select".into()),
            datatype: Some(datatype::STRING),
            value: Some(Val::Str("b".into())),
            ..Default::default()
        },
    );
    assert_eq!(o.writes, 1, "{o:?} {:?}", audit_last(&db));
    let sel = db.lookup("route.2.input_select").unwrap();
    assert_eq!(db.read(sel).unwrap().value, Some(Value::Enum(3)));
    // Read-only: refused and audited.
    let o = dcmd(
        &mut n,
        "route-2",
        Metric {
            name: Some("route_uptime".into()),
            datatype: Some(datatype::DOUBLE),
            value: Some(Val::Double(1.0)),
            ..Default::default()
        },
    );
    assert_eq!((o.writes, o.refused), (0, 1));
    let a = audit_last(&db);
    assert_eq!(a.point, "route.2.route_uptime");
    assert_eq!(a.result, Err(WriteError::NotWritable));
    assert_eq!(a.source.protocol, Protocol::Mqtt);
    // Another device's point (by full id or alias), an NCMD naming a
    // route point, an unknown or unborn device: nothing written.
    let before = db.audit_tail(1000).len();
    assert_eq!(
        dcmd(
            &mut n,
            "route-1",
            bool_metric("route.2.route_enable", false)
        )
        .refused,
        1
    );
    let by_alias = Metric {
        alias: Some(ALIAS_BASE + u64::from(en2.0)),
        value: Some(Val::Bool(false)),
        ..Default::default()
    };
    assert_eq!(dcmd(&mut n, "route-1", by_alias.clone()).refused, 1);
    assert_eq!(n.command(None, &ncmd(vec![by_alias])).refused, 1);
    assert_eq!(
        dcmd(&mut n, "route-3", bool_metric("route_enable", false)).refused,
        1
    );
    assert_eq!(
        dcmd(&mut n, "route-02", bool_metric("route_enable", false)).refused,
        1
    );
    assert_eq!(
        dcmd(&mut n, "cam", bool_metric("route_enable", false)).refused,
        1
    );
    assert_eq!(db.audit_tail(1000).len(), before, "nothing to audit");
    assert_eq!(db.read(en2).unwrap().value, Some(Value::Bool(true)));
    assert_eq!(db.read(en1).unwrap().value, Some(Value::Bool(true)));
}

/// Devices follow the blocks: DDEATH when a route goes (its later changes
/// are not published), DBIRTH for a new one, DDEATH + DBIRTH when the
/// slot's owner changes name, DBIRTH alone when only its inputs change;
/// every message takes the next seq of the node's one counter.
#[test]
fn devices_follow_route_blocks_live() {
    let db = routes_db();
    db.open_block(1, info("one", &["a"]));
    let mut n = node(&db);
    n.births(0);
    assert!(n.sync_devices().is_empty(), "nothing changed");
    let st = db.lookup("route.1.route_uptime").unwrap();
    db.set(st, Some(Value::Number(5.0)), Quality::Ok, None)
        .expect("set");
    let h = n.held_of(st, &db.read(st).unwrap());
    assert_eq!(h.route.as_deref(), Some("one"));
    let d = n.data(std::slice::from_ref(&h), false);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].topic, "spBv1.0/g/DDATA/n1/route-1");
    assert_eq!(decode(&d[0]).seq, Some(2));
    // Created (REST create / reload): DBIRTH.
    db.open_block(2, info("two", &["a"]));
    let o = n.sync_devices();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].topic, "spBv1.0/g/DBIRTH/n1/route-2");
    assert_eq!(decode(&o[0]).seq, Some(3));
    // Deleted: DDEATH (timestamp and seq, no metrics); its changes stop.
    db.close_block(1);
    let o = n.sync_devices();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].topic, "spBv1.0/g/DDEATH/n1/route-1");
    let p = decode(&o[0]);
    assert_eq!((p.seq, p.metrics.len()), (Some(4), 0));
    assert!(
        n.data(std::slice::from_ref(&h), false).is_empty(),
        "deleted route"
    );
    // The slot given to another route: its birth; the old route's held
    // change is not published under the new owner's device.
    db.open_block(1, info("uno", &["a"]));
    let o = n.sync_devices();
    assert_eq!(o[0].topic, "spBv1.0/g/DBIRTH/n1/route-1");
    assert!(n.data(&[h], false).is_empty(), "previous owner's change");
    // Renamed keeping its slot (or the owner changed between two looks):
    // DDEATH then DBIRTH with the new name.
    db.open_block(1, info("eins", &["a"]));
    let o = n.sync_devices();
    let t: Vec<&str> = o.iter().map(|x| x.topic.as_str()).collect();
    assert_eq!(
        t,
        ["spBv1.0/g/DDEATH/n1/route-1", "spBv1.0/g/DBIRTH/n1/route-1"]
    );
    assert_eq!(
        metric(&decode(&o[1]), ROUTE_NAME).value,
        Some(Val::Str("eins".into()))
    );
    // New inputs (Input Select's states): born again, no death.
    db.open_block(1, info("eins", &["a", "b"]));
    let o = n.sync_devices();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].topic, "spBv1.0/g/DBIRTH/n1/route-1");
    assert_eq!(decode(&o[0]).seq, Some(8));
}

/// Route points use the same report-by-exception deadbands as the node's
/// points: their template's COV increments.
#[test]
fn route_points_report_by_exception_on_their_cov_increment() {
    let db = routes_db();
    db.open_block(1, info("one", &["a"]));
    let mut n = node(&db);
    n.births(0);
    let id = db.lookup("route.1.input_bitrate").unwrap();
    let inc = db.def(id).unwrap().cov_increment;
    assert!(inc > 0.0);
    let st = |v: f64| PointState {
        value: Some(Value::Number(v)),
        quality: Quality::Ok,
        reason: None,
        updated: chrono::Utc::now(),
        level: None,
    };
    assert!(n.exceeds(id, &st(2.0)), "from unavailable");
    assert!(!n.exceeds(id, &st(2.0 + inc / 2.0)));
    assert!(n.exceeds(id, &st(2.0 + inc * 1.5)));
}

#[test]
fn bdseq_resumes_after_the_stored_value() {
    let db = db_with(vec![]);
    let mut n = node(&db);
    n.resume_bdseq(7);
    assert_eq!(n.next_bdseq(), 8);
    n.resume_bdseq(255);
    assert_eq!(n.next_bdseq(), 0, "wraps after 255");
}
