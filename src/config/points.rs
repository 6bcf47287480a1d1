//! Parses and validates a point definition file (`points/*.toml`) into `PointDef`s.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, ConfigError, Errors};
use crate::points::alarm::{AlarmSpec, Algorithm, PerTransition, TransitionKind};
use crate::points::routes::{
    RouteTemplate, TemplatePoint, DEFAULT_MAX_INPUTS, DEFAULT_MAX_OUTPUTS, DEFAULT_MAX_SLOTS,
};
use crate::points::{Kind, PointDef, Role, SiteEquip, TagValue, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    site: Option<SiteRaw>,
    equip: Option<EquipRaw>,
    #[serde(default)]
    point: Vec<PointRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteRaw {
    id: String,
    dis: String,
    #[serde(default = "utc")]
    tz: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EquipRaw {
    id: String,
    dis: String,
    #[serde(default)]
    #[allow(dead_code)] // equip tags are published by the Haystack layer from the file later
    tags: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointRaw {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    role: String,
    kind: String,
    unit: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(default)]
    integer: bool,
    period: String,
    #[serde(default)]
    writable: bool,
    #[serde(default)]
    states: Vec<String>,
    default: Option<toml::Value>,
    #[serde(default)]
    cov_increment: f64,
    #[serde(default)]
    his: bool,
    #[serde(default)]
    tags: BTreeMap<String, toml::Value>,
    /// Route template only (points/route.toml).
    #[serde(default)]
    per_output: bool,
    /// Route template only: `"inputs"`.
    states_from: Option<String>,
    /// `[point.alarm]`: the point's intrinsic alarm (docs/alarms.md).
    alarm: Option<AlarmRaw>,
}

/// `[point.alarm]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmRaw {
    /// OUT_OF_RANGE (number points): a limit given is a limit enabled.
    high_limit: Option<f64>,
    low_limit: Option<f64>,
    #[serde(default)]
    deadband: f64,
    /// CHANGE_OF_STATE (enum: state names; bool: true/false).
    #[serde(default)]
    alarm_values: Vec<toml::Value>,
    /// Enum states (or bool values) that are faults.
    #[serde(default)]
    fault_values: Vec<toml::Value>,
    #[serde(default = "yes")]
    fault_on_bad_quality: bool,
    time_delay: Option<String>,
    time_delay_normal: Option<String>,
    /// Transitions that notify; default all three.
    event_enable: Option<Vec<String>>,
    #[serde(default = "one")]
    notification_class: u32,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// Parsed point file: the definitions and the site/equip records.
pub struct PointFile {
    pub points: Vec<PointDef>,
    pub site: SiteEquip,
}

/// Haystack tag names: start with a lower-case letter, then ASCII letters,
/// digits or `_` (Haystack 4 naming rule).
fn valid_tag_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('a'..='z')) && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn valid_point_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub fn parse(file: &str, text: &str, errs: &mut Errors) -> Option<PointFile> {
    let raw: File = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            errs.push(ConfigError::from_toml(file, text, &e));
            return None;
        }
    };
    let site = match (&raw.site, &raw.equip) {
        (Some(s), Some(e)) => SiteEquip {
            site_id: s.id.clone(),
            site_dis: s.dis.clone(),
            equip_id: e.id.clone(),
            equip_dis: e.dis.clone(),
            tz: s.tz.clone(),
        },
        _ => {
            errs.push(ConfigError::new(
                file,
                if raw.site.is_none() { "site" } else { "equip" },
                "missing: a point file needs a [site] and an [equip] record",
            ));
            return None;
        }
    };
    let points = parse_points(file, raw.point, false, errs)
        .into_iter()
        .map(|t| t.def)
        .collect();
    Some(PointFile { points, site })
}

