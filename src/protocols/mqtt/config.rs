//! The `[mqtt]` section: a serde-derived struct (unknown keys refused) and its `validate()`, shared by `check-config` and `run`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::section::{parse_duration, Problem, Section};

/// `[mqtt]` as written in `castpoint.toml` (docs/configuration.md#mqtt).
/// Its `Debug` (like [`MqttConfig`]'s) shows the password as `***`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// Off by default: a node publishes to a broker only when asked to.
    pub enabled: bool,
    /// `mqtt://host:port` or `mqtts://host:port`, tried in order (failover).
    pub brokers: Vec<String>,
    /// Sparkplug group id (the topic's second level).
    pub group_id: String,
    /// Sparkplug edge node id; default: the host name.
    pub edge_node_id: Option<String>,
    /// MQTT client id; default `castpoint-<group>-<node>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA bundle for `mqtts://` brokers (default: none, so `mqtts://`
    /// needs it: castpoint does not read the system store silently).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key (mutual TLS), both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Sparkplug Primary Host id: when set, the node births only while
    /// `spBv1.0/STATE/<id>` says the host is online.
    pub primary_host_id: Option<String>,
    /// Priority NCMD/DCMD writes take in the points' priority arrays.
    pub command_priority: u8,
    /// Refuse every NCMD/DCMD write (audited as refused).
    pub read_only: bool,
    pub keep_alive: String,
    /// Longest wait between reconnect attempts (backoff doubles up to it).
    pub reconnect_max: String,
    /// Changes kept while disconnected; past it the oldest are dropped.
    pub store_forward_max: usize,
    /// Largest MQTT packet accepted from the broker (NCMD/DCMD, STATE).
    pub max_incoming_packet: usize,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            enabled: false,
            brokers: vec!["mqtt://127.0.0.1:1883".into()],
            group_id: "castpoint".into(),
            edge_node_id: None,
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            primary_host_id: None,
            command_priority: 10,
            read_only: false,
            keep_alive: "30s".into(),
            reconnect_max: "10s".into(),
            store_forward_max: 10_000,
            max_incoming_packet: 256 * 1024,
        }
    }
}

/// One broker of the failover list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Broker {
    pub fn parse(url: &str) -> Result<Broker, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected mqtt://host:port or mqtts://host:port")?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(format!("scheme {scheme:?}: expected mqtt or mqtts")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['@', '/', '?', '#']) {
            // Credentials belong in username/password (redacted), never in
            // a URL that ends up in logs and the API.
            return Err("expected only host:port (credentials go in username/password)".into());
        }
        let default_port = if tls { 8883 } else { 1883 };
        let port_of = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not 1..=65535"))
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
            match after.strip_prefix(':') {
                Some(p) => (h, port_of(p)?),
                None if after.is_empty() => (h, default_port),
                None => return Err("expected [v6-address]:port".into()),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, port_of(p)?),
                None => (rest, default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err("expected a host and a port 1..=65535".into());
        }
        Ok(Broker {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// The validated section the node runs from.
#[derive(Clone)]
pub struct MqttConfig {
    pub enabled: bool,
    pub brokers: Vec<Broker>,
    pub group_id: String,
    pub edge_node_id: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub primary_host_id: Option<String>,
    pub command_priority: u8,
    pub read_only: bool,
    pub keep_alive: Duration,
    pub reconnect_max: Duration,
    pub store_forward_max: usize,
    pub max_incoming_packet: usize,
}

/// `Debug` for both structs: every field but the password, which is shown
/// as `***` when set, so no `{:?}` can leak it into a log.
macro_rules! debug_redacted {
    ($t:ty, $($f:ident),*) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($f), &self.$f))*
                    .field("password", &self.password.as_ref().map(|_| crate::redact::PLACEHOLDER))
                    .finish()
            }
        }
    };
}

debug_redacted!(
    MqttSection,
    enabled,
    brokers,
    group_id,
    edge_node_id,
    client_id,
    username,
    ca_file,
    client_cert,
    client_key,
    primary_host_id,
    command_priority,
    read_only,
    keep_alive,
    reconnect_max,
    store_forward_max,
    max_incoming_packet
);
debug_redacted!(
    MqttConfig,
    enabled,
    brokers,
    group_id,
    edge_node_id,
    client_id,
    username,
    ca_file,
    client_cert,
    client_key,
    primary_host_id,
    command_priority,
    read_only,
    keep_alive,
    reconnect_max,
    store_forward_max,
    max_incoming_packet
);

/// A Sparkplug id (group, node, device, host): UTF-8 without the MQTT
/// topic separators and wildcards (spB 3.0 §4.1.1).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.contains(['/', '+', '#'])
        && !s.chars().any(char::is_control)
}

