//! Start-up checks. Without the `VectorIndex` CRD the controller's watch fails forever
//! with a generic 404; checking once at start turns that into one clear error.

use kindex_crds::VectorIndex;
use kube::Api;
use kube::api::ListParams;

/// Full name of the CRD the operator needs (`vectorindexes.kindex.dev`).
pub use kindex_crds::CRD_NAME;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "the CustomResourceDefinition {CRD_NAME} is not installed in this cluster; install it \
         with `kubectl apply --server-side -f deploy/crds/vectorindex.yaml` (or the Helm chart \
         charts/kindex, which installs it), then start the operator again"
    )]
    CrdMissing,
    #[error("checking that the CustomResourceDefinition {CRD_NAME} is installed: {0}")]
    Api(#[source] kube::Error),
}

/// List at most one `VectorIndex` where the operator watches (`namespace`, or all). This
/// needs only the `list` permission the controller needs anyway (reading the CRD object
/// itself would need a cluster-wide grant); a 404 means the resource type is unknown.
pub async fn check_crd_installed(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Result<(), PreflightError> {
    let api: Api<VectorIndex> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(PreflightError::CrdMissing),
        Err(e) => Err(PreflightError::Api(e)),
    }
}
