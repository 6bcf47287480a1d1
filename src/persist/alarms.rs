//! The durable alarm store: every transition and acknowledgement of the alarm runtime (`crate::alarms`) is committed to SQLite, with its audit event, before it takes effect; the live states are restored at start-up.
//!
//! Three things are kept (migration 7):
//! - `alarm_state`: one row per alarm-capable point that ever left NORMAL:
//!   Event_State, Event_Time_Stamps and Acked_Transitions, replayed from
//!   the transitions and acks exactly as `points::alarm` applies them, so
//!   an active or unacknowledged alarm is the same after a restart or a
//!   kill -9 (`AlarmSpec` delays start over; the state does not).
//! - `alarm_history`: one row per transition, with the ack (when, who,
//!   which protocol, comment) filled in when it comes. Bounded by count:
//!   the newest [`DEFAULT_HISTORY_RETENTION`] rows are kept (primary-key
//!   range delete, like the audit log).
//! - the audit log: `alarm` (a transition) and `alarm-ack` events, in the
//!   same SQLite transaction as the rows above, so the two never disagree.
//!
//! Time stamps are stored with nanoseconds: an AcknowledgeAlarm names the
//! transition by its exact time stamp, so it must read back unchanged.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value as J};

use super::{value_from_json, value_json, value_text, Store};
use crate::alarms::{AlarmRecord, AlarmStore};
use crate::points::alarm::{AlarmState, EventState, PerTransition, TransitionKind};
use crate::points::{PointDb, Source};

/// Transitions kept in `alarm_history` (oldest pruned first).
pub const DEFAULT_HISTORY_RETENTION: usize = 100_000;

/// The store keeps time stamps in the alarm JSON's own form (fixed width,
/// so they sort lexically in time order).
pub use crate::alarms::json::ts_nanos;

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn state_from_str(s: &str) -> Option<EventState> {
    Some(match s {
        "normal" => EventState::Normal,
        "fault" => EventState::Fault,
        "offnormal" => EventState::Offnormal,
        "high-limit" => EventState::HighLimit,
        "low-limit" => EventState::LowLimit,
        _ => return None,
    })
}

pub fn kind_from_str(s: &str) -> Option<TransitionKind> {
    Some(match s {
        "to-offnormal" => TransitionKind::ToOffnormal,
        "to-fault" => TransitionKind::ToFault,
        "to-normal" => TransitionKind::ToNormal,
        _ => return None,
    })
}

/// The column suffix of a transition kind.
fn col(k: TransitionKind) -> &'static str {
    match k {
        TransitionKind::ToOffnormal => "offnormal",
        TransitionKind::ToFault => "fault",
        TransitionKind::ToNormal => "normal",
    }
}

/// `GET /api/alarms/history` filters; all optional.
#[derive(Debug, Clone, Default)]
pub struct AlarmHistoryFilter {
    pub point: Option<String>,
    /// The route that owned the point's slot at the transition.
    pub route: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The state entered (`high-limit`, `fault`, ...).
    pub state: Option<EventState>,
    /// Only rows with an id below this (the `next` of the previous page).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// One stored transition with its acknowledgement, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmHistoryRow {
    pub id: i64,
    pub at: String,
    pub point: String,
    pub route: Option<String>,
    pub from: String,
    pub to: String,
    pub kind: String,
    pub notify: bool,
    pub ack_required: bool,
    pub priority: i64,
    pub value: Option<String>,
    pub reason: String,
    pub acked_at: Option<String>,
    pub ack_protocol: Option<String>,
    pub ack_peer: Option<String>,
    pub ack_user: Option<String>,
    pub ack_comment: Option<String>,
}

impl AlarmHistoryRow {
    pub fn to_json(&self) -> J {
        let ack = self.acked_at.as_ref().map(|at| {
            json!({"at": at, "protocol": self.ack_protocol, "peer": self.ack_peer,
                   "user": self.ack_user, "comment": self.ack_comment})
        });
        json!({
            "id": self.id, "at": self.at, "point": self.point, "route": self.route,
            "from": self.from, "to": self.to, "transition": self.kind,
            "notify": self.notify, "ack_required": self.ack_required,
            "priority": self.priority, "value": self.value, "reason": self.reason,
            "ack": ack,
        })
    }
}

