//! Peer mTLS: what guards the Raft port (7071) and the internal port (Admin, 7072, and the
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
use rustls::ClientConfig;
use rustls::ServerConfig;

pub use connect::Connector;
pub use files::Material;
pub use files::TlsFileError;
pub use incoming::incoming;

/// Names of the files in a peer TLS directory.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// How often the directory is re-read.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A handshake that takes longer is dropped (a silent peer must not hold a slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The current certificate, key and trusted CAs; swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Shared {
    current: RwLock<Arc<Material>>,
}

/// Peer mTLS settings of a node (see the module docs).
pub struct PeerTls {
    dir: PathBuf,
    /// The name checked in the other side's certificate (None: the host we dial).
    server_name: Option<String>,
    shared: Arc<Shared>,
    /// Digest of the files last loaded: unchanged files are not parsed again.
    loaded: Mutex<u64>,
    /// Bumped by every reload that changed the set: channel caches drop their connections
    /// when it moves, so the next calls handshake with the new certificate and CAs (a CA
    /// removed from `ca.crt` then stops being trusted by connections this node opens).
    generation: AtomicU64,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("dir", &self.dir)
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
        let (material, digest) = files::load(dir)?;
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(material)),
        });
        let server = verify::server_config(shared.clone());
        let client = verify::client_config(shared.clone());
        Ok(PeerTls {
            dir: dir.to_path_buf(),
            server_name,
            shared,
            loaded: Mutex::new(digest),
            generation: AtomicU64::new(0),
            server,
            client,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// How many reloads changed the set (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The set in force.
    pub fn material(&self) -> Arc<Material> {
        self.shared.current.read().clone()
    }

    /// Re-reads the directory; returns whether a new set is now in force.
    pub fn reload(&self) -> Result<bool, TlsFileError> {
        let digest = files::digest(&self.dir)?;
        if digest == *self.loaded.lock() {
            return Ok(false);
        }
        let (material, digest) = files::load(&self.dir)?;
        *self.shared.current.write() = Arc::new(material);
        *self.loaded.lock() = digest;
        self.generation.fetch_add(1, Ordering::Release);
        crate::metrics::peer_tls_reloads().inc();
        Ok(true)
    }

    /// Re-reads the directory every `every` until `tls` is dropped.
    pub fn spawn_reload(tls: &Arc<PeerTls>, every: Duration) {
        let weak: Weak<PeerTls> = Arc::downgrade(tls);
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                tokio::time::sleep(every).await;
                let Some(tls) = weak.upgrade() else {
                    return;
                };
                match tls.reload() {
                    Ok(true) => {
                        let m = tls.material();
                        tracing::info!(
                            dir = %tls.dir.display(),
                            cas = m.ca_count(),
                            "peer TLS certificates reloaded"
                        );
                        last_error = None;
                    }
                    Ok(false) => last_error = None,
                    Err(e) => {
                        let e = e.to_string();
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "peer TLS certificates not reloaded; the previous ones stay in force");
                            last_error = Some(e);
                        }
                    }
                }
            }
        });
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
        (Path::new(CA_FILE), ca_pem),
    )?;
    let shared = Arc::new(Shared {
        current: RwLock::new(Arc::new(material)),
    });
    Ok(verify::client_config(shared))
}

/// Serves `router` on `listener`: over mTLS when `tls` is set, else plain TCP. Every accepted
/// socket gets `TCP_NODELAY` (`Server::tcp_nodelay` does not apply to a caller-supplied
/// listener): without it small replies wait out Nagle and delayed ACKs (~40 ms).
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<PeerTls>>,
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
