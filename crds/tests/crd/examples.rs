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
    assert_eq!(s.policies.len(), 6);
    let named = |n: &str| s.policies.iter().find(|p| p.name == n).expect(n);
    assert_eq!(named("per-tenant").tenant_field.as_deref(), Some("tenant"));
    assert_eq!(
        named("offers-1y").timestamp_field.as_deref(),
        Some("listedAt")
    );
    assert_eq!(validate(s), Ok(()));
    assert!(warnings(s).is_empty(), "{:?}", warnings(s));
    validate_cel(&vi).expect("CEL");
}

/// The `# expect:` line of an example: what the Kubernetes tier (e2e/run.sh) requires in
/// the API server's refusal.
fn expect_line(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .map(str::trim)
}

/// Every file in `invalid/` is rejected, for the reason its name says: by the Rust
/// validation the operator runs and/or by the CRD's CEL rules (`cel`: the refusal must come
/// from a CEL rule, with the message the API server shows).
#[test]
fn invalid_objects_are_rejected() {
    let expected = [
        ("bad-metric.yaml", "manhattan", false),
        ("bad-quantization.yaml", "pq", false),
        ("dimension-zero.yaml", "spec.dimension ", false),
        ("m-out-of-range.yaml", "spec.hnsw.m ", false),
        ("too-many-shards.yaml", "spec.shards ", false),
        (
            "storage-zero.yaml",
            "storage.size must be greater than zero",
            true,
        ),
        (
            "image-whitespace.yaml",
            "image must be a container image reference",
            true,
        ),
        (
            "name-too-long.yaml",
            "metadata.name must be at most 40 characters",
            true,
        ),
        (
            "name-not-dns1035.yaml",
            "metadata.name must be a DNS-1035 label",
            true,
        ),
        (
            "resources-not-quantity.yaml",
            "resources.limits must be a quantity",
            true,
        ),
        (
            "policy-filter-empty-range.yaml",
            "a range needs at least one of gt, gte, lt, lte",
            true,
        ),
        (
            "policy-timestamp-field-without-age.yaml",
            "timestampField needs maxAgeSeconds",
            true,
        ),
        // Refused by the schema's minLength (the API server) and validate(); kube's offline
        // CEL does not check lengths.
        (
            "policy-tenant-field-empty.yaml",
            "spec.policies[per-tenant].tenantField: a payload field name",
            false,
        ),
    ];
    let names: BTreeSet<String> = expected.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(yaml_files("invalid"), names, "add a case for each new file");

    for (name, needle, cel) in expected {
        let text = read(&examples_dir().join("invalid").join(name));
        assert!(
            expect_line(&text).is_some_and(|e| !e.is_empty()),
            "{name}: needs an `# expect: <message part>` line for e2e/run.sh"
        );
        if cel {
            assert_eq!(expect_line(&text), Some(needle), "{name}");
        }
        // An unknown enum value fails to parse; range errors parse and fail validate().
        let error = match serde_saphyr::from_str::<VectorIndex>(&text) {
            Err(e) => e.to_string(),
            Ok(vi) => {
                let mut all: Vec<String> = validate(&vi.spec)
                    .err()
                    .unwrap_or_default()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                if let Err(errors) = validate_cel(&vi) {
                    all.extend(errors.iter().map(|e| e.message.clone()));
                }
                all.join("; ")
            }
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
        ("change-quantization.yaml", "quantization"),
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
