#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::time::Duration;

use super::plan::*;
use super::secrets;

const DAY: i64 = 86_400;

fn fake_ca(name: &str, now: i64, l: &Lifetimes) -> CaKey {
    CaKey {
        name: name.to_string(),
        // The trusted set is then readable by name.
        cert_pem: format!("CERT {name}"),
        key_pem: format!("KEY {name}"),
        not_after: now + l.ca.as_secs() as i64,
    }
}

/// One reconcile of the plan with fake CAs; returns the node certificate, reissued or not.
fn reconcile(
    ca: Option<CaState>,
    node: Option<NodeCert>,
    now: i64,
    l: &Lifetimes,
    serial: &mut u32,
) -> (CaState, NodeCert) {
    let step = ca_step(ca.as_ref(), now, l);
    let ca = apply_ca_step(ca, step, now, l, || {
        *serial += 1;
        Ok::<_, Infallible>(fake_ca(&format!("ca{serial}"), now, l))
    })
    .unwrap();
    let node = if node_needs_issue(node.as_ref(), &ca, now, l) {
        NodeCert {
            cert_pem: format!("node by {}", ca.current.name),
            key_pem: String::new(),
            ca_bundle: bundle(&ca),
            issuer: ca.current.name.clone(),
            not_after: (now + l.cert.as_secs() as i64).min(ca.current.not_after),
        }
    } else {
        node.unwrap()
    };
    (ca, node)
}

fn trusts(bundle: &str, issuer: &str) -> bool {
    bundle.lines().any(|l| l == format!("CERT {issuer}"))
}

#[test]
fn a_new_index_gets_a_ca_and_a_certificate_then_nothing_changes() {
    let l = Lifetimes::default();
    let mut serial = 0;
    let (ca, node) = reconcile(None, None, 1_000, &l, &mut serial);
    assert_eq!(ca.current.name, "ca1");
    assert_eq!(node.issuer, "ca1");
    assert_eq!(node.ca_bundle, "CERT ca1\n");
    assert_eq!(ca_step(Some(&ca), 1_030, &l), CaStep::Keep);
    assert!(!node_needs_issue(Some(&node), &ca, 1_030, &l));
    // Renewed once a third of its 90 days is left, not before.
    assert!(!node_needs_issue(Some(&node), &ca, 1_000 + 59 * DAY, &l));
    assert!(node_needs_issue(Some(&node), &ca, 1_000 + 61 * DAY, &l));
}

/// The property that matters: whatever mix of old and new Secret contents the pods (and the
/// operator) hold while the kubelet propagates a change, every certificate one of them
/// presents is trusted by every other. Seeded random reconcile gaps and lifetimes, years of
/// simulated time, several CA rotations.
#[test]
fn no_pod_ever_holds_a_certificate_another_pod_does_not_trust() {
    for seed in 1..=20u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let l = Lifetimes {
            ca: Duration::from_secs((30 + next(60)) * DAY as u64),
            cert: Duration::from_secs((3 + next(7)) * DAY as u64),
            overlap: Duration::from_secs(600 + next(3_000)),
        };
        // The kubelet's propagation delay: anything below the overlap.
        let propagation = l.overlap.as_secs() as i64 - 1;
        let mut now = 1_000_000;
        let mut serial = 0;
        let (mut ca, mut node) = reconcile(None, None, now, &l, &mut serial);
        // Every node Secret version published: (since, content).
        let mut published = vec![(now, node.clone())];
        // Operator identities: (since, issuer, trusted set).
        let mut operator = vec![(now, ca.current.name.clone(), bundle(&ca))];
        let mut rotations = 0;
        let end = now + 3 * l.ca.as_secs() as i64;
        while now < end {
            // Reconciles every 30 s when settled, sometimes hours apart (operator down).
            now += if next(50) == 0 {
                next(6 * 3_600) as i64
            } else {
                30
            };
            let step = ca_step(Some(&ca), now, &l);
            rotations += usize::from(step == CaStep::PromoteNext);
            let (c, n) = reconcile(Some(ca), Some(node.clone()), now, &l, &mut serial);
            if n != node {
                published.push((now, n.clone()));
            }
            if (c.current.name.clone(), bundle(&c))
                != (
                    operator.last().unwrap().1.clone(),
                    operator.last().unwrap().2.clone(),
                )
            {
                operator.push((now, c.current.name.clone(), bundle(&c)));
            }
            (ca, node) = (c, n);
            // What a pod may hold now: the versions published within the propagation
            // window, and the last one before it.
            let held: Vec<&NodeCert> = {
                let first = published
                    .iter()
                    .rposition(|(since, _)| *since <= now - propagation)
                    .unwrap_or(0);
                published[first..].iter().map(|(_, n)| n).collect()
            };
            let (_, op_issuer, op_trust) = operator.last().unwrap();
            for a in &held {
                assert!(
                    a.not_after > now,
                    "seed {seed}: a pod's certificate expired at {now}"
                );
                assert!(
                    trusts(op_trust, &a.issuer),
                    "seed {seed}: operator distrusts {}",
                    a.issuer
                );
                assert!(
                    trusts(&a.ca_bundle, op_issuer),
                    "seed {seed}: a pod distrusts the operator"
                );
                for b in &held {
                    assert!(
                        trusts(&b.ca_bundle, &a.issuer),
                        "seed {seed} at {now}: a pod trusting {:?} meets a certificate of {}",
                        b.ca_bundle,
                        a.issuer
                    );
                }
            }
        }
        assert!(rotations >= 2, "seed {seed}: {rotations} CA rotations");
    }
}

