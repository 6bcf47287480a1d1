//! Store tests: migrations, command round-trip through a restart, audit retention and filters, history.

use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::points::{DbOptions, PointDb, Quality};

fn db() -> PointDb {
    let c = Config::embedded().expect("embedded");
    PointDb::new(c.points, c.site, DbOptions::default())
}

fn src() -> Source {
    Source::new(
        Protocol::Bacnet,
        Some("127.0.0.1:47809".parse().expect("addr")),
        Some("op".into()),
    )
}

#[test]
fn commands_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let store = Arc::new(Store::open(dir.path(), 1000).expect("open"));
        assert_eq!(store.schema_version(), MIGRATIONS.len() as i64);
        let db = db();
        db.set_persister(store.clone());
        let sp = db.lookup("input_select").expect("sp");
        let en = db.lookup("stream_enable").expect("en");
        db.write(sp, Some(Value::Number(3.0)), 8, &src())
            .expect("w");
        db.write(sp, Some(Value::Number(2.0)), 16, &src())
            .expect("w");
        db.write(en, Some(Value::Bool(false)), 10, &src())
            .expect("w");
        db.write(en, Some(Value::Bool(true)), 17, &src())
            .expect("default");
    }
    let store = Store::open(dir.path(), 1000).expect("reopen");
    let db = db();
    assert_eq!(store.restore(&db).expect("restore"), 2);
    let sp = db.lookup("input_select").expect("sp");
    let pa = db.priority_array(sp).expect("pa");
    let s8 = pa.slots[7].as_ref().expect("slot 8");
    assert_eq!(s8.value, Value::Number(3.0));
    assert_eq!(s8.who, src());
    assert_eq!(pa.slots[15].as_ref().expect("16").value, Value::Number(2.0));
    assert_eq!(db.read(sp).expect("st").value, Some(Value::Number(3.0)));
    let en = db.lookup("stream_enable").expect("en");
    let pa = db.priority_array(en).expect("pa");
    assert_eq!(pa.default, Value::Bool(true));
    assert_eq!(db.read(en).expect("st").value, Some(Value::Bool(false)));
}

/// An MQTT (Sparkplug NCMD) write keeps its source across a restart, so
/// the priority array still says who holds the slot.
#[test]
fn an_mqtt_slot_keeps_its_protocol_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let mqtt = Source::new(Protocol::Mqtt, None, None);
    {
        let store = Arc::new(Store::open(dir.path(), 1000).expect("open"));
        let db = db();
        db.set_persister(store.clone());
        let sp = db.lookup("input_select").expect("sp");
        db.write(sp, Some(Value::Number(4.0)), 10, &mqtt)
            .expect("w");
    }
    let store = Store::open(dir.path(), 1000).expect("reopen");
    let db = db();
    store.restore(&db).expect("restore");
    let pa = db
        .priority_array(db.lookup("input_select").expect("sp"))
        .expect("pa");
    assert_eq!(pa.slots[9].as_ref().expect("slot 10").who, mqtt);
}

#[test]
fn audit_keeps_exactly_the_newest_cap_events() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path(), 100).expect("open");
    for i in 0..101 {
        store
            .record_event(
                "restart",
                None,
                &Source::internal(),
                "ok",
                &format!("event {i}"),
            )
            .expect("event");
    }
    assert_eq!(store.audit_count().expect("count"), 100);
    let page = store
        .query_audit(&AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .expect("q");
    assert_eq!(page.len(), 100);
    assert_eq!(page[0].detail.as_deref(), Some("event 100"));
    assert_eq!(page[99].detail.as_deref(), Some("event 1"));
}

#[test]
fn audit_filters_and_pages() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Store::open(dir.path(), 1000).expect("open"));
    let db = db();
    db.set_persister(store.clone());
    let sp = db.lookup("input_select").expect("sp");
    for i in 0..10 {
        db.write(sp, Some(Value::Number(f64::from(i))), 10, &src())
            .expect("w");
    }
    let _ = db.write(sp, Some(Value::Number(99.0)), 10, &Source::internal());
    store
        .record_event("restart", None, &Source::internal(), "ok", "system restart")
        .expect("ev");
    let f = |f: AuditFilter| store.query_audit(&f).expect("q");
    let writes = f(AuditFilter {
        kind: Some("write".into()),
        limit: 100,
        ..Default::default()
    });
    assert_eq!(writes.len(), 11);
    assert!(writes[0].result.starts_with("refused"));
    let bacnet = f(AuditFilter {
        source: Some("bacnet".into()),
        limit: 100,
        ..Default::default()
    });
    assert_eq!(bacnet.len(), 10);
    assert_eq!(bacnet[0].new.as_deref(), Some("9"));
    assert_eq!(bacnet[0].old.as_deref(), Some("8"));
    assert_eq!(bacnet[0].user.as_deref(), Some("op"));
    let p1 = f(AuditFilter {
        target: Some("input_select".into()),
        limit: 4,
        ..Default::default()
    });
    let p2 = f(AuditFilter {
        target: Some("input_select".into()),
        limit: 4,
        before_id: Some(p1[3].id),
        ..Default::default()
    });
    assert_eq!(p1.len(), 4);
    assert_eq!(p2.len(), 4);
    assert!(p2[0].id < p1[3].id);
    let none = f(AuditFilter {
        from: Some(Utc::now() + chrono::Duration::hours(1)),
        limit: 10,
        ..Default::default()
    });
    assert!(none.is_empty());
}

