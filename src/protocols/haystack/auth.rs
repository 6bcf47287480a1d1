//! Haystack authentication (docHaystack/Auth): HELLO -> SCRAM-SHA-256 (RFC 5802/7677) -> bearer token, over users kept as salted SCRAM keys.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

// Re-exported so `protocols::haystack::auth::Role` etc. keep naming the
// same items; the definitions live in `crate::auth::scram`.
use crate::auth::scram::hmac;
pub use crate::auth::scram::{b64_decode, b64_encode, derive_keys, random_bytes, Role, User};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A `[[haystack.user]]` TOML entry for a password (the `castpoint
/// haystack-user` helper prints it).
pub fn user_entry(name: &str, role: Role, password: &str, iterations: u32) -> Option<String> {
    let salt: [u8; 16] = random_bytes()?;
    let (stored, server) = derive_keys(password, &salt, iterations);
    Some(format!(
        "[[haystack.user]]\nname = {name:?}\nrole = \"{}\"\nsalt = \"{}\"\niterations = {iterations}\nstored_key = \"{}\"\nserver_key = \"{}\"\n",
        role.as_str(),
        STANDARD.encode(salt),
        STANDARD.encode(stored),
        STANDARD.encode(server),
    ))
}

/// An authenticated session behind a bearer token.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    expires: Instant,
    /// The user's StoredKey at login: a password change or removal ends
    /// the session at its next use.
    stored_key: [u8; 32],
}

/// One handshake in progress, keyed by its handshake token.
#[derive(Debug, Clone)]
struct Pending {
    user: String,
    /// Set after client-first: (client-first-bare, server-first, full nonce).
    first: Option<(String, String, String)>,
    expires: Instant,
}

