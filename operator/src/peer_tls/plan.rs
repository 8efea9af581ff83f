//! What the peer TLS step does to an index's CA and certificate: pure functions of what the
//! Secrets hold and the time (unix seconds). See [`super`] for the life of a CA.

use std::time::Duration;

/// A CA: its name (certificates it signs name it as their issuer), PEMs, expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaKey {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

/// What the CA Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaState {
    /// Signs the certificates.
    pub current: CaKey,
    /// Rotation, first phase: trusted since `.1`, signing nothing yet.
    pub next: Option<(CaKey, i64)>,
    /// Rotation, second phase: the CA `next` replaced (certificate PEM), trusted until `.1`.
    pub previous: Option<(String, i64)>,
}

/// What the node Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// `ca.crt`: every CA the pods trust.
    pub ca_bundle: String,
    /// Name of the CA that signed `cert_pem`.
    pub issuer: String,
    pub not_after: i64,
}

/// How long certificates live and how long a CA rotation keeps both CAs trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca: Duration,
    pub cert: Duration,
    /// Long enough for every pod to see a changed Secret (the kubelet's sync period, about
    /// a minute, plus the node's 2 s reload) before the next phase relies on it.
    pub overlap: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ca: Duration::from_secs(10 * 365 * 86_400),
            cert: Duration::from_secs(90 * 86_400),
            overlap: Duration::from_secs(10 * 60),
        }
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Renewed once less than a third of its life is left.
fn due(not_after: i64, lifetime: Duration, now: i64) -> bool {
    not_after.saturating_sub(now) < secs(lifetime) / 3
}

/// The one change to the CA Secret a reconcile makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStep {
    Keep,
    /// No CA yet (a new index).
    Create,
    /// Rotation starts: a new CA is trusted next to the current one.
    AddNext,
    /// Every pod trusts the next CA by now: it signs from here on, the old one is kept
    /// trusted for another overlap.
    PromoteNext,
    /// Every pod holds a certificate of the new CA by now: the old one is dropped.
    DropPrevious,
}

pub fn ca_step(ca: Option<&CaState>, now: i64, l: &Lifetimes) -> CaStep {
    let Some(ca) = ca else {
        return CaStep::Create;
    };
    if let Some((_, until)) = &ca.previous {
        return if now >= *until {
            CaStep::DropPrevious
        } else {
            CaStep::Keep
        };
    }
    if let Some((_, since)) = &ca.next {
        return if now >= since.saturating_add(secs(l.overlap)) {
            CaStep::PromoteNext
        } else {
            CaStep::Keep
        };
    }
    if due(ca.current.not_after, l.ca, now) {
        CaStep::AddNext
    } else {
        CaStep::Keep
    }
}

/// `ca` after `step`; `generate` makes a new CA (`Create`, `AddNext`; and any step on no
/// CA, which [`ca_step`] never asks for).
pub fn apply_ca_step<E>(
    ca: Option<CaState>,
    step: CaStep,
    now: i64,
    l: &Lifetimes,
    generate: impl FnOnce() -> Result<CaKey, E>,
) -> Result<CaState, E> {
    let Some(mut ca) = ca.filter(|_| step != CaStep::Create) else {
        return Ok(CaState {
            current: generate()?,
            next: None,
            previous: None,
        });
    };
    match step {
        CaStep::Keep | CaStep::Create => {}
        CaStep::AddNext => ca.next = Some((generate()?, now)),
        CaStep::PromoteNext => {
            if let Some((next, _)) = ca.next.take() {
                let old = std::mem::replace(&mut ca.current, next);
                ca.previous = Some((old.cert_pem, now.saturating_add(secs(l.overlap))));
            }
        }
        CaStep::DropPrevious => ca.previous = None,
    }
    Ok(ca)
}

/// `ca.crt` of the pods: every CA trusted now, the signing one first.
pub fn bundle(ca: &CaState) -> String {
    let mut pems = vec![ca.current.cert_pem.as_str()];
    if let Some((next, _)) = &ca.next {
        pems.push(&next.cert_pem);
    }
    if let Some((previous, _)) = &ca.previous {
        pems.push(previous);
    }
    pems.iter()
        .map(|p| {
            if p.ends_with('\n') {
                p.to_string()
            } else {
                format!("{p}\n")
            }
        })
        .collect()
}

/// Whether the pods' certificate is (re)issued: none yet, another CA signs now, the
/// trusted set changed, or it is due for renewal.
pub fn node_needs_issue(node: Option<&NodeCert>, ca: &CaState, now: i64, l: &Lifetimes) -> bool {
    match node {
        None => true,
        Some(n) => {
            n.issuer != ca.current.name
                || n.ca_bundle != bundle(ca)
                || due(n.not_after, l.cert, now)
        }
    }
}
