//! Server-side apply of the desired objects and deletion of orphans. Both destructure
//! [`Desired`] and [`ShardObjects`] without `..`: adding a kind of object fails to compile
//! until it is applied and swept.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FIELD_MANAGER;
use crate::build::{Desired, ShardObjects};
use crate::reconcile::ApplyError;

/// `force`: the operator owns these fields; a conflicting manager (someone who
/// `kubectl edit`ed a StatefulSet) is overruled, as the spec is the source of truth.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Kind name for error messages.
fn kind<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "object",
    }
}

pub async fn apply<K>(client: &kube::Client, obj: &K) -> Result<K, ApplyError>
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
        .map_err(|source| ApplyError::Apply {
            kind: kind::<K>(),
            name: obj.name_any(),
            source,
        })
}

/// Apply every object: config first, StatefulSets last (they need the rest).
pub async fn apply_all(client: &kube::Client, d: &Desired) -> Result<(), ApplyError> {
    let Desired {
        configmap,
        client_service,
        network_policy,
        shards,
    } = d;
    apply(client, configmap).await?;
    apply(client, client_service).await?;
    if let Some(np) = network_policy {
        apply(client, np).await?;
    }
    for ShardObjects {
        headless,
        pdb,
        statefulset: _,
    } in shards
    {
        apply(client, headless).await?;
        apply(client, pdb).await?;
    }
    for ShardObjects {
        headless: _,
        pdb: _,
        statefulset,
    } in shards
    {
        apply(client, statefulset).await?;
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
) -> Result<Vec<String>, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut deleted = Vec::new();
    let objects = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| ApplyError::ListOrphans {
            kind: kind::<K>(),
            source,
        })?;
    for obj in objects.items {
        let owned = obj
            .owner_references()
            .iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        let name = obj.name_any();
        if owned && !keep.contains(&name) {
            api.delete(&name, &DeleteParams::background())
                .await
                .map_err(|source| ApplyError::DeleteOrphan {
                    kind: kind::<K>(),
                    name: name.clone(),
                    source,
                })?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// Names to keep, per kind.
#[derive(Default)]
struct Keep {
    config_maps: BTreeSet<String>,
    services: BTreeSet<String>,
    pdbs: BTreeSet<String>,
    statefulsets: BTreeSet<String>,
    network_policies: BTreeSet<String>,
}

fn keep(d: &Desired) -> Keep {
    let Desired {
        configmap,
        client_service,
        network_policy,
        shards,
    } = d;
    let mut k = Keep::default();
    k.config_maps.insert(configmap.name_any());
    k.services.insert(client_service.name_any());
    k.network_policies
        .extend(network_policy.iter().map(|np| np.name_any()));
    for ShardObjects {
        headless,
        pdb,
        statefulset,
    } in shards
    {
        k.services.insert(headless.name_any());
        k.pdbs.insert(pdb.name_any());
        k.statefulsets.insert(statefulset.name_any());
    }
    k
}

/// Sweep every kind the operator creates.
pub async fn delete_all_orphans(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    owner_uid: &str,
    d: &Desired,
) -> Result<Vec<String>, ApplyError> {
    let Keep {
        config_maps,
        services,
        pdbs,
        statefulsets,
        network_policies,
    } = keep(d);
    let mut deleted = Vec::new();
    deleted.extend(
        delete_orphans::<ConfigMap>(client, namespace, selector, owner_uid, &config_maps).await?,
    );
    deleted.extend(
        delete_orphans::<Service>(client, namespace, selector, owner_uid, &services).await?,
    );
    deleted.extend(
        delete_orphans::<PodDisruptionBudget>(client, namespace, selector, owner_uid, &pdbs)
            .await?,
    );
    deleted.extend(
        delete_orphans::<StatefulSet>(client, namespace, selector, owner_uid, &statefulsets)
            .await?,
    );
    deleted.extend(
        delete_orphans::<NetworkPolicy>(client, namespace, selector, owner_uid, &network_policies)
            .await?,
    );
    Ok(deleted)
}
