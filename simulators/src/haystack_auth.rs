//! Haystack client login (docHaystack/Auth): HELLO, SCRAM-SHA-256 (RFC 5802/
//! 7677), then a bearer token. Server-controlled strings are parsed without
//! indexing past their ends.

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

type HmacSha256 = Hmac<Sha256>;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64(s: &str) -> anyhow::Result<Vec<u8>> {
    let t: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .context("base64 from server")
}

/// `SCRAM a=b, c=d` -> {a: b, c: d} (keys lower-cased).
pub fn auth_params(header: &str) -> HashMap<String, String> {
    let rest = header.split_once(' ').map_or(header, |(_, r)| r);
    rest.split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn hmac(key: &[u8], msg: &[u8]) -> anyhow::Result<[u8; 32]> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).map_err(|e| anyhow!("hmac: {e}"))?;
    m.update(msg);
    Ok(m.finalize().into_bytes().into())
}

/// Logs in and returns the bearer token for `Authorization: BEARER authToken=...`.
pub async fn login(
    client: &reqwest::Client,
    about_url: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<String> {
    let challenge = |resp: reqwest::Response| -> anyhow::Result<HashMap<String, String>> {
        let h = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("HTTP {} without WWW-Authenticate", resp.status()))?;
        Ok(auth_params(h))
    };
    let r = client
        .get(about_url)
        .header(
            "Authorization",
            format!("HELLO username={}", b64(user.as_bytes())),
        )
        .send()
        .await?;
    let p = challenge(r)?;
    let token = p
        .get("handshaketoken")
        .context("no handshakeToken")?
        .clone();
    let nonce: String = (0..24).map(|_| fastrand::alphanumeric()).collect();
    let c1_bare = format!("n={user},r={nonce}");
    let r = client
        .get(about_url)
        .header(
            "Authorization",
            format!(
                "SCRAM handshakeToken={token}, data={}",
                b64(format!("n,,{c1_bare}").as_bytes())
            ),
        )
        .send()
        .await?;
    let p = challenge(r)?;
    let s1 = String::from_utf8(unb64(p.get("data").context("no server-first data")?)?)
        .context("server-first utf8")?;
    let attrs: HashMap<&str, &str> = s1.split(',').filter_map(|kv| kv.split_once('=')).collect();
    let rnonce = *attrs.get("r").context("server nonce")?;
    if !rnonce.starts_with(&nonce) {
        bail!("server nonce does not extend ours");
    }
    let salt = unb64(attrs.get("s").context("salt")?)?;
    let iters: u32 = attrs
        .get("i")
        .context("iterations")?
        .parse()
        .context("iterations")?;
    if !(1..=10_000_000).contains(&iters) {
        bail!("unreasonable iteration count {iters}");
    }
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iters, &mut salted);
    let ck = hmac(&salted, b"Client Key")?;
    let sk: [u8; 32] = Sha256::digest(ck).into();
    let without = format!("c=biws,r={rnonce}");
    let am = format!("{c1_bare},{s1},{without}");
    let sig = hmac(&sk, am.as_bytes())?;
    let proof: Vec<u8> = ck.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    let r = client
        .get(about_url)
        .header(
            "Authorization",
            format!(
                "SCRAM handshakeToken={token}, data={}",
                b64(format!("{without},p={}", b64(&proof)).as_bytes())
            ),
        )
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("login refused: HTTP {}", r.status());
    }
    let info = r
        .headers()
        .get("authentication-info")
        .and_then(|v| v.to_str().ok())
        .map(|h| auth_params(&format!("x {h}")))
        .context("no Authentication-Info")?;
    // Verify the server's signature so a man in the middle cannot fake the login.
    if let Some(v) = info.get("data") {
        let fin = String::from_utf8(unb64(v)?).unwrap_or_default();
        let server_key = hmac(&salted, b"Server Key")?;
        let expect = format!(
            "v={}",
            base64::engine::general_purpose::STANDARD.encode(hmac(&server_key, am.as_bytes())?)
        );
        let expect_url = format!("v={}", b64(&hmac(&server_key, am.as_bytes())?));
        if fin.trim_end_matches('=') != expect.trim_end_matches('=') && fin != expect_url {
            bail!("server signature mismatch");
        }
    }
    info.get("authtoken").cloned().context("no authToken")
}
