//! The start-up check that the `VectorIndex` CRD is installed.
#![allow(clippy::unwrap_used)]

mod common;

use common::ApiServer;
use kindex_operator::preflight::{CRD_NAME, PreflightError, check_crd_installed};

#[tokio::test]
async fn missing_crd_is_one_clear_error() {
    let (client, api) = ApiServer::start();
    api.unknown_resources
        .lock()
        .unwrap()
        .push("vectorindexes".into());
    for ns in [None, Some("ns")] {
        let err = check_crd_installed(&client, ns).await.unwrap_err();
        assert!(matches!(err, PreflightError::CrdMissing), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(CRD_NAME), "{text}");
        assert!(text.contains("kubectl apply"), "{text}");
    }
    assert_eq!(CRD_NAME, "vectorindexes.kindex.dev");
}

#[tokio::test]
async fn installed_crd_passes() {
    let (client, api) = ApiServer::start();
    check_crd_installed(&client, None).await.unwrap();
    check_crd_installed(&client, Some("ns")).await.unwrap();
    let paths: Vec<String> = api.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(
        paths,
        [
            "/apis/kindex.dev/v1alpha1/vectorindexes",
            "/apis/kindex.dev/v1alpha1/namespaces/ns/vectorindexes"
        ]
    );
}
