//! `[[route]]` tables and `primary_route` -> the engine's validated `RouteSpec`s; every error names `route[i].key` (or `route[i].output[j].key`).
//!
//! A route table is typed ([`RouteTable`], [`InputTable`], [`OutputTable`]:
//! flat structs with every key any type takes, `deny_unknown_fields`); the
//! keys a given `type` does not take are refused by [`only`]. Adding a key
//! is one field in the struct plus its name in the type's list. Durations
//! and addresses stay the strings written, so the operator API's documents
//! read back as written.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::file::ServerConfig;
use super::{parse_duration, ConfigError, Errors};
use crate::engine::coalesce;
use crate::engine::spec::{
    Coalesce, EngineSpec, HlsStore, InputKind, InputSpec, Mode, OutputKind, OutputSource,
    OutputSpec, ProfileRef, RouteSpec, RtmpInput, SrtMode, SrtSpec, DEFAULT_FAILOVER,
    DEFAULT_QUEUE, DEFAULT_SIGNAL_TIMEOUT,
};

/// One `[[route]]` of the file: the table as written and its spec.
#[derive(Debug, Clone)]
pub struct Route {
    pub table: RouteTable,
    pub spec: RouteSpec,
}

/// `[[route]]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub mode: Option<String>,
    /// Which [[profile]] transcoding uses: its number or its name.
    pub profile: Option<ProfileKey>,
    pub failover_timeout: Option<String>,
    pub signal_timeout: Option<String>,
    pub switch_back: Option<bool>,
    pub udp_coalesce: Option<String>,
    /// The route's point block (issue 20): pinned here, else assigned and
    /// kept in SQLite.
    pub slot: Option<i64>,
    #[serde(default)]
    pub input: Vec<InputTable>,
    #[serde(default)]
    pub output: Vec<OutputTable>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ProfileKey {
    Number(i64),
    Name(String),
}

