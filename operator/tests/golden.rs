//! Golden files of every builder, for a minimal and a production-like VectorIndex.
//! `UPDATE_GOLDEN=1 cargo test -p kindex-operator --test golden` rewrites them; review
//! the diff, it is what the operator ships.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kindex_crds::VectorIndex;
use kindex_operator::build::{
    OperatorPeer, StatefulSetParams, configmap, network_policy, pdb, service, statefulset,
};
use kindex_operator::validate::ValidIndex;
use serde::Serialize;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn fixture(name: &str) -> VectorIndex {
    let text =
        std::fs::read_to_string(dir().join("fixtures").join(format!("{name}.yaml"))).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The builders' input: the fixture through the validate step.
fn valid(vi: &VectorIndex, default_image: &str) -> ValidIndex {
    ValidIndex::new(vi, default_image).unwrap()
}

fn check(file: &str, obj: &impl Serialize) {
    let got = serde_saphyr::to_string(obj).unwrap();
    let path = dir().join("golden").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        got == want,
        "{file} differs from the golden file (UPDATE_GOLDEN=1 to accept):\n--- got ---\n{got}"
    );
}

/// Every builder's output for `name`; per-shard objects for the last shard.
fn goldens(name: &str) {
    let vi = valid(&fixture(name), &kindex_operator::default_image());
    let shard = vi.spec.shards - 1;
    let replicas = vi.spec.replicas;
    check(
        &format!("{name}-configmap.yaml"),
        &configmap::build_configmap(&vi),
    );
    check(
        &format!("{name}-service.yaml"),
        &service::build_client_service(&vi),
    );
    check(
        &format!("{name}-headless.yaml"),
        &service::build_headless_service(&vi, shard),
    );
    check(
        &format!("{name}-pdb.yaml"),
        &pdb::build_pdb(&vi, shard, replicas),
    );
    let params = StatefulSetParams::from_spec(&vi, replicas as i32);
    check(
        &format!("{name}-statefulset.yaml"),
        &statefulset::build_statefulset(&vi, shard, &params),
    );
    check(
        &format!("{name}-networkpolicy.yaml"),
        &network_policy::build_network_policy(&vi, &chart_operator()).unwrap(),
    );
}

/// The operator as the chart installs it (release `kindex` in `kindex-system`).
fn chart_operator() -> OperatorPeer {
    OperatorPeer {
        namespace: Some("kindex-system".into()),
        pod_labels: [
            ("app.kubernetes.io/name", "kindex-operator"),
            ("app.kubernetes.io/instance", "kindex"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    }
}

#[test]
fn minimal() {
    goldens("minimal");
}

#[test]
fn production() {
    goldens("production");
}

/// Runtime knobs live in the ConfigMap only: changing them must not touch the pod
/// template (no restarts), while the image does.
#[test]
fn runtime_knobs_do_not_change_the_pod_template() {
    let raw = fixture("production");
    let vi = valid(&raw, "unused");
    let params = StatefulSetParams::from_spec(&vi, 3);
    let before = statefulset::build_statefulset(&vi, 0, &params);
    let mut tuned = raw.clone();
    tuned.spec.hnsw.ef_search = 512;
    tuned.spec.indexing.threads = 8;
    tuned.spec.snapshots.interval = "1h".into();
    tuned.spec.snapshots.keep = 9;
    let tuned = valid(&tuned, "unused");
    let after = statefulset::build_statefulset(&tuned, 0, &params);
    assert_eq!(before, after);
    assert_ne!(
        configmap::build_configmap(&vi),
        configmap::build_configmap(&tuned)
    );
    let mut image = StatefulSetParams::from_spec(&vi, 3);
    image.image = "other:1".into();
    assert_ne!(statefulset::build_statefulset(&vi, 0, &image), before);
}

/// The ConfigMap's runtime.json has exactly the node's `RuntimeConfig` keys (the node
/// rejects unknown ones).
#[test]
fn runtime_json_has_the_node_keys() {
    let cm = configmap::build_configmap(&valid(&fixture("production"), "unused"));
    let text = &cm.data.unwrap()[configmap::RUNTIME_KEY];
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "efSearch",
            "indexingBatchSize",
            "indexingThreads",
            "logLevel",
            "queueCapacity",
            "retentionSweepIntervalSecs",
            "snapshotIntervalSecs",
            "snapshotKeep",
            "snapshotLogEntries"
        ]
    );
    assert_eq!(v["snapshotIntervalSecs"], 600);
}

/// An invalid spec never reaches the builders: the validate step stops it.
#[test]
fn invalid_spec_is_refused_by_validate() {
    let mut vi = fixture("minimal");
    vi.spec.snapshots.interval = "soon".into();
    assert!(matches!(
        ValidIndex::new(&vi, "unused"),
        Err(kindex_operator::validate::ValidateError::Spec(_))
    ));
    let mut vi = fixture("minimal");
    vi.metadata.uid = None;
    assert!(matches!(
        ValidIndex::new(&vi, "unused"),
        Err(kindex_operator::validate::ValidateError::Identity("uid"))
    ));
}

