//! Haystack records over the point database: the site, the streaming-server equip and one point record per point, with live `curVal` / `curStatus`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use libhaystack::filter::eval::EvalContext;
use libhaystack::filter::nodes::{CmpOp, Or, Term};
use libhaystack::filter::path::Path;
use libhaystack::filter::{Eval, Filter, PathResolver};
use libhaystack::units::Unit;
use libhaystack::val::{Dict, Number, Ref, Value as HVal};

use crate::points::{
    Kind, Maps, PointDb, PointDef, PointId, PointState, Quality, Role, SiteEquip, TagValue, Value,
};

/// Which record an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecKey {
    Site,
    Equip,
    /// The equip of the route owning this slot (issue 20).
    RouteEquip(u16),
    Point(PointId),
}

/// The static part of every record, built once; live tags are added per read.
pub struct Records {
    /// Route blocks come and go: presence is checked per lookup.
    db: PointDb,
    site: Dict,
    equip: Dict,
    points: Vec<Dict>,
    by_id: HashMap<String, RecKey>,
    site_id: String,
    equip_id: String,
    /// The alarm runtime, when alarms run: its state is part of the point
    /// records (docs/haystack.md, "Alarms").
    alarms: OnceLock<crate::alarms::Alarms>,
}

/// The `&'static Unit` for a unit symbol: from the Haystack unit database, or
/// a custom unit (`_Gbps`) registered once per process. libhaystack numbers
/// hold `&'static Unit`, and the set of custom units is bounded by the
/// config, so leaking one small struct per distinct custom unit is the
/// simplest sound way to carry them.
pub fn unit(symbol: &str) -> Option<&'static Unit> {
    if let Some(u) = libhaystack::units::get_unit(symbol) {
        return Some(u);
    }
    static CUSTOM: OnceLock<Mutex<HashMap<String, &'static Unit>>> = OnceLock::new();
    let m = CUSTOM.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(u) = m.get(symbol) {
        return Some(u);
    }
    let u: &'static Unit = Box::leak(Box::new(Unit {
        quantity: None,
        ids: std::borrow::Cow::Owned(vec![std::borrow::Cow::Owned(symbol.to_string())]),
        dimensions: None,
        scale: 1.0,
        offset: 0.0,
    }));
    m.insert(symbol.to_string(), u);
    Some(u)
}

/// A point's definition with its live state names: a route's input
/// states carry the route's own input names (issue 20), so values read and
/// written by name use them.
pub fn live_def(db: &PointDb, pid: PointId) -> Option<std::borrow::Cow<'_, PointDef>> {
    let def = db.def(pid)?;
    if def.kind == Kind::Enum && db.route_point(pid).is_some() {
        let names = db.state_names(pid);
        if names != def.states {
            let mut d = def.clone();
            d.states = names;
            return Some(std::borrow::Cow::Owned(d));
        }
    }
    Some(std::borrow::Cow::Borrowed(def))
}

/// The Haystack id of the equip of route slot `slot`.
pub fn route_equip_id(slot: u16) -> String {
    format!("route.{slot}")
}

fn tag_hval(v: &TagValue) -> HVal {
    match v {
        TagValue::Marker => HVal::Marker,
        TagValue::Str(s) => HVal::make_str(s),
        TagValue::Number(n) => HVal::make_number(*n),
        TagValue::Bool(b) => HVal::make_bool(*b),
    }
}

/// A point value as a Haystack value: numbers with the point's unit, enums
/// as their state name (Haystack enum points carry Str values).
pub fn to_hval(def: &PointDef, v: Value) -> HVal {
    match v {
        Value::Number(n) => match def.unit.as_deref().and_then(unit) {
            Some(u) => HVal::Number(Number::make_with_unit(n, u)),
            None => HVal::make_number(n),
        },
        Value::Bool(b) => HVal::make_bool(b),
        Value::Enum(e) => match def.state_name(e) {
            Some(s) => HVal::make_str(s),
            None => HVal::make_number(f64::from(e)),
        },
    }
}

