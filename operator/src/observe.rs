//! Observation: the StatefulSets and pods of an index, and each running node's Raft
//! state from its Admin `Status` RPC. Node access goes through [`NodeClient`] (and
//! addresses through [`AddressBook`]) so tests can fake nodes or point at loopback.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kindex_crds::VectorIndex;
use kindex_proto::admin_client::AdminClient;
use kindex_proto::{
    AddLearnerRequest, ChangeMembershipRequest, InitializeRequest, Member, StatusRequest,
    StatusResponse, TransferLeaderRequest,
};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::build::configmap::recorded_structural;
use crate::build::labels;
use kindex_common::StructuralDoc;

/// One index pod, by position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub index: String,
    pub shard: u32,
    pub ordinal: u32,
}

impl PodRef {
    pub fn pod_name(&self) -> String {
        labels::pod_name(&self.index, self.shard, self.ordinal)
    }
    /// `<pod>.<headless>.<ns>.svc`: the pod's stable DNS name.
    pub fn host(&self) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod_name(),
            labels::headless_name(&self.index, self.shard),
            self.namespace
        )
    }
}

/// Where the operator reaches a node's Admin service and what Raft address it gives
/// the group for a node.
pub trait AddressBook: Send + Sync {
    /// URI of the Admin gRPC endpoint, e.g. `http://host:7070`.
    fn admin_endpoint(&self, pod: &PodRef) -> String;
    /// `host:port` the other replicas use for Raft (`Member.addr`).
    fn raft_addr(&self, pod: &PodRef) -> String;
}

/// Pod DNS names through the shard's headless Service (inside the cluster).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterDns;

impl AddressBook for ClusterDns {
    fn admin_endpoint(&self, pod: &PodRef) -> String {
        format!("http://{}:{}", pod.host(), crate::build::service::GRPC_PORT)
    }
    fn raft_addr(&self, pod: &PodRef) -> String {
        format!("{}:{}", pod.host(), crate::build::service::RAFT_PORT)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("cannot reach {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{endpoint}: {status}")]
    Rpc { endpoint: String, status: String },
}

/// The Admin RPCs the operator uses. `pod` is the node the call goes to.
pub trait NodeClient: Send + Sync {
    fn status<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<StatusResponse, NodeError>>;
    fn initialize<'a>(
        &'a self,
        pod: &'a PodRef,
        members: Vec<Member>,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
    /// Non-blocking: the operator polls the learner's progress itself.
    fn add_learner<'a>(
        &'a self,
        pod: &'a PodRef,
        member: Member,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
    /// Removed voters are dropped, not kept as learners.
    fn change_membership<'a>(
        &'a self,
        pod: &'a PodRef,
        voters: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
    fn transfer_leader<'a>(
        &'a self,
        pod: &'a PodRef,
        to: u64,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
}

/// The real client: one short-lived connection per call (a handful of calls per
/// reconcile; a fresh connection re-resolves DNS after a pod moved).
pub struct GrpcNodeClient {
    pub addresses: Arc<dyn AddressBook>,
    pub timeout: Duration,
}

impl GrpcNodeClient {
    async fn connect(
        &self,
        pod: &PodRef,
    ) -> Result<(AdminClient<tonic::transport::Channel>, String), NodeError> {
        let endpoint = self.addresses.admin_endpoint(pod);
        let connect_err = |reason: String| NodeError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        Ok((AdminClient::new(channel), endpoint))
    }
}

fn rpc_err(endpoint: String) -> impl FnOnce(tonic::Status) -> NodeError {
    move |s| NodeError::Rpc {
        endpoint,
        status: format!("{}: {}", s.code(), s.message()),
    }
}

