//! Project Haystack 4 HTTP server (`/api/haystack/{op}`): records over the point database, Zinc/JSON/CSV, filters, watches, pointWrite, hisRead and SCRAM auth.
//!
//! Layout: [`records`] turns points into Haystack records, [`ops`] implements
//! the ops, [`encoding`] owns the wire formats, [`auth`] the HELLO/SCRAM/
//! bearer exchange and [`watch`] the leased subscriptions. This module is
//! the HTTP edge: negotiation, authentication and the status codes (only
//! 400/401/403/404/405/406/415 — op failures are error grids with HTTP 200,
//! as Haxall does).

pub mod auth;
pub mod depth;
pub mod encoding;
pub mod ops;
pub mod records;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use chrono::{DateTime, Utc};

use crate::points::{Maps, PointDb};
use crate::section::{Problem, Section};
use auth::{AuthReply, Authenticator, Role, User};
use encoding::{BodyFormat, Format, Grid};
use ops::{Caller, OpError};
use records::Records;
use watch::Watches;

/// Validated `[haystack]` options (the keys beyond `enabled`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Allow read-only ops without authentication.
    pub anonymous_read: bool,
    /// How long a bearer token lives.
    pub token_ttl: Duration,
    /// Lease of a watch when watchSub names none, and the longest allowed.
    pub watch_lease: Duration,
    pub max_watch_lease: Duration,
    /// Priority level invokeAction writes at.
    pub action_level: u8,
    pub server_name: String,
    pub users: Vec<User>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            anonymous_read: false,
            token_ttl: Duration::from_secs(3600),
            watch_lease: Duration::from_secs(60),
            max_watch_lease: Duration::from_secs(3600),
            action_level: 16,
            server_name: "castpoint".into(),
            users: Vec::new(),
        }
    }
}

/// `[haystack]` as written: the ops' options and the users (SCRAM keys).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaystackSection {
    /// Served under `/api/haystack` on the HTTP listener (needs `[http]`).
    pub enabled: bool,
    pub anonymous_read: bool,
    #[serde(with = "crate::section::duration")]
    pub token_ttl: Duration,
    #[serde(with = "crate::section::duration")]
    pub watch_lease: Duration,
    #[serde(with = "crate::section::duration")]
    pub max_watch_lease: Duration,
    pub action_level: u8,
    pub server_name: String,
    /// `[[haystack.user]]`: passwords are never stored (`castpoint haystack-user`).
    pub user: Vec<UserEntry>,
}

/// One `[[haystack.user]]`: SCRAM-SHA-256 keys in base64.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub role: String,
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

impl Default for HaystackSection {
    fn default() -> Self {
        let s = Settings::default();
        HaystackSection {
            enabled: true,
            anonymous_read: s.anonymous_read,
            token_ttl: s.token_ttl,
            watch_lease: s.watch_lease,
            max_watch_lease: s.max_watch_lease,
            action_level: s.action_level,
            server_name: s.server_name,
            user: Vec::new(),
        }
    }
}

impl Section for HaystackSection {
    fn validate(&self) -> Vec<Problem> {
        self.settings().err().unwrap_or_default()
    }
}