/// Validates `[[point]]` tables into definitions; `template` allows the
/// route template's own fields (`per_output`, `states_from`).
fn parse_points(
    file: &str,
    raw: Vec<PointRaw>,
    template: bool,
    errs: &mut Errors,
) -> Vec<TemplatePoint> {
    let mut seen = HashSet::new();
    let mut points = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let before = errs.len();
        let per_output = p.per_output;
        let (def, states_from_inputs) = point_def(PtAt { file, i }, p, template, &mut seen, errs);
        // A point with any problem is left out (its problems are reported).
        if errs.len() == before {
            points.push(TemplatePoint {
                def,
                per_output,
                states_from_inputs,
            });
        }
    }
    if points.len() > usize::from(u16::MAX) {
        errs.push(ConfigError::new(file, "point", "more than 65535 points"));
    }
    points
}

/// Where a `[[point]]` table is, for its errors.
#[derive(Clone, Copy)]
struct PtAt<'a> {
    file: &'a str,
    i: usize,
}

impl PtAt<'_> {
    fn key(self, k: &str) -> String {
        format!("point[{}].{k}", self.i)
    }

    fn report(self, errs: &mut Errors, k: &str, msg: impl Into<String>) {
        errs.push(ConfigError::new(self.file, self.key(k), msg.into()));
    }
}

/// One `[[point]]` table as a definition (and whether its states come from
/// the route's inputs), every problem reported in the file's key order.
fn point_def(
    at: PtAt,
    p: PointRaw,
    template: bool,
    seen: &mut HashSet<String>,
    errs: &mut Errors,
) -> (PointDef, bool) {
    check_point_id(at, &p.id, seen, errs);
    let role = point_role(at, &p.role, errs);
    let kind = point_kind(at, &p.kind, errs);
    let period = point_period(at, &p.period, errs);
    check_writable(at, p.writable, role, errs);
    let states_from_inputs = template_fields(at, &p, template, kind, errs);
    check_states(at, kind, &p.states, states_from_inputs, errs);
    if let (Some(a), Some(b)) = (p.min, p.max) {
        if a > b {
            at.report(errs, "min", format!("min {a} is above max {b}"));
        }
    }
    if p.cov_increment < 0.0 || !p.cov_increment.is_finite() {
        at.report(errs, "cov_increment", "must be a finite number >= 0");
    }
    let unit = p.unit.filter(|u| !u.is_empty());
    let tags = point_tags(at, &p.tags, errs);
    let alarm = p.alarm.and_then(|a| {
        parse_alarm(
            at.file,
            &format!("point[{}].alarm", at.i),
            a,
            kind,
            &p.states,
            errs,
        )
    });
    let mut def = PointDef {
        id: p.id,
        name: p.name,
        description: p.description,
        role,
        kind,
        unit,
        min: p.min,
        max: p.max,
        integer: p.integer,
        sample_period: period,
        writable: p.writable,
        states: p.states,
        relinquish_default: None,
        cov_increment: p.cov_increment,
        his: p.his,
        tags,
        alarm,
    };
    def.relinquish_default = relinquish_default(at, &def, p.default.as_ref(), errs);
    (def, states_from_inputs)
}

/// Ids are short, lower-case and unique in the file.
fn check_point_id(at: PtAt, id: &str, seen: &mut HashSet<String>, errs: &mut Errors) {
    if !valid_point_id(id) {
        at.report(
            errs,
            "id",
            format!("invalid id {id:?}: use a-z, 0-9, '_' or '-'"),
        );
    } else if !seen.insert(id.to_string()) {
        at.report(errs, "id", format!("duplicate point id {id:?}"));
    }
}

/// `role` (an unknown one is reported; measurement stands in for it).
fn point_role(at: PtAt, s: &str, errs: &mut Errors) -> Role {
    match s {
        "measurement" => Role::Measurement,
        "command" => Role::Command,
        "status" => Role::Status,
        other => {
            at.report(
                errs,
                "role",
                format!("unknown role {other:?} (measurement, command or status)"),
            );
            Role::Measurement
        }
    }
}

/// `kind` (an unknown one is reported; number stands in for it).
fn point_kind(at: PtAt, s: &str, errs: &mut Errors) -> Kind {
    match s {
        "number" => Kind::Number,
        "bool" => Kind::Bool,
        "enum" => Kind::Enum,
        other => {
            at.report(
                errs,
                "kind",
                format!("unknown kind {other:?} (number, bool or enum)"),
            );
            Kind::Number
        }
    }
}

