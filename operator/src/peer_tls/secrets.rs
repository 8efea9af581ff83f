//! The two Secrets of an index's peer TLS, to and from [`CaState`] and [`NodeCert`]
//! (pure). Times and CA names are annotations: the operator never parses certificates.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kindex_crds::spec::peer_tls;

use super::plan::{CaKey, CaState, NodeCert};
use crate::build::{labels, owned_meta};
use crate::validate::ValidIndex;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const NEXT_CERT: &str = "next-ca.crt";
const NEXT_KEY: &str = "next-ca.key";
const PREVIOUS_CERT: &str = "previous-ca.crt";

const CA_NAME: &str = "kindex.dev/ca-name";
const CA_NOT_AFTER: &str = "kindex.dev/ca-not-after";
const NEXT_NAME: &str = "kindex.dev/next-ca-name";
const NEXT_NOT_AFTER: &str = "kindex.dev/next-ca-not-after";
const NEXT_SINCE: &str = "kindex.dev/next-ca-since";
const PREVIOUS_UNTIL: &str = "kindex.dev/previous-ca-until";
const ISSUER: &str = "kindex.dev/issuer";
const NOT_AFTER: &str = "kindex.dev/not-after";

/// A Secret the operator did not write as it expects: reported, never replaced (a new CA
/// would cut the pods off from each other).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Secret {secret}: {reason}; fix or delete it together with the index's pods' Secret")]
pub struct BadSecret {
    pub secret: String,
    pub reason: String,
}

struct Reader<'a> {
    secret: &'a Secret,
}

impl Reader<'_> {
    fn bad(&self, reason: String) -> BadSecret {
        BadSecret {
            secret: self.secret.metadata.name.clone().unwrap_or_default(),
            reason,
        }
    }
    fn data(&self, key: &str) -> Result<Option<String>, BadSecret> {
        match self.secret.data.as_ref().and_then(|d| d.get(key)) {
            None => Ok(None),
            Some(b) => String::from_utf8(b.0.clone())
                .map(Some)
                .map_err(|_| self.bad(format!("{key} is not text"))),
        }
    }
    fn need_data(&self, key: &str) -> Result<String, BadSecret> {
        self.data(key)?
            .ok_or_else(|| self.bad(format!("no {key} in it")))
    }
    fn note(&self, key: &str) -> Option<&String> {
        self.secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
    }
    fn need_note(&self, key: &str) -> Result<String, BadSecret> {
        self.note(key)
            .cloned()
            .ok_or_else(|| self.bad(format!("no annotation {key}")))
    }
    fn time(&self, key: &str) -> Result<Option<i64>, BadSecret> {
        match self.note(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.bad(format!("annotation {key} = {v:?} is not unix seconds"))),
        }
    }
    fn need_time(&self, key: &str) -> Result<i64, BadSecret> {
        self.time(key)?
            .ok_or_else(|| self.bad(format!("no annotation {key}")))
    }
}

pub fn read_ca(secret: &Secret) -> Result<CaState, BadSecret> {
    let r = Reader { secret };
    let current = CaKey {
        name: r.need_note(CA_NAME)?,
        cert_pem: r.need_data(CA_CERT)?,
        key_pem: r.need_data(CA_KEY)?,
        not_after: r.need_time(CA_NOT_AFTER)?,
    };
    let next = match r.data(NEXT_CERT)? {
        None => None,
        Some(cert_pem) => Some((
            CaKey {
                name: r.need_note(NEXT_NAME)?,
                cert_pem,
                key_pem: r.need_data(NEXT_KEY)?,
                not_after: r.need_time(NEXT_NOT_AFTER)?,
            },
            r.need_time(NEXT_SINCE)?,
        )),
    };
    let previous = match r.data(PREVIOUS_CERT)? {
        None => None,
        Some(pem) => Some((pem, r.need_time(PREVIOUS_UNTIL)?)),
    };
    Ok(CaState {
        current,
        next,
        previous,
    })
}

pub fn read_node(secret: &Secret) -> Result<NodeCert, BadSecret> {
    let r = Reader { secret };
    Ok(NodeCert {
        cert_pem: r.need_data("tls.crt")?,
        key_pem: r.need_data("tls.key")?,
        ca_bundle: r.need_data("ca.crt")?,
        issuer: r.need_note(ISSUER)?,
        not_after: r.need_time(NOT_AFTER)?,
    })
}

fn secret(
    vi: &ValidIndex,
    name: String,
    type_: &str,
    data: Vec<(&str, &str)>,
    notes: Vec<(&str, String)>,
) -> Secret {
    let mut metadata = owned_meta(vi, name, labels::index_labels(&vi.name));
    metadata.annotations = Some(notes.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    Secret {
        metadata,
        type_: Some(type_.to_string()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}

pub fn build_ca(vi: &ValidIndex, ca: &CaState) -> Secret {
    let mut data = vec![
        (CA_CERT, ca.current.cert_pem.as_str()),
        (CA_KEY, ca.current.key_pem.as_str()),
    ];
    let mut notes = vec![
        (CA_NAME, ca.current.name.clone()),
        (CA_NOT_AFTER, ca.current.not_after.to_string()),
    ];
    if let Some((next, since)) = &ca.next {
        data.push((NEXT_CERT, &next.cert_pem));
        data.push((NEXT_KEY, &next.key_pem));
        notes.push((NEXT_NAME, next.name.clone()));
        notes.push((NEXT_NOT_AFTER, next.not_after.to_string()));
        notes.push((NEXT_SINCE, since.to_string()));
    }
    if let Some((pem, until)) = &ca.previous {
        data.push((PREVIOUS_CERT, pem));
        notes.push((PREVIOUS_UNTIL, until.to_string()));
    }
    secret(vi, peer_tls::ca_secret(&vi.name), "Opaque", data, notes)
}

/// The Secret every pod mounts: a TLS Secret's keys plus `ca.crt` (the node's
/// `--peer-tls-dir` layout).
pub fn build_node(vi: &ValidIndex, node: &NodeCert) -> Secret {
    secret(
        vi,
        peer_tls::node_secret(&vi.name),
        "kubernetes.io/tls",
        vec![
            ("tls.crt", &node.cert_pem),
            ("tls.key", &node.key_pem),
            ("ca.crt", &node.ca_bundle),
        ],
        vec![
            (ISSUER, node.issuer.clone()),
            (NOT_AFTER, node.not_after.to_string()),
        ],
    )
}
