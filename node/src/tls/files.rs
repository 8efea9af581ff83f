//! Reading a peer TLS directory into a [`Material`].

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

/// One loaded set: this node's certificate and key, and verifiers for the trusted CAs.
#[derive(Debug)]
pub struct Material {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) server_verifier: Arc<WebPkiServerVerifier>,
    cas: usize,
}

impl Material {
    /// How many CA certificates are trusted.
    pub fn ca_count(&self) -> usize {
        self.cas
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

/// A digest of the three files (whether anything changed since the last load).
pub(crate) fn digest(dir: &Path) -> Result<u64, TlsFileError> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for name in [CERT_FILE, KEY_FILE, CA_FILE] {
        let (_, b) = read(dir.join(name))?;
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(&b);
    }
    Ok(h.digest())
}

/// Loads the set in `dir`, and the digest of what was read.
pub(crate) fn load(dir: &Path) -> Result<(Material, u64), TlsFileError> {
    let (cert_path, cert_pem) = read(dir.join(CERT_FILE))?;
    let (key_path, key_pem) = read(dir.join(KEY_FILE))?;
    let (ca_path, ca_pem) = read(dir.join(CA_FILE))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for b in [&cert_pem, &key_pem, &ca_pem] {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    }
    let material = parse(
        (&cert_path, &cert_pem),
        (&key_path, &key_pem),
        (&ca_path, &ca_pem),
    )?;
    Ok((material, h.digest()))
}

/// A set from PEM text; the paths only name the parts in errors.
pub(crate) fn parse(
    (cert_path, cert_pem): (&Path, &[u8]),
    (key_path, key_pem): (&Path, &[u8]),
    (ca_path, ca_pem): (&Path, &[u8]),
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
    let roots_err = |e: String| TlsFileError::Roots {
        path: ca_path.to_path_buf(),
        reason: e,
    };
    let cas = certs(ca_path, ca_pem)?;
    let mut roots = RootCertStore::empty();
    let n = cas.len();
    for c in cas {
        roots.add(c).map_err(|e| roots_err(e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| roots_err(e.to_string()))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| roots_err(e.to_string()))?;
    Ok(Material {
        key: Arc::new(key),
        client_verifier,
        server_verifier,
        cas: n,
    })
}