impl HaystackSection {
    /// The ops' settings, users decoded; problems keyed below `[haystack]`.
    pub fn settings(&self) -> Result<Settings, Vec<Problem>> {
        let mut errs = Vec::new();
        for (k, d) in [
            ("token_ttl", self.token_ttl),
            ("watch_lease", self.watch_lease),
            ("max_watch_lease", self.max_watch_lease),
        ] {
            if d < Duration::from_secs(1) {
                errs.push(Problem::new(
                    k,
                    "expected a duration of at least 1s (e.g. \"1h\")",
                ));
            }
        }
        crate::section::range("action_level", self.action_level, 1, 16, &mut errs);
        if self.watch_lease > self.max_watch_lease {
            errs.push(Problem::new(
                "watch_lease",
                "longer than haystack.max_watch_lease",
            ));
        }
        let mut users: Vec<User> = Vec::new();
        for (i, u) in self.user.iter().enumerate() {
            match decode_user(u) {
                Ok(u) => {
                    if users.iter().any(|x| x.name == u.name) {
                        let m = format!("duplicate user {:?}", u.name);
                        errs.push(Problem::new(format!("user[{i}].name"), m));
                    }
                    users.push(u);
                }
                Err(p) => errs.push(p.under(&format!("user[{i}]"))),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Settings {
            anonymous_read: self.anonymous_read,
            token_ttl: self.token_ttl,
            watch_lease: self.watch_lease,
            max_watch_lease: self.max_watch_lease,
            action_level: self.action_level,
            server_name: self.server_name.clone(),
            users,
        })
    }
}

fn decode_user(t: &UserEntry) -> Result<User, Problem> {
    let name = t.name.clone();
    if name.is_empty() || name.contains([',', '=']) {
        return Err(Problem::new("name", "must be non-empty without ',' or '='"));
    }
    let role = Role::parse(&t.role)
        .ok_or_else(|| Problem::new("role", "expected viewer, operator or admin"))?;
    let salt = auth::b64_decode(&t.salt)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Problem::new("salt", "expected base64"))?;
    if !(1000..=10_000_000).contains(&t.iterations) {
        return Err(Problem::new(
            "iterations",
            "expected an integer 1000..=10000000",
        ));
    }
    let key = |k: &str, v: &str| -> Result<[u8; 32], Problem> {
        auth::b64_decode(v)
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| Problem::new(k, "expected 32 bytes of base64 (SHA-256)"))
    };
    Ok(User {
        name,
        role,
        salt,
        iterations: t.iterations,
        stored_key: key("stored_key", &t.stored_key)?,
        server_key: key("server_key", &t.server_key)?,
    })
}

/// Everything the ops need; shared by every request.
pub struct Ctx {
    pub db: PointDb,
    pub records: Records,
    pub auth: Authenticator,
    pub watches: Watches,
    pub settings: Settings,
    pub boot: DateTime<Utc>,
}

impl Ctx {
    pub fn new(db: PointDb, maps: &Maps, settings: Settings) -> Arc<Ctx> {
        Self::with_users(db, maps, settings, None, None)
    }

    /// Like `new`, with castpoint's shared user store consulted after the
    /// users of `[haystack]`, and a hook told of every finished login.
    pub fn with_users(
        db: PointDb,
        maps: &Maps,
        settings: Settings,
        lookup: Option<auth::UserLookup>,
        on_login: Option<auth::LoginHook>,
    ) -> Arc<Ctx> {
        let mut authn = Authenticator::new(settings.users.clone(), settings.token_ttl);
        if let Some(l) = lookup {
            authn = authn.with_lookup(l);
        }
        if let Some(h) = on_login {
            authn = authn.with_hook(h);
        }
        let ctx = Arc::new(Ctx {
            records: Records::build(&db, maps),
            auth: authn,
            watches: Watches::new(settings.watch_lease, settings.max_watch_lease),
            db,
            settings,
            boot: Utc::now(),
        });
        let weak = Arc::downgrade(&ctx);
        crate::counters::register_gauge(
            "castpoint_haystack_watches",
            "Open Haystack watches.",
            move || weak.upgrade().map(|c| c.watches.len() as f64),
        );
        ctx
    }
}

impl Ctx {
    /// Shows the alarm runtime in the point records and watch polls
    /// (docs/haystack.md, "Alarms"); once, at start-up.
    pub fn set_alarms(&self, a: crate::alarms::Alarms) {
        self.records.set_alarms(a.clone());
        self.watches.set_alarms(a);
    }
}

/// The Haystack router: `/{op}`, to be nested under `/api/haystack`.
/// Needs `into_make_service_with_connect_info::<SocketAddr>` for the peer
/// address that writes are audited with.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new().route("/{op}", any(handle)).with_state(ctx)
}

