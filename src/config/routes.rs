//! `[[route]]` tables and `primary_route` -> the engine's validated `EngineSpec`; every error names `route[i].key` (or `route[i].output[j].key`).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::{parse_duration, ConfigError, Errors, ServerConfig};
use crate::engine::coalesce;
use crate::engine::spec::{
    Coalesce, EngineSpec, InputKind, InputSpec, Mode, OutputKind, OutputSource, OutputSpec,
    ProfileRef, RouteSpec, RtmpInput, SrtMode, SrtSpec, DEFAULT_FAILOVER, DEFAULT_QUEUE,
    DEFAULT_SIGNAL_TIMEOUT,
};

/// Typed reads from one table; unknown keys are reported at the end.
struct T<'a> {
    file: &'a str,
    at: String,
    t: &'a toml::Table,
    known: Vec<&'static str>,
}

impl<'a> T<'a> {
    fn new(file: &'a str, at: String, t: &'a toml::Table) -> Self {
        T {
            file,
            at,
            t,
            known: Vec::new(),
        }
    }

    fn err(&self, k: &str, msg: impl Into<String>, errs: &mut Errors) {
        errs.push(ConfigError::new(self.file, format!("{}.{k}", self.at), msg));
    }

    fn opt_str(&mut self, k: &'static str, errs: &mut Errors) -> Option<String> {
        self.known.push(k);
        match self.t.get(k)? {
            toml::Value::String(s) => Some(s.clone()),
            _ => {
                self.err(k, "expected a string", errs);
                None
            }
        }
    }

    fn req_str(&mut self, k: &'static str, errs: &mut Errors) -> Option<String> {
        let present = self.t.contains_key(k);
        let v = self.opt_str(k, errs);
        if !present {
            self.err(k, "required", errs);
        }
        v
    }

    fn bool(&mut self, k: &'static str, d: bool, errs: &mut Errors) -> bool {
        self.known.push(k);
        match self.t.get(k) {
            None => d,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => {
                self.err(k, "expected true or false", errs);
                d
            }
        }
    }

    fn int(&mut self, k: &'static str, d: i64, lo: i64, hi: i64, errs: &mut Errors) -> i64 {
        self.known.push(k);
        match self.t.get(k) {
            None => d,
            Some(toml::Value::Integer(n)) if (lo..=hi).contains(n) => *n,
            Some(_) => {
                self.err(k, format!("expected an integer {lo}..={hi}"), errs);
                d
            }
        }
    }

    fn duration(&mut self, k: &'static str, d: Duration, errs: &mut Errors) -> Duration {
        match self.opt_str(k, errs) {
            None => d,
            Some(s) => match parse_duration(&s) {
                Some(x) => x,
                None => {
                    self.err(
                        k,
                        format!("invalid duration {s:?} (e.g. \"500ms\", \"2s\")"),
                        errs,
                    );
                    d
                }
            },
        }
    }

