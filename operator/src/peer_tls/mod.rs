//! Peer mTLS of an index (`spec.peerTls.enabled`; docs/security.md), the reconcile step
//! between validate and observe (observing calls the nodes' admin port, which then needs
//! the operator's certificate).
//!
//! Per index the operator keeps a CA in the Secret `<index>-peer-ca` (only the operator
//! reads it) and one certificate for all pods, for the name
//! [`kindex_crds::spec::peer_tls::server_name`], in the TLS Secret `<index>-peer-tls`,
//! which every pod mounts (`--peer-tls-dir`; the nodes re-read it every 2 s). The
//! certificate is renewed once a third of its life is left. The CA is rotated the same way,
//! in three reconciles an overlap apart, so that no pod ever meets a certificate it does
//! not trust:
//!
//! 1. a new CA is added to the trusted set (`ca.crt` = old + new), the old one still signs;
//! 2. after the overlap (every pod reloaded the set) the new CA signs: the pods' certificate
//!    is reissued, the old CA stays trusted;
//! 3. after another overlap (every pod holds the new certificate) the old CA is dropped.
//!
//! The operator's own client certificate (for the admin port) is issued in memory from the
//! signing CA and kept in [`PeerIdentities`], where the node client finds it.

pub mod plan;
pub mod secrets;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use kindex_crds::PeerTlsSpec;
use kindex_crds::spec::peer_tls;
use kindex_node::tls::issue::{Ca, IssueError, Validity};
use kube::Api;

pub use plan::{CaStep, Lifetimes};
pub use secrets::BadSecret;

use crate::reconcile::ApplyError;
use crate::validate::ValidIndex;

/// Life of the operator's own client certificate (re-issued in memory).
const OPERATOR_CERT_LIFETIME: Duration = Duration::from_secs(86_400);

/// The operator's client identity for one index's admin ports.
pub struct Identity {
    pub config: Arc<rustls::ClientConfig>,
    /// The name checked in the nodes' certificate.
    pub server_name: String,
    /// Signing CA and trusted set it was made for.
    made_for: (String, String),
    not_after: i64,
}

impl Identity {
    /// An identity made elsewhere (tests); the next reconcile replaces it with its own.
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: String) -> Identity {
        Identity {
            config,
            server_name,
            made_for: (String::new(), String::new()),
            not_after: 0,
        }
    }
}

/// Client identities by (namespace, index); shared by the reconciler (writes) and the
/// node client (reads).
#[derive(Clone, Default)]
pub struct PeerIdentities(Arc<RwLock<ByIndex>>);

/// (namespace, index) → identity.
type ByIndex = HashMap<(String, String), Arc<Identity>>;

