//! TLS of a node. Peer mTLS ([`PeerTls`]): what guards the Raft port (7071) and the internal port (Admin, 7072, and the
//! node-to-node `Points` calls) when `--peer-tls-dir` is set.
//!
//! The directory holds `tls.crt` (this node's certificate chain), `tls.key` (its key) and
//! `ca.crt` (the CAs to trust: one, or two while a CA is rotated) — the layout of a mounted
//! Kubernetes TLS Secret. The same certificate is this node's server certificate and its
//! client certificate: both sides of every connection must chain to a CA in `ca.crt`, and a
//! connection without a client certificate is refused in the handshake. The files are
//! re-read every few seconds ([`PeerTls::spawn_reload`]); a changed set is used for the
//! next handshakes without a restart (connections already open keep theirs). A set that does
//! not load (a half-written rotation, a key that does not match the certificate) is logged
//! and the previous one stays in force.
//!
//! Client TLS ([`ClientTls`], `--client-tls-dir`): the client ports (gRPC 7070, HTTP 7080)
//! over TLS with `tls.crt` and `tls.key` only, no client certificate asked for; reloaded the
//! same way ([`Reloading`] is shared).
//!
//! rustls with the ring provider (no OpenSSL). We accept and connect ourselves
//! ([`incoming`], [`Connector`]) instead of using tonic's TLS settings because those are
//! fixed at start: ours resolve the certificate and the trusted CAs per handshake.

mod connect;
mod files;
mod incoming;
pub mod issue;
mod verify;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use parking_lot::RwLock;
pub use rustls::ClientConfig;
use rustls::ServerConfig;

pub use connect::Connector;
use files::Layout;
pub use files::Material;
pub use files::TlsFileError;
pub use files::client_config_trusting;
pub use incoming::TlsListener;
pub use incoming::incoming;

/// Names of the files in a peer TLS directory.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// How often the directory is re-read.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// At start, how long a key that does not match its certificate is re-read before the node
/// gives up: a rotation written file by file (key first, then certificate) can be caught
/// half-way, and a node must not exit over a state that lasts milliseconds.
pub const START_SETTLE: Duration = Duration::from_secs(5);

/// [`files::load`], re-read every 100 ms for up to `settle` while the key does not match
/// the certificate (other errors are returned at once: a missing or unparsable file is not a
/// rotation in flight). Blocking; used once at start.
fn load_settled(
    dir: &Path,
    layout: Layout,
    settle: Duration,
) -> Result<(Material, u64), TlsFileError> {
    let deadline = std::time::Instant::now() + settle;
    loop {
        match files::load(dir, layout) {
            Err(TlsFileError::KeyMismatch { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// A handshake that takes longer is dropped (a silent peer must not hold a slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The current certificate, key and trusted CAs; swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Shared {
    current: RwLock<Arc<Material>>,
}

/// A TLS directory re-read every few seconds, shared by [`PeerTls`] and [`ClientTls`]: the
/// set in force lives in [`Shared`], which the rustls hooks (`verify`) read per handshake.
pub(crate) struct Reloading {
    dir: PathBuf,
    layout: Layout,
    /// `peer` or `client`, for logs.
    what: &'static str,
    reloads: &'static prometheus::IntCounter,
    shared: Arc<Shared>,
    /// Digest of the files last loaded: unchanged files are not parsed again.
    loaded: Mutex<u64>,
    /// Bumped by every reload that changed the set.
    generation: AtomicU64,
}

impl Reloading {
    fn load(
        dir: &Path,
        layout: Layout,
        what: &'static str,
        reloads: &'static prometheus::IntCounter,
    ) -> Result<Reloading, TlsFileError> {
        let (material, digest) = load_settled(dir, layout, START_SETTLE)?;
        Ok(Reloading {
            dir: dir.to_path_buf(),
            layout,
            what,
            reloads,
            shared: Arc::new(Shared {
                current: RwLock::new(Arc::new(material)),
            }),
            loaded: Mutex::new(digest),
            generation: AtomicU64::new(0),
        })
    }

    fn material(&self) -> Arc<Material> {
        self.shared.current.read().clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn reload(&self) -> Result<bool, TlsFileError> {
        let digest = files::digest(&self.dir, self.layout)?;
        if digest == *self.loaded.lock() {
            return Ok(false);
        }
        let (material, digest) = files::load(&self.dir, self.layout)?;
        *self.shared.current.write() = Arc::new(material);
        *self.loaded.lock() = digest;
        self.generation.fetch_add(1, Ordering::Release);
        self.reloads.inc();
        Ok(true)
    }

    /// Re-reads the directory every `every` until `files` is dropped.
    fn spawn_reload(files: &Arc<Reloading>, every: Duration) {
        let weak: Weak<Reloading> = Arc::downgrade(files);
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                tokio::time::sleep(every).await;
                let Some(files) = weak.upgrade() else {
                    return;
                };
                match files.reload() {
                    Ok(true) => {
                        let m = files.material();
                        tracing::info!(
                            dir = %files.dir.display(),
                            cas = m.ca_count(),
                            "{} TLS certificates reloaded",
                            files.what
                        );
                        last_error = None;
                    }
                    Ok(false) => last_error = None,
                    Err(e) => {
                        let e = e.to_string();
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(
                                error = %e,
                                "{} TLS certificates not reloaded; the previous ones stay in force",
                                files.what
                            );
                            last_error = Some(e);
                        }
                    }
                }
            }
        });
    }
}

/// What a listener needs to accept TLS: the server config (which resolves the certificate in
/// force per handshake) and the counter of failed handshakes.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    failures: &'static prometheus::IntCounter,
    /// `peer` or `client`, for logs.
    what: &'static str,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("what", &self.what)
            .finish()
    }
}