fn status(code: StatusCode, msg: &str) -> Response {
    let mut r = (code, format!("{msg}\n")).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn with_header(mut r: Response, name: header::HeaderName, v: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(v) {
        r.headers_mut().insert(name, v);
    }
    r
}

fn unauthorized() -> Response {
    with_header(
        status(
            StatusCode::UNAUTHORIZED,
            "authentication required (HELLO, then SCRAM)",
        ),
        header::WWW_AUTHENTICATE,
        "HELLO",
    )
}

fn grid_response(fmt: Format, g: &Grid) -> Response {
    let mut r = Response::new(Body::from(fmt.encode(g)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fmt.content_type()),
    );
    r
}

async fn handle(State(ctx): State<Arc<Ctx>>, Path(op): Path<String>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let headers = req.headers().clone();
    let hdr = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let Some(fmt) = Format::from_accept(hdr(header::ACCEPT)) else {
        return status(
            StatusCode::NOT_ACCEPTABLE,
            "acceptable types: text/zinc, application/json (version=3 for Haystack 3 JSON), text/csv",
        );
    };
    let caller = match authenticate(&ctx, hdr(header::AUTHORIZATION), peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };

    // --- routing
    let Some(def) = ops::find(&op) else {
        return status(StatusCode::NOT_FOUND, &format!("unknown op {op:?}"));
    };
    if let Some(r) = method_refusal(req.method(), &op, def.post_only) {
        return r;
    }
    let body_fmt = BodyFormat::from_content_type(hdr(header::CONTENT_TYPE));
    let req_grid = match request_grid(req, fmt, body_fmt).await {
        Ok(g) => g,
        Err(r) => return *r,
    };
    match ops::dispatch(&ctx, &caller, &op, req_grid) {
        Ok(g) => grid_response(fmt, &g),
        Err(OpError::Grid(e)) => {
            tracing::debug!(op, peer = %peer, "haystack op error: {e}");
            grid_response(fmt, &Grid::error(&e))
        }
        Err(OpError::Unauthenticated) => unauthorized(),
    }
}

/// The caller an `Authorization` header names, or the response that ends
/// the request: 401/403 for a missing, unknown or expired credential, and
/// every step of the HELLO/SCRAM exchange (its last one included: a login
/// runs no op). Boxed, as in `request_grid`: a Response is large.
fn authenticate(
    ctx: &Ctx,
    authorization: Option<&str>,
    peer: SocketAddr,
) -> Result<Caller, Box<Response>> {
    let mut caller = Caller {
        user: None,
        role: None,
        peer,
        token: None,
    };
    match authorization {
        Some(a) => {
            let a = a.trim();
            let scheme = a.split(' ').next().unwrap_or("").to_ascii_uppercase();
            if scheme == "BEARER" {
                let token = a[scheme.len()..]
                    .split(',')
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("authToken"))
                    .map(|(_, v)| v.trim().to_string());
                match token.and_then(|t| ctx.auth.session(&t).map(|s| (t, s))) {
                    Some((t, s)) => {
                        caller.user = Some(s.user);
                        caller.role = Some(s.role);
                        caller.token = Some(t);
                    }
                    // Expired or unknown: 403 tells the client to log in again.
                    None => {
                        return Err(Box::new(status(
                            StatusCode::FORBIDDEN,
                            "invalid or expired auth token",
                        )))
                    }
                }
            } else if scheme == "HELLO" || scheme == "SCRAM" {
                return Err(Box::new(auth_response(ctx.auth.handle_from(a, peer.ip()))));
            } else {
                return Err(Box::new(unauthorized()));
            }
        }
        None if ctx.settings.anonymous_read => {}
        None => return Err(Box::new(unauthorized())),
    }
    Ok(caller)
}

/// The HTTP answer to one step of the HELLO/SCRAM exchange.
fn auth_response(reply: AuthReply) -> Response {
    match reply {
        AuthReply::Challenge(c) => with_header(
            status(StatusCode::UNAUTHORIZED, "continue authentication"),
            header::WWW_AUTHENTICATE,
            &c,
        ),
        AuthReply::Issued(info) => with_header(
            status(StatusCode::OK, "authenticated"),
            header::HeaderName::from_static("authentication-info"),
            &info,
        ),
        AuthReply::Forbidden(why) => status(StatusCode::FORBIDDEN, why),
        AuthReply::BadRequest(why) => status(StatusCode::BAD_REQUEST, why),
        AuthReply::TooMany(secs) => with_header(
            status(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins; retry later",
            ),
            header::RETRY_AFTER,
            &secs.to_string(),
        ),
    }
}