/// The host name made into a valid edge node id (invalid characters
/// become `-`); `castpoint` when it cannot be read.
pub fn default_node_id() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let h: String = h
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c == '+' || c == '#' || c.is_control() {
                '-'
            } else {
                c
            }
        })
        .collect();
    if valid_id(&h) {
        h
    } else {
        "castpoint".into()
    }
}

/// `mqtt.key: message` -> a problem keyed inside the section.
fn problem(e: &str) -> Problem {
    match e.split_once(": ") {
        Some((k, m)) => Problem::new(k.strip_prefix("mqtt.").unwrap_or(k), m),
        None => Problem::new("", e),
    }
}

impl Section for MqttSection {
    fn validate(&self) -> Vec<Problem> {
        match self.check() {
            Ok(_) => Vec::new(),
            Err(errs) => errs.iter().map(|e| problem(e)).collect(),
        }
    }
}

impl MqttSection {
    /// Every problem of the section as `mqtt.key: message`, or the config
    /// the node runs from. Checked whether or not `enabled`: a typo is a typo.
    pub fn check(&self) -> Result<MqttConfig, Vec<String>> {
        let mut errs = Vec::new();
        let brokers = self.check_brokers(&mut errs);
        let (node, client_id) = self.check_ids(&mut errs);
        if !(1..=16).contains(&self.command_priority) {
            errs.push("mqtt.command_priority: must be 1..=16".into());
        }
        self.check_credentials(&brokers, &mut errs);
        let keep_alive = duration_in(
            "keep_alive",
            &self.keep_alive,
            Duration::from_secs(5),
            Duration::from_secs(3600),
            &mut errs,
        );
        let reconnect_max = duration_in(
            "reconnect_max",
            &self.reconnect_max,
            Duration::from_millis(100),
            Duration::from_secs(3600),
            &mut errs,
        );
        if !(1..=10_000_000).contains(&self.store_forward_max) {
            errs.push("mqtt.store_forward_max: must be 1..=10000000".into());
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_incoming_packet) {
            errs.push("mqtt.max_incoming_packet: must be 1024..=268435456".into());
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(MqttConfig {
            enabled: self.enabled,
            brokers,
            group_id: self.group_id.clone(),
            edge_node_id: node,
            client_id,
            username: self.username.clone(),
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            primary_host_id: self.primary_host_id.clone(),
            command_priority: self.command_priority,
            read_only: self.read_only,
            keep_alive,
            reconnect_max,
            store_forward_max: self.store_forward_max,
            max_incoming_packet: self.max_incoming_packet,
        })
    }

    /// The broker URLs that parse; each problem goes to `errs`.
    fn check_brokers(&self, errs: &mut Vec<String>) -> Vec<Broker> {
        let mut brokers = Vec::new();
        if self.brokers.is_empty() {
            errs.push("mqtt.brokers: at least one broker URL is needed".to_string());
        }
        for (i, b) in self.brokers.iter().enumerate() {
            match Broker::parse(b) {
                Ok(b) => brokers.push(b),
                Err(e) => errs.push(format!(
                    "mqtt.brokers[{i}]: {}: {e}",
                    crate::redact::redact_url(b)
                )),
            }
        }
        brokers
    }

    /// The edge node id and client id, defaults filled in; the group,
    /// node, Primary Host and client ids' problems go to `errs`.
    fn check_ids(&self, errs: &mut Vec<String>) -> (String, String) {
        if !valid_id(&self.group_id) {
            errs.push("mqtt.group_id: must be non-empty, without '/', '+' or '#'".into());
        }
        let node = self.edge_node_id.clone().unwrap_or_else(default_node_id);
        if !valid_id(&node) {
            errs.push("mqtt.edge_node_id: must be non-empty, without '/', '+' or '#'".into());
        }
        if let Some(h) = &self.primary_host_id {
            if !valid_id(h) {
                errs.push(
                    "mqtt.primary_host_id: must be non-empty, without '/', '+' or '#'".into(),
                );
            }
        }
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("castpoint-{}-{node}", self.group_id));
        if client_id.is_empty() || client_id.len() > 65535 {
            errs.push("mqtt.client_id: must be 1..=65535 bytes".into());
        }
        (node, client_id)
    }

    /// Keys that only make sense together: password and username, client
    /// certificate and key, an mqtts:// broker and its CA.
    fn check_credentials(&self, brokers: &[Broker], errs: &mut Vec<String>) {
        if self.password.is_some() && self.username.is_none() {
            errs.push("mqtt.password: needs mqtt.username".into());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            errs.push("mqtt.client_cert: client_cert and client_key go together".into());
        }
        if brokers.iter().any(|b| b.tls) && self.ca_file.is_none() {
            errs.push("mqtt.ca_file: an mqtts:// broker needs the CA that signed it".into());
        }
    }
}