impl Store {
    /// Every stored alarm state, by point id (start-up restore).
    /// Every stored alarm state, with the route it was judged for.
    pub fn alarm_states(&self) -> anyhow::Result<Vec<(String, AlarmState, Option<String>)>> {
        let c = self.conn.lock();
        let mut st = c.prepare(
            "SELECT point, event_state, ts_offnormal, ts_fault, ts_normal,
                    acked_offnormal, acked_fault, acked_normal, offnormal_value, route
             FROM alarm_state ORDER BY point",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    [
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ],
                    [
                        r.get::<_, bool>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, bool>(7)?,
                    ],
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (point, es, stamps, acked, ov, route) in rows {
            let Some(es) = state_from_str(&es) else {
                tracing::warn!("stored alarm state of {point} unreadable ({es:?}), ignored");
                continue;
            };
            let stamp = |s: &Option<String>| s.as_deref().and_then(parse_ts);
            let time_stamps = PerTransition {
                to_offnormal: stamp(&stamps[0]),
                to_fault: stamp(&stamps[1]),
                to_normal: stamp(&stamps[2]),
            };
            let acked = PerTransition {
                to_offnormal: acked[0],
                to_fault: acked[1],
                to_normal: acked[2],
            };
            let ov = ov
                .as_deref()
                .and_then(|t| serde_json::from_str::<J>(t).ok())
                .and_then(|j| value_from_json(&j));
            out.push((
                point,
                AlarmState::restore(es, time_stamps, acked, ov),
                route,
            ));
        }
        Ok(out)
    }

    /// Stored transitions, newest first, with the filters applied.
    pub fn query_alarm_history(
        &self,
        f: &AlarmHistoryFilter,
    ) -> anyhow::Result<Vec<AlarmHistoryRow>> {
        let mut q = super::Filtered::new(
            "SELECT id, at, point, route, from_state, to_state, kind, notify, ack_required,
                    priority, value, reason, acked_at, ack_protocol, ack_peer, ack_user, ack_comment
             FROM alarm_history",
        );
        q.and("point = ?", f.point.clone());
        q.and("route = ?", f.route.clone());
        q.and("at >= ?", f.since.map(ts_nanos));
        q.and("at < ?", f.until.map(ts_nanos));
        q.and("to_state = ?", f.state.map(|s| s.as_str()));
        let c = self.conn.lock();
        q.newest_first(&c, f.before_id, f.limit, |r| {
            Ok(AlarmHistoryRow {
                id: r.get(0)?,
                at: r.get(1)?,
                point: r.get(2)?,
                route: r.get(3)?,
                from: r.get(4)?,
                to: r.get(5)?,
                kind: r.get(6)?,
                notify: r.get(7)?,
                ack_required: r.get(8)?,
                priority: r.get(9)?,
                value: r.get(10)?,
                reason: r.get(11)?,
                acked_at: r.get(12)?,
                ack_protocol: r.get(13)?,
                ack_peer: r.get(14)?,
                ack_user: r.get(15)?,
                ack_comment: r.get(16)?,
            })
        })
    }

    /// Stored transitions (all of them; tests and the storm check).
    pub fn alarm_history_count(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT COUNT(*) FROM alarm_history", [], |r| r.get(0))?)
    }
}

/// Installs the SQLite store in the alarm runtime and restores the stored
/// states (start-up, before `Alarms::run`). Returns how many were restored.
pub fn install(
    store: &Arc<Store>,
    db: &PointDb,
    alarms: &crate::alarms::Alarms,
) -> anyhow::Result<usize> {
    alarms.set_store(Arc::new(SqliteAlarmStore::new(
        store.clone(),
        Some(db.clone()),
        DEFAULT_HISTORY_RETENTION,
    )));
    let mut n = 0;
    for (point, st, route) in store.alarm_states()? {
        match db.lookup_any(&point) {
            Some(id) if alarms.spec(id).is_some() => {
                alarms.restore(id, st, route);
                n += 1;
            }
            // The point lost its alarm (config changed): nothing to show.
            _ => tracing::info!("stored alarm state of {point} ignored: no alarm configured"),
        }
    }
    if n > 0 {
        tracing::info!("{n} alarm states restored");
    }
    Ok(n)
}

