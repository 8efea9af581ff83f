//! Subcommands and what they share: the connection context and gRPC error
//! reporting.

pub mod inspect;
pub mod points;
pub mod policy;
pub mod search;
pub mod snapshot;
pub mod status;
pub mod upsert;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use kindex_proto as pb;
use kindex_proto::admin_client::AdminClient;
use kindex_proto::points_client::PointsClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::Global;
use crate::k8s;
use crate::output::Output;

/// Generous: search results with vectors and bulk batches can be large.
const MAX_MESSAGE: usize = 256 << 20;

/// A `Points` client that sends the API key (if any) with every call.
pub type Points = PointsClient<InterceptedService<Channel, ApiKey>>;

/// Adds `authorization: Bearer <key>` to every request (`--api-key` / `KINDEX_API_KEY`).
#[derive(Clone, Default)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl ApiKey {
    pub fn new(key: Option<&str>) -> anyhow::Result<ApiKey> {
        match key.map(str::trim).filter(|k| !k.is_empty()) {
            None => Ok(ApiKey(None)),
            Some(k) => {
                let v = format!("Bearer {k}").parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--api-key / KINDEX_API_KEY holds characters a header cannot carry"
                    )
                })?;
                Ok(ApiKey(Some(v)))
            }
        }
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub struct Ctx {
    /// gRPC URLs to talk to, in order: `--addr`, or local port-forwards to pods.
    pub addrs: Vec<String>,
    /// Display names of `addrs` (`pod/<name>` for forwards; absent: the URL).
    pub names: HashMap<String, String>,
    /// Nodes that cannot be reached at all (a pod that is not running), with why.
    pub unreachable: Vec<(String, String)>,
    /// Set when the nodes were found through the kubeconfig.
    pub kube: Option<KubeSummary>,
    pub index: String,
    pub output: Output,
    pub timeout: Duration,
    /// Sent with every data-plane call.
    pub api_key: ApiKey,
    /// How admin calls reach nodes with peer mTLS: `--peer-tls-dir`, or (Kubernetes mode)
    /// the index's peer TLS Secret.
    pub peer_tls: Option<kindex_node::tls::Connector>,
    /// Data-plane calls over TLS trusting `--ca-cert` (nodes with `--client-tls-dir`).
    pub data_tls: Option<std::sync::Arc<kindex_node::tls::ClientConfig>>,
}

fn data_tls(g: &Global) -> anyhow::Result<Option<std::sync::Arc<kindex_node::tls::ClientConfig>>> {
    let Some(file) = &g.ca_cert else {
        return Ok(None);
    };
    let c = kindex_node::tls::client_config_trusting(file).context("--ca-cert")?;
    Ok(Some(c))
}

fn peer_tls(g: &Global) -> anyhow::Result<Option<kindex_node::tls::Connector>> {
    let Some(dir) = &g.peer_tls_dir else {
        return Ok(None);
    };
    let tls = kindex_node::tls::PeerTls::load(dir, g.peer_tls_server_name.clone())
        .context("--peer-tls-dir")?;
    Ok(Some(kindex_node::tls::Connector::new(std::sync::Arc::new(
        tls,
    ))))
}

fn peer_tls_of(id: &k8s::PeerIdentity) -> anyhow::Result<kindex_node::tls::Connector> {
    let config = kindex_node::tls::client_config_from_pem(&id.cert_pem, &id.key_pem, &id.ca_pem)
        .context("the index's peer TLS Secret")?;
    Ok(kindex_node::tls::Connector::with_config(
        config,
        Some(id.server_name.clone()),
    ))
}

/// What Kubernetes discovery found (for `status` and error hints).
pub struct KubeSummary {
    pub namespace: String,
    pub index: String,
    pub status: Option<kindex_crds::status::VectorIndexStatus>,
}

/// `--addr` / `--admin-addr` entries: trimmed, empty ones dropped, with a scheme.
fn addr_list(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(normalize_addr)
        .collect()
}