impl NodeClient for GrpcNodeClient {
    fn status<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<StatusResponse, NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            let r = c.status(StatusRequest {}).await.map_err(rpc_err(ep))?;
            Ok(r.into_inner())
        })
    }
    fn initialize<'a>(
        &'a self,
        pod: &'a PodRef,
        members: Vec<Member>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.initialize(InitializeRequest { members })
                .await
                .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
    fn add_learner<'a>(
        &'a self,
        pod: &'a PodRef,
        member: Member,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.add_learner(AddLearnerRequest {
                member: Some(member),
                blocking: false,
            })
            .await
            .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
    fn change_membership<'a>(
        &'a self,
        pod: &'a PodRef,
        voters: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.change_membership(ChangeMembershipRequest {
                voters,
                retain: false,
            })
            .await
            .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
    fn transfer_leader<'a>(
        &'a self,
        pod: &'a PodRef,
        to: u64,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.transfer_leader(TransferLeaderRequest { to })
                .await
                .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
}

/// What the operator learnt about one node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeObs {
    /// The pod is not running (no IP yet, terminating): not asked.
    NotRunning,
    /// Asked, no answer.
    Unreachable(String),
    Answered(Box<StatusResponse>),
}

impl NodeObs {
    pub fn answered(s: StatusResponse) -> Self {
        NodeObs::Answered(Box::new(s))
    }
}

/// One index pod as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct PodObs {
    pub name: String,
    pub ordinal: u32,
    /// The pod's Ready condition.
    pub ready: bool,
    pub terminating: bool,
    /// `controller-revision-hash`: the StatefulSet revision the pod was made from.
    pub revision: Option<String>,
    pub created: Option<Timestamp>,
    /// The node container is in CrashLoopBackOff.
    pub crash_looping: bool,
    /// The node's last exit message names a structural drift.
    pub drift_message: Option<String>,
    pub node: NodeObs,
}

impl PodObs {
    pub fn status(&self) -> Option<&StatusResponse> {
        match &self.node {
            NodeObs::Answered(s) => Some(s),
            _ => None,
        }
    }
}

/// A shard's StatefulSet as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct StsObs {
    pub replicas: i32,
    /// `status.updateRevision`; None until the StatefulSet controller has seen it.
    pub update_revision: Option<String>,
    /// The StatefulSet controller has observed the current generation, so
    /// `update_revision` describes the current template.
    pub settled: bool,
    pub storage_size: Option<Quantity>,
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShardObs {
    pub shard: u32,
    pub statefulset: Option<StsObs>,
    /// Sorted by ordinal.
    pub pods: Vec<PodObs>,
    /// Ordinals the operator deleted (rollout) within the pod-ready timeout.
    pub recently_deleted: BTreeSet<u32>,
    /// The last status recorded Raft voters for this shard: it was initialized once.
    pub was_initialized: bool,
}

impl ShardObs {
    pub fn pod(&self, ordinal: u32) -> Option<&PodObs> {
        self.pods.iter().find(|p| p.ordinal == ordinal)
    }
    pub fn status_of(&self, ordinal: u32) -> Option<&StatusResponse> {
        self.pod(ordinal).and_then(PodObs::status)
    }
    /// Some node of this shard reports an initialized Raft group.
    pub fn initialized(&self) -> bool {
        self.pods
            .iter()
            .filter_map(PodObs::status)
            .any(|s| s.initialized)
    }
    /// The pod whose node says it is leader (highest term wins if several do).
    pub fn leader(&self) -> Option<(&PodObs, &StatusResponse)> {
        self.pods
            .iter()
            .filter_map(|p| p.status().map(|s| (p, s)))
            .filter(|(_, s)| s.role == "leader")
            .max_by_key(|(_, s)| s.term)
    }
}

/// Everything observed about one index.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Structural config recorded in the existing ConfigMap.
    pub recorded_structural: Option<StructuralDoc>,
    pub shards: Vec<ShardObs>,
}

/// Voters and learners from a node's view of the membership.
pub fn voters(s: &StatusResponse) -> BTreeSet<u64> {
    s.members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect()
}
pub fn learners(s: &StatusResponse) -> BTreeSet<u64> {
    s.members
        .iter()
        .filter(|m| !m.voter)
        .map(|m| m.node_id)
        .collect()
}
pub fn applied(s: &StatusResponse) -> u64 {
    s.applied.as_ref().map_or(0, |l| l.index)
}

