//! The one JSON form of alarms, shared by `/api/alarms`, the `/api/ws` feed and the webhooks, so every surface describes an alarm the same way.

use serde_json::{json, Value as J};

use super::{AlarmEvent, AlarmRecord, AlarmSummary, Alarms};
use crate::points::alarm::{AlarmState, PerTransition, TransitionKind};
use crate::points::{PointDb, PointId, Value};

/// Fixed-width, nanosecond UTC: sorts lexically in time order and reads
/// back to the same instant. The alarm store keeps its stamps in this form
/// too, so a stored stamp and a JSON one compare as text.
pub fn ts_nanos(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

/// A value as JSON: numbers and bools as such, enums as their ordinal
/// with the state name beside it (`state`).
fn value(db: &PointDb, id: Option<PointId>, v: Option<Value>) -> (J, J) {
    match v {
        None => (J::Null, J::Null),
        Some(Value::Number(n)) => (json!(n), J::Null),
        Some(Value::Bool(b)) => (json!(b), J::Null),
        Some(Value::Enum(e)) => {
            let name = id
                .map(|id| db.state_names(id))
                .and_then(|names| names.get(usize::from(e).wrapping_sub(1)).cloned());
            (json!(e), json!(name))
        }
    }
}

/// The route owning a point's slot now (`None` for the server's points).
pub fn route_of(db: &PointDb, id: PointId) -> Option<String> {
    let rp = db.route_point(id)?;
    db.block(rp.slot).map(|b| b.route.clone())
}

fn per<T: Copy>(p: &PerTransition<T>, f: impl Fn(T) -> J) -> J {
    json!({
        "to-offnormal": f(p.to_offnormal),
        "to-fault": f(p.to_fault),
        "to-normal": f(p.to_normal),
    })
}

/// A point's alarm state: Event_State, Acked_Transitions, Event_Time_Stamps.
pub fn state_json(st: &AlarmState) -> J {
    json!({
        "state": st.event_state.as_str(),
        "acked": per(&st.acked, |b| json!(b)),
        "time_stamps": per(&st.time_stamps, |t| json!(t.map(ts_nanos))),
        "unacked": TransitionKind::ALL
            .iter()
            .filter(|k| !st.acked.get(**k))
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
    })
}

/// One entry of `GET /api/alarms`.
pub fn summary_json(alarms: &Alarms, s: &AlarmSummary) -> J {
    let db = alarms.db();
    let id = db.lookup_any(&s.point);
    let mut o = state_json(&s.state);
    o["point"] = json!(s.point);
    o["name"] = json!(id.and_then(|i| db.def(i)).map(|d| d.name.clone()));
    o["route"] = json!(id.and_then(|i| route_of(db, i)));
    o["notification_class"] = json!(s.notification_class);
    if let Some(st) = id.and_then(|i| db.read(i)) {
        let (v, name) = value(db, id, st.value);
        o["value"] = v;
        if !name.is_null() {
            o["value_state"] = name;
        }
        o["status"] = json!(st.quality.as_str());
    }
    o
}

/// One transition (WebSocket, webhooks).
pub fn record_json(alarms: &Alarms, r: &AlarmRecord) -> J {
    let db = alarms.db();
    let id = db.lookup_any(&r.point);
    let t = &r.transition;
    let (v, name) = value(db, id, t.value);
    json!({
        "type": "alarm",
        "seq": r.seq,
        "point": r.point,
        // The route it was judged for: a closing transition ("route
        // deleted") comes when the block has no owner any more.
        "route": r.route,
        "notification_class": alarms.class_of(&r.point),
        "from": t.from.as_str(),
        "to": t.to.as_str(),
        "transition": t.kind.as_str(),
        "at": ts_nanos(t.at),
        "notify": t.notify,
        "ack_required": t.ack_required,
        "priority": t.priority,
        "value": v,
        "value_state": name,
        "reason": t.reason,
    })
}

/// An alarm event (WebSocket, webhooks).
pub fn event_json(alarms: &Alarms, ev: &AlarmEvent) -> J {
    match ev {
        AlarmEvent::Transition(r) => record_json(alarms, r),
        AlarmEvent::Ack {
            point,
            kind,
            at,
            source,
        } => {
            let db = alarms.db();
            let id = db.lookup_any(point);
            json!({
                "type": "alarm-ack",
                "point": point,
                "route": id.and_then(|i| route_of(db, i)),
                "notification_class": alarms.class_of(point),
                "transition": kind.as_str(),
                "at": ts_nanos(*at),
                "source": source.describe(),
                "protocol": source.protocol.as_str(),
                "user": source.user,
                "state": id.and_then(|i| alarms.state(i)).map(|s| state_json(&s)),
            })
        }
    }
}