/// [`AlarmStore`] over the SQLite [`Store`]: what `App` installs with
/// `Alarms::set_store`.
pub struct SqliteAlarmStore {
    store: Arc<Store>,
    /// To name the route owning a point's slot at the transition.
    db: Option<PointDb>,
    retention: i64,
}

impl SqliteAlarmStore {
    /// `retention`: transitions kept in `alarm_history`.
    pub fn new(store: Arc<Store>, db: Option<PointDb>, retention: usize) -> Self {
        SqliteAlarmStore {
            store,
            db,
            retention: i64::try_from(retention.max(1)).unwrap_or(i64::MAX),
        }
    }

    fn route_of(&self, point: &str) -> Option<String> {
        let db = self.db.as_ref()?;
        let rp = db.route_point(db.lookup_any(point)?)?;
        db.block(rp.slot).map(|b| b.route.clone())
    }
}

impl AlarmStore for SqliteAlarmStore {
    fn record_transition(&self, rec: &AlarmRecord) -> anyhow::Result<()> {
        let t = &rec.transition;
        let k = col(t.kind);
        let at = ts_nanos(t.at);
        // The record names its route (a closing transition is judged as the
        // block goes away); older callers leave it to the database.
        let route = rec.route.clone().or_else(|| self.route_of(&rec.point));
        // The COS alarm value is the one OFFNORMAL is about (what
        // `AlarmState` keeps); other states keep none.
        let ov = match t.to {
            EventState::Offnormal => t.value.map(|v| value_json(v).to_string()),
            _ => None,
        };
        let c = self.store.conn.lock();
        let tx = c.unchecked_transaction()?;
        // The same update `AlarmState::transition` makes in memory.
        tx.execute(
            &format!(
                "INSERT INTO alarm_state (point, event_state, ts_{k}, acked_offnormal, acked_fault,
                    acked_normal, offnormal_value, updated, route)
                 VALUES (?1, ?2, ?3, 1, 1, 1, ?4, ?3, ?5)
                 ON CONFLICT(point) DO UPDATE SET event_state = excluded.event_state,
                    ts_{k} = excluded.ts_{k}, offnormal_value = excluded.offnormal_value,
                    updated = excluded.updated, route = excluded.route"
            ),
            params![rec.point, t.to.as_str(), at, ov, route],
        )?;
        tx.execute(
            &format!("UPDATE alarm_state SET acked_{k} = ?2 WHERE point = ?1"),
            params![rec.point, !t.ack_required],
        )?;
        tx.execute(
            "INSERT INTO alarm_history (at, point, route, from_state, to_state, kind, notify,
                ack_required, priority, value, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                at,
                rec.point,
                route,
                t.from.as_str(),
                t.to.as_str(),
                t.kind.as_str(),
                t.notify,
                t.ack_required,
                i64::from(t.priority),
                value_text(t.value),
                t.reason,
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "DELETE FROM alarm_history WHERE id <= ?1",
            params![id - self.retention],
        )?;
        tx.execute(
            "INSERT INTO audit (at, kind, target, protocol, requested, old, new, result, detail)
             VALUES (?1, 'alarm', ?2, 'internal', ?3, ?4, ?5, 'ok', ?6)",
            params![
                super::ts(t.at),
                rec.point,
                t.kind.as_str(),
                t.from.as_str(),
                t.to.as_str(),
                format!(
                    "{}; value {}; priority {}{}",
                    t.reason,
                    value_text(t.value).unwrap_or_else(|| "none".into()),
                    t.priority,
                    if t.ack_required { "; ack required" } else { "" }
                ),
            ],
        )?;
        let aid = tx.last_insert_rowid();
        self.store.prune_audit(&tx, aid)?;
        tx.commit()?;
        Ok(())
    }

    fn record_ack(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
    ) -> anyhow::Result<()> {
        self.record_ack_with(point, kind, time_stamp, source, None)
    }

    fn record_reset(&self, point: &str) -> anyhow::Result<()> {
        self.store
            .conn
            .lock()
            .execute("DELETE FROM alarm_state WHERE point = ?1", params![point])?;
        Ok(())
    }

    fn record_ack_with(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
        comment: Option<&str>,
    ) -> anyhow::Result<()> {
        self.ack(point, kind, time_stamp, source, comment, None)
    }

    fn record_ack_state(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
        comment: Option<&str>,
        state: &AlarmState,
    ) -> anyhow::Result<()> {
        self.ack(point, kind, time_stamp, source, comment, Some(state))
    }

    fn record_refused_ack(
        &self,
        point: &str,
        kind: TransitionKind,
        source: &Source,
        detail: &str,
    ) -> anyhow::Result<()> {
        let c = self.store.conn.lock();
        let tx = c.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO audit (at, kind, target, protocol, peer, user, requested, result, detail)
             VALUES (?1, 'alarm-ack', ?2, ?3, ?4, ?5, ?6, 'refused', ?7)",
            params![
                super::ts(Utc::now()),
                point,
                source.protocol.as_str(),
                source.peer.map(|p| p.to_string()),
                source.user,
                kind.as_str(),
                detail,
            ],
        )?;
        let aid = tx.last_insert_rowid();
        self.store.prune_audit(&tx, aid)?;
        tx.commit()?;
        Ok(())
    }
}

