//! `castpoint.toml` -> [`ServerConfig`]: the file is read once, each top-level section deserialised on its own into the type its part owns (so one bad section does not hide another's errors) and validated by it.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{routes, ConfigError, Errors};
use crate::section::{join, Problem, Section};

/// The configuration `castpoint run` uses when given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../castpoint.toml");

pub use super::api::ApiConfig;
pub use crate::alarms::config::NotificationClassTable;
pub use crate::httpd::HttpSection;
pub use crate::media::ffmpeg::profile::ProfileTable;
pub use crate::media::ffmpeg::MediaSection;
pub use crate::media::rtmp::RtmpConfig;
pub use crate::persist::{AuditSection, HistorySection};
pub use crate::protocols::bacnet::BacnetSection;
pub use crate::protocols::haystack::HaystackSection;
pub use crate::protocols::modbus::ModbusSection;
pub use crate::protocols::mqtt::MqttSection;
pub use crate::telemetry::TelemetryConfig;

/// Everything in `castpoint.toml`, typed and validated. Adding a section is
/// one field here plus one line in [`parse`]; its type (with `Default` and
/// [`Section::validate`]) lives in the part that owns it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Leave the modes of the data dir and `castpoint.db` alone (neither
    /// made private nor refused) even when group or others can access them;
    /// default false.
    pub allow_insecure_permissions: bool,
    pub points_file: Option<String>,
    pub mappings: MappingFiles,
    /// Name of the route the seed's single-stream command points act on
    /// (none: the first route).
    pub primary_route: Option<String>,
    pub http: HttpSection,
    pub bacnet: BacnetSection,
    pub modbus: ModbusSection,
    pub haystack: HaystackSection,
    pub telemetry: TelemetryConfig,
    pub api: ApiConfig,
    pub audit: AuditSection,
    pub history: HistorySection,
    pub media: MediaSection,
    /// `[[profile]]` tables (validated into `media::ffmpeg::Media`).
    pub profile: Vec<ProfileTable>,
    pub rtmp: RtmpConfig,
    /// `[mqtt]` (src/protocols/mqtt; resolved into `Config::mqtt`).
    pub mqtt: MqttSection,
    /// `[route_points]` (the route template is loaded into
    /// `Config::route_template`).
    pub route_points: super::points::RoutePointsConfig,
    /// `[[notification_class]]` tables as written (empty: the shipped
    /// defaults, `alarms::config::effective`).
    pub notification_class: Vec<NotificationClassTable>,
    /// `[route_defaults]`, validated: what a route's unwritten keys mean.
    pub route_defaults: routes::RouteDefaults,
    /// `[[route]]` tables, each with its validated engine spec.
    pub routes: Vec<routes::Route>,
    /// The top-level keys the file wrote (the others mean their defaults).
    pub written: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFiles {
    pub bacnet: Option<String>,
    pub modbus: Option<String>,
    pub http: Option<String>,
}

/// The top-level keys that are not sections.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    allow_insecure_permissions: bool,
    points_file: Option<String>,
    primary_route: Option<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// Every top-level key castpoint knows.
pub(crate) const KNOWN: &[&str] = &[
    "data_dir",
    "allow_insecure_permissions",
    "points_file",
    "primary_route",
    "mappings",
    "http",
    "bacnet",
    "modbus",
    "haystack",
    "telemetry",
    "api",
    "audit",
    "history",
    "media",
    "profile",
    "rtmp",
    "mqtt",
    "route_points",
    "route_defaults",
    "notification_class",
    "route",
];

/// A serde error as one located config error: the full key path (serde's
/// path, with the unknown key itself appended) under `at`.
pub(crate) fn located(
    file: &str,
    at: &str,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    // The bare message: the key is already in the path.
    let msg = e.inner().message().to_string();
    let msg = msg.trim().replace('\n', " ");
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default();
        if !path.ends_with(key) {
            path = join(&path, key);
        }
        let expected = rest.split_once(", ").map(|(_, e)| e).unwrap_or("");
        let m = match expected {
            "" => "unknown key".to_string(),
            e => format!("unknown key ({e})"),
        };
        return ConfigError::new(file, join(at, &path), m);
    }
    ConfigError::new(file, join(at, &path), msg)
}

/// Deserialises one value into `T`, recording a located error for each
/// bad key: serde stops at the first, so the key it names is taken out and
/// the rest tried again (the result, with those keys at their defaults,
/// still goes through `validate`, so its other problems are reported too).
/// `None` when what is left still does not deserialise (a missing key).
pub(crate) fn typed<T: DeserializeOwned>(
    file: &str,
    at: &str,
    mut v: toml::Value,
    errs: &mut Errors,
) -> Option<T> {
    // Bounded: each round removes one key.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let err = located(file, at, &e);
                let unknown = e.inner().message().to_string();
                let unknown = unknown
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next());
                errs.push(err);
                if !remove_at(&mut v, e.path(), unknown) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the value at a serde path (or the unknown key in the table the
/// path names); false when there is nothing to remove there.
fn remove_at(v: &mut toml::Value, path: &serde_path_to_error::Path, unknown: Option<&str>) -> bool {
    use serde_path_to_error::Segment;
    let mut segs: Vec<&Segment> = path.iter().collect();
    // The path may end at the unknown key itself or at its table.
    if let (Some(k), Some(Segment::Map { key })) = (unknown, segs.last()) {
        if key == k {
            segs.pop();
        }
    }
    let (parent, last) = match unknown {
        Some(k) => (segs.as_slice(), Some(k.to_string())),
        None => match segs.split_last() {
            Some((Segment::Map { key }, rest)) => (rest, Some(key.clone())),
            Some((Segment::Seq { index }, rest)) => {
                let Some(toml::Value::Array(a)) = walk(v, rest) else {
                    return false;
                };
                if *index >= a.len() {
                    return false;
                }
                a.remove(*index);
                return true;
            }
            _ => return false,
        },
    };
    match (walk(v, parent), last) {
        (Some(toml::Value::Table(t)), Some(k)) => t.remove(&k).is_some(),
        _ => false,
    }
}

fn walk<'v>(
    mut v: &'v mut toml::Value,
    segs: &[&serde_path_to_error::Segment],
) -> Option<&'v mut toml::Value> {
    use serde_path_to_error::Segment;
    for s in segs {
        v = match (s, v) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key)?,
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The problems of a part's `validate`, located under `at`.
pub(crate) fn problems(file: &str, at: &str, p: Vec<Problem>, errs: &mut Errors) {
    errs.extend(
        p.into_iter()
            .map(|p| ConfigError::new(file, join(at, &p.key), p.message)),
    );
}

