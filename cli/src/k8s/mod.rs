//! Kubernetes discovery for `kubectl kindex` (and `kindex --kube`): find a
//! `VectorIndex`'s pods through the kubeconfig and reach each one through an
//! in-process port-forward (the `pods/portforward` subresource) served on an
//! ephemeral `127.0.0.1` port, which the ordinary gRPC client then dials.
//!
//! The pure parts (pod state, selection and ordering, address building, error
//! classification) are unit-tested here; discovery and error reporting run
//! against a real API server in `e2e/kubectl-plugin.sh` (no kubelet there);
//! the forward runs against a stand-in API server that speaks the
//! port-forward protocol in `tests/kube_forward.rs`. A forward through a real
//! kubelet is not exercised by CI.

use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kindex_crds::VectorIndex;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

mod forward;

use forward::{open, serve};

// The operator's labels and names (operator/src/build/labels.rs, service.rs).
// The CLI does not depend on the operator crate; e2e/kubectl-plugin.sh checks
// discovery against pods labelled this way.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_SHARD: &str = "kindex.dev/shard";
pub const APP: &str = "kindex";
/// The node's gRPC port (container port named [`GRPC_PORT_NAME`]).
pub const GRPC_PORT: u16 = 7070;
pub const GRPC_PORT_NAME: &str = "grpc";
/// The node's Admin gRPC port (container port named [`ADMIN_PORT_NAME`]); the client
/// Service does not expose it, so `status` and `snapshot` port-forward to the pod's.
pub const ADMIN_PORT: u16 = 7072;
pub const ADMIN_PORT_NAME: &str = "admin";

/// Which of a node's gRPC services a command talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// `Points`, on the data port (7070).
    Data,
    /// `Admin` (`status`, `snapshot`), on the admin port (7072).
    Admin,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no usable kubeconfig: {0}. Set KUBECONFIG or pass --kubeconfig/--context, \
         or give --addr to talk to a node directly"
    )]
    Config(String),
    #[error("cannot reach the Kubernetes API server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "forbidden: you may not {verb} {resource} in namespace {namespace:?} ({message}); \
         ask for an RBAC Role granting \"{verb}\" on \"{resource}\""
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        message: String,
    },
    #[error("VectorIndex {index:?} not found in namespace {namespace:?}{others}")]
    IndexNotFound {
        index: String,
        namespace: String,
        /// `"; it has: a, b"`, or a hint when there are none.
        others: String,
    },
    #[error(
        "no VectorIndex in namespace {namespace:?}; pass --namespace, or --index for an index \
         whose pods are labelled {LABEL_INSTANCE}=<index>"
    )]
    NoIndex { namespace: String },
    #[error("{count} VectorIndexes in namespace {namespace:?} ({names}); choose one with --index")]
    Ambiguous {
        count: usize,
        namespace: String,
        names: String,
    },
    #[error(
        "index {index:?} has no pods in namespace {namespace:?} yet{phase} \
         (looked for {LABEL_NAME}={APP},{LABEL_INSTANCE}={index})"
    )]
    NoPods {
        index: String,
        namespace: String,
        /// `" (phase Creating)"` when the VectorIndex says.
        phase: String,
    },
    #[error("no ready pod of index {index:?} in namespace {namespace:?}: {pods}")]
    NoReadyPod {
        index: String,
        namespace: String,
        /// `"demo-s0-0 Pending, demo-s0-1 Running, not ready"`.
        pods: String,
    },
    #[error("port-forward to pod/{pod} port {port} failed: {message}")]
    PortForward {
        pod: String,
        port: u16,
        message: String,
    },
    #[error("{what} failed: {message}")]
    Api { what: String, message: String },
    #[error("cannot open a local listener for the port-forward: {0}")]
    Listen(#[source] std::io::Error),
}

/// Where to look: flags of `kubectl kindex`.
#[derive(Debug, Clone, Default)]
pub struct KubeOpts {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    /// VectorIndex name; empty: the only one in the namespace.
    pub index: String,
    /// Read the index's peer TLS Secret when the index has `spec.peerTls` on (admin calls
    /// without `--peer-tls-dir`).
    pub peer_identity: bool,
}

