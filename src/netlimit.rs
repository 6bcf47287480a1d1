//! Connection caps shared by the TCP listeners (HTTP, Modbus, RTMP): a per-listener total, a per-source-address share, rate-limited and counted refusals, and the process's file-descriptor budget.
//!
//! Why: every accepted connection costs a file descriptor, and the process
//! has one fd table for all listeners. Without caps one flood (a slowloris
//! against HTTP, one host holding every Modbus slot) exhausts it and every
//! listener stops accepting. Each listener therefore holds at most its
//! `max_connections`, one address at most `max_connections_per_ip` of
//! them, and the caps of all listeners together stay below the fd limit
//! ([`fit_caps`]), so a flooded listener refuses its own clients only.
//!
//! A refused connection is accepted and closed at once (so it leaves the
//! kernel's backlog and costs an fd only for that moment), counted in
//! [`ListenerStats`] and logged at most once a second per listener.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// File descriptors kept free for everything that is not an accepted
/// connection: the store, UDP/SRT sockets of routes, ffmpeg pipes, the
/// listeners themselves, BACnet, recordings. A quarter of a small limit.
pub const FD_RESERVE: u64 = 256;

fn reserve(fd_limit: u64) -> u64 {
    FD_RESERVE.min(fd_limit / 4)
}

/// Caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_connections_per_ip: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's `max_connections` is reached.
    Total,
    /// The source address holds `max_connections_per_ip` already.
    PerIp,
}

/// Counters of one listener (for logs, tests and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub listener: String,
    /// The listener's bound address (several apps can share a process in
    /// tests).
    pub addr: Option<SocketAddr>,
    pub open: u64,
    pub accepted_total: u64,
    /// Refused because the listener was full.
    pub refused_total: u64,
    /// Refused because the source address held its share.
    pub refused_per_ip: u64,
}

struct State {
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// Admission control for one listener. Cheap to share (`Arc`).
pub struct Limiter {
    name: String,
    addr: Option<SocketAddr>,
    caps: Caps,
    state: Mutex<State>,
    accepted: AtomicU64,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
}

/// A connection slot; dropping it frees the slot.
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock();
        s.open = s.open.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Live limiters, for [`snapshot`] (weak: a stopped listener disappears).
static REGISTRY: Mutex<Vec<Weak<Limiter>>> = Mutex::new(Vec::new());

/// An IPv4 client on a dual-stack socket shows as `::ffff:a.b.c.d`; it is
/// the same host as `a.b.c.d` and shares its quota.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Limiter {
    /// A limiter for the listener `name` (`http`, `modbus`, `rtmp`) bound
    /// at `addr`, registered for [`snapshot`]. Caps of 0 are taken as 1.
    pub fn new(name: &str, addr: Option<SocketAddr>, caps: Caps) -> Arc<Limiter> {
        let caps = Caps {
            max_connections: caps.max_connections.max(1),
            max_connections_per_ip: caps.max_connections_per_ip.max(1),
        };
        let l = Arc::new(Limiter {
            name: name.to_string(),
            addr,
            caps,
            state: Mutex::new(State {
                open: 0,
                per_ip: HashMap::new(),
                last_log: None,
                unlogged: 0,
            }),
            accepted: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
        });
        let mut reg = REGISTRY.lock();
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&l));
        l
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Admits a connection from `peer` or refuses it (counted and logged,
    /// at most one log line a second per listener).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        let ip = canonical(peer);
        let mut s = self.state.lock();
        let held = s.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if s.open >= self.caps.max_connections {
            Some(Refusal::Total)
        } else if held >= self.caps.max_connections_per_ip {
            Some(Refusal::PerIp)
        } else {
            None
        };
        let Some(r) = refusal else {
            s.open += 1;
            s.per_ip.insert(ip, held + 1);
            self.accepted.fetch_add(1, Relaxed);
            return Ok(Permit {
                limiter: self.clone(),
                ip,
            });
        };
        match r {
            Refusal::Total => self.refused_total.fetch_add(1, Relaxed),
            Refusal::PerIp => self.refused_per_ip.fetch_add(1, Relaxed),
        };
        s.unlogged += 1;
        let now = Instant::now();
        if s.last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            let why = match r {
                Refusal::Total => {
                    format!("max_connections = {} reached", self.caps.max_connections)
                }
                Refusal::PerIp => format!(
                    "{ip} holds max_connections_per_ip = {}",
                    self.caps.max_connections_per_ip
                ),
            };
            tracing::warn!(
                "{}: {} connection(s) refused in the last second, latest from {ip}: {why} (refused so far: {} full, {} per address)",
                self.name,
                s.unlogged,
                self.refused_total.load(Relaxed),
                self.refused_per_ip.load(Relaxed),
            );
            s.last_log = Some(now);
            s.unlogged = 0;
        }
        Err(r)
    }

    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
            listener: self.name.clone(),
            addr: self.addr,
            open: self.state.lock().open as u64,
            accepted_total: self.accepted.load(Relaxed),
            refused_total: self.refused_total.load(Relaxed),
            refused_per_ip: self.refused_per_ip.load(Relaxed),
        }
    }
}

/// Counters of every live listener.
pub fn snapshot() -> Vec<ListenerStats> {
    REGISTRY
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .map(|l| l.stats())
        .collect()
}

