//! Kubernetes Events on the `VectorIndex` (events.k8s.io/v1). Publishing is best
//! effort: a failed event is logged and never fails a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kindex_crds::VectorIndex;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

pub const REPORTER: &str = "kindex-operator";

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    pub async fn normal(&self, vi: &VectorIndex, reason: &str, note: String) {
        self.publish(vi, EventType::Normal, reason, note, None)
            .await;
    }

    pub async fn warning(&self, vi: &VectorIndex, reason: &str, note: String) {
        self.publish(vi, EventType::Warning, reason, note, None)
            .await;
    }

    /// An event about a step on one pod. The recorder folds events with the same
    /// reason and related object into one series (keeping the first note), so naming
    /// the pod keeps steps on different pods apart.
    pub async fn about_pod(
        &self,
        vi: &VectorIndex,
        warning: bool,
        reason: &str,
        note: String,
        pod: &str,
    ) {
        let related = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(pod.to_owned()),
            namespace: vi.meta().namespace.clone(),
            ..ObjectReference::default()
        };
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.publish(vi, type_, reason, note, Some(related)).await;
    }

    async fn publish(
        &self,
        vi: &VectorIndex,
        type_: EventType,
        reason: &str,
        note: String,
        secondary: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            // The API limits notes to 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: reason.to_owned(),
            secondary,
        };
        if let Err(e) = self.recorder.publish(&event, &vi.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}