/// Which pods a command talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Data-plane commands: ready pods (any node coordinates every shard).
    Ready,
    /// `status` and `snapshot`: every pod; those that are not running are
    /// reported as unreachable.
    Every,
}

/// What a pod looks like to the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub shard: Option<u32>,
    pub ordinal: Option<u32>,
    pub phase: String,
    pub ready: bool,
    pub terminating: bool,
    pub grpc_port: u16,
    pub admin_port: u16,
}

impl PodInfo {
    pub fn from_pod(p: &Pod) -> PodInfo {
        let name = p.metadata.name.clone().unwrap_or_default();
        let shard = p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SHARD))
            .and_then(|s| s.parse().ok());
        let status = p.status.as_ref();
        let phase = status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into());
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let named_port = |name: &str, default: u16| {
            p.spec
                .as_ref()
                .and_then(|s| {
                    s.containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|cp| cp.name.as_deref() == Some(name))
                })
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .unwrap_or(default)
        };
        let grpc_port = named_port(GRPC_PORT_NAME, GRPC_PORT);
        let admin_port = named_port(ADMIN_PORT_NAME, ADMIN_PORT);
        PodInfo {
            ordinal: ordinal_of(&name),
            name,
            shard,
            phase,
            ready,
            terminating: p.metadata.deletion_timestamp.is_some(),
            grpc_port,
            admin_port,
        }
    }

    /// The container port serving `plane`.
    pub fn port(&self, plane: Plane) -> u16 {
        match plane {
            Plane::Data => self.grpc_port,
            Plane::Admin => self.admin_port,
        }
    }

    /// Ready to serve: the Ready condition is true, it runs, it is not being deleted.
    pub fn usable(&self) -> bool {
        self.ready && self.phase == "Running" && !self.terminating
    }

    /// Running (a forward can reach the container), ready or not.
    pub fn running(&self) -> bool {
        self.phase == "Running" && !self.terminating
    }

    /// `Pending`, `Running, not ready`, `Running, terminating`, `Running, ready`.
    pub fn state(&self) -> String {
        let detail = if self.terminating {
            ", terminating"
        } else if self.phase != "Running" {
            ""
        } else if self.ready {
            ", ready"
        } else {
            ", not ready"
        };
        format!("{}{detail}", self.phase)
    }
}

/// The ordinal of a StatefulSet pod name `<index>-s<shard>-<ordinal>`.
pub fn ordinal_of(pod: &str) -> Option<u32> {
    pod.rsplit_once('-').and_then(|(_, o)| o.parse().ok())
}

/// Label selector of every pod of an index (the operator's `index_selector`).
pub fn pod_selector(index: &str) -> String {
    format!("{LABEL_NAME}={APP},{LABEL_INSTANCE}={index}")
}