/// The client Service exposes the data plane only; the Admin port (membership changes,
/// snapshots) and the Raft port are reachable through the headless Service, and the pod
/// declares them, so the operator and the other nodes reach them (issue 18).
#[test]
fn client_service_exposes_no_admin_or_raft_port() {
    let vi = valid(&fixture("production"), "unused");
    let ports = |s: k8s_openapi::api::core::v1::Service| -> Vec<(String, i32)> {
        s.spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect()
    };
    let client = ports(service::build_client_service(&vi));
    assert_eq!(
        client,
        [("grpc".to_owned(), 7070), ("http".to_owned(), 7080)]
    );
    let headless = ports(service::build_headless_service(&vi, 0));
    assert!(
        headless.contains(&("admin".to_owned(), 7072)),
        "{headless:?}"
    );
    let params = StatefulSetParams::from_spec(&vi, 3);
    let sts = statefulset::build_statefulset(&vi, 0, &params);
    let c = &sts.spec.unwrap().template.spec.unwrap().containers[0];
    assert!(
        c.ports
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p.name.as_deref() == Some("admin") && p.container_port == 7072)
    );
    let args = c.args.as_ref().unwrap();
    let at = args.iter().position(|a| a == "--admin-port").unwrap();
    assert_eq!(args[at + 1], "7072");
}

/// `spec.auth.apiKeySecretRef`: the Secret is mounted whole (updates reach the pod, the node
/// re-reads the keys) and the node is told to require keys from its files; unset, nothing
/// of it appears (the goldens above have no auth).
#[test]
fn api_key_secret_is_mounted_and_required() {
    let mut raw = fixture("production");
    raw.spec.auth = Some(kindex_crds::AuthSpec {
        api_key_secret_ref: Some(kindex_crds::ApiKeySecretRef {
            name: "products-keys".into(),
            read_write_key: "readWrite".into(),
            read_only_key: Some("readOnly".into()),
        }),
    });
    let vi = valid(&raw, "unused");
    let params = StatefulSetParams::from_spec(&vi, 3);
    let pod = statefulset::build_statefulset(&vi, 0, &params)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == statefulset::API_KEYS_VOLUME)
        .expect("api-keys volume");
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("products-keys"));
    assert!(
        secret.items.is_none(),
        "the whole Secret, so updates propagate"
    );
    let c = &pod.containers[0];
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == statefulset::API_KEYS_VOLUME)
        .expect("api-keys mount");
    assert!(mount.sub_path.is_none() && mount.read_only == Some(true));
    let args = c.args.as_ref().unwrap().join(" ");
    let dir = statefulset::API_KEYS_DIR;
    assert!(
        args.contains(&format!("--api-keys-file {dir}/readWrite"))
            && args.contains(&format!("--read-only-api-keys-file {dir}/readOnly")),
        "{args}"
    );

    // Without auth: no volume, no flags.
    let plain = valid(&fixture("production"), "unused");
    let sts = statefulset::build_statefulset(&plain, 0, &params);
    let text = serde_saphyr::to_string(&sts).unwrap();
    assert!(!text.contains("api-keys"), "{text}");
}

/// The node container of shard 0's StatefulSet as the operator builds it for `vi` (3 replicas).
fn node_container(vi: &ValidIndex) -> k8s_openapi::api::core::v1::Container {
    let params = StatefulSetParams::from_spec(vi, 3);
    let sts = statefulset::build_statefulset(vi, 0, &params);
    sts.spec.unwrap().template.spec.unwrap().containers[0].clone()
}