/// The counters of every live listener in Prometheus text format (for
/// `/metrics`).
pub fn prometheus() -> String {
    let mut out = String::new();
    let all = snapshot();
    let label = |l: &ListenerStats| {
        let addr = l.addr.map(|a| a.to_string()).unwrap_or_default();
        format!("listener=\"{}\",addr=\"{addr}\"", l.listener)
    };
    out.push_str("# HELP castpoint_connections_open Connections open on a TCP listener.\n# TYPE castpoint_connections_open gauge\n");
    for l in &all {
        let _ = writeln!(out, "castpoint_connections_open{{{}}} {}", label(l), l.open);
    }
    out.push_str("# HELP castpoint_connections_accepted_total Connections admitted by a TCP listener.\n# TYPE castpoint_connections_accepted_total counter\n");
    for l in &all {
        let _ = writeln!(
            out,
            "castpoint_connections_accepted_total{{{}}} {}",
            label(l),
            l.accepted_total
        );
    }
    out.push_str("# HELP castpoint_connections_refused_total Connections refused by a TCP listener's caps (reason: full = max_connections, per_ip = max_connections_per_ip).\n# TYPE castpoint_connections_refused_total counter\n");
    for l in &all {
        let _ = writeln!(
            out,
            "castpoint_connections_refused_total{{{},reason=\"full\"}} {}",
            label(l),
            l.refused_total
        );
        let _ = writeln!(
            out,
            "castpoint_connections_refused_total{{{},reason=\"per_ip\"}} {}",
            label(l),
            l.refused_per_ip
        );
    }
    out
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the kernel allows it
/// without privileges; the default soft 1,024 is what a flood exhausts)
/// and returns the soft limit now in force (`None`: unknown).
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!("open-file limit raised from {soft} to {hard}");
                return Some(hard);
            }
            Err(e) => tracing::warn!("cannot raise the open-file limit {soft} to {hard}: {e}"),
        }
    }
    Some(soft)
}

/// Scales the listeners' `max_connections` down, proportionally, when
/// together they would not leave [`FD_RESERVE`] descriptors (a quarter of
/// a limit under 1,024) free under
/// `fd_limit`: so a flood of one listener can never starve the others of
/// descriptors. Per-address caps are clamped to the total. Logs what it
/// changed.
pub fn fit_caps(fd_limit: u64, listeners: &mut [(&str, &mut Caps)]) {
    let reserved = reserve(fd_limit);
    let budget = fd_limit
        .saturating_sub(reserved)
        .max(listeners.len() as u64);
    let sum: u64 = listeners
        .iter()
        .map(|(_, c)| c.max_connections as u64)
        .sum();
    if sum > budget {
        for (name, c) in listeners.iter_mut() {
            let was = c.max_connections;
            let scaled = (was as u64 * budget / sum).max(1) as usize;
            c.max_connections = scaled;
            tracing::warn!(
                "{name}: max_connections {was} lowered to {scaled}: the listeners' caps ({sum} in all) must stay below the open-file limit {fd_limit} minus {reserved} reserved"
            );
        }
    }
    for (_, c) in listeners.iter_mut() {
        c.max_connections_per_ip = c.max_connections_per_ip.min(c.max_connections);
    }
}

/// The caps of the TCP listeners, after [`fit_caps`].
#[derive(Debug, Clone, Copy)]
pub struct ListenerCaps {
    pub http: Caps,
    pub modbus: Caps,
    pub rtmp: Caps,
}

impl ListenerCaps {
    /// Raises the open-file limit and fits the enabled listeners' caps
    /// (`None`: disabled, takes no share) under it.
    pub fn fit(http: Option<Caps>, modbus: Option<Caps>, rtmp: Option<Caps>) -> ListenerCaps {
        let one = Caps {
            max_connections: 1,
            max_connections_per_ip: 1,
        };
        let (mut h, mut m, mut r) = (
            http.unwrap_or(one),
            modbus.unwrap_or(one),
            rtmp.unwrap_or(one),
        );
        if let Some(limit) = raise_fd_limit() {
            let mut list: Vec<(&str, &mut Caps)> = Vec::new();
            if http.is_some() {
                list.push(("http", &mut h));
            }
            if modbus.is_some() {
                list.push(("modbus", &mut m));
            }
            if rtmp.is_some() {
                list.push(("rtmp", &mut r));
            }
            fit_caps(limit, &mut list);
        }
        ListenerCaps {
            http: h,
            modbus: m,
            rtmp: r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn total_and_per_ip_caps() {
        let l = Limiter::new(
            "test",
            None,
            Caps {
                max_connections: 3,
                max_connections_per_ip: 2,
            },
        );
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let _a2 = l.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(l.admit(ip("10.0.0.1")).err(), Some(Refusal::PerIp));
        let _b1 = l.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(l.admit(ip("10.0.0.3")).err(), Some(Refusal::Total));
        drop(a1);
        let _c = l.admit(ip("10.0.0.3")).unwrap();
        let s = l.stats();
        assert_eq!(
            (s.open, s.accepted_total, s.refused_total, s.refused_per_ip),
            (3, 4, 1, 1)
        );
        assert!(snapshot().iter().any(|s| s.listener == "test"));
        assert!(prometheus().contains(
            "castpoint_connections_refused_total{listener=\"test\",addr=\"\",reason=\"per_ip\"} 1"
        ));
    }

    #[test]
    fn caps_fit_the_fd_limit() {
        let mut h = Caps {
            max_connections: 900,
            max_connections_per_ip: 1000,
        };
        let mut m = Caps {
            max_connections: 100,
            max_connections_per_ip: 8,
        };
        fit_caps(1024, &mut [("http", &mut h), ("modbus", &mut m)]);
        assert!(h.max_connections + m.max_connections <= 1024 - FD_RESERVE as usize);
        assert!(m.max_connections >= 8 && h.max_connections_per_ip == h.max_connections);
        let (h0, m0) = (h, m);
        fit_caps(1 << 20, &mut [("http", &mut h), ("modbus", &mut m)]);
        assert_eq!((h, m), (h0, m0));
    }
}
