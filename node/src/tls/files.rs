//! Reading a TLS directory (peer or client) into a [`Material`].

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::CA_FILE;
use super::CERT_FILE;
use super::KEY_FILE;

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: the key does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        path: PathBuf,
        cert: PathBuf,
        reason: String,
    },
    #[error("{path}: cannot trust these CAs: {reason}")]
    Roots { path: PathBuf, reason: String },
}

/// One loaded set: this node's certificate and key, and (peer TLS) verifiers for the
/// trusted CAs.
#[derive(Debug)]
pub struct Material {
    pub(crate) key: Arc<CertifiedKey>,
    /// None for a directory read without `ca.crt` (client TLS: no certificate is checked).
    pub(crate) trust: Option<Trust>,
}

/// Verifiers for the CAs in `ca.crt`.
#[derive(Debug)]
pub(crate) struct Trust {
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) server_verifier: Arc<WebPkiServerVerifier>,
    cas: usize,
}

impl Material {
    /// How many CA certificates are trusted (0 without `ca.crt`).
    pub fn ca_count(&self) -> usize {
        self.trust.as_ref().map_or(0, |t| t.cas)
    }

    /// The certificate served (the end entity, DER).
    pub fn certificate(&self) -> &[u8] {
        self.key.cert.first().map_or(&[], |c| c.as_ref())
    }
}

/// Which files a directory must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `tls.crt`, `tls.key` and `ca.crt` (peer mTLS: both sides are checked).
    WithCa,
    /// `tls.crt` and `tls.key` (client TLS: the server side only; `ca.crt` is ignored).
    KeyPairOnly,
}

impl Layout {
    fn files(self) -> &'static [&'static str] {
        match self {
            Layout::WithCa => &[CERT_FILE, KEY_FILE, CA_FILE],
            Layout::KeyPairOnly => &[CERT_FILE, KEY_FILE],
        }
    }
}

fn read(path: PathBuf) -> Result<(PathBuf, Vec<u8>), TlsFileError> {
    match std::fs::read(&path) {
        Ok(b) => Ok((path, b)),
        Err(source) => Err(TlsFileError::Read { path, source }),
    }
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A client config that trusts the CAs in the PEM file `ca_file` (no client certificate;
/// ALPN `h2`): for gRPC clients of a node with client TLS (`kindex --ca-cert`, tests).
pub fn client_config_trusting(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (path, pem) = read(ca_file.to_path_buf())?;
    let mut roots = RootCertStore::empty();
    for c in certs(&path, &pem)? {
        roots.add(c).map_err(|e| TlsFileError::Roots {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![super::verify::ALPN_H2.to_vec()];
    Ok(Arc::new(c))
}

/// A digest of the layout's files (whether anything changed since the last load).
pub(crate) fn digest(dir: &Path, layout: Layout) -> Result<u64, TlsFileError> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for name in layout.files() {
        let (_, b) = read(dir.join(name))?;
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(&b);
    }
    Ok(h.digest())
}

/// Loads the set in `dir`, and the digest of what was read (as [`digest`]).
pub(crate) fn load(dir: &Path, layout: Layout) -> Result<(Material, u64), TlsFileError> {
    let (cert_path, cert_pem) = read(dir.join(CERT_FILE))?;
    let (key_path, key_pem) = read(dir.join(KEY_FILE))?;
    let ca = match layout {
        Layout::WithCa => Some(read(dir.join(CA_FILE))?),
        Layout::KeyPairOnly => None,
    };
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for b in [Some(&cert_pem), Some(&key_pem), ca.as_ref().map(|c| &c.1)]
        .into_iter()
        .flatten()
    {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    }
    let material = parse(
        (&cert_path, &cert_pem),
        (&key_path, &key_pem),
        ca.as_ref().map(|(p, b)| (p.as_path(), b.as_slice())),
    )?;
    Ok((material, h.digest()))
}

/// A set from PEM text (`ca`: None for a key pair alone); the paths name the parts in
/// errors.
pub(crate) fn parse(
    (cert_path, cert_pem): (&Path, &[u8]),
    (key_path, key_pem): (&Path, &[u8]),
    ca: Option<(&Path, &[u8])>,
) -> Result<Material, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(cert_path, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsFileError::Pem {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // `from_der` checks that the key matches the certificate: a rotation caught between
    // writing the two files is refused here and retried at the next reload.
    let key =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsFileError::KeyMismatch {
            path: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let trust = match ca {
        Some((ca_path, ca_pem)) => Some(trust(ca_path, ca_pem, provider)?),
        None => None,
    };
    Ok(Material {
        key: Arc::new(key),
        trust,
    })
}

fn trust(
    ca_path: &Path,
    ca_pem: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Trust, TlsFileError> {
    let ca_path = ca_path.to_path_buf();
    let cas = certs(&ca_path, ca_pem)?;
    let mut roots = RootCertStore::empty();
    let n = cas.len();
    for c in cas {
        roots.add(c).map_err(|e| TlsFileError::Roots {
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsFileError::Roots {
                path: ca_path.clone(),
                reason: e.to_string(),
            })?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| TlsFileError::Roots {
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
    Ok(Trust {
        client_verifier,
        server_verifier,
        cas: n,
    })
}