/// Haystack value to a point value for writes; `Err` says why not.
pub fn from_hval(def: &PointDef, v: &HVal) -> Result<Value, String> {
    match (def.kind, v) {
        (Kind::Number, HVal::Number(n)) => {
            if let (Some(u), Some(want)) = (n.unit, def.unit.as_deref()) {
                if u.symbol() != want && !u.ids.iter().any(|i| i == want) {
                    return Err(format!(
                        "unit {} does not match the point's unit {want}",
                        u.symbol()
                    ));
                }
            }
            Ok(Value::Number(n.value))
        }
        (Kind::Bool, HVal::Bool(b)) => Ok(Value::Bool(b.value)),
        (Kind::Bool, HVal::Number(n)) => Ok(Value::Number(n.value)),
        (Kind::Enum, HVal::Str(s)) => def
            .state_ordinal(s)
            .map(Value::Enum)
            .ok_or_else(|| format!("{:?} is not one of {}", &**s, def.states.join(","))),
        (Kind::Enum, HVal::Number(n)) => Ok(Value::Number(n.value)),
        (k, _) => Err(format!("expected a {} value", hkind(k))),
    }
}

/// Haystack `kind` tag of a point kind.
pub fn hkind(k: Kind) -> &'static str {
    match k {
        Kind::Number => "Number",
        Kind::Bool => "Bool",
        Kind::Enum => "Str",
    }
}

/// Haystack `curStatus` of a quality. An overridden command is still a
/// good value (the override shows in `writeLevel`); a point with no source
/// is `unknown`, with the reason in `curErr`.
pub fn cur_status(q: Quality) -> &'static str {
    match q {
        Quality::Ok | Quality::Overridden => "ok",
        Quality::Stale => "stale",
        Quality::Fault => "fault",
        Quality::Unavailable => "unknown",
    }
}

fn mk(pairs: Vec<(&str, HVal)>) -> Dict {
    let mut d = Dict::new();
    for (k, v) in pairs {
        d.insert(k.to_string(), v);
    }
    d
}

/// The site record and the streaming-server equip record.
fn site_and_equip(se: &SiteEquip, site_ref: &HVal, equip_ref: &HVal) -> (Dict, Dict) {
    let site = mk(vec![
        ("id", site_ref.clone()),
        ("dis", HVal::make_str(&se.site_dis)),
        ("navName", HVal::make_str(&se.site_dis)),
        ("site", HVal::Marker),
        ("tz", HVal::make_str(&se.tz)),
    ]);
    let equip = mk(vec![
        ("id", equip_ref.clone()),
        ("dis", HVal::make_str(&se.equip_dis)),
        ("navName", HVal::make_str(&se.equip_dis)),
        ("equip", HVal::Marker),
        ("siteRef", site_ref.clone()),
        ("videoStreamingServer", HVal::Marker),
        ("tz", HVal::make_str(&se.tz)),
    ]);
    (site, equip)
}

/// A point record's tags from its definition: the point file's own tags,
/// then the function marker, unit, states, his, writable and limits.
fn def_tags(d: &mut Dict, def: &PointDef) {
    for (k, v) in &def.tags {
        let hv = match v {
            TagValue::Marker => HVal::Marker,
            TagValue::Str(s) => HVal::make_str(s),
            TagValue::Number(n) => HVal::make_number(*n),
            TagValue::Bool(b) => HVal::make_bool(*b),
        };
        d.insert(k.clone(), hv);
    }
    // Function marker: measurements and statuses are read-only
    // sensors; writable analog set-points are `sp` (the point file
    // says so with an `sp` tag), other commands `cmd`.
    match def.role {
        Role::Measurement | Role::Status => {
            d.insert("sensor".into(), HVal::Marker);
        }
        Role::Command => {
            if !d.contains_key("sp") {
                d.insert("cmd".into(), HVal::Marker);
            }
        }
    }
    if let Some(u) = def.unit.as_deref().and_then(unit) {
        d.insert("unit".into(), HVal::make_str(u.symbol()));
    }
    if def.kind == Kind::Enum {
        d.insert("enum".into(), HVal::make_str(&def.states.join(",")));
    }
    if def.his {
        d.insert("his".into(), HVal::Marker);
    }
    if def.writable {
        d.insert("writable".into(), HVal::Marker);
    }
    if def.kind == Kind::Number {
        if let Some(m) = def.min {
            d.insert("minVal".into(), to_hval(def, Value::Number(m)));
        }
        if let Some(m) = def.max {
            d.insert("maxVal".into(), to_hval(def, Value::Number(m)));
        }
    }
}

/// Where the point sits on the other protocols: BACnet object, Modbus
/// registers and the first HTTP path.
fn address_tags(d: &mut Dict, def: &PointDef, pid: PointId, maps: &Maps) {
    if let Some(a) = maps.bacnet_address(pid) {
        d.insert("bacnetCur".into(), HVal::make_str(&a));
        if def.writable {
            d.insert("bacnetWrite".into(), HVal::make_str(&a));
        }
    }
    let mb = maps.modbus_addresses(pid);
    if !mb.is_empty() {
        d.insert("modbusAddr".into(), HVal::make_str(&mb.join(",")));
    }
    if let Some((_, path)) = maps.http_paths(pid).into_iter().next() {
        d.insert("httpUri".into(), HVal::make_uri(&path));
    }
}