impl<'de> Deserialize<'de> for ProfileKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ProfileKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [[profile]] number (1..=64) or name")
            }
            fn visit_i64<E>(self, v: i64) -> Result<ProfileKey, E> {
                Ok(ProfileKey::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ProfileKey, E> {
                i64::try_from(v).map(ProfileKey::Number).map_err(E::custom)
            }
            fn visit_str<E>(self, v: &str) -> Result<ProfileKey, E> {
                Ok(ProfileKey::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[route.input]]` as written: the keys of every input type (those a
/// given `type` does not take are refused by [`only`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputTable {
    pub name: Option<String>,
    /// udp, http, srt, generator, rtmp, rtsp.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// udp.
    pub bind: Option<String>,
    pub multicast: Option<String>,
    pub interface: Option<String>,
    /// http, rtsp.
    pub url: Option<String>,
    /// SRT: listener or caller.
    pub mode: Option<String>,
    pub addr: Option<String>,
    pub latency: Option<String>,
    pub passphrase: Option<String>,
    pub pbkeylen: Option<i64>,
    pub streamid: Option<String>,
    /// SRT listener outputs: the streamids callers may ask for.
    pub allow: Option<Vec<String>>,
    /// generator.
    pub bitrate: Option<i64>,
    /// rtmp.
    pub app: Option<String>,
    pub key: Option<String>,
    /// rtsp.
    pub transport: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub timeout: Option<String>,
    pub udp_bind: Option<String>,
}

/// `[[route.output]]` as written: the keys of every output type.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTable {
    pub name: Option<String>,
    /// udp, http, hls, record, srt, rtmp.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub queue: Option<i64>,
    /// auto or passthrough.
    pub source: Option<String>,
    /// udp.
    pub dest: Option<String>,
    pub ttl: Option<i64>,
    /// http, hls.
    pub path: Option<String>,
    /// hls, record.
    pub segment: Option<String>,
    /// hls.
    pub window: Option<i64>,
    /// hls: where finished segments are kept, "disk" or "memory".
    pub store: Option<String>,
    /// record.
    pub keep: Option<i64>,
    /// SRT: listener or caller.
    pub mode: Option<String>,
    pub addr: Option<String>,
    pub latency: Option<String>,
    pub passphrase: Option<String>,
    pub pbkeylen: Option<i64>,
    pub streamid: Option<String>,
    /// SRT listener outputs: the streamids callers may ask for.
    pub allow: Option<Vec<String>>,
    /// rtmp.
    pub preset: Option<String>,
    pub url: Option<String>,
    pub key: Option<String>,
}

/// Where errors go: the file and the table's key path.
struct At<'a> {
    file: &'a str,
    at: String,
}

impl At<'_> {
    fn err(&self, k: &str, msg: impl Into<String>, errs: &mut Errors) {
        errs.push(ConfigError::new(self.file, format!("{}.{k}", self.at), msg));
    }

    fn req<'v, T>(&self, k: &str, v: &'v Option<T>, errs: &mut Errors) -> Option<&'v T> {
        if v.is_none() {
            self.err(k, "required", errs);
        }
        v.as_ref()
    }

    fn int(&self, k: &str, v: Option<i64>, d: i64, lo: i64, hi: i64, errs: &mut Errors) -> i64 {
        match v {
            None => d,
            Some(n) if (lo..=hi).contains(&n) => n,
            Some(_) => {
                self.err(k, format!("expected an integer {lo}..={hi}"), errs);
                d
            }
        }
    }

    fn duration(&self, k: &str, v: &Option<String>, d: Duration, errs: &mut Errors) -> Duration {
        match v {
            None => d,
            Some(s) => parse_duration(s).unwrap_or_else(|| {
                let m = format!("invalid duration {s:?} (e.g. \"500ms\", \"2s\")");
                self.err(k, m, errs);
                d
            }),
        }
    }

    fn addr(&self, k: &str, v: &Option<String>, errs: &mut Errors) -> Option<SocketAddr> {
        let s = self.req(k, v, errs)?;
        s.parse()
            .map_err(|_| {
                let m = format!("invalid socket address {s:?} (e.g. \"127.0.0.1:5000\")");
                self.err(k, m, errs)
            })
            .ok()
    }

    fn ipv4(&self, k: &str, v: &Option<String>, errs: &mut Errors) -> Option<Ipv4Addr> {
        let s = v.as_ref()?;
        s.parse()
            .map_err(|_| self.err(k, format!("invalid IPv4 address {s:?}"), errs))
            .ok()
    }

    fn name(&self, k: &str, v: &Option<String>, d: String, errs: &mut Errors) -> String {
        let n = v.clone().unwrap_or(d);
        if !valid_name(&n) {
            self.err(k, "use letters, digits, '-', '_' or '.'", errs);
        }
        n
    }

    /// Refuses the keys of `table` that its `type` does not take.
    fn only(&self, table: &impl Serialize, kind: &str, allowed: &[&[&str]], errs: &mut Errors) {
        let Some(serde_json::Value::Object(m)) = crate::section::to_doc(table) else {
            return;
        };
        for k in m.keys() {
            if !allowed.iter().any(|a| a.contains(&k.as_str())) {
                self.err(
                    k,
                    format!("unknown key (type {kind:?} does not take it)"),
                    errs,
                );
            }
        }
    }
}

/// A name usable in URLs and file names.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.')
}

/// The SRT keys inputs and outputs share.
const SRT_KEYS: &[&str] = &[
    "mode",
    "addr",
    "latency",
    "passphrase",
    "pbkeylen",
    "streamid",
    "allow",
];

/// The SRT keys of an input or output table.
struct SrtKeys<'a> {
    mode: &'a Option<String>,
    addr: &'a Option<String>,
    latency: &'a Option<String>,
    passphrase: &'a Option<String>,
    pbkeylen: Option<i64>,
    streamid: &'a Option<String>,
    allow: &'a Option<Vec<String>>,
}

fn srt(t: &At, k: SrtKeys, errs: &mut Errors, output: bool) -> Option<SrtSpec> {
    let mode = match t.req("mode", k.mode, errs).map(String::as_str) {
        Some("listener") => SrtMode::Listener,
        Some("caller") => SrtMode::Caller,
        Some(m) => {
            let m = format!("unknown SRT mode {m:?} (listener, caller)");
            t.err("mode", m, errs);
            return None;
        }
        None => return None,
    };
    let addr = t.addr("addr", k.addr, errs)?;
    let latency = t.duration("latency", k.latency, Duration::from_millis(200), errs);
    let passphrase = k.passphrase.clone();
    if passphrase
        .as_ref()
        .is_some_and(|p| !(10..=79).contains(&p.len()))
    {
        t.err(
            "passphrase",
            "SRT passphrases are 10 to 79 characters",
            errs,
        );
    }
    let pbkeylen = t.int("pbkeylen", k.pbkeylen, 0, 0, 32, errs) as u8;
    if ![0, 16, 24, 32].contains(&pbkeylen) {
        t.err("pbkeylen", "expected 16, 24 or 32 (AES-128/192/256)", errs);
    }
    let streamid = k.streamid.clone();
    if streamid.as_ref().is_some_and(|s| s.len() > 512) {
        t.err("streamid", "at most 512 bytes", errs);
    }
    let allow = match k.allow {
        None => Vec::new(),
        Some(a) if output && mode == SrtMode::Listener => a.clone(),
        Some(_) => {
            let m = "an array of streamids, only on SRT listener outputs";
            t.err("allow", m, errs);
            Vec::new()
        }
    };
    Some(SrtSpec {
        mode,
        addr,
        latency,
        passphrase,
        pbkeylen,
        streamid,
        allow,
    })
}

/// `type = "rtsp"`: url, transport (tcp|udp), user, password, timeout, udp_bind.
fn rtsp(t: &At, x: &InputTable, errs: &mut Errors) -> Option<InputKind> {
    use crate::media::rtsp::{parse_url, RtspSpec, RtspTransport};
    let url = t.req("url", &x.url, errs);
    if let Some(Err(e)) = url.map(|u| parse_url(u)) {
        t.err("url", e, errs);
    }
    let transport = match x.transport.as_deref() {
        None | Some("tcp") => RtspTransport::Tcp,
        Some("udp") => RtspTransport::Udp,
        Some(v) => {
            t.err(
                "transport",
                format!("{v:?}: expected \"tcp\" or \"udp\""),
                errs,
            );
            RtspTransport::Tcp
        }
    };
    let timeout = t.duration("timeout", &x.timeout, Duration::from_secs(5), errs);
    let udp_bind = t.ipv4("udp_bind", &x.udp_bind, errs);
    Some(InputKind::Rtsp(RtspSpec {
        url: url?.clone(),
        transport,
        user: x.user.clone(),
        password: x.password.clone(),
        timeout,
        udp_bind: udp_bind.unwrap_or(Ipv4Addr::UNSPECIFIED).into(),
    }))
}

/// The keys each input type takes (besides `name` and `type`).
fn input_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "udp" => &["bind", "multicast", "interface"],
        "http" => &["url"],
        "srt" => SRT_KEYS,
        "generator" => &["bitrate"],
        "rtmp" => &["app", "key"],
        "rtsp" => &[
            "url",
            "transport",
            "user",
            "password",
            "timeout",
            "udp_bind",
        ],
        _ => &[],
    }
}

/// Validates one input table (`[[route.input]]`, `i`-th) into its spec.
fn input(t: &At, x: &InputTable, i: usize, errs: &mut Errors) -> Option<InputSpec> {
    let name = t.name("name", &x.name, format!("in{i}"), errs);
    let kind = t.req("type", &x.kind, errs)?.as_str();
    let srt_keys = || SrtKeys {
        mode: &x.mode,
        addr: &x.addr,
        latency: &x.latency,
        passphrase: &x.passphrase,
        pbkeylen: x.pbkeylen,
        streamid: &x.streamid,
        allow: &x.allow,
    };
    let spec = match kind {
        "udp" => {
            let bind = t.addr("bind", &x.bind, errs);
            let multicast = t.ipv4("multicast", &x.multicast, errs);
            if multicast.is_some_and(|m| !m.is_multicast()) {
                t.err("multicast", "not a multicast group (224.0.0.0/4)", errs);
            }
            let interface = t.ipv4("interface", &x.interface, errs);
            bind.map(|bind| InputKind::Udp {
                bind,
                multicast,
                interface: interface.unwrap_or(Ipv4Addr::UNSPECIFIED),
            })
        }
        "http" => {
            let url = t.req("url", &x.url, errs);
            if url.is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
                t.err("url", "expected an http:// or https:// URL", errs);
            }
            url.map(|url| InputKind::Http { url: url.clone() })
        }
        "srt" => srt(t, srt_keys(), errs, false).map(InputKind::Srt),
        "generator" => {
            let bitrate = t.int("bitrate", x.bitrate, 4_000_000, 100_000, 200_000_000, errs);
            Some(InputKind::Generator {
                bitrate: bitrate as u64,
            })
        }
        "rtmp" => {
            let app = t.name("app", &x.app, "live".into(), errs);
            // The stream key travels in the publish URL's last segment.
            let key = t.req("key", &x.key, errs);
            if key.is_some_and(|k| k.is_empty() || k.len() > 256 || k.contains(['/', '?', ' '])) {
                t.err("key", "1..256 characters without '/', '?' or spaces", errs);
            }
            key.map(|key| {
                InputKind::Rtmp(RtmpInput {
                    app,
                    key: key.clone(),
                })
            })
        }
        "rtsp" => rtsp(t, x, errs),
        other => {
            let m = format!("unknown input type {other:?} (udp, http, srt, generator, rtmp, rtsp)");
            t.err("type", m, errs);
            return None;
        }
    };
    t.only(x, kind, &[&["name", "type"], input_keys(kind)], errs);
    Some(InputSpec { name, kind: spec? })
}

/// The keys each output type takes (besides the common ones).
fn output_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "udp" => &["dest", "ttl"],
        "http" => &["path"],
        "hls" => &["path", "segment", "window", "store"],
        "record" => &["segment", "keep"],
        "srt" => SRT_KEYS,
        "rtmp" => &["preset", "url", "key"],
        _ => &[],
    }
}

/// `type = "rtmp"` outputs: a preset or an rtmp(s):// URL, and a key.
fn rtmp_push(t: &At, x: &OutputTable, errs: &mut Errors) -> Option<OutputKind> {
    let url = match (x.preset.as_deref(), x.url.clone()) {
        (None | Some("custom"), Some(u)) => Some(u),
        (None | Some("custom"), None) => {
            let m = "required (rtmp:// or rtmps://) unless a preset is set";
            t.err("url", m, errs);
            None
        }
        (Some(p), u) => match crate::media::ffmpeg::profile::rtmp_preset(p) {
            Some(v) => Some(u.unwrap_or_else(|| v.to_string())),
            None => {
                let m = format!("unknown preset {p:?} (youtube, twitch, facebook, custom)");
                t.err("preset", m, errs);
                None
            }
        },
    };
    if url
        .as_ref()
        .is_some_and(|u| !(u.starts_with("rtmp://") || u.starts_with("rtmps://")))
    {
        t.err("url", "expected an rtmp:// or rtmps:// URL", errs);
    }
    let key = x.key.clone();
    if key
        .as_ref()
        .is_some_and(|k| k.contains(['/', ' ', '?', '#']))
    {
        t.err(
            "key",
            "a stream key cannot contain '/', ' ', '?' or '#'",
            errs,
        );
    }
    url.map(|url| OutputKind::Rtmp { url, key })
}

/// Validates one output table of route `route` into its spec.
fn output_spec(
    t: &At,
    x: &OutputTable,
    route: &str,
    i: usize,
    errs: &mut Errors,
) -> Option<OutputSpec> {
    let name = t.name("name", &x.name, format!("out{i}"), errs);
    let queue = t.int("queue", x.queue, DEFAULT_QUEUE as i64, 1, 65536, errs) as usize;
    let source = match x.source.as_deref() {
        None | Some("auto") => OutputSource::Auto,
        Some("passthrough") => OutputSource::Passthrough,
        Some(v) => {
            t.err(
                "source",
                format!("unknown source {v:?} (auto, passthrough)"),
                errs,
            );
            OutputSource::Auto
        }
    };
    let kind = t.req("type", &x.kind, errs)?.as_str();
    let spec = match kind {
        "udp" => {
            let dest = t.addr("dest", &x.dest, errs);
            let ttl = x.ttl.map(|_| t.int("ttl", x.ttl, 1, 1, 255, errs) as u32);
            dest.map(|dest| OutputKind::Udp { dest, ttl })
        }
        "http" => {
            let path = t.name("path", &x.path, route.to_string(), errs);
            Some(OutputKind::Http { path })
        }
        "hls" => {
            let path = t.name("path", &x.path, route.to_string(), errs);
            let segment = t.duration("segment", &x.segment, Duration::from_secs(2), errs);
            if segment < Duration::from_millis(500) || segment > Duration::from_secs(60) {
                t.err("segment", "between 500ms and 60s", errs);
            }
            let window = t.int("window", x.window, 6, 2, 100, errs) as usize;
            let store = match x.store.as_deref() {
                None | Some("disk") => HlsStore::Disk,
                Some("memory") => HlsStore::Memory,
                Some(_) => {
                    t.err("store", "\"disk\" or \"memory\"", errs);
                    HlsStore::Disk
                }
            };
            Some(OutputKind::Hls {
                path,
                segment,
                window,
                store,
            })
        }
        "record" => {
            let segment = t.duration("segment", &x.segment, Duration::from_secs(600), errs);
            if segment < Duration::from_secs(1) {
                t.err("segment", "at least 1s", errs);
            }
            let keep = t.int("keep", x.keep, 0, 0, 100_000, errs) as usize;
            Some(OutputKind::Record { segment, keep })
        }
        "srt" => {
            let k = SrtKeys {
                mode: &x.mode,
                addr: &x.addr,
                latency: &x.latency,
                passphrase: &x.passphrase,
                pbkeylen: x.pbkeylen,
                streamid: &x.streamid,
                allow: &x.allow,
            };
            srt(t, k, errs, true).map(OutputKind::Srt)
        }
        "rtmp" => rtmp_push(t, x, errs),
        other => {
            let m = format!("unknown output type {other:?} (udp, http, hls, record, srt, rtmp)");
            t.err("type", m, errs);
            return None;
        }
    };
    let common: &[&str] = &["name", "type", "enabled", "queue", "source"];
    t.only(x, kind, &[common, output_keys(kind)], errs);
    Some(OutputSpec {
        name,
        enabled: x.enabled.unwrap_or(true),
        kind: spec?,
        queue,
        source,
    })
}

/// Parses one output table (`[[route.output]]`) of route `route` (the
/// operator API's output documents).
pub fn output(
    file: &str,
    at: String,
    tb: &toml::Table,
    route: &str,
    errs: &mut Errors,
    i: usize,
) -> Option<OutputSpec> {
    let x: OutputTable = super::file::typed(file, &at, toml::Value::Table(tb.clone()), errs)?;
    output_spec(&At { file, at }, &x, route, i, errs)
}

/// A `[[route]]` table as written into its typed form: the route's own
/// keys, then each input and output on its own, so one bad output does not
/// hide the next one's errors.
pub fn route_table(
    file: &str,
    at: &str,
    mut tb: toml::Table,
    errs: &mut Errors,
) -> Option<RouteTable> {
    let items = |k: &str, tb: &mut toml::Table, errs: &mut Errors| match tb.remove(k) {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a.into_iter().enumerate().collect(),
        Some(_) => {
            errs.push(ConfigError::new(
                file,
                format!("{at}.{k}"),
                format!("expected [[route.{k}]] tables"),
            ));
            Vec::new()
        }
    };
    let inputs = items("input", &mut tb, errs);
    let outputs = items("output", &mut tb, errs);
    let mut r: Option<RouteTable> = super::file::typed(file, at, toml::Value::Table(tb), errs);
    let input: Vec<InputTable> = inputs
        .into_iter()
        .filter_map(|(i, v)| super::file::typed(file, &format!("{at}.input[{i}]"), v, errs))
        .collect();
    let output: Vec<OutputTable> = outputs
        .into_iter()
        .filter_map(|(i, v)| super::file::typed(file, &format!("{at}.output[{i}]"), v, errs))
        .collect();
    if let Some(r) = r.as_mut() {
        r.input = input;
        r.output = output;
    }
    r
}

/// Validates a typed route table into its spec; the keys it does not write
/// take `d`'s values (`[route_defaults]`). `at` is e.g. `route[0]`.
pub fn route_spec(
    file: &str,
    at: &str,
    r: &RouteTable,
    d: &RouteDefaults,
    errs: &mut Errors,
) -> Option<RouteSpec> {
    let before = errs.len();
    let t = At {
        file,
        at: at.to_string(),
    };
    let name = t.req("name", &r.name, errs).cloned().unwrap_or_default();
    if !name.is_empty() && !valid_name(&name) {
        t.err("name", "use letters, digits, '-', '_' or '.'", errs);
    }
    let mode = match r.mode.as_deref() {
        None | Some("passthrough") => Mode::Passthrough,
        Some("transcode") => Mode::Transcode,
        Some(m) => {
            t.err(
                "mode",
                format!("unknown mode {m:?} (passthrough, transcode)"),
                errs,
            );
            Mode::Passthrough
        }
    };
    // Checked against the profiles by `parse`, which sees the whole file.
    let profile = match &r.profile {
        None => None,
        Some(ProfileKey::Number(n)) if (1..=64).contains(n) => Some(ProfileRef::Number(*n as u32)),
        Some(ProfileKey::Name(s)) if !s.is_empty() => Some(ProfileRef::Name(s.clone())),
        Some(_) => {
            t.err("profile", "a [[profile]] number (1..=64) or name", errs);
            None
        }
    };
    let set = d.apply(
        &t,
        &RouteDefaultsTable {
            failover_timeout: r.failover_timeout.clone(),
            signal_timeout: r.signal_timeout.clone(),
            switch_back: r.switch_back,
            udp_coalesce: r.udp_coalesce.clone(),
        },
        errs,
    );
    let slot = match r.slot {
        None => None,
        Some(n) if (1..=4096).contains(&n) => Some(n as u16),
        Some(_) => {
            t.err(
                "slot",
                "a slot number in 1..=4096 ([route_points] max_routes)",
                errs,
            );
            None
        }
    };
    let mut inputs = Vec::new();
    for (i, x) in r.input.iter().enumerate() {
        let at = At {
            file,
            at: format!("{at}.input[{i}]"),
        };
        inputs.extend(input(&at, x, i, errs));
    }
    let mut outputs = Vec::new();
    for (i, x) in r.output.iter().enumerate() {
        let at = At {
            file,
            at: format!("{at}.output[{i}]"),
        };
        outputs.extend(output_spec(&at, x, &name, i, errs));
    }
    unique(&t, "output", outputs.iter().map(|o| &o.name), errs);
    unique(&t, "input", inputs.iter().map(|x| &x.name), errs);
    if errs.len() > before {
        return None;
    }
    Some(RouteSpec {
        name,
        enabled: r.enabled.unwrap_or(true),
        mode,
        inputs,
        outputs,
        failover_timeout: set.failover_timeout,
        signal_timeout: set.signal_timeout,
        switch_back: set.switch_back,
        profile,
        udp_coalesce: set.udp_coalesce,
        slot,
    })
}

/// `[route_defaults]` as written: route keys that every route, the file's
/// and the operator API's alike, takes unless it writes its own (the way
/// MediaMTX's `pathDefaults` serves its paths). One line then sets, say,
/// the UDP send hold of 500 routes, and routes created later get it too.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDefaultsTable {
    pub failover_timeout: Option<String>,
    pub signal_timeout: Option<String>,
    pub switch_back: Option<bool>,
    pub udp_coalesce: Option<String>,
}

/// The route keys' values where a route writes none: `[route_defaults]`
/// over the built-in ones (`Default`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteDefaults {
    pub failover_timeout: Duration,
    pub signal_timeout: Duration,
    pub switch_back: bool,
    pub udp_coalesce: Coalesce,
}

impl Default for RouteDefaults {
    fn default() -> Self {
        RouteDefaults {
            failover_timeout: DEFAULT_FAILOVER,
            signal_timeout: DEFAULT_SIGNAL_TIMEOUT,
            switch_back: false,
            udp_coalesce: Coalesce::Auto,
        }
    }
}

impl RouteDefaults {
    /// Validates `[route_defaults]` (errors keyed `route_defaults.key`)
    /// over the built-in values.
    pub fn parse(file: &str, tb: &RouteDefaultsTable, errs: &mut Errors) -> RouteDefaults {
        let t = At {
            file,
            at: "route_defaults".to_string(),
        };
        RouteDefaults::default().apply(&t, tb, errs)
    }

    /// The keys `tb` writes, validated, over these values; an invalid key
    /// is reported and keeps this value.
    fn apply(&self, t: &At, tb: &RouteDefaultsTable, errs: &mut Errors) -> RouteDefaults {
        let at_least =
            |k: &str, v: &Option<String>, d: Duration, min_ms: u64, errs: &mut Errors| {
                let got = t.duration(k, v, d, errs);
                if got < Duration::from_millis(min_ms) {
                    t.err(k, format!("at least {min_ms}ms"), errs);
                }
                got
            };
        let failover_timeout = at_least(
            "failover_timeout",
            &tb.failover_timeout,
            self.failover_timeout,
            50,
            errs,
        );
        let signal_timeout = at_least(
            "signal_timeout",
            &tb.signal_timeout,
            self.signal_timeout,
            100,
            errs,
        );
        RouteDefaults {
            failover_timeout,
            signal_timeout,
            switch_back: tb.switch_back.unwrap_or(self.switch_back),
            udp_coalesce: coalesce_of(t, tb.udp_coalesce.as_deref(), self.udp_coalesce, errs),
        }
    }
}

/// `udp_coalesce`: "auto", "off" or a hold up to `coalesce::MAX_HOLD`;
/// unwritten: `d`.
fn coalesce_of(t: &At, v: Option<&str>, d: Coalesce, errs: &mut Errors) -> Coalesce {
    match v {
        None => d,
        Some("auto") => Coalesce::Auto,
        Some("off") => Coalesce::Off,
        Some(s) => match parse_duration(s) {
            Some(d) if d.is_zero() => Coalesce::Off,
            Some(d) if d <= coalesce::MAX_HOLD => Coalesce::Hold(d),
            _ => {
                let m = format!("{s:?}: \"auto\", \"off\" or a hold up to 20ms (e.g. \"1.5ms\")");
                t.err("udp_coalesce", m, errs);
                d
            }
        },
    }
}

/// Refuses a second input (or output) of the same name in one route.
fn unique<'a>(t: &At, what: &str, names: impl Iterator<Item = &'a String>, errs: &mut Errors) {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            t.err(
                &format!("{what}[{i}].name"),
                format!("duplicate {what} name {n:?}"),
                errs,
            );
        }
    }
}

/// Parses one `[[route]]` table (also used by the operator API for JSON
/// bodies converted to TOML tables). `at` is e.g. `route[0]`.
pub fn parse_route(
    file: &str,
    at: &str,
    tb: &toml::Table,
    d: &RouteDefaults,
    errs: &mut Errors,
) -> Option<RouteSpec> {
    let r = route_table(file, at, tb.clone(), errs)?;
    route_spec(file, at, &r, d, errs)
}

/// Every route of the config, with cross-route checks (unique route names,
/// unique HTTP/HLS paths, defined profiles, a primary route that exists).
pub fn parse(
    file: &str,
    tables: Vec<toml::Table>,
    c: &ServerConfig,
    media: Option<&crate::media::ffmpeg::Media>,
    errs: &mut Errors,
) -> Vec<Route> {
    let before = errs.len();
    let mut routes = Vec::new();
    for (i, t) in tables.into_iter().enumerate() {
        let at = format!("route[{i}]");
        let Some(table) = route_table(file, &at, t, errs) else {
            continue;
        };
        if let Some(spec) = route_spec(file, &at, &table, &c.route_defaults, errs) {
            routes.push(Route { table, spec });
        }
    }
    // Profile references must name a defined [[profile]] (the profiles'
    // own errors are reported by their section).
    if let Some(media) = media {
        for (i, r) in routes.iter().enumerate() {
            if let Some(Err(e)) = r.spec.profile.as_ref().map(|p| media.resolve(Some(p))) {
                errs.push(ConfigError::new(file, format!("route[{i}].profile"), e));
            }
        }
    }
    let specs: Vec<&RouteSpec> = routes.iter().map(|r| &r.spec).collect();
    cross_route(file, &specs, errs);
    if let Some(p) = &c.primary_route {
        if !routes.iter().any(|r| &r.spec.name == p) && errs.len() == before {
            errs.push(ConfigError::new(
                file,
                "primary_route",
                format!("no [[route]] named {p:?}"),
            ));
        }
    }
    routes
}

/// Unique route names and HTTP/HLS paths across routes.
fn cross_route(file: &str, routes: &[&RouteSpec], errs: &mut Errors) {
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        if !names.insert(r.name.clone()) {
            let m = format!("duplicate route name {:?}", r.name);
            errs.push(ConfigError::new(file, format!("route[{i}].name"), m));
        }
        for (j, o) in r.outputs.iter().enumerate() {
            let p = match &o.kind {
                OutputKind::Http { path } => format!("http/{path}"),
                OutputKind::Hls { path, .. } => format!("hls/{path}"),
                _ => continue,
            };
            if !paths.insert(p) {
                let k = format!("route[{i}].output[{j}].path");
                errs.push(ConfigError::new(
                    file,
                    k,
                    "path already served by another output",
                ));
            }
        }
    }
}

/// The route descriptions slot assignment works from (names, pinned
/// slots, input and output names), as the engine derives them from this
/// config's spec: what `castpoint export ede` opens route blocks for.
pub fn route_descs(c: &ServerConfig) -> Vec<crate::points::routes::RouteDesc> {
    crate::engine::bridge::route_descs(&engine_spec(c))
}

/// The engine's spec of the config's routes: the primary route is the one
/// named, else the first.
pub fn engine_spec(c: &ServerConfig) -> EngineSpec {
    let routes: Vec<RouteSpec> = c.routes.iter().map(|r| r.spec.clone()).collect();
    let primary = c
        .primary_route
        .clone()
        .or_else(|| routes.first().map(|r| r.name.clone()));
    EngineSpec { routes, primary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(extra: &str) -> Result<EngineSpec, Errors> {
        let c = Config::from_text("t.toml", extra, Path::new(".")).map_err(|e| e.0)?;
        Ok(engine_spec(&c.server))
    }

    #[test]
    fn full_route_parses() {
        let s = load(
            r#"
primary_route = "main"
[[route]]
name = "main"
switch_back = true
failover_timeout = "300ms"
signal_timeout = "2s"
[[route.input]]
type = "udp"
bind = "127.0.0.1:5000"
[[route.input]]
type = "srt"
mode = "listener"
addr = "127.0.0.1:9100"
passphrase = "0123456789abc"
pbkeylen = 32
[[route.output]]
name = "lan"
type = "udp"
dest = "239.1.1.1:5000"
ttl = 4
[[route.output]]
type = "http"
[[route.output]]
type = "srt"
mode = "listener"
addr = "127.0.0.1:9001"
allow = ["a", "b"]
"#,
        )
        .expect("valid");
        assert_eq!(s.primary.as_deref(), Some("main"));
        let r = &s.routes[0];
        assert!(r.switch_back);
        assert_eq!(r.failover_timeout, Duration::from_millis(300));
        assert_eq!(r.signal_timeout, Duration::from_secs(2));
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.outputs.len(), 3);
        assert_eq!(
            r.outputs[1].kind,
            OutputKind::Http {
                path: "main".into()
            }
        );
    }

    #[test]
    fn errors_name_route_keys() {
        let e = load(
            r#"
[[route]]
name = "a"
[[route.input]]
type = "udp"
bind = "nope"
[[route.output]]
type = "srt"
mode = "listener"
addr = "127.0.0.1:1"
pbkeylen = 20
[[route.output]]
type = "ftp"
color = 1
"#,
        )
        .expect_err("invalid");
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"route[0].input[0].bind"), "{keys:?}");
        assert!(keys.contains(&"route[0].output[0].pbkeylen"), "{keys:?}");
        assert!(keys.contains(&"route[0].output[1].type"), "{keys:?}");
        assert!(keys.contains(&"route[0].output[1].color"), "{keys:?}");
    }

    #[test]
    fn udp_coalesce_values() {
        let one = |v: &str| {
            load(&format!("[[route]]\nname = \"a\"\n{v}"))
                .map(|s| s.routes[0].udp_coalesce)
                .map_err(|e| e[0].to_string())
        };
        assert_eq!(one(""), Ok(Coalesce::Auto));
        assert_eq!(one("udp_coalesce = \"off\"\n"), Ok(Coalesce::Off));
        assert_eq!(one("udp_coalesce = \"0ms\"\n"), Ok(Coalesce::Off));
        assert_eq!(
            one("udp_coalesce = \"1.5ms\"\n"),
            Ok(Coalesce::Hold(Duration::from_micros(1500)))
        );
        let e = one("udp_coalesce = \"1s\"\n").expect_err("too long");
        assert!(e.contains("route[0].udp_coalesce"), "{e}");
    }

    /// `[route_defaults]` fills the keys a route leaves out, a route's own
    /// key wins, and a bad default is reported under its own key.
    #[test]
    fn route_defaults_fill_unwritten_keys() {
        let cfg = "[route_defaults]\nudp_coalesce = \"20ms\"\nfailover_timeout = \"2s\"\n\
                   signal_timeout = \"3s\"\nswitch_back = true\n\
                   [[route]]\nname = \"a\"\n\
                   [[route]]\nname = \"b\"\nudp_coalesce = \"off\"\nfailover_timeout = \"100ms\"\n\
                   signal_timeout = \"200ms\"\nswitch_back = false\n";
        let s = load(cfg).expect("valid");
        let (a, b) = (&s.routes[0], &s.routes[1]);
        assert_eq!(a.udp_coalesce, Coalesce::Hold(Duration::from_millis(20)));
        assert_eq!(a.failover_timeout, Duration::from_secs(2));
        assert_eq!(a.signal_timeout, Duration::from_secs(3));
        assert!(a.switch_back);
        assert_eq!(b.udp_coalesce, Coalesce::Off);
        assert_eq!(b.failover_timeout, Duration::from_millis(100));
        assert_eq!(b.signal_timeout, Duration::from_millis(200));
        assert!(!b.switch_back);
        // Without the section: the built-in values.
        let d = load("[[route]]\nname = \"a\"\n").expect("valid");
        assert_eq!(d.routes[0].udp_coalesce, Coalesce::Auto);
        assert_eq!(d.routes[0].failover_timeout, DEFAULT_FAILOVER);
        for (bad, key) in [
            ("udp_coalesce = \"1s\"", "route_defaults.udp_coalesce"),
            (
                "failover_timeout = \"10ms\"",
                "route_defaults.failover_timeout",
            ),
            ("signal_timeout = \"soon\"", "route_defaults.signal_timeout"),
            ("switch_back = 1", "route_defaults.switch_back"),
        ] {
            let e = load(&format!(
                "[route_defaults]\n{bad}\n[[route]]\nname = \"a\"\n"
            ))
            .expect_err(bad);
            let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
            assert!(keys.contains(&key), "{bad}: {keys:?}");
        }
    }

    #[test]
    fn signal_timeout_default_and_minimum() {
        let one = |v: &str| {
            load(&format!("[[route]]\nname = \"a\"\n{v}"))
                .map(|s| s.routes[0].signal_timeout)
                .map_err(|e| e[0].to_string())
        };
        assert_eq!(one(""), Ok(DEFAULT_SIGNAL_TIMEOUT));
        let e = one("signal_timeout = \"50ms\"\n").expect_err("too short");
        assert!(e.contains("route[0].signal_timeout"), "{e}");
    }

    #[test]
    fn primary_must_exist() {
        let e = load("primary_route = \"x\"\n[[route]]\nname = \"a\"\n").expect_err("invalid");
        assert_eq!(e[0].key, "primary_route");
    }

    #[test]
    fn transcode_route_rtmp_output_and_source() {
        let s = load(
            r#"
[[profile]]
number = 2
name = "sd"
[[route]]
name = "t"
mode = "transcode"
profile = "sd"
[[route.output]]
type = "rtmp"
preset = "twitch"
key = "live_123"
source = "passthrough"
[[route.output]]
type = "rtmp"
url = "rtmps://x.example/app"
"#,
        )
        .expect("valid");
        let r = &s.routes[0];
        assert_eq!(r.mode, Mode::Transcode);
        assert_eq!(r.profile, Some(ProfileRef::Name("sd".into())));
        assert_eq!(r.outputs[0].source, OutputSource::Passthrough);
        assert_eq!(
            r.outputs[0].kind,
            OutputKind::Rtmp {
                url: "rtmp://live.twitch.tv/app".into(),
                key: Some("live_123".into())
            }
        );
        assert_eq!(r.outputs[1].source, OutputSource::Auto);
        let e = load(
            r#"
[[route]]
name = "t"
mode = "transcode"
[[route.output]]
type = "rtmp"
url = "http://x"
source = "other"
[[route.output]]
type = "rtmp"
preset = "myspace"
"#,
        )
        .expect_err("invalid");
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"route[0].output[0].url"), "{keys:?}");
        assert!(keys.contains(&"route[0].output[0].source"), "{keys:?}");
        assert!(keys.contains(&"route[0].output[1].preset"), "{keys:?}");
        let e = load("[[route]]\nname = \"t\"\nprofile = 7\n").expect_err("no profile 7");
        assert_eq!(e[0].key, "route[0].profile");
        assert_eq!(e[0].message, "no [[profile]] with number 7");
    }
}
