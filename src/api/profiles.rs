//! Operator REST for output profiles (`/api/profiles`): the `[[profile]]` tables of castpoint.toml, overlaid with what operators created or changed, stored in SQLite and pushed to the running router at once.
//!
//! A profile travels as a JSON document with the keys of a `[[profile]]`
//! table (docs/transcode.md) and is validated by the same parser as the
//! file, together with every other profile (numbers and names must stay
//! unique), so the file and the API cannot disagree. Changed documents win
//! over the file at the next start; deleting a profile of the file stores a
//! tombstone. A profile a route names is not deleted (409): the route would
//! fall to a FAULT the operator did not ask for.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value as J};

use super::auth::Caller;
use super::guard::Authed;
use super::routes::{audit_change, not_stored};
use super::{ApiError, ApiState};
use crate::engine::spec::ProfileRef;
use crate::media::ffmpeg::profile::ProfileTable;
use crate::media::ffmpeg::Media;
use crate::media::ffmpeg::MediaSection;
use crate::section::Problem;

/// Highest profile number: the Output Profile point's range (0 = the
/// route's own profile).
pub const MAX_PROFILE: u32 = 64;

/// The desired profiles: the config's, overlaid with the stored ones.
pub struct Profiles {
    /// The config's `[media]` section (the ffmpeg path), kept so every
    /// rebuilt `Media` carries it.
    media: MediaSection,
    /// The file's own profiles, validated at load: what transcoding falls
    /// back to when stored documents no longer validate.
    file: Vec<ProfileTable>,
    docs: Mutex<BTreeMap<u32, J>>,
}

/// A problem of a profile document set (`profile[i].key: message`).
pub type Errors = Vec<Problem>;

impl Profiles {
    /// The config's `[[profile]]` tables overlaid with `stored` (changed
    /// documents replace, tombstones delete, new numbers are added).
    pub fn new(
        media: &MediaSection,
        tables: &[ProfileTable],
        stored: Vec<(u32, Option<J>)>,
    ) -> Profiles {
        let mut docs = BTreeMap::new();
        for t in tables {
            if let Some(v) = crate::section::to_doc(t) {
                docs.insert(t.number, v);
            }
        }
        for (n, doc) in stored {
            match doc {
                Some(d) => {
                    docs.insert(n, d);
                }
                None => {
                    docs.remove(&n);
                }
            }
        }
        Profiles {
            media: media.clone(),
            file: tables.to_vec(),
            docs: Mutex::new(docs),
        }
    }

    /// The media settings for the current documents. Stored documents that
    /// no longer validate (after an upgrade) must not take transcoding
    /// down: the file's profiles (validated at load) are used instead.
    pub fn media(&self) -> Media {
        let docs = self.docs.lock().clone();
        self.media_with(&docs).unwrap_or_else(|errs| {
            for e in &errs {
                tracing::error!("stored output profiles ignored: {e}");
            }
            Media::build(&self.media, &self.file).unwrap_or_default()
        })
    }

    fn media_with(&self, docs: &BTreeMap<u32, J>) -> Result<Media, Errors> {
        let mut tables = Vec::new();
        for (n, d) in docs {
            match serde_path_to_error::deserialize::<_, ProfileTable>(d) {
                Ok(t) => tables.push(t),
                Err(e) => {
                    let at = crate::section::join(&format!("profile {n}"), &e.path().to_string());
                    let m = format!("not a profile document: {}", e.inner());
                    return Err(vec![Problem::new(at, m)]);
                }
            }
        }
        Media::build(&self.media, &tables)
    }
}

pub fn router() -> Router<ApiState> {
    Router::new().route("/api/profiles", get(list)).route(
        "/api/profiles/{number}",
        get(one).put(put_profile).delete(remove),
    )
}

fn profiles(s: &ApiState) -> Result<&Profiles, ApiError> {
    s.profiles
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no profile store"))
}

fn number(raw: &str) -> Result<u32, ApiError> {
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_PROFILE).contains(&n) => Ok(n),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no profile {raw:?} (profiles are numbered 1..={MAX_PROFILE})"),
        )),
    }
}

fn invalid(errs: Errors) -> ApiError {
    let msgs: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect();
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msgs.join("; "))
}

async fn list(State(s): State<ApiState>) -> Result<Json<J>, ApiError> {
    let docs: Vec<J> = profiles(&s)?.docs.lock().values().cloned().collect();
    Ok(Json(json!({ "profiles": docs })))
}

async fn one(State(s): State<ApiState>, Path(raw): Path<String>) -> Result<Json<J>, ApiError> {
    let n = number(&raw)?;
    profiles(&s)?
        .docs
        .lock()
        .get(&n)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no profile {n}")))
}

/// Validates the whole candidate set, stores and audits the change, then
/// hands the router its new profiles (transcoders restart with them).
async fn commit(
    s: &ApiState,
    n: u32,
    doc: Option<J>,
    what: &str,
    peer: SocketAddr,
    caller: &Caller,
) -> Result<(), ApiError> {
    let p = profiles(s)?;
    let mut candidate = p.docs.lock().clone();
    match &doc {
        Some(d) => {
            candidate.insert(n, d.clone());
        }
        None => {
            candidate.remove(&n);
        }
    }
    let media = p.media_with(&candidate).map_err(invalid)?;
    if let Some(store) = &s.store {
        store.profile_put(n, doc.as_ref()).map_err(not_stored)?;
        audit_change(store, "profile", None, what, peer, caller);
    }
    *p.docs.lock() = candidate;
    if let Some(e) = &s.engine {
        e.set_media(media).await;
    }
    Ok(())
}

async fn put_profile(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<J>), ApiError> {
    let n = number(&raw)?;
    let mut doc: J = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let Some(o) = doc.as_object_mut() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a profile document is a JSON object",
        ));
    };
    match o.get("number").map(|v| v.as_u64()) {
        None => {
            o.insert("number".into(), json!(n));
        }
        Some(Some(m)) if m == u64::from(n) => {}
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("number: the document says {}, the URL {n}", o["number"]),
            ))
        }
    }
    let existed = profiles(&s)?.docs.lock().contains_key(&n);
    let what = if existed {
        format!("update profile {n}")
    } else {
        format!("create profile {n}")
    };
    commit(&s, n, Some(doc.clone()), &what, peer, &caller).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(doc)))
}

async fn remove(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(raw): Path<String>,
) -> Result<Json<J>, ApiError> {
    let n = number(&raw)?;
    let name = profiles(&s)?
        .docs
        .lock()
        .get(&n)
        .map(|d| {
            d.get("name")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        })
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no profile {n}")))?;
    if let Some(e) = &s.engine {
        let users: Vec<String> = e
            .desired()
            .await
            .routes
            .iter()
            .filter(|r| match &r.profile {
                Some(ProfileRef::Number(m)) => *m == n,
                Some(ProfileRef::Name(x)) => *x == name,
                None => false,
            })
            .map(|r| r.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("profile {n} is used by route(s) {}", users.join(", ")),
            ));
        }
    }
    commit(&s, n, None, &format!("delete profile {n}"), peer, &caller).await?;
    Ok(Json(json!({ "deleted": n })))
}