impl Records {
    pub fn build(db: &PointDb, maps: &Maps) -> Records {
        let se = db.site();
        let site_ref = HVal::make_ref_with_dis(&se.site_id, &se.site_dis);
        let equip_ref = HVal::make_ref_with_dis(&se.equip_id, &se.equip_dis);
        let (site, equip) = site_and_equip(se, &site_ref, &equip_ref);
        let mut by_id = HashMap::new();
        let mut points = Vec::with_capacity(db.len());
        // Every point, reserved route blocks included (ids never move; a
        // block's records are served while a route owns its slot).
        for pid in db.all_ids() {
            let Some(def) = db.def(pid) else { continue };
            let equip_ref = match db.route_point(pid) {
                Some(rp) => HVal::make_ref(&route_equip_id(rp.slot)),
                None => equip_ref.clone(),
            };
            let mut d = mk(vec![
                ("id", HVal::make_ref_with_dis(&def.id, &def.name)),
                ("dis", HVal::make_str(&def.name)),
                ("navName", HVal::make_str(&def.name)),
                ("point", HVal::Marker),
                ("kind", HVal::make_str(hkind(def.kind))),
                ("equipRef", equip_ref),
                ("siteRef", site_ref.clone()),
                ("tz", HVal::make_str(&se.tz)),
                ("castpointId", HVal::make_str(&def.id)),
                ("description", HVal::make_str(&def.description)),
            ]);
            def_tags(&mut d, def);
            address_tags(&mut d, def, pid, maps);
            by_id.insert(def.id.clone(), RecKey::Point(pid));
            points.push(d);
        }
        // Site and equip ids win over a point of the same name (config
        // validation keeps point ids unique among themselves only).
        by_id.insert(se.site_id.clone(), RecKey::Site);
        by_id.insert(se.equip_id.clone(), RecKey::Equip);
        if let Some(t) = db.route_template() {
            for slot in 1..=t.max_slots {
                by_id.insert(route_equip_id(slot), RecKey::RouteEquip(slot));
            }
        }
        Records {
            db: db.clone(),
            site,
            equip,
            points,
            by_id,
            site_id: se.site_id.clone(),
            equip_id: se.equip_id.clone(),
            alarms: OnceLock::new(),
        }
    }

    /// Shows the alarm runtime's state in the point records (once, at
    /// start-up).
    pub fn set_alarms(&self, a: crate::alarms::Alarms) {
        let _ = self.alarms.set(a);
    }

    pub fn alarms(&self) -> Option<&crate::alarms::Alarms> {
        self.alarms.get()
    }

    pub fn site_id(&self) -> &str {
        &self.site_id
    }

    pub fn equip_id(&self) -> &str {
        &self.equip_id
    }

    /// The record an id names, if it is served now (a free route slot's
    /// equip and points are not).
    pub fn key(&self, id: &str) -> Option<RecKey> {
        let k = self.by_id.get(id).copied()?;
        match k {
            RecKey::Point(p) if !self.db.is_present(p) => None,
            RecKey::RouteEquip(s) if !self.db.slot_present(s) => None,
            k => Some(k),
        }
    }

    /// Every record id in a stable order: site, equip, the server's
    /// points, then per route (by slot) its equip and its points.
    pub fn keys(&self, db: &PointDb) -> Vec<RecKey> {
        let mut v = vec![RecKey::Site, RecKey::Equip];
        v.extend(db.ids().map(RecKey::Point));
        for (slot, _) in db.blocks() {
            v.push(RecKey::RouteEquip(slot));
            v.extend(db.block_ids(slot).into_iter().map(RecKey::Point));
        }
        v
    }

