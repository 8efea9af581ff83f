//! One error enum per reconcile step, each variant carrying what failed; the top-level
//! [`ReconcileError`] wraps them. `kindex_operator_reconcile_errors_total` counts them
//! by [`ReconcileError::step`] and [`ReconcileError::variant`].

use crate::observe::NodeError;
pub use crate::validate::ValidateError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the VectorIndex has no namespace")]
    NoNamespace,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("reading the ConfigMap {name}: {source}")]
    ConfigMap { name: String, source: kube::Error },
    #[error("listing {kind}s: {source}")]
    List {
        kind: &'static str,
        source: kube::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("listing {kind}s for the orphan sweep: {source}")]
    ListOrphans {
        kind: &'static str,
        source: kube::Error,
    },
    #[error("deleting the orphan {kind} {name}: {source}")]
    DeleteOrphan {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
}

/// The one membership or rollout step of a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("{action} on {pod}: {source}")]
    Node {
        action: &'static str,
        pod: String,
        source: NodeError,
    },
    #[error("deleting pod {pod}: {source}")]
    DeletePod { pod: String, source: kube::Error },
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("patching the status: {0}")]
    Patch(#[source] kube::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("fetch: {0}")]
    Fetch(#[from] FetchError),
    #[error("validate: {0}")]
    Validate(#[from] ValidateError),
    #[error("peer TLS: {0}")]
    PeerTls(#[from] crate::peer_tls::PeerTlsError),
    #[error("observe: {0}")]
    Observe(#[from] ObserveError),
    #[error("apply: {0}")]
    Apply(#[from] ApplyError),
    #[error("act: {0}")]
    Act(#[from] ActError),
    #[error("status: {0}")]
    Status(#[from] StatusError),
}

impl ReconcileError {
    /// `step` label of the error metric.
    pub fn step(&self) -> &'static str {
        match self {
            Self::Fetch(_) => "fetch",
            Self::Validate(_) => "validate",
            Self::PeerTls(_) => "peer_tls",
            Self::Observe(_) => "observe",
            Self::Apply(_) => "apply",
            Self::Act(_) => "act",
            Self::Status(_) => "status",
        }
    }

    /// `error` label of the error metric: the variant within the step.
    pub fn variant(&self) -> &'static str {
        match self {
            Self::Fetch(FetchError::NoNamespace) => "no_namespace",
            Self::Validate(ValidateError::Spec(_)) => "spec",
            Self::Validate(ValidateError::Identity(_)) => "identity",
            Self::Validate(ValidateError::Serialize { .. }) => "serialize",
            Self::PeerTls(e) => {
                use crate::peer_tls::PeerTlsError as E;
                match e {
                    E::Read { .. } => "read",
                    E::BadSecret(_) => "bad_secret",
                    E::Issue(_) => "issue",
                    E::Client(_) => "client",
                    E::Apply(_) => "apply",
                }
            }
            Self::Observe(ObserveError::ConfigMap { .. }) => "config_map",
            Self::Observe(ObserveError::List { .. }) => "list",
            Self::Apply(ApplyError::Apply { .. }) => "apply",
            Self::Apply(ApplyError::ListOrphans { .. }) => "list_orphans",
            Self::Apply(ApplyError::DeleteOrphan { .. }) => "delete_orphan",
            Self::Act(ActError::Node { .. }) => "node",
            Self::Act(ActError::DeletePod { .. }) => "delete_pod",
            Self::Status(StatusError::Patch(_)) => "patch",
        }
    }
}