    fn addr(&mut self, k: &'static str, errs: &mut Errors) -> Option<SocketAddr> {
        let s = self.req_str(k, errs)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    k,
                    format!("invalid socket address {s:?} (e.g. \"127.0.0.1:5000\")"),
                    errs,
                );
                None
            }
        }
    }

    fn ipv4(&mut self, k: &'static str, errs: &mut Errors) -> Option<Ipv4Addr> {
        let s = self.opt_str(k, errs)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(k, format!("invalid IPv4 address {s:?}"), errs);
                None
            }
        }
    }

    fn tables(&mut self, k: &'static str, errs: &mut Errors) -> Vec<&'a toml::Table> {
        self.known.push(k);
        match self.t.get(k) {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => {
                let mut v = Vec::new();
                for (i, x) in a.iter().enumerate() {
                    match x {
                        toml::Value::Table(t) => v.push(t),
                        _ => self.err(&format!("{k}[{i}]"), "expected a table", errs),
                    }
                }
                v
            }
            Some(_) => {
                self.err(k, format!("expected [[route.{k}]] tables"), errs);
                Vec::new()
            }
        }
    }

    fn finish(self, errs: &mut Errors) {
        for k in self.t.keys() {
            if !self.known.contains(&k.as_str()) {
                errs.push(ConfigError::new(
                    self.file,
                    format!("{}.{k}", self.at),
                    "unknown key",
                ));
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

fn srt(t: &mut T, errs: &mut Errors, output: bool) -> Option<SrtSpec> {
    let mode = match t.req_str("mode", errs).as_deref() {
        Some("listener") => SrtMode::Listener,
        Some("caller") => SrtMode::Caller,
        Some(m) => {
            t.err(
                "mode",
                format!("unknown SRT mode {m:?} (listener, caller)"),
                errs,
            );
            return None;
        }
        None => return None,
    };
    let addr = t.addr("addr", errs)?;
    let latency = t.duration("latency", Duration::from_millis(200), errs);
    let passphrase = t.opt_str("passphrase", errs);
    if let Some(p) = &passphrase {
        if !(10..=79).contains(&p.len()) {
            t.err(
                "passphrase",
                "SRT passphrases are 10 to 79 characters",
                errs,
            );
        }
    }
    let pbkeylen = t.int("pbkeylen", 0, 0, 32, errs) as u8;
    if ![0, 16, 24, 32].contains(&pbkeylen) {
        t.err("pbkeylen", "expected 16, 24 or 32 (AES-128/192/256)", errs);
    }
    let streamid = t.opt_str("streamid", errs);
    if streamid.as_ref().is_some_and(|s| s.len() > 512) {
        t.err("streamid", "at most 512 bytes", errs);
    }
    t.known.push("allow");
    let mut allow = Vec::new();
    match t.t.get("allow") {
        None => {}
        Some(toml::Value::Array(a)) if output && mode == SrtMode::Listener => {
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) => allow.push(s.to_string()),
                    None => t.err(&format!("allow[{i}]"), "expected a streamid string", errs),
                }
            }
        }
        Some(_) => t.err(
            "allow",
            "an array of streamids, only on SRT listener outputs",
            errs,
        ),
    }
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
fn rtsp(t: &mut T, errs: &mut Errors) -> Option<InputKind> {
    use crate::media::rtsp::{parse_url, RtspSpec, RtspTransport};
    let url = t.req_str("url", errs);
    if let Some(Err(e)) = url.as_deref().map(parse_url) {
        t.err("url", e, errs);
    }
    let transport = match t.opt_str("transport", errs).as_deref() {
        None | Some("tcp") => RtspTransport::Tcp,
        Some("udp") => RtspTransport::Udp,
        Some(x) => {
            t.err(
                "transport",
                format!("{x:?}: expected \"tcp\" or \"udp\""),
                errs,
            );
            RtspTransport::Tcp
        }
    };
    let user = t.opt_str("user", errs);
    let password = t.opt_str("password", errs);
    let timeout = t.duration("timeout", Duration::from_secs(5), errs);
    let udp_bind = t
        .ipv4("udp_bind", errs)
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
        .into();
    Some(InputKind::Rtsp(RtspSpec {
        url: url?,
        transport,
        user,
        password,
        timeout,
        udp_bind,
    }))
}

fn input(
    file: &str,
    at: String,
    tb: &toml::Table,
    errs: &mut Errors,
    i: usize,
) -> Option<InputSpec> {
    let mut t = T::new(file, at, tb);
    let name = t.opt_str("name", errs).unwrap_or_else(|| format!("in{i}"));
    if !valid_name(&name) {
        t.err("name", "use letters, digits, '-', '_' or '.'", errs);
    }
    let kind = match t.req_str("type", errs).as_deref() {
        Some("udp") => {
            let bind = t.addr("bind", errs);
            let multicast = t.ipv4("multicast", errs);
            if multicast.is_some_and(|m| !m.is_multicast()) {
                t.err("multicast", "not a multicast group (224.0.0.0/4)", errs);
            }
            let interface = t.ipv4("interface", errs).unwrap_or(Ipv4Addr::UNSPECIFIED);
            bind.map(|bind| InputKind::Udp {
                bind,
                multicast,
                interface,
            })
        }
        Some("http") => {
            let url = t.req_str("url", errs);
            if let Some(u) = &url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    t.err("url", "expected an http:// or https:// URL", errs);
                }
            }
            url.map(|url| InputKind::Http { url })
        }
        Some("srt") => srt(&mut t, errs, false).map(InputKind::Srt),
        Some("generator") => {
            let bitrate = t.int("bitrate", 4_000_000, 100_000, 200_000_000, errs);
            Some(InputKind::Generator {
                bitrate: bitrate as u64,
            })
        }
        Some("rtmp") => {
            let app = t.opt_str("app", errs).unwrap_or_else(|| "live".to_string());
            if !valid_name(&app) {
                t.err("app", "use letters, digits, '-', '_' or '.'", errs);
            }
            // The stream key travels in the publish URL's last segment.
            let key = t.req_str("key", errs);
            if key
                .as_deref()
                .is_some_and(|k| k.is_empty() || k.len() > 256 || k.contains(['/', '?', ' ']))
            {
                t.err("key", "1..256 characters without '/', '?' or spaces", errs);
            }
            key.map(|key| InputKind::Rtmp(RtmpInput { app, key }))
        }
        Some("rtsp") => rtsp(&mut t, errs),
        Some(x) => {
            t.err(
                "type",
                format!("unknown input type {x:?} (udp, http, srt, generator, rtmp, rtsp)"),
                errs,
            );
            None
        }
        None => None,
    };
    t.finish(errs);
    Some(InputSpec { name, kind: kind? })
}

