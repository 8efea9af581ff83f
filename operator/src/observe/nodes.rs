//! Talking to index nodes: their addresses ([`AddressBook`]) and their Admin API
//! ([`NodeClient`]; [`GrpcNodeClient`] in production, fakes in tests).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kindex_proto::admin_client::AdminClient;
use kindex_proto::{
    AddLearnerRequest, ChangeMembershipRequest, InitializeRequest, ListPoliciesRequest,
    ListPoliciesResponse, Member, PolicyWriteRequest, PolicyWriteResponse, StatusRequest,
    StatusResponse, TransferLeaderRequest,
};

use crate::build::labels;

/// One index pod, by position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub index: String,
    pub shard: u32,
    pub ordinal: u32,
}

impl PodRef {
    pub fn pod_name(&self) -> String {
        labels::pod_name(&self.index, self.shard, self.ordinal)
    }
    /// `<pod>.<headless>.<ns>.svc`: the pod's stable DNS name.
    pub fn host(&self) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod_name(),
            labels::headless_name(&self.index, self.shard),
            self.namespace
        )
    }
}

/// Where the operator reaches a node's Admin service and what Raft address it gives
/// the group for a node.
pub trait AddressBook: Send + Sync {
    /// URI of the Admin gRPC endpoint, e.g. `http://host:7072` (the admin port, which the
    /// client Service does not expose).
    fn admin_endpoint(&self, pod: &PodRef) -> String;
    /// `host:port` the other replicas use for Raft (`Member.addr`).
    fn raft_addr(&self, pod: &PodRef) -> String;
    /// Where a node older than the admin port (issue 18) serves Admin: its data port.
    /// Tried only when [`Self::admin_endpoint`] cannot be reached, so that an upgrade,
    /// which replaces old pods one at a time, can still observe and steer them. Newer
    /// nodes answer Admin RPCs on the data port `UNIMPLEMENTED`, so this never reaches
    /// them. To be removed once no supported release predates the admin port.
    fn pre_admin_port_endpoint(&self, _pod: &PodRef) -> Option<String> {
        None
    }
}

/// Pod DNS names through the shard's headless Service (inside the cluster).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterDns;

impl AddressBook for ClusterDns {
    fn admin_endpoint(&self, pod: &PodRef) -> String {
        format!(
            "http://{}:{}",
            pod.host(),
            crate::build::service::ADMIN_PORT
        )
    }
    fn raft_addr(&self, pod: &PodRef) -> String {
        format!("{}:{}", pod.host(), crate::build::service::RAFT_PORT)
    }
    fn pre_admin_port_endpoint(&self, pod: &PodRef) -> Option<String> {
        Some(format!(
            "http://{}:{}",
            pod.host(),
            crate::build::service::GRPC_PORT
        ))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("cannot reach {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{endpoint}: {status}")]
    Rpc { endpoint: String, status: String },
}

/// The Admin RPCs the operator uses. `pod` is the node the call goes to.
pub trait NodeClient: Send + Sync {
    fn status<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<StatusResponse, NodeError>>;
    fn initialize<'a>(
        &'a self,
        pod: &'a PodRef,
        members: Vec<Member>,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
    /// Non-blocking: the operator polls the learner's progress itself.
    fn add_learner<'a>(
        &'a self,
        pod: &'a PodRef,
        member: Member,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
    /// Removed voters are dropped, not kept as learners.
    fn change_membership<'a>(
        &'a self,
        pod: &'a PodRef,
        voters: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
    fn transfer_leader<'a>(
        &'a self,
        pod: &'a PodRef,
        to: u64,
    ) -> BoxFuture<'a, Result<(), NodeError>>;
    /// The shard's policy store as the node applied it.
    fn list_policies<'a>(
        &'a self,
        pod: &'a PodRef,
    ) -> BoxFuture<'a, Result<ListPoliciesResponse, NodeError>>;
    /// A policy change (the node forwards it to its leader).
    fn change_policy<'a>(
        &'a self,
        pod: &'a PodRef,
        req: PolicyWriteRequest,
    ) -> BoxFuture<'a, Result<PolicyWriteResponse, NodeError>>;
}