impl SqliteAlarmStore {
    /// One acknowledgement: with `state` (the runtime's state after it),
    /// the point's row is first written whole, so a transition the store
    /// missed (it failed when the transition happened) cannot make the ack
    /// fail forever; then the history row and the audit entry.
    fn ack(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
        comment: Option<&str>,
        state: Option<&AlarmState>,
    ) -> anyhow::Result<()> {
        let ack = Ack {
            point,
            kind,
            stamp: ts_nanos(time_stamp),
            now: Utc::now(),
            source,
            comment,
        };
        let route = state.and_then(|_| self.route_of(point));
        let c = self.store.conn.lock();
        let tx = c.unchecked_transaction()?;
        if let Some(st) = state {
            write_state(&tx, point, st, route, ack.now)?;
        }
        ack.mark_acked(&tx)?;
        ack.record_in_history(&tx)?;
        let aid = ack.audit(&tx)?;
        self.store.prune_audit(&tx, aid)?;
        tx.commit()?;
        Ok(())
    }
}

/// Writes a point's `alarm_state` row whole from the runtime's `st` (a
/// route already stored is kept).
fn write_state(
    tx: &rusqlite::Connection,
    point: &str,
    st: &AlarmState,
    route: Option<String>,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let ts = |k| st.time_stamps.get(k).map(ts_nanos);
    let ov = match st.event_state {
        EventState::Offnormal => st.offnormal_value().map(|v| value_json(v).to_string()),
        _ => None,
    };
    tx.execute(
        "INSERT INTO alarm_state (point, event_state, ts_offnormal, ts_fault, ts_normal,
            acked_offnormal, acked_fault, acked_normal, offnormal_value, updated, route)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(point) DO UPDATE SET event_state = excluded.event_state,
            ts_offnormal = excluded.ts_offnormal, ts_fault = excluded.ts_fault,
            ts_normal = excluded.ts_normal, acked_offnormal = excluded.acked_offnormal,
            acked_fault = excluded.acked_fault, acked_normal = excluded.acked_normal,
            offnormal_value = excluded.offnormal_value, updated = excluded.updated",
        params![
            point,
            st.event_state.as_str(),
            ts(TransitionKind::ToOffnormal),
            ts(TransitionKind::ToFault),
            ts(TransitionKind::ToNormal),
            st.acked.to_offnormal,
            st.acked.to_fault,
            st.acked.to_normal,
            ov,
            ts_nanos(now),
            route,
        ],
    )?;
    Ok(())
}