/// `period`: at least 100 ms (an invalid one is reported; 1 s stands in).
fn point_period(at: PtAt, s: &str, errs: &mut Errors) -> Duration {
    match parse_duration(s) {
        Some(d) if d >= Duration::from_millis(100) => d,
        _ => {
            at.report(
                errs,
                "period",
                format!(
                    "invalid period {s:?} (e.g. \"1s\", \"30s\", \"1min\", \"1h\"; at least 100ms)"
                ),
            );
            Duration::from_secs(1)
        }
    }
}

/// Commands, and only commands, are writable.
fn check_writable(at: PtAt, writable: bool, role: Role, errs: &mut Errors) {
    if writable && role != Role::Command {
        at.report(
            errs,
            "writable",
            format!(
                "only command points can be writable (role is {})",
                role.as_str()
            ),
        );
    }
    if role == Role::Command && !writable {
        at.report(errs, "writable", "command points must be writable");
    }
}

/// The route template's own keys (`states_from`, `per_output`), refused in
/// other point files; true when the states come from the route's inputs.
fn template_fields(at: PtAt, p: &PointRaw, template: bool, kind: Kind, errs: &mut Errors) -> bool {
    let states_from_inputs = match p.states_from.as_deref() {
        None => false,
        Some("inputs") if template && kind == Kind::Enum => true,
        Some(x) => {
            at.report(
                errs,
                "states_from",
                if template {
                    format!("{x:?}: only \"inputs\", on enum points")
                } else {
                    "only the route template (points/route.toml) has states_from".into()
                },
            );
            false
        }
    };
    if p.per_output && !template {
        at.report(
            errs,
            "per_output",
            "only the route template (points/route.toml) has per_output",
        );
    }
    states_from_inputs
}

/// Enum points, and only they, have two or more distinct, non-empty states
/// (unless the route's inputs name them).
fn check_states(
    at: PtAt,
    kind: Kind,
    states: &[String],
    states_from_inputs: bool,
    errs: &mut Errors,
) {
    if kind == Kind::Enum && states.len() < 2 && !states_from_inputs {
        at.report(errs, "states", "an enum point needs at least two states");
    }
    if kind != Kind::Enum && !states.is_empty() {
        at.report(errs, "states", "only enum points have states");
    }
    let mut st = HashSet::new();
    for (j, s) in states.iter().enumerate() {
        if s.is_empty() || !st.insert(s.to_ascii_uppercase()) {
            at.report(
                errs,
                &format!("states[{j}]"),
                format!("empty or duplicate state {s:?}"),
            );
        }
    }
}

/// `tags`: Haystack names with marker, string or number values; a bad one
/// is reported and left out.
fn point_tags(
    at: PtAt,
    raw: &BTreeMap<String, toml::Value>,
    errs: &mut Errors,
) -> BTreeMap<String, TagValue> {
    let mut tags = BTreeMap::new();
    for (k, v) in raw {
        if !valid_tag_name(k) {
            at.report(errs, &format!("tags.{k}"), "invalid Haystack tag name");
            continue;
        }
        match tag_value(v) {
            Some(tv) => {
                tags.insert(k.clone(), tv);
            }
            None => at.report(
                errs,
                &format!("tags.{k}"),
                "tag values are true (marker), strings or numbers",
            ),
        }
    }
    tags
}

/// `default`: a writable point's relinquish default, of its kind and range;
/// refused on a read-only point.
fn relinquish_default(
    at: PtAt,
    def: &PointDef,
    v: Option<&toml::Value>,
    errs: &mut Errors,
) -> Option<Value> {
    match (v, def.writable) {
        (Some(v), true) => {
            let got = toml_to_value(v).and_then(|v| def.coerce(v).ok());
            if got.is_none() {
                at.report(
                    errs,
                    "default",
                    format!(
                        "default {v} does not match kind {} and range",
                        def.kind.as_str()
                    ),
                );
            }
            got
        }
        (Some(_), false) => {
            at.report(
                errs,
                "default",
                "only writable points have a relinquish default",
            );
            None
        }
        (None, true) => {
            at.report(
                errs,
                "default",
                "a writable point needs a relinquish default",
            );
            None
        }
        (None, false) => None,
    }
}

