//! Operator REST for routes (seed 001): CRUD of routes, inputs and outputs, output enable/disable/move, all hot; every change audited and persisted as desired state.
//!
//! A route is exchanged as a JSON document with the same keys as a
//! `[[route]]` table of castpoint.toml (`inputs` / `outputs` arrays, or the
//! TOML names `input` / `output`), validated by the same parser, so the file
//! and the API can never disagree on what a route is. Documents of routes the
//! API created or changed are stored in SQLite and win over the config file
//! at the next start; deleting a route of the file stores a tombstone.
//! Secrets (SRT passphrases, stream keys, passwords and keys inside URLs)
//! are write-only: answers show `"***"`, and a document sent back with the
//! placeholder still in it means "unchanged" (see [`restore_secrets`]), so
//! fetch-edit-write-back never destroys a secret the client cannot see.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value as J};

use super::auth::Caller;
use super::guard::Authed;
use super::{ApiError, ApiState};
use crate::config::routes as parse;
use crate::engine::spec::{OutputSpec, RouteSpec};
use crate::engine::stats::RouteSnapshot;
use crate::engine::EngineError;
use crate::points::{Protocol, Source};

/// Keys whose values are secrets, never returned or logged.
const SECRET_KEYS: &[&str] = &["passphrase", "key", "stream_key", "password", "token"];

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/routes", get(list).post(create))
        .route("/api/routes/{route}", get(one).put(replace).delete(remove))
        .route(
            "/api/routes/{route}/inputs",
            get(list_inputs).post(add_input),
        )
        .route(
            "/api/routes/{route}/inputs/{name}",
            get(one_input).delete(remove_input),
        )
        .route(
            "/api/routes/{route}/outputs",
            get(list_outputs).post(add_output),
        )
        .route(
            "/api/routes/{route}/outputs/{name}",
            get(one_output).put(replace_output).delete(remove_output),
        )
        .route(
            "/api/routes/{route}/outputs/{name}/enable",
            post(enable_output),
        )
        .route(
            "/api/routes/{route}/outputs/{name}/disable",
            post(disable_output),
        )
        .route("/api/routes/{route}/outputs/{name}/move", post(move_output))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

fn engine_err(e: EngineError) -> ApiError {
    let status = match e {
        EngineError::UnknownRoute(_)
        | EngineError::UnknownOutput { .. }
        | EngineError::UnknownInput { .. } => StatusCode::NOT_FOUND,
        EngineError::RouteExists(_)
        | EngineError::OutputExists { .. }
        | EngineError::PathInUse(_) => StatusCode::CONFLICT,
        #[allow(unreachable_patterns)]
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.to_string())
}

