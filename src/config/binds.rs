//! Static bind conflicts: every listener a config declares (HTTP, Modbus, BACnet, RTMP, route inputs and SRT listener outputs), checked pairwise before anything binds.

use std::net::{IpAddr, SocketAddr};

use super::{ConfigError, Errors, ServerConfig};
use crate::engine::spec::{InputKind, OutputKind, SrtMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One socket the config asks for: who (a config key), protocol, address.
struct Listener {
    who: String,
    proto: Proto,
    addr: SocketAddr,
}

/// Two binds collide when protocol and port match and one address covers
/// the other: equal, or one is a wildcard covering the other. 0.0.0.0
/// takes the port on every IPv4 address; `[::]` on every address of
/// *both* families, because castpoint's sockets are dual-stack (it never
/// sets IPV6_V6ONLY, and Linux's default `net.ipv6.bindv6only = 0` makes
/// a `[::]` bind refuse, or be refused by, any IPv4 bind of the port —
/// measured: `[::]:P` after `127.0.0.1:P` fails with EADDRINUSE, TCP and
/// UDP alike). Port 0 asks the system for a free port, so it never
/// collides.
fn overlaps(a: &Listener, b: &Listener) -> bool {
    if a.proto != b.proto || a.addr.port() == 0 || a.addr.port() != b.addr.port() {
        return false;
    }
    let (x, y) = (a.addr.ip(), b.addr.ip());
    let covers = |w: IpAddr, o: IpAddr| w.is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    x == y || covers(x, y) || covers(y, x)
}

/// Every listener of the file (routes that did not validate are left out).
fn listeners(server: &ServerConfig) -> Vec<Listener> {
    let mut v = Vec::new();
    let mut push = |who: String, proto, addr| v.push(Listener { who, proto, addr });
    if server.http.enabled {
        push("http.bind".into(), Proto::Tcp, server.http.bind);
    }
    if server.modbus.enabled {
        push("modbus.bind".into(), Proto::Tcp, server.modbus.bind);
    }
    if server.bacnet.enabled {
        push("bacnet.bind".into(), Proto::Udp, server.bacnet.bind);
    }
    if server.rtmp.enabled {
        push("rtmp.bind".into(), Proto::Tcp, server.rtmp.bind);
    }
    for r in server.routes.iter().map(|r| &r.spec) {
        for i in &r.inputs {
            let who = format!("route {:?} input {:?}", r.name, i.name);
            match &i.kind {
                // A multicast input binds the group's port on the group:
                // inputs of different groups may share a port.
                InputKind::Udp {
                    bind, multicast, ..
                } => {
                    let addr = match multicast {
                        Some(g) => SocketAddr::new(IpAddr::V4(*g), bind.port()),
                        None => *bind,
                    };
                    push(who, Proto::Udp, addr)
                }
                InputKind::Srt(s) if s.mode == SrtMode::Listener => push(who, Proto::Udp, s.addr),
                _ => {}
            }
        }
        for o in &r.outputs {
            if let OutputKind::Srt(s) = &o.kind {
                if s.mode == SrtMode::Listener {
                    let who = format!("route {:?} output {:?}", r.name, o.name);
                    push(who, Proto::Udp, s.addr);
                }
            }
        }
    }
    v
}

/// One error per pair of listeners that cannot both bind.
pub fn conflicts(file: &str, server: &ServerConfig) -> Errors {
    let l = listeners(server);
    let mut errs = Vec::new();
    for (i, a) in l.iter().enumerate() {
        for b in &l[i + 1..] {
            if overlaps(a, b) {
                errs.push(ConfigError::new(
                    file,
                    b.who.clone(),
                    format!(
                        "{} {} is also bound by {} ({}): one of them would fail to bind or get the other's traffic",
                        b.proto.as_str(),
                        b.addr,
                        a.who,
                        a.addr
                    ),
                ));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(proto: Proto, a: &str) -> Listener {
        Listener {
            who: a.into(),
            proto,
            addr: a.parse().expect("literal"),
        }
    }

    #[test]
    fn wildcard_covers_every_address_and_port_zero_never_collides() {
        let t = |a, b| overlaps(&l(Proto::Tcp, a), &l(Proto::Tcp, b));
        assert!(t("0.0.0.0:80", "127.0.0.1:80"));
        assert!(t("127.0.0.1:80", "0.0.0.0:80"));
        assert!(t("10.0.0.1:80", "10.0.0.1:80"));
        assert!(!t("10.0.0.1:80", "10.0.0.2:80"));
        assert!(!t("0.0.0.0:0", "0.0.0.0:0"));
        assert!(!t("0.0.0.0:80", "0.0.0.0:81"));
        // [::] is dual-stack: it takes the port on IPv4 addresses too.
        assert!(t("[::]:80", "127.0.0.1:80"));
        assert!(t("0.0.0.0:80", "[::]:80"));
        assert!(t("[::]:80", "[::1]:80"));
        // An IPv4 wildcard does not cover IPv6 addresses, nor [::1] IPv4.
        assert!(!t("0.0.0.0:80", "[::1]:80"));
        assert!(!t("[::1]:80", "127.0.0.1:80"));
        assert!(!overlaps(
            &l(Proto::Tcp, "0.0.0.0:80"),
            &l(Proto::Udp, "0.0.0.0:80")
        ));
    }
}