/// The real client: one short-lived connection per call (a handful of calls per
/// reconcile; a fresh connection re-resolves DNS after a pod moved).
pub struct GrpcNodeClient {
    pub addresses: Arc<dyn AddressBook>,
    pub timeout: Duration,
    /// Indexes with peer mTLS: the admin port is dialled with the operator's certificate.
    pub identities: crate::peer_tls::PeerIdentities,
}

impl GrpcNodeClient {
    /// A connection to the pod's Admin port, else (a node from before the admin port) to
    /// [`AddressBook::pre_admin_port_endpoint`]; the admin port's error if neither answers.
    async fn connect(
        &self,
        pod: &PodRef,
    ) -> Result<(AdminClient<tonic::transport::Channel>, String), NodeError> {
        let endpoint = self.addresses.admin_endpoint(pod);
        if let Some(id) = self.identities.get(&pod.namespace, &pod.index) {
            // No fallback: a node with peer mTLS never serves Admin on the data port.
            return Ok((self.dial_tls(endpoint.clone(), &id).await?, endpoint));
        }
        match self.dial(endpoint.clone()).await {
            Ok(c) => Ok((c, endpoint)),
            Err(e) => match self.addresses.pre_admin_port_endpoint(pod) {
                Some(old) => match self.dial(old.clone()).await {
                    Ok(c) => Ok((c, old)),
                    Err(_) => Err(e),
                },
                None => Err(e),
            },
        }
    }

    async fn dial(
        &self,
        endpoint: String,
    ) -> Result<AdminClient<tonic::transport::Channel>, NodeError> {
        let connect_err = |reason: String| NodeError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(AdminClient::new(channel))
    }
}

impl GrpcNodeClient {
    async fn dial_tls(
        &self,
        endpoint: String,
        id: &crate::peer_tls::Identity,
    ) -> Result<AdminClient<tonic::transport::Channel>, NodeError> {
        let connect_err = |reason: String| NodeError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let connector = kindex_node::tls::Connector::with_config(
            id.config.clone(),
            Some(id.server_name.clone()),
        );
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_err(format!("{e:?}")))?;
        Ok(AdminClient::new(channel))
    }
}

fn rpc_err(endpoint: String) -> impl FnOnce(tonic::Status) -> NodeError {
    move |s| NodeError::Rpc {
        endpoint,
        status: format!("{}: {}", s.code(), s.message()),
    }
}

impl NodeClient for GrpcNodeClient {
    fn status<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<StatusResponse, NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            let r = c.status(StatusRequest {}).await.map_err(rpc_err(ep))?;
            Ok(r.into_inner())
        })
    }
    fn initialize<'a>(
        &'a self,
        pod: &'a PodRef,
        members: Vec<Member>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.initialize(InitializeRequest { members })
                .await
                .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
    fn add_learner<'a>(
        &'a self,
        pod: &'a PodRef,
        member: Member,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.add_learner(AddLearnerRequest {
                member: Some(member),
                blocking: false,
            })
            .await
            .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
    fn change_membership<'a>(
        &'a self,
        pod: &'a PodRef,
        voters: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.change_membership(ChangeMembershipRequest {
                voters,
                retain: false,
            })
            .await
            .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
    fn transfer_leader<'a>(
        &'a self,
        pod: &'a PodRef,
        to: u64,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            c.transfer_leader(TransferLeaderRequest { to })
                .await
                .map_err(rpc_err(ep))?;
            Ok(())
        })
    }
    fn list_policies<'a>(
        &'a self,
        pod: &'a PodRef,
    ) -> BoxFuture<'a, Result<ListPoliciesResponse, NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            let r = c
                .list_policies(ListPoliciesRequest {})
                .await
                .map_err(rpc_err(ep))?;
            Ok(r.into_inner())
        })
    }
    fn change_policy<'a>(
        &'a self,
        pod: &'a PodRef,
        req: PolicyWriteRequest,
    ) -> BoxFuture<'a, Result<PolicyWriteResponse, NodeError>> {
        Box::pin(async move {
            let (mut c, ep) = self.connect(pod).await?;
            let r = c.change_policy(req).await.map_err(rpc_err(ep))?;
            Ok(r.into_inner())
        })
    }
}