    /// The live record for a key.
    pub fn dict(&self, db: &PointDb, key: RecKey) -> Option<Dict> {
        match key {
            RecKey::Site => Some(self.site.clone()),
            RecKey::Equip => Some(self.equip.clone()),
            RecKey::RouteEquip(slot) => {
                let info = db.block(slot)?;
                let se = db.site();
                let mut d = mk(vec![
                    (
                        "id",
                        HVal::make_ref_with_dis(&route_equip_id(slot), &info.route),
                    ),
                    ("dis", HVal::make_str(&info.route)),
                    ("navName", HVal::make_str(&info.route)),
                    ("equip", HVal::Marker),
                    (
                        "siteRef",
                        self.site.get("id").cloned().unwrap_or(HVal::Null),
                    ),
                    // Haystack 4: a sub-equip references its parent.
                    (
                        "equipRef",
                        self.equip.get("id").cloned().unwrap_or(HVal::Null),
                    ),
                    ("routeSlot", HVal::make_number(f64::from(slot))),
                    ("tz", HVal::make_str(&se.tz)),
                ]);
                if let Some(t) = db.route_template() {
                    for (k, v) in &t.equip_tags {
                        d.insert(k.clone(), tag_hval(v));
                    }
                }
                Some(d)
            }
            RecKey::Point(pid) => {
                if !db.is_present(pid) {
                    return None;
                }
                let def = live_def(db, pid)?;
                let def = &*def;
                let mut d = self.points.get(pid.index())?.clone();
                if let Some(rp) = db.route_point(pid) {
                    // The route's name and input names are live.
                    if let Some(info) = db.block(rp.slot) {
                        let dis = format!("{} {}", info.route, def.name);
                        d.insert("dis".into(), HVal::make_str(&dis));
                        d.insert(
                            "equipRef".into(),
                            HVal::make_ref_with_dis(&route_equip_id(rp.slot), &info.route),
                        );
                    }
                    if def.kind == Kind::Enum {
                        d.insert(
                            "enum".into(),
                            HVal::make_str(&db.state_names(pid).join(",")),
                        );
                    }
                }
                if let Some(st) = db.read(pid) {
                    add_cur(&mut d, def, &st);
                }
                if let Some(a) = self.alarms.get() {
                    add_alarm(&mut d, a, pid);
                }
                if def.writable {
                    if let Some(pa) = db.priority_array(pid) {
                        let (v, level) = pa.resolve();
                        d.insert("writeVal".into(), to_hval(def, v));
                        d.insert("writeLevel".into(), HVal::make_number(f64::from(level)));
                    }
                }
                Some(d)
            }
        }
    }

    /// Records matching a filter (paths follow refs between our records).
    pub fn filter(&self, db: &PointDb, f: &Filter, limit: usize) -> Vec<Dict> {
        let all: Vec<Dict> = self
            .keys(db)
            .into_iter()
            .filter_map(|k| self.dict(db, k))
            .collect();
        let resolver = Resolver { recs: self, db };
        let mut out = Vec::new();
        for d in all {
            if out.len() >= limit {
                break;
            }
            let ctx = EvalContext::make(&d, &libhaystack::defs::namespace::DEFAULT_NS, &resolver);
            if eval_or(&f.or, &ctx) {
                out.push(d);
            }
        }
        out
    }
}

fn add_cur(d: &mut Dict, def: &PointDef, st: &PointState) {
    if let Some(v) = st.value {
        d.insert("curVal".into(), to_hval(def, v));
    }
    d.insert("curStatus".into(), HVal::make_str(cur_status(st.quality)));
    if st.quality != Quality::Ok && st.quality != Quality::Overridden {
        let why = st.reason.as_deref().unwrap_or(st.quality.as_str());
        d.insert("curErr".into(), HVal::make_str(why));
    }
}

/// The Haystack name of an event state: Haystack's camelCase for the
/// BACnet names (`highLimit`, like BACnet's HIGH_LIMIT).
pub fn alarm_state_name(s: crate::points::alarm::EventState) -> &'static str {
    use crate::points::alarm::EventState;
    match s {
        EventState::Normal => "normal",
        EventState::Fault => "fault",
        EventState::Offnormal => "offnormal",
        EventState::HighLimit => "highLimit",
        EventState::LowLimit => "lowLimit",
    }
}

/// The alarm tags of an alarm-capable point (docs/haystack.md, "Alarms"):
/// `alarmClass`, `alarmState`, `alarmAcked`, `alarmTs`, and the `alarm`
/// marker while it is not normal, so `point and alarm` lists the points
/// in alarm.
fn add_alarm(d: &mut Dict, a: &crate::alarms::Alarms, pid: PointId) {
    use crate::points::alarm::{EventState, TransitionKind};
    let (Some(spec), Some(st)) = (a.spec(pid), a.state(pid)) else {
        return;
    };
    d.insert(
        "alarmClass".into(),
        HVal::make_number(f64::from(spec.notification_class)),
    );
    d.insert(
        "alarmState".into(),
        HVal::make_str(alarm_state_name(st.event_state)),
    );
    if st.event_state != EventState::Normal {
        d.insert("alarm".into(), HVal::Marker);
    }
    let acked = TransitionKind::ALL.iter().all(|k| st.acked.get(*k));
    d.insert("alarmAcked".into(), HVal::make_bool(acked));
    let last = TransitionKind::ALL
        .iter()
        .filter_map(|k| st.time_stamps.get(*k))
        .max();
    if let Some(t) = last {
        d.insert("alarmTs".into(), HVal::from(t));
    }
}