/// Parses one output table (`[[route.output]]`) of route `route`.
pub fn output(
    file: &str,
    at: String,
    tb: &toml::Table,
    route: &str,
    errs: &mut Errors,
    i: usize,
) -> Option<OutputSpec> {
    let mut t = T::new(file, at, tb);
    let name = t.opt_str("name", errs).unwrap_or_else(|| format!("out{i}"));
    if !valid_name(&name) {
        t.err("name", "use letters, digits, '-', '_' or '.'", errs);
    }
    let enabled = t.bool("enabled", true, errs);
    let queue = t.int("queue", DEFAULT_QUEUE as i64, 1, 65536, errs) as usize;
    let source = match t.opt_str("source", errs).as_deref() {
        None | Some("auto") => OutputSource::Auto,
        Some("passthrough") => OutputSource::Passthrough,
        Some(x) => {
            t.err(
                "source",
                format!("unknown source {x:?} (auto, passthrough)"),
                errs,
            );
            OutputSource::Auto
        }
    };
    let kind = match t.req_str("type", errs).as_deref() {
        Some("udp") => {
            let dest = t.addr("dest", errs);
            t.known.push("ttl");
            let ttl = match t.t.get("ttl") {
                None => None,
                Some(toml::Value::Integer(n)) if (1..=255).contains(n) => Some(*n as u32),
                Some(_) => {
                    t.err("ttl", "expected an integer 1..=255", errs);
                    None
                }
            };
            dest.map(|dest| OutputKind::Udp { dest, ttl })
        }
        Some("http") => {
            let path = t.opt_str("path", errs).unwrap_or_else(|| route.to_string());
            if !valid_name(&path) {
                t.err("path", "use letters, digits, '-', '_' or '.'", errs);
            }
            Some(OutputKind::Http { path })
        }
        Some("hls") => {
            let path = t.opt_str("path", errs).unwrap_or_else(|| route.to_string());
            if !valid_name(&path) {
                t.err("path", "use letters, digits, '-', '_' or '.'", errs);
            }
            let segment = t.duration("segment", Duration::from_secs(2), errs);
            if segment < Duration::from_millis(500) || segment > Duration::from_secs(60) {
                t.err("segment", "between 500ms and 60s", errs);
            }
            let window = t.int("window", 6, 2, 100, errs) as usize;
            Some(OutputKind::Hls {
                path,
                segment,
                window,
            })
        }
        Some("record") => {
            let segment = t.duration("segment", Duration::from_secs(600), errs);
            if segment < Duration::from_secs(1) {
                t.err("segment", "at least 1s", errs);
            }
            let keep = t.int("keep", 0, 0, 100_000, errs) as usize;
            Some(OutputKind::Record { segment, keep })
        }
        Some("srt") => srt(&mut t, errs, true).map(OutputKind::Srt),
        Some("rtmp") => {
            let preset = t.opt_str("preset", errs);
            let url = t.opt_str("url", errs);
            let key = t.opt_str("key", errs);
            let url = match (preset.as_deref(), url) {
                (None | Some("custom"), Some(u)) => Some(u),
                (None | Some("custom"), None) => {
                    t.err(
                        "url",
                        "required (rtmp:// or rtmps://) unless a preset is set",
                        errs,
                    );
                    None
                }
                (Some(p), u) => match crate::media::ffmpeg::profile::rtmp_preset(p) {
                    Some(x) => Some(u.unwrap_or_else(|| x.to_string())),
                    None => {
                        t.err(
                            "preset",
                            format!("unknown preset {p:?} (youtube, twitch, facebook, custom)"),
                            errs,
                        );
                        None
                    }
                },
            };
            if let Some(u) = &url {
                if !(u.starts_with("rtmp://") || u.starts_with("rtmps://")) {
                    t.err("url", "expected an rtmp:// or rtmps:// URL", errs);
                }
            }
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
        Some(x) => {
            t.err(
                "type",
                format!("unknown output type {x:?} (udp, http, hls, record, srt, rtmp)"),
                errs,
            );
            None
        }
        None => None,
    };
    t.finish(errs);
    Some(OutputSpec {
        name,
        enabled,
        kind: kind?,
        queue,
        source,
    })
}

/// Parses one `[[route]]` table (also used by the operator API for JSON-ish
/// bodies converted to TOML tables). `at` is e.g. `route[0]`.
pub fn parse_route(file: &str, at: &str, tb: &toml::Table, errs: &mut Errors) -> Option<RouteSpec> {
    let before = errs.len();
    let mut t = T::new(file, at.to_string(), tb);
    let name = t.req_str("name", errs).unwrap_or_default();
    if !name.is_empty() && !valid_name(&name) {
        t.err("name", "use letters, digits, '-', '_' or '.'", errs);
    }
    let enabled = t.bool("enabled", true, errs);
    let mode = match t.opt_str("mode", errs).as_deref() {
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
    // Which [[profile]] transcoding uses: its number or its name (checked
    // against the profiles by `parse`, which sees the whole file).
    t.known.push("profile");
    let profile = match t.t.get("profile") {
        None => None,
        Some(toml::Value::Integer(n)) if (1..=64).contains(n) => {
            Some(ProfileRef::Number(*n as u32))
        }
        Some(toml::Value::String(s)) if !s.is_empty() => Some(ProfileRef::Name(s.clone())),
        Some(_) => {
            t.err("profile", "a [[profile]] number (1..=64) or name", errs);
            None
        }
    };
    let failover_timeout = t.duration("failover_timeout", DEFAULT_FAILOVER, errs);
    if failover_timeout < Duration::from_millis(50) {
        t.err("failover_timeout", "at least 50ms", errs);
    }
    let signal_timeout = t.duration("signal_timeout", DEFAULT_SIGNAL_TIMEOUT, errs);
    if signal_timeout < Duration::from_millis(100) {
        t.err("signal_timeout", "at least 100ms", errs);
    }
    let switch_back = t.bool("switch_back", false, errs);
    // The route's point block (issue 20): pinned, or assigned and kept.
    t.known.push("slot");
    let slot = match t.t.get("slot") {
        None => None,
        Some(toml::Value::Integer(n)) if (1..=4096).contains(n) => Some(*n as u16),
        Some(_) => {
            t.err(
                "slot",
                "a slot number in 1..=4096 ([route_points] max_routes)",
                errs,
            );
            None
        }
    };
    let udp_coalesce = match t.opt_str("udp_coalesce", errs).as_deref() {
        None | Some("auto") => Coalesce::Auto,
        Some("off") => Coalesce::Off,
        Some(s) => match parse_duration(s) {
            Some(d) if d.is_zero() => Coalesce::Off,
            Some(d) if d <= coalesce::MAX_HOLD => Coalesce::Hold(d),
            _ => {
                t.err(
                    "udp_coalesce",
                    format!("{s:?}: \"auto\", \"off\" or a hold up to 20ms (e.g. \"1.5ms\")"),
                    errs,
                );
                Coalesce::Auto
            }
        },
    };
    let mut inputs = Vec::new();
    for (i, it) in t.tables("input", errs).into_iter().enumerate() {
        if let Some(x) = input(file, format!("{at}.input[{i}]"), it, errs, i) {
            inputs.push(x);
        }
    }
    let mut outputs = Vec::new();
    for (i, ot) in t.tables("output", errs).into_iter().enumerate() {
        if let Some(x) = output(file, format!("{at}.output[{i}]"), ot, &name, errs, i) {
            outputs.push(x);
        }
    }
    let mut names = HashSet::new();
    for (i, o) in outputs.iter().enumerate() {
        if !names.insert(o.name.clone()) {
            errs.push(ConfigError::new(
                file,
                format!("{at}.output[{i}].name"),
                format!("duplicate output name {:?}", o.name),
            ));
        }
    }
    let mut names = HashSet::new();
    for (i, x) in inputs.iter().enumerate() {
        if !names.insert(x.name.clone()) {
            errs.push(ConfigError::new(
                file,
                format!("{at}.input[{i}].name"),
                format!("duplicate input name {:?}", x.name),
            ));
        }
    }
    t.finish(errs);
    if errs.len() > before {
        return None;
    }
    Some(RouteSpec {
        name,
        enabled,
        mode,
        inputs,
        outputs,
        failover_timeout,
        signal_timeout,
        switch_back,
        profile,
        udp_coalesce,
        slot,
    })
}

/// Every route of the config, with cross-route checks (unique route names,
/// unique HTTP/HLS paths, a primary route that exists).
pub fn parse(file: &str, server: &ServerConfig) -> Result<EngineSpec, Errors> {
    let mut errs = Vec::new();
    let mut routes = Vec::new();
    for (i, t) in server.routes.iter().enumerate() {
        if let Some(r) = parse_route(file, &format!("route[{i}]"), t, &mut errs) {
            routes.push(r);
        }
    }
    // Profile references must name a defined [[profile]] (the media
    // section's own errors are reported by its parser).
    if let Ok(media) = crate::media::ffmpeg::Media::parse(file, &server.extra) {
        for (i, r) in routes.iter().enumerate() {
            if let Some(p) = &r.profile {
                if let Err(e) = media.resolve(Some(p)) {
                    errs.push(ConfigError::new(file, format!("route[{i}].profile"), e));
                }
            }
        }
    }
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        if !names.insert(r.name.clone()) {
            errs.push(ConfigError::new(
                file,
                format!("route[{i}].name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        for (j, o) in r.outputs.iter().enumerate() {
            let p = match &o.kind {
                OutputKind::Http { path } => format!("http/{path}"),
                OutputKind::Hls { path, .. } => format!("hls/{path}"),
                _ => continue,
            };
            if !paths.insert(p) {
                errs.push(ConfigError::new(
                    file,
                    format!("route[{i}].output[{j}].path"),
                    "path already served by another output",
                ));
            }
        }
    }
    let primary = match &server.primary_route {
        Some(p) if !routes.iter().any(|r| &r.name == p) && errs.is_empty() => {
            errs.push(ConfigError::new(
                file,
                "primary_route",
                format!("no [[route]] named {p:?}"),
            ));
            None
        }
        Some(p) => Some(p.clone()),
        // Without an explicit choice the first route is the primary one.
        None => routes.first().map(|r| r.name.clone()),
    };
    if errs.is_empty() {
        Ok(EngineSpec { routes, primary })
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(extra: &str) -> Result<EngineSpec, Errors> {
        let c = Config::from_text("t.toml", extra, Path::new(".")).map_err(|e| e.0)?;
        parse("t.toml", &c.server)
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
