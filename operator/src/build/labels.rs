//! Labels, selectors and object names shared by every builder.

use std::collections::BTreeMap;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const SHARD: &str = "kindex.dev/shard";
/// Pod-template annotation: hash of the structural config the pods are built with.
pub const STRUCTURAL_HASH: &str = "kindex.dev/structural-hash";
/// `"true"` on a `VectorIndex` pauses its reconciliation (see `reconcile::pause`).
pub const PAUSED: &str = "kindex.dev/paused";
/// Set by the StatefulSet controller on each pod: the revision the pod was made from.
pub const REVISION: &str = "controller-revision-hash";

pub const APP: &str = "kindex";
pub const MANAGER: &str = "kindex-operator";

/// Selector of every pod of an index (client Service, `status.selector`). Stable:
/// never add a label here, StatefulSet selectors are immutable.
pub fn index_selector(index: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_owned(), APP.to_owned()),
        (INSTANCE.to_owned(), index.to_owned()),
    ])
}

/// Selector of one shard's pods (StatefulSet, headless Service, PDB).
pub fn shard_selector(index: &str, shard: u32) -> BTreeMap<String, String> {
    let mut l = index_selector(index);
    l.insert(SHARD.to_owned(), shard.to_string());
    l
}

/// Labels of index-wide objects.
pub fn index_labels(index: &str) -> BTreeMap<String, String> {
    let mut l = index_selector(index);
    l.insert(MANAGED_BY.to_owned(), MANAGER.to_owned());
    l
}

/// Labels of per-shard objects and pods.
pub fn shard_labels(index: &str, shard: u32) -> BTreeMap<String, String> {
    let mut l = shard_selector(index, shard);
    l.insert(MANAGED_BY.to_owned(), MANAGER.to_owned());
    l
}

/// `k=v,k=v` (sorted), the string form of a label selector.
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Selector of everything the operator made for one index (orphan sweep).
pub fn owned_selector(index: &str) -> String {
    selector_string(&index_labels(index))
}

pub fn configmap_name(index: &str) -> String {
    format!("{index}-config")
}
pub fn client_service_name(index: &str) -> String {
    index.to_owned()
}
pub fn statefulset_name(index: &str, shard: u32) -> String {
    format!("{index}-s{shard}")
}
pub fn headless_name(index: &str, shard: u32) -> String {
    format!("{index}-s{shard}-headless")
}
pub fn pdb_name(index: &str, shard: u32) -> String {
    format!("{index}-s{shard}")
}
pub fn network_policy_name(index: &str) -> String {
    format!("{index}-kindex")
}
pub fn pod_name(index: &str, shard: u32, ordinal: u32) -> String {
    format!("{index}-s{shard}-{ordinal}")
}

/// Longest index name whose derived names all stay legal (the CRD's admission rule uses the
/// same constant).
pub const MAX_INDEX_NAME: usize = kindex_crds::spec::MAX_INDEX_NAME;

/// The index name is used for Services, so it must be a DNS-1035 label (a
/// `VectorIndex` name may be any DNS subdomain, e.g. contain dots).
pub fn check_index_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.len() > MAX_INDEX_NAME {
        return Err(format!(
            "metadata.name {name:?} is longer than {MAX_INDEX_NAME} characters; \
             the names of its StatefulSets, pods and Services would exceed Kubernetes limits"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase())
        || name.ends_with('-')
        || !name.chars().all(ok_char)
    {
        return Err(format!(
            "metadata.name {name:?} must be a DNS-1035 label (lowercase letters, digits and '-', \
             starting with a letter) because it names Services"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_index_name("products").is_ok());
        assert!(check_index_name("a-1").is_ok());
        assert!(check_index_name(&"a".repeat(MAX_INDEX_NAME)).is_ok());
        for bad in ["1abc", "a.b", "Abc", "abc-", "a_b", ""] {
            assert!(check_index_name(bad).is_err(), "{bad}");
        }
        assert!(check_index_name(&"a".repeat(MAX_INDEX_NAME + 1)).is_err());
        // The longest name still gives legal derived names.
        let n = "a".repeat(MAX_INDEX_NAME);
        assert!(headless_name(&n, 63).len() <= 63);
        assert!(statefulset_name(&n, 63).len() + 11 <= 63);
    }
}
