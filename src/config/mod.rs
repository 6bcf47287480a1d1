//! Configuration: the embedded defaults, `castpoint.toml`, and validation of points and mappings into specs; every error names its file and key.

pub mod api;
pub mod binds;
pub mod file;
pub mod maps;
pub mod points;
pub mod routes;
pub mod table;

use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::section::parse_duration;
pub use file::{BacnetSection, HaystackSection, HttpSection, ModbusSection, ServerConfig};

use crate::points::routes::RouteTemplate;
use crate::points::{Maps, PointDef, SiteEquip};

/// The point list compiled into the binary (seed 000).
pub const DEFAULT_POINTS: &str = include_str!("../../points/streaming-server.toml");
pub const DEFAULT_BACNET: &str = include_str!("../../mappings/bacnet.toml");
pub const DEFAULT_MODBUS: &str = include_str!("../../mappings/modbus.toml");
pub const DEFAULT_HTTP: &str = include_str!("../../mappings/http.toml");

/// One configuration problem, located by file and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A TOML syntax or schema error, with its line and column as the key
    /// and the offending key in the message where serde names it.
    pub fn from_toml(file: &str, text: &str, e: &toml::de::Error) -> Self {
        let key = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                format!("line {line} col {col}")
            }
            None => "(document)".to_string(),
        };
        ConfigError::new(file, key, e.message().trim().replace('\n', " "))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.message)
    }
}

pub type Errors = Vec<ConfigError>;

/// All problems found in one load.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Everything castpoint runs from, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// The MQTT edge node's resolved config, when `[mqtt] enabled`.
    pub mqtt: Option<crate::protocols::mqtt::MqttConfig>,
    /// The route template with its reserved sizes (`[route_points]`);
    /// None when route blocks are disabled.
    pub route_template: Option<crate::points::routes::RouteTemplate>,
    pub points: Vec<PointDef>,
    pub site: SiteEquip,
    pub maps: Maps,
    /// Where the config came from (for messages): file path or "embedded".
    pub origin: String,
}

/// Reads a file that the config names, relative to the config file's folder.
fn read_named(
    base: &Path,
    name: &str,
    errs: &mut Errors,
    from: &str,
    key: &str,
) -> Option<(String, String)> {
    let p: PathBuf = if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        base.join(name)
    };
    match std::fs::read_to_string(&p) {
        Ok(t) => Some((p.display().to_string(), t)),
        Err(e) => {
            errs.push(ConfigError::new(
                from,
                key,
                format!("cannot read {}: {e}", p.display()),
            ));
            None
        }
    }
}

/// The errors a config text gets (empty when it is valid), with relative
/// paths resolved against the current directory; for tests and tools.
pub fn errors_of(text: &str) -> Vec<ConfigError> {
    Config::from_text("t.toml", text, Path::new("."))
        .err()
        .map(|e| e.0)
        .unwrap_or_default()
}

/// One section from TOML text, deserialised and validated as in a file
/// (tests and tools that build a config in code); errors as in a file.
pub fn section_from_str<T>(name: &str, text: &str) -> Result<T, ConfigErrors>
where
    T: serde::de::DeserializeOwned + Default + crate::section::Section,
{
    let mut errs = Vec::new();
    let t: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigErrors(vec![ConfigError::from_toml(name, text, &e)]))?;
    let mut doc = toml::Table::new();
    doc.insert(name.to_string(), toml::Value::Table(t));
    let v = file::section(name, &mut doc, name, &mut errs);
    if errs.is_empty() {
        Ok(v)
    } else {
        Err(ConfigErrors(errs))
    }
}