/// One alarm value of an enum (a state name) or bool point.
fn alarm_value(v: &toml::Value, kind: Kind, states: &[String]) -> Option<Value> {
    match (kind, v) {
        (Kind::Bool, toml::Value::Boolean(b)) => Some(Value::Bool(*b)),
        (Kind::Enum, toml::Value::String(s)) => states
            .iter()
            .position(|x| x.eq_ignore_ascii_case(s))
            .and_then(|i| u16::try_from(i + 1).ok())
            .map(Value::Enum),
        _ => None,
    }
}

/// The algorithm fits the kind (limits for numbers, values for enums and
/// bools) and the limits are sane.
fn check_alarm_shape(file: &str, at: &str, a: &AlarmRaw, kind: Kind, errs: &mut Errors) {
    let key = |k: &str| format!("{at}.{k}");
    let limits = a.high_limit.is_some() || a.low_limit.is_some();
    if limits && kind != Kind::Number {
        errs.push(ConfigError::new(
            file,
            key("high_limit"),
            "limits are for number points (use alarm_values for enums and bools)",
        ));
    }
    if !a.alarm_values.is_empty() && kind == Kind::Number {
        errs.push(ConfigError::new(
            file,
            key("alarm_values"),
            "alarm values are for enum and bool points (use high_limit/low_limit for numbers)",
        ));
    }
    for (k, v) in [("high_limit", a.high_limit), ("low_limit", a.low_limit)] {
        if v.is_some_and(|x| !x.is_finite()) {
            errs.push(ConfigError::new(file, key(k), "must be a finite number"));
        }
    }
    if let (Some(h), Some(l)) = (a.high_limit, a.low_limit) {
        if l >= h {
            errs.push(ConfigError::new(
                file,
                key("low_limit"),
                format!("low limit {l} is not below the high limit {h}"),
            ));
        }
    }
    if !(a.deadband.is_finite() && a.deadband >= 0.0) {
        errs.push(ConfigError::new(
            file,
            key("deadband"),
            "must be a finite number >= 0",
        ));
    }
}

/// `event_enable`: the transitions that notify (all three when absent).
fn event_enable(
    file: &str,
    at: &str,
    list: Option<&[String]>,
    errs: &mut Errors,
) -> PerTransition<bool> {
    let Some(list) = list else {
        return PerTransition::all(true);
    };
    let mut out = PerTransition::all(false);
    for (j, s) in list.iter().enumerate() {
        match TransitionKind::ALL.into_iter().find(|k| k.as_str() == s) {
            Some(k) => out.set(k, true),
            None => errs.push(ConfigError::new(
                file,
                format!("{at}.event_enable[{j}]"),
                format!("unknown transition {s:?} (to-offnormal, to-fault or to-normal)"),
            )),
        }
    }
    out
}