impl Ctx {
    /// Direct mode. [`k8s::Plane::Data`]: the `--addr` list (default
    /// `http://127.0.0.1:7070`). [`k8s::Plane::Admin`]: the `--admin-addr` list, else
    /// every `--addr` with the admin port (a node serves Admin on its own port, 7072).
    pub fn new(g: &Global, plane: k8s::Plane) -> anyhow::Result<Ctx> {
        let mut addrs = addr_list(&g.addr);
        if g.addr.is_empty() {
            addrs.push(crate::DEFAULT_ADDR.to_string());
        }
        anyhow::ensure!(!addrs.is_empty(), "--addr is empty");
        if plane == k8s::Plane::Admin {
            addrs = if g.admin_addr.is_empty() {
                addrs
                    .iter()
                    .map(|a| admin_addr_of(a, k8s::ADMIN_PORT))
                    .collect::<anyhow::Result<_>>()?
            } else {
                addr_list(&g.admin_addr)
            };
            anyhow::ensure!(!addrs.is_empty(), "--admin-addr is empty");
        }
        Ok(Ctx {
            addrs,
            names: HashMap::new(),
            unreachable: Vec::new(),
            kube: None,
            index: g.index.clone(),
            output: g.output,
            timeout: Duration::from_secs(g.timeout.max(1)),
            api_key: ApiKey::new(g.api_key.as_deref())?,
            peer_tls: peer_tls(g)?,
            data_tls: data_tls(g)?,
        })
    }

    /// Kubernetes mode: the index's pods through local port-forwards. The
    /// request's index name is the VectorIndex name (the operator starts the
    /// nodes with `--index <name>`).
    pub async fn from_kube(g: &Global, want: k8s::Want, plane: k8s::Plane) -> anyhow::Result<Ctx> {
        let opts = k8s::KubeOpts {
            kubeconfig: g.kubeconfig.clone(),
            context: g.context.clone(),
            namespace: g.namespace.clone(),
            index: g.index.clone(),
            peer_identity: g.peer_tls_dir.is_none(),
        };
        let found = k8s::discover(&opts, want, plane).await?;
        let mut ctx = Ctx {
            addrs: Vec::new(),
            names: HashMap::new(),
            unreachable: Vec::new(),
            kube: None,
            index: found.index.clone(),
            output: g.output,
            timeout: Duration::from_secs(g.timeout.max(1)),
            api_key: ApiKey::new(g.api_key.as_deref())?,
            peer_tls: match &found.peer_identity {
                Some(id) => Some(peer_tls_of(id)?),
                None => peer_tls(g)?,
            },
            data_tls: data_tls(g)?,
        };
        for t in found.targets {
            match t.addr {
                Ok(url) => {
                    ctx.names.insert(url.clone(), t.name);
                    ctx.addrs.push(url);
                }
                Err(why) => ctx.unreachable.push((t.name, why)),
            }
        }
        ctx.kube = Some(KubeSummary {
            namespace: found.namespace,
            index: found.index,
            status: found.status,
        });
        Ok(ctx)
    }

