//! Write policy for protocols that carry no authentication of their own (Modbus TCP, BACnet/IP): a read-only switch and the source networks allowed to write.
//!
//! The policy is enforced inside `PointDb::write`, the one write path, so a
//! refusal is audited like any other refused write (protocol, peer, reason)
//! and no protocol server can forget the check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network in CIDR notation (`192.0.2.0/24`, `10.1.2.3`,
/// `2001:db8::/32`). A bare address is a host route (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 peers
    /// (`::ffff:192.0.2.1`, what a dual-stack socket reports) match IPv4
    /// networks, so a site's IPv4 rules hold on either kind of socket.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a protocol without authentication may write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WritePolicy {
    /// Refuse every write over this protocol.
    pub read_only: bool,
    /// Source networks allowed to write; empty = any source.
    pub write_allow: Vec<Cidr>,
}

/// Why a policy refused a write (goes into the audit log and the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    ReadOnly,
    SourceNotAllowed,
}

impl WritePolicy {
    /// Checks a write from `peer` (`None`: a peer the server could not
    /// name, which an allow-list refuses).
    pub fn check(&self, peer: Option<IpAddr>) -> Result<(), Denial> {
        if self.read_only {
            return Err(Denial::ReadOnly);
        }
        if self.write_allow.is_empty() {
            return Ok(());
        }
        match peer {
            Some(ip) if self.write_allow.iter().any(|c| c.contains(ip)) => Ok(()),
            _ => Err(Denial::SourceNotAllowed),
        }
    }
}

/// The loopback networks (`127.0.0.0/8`, `::1`), for policies that allow
/// only local callers.
pub fn loopback() -> Vec<Cidr> {
    vec![
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_matching() {
        let n: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(n.contains(ip("192.0.2.77")));
        assert!(!n.contains(ip("192.0.3.1")));
        assert!(n.contains(ip("::ffff:192.0.2.1")));
        let h: Cidr = "10.1.2.3".parse().unwrap();
        assert!(h.contains(ip("10.1.2.3")) && !h.contains(ip("10.1.2.4")));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(ip("203.0.113.9")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("192.0.2.1")));
        for bad in ["192.0.2.0/33", "host", "1.2.3.4/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_checks() {
        let open = WritePolicy::default();
        assert_eq!(open.check(None), Ok(()));
        let ro = WritePolicy {
            read_only: true,
            ..Default::default()
        };
        assert_eq!(ro.check(Some(ip("127.0.0.1"))), Err(Denial::ReadOnly));
        let p = WritePolicy {
            read_only: false,
            write_allow: vec!["192.0.2.10".parse().unwrap()],
        };
        assert_eq!(p.check(Some(ip("192.0.2.10"))), Ok(()));
        assert_eq!(
            p.check(Some(ip("192.0.2.11"))),
            Err(Denial::SourceNotAllowed)
        );
        assert_eq!(p.check(None), Err(Denial::SourceNotAllowed));
    }
}