/// One acknowledgement being stored (see `SqliteAlarmStore::ack`).
struct Ack<'a> {
    point: &'a str,
    kind: TransitionKind,
    /// The acknowledged transition's time stamp, as stored.
    stamp: String,
    now: DateTime<Utc>,
    source: &'a Source,
    comment: Option<&'a str>,
}

impl Ack<'_> {
    fn peer(&self) -> Option<String> {
        self.source.peer.map(|p| p.to_string())
    }

    /// Sets the acknowledged bit in the point's `alarm_state` row.
    fn mark_acked(&self, tx: &rusqlite::Connection) -> anyhow::Result<()> {
        let (point, stamp, k) = (self.point, &self.stamp, col(self.kind));
        let n = tx.execute(
            &format!(
                "UPDATE alarm_state SET acked_{k} = 1, updated = ?3
                 WHERE point = ?1 AND ts_{k} = ?2"
            ),
            params![point, stamp, ts_nanos(self.now)],
        )?;
        if n == 0 {
            // The runtime checked the time stamp against its live state;
            // a store that disagrees must not acknowledge silently.
            anyhow::bail!(
                "no stored {} transition of {point} at {stamp}",
                self.kind.as_str()
            );
        }
        Ok(())
    }

    /// Fills in the ack of the transition's `alarm_history` row, if it is
    /// still there.
    fn record_in_history(&self, tx: &rusqlite::Connection) -> rusqlite::Result<()> {
        // The newest matching transition (stamps are unique per point and
        // kind unless the clock stood still).
        let hid: Option<i64> = tx
            .query_row(
                "SELECT MAX(id) FROM alarm_history WHERE point = ?1 AND kind = ?2 AND at = ?3",
                params![self.point, self.kind.as_str(), self.stamp],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if let Some(hid) = hid {
            tx.execute(
                "UPDATE alarm_history SET acked_at = ?2, ack_protocol = ?3, ack_peer = ?4,
                    ack_user = ?5, ack_comment = ?6 WHERE id = ?1",
                params![
                    hid,
                    ts_nanos(self.now),
                    self.source.protocol.as_str(),
                    self.peer(),
                    self.source.user,
                    self.comment
                ],
            )?;
        }
        Ok(())
    }

    /// The `alarm-ack` audit entry; returns its row id.
    fn audit(&self, tx: &rusqlite::Connection) -> rusqlite::Result<i64> {
        let stamp = &self.stamp;
        tx.execute(
            "INSERT INTO audit (at, kind, target, protocol, peer, user, requested, result, detail)
             VALUES (?1, 'alarm-ack', ?2, ?3, ?4, ?5, ?6, 'ok', ?7)",
            params![
                super::ts(self.now),
                self.point,
                self.source.protocol.as_str(),
                self.peer(),
                self.source.user,
                self.kind.as_str(),
                match self.comment {
                    Some(c) if !c.is_empty() => format!("time stamp {stamp}; comment: {c}"),
                    _ => format!("time stamp {stamp}"),
                },
            ],
        )?;
        Ok(tx.last_insert_rowid())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::alarms::Alarms;
    use crate::config::Config;
    use crate::points::alarm::{AlarmSpec, ClassRules};
    use crate::points::{DbOptions, PointId, Protocol, Quality, Value};

    fn db() -> PointDb {
        let c = Config::embedded().expect("embedded");
        PointDb::new(c.points, c.site, DbOptions::default())
    }

    fn high(limit: f64) -> AlarmSpec {
        AlarmSpec::high_limit_for_tests(limit, 1)
    }

    fn classes() -> HashMap<u32, ClassRules> {
        HashMap::from([(
            1,
            ClassRules {
                priority: PerTransition::all(100),
                ack_required: PerTransition::all(true),
            },
        )])
    }

    /// An alarm runtime over `cpu_usage` with the SQLite store installed and
    /// the stored states restored, as `App` does.
    fn runtime(store: &Arc<Store>) -> (PointDb, PointId, Alarms) {
        let db = db();
        let cpu = db.lookup("cpu_usage").expect("cpu");
        let alarms = Alarms::new(db.clone(), vec![(cpu, high(90.0))], classes(), 100);
        alarms.set_store(Arc::new(SqliteAlarmStore::new(
            store.clone(),
            Some(db.clone()),
            DEFAULT_HISTORY_RETENTION,
        )));
        for (p, st, route) in store.alarm_states().expect("states") {
            alarms.restore(db.lookup_any(&p).expect("point"), st, route);
        }
        (db, cpu, alarms)
    }

    fn set(db: &PointDb, id: PointId, v: f64) {
        db.set(id, Some(Value::Number(v)), Quality::Ok, None)
            .expect("set");
    }

    fn op() -> Source {
        Source::new(
            Protocol::Rest,
            Some("127.0.0.1:40000".parse().expect("addr")),
            Some("alice".into()),
        )
    }

    /// A transition the store missed (its write failed when it happened:
    /// a full disk) must not make the alarm unacknowledgeable: the ack
    /// writes the point's whole state. Before, every ack of it failed ("no
    /// stored to-offnormal transition") until another transition was stored.
    #[test]
    fn an_ack_of_a_transition_the_store_missed_is_stored_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let stamp;
        {
            let store = Arc::new(Store::open(dir.path(), 1000).expect("open"));
            let (db, cpu, alarms) = runtime(&store);
            set(&db, cpu, 50.0);
            alarms.evaluate_all();
            set(&db, cpu, 97.5);
            alarms.evaluate_all();
            stamp = alarms
                .state(cpu)
                .and_then(|s| s.time_stamps.to_offnormal)
                .expect("stamp");
            // As if the transition's write had failed.
            store
                .conn
                .lock()
                .execute("DELETE FROM alarm_state", [])
                .expect("delete");
            let acked = alarms
                .acknowledge("cpu_usage", TransitionKind::ToOffnormal, stamp, &op())
                .expect("the ack is stored although the transition was not");
            assert!(acked);
        }
        // And it is durable, with the live state.
        let store = Arc::new(Store::open(dir.path(), 1000).expect("reopen"));
        let (_db, cpu, alarms) = runtime(&store);
        let st = alarms.state(cpu).expect("restored");
        assert_eq!(st.event_state, EventState::HighLimit);
        assert_eq!(st.time_stamps.to_offnormal, Some(stamp));
        assert!(st.acked.to_offnormal);
    }

    #[test]
    fn an_unacked_alarm_and_an_ack_survive_a_crash() {
        let dir = tempfile::tempdir().expect("tmp");
        let stamp;
        {
            let store = Arc::new(Store::open(dir.path(), 1000).expect("open"));
            let (db, cpu, alarms) = runtime(&store);
            set(&db, cpu, 50.0);
            alarms.evaluate_all();
            set(&db, cpu, 97.5);
            alarms.evaluate_all();
            let st = alarms.state(cpu).expect("state");
            assert_eq!(st.event_state, EventState::HighLimit);
            stamp = st.time_stamps.to_offnormal.expect("stamp");
            // Back to normal, unacknowledged: to-offnormal stays listed.
            set(&db, cpu, 10.0);
            alarms.evaluate_all();
            let to_normal = alarms
                .state(cpu)
                .expect("state")
                .time_stamps
                .to_normal
                .expect("normal stamp");
            assert!(alarms
                .acknowledge_with(
                    "cpu_usage",
                    TransitionKind::ToNormal,
                    to_normal,
                    &op(),
                    Some("seen"),
                )
                .expect("ack"));
            // No clean shutdown: the connection is never closed and the
            // WAL never checkpointed, as after kill -9.
            std::mem::forget(alarms);
            std::mem::forget(store);
        }
        let store = Arc::new(Store::open(dir.path(), 1000).expect("reopen"));
        let (_db, cpu, alarms) = runtime(&store);
        let st = alarms.state(cpu).expect("state");
        assert_eq!(st.event_state, EventState::Normal);
        assert_eq!(st.time_stamps.to_offnormal, Some(stamp));
        assert!(!st.acked.to_offnormal, "the to-offnormal ack is pending");
        assert!(st.acked.to_normal, "the to-normal ack survived");
        assert_eq!(alarms.counts(), (0, 1));
        assert_eq!(alarms.active().len(), 1);
        // The restored stamp is exact: acknowledging with it works.
        assert!(alarms
            .acknowledge("cpu_usage", TransitionKind::ToOffnormal, stamp, &op())
            .expect("ack after restart"));
        drop(alarms);
        let (_db, cpu, alarms) = runtime(&store);
        assert!(alarms.state(cpu).expect("state").acked.to_offnormal);
        assert_eq!(alarms.counts(), (0, 0));

        // History, newest first, with the acks' who/when/comment.
        let all = store
            .query_alarm_history(&AlarmHistoryFilter {
                limit: 100,
                ..Default::default()
            })
            .expect("history");
        let tos: Vec<&str> = all.iter().map(|r| r.to.as_str()).collect();
        assert_eq!(tos, ["normal", "high-limit"]);
        assert_eq!(all[0].ack_comment.as_deref(), Some("seen"));
        assert_eq!(all[0].ack_user.as_deref(), Some("alice"));
        assert_eq!(all[0].ack_protocol.as_deref(), Some("rest"));
        assert_eq!(all[1].value.as_deref(), Some("97.5"));
        assert!(all[1].acked_at.is_some());
        assert_eq!(all[1].at, ts_nanos(stamp));
        let high = store
            .query_alarm_history(&AlarmHistoryFilter {
                state: Some(EventState::HighLimit),
                point: Some("cpu_usage".into()),
                since: Some(stamp),
                until: Some(stamp + chrono::Duration::nanoseconds(1)),
                limit: 10,
                ..Default::default()
            })
            .expect("filtered");
        assert_eq!(high.len(), 1);
        assert!(store
            .query_alarm_history(&AlarmHistoryFilter {
                route: Some("main".into()),
                limit: 10,
                ..Default::default()
            })
            .expect("route")
            .is_empty());

        // The audit log has both transitions and both acks, with who.
        let audit = |kind: &str| {
            store
                .query_audit(&super::super::AuditFilter {
                    kind: Some(kind.into()),
                    limit: 100,
                    ..Default::default()
                })
                .expect("audit")
        };
        let tr = audit("alarm");
        assert_eq!(tr.len(), 2);
        assert_eq!(tr[1].new.as_deref(), Some("high-limit"));
        assert_eq!(tr[1].target.as_deref(), Some("cpu_usage"));
        let acks = audit("alarm-ack");
        assert_eq!(acks.len(), 2);
        assert_eq!(acks[1].user.as_deref(), Some("alice"));
        assert_eq!(acks[1].protocol.as_deref(), Some("rest"));
        assert_eq!(acks[1].peer.as_deref(), Some("127.0.0.1:40000"));
        assert!(acks[1]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("comment: seen")));
    }

    #[test]
    fn an_ack_the_store_does_not_know_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(dir.path(), 1000).expect("open"));
        let s = SqliteAlarmStore::new(store.clone(), None, 10);
        assert!(s
            .record_ack("cpu_usage", TransitionKind::ToOffnormal, Utc::now(), &op())
            .is_err());
        assert_eq!(
            store
                .query_audit(&super::super::AuditFilter {
                    limit: 10,
                    ..Default::default()
                })
                .expect("audit")
                .len(),
            0,
            "a refused ack leaves no trace of success"
        );
    }

    #[test]
    fn history_is_bounded_by_its_retention() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(dir.path(), 1000).expect("open"));
        let db = db();
        let cpu = db.lookup("cpu_usage").expect("cpu");
        let alarms = Alarms::new(db.clone(), vec![(cpu, high(90.0))], classes(), 100);
        alarms.set_store(Arc::new(SqliteAlarmStore::new(store.clone(), None, 5)));
        for i in 0..12 {
            set(&db, cpu, if i % 2 == 0 { 95.0 } else { 10.0 });
            alarms.evaluate_all();
        }
        assert_eq!(store.alarm_history_count().expect("count"), 5);
        // The live state is not history: it is still there.
        assert_eq!(store.alarm_states().expect("states").len(), 1);
    }
}