/// Takes section `name` out of the document into its typed, validated form
/// (absent: its defaults).
pub(crate) fn section<T: DeserializeOwned + Default + Section>(
    file: &str,
    doc: &mut toml::Table,
    name: &str,
    errs: &mut Errors,
) -> T {
    let Some(v) = doc.remove(name) else {
        return T::default();
    };
    match typed::<T>(file, name, v, errs) {
        Some(t) => {
            problems(file, name, t.validate(), errs);
            t
        }
        None => T::default(),
    }
}

/// An array of tables (`[[profile]]`, `[[route]]`): each element on its
/// own, so one bad table does not hide the next one's errors.
fn tables(file: &str, doc: &mut toml::Table, name: &str, errs: &mut Errors) -> Vec<toml::Table> {
    match doc.remove(name) {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.into_iter().enumerate() {
                match v {
                    toml::Value::Table(t) => out.push(t),
                    _ => errs.push(ConfigError::new(
                        file,
                        format!("{name}[{i}]"),
                        "expected a table",
                    )),
                }
            }
            out
        }
        Some(_) => {
            errs.push(ConfigError::new(
                file,
                name,
                format!("expected [[{name}]] tables"),
            ));
            Vec::new()
        }
    }
}

/// Parses the file; `None` only when it is not TOML at all.
pub fn parse(file: &str, text: &str, errs: &mut Errors) -> Option<ServerConfig> {
    let mut doc: toml::Table = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            errs.push(ConfigError::from_toml(file, text, &e));
            return None;
        }
    };
    let written = doc.keys().cloned().collect();
    let unknown: Vec<String> = doc
        .keys()
        .filter(|k| !KNOWN.contains(&k.as_str()))
        .cloned()
        .collect();
    for k in unknown {
        doc.remove(&k);
        errs.push(ConfigError::new(file, k, "unknown key"));
    }
    let mappings = doc
        .remove("mappings")
        .and_then(|v| typed::<MappingFiles>(file, "mappings", v, errs))
        .unwrap_or_default();
    let profile: Vec<ProfileTable> = tables(file, &mut doc, "profile", errs)
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| typed(file, &format!("profile[{i}]"), toml::Value::Table(t), errs))
        .collect();
    let notification_class: Vec<NotificationClassTable> =
        tables(file, &mut doc, "notification_class", errs)
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| {
                typed(
                    file,
                    &format!("notification_class[{i}]"),
                    toml::Value::Table(t),
                    errs,
                )
            })
            .collect();
    problems(
        file,
        "notification_class",
        crate::alarms::config::validate(&notification_class),
        errs,
    );
    let route_tables = tables(file, &mut doc, "route", errs);
    let route_defaults = doc
        .remove("route_defaults")
        .and_then(|v| typed::<routes::RouteDefaultsTable>(file, "route_defaults", v, errs))
        .map(|t| routes::RouteDefaults::parse(file, &t, errs))
        .unwrap_or_default();
    let mut c = ServerConfig {
        http: section(file, &mut doc, "http", errs),
        bacnet: section(file, &mut doc, "bacnet", errs),
        modbus: section(file, &mut doc, "modbus", errs),
        haystack: section(file, &mut doc, "haystack", errs),
        telemetry: section(file, &mut doc, "telemetry", errs),
        api: section(file, &mut doc, "api", errs),
        audit: section(file, &mut doc, "audit", errs),
        history: section(file, &mut doc, "history", errs),
        media: section(file, &mut doc, "media", errs),
        rtmp: section(file, &mut doc, "rtmp", errs),
        mqtt: section(file, &mut doc, "mqtt", errs),
        route_points: section(file, &mut doc, "route_points", errs),
        profile,
        mappings,
        notification_class,
        route_defaults,
        routes: Vec::new(),
        written,
        data_dir: default_data_dir(),
        allow_insecure_permissions: false,
        points_file: None,
        primary_route: None,
    };
    // What is left are the plain top-level keys.
    if let Some(top) = typed::<Top>(file, "", toml::Value::Table(doc), errs) {
        c.data_dir = top.data_dir;
        c.allow_insecure_permissions = top.allow_insecure_permissions;
        c.points_file = top.points_file;
        c.primary_route = top.primary_route;
    }
    // The profiles are validated once here; routes resolve theirs in them.
    let media = crate::media::ffmpeg::Media::build(&c.media, &c.profile);
    if let Err(p) = &media {
        problems(file, "", p.clone(), errs);
    }
    c.routes = routes::parse(file, route_tables, &c, media.ok().as_ref(), errs);
    Some(c)
}
