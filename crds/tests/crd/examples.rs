use std::collections::BTreeSet;

use kindex_crds::{Metric, VectorIndex, validate, validate_update, warnings};
use kube::core::cel::{validate_cel, validate_cel_update};

use super::{example, examples_dir, read};

fn yaml_files(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(examples_dir().join(dir))
        .expect("examples dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml"))
        .collect()
}

#[test]
fn minimal_is_valid() {
    let vi = example("minimal.yaml");
    assert_eq!(vi.metadata.name.as_deref(), Some("demo"));
    assert_eq!(
        (
            vi.spec.dimension,
            vi.spec.metric,
            vi.spec.shards,
            vi.spec.replicas
        ),
        (384, Metric::Cosine, 1, 1)
    );
    assert_eq!(vi.spec.hnsw.m, 16, "defaults are filled in");
    assert_eq!(validate(&vi.spec), Ok(()));
    validate_cel(&vi).expect("CEL");
}

#[test]
fn production_is_valid_and_warning_free() {
    let vi = example("production.yaml");
    let s = &vi.spec;
    assert_eq!((s.shards, s.replicas), (3, 3));
    assert_eq!(s.storage.storage_class_name.as_deref(), Some("fast-ssd"));
    assert!(s.resources.is_some());
    let pod = s.pod_template.as_ref().expect("podTemplate");
    assert_eq!(
        pod.topology_spread_constraints.as_ref().map(Vec::len),
        Some(1)
    );
    assert_eq!(s.policies.len(), 2);
    assert_eq!(validate(s), Ok(()));
    assert!(warnings(s).is_empty(), "{:?}", warnings(s));
    validate_cel(&vi).expect("CEL");
}

/// Every file in `invalid/` is rejected, for the reason its name says.
#[test]
fn invalid_objects_are_rejected() {
    let expected = [
        ("bad-metric.yaml", "manhattan"),
        ("dimension-zero.yaml", "spec.dimension "),
        ("m-out-of-range.yaml", "spec.hnsw.m "),
        ("too-many-shards.yaml", "spec.shards "),
    ];
    let names: BTreeSet<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(yaml_files("invalid"), names, "add a case for each new file");

    for (name, needle) in expected {
        let text = read(&examples_dir().join("invalid").join(name));
        // An unknown enum value fails to parse; range errors parse and fail validate().
        let error = match serde_saphyr::from_str::<VectorIndex>(&text) {
            Err(e) => e.to_string(),
            Ok(vi) => validate(&vi.spec)
                .expect_err(name)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        };
        assert!(error.contains(needle), "{name}: {error}");
    }
}

/// Every file in `invalid-updates/` is a valid object on its own, but as an update of
/// `minimal.yaml` it changes a structural field and the CEL rules reject it.
#[test]
fn invalid_updates_are_rejected() {
    let expected = [
        ("change-dimension.yaml", "dimension"),
        ("change-metric.yaml", "metric"),
        ("change-shards.yaml", "shards"),
    ];
    let names: BTreeSet<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        yaml_files("invalid-updates"),
        names,
        "add a case for each new file"
    );

    let old = example("minimal.yaml");
    for (name, field) in expected {
        let new = example(&format!("invalid-updates/{name}"));
        assert_eq!(
            new.metadata.name, old.metadata.name,
            "{name} must update demo"
        );
        assert_eq!(validate(&new.spec), Ok(()), "{name} alone is valid");
        validate_cel(&new).unwrap_or_else(|e| panic!("{name} alone passes CEL: {e:?}"));

        let errors = validate_cel_update(&new, &old).expect_err(name);
        let message = format!("{field} is immutable");
        assert!(
            errors.iter().any(|e| e.message.contains(&message)),
            "{name}: {errors:?}"
        );
        let errors = validate_update(&old.spec, &new.spec).expect_err(name);
        assert!(
            errors[0].to_string().contains(&message),
            "{name}: {errors:?}"
        );
    }
}
