//! One StatefulSet per shard: `<index>-s<shard>`, pods `<index>-s<shard>-<ordinal>`.
//!
//! - `podManagementPolicy: Parallel`: all pods of a new shard start together, the
//!   operator (not pod order) forms the Raft group.
//! - `updateStrategy: OnDelete`: the operator restarts pods itself, followers first and
//!   the leader last, waiting for each to catch up (see `rollout`).
//! - `replicas` is *not* `spec.replicas` blindly; the reconciler passes
//!   [`StatefulSetParams::replicas`] computed from the observed Raft membership, so a
//!   pod is only removed after it left the Raft group (see `membership::statefulset_replicas`).
//! - PVC retention: `whenDeleted` follows `storage.retainOnDelete`; `whenScaled` is
//!   always `Retain`: the StatefulSet can be scaled by someone other than the
//!   operator (a human, an emergency), and a scale must never destroy the only copy of
//!   a replica that may still be a voter. A returning ordinal with stale data rejoins
//!   as a learner and is brought up to date by the leader (log or snapshot).
//! - The pod template carries the structural hash as an annotation and the structural
//!   fields as literal env values: they are immutable, so the template changes only
//!   when the image, resources or scheduling overrides change. Runtime knobs live in
//!   the mounted ConfigMap and never change the template.

use std::collections::BTreeMap;

use super::configmap::RUNTIME_KEY;
use super::service::{ADMIN_PORT, GRPC_PORT, HTTP_PORT, RAFT_PORT};
use super::{labels, owned_meta};
use crate::validate::ValidIndex;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::Lifecycle;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, SleepAction, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const CONTAINER: &str = "kindex-node";
pub const DATA_VOLUME: &str = "data";
pub const DATA_DIR: &str = "/data";
pub const CONFIG_VOLUME: &str = "config";
pub const CONFIG_DIR: &str = "/etc/kindex";
/// The Secret of `spec.auth.apiKeySecretRef`, mounted whole (not by subPath, so the
/// kubelet's updates reach the pod and the node re-reads the keys: rotation without a
/// restart).
pub const API_KEYS_VOLUME: &str = "api-keys";
pub const API_KEYS_DIR: &str = "/etc/kindex-api-keys";
/// The index's peer TLS Secret (`spec.peerTls`), mounted whole so renewed certificates
/// reach the pod (the node re-reads the directory).
pub const PEER_TLS_VOLUME: &str = "peer-tls";
pub const PEER_TLS_DIR: &str = "/etc/kindex-peer-tls";
/// Long enough for the node to drain its indexing queue and write a snapshot.
pub const TERMINATION_GRACE_SECS: i64 = 120;
/// Let endpoint removal reach clients before the node stops serving.
pub const PRE_STOP_SLEEP_SECS: i64 = 5;
/// Group that owns the data volume, so a non-root node image can write to it.
pub const FS_GROUP: i64 = 65532;

/// Facts the StatefulSet depends on beyond the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct StatefulSetParams {
    /// Desired pods, from observed membership (see the module doc).
    pub replicas: i32,
    /// `spec.image` or the operator's default.
    pub image: String,
    /// Volume claim size and class. `volumeClaimTemplates` are immutable, so for an
    /// existing StatefulSet the reconciler passes what it already has.
    pub storage_size: Quantity,
    pub storage_class: Option<String>,
}

impl StatefulSetParams {
    /// Parameters straight from the spec (a new StatefulSet).
    pub fn from_spec(vi: &ValidIndex, replicas: i32) -> Self {
        Self {
            replicas,
            image: vi.image.clone(),
            storage_size: vi.spec.storage.size.clone(),
            storage_class: vi.spec.storage.storage_class_name.clone(),
        }
    }
}

