//! Issuing the certificates peer mTLS uses: a CA, and node certificates it signs (rcgen,
//! ECDSA P-256). The operator keeps one CA per index; tests make their own.

use std::time::Duration;
use std::time::SystemTime;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;

#[derive(Debug, thiserror::Error)]
#[error("issuing a certificate: {0}")]
pub struct IssueError(#[from] rcgen::Error);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a minute ago (clock skew between nodes) for `lifetime`.
    pub fn from_now(lifetime: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(60),
            not_after: now + lifetime,
        }
    }

    fn apply(&self, p: &mut CertificateParams) {
        p.not_before = self.not_before.into();
        p.not_after = self.not_after.into();
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// A certificate signed by its own key, for `dns_names` (what a CA must refuse).
    pub fn self_signed(dns_names: &[String], validity: Validity) -> Result<Issued, IssueError> {
        let (params, key) = leaf_params(dns_names, validity)?;
        Ok(Issued {
            cert_pem: params.self_signed(&key)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str) -> Result<CertificateParams, IssueError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn leaf_params(
    dns_names: &[String],
    validity: Validity,
) -> Result<(CertificateParams, KeyPair), IssueError> {
    let mut p = CertificateParams::new(dns_names.to_vec())?;
    p.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().map_or("kindex node", String::as_str),
    );
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // One certificate for both ends of every connection (see `crate::tls`).
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity.apply(&mut p);
    Ok((p, KeyPair::generate()?))
}

impl Ca {
    /// A new CA named `common_name`.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Ca, IssueError> {
        let mut params = ca_params(common_name)?;
        validity.apply(&mut params);
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// A CA kept as its name, certificate and key (a Secret): certificates it signs name it
    /// as issuer by `common_name` and by the key's identifier, as when it was generated.
    pub fn from_parts(common_name: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, IssueError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            issuer: Issuer::new(ca_params(common_name)?, key),
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A node certificate for `dns_names` (server and client use), signed by this CA.
    pub fn issue(&self, dns_names: &[String], validity: Validity) -> Result<Issued, IssueError> {
        let (params, key) = leaf_params(dns_names, validity)?;
        Ok(Issued {
            cert_pem: params.signed_by(&key, &self.issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a peer TLS directory (`tls.crt`, `tls.key`, `ca.crt`; see [`super`]): each file
/// written to a temporary name and renamed, key first, so a reader sees whole files (a
/// reload between two renames sees a key that does not match and retries).
pub fn write_dir(dir: &std::path::Path, node: &Issued, ca_pem: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in [
        (super::KEY_FILE, node.key_pem.as_str()),
        (super::CERT_FILE, node.cert_pem.as_str()),
        (super::CA_FILE, ca_pem),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}