/// The 405 (with `Allow`) for a method the op does not take; None when it
/// takes it.
fn method_refusal(method: &Method, op: &str, post_only: bool) -> Option<Response> {
    let allow = if post_only { "POST" } else { "GET, POST" };
    let allowed = method == Method::POST || (method == Method::GET && !post_only);
    if allowed {
        return None;
    }
    Some(with_header(
        status(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{op} accepts {allow}"),
        ),
        header::ALLOW,
        allow,
    ))
}

/// The request grid, from the query string (GET, or a POST with an empty
/// body and a query) or the body; Err is the response that ends the
/// request (an error grid in `fmt` for an oversized or malformed one).
async fn request_grid(
    req: Request,
    fmt: Format,
    body_fmt: Option<BodyFormat>,
) -> Result<encoding::ReqGrid, Box<Response>> {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match axum::body::to_bytes(req.into_body(), encoding::MAX_REQUEST).await {
        Ok(b) => b,
        Err(_) => {
            return Err(Box::new(grid_response(
                fmt,
                &Grid::error(&format!(
                    "request larger than {} bytes",
                    encoding::MAX_REQUEST
                )),
            )))
        }
    };
    let decoded = if method == Method::GET || (body.is_empty() && !query.is_empty()) {
        encoding::decode_query(&query)
    } else {
        let Some(bf) = body_fmt else {
            return Err(Box::new(status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request grids are text/zinc or application/json",
            )));
        };
        encoding::decode_request(bf, &body)
    };
    decoded.map_err(|e| Box::new(grid_response(fmt, &Grid::error(&e))))
}

/// Prints a `[[haystack.user]]` entry for `castpoint haystack-user`; the
/// password comes from `CASTPOINT_PASSWORD` or the first line of stdin.
pub fn user_entry_cli(name: &str, role: &str, iterations: u32) -> Result<String, String> {
    let role = Role::parse(role).ok_or("role must be viewer, operator or admin")?;
    if !(1000..=10_000_000).contains(&iterations) {
        return Err("iterations must be 1000..=10000000".into());
    }
    let password = match std::env::var("CASTPOINT_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    auth::user_entry(name, role, &password, iterations)
        .ok_or_else(|| "no randomness available".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings, Vec<String>> {
        let s =
            crate::config::section_from_str::<HaystackSection>("haystack", text).map_err(|e| {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.key, e.message))
                    .collect::<Vec<_>>()
            })?;
        Ok(s.settings().expect("validated"))
    }

    #[test]
    fn settings_parse_and_name_keys() {
        let e = settings("anonymous_read = true\nbogus = 1\n").expect_err("errors");
        assert!(
            e.iter()
                .any(|m| m.starts_with("haystack.bogus: unknown key")),
            "{e:?}"
        );
        let e = settings(
            r#"
            anonymous_read = true
            token_ttl = "10min"
            [[user]]
            name = "a"
            role = "admin"
            salt = "c2FsdA"
            iterations = 100
            stored_key = "x"
            server_key = "y"
            "#,
        )
        .expect_err("errors");
        assert!(
            e.iter()
                .any(|m| m.starts_with("haystack.user[0].iterations")),
            "{e:?}"
        );
        let entry = auth::user_entry("bob", Role::Operator, "pw", 4096).expect("entry");
        let s = settings(&entry.replace("[[haystack.user]]", "[[user]]")).expect("valid");
        assert_eq!(s.users[0].name, "bob");
        assert_eq!(s.users[0].role, Role::Operator);
    }
}

