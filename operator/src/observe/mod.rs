//! Observation: the StatefulSets and pods of an index, and each running node's Raft
//! state from its Admin `Status` RPC. Node access goes through [`NodeClient`] (and
//! addresses through [`AddressBook`]) so tests can fake nodes or point at loopback.

mod nodes;
#[cfg(test)]
mod tests;

pub use nodes::{AddressBook, ClusterDns, GrpcNodeClient, NodeClient, NodeError, PodRef};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kindex_crds::VectorIndex;
use kindex_proto::StatusResponse;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::build::configmap::recorded_structural;
use crate::build::labels;
use crate::reconcile::ObserveError;
use kindex_common::StructuralDoc;

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
    /// The node container crash-loops: it is in CrashLoopBackOff, or it is not ready
    /// and its last run ended with a non-zero exit code. What it says about that exit.
    pub crash: Option<String>,
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
pub async fn observe(cx: &ObserveCtx<'_>, vi: &VectorIndex) -> Result<Observed, ObserveError> {
    let ns = vi.namespace().unwrap_or_default();
    let name = vi.name_any();
    let selector = labels::selector_string(&labels::index_selector(&vi.name_any()));
    let lp = ListParams::default().labels(&selector);

    let cms: Api<ConfigMap> = Api::namespaced(cx.client.clone(), &ns);
    let cm_name = labels::configmap_name(&name);
    let recorded = cms
        .get_opt(&cm_name)
        .await
        .map_err(|source| ObserveError::ConfigMap {
            name: cm_name.clone(),
            source,
        })?
        .as_ref()
        .and_then(recorded_structural);
    let list = |kind| move |source| ObserveError::List { kind, source };
    let sts_list = Api::<StatefulSet>::namespaced(cx.client.clone(), &ns)
        .list(&lp)
        .await
        .map_err(list("StatefulSet"))?
        .items;
    let pod_list = Api::<Pod>::namespaced(cx.client.clone(), &ns)
        .list(&lp)
        .await
        .map_err(list("Pod"))?
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

/// The drift error out of a termination message, which is the tail of the node's log
/// (`FallbackToLogsOnError`): earlier log lines, then `Error: ...` and the cause chain.
/// From the last mention of [`DRIFT_MARKER`] to the end of its line (or a quote or an
/// escape sequence, should it sit in a JSON or coloured log line).
pub fn drift_sentence(message: &str) -> Option<String> {
    let start = message.rfind(DRIFT_MARKER)?;
    let rest = &message[start..];
    let end = rest.find(['\n', '"', '\u{1b}']).unwrap_or(rest.len());
    Some(rest[..end].trim_end().to_owned())
}

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
    let crash = container.and_then(|c| crash(c, ready));
    let drift_message = container.and_then(|c| {
        [c.state.as_ref(), c.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref()?.message.as_deref())
            .find_map(drift_sentence)
    });
    PodObs {
        name: pod.name_any(),
        ordinal,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        revision: pod.labels().get(labels::REVISION).cloned(),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        crash,
        drift_message,
        node: NodeObs::NotRunning,
    }
}

/// Longest part of a termination message quoted in a crash description.
const CRASH_MESSAGE_CHARS: usize = 300;

/// "CrashLoopBackOff, 3 restarts, last exit code 1 (Error): ..." if the container
/// crash-loops: in CrashLoopBackOff, or not ready after a run that ended with a non-zero
/// exit code (between back-offs, while it starts again).
fn crash(c: &ContainerStatus, ready: bool) -> Option<String> {
    let back_off = c
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
    // The run that ended: the current state if it is Terminated, else the last one.
    let ended = [c.state.as_ref(), c.last_state.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|s| s.terminated.as_ref());
    let failed = ended.is_some_and(|t| t.exit_code != 0);
    if !back_off && (ready || !failed || c.restart_count == 0) {
        return None;
    }
    let mut out = format!(
        "{}{} restart{}",
        if back_off { "CrashLoopBackOff, " } else { "" },
        c.restart_count,
        if c.restart_count == 1 { "" } else { "s" }
    );
    if let Some(t) = ended {
        out.push_str(&format!(", last exit code {}", t.exit_code));
        if let Some(r) = t.reason.as_deref().filter(|r| !r.is_empty()) {
            out.push_str(&format!(" ({r})"));
        }
        // The message is the log's tail (FallbackToLogsOnError): its last lines say most.
        if let Some(m) = t
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            let start = m
                .char_indices()
                .rev()
                .nth(CRASH_MESSAGE_CHARS - 1)
                .map_or(0, |(i, _)| i);
            let cut = if start > 0 { "..." } else { "" };
            out.push_str(&format!(": {cut}{}", m[start..].replace('\n', " | ")));
        }
    }
    Some(out)
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
