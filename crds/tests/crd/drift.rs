use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::{crate_dir, read};

const REGENERATE: &str = "cargo run -p kindex-crds --bin crdgen -- --write";

#[test]
fn committed_manifest_is_up_to_date() {
    let path = crate_dir().join("vectorindex.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let fresh = kindex_crds::crd_yaml().expect("CRD serializes");
    assert!(
        committed == fresh,
        "{} is missing or stale; regenerate it with `{REGENERATE}`",
        path.display()
    );
}

#[test]
fn manifest_has_the_agreed_shape() {
    let yaml = read(&crate_dir().join("vectorindex.yaml"));
    assert!(
        !yaml.contains("format: uint"),
        "unsigned formats make API servers warn"
    );
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("parse CRD");
    assert_eq!(crd.metadata.name.as_deref(), Some(kindex_crds::CRD_NAME));
    let spec = &crd.spec;
    assert_eq!(spec.group, kindex_crds::GROUP);
    assert_eq!(spec.scope, "Namespaced");
    assert_eq!(spec.names.kind, "VectorIndex");
    assert_eq!(spec.names.plural, "vectorindexes");
    assert_eq!(
        spec.names.short_names.as_deref(),
        Some(&["vidx".to_owned()][..])
    );

    let version = &spec.versions[0];
    assert_eq!(version.name, kindex_crds::VERSION);
    assert!(version.served && version.storage);
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );

    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Shards", ".spec.shards"),
            ("Replicas", ".spec.replicas"),
            ("Ready", ".status.ready"),
            ("Vectors", ".status.vectors"),
            ("Phase", ".status.phase"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}
