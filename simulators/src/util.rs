//! Small helpers shared by the simulator binaries: unit parsing, endpoint
//! URLs, percentiles and Markdown tables.

use anyhow::{bail, Context};
use std::net::SocketAddr;

/// Parses "4M", "500k", "2.5m", "20000000" as bits per second.
pub fn parse_bitrate(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().with_context(|| format!("bad bit rate {s:?}"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("bad bit rate {s:?}");
    }
    Ok((v * mul) as u64)
}

/// A transport endpoint given as a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// udp://host:port (unicast or multicast group)
    Udp(SocketAddr),
    /// srt://host:port: caller
    SrtCaller {
        addr: SocketAddr,
        stream_id: Option<String>,
    },
    /// srt://:port or srt://addr:port?mode=listener: listener
    SrtListener { addr: SocketAddr },
    /// http://... (viewers only)
    Http(String),
    /// file path (ts-source only); "-" is stdout
    File(String),
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn resolve(hostport: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let hp = if hostport.starts_with(':') {
        format!("0.0.0.0{hostport}")
    } else {
        hostport.to_string()
    };
    hp.to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport:?}"))?
        .next()
        .with_context(|| format!("no address for {hostport:?}"))
}

impl Endpoint {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Self::Http(s.to_string()));
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(Self::File(s.to_string()));
        };
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hostport = hostport.trim_end_matches('/');
        match scheme {
            "udp" => Ok(Self::Udp(resolve(hostport)?)),
            "srt" => {
                let listener =
                    hostport.starts_with(':') || query_param(query, "mode") == Some("listener");
                let addr = resolve(hostport)?;
                if listener {
                    Ok(Self::SrtListener { addr })
                } else {
                    Ok(Self::SrtCaller {
                        addr,
                        stream_id: query_param(query, "streamid").map(str::to_string),
                    })
                }
            }
            "file" => Ok(Self::File(rest.to_string())),
            other => {
                bail!("unsupported scheme {other:?} in {s:?} (udp://, srt://, http://, file://)")
            }
        }
    }
}

/// Nearest-rank percentile of an ascending slice.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(idx).copied()
}

/// Formats an optional number with `prec` decimals, "-" when absent.
pub fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// Renders a Markdown table.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    s.push_str(&format!("| {} |\n", headers.join(" | ")));
    s.push_str(&format!(
        "|{}\n",
        headers.iter().map(|_| "---|").collect::<String>()
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("4M").expect("4M"), 4_000_000);
        assert_eq!(parse_bitrate("500k").expect("500k"), 500_000);
        assert_eq!(parse_bitrate("2.5m").expect("2.5m"), 2_500_000);
        assert!(parse_bitrate("x").is_err());
        assert!(parse_bitrate("-1").is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("udp://127.0.0.1:5000").expect("udp"),
            Endpoint::Udp("127.0.0.1:5000".parse().expect("addr"))
        );
        assert!(matches!(
            Endpoint::parse("srt://:9000").expect("srt"),
            Endpoint::SrtListener { .. }
        ));
        assert!(matches!(
            Endpoint::parse("srt://127.0.0.1:9000?streamid=live/a").expect("srt"),
            Endpoint::SrtCaller { stream_id: Some(ref s), .. } if s == "live/a"
        ));
        assert!(matches!(
            Endpoint::parse("srt://127.0.0.1:9000?mode=listener").expect("srt"),
            Endpoint::SrtListener { .. }
        ));
        assert!(Endpoint::parse("rtmp://x:1").is_err());
        assert_eq!(
            Endpoint::parse("out.ts").expect("file"),
            Endpoint::File("out.ts".into())
        );
    }

    #[test]
    fn table() {
        let t = markdown_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}
