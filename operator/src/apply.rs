//! Server-side apply of the desired objects and deletion of orphans.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FIELD_MANAGER;
use crate::build::Desired;

/// `force`: the operator owns these fields; a conflicting manager (someone who
/// `kubectl edit`ed a StatefulSet) is overruled, as the spec is the source of truth.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

pub async fn apply<K>(client: &kube::Client, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch(&obj.name_any(), &apply_params(), &Patch::Apply(obj))
        .await
}

/// Apply every object: config first, StatefulSets last (they need the rest).
pub async fn apply_all(client: &kube::Client, d: &Desired) -> Result<(), kube::Error> {
    apply(client, &d.configmap).await?;
    apply(client, &d.client_service).await?;
    for s in &d.shards {
        apply(client, &s.headless).await?;
        apply(client, &s.pdb).await?;
    }
    for s in &d.shards {
        apply(client, &s.statefulset).await?;
    }
    Ok(())
}

/// Delete objects of kind `K` that carry the index's labels, are controlled by the
/// index (`owner_uid`), and are not in `keep`. Returns the names deleted.
pub async fn delete_orphans<K>(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    owner_uid: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut deleted = Vec::new();
    for obj in api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
    {
        let owned = obj
            .owner_references()
            .iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        let name = obj.name_any();
        if owned && !keep.contains(&name) {
            api.delete(&name, &DeleteParams::background()).await?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// Sweep every kind the operator creates.
pub async fn delete_all_orphans(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    owner_uid: &str,
    d: &Desired,
) -> Result<Vec<String>, kube::Error> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;

    let names = |it: &mut dyn Iterator<Item = String>| it.collect::<BTreeSet<String>>();
    let cms = names(&mut std::iter::once(d.configmap.name_any()));
    let svcs = names(
        &mut std::iter::once(d.client_service.name_any())
            .chain(d.shards.iter().map(|s| s.headless.name_any())),
    );
    let pdbs = names(&mut d.shards.iter().map(|s| s.pdb.name_any()));
    let sts = names(&mut d.shards.iter().map(|s| s.statefulset.name_any()));

    let mut deleted = Vec::new();
    deleted
        .extend(delete_orphans::<ConfigMap>(client, namespace, selector, owner_uid, &cms).await?);
    deleted.extend(delete_orphans::<Service>(client, namespace, selector, owner_uid, &svcs).await?);
    deleted.extend(
        delete_orphans::<PodDisruptionBudget>(client, namespace, selector, owner_uid, &pdbs)
            .await?,
    );
    deleted
        .extend(delete_orphans::<StatefulSet>(client, namespace, selector, owner_uid, &sts).await?);
    Ok(deleted)
}