pub fn build_statefulset(vi: &ValidIndex, shard: u32, p: &StatefulSetParams) -> StatefulSet {
    let name = &vi.name;
    let structural_hash = vi.structural_hash.clone();
    let overrides = vi.spec.pod_template.clone().unwrap_or_default();

    let pod_meta = ObjectMeta {
        labels: Some(labels::shard_labels(&vi.name, shard)),
        annotations: Some(BTreeMap::from([(
            labels::STRUCTURAL_HASH.to_owned(),
            structural_hash.clone(),
        )])),
        ..ObjectMeta::default()
    };
    let affinity = overrides
        .affinity
        .unwrap_or_else(|| default_affinity(vi, shard));
    let mut volumes = vec![Volume {
        name: CONFIG_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: labels::configmap_name(name),
            items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                key: RUNTIME_KEY.to_owned(),
                path: RUNTIME_KEY.to_owned(),
                ..Default::default()
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(r) = api_key_secret(vi) {
        volumes.push(Volume {
            name: API_KEYS_VOLUME.to_owned(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                secret_name: Some(r.name.clone()),
                // Owner and group (fsGroup) read only.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Volume::default()
        });
    }
    if peer_tls(vi) {
        volumes.push(Volume {
            name: PEER_TLS_VOLUME.to_owned(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                secret_name: Some(kindex_crds::spec::peer_tls::node_secret(&vi.name)),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Volume::default()
        });
    }
    let pod_spec = PodSpec {
        containers: vec![container(vi, shard, p)],
        volumes: Some(volumes),
        affinity: Some(affinity),
        node_selector: overrides.node_selector,
        tolerations: overrides.tolerations,
        topology_spread_constraints: overrides.topology_spread_constraints,
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECS),
        // The node never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            fs_group: Some(FS_GROUP),
            fs_group_change_policy: Some("OnRootMismatch".to_owned()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };

    let mut meta = owned_meta(
        vi,
        labels::statefulset_name(name, shard),
        labels::shard_labels(name, shard),
    );
    meta.annotations = Some(BTreeMap::from([(
        labels::STRUCTURAL_HASH.to_owned(),
        structural_hash,
    )]));

    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(p.replicas),
            service_name: Some(labels::headless_name(name, shard)),
            selector: LabelSelector {
                match_labels: Some(labels::shard_selector(&vi.name, shard)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if vi.spec.storage.retain_on_delete {
                            "Retain"
                        } else {
                            "Delete"
                        }
                        .to_owned(),
                    ),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(vec![volume_claim(vi, shard, p)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn peer_tls(vi: &ValidIndex) -> bool {
    kindex_crds::PeerTlsSpec::enabled(vi.spec.peer_tls.as_ref())
}

fn api_key_secret(vi: &ValidIndex) -> Option<&kindex_crds::ApiKeySecretRef> {
    vi.spec.auth.as_ref()?.api_key_secret_ref.as_ref()
}

fn container(vi: &ValidIndex, shard: u32, p: &StatefulSetParams) -> Container {
    let s = &vi.structural;
    let mut args = [
        "--data-dir",
        DATA_DIR,
        "--index",
        &vi.name,
        "--shard",
        &shard.to_string(),
        "--listen",
        "0.0.0.0",
        "--grpc-port",
        &GRPC_PORT.to_string(),
        "--raft-port",
        &RAFT_PORT.to_string(),
        "--admin-port",
        &ADMIN_PORT.to_string(),
        "--http-port",
        &HTTP_PORT.to_string(),
        "--runtime-config",
        &format!("{CONFIG_DIR}/{RUNTIME_KEY}"),
        // Cluster mode: the node id is the pod ordinal; members reach each other through the
        // shard's headless Service, and the coordinator reaches other shards the same way.
        "--service",
        &labels::headless_name(&vi.name, shard),
        "--raft-addr-template",
        &format!("{{pod}}.{{service}}.{{namespace}}.svc:{RAFT_PORT}"),
        "--shard-addr-template",
        &format!("{{index}}-s{{shard}}-headless.{{namespace}}.svc:{GRPC_PORT}"),
    ]
    .map(str::to_owned)
    .to_vec();
    if vi.release.is_some_and(|r| !r.admin_port) {
        // A release from before the admin port (it would refuse the flag and exit): it
        // serves Admin on the data port, where the operator falls back to.
        if let Some(i) = args.iter().position(|a| a == "--admin-port") {
            args.drain(i..i + 2);
        }
    }
    if let Some(r) = api_key_secret(vi) {
        args.extend([
            "--api-keys-file".to_owned(),
            format!("{API_KEYS_DIR}/{}", r.read_write_key),
        ]);
        if let Some(ro) = &r.read_only_key {
            args.extend([
                "--read-only-api-keys-file".to_owned(),
                format!("{API_KEYS_DIR}/{ro}"),
            ]);
        }
    }
    if peer_tls(vi) {
        args.extend([
            "--peer-tls-dir".to_owned(),
            PEER_TLS_DIR.to_owned(),
            "--peer-tls-server-name".to_owned(),
            kindex_crds::spec::peer_tls::server_name(&vi.name, &vi.namespace),
        ]);
    }
    // Only when set: templates of indexes without it stay byte-identical (no rollout).
    if vi.spec.storage.vectors_on_disk {
        args.push("--vectors-on-disk".to_owned());
    }
    // Structural fields are immutable, so literal values never change the template.
    let env = [
        ("KINDEX_DIMENSION", s.dimension.to_string()),
        ("KINDEX_METRIC", s.metric.to_string()),
        ("KINDEX_M", s.m.to_string()),
        ("KINDEX_EF_CONSTRUCTION", s.ef_construction.to_string()),
        ("KINDEX_SHARDS", s.shards.to_string()),
    ]
    .into_iter()
    // Only when not `none` (the node's default): the pod template of every index
    // created before the field existed stays byte-identical, so no rollout.
    .chain((!s.quantization.is_none()).then(|| ("KINDEX_QUANTIZATION", s.quantization.to_string())))
    .map(|(name, value)| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    })
    .chain(
        [
            ("KINDEX_POD_NAME", "metadata.name"),
            ("KINDEX_NAMESPACE", "metadata.namespace"),
        ]
        .map(|(name, path)| EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }),
    )
    .collect();
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    Container {
        name: CONTAINER.to_owned(),
        image: Some(p.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec!["kindex-node".to_owned()]),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            port("grpc", GRPC_PORT),
            port("raft", RAFT_PORT),
            port("admin", ADMIN_PORT),
            port("http", HTTP_PORT),
        ]),
        resources: vi.spec.resources.clone(),
        // Loading a large snapshot and replaying the log can take minutes: the startup
        // probe (up to 10 min) holds the liveness probe off until the node answers.
        startup_probe: Some(http_probe("/healthz", 10, 60)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        // A node that refuses its data (structural drift) exits with the reason in its
        // log; this puts it in the pod status, where the operator reads it.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            vec![
                VolumeMount {
                    name: DATA_VOLUME.to_owned(),
                    mount_path: DATA_DIR.to_owned(),
                    ..VolumeMount::default()
                },
                // A directory mount (not subPath), so ConfigMap updates reach the pod.
                VolumeMount {
                    name: CONFIG_VOLUME.to_owned(),
                    mount_path: CONFIG_DIR.to_owned(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(api_key_secret(vi).map(|_| VolumeMount {
                name: API_KEYS_VOLUME.to_owned(),
                mount_path: API_KEYS_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }))
            .chain(peer_tls(vi).then(|| VolumeMount {
                name: PEER_TLS_VOLUME.to_owned(),
                mount_path: PEER_TLS_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }))
            .collect(),
        ),
        ..Container::default()
    }
}

/// Prefer spreading a shard's replicas over nodes, so one node failure costs a shard at
/// most one voter. Preferred, not required: a small cluster must still schedule.
fn default_affinity(vi: &ValidIndex, shard: u32) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(labels::shard_selector(&vi.name, shard)),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn volume_claim(vi: &ValidIndex, shard: u32, p: &StatefulSetParams) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_owned()),
            labels: Some(labels::shard_labels(&vi.name, shard)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: p.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    p.storage_size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}
