//! rustls hooks that read the set in force at each handshake ([`Shared`]).

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::ServerConfig;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::server::danger::ClientCertVerified;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::Shared;

/// gRPC is HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// The HTTP port also speaks HTTP/1.1 (curl, probes, most REST clients).
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A server config presenting the certificate in force at each handshake. `mutual`: require a
/// client certificate of a CA in force (peer mTLS); else ask for none (client TLS, where
/// callers authenticate with API keys).
pub(crate) fn server_config(
    shared: Arc<Shared>,
    mutual: bool,
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = if mutual {
        builder.with_client_cert_verifier(shared.clone())
    } else {
        builder.with_no_client_auth()
    };
    let mut c = builder.with_cert_resolver(shared);
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption: a resumed session skips the certificates, so after a rotation a
    // client would go on accepting the old server certificate (and a peer whose CA was
    // removed would get back in). Every handshake is a full one with the set in force.
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    Arc::new(c)
}

/// A refusal when the set in force has no `ca.crt` (never reached: such a set is only used
/// by server configs that check no certificate).
fn no_trust() -> rustls::Error {
    rustls::Error::General("no CA certificates loaded (no ca.crt)".into())
}

impl Shared {
    fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let m = self.current.read();
        Ok(m.trust
            .as_ref()
            .ok_or_else(no_trust)?
            .client_verifier
            .clone())
    }

    fn server_verifier(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        let m = self.current.read();
        Ok(m.trust
            .as_ref()
            .ok_or_else(no_trust)?
            .server_verifier
            .clone())
    }
}

pub(crate) fn client_config(shared: Arc<Shared>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(shared.clone())
        .with_client_cert_resolver(shared);
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(c)
}

impl ResolvesServerCert for Shared {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

impl ResolvesClientCert for Shared {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Shared {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    // Hints are optional (RFC 8446 4.2.4); they would have to outlive a reload.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let v = self.client_verifier()?;
        let r = v.verify_client_cert(end_entity, intermediates, now);
        if r.is_err() {
            crate::metrics::peer_tls_refused().inc();
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let v = self.client_verifier()?;
        v.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let v = self.client_verifier()?;
        v.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.client_verifier()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

impl ServerCertVerifier for Shared {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = self.server_verifier()?;
        v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let v = self.server_verifier()?;
        v.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let v = self.server_verifier()?;
        v.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.server_verifier()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}
