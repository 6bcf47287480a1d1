//! RTSP authentication: Basic and Digest (RFC 2617, MD5, with or without qop=auth), answering a camera's `WWW-Authenticate` challenge.

use base64::Engine as _;
use md5::{Digest as _, Md5};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // The password never reaches a log line, even through {:?}.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, ***)", self.user)
    }
}

/// A challenge we know how to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Digest {
        realm: String,
        nonce: String,
        opaque: Option<String>,
        /// "auth" when the server offers qop=auth.
        qop_auth: bool,
    },
}

/// `key="value", key=value` pairs of an auth header's parameter list.
fn params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            value = r[..end].to_string();
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((key, value));
    }
    out
}

/// Picks the strongest challenge we support among the header values:
/// Digest (MD5) over Basic. `None` when only unknown schemes are offered.
pub fn pick<'a>(values: impl Iterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for v in values {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        } else if scheme.eq_ignore_ascii_case("digest") {
            let p = params(rest);
            let get = |k: &str| p.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
            let algo_ok = get("algorithm").is_none_or(|a| a.eq_ignore_ascii_case("MD5"));
            if let (Some(realm), Some(nonce), true) = (get("realm"), get("nonce"), algo_ok) {
                let qop_auth = get("qop")
                    .is_some_and(|q| q.split(',').any(|x| x.trim().eq_ignore_ascii_case("auth")));
                return Some(Challenge::Digest {
                    realm,
                    nonce,
                    opaque: get("opaque"),
                    qop_auth,
                });
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers one challenge for every following request.
#[derive(Debug, Clone)]
pub struct Authenticator {
    creds: Credentials,
    challenge: Challenge,
    nc: u32,
}

impl Authenticator {
    pub fn new(creds: Credentials, challenge: Challenge) -> Self {
        Authenticator {
            creds,
            challenge,
            nc: 0,
        }
    }

    /// The `Authorization` header value for `method uri`.
    pub fn header(&mut self, method: &str, uri: &str) -> String {
        let Credentials { user, password } = &self.creds;
        match &self.challenge {
            Challenge::Basic => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            Challenge::Digest {
                realm,
                nonce,
                opaque,
                qop_auth,
            } => {
                let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
                let ha2 = md5_hex(&format!("{method}:{uri}"));
                let mut h = format!(
                    "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\""
                );
                if *qop_auth {
                    self.nc += 1;
                    let mut r = [0u8; 8];
                    // A fixed cnonce would still be valid; randomness only
                    // guards against chosen-plaintext games by the server.
                    let _ = getrandom::fill(&mut r);
                    let cnonce: String = r.iter().map(|b| format!("{b:02x}")).collect();
                    let nc = format!("{:08x}", self.nc);
                    let resp = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
                    h.push_str(&format!(
                        ", response=\"{resp}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
                    ));
                } else {
                    let resp = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
                    h.push_str(&format!(", response=\"{resp}\""));
                }
                if let Some(o) = opaque {
                    h.push_str(&format!(", opaque=\"{o}\""));
                }
                h.push_str(", algorithm=MD5");
                h
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc2617_example() {
        // RFC 2617 section 3.5 (qop=auth), with its cnonce swapped in.
        let ch = pick(
            [
                "Basic realm=\"x\"",
                "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
            ]
            .into_iter(),
        )
        .unwrap();
        let Challenge::Digest { qop_auth, .. } = &ch else {
            panic!()
        };
        assert!(qop_auth);
        let ha1 = md5_hex("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = md5_hex("GET:/dir/index.html");
        assert_eq!(
            md5_hex(&format!(
                "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
            )),
            "6629fae49393a05397450978507c4ef1"
        );
        let mut a = Authenticator::new(
            Credentials {
                user: "Mufasa".into(),
                password: "Circle Of Life".into(),
            },
            ch,
        );
        let h = a.header("DESCRIBE", "rtsp://h/p");
        assert!(h.starts_with("Digest username=\"Mufasa\"") && h.contains("nc=00000001"));
        assert!(!h.contains("Circle"));
        assert_eq!(
            pick(["Basic realm=\"cam\""].into_iter()),
            Some(Challenge::Basic)
        );
        assert_eq!(pick(["Negotiate abc"].into_iter()), None);
        assert_eq!(format!("{:?}", a.creds), "Credentials(\"Mufasa\", ***)");
    }

    proptest! {
        #[test]
        fn arbitrary_challenges_never_panic(s in ".{0,300}") {
            if let Some(c) = pick([s.as_str()].into_iter()) {
                let mut a = Authenticator::new(Credentials { user: "u".into(), password: "p".into() }, c);
                let _ = a.header("OPTIONS", "rtsp://h/");
            }
            let _ = params(&s);
        }
    }
}