impl Config {
    /// The listeners' bind conflicts after the binds were changed outside
    /// the file (`castpoint run --http ... --modbus ...`): the same check
    /// `from_text` makes, so an override cannot start a half-bound server.
    pub fn check_binds(&self) -> Result<(), ConfigErrors> {
        let e = binds::conflicts("command line", &self.server);
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(e))
        }
    }

    /// The embedded default configuration (demo route, all protocols up).
    pub fn embedded() -> Result<Config, ConfigErrors> {
        Self::from_text(
            "castpoint.toml (embedded)",
            file::DEFAULT_CONFIG,
            Path::new("."),
        )
    }

    /// Loads a config file; point and mapping files it names replace the
    /// embedded ones.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                &path.display().to_string(),
                "(file)",
                format!("cannot read: {e}"),
            )])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_text(&path.display().to_string(), &text, base)
    }

    /// Parses and validates a config text. `base` resolves relative paths.
    pub fn from_text(name: &str, text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        refuse_empty(name, text)?;
        let mut errs = Vec::new();
        let server = file::parse(name, text, &mut errs);
        let Some(mut server) = server else {
            return Err(ConfigErrors(errs));
        };
        // HTTPS files, like points_file, are relative to the config file.
        for p in [&mut server.http.tls_cert, &mut server.http.tls_key] {
            if let Some(f) = p.as_mut() {
                *f = base.join(&*f);
            }
        }
        let (pname, ptext) = match &server.points_file {
            Some(f) => read_named(base, f, &mut errs, name, "points_file").unwrap_or_default(),
            None => (
                "points/streaming-server.toml (embedded)".into(),
                DEFAULT_POINTS.into(),
            ),
        };
        let pf = points::parse(&pname, &ptext, &mut errs);
        let Some(pf) = pf else {
            return Err(ConfigErrors(errs));
        };
        let (route_template, tname) =
            load_route_template(name, base, &server, pf.points.len(), &mut errs);
        let (maps, modbus_file) = load_maps(name, base, &server, &pf.points, &mut errs);
        if let Some(tpl) = &route_template {
            let n = pf.points.len();
            check_route_blocks(name, &modbus_file, &server, tpl, n, &maps, &mut errs);
        }
        let mqtt = resolve_mqtt(name, base, &server, &mut errs);
        let tpl_points = route_template
            .iter()
            .flat_map(|t| t.points.iter().map(|p| (&tname, &p.def)));
        let server_points = pf.points.iter().map(|d| (&pname, d));
        check_alarm_classes(&server, server_points.chain(tpl_points), &mut errs);
        errs.extend(binds::conflicts(name, &server));
        // The HTTPS certificate loads and fits its key (src/httpd.rs).
        if let Err(e) = crate::httpd::check(&server.http) {
            let (key, msg) = e.split_once(": ").unwrap_or(("http", e.as_str()));
            errs.push(ConfigError::new(name, key, msg));
        }
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(Config {
            server,
            mqtt,
            route_template,
            points: pf.points,
            site: pf.site,
            maps,
            origin: name.to_string(),
        })
    }
}

/// A 0-byte (or comments-only) file is almost always a mistake (a failed
/// copy, the wrong path): "all defaults" must be asked for by running
/// without --config, not by an empty file.
fn refuse_empty(name: &str, text: &str) -> Result<(), ConfigErrors> {
    if toml::from_str::<toml::Table>(text).is_ok_and(|t| t.is_empty()) {
        return Err(ConfigErrors(vec![ConfigError::new(
            name,
            "(file)",
            "the file is empty: write the sections to change, or run without --config for the embedded defaults",
        )]));
    }
    Ok(())
}

/// `[route_points]`: the route template (None when route points are off)
/// and its file's name; the routes' pinned slots are checked against it.
fn load_route_template(
    name: &str,
    base: &Path,
    server: &ServerConfig,
    server_points: usize,
    errs: &mut Errors,
) -> (Option<RouteTemplate>, String) {
    let rc = &server.route_points;
    if !rc.enabled {
        return (None, String::new());
    }
    let (tname, ttext) = match &rc.template {
        Some(f) => read_named(base, f, errs, name, "route_points.template").unwrap_or_default(),
        None => (
            "points/route.toml (embedded)".into(),
            points::DEFAULT_ROUTE_TEMPLATE.into(),
        ),
    };
    let pins: Vec<_> = server
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.spec.name.clone(), r.spec.slot))
        .collect();
    for (i, msg) in crate::points::routes::pin_problems(&pins, rc.max_routes) {
        errs.push(ConfigError::new(name, format!("route[{i}].slot"), msg));
    }
    let t = points::parse_template(&tname, &ttext, rc, server_points, errs);
    (t, tname)
}

