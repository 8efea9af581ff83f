//! Integration tests of the VectorIndex CRD: the committed manifest, the CEL rules (run
//! offline with kube's `cel` feature), defaults, round trips and the deploy examples.

mod cel;
mod drift;
mod examples;
mod roundtrip;

use std::path::{Path, PathBuf};

use kindex_crds::{Metric, VectorIndex, VectorIndexSpec};
use serde_json::Value;

/// The CRD's `openAPIV3Schema` as JSON, the form kube's CEL validator walks.
fn schema() -> Value {
    let crd = kindex_crds::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples_dir() -> PathBuf {
    crate_dir().join("../deploy/examples")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Parse an example file (relative to `deploy/examples`) as a typed object.
fn example(name: &str) -> VectorIndex {
    let path = examples_dir().join(name);
    serde_saphyr::from_str(&read(&path)).unwrap_or_else(|e| panic!("parse {name}: {e}"))
}

/// `demo` as written by `minimal.yaml` but built in Rust, with every default filled in.
fn demo() -> VectorIndex {
    let mut spec = VectorIndexSpec::new(384, Metric::Cosine);
    spec.replicas = 1;
    VectorIndex::new("demo", spec)
}
