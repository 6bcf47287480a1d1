//! The Haystack ops over the point database: about, ops, formats/filetypes, read, nav, watchSub/Poll/Unsub, pointWrite, hisRead, invokeAction, close.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use libhaystack::val::{Dict, Value as HVal};

use super::auth::Role;
use super::encoding::{Col, Grid, ReqGrid};
use super::records::{from_hval, to_hval, RecKey};
use super::Ctx;
use crate::points::{Protocol, Source, WriteError, DEFAULT_LEVEL, PRIORITY_LEVELS};

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` for anonymous reads.
    pub user: Option<String>,
    pub role: Option<Role>,
    pub peer: std::net::SocketAddr,
    pub token: Option<String>,
}

impl Caller {
    /// Who a watch belongs to and whose quota it counts against: the user
    /// when authenticated, else the client address, so anonymous clients
    /// no longer share (and exhaust) one quota.
    fn owner(&self) -> String {
        match &self.user {
            Some(u) => format!("user:{u}"),
            None => format!("addr:{}", self.peer.ip()),
        }
    }
}

/// Why an op did not produce its grid.
#[derive(Debug)]
pub enum OpError {
    /// Reported as an error grid (HTTP 200).
    Grid(String),
    /// The op needs an authenticated user (HTTP 401).
    Unauthenticated,
}

impl From<String> for OpError {
    fn from(s: String) -> Self {
        OpError::Grid(s)
    }
}

impl From<&str> for OpError {
    fn from(s: &str) -> Self {
        OpError::Grid(s.to_string())
    }
}

type OpResult = Result<Grid, OpError>;

/// An op: name, summary, and whether it has side effects (POST only).
pub struct OpDef {
    pub name: &'static str,
    pub summary: &'static str,
    pub post_only: bool,
}

pub const OPS: &[OpDef] = &[
    OpDef {
        name: "about",
        summary: "Summary information for server",
        post_only: false,
    },
    OpDef {
        name: "close",
        summary: "Close the session and invalidate its token",
        post_only: true,
    },
    OpDef {
        name: "ops",
        summary: "Operations supported by this server",
        post_only: false,
    },
    OpDef {
        name: "formats",
        summary: "Grid data formats supported by this server",
        post_only: false,
    },
    OpDef {
        name: "filetypes",
        summary: "File types supported by this server",
        post_only: false,
    },
    OpDef {
        name: "read",
        summary: "Read records by id or filter",
        post_only: false,
    },
    OpDef {
        name: "nav",
        summary: "Navigate site, equip and points",
        post_only: false,
    },
    OpDef {
        name: "watchSub",
        summary: "Subscribe to records in a watch",
        post_only: true,
    },
    OpDef {
        name: "watchUnsub",
        summary: "Unsubscribe from a watch or close it",
        post_only: true,
    },
    OpDef {
        name: "watchPoll",
        summary: "Poll a watch for changes",
        post_only: true,
    },
    OpDef {
        name: "pointWrite",
        summary: "Read or write a point's priority array",
        post_only: true,
    },
    OpDef {
        name: "hisRead",
        summary: "Read a point's history",
        post_only: false,
    },
    OpDef {
        name: "invokeAction",
        summary: "Invoke an action (restart) on a record",
        post_only: true,
    },
];

pub fn find(name: &str) -> Option<&'static OpDef> {
    OPS.iter().find(|o| o.name == name)
}

fn mk(pairs: Vec<(&str, HVal)>) -> Dict {
    let mut d = Dict::new();
    for (k, v) in pairs {
        d.insert(k.to_string(), v);
    }
    d
}

fn now_dt() -> HVal {
    HVal::from(Utc::now())
}

/// Runs an op.
pub fn dispatch(ctx: &Ctx, caller: &Caller, op: &str, req: ReqGrid) -> OpResult {
    match op {
        "about" => about(ctx, caller),
        "close" => {
            if let Some(t) = &caller.token {
                ctx.auth.close(t);
            }
            Ok(Grid::empty())
        }
        "ops" => Ok(Grid::with_cols(
            Dict::new(),
            &["name", "summary"],
            OPS.iter()
                .map(|o| {
                    mk(vec![
                        ("name", HVal::make_str(o.name)),
                        ("summary", HVal::make_str(o.summary)),
                    ])
                })
                .collect(),
        )),
        "formats" => Ok(Grid::with_cols(
            Dict::new(),
            &["mime", "receive", "send"],
            [
                ("text/zinc", true),
                ("application/json", true),
                ("application/json; version=3", false),
                ("text/csv", false),
            ]
            .iter()
            .map(|(m, recv)| {
                let mut d = mk(vec![("mime", HVal::make_str(m)), ("send", HVal::Marker)]);
                if *recv {
                    d.insert("receive".into(), HVal::Marker);
                }
                d
            })
            .collect(),
        )),
        "filetypes" => Ok(Grid::with_cols(
            Dict::new(),
            &["def", "mime", "receive", "send"],
            [
                ("zinc", "text/zinc", true),
                ("json", "application/json", true),
                ("csv", "text/csv", false),
            ]
            .iter()
            .map(|(n, m, recv)| {
                // `def` is a Str, not a Symbol: Zinc 3.0 readers such as
                // hszinc cannot parse `^filetype:zinc`.
                let mut d = mk(vec![
                    ("def", HVal::make_str(&format!("filetype:{n}"))),
                    ("mime", HVal::make_str(m)),
                    ("send", HVal::Marker),
                ]);
                if *recv {
                    d.insert("receive".into(), HVal::Marker);
                }
                d
            })
            .collect(),
        )),
        "read" => read(ctx, req),
        "nav" => nav(ctx, req),
        "watchSub" => watch_sub(ctx, caller, req),
        "watchUnsub" => watch_unsub(ctx, caller, req),
        "watchPoll" => watch_poll(ctx, caller, req),
        "pointWrite" => point_write(ctx, caller, req),
        "hisRead" => his_read(ctx, req),
        "invokeAction" => invoke_action(ctx, caller, req),
        _ => Err(OpError::Grid(format!("unknown op {op}"))),
    }
}

fn about(ctx: &Ctx, caller: &Caller) -> OpResult {
    let mut d = mk(vec![
        ("haystackVersion", HVal::make_str("4.0")),
        ("tz", HVal::make_str(&ctx.db.site().tz)),
        ("serverName", HVal::make_str(&ctx.settings.server_name)),
        ("serverTime", now_dt()),
        ("serverBootTime", HVal::from(ctx.boot)),
        ("productName", HVal::make_str("castpoint")),
        (
            "productUri",
            HVal::make_uri("https://github.com/castpoint/castpoint"),
        ),
        ("productVersion", HVal::make_str(env!("CARGO_PKG_VERSION"))),
        ("moduleName", HVal::make_str("castpoint-haystack")),
        ("moduleVersion", HVal::make_str(env!("CARGO_PKG_VERSION"))),
        ("vendorName", HVal::make_str("castpoint")),
        (
            "vendorUri",
            HVal::make_uri("https://github.com/castpoint/castpoint"),
        ),
    ]);
    if let Some(u) = &caller.user {
        d.insert("userName".into(), HVal::make_str(u));
    }
    Ok(Grid::from_rows(Dict::new(), vec![d]))
}

/// A record id from a request value (`@id`, or a string `"@id"` / `"id"`).
fn ref_id(v: &HVal) -> Option<String> {
    match v {
        HVal::Ref(r) => Some(r.value().to_string()),
        HVal::Str(s) => Some(s.trim_start_matches('@').to_string()),
        _ => None,
    }
}

fn str_of(v: Option<&HVal>) -> Option<String> {
    match v? {
        HVal::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

fn read(ctx: &Ctx, req: ReqGrid) -> OpResult {
    let Some(first) = req.rows.first() else {
        return Err("read needs a filter or an id column".into());
    };
    if let Some(fv) = first.get("filter") {
        let HVal::Str(fs) = fv else {
            return Err("filter must be a Str".into());
        };
        let limit = match first.get("limit") {
            Some(HVal::Number(n)) if n.value >= 1.0 => n.value.min(1e9) as usize,
            Some(HVal::Number(_)) => return Err("limit must be >= 1".into()),
            None | Some(HVal::Null) => usize::MAX,
            Some(_) => return Err("limit must be a Number".into()),
        };
        let f = parse_filter(fs)?;
        let rows = ctx.records.filter(&ctx.db, &f, limit);
        return Ok(Grid::from_rows(Dict::new(), rows));
    }
    if first.contains_key("id") {
        // One response row per requested id, in order; unknown ids give an
        // empty row, as the spec asks.
        let mut rows = Vec::with_capacity(req.rows.len());
        for r in &req.rows {
            let d = r
                .get("id")
                .and_then(ref_id)
                .and_then(|id| ctx.records.key(&id))
                .and_then(|k| ctx.records.dict(&ctx.db, k))
                .unwrap_or_default();
            rows.push(d);
        }
        let mut g = Grid::from_rows(Dict::new(), rows);
        if g.cols.is_empty() {
            g.cols.push(Col {
                name: "id".into(),
                meta: None,
            });
        }
        return Ok(g);
    }
    Err("read needs a filter or an id column".into())
}

/// Filters are parsed with the other untrusted text, in `encoding` (where
/// the fuzz targets reach it).
pub use super::encoding::parse_filter;

fn nav(ctx: &Ctx, req: ReqGrid) -> OpResult {
    let nav_id = req
        .rows
        .first()
        .and_then(|r| r.get("navId"))
        .and_then(ref_id);
    let recs = &ctx.records;
    let with_nav = |mut d: Dict, id: &str| {
        d.insert("navId".into(), HVal::make_ref(id));
        d
    };
    let rows = match nav_id.as_deref().map(|i| recs.key(i)) {
        None => recs
            .dict(&ctx.db, RecKey::Site)
            .map(|d| vec![with_nav(d, recs.site_id())])
            .unwrap_or_default(),
        Some(Some(RecKey::Site)) => recs
            .dict(&ctx.db, RecKey::Equip)
            .map(|d| vec![with_nav(d, recs.equip_id())])
            .unwrap_or_default(),
        // The server equip: its points, then one route equip per route
        // (issue 20: site -> server equip -> route equips -> points).
        Some(Some(RecKey::Equip)) => {
            let mut rows: Vec<Dict> = ctx
                .db
                .ids()
                .filter_map(|p| recs.dict(&ctx.db, RecKey::Point(p)))
                .collect();
            for (slot, _) in ctx.db.blocks() {
                if let Some(d) = recs.dict(&ctx.db, RecKey::RouteEquip(slot)) {
                    rows.push(with_nav(d, &super::records::route_equip_id(slot)));
                }
            }
            rows
        }
        Some(Some(RecKey::RouteEquip(slot))) => ctx
            .db
            .block_ids(slot)
            .into_iter()
            .filter_map(|p| recs.dict(&ctx.db, RecKey::Point(p)))
            .collect(),
        Some(Some(RecKey::Point(_))) => Vec::new(),
        Some(None) => return Err(format!("unknown navId {}", nav_id.unwrap_or_default()).into()),
    };
    Ok(Grid::from_rows(Dict::new(), rows))
}

fn lease_of(v: Option<&HVal>) -> Result<Option<Duration>, String> {
    match v {
        None | Some(HVal::Null) => Ok(None),
        Some(HVal::Number(n)) => {
            if !n.value.is_finite() || n.value <= 0.0 {
                return Err("lease must be a positive duration".into());
            }
            let secs = match n.unit.map(|u| u.symbol()) {
                None | Some("s") | Some("sec") => n.value,
                Some("ms") => n.value / 1000.0,
                Some("min") => n.value * 60.0,
                Some("h") | Some("hr") => n.value * 3600.0,
                Some(u) => return Err(format!("lease unit {u} is not a duration")),
            };
            Ok(Some(Duration::from_secs_f64(secs.min(1e9))))
        }
        Some(_) => Err("lease must be a Number (e.g. 1min)".into()),
    }
}

fn rec_keys(ctx: &Ctx, req: &ReqGrid) -> (Vec<RecKey>, Vec<Option<RecKey>>) {
    let mut keys = Vec::new();
    let mut per_row = Vec::new();
    for r in &req.rows {
        let k = r
            .get("id")
            .and_then(ref_id)
            .and_then(|id| ctx.records.key(&id));
        if let Some(k) = k {
            keys.push(k);
        }
        per_row.push(k);
    }
    (keys, per_row)
}

fn watch_meta(id: &str, lease: Duration) -> Dict {
    mk(vec![
        ("watchId", HVal::make_str(id)),
        (
            "lease",
            HVal::Number(libhaystack::val::Number::make_with_unit(
                lease.as_secs_f64(),
                super::records::unit("s").unwrap_or(&libhaystack::units::DEFAULT_UNIT),
            )),
        ),
    ])
}

fn watch_sub(ctx: &Ctx, caller: &Caller, req: ReqGrid) -> OpResult {
    let watch_id = str_of(req.meta.get("watchId"));
    let dis = str_of(req.meta.get("watchDis"));
    if watch_id.is_none() && dis.is_none() {
        return Err("watchSub needs watchDis (new watch) or watchId (existing watch)".into());
    }
    let lease = lease_of(req.meta.get("lease"))?;
    let (keys, per_row) = rec_keys(ctx, &req);
    let (id, lease) = ctx.watches.subscribe(
        &ctx.db,
        &caller.owner(),
        watch_id.as_deref(),
        dis.as_deref(),
        lease,
        &keys,
    )?;
    let rows = per_row
        .into_iter()
        .map(|k| {
            k.and_then(|k| ctx.records.dict(&ctx.db, k))
                .unwrap_or_default()
        })
        .collect();
    let mut g = Grid::from_rows(watch_meta(&id, lease), rows);
    if g.cols.is_empty() {
        g.cols.push(Col {
            name: "id".into(),
            meta: None,
        });
    }
    Ok(g)
}

fn watch_unsub(ctx: &Ctx, caller: &Caller, req: ReqGrid) -> OpResult {
    let Some(id) = str_of(req.meta.get("watchId")) else {
        return Err("watchUnsub needs watchId".into());
    };
    let close = req.meta.contains_key("close") || req.rows.is_empty();
    let (keys, _) = rec_keys(ctx, &req);
    ctx.watches
        .unsubscribe(&caller.owner(), &id, close, &keys)?;
    Ok(Grid::empty())
}

fn watch_poll(ctx: &Ctx, caller: &Caller, req: ReqGrid) -> OpResult {
    let id = str_of(req.meta.get("watchId"))
        .or_else(|| str_of(req.rows.first().and_then(|r| r.get("watchId"))));
    let Some(id) = id else {
        return Err("watchPoll needs watchId".into());
    };
    let refresh = req.meta.contains_key("refresh")
        || req.rows.first().is_some_and(|r| r.contains_key("refresh"));
    let (keys, lease) = ctx.watches.poll(&ctx.db, &caller.owner(), &id, refresh)?;
    let rows = keys
        .into_iter()
        .filter_map(|k| {
            ctx.records.dict(&ctx.db, k).or_else(|| match k {
                // A point of a deleted route (its slot freed): reported
                // once as removed (id + `removed` marker), issue 20.
                RecKey::Point(p) => ctx.db.def(p).map(|d| {
                    let mut row = Dict::new();
                    row.insert("id".into(), HVal::make_ref(&d.id));
                    row.insert("removed".into(), HVal::Marker);
                    row
                }),
                _ => None,
            })
        })
        .collect();
    let mut g = Grid::from_rows(watch_meta(&id, lease), rows);
    if g.cols.is_empty() {
        g.cols.push(Col {
            name: "id".into(),
            meta: None,
        });
    }
    Ok(g)
}

fn require_writer(caller: &Caller) -> Result<(), OpError> {
    match caller.role {
        None => Err(OpError::Unauthenticated),
        Some(r) if r.can_write() => Ok(()),
        Some(r) => Err(OpError::Grid(format!(
            "permission denied: user {} has role {}, writes need operator or admin",
            caller.user.as_deref().unwrap_or("?"),
            r.as_str()
        ))),
    }
}

/// BACnet-style names of the well-known priority levels.
fn level_dis(level: u8) -> String {
    match level {
        1 => "1 Manual Life Safety".into(),
        2 => "2 Automatic Life Safety".into(),
        5 => "5 Critical Equipment Control".into(),
        6 => "6 Minimum On/Off".into(),
        8 => "8 Manual Operator".into(),
        17 => "17 Default".into(),
        n => n.to_string(),
    }
}

fn point_write(ctx: &Ctx, caller: &Caller, req: ReqGrid) -> OpResult {
    let Some(row) = req.rows.first() else {
        return Err("pointWrite needs a row with id".into());
    };
    let Some(id) = row.get("id").and_then(ref_id) else {
        return Err("pointWrite needs an id".into());
    };
    let Some(RecKey::Point(pid)) = ctx.records.key(&id) else {
        return Err(format!("unknown point @{id}").into());
    };
    let def = super::records::live_def(&ctx.db, pid).ok_or("unknown point")?;
    let def = &*def;
    match row.get("level") {
        None | Some(HVal::Null) => {
            // Read back the priority array: 17 rows.
            let pa = ctx
                .db
                .priority_array(pid)
                .ok_or_else(|| format!("@{id} is not writable"))?;
            let mut rows = Vec::with_capacity(PRIORITY_LEVELS + 1);
            for (i, slot) in pa.slots.iter().enumerate() {
                let level = (i + 1) as u8;
                let mut d = mk(vec![
                    ("level", HVal::make_number(f64::from(level))),
                    ("levelDis", HVal::make_str(&level_dis(level))),
                ]);
                if let Some(s) = slot {
                    d.insert("val".into(), to_hval(def, s.value));
                    d.insert("who".into(), HVal::make_str(&s.who.describe()));
                }
                rows.push(d);
            }
            rows.push(mk(vec![
                ("level", HVal::make_number(f64::from(DEFAULT_LEVEL))),
                ("levelDis", HVal::make_str(&level_dis(DEFAULT_LEVEL))),
                ("val", to_hval(def, pa.default)),
                ("who", HVal::make_str("relinquish default")),
            ]));
            Ok(Grid::with_cols(
                Dict::new(),
                &["level", "levelDis", "val", "who"],
                rows,
            ))
        }
        Some(lv) => {
            let src = Source::new(Protocol::Haystack, Some(caller.peer), caller.user.clone());
            match checked_write(def, caller, &id, lv, row.get("duration"), row.get("val")) {
                Ok((level, val)) => {
                    ctx.db
                        .write(pid, val, level, &src)
                        .map_err(|e| write_err(e, &id))?;
                    Ok(Grid::empty())
                }
                // Refused before the point database saw it: audited here,
                // like the database's own refusals.
                Err((why, level, answer)) => {
                    ctx.db.audit_refused(pid, level, &src, why);
                    Err(answer)
                }
            }
        }
    }
}

/// The checks of a pointWrite that come before `PointDb::write`: the
/// caller's role, the level, no timed override, a value of the point's
/// kind. A refusal carries what the audit records and the level asked for.
fn checked_write(
    def: &crate::points::PointDef,
    caller: &Caller,
    id: &str,
    level: &HVal,
    duration: Option<&HVal>,
    val: Option<&HVal>,
) -> Result<(u8, Option<crate::points::Value>), (WriteError, u8, OpError)> {
    let HVal::Number(n) = level else {
        return Err((
            WriteError::InvalidPriority,
            0,
            "level must be a Number".into(),
        ));
    };
    let asked = if (1.0..=17.0).contains(&n.value) {
        n.value as u8
    } else {
        0
    };
    require_writer(caller).map_err(|e| (WriteError::Denied, asked, e))?;
    if n.value.fract() != 0.0 || asked == 0 {
        return Err((
            WriteError::InvalidPriority,
            asked,
            "level must be an integer 1..17".into(),
        ));
    }
    if duration.is_some_and(|d| !d.is_null()) {
        return Err((WriteError::TypeMismatch, asked, "timed overrides (duration) are not supported; write without duration and relinquish later".into()));
    }
    let val = match val {
        None | Some(HVal::Null) => None,
        Some(v) => Some(from_hval(def, v).map_err(|e| {
            (
                WriteError::TypeMismatch,
                asked,
                format!("@{id}: {e}").into(),
            )
        })?),
    };
    Ok((asked, val))
}

fn write_err(e: WriteError, id: &str) -> OpError {
    OpError::Grid(format!("@{id}: {e}"))
}

fn invoke_action(ctx: &Ctx, caller: &Caller, req: ReqGrid) -> OpResult {
    let Some(id) = req.meta.get("id").and_then(ref_id) else {
        return Err("invokeAction needs id in the grid meta".into());
    };
    let Some(action) = str_of(req.meta.get("action")) else {
        return Err("invokeAction needs action in the grid meta".into());
    };
    let key = ctx
        .records
        .key(&id)
        .ok_or_else(|| format!("unknown record @{id}"))?;
    let restart_point = ctx.db.lookup("system_restart");
    let is_target = match key {
        RecKey::Equip => true,
        RecKey::Point(p) => Some(p) == restart_point,
        RecKey::Site | RecKey::RouteEquip(_) => false,
    };
    if action != "restart" || !is_target {
        return Err(format!(
            "no action {action:?} on @{id} (the equip and system_restart have \"restart\")"
        )
        .into());
    }
    require_writer(caller)?;
    let pid = restart_point.ok_or("this point list has no system_restart point")?;
    let src = Source::new(Protocol::Haystack, Some(caller.peer), caller.user.clone());
    ctx.db
        .write(
            pid,
            Some(crate::points::Value::Bool(true)),
            ctx.settings.action_level,
            &src,
        )
        .map_err(|e| write_err(e, "system_restart"))?;
    Ok(Grid::from_rows(
        Dict::new(),
        vec![mk(vec![
            ("ok", HVal::Marker),
            ("dis", HVal::make_str("restart requested")),
            (
                "level",
                HVal::make_number(f64::from(ctx.settings.action_level)),
            ),
        ])],
    ))
}

/// Parses a hisRead range into `[from, to)` (UTC; dates are midnights in UTC).
pub fn parse_range(v: &HVal, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let day = |d: NaiveDate| -> Result<DateTime<Utc>, String> {
        d.and_hms_opt(0, 0, 0)
            .map(|n| Utc.from_utc_datetime(&n))
            .ok_or_else(|| "invalid date".to_string())
    };
    let next = |d: NaiveDate| d.succ_opt().ok_or_else(|| "date out of range".to_string());
    let s = match v {
        HVal::Str(s) => s.trim().to_string(),
        HVal::Date(d) => {
            let d: NaiveDate = **d;
            return Ok((day(d)?, day(next(d)?)?));
        }
        HVal::DateTime(dt) => return Ok((dt.naive_utc().and_utc(), DateTime::<Utc>::MAX_UTC)),
        _ => return Err("range must be a Str".into()),
    };
    let today = now.date_naive();
    match s.as_str() {
        "today" => return Ok((day(today)?, day(next(today)?)?)),
        "yesterday" => {
            let y = today.pred_opt().ok_or("date out of range")?;
            return Ok((day(y)?, day(today)?));
        }
        _ => {}
    }
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let one = |p: &str| -> Result<Bound, String> {
        if let Ok(d) = NaiveDate::parse_from_str(p, "%Y-%m-%d") {
            return Ok(Bound::Date(d));
        }
        // `2024-01-01T00:00:00-05:00 New_York`: the offset carries the
        // instant; the zone name is for display.
        let iso = p.split_whitespace().next().unwrap_or("");
        DateTime::parse_from_rfc3339(iso)
            .map(|d| Bound::At(d.with_timezone(&Utc)))
            .map_err(|_| format!("invalid range {s:?}: expected today, yesterday, a date, date,date or dateTime,dateTime"))
    };
    match parts.as_slice() {
        [a] => match one(a)? {
            Bound::Date(d) => Ok((day(d)?, day(next(d)?)?)),
            Bound::At(t) => Ok((t, DateTime::<Utc>::MAX_UTC)),
        },
        [a, b] => {
            let from = match one(a)? {
                Bound::Date(d) => day(d)?,
                Bound::At(t) => t,
            };
            let to = match one(b)? {
                Bound::Date(d) => day(next(d)?)?,
                Bound::At(t) => t,
            };
            if to <= from {
                return Err(format!("invalid range {s:?}: end must be after start"));
            }
            Ok((from, to))
        }
        _ => Err(format!("invalid range {s:?}")),
    }
}

enum Bound {
    Date(NaiveDate),
    At(DateTime<Utc>),
}

/// Most samples one hisRead returns, so a huge range cannot build an
/// unbounded response.
const MAX_HIS_ROWS: usize = 500_000;

fn his_read(ctx: &Ctx, req: ReqGrid) -> OpResult {
    let first = req.rows.first().ok_or("hisRead needs id and range")?;
    let range = req
        .meta
        .get("range")
        .or_else(|| first.get("range"))
        .ok_or("hisRead needs a range")?;
    let (from, to) = parse_range(range, Utc::now())?;
    let mut pids = Vec::new();
    for r in &req.rows {
        let id = r
            .get("id")
            .and_then(ref_id)
            .ok_or("hisRead needs an id per row")?;
        match ctx.records.key(&id) {
            Some(RecKey::Point(p)) if ctx.db.def(p).is_some_and(|d| d.his) => pids.push((id, p)),
            Some(RecKey::Point(_)) => return Err(format!("@{id} has no history (not his)").into()),
            _ => return Err(format!("unknown point @{id}").into()),
        }
    }
    let start = HVal::from(from);
    let end = HVal::from(to.min(Utc::now().max(from)));
    if let [(id, pid)] = pids.as_slice() {
        let def = ctx.db.def(*pid).ok_or("unknown point")?;
        let samples = ctx.db.history(*pid, from, to);
        if samples.len() > MAX_HIS_ROWS {
            return Err(format!(
                "range holds {} samples; ask for at most {MAX_HIS_ROWS}",
                samples.len()
            )
            .into());
        }
        let rows = samples
            .iter()
            .map(|s| {
                mk(vec![
                    ("ts", HVal::from(s.at)),
                    ("val", to_hval(def, s.value)),
                ])
            })
            .collect();
        let meta = mk(vec![
            ("id", HVal::make_ref_with_dis(id, &def.name)),
            ("hisStart", start),
            ("hisEnd", end),
        ]);
        return Ok(Grid::with_cols(meta, &["ts", "val"], rows));
    }
    // Several points: one ts column and v0..vN, rows merged by timestamp.
    let mut series = Vec::new();
    let mut total = 0usize;
    for (_, pid) in &pids {
        let s = ctx.db.history(*pid, from, to);
        total += s.len();
        series.push(s);
    }
    if total > MAX_HIS_ROWS {
        return Err(format!("range holds {total} samples; ask for at most {MAX_HIS_ROWS}").into());
    }
    let mut rows: std::collections::BTreeMap<DateTime<Utc>, Dict> = Default::default();
    for (i, ((_, pid), s)) in pids.iter().zip(&series).enumerate() {
        let def = ctx.db.def(*pid).ok_or("unknown point")?;
        for smp in s {
            rows.entry(smp.at)
                .or_insert_with(|| mk(vec![("ts", HVal::from(smp.at))]))
                .insert(format!("v{i}"), to_hval(def, smp.value));
        }
    }
    let mut cols = vec![Col {
        name: "ts".into(),
        meta: None,
    }];
    for (i, (id, pid)) in pids.iter().enumerate() {
        let dis = ctx.db.def(*pid).map(|d| d.name.as_str()).unwrap_or("");
        cols.push(Col {
            name: format!("v{i}"),
            meta: Some(mk(vec![("id", HVal::make_ref_with_dis(id, dis))])),
        });
    }
    Ok(Grid {
        meta: mk(vec![("hisStart", start), ("hisEnd", end)]),
        cols,
        rows: rows.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let now = Utc
            .with_ymd_and_hms(2024, 3, 10, 12, 0, 0)
            .single()
            .expect("time");
        let r = |s: &str| parse_range(&HVal::make_str(s), now);
        let d = |y, m, dd| Utc.with_ymd_and_hms(y, m, dd, 0, 0, 0).single().expect("d");
        assert_eq!(r("today").expect("t"), (d(2024, 3, 10), d(2024, 3, 11)));
        assert_eq!(r("yesterday").expect("y"), (d(2024, 3, 9), d(2024, 3, 10)));
        assert_eq!(r("2024-01-05").expect("d"), (d(2024, 1, 5), d(2024, 1, 6)));
        assert_eq!(
            r("2024-01-05,2024-01-06").expect("dd"),
            (d(2024, 1, 5), d(2024, 1, 7))
        );
        let (a, b) =
            r("2024-01-05T10:00:00-05:00 New_York,2024-01-05T11:00:00-05:00 New_York").expect("dt");
        assert_eq!(
            a,
            Utc.with_ymd_and_hms(2024, 1, 5, 15, 0, 0)
                .single()
                .expect("a")
        );
        assert_eq!(
            b,
            Utc.with_ymd_and_hms(2024, 1, 5, 16, 0, 0)
                .single()
                .expect("b")
        );
        assert!(r("2024-13-01").is_err());
        assert!(r("2024-01-06,2024-01-05").is_err());
        assert!(r("soon").is_err());
    }

    #[test]
    fn filters_parse_or_error() {
        assert!(parse_filter("point and his and curVal > 10%").is_ok());
        assert!(parse_filter("equipRef->siteRef->dis == \"x\"").is_ok());
        assert!(parse_filter("point and (").is_err());
        assert!(parse_filter("").is_err());
        // libhaystack's filter parser recurses per parenthesis: deep input
        // is refused before it, at 100,000 as at 65.
        for n in [65, 4000, 100_000] {
            let e = parse_filter(&format!("{}a", "(".repeat(n))).expect_err("deep");
            assert!(e.contains("nesting") || e.contains("longer"), "{e}");
        }
        let e = parse_filter(&"(".repeat(4000)).expect_err("deep");
        assert!(e.contains("nesting deeper than 64"), "{e}");
        let ok = format!("{}point{}", "(".repeat(64), ")".repeat(64));
        assert!(parse_filter(&ok).is_ok());
    }
}