/// `spec.quantization` reaches the node as `KINDEX_QUANTIZATION` and is part of the
/// structural config the ConfigMap records (and of the hash on the pod template). With
/// `none`, the default, nothing of it appears: the minimal golden above has neither, so
/// indexes created before the field existed keep a byte-identical pod template and hash.
#[test]
fn quantization_reaches_the_pods_only_when_set() {
    use kindex_common::Quantization;
    let env_of = |vi: &ValidIndex| -> Option<String> {
        node_container(vi)
            .env
            .unwrap()
            .into_iter()
            .find(|e| e.name == "KINDEX_QUANTIZATION")
            .and_then(|e| e.value)
    };
    let recorded = |vi: &ValidIndex| -> serde_json::Value {
        let cm = configmap::build_configmap(vi);
        serde_json::from_str(&cm.data.unwrap()[configmap::STRUCTURAL_KEY]).unwrap()
    };

    let raw = fixture("production");
    assert_eq!(raw.spec.quantization, Quantization::Int8);
    let int8 = valid(&raw, "unused");
    assert_eq!(env_of(&int8).as_deref(), Some("int8"));
    assert_eq!(recorded(&int8)["structural"]["quantization"], "int8");
    assert_eq!(recorded(&int8)["hash"], int8.structural_hash.as_str());

    let mut none = raw.clone();
    none.spec.quantization = Quantization::None;
    let none = valid(&none, "unused");
    assert_eq!(env_of(&none), None);
    assert!(recorded(&none)["structural"].get("quantization").is_none());
    assert_ne!(int8.structural_hash, none.structural_hash);

    let mut binary = raw.clone();
    binary.spec.quantization = Quantization::Binary;
    let binary = valid(&binary, "unused");
    assert_eq!(env_of(&binary).as_deref(), Some("binary"));
    assert_eq!(recorded(&binary)["structural"]["quantization"], "binary");
    assert_ne!(binary.structural_hash, int8.structural_hash);
    assert_ne!(binary.structural_hash, none.structural_hash);
}

/// `spec.storage.vectorsOnDisk` reaches the node as `--vectors-on-disk`, only when set (the
/// templates of other indexes stay byte-identical); it is not structural (the hash is the same,
/// changing it rolls the pods).
#[test]
fn vectors_on_disk_reaches_the_pods_only_when_set() {
    let args_of = |vi: &ValidIndex| -> Vec<String> { node_container(vi).args.unwrap() };
    let raw = fixture("production");
    assert!(!raw.spec.storage.vectors_on_disk);
    let off = valid(&raw, "unused");
    assert!(!args_of(&off).iter().any(|a| a.contains("vectors-on-disk")));
    let mut on = raw.clone();
    on.spec.storage.vectors_on_disk = true;
    let on = valid(&on, "unused");
    let args = args_of(&on);
    assert_eq!(
        args.iter().filter(|a| *a == "--vectors-on-disk").count(),
        1,
        "{args:?}"
    );
    assert_eq!(on.structural_hash, off.structural_hash);
}

/// A pod that may send traffic: its namespace (with the namespace's labels) and labels.
struct Source<'a> {
    namespace: &'a str,
    namespace_labels: &'a [(&'a str, &'a str)],
    labels: &'a [(&'a str, &'a str)],
}

fn matches(
    sel: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    labels: &[(&str, &str)],
) -> bool {
    let Some(sel) = sel else { return true };
    assert!(
        sel.match_expressions.is_none(),
        "matchExpressions not evaluated here"
    );
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.contains(&(k.as_str(), v.as_str())))
}

/// Whether `np` (in `np_namespace`) lets `src` reach `port` of the pods it selects: the
/// NetworkPolicy semantics for pod and namespace selectors (IP blocks never match a pod
/// here).
fn allows(
    np: &k8s_openapi::api::networking::v1::NetworkPolicy,
    np_namespace: &str,
    src: &Source<'_>,
    port: i32,
) -> bool {
    let spec = np.spec.as_ref().unwrap();
    let ns_labels: Vec<(&str, &str)> = src
        .namespace_labels
        .iter()
        .copied()
        .chain([("kubernetes.io/metadata.name", src.namespace)])
        .collect();
    spec.ingress.iter().flatten().any(|rule| {
        let port_ok = rule.ports.as_ref().is_none_or(|ps| {
            ps.iter().any(|p| {
                p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
            })
        });
        let from_ok = match &rule.from {
            None => true,
            Some(peers) => peers.iter().any(|peer| {
                if peer.ip_block.is_some() {
                    return false;
                }
                let ns_ok = match &peer.namespace_selector {
                    None => src.namespace == np_namespace,
                    Some(_) => matches(&peer.namespace_selector, &ns_labels),
                };
                ns_ok && matches(&peer.pod_selector, src.labels)
            }),
        };
        port_ok && from_ok
    })
}

