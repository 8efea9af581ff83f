//! One NetworkPolicy per index (issue 18): the Raft port (7071) and the admin port (7072)
//! are reachable from the index's own pods and the operator only; the client ports (7070,
//! 7080) from `spec.network.clientFrom` (unset: anyone) and the index's own pods.
//!
//! The index's pods are selected across all shards: nodes call other shards' replicas
//! (topology `Status` on 7072; fan-out and forwarding on 7070, or 7072 with peer mTLS).
//! Kubelet probes are not subject to NetworkPolicies in the common implementations
//! (traffic from the node itself). `spec.network.policy: false` renders none.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kindex_crds::spec::NetworkSpec;

use super::service::{ADMIN_PORT, GRPC_PORT, HTTP_PORT, RAFT_PORT};
use super::{labels, owned_meta};
use crate::validate::ValidIndex;

/// Where the operator's pods run (the `from` of the admin-port rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorPeer {
    /// The operator's namespace (`POD_NAMESPACE`); None: not known (run outside the
    /// cluster), and no pod but the index's own may reach 7072.
    pub namespace: Option<String>,
    /// Labels selecting the operator's pods (`--operator-pod-labels`); empty: every pod of
    /// its namespace.
    pub pod_labels: BTreeMap<String, String>,
}

/// The label every namespace carries with its own name (Kubernetes ≥ 1.21).
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

fn ports(ports: &[i32]) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        ports
            .iter()
            .map(|p| NetworkPolicyPort {
                port: Some(IntOrString::Int(*p)),
                protocol: Some("TCP".to_owned()),
                ..NetworkPolicyPort::default()
            })
            .collect(),
    )
}

fn selector(labels: BTreeMap<String, String>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    })
}

/// The index's NetworkPolicy, or None when `spec.network.policy` is false.
pub fn build_network_policy(vi: &ValidIndex, operator: &OperatorPeer) -> Option<NetworkPolicy> {
    let network = vi.spec.network.as_ref();
    if !NetworkSpec::policy_enabled(network) {
        return None;
    }
    let own_pods = NetworkPolicyPeer {
        pod_selector: selector(labels::index_selector(&vi.name)),
        ..NetworkPolicyPeer::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![own_pods]),
        ports: ports(&[GRPC_PORT, RAFT_PORT, ADMIN_PORT, HTTP_PORT]),
    }];
    if let Some(ns) = &operator.namespace {
        // Namespace and pod selector in one peer: both must match.
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: selector(BTreeMap::from([(
                    NAMESPACE_NAME.to_owned(),
                    ns.clone(),
                )])),
                pod_selector: selector(operator.pod_labels.clone()),
                ..NetworkPolicyPeer::default()
            }]),
            ports: ports(&[ADMIN_PORT]),
        });
    }
    ingress.push(NetworkPolicyIngressRule {
        // None: from anywhere. An empty list would mean from nowhere; the own-pods rule
        // above already covers the index's pods.
        from: network.and_then(|n| n.client_from.clone()),
        ports: ports(&[GRPC_PORT, HTTP_PORT]),
    });
    Some(NetworkPolicy {
        metadata: owned_meta(
            vi,
            labels::network_policy_name(&vi.name),
            labels::index_labels(&vi.name),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(labels::index_selector(&vi.name)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    })
}