/// What the HTTP layer should answer to an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthReply {
    /// 401 with this `WWW-Authenticate` value (HELLO answer, server-first).
    Challenge(String),
    /// 200 with this `Authentication-Info` value (token issued).
    Issued(String),
    /// 403: bad proof, unknown or expired handshake/token.
    Forbidden(&'static str),
    /// 400: a header we cannot parse.
    BadRequest(&'static str),
    /// 429: too many failed logins from this address or for this user;
    /// retry after this many seconds.
    TooMany(u64),
}

/// Called after every finished SCRAM exchange with (user, client address,
/// success), so the app can audit logins.
pub type LoginHook = std::sync::Arc<dyn Fn(&str, IpAddr, bool) + Send + Sync>;

/// Most handshakes in flight / sessions alive; bounded so that an
/// unauthenticated peer cannot grow memory without limit.
const MAX_PENDING: usize = 1024;
const MAX_SESSIONS: usize = 4096;
const HANDSHAKE_TTL: Duration = Duration::from_secs(60);

/// Users, handshakes in flight and live tokens.
/// Looks a user up in a store outside the config (castpoint's shared user
/// store, managed by `castpoint user add`): consulted at each login, so a
/// user added while running can log in at once.
pub type UserLookup = std::sync::Arc<dyn Fn(&str) -> Option<User> + Send + Sync>;

pub struct Authenticator {
    users: HashMap<String, User>,
    lookup: Option<UserLookup>,
    token_ttl: Duration,
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Secret for fake salts of unknown users, so a HELLO does not reveal
    /// which user names exist.
    fake_secret: [u8; 32],
    /// Backoff of failed logins per client address and per user.
    throttle: crate::throttle::Throttle,
    hook: Option<LoginHook>,
}

/// Parses `key=value, key=value` auth parameters (after the scheme name).
fn params(s: &str) -> HashMap<String, String> {
    s.split(',')
        .filter_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

/// Parses SCRAM attribute lists `n=user,r=nonce`.
fn scram_attrs(s: &str) -> HashMap<char, String> {
    s.split(',')
        .filter_map(|p| {
            let mut cs = p.chars();
            let k = cs.next()?;
            if cs.next()? != '=' {
                return None;
            }
            Some((k, cs.as_str().to_string()))
        })
        .collect()
}

impl Authenticator {
    pub fn new(users: Vec<User>, token_ttl: Duration) -> Self {
        Authenticator {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            lookup: None,
            token_ttl,
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            fake_secret: random_bytes().unwrap_or([7u8; 32]),
            throttle: crate::throttle::Throttle::new(),
            hook: None,
        }
    }

    /// Reports every finished login (audit).
    pub fn with_hook(mut self, hook: LoginHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Adds the shared user store; config users take precedence.
    pub fn with_lookup(mut self, lookup: UserLookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    fn user(&self, name: &str) -> Option<User> {
        self.users
            .get(name)
            .cloned()
            .or_else(|| self.lookup.as_ref().and_then(|l| l(name)))
    }

    /// The session of a bearer token, if it is live and its user still
    /// exists with the password they logged in with.
    pub fn session(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let x = {
            let mut s = self.sessions.lock();
            match s.get(token) {
                Some(x) if x.expires > now => x.clone(),
                Some(_) => {
                    s.remove(token);
                    return None;
                }
                None => return None,
            }
        };
        // Looked up outside the lock: the shared store is a database.
        match self.user(&x.user) {
            Some(u) if bool::from(u.stored_key.ct_eq(&x.stored_key)) => {
                Some(Session { role: u.role, ..x })
            }
            _ => {
                self.sessions.lock().remove(token);
                None
            }
        }
    }

    /// Ends a session (the `close` op).
    pub fn close(&self, token: &str) {
        self.sessions.lock().remove(token);
    }

    /// Handles a HELLO or SCRAM `Authorization` header value (tests; the
    /// server uses [`Self::handle_from`] with the client's address).
    pub fn handle(&self, header: &str) -> AuthReply {
        self.handle_from(header, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Handles a HELLO or SCRAM header from a client address: failed
    /// exchanges back that address and that user off (see `throttle`).
    pub fn handle_from(&self, header: &str, peer: IpAddr) -> AuthReply {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        match scheme.to_ascii_uppercase().as_str() {
            "HELLO" => {
                let p = params(rest);
                // Refused early, before any handshake state is kept.
                let user = p
                    .get("username")
                    .and_then(|u| b64_decode(u))
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                let keys = crate::throttle::keys(peer, &user);
                if let Some(w) = self.throttle.check(&[&keys[0], &keys[1]]) {
                    return AuthReply::TooMany(w.as_secs().max(1));
                }
                self.hello(&p)
            }
            "SCRAM" => self.scram(&params(rest), peer),
            _ => AuthReply::BadRequest("unsupported authorization scheme"),
        }
    }

    /// Counts the outcome of a final SCRAM message.
    fn finished(&self, user: &str, peer: IpAddr, reply: AuthReply) -> AuthReply {
        let keys = crate::throttle::keys(peer, user);
        let keys = [keys[0].as_str(), keys[1].as_str()];
        let ok = matches!(reply, AuthReply::Issued(_));
        if ok {
            self.throttle.succeeded(&keys);
        } else {
            self.throttle.failed(&keys);
            crate::throttle::HAYSTACK_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(h) = &self.hook {
            h(user, peer, ok);
        }
        reply
    }

    fn hello(&self, p: &HashMap<String, String>) -> AuthReply {
        let Some(user) = p
            .get("username")
            .and_then(|u| b64_decode(u))
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return AuthReply::BadRequest("HELLO needs username=<base64>");
        };
        let Some(tok) = random_bytes::<16>() else {
            return AuthReply::Forbidden("no randomness available");
        };
        let token = hex(&tok);
        let now = Instant::now();
        let mut pend = self.pending.lock();
        if pend.len() >= MAX_PENDING {
            pend.retain(|_, p| p.expires > now);
            if pend.len() >= MAX_PENDING {
                return AuthReply::Forbidden("too many handshakes in progress");
            }
        }
        pend.insert(
            token.clone(),
            Pending {
                user,
                first: None,
                expires: now + HANDSHAKE_TTL,
            },
        );
        AuthReply::Challenge(format!("SCRAM handshakeToken={token}, hash=SHA-256"))
    }

    /// Salt and iteration count of a user; made-up but stable ones for
    /// unknown users so the exchange runs to the end and fails there.
    fn salt_of(&self, user: &str) -> (Vec<u8>, u32) {
        match self.user(user) {
            Some(u) => (u.salt.clone(), u.iterations),
            None => (
                hmac(&self.fake_secret, user.as_bytes())[..16].to_vec(),
                10_000,
            ),
        }
    }

    fn scram(&self, p: &HashMap<String, String>, peer: IpAddr) -> AuthReply {
        let Some(token) = p.get("handshaketoken") else {
            return AuthReply::BadRequest("SCRAM needs handshakeToken");
        };
        let Some(data) = p
            .get("data")
            .and_then(|d| b64_decode(d))
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return AuthReply::BadRequest("SCRAM needs data=<base64>");
        };
        let now = Instant::now();
        let mut pend = self.pending.lock();
        let Some(state) = pend.get(token).cloned() else {
            return AuthReply::Forbidden("unknown or expired handshake");
        };
        if state.expires <= now {
            pend.remove(token);
            return AuthReply::Forbidden("unknown or expired handshake");
        }
        match state.first {
            None => {
                // client-first-message: gs2 header "n,," then the bare part.
                let Some(bare) = data.strip_prefix("n,,") else {
                    pend.remove(token);
                    return AuthReply::BadRequest("SCRAM channel binding is not supported");
                };
                let a = scram_attrs(bare);
                let (Some(name), Some(cnonce)) = (a.get(&'n'), a.get(&'r')) else {
                    pend.remove(token);
                    return AuthReply::BadRequest("client-first-message needs n= and r=");
                };
                if *name != state.user || cnonce.is_empty() {
                    pend.remove(token);
                    return AuthReply::Forbidden("user name differs from HELLO");
                }
                let Some(snonce) = random_bytes::<16>() else {
                    return AuthReply::Forbidden("no randomness available");
                };
                let nonce = format!("{cnonce}{}", hex(&snonce));
                let (salt, iters) = self.salt_of(name);
                let server_first = format!("r={nonce},s={},i={iters}", STANDARD.encode(salt));
                let reply = format!(
                    "SCRAM handshakeToken={token}, hash=SHA-256, data={}",
                    b64_encode(server_first.as_bytes())
                );
                if let Some(s) = pend.get_mut(token) {
                    s.first = Some((bare.to_string(), server_first, nonce));
                }
                AuthReply::Challenge(reply)
            }
            Some((client_first, server_first, nonce)) => {
                // One final attempt per handshake, whatever its outcome.
                pend.remove(token);
                drop(pend);
                let keys = crate::throttle::keys(peer, &state.user);
                if let Some(w) = self.throttle.check(&[&keys[0], &keys[1]]) {
                    return AuthReply::TooMany(w.as_secs().max(1));
                }
                let reply =
                    self.scram_final(&state.user, &client_first, &server_first, &nonce, &data);
                self.finished(&state.user, peer, reply)
            }
        }
    }

    /// Checks the client-final-message and issues the bearer token.
    fn scram_final(
        &self,
        user_name: &str,
        client_first: &str,
        server_first: &str,
        nonce: &str,
        data: &str,
    ) -> AuthReply {
        {
            {
                let Some((without_proof, proof)) = data.rsplit_once(",p=") else {
                    return AuthReply::BadRequest("client-final-message needs p=");
                };
                let a = scram_attrs(without_proof);
                if a.get(&'r').map(String::as_str) != Some(nonce) {
                    return AuthReply::Forbidden("nonce mismatch");
                }
                // Channel binding must be the "n,," header we agreed to.
                if a.get(&'c').and_then(|c| b64_decode(c)).as_deref() != Some(b"n,,") {
                    return AuthReply::Forbidden("channel binding mismatch");
                }
                let Some(proof) = b64_decode(proof) else {
                    return AuthReply::BadRequest("client proof is not base64");
                };
                let Some(user) = self.user(user_name) else {
                    return AuthReply::Forbidden("authentication failed");
                };
                let auth_message = format!("{client_first},{server_first},{without_proof}");
                let client_sig = hmac(&user.stored_key, auth_message.as_bytes());
                if proof.len() != 32 {
                    return AuthReply::Forbidden("authentication failed");
                }
                let client_key: Vec<u8> =
                    proof.iter().zip(client_sig).map(|(a, b)| a ^ b).collect();
                let stored: [u8; 32] = Sha256::digest(&client_key).into();
                if !bool::from(stored.ct_eq(&user.stored_key)) {
                    return AuthReply::Forbidden("authentication failed");
                }
                let server_sig = hmac(&user.server_key, auth_message.as_bytes());
                let Some(tok) = random_bytes::<32>() else {
                    return AuthReply::Forbidden("no randomness available");
                };
                let bearer = hex(&tok);
                let now = Instant::now();
                let mut sessions = self.sessions.lock();
                if sessions.len() >= MAX_SESSIONS {
                    sessions.retain(|_, s| s.expires > now);
                    if sessions.len() >= MAX_SESSIONS {
                        return AuthReply::Forbidden("too many sessions");
                    }
                }
                sessions.insert(
                    bearer.clone(),
                    Session {
                        user: user.name.clone(),
                        role: user.role,
                        expires: now + self.token_ttl,
                        stored_key: user.stored_key,
                    },
                );
                let v = format!("v={}", STANDARD.encode(server_sig));
                AuthReply::Issued(format!(
                    "authToken={bearer}, hash=SHA-256, data={}",
                    b64_encode(v.as_bytes())
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full client side of the exchange, as phable does it.
    fn login(a: &Authenticator, user: &str, password: &str, url_alphabet: bool) -> AuthReply {
        login_from(
            a,
            user,
            password,
            url_alphabet,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        )
    }

    fn login_from(
        a: &Authenticator,
        user: &str,
        password: &str,
        url_alphabet: bool,
        peer: IpAddr,
    ) -> AuthReply {
        let enc = |b: &[u8]| {
            let s = b64_encode(b);
            if url_alphabet {
                s.replace('+', "-").replace('/', "_")
            } else {
                s
            }
        };
        let r = a.handle_from(&format!("HELLO username={}", enc(user.as_bytes())), peer);
        let AuthReply::Challenge(h) = r else {
            return r;
        };
        let p = params(h.trim_start_matches("SCRAM "));
        let token = p["handshaketoken"].clone();
        let cnonce = "abcdef0123456789abcdef01";
        let c1_bare = format!("n={user},r={cnonce}");
        let r = a.handle_from(
            &format!(
                "SCRAM handshakeToken={token}, data={}",
                enc(format!("n,,{c1_bare}").as_bytes())
            ),
            peer,
        );
        let AuthReply::Challenge(h) = r else {
            return r;
        };
        let p = params(h.trim_start_matches("SCRAM "));
        let s1 = String::from_utf8(b64_decode(&p["data"]).expect("b64")).expect("utf8");
        let at = scram_attrs(&s1);
        let salt = b64_decode(&at[&'s']).expect("salt");
        let iters: u32 = at[&'i'].parse().expect("iters");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iters, &mut salted);
        let ck = hmac(&salted, b"Client Key");
        let sk: [u8; 32] = Sha256::digest(ck).into();
        let without = format!("c=biws,r={}", at[&'r']);
        let am = format!("{c1_bare},{s1},{without}");
        let sig = hmac(&sk, am.as_bytes());
        let proof: Vec<u8> = ck.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let fin = format!("{without},p={}", enc(&proof));
        a.handle_from(
            &format!("SCRAM handshakeToken={token}, data={}", enc(fin.as_bytes())),
            peer,
        )
    }

    fn auth() -> Authenticator {
        let salt = b"0123456789abcdef".to_vec();
        let (stored_key, server_key) = derive_keys("s3cret", &salt, 4096);
        Authenticator::new(
            vec![User {
                name: "op".into(),
                role: Role::Operator,
                salt,
                iterations: 4096,
                stored_key,
                server_key,
            }],
            Duration::from_secs(60),
        )
    }

    #[test]
    fn scram_login_issues_a_token_in_both_alphabets() {
        let a = auth();
        for url in [false, true] {
            let AuthReply::Issued(info) = login(&a, "op", "s3cret", url) else {
                panic!("login failed")
            };
            let p = params(&info);
            let s = a.session(&p["authtoken"]).expect("session");
            assert_eq!(s.user, "op");
            assert_eq!(s.role, Role::Operator);
        }
    }

    #[test]
    fn wrong_password_and_unknown_user_are_forbidden() {
        let a = auth();
        assert!(matches!(
            login(&a, "op", "nope", false),
            AuthReply::Forbidden(_)
        ));
        assert!(matches!(
            login(&a, "ghost", "x", false),
            AuthReply::Forbidden(_)
        ));
    }

    /// 200 SCRAM attempts took 0.6 s with no backoff; now a few failures
    /// from one address or for one user make the next ones wait (429).
    #[test]
    fn failed_scram_logins_back_off_per_address_and_per_user() {
        let a = auth();
        let (p1, p2) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..crate::throttle::FREE_FAILURES {
            assert!(matches!(
                login_from(&a, "op", "nope", false, p1),
                AuthReply::Forbidden(_)
            ));
        }
        // Same address (any user), same user (any address): wait.
        assert!(matches!(
            login_from(&a, "ghost", "x", false, p1),
            AuthReply::TooMany(s) if (1..=60).contains(&s)
        ));
        assert!(matches!(
            login_from(&a, "op", "s3cret", false, p2),
            AuthReply::TooMany(_)
        ));
        // Neither key involved: verified as usual.
        assert!(matches!(
            login_from(&a, "ghost", "x", false, p2),
            AuthReply::Forbidden(_)
        ));
    }

    /// Removing a user or changing their password ends their sessions.
    #[test]
    fn sessions_end_when_the_password_changes() {
        let salt = b"0123456789abcdef".to_vec();
        let current = std::sync::Arc::new(Mutex::new(Some(derive_keys("s3cret", &salt, 4096))));
        let c2 = current.clone();
        let lookup: UserLookup = std::sync::Arc::new(move |name: &str| {
            let (stored_key, server_key) = (*c2.lock())?;
            (name == "op").then(|| User {
                name: "op".into(),
                role: Role::Operator,
                salt: b"0123456789abcdef".to_vec(),
                iterations: 4096,
                stored_key,
                server_key,
            })
        });
        let a = Authenticator::new(Vec::new(), Duration::from_secs(60)).with_lookup(lookup);
        let AuthReply::Issued(info) = login(&a, "op", "s3cret", false) else {
            panic!("login failed")
        };
        let tok = params(&info)["authtoken"].clone();
        assert!(a.session(&tok).is_some());
        *current.lock() = Some(derive_keys("n3w-secret", &salt, 4096));
        assert!(
            a.session(&tok).is_none(),
            "password change ends the session"
        );
        *current.lock() = None;
        assert!(a.session(&tok).is_none());
    }

    #[test]
    fn garbage_headers_never_panic() {
        let a = auth();
        for h in [
            "",
            "HELLO",
            "HELLO username=!!!",
            "SCRAM",
            "SCRAM data=zz",
            "BEARER x",
        ] {
            let _ = a.handle(h);
        }
    }
}