/// Replaces secret values with "***", recursively.
pub fn redact(v: &J) -> J {
    match v {
        J::Object(o) => J::Object(
            o.iter()
                .map(|(k, x)| {
                    if SECRET_KEYS.contains(&k.as_str()) && !x.is_null() {
                        (k.clone(), json!("***"))
                    } else if let Some(t) = x.as_str() {
                        // Camera URLs carry user:password@, CDN URLs the
                        // stream key; error texts may quote either.
                        (k.clone(), json!(crate::redact::redact_text(t)))
                    } else {
                        (k.clone(), redact(x))
                    }
                })
                .collect(),
        ),
        J::Array(a) => J::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// Puts back the secrets a client sent as their redacted form: `"***"`
/// for a secret key, or a URL equal to the redaction of the stored one,
/// means "unchanged". Items of arrays are paired by `name` (else by
/// position). A placeholder with nothing stored behind it is refused: the
/// literal `***` must never become a key or a passphrase.
pub fn restore_secrets(new: &mut J, old: &J, at: &str) -> Result<(), ApiError> {
    match new {
        J::Object(o) => {
            for (k, v) in o.iter_mut() {
                let before = old.get(k.as_str());
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if SECRET_KEYS.contains(&k.as_str())
                    && v.as_str() == Some(crate::redact::PLACEHOLDER)
                {
                    match before.filter(|b| !b.is_null()) {
                        Some(b) => *v = b.clone(),
                        None => {
                            return Err(ApiError::new(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                format!("{here}: \"***\" is the redacted placeholder, and no secret is stored here to keep: send the secret itself"),
                            ))
                        }
                    }
                } else if let (Some(shown), Some(stored)) = (v.as_str(), before.and_then(J::as_str))
                {
                    if crate::redact::is_redaction_of(shown, stored) {
                        *v = json!(stored);
                    } else {
                        refuse_placeholder_url(shown, &here)?;
                    }
                } else if let Some(shown) = v.as_str() {
                    refuse_placeholder_url(shown, &here)?;
                } else if let Some(b) = before {
                    restore_secrets(v, b, &here)?;
                } else {
                    restore_secrets(v, &J::Null, &here)?;
                }
            }
            Ok(())
        }
        J::Array(a) => {
            let olds = old.as_array();
            for (i, v) in a.iter_mut().enumerate() {
                let name = v.get("name").and_then(J::as_str).map(String::from);
                let before = olds
                    .and_then(|l| match &name {
                        Some(n) => l
                            .iter()
                            .find(|x| x.get("name").and_then(J::as_str) == Some(n.as_str())),
                        None => l.get(i),
                    })
                    .unwrap_or(&J::Null);
                restore_secrets(v, before, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A URL still in its redacted form with no stored URL it stands for.
fn refuse_placeholder_url(shown: &str, at: &str) -> Result<(), ApiError> {
    if shown.contains("://")
        && shown.contains(crate::redact::PLACEHOLDER)
        && crate::redact::redact_url(shown) == shown
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{at}: this URL is the redacted form of one not stored here: send the full URL with its key or password"),
        ));
    }
    Ok(())
}

/// JSON document -> TOML table; `inputs`/`outputs` are accepted for the
/// TOML names `input`/`output`. JSON null has no TOML form: it is refused.
fn to_table(doc: &J) -> Result<toml::Table, ApiError> {
    let mut doc = doc.clone();
    if let Some(o) = doc.as_object_mut() {
        for (json_name, toml_name) in [("inputs", "input"), ("outputs", "output")] {
            if let Some(v) = o.remove(json_name) {
                o.insert(toml_name.to_string(), v);
            }
        }
    }
    let v: toml::Value = serde_json::from_value(doc).map_err(|e| {
        bad(format!(
            "not a route document (null values are not allowed): {e}"
        ))
    })?;
    match v {
        toml::Value::Table(t) => Ok(t),
        _ => Err(bad("a route document is a JSON object")),
    }
}

/// Canonical stored form: TOML names (`input`, `output`).
fn canonical(doc: &J) -> Result<J, ApiError> {
    let t = to_table(doc)?;
    serde_json::to_value(&t).map_err(|e| bad(e.to_string()))
}

/// A route document as the engine's spec; the keys it does not write take
/// `[route_defaults]` (`d`), as a `[[route]]` of the file would.
fn validate(doc: &J, d: &parse::RouteDefaults) -> Result<RouteSpec, ApiError> {
    let t = to_table(doc)?;
    let mut errs = Vec::new();
    let spec = parse::parse_route("request", "route", &t, d, &mut errs);
    if !errs.is_empty() {
        let msgs: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            msgs.join("; "),
        ));
    }
    spec.ok_or_else(|| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid route"))
}

fn parse_body(body: &axum::body::Bytes) -> Result<J, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn engine(s: &ApiState) -> Result<&crate::engine::Engine, ApiError> {
    s.engine
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no router"))
}

/// The current document of a route: the stored one, else the config's.
fn doc_of(s: &ApiState, route: &str) -> Result<J, ApiError> {
    s.route_docs
        .lock()
        .get(route)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no route named {route:?}")))
}

/// A desired-state change the store refused: nothing was applied.
pub(super) fn not_stored(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}"))
}

/// Audits an operator's desired-state change (`kind` route/profile). A
/// failed audit write is logged, not fatal: the change itself is stored.
pub(super) fn audit_change(
    store: &crate::persist::Store,
    kind: &str,
    target: Option<&str>,
    what: &str,
    peer: SocketAddr,
    caller: &Caller,
) {
    let src = Source::new(
        Protocol::Rest,
        Some(peer),
        caller.as_ref().map(|c| c.user.clone()),
    );
    if let Err(e) = store.record_event(kind, target, &src, "ok", what) {
        tracing::warn!("{kind} change not audited: {e}");
    }
}

/// Stores a route's new document (or its deletion) and audits the change.
fn commit(
    s: &ApiState,
    route: &str,
    doc: Option<J>,
    what: &str,
    peer: SocketAddr,
    caller: &Caller,
) -> Result<(), ApiError> {
    if let Some(store) = &s.store {
        store.route_put(route, doc.as_ref()).map_err(not_stored)?;
        audit_change(store, "route", Some(route), what, peer, caller);
    }
    let mut docs = s.route_docs.lock();
    match doc {
        Some(d) => {
            docs.insert(route.to_string(), d);
        }
        None => {
            docs.remove(route);
        }
    }
    Ok(())
}

fn route_json(s: &ApiState, name: &str, doc: &J) -> J {
    let snap = s.engine.as_ref().map(|e| e.snapshot());
    with_stats(s, name, doc, snap.as_ref().and_then(|e| e.route(name)))
}

/// `doc` as the API answers it: JSON names, secrets redacted, the route's
/// live `stats` (`r`, from an engine snapshot) and its point slot.
fn with_stats(s: &ApiState, name: &str, doc: &J, r: Option<&RouteSnapshot>) -> J {
    let stats = r
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or(J::Null);
    let mut d = redact(doc);
    if let Some(o) = d.as_object_mut() {
        // Answer with the JSON names.
        for (toml_name, json_name) in [("input", "inputs"), ("output", "outputs")] {
            let v = o.remove(toml_name).unwrap_or_else(|| json!([]));
            o.insert(json_name.to_string(), v);
        }
        o.insert("stats".into(), redact(&stats));
        // What the engine runs the route with: its own keys, else
        // `[route_defaults]`'s (null without a router).
        let eff = r
            .and_then(|r| serde_json::to_value(r.settings).ok())
            .unwrap_or(J::Null);
        o.insert("effective".into(), eff);
        // The route's point block (docs/route-points.md); null without one.
        o.insert("point_slot".into(), json!(s.db.slot_of(name)));
    }
    d
}

async fn list(State(s): State<ApiState>) -> Result<Json<J>, ApiError> {
    let docs = s.route_docs.lock().clone();
    let primary = match &s.engine {
        Some(e) => e.primary().await,
        None => None,
    };
    // One snapshot for the whole list: one per route (each of every route)
    // took 2.9 s of a worker thread at 500 routes (issue 25).
    let snap = s.engine.as_ref().map(|e| e.snapshot());
    let by_name: std::collections::HashMap<&str, &RouteSnapshot> = snap
        .iter()
        .flat_map(|e| &e.routes)
        .map(|r| (r.name.as_str(), r))
        .collect();
    let routes: Vec<J> = docs
        .iter()
        .map(|(n, d)| with_stats(&s, n, d, by_name.get(n.as_str()).copied()))
        .collect();
    Ok(Json(json!({"routes": routes, "primary": primary})))
}

async fn one(State(s): State<ApiState>, Path(route): Path<String>) -> Result<Json<J>, ApiError> {
    let d = doc_of(&s, &route)?;
    Ok(Json(route_json(&s, &route, &d)))
}

async fn create(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<J>), ApiError> {
    let mut doc = canonical(&parse_body(&body)?)?;
    restore_secrets(&mut doc, &J::Null, "")?;
    let spec = validate(&doc, &s.route_defaults)?;
    let name = spec.name.clone();
    if s.route_docs.lock().contains_key(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("route {name:?} already exists"),
        ));
    }
    engine(&s)?.add_route(spec).await.map_err(engine_err)?;
    commit(&s, &name, Some(doc.clone()), "create route", peer, &caller)?;
    Ok((StatusCode::CREATED, Json(route_json(&s, &name, &doc))))
}

