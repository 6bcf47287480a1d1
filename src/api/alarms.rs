//! The REST view of the alarm runtime: `GET /api/alarms` (active and unacknowledged), `GET /api/alarms/history` (the durable transition history with filters) and `POST /api/alarms/{point}/ack` (operator or above; stored and audited before it takes effect).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value as J};

use super::{guard, parse_time, refusals, ApiError, ApiState};
use crate::alarms::{json as ajson, AckFailure, Alarms};
use crate::persist::alarms::{kind_from_str, state_from_str, AlarmHistoryFilter};
use crate::points::alarm::{AckError, TransitionKind};
use crate::points::{Protocol, Source};

/// Longest ack comment kept (bytes); longer ones are refused, not cut.
pub const MAX_COMMENT: usize = 1000;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/alarms", get(list))
        .route("/api/alarms/history", get(history))
        .route("/api/alarms/{point}/ack", post(ack))
}

fn runtime(s: &ApiState) -> Result<&Alarms, ApiError> {
    s.alarms
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "alarms are not running"))
}

/// `GET /api/alarms`: every point that is not NORMAL or waits for an
/// acknowledgement, with the counts.
async fn list(State(s): State<ApiState>) -> Result<Json<J>, ApiError> {
    let a = runtime(&s)?;
    let list: Vec<J> = a
        .active()
        .iter()
        .map(|x| ajson::summary_json(a, x))
        .collect();
    let (active, unacked) = a.counts();
    Ok(Json(
        json!({"alarms": list, "active": active, "unacked": unacked}),
    ))
}

/// `GET /api/alarms/history?point=&route=&since=&until=&state=&before=&limit=`,
/// newest first; `next` is the `before` of the following page.
async fn history(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<J>, ApiError> {
    let store = s
        .store
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no alarm store"))?;
    let mut f = AlarmHistoryFilter {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in &q {
        match k.as_str() {
            "point" => f.point = Some(v.clone()),
            "route" => f.route = Some(v.clone()),
            "since" | "from" => f.since = Some(parse_time(k, v)?),
            "until" | "to" => f.until = Some(parse_time(k, v)?),
            "state" => {
                f.state = Some(state_from_str(v).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "state: one of normal, offnormal, high-limit, low-limit, fault",
                    )
                })?)
            }
            "before" => f.before_id = Some(super::before_param(v, "a history id")?),
            "limit" => f.limit = super::limit_param(v)?,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown parameter {k:?} (point, route, since, until, state, before, limit)"
                    ),
                ))
            }
        }
    }
    if let (Some(a), Some(b)) = (f.since, f.until) {
        if a >= b {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "since must be before until",
            ));
        }
    }
    let rows = store
        .query_alarm_history(&f)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let next = if rows.len() == f.limit {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let list: Vec<J> = rows.iter().map(|r| r.to_json()).collect();
    Ok(Json(json!({"transitions": list, "next": next})))
}

struct AckBody {
    kind: TransitionKind,
    /// `None` = "latest": the transition's current time stamp.
    time_stamp: Option<chrono::DateTime<chrono::Utc>>,
    comment: Option<String>,
}

fn parse_ack(b: &J) -> Result<AckBody, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let obj = b.as_object().ok_or_else(|| {
        bad("body must be a JSON object like {\"transition\": \"to-offnormal\", \"time_stamp\": \"latest\", \"comment\": \"...\"}".into())
    })?;
    for k in obj.keys() {
        if !["transition", "time_stamp", "comment"].contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown field {k:?} (transition, time_stamp, comment)"
            )));
        }
    }
    let kind = obj
        .get("transition")
        .and_then(J::as_str)
        .and_then(kind_from_str)
        .ok_or_else(|| {
            bad("transition: one of \"to-offnormal\", \"to-fault\", \"to-normal\"".into())
        })?;
    let time_stamp = match obj.get("time_stamp").and_then(J::as_str) {
        Some("latest") => None,
        Some(t) => Some(parse_time("time_stamp", t)?),
        None => {
            return Err(bad(
                "time_stamp: the transition's time stamp (RFC 3339, as /api/alarms shows it) or \"latest\"".into(),
            ))
        }
    };
    let comment = match obj.get("comment") {
        None | Some(J::Null) => None,
        Some(J::String(c)) if c.len() <= MAX_COMMENT => Some(c.clone()),
        Some(J::String(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("comment: at most {MAX_COMMENT} bytes"),
            ))
        }
        Some(_) => return Err(bad("comment: expected a string".into())),
    };
    Ok(AckBody {
        kind,
        time_stamp,
        comment,
    })
}

/// `POST /api/alarms/{point}/ack` `{"transition", "time_stamp", "comment"}`.
async fn ack(
    State(s): State<ApiState>,
    Path(point): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    guard::Authed(caller): guard::Authed,
    body: Result<Json<J>, JsonRejection>,
) -> Result<Json<J>, ApiError> {
    let src = Source::new(
        Protocol::Rest,
        Some(peer),
        caller.as_ref().map(|c| c.user.clone()),
    );
    let r = do_ack(&s, &point, &src, body);
    // A refused ack is audited like a refused write (who tried what).
    if let (Err(e), Some(store)) = (&r, &s.store) {
        refusals::record(
            store,
            "alarm-ack",
            &point,
            &src,
            e.message(),
            &format!("HTTP {}", e.status.as_u16()),
        );
    }
    r
}

fn do_ack(
    s: &ApiState,
    point: &str,
    src: &Source,
    body: Result<Json<J>, JsonRejection>,
) -> Result<Json<J>, ApiError> {
    let a = runtime(s)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("point {point:?} has no alarm"),
        )
    };
    let id = s.db.lookup(point).ok_or_else(not_found)?;
    let st = a.state(id).ok_or_else(not_found)?;
    let Json(b) = body?;
    let req = parse_ack(&b)?;
    let stamp = match req.time_stamp {
        Some(t) => t,
        None => st.time_stamps.get(req.kind).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{point} has no {} transition to acknowledge",
                    req.kind.as_str()
                ),
            )
        })?,
    };
    let changed = a
        .acknowledge_with(point, req.kind, stamp, src, req.comment.as_deref())
        .map_err(|e| match e {
            AckFailure::NoAlarm(_) => not_found(),
            AckFailure::Refused(AckError::InvalidTimeStamp(k)) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "time_stamp is not that of the latest {} transition of {point} (a newer one may have happened: read /api/alarms)",
                    k.as_str()
                ),
            ),
            AckFailure::Refused(AckError::NoSuchTransition(k)) => ApiError::new(
                StatusCode::CONFLICT,
                format!("{point} has no {} transition to acknowledge", k.as_str()),
            ),
            AckFailure::Store(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the acknowledgement could not be stored: {m}"),
            ),
        })?;
    let st = a.state(id).ok_or_else(not_found)?;
    let mut out = ajson::state_json(&st);
    out["point"] = json!(point);
    out["acknowledged"] = json!(changed);
    Ok(Json(out))
}
