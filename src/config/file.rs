//! The `castpoint.toml` server configuration: binds, device identity, data dir, protocol options and routes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, ConfigError, Errors};

/// The configuration `castpoint run` uses when given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../castpoint.toml");

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Leave the modes of the data dir and `castpoint.db` alone (neither
    /// made private nor refused) even when group or others can access them;
    /// default false.
    pub allow_insecure_permissions: bool,
    pub points_file: Option<String>,
    pub mappings: MappingFiles,
    pub http: HttpSection,
    pub bacnet: BacnetSection,
    pub modbus: ModbusSection,
    pub haystack: HaystackSection,
    /// Name of the route the seed's single-stream command points act on.
    pub primary_route: Option<String>,
    /// `[[route]]` tables, validated by the engine's route parser.
    pub routes: Vec<toml::Table>,
    /// Other top-level tables (telemetry, profiles, ...) kept for the parts
    /// that own them, so each part validates its own section.
    pub extra: toml::Table,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFiles {
    pub bacnet: Option<String>,
    pub modbus: Option<String>,
    pub http: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HttpSection {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Priority REST writes take in the points' priority arrays.
    pub write_priority: u8,
    /// Listener limits and HTTPS (src/httpd.rs): connections at once, per
    /// source address, time to send a request's headers.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    /// PEM certificate chain and private key: both set = HTTPS. Relative
    /// paths are resolved against the config file's directory.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BacnetSection {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub device_instance: u32,
    pub device_name: String,
    pub vendor_id: u16,
    pub raw: toml::Table,
}

#[derive(Debug, Clone)]
pub struct ModbusSection {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub unit_ids: Vec<u8>,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub raw: toml::Table,
}

#[derive(Debug, Clone)]
pub struct HaystackSection {
    pub enabled: bool,
    pub raw: toml::Table,
}

/// Top-level tables owned by other parts (validated by them); anything
/// else at the top level is a typo and refused.
pub const OTHER_SECTIONS: &[&str] = &[
    "route_points",
    "telemetry",
    "profile",
    "users",
    "audit",
    "history",
    "api",
    "media",
    "rtmp",
];

// No deny_unknown_fields: serde cannot combine it with `flatten`; unknown
// top-level keys are refused by hand against OTHER_SECTIONS instead.
#[derive(Deserialize)]
struct Raw {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    allow_insecure_permissions: bool,
    points_file: Option<String>,
    #[serde(default)]
    mappings: MappingFiles,
    #[serde(default)]
    http: toml::Table,
    #[serde(default)]
    bacnet: toml::Table,
    #[serde(default)]
    modbus: toml::Table,
    #[serde(default)]
    haystack: toml::Table,
    primary_route: Option<String>,
    #[serde(default)]
    route: Vec<toml::Table>,
    #[serde(flatten)]
    extra: toml::Table,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// Typed access to one section's keys, recording errors by `section.key`.
struct Section<'a> {
    file: &'a str,
    name: &'a str,
    table: &'a toml::Table,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(file: &'a str, name: &'a str, table: &'a toml::Table) -> Self {
        Section {
            file,
            name,
            table,
            known: Vec::new(),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.name)
    }

    fn bool(&mut self, k: &'static str, d: bool, errs: &mut Errors) -> bool {
        self.known.push(k);
        match self.table.get(k) {
            None => d,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => {
                errs.push(ConfigError::new(
                    self.file,
                    self.key(k),
                    "expected true or false",
                ));
                d
            }
        }
    }

    fn addr(&mut self, k: &'static str, d: &str, errs: &mut Errors) -> SocketAddr {
        self.known.push(k);
        let fallback: SocketAddr = d.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        match self.table.get(k) {
            None => fallback,
            Some(toml::Value::String(s)) => match s.parse() {
                Ok(a) => a,
                Err(_) => {
                    errs.push(ConfigError::new(
                        self.file,
                        self.key(k),
                        format!("invalid socket address {s:?} (e.g. \"0.0.0.0:8080\")"),
                    ));
                    fallback
                }
            },
            Some(_) => {
                errs.push(ConfigError::new(
                    self.file,
                    self.key(k),
                    "expected an address string",
                ));
                fallback
            }
        }
    }

    fn int(&mut self, k: &'static str, d: i64, lo: i64, hi: i64, errs: &mut Errors) -> i64 {
        self.known.push(k);
        match self.table.get(k) {
            None => d,
            Some(toml::Value::Integer(n)) if (lo..=hi).contains(n) => *n,
            Some(_) => {
                errs.push(ConfigError::new(
                    self.file,
                    self.key(k),
                    format!("expected an integer {lo}..={hi}"),
                ));
                d
            }
        }
    }

    fn string(&mut self, k: &'static str, d: &str, errs: &mut Errors) -> String {
        self.known.push(k);
        match self.table.get(k) {
            None => d.to_string(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => {
                errs.push(ConfigError::new(
                    self.file,
                    self.key(k),
                    "expected a string",
                ));
                d.to_string()
            }
        }
    }

    fn duration(&mut self, k: &'static str, d: Duration, errs: &mut Errors) -> Duration {
        self.known.push(k);
        match self.table.get(k) {
            None => d,
            Some(toml::Value::String(s)) => match parse_duration(s) {
                Some(x) => x,
                None => {
                    errs.push(ConfigError::new(
                        self.file,
                        self.key(k),
                        format!("invalid duration {s:?} (e.g. \"500ms\", \"60s\", \"5min\")"),
                    ));
                    d
                }
            },
            Some(_) => {
                errs.push(ConfigError::new(
                    self.file,
                    self.key(k),
                    "expected a duration string",
                ));
                d
            }
        }
    }

    fn path(&mut self, k: &'static str, errs: &mut Errors) -> Option<PathBuf> {
        self.known.push(k);
        match self.table.get(k) {
            None => None,
            Some(toml::Value::String(s)) if !s.is_empty() => Some(PathBuf::from(s)),
            Some(_) => {
                errs.push(ConfigError::new(
                    self.file,
                    self.key(k),
                    "expected a file path string",
                ));
                None
            }
        }
    }

    /// Keys this parser does not handle stay in `raw` for the part that owns
    /// them; they are not errors here.
    fn rest(&self) -> toml::Table {
        self.table
            .iter()
            .filter(|(k, _)| !self.known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

pub fn parse(file: &str, text: &str, errs: &mut Errors) -> Option<ServerConfig> {
    let raw: Raw = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            errs.push(ConfigError::from_toml(file, text, &e));
            return None;
        }
    };
    for k in raw.extra.keys() {
        if !OTHER_SECTIONS.contains(&k.as_str()) {
            errs.push(ConfigError::new(file, k.clone(), "unknown key"));
        }
    }
    let mut h = Section::new(file, "http", &raw.http);
    let http = HttpSection {
        enabled: h.bool("enabled", true, errs),
        bind: h.addr("bind", "0.0.0.0:8080", errs),
        write_priority: h.int("write_priority", 12, 1, 16, errs) as u8,
        max_connections: h.int("max_connections", 512, 1, 100_000, errs) as usize,
        max_connections_per_ip: h.int("max_connections_per_ip", 64, 1, 100_000, errs) as usize,
        header_read_timeout: h.duration("header_read_timeout", Duration::from_secs(10), errs),
        tls_cert: h.path("tls_cert", errs),
        tls_key: h.path("tls_key", errs),
    };
    if http.header_read_timeout.is_zero() || http.header_read_timeout > Duration::from_secs(600) {
        errs.push(ConfigError::new(
            file,
            "http.header_read_timeout",
            "expected a duration between \"1ms\" and \"10min\"",
        ));
    }
    if http.tls_cert.is_some() != http.tls_key.is_some() {
        errs.push(ConfigError::new(
            file,
            if http.tls_cert.is_some() { "http.tls_key" } else { "http.tls_cert" },
            "tls_cert and tls_key go together (PEM files of the certificate chain and its private key)",
        ));
    }
    for k in h.rest().keys() {
        errs.push(ConfigError::new(file, format!("http.{k}"), "unknown key"));
    }
    let mut b = Section::new(file, "bacnet", &raw.bacnet);
    let bacnet = BacnetSection {
        enabled: b.bool("enabled", true, errs),
        bind: b.addr("bind", "0.0.0.0:47808", errs),
        device_instance: b.int("device_instance", 389_001, 0, 4_194_302, errs) as u32,
        device_name: b.string("device_name", "castpoint", errs),
        vendor_id: b.int(
            "vendor_id",
            i64::from(crate::protocols::bacnet::DEFAULT_VENDOR_ID),
            0,
            65535,
            errs,
        ) as u16,
        raw: b.rest(),
    };
    // The extra [bacnet] keys (password, write policy, ...) are checked
    // with the other parts' sections in `config::section_problems`.
    let mut m = Section::new(file, "modbus", &raw.modbus);
    let enabled = m.bool("enabled", true, errs);
    let bind = m.addr("bind", "0.0.0.0:5020", errs);
    m.known.push("unit_ids");
    let unit_ids = match raw.modbus.get("unit_ids") {
        None => vec![0, 1, 255],
        Some(toml::Value::Array(a)) => {
            let mut v = Vec::new();
            for (i, x) in a.iter().enumerate() {
                match x.as_integer().and_then(|n| u8::try_from(n).ok()) {
                    Some(n) => v.push(n),
                    None => errs.push(ConfigError::new(
                        file,
                        format!("modbus.unit_ids[{i}]"),
                        "unit ids are 0..=255",
                    )),
                }
            }
            v
        }
        Some(_) => {
            errs.push(ConfigError::new(
                file,
                "modbus.unit_ids",
                "expected an array of unit ids",
            ));
            vec![0, 1, 255]
        }
    };
    let modbus = ModbusSection {
        enabled,
        bind,
        unit_ids,
        max_connections: m.int("max_connections", 64, 1, 10_000, errs) as usize,
        idle_timeout: m.duration("idle_timeout", Duration::from_secs(60), errs),
        raw: m.rest(),
    };
    let mut hs = Section::new(file, "haystack", &raw.haystack);
    let haystack = HaystackSection {
        enabled: hs.bool("enabled", true, errs),
        raw: hs.rest(),
    };
    Some(ServerConfig {
        data_dir: raw.data_dir,
        allow_insecure_permissions: raw.allow_insecure_permissions,
        points_file: raw.points_file,
        mappings: raw.mappings,
        http,
        bacnet,
        modbus,
        haystack,
        primary_route: raw.primary_route,
        routes: raw.route,
        extra: raw.extra,
    })
}