/// Pods the operator deleted recently, so a missing or restarting member reads as
/// "coming back" rather than "lost" until the pod-ready timeout passes.
#[derive(Debug, Default)]
pub struct DeletionTracker {
    deleted: Mutex<HashMap<(String, String), Timestamp>>,
}

impl DeletionTracker {
    pub fn record(&self, namespace: &str, pod: &str, at: Timestamp) {
        if let Ok(mut m) = self.deleted.lock() {
            m.insert((namespace.to_owned(), pod.to_owned()), at);
        }
    }
    /// Pods of `namespace` deleted after `since` (older entries are forgotten).
    pub fn since(&self, namespace: &str, since: Timestamp) -> BTreeSet<String> {
        let Ok(mut m) = self.deleted.lock() else {
            return BTreeSet::new();
        };
        m.retain(|_, at| *at >= since);
        m.keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, pod)| pod.clone())
            .collect()
    }
}

/// Inputs of [`observe`] besides the object.
pub struct ObserveCtx<'a> {
    pub client: &'a kube::Client,
    pub nodes: &'a dyn NodeClient,
    pub deletions: &'a DeletionTracker,
    pub now: Timestamp,
    pub pod_ready_timeout: Duration,
}

/// Read the ConfigMap, StatefulSets and pods of `vi`, and ask every running pod's node
/// for its status (concurrently; an unreachable node is recorded, not an error).
pub async fn observe(cx: &ObserveCtx<'_>, vi: &VectorIndex) -> Result<Observed, kube::Error> {
    let ns = vi.namespace().unwrap_or_default();
    let name = vi.name_any();
    let selector = labels::selector_string(&labels::index_selector(vi));
    let lp = ListParams::default().labels(&selector);

    let cms: Api<ConfigMap> = Api::namespaced(cx.client.clone(), &ns);
    let recorded = cms
        .get_opt(&labels::configmap_name(&name))
        .await?
        .as_ref()
        .and_then(recorded_structural);
    let sts_list = Api::<StatefulSet>::namespaced(cx.client.clone(), &ns)
        .list(&lp)
        .await?
        .items;
    let pod_list = Api::<Pod>::namespaced(cx.client.clone(), &ns)
        .list(&lp)
        .await?
        .items;

    let since = cx
        .now
        .checked_sub(cx.pod_ready_timeout)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let deleted = cx.deletions.since(&ns, since);
    let recorded_members: BTreeMap<u32, bool> = vi
        .status
        .as_ref()
        .map(|s| {
            s.shards
                .iter()
                .map(|sh| (sh.shard, !sh.members.is_empty()))
                .collect()
        })
        .unwrap_or_default();

    let mut shards: Vec<ShardObs> = (0..vi.spec.shards)
        .map(|shard| ShardObs {
            shard,
            statefulset: sts_list
                .iter()
                .find(|s| s.name_any() == labels::statefulset_name(&name, shard))
                .map(sts_obs),
            was_initialized: recorded_members.get(&shard).copied().unwrap_or(false),
            ..ShardObs::default()
        })
        .collect();

    // Pods first, then one concurrent round of Status calls.
    let mut queries = Vec::new();
    for pod in &pod_list {
        let Some((shard, ordinal)) = parse_pod_name(&name, &pod.name_any()) else {
            continue;
        };
        let Some(obs) = shards.get_mut(shard as usize) else {
            continue;
        };
        let p = pod_obs(pod, ordinal);
        if pod_running(pod) && !p.terminating {
            queries.push((shard, ordinal));
        }
        obs.pods.push(p);
    }
    let refs: Vec<PodRef> = queries
        .iter()
        .map(|&(shard, ordinal)| PodRef {
            namespace: ns.clone(),
            index: name.clone(),
            shard,
            ordinal,
        })
        .collect();
    let answers = join_all(refs.iter().map(|r| cx.nodes.status(r))).await;
    for (r, answer) in refs.iter().zip(answers) {
        let Some(p) = shards
            .get_mut(r.shard as usize)
            .and_then(|s| s.pods.iter_mut().find(|p| p.ordinal == r.ordinal))
        else {
            continue;
        };
        p.node = match answer {
            Ok(s) => NodeObs::answered(s),
            Err(e) => NodeObs::Unreachable(e.to_string()),
        };
    }
    for s in &mut shards {
        s.pods.sort_by_key(|p| p.ordinal);
        s.recently_deleted = deleted
            .iter()
            .filter_map(|pod| parse_pod_name(&name, pod))
            .filter(|&(shard, _)| shard == s.shard)
            .map(|(_, ordinal)| ordinal)
            .collect();
    }
    Ok(Observed {
        recorded_structural: recorded,
        shards,
    })
}