/// Resolves filter paths (`equipRef->siteRef->dis`) across our records.
struct Resolver<'a> {
    recs: &'a Records,
    db: &'a PointDb,
}

impl PathResolver for Resolver<'_> {
    fn resolve_for(&self, root: &Dict, path: &Path) -> HVal {
        let mut cur = root.clone();
        let n = path.len();
        for (i, seg) in path.iter().enumerate() {
            let v = cur.get(&seg.to_string()).cloned().unwrap_or(HVal::Null);
            if i + 1 == n {
                return v;
            }
            match v {
                HVal::Ref(r) => match self.resolve_ref(&r) {
                    Some(d) => cur = d,
                    None => return HVal::Null,
                },
                _ => return HVal::Null,
            }
        }
        HVal::Null
    }

    fn resolve(&self, _path: &Path) -> HVal {
        // Only called without a root by code paths we do not use.
        HVal::Null
    }

    fn resolve_ref(&self, r: &Ref) -> Option<Dict> {
        let key = self.recs.key(r.value())?;
        self.recs.dict(self.db, key)
    }
}

// libhaystack's filter evaluation orders values of different kinds by enum
// variant (so `curVal > 50%` matched every Str curVal) and refuses numbers
// whose units differ even when one side is unitless. The walk below keeps its
// parser and every other term, and evaluates comparisons per the Haystack
// filter spec: a missing tag or values of different kinds never match.
fn eval_or<R: PathResolver>(or: &Or, ctx: &EvalContext<R>) -> bool {
    or.ands.iter().any(|and| {
        and.terms.iter().all(|t| match t {
            Term::Parens(p) => eval_or(&p.or, ctx),
            Term::Cmp(c) => cmp(&ctx.resolve(&c.path), &c.op, &c.value),
            other => other.eval(ctx),
        })
    })
}

fn cmp(lhs: &HVal, op: &CmpOp, rhs: &HVal) -> bool {
    use std::cmp::Ordering;
    if let HVal::List(l) = lhs {
        if !matches!(rhs, HVal::List(_)) {
            return l.iter().any(|el| cmp(el, op, rhs));
        }
    }
    let ord: Option<Ordering> = match (lhs, rhs) {
        (HVal::Null, _) => return false,
        (HVal::Number(a), HVal::Number(b)) => match (a.unit, b.unit) {
            (Some(x), Some(y)) if x != y => None,
            _ => a.value.partial_cmp(&b.value),
        },
        (HVal::Str(a), HVal::Str(b)) => Some(a.cmp(b)),
        (HVal::Bool(a), HVal::Bool(b)) => Some(a.value.cmp(&b.value)),
        (HVal::Ref(a), HVal::Ref(b)) => Some(a.value().cmp(b.value())),
        (HVal::Date(a), HVal::Date(b)) => Some(a.cmp(b)),
        (HVal::Time(a), HVal::Time(b)) => Some(a.cmp(b)),
        (HVal::DateTime(a), HVal::DateTime(b)) => Some(a.cmp(b)),
        (HVal::Uri(a), HVal::Uri(b)) => Some(a.value().cmp(b.value())),
        (HVal::Symbol(a), HVal::Symbol(b)) => Some(a.value().cmp(b.value())),
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => {
            // Markers, lists, dicts ...: equality only.
            return match op {
                CmpOp::Eq => a == b,
                CmpOp::NotEq => a != b,
                _ => false,
            };
        }
        _ => None,
    };
    match (op, ord) {
        (CmpOp::NotEq, None) => !matches!(lhs, HVal::Null),
        (_, None) => false,
        (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
        (CmpOp::NotEq, Some(o)) => o != Ordering::Equal,
        (CmpOp::LessThan, Some(o)) => o == Ordering::Less,
        (CmpOp::LessThanEq, Some(o)) => o != Ordering::Greater,
        (CmpOp::GreatThan, Some(o)) => o == Ordering::Greater,
        (CmpOp::GreatThanEq, Some(o)) => o != Ordering::Less,
    }
}
