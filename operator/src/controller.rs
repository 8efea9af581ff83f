//! Controller wiring: what is watched, the shared context, the error policy.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kindex_crds::VectorIndex;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::build::labels;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::observe::{AddressBook, DeletionTracker, NodeClient};
use crate::reconcile::{self, ReconcileError};

/// Tunables of the reconciler (flags of the binary).
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Node image when `spec.image` is unset.
    pub default_image: String,
    /// A learner / restarted pod is caught up within this many log entries.
    pub max_lag: u64,
    /// A restarted or new member must be back within this, else Degraded / paused.
    pub pod_ready_timeout: Duration,
    /// Requeue of a settled index (Raft state is not watchable).
    pub requeue: Duration,
    /// Requeue right after a step.
    pub step_requeue: Duration,
    /// Requeue while waiting (pods starting, a learner catching up).
    pub wait_requeue: Duration,
    /// Requeue of an invalid spec (a spec change triggers a reconcile anyway).
    pub invalid_requeue: Duration,
    /// Where the operator runs: the admin-port rule of each index's NetworkPolicy.
    pub operator_peer: crate::build::OperatorPeer,
    /// Certificate and CA lifetimes of peer mTLS.
    pub peer_lifetimes: crate::peer_tls::Lifetimes,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_image: crate::default_image(),
            max_lag: 1000,
            pod_ready_timeout: Duration::from_secs(600),
            requeue: Duration::from_secs(30),
            step_requeue: Duration::from_secs(3),
            wait_requeue: Duration::from_secs(10),
            invalid_requeue: Duration::from_secs(300),
            operator_peer: crate::build::OperatorPeer::default(),
            peer_lifetimes: crate::peer_tls::Lifetimes::default(),
        }
    }
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: kube::Client,
    pub nodes: Arc<dyn NodeClient>,
    pub addresses: Arc<dyn AddressBook>,
    pub events: Events,
    pub metrics: Metrics,
    pub config: OperatorConfig,
    pub deletions: DeletionTracker,
    /// The operator's client certificates per index (peer mTLS), shared with the node
    /// client.
    pub identities: crate::peer_tls::PeerIdentities,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        nodes: Arc<dyn NodeClient>,
        addresses: Arc<dyn AddressBook>,
        events: Events,
        metrics: Metrics,
        config: OperatorConfig,
    ) -> Self {
        Self {
            client,
            nodes,
            addresses,
            events,
            metrics,
            config,
            deletions: DeletionTracker::default(),
            identities: crate::peer_tls::PeerIdentities::default(),
            failures: Mutex::default(),
        }
    }

    fn key(vi: &VectorIndex) -> String {
        format!("{}/{}", vi.namespace().unwrap_or_default(), vi.name_any())
    }

    pub(crate) fn reset_backoff(&self, vi: &VectorIndex) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&Self::key(vi));
        }
    }

    fn next_backoff(&self, vi: &VectorIndex) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(Self::key(vi)).or_insert(0);
                *n = n.saturating_add(1);
                *n - 1
            })
            .unwrap_or(0);
        reconcile::backoff(n)
    }
}

/// Errors requeue the one object with a per-object exponential backoff; the others
/// are unaffected.
pub fn error_policy(vi: Arc<VectorIndex>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let delay = ctx.next_backoff(&vi);
    tracing::warn!(
        index = %vi.name_any(),
        namespace = %vi.namespace().unwrap_or_default(),
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Run the controller until `shutdown` resolves (then finish running reconciles).
/// `namespace: None` watches all namespaces.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let pods = watcher::Config::default().labels(&format!("{}={}", labels::NAME, labels::APP));

    Controller::new(
        api::<VectorIndex>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
    .owns(api::<Service>(&client, &namespace), owned.clone())
    .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
    .owns(api::<PodDisruptionBudget>(&client, &namespace), owned)
    // Pods belong to the StatefulSets; map them to their index by label so pod
    // readiness changes drive membership and rollout steps promptly.
    .watches(api::<Pod>(&client, &namespace), pods, |pod: Pod| {
        let index = pod.labels().get(labels::INSTANCE)?.clone();
        let ns = pod.namespace()?;
        Some(ObjectRef::<VectorIndex>::new(&index).within(&ns))
    })
    .graceful_shutdown_on(shutdown)
    .run(reconcile::reconcile, error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
            Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {
                // Already logged by the error policy.
            }
            Err(e) => tracing::debug!(error = %e, "controller event"),
        }
    })
    .await;
}