/// The three mapping files (`[mappings]`, else the embedded ones) resolved
/// against the points; with the Modbus file's name, for the route block
/// checks.
fn load_maps(
    name: &str,
    base: &Path,
    server: &ServerConfig,
    points: &[PointDef],
    errs: &mut Errors,
) -> (Maps, String) {
    let idx = maps::PointIndex::new(points);
    let load =
        |f: &Option<String>, key: &str, default: &str, dname: &str, errs: &mut Errors| match f {
            Some(f) => read_named(base, f, errs, name, key).unwrap_or_default(),
            None => (format!("{dname} (embedded)"), default.to_string()),
        };
    let m = &server.mappings;
    let (bn, bt) = load(
        &m.bacnet,
        "mappings.bacnet",
        DEFAULT_BACNET,
        "mappings/bacnet.toml",
        errs,
    );
    let (mn, mt) = load(
        &m.modbus,
        "mappings.modbus",
        DEFAULT_MODBUS,
        "mappings/modbus.toml",
        errs,
    );
    let (hn, ht) = load(
        &m.http,
        "mappings.http",
        DEFAULT_HTTP,
        "mappings/http.toml",
        errs,
    );
    let maps = Maps {
        bacnet: maps::parse_bacnet(&bn, &bt, &idx, errs),
        modbus: maps::parse_modbus(&mn, &mt, &idx, errs),
        http: maps::parse_http(&hn, &ht, &idx, errs),
    };
    (maps, mn)
}

/// Route blocks (issue 20): on Modbus they fit the tables and miss the
/// server's registers (`server_points`: how many there are, so the id of
/// slot 1's first point); on BACnet they fit the instance space, hold a block
/// and miss the server's objects.
fn check_route_blocks(
    name: &str,
    modbus_file: &str,
    server: &ServerConfig,
    tpl: &RouteTemplate,
    server_points: usize,
    maps: &Maps,
    errs: &mut Errors,
) {
    match crate::points::route_addresses::route_registers(
        tpl,
        server_points,
        &maps.modbus.route_blocks,
        maps.modbus.word_order,
    ) {
        Ok(mut regs) => {
            regs.extend(maps.modbus.registers.iter().cloned());
            if let Some((t, n)) = crate::protocols::modbus::routes::overlap(&regs) {
                errs.push(ConfigError::new(
                    modbus_file,
                    "route_blocks",
                    format!(
                        "route blocks overlap a mapped {} register (offset {})",
                        t.as_str(),
                        n - t.base()
                    ),
                ));
            }
        }
        Err(e) => errs.push(ConfigError::new(modbus_file, "route_blocks", e)),
    }
    let rule = server.route_points.bacnet_rule();
    for (key, e) in crate::protocols::bacnet::routes::check(tpl, rule, maps) {
        errs.push(ConfigError::new(name, format!("route_points.{key}"), e));
    }
}

/// `[mqtt]`: its file paths resolve against the config file's folder and
/// its TLS files must load; the section's own problems were reported when
/// it was read, so only what resolving adds is reported here.
fn resolve_mqtt(
    name: &str,
    base: &Path,
    server: &ServerConfig,
    errs: &mut Errors,
) -> Option<crate::protocols::mqtt::MqttConfig> {
    match crate::protocols::mqtt::MqttConfig::resolve(&server.mqtt, base) {
        Ok(c) => c.enabled.then_some(c),
        Err(p) => {
            if crate::section::Section::validate(&server.mqtt).is_empty() {
                file::problems(name, "mqtt", p, errs);
            }
            None
        }
    }
}

/// Every alarm of the (file name, point) pairs names a notification class
/// that exists.
fn check_alarm_classes<'a>(
    server: &ServerConfig,
    points: impl Iterator<Item = (&'a String, &'a PointDef)>,
    errs: &mut Errors,
) {
    let classes: Vec<u32> = crate::alarms::config::effective(&server.notification_class)
        .iter()
        .map(|c| c.id)
        .collect();
    for (f, d) in points {
        if let Some(a) = &d.alarm {
            if !classes.contains(&a.notification_class) {
                errs.push(ConfigError::new(
                    f,
                    format!("point {:?}: alarm.notification_class", d.id),
                    format!(
                        "notification class {} does not exist (classes: {classes:?}; add a [[notification_class]] to castpoint.toml)",
                        a.notification_class
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod keys_tests;