async fn replace(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(route): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<J>, ApiError> {
    let mut doc = parse_body(&body)?;
    if let Some(o) = doc.as_object_mut() {
        // What GET adds and PUT cannot set: the route's live counters, its
        // point block's slot (pinned with `slot`) and the settings it runs
        // with (set by its own keys or `[route_defaults]`).
        o.remove("stats");
        o.remove("point_slot");
        o.remove("effective");
        if o.get("name").and_then(J::as_str).is_none() {
            o.insert("name".into(), json!(route));
        }
    }
    let mut doc = canonical(&doc)?;
    restore_secrets(&mut doc, &doc_of(&s, &route)?, "")?;
    let spec = validate(&doc, &s.route_defaults)?;
    let new = spec.name.clone();
    let e = engine(&s)?;
    if new != route && e.primary().await.as_deref() == Some(route.as_str()) {
        // `primary_route` in castpoint.toml names it: the seed's Stream
        // Enable and Input Select would act on nothing after a rename, and
        // the file would name a missing route at the next start.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{route} is the primary route (primary_route, or the first [[route]] of the config file): rename it there"
            ),
        ));
    }
    if new != route {
        // A rename: the route keeps its point block (slot, commands,
        // history), so the slot keeper is told before the router changes.
        s.db.announce_rename(&route, &new);
    }
    if let Err(err) = e.replace_route(&route, spec).await {
        s.db.withdraw_rename(&route, &new);
        return Err(engine_err(err));
    }
    if new == route {
        commit(
            &s,
            &route,
            Some(doc.clone()),
            "replace route",
            peer,
            &caller,
        )?;
    } else {
        commit_rename(&s, &route, &new, &doc, peer, &caller)?;
    }
    Ok(Json(route_json(&s, &new, &doc)))
}

