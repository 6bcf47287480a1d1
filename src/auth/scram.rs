//! Users, roles and the SCRAM-SHA-256 key primitives shared by every login path (REST JWT, API keys, Haystack SCRAM): kept out of any one protocol so the API and the protocols both depend on `auth`, never on each other.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read ops, watches, history.
    Viewer,
    /// Viewer + pointWrite and invokeAction.
    Operator,
    /// Operator (no extra op today; kept distinct for audit and future ops).
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn can_write(self) -> bool {
        self >= Role::Operator
    }
}

/// A configured user: only SCRAM's derived keys are kept, never the password.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

/// Decodes base64 in either alphabet (standard or URL-safe), padded or not,
/// as the Haystack auth spec's clients differ on both.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let t: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    LENIENT.decode(t.as_bytes()).ok()
}

/// Base64 we send: standard alphabet without padding (what phable, hszinc
/// clients and Haxall all read).
pub fn b64_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
}

pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(msg);
    m.finalize().into_bytes().into()
}

// PBKDF2 rounds done on this thread: lets tests check that every login
// path does the same work without timing anything.
#[cfg(test)]
thread_local! {
    pub static PBKDF2_ROUNDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// SCRAM keys for a password: (stored_key, server_key).
pub fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    #[cfg(test)]
    PBKDF2_ROUNDS.with(|c| c.set(c.get() + u64::from(iterations)));
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored: [u8; 32] = Sha256::digest(client_key).into();
    let server = hmac(&salted, b"Server Key");
    (stored, server)
}

/// Fresh random bytes; the OS generator failing is not recoverable in a
/// meaningful way for authentication, so callers treat it as an auth error.
pub fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}