/// Peer mTLS settings of a node (see the module docs).
pub struct PeerTls {
    files: Arc<Reloading>,
    /// The name checked in the other side's certificate (None: the host we dial).
    server_name: Option<String>,
    server: Arc<ServerConfig>,
    /// The admin port's: also HTTP/1.1 (its policy API answers REST clients).
    admin: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("dir", &self.files.dir)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl PeerTls {
    /// Loads `dir` (fails if it does not hold a usable set: a node told to use mTLS never
    /// serves without it). `server_name`: the name every peer's certificate must carry
    /// (e.g. one the operator puts in every certificate of an index); None checks the host
    /// part of the address dialled.
    pub fn load(dir: &Path, server_name: Option<String>) -> Result<PeerTls, TlsFileError> {
        let files = Reloading::load(
            dir,
            Layout::WithCa,
            "peer",
            crate::metrics::peer_tls_reloads(),
        )?;
        let server = verify::server_config(files.shared.clone(), true, &[verify::ALPN_H2]);
        let admin = verify::server_config(
            files.shared.clone(),
            true,
            &[verify::ALPN_H2, verify::ALPN_HTTP11],
        );
        let client = verify::client_config(files.shared.clone());
        Ok(PeerTls {
            files: Arc::new(files),
            server_name,
            server,
            admin,
            client,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// For [`serve`]: mTLS on the Raft port (gRPC only).
    pub fn acceptor(&self) -> Acceptor {
        self.acceptor_with(&self.server)
    }

    /// For [`serve`]: mTLS on the admin port (gRPC, and HTTP/1.1 for the policy API).
    pub fn admin_acceptor(&self) -> Acceptor {
        self.acceptor_with(&self.admin)
    }

    fn acceptor_with(&self, config: &Arc<ServerConfig>) -> Acceptor {
        Acceptor {
            config: config.clone(),
            failures: crate::metrics::peer_tls_handshake_failures(),
            what: "peer",
        }
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// How many reloads changed the set. Channel caches drop their connections when it
    /// moves, so the next calls handshake with the new certificate and CAs (a CA removed
    /// from `ca.crt` then stops being trusted by connections this node opens).
    pub fn generation(&self) -> u64 {
        self.files.generation()
    }

    /// The set in force.
    pub fn material(&self) -> Arc<Material> {
        self.files.material()
    }

    /// Re-reads the directory; returns whether a new set is now in force.
    pub fn reload(&self) -> Result<bool, TlsFileError> {
        self.files.reload()
    }

    /// Re-reads the directory every `every` until `tls` is dropped.
    pub fn spawn_reload(tls: &Arc<PeerTls>, every: Duration) {
        Reloading::spawn_reload(&tls.files, every);
    }
}

/// Client TLS: what the client ports (gRPC 7070, HTTP 7080) serve with `--client-tls-dir`.
///
/// The directory holds `tls.crt` and `tls.key` (a mounted TLS Secret; a `ca.crt` in it is
/// ignored). No client certificate is asked for: applications authenticate with API keys.
/// Re-read every few seconds like [`PeerTls`]; new handshakes present the new certificate.
pub struct ClientTls {
    files: Arc<Reloading>,
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("dir", &self.files.dir)
            .finish()
    }
}

impl ClientTls {
    /// Loads `dir` (fails if `tls.crt` / `tls.key` are missing, unreadable or, after
    /// [`START_SETTLE`], still do not match:
    /// a node told to serve TLS never serves in plaintext instead).
    pub fn load(dir: &Path) -> Result<ClientTls, TlsFileError> {
        let files = Reloading::load(
            dir,
            Layout::KeyPairOnly,
            "client",
            crate::metrics::client_tls_reloads(),
        )?;
        let grpc = verify::server_config(files.shared.clone(), false, &[verify::ALPN_H2]);
        let http = verify::server_config(
            files.shared.clone(),
            false,
            &[verify::ALPN_H2, verify::ALPN_HTTP11],
        );
        Ok(ClientTls {
            files: Arc::new(files),
            grpc,
            http,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// For the gRPC client port (ALPN `h2`).
    pub fn grpc_acceptor(&self) -> Acceptor {
        Acceptor {
            config: self.grpc.clone(),
            failures: crate::metrics::client_tls_handshake_failures(),
            what: "client",
        }
    }

    /// For the HTTP port (ALPN `h2` and `http/1.1`).
    pub fn http_acceptor(&self) -> Acceptor {
        Acceptor {
            config: self.http.clone(),
            failures: crate::metrics::client_tls_handshake_failures(),
            what: "client",
        }
    }

    /// How many reloads changed the set.
    pub fn generation(&self) -> u64 {
        self.files.generation()
    }

    /// The set in force.
    pub fn material(&self) -> Arc<Material> {
        self.files.material()
    }

    /// Re-reads the directory; returns whether a new set is now in force.
    pub fn reload(&self) -> Result<bool, TlsFileError> {
        self.files.reload()
    }

    /// Re-reads the directory every `every` until `tls` is dropped.
    pub fn spawn_reload(tls: &Arc<ClientTls>, every: Duration) {
        Reloading::spawn_reload(&tls.files, every);
    }
}

/// A client identity held in memory rather than in a directory (the operator and
/// `kubectl kindex` read it from Secrets): `cert_pem` and `key_pem` present, `ca_pem` is
/// trusted. Not reloaded: callers build a new one when the Secret changes.
pub fn client_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
) -> Result<Arc<ClientConfig>, TlsFileError> {
    let material = files::parse(
        (Path::new(CERT_FILE), cert_pem),
        (Path::new(KEY_FILE), key_pem),
        Some((Path::new(CA_FILE), ca_pem)),
    )?;
    let shared = Arc::new(Shared {
        current: RwLock::new(Arc::new(material)),
    });
    Ok(verify::client_config(shared))
}

/// Serves `router` on `listener`: over TLS when `tls` is set (mTLS for a [`PeerTls`]
/// acceptor), else plain TCP. Every accepted
/// socket gets `TCP_NODELAY` (`Server::tcp_nodelay` does not apply to a caller-supplied
/// listener): without it small replies wait out Nagle and delayed ACKs (~40 ms).
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<Acceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    match tls {
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(incoming(listener, tls), shutdown)
                .await
        }
    }
}

#[cfg(test)]
mod tests;