/// Stores a rename (the old name deleted, the new one with `doc`, in one
/// transaction), audits it and updates the documents the API serves.
fn commit_rename(
    s: &ApiState,
    old: &str,
    new: &str,
    doc: &J,
    peer: SocketAddr,
    caller: &Caller,
) -> Result<(), ApiError> {
    if let Some(store) = &s.store {
        store.route_rename(old, new, doc).map_err(not_stored)?;
        let what = format!("rename route {old} -> {new}");
        audit_change(store, "route", Some(new), &what, peer, caller);
    }
    let mut docs = s.route_docs.lock();
    docs.remove(old);
    docs.insert(new.to_string(), doc.clone());
    Ok(())
}

async fn remove(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(route): Path<String>,
) -> Result<StatusCode, ApiError> {
    doc_of(&s, &route)?;
    engine(&s)?.remove_route(&route).await.map_err(engine_err)?;
    commit(&s, &route, None, "delete route", peer, &caller)?;
    Ok(StatusCode::NO_CONTENT)
}

fn items(doc: &J, key: &str) -> Vec<J> {
    doc.get(key)
        .and_then(J::as_array)
        .cloned()
        .unwrap_or_default()
}

fn item_name(v: &J, key: &str, i: usize) -> String {
    v.get("name")
        .and_then(J::as_str)
        .map(String::from)
        .unwrap_or_else(|| format!("{}{i}", if key == "input" { "in" } else { "out" }))
}