    /// How `addr` is shown: the pod for a forward, else the URL.
    pub fn name(&self, addr: &str) -> String {
        self.names
            .get(addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }

    /// [`rpc_error`] naming the node as the user knows it.
    pub fn rpc_error(&self, addr: &str, what: &str, s: &tonic::Status) -> anyhow::Error {
        rpc_error_on(&self.name(addr), self.kube.is_some(), what, s)
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// A lazily connecting channel: connection failures surface as
    /// `Unavailable` on the first call (and are retried where that is safe).
    pub fn channel(&self, addr: &str) -> anyhow::Result<Channel> {
        let ep = Endpoint::from_shared(addr.to_string())
            .with_context(|| format!("invalid --addr {addr:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout);
        Ok(ep.connect_lazy())
    }

    /// The data-plane channel: over TLS trusting `--ca-cert` when given (an `https://` URL
    /// is dialled as `http://` with our own TLS connector, as for peer mTLS), else plain.
    fn data_channel(&self, addr: &str) -> anyhow::Result<Channel> {
        let Some(tls) = &self.data_tls else {
            anyhow::ensure!(
                !addr.starts_with("https://"),
                "--addr {addr}: https:// needs --ca-cert FILE with the CA of the node's certificate (system roots are not used)"
            );
            return self.channel(addr);
        };
        let plain = match addr.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => addr.to_string(),
        };
        let ep = Endpoint::from_shared(plain)
            .with_context(|| format!("invalid --addr {addr:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout);
        Ok(
            ep.connect_with_connector_lazy(kindex_node::tls::Connector::with_config(
                tls.clone(),
                None,
            )),
        )
    }

    pub fn points(&self, addr: &str) -> anyhow::Result<Points> {
        Ok(
            PointsClient::with_interceptor(self.data_channel(addr)?, self.api_key.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    /// The Admin service of a node: over peer mTLS with `--peer-tls-dir`.
    pub fn admin(&self, addr: &str) -> anyhow::Result<AdminClient<Channel>> {
        let Some(tls) = &self.peer_tls else {
            return Ok(AdminClient::new(self.channel(addr)?));
        };
        let ep = Endpoint::from_shared(addr.to_string())
            .with_context(|| format!("invalid --admin-addr {addr:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout);
        Ok(AdminClient::new(
            ep.connect_with_connector_lazy(tls.clone()),
        ))
    }

    /// The first address: data-plane commands talk to one node, which
    /// coordinates across shards.
    pub fn addr(&self) -> anyhow::Result<&str> {
        self.addrs
            .first()
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("no reachable node"))
    }
}

/// A node's Admin URL from its data-plane URL: the same host with `port`.
pub fn admin_addr_of(url: &str, port: u16) -> anyhow::Result<String> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .with_context(|| format!("invalid --addr {url:?}"))?;
    let (scheme, host) = match (uri.scheme_str(), uri.host()) {
        (Some(s), Some(h)) => (s, h),
        _ => anyhow::bail!("--addr {url:?} has no host; give --admin-addr"),
    };
    Ok(format!("{scheme}://{host}:{port}"))
}

/// `host:port` -> `http://host:port` (tonic needs a scheme).
pub fn normalize_addr(a: &str) -> String {
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// A gRPC failure as one readable line, naming the node.
pub fn rpc_error(addr: &str, what: &str, s: &tonic::Status) -> anyhow::Error {
    rpc_error_on(addr, false, what, s)
}

/// The status message and the errors under it (a transport error's cause: a refused TLS
/// handshake, a reset connection).
fn status_detail(s: &tonic::Status) -> String {
    let mut text = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        let e_text = e.to_string();
        if !text.contains(&e_text) {
            text.push_str(": ");
            text.push_str(&e_text);
        }
        cause = e.source();
    }
    text
}

/// The hint for a plaintext call that a TLS-only listener cut off.
const PLAIN_TO_TLS: &str = " (the node may serve TLS on this port: for data-plane calls to a node with --client-tls-dir pass --ca-cert with its CA; status and snapshot to a node with --peer-tls-dir need --peer-tls-dir with a certificate of its CA)";

/// [`rpc_error`]; `forwarded`: the node was reached by a port-forward.
pub fn rpc_error_on(addr: &str, forwarded: bool, what: &str, s: &tonic::Status) -> anyhow::Error {
    let detail = status_detail(s);
    // TLS spoken to a plaintext port: rustls reads an HTTP/2 frame as a TLS record.
    let tls_to_plain = detail.contains("InvalidContentType") || detail.contains("corrupt message");
    let untrusted = detail.contains("invalid peer certificate");
    let hint = match s.code() {
        _ if tls_to_plain => {
            " (the node does not serve TLS on this port: drop --ca-cert, or start the node with --client-tls-dir)"
        }
        _ if untrusted => {
            " (the node's TLS certificate is not trusted: --ca-cert must hold the CA that issued it, and the certificate must name the host in --addr)"
        }
        tonic::Code::Unavailable if forwarded => {
            " (the port-forward to the pod failed or the node is not serving; see the warnings above)"
        }
        tonic::Code::Unavailable => {
            " (is the node running and --addr right (--admin-addr for status and snapshot)? A node started with --client-tls-dir needs --ca-cert. In Kubernetes use `kubectl kindex`, which port-forwards by itself)"
        }
        tonic::Code::Unauthenticated => {
            " (give the node's API key with --api-key or KINDEX_API_KEY)"
        }
        // What a plain client gets from a TLS-only listener (client TLS, or peer mTLS on the
        // admin port).
        tonic::Code::Internal | tonic::Code::Unknown if detail.contains("h2 protocol error") => {
            PLAIN_TO_TLS
        }
        // A TLS server closes a plaintext HTTP/2 connection: seen as "connection closed",
        // or "broken pipe" when the client was still writing.
        tonic::Code::Cancelled | tonic::Code::Unknown
            if detail.contains("connection closed") || detail.contains("broken pipe") =>
        {
            PLAIN_TO_TLS
        }

        tonic::Code::NotFound if what != "Get" => {
            " (check --index; empty means the node's own index)"
        }
        _ => "",
    };
    anyhow::anyhow!(
        "{what} on {addr} failed: {}: {detail}{hint}",
        code_name(s.code()),
    )
}

pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Errors worth retrying with backoff: the node is down or restarting, the
/// shard is electing a leader, a follower could not forward to a leader it
/// names (`FailedPrecondition` with the leader in the metadata), a deadline
/// passed, the indexing queue is applying backpressure, or the connection
/// broke mid-request (tonic reports that as `Unknown: transport error`).
/// Upserts are idempotent, so a retried batch that was in fact applied does
/// no harm.
pub fn is_transient(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    match s.code() {
        // A quota policy: the same answer until someone deletes points or raises it.
        ResourceExhausted
            if s.metadata()
                .contains_key(kindex_node::node::QUOTA_EXCEEDED_HEADER) =>
        {
            false
        }
        Unavailable | DeadlineExceeded | Aborted | ResourceExhausted | Cancelled => true,
        FailedPrecondition => s
            .metadata()
            .contains_key(kindex_node::node::LEADER_ID_HEADER),
        Unknown | Internal => {
            let transport =
                std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>());
            transport || s.message().contains("transport error")
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    Eventual,
    Session,
    Linearizable,
}

impl Consistency {
    pub fn proto(c: Option<Consistency>) -> i32 {
        let c = match c {
            None => pb::Consistency::Unspecified,
            Some(Consistency::Eventual) => pb::Consistency::Eventual,
            Some(Consistency::Session) => pb::Consistency::Session,
            Some(Consistency::Linearizable) => pb::Consistency::Linearizable,
        };
        c as i32
    }
}

/// Parses a stored payload for JSON output (kept as text if it is not JSON).
pub fn payload_value(p: Option<&str>) -> serde_json::Value {
    match p {
        None => serde_json::Value::Null,
        Some(s) => {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
        }
    }
}

pub fn log_id_json(l: Option<&pb::LogId>) -> serde_json::Value {
    match l {
        Some(l) => serde_json::json!({"term": l.term, "index": l.index}),
        None => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(normalize_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalize_addr("https://x:1"), "https://x:1");
    }

    #[test]
    fn transient_codes() {
        assert!(is_transient(&tonic::Status::unavailable("leader changed")));
        assert!(is_transient(&tonic::Status::resource_exhausted(
            "queue full"
        )));
        let mut quota = tonic::Status::resource_exhausted("quota policy \"cap\"");
        quota.metadata_mut().insert(
            kindex_node::node::QUOTA_EXCEEDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        assert!(!is_transient(&quota));
        assert!(!is_transient(&tonic::Status::invalid_argument(
            "wrong dimension"
        )));
        assert!(!is_transient(&tonic::Status::not_found("no such index")));
        assert!(is_transient(&tonic::Status::unknown("transport error")));
        assert!(!is_transient(&tonic::Status::internal("assertion failed")));
        assert!(!is_transient(&tonic::Status::failed_precondition(
            "structural config differs"
        )));
        let mut not_leader = tonic::Status::failed_precondition("not the leader");
        not_leader
            .metadata_mut()
            .insert(kindex_node::node::LEADER_ID_HEADER, "2".parse().unwrap());
        assert!(is_transient(&not_leader));
    }
}