#[test]
fn history_round_trip_and_prune() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path(), 10).expect("open");
    let t0 = Utc::now() - chrono::Duration::days(8) - chrono::Duration::hours(1);
    let samples: Vec<Sample> = (0..5)
        .map(|i| Sample {
            at: t0 + chrono::Duration::days(i),
            value: Value::Number(i as f64),
        })
        .collect();
    store.append_history("cpu_usage", &samples).expect("append");
    let back = store
        .load_history("cpu_usage", Kind::Number, t0)
        .expect("load");
    assert_eq!(back.len(), 5);
    assert_eq!(back[4].value, Value::Number(4.0));
    let removed = store
        .prune_history(Utc::now() - chrono::Duration::days(7))
        .expect("prune");
    assert_eq!(removed, 2);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let s = Store::open(dir.path(), 10).expect("open");
        s.conn
            .lock()
            .pragma_update(None, "user_version", 99)
            .expect("bump");
    }
    let e = Store::open(dir.path(), 10).err().expect("refused");
    assert!(e.to_string().contains("newer"), "{e}");
}

/// The seed's retention at full scale: 100,001 events leave exactly
/// 100,000, newest kept. Prints the time of a filtered page on the full log
/// (a figure for the notes, not an assertion).
#[test]
fn audit_retention_at_full_scale() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path(), 100_000).expect("open");
    {
        // Bulk-load 100,000 events in one transaction (fast), then add the
        // 100,001st through the normal path, which prunes.
        let c = store.conn.lock();
        let tx = c.unchecked_transaction().expect("tx");
        {
            let mut st = tx
                .prepare("INSERT INTO audit (at, kind, target, protocol, result, detail) VALUES (?1, ?2, ?3, ?4, 'ok', ?5)")
                .expect("prepare");
            let t0 = Utc::now() - chrono::Duration::days(1);
            for i in 0..100_000i64 {
                let kind = if i % 10 == 0 { "route" } else { "write" };
                let proto = ["bacnet", "modbus", "haystack", "rest"][(i % 4) as usize];
                st.execute(params![
                    ts(t0 + chrono::Duration::milliseconds(i * 500)),
                    kind,
                    format!("p{}", i % 23),
                    proto,
                    format!("event {i}")
                ])
                .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    store
        .record_event("restart", None, &Source::internal(), "ok", "event 100000")
        .expect("last");
    assert_eq!(store.audit_count().expect("count"), 100_000);
    let newest = store
        .query_audit(&AuditFilter {
            limit: 1,
            ..Default::default()
        })
        .expect("q");
    assert_eq!(newest[0].detail.as_deref(), Some("event 100000"));
    let oldest_gone = store
        .query_audit(&AuditFilter {
            target: Some("p0".into()),
            kind: Some("route".into()),
            limit: 1000,
            ..Default::default()
        })
        .expect("q");
    assert!(oldest_gone
        .iter()
        .all(|e| e.detail.as_deref() != Some("event 0")));
    let t = std::time::Instant::now();
    let page = store
        .query_audit(&AuditFilter {
            source: Some("modbus".into()),
            target: Some("p5".into()),
            from: Some(Utc::now() - chrono::Duration::hours(20)),
            limit: 100,
            ..Default::default()
        })
        .expect("filtered page");
    println!(
        "filtered page of {} events on a 100,000-event log: {:?}",
        page.len(),
        t.elapsed()
    );
}

/// The flusher stores every sample once: those taken before a flush, those
/// taken between two flushes, and only the points that got any (the dirty
/// list, not a walk over every history buffer).
#[tokio::test(start_paused = true)]
async fn the_history_flusher_stores_each_new_sample_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Store::open(dir.path(), 10).expect("open"));
    let db = db();
    let cpu = db.lookup("cpu_usage").expect("cpu");
    let mem = db.lookup("memory_usage").expect("mem");
    let stop = tokio_util::sync::CancellationToken::new();
    let every = std::time::Duration::from_secs(10);
    let task = tokio::spawn(history_flusher(
        store.clone(),
        db.clone(),
        std::time::Duration::from_secs(3600),
        every,
        stop.clone(),
    ));
    // Let the flusher take its start-up state and first (immediate) tick.
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    db.set(cpu, Some(Value::Number(10.0)), Quality::Ok, None)
        .expect("cpu");
    db.set(mem, Some(Value::Number(50.0)), Quality::Ok, None)
        .expect("mem");
    tokio::time::sleep(every).await;
    let t0 = Utc::now() - chrono::Duration::hours(1);
    let stored = |p: &str| -> Vec<f64> {
        store
            .load_history(p, Kind::Number, t0)
            .expect("load")
            .iter()
            .map(|s| s.value.as_f64())
            .collect()
    };
    assert_eq!(stored("cpu_usage"), vec![10.0]);
    assert_eq!(stored("memory_usage"), vec![50.0]);
    assert!(
        db.take_history_dirty().is_empty(),
        "the flush took the list"
    );
    // Only cpu changes before the next flush; shutdown flushes it.
    db.set(cpu, Some(Value::Number(80.0)), Quality::Ok, None)
        .expect("cpu");
    stop.cancel();
    task.await.expect("flusher");
    assert_eq!(stored("cpu_usage"), vec![10.0, 80.0]);
    assert_eq!(stored("memory_usage"), vec![50.0], "not written twice");
}