/// Fuzzing of every parser this module exposes to peers: request grids (Zinc,
/// JSON), query strings, filters (parse and evaluate), hisRead ranges and
/// authorization headers. They must return errors, never panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::config::Config;
    use proptest::prelude::*;

    fn ctx() -> Arc<Ctx> {
        let cfg = Config::embedded().expect("embedded");
        let db = PointDb::new(cfg.points.clone(), cfg.site.clone(), Default::default());
        Ctx::new(db, &cfg.maps, Settings::default())
    }

    /// Strings built from Zinc/filter/JSON tokens reach deeper than bytes.
    fn tokens() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "ver:\"3.0\"",
                "\n",
                ",",
                " ",
                "id",
                "filter",
                "@site",
                "\"s\"",
                "\"",
                "1",
                "-2.5e3",
                "%",
                "_Gbps",
                "M",
                "N",
                "T",
                "F",
                "NA",
                "R",
                "{",
                "}",
                "[",
                "]",
                "<<",
                ">>",
                "(",
                ")",
                "and",
                "or",
                "not",
                "->",
                "==",
                "!=",
                "<",
                "<=",
                ">",
                ">=",
                "^a",
                "`u`",
                "2024-01-01",
                "2024-01-01T00:00:00Z UTC",
                "C(1,2)",
                "Bin(\"x\")",
                "é",
                "😀",
                "\\",
                "\\u00",
                "$",
                "{\"_kind\":\"grid\"",
                "\"meta\":",
                "\"rows\":",
                "\"cols\":",
                ":",
                "\"name\"",
                "{\"_kind\":\"number\",\"val\":",
                "\"NaN\"",
                "empty",
                "today",
                "yesterday",
            ]),
            0..24,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

        #[test]
        fn request_decoders_never_panic(bytes in prop::collection::vec(proptest::arbitrary::any::<u8>(), 0..256), s in tokens()) {
            for fmt in [encoding::BodyFormat::Zinc, encoding::BodyFormat::Json] {
                let _ = encoding::decode_request(fmt, &bytes);
                let _ = encoding::decode_request(fmt, s.as_bytes());
            }
            let _ = encoding::decode_query(&s);
            let _ = encoding::parse_scalar(&s);
        }

        #[test]
        fn filters_parse_and_evaluate_without_panic(s in tokens(), raw in ".{0,64}") {
            let c = ctx();
            for f in [s.as_str(), raw.as_str()] {
                if let Ok(f) = ops::parse_filter(f) {
                    let _ = c.records.filter(&c.db, &f, 100);
                }
            }
        }

        #[test]
        fn ranges_and_auth_headers_never_panic(s in tokens(), raw in ".{0,80}") {
            let now = Utc::now();
            let _ = ops::parse_range(&libhaystack::val::Value::make_str(&s), now);
            let _ = ops::parse_range(&libhaystack::val::Value::make_str(&raw), now);
            let a = Authenticator::new(Vec::new(), Duration::from_secs(1));
            for h in [format!("HELLO {raw}"), format!("SCRAM {raw}"), format!("SCRAM handshakeToken={s}, data={raw}"), raw.clone()] {
                let _ = a.handle(&h);
            }
        }

        #[test]
        fn ops_on_decoded_grids_never_panic(s in tokens(), op in prop::sample::select(
            ops::OPS.iter().map(|o| o.name).collect::<Vec<_>>())) {
            let c = ctx();
            let caller = ops::Caller {
                user: Some("fuzz".into()),
                role: Some(Role::Admin),
                peer: SocketAddr::from(([127, 0, 0, 1], 1)),
                token: None,
            };
            if let Ok(g) = encoding::decode_request(encoding::BodyFormat::Zinc, s.as_bytes()) {
                if let Ok(grid) = ops::dispatch(&c, &caller, op, g) {
                    for f in [Format::Zinc, Format::Json, Format::JsonV3, Format::Csv] {
                        let _ = f.encode(&grid);
                    }
                }
            }
        }
    }

    /// Every grid we emit reads back through libhaystack's Zinc decoder.
    #[test]
    fn emitted_zinc_round_trips() {
        let c = ctx();
        let caller = ops::Caller {
            user: Some("t".into()),
            role: Some(Role::Viewer),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            token: None,
        };
        for (op, req) in [
            ("about", ""),
            ("ops", ""),
            ("formats", ""),
            ("filetypes", ""),
            ("nav", ""),
            ("read", "ver:\"3.0\"\nfilter\n\"point or site or equip\"\n"),
            ("pointWrite", "ver:\"3.0\"\nid\n@input_select\n"),
            ("hisRead", "ver:\"3.0\"\nid,range\n@cpu_usage,\"today\"\n"),
        ] {
            let g =
                encoding::decode_request(encoding::BodyFormat::Zinc, req.as_bytes()).expect("req");
            let grid = ops::dispatch(&c, &caller, op, g).unwrap_or_else(|_| panic!("{op}"));
            // Zinc digits may contain `_` separators, so readers split
            // `100_Gbps` differently: Haxall and phable read unit `_Gbps`,
            // hszinc `Gbps`, and libhaystack rejects the unknown `Gbps`. The
            // custom unit is dropped for this structural check only; the
            // interop tests check what hszinc and phable read.
            let z = encoding::to_zinc(&grid);
            let plain = z.replace("_Gbps", "");
            let back = encoding::decode_request(encoding::BodyFormat::Zinc, plain.as_bytes())
                .unwrap_or_else(|e| panic!("{op}: {e}\n{z}"));
            assert_eq!(back.rows.len(), grid.rows.len(), "{op}");
        }
    }
}