/// Validates `[point.alarm]` into the evaluation's spec (ASHRAE 135
/// clause 13: OUT_OF_RANGE for numbers, CHANGE_OF_STATE for enums and
/// bools, fault detection for any kind).
fn parse_alarm(
    file: &str,
    at: &str,
    a: AlarmRaw,
    kind: Kind,
    states: &[String],
    errs: &mut Errors,
) -> Option<AlarmSpec> {
    let before = errs.len();
    let key = |k: &str| format!("{at}.{k}");
    let limits = a.high_limit.is_some() || a.low_limit.is_some();
    check_alarm_shape(file, at, &a, kind, errs);
    let mut values = |name: &str, list: &[toml::Value]| -> Vec<Value> {
        let mut out = Vec::new();
        for (j, v) in list.iter().enumerate() {
            match alarm_value(v, kind, states) {
                Some(x) if !out.contains(&x) => out.push(x),
                Some(_) => errs.push(ConfigError::new(
                    file,
                    format!("{at}.{name}[{j}]"),
                    format!("duplicate value {v}"),
                )),
                None => errs.push(ConfigError::new(
                    file,
                    format!("{at}.{name}[{j}]"),
                    match kind {
                        Kind::Enum => format!("{v} is not one of the states {states:?}"),
                        Kind::Bool => format!("{v}: a bool point's values are true or false"),
                        Kind::Number => "number points have no alarm or fault values".into(),
                    },
                )),
            }
        }
        out
    };
    let alarm_values = values("alarm_values", &a.alarm_values);
    let fault_values = values("fault_values", &a.fault_values);
    if let Some(v) = alarm_values.iter().find(|v| fault_values.contains(v)) {
        errs.push(ConfigError::new(
            file,
            key("fault_values"),
            format!("{v:?} is both an alarm value and a fault value"),
        ));
    }
    let mut delay = |k: &str, v: Option<String>| -> Option<Duration> {
        let s = v?;
        match parse_duration(&s) {
            Some(d) if d <= Duration::from_secs(86_400) => Some(d),
            _ => {
                errs.push(ConfigError::new(
                    file,
                    key(k),
                    format!(
                        "invalid duration {s:?} (e.g. \"0s\", \"5s\", \"1min\"; at most 1 day)"
                    ),
                ));
                None
            }
        }
    };
    let time_delay = delay("time_delay", a.time_delay).unwrap_or(Duration::ZERO);
    let time_delay_normal = delay("time_delay_normal", a.time_delay_normal);
    let event_enable = event_enable(file, at, a.event_enable.as_deref(), errs);
    if a.notification_class > 4_194_302 {
        errs.push(ConfigError::new(
            file,
            key("notification_class"),
            "must be 0..=4194302",
        ));
    }
    if errs.len() != before {
        return None;
    }
    let algorithm = if limits {
        Algorithm::OutOfRange {
            high_limit: a.high_limit,
            low_limit: a.low_limit,
            deadband: a.deadband,
        }
    } else if !alarm_values.is_empty() {
        Algorithm::ChangeOfState { alarm_values }
    } else {
        Algorithm::None
    };
    Some(AlarmSpec {
        algorithm,
        fault_values,
        fault_on_bad_quality: a.fault_on_bad_quality,
        time_delay,
        time_delay_normal,
        event_enable,
        notification_class: a.notification_class,
    })
}

/// A TOML scalar as a point value (kinds are fixed later by `PointDef::coerce`).
/// A Haystack tag from a point or template file: `true` is a marker,
/// `false`, strings and numbers are values; anything else is refused.
fn tag_value(v: &toml::Value) -> Option<TagValue> {
    Some(match v {
        toml::Value::Boolean(true) => TagValue::Marker,
        toml::Value::Boolean(false) => TagValue::Bool(false),
        toml::Value::String(s) => TagValue::Str(s.clone()),
        toml::Value::Integer(n) => TagValue::Number(*n as f64),
        toml::Value::Float(f) => TagValue::Number(*f),
        _ => return None,
    })
}

pub fn toml_to_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        toml::Value::Integer(n) => Some(Value::Number(*n as f64)),
        toml::Value::Float(f) => Some(Value::Number(*f)),
        _ => None,
    }
}

/// The embedded route template.
pub const DEFAULT_ROUTE_TEMPLATE: &str = include_str!("../../points/route.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    equip: Option<TemplateEquip>,
    #[serde(default)]
    point: Vec<PointRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateEquip {
    #[serde(default = "route_dis")]
    dis: String,
    #[serde(default)]
    tags: BTreeMap<String, toml::Value>,
}

fn route_dis() -> String {
    "Route".into()
}

/// `[route_points]`: the per-route point blocks (docs/route-points.md).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutePointsConfig {
    pub enabled: bool,
    pub max_routes: u16,
    pub max_outputs: u16,
    pub max_inputs: u16,
    /// Template file, relative to the config file (None: embedded).
    pub template: Option<String>,
    /// BACnet object instance of route slot `s`, point `k` (block order):
    /// `bacnet_instance_base + s x bacnet_instance_stride + k`.
    pub bacnet_instance_base: u32,
    pub bacnet_instance_stride: u32,
}

impl Default for RoutePointsConfig {
    fn default() -> Self {
        RoutePointsConfig {
            enabled: true,
            max_routes: DEFAULT_MAX_SLOTS,
            max_outputs: DEFAULT_MAX_OUTPUTS,
            max_inputs: DEFAULT_MAX_INPUTS,
            template: None,
            bacnet_instance_base: 0,
            bacnet_instance_stride: 1000,
        }
    }
}

