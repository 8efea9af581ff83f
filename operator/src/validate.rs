//! The validate step: a `VectorIndex` as read from the API server → [`ValidIndex`], the
//! only input of the builders. Everything that can be wrong with the object is found
//! here, once, so the builders cannot fail.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kindex_common::{StructuralConfig, StructuralDoc};
use kindex_crds::{VectorIndex, VectorIndexSpec, parse_duration};
use kube::{Resource, ResourceExt};

use crate::build::configmap::{RUNTIME_KEY, STRUCTURAL_KEY, runtime_config};
use crate::build::labels;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// Reported in the status (InvalidSpec), not a failed reconcile.
    #[error("invalid spec: {}", .0.join("; "))]
    Spec(Vec<String>),
    #[error("the VectorIndex has no metadata.{0} (it was not read from the API server)")]
    Identity(&'static str),
    #[error("serializing {file}: {source}")]
    Serialize {
        file: &'static str,
        source: serde_json::Error,
    },
}

/// A `VectorIndex` whose spec passed validation, with every derived value the builders
/// need already computed.
#[derive(Debug, Clone)]
pub struct ValidIndex {
    pub name: String,
    pub namespace: String,
    /// Controller reference of every owned object; `blockOwnerDeletion` so a foreground
    /// deletion of the index waits for its objects (RBAC: `update` on
    /// `vectorindexes/finalizers`).
    pub owner: OwnerReference,
    pub spec: VectorIndexSpec,
    pub structural: StructuralConfig,
    /// What the nodes report for this spec ([`StructuralConfig::hash`], shared with them).
    pub structural_hash: String,
    /// `spec.image` or the operator's default.
    pub image: String,
    /// The older release `image` runs, if it is one (see [`crate::release`]): the pod
    /// template leaves out what it does not know.
    pub release: Option<&'static crate::release::Release>,
    /// The ConfigMap's files, serialized.
    pub structural_json: String,
    pub runtime_json: String,
}

impl ValidIndex {
    pub fn new(vi: &VectorIndex, default_image: &str) -> Result<Self, ValidateError> {
        let name = vi.name_any();
        let mut errors: Vec<String> = match kindex_crds::validate(&vi.spec) {
            Ok(()) => Vec::new(),
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        };
        if let Err(e) = labels::check_index_name(&name) {
            errors.push(e);
        }
        if !errors.is_empty() {
            return Err(ValidateError::Spec(errors));
        }
        // `validate` checked it; parsed here once, for the builders.
        let interval = parse_duration(&vi.spec.snapshots.interval)
            .map_err(|e| ValidateError::Spec(vec![format!("spec.snapshots.interval: {e}")]))?;
        let namespace = vi.namespace().ok_or(ValidateError::Identity("namespace"))?;
        let mut owner = vi
            .controller_owner_ref(&())
            .ok_or(ValidateError::Identity("uid"))?;
        owner.block_owner_deletion = Some(true);
        let structural = vi.spec.structural();
        let serialize = |file| move |source| ValidateError::Serialize { file, source };
        let structural_json = serde_json::to_string_pretty(&StructuralDoc::new(&structural))
            .map_err(serialize(STRUCTURAL_KEY))?;
        let runtime_json = serde_json::to_string_pretty(&runtime_config(&vi.spec, interval))
            .map_err(serialize(RUNTIME_KEY))?;
        Ok(Self {
            name,
            namespace,
            owner,
            structural_hash: structural.hash(),
            structural,
            release: crate::release::of(
                vi.spec.image.as_deref().unwrap_or(default_image),
                default_image,
            ),
            image: vi
                .spec
                .image
                .clone()
                .unwrap_or_else(|| default_image.to_owned()),
            spec: vi.spec.clone(),
            structural_json,
            runtime_json,
        })
    }
}

/// The structural fields recorded in the ConfigMap must still match the spec (they are
/// immutable); the messages say which changed.
pub fn structure_unchanged(vi: &VectorIndex, recorded: &StructuralDoc) -> Result<(), Vec<String>> {
    let mut old = vi.spec.clone();
    let r = &recorded.structural;
    (old.dimension, old.metric, old.shards) = (r.dimension, r.metric, r.shards);
    (old.hnsw.m, old.hnsw.ef_construction) = (r.m, r.ef_construction);
    old.quantization = r.quantization;
    kindex_crds::validate_update(&old, &vi.spec)
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}
