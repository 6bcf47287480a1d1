//! The HTTP listener: hyper HTTP/1.1 under the axum router, with a header-read timeout, connection caps (`netlimit`), optional HTTPS (rustls, ring) and certificate reload on SIGHUP.
//!
//! Why not `axum::serve`: it exposes neither hyper's `header_read_timeout`
//! nor a hook on accept, so a slowloris (many connections that each send
//! half a request) held file descriptors forever. Here every connection is
//! admitted by a [`Limiter`] (total and per source address), its request
//! heads must arrive within `[http] header_read_timeout` (also between
//! keep-alive requests, and the TLS handshake gets the same deadline), and
//! the handlers still see `ConnectInfo<SocketAddr>` (the audit uses it).
//!
//! HTTPS: the certificate is served by a [`CertStore`], a
//! `ResolvesServerCert` whose certificate is an `Arc` swapped by
//! [`reload_all`] (on SIGHUP), so a renewed certificate is used by new
//! connections while open ones go on undisturbed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::netlimit::{Caps, Limiter};
use crate::section::{Problem, Section};

/// How long open connections may finish their responses after shutdown
/// before they are dropped (a live HTTP-TS viewer would never finish).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `[http]`: the REST/Haystack/HTTP-TS listener.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Priority REST writes take in the points' priority arrays.
    pub write_priority: u8,
    /// Listener limits: connections at once, per source address, time to
    /// send a request's headers.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    #[serde(with = "crate::section::duration")]
    pub header_read_timeout: Duration,
    /// PEM certificate chain and private key: both set = HTTPS. Relative
    /// paths are resolved against the config file's directory.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            write_priority: 12,
            max_connections: 512,
            max_connections_per_ip: 64,
            header_read_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Section for HttpSection {
    fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        crate::section::range("write_priority", self.write_priority, 1, 16, &mut p);
        crate::section::range("max_connections", self.max_connections, 1, 100_000, &mut p);
        let per_ip = self.max_connections_per_ip;
        crate::section::range("max_connections_per_ip", per_ip, 1, 100_000, &mut p);
        let t = self.header_read_timeout;
        if t.is_zero() || t > Duration::from_secs(600) {
            p.push(Problem::new(
                "header_read_timeout",
                "expected a duration between \"1ms\" and \"10min\"",
            ));
        }
        for (k, f) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
            if f.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                p.push(Problem::new(k, "expected a file path string"));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            p.push(Problem::new(
                if self.tls_cert.is_some() { "tls_key" } else { "tls_cert" },
                "tls_cert and tls_key go together (PEM files of the certificate chain and its private key)",
            ));
        }
        p
    }
}

/// How the HTTP listener serves.
#[derive(Clone)]
pub struct Options {
    pub caps: Caps,
    pub header_read_timeout: Duration,
    /// `Some`: HTTPS with this certificate store.
    pub tls: Option<Arc<CertStore>>,
}

impl Options {
    /// From `[http]`, loading the certificate when HTTPS is configured.
    pub fn from_section(s: &HttpSection, caps: Caps) -> Result<Options, String> {
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(c), Some(k)) => Some(CertStore::load(c, k)?),
            _ => None,
        };
        Ok(Options {
            caps,
            header_read_timeout: s.header_read_timeout,
            tls,
        })
    }
}

/// The listener caps `[http]` asks for.
pub fn caps(s: &HttpSection) -> Caps {
    Caps {
        max_connections: s.max_connections,
        max_connections_per_ip: s.max_connections_per_ip,
    }
}

/// `check-config`: the certificate and key load and match.
pub fn check(s: &HttpSection) -> Result<(), String> {
    match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => load_key(c, k, &provider()).map(|_| ()),
        _ => Ok(()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("http.tls_cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "http.tls_cert: {}: no CERTIFICATE in the file",
            cert.display()
        ));
    }
    let pk = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("http.tls_key: {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, pk, provider).map_err(|e| {
        format!(
            "http.tls_key: {} does not fit {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// The server certificate, reloadable from its files.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

/// Live certificate stores, reloaded together by [`reload_all`].
static STORES: Mutex<Vec<Weak<CertStore>>> = Mutex::new(Vec::new());

impl CertStore {
    /// Loads the certificate chain and key (PEM) and registers the store
    /// for [`reload_all`].
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, String> {
        let provider = provider();
        let ck = load_key(cert, key, &provider)?;
        let s = Arc::new(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(ck)),
        });
        let mut all = STORES.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&s));
        Ok(s)
    }

    /// Reads the files again; on any error the current certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let ck = load_key(&self.cert, &self.key, &self.provider)?;
        *self.current.write() = Arc::new(ck);
        Ok(())
    }

    fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut c = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // Only HTTP/1.1 is served (no h2 on this listener).
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Reloads every HTTPS certificate from its files (what SIGHUP does; the
/// handler lives in `main`, installed before anything starts, so a SIGHUP
/// right after `ready` can never meet the signal's default action).
/// Returns how many stores were reloaded; a store whose files do not load
/// keeps its certificate and is logged.
pub fn reload_all() -> usize {
    let stores: Vec<Arc<CertStore>> = STORES.lock().iter().filter_map(Weak::upgrade).collect();
    if stores.is_empty() {
        tracing::info!("SIGHUP: no HTTPS certificate to reload");
    }
    let mut ok = 0;
    for s in stores {
        match s.reload() {
            Ok(()) => {
                ok += 1;
                tracing::info!("https: certificate reloaded from {}", s.cert.display());
            }
            Err(e) => tracing::error!("https: certificate not reloaded, the old one stays: {e}"),
        }
    }
    ok
}

/// Serves `router` on `listener` until `shutdown`; every connection is a
/// task on `tasks`.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    opts: Options,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let limiter = Limiter::new("http", listener.local_addr().ok(), opts.caps);
    let tls = match &opts.tls {
        Some(store) => match store.server_config() {
            Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
            Err(e) => {
                tracing::error!("http: cannot serve HTTPS: {e}");
                return;
            }
        },
        None => None,
    };
    let header_timeout = opts.header_read_timeout;
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("http: accept failed: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = limiter.admit(peer.ip()) else {
            drop(sock);
            continue;
        };
        let (router, token, tls) = (router.clone(), shutdown.clone(), tls.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let _ = sock.set_nodelay(true);
            match tls {
                None => connection(sock, peer, router, header_timeout, token).await,
                Some(acc) => {
                    // The handshake is part of "sending the request head".
                    let hs = tokio::select! {
                        _ = token.cancelled() => return,
                        r = tokio::time::timeout(header_timeout, acc.accept(sock)) => r,
                    };
                    match hs {
                        Ok(Ok(s)) => connection(s, peer, router, header_timeout, token).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "https: handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "https: handshake timed out"),
                    }
                }
            }
        });
    }
}

/// One HTTP/1.1 connection (keep-alive, upgrades for WebSockets).
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    router: axum::Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` did for axum::serve.
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut r = router.clone();
        async move { tower_service::Service::call(&mut r, req).await }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = r {
        // Timeouts and resets are the peer's business, not an error here.
        tracing::debug!(%peer, "http: connection closed: {e}");
    }
}