/// The pods to talk to, in order. [`Want::Ready`]: only ready pods, replicas
/// with ordinal 0 of every shard first (so failover spreads over shards);
/// errors when there is none. [`Want::Every`]: every pod, same order.
pub fn select_pods(
    index: &str,
    namespace: &str,
    phase: Option<&str>,
    pods: &[PodInfo],
    want: Want,
) -> Result<Vec<PodInfo>, KubeError> {
    if pods.is_empty() {
        return Err(KubeError::NoPods {
            index: index.into(),
            namespace: namespace.into(),
            phase: phase.map(|p| format!(" (phase {p})")).unwrap_or_default(),
        });
    }
    let mut sorted = pods.to_vec();
    sorted.sort_by(|a, b| (a.ordinal, a.shard, &a.name).cmp(&(b.ordinal, b.shard, &b.name)));
    let ready: Vec<PodInfo> = sorted.iter().filter(|p| p.usable()).cloned().collect();
    match want {
        Want::Every => Ok(sorted),
        Want::Ready if !ready.is_empty() => Ok(ready),
        Want::Ready => Err(KubeError::NoReadyPod {
            index: index.into(),
            namespace: namespace.into(),
            pods: sorted
                .iter()
                .map(|p| format!("{} {}", p.name, p.state()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The gRPC URL of a local forward.
pub fn local_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Maps an API error to a message naming what was refused.
pub fn api_error(
    e: kube::Error,
    verb: &'static str,
    resource: &'static str,
    namespace: &str,
    url: &str,
) -> KubeError {
    match e {
        kube::Error::Api(s) if s.code == 403 => KubeError::Forbidden {
            verb,
            resource,
            namespace: namespace.into(),
            message: s.message.clone(),
        },
        kube::Error::Api(s) => KubeError::Api {
            what: format!("{verb} {resource} in namespace {namespace:?}"),
            message: format!("{} ({})", s.message, s.code),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => KubeError::Unreachable {
            url: url.into(),
            message: error_chain(&e),
        },
        other => KubeError::Api {
            what: format!("{verb} {resource} in namespace {namespace:?}"),
            message: error_chain(&other),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// One node to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `pod/<name>`, shown in tables and errors.
    pub name: String,
    /// The local forward's URL, or why the pod cannot be reached.
    pub addr: Result<String, String>,
}

/// What discovery found.
#[derive(Debug)]
pub struct Found {
    pub namespace: String,
    pub index: String,
    /// The VectorIndex's `.status` (None when it could not be read).
    pub status: Option<kindex_crds::status::VectorIndexStatus>,
    pub targets: Vec<Target>,
    /// The index's peer certificate (`spec.peerTls` on and [`KubeOpts::peer_identity`]).
    pub peer_identity: Option<PeerIdentity>,
}

/// A client identity for an index's admin ports: the pods' own certificate, read from the
/// Secret the operator keeps (`get` on it is needed, as it is for anything that may steer
/// the index's Raft groups).
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
    pub server_name: String,
}

async fn peer_identity(
    client: &Client,
    namespace: &str,
    index: &str,
    url: &str,
) -> Result<PeerIdentity, KubeError> {
    let name = kindex_crds::spec::peer_tls::node_secret(index);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), namespace);
    let missing = |what: &str| KubeError::Api {
        what: format!("reading the peer TLS Secret {name}"),
        message: format!(
            "{what} (index {index:?} has spec.peerTls on; the operator writes this Secret)"
        ),
    };
    let secret = secrets
        .get_opt(&name)
        .await
        .map_err(|e| api_error(e, "get", "secrets", namespace, url))?
        .ok_or_else(|| missing("not found"))?;
    let data = secret.data.unwrap_or_default();
    let part = |k: &str| {
        data.get(k)
            .map(|b| b.0.clone())
            .ok_or_else(|| missing(&format!("no {k} in it")))
    };
    Ok(PeerIdentity {
        cert_pem: part("tls.crt")?,
        key_pem: part("tls.key")?,
        ca_pem: part("ca.crt")?,
        server_name: kindex_crds::spec::peer_tls::server_name(index, namespace),
    })
}

async fn client(opts: &KubeOpts) -> Result<(Client, String, String), KubeError> {
    let cfg_err = |e: &dyn std::error::Error| KubeError::Config(error_chain(e));
    let options = KubeConfigOptions {
        context: opts.context.clone(),
        cluster: None,
        user: None,
    };
    let config = match (&opts.kubeconfig, &opts.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| cfg_err(&e))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| cfg_err(&e))?
        }
        // KUBECONFIG (or ~/.kube/config) with the named context.
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| cfg_err(&e))?,
        // What `Client::try_default` does: KUBECONFIG, ~/.kube/config, or in-cluster.
        (None, None) => Config::infer().await.map_err(|e| cfg_err(&e))?,
    };
    let namespace = opts
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| cfg_err(&e))?;
    Ok((client, namespace, url))
}

/// Finds the index and its pods, and starts a local forward to each pod the
/// command needs, to the port of `plane`. The first forward is opened at once,
/// so a refused port-forward (RBAC, pod not scheduled) is an error here rather
/// than a vague "unavailable" later.
pub async fn discover(opts: &KubeOpts, want: Want, plane: Plane) -> Result<Found, KubeError> {
    let (client, namespace, url) = client(opts).await?;
    let vis: Api<VectorIndex> = Api::namespaced(client.clone(), &namespace);
    let mut status = None;
    let mut peer_tls_on = false;
    let index = if opts.index.is_empty() {
        let list = vis
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(e, "list", "vectorindexes.kindex.dev", &namespace, &url))?;
        let names: Vec<String> = list
            .items
            .iter()
            .filter_map(|v| v.metadata.name.clone())
            .collect();
        match names.as_slice() {
            [] => return Err(KubeError::NoIndex { namespace }),
            [one] => {
                status = list.items.first().and_then(|v| v.status.clone());
                peer_tls_on = list
                    .items
                    .first()
                    .is_some_and(|v| kindex_crds::PeerTlsSpec::enabled(v.spec.peer_tls.as_ref()));
                one.clone()
            }
            many => {
                return Err(KubeError::Ambiguous {
                    count: many.len(),
                    namespace,
                    names: many.join(", "),
                });
            }
        }
    } else {
        match vis.get_opt(&opts.index).await {
            Ok(Some(v)) => {
                peer_tls_on = kindex_crds::PeerTlsSpec::enabled(v.spec.peer_tls.as_ref());
                status = v.status;
            }
            Ok(None) => {
                // Pods without a VectorIndex (installed another way) still work.
                let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let lp = ListParams::default().labels(&pod_selector(&opts.index));
                let any = pods
                    .list_metadata(&lp.limit(1))
                    .await
                    .map_err(|e| api_error(e, "list", "pods", &namespace, &url))?;
                if any.items.is_empty() {
                    let others = match vis.list_metadata(&ListParams::default()).await {
                        Ok(l) if !l.items.is_empty() => format!(
                            "; it has: {}",
                            l.items
                                .iter()
                                .filter_map(|v| v.metadata.name.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Ok(_) => " (it has none; check --namespace and --context)".into(),
                        Err(_) => String::new(),
                    };
                    return Err(KubeError::IndexNotFound {
                        index: opts.index.clone(),
                        namespace,
                        others,
                    });
                }
            }
            // Without read access to VectorIndexes, the pods are enough.
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            Err(e) => {
                return Err(api_error(
                    e,
                    "get",
                    "vectorindexes.kindex.dev",
                    &namespace,
                    &url,
                ));
            }
        }
        opts.index.clone()
    };

    let peer_identity = if opts.peer_identity && peer_tls_on && plane == Plane::Admin {
        Some(peer_identity(&client, &namespace, &index, &url).await?)
    } else {
        None
    };
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let list = pods
        .list(&ListParams::default().labels(&pod_selector(&index)))
        .await
        .map_err(|e| api_error(e, "list", "pods", &namespace, &url))?;
    let infos: Vec<PodInfo> = list.items.iter().map(PodInfo::from_pod).collect();
    let phase = status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"));
    let chosen = select_pods(&index, &namespace, phase.as_deref(), &infos, want)?;

    let mut targets = Vec::with_capacity(chosen.len());
    // Open the first forward now, trying pod after pod: a pod the API server
    // will not forward to is reported (unreachable for `status`, an error when
    // no pod works), and RBAC or connection errors stop here.
    let mut opened_one = false;
    let mut first_err = None;
    for p in chosen {
        let name = format!("pod/{}", p.name);
        if !p.running() {
            targets.push(Target {
                name,
                addr: Err(format!("pod is {}", p.state())),
            });
            continue;
        }
        let first = if opened_one {
            None
        } else {
            match open(&pods, &p.name, p.port(plane), &namespace, &url).await {
                Ok(o) => {
                    opened_one = true;
                    Some(o)
                }
                Err(e @ KubeError::PortForward { .. }) => {
                    targets.push(Target {
                        name,
                        addr: Err(e.to_string()),
                    });
                    first_err.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        let local = serve(
            pods.clone(),
            p.name.clone(),
            p.port(plane),
            namespace.clone(),
            url.clone(),
            first,
        )
        .await?;
        targets.push(Target {
            name,
            addr: Ok(local_url(local)),
        });
    }
    if let (false, Want::Ready, Some(e)) = (opened_one, want, first_err) {
        return Err(e);
    }
    Ok(Found {
        namespace,
        index,
        status,
        targets,
        peer_identity,
    })
}

#[cfg(test)]
mod tests;