impl PeerIdentities {
    pub fn get(&self, namespace: &str, index: &str) -> Option<Arc<Identity>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(&(namespace.to_string(), index.to_string()))
            .cloned()
    }
    pub fn set(&self, namespace: &str, index: &str, identity: Identity) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.insert(
            (namespace.to_string(), index.to_string()),
            Arc::new(identity),
        );
    }
    fn remove(&self, namespace: &str, index: &str) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&(namespace.to_string(), index.to_string()));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("reading Secret {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error(transparent)]
    BadSecret(#[from] BadSecret),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("the operator's client certificate: {0}")]
    Client(#[from] kindex_node::tls::TlsFileError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What [`ensure`] changed (for events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub ca: CaStep,
    pub node_issued: bool,
}

fn at(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

fn validity(now: i64, lifetime: Duration, cap: i64) -> (Validity, i64) {
    let not_after = now
        .saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX))
        .min(cap);
    (
        Validity {
            // A minute back: clocks of the nodes differ a little.
            not_before: at(now - 60),
            not_after: at(not_after),
        },
        not_after,
    )
}

fn new_ca(vi: &ValidIndex, now: i64, l: &Lifetimes) -> Result<plan::CaKey, IssueError> {
    let name = format!("kindex peer CA {}/{} {now}", vi.namespace, vi.name);
    let (v, not_after) = validity(now, l.ca, i64::MAX);
    let ca = Ca::generate(&name, v)?;
    Ok(plan::CaKey {
        key_pem: ca.key_pem(),
        cert_pem: ca.cert_pem().to_string(),
        name,
        not_after,
    })
}

fn signer(key: &plan::CaKey) -> Result<Ca, IssueError> {
    Ca::from_parts(&key.name, &key.cert_pem, &key.key_pem)
}

async fn get(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, PeerTlsError> {
    api.get_opt(name)
        .await
        .map_err(|source| PeerTlsError::Read {
            name: name.to_string(),
            source,
        })
}

/// Brings the index's CA and certificate Secrets up to date (see the module docs) and
/// registers the operator's identity for it; with peer TLS off, forgets the identity.
pub async fn ensure(
    client: &kube::Client,
    vi: &ValidIndex,
    identities: &PeerIdentities,
    l: &Lifetimes,
    now: i64,
) -> Result<Changes, PeerTlsError> {
    if !PeerTlsSpec::enabled(vi.spec.peer_tls.as_ref()) {
        identities.remove(&vi.namespace, &vi.name);
        return Ok(Changes {
            ca: CaStep::Keep,
            node_issued: false,
        });
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), &vi.namespace);
    let ca = get(&api, &peer_tls::ca_secret(&vi.name))
        .await?
        .map(|s| secrets::read_ca(&s))
        .transpose()?;
    let node = get(&api, &peer_tls::node_secret(&vi.name))
        .await?
        .map(|s| secrets::read_node(&s))
        .transpose()?;

    let step = plan::ca_step(ca.as_ref(), now, l);
    let ca = plan::apply_ca_step(ca, step, now, l, || new_ca(vi, now, l))?;
    if step != CaStep::Keep {
        crate::apply::apply(client, &secrets::build_ca(vi, &ca)).await?;
    }
    let server_name = peer_tls::server_name(&vi.name, &vi.namespace);
    let issue = plan::node_needs_issue(node.as_ref(), &ca, now, l);
    if issue {
        let (v, not_after) = validity(now, l.cert, ca.current.not_after);
        let issued = signer(&ca.current)?.issue(std::slice::from_ref(&server_name), v)?;
        let node = plan::NodeCert {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_bundle: plan::bundle(&ca),
            issuer: ca.current.name.clone(),
            not_after,
        };
        crate::apply::apply(client, &secrets::build_node(vi, &node)).await?;
    }
    remember_identity(vi, identities, &ca, &server_name, now)?;
    Ok(Changes {
        ca: step,
        node_issued: issue,
    })
}

/// The operator's client certificate for the index: kept while the same CA signs, the
/// same set is trusted and a third of its life is left.
fn remember_identity(
    vi: &ValidIndex,
    identities: &PeerIdentities,
    ca: &plan::CaState,
    server_name: &str,
    now: i64,
) -> Result<(), PeerTlsError> {
    let made_for = (ca.current.name.clone(), plan::bundle(ca));
    if let Some(id) = identities.get(&vi.namespace, &vi.name)
        && id.made_for == made_for
        && id.not_after - now > i64::try_from(OPERATOR_CERT_LIFETIME.as_secs() / 3).unwrap_or(0)
    {
        return Ok(());
    }
    let (v, not_after) = validity(now, OPERATOR_CERT_LIFETIME, ca.current.not_after);
    let name = format!("kindex-operator.{}", server_name);
    let issued = signer(&ca.current)?.issue(&[name], v)?;
    let config = kindex_node::tls::client_config_from_pem(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        made_for.1.as_bytes(),
    )?;
    identities.set(
        &vi.namespace,
        &vi.name,
        Identity {
            config,
            server_name: server_name.to_string(),
            made_for,
            not_after,
        },
    );
    Ok(())
}