/// The alarm tags of point records, on read and in watch polls.
#[cfg(test)]
mod alarm_tags {
    use super::*;
    use crate::alarms::Alarms;
    use crate::config::Config;
    use crate::points::alarm::{AlarmSpec, ClassRules, TransitionKind};
    use crate::points::{Quality, Source, Value};
    use libhaystack::val::Value as HVal;
    use records::RecKey;

    #[test]
    fn records_and_watches_show_the_alarm_state() {
        let cfg = Config::embedded().expect("embedded");
        let db = PointDb::new(cfg.points.clone(), cfg.site.clone(), Default::default());
        let cpu = db.lookup("cpu_usage").expect("cpu");
        let spec = AlarmSpec::high_limit_for_tests(90.0, 3);
        let rules = ClassRules::acked_for_tests();
        let alarms = Alarms::new(
            db.clone(),
            vec![(cpu, spec)],
            std::collections::HashMap::from([(3, rules)]),
            10,
        );
        let ctx = Ctx::new(db.clone(), &cfg.maps, Settings::default());
        ctx.set_alarms(alarms.clone());
        db.set(cpu, Some(Value::Number(20.0)), Quality::Ok, None)
            .expect("set");
        alarms.evaluate_all();
        let rec = |id| ctx.records.dict(&db, RecKey::Point(id)).expect("record");
        let d = rec(cpu);
        assert_eq!(d.get("alarmClass"), Some(&HVal::make_number(3.0)));
        assert_eq!(d.get("alarmState"), Some(&HVal::make_str("normal")));
        assert_eq!(d.get("alarmAcked"), Some(&HVal::make_bool(true)));
        assert!(!d.contains_key("alarm") && !d.contains_key("alarmTs"));
        // Points without an alarm have no alarm tags.
        let up = db.lookup("uptime").expect("uptime");
        assert!(!rec(up).contains_key("alarmState"));

        let (w, _) = ctx
            .watches
            .subscribe(&db, "u", None, None, None, &[RecKey::Point(cpu)])
            .expect("watch");
        assert!(ctx
            .watches
            .poll(&db, "u", &w, false)
            .expect("poll")
            .0
            .is_empty());
        db.set(cpu, Some(Value::Number(95.0)), Quality::Ok, None)
            .expect("set");
        alarms.evaluate_all();
        // 95 is also a new curVal: settle it, then only the ack changes.
        assert_eq!(
            ctx.watches.poll(&db, "u", &w, false).expect("poll").0,
            [RecKey::Point(cpu)]
        );
        let d = rec(cpu);
        assert_eq!(d.get("alarmState"), Some(&HVal::make_str("highLimit")));
        assert_eq!(d.get("alarm"), Some(&HVal::Marker));
        assert_eq!(d.get("alarmAcked"), Some(&HVal::make_bool(false)));
        let ts = alarms
            .state(cpu)
            .and_then(|s| s.time_stamps.to_offnormal)
            .expect("stamp");
        assert_eq!(d.get("alarmTs"), Some(&HVal::from(ts)));
        assert!(ctx
            .watches
            .poll(&db, "u", &w, false)
            .expect("poll")
            .0
            .is_empty());
        alarms
            .acknowledge(
                "cpu_usage",
                TransitionKind::ToOffnormal,
                ts,
                &Source::internal(),
            )
            .expect("ack");
        assert_eq!(
            ctx.watches.poll(&db, "u", &w, false).expect("poll").0,
            [RecKey::Point(cpu)],
            "the ack alone is a change a watch reports"
        );
        assert_eq!(rec(cpu).get("alarmAcked"), Some(&HVal::make_bool(true)));
    }
}