#[test]
fn a_rotation_goes_through_three_phases_an_overlap_apart() {
    let l = Lifetimes::default();
    let mut serial = 0;
    let t0 = 1_000;
    let (ca, _) = reconcile(None, None, t0, &l, &mut serial);
    let due = ca.current.not_after - l.ca.as_secs() as i64 / 3 + 1;
    assert_eq!(ca_step(Some(&ca), due - 2, &l), CaStep::Keep);
    assert_eq!(ca_step(Some(&ca), due, &l), CaStep::AddNext);
    let (ca, node) = reconcile(Some(ca), None, due, &l, &mut serial);
    assert_eq!(node.issuer, "ca1", "the old CA still signs");
    assert_eq!(node.ca_bundle, "CERT ca1\nCERT ca2\n");
    let overlap = l.overlap.as_secs() as i64;
    assert_eq!(ca_step(Some(&ca), due + overlap - 1, &l), CaStep::Keep);
    let (ca, node) = reconcile(Some(ca), Some(node), due + overlap, &l, &mut serial);
    assert_eq!(node.issuer, "ca2");
    assert_eq!(node.ca_bundle, "CERT ca2\nCERT ca1\n");
    assert_eq!(ca_step(Some(&ca), due + 2 * overlap - 1, &l), CaStep::Keep);
    let (ca, node) = reconcile(Some(ca), Some(node), due + 2 * overlap, &l, &mut serial);
    assert_eq!(node.ca_bundle, "CERT ca2\n");
    assert_eq!(ca.next, None);
    assert_eq!(ca.previous, None);
}

fn valid_index() -> crate::validate::ValidIndex {
    let vi: kindex_crds::VectorIndex = serde_json::from_value(serde_json::json!({
        "apiVersion": "kindex.dev/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": "idx", "namespace": "ns", "uid": "u-1"},
        "spec": {"dimension": 4, "metric": "cosine", "peerTls": {"enabled": true}}
    }))
    .unwrap();
    crate::validate::ValidIndex::new(&vi, "img").unwrap()
}

#[test]
fn secrets_round_trip_through_every_phase() {
    let vi = valid_index();
    let l = Lifetimes::default();
    let mut serial = 0;
    let (ca, node) = reconcile(None, None, 5, &l, &mut serial);
    let mut states = vec![ca.clone()];
    let mut rotating = ca;
    rotating.next = Some((fake_ca("ca9", 7, &l), 7));
    states.push(rotating.clone());
    rotating.previous = Some(("CERT ca0".into(), 99));
    states.push(rotating);
    for ca in states {
        let s = secrets::build_ca(&vi, &ca);
        assert_eq!(s.metadata.name.as_deref(), Some("idx-peer-ca"));
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(secrets::read_ca(&s).unwrap(), ca);
    }
    let s = secrets::build_node(&vi, &node);
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secrets::read_node(&s).unwrap(), node);

    // A Secret someone else wrote is reported, never replaced.
    let mut broken = secrets::build_ca(&vi, &states_first(&node));
    broken
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("kindex.dev/ca-name");
    let e = secrets::read_ca(&broken).unwrap_err().to_string();
    assert!(
        e.contains("idx-peer-ca") && e.contains("kindex.dev/ca-name"),
        "{e}"
    );
}

fn states_first(node: &NodeCert) -> CaState {
    CaState {
        current: CaKey {
            name: node.issuer.clone(),
            cert_pem: "c".into(),
            key_pem: "k".into(),
            not_after: 1,
        },
        next: None,
        previous: None,
    }
}