fn find(doc: &J, key: &str, name: &str) -> Option<(usize, J)> {
    items(doc, key)
        .into_iter()
        .enumerate()
        .find(|(i, v)| item_name(v, key, *i) == name)
}

fn with_items(doc: &J, key: &str, list: Vec<J>) -> J {
    let mut d = doc.clone();
    if let Some(o) = d.as_object_mut() {
        o.insert(key.to_string(), J::Array(list));
    }
    d
}

/// `GET .../inputs` or `.../outputs` (key `input` / `output`).
fn list_items(s: &ApiState, route: &str, key: &str) -> Result<Json<J>, ApiError> {
    Ok(Json(redact(&J::Array(items(&doc_of(s, route)?, key)))))
}

/// `GET .../inputs/{name}` or `.../outputs/{name}`.
fn one_item(s: &ApiState, route: &str, key: &str, name: &str) -> Result<Json<J>, ApiError> {
    let (_, v) = find(&doc_of(s, route)?, key, name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no {key} {name:?}")))?;
    Ok(Json(redact(&v)))
}

async fn list_inputs(
    State(s): State<ApiState>,
    Path(route): Path<String>,
) -> Result<Json<J>, ApiError> {
    list_items(&s, &route, "input")
}

async fn one_input(
    State(s): State<ApiState>,
    Path((route, name)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    one_item(&s, &route, "input", &name)
}

async fn list_outputs(
    State(s): State<ApiState>,
    Path(route): Path<String>,
) -> Result<Json<J>, ApiError> {
    list_items(&s, &route, "output")
}

async fn one_output(
    State(s): State<ApiState>,
    Path((route, name)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    one_item(&s, &route, "output", &name)
}

/// Input changes are hot: the engine keeps unchanged inputs (and the
/// active one) running, stops removed ones and starts new ones; outputs
/// and their viewers never notice.
async fn set_inputs_with(
    s: &ApiState,
    route: &str,
    doc: J,
    what: &str,
    peer: SocketAddr,
    caller: &Caller,
) -> Result<Json<J>, ApiError> {
    let spec = validate(&doc, &s.route_defaults)?;
    engine(s)?
        .set_inputs(route, spec.inputs)
        .await
        .map_err(engine_err)?;
    commit(s, route, Some(doc.clone()), what, peer, caller)?;
    Ok(Json(route_json(s, route, &doc)))
}

async fn add_input(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(route): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<J>, ApiError> {
    let mut input = canonical(&parse_body(&body)?)?;
    restore_secrets(&mut input, &J::Null, "")?;
    let doc = doc_of(&s, &route)?;
    let mut list = items(&doc, "input");
    if let Some(n) = input.get("name").and_then(J::as_str) {
        if find(&doc, "input", n).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("input {n:?} exists"),
            ));
        }
    }
    list.push(input);
    let doc = with_items(&doc, "input", list);
    set_inputs_with(&s, &route, doc, "add input", peer, &caller).await
}

async fn remove_input(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path((route, name)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    let doc = doc_of(&s, &route)?;
    let (i, _) = find(&doc, "input", &name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no input {name:?}")))?;
    let mut list = items(&doc, "input");
    list.remove(i);
    let doc = with_items(&doc, "input", list);
    set_inputs_with(&s, &route, doc, "remove input", peer, &caller).await
}

fn output_spec(route: &str, v: &J, i: usize) -> Result<OutputSpec, ApiError> {
    let t = to_table(v)?;
    let mut errs = Vec::new();
    let o = parse::output("request", "output".into(), &t, route, &mut errs, i);
    if !errs.is_empty() {
        let msgs: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            msgs.join("; "),
        ));
    }
    o.ok_or_else(|| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid output"))
}

async fn add_output(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path(route): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<J>), ApiError> {
    let mut out = canonical(&parse_body(&body)?)?;
    restore_secrets(&mut out, &J::Null, "")?;
    let doc = doc_of(&s, &route)?;
    let mut list = items(&doc, "output");
    let spec = output_spec(&route, &out, list.len())?;
    if let Some(o) = out.as_object_mut() {
        o.insert("name".into(), json!(spec.name));
    }
    engine(&s)?
        .add_output(&route, spec)
        .await
        .map_err(engine_err)?;
    list.push(out.clone());
    commit(
        &s,
        &route,
        Some(with_items(&doc, "output", list)),
        "add output",
        peer,
        &caller,
    )?;
    Ok((StatusCode::CREATED, Json(redact(&out))))
}

async fn replace_output(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path((route, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<J>, ApiError> {
    let mut out = canonical(&parse_body(&body)?)?;
    if let Some(o) = out.as_object_mut() {
        o.insert("name".into(), json!(name));
    }
    let doc = doc_of(&s, &route)?;
    let (i, stored) = find(&doc, "output", &name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no output {name:?}")))?;
    restore_secrets(&mut out, &stored, "")?;
    let spec = output_spec(&route, &out, i)?;
    let e = engine(&s)?;
    let old = e.remove_output(&route, &name).await.map_err(engine_err)?;
    if let Err(err) = e.add_output(&route, spec).await {
        let _ = e.add_output(&route, old).await;
        return Err(engine_err(err));
    }
    let mut list = items(&doc, "output");
    list[i] = out.clone();
    commit(
        &s,
        &route,
        Some(with_items(&doc, "output", list)),
        "replace output",
        peer,
        &caller,
    )?;
    Ok(Json(redact(&out)))
}

async fn remove_output(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path((route, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let doc = doc_of(&s, &route)?;
    let (i, _) = find(&doc, "output", &name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no output {name:?}")))?;
    engine(&s)?
        .remove_output(&route, &name)
        .await
        .map_err(engine_err)?;
    let mut list = items(&doc, "output");
    list.remove(i);
    commit(
        &s,
        &route,
        Some(with_items(&doc, "output", list)),
        "remove output",
        peer,
        &caller,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(
    s: ApiState,
    peer: SocketAddr,
    caller: Caller,
    route: String,
    name: String,
    en: bool,
) -> Result<Json<J>, ApiError> {
    let doc = doc_of(&s, &route)?;
    let (i, mut out) = find(&doc, "output", &name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no output {name:?}")))?;
    engine(&s)?
        .set_output_enabled(&route, &name, en)
        .await
        .map_err(engine_err)?;
    if let Some(o) = out.as_object_mut() {
        o.insert("enabled".into(), json!(en));
    }
    let mut list = items(&doc, "output");
    list[i] = out.clone();
    let what = if en {
        "enable output"
    } else {
        "disable output"
    };
    commit(
        &s,
        &route,
        Some(with_items(&doc, "output", list)),
        what,
        peer,
        &caller,
    )?;
    Ok(Json(redact(&out)))
}

async fn enable_output(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path((route, name)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    set_enabled(s, peer, caller, route, name, true).await
}

async fn disable_output(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path((route, name)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    set_enabled(s, peer, caller, route, name, false).await
}

/// `POST .../move {"to": "other-route"}`: the output keeps running and its
/// viewers stay connected; it is fed by the other route from then on.
async fn move_output(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authed(caller): Authed,
    Path((route, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<J>, ApiError> {
    let b = parse_body(&body)?;
    let to = b
        .get("to")
        .and_then(J::as_str)
        .ok_or_else(|| bad("expected {\"to\": \"route name\"}"))?
        .to_string();
    let from_doc = doc_of(&s, &route)?;
    let to_doc = doc_of(&s, &to)?;
    let (i, out) = find(&from_doc, "output", &name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no output {name:?}")))?;
    engine(&s)?
        .move_output(&route, &name, &to)
        .await
        .map_err(engine_err)?;
    let mut from_list = items(&from_doc, "output");
    from_list.remove(i);
    let mut to_list = items(&to_doc, "output");
    to_list.push(out.clone());
    commit(
        &s,
        &route,
        Some(with_items(&from_doc, "output", from_list)),
        "move output out",
        peer,
        &caller,
    )?;
    commit(
        &s,
        &to,
        Some(with_items(&to_doc, "output", to_list)),
        "move output in",
        peer,
        &caller,
    )?;
    Ok(Json(json!({"moved": name, "from": route, "to": to})))
}

/// Route documents at start-up: the config's `[[route]]` tables, overlaid
/// with what the API stored (changed routes replace, tombstones delete, new
/// routes are added).
pub fn initial_docs(
    config_routes: &[&parse::RouteTable],
    stored: Vec<(String, Option<J>)>,
) -> std::collections::BTreeMap<String, J> {
    let mut docs = std::collections::BTreeMap::new();
    for t in config_routes {
        if let (Some(name), Some(v)) = (&t.name, crate::section::to_doc(t)) {
            docs.insert(name.clone(), v);
        }
    }
    for (name, doc) in stored {
        match doc {
            Some(d) => {
                docs.insert(name, d);
            }
            None => {
                docs.remove(&name);
            }
        }
    }
    docs
}

/// Parses the documents into route specs for the engine; documents that no
/// longer validate (after an upgrade) are skipped with a logged reason.
pub fn specs(
    docs: &std::collections::BTreeMap<String, J>,
    defaults: &parse::RouteDefaults,
) -> Vec<RouteSpec> {
    docs.iter()
        .filter_map(|(name, d)| match validate(d, defaults) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(
                    "stored route {name} ignored: {}",
                    crate::redact::redact_text(e.message())
                );
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_hide_every_secret_including_urls_and_error_texts() {
        let doc = json!({
            "inputs": [{"name": "cam", "passphrase": "pp", "url": "rtsp://u:pw@c/x"}],
            "outputs": [{"name": "yt", "url": "rtmp://h/live2/K1", "key": "K2"}],
            "stats": {"outputs": [{"error": "push to rtmp://h/live2/K1 failed"}]}
        });
        let shown = redact(&doc).to_string();
        for s in ["pp", "pw@", "K1", "K2"] {
            assert!(!shown.contains(s), "{s} in {shown}");
        }
    }

    #[test]
    fn placeholders_sent_back_restore_the_stored_secrets_by_item_name() {
        let stored = json!({"output": [
            {"name": "a", "url": "rtmp://h/app/KA", "key": "SA"},
            {"name": "b", "url": "rtmp://h/app/KB", "key": "SB"}]});
        // The client reordered the items and kept the placeholders.
        let mut back = json!({"output": [
            {"name": "b", "url": "rtmp://h/app/***", "key": "***"},
            {"name": "a", "url": "rtmp://h/app/***", "key": "new-key"}]});
        assert!(restore_secrets(&mut back, &stored, "").is_ok());
        assert_eq!(back["output"][0]["url"], "rtmp://h/app/KB");
        assert_eq!(back["output"][0]["key"], "SB");
        assert_eq!(back["output"][1]["url"], "rtmp://h/app/KA");
        assert_eq!(back["output"][1]["key"], "new-key");
        // Placeholders with nothing stored behind them are refused.
        let mut new_item = json!({"name": "c", "key": "***"});
        assert!(restore_secrets(&mut new_item, &J::Null, "").is_err());
        let mut new_url = json!({"name": "c", "url": "rtmp://h/app/***"});
        assert!(restore_secrets(&mut new_url, &J::Null, "").is_err());
        // A changed URL is taken as sent.
        let mut changed = json!({"output": [{"name": "a", "url": "rtmp://other/app/NEW"}]});
        assert!(restore_secrets(&mut changed, &stored, "").is_ok());
        assert_eq!(changed["output"][0]["url"], "rtmp://other/app/NEW");
    }
}
