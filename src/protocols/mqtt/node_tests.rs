//! Table tests of the sans-IO edge node: births, report by exception, seq/bdSeq, store-and-forward and command writes, with no broker.

use super::*;
use crate::config::Config;
use crate::points::{DbOptions, Quality, TagValue};

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

/// Points tagged `route = "<name>"` (the per-route point blocks) become a
/// device: DBIRTH after NBIRTH, DDATA for their changes, DCMD writes them
/// and only them.
#[test]
fn route_tagged_points_form_devices() {
    let cfg = Config::embedded().unwrap();
    let mut enable = cfg
        .points
        .iter()
        .find(|p| p.id == "stream_enable")
        .unwrap()
        .clone();
    enable.id = "route_cam1_enable".into();
    enable
        .tags
        .insert(DEVICE_TAG.into(), TagValue::Str("cam1".into()));
    let db = db_with(vec![enable]);
    let mut n = node(&db);
    let out = n.births(0);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].topic, "spBv1.0/g/DBIRTH/n1/cam1");
    let nb = decode(&out[0]);
    assert!(nb
        .metrics
        .iter()
        .all(|m| m.name.as_deref() != Some("route_cam1_enable")));
    let db_ = decode(&out[1]);
    assert_eq!(db_.seq, Some(1));
    assert_eq!(db_.metrics.len(), 1);
    let id = db.lookup("route_cam1_enable").unwrap();
    // A DCMD for the device writes its point...
    let o = n.command(
        Some("cam1"),
        &ncmd(vec![Metric {
            name: Some("route_cam1_enable".into()),
            value: Some(Val::Bool(false)),
            datatype: Some(datatype::BOOLEAN),
            ..Default::default()
        }]),
    );
    assert_eq!(o.writes, 1);
    assert_eq!(db.read(id).unwrap().value, Some(Value::Bool(false)));
    // ...an NCMD cannot, nor a DCMD of a node metric or unknown device.
    assert_eq!(
        n.command(
            None,
            &ncmd(vec![Metric {
                name: Some("route_cam1_enable".into()),
                value: Some(Val::Bool(true)),
                ..Default::default()
            }])
        )
        .refused,
        1
    );
    assert_eq!(
        n.command(
            Some("cam1"),
            &ncmd(vec![Metric {
                name: Some("input_select".into()),
                value: Some(Val::Double(1.0)),
                ..Default::default()
            }])
        )
        .refused,
        1
    );
    assert_eq!(
        n.command(Some("cam9"), &ncmd(vec![Metric::default()]))
            .refused,
        1
    );
    // Changes of device points go out as DDATA.
    let d = n.data(&[Held::of(id, &db.read(id).unwrap())], false);
    assert_eq!(d[0].topic, "spBv1.0/g/DDATA/n1/cam1");
}