impl RoutePointsConfig {
    /// Where route block objects go on BACnet.
    pub fn bacnet_rule(&self) -> crate::points::route_addresses::InstanceRule {
        crate::points::route_addresses::InstanceRule {
            base: self.bacnet_instance_base,
            stride: self.bacnet_instance_stride,
        }
    }
}

impl crate::section::Section for RoutePointsConfig {
    fn validate(&self) -> Vec<crate::section::Problem> {
        use crate::section::Problem;
        let mut p = Vec::new();
        let range = |key: &str, v: u16, lo: u16, hi: u16, p: &mut Vec<Problem>| {
            if !(lo..=hi).contains(&v) {
                p.push(Problem::new(
                    key,
                    format!("expected a whole number in {lo}..={hi}"),
                ));
            }
        };
        range("max_routes", self.max_routes, 1, 4096, &mut p);
        range("max_outputs", self.max_outputs, 0, 64, &mut p);
        range("max_inputs", self.max_inputs, 1, 64, &mut p);
        // BACnet instances are 22 bits (0..=4194302 usable).
        if !(1..=4_194_302).contains(&self.bacnet_instance_stride) {
            p.push(Problem::new(
                "bacnet_instance_stride",
                "expected a whole number in 1..=4194302",
            ));
        } else if u64::from(self.bacnet_instance_base)
            + u64::from(self.max_routes) * u64::from(self.bacnet_instance_stride)
            > 4_194_302
        {
            p.push(Problem::new(
                "bacnet_instance_base",
                format!(
                    "base {} + max_routes {} x stride {} is above the largest BACnet instance 4194302",
                    self.bacnet_instance_base, self.max_routes, self.bacnet_instance_stride
                ),
            ));
        }
        if self.template.as_deref() == Some("") {
            p.push(Problem::new("template", "expected a file path"));
        }
        p
    }
}

/// Parses and validates a route template against `[route_points]`; `server`
/// is the number of server points (the whole database must fit 65535 ids).
pub fn parse_template(
    file: &str,
    text: &str,
    cfg: &RoutePointsConfig,
    server: usize,
    errs: &mut Errors,
) -> Option<RouteTemplate> {
    let raw: TemplateFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            errs.push(ConfigError::from_toml(file, text, &e));
            return None;
        }
    };
    let before = errs.len();
    let (equip_dis, raw_tags) = match raw.equip {
        Some(e) => (e.dis, e.tags),
        None => (route_dis(), BTreeMap::new()),
    };
    let mut equip_tags = BTreeMap::new();
    for (k, v) in raw_tags {
        let tv = match tag_value(&v) {
            Some(tv) => tv,
            None => {
                errs.push(ConfigError::new(
                    file,
                    format!("equip.tags.{k}"),
                    "tag values are true (marker), strings or numbers",
                ));
                continue;
            }
        };
        if !valid_tag_name(&k) {
            errs.push(ConfigError::new(
                file,
                format!("equip.tags.{k}"),
                "invalid Haystack tag name",
            ));
            continue;
        }
        equip_tags.insert(k, tv);
    }
    let points = parse_points(file, raw.point, true, errs);
    if points.is_empty() && errs.len() == before {
        errs.push(ConfigError::new(
            file,
            "point",
            "the route template has no points (disable with [route_points] enabled = false)",
        ));
    }
    let tpl = RouteTemplate {
        equip_dis,
        equip_tags,
        points,
        max_slots: cfg.max_routes,
        max_outputs: cfg.max_outputs,
        max_inputs: cfg.max_inputs,
    };
    let total = server + tpl.block_len() * usize::from(cfg.max_routes);
    if total > usize::from(u16::MAX) {
        errs.push(ConfigError::new(
            file,
            "point",
            format!(
                "{} points per route x {} routes + {server} server points = {total}: more than 65535 (lower [route_points] max_routes or max_outputs)",
                tpl.block_len(),
                cfg.max_routes
            ),
        ));
    }
    (errs.len() == before).then_some(tpl)
}