/// The rendered NetworkPolicy checked against the pods' real labels and ports: it selects
/// every index pod (each shard's StatefulSet template); Raft and admin ports are reachable
/// from the index's pods (any shard), the admin port from the operator's pods, nothing
/// else; the client ports from `clientFrom` (production) or anyone (minimal).
#[test]
fn network_policy_admits_the_index_and_the_operator_to_raft_and_admin_only() {
    let operator = chart_operator();
    for name in ["minimal", "production"] {
        let vi = valid(&fixture(name), "unused");
        let np = network_policy::build_network_policy(&vi, &operator).unwrap();
        let selected = &np.spec.as_ref().unwrap().pod_selector;
        let mut pods = Vec::new();
        for shard in 0..vi.spec.shards {
            let params = StatefulSetParams::from_spec(&vi, 3);
            let sts = statefulset::build_statefulset(&vi, shard, &params);
            let labels = sts.spec.unwrap().template.metadata.unwrap().labels.unwrap();
            pods.push(labels);
        }
        for labels in &pods {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert!(
                matches(selected, &l),
                "{name}: the policy must select {labels:?}"
            );
        }
        let ns = vi.namespace.as_str();
        let own: Vec<(&str, &str)> = pods
            .last()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let index_pod = Source {
            namespace: ns,
            namespace_labels: &[],
            labels: &own,
        };
        let neighbour = Source {
            namespace: ns,
            namespace_labels: &[],
            labels: &[("app", "web")],
        };
        let other_index = Source {
            namespace: ns,
            namespace_labels: &[],
            labels: &[
                ("app.kubernetes.io/name", "kindex"),
                ("app.kubernetes.io/instance", "other"),
            ],
        };
        let op = Source {
            namespace: "kindex-system",
            namespace_labels: &[],
            labels: &[
                ("app.kubernetes.io/name", "kindex-operator"),
                ("app.kubernetes.io/instance", "kindex"),
                ("app.kubernetes.io/component", "operator"),
            ],
        };
        let op_lookalike = Source {
            namespace: ns,
            namespace_labels: &[],
            labels: op.labels,
        };
        for port in [7070, 7071, 7072, 7080] {
            assert!(
                allows(&np, ns, &index_pod, port),
                "{name}: index pod to {port}"
            );
        }
        for (who, src) in [
            ("a neighbour", &neighbour),
            ("another index", &other_index),
            ("the operator", &op),
            ("operator labels in the index's namespace", &op_lookalike),
        ] {
            assert!(
                !allows(&np, ns, src, 7071),
                "{name}: {who} must not reach Raft"
            );
        }
        assert!(
            allows(&np, ns, &op, 7072),
            "{name}: the operator reaches admin"
        );
        for (who, src) in [
            ("a neighbour", &neighbour),
            ("another index", &other_index),
            ("operator labels in the index's namespace", &op_lookalike),
        ] {
            assert!(
                !allows(&np, ns, src, 7072),
                "{name}: {who} must not reach admin"
            );
        }
        let app = Source {
            namespace: "shop",
            namespace_labels: &[("kindex.dev/client", "true")],
            labels: &[("app", "shop")],
        };
        let prom = Source {
            namespace: "monitoring",
            namespace_labels: &[],
            labels: &[("app", "prometheus")],
        };
        let stranger = Source {
            namespace: "elsewhere",
            namespace_labels: &[],
            labels: &[("app", "x")],
        };
        for port in [7070, 7080] {
            assert!(
                allows(&np, ns, &app, port),
                "{name}: a client namespace to {port}"
            );
            assert!(allows(&np, ns, &prom, port), "{name}: monitoring to {port}");
            // minimal: no clientFrom, anyone; production: only the listed namespaces.
            assert_eq!(
                allows(&np, ns, &stranger, port),
                name == "minimal",
                "{name}: another namespace to {port}"
            );
        }
    }
    // `spec.network.policy: false`: none rendered.
    let mut vi = fixture("minimal");
    vi.spec.network = Some(kindex_crds::spec::NetworkSpec {
        policy: Some(false),
        client_from: None,
    });
    assert!(network_policy::build_network_policy(&valid(&vi, "unused"), &operator).is_none());
    // The operator's namespace unknown: admin reachable from the index's pods only.
    let vi = valid(&fixture("minimal"), "unused");
    let np = network_policy::build_network_policy(&vi, &OperatorPeer::default()).unwrap();
    let ops = Source {
        namespace: "kindex-system",
        namespace_labels: &[],
        labels: &[("app.kubernetes.io/name", "kindex-operator")],
    };
    assert!(!allows(&np, vi.namespace.as_str(), &ops, 7072));
}

/// An image of release v0.1.0 gets the arguments that release knows: no `--admin-port`
/// (it exits on an unknown flag; it serves Admin on the data port). Everything else is the
/// same, and this build's image keeps the flag.
#[test]
fn a_v010_image_gets_no_admin_port_flag() {
    let args = |vi: &ValidIndex| {
        let params = StatefulSetParams::from_spec(vi, 3);
        let sts = statefulset::build_statefulset(vi, 0, &params);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        pod.containers[0].args.clone().unwrap()
    };
    let mut raw = fixture("minimal");
    let current = args(&valid(&raw, &kindex_operator::default_image()));
    assert!(current.windows(2).any(|w| w == ["--admin-port", "7072"]));
    raw.spec.image = Some("kindex/kindex-node:v0.1.0".into());
    let old = valid(&raw, &kindex_operator::default_image());
    assert!(old.release.is_some());
    let old = args(&old);
    assert!(!old.iter().any(|a| a == "--admin-port"), "{old:?}");
    assert_eq!(old.len() + 2, current.len());
}