/// The duration `s` of key `mqtt.<key>` if it parses and lies in
/// `lo..=hi`; otherwise the problem goes to `errs` and `lo` stands in.
fn duration_in(key: &str, s: &str, lo: Duration, hi: Duration, errs: &mut Vec<String>) -> Duration {
    match parse_duration(s).filter(|d| (lo..=hi).contains(d)) {
        Some(d) => d,
        None => {
            errs.push(format!(
                "mqtt.{key}: expected a duration {}s..={}s like \"30s\"",
                lo.as_secs_f64(),
                hi.as_secs_f64()
            ));
            lo
        }
    }
}

impl MqttConfig {
    /// The config the node runs from: the section checked, its file paths
    /// resolved against `base` (the config file's folder), and the mqtts
    /// CA and client certificate loaded (what `start` will do), so
    /// `check-config` reports a missing or bad file. Problems are keyed
    /// inside the section.
    pub fn resolve(
        section: &MqttSection,
        base: &std::path::Path,
    ) -> Result<MqttConfig, Vec<Problem>> {
        let mut c = section
            .check()
            .map_err(|errs| errs.iter().map(|e| problem(e)).collect::<Vec<_>>())?;
        for p in [&mut c.ca_file, &mut c.client_cert, &mut c.client_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if c.brokers.iter().any(|b| b.tls) {
            super::session::tls_config(&c).map_err(|e| vec![problem(&e)])?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The section as config reads it, resolved; errors as `mqtt.key: msg`.
    fn parse_in(text: &str, base: &Path) -> Result<MqttConfig, Vec<String>> {
        let t: toml::Table = toml::from_str(text).unwrap();
        let sec: MqttSection = match t.get("mqtt") {
            None => MqttSection::default(),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| vec![e.message().to_string()])?,
        };
        MqttConfig::resolve(&sec, base).map_err(|e| e.iter().map(|p| format!("mqtt.{p}")).collect())
    }

    fn parse(text: &str) -> Result<MqttConfig, Vec<String>> {
        parse_in(text, Path::new("/etc/cp"))
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let c = parse("").unwrap();
        assert!(!c.enabled);
        assert_eq!(c.brokers[0].port, 1883);
        assert_eq!(c.command_priority, 10);
        assert!(valid_id(&c.edge_node_id));
    }

    #[test]
    fn full_section() {
        // A real CA file (relative to the config's folder): mqtts:// loads it.
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ck.cert.pem()).unwrap();
        let c = parse_in(
            r#"[mqtt]
enabled = true
brokers = ["mqtts://a.example:8883", "mqtt://[::1]:1884", "mqtt://b"]
group_id = "campus"
edge_node_id = "bldg-7"
username = "node"
password = "s3cret"
ca_file = "ca.pem"
primary_host_id = "scada"
command_priority = 9
store_forward_max = 50
"#,
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.brokers.len(), 3);
        assert!(c.brokers[0].tls);
        assert_eq!(c.brokers[1].host, "::1");
        assert_eq!(c.brokers[1].port, 1884);
        assert_eq!(c.brokers[2].port, 1883);
        assert_eq!(c.client_id, "castpoint-campus-bldg-7");
        assert_eq!(c.ca_file, Some(dir.path().join("ca.pem")));
    }

    #[test]
    fn problems_are_located_and_secrets_redacted() {
        let e = parse(
            r#"[mqtt]
brokers = ["mqtt://u:hunter2@h:1883", "http://x", "mqtts://h:0"]
group_id = "a/b"
command_priority = 0
keep_alive = "1ms"
"#,
        )
        .unwrap_err();
        let all = e.join("\n");
        assert!(!all.contains("hunter2"), "{all}");
        for k in [
            "mqtt.brokers[0]",
            "mqtt.brokers[1]",
            "mqtt.brokers[2]",
            "mqtt.group_id",
            "mqtt.command_priority",
            "mqtt.keep_alive",
        ] {
            assert!(all.contains(k), "{k} missing in {all}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = parse("[mqtt]\nusername = \"u\"\npassword = \"hunter2\"\n").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("***"), "{d}");
    }

    #[test]
    fn a_missing_ca_file_is_a_config_error() {
        let e = parse("[mqtt]\nbrokers = [\"mqtts://h\"]\nca_file = \"nope.pem\"\n").unwrap_err();
        assert!(
            e[0].contains("mqtt.ca_file") && e[0].contains("nope.pem"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse("[mqtt]\nbroker = \"mqtt://h\"\n").unwrap_err();
        assert!(e[0].contains("unknown field `broker`"), "{e:?}");
    }
}