/// `<index>-s<shard>-<ordinal>` → (shard, ordinal).
pub fn parse_pod_name(index: &str, pod: &str) -> Option<(u32, u32)> {
    let rest = pod.strip_prefix(index)?.strip_prefix("-s")?;
    let (shard, ordinal) = rest.split_once('-')?;
    Some((shard.parse().ok()?, ordinal.parse().ok()?))
}

fn pod_running(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
    })
}

/// Text of the node's structural-drift start-up error (node/src/config/structural.rs).
pub const DRIFT_MARKER: &str = "structural config drift";

fn pod_obs(pod: &Pod, ordinal: u32) -> PodObs {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.name == crate::build::statefulset::CONTAINER)
        });
    let crash_looping = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
    let drift_message = container.and_then(|c| {
        [c.state.as_ref(), c.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref()?.message.clone())
            .find(|m| m.contains(DRIFT_MARKER))
    });
    PodObs {
        name: pod.name_any(),
        ordinal,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        revision: pod.labels().get(labels::REVISION).cloned(),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        crash_looping,
        drift_message,
        node: NodeObs::NotRunning,
    }
}

fn sts_obs(sts: &StatefulSet) -> StsObs {
    let spec = sts.spec.as_ref();
    let status = sts.status.as_ref();
    let claim = spec
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|v| {
            v.iter()
                .find(|c| c.metadata.name.as_deref() == Some("data"))
        })
        .and_then(|c| c.spec.as_ref());
    StsObs {
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        update_revision: status.and_then(|s| s.update_revision.clone()),
        settled: match (
            status.and_then(|s| s.observed_generation),
            sts.metadata.generation,
        ) {
            (Some(seen), Some(generation)) => seen >= generation,
            _ => false,
        },
        storage_size: claim
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned()),
        storage_class: claim.and_then(|c| c.storage_class_name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_parse() {
        assert_eq!(parse_pod_name("idx", "idx-s2-10"), Some((2, 10)));
        assert_eq!(parse_pod_name("idx", "idx-s-1"), None);
        assert_eq!(parse_pod_name("idx", "other-s0-0"), None);
        // "idx-s1" is a prefix of "idx-s1-s0-0" pods of an index named "idx-s1".
        assert_eq!(parse_pod_name("idx", "idx-s1-s0-0"), None);
    }

    #[test]
    fn cluster_dns_addresses() {
        let r = PodRef {
            namespace: "prod".into(),
            index: "products".into(),
            shard: 1,
            ordinal: 2,
        };
        assert_eq!(
            ClusterDns.admin_endpoint(&r),
            "http://products-s1-2.products-s1-headless.prod.svc:7070"
        );
        assert_eq!(
            ClusterDns.raft_addr(&r),
            "products-s1-2.products-s1-headless.prod.svc:7071"
        );
    }

    #[test]
    fn tracker_forgets_old_deletions() {
        let t = DeletionTracker::default();
        let now = Timestamp::from_second(1_000_000).unwrap();
        t.record("ns", "a", now);
        t.record("ns", "b", Timestamp::from_second(10).unwrap());
        t.record("other", "c", now);
        let since = Timestamp::from_second(999_000).unwrap();
        assert_eq!(t.since("ns", since), BTreeSet::from(["a".to_owned()]));
    }
}
